// AVX2 + FMA + F16C kernels. Integer dot products are exact; the float
// accumulation order differs from the scalar reference (tested with a tolerance).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"
#include "kernels/packed.h"
#include "kernels/attend_simd.h"
#include "kernels/x86/x86_common.h"
#include "quant/fp16.h"

namespace peregrine {
namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

inline int hsum_i32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

void quantize_q8_norm(const float* x, float scale, const float* w, BlockQ8Act* out, int64_t n) {
  const __m256 sign_mask = _mm256_set1_ps(-0.0f);
  const __m256 vs = _mm256_set1_ps(scale);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* v = x + b * kQK;
    __m256 v0 = _mm256_mul_ps(_mm256_loadu_ps(v), vs), v1 = _mm256_mul_ps(_mm256_loadu_ps(v + 8), vs);
    __m256 v2 = _mm256_mul_ps(_mm256_loadu_ps(v + 16), vs), v3 = _mm256_mul_ps(_mm256_loadu_ps(v + 24), vs);
    if (w != nullptr) {
      const float* wb = w + b * kQK;
      v0 = _mm256_mul_ps(v0, _mm256_loadu_ps(wb));
      v1 = _mm256_mul_ps(v1, _mm256_loadu_ps(wb + 8));
      v2 = _mm256_mul_ps(v2, _mm256_loadu_ps(wb + 16));
      v3 = _mm256_mul_ps(v3, _mm256_loadu_ps(wb + 24));
    }
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign_mask, v0), _mm256_andnot_ps(sign_mask, v1)),
                             _mm256_max_ps(_mm256_andnot_ps(sign_mask, v2), _mm256_andnot_ps(sign_mask, v3)));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    float amax = _mm_cvtss_f32(m4);
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    __m256 vid = _mm256_set1_ps(id);
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, vid), kRound));
    __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, vid), kRound));
    __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, vid), kRound));
    __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, vid), kRound));
    int sum = hsum_i32(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3)));
    // Pack 32 x i32 -> 32 x i8; packs work within 128-bit lanes, so fix the order.
    __m256i p01 = _mm256_packs_epi32(i0, i1);
    __m256i p23 = _mm256_packs_epi32(i2, i3);
    __m256i p = _mm256_packs_epi16(p01, p23);
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[b].qs), p);
    out[b].d = d;
    out[b].s = d * float(sum);
    out[b].sum = int16_t(sum);
    out[b].sum_lo = int16_t(hsum_i32(_mm256_add_epi32(i0, i1)));
  }
}

void quantize_q8(const float* x, BlockQ8Act* out, int64_t n) { quantize_q8_norm(x, 1.0f, nullptr, out, n); }

// One weight row against N activation rows at once: each weight block is decoded
// once for all N. Every activation row keeps its own accumulator and sees the same
// operations in the same order for any N, so a row's result never depends on which
// other rows share the call (batch invariance).
struct Q4_0Decode {
  using Block = BlockQ4_0;
  static constexpr bool kSigned = true;
  static __m256i q(const Block& b) { return _mm256_sub_epi8(unpack_nibbles(b.qs), _mm256_set1_epi8(8)); }
  static float m(const Block&) { return 0.0f; }
};
struct Q4_1Decode {
  using Block = BlockQ4_1;
  static constexpr bool kSigned = false;
  static __m256i q(const Block& b) { return unpack_nibbles(b.qs); }
  static float m(const Block& b) { return h2f(b.m); }
};
struct Q8_0Decode {
  using Block = BlockQ8_0;
  static constexpr bool kSigned = true;
  static __m256i q(const Block& b) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b.qs)); }
  static float m(const Block&) { return 0.0f; }
};

// Each row accumulates even and odd blocks separately: two independent FMA chains
// hide the FMA latency when N is 1 (decode), and the order is the same for any N.
template <class D, int N>
struct DotN {
  static void run(const typename D::Block* b, int64_t nb, const BlockQ8Act* x, float* y,
                  int64_t y_stride);
};

