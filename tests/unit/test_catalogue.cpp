// The catalogue constraint (constrain/catalogue.h) against an independent oracle: a std::set
// of the items' token sequences. On random walks through the trie, the allowed set (mask(),
// allowed_tokens(), next_tokens()) equals the next tokens of the sequences with the walked
// prefix, plus the end tokens exactly when the prefix is itself an item; complete() equals
// membership. Then bad input, --choices files, and the real SmolLM2 and Gemma 3 tokenizers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <unistd.h>

#include "constrain/catalogue.h"
#include "core/thread_pool.h"
#include "gguf_builder.h"
#include "real_model.h"
#include "tokenizer/bpe_byte_level.h"

namespace peregrine {
namespace {

using constrain::Catalogue;
using constrain::CatalogueConstraint;
using constrain::CatalogueLimits;
using Ids = std::vector<TokenId>;

// The tokens the oracle allows after `prefix`: the next token of every sequence extending it,
// and the end tokens when the prefix is a whole sequence.
std::set<TokenId> oracle_next(const std::set<Ids>& items, const Ids& prefix,
                              const Ids& end_tokens) {
  std::set<TokenId> out;
  for (auto it = items.lower_bound(prefix); it != items.end(); ++it) {
    if (it->size() < prefix.size() || !std::equal(prefix.begin(), prefix.end(), it->begin())) break;
    if (it->size() == prefix.size()) {
      out.insert(end_tokens.begin(), end_tokens.end());
    } else {
      out.insert((*it)[prefix.size()]);
    }
  }
  return out;
}

// The allowed set as each of the three views reports it; all must agree.
std::set<TokenId> allowed_by_mask(const CatalogueConstraint& c, int32_t n_vocab, std::mt19937& rng) {
  std::vector<float> row(static_cast<size_t>(n_vocab));
  std::uniform_real_distribution<float> u(-5.0f, 5.0f);
  for (float& x : row) x = u(rng);
  const std::vector<float> before = row;
  c.mask(row.data(), n_vocab);
  std::set<TokenId> out;
  for (int32_t t = 0; t < n_vocab; ++t) {
    if (row[size_t(t)] == -INFINITY) continue;
    EXPECT_EQ(row[size_t(t)], before[size_t(t)]) << "token " << t << " changed but not masked";
    out.insert(t);
  }
  return out;
}

std::set<TokenId> allowed_by_bits(const CatalogueConstraint& c, int32_t n_vocab) {
  std::vector<uint32_t> words(static_cast<size_t>(n_vocab + 31) / 32, 0xDEADBEEF);
  c.allowed_tokens(words.data(), n_vocab);
  std::set<TokenId> out;
  for (int32_t t = 0; t < n_vocab; ++t) {
    if ((words[size_t(t) / 32] >> (t % 32)) & 1) out.insert(t);
  }
  // Bits past n_vocab in the last word stay clear.
  for (int32_t t = n_vocab; t < int32_t(words.size() * 32); ++t) {
    EXPECT_FALSE((words[size_t(t) / 32] >> (t % 32)) & 1) << t;
  }
  return out;
}

// Random walks from the root: at each step the views match the oracle; then one token is
// taken (sometimes a disallowed one first, which advance() must refuse and ignore).
void check_walks(const std::shared_ptr<const Catalogue>& cat, const std::set<Ids>& items,
                 const Ids& end_tokens, int n_walks, uint32_t seed) {
  const int32_t n_vocab = cat->n_vocab();
  std::mt19937 rng(seed);
  for (int w = 0; w < n_walks; ++w) {
    CatalogueConstraint c(cat, end_tokens);
    Ids prefix;
    for (;;) {
      const std::set<TokenId> want = oracle_next(items, prefix, end_tokens);
      const bool member = items.count(prefix) > 0;
      ASSERT_EQ(c.complete(), member) << "walk " << w << " depth " << prefix.size();
      ASSERT_EQ(allowed_by_bits(c, n_vocab), want) << "walk " << w << " depth " << prefix.size();
      ASSERT_EQ(allowed_by_mask(c, n_vocab, rng), want) << "walk " << w << " depth " << prefix.size();
      std::set<TokenId> next(c.next_tokens().begin(), c.next_tokens().end());
      if (member) next.insert(end_tokens.begin(), end_tokens.end());
      ASSERT_EQ(next, want);
      ASSERT_TRUE(std::is_sorted(c.next_tokens().begin(), c.next_tokens().end()));
      if (rng() % 4 == 0) {
        const TokenId bad = TokenId(rng() % uint32_t(n_vocab));
        if (!want.count(bad)) {
          ASSERT_FALSE(c.advance(bad)) << bad;
        }
      }
      const Ids steps(c.next_tokens().begin(), c.next_tokens().end());
      // End here sometimes when allowed (always when nothing else is).
      if (steps.empty() || (member && rng() % 3 == 0)) {
        ASSERT_TRUE(member) << "a dead end that is not an item";
        break;
      }
      const TokenId t = steps[rng() % steps.size()];
      ASSERT_TRUE(c.advance(t));
      prefix.push_back(t);
    }
  }
}

// Random token sequences over a small alphabet: many shared prefixes, items that are
// prefixes of others, and duplicates.
std::vector<Ids> random_sequences(size_t n, int32_t alphabet, size_t max_len, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Ids> out;
  for (size_t i = 0; i < n; ++i) {
    if (!out.empty() && rng() % 5 == 0) {  // a prefix, an extension or a copy of an earlier one
      Ids s = out[rng() % out.size()];
      switch (rng() % 3) {
        case 0: s.resize(1 + rng() % s.size()); break;
        case 1: s.push_back(TokenId(rng() % uint32_t(alphabet))); break;
        default: break;
      }
      out.push_back(std::move(s));
      continue;
    }
    Ids s(1 + rng() % max_len);
    for (TokenId& t : s) t = TokenId(rng() % uint32_t(alphabet));
    out.push_back(std::move(s));
  }
  return out;
}

TEST(Catalogue, RandomWalksMatchTheOracle) {
  for (uint32_t seed : {1u, 2u, 3u}) {
    // Token ids spread over a larger vocab, so that the mask's gaps have all shapes.
    const int32_t n_vocab = 1000;
    std::vector<Ids> seqs = random_sequences(3000, 12, 7, seed);
    for (Ids& s : seqs) {
      for (TokenId& t : s) t = t * 83 % n_vocab;
    }
    auto cat = Catalogue::from_tokens(seqs, n_vocab);
    ASSERT_TRUE(cat.ok()) << cat.error().message;
    const std::set<Ids> items(seqs.begin(), seqs.end());
    EXPECT_EQ((*cat)->n_items(), items.size());
    EXPECT_LT(items.size(), seqs.size());  // the generator made duplicates
    // Nodes: one per distinct non-empty prefix, plus the root.
    std::set<Ids> prefixes;
    for (const Ids& s : items) {
      for (size_t k = 1; k <= s.size(); ++k) prefixes.insert(Ids(s.begin(), s.begin() + long(k)));
    }
    EXPECT_EQ((*cat)->n_nodes(), prefixes.size() + 1);
    check_walks(*cat, items, Ids{998, 5, 999}, 300, seed);
    check_walks(*cat, items, Ids{}, 100, seed + 10);
  }
}

TEST(Catalogue, WideFanOutsMatchTheOracle) {
  // Fan-outs of hundreds of tokens (more than one chunk of mask()'s gather and scatter),
  // with end tokens among and beside them.
  const int32_t n_vocab = 1000;
  std::vector<Ids> seqs = random_sequences(6000, n_vocab, 3, 4);
  for (int i = 0; i < 1500; ++i) seqs.push_back({0, TokenId(i * 7 % 997)});  // node "0" is wide
  auto cat = Catalogue::from_tokens(seqs, n_vocab);
  ASSERT_TRUE(cat.ok()) << cat.error().message;
  EXPECT_GT((*cat)->next_tokens(Catalogue::kRoot).size(), 900u);
  EXPECT_GT((*cat)->next_tokens((*cat)->first_child(Catalogue::kRoot)).size(), 256u);
  check_walks(*cat, std::set<Ids>(seqs.begin(), seqs.end()), Ids{0, 1, 500, 999}, 200, 4);
}

TEST(Catalogue, EndTokensAtTheEdgesOfTheVocab) {
  // End tokens at 0 and n_vocab - 1, and one also a catalogue token, with the mask's first
  // and last gaps empty.
  const std::vector<Ids> seqs = {{0, 5}, {0}, {7, 9}, {9}};
  auto cat = Catalogue::from_tokens(seqs, 10);
  ASSERT_TRUE(cat.ok()) << cat.error().message;
  check_walks(*cat, std::set<Ids>(seqs.begin(), seqs.end()), Ids{0, 9}, 50, 7);
}

TEST(Catalogue, PrefixItemIsTerminalAndHasChildren) {
  const std::vector<Ids> seqs = {{3, 4, 5}, {3, 4}, {3, 4, 5}, {6}};
  auto cat = Catalogue::from_tokens(seqs, 8);
  ASSERT_TRUE(cat.ok()) << cat.error().message;
  EXPECT_EQ((*cat)->n_items(), 3u);
  EXPECT_EQ((*cat)->n_nodes(), 5u);  // root, 3, 34, 345, 6
  CatalogueConstraint c(*cat, Ids{7});
  EXPECT_FALSE(c.complete());
  EXPECT_FALSE(c.advance(4));
  EXPECT_FALSE(c.advance(7));  // an end token before any item is complete
  ASSERT_TRUE(c.advance(3));
  ASSERT_TRUE(c.advance(4));
  EXPECT_TRUE(c.complete());
  std::vector<uint32_t> words(1);
  c.allowed_tokens(words.data(), 8);
  EXPECT_EQ(words[0], (1u << 5) | (1u << 7));
  ASSERT_TRUE(c.advance(5));
  EXPECT_TRUE(c.complete());
  EXPECT_TRUE(c.next_tokens().empty());
  c.allowed_tokens(words.data(), 8);
  EXPECT_EQ(words[0], 1u << 7);
  // An end token taken as a token (end of generation ignored): only end tokens follow.
  EXPECT_TRUE(c.advance(7));
  EXPECT_TRUE(c.complete());
  EXPECT_FALSE(c.advance(5));
  EXPECT_TRUE(c.advance(7));
}

TEST(Catalogue, MaskIgnoresTokensPastTheRow) {
  // A row shorter than the catalogue's vocab (never in practice): nothing past it is written.
  auto cat = Catalogue::from_tokens(std::vector<Ids>{{2}, {90}}, 100);
  ASSERT_TRUE(cat.ok());
  CatalogueConstraint c(*cat, Ids{95});
  std::vector<float> row(51, 1.0f);
  c.mask(row.data(), 50);
  EXPECT_EQ(row[2], 1.0f);
  EXPECT_EQ(row[50], 1.0f);
  for (int t = 0; t < 50; ++t) {
    if (t != 2) {
      EXPECT_EQ(row[size_t(t)], -INFINITY) << t;
    }
  }
}

TEST(Catalogue, FromTokensRejectsBadSequences) {
  auto e = Catalogue::from_tokens(std::vector<Ids>{{1}, {}}, 10);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().message, "catalogue: item 2 is empty");
  e = Catalogue::from_tokens(std::vector<Ids>{{1, 10}}, 10);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().message.find("item 1 has token 10 outside"), std::string::npos);
  e = Catalogue::from_tokens(std::vector<Ids>{}, 10);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.error().message, "catalogue: no items");
}

