// Pieces shared by the x86 kernel units. Everything here has internal linkage on
// purpose: each unit is compiled with different target flags, and a shared inline
// function with external linkage could be merged by the linker into the AVX-512
// unit's copy and then run on a CPU without AVX-512.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "quant/blocks.h"

namespace peregrine {
namespace {  // NOLINT: internal linkage in a header, see above

// F16C conversion: the portable bit-twiddling one is branchy and slow.
inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

// 16 bytes of nibbles -> 32 bytes: low nibbles first, then high (the GGUF order).
inline __m256i unpack_nibbles(const uint8_t* qs) {
  __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  __m128i lo = _mm_and_si128(b, _mm_set1_epi8(0x0f));
  __m128i hi = _mm_and_si128(_mm_srli_epi16(b, 4), _mm_set1_epi8(0x0f));
  return _mm256_set_m128i(hi, lo);
}

// The 8 fp16 values at p + off[j], j < 8, in one register (row scales for the attention kernels,
// attend_simd.h). Scalar loads and inserts: on Zen 4 they cost less than vpgatherdd.
inline __m128i halves8(const uint8_t* p, const int32_t* off) {
  auto at = [&](int j) {
    uint16_t h;
    std::memcpy(&h, p + off[j], 2);
    return int(h);
  };
  __m128i h = _mm_cvtsi32_si128(at(0));
  h = _mm_insert_epi16(h, at(1), 1);
  h = _mm_insert_epi16(h, at(2), 2);
  h = _mm_insert_epi16(h, at(3), 3);
  h = _mm_insert_epi16(h, at(4), 4);
  h = _mm_insert_epi16(h, at(5), 5);
  h = _mm_insert_epi16(h, at(6), 6);
  return _mm_insert_epi16(h, at(7), 7);
}

// One weight row against n_x activation rows, four at a time: Dot<D, N> handles N
// rows with the same per-row operation order for every N (batch invariance).
template <class D, template <class, int> class Dot>
void dot_rows_by4(const void* w, int64_t nb, const BlockQ8Act* x, int64_t n_x, float* y,
                  int64_t y_stride) {
  auto* b = static_cast<const typename D::Block*>(w);
  int64_t r = 0;
  for (; r + 4 <= n_x; r += 4) Dot<D, 4>::run(b, nb, x + r * nb, y + r * y_stride, y_stride);
  for (; r < n_x; ++r) Dot<D, 1>::run(b, nb, x + r * nb, y + r * y_stride, y_stride);
}

}  // namespace
}  // namespace peregrine
