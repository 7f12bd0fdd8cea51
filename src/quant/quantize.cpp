// Reference quantizers of the plain types and the 32-value block formats (quantize.h).
//
// The block formats pick one scale per block from its extreme values and round every
// value against it once -- no search. The rounding is ggml's, step for step:
//   *_0 (symmetric): d = max / -2^(b-1) where max is the value of largest magnitude (the
//       first one on a tie), so that value maps to the most negative code; codes are
//       x / d + 2^(b-1) rounded half up by adding 0.5 and truncating, then clipped to
//       2^b - 1 (a value equal in magnitude to max but of opposite sign lands one past).
//   *_1 (affine): m = min, d = (max - min) / (2^b - 1); codes (x - m) / d + 0.5 truncated.
//   Q8_0: d = max|x| / 127, codes roundf(x / d) (half away from zero).
//   TQ1_0 / TQ2_0 (super-blocks of 256): d = max|x|, codes lroundf(x / d) + 1 in {0, 1, 2}.
// "x / d" is always x * (1 / d), computed once per block as ggml does; d == 0 (an
// all-zero block) gives codes for 0 and a zero scale.
#include "quant/quantize.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

#include "core/status.h"
#include "quant/fp16.h"

namespace peregrine {

void quantize_row_f32_ref(const float* x, float* y, int64_t n) { std::memcpy(y, x, size_t(n) * sizeof(float)); }

void quantize_row_f16_ref(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_fp16(x[i]);
}

void quantize_row_bf16_ref(const float* x, uint16_t* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] = f32_to_bf16(x[i]);
}

namespace {

// The signed value of largest magnitude in x[kQK]; the first one when several tie.
float signed_absmax(const float* x) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < kQK; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  return max;
}

struct MinMax {
  float min, max;
};
// NaNs never compare, so they are skipped (as in ggml).
MinMax min_max(const float* x) {
  MinMax r{FLT_MAX, -FLT_MAX};
  for (int j = 0; j < kQK; ++j) {
    if (x[j] < r.min) r.min = x[j];
    if (x[j] > r.max) r.max = x[j];
  }
  return r;
}

float inverse_or_zero(float d) { return d != 0.0f ? 1.0f / d : 0.0f; }

// Truncation toward zero of a value already shifted to be non-negative: the "+ 0.5 then
// cast" rounding. int() is the conversion ggml's (int8_t) / (uint8_t) casts compile to.
int truncate(float v) { return int(v); }

}  // namespace

void quantize_row_q4_0_ref(const float* x, BlockQ4_0* y, int64_t n) {  // x[n] -> y[n / 32]
  PG_ASSERT(n % kQK == 0);
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    const float d = signed_absmax(x) / -8.0f;  // max -> code 0, i.e. q - 8 = -8
    const float id = inverse_or_zero(d);
    y[i].d = f32_to_fp16(d);
    for (int j = 0; j < kQK / 2; ++j) {
      const int q0 = std::min(15, truncate(x[j] * id + 8.5f));
      const int q1 = std::min(15, truncate(x[j + 16] * id + 8.5f));
      y[i].qs[j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

void quantize_row_q4_1_ref(const float* x, BlockQ4_1* y, int64_t n) {
  PG_ASSERT(n % kQK == 0);
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    const MinMax mm = min_max(x);
    const float d = (mm.max - mm.min) / 15.0f;
    const float id = inverse_or_zero(d);
    y[i].d = f32_to_fp16(d);
    y[i].m = f32_to_fp16(mm.min);
    for (int j = 0; j < kQK / 2; ++j) {
      const int q0 = std::min(15, truncate((x[j] - mm.min) * id + 0.5f));
      const int q1 = std::min(15, truncate((x[j + 16] - mm.min) * id + 0.5f));
      y[i].qs[j] = uint8_t(q0 | (q1 << 4));
    }
  }
}

void quantize_row_q5_0_ref(const float* x, BlockQ5_0* y, int64_t n) {
  PG_ASSERT(n % kQK == 0);
  int q[kQK];
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    const float d = signed_absmax(x) / -16.0f;
    const float id = inverse_or_zero(d);
    y[i].d = f32_to_fp16(d);
    for (int j = 0; j < kQK; ++j) q[j] = std::min(31, truncate(x[j] * id + 16.5f));
    pack_5bit(q, y[i].qs, y[i].qh);
  }
}

void quantize_row_q5_1_ref(const float* x, BlockQ5_1* y, int64_t n) {
  PG_ASSERT(n % kQK == 0);
  int q[kQK];
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    const MinMax mm = min_max(x);
    const float d = (mm.max - mm.min) / 31.0f;
    const float id = inverse_or_zero(d);
    y[i].d = f32_to_fp16(d);
    y[i].m = f32_to_fp16(mm.min);
    // No clip, unlike Q4_1: (max - min) * (1 / d) + 0.5 stays below 32 in f32 (ggml
    // relies on the same), and the cast keeps the low byte anyway.
    for (int j = 0; j < kQK; ++j) q[j] = uint8_t(truncate((x[j] - mm.min) * id + 0.5f));
    pack_5bit(q, y[i].qs, y[i].qh);
  }
}

