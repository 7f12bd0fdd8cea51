// The constrained-decoding flags of run and chat (--json-schema, --grammar, --regex,
// --choices, --json-object) and their compilation for a session's vocabulary.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "constrain/constraint_spec.h"
#include "engine/session.h"

namespace peregrine::tools {

struct ConstraintFlags {
  std::string json_schema_file, grammar_file, regex, choices_file;
  bool json_object = false;
  std::string json_whitespace = "compact";
  bool print_grammar = false;
};

void add_constraint_options(CLI::App* cmd, ConstraintFlags& f);
// The spec the flags describe (kind None without any); fails on unreadable files.
constrain::ConstraintSpec constraint_spec(const ConstraintFlags& f);
// Reads a whole text file of at most max_bytes, or fails naming the flag and the file.
std::string read_text_file(const std::string& path, const char* flag, size_t max_bytes = size_t{16} << 20);
// Compiles the flags' constraint for the session into gen.constraint (nothing without one);
// one line on stderr with the compile time and size. With --print-grammar, prints the
// grammar in GBNF on stdout and exits.
void apply_constraint(const ConstraintFlags& f, Session& session, SequenceOptions& gen);

}  // namespace peregrine::tools
