// BlockManager: allocation, prefix sharing (only of committed blocks), LRU eviction, fork +
// copy-on-write, truncation, collisions, and a randomized run checked against a plain model of
// each sequence's tokens and of the KV each block holds.
#include <gtest/gtest.h>

#include <map>
#include <numeric>
#include <random>
#include <vector>

#include "kv/block_manager.h"

namespace peregrine {
namespace {

BlockManager make(int32_t n_blocks, int32_t block_size) {
  auto r = BlockManager::create(n_blocks, block_size);
  EXPECT_TRUE(r.ok()) << r.error().message;
  return std::move(r).value();
}

std::vector<int32_t> iota_tokens(int32_t n, int32_t start) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), start);
  return v;
}

std::vector<int32_t> table(const BlockManager& bm, SeqId id) {
  auto t = bm.block_table(id);
  EXPECT_TRUE(t.ok());
  return {t->begin(), t->end()};
}

// Appends and commits, as a step whose forward pass succeeded does.
int32_t append(BlockManager& bm, SeqId id, const std::vector<int32_t>& toks) {
  auto r = bm.append_tokens(id, toks);
  EXPECT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(bm.commit(id).ok());
  return r.ok() ? *r : -1;
}

#define EXPECT_INVARIANTS(bm)                                   \
  do {                                                          \
    Status st_ = (bm).check_invariants();                       \
    EXPECT_TRUE(st_.ok()) << st_.error().message;               \
  } while (0)

