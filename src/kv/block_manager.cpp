#include "kv/block_manager.h"

#include <algorithm>
#include <limits>

namespace peregrine {

namespace {

constexpr uint64_t kRootHash = 0x9E3779B97F4A7C15ull;  // parent hash of an unsalted first block

// splitmix64's finalizer: a bijective, well-mixed 64-bit permutation.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xBF58476D1CE4E5B9ull;
  x ^= x >> 27;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The parent hash of a sequence's first block. Salt 0 keeps the unsalted root, so unsalted
// hashes are what they always were; a salted root only spreads the chains of different salts
// over the hash space (the salt stored in each block is what keeps them apart).
uint64_t root_hash(uint64_t salt) { return salt == 0 ? kRootHash : mix64(kRootHash ^ mix64(salt)); }

}  // namespace

uint64_t BlockManager::default_hash(uint64_t parent_hash, std::span<const int32_t> tokens) {
  uint64_t h = mix64(parent_hash ^ 0xD6E8FEB86659FD93ull);
  for (int32_t t : tokens) h = mix64(h ^ static_cast<uint32_t>(t));
  return mix64(h ^ tokens.size());
}

Result<BlockManager> BlockManager::create(int32_t n_blocks, int32_t block_size) {
  if (n_blocks <= 0) return make_error("block manager: n_blocks must be > 0, got {}", n_blocks);
  if (block_size <= 0) {
    return make_error("block manager: block_size must be > 0, got {}", block_size);
  }
  return BlockManager(n_blocks, block_size);
}

BlockManager::BlockManager(int32_t n_blocks, int32_t block_size)
    : n_blocks_(n_blocks), block_size_(block_size), blocks_(static_cast<size_t>(n_blocks)) {
  free_.reserve(static_cast<size_t>(n_blocks));
  for (int32_t b = n_blocks - 1; b >= 0; --b) free_.push_back(b);  // block 0 is handed out first
}

// --- Sequences -------------------------------------------------------------------------------

Status BlockManager::add_sequence(SeqId id, uint64_t cache_salt) {
  if (seqs_.count(id)) return make_error("add_sequence: sequence {} already exists", id);
  Sequence s;
  s.salt = cache_salt;
  seqs_.emplace(id, std::move(s));
  return Status::Ok();
}

void BlockManager::free_sequence(SeqId id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return;
  // Release the tail first: the tail is the least likely to be shared by a later prompt, so it
  // lands nearer the front of the LRU and is evicted before the head of the chain.
  const std::vector<int32_t>& table = it->second.table;
  for (auto b = table.rbegin(); b != table.rend(); ++b) release(*b);
  seqs_.erase(it);
  debug_check();
}

Status BlockManager::fork(SeqId parent, SeqId child) {
  auto p = seqs_.find(parent);
  if (p == seqs_.end()) return make_error("fork: unknown parent sequence {}", parent);
  if (seqs_.count(child)) return make_error("fork: child sequence {} already exists", child);
  Sequence copy = p->second;
  for (int32_t b : copy.table) blocks_[size_t(b)].ref++;
  seqs_.emplace(child, std::move(copy));
  debug_check();
  return Status::Ok();
}

Result<int32_t> BlockManager::append_tokens(SeqId id, std::span<const int32_t> tokens, int32_t max_hit) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return make_error("append_tokens: unknown sequence {}", id);
  Sequence& s = it->second;
  const int64_t n = static_cast<int64_t>(tokens.size());
  if (n > std::numeric_limits<int32_t>::max() - s.n_tokens) {
    return make_error("append_tokens: sequence {} would exceed 2^31 tokens ({} + {})", id,
                      s.n_tokens, n);
  }
  const int64_t bs = block_size_;
  // Matching continues a committed chain: the last block's hash must be known.
  const bool at_boundary = prefix_caching_ && s.n_tokens % bs == 0 &&
                           (s.table.empty() || blocks_[size_t(s.table.back())].serial != 0);

