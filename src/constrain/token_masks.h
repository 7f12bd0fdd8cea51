// TokenMaskTable: for every reachable state of a ByteAutomaton, the tokens whose bytes can be
// read from that state without looking beneath its rule's frame (accepted wherever the state
// occurs), and the tokens that can only be read by returning past it (uncertain: they
// depend on the stack below and are checked at run time). Everything else is rejected in
// that state, whatever the stack. This is the "adaptive token mask cache" idea of XGrammar
// (Dong et al., 2024): at run time a step ORs the precomputed sets of the live states and
// walks only the uncertain tokens.
//
// Each state's sets come from one depth-first walk of a trie of the tokens' byte-class
// strings carrying the configuration set per depth; a prefix that no configuration can read skips its whole
// subtree, and a prefix read only by returning past the frame makes its whole subtree
// uncertain. A set is stored as a bitmask, a list of ids or the list of ids it lacks,
// whichever is smallest.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "constrain/byte_automaton.h"
#include "constrain/token_vocab.h"
#include "core/status.h"

namespace peregrine::constrain {

struct MaskLimits {
  uint64_t max_trie_steps = uint64_t(1) << 27;  // bounds compile time (trie nodes walked, all states)
};

class TokenMaskTable {
 public:
  static Result<TokenMaskTable> build(const ByteAutomaton& a, const TokenVocab& vocab, const MaskLimits& lim = {});

  // ORs the tokens accepted in `state` into words ([vocab.n_words()]); scratch: the same size.
  void add_accepted(int32_t state, uint32_t* words, uint32_t* scratch) const;
  std::span<const int32_t> uncertain(int32_t state) const {
    const Entry& e = entries_[size_t(state)];
    return {ids_.data() + e.unc_begin, ids_.data() + e.unc_end};
  }
  bool reachable(int32_t state) const { return entries_[size_t(state)].kind != Kind::Unreached; }
  size_t memory_bytes() const { return entries_.size() * sizeof(Entry) + ids_.size() * 4 + words_.size() * 4; }
  uint64_t trie_steps() const { return steps_; }
  size_t n_uncertain_total() const { return n_uncertain_; }

 private:
  enum class Kind : uint8_t { Unreached, List, Complement, Bitset };
  struct Entry {
    Kind kind = Kind::Unreached;
    uint32_t begin = 0, end = 0;          // List / Complement: ids_; Bitset: words_
    uint32_t unc_begin = 0, unc_end = 0;  // uncertain ids in ids_
  };
  int64_t n_rows_ = 0, n_words_ = 0;
  std::vector<Entry> entries_;  // [n_states]
  std::vector<int32_t> ids_;
  std::vector<uint32_t> words_;
  uint64_t steps_ = 0;
  size_t n_uncertain_ = 0;
};

}  // namespace peregrine::constrain
