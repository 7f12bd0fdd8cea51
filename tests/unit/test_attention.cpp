// Batched causal GQA attention against a direct double-precision evaluation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "ops/attention.h"

namespace peregrine {
namespace {

// The naive side reads K/V back from the cache (as rounded to f16 when the cache
// is f16), so both sides see the same inputs and differ only in evaluation.
class Attention : public ::testing::TestWithParam<KvType> {};

TEST_P(Attention, MatchesNaiveCausalGqa) {
  // n_ctx spans several 64-position tiles of the online softmax.
  const int64_t n_head = 6, n_kv = 2, hd = 16, n_ctx = 200, n_seq = 2, layer = 1;
  KvCache cache({2, n_ctx, n_seq, n_kv * hd, GetParam()});
  std::mt19937 rng(11);
  std::normal_distribution<float> d(0.0f, 2.0f);
  std::vector<float> krow(size_t(n_kv * hd)), vrow(krow.size());
  for (int64_t s = 0; s < n_seq; ++s)
    for (int64_t p = 0; p < n_ctx; ++p) {
      for (size_t i = 0; i < krow.size(); ++i) {
        krow[i] = d(rng);
        vrow[i] = d(rng);
      }
      cache.store(layer, s, p, krow.data(), vrow.data());
    }
  // Tokens of two sequences interleaved, as continuous batching produces.
  std::vector<int32_t> pos = {0, 5, 17, 199, 3, 64, 65, 130};
  std::vector<int32_t> seq = {0, 1, 0, 1, 1, 0, 1, 0};
  const int64_t T = int64_t(pos.size());
  std::vector<float> q(size_t(T * n_head * hd)), out(q.size());
  for (float& x : q) x = d(rng);
  const float scale = 1.0f / std::sqrt(float(hd));
  for (int threads : {1, 3}) {
    ThreadPool pool(threads);
    attention(q.data(), pos.data(), seq.data(), T, cache, layer, {n_head, n_kv, hd, scale},
              out.data(), pool);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < n_head; ++h) {
        const int64_t hk = h / (n_head / n_kv);
        std::vector<double> w(size_t(pos[t] + 1));
        double mx = -1e300, sum = 0;
        for (int64_t j = 0; j <= pos[t]; ++j) {
          double s = 0;
          for (int64_t i = 0; i < hd; ++i)
            s += double(q[(t * n_head + h) * hd + i]) * cache.k_at(layer, seq[t], j, hk * hd + i);
          w[j] = s * scale;
          mx = std::max(mx, w[j]);
        }
        for (double& x : w) sum += (x = std::exp(x - mx));
        for (int64_t i = 0; i < hd; ++i) {
          double o = 0;
          for (int64_t j = 0; j <= pos[t]; ++j) o += w[j] / sum * cache.v_at(layer, seq[t], j, hk * hd + i);
          ASSERT_NEAR(out[(t * n_head + h) * hd + i], o, 1e-5) << "t=" << t << " h=" << h;
        }
      }
  }
}

INSTANTIATE_TEST_SUITE_P(KvTypes, Attention, ::testing::Values(KvType::F32, KvType::F16),
                         [](const auto& info) { return std::string(kv_type_name(info.param)); });

}  // namespace
}  // namespace peregrine

