// libFuzzer target: arbitrary bytes as a GBNF grammar (constrain/gbnf_parser.h). Checks, for
// every input:
//   - parse_gbnf never crashes, and an error is one non-empty line starting "gbnf: ";
//   - an accepted grammar passes validate(), and to_gbnf() reads back (parse_gbnf) to a grammar
//     that prints the same and matches the same strings: samples of both grammars and
//     mutations of them, judged by the naive matcher of the unit tests (grammar_oracle.h).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>

#include "../unit/grammar_oracle.h"
#include "constrain/gbnf_parser.h"

namespace {

using namespace peregrine::constrain;

[[noreturn]] void fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_gbnf: %s\n%s\n", what, detail.c_str());
  std::abort();
}

void check_error(const peregrine::Error& e) {
  if (e.message.rfind("gbnf: ", 0) != 0 || e.message.size() <= 6) fail("error format", e.message);
  if (e.message.find('\n') != std::string::npos) fail("error on several lines", e.message);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  peregrine::Result<Grammar> g = parse_gbnf(text);
  if (!g.ok()) {
    check_error(g.error());
    return 0;
  }
  if (!g->validate().ok()) fail("accepted grammar fails validate()", g->validate().error().message);
  const std::string printed = g->to_gbnf();
  if (printed.size() > kMaxGrammarTextBytes) return 0;
  peregrine::Result<Grammar> back = parse_gbnf(printed);
  if (!back.ok()) fail("to_gbnf() does not parse back", back.error().message + "\n" + printed);
  if (back->to_gbnf() != printed) fail("to_gbnf() of the reparsed grammar differs", printed);

  std::mt19937_64 rng(size);
  for (int i = 0; i < 8; ++i) {
    const Grammar& from = i % 2 ? *back : *g;
    std::string s = grammar_sample(from, rng, 64, 4).value_or("");
    if (s.size() > 24) continue;  // the oracle is for short strings
    if (i >= 4 && !s.empty()) s[rng() % s.size()] = char(rng());
    if (grammar_matches(*g, s) != grammar_matches(*back, s))
      fail("the reparsed grammar matches differently", printed + "on: " + s);
  }
  return 0;
}