TEST(BlockManager, RejectsBadInput) {
  EXPECT_FALSE(BlockManager::create(0, 16).ok());
  EXPECT_FALSE(BlockManager::create(8, 0).ok());
  EXPECT_FALSE(BlockManager::create(-1, 16).ok());
  BlockManager bm = make(4, 4);
  EXPECT_TRUE(bm.add_sequence(1).ok());
  EXPECT_FALSE(bm.add_sequence(1).ok());
  std::vector<int32_t> t{1, 2};
  auto r = bm.append_tokens(7, t);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("unknown sequence 7"), std::string::npos);
  EXPECT_FALSE(bm.block_table(7).ok());
  EXPECT_FALSE(bm.n_tokens(7).ok());
  EXPECT_FALSE(bm.fork(7, 8).ok());
  EXPECT_FALSE(bm.fork(1, 1).ok());
  bm.free_sequence(7);  // no-op
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManager, AllocatesAcrossBlockBoundaries) {
  BlockManager bm = make(8, 4);
  ASSERT_TRUE(bm.add_sequence(1).ok());
  EXPECT_EQ(append(bm, 1, iota_tokens(3, 0)), 0);
  EXPECT_EQ(table(bm, 1).size(), 1u);
  EXPECT_EQ(append(bm, 1, iota_tokens(1, 3)), 0);  // exactly fills block 0
  EXPECT_EQ(table(bm, 1).size(), 1u);
  EXPECT_EQ(append(bm, 1, iota_tokens(6, 4)), 0);  // 10 tokens -> 3 blocks
  EXPECT_EQ(table(bm, 1).size(), 3u);
  EXPECT_EQ(bm.n_tokens(1).value(), 10);
  EXPECT_EQ(bm.n_used(), 3);
  EXPECT_EQ(bm.n_free(), 5);
  std::vector<int32_t> all;
  for (int32_t b : table(bm, 1)) {
    EXPECT_EQ(bm.refcount(b), 1);
    auto bt = bm.block_tokens(b);
    all.insert(all.end(), bt.begin(), bt.end());
  }
  EXPECT_EQ(all, iota_tokens(10, 0));
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManager, OutOfBlocksIsAnErrorAndChangesNothing) {
  BlockManager bm = make(3, 4);
  ASSERT_TRUE(bm.add_sequence(1).ok());
  append(bm, 1, iota_tokens(10, 0));  // 3 blocks, 2 free slots left in the last
  const auto before = table(bm, 1);
  auto r = bm.append_tokens(1, iota_tokens(3, 100));  // needs a 4th block
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("out of KV blocks"), std::string::npos) << r.error().message;
  EXPECT_EQ(table(bm, 1), before);
  EXPECT_EQ(bm.n_tokens(1).value(), 10);
  EXPECT_EQ(bm.n_free(), 0);
  EXPECT_EQ(append(bm, 1, iota_tokens(2, 100)), 0);  // what still fits does fit
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManager, FreeingReturnsBlocks) {
  BlockManager bm = make(4, 4);
  ASSERT_TRUE(bm.add_sequence(1).ok());
  append(bm, 1, iota_tokens(6, 0));  // one full (cached on free) + one partial (freed)
  EXPECT_EQ(bm.n_used(), 2);
  bm.free_sequence(1);
  EXPECT_FALSE(bm.has_sequence(1));
  EXPECT_EQ(bm.n_used(), 0);
  EXPECT_EQ(bm.n_cached(), 1);
  EXPECT_EQ(bm.n_free(), 3);
  // The cached block is still usable as a fresh block: 4 blocks of new tokens fit.
  ASSERT_TRUE(bm.add_sequence(2).ok());
  EXPECT_EQ(append(bm, 2, iota_tokens(16, 50)), 0);
  EXPECT_EQ(bm.n_used(), 4);
  EXPECT_EQ(bm.stats().evictions, 1);
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManager, SharesIdenticalPromptPrefixes) {
  const int32_t bs = 4;
  BlockManager bm = make(16, bs);
  const auto prompt = iota_tokens(2 * bs + 2, 10);  // 2 full blocks + a partial one
  ASSERT_TRUE(bm.add_sequence(1).ok());
  ASSERT_TRUE(bm.add_sequence(2).ok());
  EXPECT_EQ(append(bm, 1, prompt), 0);
  EXPECT_EQ(append(bm, 2, prompt), 2 * bs);
  const auto t1 = table(bm, 1), t2 = table(bm, 2);
  ASSERT_EQ(t1.size(), 3u);
  ASSERT_EQ(t2.size(), 3u);
  EXPECT_EQ(t1[0], t2[0]);
  EXPECT_EQ(t1[1], t2[1]);
  EXPECT_NE(t1[2], t2[2]);  // the partial block is private
  EXPECT_EQ(bm.refcount(t1[0]), 2);
  EXPECT_EQ(bm.refcount(t1[2]), 1);
  EXPECT_EQ(bm.n_used(), 4);
  EXPECT_EQ(bm.stats().hit_tokens, 2 * bs);
  EXPECT_EQ(bm.stats().lookup_tokens, 4 * bs);  // 2 whole blocks offered, twice
  // A different second block stops the match after the first.
  auto other = prompt;
  other[size_t(bs) + 1] = 999;
  ASSERT_TRUE(bm.add_sequence(3).ok());
  EXPECT_EQ(append(bm, 3, other), bs);
  EXPECT_EQ(table(bm, 3)[0], t1[0]);
  EXPECT_NE(table(bm, 3)[1], t1[1]);
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManager, CachedBlocksSurviveFreeAndAreReused) {
  const int32_t bs = 4;
  BlockManager bm = make(8, bs);
  const auto prompt = iota_tokens(2 * bs + 1, 0);
  ASSERT_TRUE(bm.add_sequence(1).ok());
  append(bm, 1, prompt);
  const auto t1 = table(bm, 1);
  bm.free_sequence(1);
  EXPECT_EQ(bm.n_cached(), 2);
  EXPECT_EQ(bm.refcount(t1[0]), 0);
  ASSERT_TRUE(bm.add_sequence(2).ok());
  EXPECT_EQ(append(bm, 2, prompt), 2 * bs);
  const auto t2 = table(bm, 2);
  EXPECT_EQ(t2[0], t1[0]);
  EXPECT_EQ(t2[1], t1[1]);
  EXPECT_EQ(bm.n_cached(), 0);
  EXPECT_EQ(bm.n_used(), 3);
  // Decode tokens after the prompt keep working and are not looked up.
  const int64_t lookups = bm.stats().lookup_tokens;
  for (int i = 0; i < 2 * bs; ++i) EXPECT_EQ(append(bm, 2, {100 + i}), 0);
  EXPECT_EQ(bm.stats().lookup_tokens, lookups);
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManager, EvictsLeastRecentlyUsedCachedBlockFirst) {
  const int32_t bs = 2;
  BlockManager bm = make(3, bs);
  const std::vector<int32_t> a{1, 2}, b{3, 4};
  for (SeqId id : {1, 2}) ASSERT_TRUE(bm.add_sequence(id).ok());
  append(bm, 1, a);
  append(bm, 2, b);
  const int32_t block_a = table(bm, 1)[0], block_b = table(bm, 2)[0];
  bm.free_sequence(1);  // LRU: a
  bm.free_sequence(2);  // LRU: a, b
  // Touch a again: LRU becomes b, a.
  ASSERT_TRUE(bm.add_sequence(3).ok());
  EXPECT_EQ(append(bm, 3, a), bs);
  bm.free_sequence(3);
  EXPECT_EQ(bm.n_cached(), 2);
  EXPECT_EQ(bm.n_free(), 1);
  // Two fresh blocks: the free one, then evict b (least recent), not a.
  ASSERT_TRUE(bm.add_sequence(4).ok());
  EXPECT_EQ(append(bm, 4, {7, 8, 9, 10}), 0);
  EXPECT_EQ(bm.stats().evictions, 1);
  const auto t4 = table(bm, 4);
  EXPECT_TRUE(t4[0] == block_b || t4[1] == block_b);
  ASSERT_TRUE(bm.add_sequence(5).ok());
  ASSERT_TRUE(bm.add_sequence(6).ok());
  EXPECT_EQ(append(bm, 5, a), bs);  // a survived
  EXPECT_EQ(table(bm, 5)[0], block_a);
  bm.free_sequence(5);
  EXPECT_EQ(append(bm, 6, b), 0);  // b was evicted
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManager, ForkSharesAndCopiesOnWrite) {
  const int32_t bs = 4;
  BlockManager bm = make(8, bs);
  ASSERT_TRUE(bm.add_sequence(1).ok());
  append(bm, 1, iota_tokens(6, 0));  // block 0 full, block 1 holds 2 tokens
  ASSERT_TRUE(bm.fork(1, 2).ok());
  const auto parent = table(bm, 1);
  EXPECT_EQ(table(bm, 2), parent);
  EXPECT_EQ(bm.refcount(parent[0]), 2);
  EXPECT_EQ(bm.refcount(parent[1]), 2);
  EXPECT_EQ(bm.n_tokens(2).value(), 6);
  EXPECT_TRUE(bm.take_copies().empty());

  EXPECT_EQ(append(bm, 2, {42}), 0);  // child writes into the shared partial block
  const auto child = table(bm, 2);
  EXPECT_EQ(child[0], parent[0]);
  EXPECT_NE(child[1], parent[1]);
  const auto copies = bm.take_copies();
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0], std::make_pair(parent[1], child[1]));
  EXPECT_TRUE(bm.take_copies().empty());
  EXPECT_EQ(bm.refcount(parent[1]), 1);
  EXPECT_EQ(std::vector<int32_t>(bm.block_tokens(child[1]).begin(),
                                 bm.block_tokens(child[1]).end()),
            (std::vector<int32_t>{4, 5, 42}));

  EXPECT_EQ(append(bm, 1, {7}), 0);  // parent is now the sole owner: no second copy
  EXPECT_TRUE(bm.take_copies().empty());
  EXPECT_EQ(table(bm, 1), parent);
  EXPECT_EQ(std::vector<int32_t>(bm.block_tokens(parent[1]).begin(),
                                 bm.block_tokens(parent[1]).end()),
            (std::vector<int32_t>{4, 5, 7}));
  bm.free_sequence(1);
  EXPECT_EQ(bm.refcount(parent[0]), 1);  // still held by the child
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManager, ForkAtBlockBoundaryNeedsNoCopy) {
  BlockManager bm = make(8, 4);
  ASSERT_TRUE(bm.add_sequence(1).ok());
  append(bm, 1, iota_tokens(8, 0));
  ASSERT_TRUE(bm.fork(1, 2).ok());
  append(bm, 1, {1});
  append(bm, 2, {2});
  EXPECT_TRUE(bm.take_copies().empty());
  EXPECT_NE(table(bm, 1)[2], table(bm, 2)[2]);
  EXPECT_INVARIANTS(bm);
}

