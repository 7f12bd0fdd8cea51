// The BPE merge table (pair of token ids -> rank and merged id) and the merge
// loop that applies it to one pre-tokenized piece.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace peregrine {

class BpeMerges {
 public:
  struct Merge {
    int32_t rank;    // position in tokenizer.ggml.merges: lower merges first
    int32_t merged;  // id of the concatenated token
  };

  void reserve(size_t n_merges);
  // A later duplicate of a pair replaces the earlier one (as HF tokenizers does).
  void add(int32_t left, int32_t right, Merge m);
  const Merge* find(int32_t left, int32_t right) const;
  size_t size() const { return n_; }

  // Merges `ids` (the single-byte tokens of one piece) in place until no
  // adjacent pair has a rank. Always the lowest rank first, leftmost on ties —
  // the order HF tokenizers and the original GPT-2 code agree on. A heap of
  // candidate pairs with lazy invalidation keeps it O(n log n), so a 100 KB
  // run of one character costs milliseconds, not the O(n^2) of rescanning.
  void apply(std::vector<int32_t>& ids) const;

 private:
  static constexpr size_t kShortPiece = 48;  // pieces up to this many bytes skip the heap
  void apply_short(std::vector<int32_t>& ids) const;

  // Open addressing with linear probing: one flat array, no node allocations;
  // the key packs both ids into 64 bits.
  struct Slot {
    uint64_t key;
    Merge m;
    bool used;
  };
  static uint64_t pack(int32_t l, int32_t r) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
  }
  static uint64_t hash(uint64_t k) {  // a 64-bit mix (splitmix64 finalizer)
    k ^= k >> 30;
    k *= 0xbf58476d1ce4e5b9ULL;
    k ^= k >> 27;
    k *= 0x94d049bb133111ebULL;
    return k ^ (k >> 31);
  }
  void grow();

  std::vector<Slot> slots_;
  size_t n_ = 0;
};

}  // namespace peregrine
