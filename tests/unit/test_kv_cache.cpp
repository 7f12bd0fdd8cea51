// KvCache: K rotated on its way in (rope_store_kv) for rows of any width.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
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

}  // namespace
}  // namespace peregrine