uint64_t constant_hash(uint64_t, std::span<const int32_t>) { return 7; }

TEST(BlockManager, HashCollisionsNeverShareDifferentTokens) {
  const int32_t bs = 2;
  BlockManager bm = make(16, bs);
  bm.set_hash_fn_for_testing(&constant_hash);  // every block collides with every other
  for (SeqId id : {1, 2, 3, 4}) ASSERT_TRUE(bm.add_sequence(id).ok());
  EXPECT_EQ(append(bm, 1, {1, 2, 3, 4}), 0);
  EXPECT_EQ(append(bm, 2, {5, 6, 3, 4}), 0);  // same second block under another parent
  EXPECT_EQ(append(bm, 3, {1, 2, 3, 4}), bs);  // first block truly equal; second collides
  EXPECT_EQ(table(bm, 3)[0], table(bm, 1)[0]);
  EXPECT_NE(table(bm, 3)[1], table(bm, 1)[1]);
  EXPECT_EQ(append(bm, 4, {3, 4}), 0);  // tokens equal to a cached block, parent differs
  for (SeqId id : {1, 2, 3, 4}) bm.free_sequence(id);
  EXPECT_EQ(bm.n_cached(), 1);  // only the one registered entry survives
  EXPECT_INVARIANTS(bm);
}

