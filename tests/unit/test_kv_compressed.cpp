// Compressed and evicting KV caches (kv_cache.h "Rotation", "KIVI", "Eviction"): the rows a
// cache keeps against the quantizers, attention over them against a direct double-precision
// evaluation, and the exactness claims (batch invariance, rewinds, paging, within-budget).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/kernels.h"
#include "kv/hadamard.h"
#include "kv/kv_cache.h"
#include "kv/kv_evict.h"
#include "ops/attention.h"
#include "quant/dequantize.h"
#include "quant/fp16.h"
#include "quant/quantize.h"

namespace peregrine {
namespace {

constexpr int64_t kHead = 64, kKvHeads = 2, kHeads = 6, kDim = kKvHeads * kHead;

KvShape shape_of(KvType k, KvType v, int64_t n_ctx, int64_t n_batch = 8, bool rotate = true) {
  KvShape s{1, n_ctx, 2, kDim, k, {}, n_batch};
  if (v != k) s.type_v = v;
  s.head_dim = kHead;
  s.rotate = rotate;
  return s;
}

struct Rows {
  std::vector<float> k, v;  // [n][kDim]
};

// Keys with a few outlier channels (as real keys have), values plain.
Rows random_rows(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  Rows r{std::vector<float>(size_t(n * kDim)), std::vector<float>(size_t(n * kDim))};
  for (int64_t i = 0; i < n * kDim; ++i) {
    r.k[size_t(i)] = d(rng) * (i % kHead == 5 || i % kHead == 40 ? 12.0f : 1.0f);
    r.v[size_t(i)] = d(rng);
  }
  return r;
}

std::vector<float> random_queries(int64_t n_tok, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> q(static_cast<size_t>(n_tok * kHeads * kHead));
  for (float& x : q) x = d(rng);
  return q;
}

const AttentionShape kShape{kHeads, kKvHeads, kHead, 1.0f / 8.0f};

std::vector<float> attend_all(KvCache& cache, const std::vector<float>& q, const std::vector<int32_t>& pos,
                              const std::vector<int32_t>& seq, ThreadPool& pool) {
  std::vector<float> out(q.size());
  attention(q.data(), pos.data(), seq.data(), int64_t(pos.size()), cache, 0, kShape, out.data(), pool);
  return out;
}

// What token (seq, pos) should get, in double precision, from the values the cache reports
// (k_at / v_at: what that position reads when it is the sequence's last). Rotated rows are
// compared in the cache's frame: the query rotated in, the output rotated back. Queries against
// integer keys are quantized as the kernels quantize them (KernelTable::quantize_q8).
std::vector<double> reference(const KvCache& cache, const float* q_tok, int64_t seq, int64_t pos) {
  const KvShape& s = cache.shape();
  const int64_t rot_k = s.rotation(0, 0), rot_v = s.rotation(0, 1);
  const bool int_keys = s.format(0, 0) == AttnFormat::Q8_0 || s.format(0, 0) == AttnFormat::Q4_0;
  // Beside KIVI values the recent positions come from the f16 residual: float queries there.
  const int64_t int_until = s.kivi(0) ? s.kivi_quantized(pos) : pos + 1;
  std::vector<double> out(static_cast<size_t>(kHeads * kHead));
  for (int64_t h = 0; h < kHeads; ++h) {
    const int64_t hk = h / (kHeads / kKvHeads);
    std::vector<float> q(q_tok + h * kHead, q_tok + (h + 1) * kHead);
    for (float& x : q) x *= kShape.scale;
    if (rot_k > 0) hadamard_rotate_blocks(q.data(), kHead, rot_k);
    std::vector<float> qi = q;  // as the integer dots see it
    if (int_keys) {
      std::vector<BlockQ8Act> qa(static_cast<size_t>(kHead / kQK));
      kernels().quantize_q8(q.data(), qa.data(), kHead);
      for (int64_t i = 0; i < kHead; ++i) qi[size_t(i)] = qa[size_t(i / kQK)].d * float(qa[size_t(i / kQK)].qs[i % kQK]);
    }
    std::vector<double> w(static_cast<size_t>(pos + 1));
    double mx = -1e300, sum = 0;
    for (int64_t j = 0; j <= pos; ++j) {
      double sc = 0;
      const std::vector<float>& qj = j < int_until ? qi : q;
      for (int64_t i = 0; i < kHead; ++i) sc += double(qj[size_t(i)]) * cache.k_at(0, seq, j, hk * kHead + i);
      w[size_t(j)] = sc;
      mx = std::max(mx, sc);
    }
    for (double& x : w) sum += (x = std::exp(x - mx));
    std::vector<float> o(static_cast<size_t>(kHead));
    for (int64_t i = 0; i < kHead; ++i) {
      double acc = 0;
      for (int64_t j = 0; j <= pos; ++j) acc += w[size_t(j)] / sum * cache.v_at(0, seq, j, hk * kHead + i);
      o[size_t(i)] = float(acc);
    }
    if (rot_v > 0) hadamard_rotate_blocks(o.data(), kHead, rot_v);
    for (int64_t i = 0; i < kHead; ++i) out[size_t(h * kHead + i)] = o[size_t(i)];
  }
  return out;
}

// --- Rows as stored ----------------------------------------------------------------------------

TEST(KvCompressed, QuantizedRowsAreTheQuantizersRowsInTheRotatedFrame) {
  const Rows r = random_rows(3, 1);
  for (bool rotate : {false, true})
    for (KvType t : {KvType::Q8_0, KvType::Q4_0}) {
      KvCache cache(shape_of(t, t, 16, 8, rotate));
      for (int64_t p = 0; p < 3; ++p) cache.store(0, 0, p, &r.k[size_t(p * kDim)], &r.v[size_t(p * kDim)]);
      for (int64_t p = 0; p < 3; ++p)
        for (int kv = 0; kv < 2; ++kv) {
          std::vector<float> x((kv ? r.v : r.k).begin() + p * kDim, (kv ? r.v : r.k).begin() + (p + 1) * kDim);
          const int64_t rot = cache.shape().rotation(0, kv);
          EXPECT_EQ(rot, rotate ? 64 : 0);
          if (rot > 0) hadamard_rotate_blocks(x.data(), kDim, rot);
          std::vector<float> want(static_cast<size_t>(kDim));
          if (t == KvType::Q8_0) {
            std::vector<BlockQ8_0> b(static_cast<size_t>(kDim / kQK));
            quantize_row_q8_0_ref(x.data(), b.data(), kDim);
            dequantize_row_q8_0(b.data(), want.data(), kDim);
          } else {
            std::vector<BlockQ4_0> b(static_cast<size_t>(kDim / kQK));
            quantize_row_q4_0_ref(x.data(), b.data(), kDim);
            dequantize_row_q4_0(b.data(), want.data(), kDim);
          }
          for (int64_t i = 0; i < kDim; ++i)
            ASSERT_EQ(kv ? cache.v_at(0, 0, p, i) : cache.k_at(0, 0, p, i), want[size_t(i)])
                << kv_type_name(t) << " rotate " << rotate << " kv " << kv << " p " << p << " i " << i;
        }
    }
}

TEST(KvCompressed, HadamardIsOrthonormalAndItsOwnInverse) {
  std::vector<float> x(256), y;
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(std::sin(double(i) * 1.7) * 3.0);
  y = x;
  hadamard_rotate(y.data(), 256);
  double nx = 0, ny = 0;
  for (size_t i = 0; i < x.size(); ++i) nx += double(x[i]) * x[i], ny += double(y[i]) * y[i];
  EXPECT_NEAR(nx, ny, 1e-3 * nx);
  hadamard_rotate(y.data(), 256);
  for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(x[i], y[i], 1e-5);
  // Against the definition: H[i][j] = (-1)^popcount(i & j) / sqrt(n).
  std::vector<float> e(8, 0.0f);
  e[3] = 1.0f;
  hadamard_rotate(e.data(), 8);
  for (int i = 0; i < 8; ++i)
    EXPECT_FLOAT_EQ(e[size_t(i)], float((__builtin_popcount(unsigned(i & 3)) % 2 ? -1.0 : 1.0) / std::sqrt(8.0)));
}

TEST(KvCompressed, KiviKeysArePerChannelGroupsAndTheResidualIsF16) {
  const int64_t n = 200;
  const Rows r = random_rows(n, 2);
  KvCache cache(shape_of(KvType::Kivi2, KvType::Kivi2, 256));
  const KvShape& s = cache.shape();
  EXPECT_EQ(s.format(0, 0), AttnFormat::Q2Channel);
  EXPECT_EQ(s.format(0, 1), AttnFormat::Q2);
  EXPECT_EQ(s.rotation(0, 0), 64);
  for (int64_t p = 0; p < n; ++p) cache.store(0, 0, p, &r.k[size_t(p * kDim)], &r.v[size_t(p * kDim)]);
  std::vector<float> rk = r.k;  // the keys as stored: rotated per head
  hadamard_rotate_blocks(rk.data(), int64_t(rk.size()), 64);
  // Position n-1 reads groups [0, 64) in 2 bits (200 - 128 = 72 -> 64) and 64..199 in f16.
  EXPECT_EQ(s.kivi_quantized(n - 1), 64);
  std::vector<float> hv(static_cast<size_t>(kDim));
  for (int64_t p : {0, 31, 33, 63, 64, 150, 199}) {
    // Keys: channel c of group g quantized as one 32-value block (the groups read in 2 bits,
    // g < 2; later groups may be incomplete: only their f16 residual is compared).
    const int64_t g = std::min<int64_t>(p / kKiviGroup, 1);
    for (int64_t c : {0, 5, 77}) {
      float col[kKiviGroup], deq[kKiviGroup];
      for (int64_t j = 0; j < kKiviGroup; ++j) col[j] = fp16_to_f32(f32_to_fp16(rk[size_t((g * kKiviGroup + j) * kDim + c)]));
      BlockQ2 b;
      quantize_row_q2_ref(col, &b, kKiviGroup);
      dequantize_row_q2(&b, deq, kKiviGroup);
      const float want = p < 64 ? deq[p % kKiviGroup] : fp16_to_f32(f32_to_fp16(rk[size_t(p * kDim + c)]));
      ASSERT_EQ(cache.k_at(0, 0, p, c), want) << "p " << p << " c " << c;
    }
    // Values: per token, rotated in blocks of 64 before quantization.
    std::vector<float> x(r.v.begin() + p * kDim, r.v.begin() + (p + 1) * kDim);
    hadamard_rotate_blocks(x.data(), kDim, 64);
    std::vector<BlockQ2> b(static_cast<size_t>(kDim / kQK));
    quantize_row_q2_ref(x.data(), b.data(), kDim);
    dequantize_row_q2(b.data(), hv.data(), kDim);
    for (int64_t i = 0; i < kDim; ++i) {
      const float want = p < 64 ? hv[size_t(i)] : fp16_to_f32(f32_to_fp16(x[size_t(i)]));
      ASSERT_EQ(cache.v_at(0, 0, p, i), want) << "p " << p << " i " << i;
    }
  }
}

// --- Attention over compressed rows ------------------------------------------------------------

struct TypePair {
  KvType k, v;
};

class CompressedAttention : public ::testing::TestWithParam<TypePair> {};

// Decoding one token at a time: every output against the double-precision reference over the
// cache's own values, so the only differences are float evaluation order.
TEST_P(CompressedAttention, MatchesDoubleReferenceOverTheCachesValues) {
  const auto [tk, tv] = GetParam();
  const int64_t n = 260;
  const Rows r = random_rows(n, 3);
  const std::vector<float> q = random_queries(n, 4);
  KvCache cache(shape_of(tk, tv, 512, 4));
  ThreadPool pool(2);
  for (int64_t p = 0; p < n; ++p) {
    cache.store(0, 1, p, &r.k[size_t(p * kDim)], &r.v[size_t(p * kDim)]);
    if (p % 37 != 0 && p != n - 1) continue;
    std::vector<float> qt(q.begin() + p * kHeads * kHead, q.begin() + (p + 1) * kHeads * kHead);
    const std::vector<float> got = attend_all(cache, qt, {int32_t(p)}, {1}, pool);
    const std::vector<double> want = reference(cache, qt.data(), 1, p);
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 2e-4 + 2e-4 * std::fabs(want[i])) << "p " << p << " i " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Types, CompressedAttention,
                         ::testing::Values(TypePair{KvType::Q8_0, KvType::Q8_0}, TypePair{KvType::Q4_0, KvType::Q4_0},
                                           TypePair{KvType::Q8_0, KvType::Q4_0}, TypePair{KvType::F16, KvType::Q4_0},
                                           TypePair{KvType::Q4_0, KvType::F32},
                                           TypePair{KvType::Kivi2, KvType::Kivi2}, TypePair{KvType::Kivi2, KvType::Q8_0},
                                           TypePair{KvType::Q4_0, KvType::Kivi2}),
                         [](const auto& info) {
                           return std::string(kv_type_name(info.param.k)) + "_" + std::string(kv_type_name(info.param.v));
                         });

// Which positions a KIVI query reads in 2 bits depends on its position only: a prompt stored
// and attended in one step gives the same bits as token by token, and so does any split.
TEST(KvCompressed, KiviIsBatchInvariant) {
  const int64_t n = 230;
  const Rows r = random_rows(n, 5);
  const std::vector<float> q = random_queries(n, 6);
  ThreadPool pool(2);
  std::vector<std::vector<float>> results;
  for (int64_t step : {1, 7, 64, 230}) {
    KvCache cache(shape_of(KvType::Kivi2, KvType::Kivi2, 256, 230));
    std::vector<float> all;
    for (int64_t p0 = 0; p0 < n; p0 += step) {
      const int64_t m = std::min(step, n - p0);
      std::vector<int32_t> pos, seq;
      for (int64_t p = p0; p < p0 + m; ++p) {
        cache.store(0, 0, p, &r.k[size_t(p * kDim)], &r.v[size_t(p * kDim)]);
        pos.push_back(int32_t(p));
        seq.push_back(0);
      }
      std::vector<float> qs(q.begin() + p0 * kHeads * kHead, q.begin() + (p0 + m) * kHeads * kHead);
      const std::vector<float> out = attend_all(cache, qs, pos, seq, pool);
      all.insert(all.end(), out.begin(), out.end());
    }
    results.push_back(all);
  }
  for (size_t i = 1; i < results.size(); ++i)
    ASSERT_EQ(0, std::memcmp(results[0].data(), results[i].data(), results[0].size() * 4)) << "split " << i;
}

// Rejected drafts: storing a step, rewinding it and storing other rows reads exactly what a
// cache that only saw the final rows reads (groups are requantized when completed again).
TEST(KvCompressed, KiviRewindOfAStepIsExact) {
  const int64_t n = 200, step = 8;
  const Rows r = random_rows(n, 7), other = random_rows(n, 8);
  const std::vector<float> q = random_queries(1, 9);
  ThreadPool pool(1);
  KvCache a(shape_of(KvType::Kivi2, KvType::Kivi2, 256, step)), b(a.shape());
  for (int64_t p = 0; p < n; ++p) b.store(0, 0, p, &r.k[size_t(p * kDim)], &r.v[size_t(p * kDim)]);
  int64_t p = 0;
  while (p < n) {
    const int64_t m = std::min(step, n - p);
    for (int64_t i = p; i < p + m; ++i) a.store(0, 0, i, &other.k[size_t(i * kDim)], &other.v[size_t(i * kDim)]);
    ASSERT_EQ(a.rewind(0, p), p);  // the whole step rejected
    for (int64_t i = p; i < p + m; ++i) a.store(0, 0, i, &r.k[size_t(i * kDim)], &r.v[size_t(i * kDim)]);
    p += m;
  }
  // Positions whose f16 part the ring still holds (it keeps the last 168: [32, 200)); a forward
  // pass only ever attends from the newest positions.
  for (int32_t pos : {160, 161, 191, 192, 199}) {
    const std::vector<float> x = attend_all(a, q, {pos}, {0}, pool), y = attend_all(b, q, {pos}, {0}, pool);
    ASSERT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * 4)) << "pos " << pos;
  }
  // Further back than the residual holds: nothing is kept, the caller recomputes.
  EXPECT_EQ(a.rewind(0, 5), 0);
}

