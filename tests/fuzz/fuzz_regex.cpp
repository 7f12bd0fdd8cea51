// libFuzzer target: arbitrary bytes as a regular expression (constrain/regex_parser.h).
// Checks, for every input:
//   - parse_regex never crashes, and an error is one non-empty line starting "regex: ";
//   - an accepted pattern gives a grammar that passes validate(), whose to_gbnf() reads back
//     (parse_gbnf) to a grammar that matches the same strings: samples of the regex grammar and
//     mutations of them, judged by the naive matcher of the unit tests (grammar_oracle.h).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>

#include "../unit/grammar_oracle.h"
#include "constrain/gbnf_parser.h"
#include "constrain/regex_parser.h"

namespace {

using namespace peregrine::constrain;

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_regex: %s\n%s\n", what, detail.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view re(reinterpret_cast<const char*>(data), size);
  peregrine::Result<Grammar> g = parse_regex(re);
  if (!g.ok()) {
    const std::string& m = g.error().message;
    if (m.rfind("regex: ", 0) != 0 || m.size() <= 7) fail("error format", m);
    if (m.find('\n') != std::string::npos) fail("error on several lines", m);
    return 0;
  }
  if (g->rules.size() != 1 || g->names[g->root] != "root") fail("not one rule named root", "");
  if (!g->validate().ok()) fail("regex grammar fails validate()", g->validate().error().message);
  const std::string printed = g->to_gbnf();
  if (printed.size() > kMaxGrammarTextBytes) return 0;
  peregrine::Result<Grammar> back = parse_gbnf(printed);
  if (!back.ok()) fail("to_gbnf() does not parse back", back.error().message + "\n" + printed);

  std::mt19937_64 rng(size);
  for (int i = 0; i < 8; ++i) {
    std::string s = grammar_sample(*g, rng, 64, 4).value_or("");
    if (s.size() > 24) continue;  // the oracle is for short strings
    if (i >= 4 && !s.empty()) s[rng() % s.size()] = char(rng());
    if (grammar_matches(*g, s) != grammar_matches(*back, s))
      fail("the GBNF of the regex grammar matches differently", printed + "on: " + s);
  }
  return 0;
}