template <class D, int N>
void DotN<D, N>::run(const typename D::Block* b, int64_t nb, const BlockQ8Act* x, float* y,
                     int64_t y_stride) {
  __m256 acc[N][2];
  float offset[N][2];
  for (int r = 0; r < N; ++r) {
    acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    offset[r][0] = offset[r][1] = 0.0f;
  }
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t i = 0; i < nb; ++i) {
    const int k = int(i & 1);
    const __m256i q = D::q(b[i]);
    const float d = h2f(b[i].d);
    __m256i aq = q;
    // maddubs needs an unsigned left operand: move w's sign onto x, w*x == |w| * (sign(w) x).
    if constexpr (D::kSigned) aq = _mm256_sign_epi8(q, q);
    for (int r = 0; r < N; ++r) {
      const BlockQ8Act& xb = x[r * nb + i];
      __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xb.qs));
      if constexpr (D::kSigned) xv = _mm256_sign_epi8(xv, q);
      const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aq, xv), ones);
      acc[r][k] = _mm256_fmadd_ps(_mm256_set1_ps(d * xb.d), _mm256_cvtepi32_ps(p), acc[r][k]);
      if constexpr (!D::kSigned) offset[r][k] += D::m(b[i]) * xb.s;
    }
  }
  for (int r = 0; r < N; ++r)
    y[r * y_stride] = hsum(_mm256_add_ps(acc[r][0], acc[r][1])) + (offset[r][0] + offset[r][1]);
}

template <class D>
constexpr KernelTable::DotRows dot_rows = dot_rows_by4<D, DotN>;

float dot_f32(const float* w, const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
  }
  for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
  float acc = hsum(_mm256_add_ps(a0, a1));
  for (; i < n; ++i) acc += w[i] * x[i];
  return acc;
}

float dot_f16(const uint16_t* w, const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 wf = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
    a0 = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x + i), a0);
  }
  float acc = hsum(a0);
  for (; i < n; ++i) acc += h2f(w[i]) * x[i];
  return acc;
}

float dot_bf16(const uint16_t* w, const float* x, int64_t n) {
  __m256 a0 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
    __m256 wf = _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
    a0 = _mm256_fmadd_ps(wf, _mm256_loadu_ps(x + i), a0);
  }
  float acc = hsum(a0);
  for (; i < n; ++i) acc += bf16_to_f32(w[i]) * x[i];
  return acc;
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += a * x[i];
}

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  __m256 va = _mm256_set1_ps(a);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 xf = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + i)));
    _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, xf, _mm256_loadu_ps(y + i)));
  }
  for (; i < n; ++i) y[i] += a * h2f(x[i]);
}

// ---- Panel kernels (packed layout, kernels/packed.h). A 64-byte panel group is two
// 256-bit halves, rows 0-7 and rows 8-15; each half is done on its own so that its
// weights stay in registers while up to kTile tokens pass. Lane r of every vector is
// row r: no horizontal reductions. Integer sums are exact; the float steps are the
// scalar reference's (kernels.h), so results are bit-identical to it.
template <GgmlType T>
struct HalfWeights {
  static constexpr bool kHalves = T == GgmlType::Q2_K || T == GgmlType::Q3_K || T == GgmlType::Q6_K;
  static constexpr int32_t kHalfOffset = T == GgmlType::Q6_K ? 32 : T == GgmlType::Q3_K ? 4 : 0;
  static constexpr bool kBytes = kHalves || T == GgmlType::Q5_K || T == GgmlType::Q8_0;
  __m256i w[8];  // Q4: nibbles 0..15 (w[g] pairs with x bytes x_offset(g)); Q8: signed q
  __m256 d, m, m2_lo, m2_hi;

