// parse_gbnf, Grammar::validate and Grammar::to_gbnf: every syntax element checked through
// the naive matcher (grammar_oracle.h), every error's message and position, the bounds on
// hostile input, round trips parse(to_gbnf(g)) compared with the oracle on sampled and
// mutated strings, and llama.cpp's own grammars/*.gbnf files.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "constrain/gbnf_parser.h"
#include "grammar_oracle.h"

namespace peregrine::constrain {
namespace {

// The grammar, or an empty one (no rules) after reporting the error.
Grammar gbnf(std::string_view text) {
  Result<Grammar> r = parse_gbnf(text);
  if (!r.ok()) {
    ADD_FAILURE() << "parse_gbnf failed: " << r.error().message << "\n" << text;
    return {};
  }
  return std::move(r).value();
}

std::string gbnf_error(std::string_view text) {
  Result<Grammar> r = parse_gbnf(text);
  if (r.ok()) {
    ADD_FAILURE() << "parse_gbnf accepted:\n" << text;
    return {};
  }
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << "not one line";
  return r.error().message;
}

bool matches(const Grammar& g, std::string_view s) {
  return !g.rules.empty() && grammar_matches(g, s);
}

// Checks `text` parses and its grammar matches exactly the strings of `yes` among yes + no.
void expect_language(std::string_view text, const std::vector<std::string>& yes,
                     const std::vector<std::string>& no) {
  const Grammar g = gbnf(text);
  for (const std::string& s : yes) EXPECT_TRUE(matches(g, s)) << text << "\nshould match '" << s << "'";
  for (const std::string& s : no) EXPECT_FALSE(matches(g, s)) << text << "\nshould not match '" << s << "'";
}

// ---------------------------------------------------------------------------------------
// The oracle itself, on hand-built IR (the reference for everything else here).

TEST(GrammarOracle, DefinitionsOnHandBuiltGrammars) {
  Grammar g;
  g.names = {"root"};
  // ("ab" | [x-z]) [^a]{2,3} (empty repeated: nullable item under an unbounded repeat)
  g.rules = {Expr::seq({Expr::alt({Expr::literal("ab"), Expr::cls({{'x', 'z'}})}),
                        Expr::repeat(Expr::cls({{'a', 'a'}}, true), 2, 3),
                        Expr::repeat(Expr::empty(), 0, kUnbounded)})};
  EXPECT_TRUE(grammar_matches(g, "abcd"));
  EXPECT_TRUE(grammar_matches(g, "ycde"));
  EXPECT_TRUE(grammar_matches(g, "x\xC3\xA9\xE2\x82\xAC"));  // é € are one code point each
  EXPECT_FALSE(grammar_matches(g, "abc"));
  EXPECT_FALSE(grammar_matches(g, "abcdef"));
  EXPECT_FALSE(grammar_matches(g, "abad"));
  EXPECT_FALSE(grammar_matches(g, "x\xC3\xA9"));              // only one code point
  EXPECT_FALSE(grammar_matches(g, "xb\xC3"));                 // truncated UTF-8
  EXPECT_FALSE(grammar_matches(g, "xb\xED\xA0\x80"));         // a surrogate is not text
  EXPECT_FALSE(grammar_matches(g, "xb\xC0\xAF"));             // overlong '/'
}

TEST(GrammarOracle, RepeatsCountExactly) {
  Grammar g;
  g.names = {"root", "x"};
  // root ::= x{3,5}  x ::= "a" | "" : strings of 0..5 a's (empty repetitions pad)
  g.rules = {Expr::repeat(Expr::ref(1), 3, 5), Expr::alt({Expr::literal("a"), Expr::empty()})};
  for (int n = 0; n <= 7; ++n) EXPECT_EQ(grammar_matches(g, std::string(n, 'a')), n <= 5) << n;
  g.rules[1] = Expr::literal("a");
  for (int n = 0; n <= 7; ++n)
    EXPECT_EQ(grammar_matches(g, std::string(n, 'a')), n >= 3 && n <= 5) << n;
  g.rules[0] = Expr::repeat(Expr::ref(1), 2, kUnbounded);
  for (int n = 0; n <= 7; ++n) EXPECT_EQ(grammar_matches(g, std::string(n, 'a')), n >= 2) << n;
  g.rules[0] = Expr::repeat(Expr::literal("aa"), 0, 0);
  EXPECT_TRUE(grammar_matches(g, ""));
  EXPECT_FALSE(grammar_matches(g, "aa"));
}

TEST(GrammarOracle, RecursionAndLeftRecursion) {
  Grammar g;
  g.names = {"root"};
  g.rules = {Expr::alt({Expr::seq({Expr::literal("("), Expr::ref(0), Expr::literal(")")}),
                        Expr::empty()})};
  EXPECT_TRUE(grammar_matches(g, "((()))"));
  EXPECT_FALSE(grammar_matches(g, "(()"));
  g.rules = {Expr::alt({Expr::seq({Expr::ref(0), Expr::literal("a")}), Expr::empty()})};
  EXPECT_THROW(grammar_matches(g, "aa"), std::logic_error);
}

// ---------------------------------------------------------------------------------------
// Syntax elements.

TEST(GbnfParser, LiteralsSequencesAlternatives) {
  expect_language("root ::= \"ab\" \"c\"\n", {"abc"}, {"", "ab", "abcc", "ac"});
  expect_language("root ::= \"a\" | \"bc\" | \"\"\n", {"a", "bc", ""}, {"b", "abc"});
  expect_language("root ::= \"a\" |\n", {"a", ""}, {"aa"});  // an empty alternative
  expect_language("root ::=\n", {""}, {"a"});                // an empty body
  expect_language("root ::= \"\"", {""}, {"a"});              // no final newline
  expect_language("root ::= (\"a\" | \"b\") \"c\"\n", {"ac", "bc"}, {"c", "abc"});
}

TEST(GbnfParser, RulesNamesAndReferences) {
  // Used before defined; digits, '-' and '_' in names; an unused rule is kept.
  const Grammar g = gbnf(
      "root ::= item-1 sep_2 item-1\n"
      "item-1 ::= [0-9]+\n"
      "sep_2 ::= \",\"\n"
      "unused ::= \"zzz\"\n");
  EXPECT_TRUE(matches(g, "12,3"));
  EXPECT_FALSE(matches(g, "12,"));
  ASSERT_EQ(g.names.size(), 4u);
  EXPECT_EQ(g.names[g.root], "root");
  EXPECT_EQ(g.names[3], "unused");  // rules are numbered in definition order
  // Recursion that consumes first is fine.
  expect_language("root ::= \"(\" root \")\" | \"x\"\n", {"x", "((x))"}, {"(x", "()"});
}

TEST(GbnfParser, Quantifiers) {
  expect_language("root ::= \"ab\"*\n", {"", "ab", "abab"}, {"a", "aba"});
  expect_language("root ::= \"a\"+\n", {"a", "aaa"}, {""});
  expect_language("root ::= \"a\"? \"b\"\n", {"b", "ab"}, {"aab"});
  expect_language("root ::= \"a\"{3}\n", {"aaa"}, {"aa", "aaaa"});
  expect_language("root ::= \"a\"{2,}\n", {"aa", "aaaaa"}, {"a"});
  expect_language("root ::= \"a\"{1,3}\n", {"a", "aaa"}, {"", "aaaa"});
  expect_language("root ::= \"a\"{,2}\n", {"", "a", "aa"}, {"aaa"});  // our extension
  expect_language("root ::= \"a\"{0,0} \"b\"\n", {"b"}, {"ab"});
  expect_language("root ::= \"a\"{ 1 , 2 }\n", {"a", "aa"}, {"aaa"});  // spaces, as llama.cpp
  expect_language("root ::= \"a\" *\n", {"", "aa"}, {"b"});           // space before it
  expect_language("root ::= (\"a\" \"b\"?)+\n", {"a", "aab", "abab"}, {"b", "abb"});
  // Several in a row nest: ("a"{2})? and ("a"?)* .
  expect_language("root ::= \"a\"{2}?\n", {"", "aa"}, {"a", "aaa"});
  expect_language("root ::= \"a\"?*\n", {"", "a", "aaaa"}, {"b"});
}

TEST(GbnfParser, AnyCharacterAndClasses) {
  expect_language("root ::= . .\n", {"ab", "\xC3\xA9\xF0\x9F\x98\x80", "\n\t"}, {"a", "abc"});
  expect_language("root ::= [a-cx]\n", {"a", "b", "c", "x"}, {"d", "w", "", "ab"});
  expect_language("root ::= [^a-c\\n]\n", {"d", "\xC3\xA9", "\r"}, {"a", "c", "\n", ""});
  expect_language("root ::= [a-]\n", {"a", "-"}, {"b"});        // '-' last is literal
  expect_language("root ::= [-a]\n", {"a", "-"}, {"b"});        // '-' first is literal
  expect_language("root ::= [\\]\\[\\\\\\-]\n", {"]", "[", "\\", "-"}, {"a"});
  expect_language("root ::= [[\"^]\n", {"[", "\"", "^"}, {"a"});  // raw [ " ^ (not first)
  expect_language("root ::= [!-#]\n", {"!", "\"", "#"}, {"$"});
  expect_language("root ::= [\xC3\xA9-\xC3\xAB]\n", {"\xC3\xA9", "\xC3\xAA", "\xC3\xAB"},
                  {"e", "\xC3\xAC"});
}

TEST(GbnfParser, Escapes) {
  expect_language("root ::= \"\\n\\r\\t\\\\\\\"\\[\\]\\-\"\n", {"\n\r\t\\\"[]-"}, {""});
  expect_language("root ::= \"\\x41\\xe9\"\n", {"A\xC3\xA9"}, {"A\xE9"});  // code points
  expect_language("root ::= \"\\u20AC\\U0001F600\"\n", {"\xE2\x82\xAC\xF0\x9F\x98\x80"}, {});
  expect_language("root ::= [\\x00-\\x1F]\n", {std::string(1, '\0'), "\x1F"}, {" "});
  expect_language("root ::= [\\u00e9\\U0001F600]\n", {"\xC3\xA9", "\xF0\x9F\x98\x80"}, {"e"});
  expect_language("root ::= \"caf\xC3\xA9\"\n", {"caf\xC3\xA9"}, {"cafe"});  // raw UTF-8
}

TEST(GbnfParser, SpacesCommentsAndNewlines) {
  expect_language(
      "# a comment line\n"
      "\n"
      "root ::= # a comment after ::=\n"
      "  \"a\" (   # inside parentheses newlines are spaces\n"
      "    \"b\"\n"
      "    | \"c\"\n"
      "  ) x # trailing\n"
      "\n"
      "x ::= \"1\" |\n"
      "      \"2\"   # a newline after | continues the rule\n",
      {"ab1", "ac2"}, {"a1", "ab3"});
  expect_language("root ::= \"a\"\r\nb ::= \"b\"\r\n", {"a"}, {"b"});  // CRLF
  expect_language("\xEF\xBB\xBFroot ::= \"a\"\n", {"a"}, {});      // a byte order mark
  expect_language("root\t::=\t\"a\"\t\"b\"\n", {"ab"}, {});
}

TEST(GbnfParser, TheReadmeExamples) {
  expect_language(
      "root ::= (\n"
      "    \"1. \" move \" \" move \"\\n\"\n"
      "    ([1-9] [0-9]? \". \" move \" \" move \"\\n\")+\n"
      ")\n"
      "move ::= (pawn | nonpawn | castle) [+#]?\n"
      "pawn ::= [a-h] [1-8]\n"
      "nonpawn ::= [NBKQR] [a-h] [1-8]\n"
      "castle ::= \"O-O\" \"-O\"?\n",
      {"1. e4 e5\n2. Nf3 Nc6\n", "1. e4 e5\n12. O-O O-O-O#\n"}, {"1. e4 e5\n", "1. e9 e5\n2. a1 a2\n"});
  expect_language("single-line ::= [^\\n]+ \"\\n\"\nroot ::= single-line+\n", {"ab\nc\n"},
                  {"ab", "\n"});
}

// ---------------------------------------------------------------------------------------
// Errors: each names the problem and where.

struct ErrorCase {
  std::string text;
  std::string expected;  // a substring of the message, position included where there is one
};

TEST(GbnfParser, ErrorsNameTheProblemAndPosition) {
  const std::vector<ErrorCase> cases = {
      {"", "gbnf: no rule named 'root'"},
      {"a ::= \"x\"\n", "no rule named 'root'"},
      {"root ::= foo\n", "gbnf: line 1:10: rule 'foo' is used but never defined"},
      {"root ::= \"a\"\nroot ::= \"b\"\n",
       "line 2:1: rule 'root' is defined twice (first at line 1:1)"},
      {"root = \"a\"\n", "line 1:6: expected '::=' after rule name 'root', found '='"},
      {"::= \"a\"\n", "line 1:1: expected a rule name, found ':'"},
      {"root ::= \"a\"\n  | \"b\"\n", "line 2:3: expected a rule name, found '|'"},
      {"root ::= \"abc", "line 1:10: unterminated string literal"},
      {"root ::= \"ab\nc\"\n", "line 1:10: unterminated string literal (a literal cannot span"},
      {"root ::= [abc", "line 1:10: unterminated character class"},
      {"root ::= [ab\n]\n", "line 1:10: unterminated character class (a class cannot span"},
      {"root ::= []\n", "line 1:10: empty class '[]' matches nothing"},
      {"root ::= [^]\n", "line 1:10: empty class '[^]'"},
      {"root ::= \"\\q\"\n", "line 1:11: unknown escape '\\q'"},
      {"root ::= \"\\", "line 1:11: unfinished escape at the end of the input"},
      {"root ::= \"\\\n\"\n", "line 1:11: unknown escape '\\' before a newline"},
      {"root ::= \"\\\xC3\xA9\"\n", "line 1:11: unknown escape '\\' before U+00E9"},
      {"root ::= \"\\x4\"\n", "line 1:11: '\\x' needs 2 hex digits"},
      {"root ::= \"\\u12g4\"\n", "line 1:11: '\\u' needs 4 hex digits"},
      {"root ::= \"\\U00110000\"\n", "line 1:11: code point U+110000 is above U+10FFFF"},
      {"root ::= \"\\uD800\"\n", "line 1:11: surrogate U+D800 in a literal"},
      {"root ::= [z-a]\n", "line 1:11: class range U+007A-U+0061 is reversed"},
      {"root ::= *\n", "line 1:10: '*' has nothing to repeat"},
      {"root ::= (\"a\" | +)\n", "line 1:17: '+' has nothing to repeat"},
      {"root ::= \"a\" | {2}\n", "line 1:16: '{' has nothing to repeat"},
      {"root ::= \"a\"{", "line 1:14: expected a number after '{', found the end of the input"},
      {"root ::= \"a\"{x}\n", "line 1:14: expected a number after '{', found 'x'"},
      {"root ::= \"a\"{2\n", "line 1:15: expected '}' to close the repetition at line 1:13"},
      {"root ::= \"a\"{2,x}\n", "expected '}' to close the repetition at line 1:13, found 'x'"},
      {"root ::= \"a\"{3,2}\n", "line 1:13: repetition {3,2} has its minimum above its maximum"},
      {"root ::= \"a\"{10001}\n", "line 1:14: repetition count 10001 is above the limit of 10000"},
      {"root ::= \"a\"{0,99999999999999999999999999}\n",
       "line 1:16: repetition count 999999999999999999999999 is above the limit"},
      {"root ::= (\"a\"\n", "line 2:1: expected ')' to close the '(' at line 1:10, found the end"},
      {"root ::= (\"a\" $)\n", "line 1:15: expected ')' to close the '(' at line 1:10, found '$'"},
      {"root ::= \"a\")\n", "line 1:13: ')' without a matching '('"},
      {"root ::= \"a\" $\n", "line 1:14: expected a symbol, '|' or the end of the line, found '$'"},
      {"root ::= a b ::= c\n", "line 1:14: '::=' inside a rule body"},
      {"root ::= <[12]>\n", "line 1:10: token references ('<[id]>', '<token>', '!<...>') are "
                            "not supported"},
      {"root ::= <think> \"x\"\n", "line 1:10: token references"},
      {"root ::= !<x>\n", "line 1:10: token references"},
      {"root ::= \"\xFF\"\n", "line 1:11: invalid UTF-8"},
      {"root ::= \"\xC3\xA9\" \xC3\n", "line 1:14: invalid UTF-8"},  // columns count code points
      {"root ::= \"a\" \xC3\xA9\n", "line 1:14: expected a symbol, '|' or the end of the line, "
                                    "found U+00E9"},
      // Left recursion, also through nullable rules and repeats, with the cycle named.
      {"root ::= root \"a\"\n", "line 1:1: rule 'root' is left-recursive: root -> root"},
      {"root ::= a\na ::= b \"x\"\nb ::= \"\" root\n",
       "line 1:1: rule 'root' is left-recursive: root -> a -> b -> root"},
      {"root ::= x \"y\" | \"z\"\nx ::= e root\ne ::= \"q\"?\n",
       "rule 'root' is left-recursive: root -> x -> root"},
      {"root ::= \"a\"{0} root | \"b\"\n", "rule 'root' is left-recursive"},
      {"root ::= (\"a\"* (\"b\" | \"\"))+ root\n", "rule 'root' is left-recursive"},
  };
  for (const ErrorCase& c : cases) {
    const std::string msg = gbnf_error(c.text);
    EXPECT_NE(msg.find(c.expected), std::string::npos)
        << "input:\n" << c.text << "\nmessage:  " << msg << "\nexpected: " << c.expected;
  }
}

TEST(GbnfParser, NotLeftRecursive) {
  gbnf("root ::= \"a\" root | \"b\"\n");
  gbnf("root ::= x root | \"b\"\nx ::= \"\" \"c\"\n");
  gbnf("root ::= (\"a\" | \"\")* \"b\"\n");  // a nullable item under * is not recursion
  gbnf("root ::= a\na ::= \"(\" a \")\" | \"\"\n");
}

// ---------------------------------------------------------------------------------------
// Hostile input: bounded, clean errors, no crash.

TEST(GbnfParser, Bounds) {
  // Length.
  std::string big = "root ::= \"" + std::string(kMaxGrammarTextBytes, 'a') + "\"\n";
  EXPECT_NE(gbnf_error(big).find("over the limit of 1048576"), std::string::npos);
  // Parentheses: 256 fine, 257 not.
  auto nested = [](int n) {
    return "root ::= " + std::string(size_t(n), '(') + "\"a\"" + std::string(size_t(n), ')') + "\n";
  };
  gbnf(nested(256));
  EXPECT_NE(gbnf_error(nested(257)).find("line 1:266: parentheses nested deeper than 256"),
            std::string::npos);
  EXPECT_NE(gbnf_error(nested(100000)).find("parentheses nested deeper than 256"),
            std::string::npos);
  // Expression depth through quantifiers (each one nests) and groups of sequences.
  EXPECT_NE(gbnf_error("root ::= \"a\"" + std::string(300, '?') + "\n")
                .find("line 1:268: expressions nested deeper than 256 levels"),
            std::string::npos);
  std::string deep = "root ::= ";  // 150 parentheses, each a sequence under a repeat
  for (int i = 0; i < 150; ++i) deep += "(\"a\" ";
  for (int i = 0; i < 150; ++i) deep += ")*";
  deep += "\n";
  EXPECT_NE(gbnf_error(deep).find("expressions nested deeper than 256"), std::string::npos);
  // Expansion: nested counts multiply, and the total over rules is bounded.
  EXPECT_NE(gbnf_error("root ::= ((\"ab\"{1000}){1000})\n")
                .find("line 1:23: this repetition expands to more than 1048576 elements"),
            std::string::npos);
  EXPECT_NE(gbnf_error("root ::= x y\nx ::= [a]{10000}{60}\ny ::= [a]{10000}{60}\n")
                .find("line 3:1: the grammar expands to more than 1048576"),
            std::string::npos);
  gbnf("root ::= [a-z]{0,10000} x\nx ::= (\"ab\"{100}){100}\n");  // large but within
  // Messages stay short: long names are cut, long cycles elided.
  const std::string long_name = gbnf_error("root ::= " + std::string(100000, 'x') + "\n");
  EXPECT_NE(long_name.find("rule '" + std::string(64, 'x') + "...' is used but never defined"),
            std::string::npos);
  EXPECT_LT(long_name.size(), 200u);
  std::string chain = "root ::= r0\n";
  for (int i = 0; i < 19; ++i) chain += fmt::format("r{} ::= \"\"? r{}\n", i, i + 1);
  chain += "r19 ::= root \"a\"\n";
  EXPECT_NE(gbnf_error(chain).find("rule 'root' is left-recursive: root -> r0 -> r1 -> r2 -> ... "
                                   "(15 more) -> r18 -> r19 -> root can repeat"),
            std::string::npos)
      << gbnf_error(chain);
}

TEST(GbnfParser, RandomBytesNeverCrash) {
  // The fuzz target's property in miniature: random mixes of GBNF's own characters either
  // parse (and then round-trip) or give a one-line error.
  std::mt19937_64 rng(7);
  const std::string alphabet = "root::= \"ab\\x41[]^-|()*+?{},.#\n\t<>!0123456789";
  int parsed = 0;
  for (int i = 0; i < 3000; ++i) {
    std::string text = "root ::= ";
    const size_t len = rng() % 24;
    for (size_t k = 0; k < len; ++k) text += alphabet[rng() % alphabet.size()];
    Result<Grammar> r = parse_gbnf(text);
    if (!r.ok()) {
      EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << text;
      EXPECT_EQ(r.error().message.rfind("gbnf: ", 0), 0u) << r.error().message;
      continue;
    }
    ++parsed;
    Result<Grammar> again = parse_gbnf(r->to_gbnf());
    ASSERT_TRUE(again.ok()) << text << "\n" << r->to_gbnf() << "\n" << again.error().message;
    EXPECT_EQ(again->to_gbnf(), r->to_gbnf());
  }
  EXPECT_GT(parsed, 100);
}

// ---------------------------------------------------------------------------------------
// validate() on IR built by other front ends.

Grammar one_rule(Expr e) {
  Grammar g;
  g.names = {"root"};
  g.rules = {std::move(e)};
  return g;
}

std::string validate_error(const Grammar& g) {
  const Status s = g.validate();
  EXPECT_FALSE(s.ok());
  return s.ok() ? std::string() : s.error().message;
}

TEST(GrammarValidate, RefusesMalformedGrammars) {
  EXPECT_NE(validate_error(Grammar{}).find("grammar has no rules"), std::string::npos);
  Grammar g = one_rule(Expr::ref(3));
  EXPECT_NE(validate_error(g).find("rule 'root' refers to rule 3, but the grammar has 1 rules"),
            std::string::npos);
  g = one_rule(Expr::empty());
  g.root = 1;
  EXPECT_NE(validate_error(g).find("root rule 1 is out of range"), std::string::npos);
  g = one_rule(Expr::empty());
  g.names.push_back("x");
  EXPECT_NE(validate_error(g).find("2 rule names for 1 rules"), std::string::npos);
  g = one_rule(Expr::empty());
  g.names.push_back("root");
  g.rules.push_back(Expr::empty());
  EXPECT_NE(validate_error(g).find("rule name 'root' is used by rules 0 and 1"),
            std::string::npos);
  EXPECT_NE(validate_error(one_rule(Expr::repeat(Expr::literal("a"), 3, 2)))
                .find("repeat {3,2} has its minimum above its maximum"),
            std::string::npos);
  EXPECT_NE(validate_error(one_rule(Expr::repeat(Expr::literal("a"), 0, 20000)))
                .find("repeat count 20000 is above the limit 10000"),
            std::string::npos);
  EXPECT_NE(validate_error(one_rule(Expr::literal("\xC3"))).find("literal is not valid UTF-8"),
            std::string::npos);
  EXPECT_NE(validate_error(one_rule(Expr::cls({{'b', 'a'}}))).find("class range U+0062-U+0061 is reversed"),
            std::string::npos);
  EXPECT_NE(validate_error(one_rule(Expr::cls({{'a', 0x110000}}))).find("above U+10FFFF"),
            std::string::npos);
  Expr deep = Expr::literal("a");
  for (int i = 0; i < 300; ++i) deep = Expr::seq({std::move(deep), Expr::literal("b")});
  EXPECT_NE(validate_error(one_rule(std::move(deep))).find("deeper than 256"), std::string::npos);
  EXPECT_NE(validate_error(one_rule(Expr::repeat(Expr::repeat(Expr::literal("ab"), 0, 1000), 0, 1000)))
                .find("expands to more than 1048576"),
            std::string::npos);
  Grammar lr;
  lr.names = {"root", "a", "b"};
  lr.rules = {Expr::ref(1), Expr::seq({Expr::repeat(Expr::literal("x"), 0, 3), Expr::ref(2)}),
              Expr::alt({Expr::literal("y"), Expr::ref(1)})};
  uint32_t bad = 99;
  const Status s = lr.validate(&bad);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.error().message,
            "rule 'a' is left-recursive: a -> b -> a can repeat without consuming input");
  EXPECT_EQ(bad, 1u);
  EXPECT_EQ(lr.to_gbnf(), "# invalid grammar: " + s.error().message + "\n");
  EXPECT_EQ(one_rule(Expr::ref(7)).to_gbnf().rfind("# invalid grammar: rule 'root' refers to rule 7", 0), 0u);
}

// ---------------------------------------------------------------------------------------
// to_gbnf round trips.

// Strings to compare two grammars on: samples of each, and mutations of those over the
// characters they use.
std::vector<std::string> probe_strings(const Grammar& a, const Grammar& b, std::mt19937_64& rng) {
  std::vector<std::string> out = {""};
  for (const Grammar* g : {&a, &b})
    for (int i = 0; i < 30; ++i)
      if (auto s = grammar_sample(*g, rng)) out.push_back(*s);
  std::string chars = "a0 \n";
  for (const std::string& s : out) chars += s;
  const size_t n = out.size();
  for (size_t i = 0; i < n; ++i) {
    for (int m = 0; m < 4; ++m) {
      std::string s = out[i];
      const size_t at = s.empty() ? 0 : rng() % (s.size() + 1);
      const char c = chars[rng() % chars.size()];
      switch (rng() % 3) {
        case 0: s.insert(s.begin() + long(at), c); break;
        case 1: if (at < s.size()) s.erase(at, 1); break;
        default: if (at < s.size()) s[at] = c; break;
      }
      out.push_back(s);
    }
  }
  return out;
}

// parse(to_gbnf(g)) is valid, prints the same again, and matches what g matches.
void expect_round_trip(const Grammar& g, uint64_t seed = 1) {
  ASSERT_TRUE(g.validate().ok()) << g.validate().error().message;
  const std::string text = g.to_gbnf();
  Result<Grammar> back = parse_gbnf(text);
  ASSERT_TRUE(back.ok()) << back.error().message << "\n" << text;
  EXPECT_EQ(back->to_gbnf(), text);
  std::mt19937_64 rng(seed);
  int agree_yes = 0;
  for (const std::string& s : probe_strings(g, *back, rng)) {
    const bool want = grammar_matches(g, s);
    EXPECT_EQ(grammar_matches(*back, s), want) << "'" << s << "'\n" << text;
    agree_yes += want;
  }
  EXPECT_GT(agree_yes, 0) << "no sample matched:\n" << text;
}

TEST(GbnfToGbnf, RoundTripsParsedGrammars) {
  const std::vector<std::string> grammars = {
      "root ::= \"a\" (\"b\" | [c-e]+)* x{2,3}\nx ::= [^a]?\n",
      "root ::= ( \"x\" | y ) {1,} \"\\n\\t\\\"\\\\\"\ny ::= \"\" | \"q\" y\n",
      "root ::= [\\]\\[\\-\\\\^] [\\x00-\\x1F\\x7F] . \"\\u00e9\\U0001F600\" [^\\n\"]{0,5}\n",
      "root ::= \"a\"{2}? (\"b\"*)* \"c\"{3,} \"d\"{0,0} \"e\"{1,1}\n",
      "root ::= obj\nobj ::= \"{\" (kv (\",\" kv)*)? \"}\"\nkv ::= [a-z]+ \":\" (obj | [0-9]+)\n",
      "root ::= \"caf\xC3\xA9\" [\xE2\x82\xAC-\xE2\x82\xAF] | \"\"\n",
  };
  for (size_t i = 0; i < grammars.size(); ++i) {
    SCOPED_TRACE(grammars[i]);
    const Grammar g = gbnf(grammars[i]);
    expect_round_trip(g, i);
  }
}

TEST(GbnfToGbnf, PrintsHandBuiltIr) {
  // Names llama.cpp cannot read are renamed, a non-root "root" too; nested Seq/Alt flatten;
  // empty Alt, empty Seq and empty classes print as something that matches nothing/empty.
  Grammar g;
  g.names = {"start", "root", "my_rule", "my-rule", "", "x y"};
  g.root = 0;
  g.rules = {
      Expr::seq({Expr::ref(1), Expr::ref(2), Expr::ref(3), Expr::ref(4), Expr::ref(5),
                 Expr::alt({Expr::literal("q"), Expr::alt({})})}),
      Expr::seq({Expr::seq({Expr::literal("a"), Expr::seq({})}), Expr::alt({Expr::literal("b")})}),
      Expr::alt({Expr::alt({Expr::literal("c"), Expr::literal("d")}), Expr::cls({}, true)}),
      Expr::repeat(Expr::repeat(Expr::seq({Expr::literal("e"), Expr::literal("f")}), 1, 2), 0, 1),
      Expr::alt({Expr::cls({{'^', '^'}, {'-', '-'}, {0x00, 0x08}, {0xD800, 0xDFFF}, {0x80, 0x9F}}),
                 Expr::cls({}, false)}),
      Expr::alt({Expr::literal("\"\\\n\x01\x7F\xC2\x80\xC3\xA9"), Expr::cls({{0, kMaxCodePoint}}, true)}),
  };
  ASSERT_TRUE(g.validate().ok()) << g.validate().error().message;
  const std::string text = g.to_gbnf();
  EXPECT_EQ(text.substr(0, text.find('\n')),
            "root ::= root-2 my-rule-2 my-rule rule x-y (\"q\" | [^\\x00-\\U0010FFFF])")
      << text;
  EXPECT_NE(text.find("root-2 ::= \"a\" \"\" \"b\"\n"), std::string::npos) << text;
  EXPECT_NE(text.find("my-rule-2 ::= \"c\" | \"d\" | .\n"), std::string::npos) << text;
  EXPECT_NE(text.find("my-rule ::= ((\"e\" \"f\"){1,2})?\n"), std::string::npos) << text;
  EXPECT_NE(text.find("rule ::= [\\x5E\\-\\x00-\\x08\\uD800-\\uDFFF\\x80-\\x9F] | "
                      "[^\\x00-\\U0010FFFF]\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("x-y ::= \"\\\"\\\\\\n\\x01\\x7F\\x80\xC3\xA9\" | [^\\x00-\\U0010FFFF]\n"),
            std::string::npos)
      << text;
  expect_round_trip(g);
}

// llama.cpp's grammars/ directory (the pinned source the benchmarks use), when present.
std::filesystem::path llama_cpp_grammars() {
  if (const char* p = std::getenv("PEREGRINE_LLAMA_CPP_GRAMMARS"); p && *p) return p;
  const char* home = std::getenv("HOME");
  const std::filesystem::path root =
      std::filesystem::path(home ? home : "") / ".cache/peregrine/llama.cpp-src";
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(root, ec)) {
    const auto dir = entry.path() / "vendor/llama.cpp/grammars";
    if (std::filesystem::is_directory(dir)) return dir;
  }
  return {};
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

TEST(GbnfParser, LlamaCppGrammarsParseAndRoundTrip) {
  const std::filesystem::path dir = llama_cpp_grammars();
  if (dir.empty())
    GTEST_SKIP() << "llama.cpp's grammars/ not found (set PEREGRINE_LLAMA_CPP_GRAMMARS, or "
                    "bench/llama_cpp_build.py unpacks it into ~/.cache/peregrine/llama.cpp-src)";
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    if (entry.path().extension() != ".gbnf") continue;
    SCOPED_TRACE(entry.path().string());
    const Grammar g = gbnf(read_file(entry.path()));
    if (g.rules.empty()) continue;
    expect_round_trip(g, uint64_t(n));
    ++n;
  }
  EXPECT_GE(n, 8);  // arithmetic c chess english japanese json json_arr list
}

TEST(GbnfParser, LlamaCppJsonGrammarLanguage) {
  const std::filesystem::path dir = llama_cpp_grammars();
  if (dir.empty() || !std::filesystem::exists(dir / "json.gbnf"))
    GTEST_SKIP() << "llama.cpp's grammars/json.gbnf not found";
  const Grammar g = gbnf(read_file(dir / "json.gbnf"));
  EXPECT_TRUE(matches(g, "{\"a\": [1, -2.5, \"x\\n\\u00e9\", true, null, {}]}"));
  EXPECT_TRUE(matches(g, "{}"));
  EXPECT_FALSE(matches(g, "{\"a\": }"));
  EXPECT_FALSE(matches(g, "[1]"));  // the root is an object
  EXPECT_FALSE(matches(g, "{\"a\": 01}"));
}

}  // namespace
}  // namespace peregrine::constrain