// Paged blocks hold the same rows as a contiguous cache: identical attention (q8_0 in blocks of
// 16; KIVI in blocks of 32, its groups never straddling a block).
TEST(KvCompressed, PagedEqualsContiguous) {
  const int64_t n = 150;
  const Rows r = random_rows(n, 10);
  const std::vector<float> q = random_queries(1, 11);
  ThreadPool pool(1);
  for (auto [t, bs] : {std::pair{KvType::Q8_0, int64_t(16)}, std::pair{KvType::Q4_0, int64_t(16)},
                       std::pair{KvType::Kivi2, int64_t(32)}}) {
    KvShape contiguous = shape_of(t, t, 160, 8);
    KvShape paged = contiguous;
    paged.block_size = bs;
    paged.n_blocks = 2 * paged.max_blocks_per_seq();
    ASSERT_TRUE(paged.validate().ok());
    KvCache a(contiguous), b(paged);
    // Blocks in scrambled order: sequence 0's table is the odd blocks, backwards.
    std::vector<int32_t> table;
    for (int64_t i = 0; i < paged.max_blocks_per_seq(); ++i) table.push_back(int32_t(paged.n_blocks - 1 - 2 * i));
    ASSERT_TRUE(b.set_block_table(0, table.data(), int64_t(table.size())).ok());
    for (int64_t p = 0; p < n; ++p) {
      a.store(0, 0, p, &r.k[size_t(p * kDim)], &r.v[size_t(p * kDim)]);
      b.store(0, 0, p, &r.k[size_t(p * kDim)], &r.v[size_t(p * kDim)]);
    }
    for (int32_t pos : {0, 17, 99, 149}) {
      const std::vector<float> x = attend_all(a, q, {pos}, {0}, pool), y = attend_all(b, q, {pos}, {0}, pool);
      ASSERT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * 4)) << kv_type_name(t) << " pos " << pos;
    }
  }
  KvShape bad = shape_of(KvType::Kivi2, KvType::Kivi2, 160);
  bad.block_size = 16;
  bad.n_blocks = 20;
  EXPECT_FALSE(bad.validate().ok());
}

