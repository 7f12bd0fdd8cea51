// Byte-level BPE tokenizer: UTF-8 scanning, the byte alphabet, the merge loop, metadata
// validation on tiny in-memory GGUFs, and behaviour on the real SmolLM2 vocab (skipped when
// the model file is absent). Exact agreement with HF tokenizers on a large corpus is checked
// in tests/reference/test_tokenizer_hf.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "gguf_builder.h"
#include "real_model.h"
#include "tokenizer/bpe_byte_level.h"
#include "tokenizer/bpe_merges.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode_utf8.h"

namespace peregrine {
namespace {

using Ids = std::vector<TokenId>;

// ---- UTF-8 -------------------------------------------------------------------------------

std::string replaced(std::string_view s) {
  std::string out;
  utf8::append_replacing_invalid(out, s);
  return out;
}

TEST(TokenizerUtf8, ClassifiesSequences) {
  using K = utf8::Seq;
  auto kind = [](std::string_view s) { return utf8::next(s, 0).kind; };
  auto len = [](std::string_view s) { return utf8::next(s, 0).len; };
  EXPECT_EQ(kind("a"), K::Valid);
  EXPECT_EQ(kind("\xC3\xA9"), K::Valid);
  EXPECT_EQ(len("\xF0\x9F\x98\x80"), 4u);
  EXPECT_EQ(kind("\xC0\xAF"), K::Invalid);          // overlong '/'
  EXPECT_EQ(kind("\xE0\x80\x80"), K::Invalid);      // overlong
  EXPECT_EQ(kind("\xED\xA0\x80"), K::Invalid);      // surrogate U+D800
  EXPECT_EQ(kind("\xF4\x90\x80\x80"), K::Invalid);  // above U+10FFFF
  EXPECT_EQ(kind("\xF5\x80\x80\x80"), K::Invalid);
  EXPECT_EQ(kind("\x80"), K::Invalid);
  EXPECT_EQ(kind("\xF0\x9F\x98"), K::Truncated);
  EXPECT_EQ(len("\xF0\x9F\x98"), 3u);
  EXPECT_EQ(kind("\xF0\x9F\x98" "A"), K::Invalid);
  EXPECT_EQ(len("\xF0\x9F\x98" "A"), 3u);  // maximal subpart: one U+FFFD for three bytes
  EXPECT_EQ(utf8::valid_prefix("ab\xC3\xA9\xFFz"), 4u);
  EXPECT_TRUE(utf8::is_valid("\xE4\xB8\x96\xF4\x8F\xBF\xBF"));
}

TEST(TokenizerUtf8, ReplacesMaximalSubpartsLikePython) {
  // Expected strings are Python's bytes.decode("utf-8", "replace").
  const std::string R(utf8::kReplacement);
  EXPECT_EQ(replaced("\xF0\x9F\x98" "A"), R + "A");
  EXPECT_EQ(replaced("\xE0\x80\x80"), R + R + R);
  EXPECT_EQ(replaced("\xC0\xAF"), R + R);
  EXPECT_EQ(replaced("a\xED\xA0\x80z"), "a" + R + R + R + "z");
  EXPECT_EQ(replaced("\xE4\xB8"), R);
  EXPECT_EQ(replaced("ok \xC3\xA9"), "ok \xC3\xA9");
}

// ---- byte-level alphabet --------------------------------------------------------------------

TEST(TokenizerByteLevel, MatchesGpt2Alphabet) {
  EXPECT_EQ(byte_level::byte_to_codepoint(' '), 0x120u);   // 'Ġ'
  EXPECT_EQ(byte_level::byte_to_codepoint('\n'), 0x10Au);  // 'Ċ'
  EXPECT_EQ(byte_level::byte_to_codepoint('A'), uint32_t('A'));
  EXPECT_EQ(byte_level::byte_to_codepoint(0xAD), 0x143u);  // soft hyphen is the last extra
  EXPECT_EQ(byte_level::byte_to_codepoint(0xFF), 0xFFu);
  for (int b = 0; b < 256; ++b) {
    const auto u = static_cast<uint8_t>(b);
    EXPECT_EQ(byte_level::codepoint_to_byte(byte_level::byte_to_codepoint(u)), b);
    EXPECT_EQ(byte_level::text_to_bytes(byte_level::byte_to_text(u)), std::string(1, char(u)));
  }
  EXPECT_EQ(byte_level::codepoint_to_byte(0x20), -1);  // a raw space is not in the alphabet
  EXPECT_EQ(byte_level::text_to_bytes("\xC4\xA0hi"), " hi");
}

// ---- merge loop ---------------------------------------------------------------------------

TEST(TokenizerMerges, LowestRankFirstThenLeftmost) {
  enum : int32_t { a, b, ab, bb, abb };
  BpeMerges m;
  m.add(b, b, {0, bb});
  m.add(a, b, {1, ab});
  m.add(ab, b, {2, abb});
  Ids ids = {a, b, b};
  m.apply(ids);
  EXPECT_EQ(ids, (Ids{a, bb}));  // (b b) outranks (a b); a then bb has no merge
  ids = {b, b, b};
  m.apply(ids);
  EXPECT_EQ(ids, (Ids{bb, b}));  // equal ranks: leftmost pair merges first
  ids = {a, b, a, b, b};
  m.apply(ids);
  EXPECT_EQ(ids, (Ids{ab, a, bb}));
  EXPECT_EQ(m.find(b, a), nullptr);
  m.add(b, b, {7, bb});  // a later duplicate replaces the earlier rank
  EXPECT_EQ(m.find(b, b)->rank, 7);
}

// The textbook loop: merge the leftmost pair of lowest rank until none is left.
void naive_merge(const BpeMerges& m, Ids& ids) {
  for (;;) {
    size_t best = ids.size();
    for (size_t i = 0; i + 1 < ids.size(); ++i) {
      const auto* f = m.find(ids[i], ids[i + 1]);
      if (f && (best == ids.size() || f->rank < m.find(ids[best], ids[best + 1])->rank)) best = i;
    }
    if (best == ids.size()) return;
    ids[best] = m.find(ids[best], ids[best + 1])->merged;
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
}

TEST(TokenizerMerges, MatchesNaiveLoopOnShortAndLongPieces) {
  // Random tables over a 3-symbol alphabet; merged ids are new, as in a real vocab. Lengths
  // cover both the small-piece scan and the heap used for long pieces.
  std::mt19937 rng(3);
  for (int table = 0; table < 20; ++table) {
    BpeMerges m;
    for (int32_t k = 0; k < 30; ++k) {
      const auto l = static_cast<int32_t>(rng() % (3 + k)), r = static_cast<int32_t>(rng() % (3 + k));
      m.add(l, r, {static_cast<int32_t>(rng() % 1000), 3 + k});
    }
    for (int trial = 0; trial < 50; ++trial) {
      Ids ids(1 + rng() % 200);
      for (auto& x : ids) x = static_cast<int32_t>(rng() % 3);
      Ids expect = ids;
      naive_merge(m, expect);
      m.apply(ids);
      ASSERT_EQ(ids, expect) << "table " << table << " trial " << trial;
    }
  }
}

TEST(TokenizerMerges, LongRunIsFast) {
  // Ids 0..17: token k is 2^k copies of one byte; merge (k, k) -> k + 1.
  BpeMerges m;
  for (int32_t k = 0; k < 17; ++k) m.add(k, k, {k, k + 1});
  Ids ids(100'000, 0);
  const auto t0 = std::chrono::steady_clock::now();
  m.apply(ids);
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  // 100000 = 65536 + 32768 + 1024 + 512 + 128 + 32: the binary digits, largest first.
  EXPECT_EQ(ids, (Ids{16, 15, 10, 9, 7, 5}));
  EXPECT_LT(ms, 1000.0);
}

// ---- tiny vocabs built in memory -----------------------------------------------------------

// A GGUF holding only tokenizer metadata, with knobs to break each part.
struct TinyVocab {
  std::vector<std::string> tokens = {"<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "ab",
                                     "\xC4\xA0", "\xC4\xA0" "ab", "1", "<|im_start|>x"};
  std::vector<int32_t> types = {3, 3, 3, 1, 1, 1, 1, 1, 1, 4};
  std::vector<std::string> merges = {"a b", "\xC4\xA0 ab"};
  std::string model = "gpt2", pre = "smollm";
  bool with_pre = true, with_bos = true;
  std::optional<bool> add_bos;
  int64_t bos = 0, eos = 0;
  bool with_eot = false;
  int64_t eot = 0;

  std::vector<uint8_t> bytes() const {
    test::GgufBuilder b;
    b.kv_str("tokenizer.ggml.model", model);
    if (with_pre) b.kv_str("tokenizer.ggml.pre", pre);
    b.kv_str_array("tokenizer.ggml.tokens", tokens).kv_i32_array("tokenizer.ggml.token_type", types);
    b.kv_str_array("tokenizer.ggml.merges", merges);
    if (with_bos) b.kv_u32("tokenizer.ggml.bos_token_id", uint32_t(bos));
    if (add_bos) b.kv_bool("tokenizer.ggml.add_bos_token", *add_bos);
    b.kv_i32("tokenizer.ggml.eos_token_id", int32_t(eos));
    if (with_eot) b.kv_u32("tokenizer.ggml.eot_token_id", uint32_t(eot));
    return b.build();
  }
};

struct Loaded {
  std::vector<uint8_t> data;  // the File points into it
  std::unique_ptr<gguf::File> file;
  Result<std::unique_ptr<Tokenizer>> tok = Error{"not loaded"};
};

std::unique_ptr<Loaded> load(const TinyVocab& v) {
  auto l = std::make_unique<Loaded>();
  l->data = v.bytes();
  auto f = gguf::File::parse(l->data.data(), l->data.size(), "tiny.gguf");
  if (!f.ok()) ADD_FAILURE() << f.error().message;
  if (!f.ok()) return l;
  l->file = std::move(f).value();
  l->tok = Tokenizer::from_gguf(*l->file);
  return l;
}

std::string load_error(const TinyVocab& v) {
  auto l = load(v);
  return l->tok.ok() ? std::string("(loaded fine)") : l->tok.error().message;
}

TEST(TokenizerTiny, EncodesWithMergesAndSpecials) {
  auto l = load(TinyVocab{});
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  const Tokenizer& t = **l->tok;
  EXPECT_EQ(t.encode("ab ab"), (Ids{5, 7}));
  EXPECT_EQ(t.encode("ab11"), (Ids{5, 8, 8}));
  EXPECT_EQ(t.encode("ba"), (Ids{4, 3}));
  EXPECT_EQ(t.encode("zaz"), (Ids{3}));  // 'z' is not in this vocab: dropped, as HF does
  EXPECT_EQ(t.encode("a<|im_start|>b<|im_end|>"), (Ids{3, 1, 4, 2}));
  EXPECT_EQ(t.encode("<|im_start|>xb"), (Ids{9, 4}));  // longest special wins
  EXPECT_EQ(t.encode("<|im_start|>", /*parse_special=*/false), (Ids{3}));  // only the 'a' is in vocab
  EXPECT_EQ(t.decode(Ids{7, 1, 5}), " ab<|im_start|>ab");
  EXPECT_EQ(t.eot(), 2);  // found by name: <|im_end|>
  EXPECT_TRUE(t.is_end_of_generation(0));
  EXPECT_TRUE(t.is_end_of_generation(2));
  EXPECT_FALSE(t.is_end_of_generation(1));
  EXPECT_FALSE(t.is_end_of_generation(-1));
  EXPECT_FALSE(t.add_bos());
  EXPECT_EQ(t.find_token("ab"), 5);
  EXPECT_EQ(t.find_token("zz"), -1);
  EXPECT_EQ(t.token_bytes(99), "");
}

// Llama 3's names: BOS by default (the file's add_bos_token wins), and a piece that is a
// token is taken whole although no merge makes it.
TEST(TokenizerTiny, Llama3RulesFollowTheName) {
  TinyVocab v;
  v.tokens.push_back("ba");  // no "b a" merge
  v.types.push_back(1);
  v.pre = "llama-bpe";
  for (std::optional<bool> add_bos : {std::optional<bool>(), std::optional<bool>(false)}) {
    v.add_bos = add_bos;
    auto l = load(v);
    ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
    EXPECT_EQ((*l->tok)->add_bos(), !add_bos.has_value());
    EXPECT_EQ((*l->tok)->encode("ba ab"), (Ids{10, 7}));
  }
  v.pre = "qwen2";  // the same regex without those rules
  v.add_bos = std::nullopt;
  auto l = load(v);
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  EXPECT_FALSE((*l->tok)->add_bos());
  EXPECT_EQ((*l->tok)->encode("ba ab"), (Ids{4, 3, 7}));
}

TEST(TokenizerTiny, ExplicitEotWins) {
  TinyVocab v;
  v.with_eot = true;
  v.eot = 1;
  auto l = load(v);
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  EXPECT_EQ((*l->tok)->eot(), 1);
}

TEST(TokenizerTiny, RejectsBadMetadata) {
  auto expect_error = [](TinyVocab v, const std::string& needle) {
    const std::string err = load_error(v);
    EXPECT_NE(err.find(needle), std::string::npos) << "error was: " << err;
  };
  TinyVocab v;
  v.model = "rwkv";
  expect_error(v, "unsupported tokenizer model 'rwkv'");
  v = {};
  v.model = "llama";  // SentencePiece-style: needs scores (test_tokenizer_spm.cpp)
  expect_error(v, "tokenizer.ggml.scores is missing");
  v = {};
  v.pre = "qwen9";
  expect_error(v, "unsupported tokenizer pre-tokenizer 'qwen9' (tokenizer.ggml.pre); supported: gpt-2, ");
  v = {};
  v.with_pre = false;
  expect_error(v, "tokenizer.ggml.pre is missing");
  v = {};
  v.pre = "llama-bpe";
  v.with_bos = false;
  expect_error(v, "tokenizer.ggml.pre 'llama-bpe' adds BOS but tokenizer.ggml.bos_token_id is missing");
  v = {};
  v.types.pop_back();
  expect_error(v, "token_type has 9 entries but tokenizer.ggml.tokens has 10");
  v = {};
  v.types[4] = 9;
  expect_error(v, "tokenizer.ggml.token_type[4] = 9");
  v = {};
  v.merges.push_back("ab");
  expect_error(v, "tokenizer.ggml.merges[2] = 'ab' is not two tokens");
  v = {};
  v.merges.push_back("a b b");
  expect_error(v, "tokenizer.ggml.merges[2]");
  v = {};
  v.merges.push_back(" a");
  expect_error(v, "tokenizer.ggml.merges[2]");
  v = {};
  v.merges.insert(v.merges.begin(), "a q");
  expect_error(v, "tokenizer.ggml.merges[0] = 'a q': token 'q' is not in the vocab");
  v = {};
  v.merges.push_back("b a");  // both parts exist, "ba" does not
  expect_error(v, "token 'ba' is not in the vocab");
  v = {};
  v.bos = 10;
  expect_error(v, "tokenizer.ggml.bos_token_id = 10 is outside the vocab (10 tokens)");
  v = {};
  v.eos = -1;
  expect_error(v, "tokenizer.ggml.eos_token_id = -1 is outside the vocab");
  v = {};
  v.with_eot = true;
  v.eot = 4000000000u;
  expect_error(v, "tokenizer.ggml.eot_token_id = 4000000000");
  v = {};
  v.tokens.clear();
  v.types.clear();
  expect_error(v, "tokenizer.ggml.tokens is empty");
}

TEST(TokenizerTiny, MissingVocabKeyIsAnError) {
  test::GgufBuilder b;
  b.kv_str("tokenizer.ggml.model", "gpt2");
  const auto data = b.build();
  auto f = gguf::File::parse(data.data(), data.size(), "tiny.gguf");
  ASSERT_TRUE(f.ok()) << f.error().message;
  auto t = Tokenizer::from_gguf(**f);
  ASSERT_FALSE(t.ok());
  EXPECT_NE(t.error().message.find("tokenizer.ggml.tokens"), std::string::npos) << t.error().message;
}

// ---- pre-tokenizer --------------------------------------------------------------------------

std::vector<std::string> pieces(const Pretokenizer& p, std::string_view text) {
  std::vector<std::string_view> v;
  p.split(text, v);
  return {v.begin(), v.end()};
}

TEST(TokenizerPretokenizer, SplitsLikeHf) {
  auto smol = Pretokenizer::create("smollm");
  auto gpt2 = Pretokenizer::create("gpt-2");
  ASSERT_TRUE(smol.ok() && gpt2.ok());
  using V = std::vector<std::string>;
  // Expected values from HF tokenizers' pre_tokenize_str (byte-level spelling undone).
  EXPECT_EQ(pieces(**smol, "I'LL don't"), (V{"I", "'", "LL", " don", "'t"}));
  EXPECT_EQ(pieces(**smol, "a  12"), (V{"a", "  ", "1", "2"}));
  EXPECT_EQ(pieces(**gpt2, "a  12"), (V{"a", " ", " 12"}));
  EXPECT_EQ(pieces(**smol, "x\xC2\x85!"), (V{"x", "\xC2\x85", "!"}));  // NEL is White_Space
  EXPECT_EQ(pieces(**smol, "x\xE2\x80\x8B!"), (V{"x", "\xE2\x80\x8B!"}));  // ZWSP is not
  EXPECT_EQ(pieces(**smol, "\xD9\xA1\xD9\xA2 x\xC2\xB2"), (V{"\xD9\xA1", "\xD9\xA2", " x", "\xC2\xB2"}));
  EXPECT_EQ(pieces(**smol, "a\xFF\xC3 b"), (V{"a", "\xFF", "\xC3", " b"}));  // invalid bytes alone
  EXPECT_EQ(pieces(**smol, ""), V{});
  EXPECT_FALSE(Pretokenizer::create("default").ok());

  auto llama3 = Pretokenizer::create("llama-bpe");
  auto qwen2 = Pretokenizer::create("qwen2");
  ASSERT_TRUE(llama3.ok() && qwen2.ok());
  EXPECT_EQ(pieces(**llama3, "I'LL don'T"), (V{"I", "'LL", " don", "'T"}));
  EXPECT_EQ(pieces(**llama3, "'\xC5\xBFtop"), (V{"'\xC5\xBF", "top"}));  // U+017F folds to s
  EXPECT_EQ(pieces(**llama3, "x\n\n  y"), (V{"x", "\n\n", " ", " y"}));
  EXPECT_EQ(pieces(**llama3, "$19.99!\n(hello)"), (V{"$", "19", ".", "99", "!\n", "(hello", ")"}));
  EXPECT_EQ(pieces(**qwen2, "$19.99!\n"), (V{"$", "1", "9", ".", "9", "9", "!\n"}));
}

// The names llama.cpp's converter writes and llama.cpp maps to these two splits
// (src/llama-vocab.cpp of llama-cpp-python 0.3.36); tests/reference/test_tokenizer_hf.py checks
// each against HF tokenizers.
TEST(TokenizerPretokenizer, AcceptsLlamaCppNamesOfTheSameSplit) {
  for (const char* name : {"gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "a.x-4.0", "mellum",
                           "modern-bert", "exaone4", "mpt", "olmo", "jais", "trillion",
                           "granite-docling"}) {
    auto p = Pretokenizer::create(name);
    ASSERT_TRUE(p.ok()) << name << ": " << p.error().message;
    EXPECT_EQ((*p)->kind(), PretokenizerKind::Gpt2) << name;
    EXPECT_EQ(pieces(**p, "a  12"), (std::vector<std::string>{"a", " ", " 12"})) << name;
  }
  for (const char* name : {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone",
                           "minerva-7b", "mellum2"}) {
    auto p = Pretokenizer::create(name);
    ASSERT_TRUE(p.ok()) << name << ": " << p.error().message;
    EXPECT_EQ((*p)->kind(), PretokenizerKind::DigitsIsolated) << name;
    EXPECT_EQ(pieces(**p, "a  12"), (std::vector<std::string>{"a", "  ", "1", "2"})) << name;
  }
  for (const char* name : {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                           "midm-2.0", "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"}) {
    auto p = Pretokenizer::create(name);
    ASSERT_TRUE(p.ok()) << name << ": " << p.error().message;
    EXPECT_EQ((*p)->kind(), PretokenizerKind::Llama3) << name;
    // Only the names llama.cpp gives Llama 3's extra rules (not dbrx, smaug-bpe).
    const bool llama3_rules = std::string_view(name) != "dbrx" && std::string_view(name) != "smaug-bpe";
    EXPECT_EQ((*p)->ignore_merges(), llama3_rules) << name;
    EXPECT_EQ((*p)->add_bos_by_default(), llama3_rules) << name;
    EXPECT_EQ(pieces(**p, "a  12345"), (std::vector<std::string>{"a", " ", " ", "123", "45"})) << name;
  }
  for (const char* name : {"qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2",
                           "hunyuan", "solar-open", "grok-2"}) {
    auto p = Pretokenizer::create(name);
    ASSERT_TRUE(p.ok()) << name << ": " << p.error().message;
    EXPECT_EQ((*p)->kind(), PretokenizerKind::Qwen2) << name;
    EXPECT_FALSE((*p)->ignore_merges() || (*p)->add_bos_by_default()) << name;
    EXPECT_EQ(pieces(**p, "a  123"), (std::vector<std::string>{"a", " ", " ", "1", "2", "3"})) << name;
  }
  // Other splits, names llama.cpp does not know ("gpt2"), and the GPT-2 regex with extra
  // special-token rules (a SEP token, a left-stripping <mask>) are refused, listing what is
  // supported.
  for (const char* name : {"gpt2", "default", "qwen35", "chatglm-bpe", "roberta-bpe",
                           "jina-v2-de", "GPT-2", ""}) {
    auto p = Pretokenizer::create(name);
    ASSERT_FALSE(p.ok()) << name;
    const std::string& msg = p.error().message;
    EXPECT_NE(msg.find(std::string("unsupported tokenizer pre-tokenizer '") + name + "'"),
              std::string::npos) << msg;
    EXPECT_NE(msg.find("supported: gpt-2, "), std::string::npos) << msg;
    EXPECT_NE(msg.find(", smollm"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

// ---- the real SmolLM2 vocab ---------------------------------------------------------------

std::string model_path() { return test::smollm_path(); }

class TokenizerSmolLM : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(model_path())) return;
    auto f = gguf::File::open(model_path());
    ASSERT_TRUE(f.ok()) << f.error().message;
    file_ = std::move(f).value().release();
    auto t = Tokenizer::from_gguf(*file_);
    ASSERT_TRUE(t.ok()) << t.error().message;
    tok_ = std::move(t).value().release();
  }
  static void TearDownTestSuite() {
    delete tok_;
    delete file_;
    tok_ = nullptr;
    file_ = nullptr;
  }
  void SetUp() override {
    if (tok_ == nullptr) GTEST_SKIP() << "model not found at " << model_path();
  }
  // Text with the bytes this vocab cannot spell removed (they are dropped on encode).
  static std::string spellable(std::string_view s) {
    std::string out;
    for (char c : s) {
      if (tok_->find_token(byte_level::byte_to_text(uint8_t(c))) >= 0) out += c;
    }
    return out;
  }
  static inline gguf::File* file_ = nullptr;
  static inline Tokenizer* tok_ = nullptr;
};

TEST_F(TokenizerSmolLM, KnownIdsAndSpecials) {
  // Ids from HF tokenizers with SmolLM2's tokenizer.
  EXPECT_EQ(tok_->encode("Hello world! I'LL don't 12345 <|im_start|>user"),
            (Ids{19556, 905, 17, 339, 23, 16421, 1326, 982, 216, 33, 34, 35, 36, 37, 216, 1, 4093}));
  EXPECT_EQ(tok_->encode("Hello \xF0\x9F\x98\x80 \xE4\xB8\x96\xE7\x95\x8C"),
            (Ids{19556, 40303, 218, 216, 7906, 240, 178, 239, 230}));
  const Ids chat = tok_->encode("<|im_start|>user\nhi<|im_end|>\n");
  ASSERT_GE(chat.size(), 4u);
  EXPECT_EQ(chat.front(), 1);
  EXPECT_EQ(chat[chat.size() - 2], 2);
  const Ids plain = tok_->encode("<|im_start|>user", /*parse_special=*/false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 1), 0);
  EXPECT_EQ(tok_->decode(plain), "<|im_start|>user");
  EXPECT_EQ(tok_->bos(), 1);
  EXPECT_EQ(tok_->eos(), 2);
  EXPECT_EQ(tok_->eot(), 2);
  EXPECT_EQ(tok_->pad(), 2);
  EXPECT_FALSE(tok_->add_bos());
  EXPECT_TRUE(tok_->is_end_of_generation(2));
  EXPECT_FALSE(tok_->is_end_of_generation(1));
  EXPECT_EQ(tok_->token_type(1), TokenType::Control);
  EXPECT_EQ(tok_->n_vocab(), 49152);
}

TEST_F(TokenizerSmolLM, RoundTrips) {
  const char* texts[] = {
      "The quick brown fox jumps over the lazy dog.",
      "def f(x):\n\treturn x  *  2\n\n\n",
      "   leading and trailing   ",
      "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C",                 // 你好，世界
      "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",  // ZWJ family
      "e\xCC\x81 a\xCC\x88 \xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82 \xD9\x85\xD8\xB1",
      "1234567890 3.14 1e-9 \xD9\xA1\xD9\xA2",
      "",
  };
  for (const char* s : texts) EXPECT_EQ(tok_->decode(tok_->encode(s)), s) << s;
}

TEST_F(TokenizerSmolLM, StreamDecoderHoldsSplitCharacters) {
  // The emoji and CJK bytes straddle tokens (see KnownIdsAndSpecials).
  const std::string text = "Hello \xF0\x9F\x98\x80 \xE4\xB8\x96\xE7\x95\x8C!";
  const Ids ids = tok_->encode(text);
  StreamDecoder dec(*tok_);
  std::string out;
  size_t held = 0;
  for (TokenId id : ids) {
    const std::string piece = dec.push(id);
    EXPECT_TRUE(utf8::is_valid(piece)) << "partial UTF-8 emitted for token " << id;
    if (!utf8::is_valid(tok_->token_bytes(id))) ++held;
    out += piece;
  }
  out += dec.flush();
  EXPECT_EQ(out, text);
  EXPECT_GE(held, 3u);  // the test really split characters across tokens

  StreamDecoder cut(*tok_);
  EXPECT_EQ(cut.push(40303), " ");  // ' ' + the first 3 bytes of an emoji
  EXPECT_EQ(cut.flush(), std::string(utf8::kReplacement));
  EXPECT_EQ(cut.flush(), "");
  StreamDecoder bad(*tok_);
  EXPECT_EQ(bad.push(218), std::string(utf8::kReplacement));  // a lone continuation byte
}

TEST_F(TokenizerSmolLM, InvalidUtf8NeverCrashesAndKeepsSpellableBytes) {
  std::mt19937 rng(7);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string s(rng() % 40, '\0');
    for (char& c : s) c = char(rng() % 4 == 0 ? 0x80 + rng() % 0x80 : rng() % 256);
    EXPECT_EQ(tok_->decode(tok_->encode(s)), spellable(s));
  }
  EXPECT_EQ(tok_->decode(tok_->encode("ok\xC3(\xED\xA0\x80 \xF0\x9F\x98")), "ok\xC3(\xED\xA0\x80 \xF0\x9F\x98");
}

TEST_F(TokenizerSmolLM, HugeSingleWordsStayFast) {
  const std::string emoji = "\xF0\x9F\x98\x80";
  std::string many_emoji;
  for (int i = 0; i < 25'000; ++i) many_emoji += emoji;
  for (const std::string& s : {std::string(100'000, 'a'), std::string(100'000, ' '),
                               std::string(100'000, '7'), std::string(100'000, '\n'), many_emoji}) {
    const auto t0 = std::chrono::steady_clock::now();
    const Ids ids = tok_->encode(s);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(tok_->decode(ids), s);
    EXPECT_LE(ids.size(), s.size());
    EXPECT_LT(ms, 2000.0) << "encoding a 100 KB word took " << ms << " ms";
  }
}

}  // namespace
}  // namespace peregrine
