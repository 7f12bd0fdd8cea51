// SentencePiece-style tokenizer (tokenizer.ggml.model == "llama"): the merge-by-score loop
// against a textbook implementation, a tiny hand-built vocab in an in-memory GGUF (merges by
// score, unused pieces, whitespace, byte fallback, special tokens, decoding, bad metadata), and
// the real Gemma 3 vocab when the model file is present. Exact agreement with the
// `sentencepiece` library on thousands of lines is checked in
// tests/reference/test_tokenizer_spm.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <map>
#include <random>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "gguf_builder.h"
#include "tokenizer/pretokenizer_special.h"
#include "tokenizer/spm_merges.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode_utf8.h"

namespace peregrine {
namespace {

using Ids = std::vector<TokenId>;
const std::string kSp = "\xE2\x96\x81";  // "▁"

// ---- merge loop ---------------------------------------------------------------------------

// The textbook loop (no heap): merge the adjacent pair whose concatenation has the highest
// score, the leftmost on ties, until no pair is a piece. Characters are single bytes here.
std::vector<std::string> naive_segment(const std::map<std::string, float>& pieces,
                                       const std::string& text) {
  std::vector<std::string> sym;
  for (char c : text) sym.emplace_back(1, c);
  for (;;) {
    size_t best = sym.size();
    float best_score = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      const auto it = pieces.find(sym[i] + sym[i + 1]);
      if (it != pieces.end() && (best == sym.size() || it->second > best_score)) {
        best = i;
        best_score = it->second;
      }
    }
    if (best == sym.size()) return sym;
    sym[best] += sym[best + 1];
    sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }
}

std::vector<std::string> segment(const SpmMerges& m, const std::string& text) {
  std::vector<SpmMerges::Span> spans;
  m.segment(text, spans);
  std::vector<std::string> out;
  for (const auto& s : spans) out.push_back(text.substr(size_t(s.start), size_t(s.len)));
  return out;
}

TEST(TokenizerSpmMerges, MatchesTextbookLoopOnRandomVocabs) {
  std::mt19937 rng(5);
  for (int round = 0; round < 200; ++round) {
    // Pieces of 2..5 letters from "abcd"; scores from a small set, so ties are common.
    std::vector<std::string> store;
    std::map<std::string, float> pieces;
    for (int k = 0; k < 40; ++k) {
      std::string p;
      for (int n = 2 + int(rng() % 4); n > 0; --n) p += char('a' + rng() % 4);
      pieces[p] = -float(rng() % 6);
    }
    for (const auto& [p, s] : pieces) store.push_back(p);
    SpmMerges m;
    int32_t id = 0;
    for (const std::string& p : store) m.add(p, {id++, pieces[p], false});
    for (int t = 0; t < 20; ++t) {
      std::string text;
      for (int n = int(rng() % 60); n > 0; --n) text += char('a' + rng() % 4);
      ASSERT_EQ(segment(m, text), naive_segment(pieces, text)) << "text " << text;
    }
  }
}

TEST(TokenizerSpmMerges, KeepsCharactersWholeAndInvalidBytesAlone) {
  SpmMerges m;
  EXPECT_EQ(segment(m, "a\xC3\xA9" "\xF0\x9F\x98\x80"), (std::vector<std::string>{
                                                          "a", "\xC3\xA9", "\xF0\x9F\x98\x80"}));
  EXPECT_EQ(segment(m, "\xFF\xC3z\xE4\xB8"),
            (std::vector<std::string>{"\xFF", "\xC3", "z", "\xE4", "\xB8"}));
  EXPECT_TRUE(segment(m, "").empty());
}

TEST(TokenizerSpmMerges, UnusedPiecesAreSplitAgain) {
  // "ca" merges first (highest score) and so keeps "ab" from forming, then is split again
  // because it is an unused piece: c a b, not c ab. The split is the one its merge made.
  std::vector<std::string> store = {"ca", "ab", "cab", "xca"};
  SpmMerges m;
  m.add(store[0], {0, 0.0f, true});
  m.add(store[1], {1, -1.0f, false});
  EXPECT_EQ(segment(m, "cab"), (std::vector<std::string>{"c", "a", "b"}));
  m.add(store[2], {2, -2.0f, true});  // unused "cab" made of "ca" + "b": split twice
  EXPECT_EQ(segment(m, "cab"), (std::vector<std::string>{"c", "a", "b"}));
  m.add(store[3], {3, -3.0f, false});  // a normal piece made of "x" + unused "ca" stays whole
  EXPECT_EQ(segment(m, "xca"), (std::vector<std::string>{"xca"}));
}

TEST(TokenizerSpmMerges, LongRunIsFast) {
  // Pieces are runs of 2^k 'a's, longer runs scoring higher. O(n^2) rescanning would take
  // minutes here. The result equals the textbook loop's on a shorter run.
  std::vector<std::string> store;
  std::map<std::string, float> pieces;
  for (int k = 1; k <= 16; ++k) store.push_back(std::string(size_t(1) << k, 'a'));
  SpmMerges m;
  for (int k = 0; k < 16; ++k) {
    m.add(store[size_t(k)], {k, float(k), false});
    pieces[store[size_t(k)]] = float(k);
  }
  EXPECT_EQ(segment(m, std::string(1000, 'a')), naive_segment(pieces, std::string(1000, 'a')));

  const std::string text(300'000, 'a');
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<SpmMerges::Span> spans;
  m.segment(text, spans);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  int64_t covered = 0;
  for (const auto& s : spans) {
    EXPECT_EQ(s.start, covered);
    EXPECT_TRUE(s.len > 0 && (s.len & (s.len - 1)) == 0 && s.len <= 65536) << s.len;
    covered += s.len;
  }
  EXPECT_EQ(covered, 300'000);
  EXPECT_LE(spans.size(), 4u + 16u);  // four runs of 65536 and at most one of each smaller size
  EXPECT_LT(ms, 2000.0);
}

// ---- special-token matching (shared with the BPE tokenizer) ------------------------------

using Token = SpecialTokenMatcher::Token;
using Range = SpecialTokenMatcher::Range;

// Leftmost position first, the longest token there; ties of equal strings: the first id. A token
// not marked in_guarded counts only where it overlaps no guarded range.
std::vector<std::pair<std::string, int32_t>> naive_split(const std::vector<Token>& tokens,
                                                         const std::string& text,
                                                         const std::vector<Range>& guarded = {}) {
  auto allowed = [&](const Token& t, size_t pos) {
    if (t.in_guarded) return true;
    for (const auto& [b, e] : guarded)
      if (pos < e && b < pos + t.text.size()) return false;
    return true;
  };
  std::vector<std::pair<std::string, int32_t>> out;
  std::string plain;
  for (size_t pos = 0; pos < text.size();) {
    const Token* best = nullptr;
    for (const auto& t : tokens) {
      if (!t.text.empty() && text.compare(pos, t.text.size(), t.text) == 0 && allowed(t, pos) &&
          (best == nullptr || t.text.size() > best->text.size()))
        best = &t;
    }
    if (best == nullptr) {
      plain += text[pos++];
      continue;
    }
    if (!plain.empty()) out.emplace_back(std::exchange(plain, {}), -1);
    out.emplace_back(best->text, best->id);
    pos += best->text.size();
  }
  if (!plain.empty()) out.emplace_back(plain, -1);
  return out;
}

TEST(TokenizerSpecialMatcher, MatchesNaiveScanAndIsFastOnHostileText) {
  std::mt19937 rng(11);
  for (int round = 0; round < 300; ++round) {
    std::vector<Token> tokens;
    // A third of the rounds mark some tokens in_guarded (SentencePiece's user-defined pieces).
    const bool some_in_guarded = round % 3 == 2;
    for (int k = 0; k < 12; ++k) {
      std::string t;
      for (int n = int(rng() % 4); n > 0; --n) t += char('a' + rng() % 3);
      tokens.push_back({t, k, some_in_guarded && rng() % 2 == 0});  // may be empty or repeat
    }
    // Of equal strings the first wins, flag and all: the naive scan is given only the first.
    std::vector<Token> unique;
    for (const Token& t : tokens) {
      bool seen = false;
      for (const Token& u : unique) seen = seen || u.text == t.text;
      if (!seen) unique.push_back(t);
    }
    const SpecialTokenMatcher m(tokens);
    for (int t = 0; t < 10; ++t) {
      std::string text;
      for (int n = int(rng() % 30); n > 0; --n) text += char('a' + rng() % 4);
      // Sorted, disjoint, non-empty guarded ranges (none for each round's first text).
      std::vector<Range> guarded;
      for (size_t at = rng() % 6; t > 0 && at < text.size(); at += 1 + rng() % 6) {
        const size_t end = std::min(text.size(), at + 1 + rng() % 5);
        guarded.emplace_back(at, end);
        at = end;
      }
      std::vector<SpecialTokenMatcher::Fragment> frags;
      m.split(text, guarded, frags);
      std::vector<std::pair<std::string, int32_t>> got;
      for (const auto& f : frags) got.emplace_back(std::string(f.text), f.id);
      ASSERT_EQ(got, naive_split(unique, text, guarded)) << text << " round " << round;
    }
  }
  // Gemma has ~6,000 control tokens beginning with '<' ("<unused0>".."<unused6241>").
  std::vector<Token> unused;
  for (int k = 0; k < 6242; ++k) unused.push_back({fmt::format("<unused{}>", k), k});
  const SpecialTokenMatcher m(unused);
  const std::string text = std::string(1'000'000, '<') + "<unused17>";
  for (bool guard : {false, true}) {
    // Guarded: all but the token, which is recognised all the same.
    const std::vector<Range> guarded{{0, 1'000'000}};
    const auto t0 = std::chrono::steady_clock::now();
    std::vector<SpecialTokenMatcher::Fragment> frags;
    m.split(text, guard ? std::span<const Range>(guarded) : std::span<const Range>(), frags);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_EQ(frags.size(), 2u);
    EXPECT_EQ(frags[1].id, 17);
    EXPECT_LT(ms, 1000.0);
  }
}

TEST(TokenizerSpecialMatcher, GuardedRangesHideTokensThatTouchThem) {
  const SpecialTokenMatcher m({{"<s>", 1}, {"<s>x", 2}, {"!!", 3, /*in_guarded=*/true}});
  using Out = std::vector<std::pair<std::string, int32_t>>;
  auto split = [&](std::string_view text, const std::vector<Range>& guarded) {
    std::vector<SpecialTokenMatcher::Fragment> frags;
    m.split(text, guarded, frags);
    Out out;
    for (const auto& f : frags) out.emplace_back(std::string(f.text), f.id);
    return out;
  };
  EXPECT_EQ(split("a<s>b", {}), (Out{{"a", -1}, {"<s>", 1}, {"b", -1}}));
  EXPECT_EQ(split("a<s>b", {{1, 4}}), (Out{{"a<s>b", -1}}));  // the token is the range
  EXPECT_EQ(split("a<s>b", {{0, 2}}), (Out{{"a<s>b", -1}}));  // starts inside one
  EXPECT_EQ(split("a<s>b", {{3, 5}}), (Out{{"a<s>b", -1}}));  // ends inside one
  EXPECT_EQ(split("a<s>b", {{2, 3}}), (Out{{"a<s>b", -1}}));  // holds one
  EXPECT_EQ(split("a<s>b", {{0, 1}, {4, 5}}),                 // touches two
            (Out{{"a", -1}, {"<s>", 1}, {"b", -1}}));
  // The longest token would reach into a guarded range: a shorter one outside it still counts.
  EXPECT_EQ(split("<s>x", {}), (Out{{"<s>x", 2}}));
  EXPECT_EQ(split("<s>x", {{3, 4}}), (Out{{"<s>", 1}, {"x", -1}}));
  // Plain text is one fragment across range edges; in_guarded tokens match everywhere.
  EXPECT_EQ(split("ab!!cd", {{1, 3}, {3, 5}}), (Out{{"ab", -1}, {"!!", 3}, {"cd", -1}}));
}

// ---- tiny vocab in a GGUF -----------------------------------------------------------------

// Gemma's layout in miniature: control tokens, user-defined ones (a tag, a run of two spaces
// written with ' ' as llama.cpp's converter does, a newline), 256 byte tokens, scored pieces.
struct TinySpm {
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  std::vector<float> scores;
  bool with_scores = true, with_prefix_key = true, add_space_prefix = false;
  int64_t bos = 2, eos = 1, unk = 3;

  TinySpm() {
    auto add = [&](std::string t, int32_t type, float score) {
      tokens.push_back(std::move(t));
      types.push_back(type);
      scores.push_back(score);
    };
    for (const char* c : {"<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"})
      add(c, 3, -1000);
    add("<b>", 4, -1000);
    add("  ", 4, -1000);
    add("\n", 4, -1000);
    for (int b = 0; b < 256; ++b) add(fmt::format("<0x{:02X}>", b), 6, 0);
    add(kSp, 1, -100);
    for (const char* c : {"a", "b", "c", "x"}) add(c, 1, -100);
    add("ab", 1, -1);
    add("bc", 1, -0.5f);
    add("bb", 1, -1.5f);
    add(kSp + "a", 1, -3);
    add(kSp + "b", 1, -4);
    add(kSp + "ab", 1, -5);
    add("ca", 5, 0);  // unused
  }
  TokenId id(std::string_view t) const {
    for (size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i] == t) return TokenId(i);
    return -1;
  }
  std::vector<uint8_t> bytes() const {
    test::GgufBuilder b;
    b.kv_str("tokenizer.ggml.model", "llama");
    b.kv_str_array("tokenizer.ggml.tokens", tokens).kv_i32_array("tokenizer.ggml.token_type", types);
    if (with_scores) b.kv_f32_array("tokenizer.ggml.scores", scores);
    b.kv_u32("tokenizer.ggml.bos_token_id", uint32_t(bos));
    b.kv_u32("tokenizer.ggml.eos_token_id", uint32_t(eos));
    b.kv_i32("tokenizer.ggml.unknown_token_id", int32_t(unk));
    b.kv_bool("tokenizer.ggml.add_bos_token", true);
    if (with_prefix_key) b.kv_bool("tokenizer.ggml.add_space_prefix", add_space_prefix);
    return b.build();
  }
};

struct Loaded {
  std::vector<uint8_t> data;  // the File points into it
  std::unique_ptr<gguf::File> file;
  Result<std::unique_ptr<Tokenizer>> tok = Error{"not loaded"};
};

std::unique_ptr<Loaded> load(const std::vector<uint8_t>& data) {
  auto l = std::make_unique<Loaded>();
  l->data = data;
  auto f = gguf::File::parse(l->data.data(), l->data.size(), "tiny-spm.gguf");
  if (!f.ok()) ADD_FAILURE() << f.error().message;
  if (!f.ok()) return l;
  l->file = std::move(f).value();
  l->tok = Tokenizer::from_gguf(*l->file);
  return l;
}

TEST(TokenizerSpmTiny, MergesByScore) {
  const TinySpm v;
  auto l = load(v.bytes());
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  const Tokenizer& t = **l->tok;
  auto id = [&](std::string_view s) { return v.id(s); };
  EXPECT_EQ(t.encode("ab"), (Ids{id("ab")}));
  EXPECT_EQ(t.encode("abc"), (Ids{id("a"), id("bc")}));  // "bc" outscores "ab"
  EXPECT_EQ(t.encode("abb"), (Ids{id("ab"), id("b")}));  // "ab" outscores "bb"
  EXPECT_EQ(t.encode("bbb"), (Ids{id("bb"), id("b")}));  // a tie: the leftmost pair
  EXPECT_EQ(t.encode("cab"), (Ids{id("c"), id("a"), id("b")}));  // unused "ca" split again
  EXPECT_EQ(t.encode("a b"), (Ids{id("a"), id(kSp + "b")}));      // ' ' is "▁"
  EXPECT_EQ(t.encode("a  b"), (Ids{id("a"), id("  "), id("b")}));  // user-defined run
  EXPECT_EQ(t.encode("a   b"), (Ids{id("a"), id("  "), id(kSp + "b")}));
  EXPECT_EQ(t.encode("a" + kSp + kSp + "b"), (Ids{id("a"), id("  "), id("b")}));  // as SentencePiece
  EXPECT_EQ(t.encode(""), Ids{});
}

TEST(TokenizerSpmTiny, ByteFallbackAndSpecials) {
  const TinySpm v;
  auto l = load(v.bytes());
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  const Tokenizer& t = **l->tok;
  auto id = [&](std::string_view s) { return v.id(s); };
  EXPECT_EQ(t.encode("a\xC3\xA9"), (Ids{id("a"), id("<0xC3>"), id("<0xA9>")}));  // "aé"
  EXPECT_EQ(t.encode("\xFF"), (Ids{id("<0xFF>")}));  // not UTF-8: its byte token all the same
  EXPECT_EQ(t.encode("a<start_of_turn>b\n"), (Ids{id("a"), 4, id("b"), id("\n")}));
  const Ids plain = t.encode("a<start_of_turn>b", /*parse_special=*/false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 4), 0);
  EXPECT_EQ(t.decode(plain), "a<start_of_turn>b");
  EXPECT_EQ(t.encode("x<b>x", /*parse_special=*/false), (Ids{id("x"), id("<b>"), id("x")}));
  EXPECT_EQ(t.encode("<start_of_turn><end_of_turn>"), (Ids{4, 5}));
}

TEST(TokenizerSpmTiny, DecodesAndStreams) {
  const TinySpm v;
  auto l = load(v.bytes());
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  const Tokenizer& t = **l->tok;
  for (const std::string s : {"a b  c\n<start_of_turn>\xC3\xA9 \xF0\x9F\x98\x80!", " ab", "  ",
                              "\xFF\xC3z", "cab <b> bbb"}) {
    EXPECT_EQ(t.decode(t.encode(s)), s);
  }
  EXPECT_EQ(t.token_bytes(v.id(kSp + "ab")), " ab");
  EXPECT_EQ(t.token_bytes(v.id("<0x41>")), "A");
  EXPECT_EQ(t.token_bytes(v.id("  ")), "  ");
  EXPECT_EQ(t.token_bytes(4), "<start_of_turn>");
  EXPECT_EQ(t.token_bytes(-1), "");
  StreamDecoder dec(t);
  EXPECT_EQ(dec.push(v.id(kSp + "a")), " a");
  EXPECT_EQ(dec.push(v.id("<0xC3>")), "");  // half of "é" is held back
  EXPECT_EQ(dec.push(v.id("<0xA9>")), "\xC3\xA9");
  EXPECT_EQ(dec.push(v.id("<0xC3>")), "");
  EXPECT_EQ(dec.flush(), std::string(utf8::kReplacement));
}

TEST(TokenizerSpmTiny, SpecialIdsAndEndOfGeneration) {
  const TinySpm v;
  auto l = load(v.bytes());
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  const Tokenizer& t = **l->tok;
  EXPECT_EQ(t.bos(), 2);
  EXPECT_EQ(t.eos(), 1);
  EXPECT_EQ(t.unk(), 3);
  EXPECT_EQ(t.eot(), 5);  // found by name: <end_of_turn>
  EXPECT_TRUE(t.add_bos());
  EXPECT_TRUE(t.is_end_of_generation(1));
  EXPECT_TRUE(t.is_end_of_generation(5));
  EXPECT_FALSE(t.is_end_of_generation(4));
  EXPECT_EQ(t.n_vocab(), int32_t(v.tokens.size()));
  EXPECT_EQ(t.token_type(v.id("ca")), TokenType::Unused);
}

TEST(TokenizerSpmTiny, SpacePrefix) {
  TinySpm v;
  v.add_space_prefix = true;
  auto l = load(v.bytes());
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  const Tokenizer& t = **l->tok;
  EXPECT_EQ(t.encode("ab"), (Ids{v.id(kSp + "ab")}));  // "ab" first, then "▁" + "ab"
  EXPECT_EQ(t.encode("b a"), (Ids{v.id(kSp + "b"), v.id(kSp + "a")}));
  EXPECT_EQ(t.encode(""), Ids{});
  EXPECT_EQ(t.decode(t.encode("a b")), " a b");  // the dummy prefix decodes as a space
  v.with_prefix_key = false;  // absent: SentencePiece's default, on
  auto l2 = load(v.bytes());
  ASSERT_TRUE(l2->tok.ok()) << l2->tok.error().message;
  EXPECT_EQ((*l2->tok)->encode("ab"), (Ids{v.id(kSp + "ab")}));
}

TEST(TokenizerSpmTiny, UnkWithoutByteTokens) {
  TinySpm v;
  for (int b = 0; b < 256; ++b) v.types[size_t(9 + b)] = 1;  // byte tokens become plain text
  auto l = load(v.bytes());
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  EXPECT_EQ((*l->tok)->encode("a\xC3\xA9" "b"), (Ids{v.id("a"), 3, v.id("b")}));
}

TEST(TokenizerSpmTiny, BoundsInputLength) {
  const TinySpm v;
  auto l = load(v.bytes());
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  const Tokenizer& t = **l->tok;
  const std::string big(Tokenizer::kMaxEncodeBytes + 1, 'a');
  auto r = t.try_encode(big);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("longer than the tokenizer takes at once"), std::string::npos)
      << r.error().message;
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
  auto ok = t.try_encode("ab ab");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, t.encode("ab ab"));
}

