// Reference quantizers of the K-quants (quantize.h), bit-identical to ggml's
// quantize_row_q{2..6}_K_ref and quantize_row_q8_K_ref. Layouts are in kquants.h.
// Also defines the searches and second passes that quantize_imatrix.cpp shares
// (quantize_search.h).
//
// Every K-quant works in two passes per 256-value super-block:
//   1. Search: each sub-block (16 or 32 values) gets its own best float scale (and, for
//      the affine types Q2_K / Q4_K / Q5_K, a min) from a small least-squares search.
//   2. Requantize: the sub-block scales are themselves quantized to 4-8 bit integers
//      against one fp16 super-block scale d (and dmin), and every value is rounded again
//      against the scale it will actually be decoded with, d * sc (and dmin * m).
// A sub-block whose decoded scale is 0 keeps its pass-1 codes.
//
// The searches (ggml's names):
//   make_qx_quants  (Q6_K)  symmetric; tries 19 candidate inverse scales around nmax / max
//                           and keeps the one that maximises (sum w x l)^2 / sum w l^2,
//                           the least-squares fit of x by scale * l with weights w = x^2
//                           (or the caller's weights, for the importance-matrix path).
//   make_q3_quants  (Q3_K)  symmetric; starts from nmax / max, then up to 5 sweeps of
//                           coordinate descent: each code in turn moves to the value that
//                           is best given the others, if that improves the fit.
//   make_qkx2_quants (Q2_K, Q4_K, Q5_K) affine x ~ scale * l + min with min <= 0; tries
//                           nstep + 1 inverse scales (rmin + rdelta * is + nmax) / (max - min),
//                           solves the weighted 2x2 least-squares problem for (scale, min)
//                           for each set of codes and keeps the lowest weighted error
//                           (absolute error for Q2_K, squared for Q4_K / Q5_K).
// Float order matters for bit-identity: sums accumulate in index order, products group
// left to right as written in ggml (w * x * l is (w * x) * l), integers convert to float
// where ggml's C does, and no multiply-add is fused (-ffp-contract=off).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/status.h"
#include "quant/fp16.h"
#include "quant/quantize.h"  // declares these (quantize.cpp has the other types)
#include "quant/quantize_search.h"

namespace peregrine {
namespace quant_search {
namespace {

// The signed value of largest magnitude in x[n] and its magnitude; the first on a tie.
struct SignedMax {
  float max, amax;
};
SignedMax signed_max(const float* x, int n) {
  SignedMax r{0.0f, 0.0f};
  for (int i = 0; i < n; ++i) {
    const float ax = std::fabs(x[i]);
    if (ax > r.amax) {
      r.amax = ax;
      r.max = x[i];
    }
  }
  return r;
}

// ---- the scale searches ----------------------------------------------------------------

// Shared by the two symmetric searches: codes l = round(iscale * x) clipped to
// [-nmax, nmax - 1] (written to L, unbiased, when L is given) and the least-squares fit
// of x by scale * l with weights w, or x^2 when w is null (ggml's rmse_type 1):
// sum w x l and sum w l^2.
struct Fit {
  float sumlx, suml2;
};
Fit symmetric_fit(int n, int nmax, const float* x, const float* w, float iscale, int8_t* L) {
  Fit f{0.0f, 0.0f};
  for (int i = 0; i < n; ++i) {
    const int l = clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1);
    if (L != nullptr) L[i] = int8_t(l);
    const float wi = w != nullptr ? w[i] : x[i] * x[i];
    f.sumlx += wi * x[i] * float(l);
    f.suml2 += wi * float(l) * float(l);
  }
  return f;
}

// The value of largest magnitude, which the first guess maps to code -nmax; 0 (with L
// zeroed) when the sub-block is all zero for practical purposes.
float symmetric_start(int n, const float* x, int8_t* L) {
  const SignedMax sm = signed_max(x, n);
  if (sm.amax >= kGroupMaxEps) return sm.max;
  for (int i = 0; i < n; ++i) L[i] = 0;
  return 0.0f;
}

// Symmetric codes L[i] = l + nmax, l in [-nmax, nmax - 1], weights x^2: the first guess
// nmax / max refined by coordinate descent. Returns the scale.
float make_q3_quants(int n, int nmax, const float* x, int8_t* L) {
  const float max = symmetric_start(n, x, L);
  if (max == 0.0f) return 0.0f;
  const Fit first = symmetric_fit(n, nmax, x, nullptr, float(-nmax) / max, L);
  float sumlx = first.sumlx, suml2 = first.suml2;
  for (int sweep = 0; sweep < 5; ++sweep) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      const float w = x[i] * x[i];
      // The fit without value i; its best code is then x[i] * sl2 / slx.
      float slx = sumlx - w * x[i] * float(L[i]);
      if (!(slx > 0.0f)) continue;
      float sl2 = suml2 - w * float(L[i]) * float(L[i]);
      const int new_l = clamp(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1);
      if (new_l == L[i]) continue;
      slx += w * x[i] * float(new_l);
      sl2 += w * float(new_l) * float(new_l);
      // Keep it if slx^2 / sl2 > sumlx^2 / suml2, compared without dividing.
      if (sl2 > 0.0f && slx * slx * suml2 > sumlx * sumlx * sl2) {
        L[i] = int8_t(new_l);
        sumlx = slx;
        suml2 = sl2;
        ++changed;
      }
    }
    if (changed == 0) break;
  }
  for (int i = 0; i < n; ++i) L[i] = int8_t(L[i] + nmax);
  return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

// Q2_K / Q3_K low bits: value 128 h + 32 s + l goes to bit pair s of byte 32 h + l.
void pack_2bit(const uint8_t* L, uint8_t* qs) {  // L[256] in 0..3 -> qs[64]
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const uint8_t* v = L + 128 * h + l;
      qs[32 * h + l] = uint8_t(v[0] | (v[32] << 2) | (v[64] << 4) | (v[96] << 6));
    }
}

