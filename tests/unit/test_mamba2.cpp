// The Mamba-2 mixer against a double-precision evaluation of its definition (mamba2.h), token
// by token; batch invariance (interleaved sequences, any split into steps: bit-identical) and the
// recurrent state's fork / checkpoint through KvCache.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kv/kv_cache.h"
#include "model/blocks/mamba2.h"

namespace peregrine {
namespace {

struct Mamba2Fixture {
  Mamba2Dims d;
  std::vector<std::vector<float>> store;
  Mamba2Weights w;

  Weight make(std::string name, int64_t rows, int64_t cols, std::mt19937& rng, float scale, float offset = 0.0f) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    store.emplace_back(size_t(rows * cols));
    for (float& v : store.back()) v = offset + scale * nd(rng);
    Weight x;
    x.name = std::move(name);
    x.type = GgmlType::F32;
    x.data = reinterpret_cast<const uint8_t*>(store.back().data());
    x.rows = rows;
    x.cols = cols;
    x.row_bytes = size_t(cols) * 4;
    return x;
  }

  explicit Mamba2Fixture(int64_t n_group = 2) {
    d = {/*n_embd*/ 48, /*d_inner*/ 64, /*d_state*/ 16, /*n_head*/ 8, n_group, /*d_conv*/ 4};
    std::mt19937 rng(11);
    store.reserve(16);
    w.in = make("in", d.in_proj(), d.n_embd, rng, 1.0f / std::sqrt(float(d.n_embd)));
    w.conv = make("conv", d.conv_channels(), d.d_conv, rng, 0.5f);
    w.conv_bias = make("conv_b", 1, d.conv_channels(), rng, 0.1f);
    w.dt_bias = make("dt_b", 1, d.n_head, rng, 0.5f, -1.0f);
    w.a = make("a", 1, d.n_head, rng, 0.3f, -1.0f);
    w.d = make("d", 1, d.n_head, rng, 0.5f, 1.0f);
    w.norm = make("norm", 1, d.d_inner, rng, 0.1f, 1.0f);
    w.out = make("out", d.n_embd, d.d_inner, rng, 1.0f / std::sqrt(float(d.d_inner)));
    prepare_mamba2(d, w);
  }
  const float* f(const Weight& x) const { return x.f32(); }
  KvShape shape(int64_t n_seq) const {
    KvShape s{1, 64, n_seq, 0, KvType::F32, {AttnKind::none()}, 64};
    s.state_floats = {d.state_floats()};
    return s;
  }
};

// The definition, in double precision, one sequence: x [T, n_embd] -> out [T, n_embd].
std::vector<double> reference(const Mamba2Fixture& fx, const std::vector<float>& x, int64_t T) {
  const Mamba2Dims& d = fx.d;
  const int64_t E = d.n_embd, P = d.in_proj(), CH = d.conv_channels(), DI = d.d_inner, DS = d.d_state;
  const int64_t HD = d.head_dim(), G = d.n_group, K = d.d_conv;
  std::vector<double> proj(size_t(T * P)), xbc(size_t(T * CH)), S(size_t(DI * DS), 0.0), out(size_t(T * E));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t r = 0; r < P; ++r) {
      double acc = 0;
      for (int64_t c = 0; c < E; ++c) acc += double(fx.f(fx.w.in)[r * E + c]) * x[size_t(t * E + c)];
      proj[size_t(t * P + r)] = acc;
    }
  auto silu = [](double v) { return v / (1.0 + std::exp(-v)); };
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < CH; ++c) {
      double acc = fx.f(fx.w.conv_bias)[c];
      for (int64_t k = 0; k < K; ++k) {
        const int64_t src = t - (K - 1) + k;  // tap K-1 is the current token
        if (src >= 0) acc += double(fx.f(fx.w.conv)[c * K + k]) * proj[size_t(src * P + DI + c)];
      }
      xbc[size_t(t * CH + c)] = silu(acc);
    }
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> y(static_cast<size_t>(DI));
    for (int64_t h = 0; h < d.n_head; ++h) {
      const int64_t g = h / (d.n_head / G);
      const double v = proj[size_t(t * P + DI + CH + h)] + fx.f(fx.w.dt_bias)[h];
      const double dt = v > 20 ? v : std::log1p(std::exp(v));
      const double dA = std::exp(dt * fx.f(fx.w.a)[h]);
      for (int64_t i = 0; i < HD; ++i) {
        const double xi = xbc[size_t(t * CH + h * HD + i)];
        double acc = 0;
        for (int64_t s = 0; s < DS; ++s) {
          double& st = S[size_t((h * HD + i) * DS + s)];
          st = st * dA + dt * xi * xbc[size_t(t * CH + DI + g * DS + s)];
          acc += st * xbc[size_t(t * CH + DI + G * DS + g * DS + s)];
        }
        y[size_t(h * HD + i)] = acc + fx.f(fx.w.d)[h] * xi;
      }
    }
    for (int64_t i = 0; i < DI; ++i) y[size_t(i)] *= silu(proj[size_t(t * P + i)]);
    const int64_t gw = DI / G;
    for (int64_t g = 0; g < G; ++g) {
      double ss = 0;
      for (int64_t i = 0; i < gw; ++i) ss += y[size_t(g * gw + i)] * y[size_t(g * gw + i)];
      const double r = 1.0 / std::sqrt(ss / double(gw) + 1e-5);
      for (int64_t i = 0; i < gw; ++i) y[size_t(g * gw + i)] *= r * fx.f(fx.w.norm)[g * gw + i];
    }
    for (int64_t e = 0; e < E; ++e) {
      double acc = 0;
      for (int64_t i = 0; i < DI; ++i) acc += double(fx.f(fx.w.out)[e * DI + i]) * y[size_t(i)];
      out[size_t(t * E + e)] = acc;
    }
  }
  return out;
}