TEST(TokenizerSpmTiny, GuardedRangesFollowTheEscapedText) {
  TinySpm v;
  auto l = load(v.bytes());
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  const Tokenizer& t = **l->tok;
  using R = std::vector<Tokenizer::ByteRange>;
  auto guarded = [&](std::string_view text, const R& ranges) {
    auto r = t.try_encode_guarded(text, ranges);
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? *r : Ids{};
  };
  auto has_control = [&](const Ids& ids) { return std::count(ids.begin(), ids.end(), 4) > 0; };
  // Each ' ' is three bytes ("▁") where tokens are matched: the ranges must move with them.
  const std::string text = "a b <start_of_turn>x";  // the token is bytes [4, 19)
  EXPECT_EQ(guarded(text, {}), t.encode(text));
  EXPECT_TRUE(has_control(guarded(text, {{0, 4}})));    // ends where the token starts
  EXPECT_TRUE(has_control(guarded(text, {{19, 20}})));  // starts where it ends
  EXPECT_EQ(guarded(text, {{0, 4}, {19, 20}}), t.encode(text));
  for (const R& r : {R{{0, 5}}, R{{3, 5}}, R{{18, 20}}, R{{10, 11}}, R{{0, 20}}}) {
    const Ids ids = guarded(text, r);
    EXPECT_FALSE(has_control(ids)) << r[0].first << ".." << r[0].second;
    EXPECT_EQ(ids, t.encode(text, /*parse_special=*/false));  // one plain stretch
    EXPECT_EQ(t.decode(ids), text);
  }
  // User-defined pieces are matched in guarded text too (SentencePiece matches them anywhere),
  // across a range's edge as well.
  EXPECT_EQ(guarded("x<b>x", {{0, 5}}), (Ids{v.id("x"), v.id("<b>"), v.id("x")}));
  EXPECT_EQ(guarded("a  b", {{2, 4}}), t.encode("a  b"));
  EXPECT_EQ(guarded("a  b", {{2, 4}}), (Ids{v.id("a"), v.id("  "), v.id("b")}));

  // The dummy space prefix goes with the first character.
  v.add_space_prefix = true;
  auto lp = load(v.bytes());
  ASSERT_TRUE(lp->tok.ok()) << lp->tok.error().message;
  const Tokenizer& tp = **lp->tok;
  auto guarded_p = [&](std::string_view s, const R& ranges) {
    auto r = tp.try_encode_guarded(s, ranges);
    EXPECT_TRUE(r.ok()) << r.error().message;
    return r.ok() ? *r : Ids{};
  };
  EXPECT_TRUE(has_control(guarded_p("<start_of_turn>a", {})));
  EXPECT_TRUE(has_control(guarded_p("<start_of_turn>a", {{15, 16}})));
  EXPECT_FALSE(has_control(guarded_p("<start_of_turn>a", {{0, 1}})));
  EXPECT_EQ(guarded_p("<start_of_turn>a", {{0, 1}}), tp.encode("<start_of_turn>a", false));
  EXPECT_EQ(guarded_p("b <start_of_turn>", {{0, 2}}), tp.encode("b <start_of_turn>"));
}

