// A Grammar compiled for one vocabulary (CompiledGrammar: automaton + token masks, immutable,
// shared by every sequence that uses it) and the per-sequence matcher that plugs into
// SequenceState's constraint slot (GrammarConstraint: the live configuration set).
//
// A step's mask: OR of the accepted sets of the live configurations' states, then each
// uncertain token of those states read byte by byte from its configuration (with the real
// stack beneath), then the end-of-generation tokens when the root rule can end here.
#pragma once

#include <memory>
#include <vector>

#include "constrain/byte_automaton.h"
#include "constrain/grammar.h"
#include "constrain/pushdown.h"
#include "constrain/token_masks.h"
#include "constrain/token_vocab.h"
#include "engine/sequence.h"

namespace peregrine::constrain {

struct CompileLimits {
  AutomatonLimits automaton;
  MaskLimits masks;
};

struct CompiledGrammar {
  ByteAutomaton automaton;
  TokenMaskTable masks;
  std::shared_ptr<const TokenVocab> vocab;
  double compile_ms = 0;  // automaton + masks

  static Result<std::shared_ptr<const CompiledGrammar>> compile(const Grammar& g,
                                                                std::shared_ptr<const TokenVocab> vocab,
                                                                const CompileLimits& lim = {});
  size_t memory_bytes() const { return automaton.memory_bytes() + masks.memory_bytes(); }
};

class GrammarConstraint final : public TokenConstraint {
 public:
  explicit GrammarConstraint(std::shared_ptr<const CompiledGrammar> g);

  void mask(float* logits, int64_t n_vocab) const override;
  void allowed_tokens(uint32_t* words, int64_t n_vocab) const override;
  bool advance(TokenId token) override;
  bool complete() const override { return cur_.can_end(); }

 private:
  // The configurations after reading `bytes` from `from` (a_ or b_), or null when no parse
  // reads them all; `from` may be cur_, which is left as it is.
  ConfigSet* read(ConfigSet* from, std::string_view bytes) const;
  // Whether `bytes` can be read starting from configuration c.
  bool reads(Config c, std::string_view bytes) const;

  std::shared_ptr<const CompiledGrammar> g_;
  ConfigSet cur_;
  // Scratch for masks (allowed_tokens is const for the sequence; the frames it interns are
  // shared with later steps).
  mutable StackArena arena_;
  mutable ConfigSet a_, b_;
  mutable std::vector<uint32_t> words_, scratch_, row_words_;
  mutable std::vector<int32_t> states_;
};

}  // namespace peregrine::constrain
