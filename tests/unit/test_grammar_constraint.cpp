// The grammar engine (byte automaton, token masks, matcher) against the naive oracle
// (grammar_oracle.h): on small alphabets, every string up to a length bound is classified by
// the oracle, which gives the viable prefixes; at every step of random walks, a token the
// oracle proves viable must be allowed, and a token the engine allows must lead, by the
// engine's own masks, to a whole string the oracle accepts.
#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>
#include <set>
#include <string>
#include <vector>

#include "constrain/gbnf_parser.h"
#include "constrain/grammar_constraint.h"
#include "grammar_oracle.h"

namespace peregrine::constrain {
namespace {

Grammar gbnf(const std::string& text) {
  auto g = parse_gbnf(text);
  EXPECT_TRUE(g.ok()) << text << ": " << g.error().message;
  return g.ok() ? std::move(g).value() : Grammar{};
}

// Every string over `alphabet` (code points given as UTF-8 strings) up to max_len symbols.
void enumerate(const std::vector<std::string>& alphabet, size_t max_len, const std::string& prefix,
               std::vector<std::string>& out) {
  out.push_back(prefix);
  if (max_len == 0) return;
  for (const std::string& a : alphabet) enumerate(alphabet, max_len - 1, prefix + a, out);
}

struct Case {
  const char* name;
  const char* grammar;
  std::vector<std::string> alphabet;
  size_t max_len;
};

std::vector<Case> cases() {
  return {
      {"nested parens", "root ::= \"a\" x \"c\" | \"b\"+\nx ::= \"(\" x \")\" | \"\"", {"a", "b", "c", "(", ")"}, 7},
      {"bounded repeat", "root ::= [ab]{2,4} \"c\"?", {"a", "b", "c"}, 6},
      {"ambiguous nullable", "root ::= x x \"b\"\nx ::= \"a\"*", {"a", "b"}, 7},
      {"overlapping alternatives", "root ::= (\"ab\" | \"a\" \"b\" | \"a\")+ \"c\"", {"a", "b", "c"}, 6},
      {"utf8 class", "root ::= [é-ê]+ | \"a\" [^a]", {"a", "é", "ê", "b", "\xe2\x82\xac"}, 4},
      {"mini json",
       "root ::= obj\nobj ::= \"{\" (pair (\",\" pair)*)? \"}\"\npair ::= \"a:\" val\nval ::= obj | [0-9]",
       {"{", "}", "a", ":", ",", "1"}, 7},
      {"list recursion", "root ::= item (\",\" item)*\nitem ::= \"x\" | \"[\" root \"]\"", {"x", ",", "[", "]"}, 7},
      {"nullable root", "root ::= (\"a\" \"b\"?)*", {"a", "b"}, 6},
  };
}

// Tokens: every 1..2-symbol string of the alphabet, plus the single bytes of multi-byte
// symbols (tokens that cut a character), plus an end-of-generation token at the end.
std::vector<std::string> make_tokens(const std::vector<std::string>& alphabet) {
  std::set<std::string> s;
  for (const auto& a : alphabet) {
    s.insert(a);
    if (a.size() > 1)
      for (char c : a) s.insert(std::string(1, c));
    for (const auto& b : alphabet) s.insert(a + b);
  }
  return {s.begin(), s.end()};
}

TEST(GrammarConstraint, MasksAgreeWithTheNaiveOracle) {
  std::mt19937 rng(7);
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const Grammar g = gbnf(c.grammar);
    ASSERT_TRUE(g.validate().ok());
    std::vector<std::string> strings;
    enumerate(c.alphabet, c.max_len, "", strings);
    std::set<std::string> in_language, viable;  // viable: prefixes (in bytes) of strings in it
    for (const std::string& s : strings)
      if (grammar_matches(g, s)) {
        in_language.insert(s);
        for (size_t i = 0; i <= s.size(); ++i) viable.insert(s.substr(0, i));
      }
    ASSERT_FALSE(in_language.empty());
    std::vector<std::string> toks = make_tokens(c.alphabet);
    const int32_t eog = int32_t(toks.size());
    toks.push_back("");  // the end-of-generation token has no text
    auto vocab = TokenVocab::from_bytes(toks, {eog});
    auto cg = CompiledGrammar::compile(g, vocab);
    ASSERT_TRUE(cg.ok()) << cg.error().message;
    const int64_t n = int64_t(toks.size());
    std::vector<uint32_t> words(size_t((n + 31) / 32));
    auto allowed = [&](const GrammarConstraint& m, int32_t t) { (void)m; return (words[size_t(t) >> 5] >> (t & 31)) & 1; };

    for (int walk = 0; walk < 60; ++walk) {
      GrammarConstraint m(*cg);
      std::string text;
      for (int step = 0; step < 12; ++step) {
        m.allowed_tokens(words.data(), n);
        EXPECT_EQ(m.complete(), in_language.count(text) > 0 || grammar_matches(g, text)) << "'" << text << "'";
        EXPECT_EQ(bool(allowed(m, eog)), m.complete());
        std::vector<int32_t> choices;
        for (int32_t t = 0; t < eog; ++t) {
          const std::string next = text + toks[size_t(t)];
          if (viable.count(next)) {
            EXPECT_TRUE(allowed(m, t)) << "'" << text << "' + '" << toks[size_t(t)] << "' is viable";
          }
          if (allowed(m, t)) choices.push_back(t);
        }
        if (choices.empty()) {
          EXPECT_TRUE(m.complete()) << "dead end after '" << text << "'";
          break;
        }
        const int32_t t = choices[rng() % choices.size()];
        ASSERT_TRUE(m.advance(t));
        text += toks[size_t(t)];
      }
      // Finish by the engine's masks (preferring to end) and check the whole string.
      for (int step = 0; step < 40 && !m.complete(); ++step) {
        m.allowed_tokens(words.data(), n);
        std::vector<int32_t> choices;
        for (int32_t t = 0; t < eog; ++t)
          if (allowed(m, t)) choices.push_back(t);
        ASSERT_FALSE(choices.empty()) << "dead end after '" << text << "'";
        const int32_t t = choices[rng() % choices.size()];
        ASSERT_TRUE(m.advance(t));
        text += toks[size_t(t)];
      }
      if (m.complete()) {
        EXPECT_TRUE(grammar_matches(g, text)) << "engine completed '" << text << "'";
      }
    }
  }
}

TEST(GrammarConstraint, RefusesTokensAndKeepsItsState) {
  const Grammar g = gbnf("root ::= \"ab\" \"c\"");
  auto vocab = TokenVocab::from_bytes({"a", "b", "c", "x", ""}, {4});
  auto cg = CompiledGrammar::compile(g, vocab);
  ASSERT_TRUE(cg.ok());
  GrammarConstraint m(*cg);
  EXPECT_FALSE(m.advance(3));  // "x"
  EXPECT_FALSE(m.advance(4));  // end of generation has no bytes
  EXPECT_TRUE(m.advance(0));   // the failed advances left the state as it was
  EXPECT_TRUE(m.advance(1));
  EXPECT_FALSE(m.complete());
  EXPECT_TRUE(m.advance(2));
  EXPECT_TRUE(m.complete());
  EXPECT_FALSE(m.advance(0));
}

TEST(GrammarConstraint, MaskSetsDisallowedLogitsToMinusInfinity) {
  const Grammar g = gbnf("root ::= \"a\"+");
  std::vector<std::string> toks(70, "z");
  toks[3] = "a";
  toks[40] = "aa";
  toks[69] = "";
  auto vocab = TokenVocab::from_bytes(toks, {69});
  auto cg = CompiledGrammar::compile(g, vocab);
  ASSERT_TRUE(cg.ok());
  GrammarConstraint m(*cg);
  std::vector<float> row(72, 1.0f);  // wider than the vocabulary: the extra ids are refused
  m.mask(row.data(), 72);
  for (int t = 0; t < 72; ++t) EXPECT_EQ(std::isinf(row[size_t(t)]), t != 3 && t != 40) << t;
  ASSERT_TRUE(m.advance(3));
  std::fill(row.begin(), row.end(), 1.0f);
  m.mask(row.data(), 72);
  EXPECT_FALSE(std::isinf(row[69]));  // complete: end of generation allowed
}

TEST(GrammarConstraint, CompileErrorsAreClear) {
  auto vocab = TokenVocab::from_bytes({"a"}, {});
  auto nothing = CompiledGrammar::compile(gbnf("root ::= [^\\x00-\\U0010FFFF]"), vocab);
  ASSERT_FALSE(nothing.ok());
  EXPECT_NE(nothing.error().message.find("matches no text"), std::string::npos) << nothing.error().message;
  CompileLimits small;
  small.automaton.max_nfa_states = 1000;
  auto big = CompiledGrammar::compile(gbnf("root ::= ([a-z]{0,50}){0,50}"), vocab, small);
  ASSERT_FALSE(big.ok());
  EXPECT_NE(big.error().message.find("too large"), std::string::npos) << big.error().message;
}

// States past the compile-time budget are walked on first use: the masks are the same.
TEST(GrammarConstraint, LazyMasksEqualEagerOnes) {
  std::mt19937 rng(3);
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    const Grammar g = gbnf(c.grammar);
    std::vector<std::string> toks = make_tokens(c.alphabet);
    const int32_t eog = int32_t(toks.size());
    toks.push_back("");
    auto vocab = TokenVocab::from_bytes(toks, {eog});
    CompileLimits lazy;
    lazy.masks.eager_trie_steps = 0;
    auto a = CompiledGrammar::compile(g, vocab);
    auto b = CompiledGrammar::compile(g, vocab, lazy);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_LT((*b)->masks.n_walked(), (*b)->masks.n_states());
    const int64_t n = int64_t(toks.size());
    std::vector<uint32_t> wa(size_t((n + 31) / 32)), wb(wa.size());
    for (int walk = 0; walk < 20; ++walk) {
      GrammarConstraint ma(*a), mb(*b);
      for (int step = 0; step < 10; ++step) {
        ma.allowed_tokens(wa.data(), n);
        mb.allowed_tokens(wb.data(), n);
        ASSERT_EQ(wa, wb) << "step " << step;
        std::vector<int32_t> choices;
        for (int32_t t = 0; t < eog; ++t)
          if (wa[size_t(t) >> 5] >> (t & 31) & 1) choices.push_back(t);
        if (choices.empty()) break;
        const int32_t t = choices[rng() % choices.size()];
        ASSERT_TRUE(ma.advance(t) && mb.advance(t));
      }
    }
  }
}

}  // namespace
}  // namespace peregrine::constrain