TEST(TokenizerSpmTiny, GuardedRangesAreChecked) {
  const TinySpm v;
  auto l = load(v.bytes());
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  const Tokenizer& t = **l->tok;
  using R = std::vector<Tokenizer::ByteRange>;
  const std::string text = "ab<start_of_turn>ab<end_of_turn>";  // tokens at [2, 17), [19, 32)
  // Any order, overlapping or touching: their union is guarded.
  auto merged = t.try_encode_guarded(text, R{{0, 3}, {19, 25}});
  ASSERT_TRUE(merged.ok());
  for (const R& r : {R{{20, 25}, {0, 3}, {19, 21}}, R{{0, 1}, {1, 3}, {19, 25}, {5, 5}}}) {
    auto got = t.try_encode_guarded(text, r);
    ASSERT_TRUE(got.ok()) << got.error().message;
    EXPECT_EQ(*got, *merged);
  }
  EXPECT_EQ(*merged, t.encode(text, false));
  for (const R& bad : {R{{3, 2}}, R{{0, 33}}, R{{40, 41}}}) {
    const auto r = t.try_encode_guarded(text, bad);
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find("is not within the text (32 bytes)"), std::string::npos)
        << r.error().message;
  }
  const std::string big(Tokenizer::kMaxEncodeBytes + 1, 'a');
  const auto r = t.try_encode_guarded(big, R{{0, 1}});
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("longer than the tokenizer takes at once"), std::string::npos);
}