// Q4_K / Q5_K second pass: codes against d * sc and dmin * m of each sub-block of 32.
template <typename Block>
void requantize_k4(const float* x, const Block& b, int nmax, uint8_t* L) {
  for (int k = 0; k < 8; ++k) {
    int s, mn;
    k4_scale_min(b.scales, k, &s, &mn);
    const float d = fp16_to_f32(b.d) * float(s);
    if (d == 0.0f) continue;
    const float dm = fp16_to_f32(b.dmin) * float(mn);
    for (int l = 0; l < 32; ++l) L[32 * k + l] = uint8_t(clamp(nearest_int((x[32 * k + l] + dm) / d), 0, nmax));
  }
}

// Q4_K and Q5_K's first pass, which differ only in the code range and the search
// constants: 8 sub-blocks of 32, weights |x| + rms(x) per sub-block, 6-bit scales and
// mins. Leaves the search codes (0..nmax) in L[256].
template <typename Block>
void search_k4_superblock(const float* x, Block& b, int nmax, const QkxParams& p, uint8_t* L) {
  float scales[8], mins[8], w[32];
  float max_scale = 0.0f, max_min = 0.0f;
  for (int k = 0; k < 8; ++k) {
    const float* xs = x + 32 * k;
    float sum_x2 = 0.0f;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32.0f);
    for (int l = 0; l < 32; ++l) w[l] = av_x + std::fabs(xs[l]);
    scales[k] = make_qkx2_quants(32, nmax, xs, w, L + 32 * k, &mins[k], p);
    if (scales[k] > max_scale) max_scale = scales[k];
    if (mins[k] > max_min) max_min = mins[k];
  }
  const float inv_scale = max_scale > 0.0f ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0.0f ? 63.0f / max_min : 0.0f;
  uint8_t sc[8], m[8];
  for (int k = 0; k < 8; ++k) {
    // The conversion to uint8 wraps (as ggml's does) before the clip to 63.
    sc[k] = std::min<uint8_t>(63, uint8_t(nearest_int(inv_scale * scales[k])));
    m[k] = std::min<uint8_t>(63, uint8_t(nearest_int(inv_min * mins[k])));
  }
  pack_k4_scales(sc, m, b.scales);
  b.d = f32_to_fp16(max_scale / 63.0f);
  b.dmin = f32_to_fp16(max_min / 63.0f);
}

}  // namespace

