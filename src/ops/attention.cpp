#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/kernels.h"

namespace peregrine {

void attention(const float* q, const int32_t* pos, const int32_t* seq, int64_t n_tok,
               const KvCache& cache, int64_t layer, const AttentionShape& s, float* out,
               ThreadPool& pool) {
  const KernelTable& k = kernels();
  const int64_t hd = s.head_dim, group = s.n_head / s.n_head_kv;
  const int64_t kv_dim = s.n_head_kv * hd;
  // One score buffer per thread, sized for the longest context.
  thread_local std::vector<float> scores;
  pool.parallel_for(n_tok * s.n_head, [&](int64_t task, int) {
    const int64_t t = task / s.n_head, h = task % s.n_head, hk = h / group;
    const int64_t n_pos = int64_t(pos[t]) + 1;
    if (int64_t(scores.size()) < n_pos) scores.resize(size_t(n_pos));
    const float* qh = q + (t * s.n_head + h) * hd;
    const float* k0 = cache.k(layer, seq[t], 0) + hk * hd;
    const float* v0 = cache.v(layer, seq[t], 0) + hk * hd;
    float mx = -INFINITY;
    for (int64_t j = 0; j < n_pos; ++j) {
      scores[j] = k.dot_f32(k0 + j * kv_dim, qh, hd) * s.scale;
      mx = std::max(mx, scores[j]);
    }
    double sum = 0.0;
    for (int64_t j = 0; j < n_pos; ++j) {
      scores[j] = std::exp(scores[j] - mx);
      sum += scores[j];
    }
    float* o = out + (t * s.n_head + h) * hd;
    std::fill(o, o + hd, 0.0f);
    const float inv = float(1.0 / sum);
    for (int64_t j = 0; j < n_pos; ++j) k.axpy_f32(scores[j] * inv, v0 + j * kv_dim, o, hd);
  });
}

}  // namespace peregrine
