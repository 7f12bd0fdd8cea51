// BlockManager: where each sequence's KV lives in a paged KV cache (the bookkeeping only).
//
// The pool has n_blocks blocks of block_size token positions each (ids 0..n_blocks-1). Every
// sequence owns a block table: block i of the table holds the KV of positions
// i*block_size .. (i+1)*block_size - 1. The idea is PagedAttention (vLLM, Kwon et al. 2023).
//
// Every block is in exactly one state:
//   free        on the free list, holds nothing.
//   referenced  in one or more block tables; ref = how many tables hold it.
//   cached      ref 0, but full and entered in the prefix cache: its KV is still valid and a
//               later identical prefix can take it back; evicted least recently used first
//               when a fresh block is needed and the free list is empty.
//
// Prefix caching. A block enters the prefix cache only once its KV exists: append_tokens()
// reserves blocks for tokens whose KV the caller is about to compute, and commit(), called
// after the forward pass that wrote them succeeded, "seals" the blocks that are full: each
// gets a chain hash hash(parent block's hash, the block's token ids), so equal hashes mean
// equal whole prefixes up to that block. The first block sealed with a given hash becomes
// the cache's entry for it. Blocks never committed (the forward pass failed, the sequence was
// freed first) go back to the free list, never to the cache.
// append_tokens() on a sequence at a block boundary looks up each whole block of the new tokens
// and takes the cached block instead of a fresh one while they match; it returns the number of
// tokens found, whose KV the caller need not compute.
// Collisions cannot cause wrong sharing: a hit is accepted only if the cached block's token ids
// are equal AND its parent is the same content chain. Chains are identified by a serial number
// given out once per distinct sealed content (never reused), so even two different parents with
// colliding hashes do not match.
//
// Cache salt. A sequence may carry a salt (add_sequence; its forks inherit it) so that tenants
// who must not learn from each other's timing or cached-token counts never share a block:
// the chain of a salted sequence starts from a root hash derived from the salt, and every
// sealed block records its chain's salt, which a hit must match as well (so even a hash
// collision across salts, or equal first blocks under different salts, never matches). Equal
// salts share as before; salt 0 is the unsalted cache. No state is kept per salt beyond the
// blocks themselves, so any number of salts costs no memory once their blocks are evicted.
//
// Copy-on-write. fork() makes a child share all of a parent's blocks. Appending to a sequence
// whose last, partly filled block is shared first moves it onto a private copy; the caller must
// copy the KV data, see take_copies().
//
// Going back. truncate() drops a sequence's tokens past a new length (rejected drafts of
// speculative decoding): blocks past it are released (a full block in the prefix cache stays
// there: its KV is valid for its tokens). A last block left partly filled keeps its tokens
// past the end while another table or the prefix cache needs them; the next append then
// writes into a copy (copy-on-write as above), never into the shared block.
//
// Policy-free: the manager never chooses what to preempt or evict beyond the LRU rule; when the
// pool is exhausted append_tokens() fails and changes nothing, and the scheduler decides. It
// knows nothing of what the KV holds: whether a model's KV can be shared by prefix at all is
// the caller's to say (set_prefix_caching, from KvShape::prefix_sharing()).
#pragma once

#include <cstdint>
#include <limits>
#include <list>
#include <span>
#include <unordered_map>
#include <utility>
#include <vector>

#include "core/status.h"

namespace peregrine {

using SeqId = int64_t;  // chosen by the caller (e.g. request id * n + choice index)

// Prefix-cache counters, cumulative, for /metrics.
struct PrefixCacheStats {
  int64_t lookup_tokens = 0;  // tokens offered for matching (whole blocks at a block boundary)
  int64_t hit_tokens = 0;     // of those, tokens found in the cache
  int64_t evictions = 0;      // cached blocks evicted to make room
};

class BlockManager {
 public:
  // Chain hash of one full block: hash(parent block's hash, its token ids).
  using HashFn = uint64_t (*)(uint64_t parent_hash, std::span<const int32_t> tokens);

  // Errors on n_blocks <= 0 or block_size <= 0.
  static Result<BlockManager> create(int32_t n_blocks, int32_t block_size);

  // --- Sequences ---------------------------------------------------------------------------
  // A new, empty sequence whose blocks are shared only with sequences of the same cache_salt
  // (0: the unsalted cache). Error if the id is in use.
  Status add_sequence(SeqId id, uint64_t cache_salt = 0);
  // Drops the sequence and its references. Blocks left unreferenced become cached (full, in
  // the prefix cache) or free. An unknown id is a no-op, so cancel paths may call it twice.
  void free_sequence(SeqId id);
  // The child shares every block of the parent (n > 1 sampling) and its salt. Errors: unknown
  // parent, child id in use.
  Status fork(SeqId parent, SeqId child);

