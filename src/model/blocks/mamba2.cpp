#include "model/blocks/mamba2.h"

#include <algorithm>
#include <cmath>

#include "kernels/kernels.h"
#include "ops/ops.h"

namespace peregrine {
namespace {

float silu(float v) { return v / (1.0f + std::exp(-v)); }

}  // namespace

Status Mamba2Dims::check() const {
  if (d_inner < 1 || d_state < 1 || n_head < 1 || n_group < 1 || d_conv < 1)
    return make_error("ssm dimensions must be positive (inner_size {}, state_size {}, time_step_rank {}, "
                      "group_count {}, conv_kernel {})", d_inner, d_state, n_head, n_group, d_conv);
  if (d_inner > (1 << 16) || d_state > 1024 || n_head > 4096 || d_conv > 64)
    return make_error("ssm dimensions are out of range (inner_size {}, state_size {}, time_step_rank {}, "
                      "conv_kernel {})", d_inner, d_state, n_head, d_conv);
  if (d_inner % n_head != 0)
    return make_error("ssm.inner_size {} is not a multiple of ssm.time_step_rank {} (the heads)", d_inner, n_head);
  if (n_head % n_group != 0)
    return make_error("ssm.time_step_rank {} (heads) is not a multiple of ssm.group_count {}", n_head, n_group);
  return Status::Ok();
}

void mamba2_scan_head(float* S, const float* x, const float* B, const float* C, float dt, float A, float D,
                      int64_t head_dim, int64_t d_state, float* y) {
  const KernelTable& k = d_state % 16 == 0 ? kernels() : scalar_kernels();
  k.ssm_scan(S, x, B, C, dt, std::exp(dt * A), D, head_dim, d_state, y);
}

void mamba2_mixer(const Mamba2Dims& dm, const Mamba2Weights& w, MatIn in, const int32_t* seq, const int32_t* pos,
                  int64_t T, KvCache& cache, int64_t layer, float norm_eps, float* out, ThreadPool& pool,
                  OpScratch& ops, Mamba2Scratch& sc) {
  const int64_t P = dm.in_proj(), CH = dm.conv_channels(), DI = dm.d_inner, DS = dm.d_state, K = dm.d_conv;
  const int64_t HD = dm.head_dim(), heads_per_group = dm.n_head / dm.n_group, G = dm.n_group;
  sc.proj.resize(size_t(T * P));
  sc.xbc.resize(size_t(T * CH));
  sc.y.resize(size_t(T * DI));
  float *proj = sc.proj.data(), *xbc = sc.xbc.data(), *y = sc.y.data();
  matmul_many({{&w.in, proj}}, in, T, pool, ops);  // proj [T, P]: z | xBC | dt

  // Causal conv over each sequence's last K inputs, channel by channel (tokens in batch
  // order), then SiLU: xbc [T, CH]. The window (state rows [K-1, CH]) slides as it goes.
  const float* cw = w.conv.f32();  // [CH, K]
  const float* cb = w.conv_bias.data ? w.conv_bias.f32() : nullptr;
  pool.parallel_range(CH, 64, [&](int64_t c0, int64_t c1, int) {
    for (int64_t t = 0; t < T; ++t) {
      float* win = cache.state(layer, seq[t]);  // [K-1, CH]
      const float* xt = proj + t * P + DI;
      for (int64_t c = c0; c < c1; ++c) {
        const float* wc = cw + c * K;
        float acc = 0.0f;
        for (int64_t k = 0; k < K - 1; ++k) acc += win[k * CH + c] * wc[k];
        acc += xt[c] * wc[K - 1];
        for (int64_t k = 0; k + 1 < K - 1; ++k) win[k * CH + c] = win[(k + 1) * CH + c];
        if (K > 1) win[(K - 2) * CH + c] = xt[c];
        if (cb) acc += cb[c];
        xbc[t * CH + c] = silu(acc);
      }
    }
  });

  // The scan, head by head (tokens in batch order): y [T, DI] = S C + D x.
  const float *dt_bias = w.dt_bias.f32(), *A = w.a.f32(), *D = w.d.f32();
  pool.parallel_for(dm.n_head, [&](int64_t h, int) {
    const int64_t g = h / heads_per_group;
    for (int64_t t = 0; t < T; ++t) {
      float* S = cache.state(layer, seq[t]) + dm.conv_state() + h * HD * DS;
      const float* xt = xbc + t * CH;
      const float dt = softplus(proj[t * P + DI + CH + h] + dt_bias[h]);
      mamba2_scan_head(S, xt + h * HD, xt + DI + g * DS, xt + DI + G * DS + g * DS, dt, A[h], D[h], HD, DS,
                       y + t * DI + h * HD);
    }
  });

  // Gate with SiLU(z), then RMSNorm over each group of DI / G values.
  const float* nw = w.norm.f32();
  const int64_t gw = DI / G;
  pool.parallel_range(T, 4, [&](int64_t t0, int64_t t1, int) {
    for (int64_t t = t0; t < t1; ++t) {
      float* yt = y + t * DI;
      const float* z = proj + t * P;
      for (int64_t i = 0; i < DI; ++i) yt[i] *= silu(z[i]);
      for (int64_t g = 0; g < G; ++g) rmsnorm(yt + g * gw, nw + g * gw, yt + g * gw, 1, gw, norm_eps);
    }
  });
  for (int64_t t = 0; t < T; ++t) cache.state_advanced(layer, seq[t], pos[t] + 1);
  matmul(w.out, y, out, T, pool, ops);  // out [T, n_embd]
}

}  // namespace peregrine
