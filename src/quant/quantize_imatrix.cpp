// Importance-matrix quantizers (quantize_imatrix.h), written from ggml's
// quantize_row_{q4_0,q4_1,q5_0,q5_1,q2_K,q3_K,q4_K,q5_K,q6_K}_impl.
//
// Per type, with w = importance * sqrt(sigma2 + x^2) (see the header):
//   Q4_0 / Q5_0  each block of 32: make_qx_quants (nmax 8 / 16) with weights w; the
//                scale it returns is d (no max-based scale, no second pass).
//   Q4_1 / Q5_1  each block of 32: the affine search (make_qkx3_quants in ggml, the same
//                computation as make_qkx2_quants with weights) with rmin -0.9, rdelta
//                0.05, 36 steps, squared error; d = scale, m = min.
//   Q2_K         sub-blocks of 16: the same affine search for codes 0..3; then the 16
//                scales and the 16 mins are each quantized to 4 bits by make_qp_quants,
//                weighted by the sub-block's summed weight.
//   Q3_K         sub-blocks of 16: make_qx_quants (nmax 4) with weights w; the 16 signed
//                scales quantized to 6 bits by make_qx_quants (nmax 32) weighted by the
//                summed weights.
//   Q4_K / Q5_K  sub-blocks of 32: the affine search (nmax 15 / 31); scales and mins to
//                6 bits by make_qp_quants (nmax 63). Q5_K clips the codes to 63 before
//                packing, Q4_K packs them as they are (as ggml does; they are <= 63
//                unless a scale is negative).
//   Q6_K         sub-blocks of 16: make_qx_quants (nmax 32) weighted by the importance
//                alone, then exactly the reference's max-based 8-bit scales.
// Every K-quant then takes the reference's second pass (quantize_search.h).
//
// make_qp_quants (here only): non-negative x[n] ~ scale * L, L in [0, nmax]. Starts from
// nmax / max, tries the 8 inverse scales (nmax + 0.1 is) / max, is = +-1..+-4, by
// weighted squared error, then up to 5 sweeps of coordinate descent on the weighted
// least-squares fit (as make_q3_quants). Its first codes are not clipped and are stored
// as uint8, so a negative x wraps (ggml's types, kept for bit-identity).
#include "quant/quantize_imatrix.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/status.h"
#include "quant/fp16.h"
#include "quant/quantize_search.h"

namespace peregrine {

using namespace quant_search;

namespace {

// The affine search as ggml's imatrix paths call it (make_qkx3_quants' constants).
constexpr QkxParams kAffineSearch{-0.9f, 0.05f, 36, false};

float sum_squares(const float* x, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return s;
}

// w[n] = importance[i] * sqrt(sigma2 + x[i]^2); returns sum w in index order.
float importance_weights(const float* x, const float* importance, float sigma2, int n, float* w) {
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) w[i] = importance[i] * std::sqrt(sigma2 + x[i] * x[i]);
  for (int i = 0; i < n; ++i) sum += w[i];
  return sum;
}

// ggml's make_qp_quants (see the file comment). Returns the scale; L[n] the codes.
float make_qp_quants(int n, int nmax, const float* x, uint8_t* L, const float* w) {
  float max = 0.0f;
  for (int i = 0; i < n; ++i) max = max > x[i] ? max : x[i];  // NaN wins, as ggml's MAX
  if (max < kGroupMaxEps) {
    std::memset(L, 0, size_t(n));
    return 0.0f;
  }
  float iscale = float(nmax) / max;
  for (int i = 0; i < n; ++i) L[i] = uint8_t(nearest_int(iscale * x[i]));
  const float scale = 1.0f / iscale;
  float best_mse = 0.0f;
  for (int i = 0; i < n; ++i) {
    const float diff = x[i] - scale * float(L[i]);
    best_mse += w[i] * diff * diff;
  }
  for (int is = -4; is <= 4; ++is) {
    if (is == 0) continue;
    const float iscale_is = (0.1f * float(is) + float(nmax)) / max;
    const float scale_is = 1.0f / iscale_is;
    float mse = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = std::min(nmax, nearest_int(iscale_is * x[i]));
      const float diff = x[i] - scale_is * float(l);
      mse += w[i] * diff * diff;
    }
    if (mse < best_mse) {
      best_mse = mse;
      iscale = iscale_is;
    }
  }
  // The sums use the unwrapped code, the descent reads back the stored (wrapped) one.
  float sumlx = 0.0f, suml2 = 0.0f;
  for (int i = 0; i < n; ++i) {
    const int l = std::min(nmax, nearest_int(iscale * x[i]));
    L[i] = uint8_t(l);
    sumlx += w[i] * x[i] * float(l);
    suml2 += w[i] * float(l) * float(l);
  }
  for (int sweep = 0; sweep < 5; ++sweep) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      // The fit without value i; its best code is then x[i] * sl2 / slx.
      float slx = sumlx - w[i] * x[i] * float(L[i]);
      float sl2 = suml2 - w[i] * float(L[i]) * float(L[i]);
      if (!(slx > 0.0f && sl2 > 0.0f)) continue;
      const int new_l = std::min(nmax, nearest_int(x[i] * sl2 / slx));
      if (new_l == int(L[i])) continue;
      slx += w[i] * x[i] * float(new_l);
      sl2 += w[i] * float(new_l) * float(new_l);
      if (slx * slx * suml2 > sumlx * sumlx * sl2) {  // slx^2 / sl2 > sumlx^2 / suml2
        L[i] = uint8_t(new_l);
        sumlx = slx;
        suml2 = sl2;
        ++changed;
      }
    }
    if (changed == 0) break;
  }
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Codes j and j + 16 of a block of 32 share byte j: low and high nibble.
template <typename Code>
void pack_nibbles(const Code* L, uint8_t* qs) {  // L[32] in 0..15 -> qs[16]
  for (int j = 0; j < kQK / 2; ++j) qs[j] = uint8_t(L[j] | (L[j + 16] << 4));
}