// Symmetric codes L[i] = l + nmax: the best of 19 inverse scales -(nmax + 0.1 is) / max,
// is = 0, +-1 .. +-9, by explained energy sumlx^2 / suml2. Returns the scale.
float make_qx_quants(int n, int nmax, const float* x, const float* w, int8_t* L) {
  const float max = symmetric_start(n, x, L);
  if (max == 0.0f) return 0.0f;
  float best_iscale = float(-nmax) / max;
  const Fit first = symmetric_fit(n, nmax, x, w, best_iscale, L);
  float scale = first.suml2 != 0.0f ? first.sumlx / first.suml2 : 0.0f;
  float best = scale * first.sumlx;  // = sumlx^2 / suml2
  bool moved = false;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    const float iscale = -(float(nmax) + 0.1f * float(is)) / max;
    const Fit f = symmetric_fit(n, nmax, x, w, iscale, nullptr);
    if (f.suml2 > 0.0f && f.sumlx * f.sumlx > best * f.suml2) {
      best_iscale = iscale;
      moved = true;
      scale = f.sumlx / f.suml2;
      best = scale * f.sumlx;
    }
  }
  if (moved) symmetric_fit(n, nmax, x, w, best_iscale, L);  // the winner's codes
  for (int i = 0; i < n; ++i) L[i] = int8_t(L[i] + nmax);
  return scale;
}

float make_qkx2_quants(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min,
                       const QkxParams& p) {
  float min = x[0], max = x[0];
  float sum_w = w[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0.0f) min = 0.0f;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *neg_min = -min;
    return 0.0f;
  }
  auto error_of = [&](float diff) { return p.use_mad ? std::fabs(diff) : diff * diff; };
  float iscale = float(nmax) / (max - min);
  float scale = 1.0f / iscale;
  float best_error = 0.0f;
  for (int i = 0; i < n; ++i) {
    L[i] = uint8_t(clamp(nearest_int(iscale * (x[i] - min)), 0, nmax));
    best_error += w[i] * error_of(scale * float(L[i]) + min - x[i]);
  }
  uint8_t laux[32];
  PG_ASSERT(n <= 32);
  for (int is = 0; is <= p.nstep; ++is) {
    iscale = (p.rmin + p.rdelta * float(is) + float(nmax)) / (max - min);
    float sum_l = 0.0f, sum_l2 = 0.0f, sum_xl = 0.0f;
    for (int i = 0; i < n; ++i) {
      const int l = clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      laux[i] = uint8_t(l);
      sum_l += w[i] * float(l);
      sum_l2 += w[i] * float(l) * float(l);
      sum_xl += w[i] * float(l) * x[i];
    }
    // Weighted least squares for (scale, min) given these codes (Cramer's rule).
    const float det = sum_w * sum_l2 - sum_l * sum_l;
    if (!(det > 0.0f)) continue;
    float this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
    float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
    if (this_min > 0.0f) {  // the format needs min <= 0: refit the scale alone
      this_min = 0.0f;
      this_scale = sum_xl / sum_l2;
    }
    float cur_error = 0.0f;
    for (int i = 0; i < n; ++i) cur_error += w[i] * error_of(this_scale * float(laux[i]) + this_min - x[i]);
    if (cur_error < best_error) {
      std::memcpy(L, laux, size_t(n));
      best_error = cur_error;
      scale = this_scale;
      min = this_min;
    }
  }
  *neg_min = -min;
  return scale;
}

// ---- second passes and packing ---------------------------------------------------------

void pack_k4_scales(const uint8_t* sc, const uint8_t* m, uint8_t* b) {  // sc[8], m[8] -> b[12]
  for (int k = 0; k < 4; ++k) {
    b[k] = sc[k];
    b[k + 4] = m[k];
  }
  for (int k = 4; k < 8; ++k) {
    b[k + 4] = uint8_t((sc[k] & 0xF) | ((m[k] & 0xF) << 4));
    b[k - 4] = uint8_t(b[k - 4] | ((sc[k] >> 4) << 6));
    b[k] = uint8_t(b[k] | ((m[k] >> 4) << 6));
  }
}

// Low nibbles of codes j < 8 in bytes 0..7, of j >= 8 in their high nibbles; the top 2
// bits of code j in bit pair j / 4 of byte 8 + j % 4.
void pack_q3_k_scales(const int* l, uint8_t* scales) {  // l[16] -> scales[12]
  std::memset(scales, 0, 12);
  for (int j = 0; j < 16; ++j) {
    if (j < 8) scales[j] = uint8_t(l[j] & 0xF);
    else scales[j - 8] = uint8_t(scales[j - 8] | ((l[j] & 0xF) << 4));
    scales[8 + j % 4] = uint8_t(scales[8 + j % 4] | ((l[j] >> 4) << (2 * (j / 4))));
  }
}

void finish_q2_k(const float* x, uint8_t* L, BlockQ2K& b) {
  for (int j = 0; j < 16; ++j) {
    const float d = fp16_to_f32(b.d) * float(b.scales[j] & 0xF);
    if (d == 0.0f) continue;
    const float dm = fp16_to_f32(b.dmin) * float(b.scales[j] >> 4);
    for (int l = 0; l < 16; ++l) L[16 * j + l] = uint8_t(clamp(nearest_int((x[16 * j + l] + dm) / d), 0, 3));
  }
  pack_2bit(L, b.qs);
}

