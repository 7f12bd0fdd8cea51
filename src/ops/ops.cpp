#include "ops/ops.h"

#include <algorithm>
#include <cmath>

#include "core/status.h"
#include "kernels/kernels.h"
#include "quant/dequantize.h"

namespace peregrine {

void matmul(const Weight& w, const float* x, float* y, int64_t n_tok, ThreadPool& pool,
            OpScratch& scratch) {
  const KernelTable& k = kernels();
  const int64_t n_in = w.cols, n_out = w.rows;
  const bool quantized = w.type == GgmlType::Q4_0 || w.type == GgmlType::Q4_1 ||
                         w.type == GgmlType::Q8_0;
  const int64_t nb = n_in / kQK;
  if (quantized) {
    scratch.xq.resize(size_t(n_tok * nb));
    BlockQ8Act* xq = scratch.xq.data();
    pool.parallel_range(n_tok, 1, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) k.quantize_q8(x + t * n_in, xq + t * nb, n_in);
    });
  }
  const BlockQ8Act* xq = scratch.xq.data();
  // Rows in chunks of 16 keep a chunk of weights hot in L1/L2 while all tokens pass.
  pool.parallel_range(n_out, 16, [&](int64_t r0, int64_t r1, int) {
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* wr = w.row(r);
      float* yr = y + r;  // column r of y [n_tok, n_out]
      switch (w.type) {
        case GgmlType::Q4_0: k.dot_q4_0(wr, nb, xq, n_tok, yr, n_out); break;
        case GgmlType::Q4_1: k.dot_q4_1(wr, nb, xq, n_tok, yr, n_out); break;
        case GgmlType::Q8_0: k.dot_q8_0(wr, nb, xq, n_tok, yr, n_out); break;
        case GgmlType::F32:
          for (int64_t t = 0; t < n_tok; ++t)
            yr[t * n_out] = k.dot_f32(reinterpret_cast<const float*>(wr), x + t * n_in, n_in);
          break;
        case GgmlType::F16:
          for (int64_t t = 0; t < n_tok; ++t)
            yr[t * n_out] = k.dot_f16(reinterpret_cast<const uint16_t*>(wr), x + t * n_in, n_in);
          break;
        case GgmlType::BF16:
          for (int64_t t = 0; t < n_tok; ++t)
            yr[t * n_out] = k.dot_bf16(reinterpret_cast<const uint16_t*>(wr), x + t * n_in, n_in);
          break;
        default: PG_ASSERT(false && "matmul: unsupported weight type");
      }
    }
  });
}

void rmsnorm(const float* x, const float* weight, float* y, int64_t n_tok, int64_t n, float eps) {
  for (int64_t t = 0; t < n_tok; ++t) {
    const float* xr = x + t * n;
    float* yr = y + t * n;
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += double(xr[i]) * xr[i];
    float scale = 1.0f / std::sqrt(float(ss / double(n)) + eps);
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * weight[i];
  }
}

void rope_adjacent(float* x, const int32_t* pos, int64_t n_tok, int64_t n_heads,
                   int64_t head_dim, int64_t rot_dim, float base) {
  for (int64_t t = 0; t < n_tok; ++t) {
    for (int64_t i = 0; i < rot_dim; i += 2) {
      // Angles in double: positions reach 1e5+ and float loses the phase.
      double theta = double(pos[t]) * std::pow(double(base), -double(i) / double(rot_dim));
      float c = float(std::cos(theta)), s = float(std::sin(theta));
      for (int64_t h = 0; h < n_heads; ++h) {
        float* v = x + (t * n_heads + h) * head_dim + i;
        float a = v[0], b = v[1];
        v[0] = a * c - b * s;
        v[1] = a * s + b * c;
      }
    }
  }
}

void swiglu(float* g, const float* u, int64_t n) {
  for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void embed_rows(const Weight& w, const int32_t* tokens, int64_t n_tok, float* out) {
  for (int64_t t = 0; t < n_tok; ++t)
    dequantize_row(w.type, w.row(tokens[t]), out + t * w.cols, w.cols);
}

}  // namespace peregrine