  void load(const uint8_t* blk, const PanelFormat& f, int half) {
    if constexpr (kHalves || T == GgmlType::Q4_K || T == GgmlType::Q5_K) {  // f32 scales
      d = _mm256_loadu_ps(reinterpret_cast<const float*>(blk + 32 * half));
      m = _mm256_loadu_ps(reinterpret_cast<const float*>(blk + f.m_offset + 32 * half));
      if constexpr (T == GgmlType::Q2_K) {
        m2_lo = _mm256_loadu_ps(reinterpret_cast<const float*>(blk + 128 + 32 * half));
        m2_hi = _mm256_loadu_ps(reinterpret_cast<const float*>(blk + 192 + 32 * half));
      }
    } else {
      d = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(blk + 16 * half)));
    }
    if constexpr (T == GgmlType::Q4_1)
      m = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(blk + f.m_offset + 16 * half)));
    const uint8_t* qs = blk + f.qs_offset + 32 * half;
    auto at = [&](int g) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(qs + 64 * g)); };
    if constexpr (kBytes) {
      for (int g = 0; g < 8; ++g) w[g] = at(g);
    } else {
      const __m256i lo = _mm256_set1_epi8(0x0f);
      for (int g = 0; g < 4; ++g) {
        const __m256i v = at(g);
        w[g] = _mm256_and_si256(v, lo);
        w[g + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo);
      }
    }
  }

  static constexpr int x_offset(int g) {
    return kBytes ? 4 * g : (g < 4 ? 4 * g : 16 + 4 * (g - 4));
  }
  static __m256i bcast(const BlockQ8Act& x, int g) {
    int32_t x4;
    std::memcpy(&x4, x.qs + x_offset(g), 4);
    return _mm256_set1_epi32(x4);
  }

  __m256 accumulate(const BlockQ8Act& x, __m256 acc) const {
    const __m256i ones = _mm256_set1_epi16(1);
    if constexpr (kHalves) {  // u = q + offset <= 63: two maddubs lanes fit int16
      auto pair = [&](int g) {
        return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(w[g], bcast(x, g)),
                                                  _mm256_maddubs_epi16(w[g + 1], bcast(x, g + 1))),
                                 ones);
      };
      const __m256i lo = _mm256_sub_epi32(_mm256_add_epi32(pair(0), pair(2)),
                                          _mm256_set1_epi32(kHalfOffset * x.sum_lo));
      const __m256i hi = _mm256_sub_epi32(_mm256_add_epi32(pair(4), pair(6)),
                                          _mm256_set1_epi32(kHalfOffset * (x.sum - x.sum_lo)));
      const __m256 dx = _mm256_set1_ps(x.d);
      acc = _mm256_fmadd_ps(d, _mm256_mul_ps(_mm256_cvtepi32_ps(lo), dx), acc);
      acc = _mm256_fmadd_ps(m, _mm256_mul_ps(_mm256_cvtepi32_ps(hi), dx), acc);
      if constexpr (T == GgmlType::Q2_K) {
        acc = _mm256_fmadd_ps(m2_lo, _mm256_set1_ps(float(x.sum_lo) * x.d), acc);
        acc = _mm256_fmadd_ps(m2_hi, _mm256_set1_ps(float(x.sum - x.sum_lo) * x.d), acc);
      }
      return acc;
    }
    __m256i isum;
    if constexpr (T == GgmlType::Q5_K) {  // u <= 31: four maddubs lanes fit int16
      auto quad = [&](int g) {
        __m256i s16 = _mm256_maddubs_epi16(w[g], bcast(x, g));
        for (int i = 1; i < 4; ++i) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[g + i], bcast(x, g + i)));
        return _mm256_madd_epi16(s16, ones);
      };
      isum = _mm256_add_epi32(quad(0), quad(4));
    } else if constexpr (T == GgmlType::Q8_0) {
      // maddubs wants an unsigned left side: |q| * (x with q's sign); 2*128*127 fits int16.
      isum = _mm256_setzero_si256();
      for (int g = 0; g < 8; ++g) {
        const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(w[g]), _mm256_sign_epi8(bcast(x, g), w[g]));
        isum = _mm256_add_epi32(isum, _mm256_madd_epi16(p, ones));
      }
    } else {
      // Nibbles: each maddubs lane is at most 2*15*127, eight of them still fit int16.
      __m256i s16 = _mm256_maddubs_epi16(w[0], bcast(x, 0));
      for (int g = 1; g < 8; ++g) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[g], bcast(x, g)));
      isum = _mm256_madd_epi16(s16, ones);
      if constexpr (T == GgmlType::Q4_0) isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(8 * x.sum));
    }
    const __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(x.d));
    acc = _mm256_fmadd_ps(d, t, acc);
    if constexpr (T == GgmlType::Q4_1 || T == GgmlType::Q4_K || T == GgmlType::Q5_K)
      acc = _mm256_fmadd_ps(m, _mm256_set1_ps(x.s), acc);
    return acc;
  }
};

