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

void prepare_mamba2(const Mamba2Dims& dm, Mamba2Weights& w) {
  const int64_t CH = dm.conv_channels(), K = dm.d_conv;
  w.conv_by_tap.assign(size_t(K * CH), 0.0f);
  for (int64_t c = 0; c < CH; ++c)
    for (int64_t k = 0; k < K; ++k) w.conv_by_tap[size_t(k * CH + c)] = w.conv.f32()[c * K + k];
}

void mamba2_mixer(const Mamba2Dims& dm, const Mamba2Weights& w, MatIn in, const int32_t* seq, const int32_t* pos,
                  int64_t T, KvCache& cache, int64_t layer, float norm_eps, float* out, ThreadPool& pool,
                  OpScratch& ops, Mamba2Scratch& sc) {
  const int64_t P = dm.in_proj(), CH = dm.conv_channels(), DI = dm.d_inner, DS = dm.d_state, K = dm.d_conv;
  const int64_t HD = dm.head_dim(), heads_per_group = dm.n_head / dm.n_group, G = dm.n_group;
  PG_ASSERT(int64_t(w.conv_by_tap.size()) == K * CH);  // prepare_mamba2
  sc.proj.resize(size_t(T * P));
  sc.xbc.resize(size_t(T * CH));
  sc.y.resize(size_t(T * DI));
  float *proj = sc.proj.data(), *xbc = sc.xbc.data(), *y = sc.y.data();
  matmul_many({{&w.in, proj}}, in, T, pool, ops);  // proj [T, P]: z | xBC | dt

  // Causal conv over each sequence's last K inputs (tokens in batch order), then SiLU: xbc
  // [T, CH]. Per channel: acc = 0, + window row k * tap k for k < K - 1, + x * tap K - 1, + bias;
  // channels are independent, so a thread takes a range of them and the rows stay contiguous.
  // The window (state rows [K-1, CH]) slides as it goes.
  const float* taps = w.conv_by_tap.data();  // [K, CH]
  const float* cb = w.conv_bias.data ? w.conv_bias.f32() : nullptr;
  pool.parallel_range(CH, 256, [&](int64_t c0, int64_t c1, int) {
    const int64_t n = c1 - c0;
    for (int64_t t = 0; t < T; ++t) {
      float* win = cache.state(layer, seq[t]) + c0;  // row k at win + k * CH
      const float* xt = proj + t * P + DI + c0;
      float* o = xbc + t * CH + c0;
      for (int64_t c = 0; c < n; ++c) o[c] = 0.0f;
      for (int64_t k = 0; k < K - 1; ++k) {
        const float *wk = win + k * CH, *tk = taps + k * CH + c0;
        for (int64_t c = 0; c < n; ++c) o[c] += wk[c] * tk[c];
      }
      const float* tl = taps + (K - 1) * CH + c0;
      for (int64_t c = 0; c < n; ++c) o[c] += xt[c] * tl[c];
      for (int64_t k = 0; k + 1 < K - 1; ++k) std::copy_n(win + (k + 1) * CH, n, win + k * CH);
      if (K > 1) std::copy_n(xt, n, win + (K - 2) * CH);
      if (cb)
        for (int64_t c = 0; c < n; ++c) o[c] += cb[c0 + c];
      for (int64_t c = 0; c < n; ++c) o[c] = silu(o[c]);
    }
  });

  // The scan, head by head over runs of one sequence's consecutive tokens: y [T, DI] = S C + D x.
  const KernelTable& kt = DS % 16 == 0 ? kernels() : scalar_kernels();
  const float *dt_bias = w.dt_bias.f32(), *A = w.a.f32(), *D = w.d.f32();
  pool.parallel_for(dm.n_head, [&](int64_t h, int) {
    const int64_t g = h / heads_per_group;
    thread_local std::vector<float> dts;  // [T] dt, then [T] exp(dt A)
    if (dts.size() < size_t(2 * T)) dts.resize(size_t(2 * T));
    float *dt = dts.data(), *dA = dt + T;
    for (int64_t t = 0; t < T; ++t) {
      dt[t] = softplus(proj[t * P + DI + CH + h] + dt_bias[h]);
      dA[t] = std::exp(dt[t] * A[h]);
    }
    for (int64_t t0 = 0; t0 < T;) {
      int64_t t1 = t0 + 1;
      while (t1 < T && seq[t1] == seq[t0]) ++t1;
      float* S = cache.state(layer, seq[t0]) + dm.conv_state() + h * HD * DS;
      const float* xt = xbc + t0 * CH;
      kt.ssm_scan(S, xt + h * HD, xt + DI + g * DS, xt + DI + G * DS + g * DS, CH, dt + t0, dA + t0, D[h], HD, DS,
                  t1 - t0, y + t0 * DI + h * HD, DI);
      t0 = t1;
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