namespace peregrine {
namespace {

// Attention through a window ring (and sinks + window) equals attention over a full
// cache with an explicit mask of what each position may see. Positions arrive in
// batches of n_batch, each batch stored before it attends, as a forward pass does, for
// long enough that the ring wraps several times.
struct MaskCase {
  AttnKind kind;
  int64_t n_batch;
};

class WindowAttention : public ::testing::TestWithParam<MaskCase> {};

TEST_P(WindowAttention, RingEqualsFullCacheWithMask) {
  const MaskCase c = GetParam();
  const int64_t n_head = 4, n_kv = 2, hd = 16, n_pos = 150, n_ctx = 160;
  KvShape ring_shape{1, n_ctx, 1, n_kv * hd, KvType::F32, {c.kind}, c.n_batch};
  ASSERT_TRUE(ring_shape.validate().ok());
  KvCache ring(ring_shape), full({1, n_ctx, 1, n_kv * hd, KvType::F32});
  EXPECT_LT(ring.bytes(), full.bytes()) << "the window cache should keep fewer positions";
  std::mt19937 rng(21);
  std::normal_distribution<float> d(0.0f, 1.5f);
  const AttentionShape as{n_head, n_kv, hd, 1.0f / std::sqrt(float(hd)), 0};  // no re-rotation
  ThreadPool pool(2);
  for (int64_t p0 = 0; p0 < n_pos; p0 += c.n_batch) {
    const int64_t T = std::min(c.n_batch, n_pos - p0);
    std::vector<int32_t> pos, seq(size_t(T), 0);
    for (int64_t t = 0; t < T; ++t) {
      pos.push_back(int32_t(p0 + t));
      std::vector<float> k(size_t(n_kv * hd)), v(k.size());
      for (size_t i = 0; i < k.size(); ++i) {
        k[i] = d(rng);
        v[i] = d(rng);
      }
      ring.store(0, 0, p0 + t, k.data(), v.data());
      full.store(0, 0, p0 + t, k.data(), v.data());
    }
    std::vector<float> q(size_t(T * n_head * hd)), out(q.size());
    for (float& x : q) x = d(rng);
    attention(q.data(), pos.data(), seq.data(), T, ring, 0, as, out.data(), pool);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t p = pos[size_t(t)];
      for (int64_t h = 0; h < n_head; ++h) {
        const int64_t hk = h / (n_head / n_kv);
        // Explicit mask over the full cache.
        std::vector<double> w;
        std::vector<int64_t> vis;
        for (int64_t j = 0; j <= p; ++j) {
          const bool sink = j < c.kind.sinks;
          const bool recent = j > p - c.kind.window;
          if (!sink && !recent) continue;
          double s = 0;
          for (int64_t i = 0; i < hd; ++i)
            s += double(q[size_t((t * n_head + h) * hd + i)]) * full.k_at(0, 0, j, hk * hd + i);
          w.push_back(s * as.scale);
          vis.push_back(j);
        }
        const double mx = *std::max_element(w.begin(), w.end());
        double sum = 0;
        for (double& x : w) sum += (x = std::exp(x - mx));
        for (int64_t i = 0; i < hd; ++i) {
          double o = 0;
          for (size_t j = 0; j < vis.size(); ++j) o += w[j] / sum * full.v_at(0, 0, vis[j], hk * hd + i);
          ASSERT_NEAR(out[size_t((t * n_head + h) * hd + i)], o, 1e-5)
              << c.kind.describe() << " p=" << p << " h=" << h;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, WindowAttention,
    ::testing::Values(MaskCase{AttnKind::sliding(16), 1}, MaskCase{AttnKind::sliding(16), 7},
                      MaskCase{AttnKind::sliding(33), 16}, MaskCase{AttnKind::sinks_window(4, 12), 1},
                      MaskCase{AttnKind::sinks_window(4, 12), 5}, MaskCase{AttnKind::sinks_window(1, 40), 9}),
    [](const auto& info) {
      return "s" + std::to_string(info.param.kind.sinks) + "_w" + std::to_string(info.param.kind.window) +
             "_b" + std::to_string(info.param.n_batch);
    });

// StreamingLLM positions: once positions between the sinks and the window are evicted,
// sink i is attended as if at position first_recent - sinks + i. Keys are stored rotated
// at their true positions; the expected side rotates the sink keys read back from the cache
// (as rounded to its type) by the shift in double precision. Head dimensions up to the
// loader's 1024 (512 here: past the 256 of a stack table).
struct SinkCase {
  int64_t hd, rope_dim;
  KvType type;
};

class SinkAttention : public ::testing::TestWithParam<SinkCase> {};

TEST_P(SinkAttention, SinkKeysMoveUpToTheWindow) {
  const SinkCase c = GetParam();
  const int64_t hd = c.hd, S = 2, W = 5, p = 40;  // query at 40 sees sinks 0,1 and 36..40
  const float base = 10000.0f;
  KvShape shape{1, 64, 1, hd, c.type, {AttnKind::sinks_window(S, W)}, 1};
  KvCache cache(shape);
  std::mt19937 rng(5);
  std::normal_distribution<float> d(0.0f, 1.0f);
  auto rotate = [&](std::vector<double> x, double at) {
    for (int64_t i = 0; i < c.rope_dim; i += 2) {
      const double th = at * std::pow(double(base), -double(i) / double(c.rope_dim));
      const double cs = std::cos(th), sn = std::sin(th), a = x[size_t(i)], b = x[size_t(i + 1)];
      x[size_t(i)] = a * cs - b * sn;
      x[size_t(i + 1)] = a * sn + b * cs;
    }
    return x;
  };
  for (int64_t j = 0; j <= p; ++j) {
    std::vector<double> raw(static_cast<size_t>(hd));
    std::vector<float> k(static_cast<size_t>(hd)), v(k.size());
    for (int64_t i = 0; i < hd; ++i) {
      raw[size_t(i)] = d(rng);
      v[size_t(i)] = d(rng);
    }
    const std::vector<double> rk = rotate(raw, double(j));
    for (int64_t i = 0; i < hd; ++i) k[size_t(i)] = float(rk[size_t(i)]);
    cache.store(0, 0, j, k.data(), v.data());
  }
  std::vector<float> q(static_cast<size_t>(hd));
  for (float& x : q) x = d(rng);
  std::vector<float> out(static_cast<size_t>(hd));
  const int32_t pos = int32_t(p), seq = 0;
  const float scale = 1.0f / std::sqrt(float(hd));
  ThreadPool pool(1);
  attention(q.data(), &pos, &seq, 1, cache, 0, {1, 1, hd, scale, c.rope_dim, base}, out.data(), pool);
  const int64_t shift = (p - W + 1) - S;  // 34: sinks sit at 34, 35, just before 36
  std::vector<double> w;
  std::vector<int64_t> vis;
  for (int64_t j = 0; j <= p; ++j) {
    if (j >= S && j < p - W + 1) continue;
    std::vector<double> k(static_cast<size_t>(hd));
    for (int64_t i = 0; i < hd; ++i) k[size_t(i)] = cache.k_at(0, 0, j, i);
    if (j < S) k = rotate(k, double(shift));
    double s = 0;
    for (int64_t i = 0; i < hd; ++i) s += double(q[size_t(i)]) * k[size_t(i)];
    w.push_back(double(scale) * s);
    vis.push_back(j);
  }
  const double mx = *std::max_element(w.begin(), w.end());
  double sum = 0;
  for (double& x : w) sum += (x = std::exp(x - mx));
  // f16: the re-rotated sink keys are rounded to f16 again before the dot products.
  const double tol = c.type == KvType::F32 ? 1e-5 : 2e-3;
  for (int64_t i = 0; i < hd; ++i) {
    double o = 0;
    for (size_t j = 0; j < vis.size(); ++j) o += w[j] / sum * cache.v_at(0, 0, vis[j], i);
    ASSERT_NEAR(out[size_t(i)], o, tol) << "i=" << i;
  }
}

INSTANTIATE_TEST_SUITE_P(HeadDims, SinkAttention,
                         ::testing::Values(SinkCase{8, 8, KvType::F32}, SinkCase{512, 512, KvType::F32},
                                           SinkCase{512, 128, KvType::F32}, SinkCase{1024, 1024, KvType::F32},
                                           SinkCase{512, 512, KvType::F16}),
                         [](const auto& info) {
                           return "hd" + std::to_string(info.param.hd) + "_rope" + std::to_string(info.param.rope_dim) +
                                  "_" + std::string(kv_type_name(info.param.type));
                         });

TEST(WindowAttention, BadKindsAreRejected) {
  KvShape s{2, 64, 1, 16, KvType::F16, {AttnKind::global(), AttnKind::sliding(0)}, 8};
  EXPECT_FALSE(s.validate().ok());
  s.kinds = {AttnKind::global()};  // one kind for two layers
  EXPECT_FALSE(s.validate().ok());
  s.kinds = {AttnKind::global(), AttnKind::sinks_window(-1, 8)};
  EXPECT_FALSE(s.validate().ok());
  s.kinds = {AttnKind::global(), AttnKind::sinks_window(65, 8)};
  EXPECT_TRUE(s.validate().ok());
  EXPECT_FALSE(check_attention(s, {1, 1, 16, 1.0f}).ok()) << "more sinks than attention supports";
}

}  // namespace
}  // namespace peregrine