TEST(KvCompressed, ForkCopiesQuantizedRowsAndTheKiviResidual) {
  const int64_t n = 180;
  const Rows r = random_rows(n, 12);
  const std::vector<float> q = random_queries(1, 13);
  ThreadPool pool(1);
  for (KvType t : {KvType::Q4_0, KvType::Kivi2}) {
    KvCache cache(shape_of(t, t, 256));
    for (int64_t p = 0; p < n; ++p) cache.store(0, 0, p, &r.k[size_t(p * kDim)], &r.v[size_t(p * kDim)]);
    cache.fork(0, 1);
    const std::vector<float> x = attend_all(cache, q, {n - 1}, {0}, pool), y = attend_all(cache, q, {n - 1}, {1}, pool);
    ASSERT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * 4)) << kv_type_name(t);
  }
}

TEST(KvCompressed, ShapesRefuseWhatTheyCannotHold) {
  KvShape odd = shape_of(KvType::Q8_0, KvType::Q8_0, 64);
  odd.head_dim = 48;
  odd.kv_dim = 96;
  EXPECT_FALSE(odd.validate().ok());  // blocks of 32 would straddle heads
  odd.type = KvType::F16;
  EXPECT_TRUE(odd.validate().ok());
  EXPECT_TRUE(shape_of(KvType::Kivi2, KvType::F16, 64).validate().ok());  // KIVI keys, f16 values
  KvShape evict = shape_of(KvType::F16, KvType::F16, 64);
  evict.evict = KvEvict::H2O;
  evict.evict_budget = kMinEvictBudget - 1;
  EXPECT_FALSE(evict.validate().ok());
  evict.evict_budget = kMinEvictBudget;
  EXPECT_TRUE(evict.validate().ok());
  evict.type = KvType::Kivi2;
  EXPECT_FALSE(evict.validate().ok());
  // Bytes per token: 2 x kDim values at 34/32, 18/32, 12/32 bytes.
  EXPECT_EQ(shape_of(KvType::Q8_0, KvType::Q8_0, 64).bytes_per_token(), 2 * kDim / 32 * 34);
  EXPECT_EQ(shape_of(KvType::Q8_0, KvType::Q4_0, 64).bytes_per_token(), kDim / 32 * (34 + 18));
  EXPECT_EQ(shape_of(KvType::Kivi2, KvType::Kivi2, 64).bytes_per_token(), 2 * kDim / 32 * 12);
}