TEST(BlockManager, CollidingParentsDoNotMatchChildren) {
  // Parents {1,2} and {5,6} collide, so the child {3,4} hashes the same under either. A later
  // append of {3,4} after {5,6} finds the cached child of {1,2}: equal tokens, equal hash, but
  // another parent chain; it must not be shared.
  const int32_t bs = 2;
  BlockManager bm = make(8, bs);
  bm.set_hash_fn_for_testing([](uint64_t parent, std::span<const int32_t> t) -> uint64_t {
    return parent * 31 + uint64_t(t[1] == 2 || t[1] == 6 ? 0 : t[1]);
  });
  for (SeqId id : {1, 2}) ASSERT_TRUE(bm.add_sequence(id).ok());
  append(bm, 1, {1, 2, 3, 4});
  EXPECT_EQ(append(bm, 2, {5, 6}), 0);
  EXPECT_EQ(append(bm, 2, {3, 4}), 0);  // at a block boundary: looked up, rejected
  EXPECT_NE(table(bm, 2)[1], table(bm, 1)[1]);
  EXPECT_EQ(bm.stats().hit_tokens, 0);
  // The real chain still matches in full.
  ASSERT_TRUE(bm.add_sequence(3).ok());
  EXPECT_EQ(append(bm, 3, {1, 2, 3, 4}), 2 * bs);
  EXPECT_INVARIANTS(bm);
}

// Cache salts: equal tokens under different salts never share a block (no hit, no block in
// two tables), equal salts share as without one, and forks keep their parent's salt.
TEST(BlockManager, SaltsKeepPrefixesApart) {
  const int32_t bs = 4;
  BlockManager bm = make(32, bs);
  const auto prompt = iota_tokens(2 * bs + 1, 10);  // 2 full blocks + a partial one
  ASSERT_TRUE(bm.add_sequence(1, 11).ok());
  ASSERT_TRUE(bm.add_sequence(2, 22).ok());
  ASSERT_TRUE(bm.add_sequence(3, 11).ok());
  ASSERT_TRUE(bm.add_sequence(4).ok());  // unsalted
  EXPECT_EQ(append(bm, 1, prompt), 0);
  EXPECT_EQ(append(bm, 2, prompt), 0) << "another salt's prefix was found";
  EXPECT_EQ(append(bm, 4, prompt), 0) << "a salted prefix was found without the salt";
  EXPECT_EQ(append(bm, 3, prompt), 2 * bs);
  const auto t1 = table(bm, 1), t2 = table(bm, 2), t3 = table(bm, 3), t4 = table(bm, 4);
  for (size_t j = 0; j < t1.size(); ++j) {
    EXPECT_NE(t2[j], t1[j]);
    EXPECT_NE(t4[j], t1[j]);
    EXPECT_NE(t4[j], t2[j]);
  }
  EXPECT_EQ(t3[0], t1[0]);
  EXPECT_EQ(t3[1], t1[1]);
  EXPECT_EQ(bm.stats().hit_tokens, 2 * bs);
  EXPECT_INVARIANTS(bm);
  // Freed, the salted blocks stay cached and are still found only under their own salt.
  bm.free_sequence(1);
  bm.free_sequence(2);
  ASSERT_TRUE(bm.add_sequence(5, 22).ok());
  EXPECT_EQ(append(bm, 5, prompt), 2 * bs);
  EXPECT_EQ(table(bm, 5)[0], t2[0]);
  ASSERT_TRUE(bm.add_sequence(6, 33).ok());
  EXPECT_EQ(append(bm, 6, prompt), 0);
  // A fork's new blocks are sealed under the parent's salt: a later sequence of that salt
  // finds the fork's whole chain, one of another salt none of it.
  ASSERT_TRUE(bm.fork(3, 7).ok());
  append(bm, 7, iota_tokens(2 * bs - 1, 50));  // the fork now holds 4 full blocks
  auto longer = prompt;
  const auto tail = iota_tokens(2 * bs - 1, 50);
  longer.insert(longer.end(), tail.begin(), tail.end());
  ASSERT_TRUE(bm.add_sequence(8, 11).ok());
  EXPECT_EQ(append(bm, 8, longer), 4 * bs);
  EXPECT_EQ(table(bm, 8)[3], table(bm, 7)[3]);
  ASSERT_TRUE(bm.add_sequence(9, 33).ok());
  EXPECT_EQ(append(bm, 9, longer), 2 * bs) << "only salt 33's own two blocks";
  EXPECT_INVARIANTS(bm);
}