template <GgmlType T, int NT>
void panel_tile(const uint8_t* panel, int64_t nb, const BlockQ8Act* x, float* y, int64_t y_stride) {
  const PanelFormat& f = *panel_format(T);
  for (int half = 0; half < 2; ++half) {
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    HalfWeights<T> hw;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = panel + size_t(b) * f.block_bytes;
      if (half == 0)  // decode streams the weights: fetch ahead (see the AVX-512 unit)
        for (size_t off = 0; off < f.block_bytes; off += 64)
          _mm_prefetch(reinterpret_cast<const char*>(blk + 4096 + off), _MM_HINT_T0);
      hw.load(blk, f, half);
      for (int t = 0; t < NT; ++t) acc[t] = hw.accumulate(x[t * nb + b], acc[t]);
    }
    for (int t = 0; t < NT; ++t) _mm256_storeu_ps(y + t * y_stride + 8 * half, acc[t]);
  }
}

// Ternary panels (quant/panel_format.h), one 8-row half at a time: per 32-value
// sub-block two 32-byte loads hold the half's 2-bit codes; shifts by 0, 2, 4, 6 give
// w[G] (0..3) for activation bytes 4G..4G+3. Each maddubs lane is at most 2 * 3 * 127,
// eight of them fit int16; isum = sum(q * x) - sum(x), then the scalar float steps.
template <int NT>
void ternary_tile(const uint8_t* panel, int64_t nb, const BlockQ8Act* x, float* y, int64_t y_stride) {
  constexpr int kSub = kQK_K / kQK;
  const int64_t nbk = nb / kSub;
  const uint8_t* scales = panel + size_t(nbk) * panel::kTernaryCodes;
  const __m256i three = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  for (int half = 0; half < 2; ++half) {
    __m256 acc[NT];
    for (int t = 0; t < NT; ++t) acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nbk; ++i) {
      const __m256 d = _mm256_cvtph_ps(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(scales + i * panel::kScales + 16 * half)));
      const uint8_t* codes = panel + size_t(i) * panel::kTernaryCodes;
      for (int s = 0; s < kSub; ++s) {
        const uint8_t* c = codes + 128 * s;
        if (half == 0) {  // decode streams the weights: fetch ahead (see the AVX-512 unit)
          _mm_prefetch(reinterpret_cast<const char*>(c + 4096), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(c + 4096 + 64), _MM_HINT_T0);
        }
        __m256i w[8];
        for (int g = 0; g < 2; ++g) {
          const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(c + 64 * g + 32 * half));
          w[4 * g] = _mm256_and_si256(v, three);
          w[4 * g + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 2), three);
          w[4 * g + 2] = _mm256_and_si256(_mm256_srli_epi16(v, 4), three);
          w[4 * g + 3] = _mm256_and_si256(_mm256_srli_epi16(v, 6), three);
        }
        for (int t = 0; t < NT; ++t) {
          const BlockQ8Act& xb = x[t * nb + i * kSub + s];
          auto bcast = [&](int g) {
            int32_t x4;
            std::memcpy(&x4, xb.qs + 4 * g, 4);
            return _mm256_set1_epi32(x4);
          };
          __m256i s16 = _mm256_maddubs_epi16(w[0], bcast(0));
          for (int g = 1; g < 8; ++g) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[g], bcast(g)));
          const __m256i isum = _mm256_sub_epi32(_mm256_madd_epi16(s16, ones), _mm256_set1_epi32(xb.sum));
          acc[t] = _mm256_fmadd_ps(d, _mm256_mul_ps(_mm256_cvtepi32_ps(isum), _mm256_set1_ps(xb.d)), acc[t]);
        }
      }
    }
    for (int t = 0; t < NT; ++t) _mm256_storeu_ps(y + t * y_stride + 8 * half, acc[t]);
  }
}

