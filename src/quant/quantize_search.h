// Internal to src/quant: the pieces that ggml's reference quantizers (quantize_k.cpp)
// and its importance-matrix quantizers (quantize_imatrix.cpp) share -- the rounding
// helper, two scale searches, and the second pass of every K-quant. Defined in
// quantize_k.cpp. The bit-exactness rules of quantize.h hold for all of them: ggml's
// float operations in ggml's order, its nearest_int, no fused multiply-add.
#pragma once

#include <cstdint>
#include <cstring>

#include "quant/kquants.h"

namespace peregrine::quant_search {

// Below this a group counts as all zero (ggml's GROUP_MAX_EPS).
inline constexpr float kGroupMaxEps = 1e-15f;

// ggml's nearest_int: adding 1.5 * 2^23 moves the integer part of f into the low
// mantissa bits (the add itself rounds to nearest, ties to even), which are then read
// back as an integer. Exact for |f| <= 2^22 - 1; kept as the same bit trick, rather than
// std::nearbyint, so that out-of-range inputs (a scale that underflowed in fp16) give
// ggml's exact result too.
inline int nearest_int(float f) {
  const float v = f + 12582912.0f;
  int32_t i;
  std::memcpy(&i, &v, sizeof i);
  return (i & 0x007fffff) - 0x00400000;
}

inline int clamp(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

// ---- scale searches (quantize_k.cpp explains them) ------------------------------------

// ggml's make_qx_quants with rmse_type 1: symmetric codes L[i] = l + nmax, l in
// [-nmax, nmax - 1], for x[n] ~ scale * l, the best of 19 inverse scales by weighted
// explained energy. Weights w[n], or nullptr for ggml's default x^2. Returns the scale;
// an all-zero x gives 0 and L = 0 (unbiased).
float make_qx_quants(int n, int nmax, const float* x, const float* w, int8_t* L);

// ggml's make_qkx2_quants (and make_qkx3_quants with weights, which computes the same):
// affine codes L[i] in [0, nmax] for x ~ scale * L + min, min <= 0, weighted by w.
// Returns the scale; *neg_min = -min (>= 0), as the block formats store it. n <= 32.
struct QkxParams {
  float rmin, rdelta;
  int nstep;
  bool use_mad;  // weighted absolute error instead of squared
};
float make_qkx2_quants(int n, int nmax, const float* x, const float* w, uint8_t* L, float* neg_min,
                       const QkxParams& p);

// ---- K-quant second passes --------------------------------------------------------------
// Given a super-block whose scales are already quantized into b (d, dmin, the packed
// sub-block scales), round every value of x[256] again against the scale it will be
// decoded with and pack the codes into b. A sub-block whose decoded scale is 0 keeps its
// search codes from L[256] (biased as the type stores them).

void finish_q2_k(const float* x, uint8_t* L, BlockQ2K& b);   // L in 0..3
void finish_q3_k(const float* x, int8_t* L, BlockQ3K& b);    // L in 0..7
void finish_q4_k(const float* x, uint8_t* L, BlockQ4K& b);   // L in 0..15
void finish_q5_k(const float* x, uint8_t* L, BlockQ5K& b);   // L in 0..31

// Q6_K from its 16 sub-block scales (any sign): the fp16 d and int8 scales against
// d = max scale / -128 (an all-zero block when every |scale| < kGroupMaxEps), then the
// second pass as above. L in 0..63.
void finish_q6_k(const float* x, const float* scales, int8_t* L, BlockQ6K& b);

// The 16 six-bit scale codes l[j] (0..63, i.e. scale + 32) into Q3_K's 12 bytes.
void pack_q3_k_scales(const int* l, uint8_t* scales);

// The 6-bit scale sc[k] and min m[k] of the 8 sub-blocks into Q4_K / Q5_K's 12 bytes
// (layout: k4_scale_min). Larger values are packed as ggml packs them: bits spill over.
void pack_k4_scales(const uint8_t* sc, const uint8_t* m, uint8_t* b);

}  // namespace peregrine::quant_search