// The salt, not the hash, is what keeps salts apart: with a hash that ignores the parent (so
// every salt's first block collides with every other's), equal tokens under another salt still
// get no hit, and each salt's chain matches in full only under that salt.
TEST(BlockManager, SaltsHoldUnderHashCollisions) {
  const int32_t bs = 2;
  BlockManager bm = make(16, bs);
  bm.set_hash_fn_for_testing([](uint64_t, std::span<const int32_t> t) { return uint64_t(t[0]); });
  for (SeqId id : {1, 2, 3, 4}) ASSERT_TRUE(bm.add_sequence(id, id == 2 ? 2 : 1).ok());
  EXPECT_EQ(append(bm, 1, {1, 2, 3, 4}), 0);
  EXPECT_EQ(append(bm, 2, {1, 2, 3, 4}), 0);  // same hashes, same tokens, other salt
  EXPECT_NE(table(bm, 2)[0], table(bm, 1)[0]);
  EXPECT_NE(table(bm, 2)[1], table(bm, 1)[1]);
  EXPECT_EQ(append(bm, 3, {1, 2, 3, 4}), 2 * bs);  // the first salt's chain, in full
  EXPECT_EQ(table(bm, 3), table(bm, 1));
  // Freed, the second salt's blocks leave; the first salt's cache entries still refuse it.
  bm.free_sequence(2);
  ASSERT_TRUE(bm.add_sequence(5, 2).ok());
  EXPECT_EQ(append(bm, 5, {1, 2, 3, 4}), 0);
  EXPECT_EQ(append(bm, 4, {1, 2, 3, 4}), 2 * bs);
  EXPECT_INVARIANTS(bm);
  // The constant hash as well (every block of every salt collides).
  BlockManager c = make(16, bs);
  c.set_hash_fn_for_testing(&constant_hash);
  for (SeqId id : {1, 2, 3}) ASSERT_TRUE(c.add_sequence(id, id == 2 ? 7 : 0).ok());
  EXPECT_EQ(append(c, 1, {1, 2, 3, 4}), 0);
  EXPECT_EQ(append(c, 2, {1, 2, 3, 4}), 0);
  EXPECT_EQ(append(c, 3, {1, 2, 3, 4}), bs);
  EXPECT_NE(table(c, 2)[0], table(c, 1)[0]);
  EXPECT_INVARIANTS(c);
}

// No state is kept per salt beyond the blocks: a thousand salts each caching a prompt on a
// small pool leave the pool as it was (cached blocks bounded by it, evicted oldest first), and
// the latest salts still find their prompts while evicted ones start over.
TEST(BlockManager, ManySaltsLeaveNothingBehind) {
  const int32_t bs = 4, n_blocks = 16;
  BlockManager bm = make(n_blocks, bs);
  const auto prompt = iota_tokens(2 * bs + 1, 0);
  SeqId id = 0;
  for (uint64_t salt = 1; salt <= 1000; ++salt) {
    ASSERT_TRUE(bm.add_sequence(id, salt).ok());
    ASSERT_EQ(append(bm, id, prompt), 0) << "salt " << salt;
    bm.free_sequence(id++);
    ASSERT_LE(bm.n_cached(), n_blocks);
  }
  // Every block but one is cached (each prompt's partial block goes back to the free list);
  // every other full block sealed was evicted.
  EXPECT_EQ(bm.n_used(), 0);
  EXPECT_EQ(bm.n_cached(), n_blocks - 1);
  EXPECT_EQ(bm.stats().evictions, 2 * 1000 - bm.n_cached());
  EXPECT_INVARIANTS(bm);
  ASSERT_TRUE(bm.add_sequence(id, 1000).ok());
  EXPECT_EQ(append(bm, id++, prompt), 2 * bs);
  ASSERT_TRUE(bm.add_sequence(id, 1).ok());
  EXPECT_EQ(append(bm, id, prompt), 0) << "salt 1's blocks were evicted long ago";
  bm.free_sequence(id);
  ASSERT_TRUE(bm.add_sequence(++id, 1).ok());
  EXPECT_EQ(append(bm, id, prompt), 2 * bs) << "salt 1 caches again";
  EXPECT_INVARIANTS(bm);
}

std::vector<int32_t> tokens_of(const BlockManager& bm, int32_t block) {
  auto t = bm.block_tokens(block);
  return {t.begin(), t.end()};
}

