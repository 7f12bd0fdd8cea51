#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <iterator>
#include <vector>

#include "kernels/kernels.h"

namespace peregrine {

void attention(const float* q, const int32_t* pos, const int32_t* seq, int64_t n_tok,
               const KvCache& cache, int64_t layer, const AttentionShape& s, float* out,
               ThreadPool& pool) {
  const KernelTable& k = kernels();
  const KernelTable& ref = scalar_kernels();
  const int64_t hd = s.head_dim, group = s.n_head / s.n_head_kv, kv_dim = s.n_head_kv * hd;
  const bool simd = hd % k.attn_hd_multiple == 0;
  const KernelTable::Attend16 attend_f16 = simd && k.attend_f16 ? k.attend_f16 : ref.attend_f16;
  const KernelTable::Attend32 attend_f32 = simd && k.attend_f32 ? k.attend_f32 : ref.attend_f32;
  const bool f16 = cache.type() == KvType::F16;
  // One task per (token, KV head): the query heads of a GQA group read each K and V
  // row once between them.
  pool.parallel_for(n_tok * s.n_head_kv, [&](int64_t task, int) {
    const int64_t t = task / s.n_head_kv, hk = task % s.n_head_kv;
    const int64_t n = int64_t(pos[t]) + 1;
    for (int64_t h0 = 0; h0 < group; h0 += kAttnMaxQ) {
      const int64_t nq = std::min(kAttnMaxQ, group - h0);
      const int64_t head = hk * group + h0;
      const float* qh = q + (t * s.n_head + head) * hd;  // [nq, hd]
      float qs[kAttnMaxQ * 256];
      std::vector<float> q_big;  // head_dim > 256: rare, allowed to allocate
      float* qscaled = qs;
      if (nq * hd > int64_t(std::size(qs))) {
        q_big.resize(size_t(nq * hd));
        qscaled = q_big.data();
      }
      for (int64_t i = 0; i < nq * hd; ++i) qscaled[i] = qh[i] * s.scale;
      float* o = out + (t * s.n_head + head) * hd;
      if (f16) {
        const auto* kr = static_cast<const uint16_t*>(cache.k(layer, seq[t], 0)) + hk * hd;
        const auto* vr = static_cast<const uint16_t*>(cache.v(layer, seq[t], 0)) + hk * hd;
        attend_f16(qscaled, nq, hd, kr, vr, kv_dim, n, o);
      } else {
        const auto* kr = static_cast<const float*>(cache.k(layer, seq[t], 0)) + hk * hd;
        const auto* vr = static_cast<const float*>(cache.v(layer, seq[t], 0)) + hk * hd;
        attend_f32(qscaled, nq, hd, kr, vr, kv_dim, n, o);
      }
    }
  });
}

}  // namespace peregrine