// ---- a tiny byte-level BPE vocab ------------------------------------------------------------

// Printable ASCII bytes (so anything else cannot be spelled), a few merges, and an end token.
struct TinyTokenizer {
  std::vector<uint8_t> data;
  std::unique_ptr<gguf::File> file;
  std::unique_ptr<Tokenizer> tok;
  TinyTokenizer() {
    std::vector<std::string> tokens = {"<|endoftext|>"};
    std::vector<int32_t> types = {3};
    for (int b = 0x20; b < 0x7F; ++b) {
      tokens.push_back(byte_level::byte_to_text(uint8_t(b)));
      types.push_back(1);
    }
    const std::vector<std::string> merges = {"i t", "e m", "it em", "\xC4\xA0 r", "e d", "\xC4\xA0r ed"};
    for (const std::string& m : merges) {
      std::string t = m;
      t.erase(t.find(' '), 1);
      tokens.push_back(t);
      types.push_back(1);
    }
    test::GgufBuilder b;
    b.kv_str("tokenizer.ggml.model", "gpt2").kv_str("tokenizer.ggml.pre", "smollm");
    b.kv_str_array("tokenizer.ggml.tokens", tokens).kv_i32_array("tokenizer.ggml.token_type", types);
    b.kv_str_array("tokenizer.ggml.merges", merges);
    b.kv_u32("tokenizer.ggml.bos_token_id", 0).kv_i32("tokenizer.ggml.eos_token_id", 0);
    data = b.build();
    auto f = gguf::File::parse(data.data(), data.size(), "tiny.gguf");
    if (!f.ok()) throw std::runtime_error(f.error().message);
    file = std::move(f).value();
    auto t = Tokenizer::from_gguf(*file);
    if (!t.ok()) throw std::runtime_error(t.error().message);
    tok = std::move(t).value();
  }
};

