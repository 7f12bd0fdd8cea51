#include "constrain/constraint_spec.h"

#include <chrono>

#include "constrain/gbnf_parser.h"
#include "constrain/regex_parser.h"

namespace peregrine::constrain {

std::string ConstraintSpec::cache_key() const {
  std::string k;
  k += char('0' + int(kind));
  k += json.strict ? 's' : '-';
  k += char('0' + int(json.whitespace));
  k += json.oneof_as_anyof ? 'o' : '-';
  k += json.extra_properties_by_default ? 'x' : '-';
  k += '\n';
  if (kind == Kind::Choices) {
    for (const std::string& c : choices) {
      k += std::to_string(c.size());
      k += ':';
      k += c;
    }
  } else {
    k += text;
  }
  return k;
}

Result<Grammar> spec_grammar(const ConstraintSpec& spec) {
  switch (spec.kind) {
    case ConstraintSpec::Kind::JsonSchema: return json_schema_text_to_grammar(spec.text, spec.json);
    case ConstraintSpec::Kind::JsonObject: return json_object_grammar(spec.json.whitespace);
    case ConstraintSpec::Kind::Gbnf: return parse_gbnf(spec.text);
    case ConstraintSpec::Kind::Regex: return parse_regex(spec.text);
    case ConstraintSpec::Kind::Choices:
    case ConstraintSpec::Kind::None: break;
  }
  return make_error("this constraint is not a grammar");
}

std::unique_ptr<TokenConstraint> CompiledConstraint::make() const {
  if (grammar) return std::make_unique<GrammarConstraint>(grammar);
  return std::make_unique<CatalogueConstraint>(catalogue, end_tokens);
}

ConstraintCompiler::ConstraintCompiler(const Tokenizer& tok, int64_t n_rows, CompilerOptions opt)
    : tok_(tok), opt_(std::move(opt)), vocab_(TokenVocab::build(tok, n_rows)) {}

Result<std::shared_ptr<const CompiledConstraint>> ConstraintCompiler::compile(const ConstraintSpec& spec) {
  if (spec.empty()) return make_error("no constraint given");
  const std::string key = spec.cache_key();
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = index_.find(key);
    if (it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      ++hits_;
      return it->second->second;
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto c = std::make_shared<CompiledConstraint>();
  if (spec.kind == ConstraintSpec::Kind::Choices) {
    PG_ASSIGN(c->catalogue, Catalogue::build(spec.choices, tok_, opt_.catalogue));
    c->end_tokens.assign(vocab_->end_of_generation().begin(), vocab_->end_of_generation().end());
    c->memory_bytes = c->catalogue->memory_bytes();
  } else {
    PG_ASSIGN(Grammar g, spec_grammar(spec));
    PG_TRY(g.validate());
    PG_ASSIGN(c->grammar, CompiledGrammar::compile(g, vocab_, opt_.limits));
    c->memory_bytes = c->grammar->memory_bytes();
  }
  c->compile_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::shared_ptr<const CompiledConstraint> out = std::move(c);
  std::lock_guard<std::mutex> lock(mu_);
  if (index_.count(key) == 0 && opt_.cache_entries > 0) {
    lru_.emplace_front(key, out);
    index_[key] = lru_.begin();
    while (lru_.size() > opt_.cache_entries) {
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
  }
  return out;
}

}  // namespace peregrine::constrain