  // 1. Plan without changing anything. Prefix match: whole blocks at a block boundary, while
  //    the chain continues.
  std::vector<int32_t> matched;
  int64_t revived = 0;  // matched blocks that are now cached (leave the evictable pool)
  int64_t i = 0;        // tokens consumed by matches
  if (at_boundary) {
    uint64_t parent_hash = s.table.empty() ? root_hash(s.salt) : blocks_[size_t(s.table.back())].hash;
    uint64_t parent_serial = s.table.empty() ? 0 : blocks_[size_t(s.table.back())].serial;
    while (n - i >= bs && i + bs <= max_hit) {
      std::span<const int32_t> chunk = tokens.subspan(size_t(i), size_t(bs));
      const uint64_t h = hash_fn_(parent_hash, chunk);
      auto m = cache_.find(h);
      if (m == cache_.end()) break;
      const Block& c = blocks_[size_t(m->second)];
      // A hash hit alone proves nothing: the same salt, parent chain and token ids do.
      if (c.salt != s.salt || c.parent_serial != parent_serial || !std::ranges::equal(c.tokens, chunk)) break;
      matched.push_back(m->second);
      if (c.ref == 0) revived++;
      parent_hash = h;
      parent_serial = c.serial;
      i += bs;
    }
  }
  const int64_t rest = n - i;
  const int64_t pos = s.n_tokens + i;
  // A partly filled last block (matches need a boundary, so then matched is empty and
  // table.back() is that block) is written in place only if this table alone holds it and the
  // prefix cache does not: shared (fork) or cached (after truncate()), it is copied first. A
  // private block still holding tokens past the end (a sharer left since truncate()) drops them.
  const int64_t fill = pos % bs;
  bool cow = false, trim = false;
  if (rest > 0 && fill != 0) {
    const Block& last = blocks_[size_t(s.table.back())];
    cow = last.ref > 1 || last.registered;
    trim = !cow && static_cast<int64_t>(last.tokens.size()) > fill;
  }
  const int64_t have = static_cast<int64_t>(s.table.size() + matched.size());
  const int64_t fresh = ceil_div(pos + rest, bs) - have + (cow ? 1 : 0);
  const int64_t available = static_cast<int64_t>(free_.size() + lru_.size()) - revived;
  if (fresh > available) {
    return make_error(
        "out of KV blocks: sequence {} needs {} new block(s) for {} token(s), {} free and {} "
        "evictable cached block(s) left (pool {} x {} tokens)",
        id, fresh, n, free_.size(), static_cast<int64_t>(lru_.size()) - revived, n_blocks_,
        block_size_);
  }

  // 2. Commit.
  if (at_boundary) stats_.lookup_tokens += (std::min<int64_t>(n, max_hit) / bs) * bs;
  for (int32_t b : matched) {
    Block& blk = blocks_[size_t(b)];
    if (blk.in_lru) {
      lru_.erase(blk.lru_it);
      blk.in_lru = false;
    }
    blk.ref++;
    s.table.push_back(b);
  }
  s.n_tokens += static_cast<int32_t>(i);
  stats_.hit_tokens += i;

  if (trim) {
    Block& last = blocks_[size_t(s.table.back())];
    last.tokens.resize(size_t(fill));
    unseal(last);
  }
  if (cow) {
    const int32_t src = s.table.back();
    const int32_t dst = allocate();  // src is referenced, so never the block evicted here
    const std::vector<int32_t>& from = blocks_[size_t(src)].tokens;
    blocks_[size_t(dst)].tokens.assign(from.begin(), from.begin() + fill);
    blocks_[size_t(dst)].ref = 1;
    s.table.back() = dst;
    release(src);  // still in another table, or back to the prefix cache
    copies_.emplace_back(src, dst);
  }
  for (; i < n; ++i) {
    if (s.n_tokens % bs == 0) {
      const int32_t b = allocate();
      blocks_[size_t(b)].ref = 1;
      s.table.push_back(b);
    }
    blocks_[size_t(s.table.back())].tokens.push_back(tokens[size_t(i)]);
    s.n_tokens++;
  }
  debug_check();
  return static_cast<int32_t>(n - rest);
}

Status BlockManager::commit(SeqId id) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return make_error("commit: unknown sequence {}", id);
  const Sequence& s = it->second;
  // Committed blocks form a prefix of every table: seal the full blocks after it, in order.
  const size_t n_full = static_cast<size_t>(s.n_tokens / block_size_);
  size_t j = n_full;
  while (j > 0 && blocks_[size_t(s.table[j - 1])].serial == 0) --j;
  for (; j < n_full; ++j) seal(s, j);
  debug_check();
  return Status::Ok();
}

