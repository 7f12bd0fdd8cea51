// A constraint as a user or a client states it (CLI flags, API fields) and its compilation for
// one model's vocabulary. ConstraintCompiler is shared by the server's workers: it builds the
// vocabulary trie once and keeps recently compiled constraints by content, so a client that
// sends the same schema with every request compiles it once.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "constrain/catalogue.h"
#include "constrain/grammar_constraint.h"
#include "constrain/json_schema.h"
#include "core/status.h"

namespace peregrine::constrain {

struct ConstraintSpec {
  enum class Kind : uint8_t { None, JsonSchema, JsonObject, Gbnf, Regex, Choices };
  Kind kind = Kind::None;
  std::string text;                  // JsonSchema: the schema's JSON; Gbnf: the grammar; Regex: the pattern
  std::vector<std::string> choices;  // Choices: the allowed strings
  JsonSchemaOptions json;            // JsonSchema, JsonObject: strict, whitespace

  bool empty() const { return kind == Kind::None; }
  std::string cache_key() const;
};

// The grammar a grammar-kind spec stands for (not Choices or None).
Result<Grammar> spec_grammar(const ConstraintSpec& spec);

// Immutable; make() gives each sequence its own matcher.
class CompiledConstraint {
 public:
  std::unique_ptr<TokenConstraint> make() const;
  double compile_ms = 0;
  size_t memory_bytes = 0;
  std::shared_ptr<const CompiledGrammar> grammar;  // grammar kinds
  std::shared_ptr<const Catalogue> catalogue;      // Choices
  std::vector<TokenId> end_tokens;                 // Choices: end-of-generation ids
};

struct CompilerOptions {
  CompileLimits limits;
  CatalogueLimits catalogue;
  size_t cache_entries = 64;  // compiled constraints kept (least recently used go first)
};

class ConstraintCompiler {
 public:
  ConstraintCompiler(const Tokenizer& tok, int64_t n_rows, CompilerOptions opt = {});
  // Thread-safe. A clear one-line error for a malformed or too expensive constraint.
  Result<std::shared_ptr<const CompiledConstraint>> compile(const ConstraintSpec& spec);
  const std::shared_ptr<const TokenVocab>& vocab() const { return vocab_; }
  size_t cache_hits() const { return hits_; }

 private:
  const Tokenizer& tok_;
  CompilerOptions opt_;
  std::shared_ptr<const TokenVocab> vocab_;
  std::mutex mu_;
  std::list<std::pair<std::string, std::shared_ptr<const CompiledConstraint>>> lru_;  // most recent first
  std::unordered_map<std::string, decltype(lru_)::iterator> index_;
  size_t hits_ = 0;
};

}  // namespace peregrine::constrain