// Blocks enter the prefix cache only when committed (their KV written by a forward pass that
// succeeded); uncommitted blocks are never shared and are freed, not cached.
TEST(BlockManager, UncommittedBlocksAreNeverShared) {
  const int32_t bs = 4;
  BlockManager bm = make(16, bs);
  const auto prompt = iota_tokens(2 * bs + 1, 10);
  for (SeqId id : {1, 2, 3}) ASSERT_TRUE(bm.add_sequence(id).ok());
  ASSERT_EQ(bm.append_tokens(1, prompt).value(), 0);
  EXPECT_EQ(bm.append_tokens(2, prompt).value(), 0) << "shared blocks whose KV is not written yet";
  EXPECT_INVARIANTS(bm);
  bm.free_sequence(1);  // its forward pass failed
  EXPECT_EQ(bm.n_cached(), 0) << "uncommitted blocks were cached";
  EXPECT_EQ(bm.n_used(), 3);
  ASSERT_TRUE(bm.commit(2).ok());  // 2's pass succeeded
  EXPECT_EQ(append(bm, 3, prompt), 2 * bs);
  EXPECT_EQ(table(bm, 3)[0], table(bm, 2)[0]);
  EXPECT_EQ(table(bm, 3)[1], table(bm, 2)[1]);
  EXPECT_FALSE(bm.commit(9).ok());
  EXPECT_INVARIANTS(bm);
}

// Two chunks appended before one commit (e.g. a caller computing them in one pass): the commit
// seals both in chain order, and no match is attempted after an uncommitted block.
TEST(BlockManager, CommitSealsEveryFullBlockInOrder) {
  const int32_t bs = 4;
  BlockManager bm = make(16, bs);
  for (SeqId id : {1, 2}) ASSERT_TRUE(bm.add_sequence(id).ok());
  ASSERT_TRUE(bm.append_tokens(1, iota_tokens(bs, 0)).ok());
  const int64_t lookups = bm.stats().lookup_tokens;
  ASSERT_EQ(bm.append_tokens(1, iota_tokens(bs + 2, bs)).value(), 0);
  EXPECT_EQ(bm.stats().lookup_tokens, lookups) << "looked up after an uncommitted block";
  ASSERT_TRUE(bm.commit(1).ok());
  ASSERT_TRUE(bm.commit(1).ok());  // nothing new: a no-op
  EXPECT_INVARIANTS(bm);
  EXPECT_EQ(append(bm, 2, iota_tokens(2 * bs, 0)), 2 * bs);
}

// truncate() drops the blocks past the new length; a full block in the prefix cache stays
// cached, and when it is the new, partly used last block, the next append writes a copy.
TEST(BlockManager, TruncateKeepsCachedBlocksAndCopiesOnWrite) {
  const int32_t bs = 4;
  BlockManager bm = make(16, bs);
  const auto prompt = iota_tokens(3 * bs + 2, 0);
  ASSERT_TRUE(bm.add_sequence(1).ok());
  append(bm, 1, prompt);
  const auto before = table(bm, 1);
  ASSERT_TRUE(bm.truncate(1, bs + 1).ok());
  EXPECT_EQ(bm.n_tokens(1).value(), bs + 1);
  ASSERT_EQ(table(bm, 1), std::vector<int32_t>(before.begin(), before.begin() + 2));
  EXPECT_EQ(bm.n_cached(), 1) << "the dropped full block keeps its cache entry";
  EXPECT_EQ(bm.n_free(), 16 - 3);  // the dropped partial block is free
  EXPECT_EQ(tokens_of(bm, before[1]), iota_tokens(bs, bs)) << "a cached block lost tokens";
  EXPECT_INVARIANTS(bm);
  EXPECT_TRUE(bm.take_copies().empty());
  EXPECT_EQ(append(bm, 1, {99}), 0);
  const auto after = table(bm, 1);
  EXPECT_EQ(after[0], before[0]);
  EXPECT_NE(after[1], before[1]) << "wrote into a block of the prefix cache";
  const auto copies = bm.take_copies();
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(copies[0], std::make_pair(before[1], after[1]));
  EXPECT_EQ(tokens_of(bm, after[1]), (std::vector<int32_t>{bs, 99}));
  EXPECT_EQ(tokens_of(bm, before[1]), iota_tokens(bs, bs));
  EXPECT_INVARIANTS(bm);
  // The whole original prefix is still in the cache.
  ASSERT_TRUE(bm.add_sequence(2).ok());
  EXPECT_EQ(append(bm, 2, prompt), 3 * bs);
  EXPECT_EQ(table(bm, 2)[1], before[1]);
  EXPECT_EQ(table(bm, 2)[2], before[2]);
  EXPECT_INVARIANTS(bm);
}

