// The K-quant weight formats (Q2_K .. Q6_K) and their 8-bit activation partner Q8_K,
// as GGUF stores them: super-blocks of 256 values split into sub-blocks of 16 or 32
// that carry small integer scales (and mins) relative to one or two fp16 super-block
// scales. Also the ternary formats TQ1_0 and TQ2_0 (BitNet b1.58, TriLMs): super-blocks
// of 256 values in {-1, 0, 1} times one fp16 scale. Scalar reference code:
// dequantization, Q8_K quantization and the weight-row x Q8_K dot products that SIMD
// kernels are later checked against. ggml's reference quantizers of these formats are
// in quantize.h (quantize_k.cpp, quantize.cpp for the ternary ones).
//
// Value numbering: "value i" is the i-th of the 256 floats a super-block decodes to,
// in row order. The bit positions below are derived from gguf-py's numpy
// dequantizers (gguf/quants.py), which the tests use as the independent oracle.
#pragma once

#include <cstdint>

namespace peregrine {

inline constexpr int kQK_K = 256;  // values per super-block

// Q2_K: 16 sub-blocks of 16 values; 2-bit quants with a 4-bit scale and 4-bit min each.
//   scales[j]: low nibble = scale s_j, high nibble = min m_j of sub-block j = i / 16
//   qs: value i = 128 h + 32 s + l (h < 2, s < 4, l < 32) is (qs[32 h + l] >> 2 s) & 3,
//       i.e. each byte holds 4 values 32 apart, bit pair s for the s-th group of 32
//   value[i] = (d * s_j) * q - (dmin * m_j)
struct BlockQ2K {
  uint8_t scales[kQK_K / 16];
  uint8_t qs[kQK_K / 4];
  uint16_t d;     // fp16 super-block scale of the scales
  uint16_t dmin;  // fp16 super-block scale of the mins
};
static_assert(sizeof(BlockQ2K) == 84);

// Q3_K: 16 sub-blocks of 16 values; 3-bit signed quants (-4..3), 6-bit signed scales.
//   low 2 bits: as Q2_K's qs: value i = 128 h + 32 s + l is (qs[32 h + l] >> 2 s) & 3
//   high bit:   value i = 32 b + l has bit (hmask[l] >> b) & 1, b = i / 32 < 8.
//               Inverted: q = low2 - 4 when the bit is CLEAR, q = low2 when it is set.
//   scales (12 bytes, 16 values of 6 bits, stored with a +32 bias):
//     low 4 bits of scale k: (scales[k % 8] >> 4 (k / 8)) & 15
//     high 2 bits of scale k: (scales[8 + k % 4] >> 2 (k / 4)) & 3
//     s_k = (low4 | high2 << 4) - 32, in [-32, 31]
//   value[i] = (d * s_{i/16}) * q
struct BlockQ3K {
  uint8_t hmask[kQK_K / 8];
  uint8_t qs[kQK_K / 4];
  uint8_t scales[12];
  uint16_t d;  // fp16
};
static_assert(sizeof(BlockQ3K) == 110);

// Q4_K: 8 sub-blocks of 32 values; 4-bit quants with 6-bit scale and 6-bit min each.
//   scales (12 bytes b[0..11]) pack 8 scales sc_k and 8 mins m_k of 6 bits:
//     k < 4:  sc_k = b[k] & 63,                       m_k = b[k + 4] & 63
//     k >= 4: sc_k = (b[k + 4] & 15) | (b[k - 4] >> 6) << 4,
//             m_k  = (b[k + 4] >> 4) | (b[k] >> 6) << 4
//     (bytes 0..7 keep the low 6 bits of sc_0..3 / m_0..3 and lend their top 2 bits
//      to sc_4..7 / m_4..7, whose low nibbles sit in bytes 8..11)
//   qs: sub-block k = 2 c + t (c < 4) is (qs[32 c + l] >> 4 t) & 15, l < 32:
//       low nibbles of a 32-byte chunk, then its high nibbles
//   value[i] = (d * sc_k) * q - (dmin * m_k), k = i / 32
struct BlockQ4K {
  uint16_t d;     // fp16
  uint16_t dmin;  // fp16
  uint8_t scales[12];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ4K) == 144);