void finish_q3_k(const float* x, int8_t* L, BlockQ3K& b) {
  for (int j = 0; j < 16; ++j) {
    const float d = fp16_to_f32(b.d) * float(q3k_scale(b.scales, j));
    if (d == 0.0f) continue;
    for (int l = 0; l < 16; ++l) L[16 * j + l] = int8_t(clamp(nearest_int(x[16 * j + l] / d), -4, 3) + 4);
  }
  // Codes 0..7: bit 2 into hmask (value v: bit v / 32 of byte v % 32), low 2 bits into qs.
  std::memset(b.hmask, 0, sizeof b.hmask);
  uint8_t low[kQK_K];
  for (int v = 0; v < kQK_K; ++v) {
    if (L[v] > 3) b.hmask[v % 32] = uint8_t(b.hmask[v % 32] | (1 << (v / 32)));
    low[v] = uint8_t(L[v] > 3 ? L[v] - 4 : L[v]);
  }
  pack_2bit(low, b.qs);
}

// Sub-block 2c + t is nibble t of bytes 32c .. 32c + 31.
void finish_q4_k(const float* x, uint8_t* L, BlockQ4K& b) {
  requantize_k4(x, b, 15, L);
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) b.qs[32 * c + l] = uint8_t(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
}

// Q4_K's nibbles plus bit k of qh[l] for value l of sub-block k.
void finish_q5_k(const float* x, uint8_t* L, BlockQ5K& b) {
  requantize_k4(x, b, 31, L);
  std::memset(b.qh, 0, sizeof b.qh);
  for (int k = 0; k < 8; ++k)
    for (int l = 0; l < 32; ++l)
      if (L[32 * k + l] > 15) b.qh[l] = uint8_t(b.qh[l] | (1 << k));
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l)
      b.qs[32 * c + l] = uint8_t((L[64 * c + l] & 15) | ((L[64 * c + 32 + l] & 15) << 4));
}

void finish_q6_k(const float* x, const float* scales, int8_t* L, BlockQ6K& b) {
  float max_scale = 0.0f, max_abs_scale = 0.0f;
  for (int j = 0; j < 16; ++j) {
    if (std::fabs(scales[j]) > max_abs_scale) {
      max_abs_scale = std::fabs(scales[j]);
      max_scale = scales[j];
    }
  }
  if (max_abs_scale < kGroupMaxEps) {  // all zero
    std::memset(&b, 0, sizeof b);
    return;
  }
  const float iscale = -128.0f / max_scale;
  b.d = f32_to_fp16(1.0f / iscale);
  for (int j = 0; j < 16; ++j) b.scales[j] = int8_t(std::min(127, nearest_int(iscale * scales[j])));
  for (int j = 0; j < 16; ++j) {
    const float d = fp16_to_f32(b.d) * float(b.scales[j]);
    if (d == 0.0f) continue;
    for (int l = 0; l < 16; ++l) L[16 * j + l] = int8_t(clamp(nearest_int(x[16 * j + l] / d), -32, 31) + 32);
  }
  // Codes 0..63 (q + 32): value 128 h + r has its low nibble in ql[64 h + r % 64]
  // (high nibble for r >= 64) and its top 2 bits in qh[32 h + r % 32], pair r / 32.
  for (int h = 0; h < 2; ++h) {
    const int8_t* v = L + 128 * h;
    for (int l = 0; l < 32; ++l) {
      b.ql[64 * h + l] = uint8_t((v[l] & 0xF) | ((v[l + 64] & 0xF) << 4));
      b.ql[64 * h + l + 32] = uint8_t((v[l + 32] & 0xF) | ((v[l + 96] & 0xF) << 4));
      b.qh[32 * h + l] = uint8_t((v[l] >> 4) | ((v[l + 32] >> 4) << 2) | ((v[l + 64] >> 4) << 4) |
                                 ((v[l + 96] >> 4) << 6));
    }
  }
}

}  // namespace quant_search

using namespace quant_search;

