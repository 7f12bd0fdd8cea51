// libFuzzer target: arbitrary bytes as a JSON Schema for json_schema_text_to_grammar.
// The first byte picks the options (bit 0: strict, bit 1: bounded whitespace, bit 2:
// oneof_as_anyof); the rest is the schema text. Checks, for every input:
//   - the compiler returns (never throws, crashes, or recurses without bound; the run's time
//     limit catches a hang);
//   - an error is one non-empty line starting "json schema";
//   - an accepted schema gives a grammar that validate() accepts, prints as GBNF, and whose
//     sampled strings are JSON texts.
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <string_view>

#include "../unit/grammar_oracle.h"
#include "../unit/json_exponents.h"
#include "constrain/json_schema.h"

namespace {

using namespace peregrine;
using namespace peregrine::constrain;

[[noreturn]] void fail(const char* what, std::string_view schema) {
  std::fprintf(stderr, "fuzz_json_schema: %s (schema of %zu bytes)\n", what, schema.size());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  JsonSchemaOptions opt;
  opt.strict = data[0] & 1;
  opt.whitespace = (data[0] & 2) ? JsonWhitespace::Bounded : JsonWhitespace::Compact;
  opt.oneof_as_anyof = data[0] & 4;
  const std::string_view schema(reinterpret_cast<const char*>(data) + 1, size - 1);

  Result<Grammar> r = json_schema_text_to_grammar(schema, opt);
  if (!r.ok()) {
    const std::string& m = r.error().message;
    if (m.rfind("json schema", 0) != 0) fail("error not prefixed 'json schema'", schema);
    if (m.find('\n') != std::string::npos) fail("error of several lines", schema);
    return 0;
  }
  const Grammar& g = r.value();
  if (!g.validate().ok()) fail("accepted grammar fails validate()", schema);
  if (g.to_gbnf().empty()) fail("empty GBNF", schema);
  std::mt19937_64 rng(size);
  for (int i = 0; i < 2; ++i) {
    std::optional<std::string> s = grammar_sample(g, rng, 150, 4);
    if (!s) continue;
    if (nlohmann::json::parse(small_exponents(*s), nullptr, false).is_discarded())
      fail("sampled string is not JSON", schema);
  }
  return 0;
}