// --- Eviction ----------------------------------------------------------------------------------

TEST(KvEvict, SelectionsKeepSinksRecentAndBest) {
  const int64_t n = 20, budget = 12;
  std::vector<int32_t> pos(n);
  std::vector<float> score(n, 0.0f);
  for (int32_t i = 0; i < n; ++i) pos[size_t(i)] = i * 3;  // positions need not be dense
  score[6] = 5.0f;
  score[8] = 4.0f;
  score[2] = 3.0f;  // pos 6: not a sink
  std::vector<int32_t> keep;
  h2o_select(pos.data(), score.data(), n, budget, keep);
  // Sinks (positions < 4: entries 0, 1), the recent half (entries 14..19), then the best:
  // 6, 8, 2, and ties to the older entry: 3.
  EXPECT_EQ(keep, (std::vector<int32_t>{0, 1, 2, 3, 6, 8, 14, 15, 16, 17, 18, 19}));
  h2o_select(pos.data(), score.data(), 10, budget, keep);
  EXPECT_EQ(keep.size(), 10u);  // within budget: everything
  // SnapKV: the last 32 are the window; with 100 entries, budget 40: the sinks 0..3, the window
  // 68..99, and 4 more by pooled votes: a single vote at 30 pools over 27..33 (7 entries, ties
  // to the older).
  const int64_t m = 100;
  std::vector<int32_t> p2(m);
  std::vector<float> s2(m, 0.0f);
  for (int32_t i = 0; i < m; ++i) p2[size_t(i)] = i;
  s2[30] = 1.0f;
  snapkv_select(p2.data(), s2.data(), m, 40, keep);
  std::vector<int32_t> want{0, 1, 2, 3, 27, 28, 29, 30};
  for (int32_t i = 68; i < 100; ++i) want.push_back(i);
  EXPECT_EQ(keep, want);
}