// Q2_K: 16 sub-blocks of 16, codes 0..3, weights |x|, absolute-error search; 4-bit
// scales and mins against d = max scale / 15 and dmin = max min / 15.
void quantize_row_q2_k_ref(const float* x, BlockQ2K* y, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  constexpr QkxParams kSearch{-0.5f, 0.1f, 15, true};
  uint8_t L[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    BlockQ2K& b = y[i];
    float scales[16], mins[16], w[16];
    float max_scale = 0.0f, max_min = 0.0f;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) w[l] = std::fabs(x[16 * j + l]);
      scales[j] = make_qkx2_quants(16, 3, x + 16 * j, w, L + 16 * j, &mins[j], kSearch);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    // Scales in the low nibbles, mins in the high ones (ints stored modulo 256, as ggml).
    if (max_scale > 0.0f) {
      const float iscale = 15.0f / max_scale;
      for (int j = 0; j < 16; ++j) b.scales[j] = uint8_t(nearest_int(iscale * scales[j]));
      b.d = f32_to_fp16(max_scale / 15.0f);
    } else {
      for (int j = 0; j < 16; ++j) b.scales[j] = 0;
      b.d = f32_to_fp16(0.0f);
    }
    if (max_min > 0.0f) {
      const float iscale = 15.0f / max_min;
      for (int j = 0; j < 16; ++j) b.scales[j] = uint8_t(b.scales[j] | (nearest_int(iscale * mins[j]) << 4));
      b.dmin = f32_to_fp16(max_min / 15.0f);
    } else {
      b.dmin = f32_to_fp16(0.0f);
    }
    finish_q2_k(x, L, b);
  }
}

// Q3_K: 16 sub-blocks of 16, codes -4..3, coordinate-descent search; signed 6-bit
// scales against d = max scale / -32 (the largest |scale| maps to -32).
void quantize_row_q3_k_ref(const float* x, BlockQ3K* y, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  int8_t L[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    BlockQ3K& b = y[i];
    float scales[16];
    float max_scale = 0.0f, amax = 0.0f;
    for (int j = 0; j < 16; ++j) {
      scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
      if (std::fabs(scales[j]) > amax) {
        amax = std::fabs(scales[j]);
        max_scale = scales[j];
      }
    }
    int codes[16] = {};  // all 0 (bytes 0) when every scale is 0
    if (max_scale != 0.0f) {
      const float iscale = -32.0f / max_scale;
      // Wrapped to int8 first, then clipped and biased by 32 (layout in kquants.h).
      for (int j = 0; j < 16; ++j) codes[j] = clamp(int8_t(nearest_int(iscale * scales[j])), -32, 31) + 32;
      b.d = f32_to_fp16(1.0f / iscale);
    } else {
      b.d = f32_to_fp16(0.0f);
    }
    pack_q3_k_scales(codes, b.scales);
    finish_q3_k(x, L, b);
  }
}

// Q4_K: 8 sub-blocks of 32, codes 0..15.
void quantize_row_q4_k_ref(const float* x, BlockQ4K* y, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  constexpr QkxParams kSearch{-1.0f, 0.1f, 20, false};
  uint8_t L[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    search_k4_superblock(x, y[i], 15, kSearch, L);
    finish_q4_k(x, L, y[i]);
  }
}

// Q5_K: 8 sub-blocks of 32, codes 0..31.
void quantize_row_q5_k_ref(const float* x, BlockQ5K* y, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  constexpr QkxParams kSearch{-0.5f, 0.1f, 15, false};
  uint8_t L[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    search_k4_superblock(x, y[i], 31, kSearch, L);
    finish_q5_k(x, L, y[i]);
  }
}

// Q6_K: 16 sub-blocks of 16, codes -32..31, make_qx_quants search with weights x^2;
// int8 scales against d = max scale / -128.
void quantize_row_q6_k_ref(const float* x, BlockQ6K* y, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  int8_t L[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    float scales[16];
    for (int j = 0; j < 16; ++j) scales[j] = make_qx_quants(16, 32, x + 16 * j, nullptr, L + 16 * j);
    finish_q6_k(x, scales, L, y[i]);
  }
}

void quantize_row_q8_k_ref(const float* x, BlockQ8K* y, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    BlockQ8K& b = y[i];
    const SignedMax sm = signed_max(x, kQK_K);
    if (sm.amax == 0.0f) {
      std::memset(&b, 0, sizeof b);
      continue;
    }
    const float iscale = -127.0f / sm.max;
    for (int l = 0; l < kQK_K; ++l) b.qs[l] = int8_t(std::min(127, nearest_int(iscale * x[l])));
    for (int j = 0; j < 16; ++j) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += b.qs[16 * j + l];
      b.bsums[j] = int16_t(sum);
    }
    b.d = 1.0f / iscale;
  }
}

}  // namespace peregrine