// The tile kernel of a panel layout: the ternary panels have their own.
template <GgmlType T, int NT>
void layout_tile(const uint8_t* panel, int64_t nb, const BlockQ8Act* x, float* y, int64_t y_stride) {
  if constexpr (T == GgmlType::TQ2_0)
    ternary_tile<NT>(panel, nb, x, y, y_stride);
  else
    panel_tile<T, NT>(panel, nb, x, y, y_stride);
}

template <GgmlType T>
void panel_dot(const uint8_t* panel, int64_t nb, const BlockQ8Act* x, int64_t n_x, float* y,
               int64_t y_stride) {
  int64_t t = 0;
  for (; t + 4 <= n_x; t += 4) layout_tile<T, 4>(panel, nb, x + t * nb, y + t * y_stride, y_stride);
  switch (n_x - t) {
    case 3: layout_tile<T, 3>(panel, nb, x + t * nb, y + t * y_stride, y_stride); break;
    case 2: layout_tile<T, 2>(panel, nb, x + t * nb, y + t * y_stride, y_stride); break;
    case 1: layout_tile<T, 1>(panel, nb, x + t * nb, y + t * y_stride, y_stride); break;
    default: break;
  }
}

// Float panels, one 8-row half at a time (as the quantized panels above).
struct Bf16 {
  uint16_t bits;
};
inline __m256 load_col(const float* p) { return _mm256_load_ps(p); }
inline __m256 load_col(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
}
inline __m256 load_col(const Bf16* p) {
  const __m256i h = _mm256_cvtepu16_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(h, 16));
}

template <class E, int NT>
void panel_tile_f(const uint8_t* panel, int64_t nb, const float* x, int64_t x_stride, float* y,
                  int64_t y_stride) {
  constexpr size_t kBlockBytes = size_t(kQK) * kPanelRows * sizeof(E);
  for (int half = 0; half < 2; ++half) {
    __m256 acc[NT][2];
    for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = panel + size_t(b) * kBlockBytes;
      if (half == 0)
        for (size_t off = 0; off < kBlockBytes; off += 64)
          _mm_prefetch(reinterpret_cast<const char*>(blk + 4096 + off), _MM_HINT_T0);
      const auto* w = reinterpret_cast<const E*>(blk) + 8 * half;
      for (int k = 0; k < kQK; k += 2) {
        const __m256 c0 = load_col(w + k * kPanelRows), c1 = load_col(w + (k + 1) * kPanelRows);
        for (int t = 0; t < NT; ++t) {
          const float* xt = x + t * x_stride + b * kQK + k;
          acc[t][0] = _mm256_fmadd_ps(c0, _mm256_set1_ps(xt[0]), acc[t][0]);
          acc[t][1] = _mm256_fmadd_ps(c1, _mm256_set1_ps(xt[1]), acc[t][1]);
        }
      }
    }
    for (int t = 0; t < NT; ++t)
      _mm256_storeu_ps(y + t * y_stride + 8 * half, _mm256_add_ps(acc[t][0], acc[t][1]));
  }
}

template <class E>
void panel_dot_f(const uint8_t* panel, int64_t nb, const float* x, int64_t x_stride, int64_t n_x,
                 float* y, int64_t y_stride) {
  int64_t t = 0;
  for (; t + 4 <= n_x; t += 4) panel_tile_f<E, 4>(panel, nb, x + t * x_stride, x_stride, y + t * y_stride, y_stride);
  for (; t < n_x; ++t) panel_tile_f<E, 1>(panel, nb, x + t * x_stride, x_stride, y + t * y_stride, y_stride);
}

// exp(x) = 2^n * e^r as in the AVX-512 unit; 2^n built in the exponent bits.
inline __m256 exp256(__m256 x) {
  const __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
  x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.0f)), _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  // n in [-126, 127]: 2^n = (n + 127) << 23 as float bits.
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

