// KvCache: going back (rewind) for every layer kind, compared with a cache that never saw the
// rejected tokens; the validity record and its debug-build checks; fork and reset; prefix
// sharing per kind; ring sizing for drafts; K rotated on its way in (rope_store_kv) for rows of
// any width.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "kv/kv_cache.h"
#include "ops/ops.h"

namespace peregrine {
namespace {

// Rows wider than the 8192 floats a stack buffer once held (the loader accepts up to 1024
// heads of 1024): K rotated exactly as a scalar evaluation in double precision, V as given.
TEST(RopeStoreKv, RowsWiderThan8192) {
  const int64_t n_kv = 66, hd = 128, kv_dim = n_kv * hd, n_tok = 5;  // 8448 floats a row
  for (RopeStyle style : {RopeStyle::Adjacent, RopeStyle::Neox})
    for (int64_t rot_dim : {hd, int64_t(64)}) {
      KvCache cache({1, 8, 2, kv_dim, KvType::F32});
      std::mt19937 rng(3);
      std::normal_distribution<float> d(0.0f, 1.0f);
      std::vector<float> k(size_t(n_tok * kv_dim)), v(k.size());
      for (size_t i = 0; i < k.size(); ++i) {
        k[i] = d(rng);
        v[i] = d(rng);
      }
      const std::vector<int32_t> pos = {0, 1, 0, 1, 2}, seq = {0, 0, 1, 1, 1};
      std::vector<float> cs;
      const float base = 10000.0f;
      rope_angles(pos.data(), n_tok, rot_dim, base, cs);
      rope_store_kv(cache, 0, seq.data(), pos.data(), k.data(), v.data(), cs.data(), n_tok, n_kv, hd,
                    rot_dim, style);
      for (int64_t t = 0; t < n_tok; ++t)
        for (int64_t h = 0; h < n_kv; ++h) {
          const float* x = k.data() + t * kv_dim + h * hd;
          std::vector<double> want(x, x + hd);
          for (int64_t i = 0; i < rot_dim / 2; ++i) {
            const double th = double(pos[size_t(t)]) * std::pow(double(base), -double(2 * i) / double(rot_dim));
            const int64_t a = style == RopeStyle::Adjacent ? 2 * i : i;
            const int64_t b = style == RopeStyle::Adjacent ? 2 * i + 1 : i + rot_dim / 2;
            want[size_t(a)] = x[a] * std::cos(th) - x[b] * std::sin(th);
            want[size_t(b)] = x[a] * std::sin(th) + x[b] * std::cos(th);
          }
          for (int64_t i = 0; i < hd; ++i) {
            ASSERT_NEAR(cache.k_at(0, seq[size_t(t)], pos[size_t(t)], h * hd + i), want[size_t(i)], 1e-5)
                << "token " << t << " head " << h << " i " << i;
            ASSERT_EQ(cache.v_at(0, seq[size_t(t)], pos[size_t(t)], h * hd + i), v[size_t(t * kv_dim + h * hd + i)]);
          }
        }
    }
}

constexpr int64_t kDim = 4;  // kv_dim of the small caches below

// The K and V rows of a token at a position: distinct for every (token, position, K or V).
std::vector<float> row(int32_t token, int64_t pos, int kv) {
  return {float(token), float(pos), float(kv), float(token) * 0.5f + float(pos) * 0.25f};
}

struct Case {
  std::string name;
  AttnKind kind;
  bool paged;
  int64_t n_batch, n_draft;
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

KvShape shape_of(const Case& c, int64_t n_ctx, int64_t n_seq) {
  KvShape s{1, n_ctx, n_seq, kDim, KvType::F32, {c.kind}, c.n_batch};
  if (c.paged) {
    s.block_size = 16;
    s.n_blocks = n_seq * ((n_ctx + 15) / 16);
  }
  s.n_draft = c.n_draft;
  return s;
}

// Paged: sequence q owns blocks [q * per_seq, (q + 1) * per_seq), the caller's choice.
void give_blocks(KvCache& cache) {
  const KvShape& s = cache.shape();
  if (!s.paged()) return;
  const int64_t per_seq = s.max_blocks_per_seq();
  for (int64_t q = 0; q < s.n_seq; ++q) {
    std::vector<int32_t> t(static_cast<size_t>(per_seq));
    std::iota(t.begin(), t.end(), int32_t(q * per_seq));
    ASSERT_TRUE(cache.set_block_table(q, t.data(), per_seq).ok());
  }
}

struct Read {
  int64_t pos;
  std::vector<float> k, v;
  bool operator==(const Read&) const = default;
};

void PrintTo(const Read& r, std::ostream* os) {
  *os << "pos " << r.pos << " k {" << r.k[0] << ", " << r.k[1] << ", ...}";
}

// What token (seq, pos) of layer 0 attends to, position by position, through spans().
std::vector<Read> reads(const KvCache& cache, int64_t seq, int64_t pos) {
  std::vector<KvSpan> spans(static_cast<size_t>(cache.max_spans()));
  const int n = cache.spans(0, seq, pos, spans.data());
  std::vector<Read> out;
  for (int r = 0; r < n; ++r)
    for (int64_t j = 0; j < spans[size_t(r)].n; ++j) {
      const float* k = static_cast<const float*>(spans[size_t(r)].k) + j * kDim;
      const float* v = static_cast<const float*>(spans[size_t(r)].v) + j * kDim;
      out.push_back({spans[size_t(r)].first_pos + j, {k, k + kDim}, {v, v + kDim}});
    }
  return out;
}

// What it should attend to, given the tokens at each position.
std::vector<Read> expected(const AttnKind& kind, const std::vector<int32_t>& history, int64_t pos) {
  std::vector<Read> out;
  for (int64_t j = 0; j <= pos; ++j)
    if (!kind.windowed() || j < kind.sinks || j >= kind.first_recent(pos))
      out.push_back({j, row(history[size_t(j)], j, 0), row(history[size_t(j)], j, 1)});
  return out;
}

void store(KvCache& cache, int64_t seq, int64_t pos, int32_t token) {
  cache.store(0, seq, pos, row(token, pos, 0).data(), row(token, pos, 1).data());
}

class Rewind : public ::testing::TestWithParam<Case> {};

// Speculative decoding on two sequences: each step writes the last accepted token and k <= n_draft
// drafts (or, sometimes, a prompt chunk of up to n_batch tokens), every written position attends,
// then the rejected drafts are rewound. Every read must be what the current history says, and
// the accepted positions must read exactly what a cache that never saw a rejected token reads.
TEST_P(Rewind, MatchesACacheThatNeverSawTheRejectedTokens) {
  const Case c = GetParam();
  const int64_t n_ctx = 400, n_seq = 2;
  KvCache spec(shape_of(c, n_ctx, n_seq)), clean(shape_of(c, n_ctx, n_seq));
  give_blocks(spec);
  give_blocks(clean);
  std::mt19937 rng(17);
  auto rnd = [&](int64_t n) { return int64_t(rng() % uint64_t(n)); };
  std::vector<int32_t> hist[2];  // tokens of each sequence's accepted positions
  int64_t rejected = 0, wrapped_steps = 0;
  while (hist[0].size() + 1 + size_t(c.n_batch + c.n_draft) < size_t(n_ctx) &&
         hist[1].size() + 1 + size_t(c.n_batch + c.n_draft) < size_t(n_ctx)) {
    for (int64_t q = 0; q < n_seq; ++q) {
      std::vector<int32_t>& h = hist[q];
      const int64_t p = int64_t(h.size());
      const bool chunk = rnd(4) == 0;
      const int64_t m = chunk ? 1 + rnd(c.n_batch) : 1 + rnd(c.n_draft + 1);  // positions written
      const int64_t accepted = chunk ? m : 1 + rnd(m);  // the last accepted token and its accepted drafts
      std::vector<int32_t> step(static_cast<size_t>(m));
      for (auto& t : step) t = int32_t(rnd(1000));
      for (int64_t i = 0; i < m; ++i) store(spec, q, p + i, step[size_t(i)]);
      for (int64_t i = 0; i < accepted; ++i) store(clean, q, p + i, step[size_t(i)]);
      // All written positions attend after the whole step is stored, as in a verify pass.
      std::vector<int32_t> with_drafts = h;
      with_drafts.insert(with_drafts.end(), step.begin(), step.end());
      for (int64_t i = 0; i < m; ++i) {
        ASSERT_EQ(reads(spec, q, p + i), expected(c.kind, with_drafts, p + i))
            << c.name << " sequence " << q << " position " << p + i << " of a step of " << m;
        if (i < accepted) ASSERT_EQ(reads(spec, q, p + i), reads(clean, q, p + i)) << c.name << " position " << p + i;
      }
      h.insert(h.end(), step.begin(), step.begin() + accepted);
      ASSERT_EQ(spec.rewind(q, int64_t(h.size())), int64_t(h.size())) << c.name << ": the ring lost what the next token sees";
      ASSERT_EQ(spec.n_pos(q), int64_t(h.size()));
      for (int64_t i = accepted; i < m; ++i) ASSERT_FALSE(spec.written(0, q, p + i));
      rejected += m - accepted;
      if (c.kind.windowed() && p > spec.shape().slots(0)) ++wrapped_steps;
    }
  }
  EXPECT_GT(rejected, 50);
  if (c.kind.windowed()) EXPECT_GT(wrapped_steps, 50) << "the rings never wrapped";
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, Rewind,
    ::testing::Values(Case{"window8_b4_d3", AttnKind::sliding(8), false, 4, 3},
                      Case{"window8_b1_d4", AttnKind::sliding(8), false, 1, 4},
                      Case{"window5_b1_d1", AttnKind::sliding(5), false, 1, 1},
                      Case{"sinks2_window6_b4_d3", AttnKind::sinks_window(2, 6), false, 4, 3},
                      Case{"sinks3_window5_b1_d2", AttnKind::sinks_window(3, 5), false, 1, 2},
                      Case{"global_b4_d3", AttnKind::global(), false, 4, 3},
                      Case{"paged_b8_d5", AttnKind::global(), true, 8, 5}),
    [](const auto& param) { return param.param.name; });

// Why n_draft belongs in the ring: a ring of W + n_batch - 1 slots with n_batch = 1 (decode)
// loses, within a step of 1 + k tokens, the oldest position the step's first token sees; with
// the drafts counted it keeps it.
TEST(RingSizing, DraftsMustBeCounted) {
  const int64_t W = 8, k = 3;
  for (int64_t n_draft : {int64_t(0), k}) {
    KvShape shape{1, 64, 1, kDim, KvType::F32, {AttnKind::sliding(W)}, 1};
    shape.n_draft = n_draft;
    KvCache cache(shape);
    EXPECT_EQ(shape.slots(0), W + n_draft);
    const int64_t p = 30;  // the step writes p..p+k; position p sees p-W+1..p
    for (int64_t j = 0; j <= p + k; ++j) store(cache, 0, j, int32_t(j));
    EXPECT_EQ(cache.written(0, 0, p - W + 1), n_draft == k) << "n_draft " << n_draft;
  }
}

// Rewinding further back than a ring holds keeps only what is still exact: a window keeps
// nothing, sinks + window its sinks, a global layer everything.
TEST(RewindTooFar, KeepsWhatIsStillExact) {
  const struct {
    AttnKind kind;
    int64_t want;
  } cases[] = {{AttnKind::sliding(4), 0}, {AttnKind::sinks_window(2, 4), 2}, {AttnKind::global(), 10}};
  for (const auto& c : cases) {
    KvShape shape{1, 64, 1, kDim, KvType::F32, {c.kind}, 2};  // ring: W + 1 slots
    KvCache cache(shape);
    for (int64_t j = 0; j < 20; ++j) store(cache, 0, j, int32_t(j));
    // One step back (2 positions) is exact for every kind.
    EXPECT_EQ(cache.rewind(0, 18), 18) << c.kind.describe();
    EXPECT_EQ(cache.rewind(0, 10), c.want) << c.kind.describe();
    EXPECT_EQ(cache.n_pos(0), c.want);
    // Recomputed from there, it reads what a fresh cache reads.
    KvCache fresh(shape);
    std::vector<int32_t> hist;
    for (int64_t j = 0; j < 30; ++j) {
      hist.push_back(int32_t(j < c.want ? j : 1000 + j));  // kept positions hold what they held
      if (j >= c.want) store(cache, 0, j, hist.back());
      store(fresh, 0, j, hist.back());
      if (j >= c.want) {
        ASSERT_EQ(reads(cache, 0, j), reads(fresh, 0, j)) << c.kind.describe() << " position " << j;
      }
    }
    EXPECT_EQ(cache.rewind(0, 100), 30) << "rewinding past the end keeps what there is";
  }
}

// fork(src, dst) for every kind: dst then continues on its own and reads what a cache that wrote
// its whole history directly reads; src is unaffected. Paged: the block table is copied and the
// caller copies the partly filled last block before dst writes into it (what the scheduler does
// with the BlockManager's copy-on-write list).
class Fork : public ::testing::TestWithParam<Case> {};

TEST_P(Fork, ChildContinuesLikeADirectlyWrittenCache) {
  const Case c = GetParam();
  const int64_t n_ctx = 128, n_prompt = 37;
  KvCache cache(shape_of(c, n_ctx, 3)), direct(shape_of(c, n_ctx, 3));
  give_blocks(direct);
  std::vector<int32_t> prompt;
  for (int64_t j = 0; j < n_prompt; ++j) prompt.push_back(int32_t(7 * j % 31));
  if (c.paged) {
    std::vector<int32_t> t = {0, 1, 2}, other = {10};  // positions 0..47; the child's slot
    ASSERT_TRUE(cache.set_block_table(0, t.data(), 3).ok());
    ASSERT_TRUE(cache.set_block_table(2, other.data(), 1).ok());
  }
  for (int64_t j = 0; j < n_prompt; ++j) store(cache, 0, j, prompt[size_t(j)]);
  store(cache, 2, 0, 5);  // something in the child's slot before: fork must replace it
  cache.fork(0, 2);
  EXPECT_EQ(cache.n_pos(2), n_prompt);
  if (c.paged) {  // copy-on-write of the shared partial block 2 into block 5, then more blocks
    cache.copy_block(2, 5);
    std::vector<int32_t> t = {0, 1, 5, 6, 7};
    ASSERT_TRUE(cache.set_block_table(2, t.data(), 5).ok());
    std::vector<int32_t> t0 = {0, 1, 2, 3, 4};
    ASSERT_TRUE(cache.set_block_table(0, t0.data(), 5).ok());
  }
  // Both continue; every position is read right after it is written (a ring holds only the
  // recent ones).
  std::vector<int32_t> parent = prompt, child = prompt;
  for (int64_t j = 0; j < n_prompt; ++j) store(direct, 2, j, child[size_t(j)]);
  for (int64_t j = n_prompt; j < 70; ++j) {
    parent.push_back(int32_t(j));
    child.push_back(int32_t(500 + j));
    store(cache, 0, j, parent.back());
    store(cache, 2, j, child.back());
    store(direct, 2, j, child.back());
    ASSERT_EQ(reads(cache, 2, j), reads(direct, 2, j)) << c.name << " child position " << j;
    ASSERT_EQ(reads(cache, 2, j), expected(c.kind, child, j)) << c.name << " child position " << j;
    ASSERT_EQ(reads(cache, 0, j), expected(c.kind, parent, j)) << c.name << " parent position " << j;
  }
  // reset empties a sequence; it is written again from position 0.
  cache.reset(2);
  EXPECT_EQ(cache.n_pos(2), 0);
  EXPECT_FALSE(cache.written(0, 2, 0));
  for (int64_t j = 0; j < 3; ++j) store(cache, 2, j, 9);
  EXPECT_EQ(reads(cache, 2, 2), expected(c.kind, {9, 9, 9}, 2));
}

INSTANTIATE_TEST_SUITE_P(Kinds, Fork,
                         ::testing::Values(Case{"window8", AttnKind::sliding(8), false, 4, 0},
                                           Case{"sinks2_window6", AttnKind::sinks_window(2, 6), false, 4, 2},
                                           Case{"global", AttnKind::global(), false, 4, 0},
                                           Case{"paged", AttnKind::global(), true, 4, 0}),
                         [](const auto& param) { return param.param.name; });

TEST(PrefixSharing, OnlyPagedGlobalLayers) {
  KvShape paged{2, 64, 2, kDim, KvType::F16, {}, 8, 16, 8};
  EXPECT_TRUE(paged.supports_prefix_sharing(0));
  EXPECT_TRUE(paged.prefix_sharing());
  KvShape contiguous{2, 64, 2, kDim, KvType::F16, {}, 8};
  EXPECT_FALSE(contiguous.supports_prefix_sharing(0));
  EXPECT_FALSE(contiguous.prefix_sharing());
  KvShape mixed{2, 64, 2, kDim, KvType::F16, {AttnKind::sliding(8), AttnKind::global()}, 8, 16, 8};
  EXPECT_FALSE(mixed.supports_prefix_sharing(0)) << "a window ring belongs to one sequence";
  EXPECT_TRUE(mixed.supports_prefix_sharing(1));
  EXPECT_FALSE(mixed.prefix_sharing());
}

// Positions another sequence wrote into shared blocks count as written once adopted.
TEST(PrefixSharing, AdoptedPrefixIsReadable) {
  KvShape shape{1, 64, 2, kDim, KvType::F32, {}, 8, 16, 8};
  KvCache cache(shape);
  const std::vector<int32_t> t = {0, 1, 2};
  for (int64_t q = 0; q < 2; ++q) ASSERT_TRUE(cache.set_block_table(q, t.data(), 3).ok());
  std::vector<int32_t> hist;
  for (int64_t j = 0; j < 40; ++j) {
    hist.push_back(int32_t(j * 3));
    store(cache, 0, j, hist.back());
  }
  EXPECT_FALSE(cache.written(0, 1, 0));
  cache.adopt_prefix(1, 32);  // two whole blocks from the prefix cache
  EXPECT_TRUE(cache.written(0, 1, 31));
  EXPECT_FALSE(cache.written(0, 1, 32));
  std::vector<int32_t> own(hist.begin(), hist.begin() + 32);
  for (int64_t j = 32; j < 36; ++j) {
    own.push_back(int32_t(900 + j));
    store(cache, 1, j, own.back());  // block 2 is shared here only for the test's sake
  }
  EXPECT_EQ(reads(cache, 1, 35), expected(AttnKind::global(), own, 35));
}

TEST(KvShape, DescribesRingsWithTheirDrafts) {
  KvShape s{4, 4096, 1, kDim, KvType::F16,
            {AttnKind::sliding(512), AttnKind::sliding(512), AttnKind::sinks_window(4, 1020), AttnKind::global()}, 512};
  EXPECT_EQ(s.describe(),
            "2 x window 512 (1023 slots: W + 512 batch - 1), 1 x sinks 4 + window 1020 (1535 slots: S + W + 512 "
            "batch - 1), 1 x global (4096 slots)");
  s.n_draft = 4;
  EXPECT_EQ(s.slots(0), 512 + 512 + 4 - 1);
  EXPECT_EQ(s.describe(),
            "2 x window 512 (1027 slots: W + 512 batch + 4 draft - 1), 1 x sinks 4 + window 1020 (1539 slots: S "
            "+ W + 512 batch + 4 draft - 1), 1 x global (4096 slots)");
  s.n_draft = -1;
  EXPECT_FALSE(s.validate().ok());
  KvShape small{1, 100, 1, kDim, KvType::F16, {AttnKind::sliding(80)}, 64};
  small.kinds.push_back(AttnKind::global());
  small.n_layer = 2;
  EXPECT_EQ(small.describe(), "1 x window 80 (100 slots), 1 x global (100 slots)") << "a ring as long as the context";
}

// The validity checks of debug builds: reading or writing what the record says is not there
// aborts with the positions. Release builds skip them (the hot path keeps only the record).
TEST(KvValidityDeathTest, DebugBuildsRefuseReadsOfUnwrittenRows) {
#ifdef NDEBUG
  GTEST_SKIP() << "debug builds only";
#else
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  KvShape g{1, 64, 1, kDim, KvType::F32, {}, 8};
  KvShape w{1, 64, 1, kDim, KvType::F32, {AttnKind::sliding(4)}, 1};  // ring of 4
  std::vector<KvSpan> spans(3);
  EXPECT_DEATH(
      {
        KvCache c(g);
        for (int64_t j = 0; j < 5; ++j) store(c, 0, j, 1);
        c.spans(0, 0, 7, spans.data());
      },
      "positions 0..7 are read but only \\[0, 5\\) was written");
  EXPECT_DEATH(
      {
        KvCache c(g);
        for (int64_t j = 0; j < 10; ++j) store(c, 0, j, 1);
        (void)c.rewind(0, 6);
        c.spans(0, 0, 8, spans.data());  // rewound positions are gone
      },
      "only \\[0, 6\\) was written");
  EXPECT_DEATH(
      {
        KvCache c(g);
        store(c, 0, 0, 1);
        store(c, 0, 2, 1);
      },
      "position 2 stored past the end \\(1\\)");
  EXPECT_DEATH(
      {
        KvCache c(w);
        for (int64_t j = 0; j < 10; ++j) store(c, 0, j, 1);
        c.spans(0, 0, 5, spans.data());  // 5 sees 2..5, evicted: the ring holds 6..9
      },
      "positions 2..3 are read but only \\[0, 10\\) was written and the ring holds \\[6, 10\\)");
  EXPECT_DEATH(
      {
        KvCache c(w);
        for (int64_t j = 0; j < 10; ++j) store(c, 0, j, 1);
        (void)c.rewind(0, 8);  // more than a step back: 8 needs 5..7, 5 is gone, nothing is kept
        store(c, 0, 8, 1);     // the caller ignored what rewind() returned
      },
      "position 8 stored past the end \\(0\\)");
  EXPECT_DEATH(
      {
        KvCache c(w);
        for (int64_t j = 0; j < 10; ++j) store(c, 0, j, 1);
        c.reset(0);
        c.spans(0, 0, 0, spans.data());
      },
      "positions 0..0 are read");
#endif
}

}  // namespace
}  // namespace peregrine