// Every item reachable in the trie, spelled out (a depth-first walk of the flat arrays).
std::set<std::string> spell_all(const Catalogue& cat, const Tokenizer& tok) {
  std::set<std::string> out;
  struct Frame {
    uint32_t node;
    std::string text;
  };
  std::vector<Frame> stack{{Catalogue::kRoot, ""}};
  while (!stack.empty()) {
    Frame f = std::move(stack.back());
    stack.pop_back();
    if (cat.terminal(f.node)) {
      EXPECT_TRUE(out.insert(f.text).second) << f.text;
    }
    const auto next = cat.next_tokens(f.node);
    for (size_t i = 0; i < next.size(); ++i) {
      stack.push_back({uint32_t(cat.first_child(f.node) + i), f.text + tok.token_bytes(next[i])});
    }
  }
  return out;
}

TEST(Catalogue, BuildsFromTextWithTheTokenizer) {
  TinyTokenizer t;
  const std::vector<std::string> items = {"item red", "item", "item red", "it", "red item", "x"};
  auto cat = Catalogue::build(items, *t.tok);
  ASSERT_TRUE(cat.ok()) << cat.error().message;
  EXPECT_EQ((*cat)->n_items(), 5u);
  EXPECT_EQ(spell_all(**cat, *t.tok), std::set<std::string>(items.begin(), items.end()));
  // The allowed sequences are the tokenizer's own encodings.
  std::set<Ids> oracle;
  for (const std::string& s : items) oracle.insert(t.tok->encode(s, false));
  const TokenId item = t.tok->find_token("item"), space_red = t.tok->find_token("\xC4\xA0red");
  ASSERT_GE(item, 0);
  ASSERT_GE(space_red, 0);
  EXPECT_TRUE(oracle.count(Ids{item, space_red}));
  check_walks(*cat, oracle, constrain::end_of_generation_tokens(*t.tok), 100, 5);
  EXPECT_EQ(constrain::end_of_generation_tokens(*t.tok), Ids{0});
  EXPECT_GT((*cat)->memory_bytes(), 0u);
}