// The 32-value types: sigma2 is the mean square of the whole row; then each block is
// quantized on its own with its weights w[32].
template <typename Block, void (*QuantizeBlock)(const float* xb, const float* w, Block& b)>
void quantize_q32_imatrix(const float* x, Block* y, int64_t n_per_row, const float* importance) {
  PG_ASSERT(n_per_row % kQK == 0 && importance != nullptr);
  const float sigma2 = sum_squares(x, n_per_row) / float(n_per_row);
  float w[kQK];
  for (int64_t ib = 0; ib < n_per_row / kQK; ++ib) {
    importance_weights(x + kQK * ib, importance + kQK * ib, sigma2, kQK, w);
    QuantizeBlock(x + kQK * ib, w, y[ib]);
  }
}

// Q4_0 / Q5_0: the weighted symmetric search; its scale is d.
void q4_0_block(const float* xb, const float* w, BlockQ4_0& b) {
  int8_t L[kQK];
  b.d = f32_to_fp16(make_qx_quants(kQK, 8, xb, w, L));
  pack_nibbles(L, b.qs);
}
void q5_0_block(const float* xb, const float* w, BlockQ5_0& b) {
  int8_t L[kQK];
  b.d = f32_to_fp16(make_qx_quants(kQK, 16, xb, w, L));
  pack_5bit(L, b.qs, b.qh);
}

// Q4_1 / Q5_1: the weighted affine search; its scale is d, its min m.
void q4_1_block(const float* xb, const float* w, BlockQ4_1& b) {
  uint8_t L[kQK];
  float neg_min;
  b.d = f32_to_fp16(make_qkx2_quants(kQK, 15, xb, w, L, &neg_min, kAffineSearch));
  b.m = f32_to_fp16(-neg_min);
  pack_nibbles(L, b.qs);
}
void q5_1_block(const float* xb, const float* w, BlockQ5_1& b) {
  uint8_t L[kQK];
  float neg_min;
  b.d = f32_to_fp16(make_qkx2_quants(kQK, 31, xb, w, L, &neg_min, kAffineSearch));
  b.m = f32_to_fp16(-neg_min);
  pack_5bit(L, b.qs, b.qh);
}

// Q4_K and Q5_K, which differ in the code range, the clip of the scale codes and the
// packing: affine search per sub-block of 32, then scales and mins to 6-bit codes by
// make_qp_quants weighted by the sub-blocks' summed weights, then the second pass.
template <typename Block, void (*Finish)(const float*, uint8_t*, Block&)>
void quantize_k4_imatrix(const float* x, Block* y, int64_t n_per_row, const float* importance, int nmax,
                         bool clip_scale_codes) {
  PG_ASSERT(n_per_row % kQK_K == 0 && importance != nullptr);
  uint8_t L[kQK_K];
  for (int64_t i = 0; i < n_per_row / kQK_K; ++i, x += kQK_K, importance += kQK_K) {
    const float sigma2 = 2.0f * sum_squares(x, kQK_K) / float(kQK_K);
    float scales[8], mins[8], sw[8], w[32];
    for (int k = 0; k < 8; ++k) {
      sw[k] = importance_weights(x + 32 * k, importance + 32 * k, sigma2, 32, w);
      scales[k] = make_qkx2_quants(32, nmax, x + 32 * k, w, L + 32 * k, &mins[k], kAffineSearch);
    }
    uint8_t ls[8], lm[8];
    const float d = make_qp_quants(8, 63, scales, ls, sw);
    const float dmin = make_qp_quants(8, 63, mins, lm, sw);
    if (clip_scale_codes) {
      for (int k = 0; k < 8; ++k) {
        ls[k] = std::min<uint8_t>(63, ls[k]);
        lm[k] = std::min<uint8_t>(63, lm[k]);
      }
    }
    pack_k4_scales(ls, lm, y[i].scales);
    y[i].d = f32_to_fp16(d);
    y[i].dmin = f32_to_fp16(dmin);
    Finish(x, L, y[i]);
  }
}

}  // namespace