// A partly filled block shared with a fork keeps the fork's tokens when one side truncates
// into it; that side then appends into a copy. A private, uncached block is cut in place.
TEST(BlockManager, TruncateIntoASharedBlockCopiesOnWrite) {
  const int32_t bs = 4;
  BlockManager bm = make(8, bs);
  ASSERT_TRUE(bm.add_sequence(1).ok());
  append(bm, 1, iota_tokens(7, 0));  // block 1 holds 3 tokens
  ASSERT_TRUE(bm.fork(1, 2).ok());
  const auto shared = table(bm, 1);
  ASSERT_TRUE(bm.truncate(1, 5).ok());
  EXPECT_EQ(tokens_of(bm, shared[1]), (std::vector<int32_t>{4, 5, 6})) << "the fork's tokens changed";
  EXPECT_INVARIANTS(bm);
  EXPECT_EQ(append(bm, 1, {42}), 0);
  ASSERT_EQ(bm.take_copies().size(), 1u);
  EXPECT_EQ(tokens_of(bm, table(bm, 1)[1]), (std::vector<int32_t>{4, 42}));
  EXPECT_EQ(tokens_of(bm, table(bm, 2)[1]), (std::vector<int32_t>{4, 5, 6}));
  // Private now: truncating and appending again writes in place.
  const int32_t own = table(bm, 1)[1];
  ASSERT_TRUE(bm.truncate(1, 5).ok());
  EXPECT_EQ(append(bm, 1, {43}), 0);
  EXPECT_TRUE(bm.take_copies().empty());
  EXPECT_EQ(table(bm, 1)[1], own);
  EXPECT_EQ(tokens_of(bm, own), (std::vector<int32_t>{4, 43}));
  // Truncating to a block boundary and to nothing.
  ASSERT_TRUE(bm.truncate(2, 4).ok());
  EXPECT_EQ(table(bm, 2).size(), 1u);
  ASSERT_TRUE(bm.truncate(2, 0).ok());
  EXPECT_TRUE(table(bm, 2).empty());
  EXPECT_FALSE(bm.truncate(2, 1).ok()) << "past the end";
  EXPECT_FALSE(bm.truncate(2, -1).ok());
  EXPECT_FALSE(bm.truncate(9, 0).ok());
  EXPECT_INVARIANTS(bm);
}

