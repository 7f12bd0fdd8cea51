// KvCache's recurrent state (state-space layers): zero for a new sequence, copied by fork,
// restored from a checkpoint by rewind (or emptied when none lies before the kept position),
// never shared as a prefix; layers without attention keep no rows and do not bound n_pos.
#include <gtest/gtest.h>

#include <vector>

#include "kv/kv_cache.h"

namespace peregrine {
namespace {

// Layers: 0 state-space (6 floats), 1 global attention, 2 feed-forward only (nothing kept).
KvShape hybrid_shape(int64_t block_size = 0) {
  KvShape s{3, 32, 3, 4, KvType::F32, {AttnKind::none(), AttnKind::global(), AttnKind::none()}, 8};
  s.state_floats = {6, 0, 0};
  if (block_size > 0) {
    s.block_size = block_size;
    s.n_blocks = 16;
  }
  return s;
}

// A stand-in for a forward pass over positions [from, to) of seq: the state layer's state
// becomes a function of the positions consumed, the attention layer stores rows.
void advance(KvCache& c, int64_t seq, int64_t from, int64_t to) {
  const std::vector<float> row(4, 1.0f);
  for (int64_t p = from; p < to; ++p) {
    float* st = c.state(0, seq);
    for (int i = 0; i < 6; ++i) st[i] = st[i] * 0.5f + float(p + i);
    c.state_advanced(0, seq, p + 1);
    c.store(1, seq, p, row.data(), row.data());
  }
}

std::vector<float> state_of(const KvCache& c, int64_t seq) { return {c.state(0, seq), c.state(0, seq) + 6}; }

TEST(KvState, ShapeAccounting) {
  const KvShape s = hybrid_shape();
  ASSERT_TRUE(s.validate().ok());
  EXPECT_TRUE(s.recurrent());
  EXPECT_EQ(s.state_bytes_per_seq(), 24u);
  EXPECT_EQ(s.bytes_per_token(), 2 * 1 * 4 * 4);  // only the attention layer keeps rows
  EXPECT_EQ(s.bytes(), 2u * 3 * 32 * 4 * 4 + 3u * 24);
  EXPECT_FALSE(s.unbounded());
  EXPECT_FALSE(hybrid_shape(4).prefix_sharing()) << "a state layer cannot take a cached prefix";
  EXPECT_NE(s.describe().find("state-space"), std::string::npos) << s.describe();
  EXPECT_NE(s.describe().find("feed-forward only"), std::string::npos) << s.describe();
  // All layers state-space: no K/V at all, positions unbounded.
  KvShape ssm{2, 16, 1, 0, KvType::F32, {AttnKind::none(), AttnKind::none()}, 8};
  ssm.state_floats = {5, 5};
  ASSERT_TRUE(ssm.validate().ok()) << ssm.validate().error().message;
  EXPECT_TRUE(ssm.unbounded());
  KvShape bad = ssm;
  bad.state_floats = {5};
  EXPECT_FALSE(bad.validate().ok());
}

TEST(KvState, NewSequencesAreZeroAndNposIgnoresEmptyLayers) {
  KvCache c(hybrid_shape());
  for (float v : state_of(c, 1)) EXPECT_EQ(v, 0.0f);
  advance(c, 1, 0, 5);
  EXPECT_EQ(c.n_pos(1), 5) << "the feed-forward-only layer must not pin n_pos at 0";
  EXPECT_EQ(c.state_pos(1), 5);
  EXPECT_EQ(c.state_pos(0), 0);
  c.reset(1);
  EXPECT_EQ(c.n_pos(1), 0);
  for (float v : state_of(c, 1)) EXPECT_EQ(v, 0.0f);
}

TEST(KvState, ForkCopiesTheState) {
  KvCache c(hybrid_shape()), direct(hybrid_shape());
  advance(c, 0, 0, 7);
  c.fork(0, 2);
  advance(c, 2, 7, 9);
  advance(direct, 0, 0, 9);
  EXPECT_EQ(state_of(c, 2), state_of(direct, 0));
  EXPECT_EQ(c.n_pos(2), 9);
  EXPECT_EQ(c.state_pos(0), 7) << "the source keeps its own state";
}

TEST(KvState, RewindRestoresTheCheckpoint) {
  KvCache c(hybrid_shape()), direct(hybrid_shape());
  advance(c, 0, 0, 10);
  c.checkpoint(0);
  advance(c, 0, 10, 15);  // a step of 5: the pending token and 4 drafts
  // Keeping 12 needs the state at 12: the checkpoint at 10 is restored, and 10 is returned.
  EXPECT_EQ(c.rewind(0, 12), 10);
  EXPECT_EQ(c.n_pos(0), 10);
  EXPECT_FALSE(c.written(1, 0, 10));
  advance(direct, 0, 0, 10);
  EXPECT_EQ(state_of(c, 0), state_of(direct, 0));
  // Recomputing from there continues exactly.
  advance(c, 0, 10, 12);
  advance(direct, 0, 10, 12);
  EXPECT_EQ(state_of(c, 0), state_of(direct, 0));
  // Keeping everything changes nothing.
  EXPECT_EQ(c.rewind(0, 12), 12);
  EXPECT_EQ(state_of(c, 0), state_of(direct, 0));
}

TEST(KvState, RewindWithoutACheckpointEmptiesTheSequence) {
  KvCache c(hybrid_shape());
  advance(c, 0, 0, 10);
  EXPECT_EQ(c.rewind(0, 8), 0);
  for (float v : state_of(c, 0)) EXPECT_EQ(v, 0.0f);
  // A checkpoint past the kept position is no use either.
  advance(c, 0, 0, 10);
  c.checkpoint(0);
  advance(c, 0, 10, 12);
  EXPECT_EQ(c.rewind(0, 9), 0);
  EXPECT_EQ(c.n_pos(0), 0);
}

TEST(KvState, ForkDoesNotInheritTheCheckpoint) {
  KvCache c(hybrid_shape());
  advance(c, 0, 0, 6);
  c.checkpoint(0);
  advance(c, 0, 6, 8);
  c.fork(0, 1);
  EXPECT_EQ(c.rewind(1, 7), 0) << "the child's state never passed through seq 0's checkpoint slot";
  EXPECT_EQ(c.rewind(0, 7), 6);
}

}  // namespace
}  // namespace peregrine
