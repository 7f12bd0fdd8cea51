// ByteAutomaton: a Grammar compiled to one deterministic automaton per rule over bytes,
// whose transitions are byte classes or calls of other rules; a stack of return states makes
// it a pushdown automaton (pushdown.h runs it).
//
// Rules that are not recursive are inlined into their callers (up to a size budget), so most
// of a grammar — a JSON object with its strings and numbers, a whole regular expression —
// becomes one DFA and the stack only grows at real recursion (nested JSON values). That keeps
// the number of live stacks small and lets the per-state token masks (token_masks.h) see
// whole tokens inside one rule instead of cutting them at rule boundaries.
//
// Construction: Thompson NFA per needed rule (code point classes become the UTF-8 byte
// sequences that encode them; surrogates are never matched), byte classes shared by the whole
// grammar (bytes no edge tells apart share a class), subset construction per rule where a
// call of rule R is a symbol like a byte class, then trimming of states that cannot reach an
// accepting state (so a byte is only allowed when the text can still be completed).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "constrain/grammar.h"
#include "core/status.h"

namespace peregrine::constrain {

struct AutomatonLimits {
  uint32_t max_nfa_states = 1u << 20;  // bounds expansion of {m,n} repeats and inlining
  uint64_t max_subset_work = uint64_t(1) << 24;  // NFA states visited by subset construction
  uint32_t max_dfa_states = 1u << 16;  // bounds subset construction
  uint32_t max_inline_size = 4096;     // expression nodes a rule may have to be inlined
  uint32_t max_depth = 1000;           // expression nesting (including inlined rules)
};

// A call from a state: push `ret` (a state of the caller) and continue at `start` (the
// callee's start state).
struct RuleCall {
  int32_t start;
  int32_t ret;
};

class ByteAutomaton {
 public:
  // A clear error for grammars that match nothing or exceed the limits.
  static Result<ByteAutomaton> compile(const Grammar& g, const AutomatonLimits& limits = {});

  int32_t n_states() const { return int32_t(accepting_.size()); }
  int32_t root_start() const { return root_start_; }
  // The state after `byte` from s, or -1 (no transition).
  int32_t next(int32_t s, uint8_t byte) const { return next_class(s, class_of_[byte]); }
  // The same by byte class (bytes of one class always lead to the same state).
  int32_t next_class(int32_t s, uint8_t cls) const { return next_[size_t(s) * size_t(n_classes_) + cls]; }
  uint8_t class_of(uint8_t byte) const { return class_of_[byte]; }
  bool accepting(int32_t s) const { return accepting_[size_t(s)] != 0; }
  std::span<const RuleCall> calls(int32_t s) const {
    return {calls_.data() + call_begin_[size_t(s)], calls_.data() + call_begin_[size_t(s) + 1]};
  }
  bool has_calls(int32_t s) const { return call_begin_[size_t(s)] != call_begin_[size_t(s) + 1]; }
  int32_t n_classes() const { return n_classes_; }
  size_t memory_bytes() const;

 private:
  int32_t n_classes_ = 0;
  uint8_t class_of_[256] = {};
  std::vector<int32_t> next_;         // [n_states * n_classes] next state or -1
  std::vector<uint8_t> accepting_;    // [n_states]
  std::vector<uint32_t> call_begin_;  // [n_states + 1] offsets into calls_
  std::vector<RuleCall> calls_;
  int32_t root_start_ = 0;
};

}  // namespace peregrine::constrain
