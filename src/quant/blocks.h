// Block layouts of the quantized weight formats (as in GGUF) and of our 8-bit
// activation blocks. All blocks hold 32 values.
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

// value[j] = d * qs[j]
struct BlockQ8_0 {
  uint16_t d;  // fp16 scale
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8_0) == 34);

// Activations quantized on the fly: value[j] ~= d * qs[j]; s = d * sum(qs) feeds
// the offset term of Q4_1 (sum_j (dw*q + m) * dx*qx = dw*dx*sum(q*qx) + m*s), and the
// integer sum lets kernels that multiply unsigned weights (u = q + 8 for Q4_0,
// u = q + 128 for Q8_0) correct exactly: sum(q*qx) = sum(u*qx) - 8 * sum.
// f32 scales keep activation error to the 8-bit rounding alone.
struct BlockQ8Act {
  float d;
  float s;
  int32_t sum;
  int8_t qs[kQK];
};
static_assert(sizeof(BlockQ8Act) == 44);

}  // namespace peregrine
