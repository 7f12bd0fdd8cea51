#include "ops/ops.h"

#include <algorithm>
#include <cmath>

#include "core/status.h"
#include "quant/dequantize.h"

namespace peregrine {

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