void quantize_row_q8_0_ref(const float* x, BlockQ8_0* y, int64_t n) {
  PG_ASSERT(n % kQK == 0);
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = amax > std::fabs(x[j]) ? amax : std::fabs(x[j]);  // NaN wins, as in ggml
    const float d = amax / 127.0f;
    const float id = inverse_or_zero(d);
    y[i].d = f32_to_fp16(d);
    for (int j = 0; j < kQK; ++j) y[i].qs[j] = int8_t(truncate(std::round(x[j] * id)));  // |.| <= 127
  }
}

namespace {

// max|x| of a ternary super-block, with ggml's MAX(a, b) = a > b ? a : b (NaN wins).
float ternary_scale(const float* x) {  // x[256]
  float amax = 0.0f;
  for (int j = 0; j < kQK_K; ++j) amax = amax > std::fabs(x[j]) ? amax : std::fabs(x[j]);
  return amax;
}

// The code of one value: -1, 0, 1 -> 0, 1, 2.
int ternary_code(float v, float id) { return int(std::lround(v * id)) + 1; }

// count (<= 5) codes of x[0], x[stride], ... as the leading trits of a base-3 fraction of
// 5 trits, rounded up to a byte: ceil(N * 256 / 243) (see BlockTQ1_0). Byte arithmetic
// wraps as ggml's uint8_t does.
uint8_t pack_trits(const float* x, int stride, int count, float id) {
  uint8_t q = 0;
  for (int k = 0; k < count; ++k) q = uint8_t(q * 3 + ternary_code(x[k * stride], id));
  for (int k = count; k < 5; ++k) q = uint8_t(q * 3);
  return uint8_t((q * 256 + (243 - 1)) / 243);
}

}  // namespace

void quantize_row_tq1_0_ref(const float* x, BlockTQ1_0* y, int64_t n) {  // x[n] -> y[n / 256]
  PG_ASSERT(n % kQK_K == 0);
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    const float d = ternary_scale(x);
    const float id = inverse_or_zero(d);
    y[i].d = f32_to_fp16(d);
    for (int m = 0; m < 32; ++m) y[i].qs[m] = pack_trits(x + m, 32, 5, id);             // values 0..159
    for (int m = 0; m < 16; ++m) y[i].qs[32 + m] = pack_trits(x + 160 + m, 16, 5, id);  // 160..239
    for (int m = 0; m < 4; ++m) y[i].qh[m] = pack_trits(x + 240 + m, 4, 4, id);         // 240..255
  }
}

void quantize_row_tq2_0_ref(const float* x, BlockTQ2_0* y, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    const float d = ternary_scale(x);
    const float id = inverse_or_zero(d);
    y[i].d = f32_to_fp16(d);
    for (int h = 0; h < 2; ++h)
      for (int l = 0; l < 32; ++l) {
        int q = 0;
        for (int s = 0; s < 4; ++s) q |= (ternary_code(x[128 * h + 32 * s + l], id) & 3) << (2 * s);
        y[i].qs[32 * h + l] = uint8_t(q);
      }
  }
}


void quantize_row_q2_ref(const float* x, BlockQ2* y, int64_t n) {  // x[n] -> y[n / 32]
  PG_ASSERT(n % kQK == 0);
  for (int64_t i = 0; i < n / kQK; ++i, x += kQK) {
    const MinMax mm = min_max(x);
    y[i].d = f32_to_fp16((mm.max - mm.min) / 3.0f);
    y[i].m = f32_to_fp16(mm.min);
    // Codes against the stored (fp16) scale and minimum: what the decoder will use.
    const float d = fp16_to_f32(y[i].d), m = fp16_to_f32(y[i].m);
    std::memset(y[i].qs, 0, sizeof(y[i].qs));
    if (d == 0.0f) continue;
    for (int j = 0; j < kQK; ++j) {
      const int q = std::clamp(int(std::round((x[j] - m) / d)), 0, 3);
      y[i].qs[j / 4] = uint8_t(y[i].qs[j / 4] | q << (2 * (j % 4)));
    }
  }
}

void quantize_group_q2_channel(const float* rows, int64_t row_stride, int64_t n_ch, BlockQ2* out) {
  float col[kQK];  // channel c over the group's 32 positions
  for (int64_t c = 0; c < n_ch; ++c) {
    for (int j = 0; j < kQK; ++j) col[j] = rows[j * row_stride + c];
    quantize_row_q2_ref(col, out + c, kQK);
  }
}

}  // namespace peregrine