// Q5_K: Q4_K plus a fifth bit: q = low4 | ((qh[l] >> k) & 1) << 4 for value
//   l < 32 of sub-block k (bit k of byte l), so q in [0, 31]. Scales, mins, low nibbles
//   and the formula are Q4_K's.
struct BlockQ5K {
  uint16_t d;     // fp16
  uint16_t dmin;  // fp16
  uint8_t scales[12];
  uint8_t qh[kQK_K / 8];
  uint8_t qs[kQK_K / 2];
};
static_assert(sizeof(BlockQ5K) == 176);

// Q6_K: 16 sub-blocks of 16 values; 6-bit quants stored with a +32 bias, int8 scales.
//   Two halves of 128 values (h = i / 128, r = i % 128):
//     low 4 bits:  (ql[64 h + r % 64] >> 4 (r / 64)) & 15
//     high 2 bits: (qh[32 h + r % 32] >> 2 (r / 32)) & 3
//     q = (low4 | high2 << 4) - 32, in [-32, 31]
//   value[i] = (d * scales[i / 16]) * q
struct BlockQ6K {
  uint8_t ql[kQK_K / 2];
  uint8_t qh[kQK_K / 4];
  int8_t scales[kQK_K / 16];
  uint16_t d;  // fp16
};
static_assert(sizeof(BlockQ6K) == 210);

// Q8_K: the activation side. value[i] ~= d * qs[i]; bsums[j] = sum of qs[16 j .. 16 j + 15]
// lets the min terms of Q2_K / Q4_K / Q5_K be applied per sub-block without touching qs.
// Ours is symmetric: d = max|x| / 127 and qs in [-127, 127] (never -128, so a SIMD kernel
// may negate or take |qs| without overflow).
struct BlockQ8K {
  float d;
  int8_t qs[kQK_K];
  int16_t bsums[kQK_K / 16];
};
static_assert(sizeof(BlockQ8K) == 292);

// TQ1_0: 1.6875 bits per value. Ternary digits ("trits") t in {0, 1, 2} stand for t - 1.
//   A byte holds 5 trits (qs) or 4 (qh) as a base-3 fraction: with N = sum_k t_k 3^(4-k)
//   (t_0 the most significant; qh's fifth trit is 0), byte = ceil(N * 256 / 243). Trit k
//   comes back as ((uint8_t(byte * 3^k)) * 3) >> 8: the product mod 256 drops the k
//   leading trits, and * 3 >> 8 reads the next one.
//   value i < 160:        trit k = i / 32 of qs[i % 32]
//   160 <= i < 240:       trit k = (i - 160) / 16 of qs[32 + i % 16]
//   240 <= i < 256:       trit k = (i - 240) / 4 of qh[i % 4]
//   value[i] = d * (t - 1)
struct BlockTQ1_0 {
  uint8_t qs[48];  // 240 values, 5 per byte
  uint8_t qh[4];   // 16 values, 4 per byte
  uint16_t d;      // fp16
};
static_assert(sizeof(BlockTQ1_0) == 54);

// TQ2_0: 2.0625 bits per value. 2-bit codes q, laid out as Q2_K's qs: value
//   i = 128 h + 32 s + l (h < 2, s < 4, l < 32) is (qs[32 h + l] >> 2 s) & 3.
//   value[i] = d * (q - 1). ggml's quantizer writes q in {0, 1, 2}; q = 3 decodes to
//   +2 d (ggml and gguf-py do the same), and every kernel here keeps that meaning.
struct BlockTQ2_0 {
  uint8_t qs[kQK_K / 4];
  uint16_t d;  // fp16
};
static_assert(sizeof(BlockTQ2_0) == 66);