// Within its budget an evicting cache is the plain cache: the same bits, whatever the steps.
TEST(KvEvict, WithinBudgetIsExactlyThePlainCache) {
  const int64_t n = 120;
  const Rows r = random_rows(n, 14);
  const std::vector<float> q = random_queries(n, 15);
  ThreadPool pool(2);
  for (KvEvict e : {KvEvict::H2O, KvEvict::SnapKV})
    for (KvType t : {KvType::F16, KvType::Q8_0}) {
      KvShape plain = shape_of(t, t, 128, 16), evicting = plain;
      evicting.evict = e;
      evicting.evict_budget = 128;
      KvCache a(plain), b(evicting);
      for (int64_t p0 = 0; p0 < n; p0 += 16) {
        std::vector<int32_t> pos, seq;
        for (int64_t p = p0; p < std::min(n, p0 + 16); ++p) {
          a.store(0, 0, p, &r.k[size_t(p * kDim)], &r.v[size_t(p * kDim)]);
          b.store(0, 0, p, &r.k[size_t(p * kDim)], &r.v[size_t(p * kDim)]);
          pos.push_back(int32_t(p));
          seq.push_back(0);
        }
        std::vector<float> qs(q.begin() + p0 * kHeads * kHead, q.begin() + (p0 + int64_t(pos.size())) * kHeads * kHead);
        const std::vector<float> x = attend_all(a, qs, pos, seq, pool), y = attend_all(b, qs, pos, seq, pool);
        ASSERT_EQ(0, std::memcmp(x.data(), y.data(), x.size() * 4)) << kv_evict_name(e) << " step at " << p0;
      }
    }
}