TEST(TokenizerSpmTiny, EncodesPastTheBoundInLinearTime) {
  // encode() takes any length, in windows of kMaxEncodeBytes cut at a character boundary. The
  // cut used to walk back over every continuation byte, so continuation bytes (invalid UTF-8)
  // past the bound became one-byte windows of kMaxEncodeBytes steps each: ~50 s for the text
  // below (8 KiB past the bound), hours for 1 MiB. Now it costs about what the bound does.
  const TinySpm v;
  auto l = load(v.bytes());
  ASSERT_TRUE(l->tok.ok()) << l->tok.error().message;
  const Tokenizer& t = **l->tok;
  auto ms_since = [](std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  };
  std::string text(Tokenizer::kMaxEncodeBytes, '\x80');
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(t.encode(text).size(), text.size());  // one window
  const double ms_bound = ms_since(t0);
  text.append(8192, '\x80');
  t0 = std::chrono::steady_clock::now();
  const Ids ids = t.encode(text);
  const double ms_past = ms_since(t0);
  // A complexity guard, not a speed target: the quadratic cut took ~25x the bound's time; a
  // linear one takes ~1x. 10x + 5 s leaves room for any machine and sanitizer build.
  EXPECT_LT(ms_past, 10 * ms_bound + 5000.0) << "the bound alone took " << ms_bound << " ms";
  ASSERT_EQ(ids.size(), text.size());  // each byte its byte token
  EXPECT_EQ(std::count(ids.begin(), ids.end(), v.id("<0x80>")), std::ptrdiff_t(ids.size()));
}