// Scale and min of sub-block k (< 8) from the 12 packed bytes of Q4_K / Q5_K.
inline void k4_scale_min(const uint8_t* b, int k, int* sc, int* m) {
  if (k < 4) {
    *sc = b[k] & 63;
    *m = b[k + 4] & 63;
  } else {
    *sc = (b[k + 4] & 15) | ((b[k - 4] >> 6) << 4);
    *m = (b[k + 4] >> 4) | ((b[k] >> 6) << 4);
  }
}

// Signed scale of sub-block k (< 16) from the 12 packed bytes of Q3_K.
inline int q3k_scale(const uint8_t* b, int k) {
  const int low4 = (b[k % 8] >> (4 * (k / 8))) & 15;
  const int high2 = (b[8 + k % 4] >> (2 * (k / 4))) & 3;
  return (low4 | (high2 << 4)) - 32;
}

// Quant values of one super-block as integers, in row order ([256]). Q2_K / Q4_K / Q5_K
// give the unsigned q (before the min), Q3_K / Q6_K the signed q.
void unpack_q2_k(const BlockQ2K& b, int8_t* q);
void unpack_q3_k(const BlockQ3K& b, int8_t* q);
void unpack_q4_k(const BlockQ4K& b, int8_t* q);
void unpack_q5_k(const BlockQ5K& b, int8_t* q);
void unpack_q6_k(const BlockQ6K& b, int8_t* q);
// Ternary codes before the - 1: TQ1_0 gives 0..2, TQ2_0 0..3.
void unpack_tq1_0(const BlockTQ1_0& b, int8_t* q);
void unpack_tq2_0(const BlockTQ2_0& b, int8_t* q);

// dst[n] <- n values (a multiple of 256) of the given format. The float operations are
// those of the formulas above, in that order, so the result is bit-identical to
// gguf-py's f32 numpy dequantization (the build disables FMA contraction).
void dequantize_row_q2_k(const BlockQ2K* src, float* dst, int64_t n);
void dequantize_row_q3_k(const BlockQ3K* src, float* dst, int64_t n);
void dequantize_row_q4_k(const BlockQ4K* src, float* dst, int64_t n);
void dequantize_row_q5_k(const BlockQ5K* src, float* dst, int64_t n);
void dequantize_row_q6_k(const BlockQ6K* src, float* dst, int64_t n);
void dequantize_row_q8_k(const BlockQ8K* src, float* dst, int64_t n);
void dequantize_row_tq1_0(const BlockTQ1_0* src, float* dst, int64_t n);
void dequantize_row_tq2_0(const BlockTQ2_0* src, float* dst, int64_t n);

// x[n] -> out[n / 256]; n a multiple of 256. d = max|x| / 127 (0 for an all-zero block),
// qs = x / d rounded to nearest (ties to even), so |x - d * qs| <= d / 2; bsums exact.
void quantize_row_q8_k(const float* x, BlockQ8K* out, int64_t n);

// Dot product of one weight row (nb super-blocks of the named format) with nb Q8_K
// activation blocks. Per super-block, the sums over quants are exact int32:
//   Q3_K, Q6_K:        isum = sum_j s_j * sum_{i in j} q_i qx_i
//                      acc += (dx * d) * isum
//   Q2_K, Q4_K, Q5_K:  also msum = sum_j m_j * sum_{i in j} qx_i  (from bsums)
//                      acc += (dx * d) * isum - (dx * dmin) * msum
// with j over sub-blocks, acc a float accumulated in super-block order.
float dot_q2_k_q8_k(const void* w, const BlockQ8K* x, int64_t nb);
float dot_q3_k_q8_k(const void* w, const BlockQ8K* x, int64_t nb);
float dot_q4_k_q8_k(const void* w, const BlockQ8K* x, int64_t nb);
float dot_q5_k_q8_k(const void* w, const BlockQ8K* x, int64_t nb);
float dot_q6_k_q8_k(const void* w, const BlockQ8K* x, int64_t nb);

}  // namespace peregrine