void quantize_row_q4_0_imatrix(const float* x, BlockQ4_0* y, int64_t n_per_row, const float* importance) {
  quantize_q32_imatrix<BlockQ4_0, q4_0_block>(x, y, n_per_row, importance);
}

void quantize_row_q4_1_imatrix(const float* x, BlockQ4_1* y, int64_t n_per_row, const float* importance) {
  quantize_q32_imatrix<BlockQ4_1, q4_1_block>(x, y, n_per_row, importance);
}

void quantize_row_q5_0_imatrix(const float* x, BlockQ5_0* y, int64_t n_per_row, const float* importance) {
  quantize_q32_imatrix<BlockQ5_0, q5_0_block>(x, y, n_per_row, importance);
}

void quantize_row_q5_1_imatrix(const float* x, BlockQ5_1* y, int64_t n_per_row, const float* importance) {
  quantize_q32_imatrix<BlockQ5_1, q5_1_block>(x, y, n_per_row, importance);
}

void quantize_row_q2_k_imatrix(const float* x, BlockQ2K* y, int64_t n_per_row, const float* importance) {
  PG_ASSERT(n_per_row % kQK_K == 0 && importance != nullptr);
  uint8_t L[kQK_K];
  for (int64_t i = 0; i < n_per_row / kQK_K; ++i, x += kQK_K, importance += kQK_K) {
    BlockQ2K& b = y[i];
    const float sigma2 = sum_squares(x, kQK_K) / float(kQK_K);
    float scales[16], mins[16], sw[16], w[16];
    for (int j = 0; j < 16; ++j) {
      sw[j] = importance_weights(x + 16 * j, importance + 16 * j, sigma2, 16, w);
      scales[j] = make_qkx2_quants(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], kAffineSearch);
    }
    uint8_t ls[16], lm[16];
    b.d = f32_to_fp16(make_qp_quants(16, 15, scales, ls, sw));
    b.dmin = f32_to_fp16(make_qp_quants(16, 15, mins, lm, sw));
    for (int j = 0; j < 16; ++j) b.scales[j] = uint8_t(ls[j] | (lm[j] << 4));
    finish_q2_k(x, L, b);
  }
}

void quantize_row_q3_k_imatrix(const float* x, BlockQ3K* y, int64_t n_per_row, const float* importance) {
  PG_ASSERT(n_per_row % kQK_K == 0 && importance != nullptr);
  int8_t L[kQK_K];
  for (int64_t i = 0; i < n_per_row / kQK_K; ++i, x += kQK_K, importance += kQK_K) {
    BlockQ3K& b = y[i];
    const float sigma2 = 2.0f * sum_squares(x, kQK_K) / float(kQK_K);
    float scales[16], sw[16], w[16];
    for (int j = 0; j < 16; ++j) {
      sw[j] = importance_weights(x + 16 * j, importance + 16 * j, sigma2, 16, w);
      scales[j] = make_qx_quants(16, 4, x + 16 * j, w, L + 16 * j);
    }
    int8_t ls[16];  // scale + 32, 0..63
    const float d = make_qx_quants(16, 32, scales, sw, ls);
    int codes[16];
    for (int j = 0; j < 16; ++j) codes[j] = ls[j];
    pack_q3_k_scales(codes, b.scales);
    b.d = f32_to_fp16(d);
    finish_q3_k(x, L, b);
  }
}

void quantize_row_q4_k_imatrix(const float* x, BlockQ4K* y, int64_t n_per_row, const float* importance) {
  quantize_k4_imatrix<BlockQ4K, finish_q4_k>(x, y, n_per_row, importance, 15, false);
}

void quantize_row_q5_k_imatrix(const float* x, BlockQ5K* y, int64_t n_per_row, const float* importance) {
  quantize_k4_imatrix<BlockQ5K, finish_q5_k>(x, y, n_per_row, importance, 31, true);
}

void quantize_row_q6_k_imatrix(const float* x, BlockQ6K* y, int64_t n_per_row, const float* importance) {
  PG_ASSERT(n_per_row % kQK_K == 0 && importance != nullptr);
  int8_t L[kQK_K];
  for (int64_t i = 0; i < n_per_row / kQK_K; ++i, x += kQK_K, importance += kQK_K) {
    float scales[16];
    for (int j = 0; j < 16; ++j) scales[j] = make_qx_quants(16, 32, x + 16 * j, importance + 16 * j, L + 16 * j);
    finish_q6_k(x, scales, L, y[i]);
  }
}


}  // namespace peregrine
