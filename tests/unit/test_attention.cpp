// Batched causal GQA attention against a direct double-precision evaluation.
#include <gtest/gtest.h>

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
