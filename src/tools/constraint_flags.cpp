#include "tools/constraint_flags.h"

#include <cstdio>

#include "core/read_file.h"
#include "tools/common.h"

namespace peregrine::tools {

void add_constraint_options(CLI::App* cmd, ConstraintFlags& f) {
  auto* js = cmd->add_option("--json-schema", f.json_schema_file, "Output must be JSON valid for this JSON Schema file");
  auto* gr = cmd->add_option("--grammar", f.grammar_file, "Output must match this GBNF grammar file (llama.cpp syntax)");
  auto* re = cmd->add_option("--regex", f.regex, "Output must match this regular expression in full");
  auto* ch = cmd->add_option("--choices", f.choices_file, "Output must be one line of this file (a catalogue)");
  auto* jo = cmd->add_flag("--json-object", f.json_object, "Output must be a JSON object (JSON mode)");
  std::vector<CLI::Option*> all{js, gr, re, ch, jo};
  for (CLI::Option* a : all)
    for (CLI::Option* b : all)
      if (a != b) a->excludes(b);
  cmd->add_option("--json-whitespace", f.json_whitespace,
                  "Whitespace between JSON tokens: compact (none) or bounded (one space or a newline and up to 20 "
                  "spaces/tabs)")
      ->check(CLI::IsMember({"compact", "bounded"}))
      ->capture_default_str();
  cmd->add_flag("--print-grammar", f.print_grammar, "Print the constraint's grammar (GBNF) and exit");
}

std::string read_text_file(const std::string& path, const char* flag, size_t max_bytes) {
  Result<std::string> text = read_file(path, max_bytes);
  if (!text.ok()) fail(fmt::format("{} {}", flag, text.error().message));
  return std::move(text).value();
}

constrain::ConstraintSpec constraint_spec(const ConstraintFlags& f) {
  using constrain::ConstraintSpec;
  ConstraintSpec s;
  s.json.whitespace = f.json_whitespace == "bounded" ? constrain::JsonWhitespace::Bounded
                                                     : constrain::JsonWhitespace::Compact;
  if (!f.json_schema_file.empty()) {
    s.kind = ConstraintSpec::Kind::JsonSchema;
    s.text = read_text_file(f.json_schema_file, "--json-schema");
  } else if (!f.grammar_file.empty()) {
    s.kind = ConstraintSpec::Kind::Gbnf;
    s.text = read_text_file(f.grammar_file, "--grammar");
  } else if (!f.regex.empty()) {
    s.kind = ConstraintSpec::Kind::Regex;
    s.text = f.regex;
  } else if (!f.choices_file.empty()) {
    s.kind = ConstraintSpec::Kind::Choices;
    auto lines = constrain::Catalogue::read_lines(f.choices_file);
    if (!lines.ok()) fail(fmt::format("--choices {}", lines.error().message));  // it names the file
    s.choices = std::move(lines).value();
  } else if (f.json_object) {
    s.kind = ConstraintSpec::Kind::JsonObject;
  }
  return s;
}

void apply_constraint(const ConstraintFlags& f, Session& session, SequenceOptions& gen) {
  const constrain::ConstraintSpec spec = constraint_spec(f);
  if (spec.empty()) {
    if (f.print_grammar) fail("--print-grammar needs --json-schema, --grammar, --regex or --json-object");
    return;
  }
  if (f.print_grammar) {
    if (spec.kind == constrain::ConstraintSpec::Kind::Choices) fail("--print-grammar: a catalogue has no grammar");
    const constrain::Grammar g = check(constrain::spec_grammar(spec));
    check(g.validate());
    const std::string text = g.to_gbnf();
    std::fwrite(text.data(), 1, text.size(), stdout);
    std::exit(0);
  }
  constrain::ConstraintCompiler compiler(session.tokenizer(), session.model().hparams().n_vocab, {.cache_entries = 0});
  const auto compiled = check(compiler.compile(spec));
  std::fprintf(stderr, "constraint: compiled in %.1f ms, %.2f MiB\n", compiled->compile_ms,
               double(compiled->memory_bytes) / (1 << 20));
  gen.constraint = [compiled] { return compiled->make(); };
}

}  // namespace peregrine::tools