std::vector<float> random_rows(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = nd(rng);
  return x;
}

// Runs tokens [first, first + n) of sequence `seq` (rows of x) as one step.
std::vector<float> run(const Mamba2Fixture& fx, KvCache& cache, const std::vector<float>& x, int64_t seq,
                       int64_t first, int64_t n, ThreadPool& pool) {
  const int64_t E = fx.d.n_embd;
  std::vector<int32_t> s(static_cast<size_t>(n), int32_t(seq)), p(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) p[size_t(i)] = int32_t(first + i);
  std::vector<float> out(size_t(n * E));
  OpScratch ops;
  Mamba2Scratch sc;
  mamba2_mixer(fx.d, fx.w, MatIn(x.data() + first * E), s.data(), p.data(), n, cache, 0, 1e-5f, out.data(), pool,
               ops, sc);
  return out;
}

TEST(Mamba2, MatchesTheDefinition) {
  for (int64_t groups : {1, 2, 8}) {
    Mamba2Fixture fx(groups);
    ThreadPool pool(2);
    const int64_t T = 24, E = fx.d.n_embd;
    const std::vector<float> x = random_rows(T * E, 5);
    KvCache cache(fx.shape(1));
    const std::vector<float> got = run(fx, cache, x, 0, 0, T, pool);
    const std::vector<double> want = reference(fx, x, T);
    double max_err = 0, max_ref = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      max_err = std::max(max_err, std::abs(double(got[i]) - want[i]));
      max_ref = std::max(max_ref, std::abs(want[i]));
    }
    EXPECT_LT(max_err, 2e-5 * std::max(1.0, max_ref)) << "groups " << groups << " max |ref| " << max_ref;
    EXPECT_EQ(cache.state_pos(0), T);
  }
}

TEST(Mamba2, StepsAndInterleavedSequencesAreBitIdentical) {
  Mamba2Fixture fx;
  ThreadPool pool(2);
  const int64_t T = 20, E = fx.d.n_embd;
  const std::vector<float> x = random_rows(T * E, 7);
  KvCache whole(fx.shape(1));
  const std::vector<float> all = run(fx, whole, x, 0, 0, T, pool);
  // The same tokens in steps of 1, 3 and the rest.
  KvCache steps(fx.shape(1));
  std::vector<float> got;
  for (auto [first, n] : {std::pair<int64_t, int64_t>{0, 1}, {1, 3}, {4, T - 4}}) {
    const std::vector<float> part = run(fx, steps, x, 0, first, n, pool);
    got.insert(got.end(), part.begin(), part.end());
  }
  EXPECT_EQ(got, all);
  // Two sequences interleaved in one batch: each as if alone.
  KvCache two(fx.shape(2));
  std::vector<float> xi;
  std::vector<int32_t> s, p;
  for (int64_t t = 0; t < 6; ++t)
    for (int32_t q = 0; q < 2; ++q) {
      xi.insert(xi.end(), x.begin() + t * E, x.begin() + (t + 1) * E);
      s.push_back(q);
      p.push_back(int32_t(t));
    }
  std::vector<float> out(xi.size());
  OpScratch ops;
  Mamba2Scratch sc;
  mamba2_mixer(fx.d, fx.w, MatIn(xi.data()), s.data(), p.data(), 12, two, 0, 1e-5f, out.data(), pool, ops, sc);
  for (int64_t t = 0; t < 6; ++t)
    for (int q = 0; q < 2; ++q)
      for (int64_t e = 0; e < E; ++e)
        ASSERT_EQ(out[size_t((t * 2 + q) * E + e)], all[size_t(t * E + e)]) << "token " << t << " seq " << q;
}

TEST(Mamba2, CheckpointRewindAndForkContinueExactly) {
  Mamba2Fixture fx;
  ThreadPool pool(2);
  const int64_t T = 16, E = fx.d.n_embd;
  const std::vector<float> x = random_rows(T * E, 9);
  KvCache ref(fx.shape(1));
  const std::vector<float> all = run(fx, ref, x, 0, 0, T, pool);
  KvCache c(fx.shape(2));
  (void)run(fx, c, x, 0, 0, 8, pool);
  c.checkpoint(0);
  std::vector<float> wrong = x;  // a "draft" of 4 tokens that will be rejected
  for (float& v : wrong) v = -v;
  (void)run(fx, c, wrong, 0, 8, 4, pool);
  ASSERT_EQ(c.rewind(0, 10), 8);
  c.fork(0, 1);
  const std::vector<float> rest = run(fx, c, x, 1, 8, T - 8, pool);
  EXPECT_EQ(rest, std::vector<float>(all.begin() + 8 * E, all.end()));
}

TEST(Mamba2, DimensionChecks) {
  EXPECT_TRUE((Mamba2Dims{48, 64, 16, 8, 2, 4}.check().ok()));
  EXPECT_FALSE((Mamba2Dims{48, 64, 16, 6, 2, 4}.check().ok())) << "inner size not a multiple of the heads";
  EXPECT_FALSE((Mamba2Dims{48, 64, 16, 8, 3, 4}.check().ok())) << "heads not a multiple of the groups";
  EXPECT_FALSE((Mamba2Dims{48, 64, 16, 8, 2, 0}.check().ok()));
  EXPECT_FALSE((Mamba2Dims{48, 64, 0, 8, 2, 4}.check().ok()));
}

}  // namespace
}  // namespace peregrine
