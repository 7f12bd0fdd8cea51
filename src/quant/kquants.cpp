// Scalar reference for the K-quant formats (layouts in kquants.h). Every format is
// first unpacked to integer quants in row order, so the bit layout is written down
// exactly once (unpack_*); dequantization and the dot products share it.
#include "quant/kquants.h"

#include <cmath>
#include <cstdlib>

#include "core/status.h"
#include "quant/fp16.h"

namespace peregrine {

// ---- unpacking: one super-block -> q[256] -------------------------------------------

namespace {

// Q2_K / Q3_K low bits: value 128 h + 32 s + l is bit pair s of byte 32 h + l.
void unpack_2bit(const uint8_t* qs, int8_t* q) {  // qs[64] -> q[256]
  for (int h = 0; h < 2; ++h)
    for (int s = 0; s < 4; ++s)
      for (int l = 0; l < 32; ++l) q[128 * h + 32 * s + l] = int8_t((qs[32 * h + l] >> (2 * s)) & 3);
}

// Q4_K / Q5_K low bits: sub-block 2 c + t is nibble t of bytes 32 c .. 32 c + 31.
void unpack_4bit(const uint8_t* qs, int8_t* q) {  // qs[128] -> q[256]
  for (int c = 0; c < 4; ++c)
    for (int t = 0; t < 2; ++t)
      for (int l = 0; l < 32; ++l) q[64 * c + 32 * t + l] = int8_t((qs[32 * c + l] >> (4 * t)) & 15);
}

}  // namespace

void unpack_q2_k(const BlockQ2K& b, int8_t* q) { unpack_2bit(b.qs, q); }

void unpack_q3_k(const BlockQ3K& b, int8_t* q) {
  unpack_2bit(b.qs, q);
  for (int i = 0; i < kQK_K; ++i) {
    const bool high = (b.hmask[i % 32] >> (i / 32)) & 1;
    if (!high) q[i] = int8_t(q[i] - 4);  // a clear bit means "subtract 4"
  }
}

void unpack_q4_k(const BlockQ4K& b, int8_t* q) { unpack_4bit(b.qs, q); }

void unpack_q5_k(const BlockQ5K& b, int8_t* q) {
  unpack_4bit(b.qs, q);
  for (int i = 0; i < kQK_K; ++i) q[i] = int8_t(q[i] | (((b.qh[i % 32] >> (i / 32)) & 1) << 4));
}

void unpack_q6_k(const BlockQ6K& b, int8_t* q) {
  // Value 128h + 32c + l: low nibble (c = 0, 1) or high nibble (c = 2, 3) of ql[64h + 32(c&1) + l],
  // high bits 2c..2c+1 of qh[32h + l]. Written with l innermost so the compiler vectorizes it.
  for (int h = 0; h < 2; ++h) {
    const uint8_t* ql = b.ql + 64 * h;
    const uint8_t* qh = b.qh + 32 * h;
    int8_t* out = q + 128 * h;
    for (int l = 0; l < 32; ++l) {
      out[l] = int8_t(((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32);
      out[l + 32] = int8_t(((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32);
      out[l + 64] = int8_t(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
      out[l + 96] = int8_t(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
    }
  }
}

void unpack_tq1_0(const BlockTQ1_0& b, int8_t* q) {
  // Trit k of byte v: multiplying by 3^k (mod 256) shifts the base-3 fraction k places.
  static constexpr uint8_t kPow3[5] = {1, 3, 9, 27, 81};
  auto trit = [](uint8_t v, int k) { return int8_t((uint8_t(v * kPow3[k]) * 3) >> 8); };
  for (int k = 0; k < 5; ++k) {
    for (int m = 0; m < 32; ++m) q[32 * k + m] = trit(b.qs[m], k);
    for (int m = 0; m < 16; ++m) q[160 + 16 * k + m] = trit(b.qs[32 + m], k);
  }
  for (int k = 0; k < 4; ++k)
    for (int m = 0; m < 4; ++m) q[240 + 4 * k + m] = trit(b.qh[m], k);
}

void unpack_tq2_0(const BlockTQ2_0& b, int8_t* q) { unpack_2bit(b.qs, q); }

// ---- dequantization -------------------------------------------------------------------
// Float order follows the formulas in kquants.h: sub-block scale d * s first, then times
// q, then minus dmin * m -- the order of gguf-py's numpy code, hence bit-identical.

void dequantize_row_q2_k(const BlockQ2K* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  int8_t q[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    const BlockQ2K& b = src[i];
    const float d = fp16_to_f32(b.d), dmin = fp16_to_f32(b.dmin);
    unpack_q2_k(b, q);
    for (int j = 0; j < 16; ++j) {
      const float dl = d * float(b.scales[j] & 15), ml = dmin * float(b.scales[j] >> 4);
      for (int l = 0; l < 16; ++l) dst[16 * j + l] = dl * float(q[16 * j + l]) - ml;
    }
  }
}

void dequantize_row_q3_k(const BlockQ3K* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  int8_t q[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    const BlockQ3K& b = src[i];
    const float d = fp16_to_f32(b.d);
    unpack_q3_k(b, q);
    for (int j = 0; j < 16; ++j) {
      const float dl = d * float(q3k_scale(b.scales, j));
      for (int l = 0; l < 16; ++l) dst[16 * j + l] = dl * float(q[16 * j + l]);
    }
  }
}

namespace {

// Q4_K and Q5_K differ only in how q is unpacked.
template <typename Block>
void dequantize_k4(const Block& b, const int8_t* q, float* dst) {  // -> dst[256]
  const float d = fp16_to_f32(b.d), dmin = fp16_to_f32(b.dmin);
  for (int k = 0; k < 8; ++k) {
    int sc, m;
    k4_scale_min(b.scales, k, &sc, &m);
    const float dl = d * float(sc), ml = dmin * float(m);
    for (int l = 0; l < 32; ++l) dst[32 * k + l] = dl * float(q[32 * k + l]) - ml;
  }
}

}  // namespace

void dequantize_row_q4_k(const BlockQ4K* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  int8_t q[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    unpack_q4_k(src[i], q);
    dequantize_k4(src[i], q, dst);
  }
}

void dequantize_row_q5_k(const BlockQ5K* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  int8_t q[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    unpack_q5_k(src[i], q);
    dequantize_k4(src[i], q, dst);
  }
}

void dequantize_row_q6_k(const BlockQ6K* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  int8_t q[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    const BlockQ6K& b = src[i];
    const float d = fp16_to_f32(b.d);
    unpack_q6_k(b, q);
    for (int j = 0; j < 16; ++j) {
      const float dl = d * float(b.scales[j]);
      for (int l = 0; l < 16; ++l) dst[16 * j + l] = dl * float(q[16 * j + l]);
    }
  }
}

void dequantize_row_q8_k(const BlockQ8K* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K)
    for (int l = 0; l < kQK_K; ++l) dst[l] = src[i].d * float(src[i].qs[l]);
}

namespace {

// d * (q - 1) for the ternary formats, as ggml and gguf-py compute it.
template <typename Block, void (*Unpack)(const Block&, int8_t*)>
void dequantize_ternary(const Block* src, float* dst, int64_t n) {
  PG_ASSERT(n % kQK_K == 0);
  int8_t q[kQK_K];
  for (int64_t i = 0; i < n / kQK_K; ++i, dst += kQK_K) {
    Unpack(src[i], q);
    const float d = fp16_to_f32(src[i].d);
    for (int l = 0; l < kQK_K; ++l) dst[l] = d * float(q[l] - 1);
  }
}

}  // namespace

void dequantize_row_tq1_0(const BlockTQ1_0* src, float* dst, int64_t n) {
  dequantize_ternary<BlockTQ1_0, unpack_tq1_0>(src, dst, n);
}

void dequantize_row_tq2_0(const BlockTQ2_0* src, float* dst, int64_t n) {
  dequantize_ternary<BlockTQ2_0, unpack_tq2_0>(src, dst, n);
}

// ---- activation quantization ---------------------------------------------------------

void quantize_row_q8_k(const float* x, BlockQ8K* out, int64_t n) {  // x[n] -> out[n / 256]
  PG_ASSERT(n % kQK_K == 0);
  for (int64_t i = 0; i < n / kQK_K; ++i, x += kQK_K) {
    BlockQ8K& b = out[i];
    float amax = 0.0f;
    for (int l = 0; l < kQK_K; ++l) amax = std::fmax(amax, std::fabs(x[l]));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;  // all-zero block: d = 0, qs = 0
    for (int l = 0; l < kQK_K; ++l) {
      // x * id can land a hair above 127 for the largest value; the clamp keeps the
      // symmetric range [-127, 127] that kquants.h promises.
      const float r = std::nearbyint(x[l] * id);  // round half to even
      b.qs[l] = int8_t(std::fmin(127.0f, std::fmax(-127.0f, r)));
    }
    for (int j = 0; j < 16; ++j) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += b.qs[16 * j + l];
      b.bsums[j] = int16_t(sum);  // |sum| <= 16 * 127
    }
    b.d = d;
  }
}

// ---- dot products with Q8_K ------------------------------------------------------------

namespace {

// sum_{l < len} q[l] * qx[l], exact.
int32_t idot(const int8_t* q, const int8_t* qx, int len) {
  int32_t s = 0;
  for (int l = 0; l < len; ++l) s += int32_t(q[l]) * int32_t(qx[l]);
  return s;
}

}  // namespace

float dot_q2_k_q8_k(const void* w, const BlockQ8K* x, int64_t nb) {
  const auto* b = static_cast<const BlockQ2K*>(w);
  int8_t q[kQK_K];
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    unpack_q2_k(b[i], q);
    int32_t isum = 0, msum = 0;  // |isum| <= 16*15*16*3*127, |msum| <= 16*15*16*127
    for (int j = 0; j < 16; ++j) {
      isum += (b[i].scales[j] & 15) * idot(q + 16 * j, x[i].qs + 16 * j, 16);
      msum += (b[i].scales[j] >> 4) * x[i].bsums[j];
    }
    acc += (x[i].d * fp16_to_f32(b[i].d)) * float(isum) - (x[i].d * fp16_to_f32(b[i].dmin)) * float(msum);
  }
  return acc;
}

float dot_q3_k_q8_k(const void* w, const BlockQ8K* x, int64_t nb) {
  const auto* b = static_cast<const BlockQ3K*>(w);
  int8_t q[kQK_K];
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    unpack_q3_k(b[i], q);
    int32_t isum = 0;  // |isum| <= 16*32*16*4*127
    for (int j = 0; j < 16; ++j) isum += q3k_scale(b[i].scales, j) * idot(q + 16 * j, x[i].qs + 16 * j, 16);
    acc += (x[i].d * fp16_to_f32(b[i].d)) * float(isum);
  }
  return acc;
}

namespace {

// Q4_K and Q5_K: 8 sub-blocks of 32; the min of sub-block k meets bsums 2k and 2k+1.
template <typename Block>
float dot_k4(const Block& b, const int8_t* q, const BlockQ8K& x) {
  int32_t isum = 0, msum = 0;  // |isum| <= 8*63*32*31*127, |msum| <= 8*63*32*127
  for (int k = 0; k < 8; ++k) {
    int sc, m;
    k4_scale_min(b.scales, k, &sc, &m);
    isum += sc * idot(q + 32 * k, x.qs + 32 * k, 32);
    msum += m * (x.bsums[2 * k] + x.bsums[2 * k + 1]);
  }
  return (x.d * fp16_to_f32(b.d)) * float(isum) - (x.d * fp16_to_f32(b.dmin)) * float(msum);
}

}  // namespace

float dot_q4_k_q8_k(const void* w, const BlockQ8K* x, int64_t nb) {
  const auto* b = static_cast<const BlockQ4K*>(w);
  int8_t q[kQK_K];
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    unpack_q4_k(b[i], q);
    acc += dot_k4(b[i], q, x[i]);
  }
  return acc;
}

float dot_q5_k_q8_k(const void* w, const BlockQ8K* x, int64_t nb) {
  const auto* b = static_cast<const BlockQ5K*>(w);
  int8_t q[kQK_K];
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    unpack_q5_k(b[i], q);
    acc += dot_k4(b[i], q, x[i]);
  }
  return acc;
}

float dot_q6_k_q8_k(const void* w, const BlockQ8K* x, int64_t nb) {
  const auto* b = static_cast<const BlockQ6K*>(w);
  int8_t q[kQK_K];
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    unpack_q6_k(b[i], q);
    int32_t isum = 0;  // |isum| <= 16*128*16*32*127
    for (int j = 0; j < 16; ++j) isum += b[i].scales[j] * idot(q + 16 * j, x[i].qs + 16 * j, 16);
    acc += (x[i].d * fp16_to_f32(b[i].d)) * float(isum);
  }
  return acc;
}

}  // namespace peregrine
