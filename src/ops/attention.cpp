#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels.h"

namespace peregrine {
namespace {

// Positions per tile: the scores of one tile live on the stack; the running max,
// sum and output are rescaled between tiles (online softmax, as in FlashAttention),
// so no score row or matrix is ever materialised.
constexpr int64_t kTile = 64;

}  // namespace

void attention(const float* q, const int32_t* pos, const int32_t* seq, int64_t n_tok,
               const KvCache& cache, int64_t layer, const AttentionShape& s, float* out,
               ThreadPool& pool) {
  const KernelTable& k = kernels();
  const int64_t hd = s.head_dim, group = s.n_head / s.n_head_kv;
  const bool f16 = cache.type() == KvType::F16;
  const size_t row_bytes = size_t(s.n_head_kv * hd) * cache.shape().elem_bytes();
  const size_t head_bytes = size_t(hd) * cache.shape().elem_bytes();
  pool.parallel_for(n_tok * s.n_head, [&](int64_t task, int) {
    const int64_t t = task / s.n_head, h = task % s.n_head, hk = h / group;
    const int64_t n_pos = int64_t(pos[t]) + 1;
    const float* qh = q + (t * s.n_head + h) * hd;
    // K/V rows of this KV head, one position after another.
    const auto* k0 = static_cast<const uint8_t*>(cache.k(layer, seq[t], 0)) + size_t(hk) * head_bytes;
    const auto* v0 = static_cast<const uint8_t*>(cache.v(layer, seq[t], 0)) + size_t(hk) * head_bytes;
    float* o = out + (t * s.n_head + h) * hd;
    std::fill(o, o + hd, 0.0f);
    float m = -INFINITY, l = 0.0f;
    float sc[kTile];
    for (int64_t j0 = 0; j0 < n_pos; j0 += kTile) {
      const int64_t n = std::min(kTile, n_pos - j0);
      float tile_max = -INFINITY;
      for (int64_t j = 0; j < n; ++j) {
        const uint8_t* kr = k0 + size_t(j0 + j) * row_bytes;
        sc[j] = (f16 ? k.dot_f16(reinterpret_cast<const uint16_t*>(kr), qh, hd)
                     : k.dot_f32(reinterpret_cast<const float*>(kr), qh, hd)) * s.scale;
        tile_max = std::max(tile_max, sc[j]);
      }
      const float m_new = std::max(m, tile_max);
      const float correction = std::exp(m - m_new);  // 0 on the first tile
      if (correction != 1.0f) {
        for (int64_t i = 0; i < hd; ++i) o[i] *= correction;
        l *= correction;
      }
      for (int64_t j = 0; j < n; ++j) {
        const float p = std::exp(sc[j] - m_new);
        l += p;
        const uint8_t* vr = v0 + size_t(j0 + j) * row_bytes;
        if (f16) k.axpy_f16(p, reinterpret_cast<const uint16_t*>(vr), o, hd);
        else k.axpy_f32(p, reinterpret_cast<const float*>(vr), o, hd);
      }
      m = m_new;
    }
    const float inv = 1.0f / l;
    for (int64_t i = 0; i < hd; ++i) o[i] *= inv;
  });
}

}  // namespace peregrine
