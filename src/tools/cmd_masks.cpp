// peregrine masks -m MODEL --input FILE.jsonl [--dump-masks]: the constraint engine on its
// own, for oracles and benchmarks (tests/reference/test_constrain_oracle.py,
// bench/mask_bench.py). Loads only the tokenizer.
//
// Input, one JSON object per line: {"id", ONE OF "json_schema": {...} | "grammar": GBNF |
// "regex": RE | "choices": [strings] | "json_object": true, "traces": [[token ids], ...]}
// (optional "strict": bool, "whitespace": "compact"|"bounded"). For each line: compile it (timed,
// never cached), then for every trace compute the allowed-token bitmask before each token and
// after the last (timed), advancing by each token in turn; a token not allowed stops the trace.
//
// Output: first {"n_vocab", "eog", "never"}; then per input line {"id", "compile_us", "error",
// "memory_bytes", "traces": [{"mask_us": [..], "masks": [base64 of the little-endian uint32
// words, with --dump-masks], "accepted", "rejected_at", "complete"}]}.
#include <openssl/evp.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "constrain/constraint_spec.h"
#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace peregrine::tools {
namespace {

// ordered: a schema's properties keep their order (the order the grammar writes them in).
using json = nlohmann::ordered_json;
using constrain::ConstraintSpec;

std::string base64(const uint32_t* words, size_t n) {
  std::string bytes(n * 4, '\0');
  for (size_t i = 0; i < n; ++i)
    for (int b = 0; b < 4; ++b) bytes[i * 4 + size_t(b)] = char((words[i] >> (8 * b)) & 0xFF);
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int len = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                  reinterpret_cast<const unsigned char*>(bytes.data()), int(bytes.size()));
  out.resize(size_t(len));
  return out;
}

Result<ConstraintSpec> spec_of(const json& line) try {
  ConstraintSpec s;
  if (line.contains("strict")) s.json.strict = line["strict"].get<bool>();
  if (line.value("whitespace", std::string("compact")) == "bounded") s.json.whitespace = constrain::JsonWhitespace::Bounded;
  if (line.contains("json_schema")) {
    s.kind = ConstraintSpec::Kind::JsonSchema;
    s.text = line["json_schema"].dump();
  } else if (line.contains("grammar")) {
    s.kind = ConstraintSpec::Kind::Gbnf;
    s.text = line["grammar"].get<std::string>();
  } else if (line.contains("regex")) {
    s.kind = ConstraintSpec::Kind::Regex;
    s.text = line["regex"].get<std::string>();
  } else if (line.contains("choices")) {
    s.kind = ConstraintSpec::Kind::Choices;
    s.choices = line["choices"].get<std::vector<std::string>>();
  } else if (line.value("json_object", false)) {
    s.kind = ConstraintSpec::Kind::JsonObject;
  } else {
    return make_error("the line has none of json_schema, grammar, regex, choices, json_object");
  }
  return s;
} catch (const json::exception& e) {  // a field of the wrong type
  return make_error("{}", e.what());
}

}  // namespace

void register_masks(CLI::App& app) {
  struct Opts {
    std::string model = kDefaultModel;
    std::string input;
    bool dump = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("masks", "Constraint engine alone: compile constraints, time and dump token masks");
  cmd->add_option("-m,--model", o->model, "Model (its tokenizer is used)")->capture_default_str();
  cmd->add_option("--input", o->input, "JSONL of constraints and token traces ('-' for stdin)")->required();
  cmd->add_flag("--dump-masks", o->dump, "Print every step's bitmask (base64)");
  cmd->callback([o] {
    const std::string path = check(resolve_model(o->model));
    const std::unique_ptr<gguf::File> file = check(gguf::File::open(path));
    const std::unique_ptr<Tokenizer> tok = check(Tokenizer::from_gguf(*file));
    constrain::ConstraintCompiler compiler(*tok, tok->n_vocab(), {.cache_entries = 0});
    const auto& vocab = *compiler.vocab();
    const int64_t n_vocab = vocab.n_rows();
    std::cout << json{{"n_vocab", n_vocab},
                      {"eog", std::vector<int32_t>(vocab.end_of_generation().begin(), vocab.end_of_generation().end())},
                      {"never", std::vector<int32_t>(vocab.never().begin(), vocab.never().end())}}
                     .dump()
              << "\n";
    std::ifstream file_in;
    std::istream* in = &std::cin;
    if (o->input != "-") {
      file_in.open(o->input);
      if (!file_in) fail(fmt::format("--input {}: cannot open the file", o->input));
      in = &file_in;
    }
    std::vector<uint32_t> words(size_t((n_vocab + 31) / 32));
    std::string text;
    for (int64_t lineno = 1; std::getline(*in, text); ++lineno) {
      if (text.empty()) continue;
      json line = json::parse(text, nullptr, false);
      if (line.is_discarded() || !line.is_object()) fail(fmt::format("--input line {}: not a JSON object", lineno));
      json out{{"id", line.value("id", json(lineno))}, {"error", nullptr}};
      Result<ConstraintSpec> spec = spec_of(line);
      if (!spec.ok()) fail(fmt::format("--input line {}: {}", lineno, spec.error().message));
      const auto t0 = std::chrono::steady_clock::now();
      auto compiled = compiler.compile(*spec);
      out["compile_us"] = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      if (!compiled.ok()) {
        out["error"] = compiled.error().message;
        std::cout << out.dump() << "\n";
        continue;
      }
      out["memory_bytes"] = (*compiled)->memory_bytes;
      json traces = json::array();
      const json traces_in = line.value("traces", json::array());
      bool well_formed = traces_in.is_array();
      for (const json& trace : traces_in)
        for (const json& t : trace.is_array() ? trace : json::array({json("x")}))
          well_formed = well_formed && t.is_number_integer();
      if (!well_formed) fail(fmt::format("--input line {}: 'traces' must be arrays of token ids", lineno));
      for (const json& trace : traces_in) {
        std::unique_ptr<TokenConstraint> c = (*compiled)->make();
        json mask_us = json::array(), masks = json::array();
        int64_t accepted = 0, rejected_at = -1;
        const size_t n_tokens = trace.size();
        for (size_t i = 0; i <= n_tokens; ++i) {
          const auto m0 = std::chrono::steady_clock::now();
          c->allowed_tokens(words.data(), n_vocab);
          mask_us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - m0).count());
          if (o->dump) masks.push_back(base64(words.data(), words.size()));
          if (i == n_tokens) break;
          const TokenId t = trace[i].get<TokenId>();
          const bool is_end = std::binary_search(vocab.end_of_generation().begin(), vocab.end_of_generation().end(), t);
          // An end-of-generation token ends the trace (allowed only where the constraint is complete).
          if (is_end) {
            if (!c->complete()) rejected_at = int64_t(i);
            else ++accepted;
            break;
          }
          if (!c->advance(t)) {
            rejected_at = int64_t(i);
            break;
          }
          ++accepted;
        }
        json tr{{"mask_us", std::move(mask_us)}, {"accepted", accepted}, {"rejected_at", rejected_at},
                {"complete", c->complete()}};
        if (o->dump) tr["masks"] = std::move(masks);
        traces.push_back(std::move(tr));
      }
      out["traces"] = std::move(traces);
      std::cout << out.dump() << "\n";
    }
  });
}

}  // namespace peregrine::tools