namespace peregrine::constrain {
namespace {

// One compiled grammar shared by sequences on several threads (the server's cache hands the
// same one to every request), its states walked lazily as the threads first need them: each
// thread's masks equal those of a grammar walked eagerly (run under ThreadSanitizer too).
TEST(GrammarConstraint, ConcurrentLazyMasks) {
  const Grammar g = gbnf("root ::= obj\nobj ::= \"{\" (pair (\",\" pair)*)? \"}\"\npair ::= \"a:\" val\nval ::= obj | [0-9]+");
  std::vector<std::string> toks = make_tokens({"{", "}", "a", ":", ",", "1", "2"});
  const int32_t eog = int32_t(toks.size());
  toks.push_back("");
  auto vocab = TokenVocab::from_bytes(toks, {eog});
  CompileLimits lazy;
  lazy.masks.eager_trie_steps = 0;
  auto shared = CompiledGrammar::compile(g, vocab, lazy);
  auto eager = CompiledGrammar::compile(g, vocab);
  ASSERT_TRUE(shared.ok() && eager.ok());
  const int64_t n = int64_t(toks.size());
  std::atomic<int> mismatches{0};
  std::vector<std::thread> threads;
  for (int th = 0; th < 4; ++th)
    threads.emplace_back([&, th] {
      std::mt19937 rng{static_cast<uint32_t>(th)};
      std::vector<uint32_t> wa(size_t((n + 31) / 32)), wb(wa.size());
      for (int walk = 0; walk < 20; ++walk) {
        GrammarConstraint ma(*shared), mb(*eager);
        for (int step = 0; step < 12; ++step) {
          ma.allowed_tokens(wa.data(), n);
          mb.allowed_tokens(wb.data(), n);
          if (wa != wb) ++mismatches;
          std::vector<int32_t> choices;
          for (int32_t t = 0; t < eog; ++t)
            if (wb[size_t(t) >> 5] >> (t & 31) & 1) choices.push_back(t);
          if (choices.empty()) break;
          const int32_t t = choices[rng() % choices.size()];
          if (!ma.advance(t) || !mb.advance(t)) ++mismatches;
        }
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

}  // namespace
}  // namespace peregrine::constrain
