#include "ops/ops.h"

#include <algorithm>
#include <cmath>

#include "core/status.h"
#include "ops/rope_scaling.h"
#include "quant/dequantize.h"

namespace peregrine {

float rms_scale(const float* x, int64_t n, float eps) {
  double ss = 0.0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  return 1.0f / std::sqrt(float(ss / double(n)) + eps);
}

void rmsnorm(const float* x, const float* weight, float* y, int64_t n_tok, int64_t n, float eps) {
  for (int64_t t = 0; t < n_tok; ++t) {
    const float* xr = x + t * n;
    float* yr = y + t * n;
    const float scale = rms_scale(xr, n, eps);
    for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * scale * weight[i];
  }
}

void relu_sqr(float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float r = x[i] > 0.0f ? x[i] : 0.0f;
    x[i] = r * r;
  }
}

void rope_angles(const int32_t* pos, int64_t n_tok, int64_t rot_dim, float base,
                 std::vector<float>& cs, float pos_scale) {
  RopeFreqs f;
  f.rot_dim = rot_dim;
  f.base = base;
  if (pos_scale != 1.0f) {
    f.scaling = RopeFreqs::Scaling::Linear;
    f.factor = pos_scale;
  }
  rope_angles(pos, n_tok, f, cs);
}

namespace {

// One head's rotated pairs: out may alias x.
inline void rotate_head(const float* x, const float* cs, int64_t rot_dim, int64_t head_dim,
                        RopeStyle style, float* out) {
  const int64_t half = rot_dim / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float c = cs[2 * i], s = cs[2 * i + 1];
    const int64_t ia = style == RopeStyle::Adjacent ? 2 * i : i;
    const int64_t ib = style == RopeStyle::Adjacent ? 2 * i + 1 : i + half;
    const float a = x[ia], b = x[ib];
    out[ia] = a * c - b * s;
    out[ib] = a * s + b * c;
  }
  if (out != x) std::copy(x + rot_dim, x + head_dim, out + rot_dim);
}

}  // namespace

void rope_apply(float* x, const float* cs, int64_t n_tok, int64_t n_heads, int64_t head_dim,
                int64_t rot_dim, RopeStyle style) {
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * head_dim;
      rotate_head(v, cs + t * rot_dim, rot_dim, head_dim, style, v);
    }
}

void rope_store_kv(KvCache& cache, int64_t layer, const int32_t* seq, const int32_t* pos,
                   const float* k, const float* v, const float* cs, int64_t n_tok,
                   int64_t n_heads_kv, int64_t head_dim, int64_t rot_dim, RopeStyle style) {
  const int64_t kv_dim = n_heads_kv * head_dim;
  // One rotated K row [kv_dim]: any width the loader accepts, grown once per thread, so the
  // decode loop allocates nothing.
  thread_local std::vector<float> scratch;
  if (scratch.size() < size_t(kv_dim)) scratch.resize(size_t(kv_dim));
  float* rotated = scratch.data();
  for (int64_t t = 0; t < n_tok; ++t) {
    for (int64_t h = 0; h < n_heads_kv; ++h)
      rotate_head(k + t * kv_dim + h * head_dim, cs + t * rot_dim, rot_dim, head_dim, style,
                  rotated + h * head_dim);
    cache.store(layer, seq[t], pos[t], rotated, v + t * kv_dim);
  }
}

void rmsnorm_heads(float* x, const float* weight, int64_t n_tok, int64_t n_heads,
                   int64_t head_dim, float eps) {
  rmsnorm(x, weight, x, n_tok * n_heads, head_dim, eps);  // heads are rows of head_dim
}

void embed_rows(const Weight& w, const int32_t* tokens, int64_t n_tok, float* out) {
  for (int64_t t = 0; t < n_tok; ++t)
    dequantize_row(w.type, w.row(tokens[t]), out + t * w.cols, w.cols);
}

}  // namespace peregrine