// Over budget: the scores are the softmax probabilities (summed over a GQA group's 3 queries),
// H2O keeps at most the budget after every step, with the sinks and the recent half.
TEST(KvEvict, H2OScoresAndBudget) {
  const int64_t n = 300, budget = 64;
  const Rows r = random_rows(n, 16);
  const std::vector<float> q = random_queries(n, 17);
  ThreadPool pool(2);
  KvShape s = shape_of(KvType::F16, KvType::F16, 512, 1);
  s.evict = KvEvict::H2O;
  s.evict_budget = budget;
  KvCache cache(s);
  for (int64_t p = 0; p < n; ++p) {
    cache.store(0, 0, p, &r.k[size_t(p * kDim)], &r.v[size_t(p * kDim)]);
    std::vector<float> qt(q.begin() + p * kHeads * kHead, q.begin() + (p + 1) * kHeads * kHead);
    (void)attend_all(cache, qt, {int32_t(p)}, {0}, pool);
    for (int64_t h = 0; h < kKvHeads; ++h) {
      const int64_t m = cache.evict_count(0, 0, h);
      ASSERT_EQ(m, std::min(p + 1, budget));
      const int32_t* kept = cache.evict_positions(0, 0, h);
      for (int64_t i = 1; i < m; ++i) ASSERT_LT(kept[i - 1], kept[i]);  // position order
      if (p + 1 > budget) {
        for (int32_t i = 0; i < 4; ++i) ASSERT_EQ(kept[i], i);            // sinks
        ASSERT_EQ(kept[m - budget / 2], p + 1 - budget / 2);                // the recent half
      }
    }
  }
  // Evicted positions read as NaN; kept ones as stored.
  const int32_t* kept = cache.evict_positions(0, 0, 0);
  EXPECT_EQ(cache.k_at(0, 0, kept[10], 3), fp16_to_f32(f32_to_fp16(r.k[size_t(kept[10] * kDim + 3)])));
  int32_t gone = 4;
  while (std::find(kept, kept + budget, gone) != kept + budget) ++gone;
  EXPECT_TRUE(std::isnan(cache.k_at(0, 0, gone, 3)));
  // A rewind drops the entries past the kept position.
  EXPECT_EQ(cache.rewind(0, n - 10), n - 10);
  EXPECT_EQ(cache.evict_count(0, 0, 0), budget - 10);
}