Status BlockManager::truncate(SeqId id, int32_t n_tokens) {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return make_error("truncate: unknown sequence {}", id);
  Sequence& s = it->second;
  if (n_tokens < 0 || n_tokens > s.n_tokens)
    return make_error("truncate: sequence {} holds {} tokens, cannot keep {}", id, s.n_tokens, n_tokens);
  const size_t keep = static_cast<size_t>(ceil_div(n_tokens, block_size_));
  while (s.table.size() > keep) {  // the tail first, as free_sequence() does
    release(s.table.back());
    s.table.pop_back();
  }
  s.n_tokens = n_tokens;
  if (const int64_t fill = n_tokens % block_size_; fill != 0) {
    // The last block is partly filled again. Private and not in the prefix cache, it drops the
    // tokens past the end now; otherwise it keeps them for the other table or the cache, and
    // the next append writes into a copy.
    Block& last = blocks_[size_t(s.table.back())];
    if (last.ref == 1 && !last.registered) {
      last.tokens.resize(size_t(fill));
      unseal(last);
    }
  }
  debug_check();
  return Status::Ok();
}

std::vector<std::pair<int32_t, int32_t>> BlockManager::take_copies() {
  std::vector<std::pair<int32_t, int32_t>> out;
  out.swap(copies_);
  return out;
}

// --- Queries ---------------------------------------------------------------------------------

Result<std::span<const int32_t>> BlockManager::block_table(SeqId id) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return make_error("block_table: unknown sequence {}", id);
  return std::span<const int32_t>(it->second.table);
}

Result<int32_t> BlockManager::n_tokens(SeqId id) const {
  auto it = seqs_.find(id);
  if (it == seqs_.end()) return make_error("n_tokens: unknown sequence {}", id);
  return it->second.n_tokens;
}

int32_t BlockManager::refcount(int32_t block) const {
  PG_ASSERT(block >= 0 && block < n_blocks_);
  return blocks_[size_t(block)].ref;
}

std::span<const int32_t> BlockManager::block_tokens(int32_t block) const {
  PG_ASSERT(block >= 0 && block < n_blocks_);
  return blocks_[size_t(block)].tokens;
}

// --- Internals -------------------------------------------------------------------------------

int32_t BlockManager::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else {
    PG_ASSERT(!lru_.empty());  // append_tokens checked availability
    b = lru_.front();
    lru_.pop_front();
    Block& blk = blocks_[size_t(b)];
    blk.in_lru = false;
    cache_.erase(blk.hash);
    reset(blk);
    stats_.evictions++;
  }
  return b;
}

void BlockManager::release(int32_t block) {
  Block& blk = blocks_[size_t(block)];
  PG_ASSERT(blk.ref > 0);
  if (--blk.ref > 0) return;
  if (blk.registered) {  // keep the KV for a later identical prefix
    blk.lru_it = lru_.insert(lru_.end(), block);
    blk.in_lru = true;
  } else {
    reset(blk);
    free_.push_back(block);
  }
}

void BlockManager::seal(const Sequence& s, size_t j) {
  const Block* parent = j >= 1 ? &blocks_[size_t(s.table[j - 1])] : nullptr;
  Block& blk = blocks_[size_t(s.table[j])];
  blk.hash = hash_fn_(parent ? parent->hash : root_hash(s.salt), blk.tokens);
  blk.parent_serial = parent ? parent->serial : 0;
  blk.salt = s.salt;
  auto m = cache_.find(blk.hash);
  if (m == cache_.end()) {
    blk.serial = next_serial_++;
    blk.registered = true;
    cache_.emplace(blk.hash, s.table[j]);
    return;
  }
  const Block& c = blocks_[size_t(m->second)];
  // Same content as the cache's entry (computed twice, e.g. concurrent identical prompts):
  // same chain id, so later blocks still match. A true collision, or the same tokens under
  // another salt, gets a chain id of its own (serials never cross salts).
  const bool same = c.salt == blk.salt && c.parent_serial == blk.parent_serial && c.tokens == blk.tokens;
  blk.serial = same ? c.serial : next_serial_++;
}

void BlockManager::unseal(Block& b) {
  b.hash = 0;
  b.serial = 0;
  b.parent_serial = 0;
  b.salt = 0;
}

void BlockManager::reset(Block& b) {
  b.tokens.clear();
  unseal(b);
  b.registered = false;
}

void BlockManager::debug_check() const {
#ifndef NDEBUG
  Status st = check_invariants();
  if (!st.ok()) std::fprintf(stderr, "block manager: %s\n", st.error().message.c_str());
  PG_ASSERT(st.ok());
#endif
}