TEST(TokenizerSpmTiny, RejectsBadMetadata) {
  auto expect_error = [](const TinySpm& v, const std::string& needle) {
    auto l = load(v.bytes());
    const std::string err = l->tok.ok() ? "(loaded fine)" : l->tok.error().message;
    EXPECT_NE(err.find(needle), std::string::npos) << "error was: " << err;
    EXPECT_EQ(err.find('\n'), std::string::npos) << "not one line: " << err;
  };
  const size_t n = TinySpm{}.tokens.size();
  TinySpm v;
  v.with_scores = false;
  expect_error(v, "tokenizer.ggml.scores is missing");
  v = {};
  v.scores.pop_back();
  expect_error(v, fmt::format("tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {}",
                              n - 1, n));
  v = {};
  v.scores[270] = std::numeric_limits<float>::quiet_NaN();
  expect_error(v, "tokenizer.ggml.scores[270] = nan is not a finite number");
  v = {};
  v.scores[271] = std::numeric_limits<float>::infinity();
  expect_error(v, "tokenizer.ggml.scores[271]");
  v = {};
  v.types.pop_back();
  expect_error(v, "tokenizer.ggml.token_type has");
  v = {};
  v.types[7] = 7;
  expect_error(v, "tokenizer.ggml.token_type[7] = 7 is not a token type");
  v = {};
  v.tokens[9] = "<0xZZ>";
  expect_error(v, "tokenizer.ggml.tokens[9] = '<0xZZ>' has type byte but is not <0xXX>");
  v = {};
  v.types[v.id("ab")] = 6;
  expect_error(v, "'ab' has type byte");
  v = {};
  v.bos = int64_t(n);
  expect_error(v, fmt::format("tokenizer.ggml.bos_token_id = {} is outside the vocab", n));
  v = {};
  v.unk = -2;
  expect_error(v, "tokenizer.ggml.unknown_token_id = -2 is outside the vocab");
  v = {};
  v.tokens.clear();
  v.types.clear();
  v.scores.clear();
  expect_error(v, "tokenizer.ggml.tokens is empty");
}

