// Block layouts of the 32-value quantized weight formats (as in GGUF) and of our 8-bit
// activation blocks. All blocks hold 32 values (the K-quants are in kquants.h).
#pragma once

#include <cstdint>

namespace peregrine {

inline constexpr int kQK = 32;  // values per block for the *_0 / *_1 formats

// value[j] = d * ((qs[j % 16] >> (4 * (j / 16))) & 0xF) - 8)
struct BlockQ4_0 {
  uint16_t d;  // fp16 scale
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_0) == 18);

// value[j] = d * nibble(j) + m
struct BlockQ4_1 {
  uint16_t d;  // fp16 scale
  uint16_t m;  // fp16 minimum
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ4_1) == 20);

// value[j] = d * (q[j] - 16), q[j] = nibble(j) (as Q4_0) | bit j of qh << 4
struct BlockQ5_0 {
  uint16_t d;     // fp16 scale
  uint8_t qh[4];  // fifth bits, little-endian u32
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_0) == 22);

// The 32 five-bit codes (0..31) of a Q5_0 / Q5_1 block, in order: the low nibble of
// qs[j % 16] (high nibble for j >= 16) and, as fifth bit, bit j of the little-endian qh.
inline void unpack_5bit(const uint8_t* qs, const uint8_t* qh_bytes, uint8_t* out) {  // -> out[32]
  const uint32_t qh = uint32_t(qh_bytes[0]) | uint32_t(qh_bytes[1]) << 8 | uint32_t(qh_bytes[2]) << 16 |
                      uint32_t(qh_bytes[3]) << 24;
  for (int j = 0; j < kQK / 2; ++j) {
    out[j] = uint8_t((qs[j] & 0x0F) | ((qh >> j) & 1) << 4);
    out[j + 16] = uint8_t((qs[j] >> 4) | ((qh >> (j + 16)) & 1) << 4);
  }
}

// The inverse of unpack_5bit: codes q[32] in 0..31 -> low nibbles in qs[16] (codes j and
// j + 16 share byte j), bit 4 of code j into bit j of the little-endian qh.
template <typename Code>
inline void pack_5bit(const Code* q, uint8_t* qs, uint8_t* qh_bytes) {
  uint32_t qh = 0;
  for (int j = 0; j < kQK / 2; ++j) {
    qs[j] = uint8_t((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4));
    qh |= uint32_t((q[j] >> 4) & 1) << j;
    qh |= uint32_t((q[j + 16] >> 4) & 1) << (j + 16);
  }
  for (int k = 0; k < 4; ++k) qh_bytes[k] = uint8_t(qh >> (8 * k));
}

// The 32 signed values q - 16 of a Q5_0 block (-16..15), in order.
inline void unpack_q5_0(const BlockQ5_0& b, int8_t* out) {
  uint8_t q[kQK];
  unpack_5bit(b.qs, b.qh, q);
  for (int j = 0; j < kQK; ++j) out[j] = int8_t(q[j] - 16);
}

// value[j] = d * q[j] + m, q[j] = nibble(j) | bit j of qh << 4 (0..31), as Q5_0 without the -16
struct BlockQ5_1 {
  uint16_t d;     // fp16 scale
  uint16_t m;     // fp16 minimum
  uint8_t qh[4];  // fifth bits, little-endian u32
  uint8_t qs[kQK / 2];
};
static_assert(sizeof(BlockQ5_1) == 24);

// value[j] = d * qs[j]
struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8_0) == 34);

// value[j] = d * ((qs[j / 4] >> (2 * (j % 4))) & 3) + m: the 2-bit asymmetric blocks of the KIVI
// KV cache (Liu et al. 2024), d = (max - min) / 3, m = min over the 32 values.
struct BlockQ2 {
  uint16_t d;  // fp16 scale
  uint16_t m;  // fp16 minimum
  uint8_t qs[kQK / 4];
};
static_assert(sizeof(BlockQ2) == 12);

// Activations quantized on the fly: value[j] ~= d * qs[j]; s = d * sum(qs) feeds
// the offset term of Q4_1 (sum_j (dw*q + m) * dx*qx = dw*dx*sum(q*qx) + m*s), and the
// integer sums let kernels that multiply unsigned weights (u = q + 8 for Q4_0,
// u = q + 128 for Q8_0, u = q + 32 for Q6_K's halves) correct exactly:
// sum(q*qx) = sum(u*qx) - 8 * sum. |sum| <= 32 * 127 fits int16.
// f32 scales keep activation error to the 8-bit rounding alone.
struct BlockQ8Act {
  float d;
  float s;
  int16_t sum;     // of all 32 qs
  int16_t sum_lo;  // of qs[0..15]
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8Act) == 44);

}  // namespace peregrine