std::string build_error(const std::vector<std::string>& items, const CatalogueLimits& lim = {}) {
  static TinyTokenizer t;
  auto cat = Catalogue::build(items, *t.tok, lim);
  return cat.ok() ? "(built)" : cat.error().message;
}

TEST(Catalogue, BadItemsAreRefusedByNumber) {
  EXPECT_EQ(build_error({}), "catalogue: no items");
  EXPECT_EQ(build_error({"a", "", "b"}), "catalogue: item 2 is empty");
  EXPECT_EQ(build_error({"a", "b\xFF" "c"}),
            "catalogue: item 2 (\"b\xEF\xBF\xBD" "c\") is not valid UTF-8 at byte 1");
  EXPECT_EQ(build_error({"ok", "\xE2\x82"}),  // a truncated sequence
            "catalogue: item 2 (\"\xEF\xBF\xBD\") is not valid UTF-8 at byte 0");
  EXPECT_EQ(build_error({"caf\xC3\xA9"}),  // valid, but this vocab has no byte for it
            "catalogue: item 1 (\"caf\xC3\xA9\") cannot be spelled by the vocabulary "
            "(its 3 tokens decode to \"caf\")");
  CatalogueLimits lim;
  lim.max_items = 2;
  EXPECT_EQ(build_error({"a", "b", "c"}, lim), "catalogue: 3 items; at most 2 allowed");
  EXPECT_EQ(build_error({"a", "a"}, lim), "(built)");  // duplicates count before collapsing
  lim = {};
  lim.max_item_bytes = 3;
  EXPECT_EQ(build_error({"abc", "abcd"}, lim),
            "catalogue: item 2 (\"abcd\") is 4 bytes; at most 3 allowed");
  lim = {};
  lim.max_total_bytes = 5;
  EXPECT_EQ(build_error({"abc", "abc"}, lim),
            "catalogue: items 1..2 hold 6 bytes; at most 5 allowed in all");
  EXPECT_EQ(build_error({"ab", "abc"}, lim), "(built)");
  // Duplicates collapse: one item, one path.
  static TinyTokenizer t;
  auto cat = Catalogue::build(std::vector<std::string>{"red", "red", "red"}, *t.tok);
  ASSERT_TRUE(cat.ok());
  EXPECT_EQ((*cat)->n_items(), 1u);
}