  // Appends tokens, allocating blocks as needed. Returns how many of the leading given tokens
  // were found in the prefix cache (a multiple of block_size; 0 unless the sequence was at a
  // block boundary after committed blocks). Error if the sequence is unknown or too few free +
  // evictable blocks are left; on error nothing changes.
  // At most max_hit leading tokens are taken from the cache (a caller that needs the last
  // token's logits passes tokens.size() - 1).
  Result<int32_t> append_tokens(SeqId id, std::span<const int32_t> tokens,
                                int32_t max_hit = std::numeric_limits<int32_t>::max());
  // The KV of every token appended to the sequence so far has been written (the forward pass
  // succeeded): its full blocks enter the prefix cache. Error if the sequence is unknown.
  Status commit(SeqId id);
  // Keeps the first n_tokens tokens of the sequence (0 <= n_tokens <= its length), dropping
  // the table entries past them. Errors: unknown sequence, n_tokens out of range.
  Status truncate(SeqId id, int32_t n_tokens);

  // (src, dst) block pairs whose KV the caller must copy (copy-on-write) before the next
  // forward pass, oldest first; clears the list. Perform them before freeing sequences, as a
  // freed src may be reused.
  std::vector<std::pair<int32_t, int32_t>> take_copies();

  // --- Queries -------------------------------------------------------------------------------
  Result<std::span<const int32_t>> block_table(SeqId id) const;
  Result<int32_t> n_tokens(SeqId id) const;
  bool has_sequence(SeqId id) const { return seqs_.count(id) != 0; }
  int32_t n_sequences() const { return static_cast<int32_t>(seqs_.size()); }

  int32_t n_blocks() const { return n_blocks_; }
  int32_t block_size() const { return block_size_; }
  int32_t n_free() const { return static_cast<int32_t>(free_.size()); }
  int32_t n_cached() const { return static_cast<int32_t>(lru_.size()); }  // evictable
  int32_t n_used() const { return n_blocks_ - n_free() - n_cached(); }     // referenced
  const PrefixCacheStats& stats() const { return stats_; }

  // For tests and debugging; block must be in 0..n_blocks-1.
  int32_t refcount(int32_t block) const;
  std::span<const int32_t> block_tokens(int32_t block) const;  // token ids it holds

  // Checks every invariant (block states, refcounts, fills, hashes, salts, cache index); the error
  // names the first violation. Runs after every mutation in debug builds.
  Status check_invariants() const;

  // With prefix caching off, append_tokens() never takes a cached block (for models whose
  // KV for a prefix is not all in the blocks, e.g. window layers kept in per-sequence rings).
  void set_prefix_caching(bool on) { prefix_caching_ = on; }
  bool prefix_caching() const { return prefix_caching_; }

  // Test hook: replace the chain hash (e.g. a constant, to force collisions). Call before
  // appending any tokens.
  void set_hash_fn_for_testing(HashFn fn) { hash_fn_ = fn; }

  static uint64_t default_hash(uint64_t parent_hash, std::span<const int32_t> tokens);

 private:
  BlockManager(int32_t n_blocks, int32_t block_size);

  struct Block {
    int32_t ref = 0;              // number of block tables holding it
    // Token ids written so far, size <= block_size. A table whose sequence ends inside the
    // block may use fewer (after truncate(); the rest are another table's or the cache's).
    std::vector<int32_t> tokens;
    // Valid once full and committed (sealed; serial 0 until then):
    uint64_t hash = 0;            // chain hash: hash_fn(parent's hash, tokens)
    uint64_t serial = 0;          // id of this content chain (equal serials = equal prefixes)
    uint64_t parent_serial = 0;   // the parent's serial, 0 for a sequence's first block
    uint64_t salt = 0;            // cache salt of the chain (its sequences'); a hit must match it
    bool registered = false;      // is cache_[hash] (the prefix cache's entry for its hash)
    bool in_lru = false;          // cached state: on lru_ at lru_it
    std::list<int32_t>::iterator lru_it;
  };

  struct Sequence {
    std::vector<int32_t> table;  // block ids; table[i] holds positions i*bs..(i+1)*bs-1
    int32_t n_tokens = 0;        // positions used; the last block holds the remainder
    uint64_t salt = 0;           // cache salt: blocks are shared only within equal salts
  };

  int32_t allocate();                   // a fresh, empty block with ref 0 (free list, else evict)
  void release(int32_t block);          // ref--, to cached or free at 0
  void seal(const Sequence& s, size_t j);  // s's full block j, after committed 0..j-1: hash, maybe register
  static void unseal(Block& b);         // forget the hash chain (the block is partly filled again)
  void reset(Block& b);                 // back to the empty free-state contents
  void debug_check() const;

  int32_t n_blocks_;
  int32_t block_size_;
  std::vector<Block> blocks_;                      // [n_blocks]
  std::vector<int32_t> free_;                      // free block ids, next allocated at back
  std::list<int32_t> lru_;                         // cached block ids, least recent at front
  std::unordered_map<uint64_t, int32_t> cache_;    // chain hash -> registered full block
  std::unordered_map<SeqId, Sequence> seqs_;
  std::vector<std::pair<int32_t, int32_t>> copies_;  // pending copy-on-write (src, dst)
  uint64_t next_serial_ = 1;                       // 0 means "no parent"
  HashFn hash_fn_ = &default_hash;
  bool prefix_caching_ = true;
  PrefixCacheStats stats_;
};

}  // namespace peregrine
