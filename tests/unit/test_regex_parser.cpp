// parse_regex: every syntax element through the naive matcher (grammar_oracle.h), every
// refusal's message and column, the bounds on hostile input, the GBNF round trip of regex
// grammars, and ~60 regexes compared with std::regex_match (ECMAScript) on every short string
// over a small alphabet plus random longer ones.
#include <gtest/gtest.h>

#include <random>
#include <regex>
#include <string>
#include <vector>

#include "constrain/gbnf_parser.h"
#include "constrain/regex_parser.h"
#include "grammar_oracle.h"

namespace peregrine::constrain {
namespace {

Grammar regex(std::string_view re) {
  Result<Grammar> r = parse_regex(re);
  if (!r.ok()) {
    ADD_FAILURE() << "parse_regex(" << re << ") failed: " << r.error().message;
    return {};
  }
  return std::move(r).value();
}

std::string regex_error(std::string_view re) {
  Result<Grammar> r = parse_regex(re);
  if (r.ok()) {
    ADD_FAILURE() << "parse_regex accepted " << re;
    return {};
  }
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << "not one line";
  return r.error().message;
}

void expect_language(std::string_view re, const std::vector<std::string>& yes,
                     const std::vector<std::string>& no) {
  const Grammar g = regex(re);
  if (g.rules.empty()) return;
  for (const std::string& s : yes) EXPECT_TRUE(grammar_matches(g, s)) << re << " should match '" << s << "'";
  for (const std::string& s : no) EXPECT_FALSE(grammar_matches(g, s)) << re << " should not match '" << s << "'";
}

TEST(RegexParser, LiteralsAlternationGroups) {
  expect_language("", {""}, {"a"});
  expect_language("abc", {"abc"}, {"ab", "abcd", "abd"});
  expect_language("a|bc|", {"a", "bc", ""}, {"b", "abc"});
  expect_language("(a|b)c", {"ac", "bc"}, {"c", "abc"});
  expect_language("(?:ab)+", {"ab", "abab"}, {"", "aba"});
  expect_language("(?<year>\\d{4})-(?P<m>\\d\\d)", {"2024-05"}, {"2024-5"});
  expect_language("()a(|)", {"a"}, {""});
  expect_language("caf\xC3\xA9|\xE2\x82\xAC", {"caf\xC3\xA9", "\xE2\x82\xAC"}, {"cafe"});
  expect_language("a]b}c", {"a]b}c"}, {});  // a lone ] or } is literal in both languages
}

TEST(RegexParser, Quantifiers) {
  expect_language("ab*", {"a", "abbb"}, {"", "b", "abab"});
  expect_language("(ab)*", {"", "abab"}, {"a", "aba"});
  expect_language("a+", {"a", "aaa"}, {""});
  expect_language("a?b", {"b", "ab"}, {"aab"});
  expect_language("a{3}", {"aaa"}, {"aa", "aaaa"});
  expect_language("a{2,}", {"aa", "aaaaa"}, {"a"});
  expect_language("a{1,3}", {"a", "aaa"}, {"", "aaaa"});
  expect_language("a{0}b", {"b"}, {"ab"});
  // Lazy forms match the same language.
  expect_language("a*?b+?c??d{1,2}?", {"bd", "aabbcdd"}, {"abcddd"});
  expect_language("(a|)+", {"", "a", "aaa"}, {"b"});
  expect_language("(a*)*b", {"b", "aab"}, {"a"});
}

TEST(RegexParser, Anchors) {
  expect_language("^ab$", {"ab"}, {"ab\n", "xab"});
  expect_language("^a|b$", {"a", "b"}, {"ab"});
  expect_language("a|$", {"a", ""}, {"$"});
  expect_language("\\^\\$", {"^$"}, {""});
}

TEST(RegexParser, EscapesAndClassEscapes) {
  expect_language("\\d+", {"0189"}, {"a", "", "\xD9\xA3"});  // Arabic-Indic 3 is not \d
  expect_language("\\D", {"a", "\xC3\xA9"}, {"5"});
  expect_language("\\w+", {"aZ09_"}, {"-", "\xC3\xA9"});
  expect_language("\\W", {"-", "\xC3\xA9", " "}, {"a", "_"});
  expect_language("\\s", {" ", "\t", "\n", "\v", "\f", "\r", "\xC2\xA0", "\xE2\x80\xA8",
                          "\xE3\x80\x80", "\xEF\xBB\xBF"},
                  {"a", "\xC2\x85"});  // U+0085 is Python's whitespace, not ECMAScript's
  expect_language("\\S", {"a"}, {" ", "\n"});
  expect_language("\\.\\\\\\/\\*\\+\\?\\(\\)\\[\\]\\{\\}\\|\\-\\^\\$", {".\\/*+?()[]{}|-^$"}, {});
  expect_language("\\n\\t\\r\\f\\v\\0", {std::string("\n\t\r\f\v\0", 6)}, {});
  expect_language("\\x41\\u00e9\\u20AC", {"A\xC3\xA9\xE2\x82\xAC"}, {});
  expect_language("\\uD83D\\uDE00", {"\xF0\x9F\x98\x80"}, {});  // a surrogate pair
  expect_language("\\\xC3\xA9", {"\xC3\xA9"}, {});                // escaped non-ASCII
  expect_language(".", {"a", "\xC3\xA9", "\xF0\x9F\x98\x80", "\r"}, {"\n", "", "ab"});
}

TEST(RegexParser, Classes) {
  expect_language("[abc]", {"a", "c"}, {"d", ""});
  expect_language("[a-c0-1]+", {"ab01c"}, {"d", "2"});
  expect_language("[^a-c]", {"d", "\n", "\xC3\xA9"}, {"a", "b"});
  expect_language("[a-]", {"a", "-"}, {"b"});
  expect_language("[-a]", {"a", "-"}, {"b"});
  expect_language("[a-b-c]", {"a", "b", "-", "c"}, {"d"});  // '-' after a range is literal
  expect_language("[\\]\\[\\\\\\-^.]", {"]", "[", "\\", "-", "^", "."}, {"a"});
  expect_language("[\\d\\s]", {"5", " "}, {"a"});
  expect_language("[^\\d\\s]", {"a"}, {"5", " "});
  expect_language("[\\D]", {"a"}, {"5"});
  expect_language("[^\\W]", {"a", "_"}, {"-"});          // [^\W] is \w
  expect_language("[\\w-]", {"a", "-"}, {"."});           // '-' last after an escape
  expect_language("[\\b]", {"\b"}, {"b"});                // \b in a class is backspace
  expect_language("[\\x41-\\x43\\u00e9-\\u00eb]", {"B", "\xC3\xAA"}, {"D"});
  expect_language("[\xC3\xA9-\xC3\xAB]", {"\xC3\xAA"}, {"e"});
  expect_language("[[]", {"["}, {"]"});
}

// ---------------------------------------------------------------------------------------

struct ErrorCase {
  std::string re;
  std::string expected;  // a substring of the message, column included
};

TEST(RegexParser, RefusalsNameTheConstructAndColumn) {
  const std::vector<ErrorCase> cases = {
      {"(a)\\1", "regex: column 4: backreferences (\\1 ...) are not supported"},
      {"(?<n>a)\\k<n>", "column 8: named backreferences '\\k<name>' are not supported"},
      {"(?P<n>a)(?P=n)", "column 9: backreferences '(?P=name)' are not supported"},
      {"a(?=b)", "column 2: lookahead '(?=' / '(?!' is not supported"},
      {"a(?!b)", "column 2: lookahead"},
      {"(?<=a)b", "column 1: lookbehind '(?<=' / '(?<!' is not supported"},
      {"(?<!a)b", "column 1: lookbehind"},
      {"\\bword", "column 1: word boundaries '\\b' are not supported"},
      {"a\\B", "column 2: '\\B' (not a word boundary) is not supported"},
      {"\\Aa", "column 1: anchor '\\A' is not supported"},
      {"a\\Z", "column 2: anchor '\\Z' is not supported"},
      {"(?i)abc", "column 1: inline flags or group syntax '(?' followed by 'i' are not supported"},
      {"(?>a)", "column 1: atomic groups '(?>...)' are not supported"},
      {"a*+", "column 2: possessive quantifier '*+' is not supported"},
      {"a{2}+", "column 2: possessive quantifier '{2}+' is not supported"},
      {"(?(1)a|b)", "column 1: conditionals"},
      {"(?#c)a", "column 1: comments '(?#...)' are not supported"},
      {"\\p{L}", "column 1: Unicode property escapes '\\p{...}' are not supported"},
      {"\\cA", "column 1: control escapes '\\cX' are not supported"},
      {"\\u{1F600}", "column 1: '\\u{...}' is not supported"},
      {"\\012", "column 1: octal escapes are not supported"},
      {"[\\1]", "column 2: octal escapes are not supported"},
      {"\\q", "column 1: unknown escape '\\q'"},
      {"\\a", "column 1: unknown escape '\\a'"},
      {"a\\", "column 2: the pattern ends with a lone backslash"},
      {"\\x4", "column 1: '\\x' needs 2 hex digits"},
      {"\\u12", "column 1: '\\u' needs 4 hex digits"},
      {"\\uD800", "column 1: lone surrogate \\uD800"},
      {"\\uDE00\\uD83D", "column 1: lone surrogate \\uDE00"},
      {"a^b", "column 2: '^' is only supported as the first character"},
      {"(^a)", "column 2: '^' is only supported"},
      {"a$b", "column 2: '$' is only supported as the last character"},
      {"(a$)", "column 3: '$' is only supported"},
      {"*a", "column 1: '*' has nothing to repeat"},
      {"a|?", "column 3: '?' has nothing to repeat"},
      {"(+)", "column 2: '+' has nothing to repeat"},
      {"{2}", "column 1: '{' has nothing to repeat"},
      {"a**", "column 3: a quantifier cannot follow a quantifier"},
      {"a*?*", "column 4: a quantifier cannot follow a quantifier"},
      {"a{2}{3}", "column 5: a quantifier cannot follow a quantifier"},
      {"a{,3}", "column 2: '{,n}' is not portable"},
      {"a{x}", "column 2: '{' does not start a quantifier"},
      {"a{2", "column 2: '{' does not start a quantifier"},
      {"a{2,x}", "column 2: '{' does not start a quantifier"},
      {"a{3,2}", "column 2: quantifier {3,2} has its minimum above its maximum"},
      {"a{10001}", "column 3: repetition count 10001 is above the limit of 10000"},
      {"a{1,99999999999999999999}", "column 5: repetition count 99999999999999999999 is above"},
      {"(a", "column 1: missing ')' for this '('"},
      {"a)", "column 2: ')' without a matching '('"},
      {"[abc", "column 1: missing ']' for this '['"},
      {"[]a]", "column 2: ']' first in a class"},
      {"[^]", "column 3: ']' first in a class"},
      {"[\\d-z]", "column 2: a class escape cannot start a range"},
      {"[a-\\d]", "column 2: a class escape cannot end a range"},
      {"[z-a]", "column 2: class range U+007A-U+0061 is reversed"},
      {"[[:alpha:]]", "column 2: POSIX classes like '[:alpha:]' are not supported"},
      {"(?<1a>x)", "column 4: a group name must be"},
      {"a(?", "column 2: '(?' at the end of the pattern"},
      {"(?\n)", "column 1: inline flags or group syntax '(?' followed by U+000A"},
      {"(?<n>a)(?<n>b)", "column 11: group name 'n' is used twice"},
      {"a\xFF", "column 2: invalid UTF-8"},
      {"\xC3\xA9\xC3\xA9)", "column 3: ')' without a matching '('"},  // columns count code points
  };
  for (const ErrorCase& c : cases) {
    const std::string msg = regex_error(c.re);
    EXPECT_NE(msg.find(c.expected), std::string::npos)
        << "regex: " << c.re << "\nmessage:  " << msg << "\nexpected: " << c.expected;
  }
}

TEST(RegexParser, Bounds) {
  EXPECT_NE(regex_error(std::string(kMaxGrammarTextBytes + 1, 'a')).find("over the limit of 1048576"),
            std::string::npos);
  const auto nested = [](size_t n) { return std::string(n, '(') + "a" + std::string(n, ')'); };
  regex(nested(256));
  EXPECT_NE(regex_error(nested(257)).find("column 257: groups nested deeper than 256"),
            std::string::npos);
  EXPECT_NE(regex_error(nested(500000)).find("groups nested deeper than 256"), std::string::npos);
  std::string deep;  // 150 groups, each a sequence under a repeat: 300 levels
  for (int i = 0; i < 150; ++i) deep += "(a";
  for (int i = 0; i < 150; ++i) deep += ")*";
  EXPECT_NE(regex_error(deep).find("expressions nested deeper than 256"), std::string::npos);
  EXPECT_NE(regex_error("((ab){1000}){1000}").find("column 13: this repetition expands to more "
                                                   "than 1048576 elements"),
            std::string::npos);
  EXPECT_NE(regex_error("(a{10000}){60}(b{10000}){60}").find("expands to more than 1048576"),
            std::string::npos);
  regex("[a-z]{0,10000}(ab{100}){100}");
  // Long but flat patterns are fine (literals merge into one).
  const Grammar g = regex(std::string(100000, 'x'));
  ASSERT_EQ(g.rules.size(), 1u);
  EXPECT_EQ(g.rules[0].kind, Expr::Kind::Literal);
}

TEST(RegexParser, RandomPatternsNeverCrash) {
  std::mt19937_64 rng(11);
  const std::string alphabet = "ab01\\dws.^$|()[]{}*+?-,:<>=!P";
  int parsed = 0;
  for (int i = 0; i < 5000; ++i) {
    std::string re;
    const size_t len = rng() % 16;
    for (size_t k = 0; k < len; ++k) re += alphabet[rng() % alphabet.size()];
    Result<Grammar> r = parse_regex(re);
    if (!r.ok()) {
      EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << re;
      EXPECT_EQ(r.error().message.rfind("regex: ", 0), 0u) << r.error().message;
      continue;
    }
    ++parsed;
    EXPECT_TRUE(r->validate().ok()) << re;
  }
  EXPECT_GT(parsed, 300);
}

// ---------------------------------------------------------------------------------------
// Against std::regex (ECMAScript, regex_match: the whole string), where the semantics agree:
// ASCII strings without \r (libstdc++'s '.' also excludes \r; ours, as Python's, only \n).

const std::vector<std::string> kCompared = {
    "",           "a",           "ab0",          "a|b",          "a|ab|abc",
    "(a|b)*",     "(?:ab)+",     "a*b*",         "a+b?",         "a{2}",
    "a{1,3}",     "a{2,}",       "(ab|a)(ba|a)", "[ab]*",        "[^a]*",
    "[a-b0-1]+",  "\\d+",        "\\D*",         "\\w+",         "\\W",
    "\\s*a\\s*",  "\\S+",        ".",            ".*",           "a.b",
    "(a|)*b",     "(a*)*",       "(a?){2,3}b",   "((a|b)(0|1))*", "[\\d\\s]+",
    "[^\\d]+",    "[\\-a]+",     "[a\\]]",       "a\\.b",        "\\.\\-",
    "-+",         "(?:a|b|)+0?", "a*?b",         "a+?",          "a{1,2}?b",
    "(a|b){0,3}", "^ab*$",       "^(a|b)$",      "[_\\w]-",      "(?:(?:a|0)1)*",
    "[a-b]{2}[0-1]{1,2}", "\\x61\\u0062", "[\\x30-\\x31]+", "(\\d\\w)+", "[.]+",
    "a|\\n",      "[^\\n]*",     "(a(b(0(1)?)?)?)?", "(a|b|0|1| |-|_|\\.|\\n)*", "[^ab]+",
    "(?:a{2})*",  "(a|ab)(c|bcd)?", "\\w\\W\\w",  "[\\s\\S]{2}",   "(.)?(..)?",
    "a*a*a*b",    "(?:[ab]{2}|0)+1?",
};

TEST(RegexParser, AgreesWithStdRegexOnShortStrings) {
  const std::string alphabet = "ab01 -_.\n";
  std::vector<std::string> strings = {""};
  for (size_t len = 1; len <= 3; ++len) {  // every string up to 3 characters
    const size_t from = strings.size();
    for (size_t i = 0; i < from; ++i)
      if (strings[i].size() == len - 1)
        for (char c : alphabet) strings.push_back(strings[i] + c);
  }
  std::mt19937_64 rng(3);
  for (int i = 0; i < 400; ++i) {  // and random ones up to 8
    std::string s;
    const size_t len = 4 + rng() % 5;
    for (size_t k = 0; k < len; ++k) s += alphabet[rng() % alphabet.size()];
    strings.push_back(s);
  }
  for (const std::string& re : kCompared) {
    SCOPED_TRACE(re);
    const Grammar g = regex(re);
    if (g.rules.empty()) continue;
    const std::regex std_re(re, std::regex::ECMAScript);
    int yes = 0;
    for (const std::string& s : strings) {
      const bool want = std::regex_match(s, std_re);
      ASSERT_EQ(grammar_matches(g, s), want) << "on '" << s << "'";
      yes += want;
    }
    if (!re.empty()) {
      EXPECT_GT(yes, 0);  // the comparison is not vacuous
    }
  }
}

TEST(RegexParser, RoundTripsThroughGbnf) {
  std::mt19937_64 rng(5);
  for (const std::string& re : kCompared) {
    SCOPED_TRACE(re);
    const Grammar g = regex(re);
    if (g.rules.empty()) continue;
    Result<Grammar> back = parse_gbnf(g.to_gbnf());
    ASSERT_TRUE(back.ok()) << back.error().message << "\n" << g.to_gbnf();
    for (int i = 0; i < 40; ++i) {
      std::string s = grammar_sample(g, rng).value_or("");
      if (i % 2 && !s.empty()) s[rng() % s.size()] = "ab0 \n"[rng() % 5];  // and near misses
      EXPECT_EQ(grammar_matches(*back, s), grammar_matches(g, s)) << "'" << s << "'";
    }
  }
}

}  // namespace
}  // namespace peregrine::constrain