// Two catalogues hold the same trie: node for node, the same tokens and terminal bits.
void expect_same_trie(const Catalogue& a, const Catalogue& b) {
  ASSERT_EQ(a.n_nodes(), b.n_nodes());
  ASSERT_EQ(a.n_items(), b.n_items());
  for (uint32_t n = 0; n < a.n_nodes(); ++n) {
    ASSERT_TRUE(std::ranges::equal(a.next_tokens(n), b.next_tokens(n))) << n;
    ASSERT_EQ(a.first_child(n), b.first_child(n)) << n;
    ASSERT_EQ(a.terminal(n), b.terminal(n)) << n;
  }
}

TEST(Catalogue, TokenizingOnAPoolBuildsTheSameTrie) {
  static TinyTokenizer t;
  std::mt19937 rng(9);
  std::vector<std::string> items;
  const char* parts[] = {"item", " red", "it", "em", "x", "-", "ed", " r"};
  for (int i = 0; i < 20000; ++i) {  // several blocks of items
    std::string s;
    for (int k = 0, n = 1 + int(rng() % 5); k < n; ++k) s += parts[rng() % std::size(parts)];
    items.push_back(s);
  }
  ThreadPool pool(3);
  auto one = Catalogue::build(items, *t.tok);
  auto many = Catalogue::build(items, *t.tok, {}, &pool);
  ASSERT_TRUE(one.ok() && many.ok());
  expect_same_trie(**one, **many);
  // The error names the first item that cannot be spelled, whichever thread found it.
  items[15000] = "caf\xC3\xA9";
  items[9000] = "\xC3\xA9t\xC3\xA9";
  auto e = Catalogue::build(items, *t.tok, {}, &pool);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.error().message.find("item 9001 "), std::string::npos) << e.error().message;
}

TEST(Catalogue, DefaultLimitRefusesAMillionAndOne) {
  const std::vector<std::string> items(1'000'001, "x");
  EXPECT_EQ(build_error(items), "catalogue: 1000001 items; at most 1000000 allowed");
}

// ---- --choices files ------------------------------------------------------------------------

class CatalogueFile : public ::testing::Test {
 protected:
  std::string write(const std::string& bytes) {
    std::ofstream(path_, std::ios::binary) << bytes;
    return path_;
  }
  void TearDown() override { std::filesystem::remove(path_); }
  std::string path_ = (std::filesystem::temp_directory_path() /
                       ("peregrine_catalogue_" + std::to_string(::getpid()) + ".txt")).string();
};