TEST(TokenizerSpmTiny, RejectsMistypedKeys) {
  auto error_of = [](const test::GgufBuilder& b) {
    const auto data = b.build();
    auto l = load(data);
    return l->tok.ok() ? std::string("(loaded fine)") : l->tok.error().message;
  };
  const TinySpm v;
  test::GgufBuilder b;
  b.kv_str("tokenizer.ggml.model", "llama").kv_str_array("tokenizer.ggml.tokens", v.tokens);
  b.kv_str_array("tokenizer.ggml.scores", v.tokens);  // strings where floats belong
  EXPECT_NE(error_of(b).find("tokenizer.ggml.scores"), std::string::npos) << error_of(b);

  test::GgufBuilder c;
  c.kv_str("tokenizer.ggml.model", "llama").kv_str_array("tokenizer.ggml.tokens", v.tokens);
  c.kv_f32_array("tokenizer.ggml.scores", v.scores);
  c.kv_str("tokenizer.ggml.add_space_prefix", "yes");
  EXPECT_NE(error_of(c).find("tokenizer.ggml.add_space_prefix"), std::string::npos) << error_of(c);
}

// ---- the real Gemma 3 vocab -----------------------------------------------------------------

std::string gemma_path() {
  if (const char* p = std::getenv("PEREGRINE_GEMMA_PATH"); p && *p) return p;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/peregrine/models/gemma-3-270m-q4_k_m.gguf";
}