// Random add / append (committed, or a failed forward pass that frees the sequence) / fork /
// truncate / free on a small pool, sequences under three cache salts, against a model of each sequence's tokens and of the KV in
// each block: a forward pass writes, for every position it computes, a value derived from the
// whole prefix up to it (as real KV is), into the block the table names; a failed pass writes
// garbage. Every sequence must read back its own prefix values through its table: a prefix hit
// on a block never written, a shared block written by another sequence, a missed
// copy-on-write or a block dropped too early would show, and so would a block in the tables of
// two salts.
TEST(BlockManager, RandomizedAgainstModel) {
  for (int32_t bs : {1, 3, 4}) {
    const int32_t n_blocks = 24;
    BlockManager bm = make(n_blocks, bs);
    std::mt19937 rng(1234 + uint32_t(bs));
    std::map<SeqId, std::vector<int32_t>> model;  // sequence -> its tokens
    std::map<SeqId, uint64_t> salt;               // sequence -> its cache salt
    std::vector<std::vector<uint64_t>> kv(size_t(n_blocks), std::vector<uint64_t>(size_t(bs), 0));
    auto prefix_value = [](const std::vector<int32_t>& toks, size_t p) {
      uint64_t h = 1469598103934665603ull;
      for (size_t i = 0; i <= p; ++i) h = (h ^ uint64_t(uint32_t(toks[i]))) * 1099511628211ull;
      return h | 1;  // never 0 (fresh) or 2 (garbage)
    };
    SeqId next_id = 0;
    // Prompts from a few shared prefixes so that the prefix cache gets hits (and, with failed
    // passes and evictions, would take blocks whose KV was never written if it could).
    const std::vector<std::vector<int32_t>> prefixes = {
        iota_tokens(3 * bs, 0), iota_tokens(2 * bs + 1, 0), iota_tokens(4 * bs, 100),
        iota_tokens(2 * bs, 200), iota_tokens(3 * bs + 1, 300), iota_tokens(bs, 400)};
    auto rnd = [&](int n) { return int(rng() % uint32_t(n)); };
    int64_t errors = 0, hits = 0, copies = 0, truncations = 0, failures = 0;
    auto copy_on_write = [&] {
      for (const auto& [src, dst] : bm.take_copies()) {
        kv[size_t(dst)] = kv[size_t(src)];
        copies++;
      }
    };
    for (int step = 0; step < 6000; ++step) {
      const int op = rnd(12);
      if (op < 2 || model.empty()) {  // add
        const SeqId id = next_id++;
        salt[id] = uint64_t(id % 3);  // 0: unsalted
        ASSERT_TRUE(bm.add_sequence(id, salt[id]).ok());
        model[id] = {};
      } else if (op < 7) {  // append: a prompt-like chunk or one decode token
        auto it = model.begin();
        std::advance(it, rnd(int(model.size())));
        std::vector<int32_t> toks;
        if (it->second.empty() && rnd(2) == 0) {
          toks = prefixes[size_t(rnd(int(prefixes.size())))];
          for (int k = rnd(3); k > 0; --k) toks.push_back(rnd(5));
        } else {
          for (int k = rnd(3) == 0 ? rnd(2 * bs + 2) : 1; k > 0; --k) toks.push_back(rnd(5));
        }
        const auto before_table = table(bm, it->first);
        const int32_t free_before = bm.n_free(), cached_before = bm.n_cached();
        auto r = bm.append_tokens(it->first, toks);
        if (!r.ok()) {
          errors++;
          ASSERT_EQ(table(bm, it->first), before_table);
          ASSERT_EQ(bm.n_free(), free_before);
          ASSERT_EQ(bm.n_cached(), cached_before);
        } else {
          ASSERT_GE(*r, 0);
          ASSERT_LE(*r, int32_t(toks.size()));
          ASSERT_EQ(*r % bs, 0);
          hits += *r;
          // The forward pass: copies first, then the positions it computes.
          copy_on_write();
          const size_t n0 = it->second.size();
          it->second.insert(it->second.end(), toks.begin(), toks.end());
          const bool fails = rnd(6) == 0;
          const auto t = table(bm, it->first);
          for (size_t p = n0 + size_t(*r); p < it->second.size(); ++p)
            kv[size_t(t[p / size_t(bs)])][p % size_t(bs)] = fails ? 2 : prefix_value(it->second, p);
          if (fails) {  // the scheduler ends the sequence
            failures++;
            bm.free_sequence(it->first);
            model.erase(it);
          } else {
            ASSERT_TRUE(bm.commit(it->first).ok());
          }
        }
      } else if (op < 8) {  // fork
        auto it = model.begin();
        std::advance(it, rnd(int(model.size())));
        const SeqId id = next_id++;
        ASSERT_TRUE(bm.fork(it->first, id).ok());
        model[id] = it->second;
        salt[id] = salt[it->first];
      } else if (op < 10) {  // truncate: rejected drafts
        auto it = model.begin();
        std::advance(it, rnd(int(model.size())));
        const int32_t n = int32_t(it->second.size());
        const int32_t keep = std::max(0, n - rnd(2 * bs + 2));
        ASSERT_TRUE(bm.truncate(it->first, keep).ok());
        it->second.resize(size_t(keep));
        truncations++;
      } else {  // free
        auto it = model.begin();
        std::advance(it, rnd(int(model.size())));
        bm.free_sequence(it->first);
        model.erase(it);
      }
      copy_on_write();  // none pending: only appends ask for copies

      Status st = bm.check_invariants();
      ASSERT_TRUE(st.ok()) << "step " << step << ": " << st.error().message;
      ASSERT_EQ(bm.n_sequences(), int32_t(model.size()));
      ASSERT_EQ(bm.n_free() + bm.n_cached() + bm.n_used(), bm.n_blocks());
      std::map<int32_t, int32_t> refs;
      std::map<int32_t, uint64_t> block_salt;
      for (const auto& [id, toks] : model) {
        ASSERT_EQ(bm.n_tokens(id).value(), int32_t(toks.size()));
        std::vector<int32_t> held;
        const auto t = table(bm, id);
        for (size_t j = 0; j < t.size(); ++j) {
          refs[t[j]]++;
          const auto [bs_it, first] = block_salt.emplace(t[j], salt[id]);
          ASSERT_TRUE(first || bs_it->second == salt[id]) << "block " << t[j] << " shared across salts";
          auto bt = bm.block_tokens(t[j]);
          const size_t fill = std::min(size_t(bs), toks.size() - j * size_t(bs));
          ASSERT_GE(bt.size(), fill);
          held.insert(held.end(), bt.begin(), bt.begin() + std::ptrdiff_t(fill));
        }
        ASSERT_EQ(held, toks) << "sequence " << id << " at step " << step;
        for (size_t p = 0; p < toks.size(); ++p)
          ASSERT_EQ(kv[size_t(t[p / size_t(bs)])][p % size_t(bs)], prefix_value(toks, p))
              << "sequence " << id << " reads wrong KV at position " << p << ", step " << step;
      }
      for (const auto& [b, n] : refs) ASSERT_EQ(bm.refcount(b), n);
      ASSERT_EQ(int32_t(refs.size()), bm.n_used());
    }
    EXPECT_GT(errors, 0) << "pool never ran out: the test is too gentle";
    EXPECT_GT(hits, 0) << "prefix cache never hit";
    EXPECT_GT(bm.stats().evictions, 0);
    EXPECT_GT(truncations, 100);
    EXPECT_GT(failures, 20);
    if (bs > 1) {
      EXPECT_GT(copies, 0) << "copy-on-write never happened";
    }
  }
}

}  // namespace
}  // namespace peregrine