TEST_F(CatalogueFile, ReadsLinesSkippingEmptyOnes) {
  auto r = Catalogue::read_lines(write("alpha\r\n\nbeta gamma\n\r\n  \ndelta"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(*r, (std::vector<std::string>{"alpha", "beta gamma", "  ", "delta"}));
}

TEST_F(CatalogueFile, BadFilesAreRefused) {
  auto r = Catalogue::read_lines(write("ok\n\nb\xC3(\n"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, path_ + ":3: not valid UTF-8 at byte 1 of the line");
  r = Catalogue::read_lines(write("\n\r\n\n"));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, path_ + ": no items (every line is empty)");
  CatalogueLimits lim;
  lim.max_file_bytes = 8;
  r = Catalogue::read_lines(write("123456789"), lim);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, path_ + ": more than 8 bytes; a catalogue file may hold at most that");
  lim = {};
  lim.max_items = 2;
  r = Catalogue::read_lines(write("a\nb\n\nc\n"), lim);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, path_ + ":4: more than 2 items");
  lim = {};
  lim.max_item_bytes = 2;
  r = Catalogue::read_lines(write("ab\r\nabc\n"), lim);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, path_ + ":2: the item is 3 bytes; at most 2 allowed");
  r = Catalogue::read_lines(std::filesystem::temp_directory_path().string());  // a directory
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find(": cannot read: Is a directory"), std::string::npos)
      << r.error().message;
  r = Catalogue::read_lines(path_ + ".absent");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, path_ + ".absent: cannot open: No such file or directory");
}

// ---- the real tokenizers --------------------------------------------------------------------

struct RealTokenizer {
  std::unique_ptr<gguf::File> file;
  std::unique_ptr<Tokenizer> tok;
  explicit RealTokenizer(const std::string& path) {
    if (!std::filesystem::exists(path)) return;
    auto f = gguf::File::open(path);
    if (!f.ok()) throw std::runtime_error(f.error().message);
    file = std::move(f).value();
    auto t = Tokenizer::from_gguf(*file);
    if (!t.ok()) throw std::runtime_error(t.error().message);
    tok = std::move(t).value();
  }
};

// Realistic identifiers: product-like names from word lists, with digits, capitals, spaces,
// punctuation and a few non-ASCII words; some are prefixes of others.
std::vector<std::string> product_names(size_t n, uint32_t seed) {
  static const char* kA[] = {"Ultra", "Pro", "Mini", "Classic", "Smart", "Eco", "Max", "Café",
                             "Nordic", "Über", "Deluxe", "Compact"};
  static const char* kB[] = {"Blender", "Kettle", "Toaster", "Lamp", "Chair", "Desk", "Mixer",
                             "Speaker", "Router", "Backpack", "Drill", "Juicer", "Fön"};
  std::mt19937 rng(seed);
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i) {
    std::string s = std::string(kA[rng() % std::size(kA)]) + " " + kB[rng() % std::size(kB)];
    if (rng() % 2) s += " " + std::to_string(rng() % 3000);
    if (rng() % 4 == 0) s += "-XL";
    if (rng() % 9 == 0) s = "item-" + std::to_string(1000000 + rng() % 9000000);
    out.push_back(std::move(s));
  }
  return out;
}

void check_real(const Tokenizer& tok, bool space_prefix, int n_walks) {
  const std::vector<std::string> items = product_names(3000, 11);
  auto cat = Catalogue::build(items, tok);
  ASSERT_TRUE(cat.ok()) << cat.error().message;
  std::set<Ids> oracle;
  std::set<std::string> spelled;
  for (const std::string& s : items) {
    oracle.insert(tok.encode(s, false));
    spelled.insert(space_prefix ? " " + s : s);
  }
  EXPECT_EQ((*cat)->n_items(), oracle.size());
  EXPECT_EQ(spell_all(**cat, tok), spelled);
  check_walks(*cat, oracle, constrain::end_of_generation_tokens(tok), n_walks, 3);
}

TEST(CatalogueReal, SmolLM2) {
  RealTokenizer r(test::smollm_path());
  if (!r.tok) GTEST_SKIP() << "model not found at " << test::smollm_path();
  check_real(*r.tok, /*space_prefix=*/false, 150);
}

std::string gemma_path() {
  if (const char* p = std::getenv("PEREGRINE_GEMMA_PATH"); p && *p) return p;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/peregrine/models/gemma-3-270m-q4_k_m.gguf";
}

TEST(CatalogueReal, Gemma3) {
  RealTokenizer r(gemma_path());
  if (!r.tok) GTEST_SKIP() << "Gemma 3 GGUF not found at " << gemma_path();
  // Gemma 3's SentencePiece vocab has add_space_prefix false: items spell themselves.
  // 262,144 tokens: fewer walks, each step checks the whole row three ways.
  check_real(*r.tok, /*space_prefix=*/false, 40);
}

}  // namespace
}  // namespace peregrine