class TokenizerGemma : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(gemma_path())) return;
    auto f = gguf::File::open(gemma_path());
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
    if (tok_ == nullptr) GTEST_SKIP() << "Gemma 3 GGUF not found at " << gemma_path();
  }
  static inline gguf::File* file_ = nullptr;
  static inline Tokenizer* tok_ = nullptr;
};

TEST_F(TokenizerGemma, KnownIdsAndSpecials) {
  // Ids from the `sentencepiece` library with a model built from this vocab
  // (tests/reference/gguf_spm_model.py).
  EXPECT_EQ(tok_->encode("Hello world, this is  a test.<start_of_turn>user\nhi<end_of_turn>"),
            (Ids{9259, 1902, 236764, 672, 563, 138, 236746, 1594, 236761, 105, 2364, 107, 2202, 106}));
  EXPECT_EQ(tok_->encode(std::string("\x00\x01\xF0\x9D\x94\x98", 6)),  // NUL, SOH, a rare letter
            (Ids{238, 249732, 478, 395, 386, 390}));
  EXPECT_EQ(tok_->bos(), 2);
  EXPECT_EQ(tok_->eos(), 1);
  EXPECT_EQ(tok_->eot(), 106);
  EXPECT_EQ(tok_->unk(), 3);
  EXPECT_EQ(tok_->pad(), 0);
  EXPECT_TRUE(tok_->add_bos());
  EXPECT_TRUE(tok_->is_end_of_generation(1));
  EXPECT_TRUE(tok_->is_end_of_generation(106));
  EXPECT_FALSE(tok_->is_end_of_generation(105));
  EXPECT_EQ(tok_->n_vocab(), 262144);
}

TEST_F(TokenizerGemma, RoundTrips) {
  const char* texts[] = {
      "The quick brown fox jumps over the lazy dog.",
      "def f(x):\n\treturn x  *  2\n\n\n",
      "   leading and trailing   ",
      "\xE4\xBD\xA0\xE5\xA5\xBD\xEF\xBC\x8C\xE4\xB8\x96\xE7\x95\x8C",
      "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7",
      "<start_of_turn>user\n<table><tr><td>1</td></tr></table><end_of_turn>\n",
      "\xFF\xFE not UTF-8 \xC3",
      "",
  };
  for (const char* s : texts) EXPECT_EQ(tok_->decode(tok_->encode(s)), s) << s;
}

}  // namespace
}  // namespace peregrine
