// TokenMaskTable: for every reachable state of a ByteAutomaton, the tokens whose bytes can be
// read from that state without looking beneath its rule's frame (accepted wherever the state
// occurs), and the tokens that can only be read by returning past it (uncertain: they
// depend on the stack below and are checked at run time). Everything else is rejected in
// that state, whatever the stack. This is the "adaptive token mask cache" idea of XGrammar
// (Dong et al., 2024): at run time a step ORs the precomputed sets of the live states and
// walks only the uncertain tokens.
//
// Each state's sets come from one depth-first walk of a trie of the tokens' byte-class
// strings carrying the configuration set per depth; a prefix that no configuration can read
// skips its whole subtree, and a prefix read only by returning past the frame makes its whole
// subtree uncertain. A set is stored as a bitmask, a list of ids or the list of ids it lacks,
// whichever is smallest. States are walked at compile time, nearest the root first, up to a
// budget; the rest on first use (thread-safe), so no grammar is refused for its size here.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <vector>

#include "constrain/byte_automaton.h"
#include "constrain/token_vocab.h"
#include "core/status.h"

namespace peregrine::constrain {

struct MaskLimits {
  // Trie nodes walked at compile time (all states together). States past it are walked the
  // first time a step needs them (about a millisecond for a wide state), so a big grammar
  // compiles in bounded time and still works.
  uint64_t eager_trie_steps = uint64_t(1) << 26;
};

class TokenMaskTable {
 public:
  TokenMaskTable();
  TokenMaskTable(const TokenMaskTable&) = delete;
  TokenMaskTable& operator=(const TokenMaskTable&) = delete;
  ~TokenMaskTable();

  // Walks the states nearest the root first until the eager budget is spent; an error only
  // for a grammar too ambiguous to walk.
  Status build(const ByteAutomaton& a, const TokenVocab& vocab, const MaskLimits& lim = {});

  // ORs the tokens accepted in `state` into words ([vocab.n_words()]); scratch: the same size.
  // `a` is the automaton the table was built for (a state not walked yet is walked now).
  // With `words_zero` (words hold no token yet) the set is written instead of ORed.
  void add_accepted(const ByteAutomaton& a, int32_t state, uint32_t* words, uint32_t* scratch,
                    bool words_zero = false) const;
  std::span<const int32_t> uncertain(const ByteAutomaton& a, int32_t state) const { return entry(a, state).uncertain; }

  size_t memory_bytes() const;
  size_t n_walked() const;  // states walked so far (eagerly or since)
  size_t n_states() const { return n_states_; }

 private:
  enum class Kind : uint8_t { List, Complement, Bitset };
  struct Packed {
    Kind kind = Kind::List;
    std::vector<int32_t> ids;     // List: accepted ids; Complement: the ids not accepted
    std::vector<uint32_t> words;  // Bitset
    std::vector<int32_t> uncertain;
  };
  struct Lazy;  // the walker kept for states not walked yet

  const Packed& entry(const ByteAutomaton& a, int32_t state) const;
  // The one stored copy of p's sets (states far from the end of a repetition share theirs).
  const Packed* intern(std::unique_ptr<Packed> p) const;

  int64_t n_rows_ = 0, n_words_ = 0;
  size_t n_states_ = 0;
  std::unique_ptr<std::atomic<const Packed*>[]> entries_;  // [n_states], null until walked
  mutable std::mutex mu_;                                  // walking a state lazily
  mutable std::unique_ptr<Lazy> lazy_;
  mutable std::mutex intern_mu_;
  mutable std::vector<std::unique_ptr<Packed>> owned_;                  // distinct sets
  mutable std::unordered_multimap<uint64_t, const Packed*> by_content_;  // hash -> set
  mutable std::atomic<uint64_t> steps_{0};
};

}  // namespace peregrine::constrain