Status BlockManager::check_invariants() const {
  const size_t nb = blocks_.size();
  std::vector<int32_t> refs(nb, 0);  // references counted from the block tables
  std::vector<SeqId> holder(nb, 0);  // the first table seen holding each block
  const int64_t bs = block_size_;
  for (const auto& [id, s] : seqs_) {
    if (static_cast<int64_t>(s.table.size()) != ceil_div(s.n_tokens, bs)) {
      return make_error("sequence {}: {} blocks for {} tokens", id, s.table.size(), s.n_tokens);
    }
    uint64_t parent_hash = root_hash(s.salt);
    uint64_t parent_serial = 0;
    bool committed = true;  // committed (sealed) full blocks form a prefix of the table
    for (size_t j = 0; j < s.table.size(); ++j) {
      const int32_t b = s.table[j];
      if (b < 0 || b >= n_blocks_) return make_error("sequence {}: bad block id {}", id, b);
      const Block& blk = blocks_[size_t(b)];
      // Tables share a block only within one salt (a hit matches it, a fork inherits it).
      if (refs[size_t(b)]++ == 0) {
        holder[size_t(b)] = id;
      } else if (const uint64_t other = seqs_.at(holder[size_t(b)]).salt; other != s.salt) {
        return make_error("block {}: held by sequence {} (salt {}) and sequence {} (salt {})", b,
                          holder[size_t(b)], other, id, s.salt);
      }
      if (blk.serial != 0 && blk.salt != s.salt) {
        return make_error("sequence {}: block {} (#{}) sealed under salt {}, the sequence's is {}", id,
                          b, j, blk.salt, s.salt);
      }
      const int64_t fill = std::min<int64_t>(bs, s.n_tokens - int64_t(j) * bs);
      const int64_t held = static_cast<int64_t>(blk.tokens.size());
      // Only a partly used last block may hold more (tokens of another table or the cache).
      if (held != fill && !(fill < bs && held > fill)) {
        return make_error("sequence {}: block {} (#{}) holds {} tokens, expected {}", id, b, j,
                          blk.tokens.size(), fill);
      }
      if (fill == bs && blk.serial != 0) {
        if (!committed) return make_error("sequence {}: block {} (#{}) sealed after an uncommitted one", id, b, j);
        if (blk.hash != hash_fn_(parent_hash, blk.tokens) || blk.parent_serial != parent_serial) {
          return make_error("sequence {}: full block {} (#{}) has a wrong hash chain", id, b, j);
        }
        parent_hash = blk.hash;
        parent_serial = blk.serial;
      } else if (fill == bs) {
        committed = false;
      } else if (held == fill && (blk.serial != 0 || blk.registered)) {
        return make_error("sequence {}: partial block {} is sealed", id, b);
      }
    }
  }
  std::vector<char> is_free(nb, 0);
  for (int32_t b : free_) {
    if (b < 0 || b >= n_blocks_ || is_free[size_t(b)]) {
      return make_error("free list: bad or repeated block {}", b);
    }
    is_free[size_t(b)] = 1;
  }
  size_t n_lru = 0;
  for (int32_t b : lru_) {
    const Block& blk = blocks_[size_t(b)];
    if (!blk.in_lru || *blk.lru_it != b) return make_error("lru: block {} not marked", b);
    n_lru++;
  }
  size_t n_registered = 0;
  for (size_t b = 0; b < nb; ++b) {
    const Block& blk = blocks_[b];
    const int states = int(is_free[b] != 0) + int(blk.in_lru) + int(blk.ref > 0);
    if (states != 1) {
      return make_error("block {}: in {} states (free {}, cached {}, ref {})", b, states,
                        int(is_free[b]), int(blk.in_lru), blk.ref);
    }
    if (blk.ref != refs[b]) {
      return make_error("block {}: refcount {} but {} tables hold it", b, blk.ref, refs[b]);
    }
    if (is_free[b] && (!blk.tokens.empty() || blk.registered)) {
      return make_error("block {}: free but holds data", b);
    }
    if (blk.in_lru && !blk.registered) return make_error("block {}: cached but unregistered", b);
    if (blk.registered && blk.serial == 0) return make_error("block {}: registered but not sealed", b);
    if (blk.registered) {
      n_registered++;
      auto m = cache_.find(blk.hash);
      if (m == cache_.end() || m->second != int32_t(b) ||
          static_cast<int64_t>(blk.tokens.size()) != bs) {
        return make_error("block {}: registered but not the cache entry for its hash", b);
      }
    }
  }
  if (n_lru != lru_.size() || n_registered != cache_.size()) {
    return make_error("prefix cache index has {} entries, {} registered blocks", cache_.size(),
                      n_registered);
  }
  return Status::Ok();
}

}  // namespace peregrine