struct Vec256 {
  using Reg = __m256;
  static constexpr int64_t kLanes = 8;
  static constexpr int64_t kRegs = 16;  // vector registers
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg set1(float x) { return _mm256_set1_ps(x); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load(const uint16_t* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static void store(float* p, Reg v) { _mm256_storeu_ps(p, v); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm256_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm256_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm256_mul_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm256_div_ps(a, b); }
  static float reduce_add(Reg v) { return hsum(v); }
  // out[r] = the sum of a[r]'s lanes, r < 4 (as Vec512::reduce_add4, two 128-bit lanes).
  static void reduce_add4(const Reg* a, float* out) {
    const __m256 s01 = _mm256_add_ps(_mm256_unpacklo_ps(a[0], a[1]), _mm256_unpackhi_ps(a[0], a[1]));
    const __m256 s23 = _mm256_add_ps(_mm256_unpacklo_ps(a[2], a[3]), _mm256_unpackhi_ps(a[2], a[3]));
    const __m256d d01 = _mm256_castps_pd(s01), d23 = _mm256_castps_pd(s23);
    const __m256 s = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(d01, d23)),
                                   _mm256_castpd_ps(_mm256_unpackhi_pd(d01, d23)));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1)));
  }
  static Reg max(Reg a, Reg b) { return _mm256_max_ps(a, b); }
  static float reduce_max(Reg v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
  }
  static Reg exp(Reg x) { return exp256(x); }
  static Reg first_n(Reg v, int64_t n) {  // lanes >= n cleared
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(int32_t(std::clamp<int64_t>(n, 0, 8))),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_and_ps(v, _mm256_castsi256_ps(keep));
  }

  // ---- for attend_simd's quantized rows (attend_simd.h)
  using IReg = __m256i;
  static float h2f(uint16_t h) { return peregrine::h2f(h); }
  static void quantize_query(const float* x, BlockQ8Act* out, int64_t n) { quantize_q8(x, out, n); }
  static Reg cvt_i32(IReg v) { return _mm256_cvtepi32_ps(v); }
  static IReg set1_i32(int32_t x) { return _mm256_set1_epi32(x); }
  static IReg add_i32(IReg a, IReg b) { return _mm256_add_epi32(a, b); }
  static IReg bcast4(const int8_t* p) {
    int32_t x;
    std::memcpy(&x, p, 4);
    return _mm256_set1_epi32(x);
  }
  // Signed keys against signed queries: maddubs wants its left side unsigned, so |k| against q
  // with k's sign (as the row kernels do); 2 * 128 * 127 fits its int16 lanes. No bias.
  static constexpr int32_t kS8Bias = 0;
  struct KeyS8 {
    __m256i abs, k;
  };
  static KeyS8 prep_s8(IReg k) { return {_mm256_abs_epi8(k), k}; }
  static IReg dot_s8(IReg acc, const KeyS8& k, IReg q) {
    const __m256i p = _mm256_maddubs_epi16(k.abs, _mm256_sign_epi8(q, k.k));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
  }
  static IReg dot_u8(IReg acc, IReg u, IReg q) {  // u <= 15: 2 * 15 * 127 fits int16
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1)));
  }
  static IReg nibbles_lo(IReg v) { return _mm256_and_si256(v, _mm256_set1_epi8(0x0f)); }
  static IReg nibbles_hi(IReg v) { return _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm256_set1_epi8(0x0f)); }
  // out[g] lane j = bytes 4g..4g+3 of the 16 at p + off[j]: 128-bit lane k of r[a] holds row
  // 4k + a, so two rounds of unpacks leave row 4k + a in lane 4k + a.
  static void transpose_chunks(const uint8_t* p, const int32_t* off, IReg* out) {
    auto ld = [&](int j) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + off[j])); };
    IReg r[4];
    for (int a = 0; a < 4; ++a) r[a] = _mm256_inserti128_si256(_mm256_castsi128_si256(ld(a)), ld(4 + a), 1);
    const IReg t0 = _mm256_unpacklo_epi32(r[0], r[1]), t1 = _mm256_unpackhi_epi32(r[0], r[1]);
    const IReg t2 = _mm256_unpacklo_epi32(r[2], r[3]), t3 = _mm256_unpackhi_epi32(r[2], r[3]);
    out[0] = _mm256_unpacklo_epi64(t0, t2);
    out[1] = _mm256_unpackhi_epi64(t0, t2);
    out[2] = _mm256_unpacklo_epi64(t1, t3);
    out[3] = _mm256_unpackhi_epi64(t1, t3);
  }
  // The fp16 at p + off[j] of each lane's row (x2: and the one after it, Q2's d and m).
  static Reg gather_f16(const uint8_t* p, const int32_t* off) { return _mm256_cvtph_ps(halves8(p, off)); }
  static void gather_f16x2(const uint8_t* p, const int32_t* off, Reg& lo, Reg& hi) {
    lo = gather_f16(p, off);
    hi = gather_f16(p + 2, off);
  }
  // 8 two-bit codes (2 bytes, code l at bits 2l) as floats: vpermps reads the low 3 bits of
  // w >> 2l, and the table maps them to their low 2.
  static Reg codes2(const uint8_t* p) {
    uint16_t w;
    std::memcpy(&w, p, 2);
    const IReg sh = _mm256_srlv_epi32(_mm256_set1_epi32(w), _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14));
    return _mm256_permutevar8x32_ps(_mm256_setr_ps(0, 1, 2, 3, 0, 1, 2, 3), sh);
  }
  static Reg load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  // Q4_0 values q - 8 of 8 bytes' low (or high) nibbles.
  static Reg load_q4(const uint8_t* p, bool high) {
    IReg v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    v = high ? _mm256_srli_epi32(v, 4) : _mm256_and_si256(v, _mm256_set1_epi32(0x0f));
    return _mm256_cvtepi32_ps(_mm256_sub_epi32(v, _mm256_set1_epi32(8)));
  }
  // KernelTable::ssm_scan's 16 partial sums in two registers, added in its tree order:
  // lanes l + 8 (the second register), then l + 4, l + 2, l + 1.
  static float tree16(const Reg* acc) {
    const __m256 a = _mm256_add_ps(acc[0], acc[1]);
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));
  }
};

}  // namespace