// SnapKV keeps the whole prompt until generation starts, then compresses it to the budget with
// the prompt's observation window kept.
TEST(KvEvict, SnapKVCompressesWhenGenerationStarts) {
  const int64_t n = 200, budget = 64;
  const Rows r = random_rows(n + 1, 18);
  const std::vector<float> q = random_queries(n + 1, 19);
  ThreadPool pool(2);
  KvShape s = shape_of(KvType::Q8_0, KvType::Q8_0, 512, 256);
  s.evict = KvEvict::SnapKV;
  s.evict_budget = budget;
  KvCache cache(s);
  std::vector<int32_t> pos, seq;
  for (int64_t p = 0; p < n; ++p) {
    cache.store(0, 0, p, &r.k[size_t(p * kDim)], &r.v[size_t(p * kDim)]);
    pos.push_back(int32_t(p));
    seq.push_back(0);
  }
  std::vector<float> qs(q.begin(), q.begin() + n * kHeads * kHead);
  (void)attend_all(cache, qs, pos, seq, pool);
  EXPECT_EQ(cache.evict_count(0, 0, 0), n);  // the prompt is whole
  cache.store(0, 0, n, &r.k[size_t(n * kDim)], &r.v[size_t(n * kDim)]);
  std::vector<float> qt(q.begin() + n * kHeads * kHead, q.end());
  (void)attend_all(cache, qt, {int32_t(n)}, {0}, pool);
  for (int64_t h = 0; h < kKvHeads; ++h) {
    ASSERT_EQ(cache.evict_count(0, 0, h), budget);
    const int32_t* kept = cache.evict_positions(0, 0, h);
    EXPECT_EQ(kept[0], 0);
    EXPECT_EQ(kept[budget - 1], n);                       // the generated token
    EXPECT_EQ(kept[budget - kSnapWindow], n + 1 - kSnapWindow);  // the window
  }
}

}  // namespace
}  // namespace peregrine