const KernelTable* avx2_kernels() {
  static const KernelTable t{
      .isa = Isa::Avx2,
      .quantize_q8 = quantize_q8,
      .quantize_q8_norm = quantize_q8_norm,
      .dot_q4_0 = dot_rows<Q4_0Decode>,
      .dot_q4_1 = dot_rows<Q4_1Decode>,
      .dot_q8_0 = dot_rows<Q8_0Decode>,
      .dot_f32 = dot_f32,
      .dot_f16 = dot_f16,
      .dot_bf16 = dot_bf16,
      .axpy_f32 = axpy_f32,
      .axpy_f16 = axpy_f16,
      .panel_q4_0 = panel_dot<GgmlType::Q4_0>,
      .panel_q4_1 = panel_dot<GgmlType::Q4_1>,
      .panel_q8_0 = panel_dot<GgmlType::Q8_0>,
      .panel_q2_k = panel_dot<GgmlType::Q2_K>,
      .panel_q3_k = panel_dot<GgmlType::Q3_K>,
      .panel_q4_k = panel_dot<GgmlType::Q4_K>,
      .panel_q5_k = panel_dot<GgmlType::Q5_K>,
      .panel_q6_k = panel_dot<GgmlType::Q6_K>,
      .panel_ternary = panel_dot<GgmlType::TQ2_0>,
      .panel_f32 = panel_dot_f<float>,
      .panel_f16 = panel_dot_f<uint16_t>,
      .panel_bf16 = panel_dot_f<Bf16>,
      .attend = attend_simd<Vec256>,
      .attn_hd_multiple = Vec256::kLanes,
      .silu_mul = silu_mul_simd<Vec256>,
      .ssm_scan = ssm_scan_simd<Vec256>,
  };
  return &t;
}

}  // namespace peregrine
