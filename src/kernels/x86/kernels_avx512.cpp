// AVX-512 kernels (F, BW, VL, DQ, VNNI): two weight blocks per 512-bit vector and
// vpdpbusd for the 8-bit products. Zen 4 runs 512-bit ops as two 256-bit halves,
// so the gain is mostly fewer instructions per block, which is what bounds these
// loops. Integer sums are exact; float accumulation order differs from scalar.
// GCC 12's AVX-512 headers trip -Wuninitialized inside their own reduce/convert
// helpers (they start from an undefined vector on purpose).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstring>

#include "kernels/kernels.h"
#include "kernels/packed.h"
#include "kernels/attend_simd.h"
#include "kernels/x86/x86_common.h"

namespace peregrine {
namespace {

inline __m512i join(__m256i lo, __m256i hi) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

inline __m512 join_scales(float lo, float hi) {
  return _mm512_insertf32x8(_mm512_set1_ps(lo), _mm256_set1_ps(hi), 1);
}

inline __m256i load32(const int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

void quantize_q8_norm(const float* x, float scale, const float* w, BlockQ8Act* out, int64_t n) {
  const __m512 vs = _mm512_set1_ps(scale);
  for (int64_t b = 0; b < n / kQK; ++b) {
    const float* v = x + b * kQK;
    __m512 v0 = _mm512_mul_ps(_mm512_loadu_ps(v), vs), v1 = _mm512_mul_ps(_mm512_loadu_ps(v + 16), vs);
    if (w != nullptr) {
      v0 = _mm512_mul_ps(v0, _mm512_loadu_ps(w + b * kQK));
      v1 = _mm512_mul_ps(v1, _mm512_loadu_ps(w + b * kQK + 16));
    }
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    __m512 vid = _mm512_set1_ps(id);
    constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    __m512i i0 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v0, vid), kRound));
    __m512i i1 = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_mul_ps(v1, vid), kRound));
    int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs), _mm512_cvtsepi32_epi8(i0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out[b].qs + 16), _mm512_cvtsepi32_epi8(i1));
    out[b].d = d;
    out[b].s = d * float(sum);
    out[b].sum = int16_t(sum);
    out[b].sum_lo = int16_t(_mm512_reduce_add_epi32(i0));
  }
}

void quantize_q8(const float* x, BlockQ8Act* out, int64_t n) { quantize_q8_norm(x, 1.0f, nullptr, out, n); }

// A pair of weight blocks decoded for vpdpbusd: unsigned 8-bit values, their scales,
// and (for signed formats) the lanes whose activation must be negated.
struct Pair {
  __m512i u;          // |w| or w as unsigned bytes
  __mmask64 neg = 0;  // lanes where w < 0 (sign moved onto x)
  float d0, d1;       // weight scales
  float m0 = 0, m1 = 0;  // offset per block: value = d * u + m
};

// Q4_0: value = d * (u - 8) with u in 0..15, i.e. d*u + m with m = -8d. The m term
// uses the activation block sum s, as for Q4_1.
struct Q4_0Decode {
  using Block = BlockQ4_0;
  static Pair pair(const Block& a, const Block& b) {
    Pair p{join(unpack_nibbles(a.qs), unpack_nibbles(b.qs)), 0, h2f(a.d), h2f(b.d)};
    p.m0 = -8.0f * p.d0;
    p.m1 = -8.0f * p.d1;
    return p;
  }
  static Pair one(const Block& a) {
    Pair p{_mm512_zextsi256_si512(unpack_nibbles(a.qs)), 0, h2f(a.d), 0.0f};
    p.m0 = -8.0f * p.d0;
    return p;
  }
};
struct Q4_1Decode {
  using Block = BlockQ4_1;
  static Pair pair(const Block& a, const Block& b) {
    Pair p{join(unpack_nibbles(a.qs), unpack_nibbles(b.qs)), 0, h2f(a.d), h2f(b.d)};
    p.m0 = h2f(a.m);
    p.m1 = h2f(b.m);
    return p;
  }
  static Pair one(const Block& a) {
    Pair p{_mm512_zextsi256_si512(unpack_nibbles(a.qs)), 0, h2f(a.d), 0.0f};
    p.m0 = h2f(a.m);
    return p;
  }
};
struct Q8_0Decode {
  using Block = BlockQ8_0;
  static Pair signed_pair(__m512i w, float d0, float d1) {
    return Pair{_mm512_abs_epi8(w), _mm512_movepi8_mask(w), d0, d1};
  }
  static Pair pair(const Block& a, const Block& b) {
    return signed_pair(join(load32(a.qs), load32(b.qs)), h2f(a.d), h2f(b.d));
  }
  static Pair one(const Block& a) {
    return signed_pair(_mm512_zextsi256_si512(load32(a.qs)), h2f(a.d), 0.0f);
  }
};

// One row's partial sums: two accumulators (even and odd pairs) hide FMA latency.
struct RowAcc {
  __m512 acc[2];
  float offset[2];
};

inline void accumulate(RowAcc& r, int k, const Pair& p, const BlockQ8Act& x0, const BlockQ8Act* x1) {
  __m512i xv = x1 ? join(load32(x0.qs), load32(x1->qs)) : _mm512_zextsi256_si512(load32(x0.qs));
  if (p.neg) xv = _mm512_mask_sub_epi8(xv, p.neg, _mm512_setzero_si512(), xv);
  const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), p.u, xv);
  const float dx1 = x1 ? x1->d : 0.0f;
  r.acc[k] = _mm512_fmadd_ps(join_scales(p.d0 * x0.d, p.d1 * dx1), _mm512_cvtepi32_ps(dot), r.acc[k]);
  r.offset[k] += p.m0 * x0.s + (x1 ? p.m1 * x1->s : 0.0f);
}

// One weight row against N activation rows; the per-row order of operations is
// the same for every N (batch invariance).
template <class D, int N>
struct DotN {
  static void run(const typename D::Block* b, int64_t nb, const BlockQ8Act* x, float* y,
                  int64_t y_stride);
};

template <class D, int N>
void DotN<D, N>::run(const typename D::Block* b, int64_t nb, const BlockQ8Act* x, float* y,
                     int64_t y_stride) {
  RowAcc r[N];
  for (int j = 0; j < N; ++j) {
    r[j].acc[0] = r[j].acc[1] = _mm512_setzero_ps();
    r[j].offset[0] = r[j].offset[1] = 0.0f;
  }
  int64_t i = 0;
  for (; i + 2 <= nb; i += 2) {
    const Pair p = D::pair(b[i], b[i + 1]);
    const int k = int((i >> 1) & 1);
    for (int j = 0; j < N; ++j) accumulate(r[j], k, p, x[j * nb + i], &x[j * nb + i + 1]);
  }
  if (i < nb) {
    const Pair p = D::one(b[i]);
    for (int j = 0; j < N; ++j) accumulate(r[j], 0, p, x[j * nb + i], nullptr);
  }
  for (int j = 0; j < N; ++j)
    y[j * y_stride] = _mm512_reduce_add_ps(_mm512_add_ps(r[j].acc[0], r[j].acc[1])) +
                      (r[j].offset[0] + r[j].offset[1]);
}

template <class D>
constexpr KernelTable::DotRows dot_rows = dot_rows_by4<D, DotN>;

float dot_f32(const float* w, const float* x, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i + 16), _mm512_loadu_ps(x + i + 16), a1);
  }
  a0 = _mm512_add_ps(a0, a1);
  if (i + 16 <= n) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + i), _mm512_loadu_ps(x + i), a0);
    i += 16;
  }
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    a0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, w + i), _mm512_maskz_loadu_ps(m, x + i), a0);
  }
  return _mm512_reduce_add_ps(a0);
}

float dot_f16(const uint16_t* w, const float* x, int64_t n) {
  __m512 a0 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 wf = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i)));
    a0 = _mm512_fmadd_ps(wf, _mm512_loadu_ps(x + i), a0);
  }
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    __m512 wf = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, w + i));
    a0 = _mm512_fmadd_ps(wf, _mm512_maskz_loadu_ps(m, x + i), a0);
  }
  return _mm512_reduce_add_ps(a0);
}

float dot_bf16(const uint16_t* w, const float* x, int64_t n) {
  __m512 a0 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + i)));
    a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(h, 16)), _mm512_loadu_ps(x + i), a0);
  }
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    __m512i h = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, w + i));
    a0 = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(h, 16)), _mm512_maskz_loadu_ps(m, x + i), a0);
  }
  return _mm512_reduce_add_ps(a0);
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 xf = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
    _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, xf, _mm512_loadu_ps(y + i)));
  }
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    __m512 xf = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x + i));
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, xf, _mm512_maskz_loadu_ps(m, y + i)));
  }
}

// ---- Panel kernels (packed layout, kernels/packed.h): lane r of every vector is row r
// of the panel, so a block costs 8 vpdpbusd for 16 rows and nothing is reduced
// across lanes. Weights are decoded once per block for up to kTile tokens.

// Unsigned weights of one panel block: w[g] pairs with activation bytes 4g..4g+3.
// Q4: nibbles as they are (0..15); Q8: q + 128 (0..255, xor of the sign bit).
// Both are corrected through the activation sum: u = q + K with K = 8 or 128.
template <GgmlType T>
struct PanelWeights {
  static constexpr int32_t kOffset = T == GgmlType::Q4_0 ? 8 : T == GgmlType::Q8_0 ? 128 : 0;
  __m512i w[8];
  __m512 d, m;

  static constexpr bool kHalves = T == GgmlType::Q2_K || T == GgmlType::Q3_K || T == GgmlType::Q6_K;
  static constexpr int32_t kHalfOffset = T == GgmlType::Q6_K ? 32 : T == GgmlType::Q3_K ? 4 : 0;
  static constexpr bool kF32Scales = kHalves || T == GgmlType::Q4_K || T == GgmlType::Q5_K;
  static constexpr bool kBytes = kHalves || T == GgmlType::Q5_K;  // unsigned bytes as stored
  __m512 m2_lo, m2_hi;  // Q2_K's mins per half

  void load(const uint8_t* blk, const PanelFormat& f) {
    if constexpr (kF32Scales) {  // d (Q6_K: first half), m (Q6_K: second half's d)
      d = _mm512_loadu_ps(reinterpret_cast<const float*>(blk));
      m = _mm512_loadu_ps(reinterpret_cast<const float*>(blk + f.m_offset));
      if constexpr (T == GgmlType::Q2_K) {
        m2_lo = _mm512_loadu_ps(reinterpret_cast<const float*>(blk + 128));
        m2_hi = _mm512_loadu_ps(reinterpret_cast<const float*>(blk + 192));
      }
    } else {
      d = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk)));
    }
    if constexpr (T == GgmlType::Q4_1)
      m = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(blk + f.m_offset)));
    const auto* qs = reinterpret_cast<const __m512i*>(blk + f.qs_offset);
    if constexpr (kBytes) {  // Q5_K: q (0..31); Q6_K: q + 32 -- unsigned already
      for (int g = 0; g < 8; ++g) w[g] = _mm512_loadu_si512(qs + g);
    } else if constexpr (T == GgmlType::Q8_0) {
      const __m512i bias = _mm512_set1_epi8(char(0x80));
      for (int g = 0; g < 8; ++g) w[g] = _mm512_xor_si512(_mm512_loadu_si512(qs + g), bias);
    } else {
      const __m512i lo = _mm512_set1_epi8(0x0f);
      for (int g = 0; g < 4; ++g) {
        const __m512i v = _mm512_loadu_si512(qs + g);
        w[g] = _mm512_and_si512(v, lo);                             // weights 4g..4g+3
        w[g + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo);  // weights 16+4g..
      }
    }
  }

  // Activation byte offset paired with w[g].
  static constexpr int x_offset(int g) {
    return T == GgmlType::Q8_0 || kBytes ? 4 * g : (g < 4 ? 4 * g : 16 + 4 * (g - 4));
  }

  __m512 accumulate(const BlockQ8Act& x, __m512 acc) const {
    if constexpr (kHalves) {  // halves of 16 values, u = q + offset
      __m512i half[2] = {_mm512_set1_epi32(-kHalfOffset * x.sum_lo),
                         _mm512_set1_epi32(-kHalfOffset * (x.sum - x.sum_lo))};
      for (int g = 0; g < 8; ++g) {
        int32_t x4;
        std::memcpy(&x4, x.qs + 4 * g, 4);
        half[g / 4] = _mm512_dpbusd_epi32(half[g / 4], w[g], _mm512_set1_epi32(x4));
      }
      const __m512 dx = _mm512_set1_ps(x.d);
      acc = _mm512_fmadd_ps(d, _mm512_mul_ps(_mm512_cvtepi32_ps(half[0]), dx), acc);
      acc = _mm512_fmadd_ps(m, _mm512_mul_ps(_mm512_cvtepi32_ps(half[1]), dx), acc);
      if constexpr (T == GgmlType::Q2_K) {
        acc = _mm512_fmadd_ps(m2_lo, _mm512_set1_ps(float(x.sum_lo) * x.d), acc);
        acc = _mm512_fmadd_ps(m2_hi, _mm512_set1_ps(float(x.sum - x.sum_lo) * x.d), acc);
      }
      return acc;
    }
    __m512i isum = _mm512_set1_epi32(-kOffset * x.sum);
    for (int g = 0; g < 8; ++g) {
      int32_t x4;
      std::memcpy(&x4, x.qs + x_offset(g), 4);
      isum = _mm512_dpbusd_epi32(isum, w[g], _mm512_set1_epi32(x4));
    }
    const __m512 t = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(x.d));
    acc = _mm512_fmadd_ps(d, t, acc);
    if constexpr (T == GgmlType::Q4_1 || T == GgmlType::Q4_K || T == GgmlType::Q5_K)
      acc = _mm512_fmadd_ps(m, _mm512_set1_ps(x.s), acc);
    return acc;
  }
};

constexpr size_t kPrefetchAhead = 4096;  // bytes; measured: 0 -> 4096 took decode from ~115 to ~170 tok/s on one core

template <GgmlType T, int NT>
void panel_tile(const uint8_t* panel, int64_t nb, const BlockQ8Act* x, float* y, int64_t y_stride) {
  const PanelFormat& f = *panel_format(T);
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  PanelWeights<T> pw;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = panel + size_t(b) * f.block_bytes;
    // Decode streams weights from memory once per token: ask for them early (the
    // stream runs on into the next panel; prefetches past the end are harmless).
    for (size_t off = 0; off < f.block_bytes; off += 64)
      _mm_prefetch(reinterpret_cast<const char*>(blk + kPrefetchAhead + off), _MM_HINT_T0);
    pw.load(blk, f);
    for (int t = 0; t < NT; ++t) acc[t] = pw.accumulate(x[t * nb + b], acc[t]);
  }
  for (int t = 0; t < NT; ++t) _mm512_storeu_ps(y + t * y_stride, acc[t]);
}

constexpr int kTile = 6;  // tokens per pass over the panel: 8 weight + 6 acc registers + temps

// Ternary panels (quant/panel_format.h): per 32-value sub-block two 64-byte loads hold
// the 2-bit codes of all 16 rows; shifting each by 0, 2, 4, 6 gives the eight vectors
// w[G] (codes 0..3 as unsigned bytes) that pair with activation bytes 4G..4G+3. vpdpbusd
// then sums q * x from isum = -sum(x), i.e. sum((q - 1) * x), and the float steps are
// the scalar reference's.
template <int NT>
void ternary_tile(const uint8_t* panel, int64_t nb, const BlockQ8Act* x, float* y, int64_t y_stride) {
  constexpr int kSub = kQK_K / kQK;  // sub-blocks per super-block
  const int64_t nbk = nb / kSub;
  const uint8_t* scales = panel + size_t(nbk) * panel::kTernaryCodes;
  const __m512i three = _mm512_set1_epi8(3);
  __m512 acc[NT];
  for (int t = 0; t < NT; ++t) acc[t] = _mm512_setzero_ps();
  for (int64_t i = 0; i < nbk; ++i) {
    const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(scales + i * panel::kScales)));
    const uint8_t* codes = panel + size_t(i) * panel::kTernaryCodes;
    for (int s = 0; s < kSub; ++s) {
      const uint8_t* c = codes + 128 * s;
      _mm_prefetch(reinterpret_cast<const char*>(c + kPrefetchAhead), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + kPrefetchAhead + 64), _MM_HINT_T0);
      __m512i w[8];
      for (int g = 0; g < 2; ++g) {
        const __m512i v = _mm512_loadu_si512(c + 64 * g);
        w[4 * g] = _mm512_and_si512(v, three);
        w[4 * g + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 2), three);
        w[4 * g + 2] = _mm512_and_si512(_mm512_srli_epi16(v, 4), three);
        w[4 * g + 3] = _mm512_and_si512(_mm512_srli_epi16(v, 6), three);
      }
      for (int t = 0; t < NT; ++t) {
        const BlockQ8Act& xb = x[t * nb + i * kSub + s];
        __m512i isum = _mm512_set1_epi32(-xb.sum);
        for (int g = 0; g < 8; ++g) {
          int32_t x4;
          std::memcpy(&x4, xb.qs + 4 * g, 4);
          isum = _mm512_dpbusd_epi32(isum, w[g], _mm512_set1_epi32(x4));
        }
        acc[t] = _mm512_fmadd_ps(d, _mm512_mul_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(xb.d)), acc[t]);
      }
    }
  }
  for (int t = 0; t < NT; ++t) _mm512_storeu_ps(y + t * y_stride, acc[t]);
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
  for (; t + kTile <= n_x; t += kTile) layout_tile<T, kTile>(panel, nb, x + t * nb, y + t * y_stride, y_stride);
  switch (n_x - t) {
    case 5: layout_tile<T, 5>(panel, nb, x + t * nb, y + t * y_stride, y_stride); break;
    case 4: layout_tile<T, 4>(panel, nb, x + t * nb, y + t * y_stride, y_stride); break;
    case 3: layout_tile<T, 3>(panel, nb, x + t * nb, y + t * y_stride, y_stride); break;
    case 2: layout_tile<T, 2>(panel, nb, x + t * nb, y + t * y_stride, y_stride); break;
    case 1: layout_tile<T, 1>(panel, nb, x + t * nb, y + t * y_stride, y_stride); break;
    default: break;
  }
}

// Float panels: one vector = column k of the panel's 16 rows; two accumulators per
// token (even and odd columns) keep two FMA chains in flight for decode.
struct Bf16 {
  uint16_t bits;
};
inline __m512 load_col(const float* p) { return _mm512_load_ps(p); }
inline __m512 load_col(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load_col(const Bf16* p) {
  const __m512i h = _mm512_cvtepu16_epi32(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(h, 16));
}

template <class E, int NT>
void panel_tile_f(const uint8_t* panel, int64_t nb, const float* x, int64_t x_stride, float* y,
                  int64_t y_stride) {
  constexpr size_t kBlockBytes = size_t(kQK) * kPanelRows * sizeof(E);
  __m512 acc[NT][2];
  for (int t = 0; t < NT; ++t) acc[t][0] = acc[t][1] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = panel + size_t(b) * kBlockBytes;
    for (size_t off = 0; off < kBlockBytes; off += 64)
      _mm_prefetch(reinterpret_cast<const char*>(blk + kPrefetchAhead + off), _MM_HINT_T0);
    const auto* w = reinterpret_cast<const E*>(blk);
    for (int k = 0; k < kQK; k += 2) {  // even and odd columns: constant indices keep acc in registers
      const __m512 c0 = load_col(w + k * kPanelRows), c1 = load_col(w + (k + 1) * kPanelRows);
      for (int t = 0; t < NT; ++t) {
        const float* xt = x + t * x_stride + b * kQK + k;
        acc[t][0] = _mm512_fmadd_ps(c0, _mm512_set1_ps(xt[0]), acc[t][0]);
        acc[t][1] = _mm512_fmadd_ps(c1, _mm512_set1_ps(xt[1]), acc[t][1]);
      }
    }
  }
  for (int t = 0; t < NT; ++t) _mm512_storeu_ps(y + t * y_stride, _mm512_add_ps(acc[t][0], acc[t][1]));
}

template <class E>
void panel_dot_f(const uint8_t* panel, int64_t nb, const float* x, int64_t x_stride, int64_t n_x,
                 float* y, int64_t y_stride) {
  int64_t t = 0;
  for (; t + 8 <= n_x; t += 8) panel_tile_f<E, 8>(panel, nb, x + t * x_stride, x_stride, y + t * y_stride, y_stride);
  for (; t + 4 <= n_x; t += 4) panel_tile_f<E, 4>(panel, nb, x + t * x_stride, x_stride, y + t * y_stride, y_stride);
  for (; t < n_x; ++t) panel_tile_f<E, 1>(panel, nb, x + t * x_stride, x_stride, y + t * y_stride, y_stride);
}

// exp(x) = 2^n * e^r with n = round(x / ln 2), |r| <= ln2 / 2: a degree-6 Taylor
// polynomial (relative error ~1e-7) and vscalefps for 2^n. Below -87 (and -inf) -> 0.
inline __m512 exp512(__m512 x) {
  const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.0f)), _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln 2 split in two
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps(__mmask16(~tiny), _mm512_scalef_ps(p, n));
}

struct Vec512 {
  using Reg = __m512;
  static constexpr int64_t kLanes = 16;
  static constexpr int64_t kRegs = 32;  // vector registers
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg set1(float x) { return _mm512_set1_ps(x); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg load(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static void store(float* p, Reg v) { _mm512_storeu_ps(p, v); }
  static Reg fma(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg sub(Reg a, Reg b) { return _mm512_sub_ps(a, b); }
  static Reg mul(Reg a, Reg b) { return _mm512_mul_ps(a, b); }
  static Reg div(Reg a, Reg b) { return _mm512_div_ps(a, b); }
  static float reduce_add(Reg v) { return _mm512_reduce_add_ps(v); }
  // out[r] = the sum of a[r]'s lanes, r < 4: pairs of rows interleaved, then pairs of pairs, so
  // each 128-bit lane holds one partial sum of every row; the four lanes added last.
  static void reduce_add4(const Reg* a, float* out) {
    const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(a[0], a[1]), _mm512_unpackhi_ps(a[0], a[1]));
    const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(a[2], a[3]), _mm512_unpackhi_ps(a[2], a[3]));
    const __m512d d01 = _mm512_castps_pd(s01), d23 = _mm512_castps_pd(s23);
    const __m512 s = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(d01, d23)),
                                   _mm512_castpd_ps(_mm512_unpackhi_pd(d01, d23)));
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(s),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(s), 1)));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
  }
  static Reg max(Reg a, Reg b) { return _mm512_max_ps(a, b); }
  static float reduce_max(Reg v) { return _mm512_reduce_max_ps(v); }
  static Reg exp(Reg x) { return exp512(x); }
  static Reg first_n(Reg v, int64_t n) {  // lanes >= n cleared
    return _mm512_maskz_mov_ps(__mmask16(n <= 0 ? 0 : n >= 16 ? 0xFFFF : (1u << n) - 1), v);
  }

  // ---- for attend_simd's quantized rows (attend_simd.h)
  using IReg = __m512i;
  static float h2f(uint16_t h) { return peregrine::h2f(h); }
  static void quantize_query(const float* x, BlockQ8Act* out, int64_t n) { quantize_q8(x, out, n); }
  static Reg cvt_i32(IReg v) { return _mm512_cvtepi32_ps(v); }
  static IReg set1_i32(int32_t x) { return _mm512_set1_epi32(x); }
  static IReg add_i32(IReg a, IReg b) { return _mm512_add_epi32(a, b); }
  static IReg bcast4(const int8_t* p) {
    int32_t x;
    std::memcpy(&x, p, 4);
    return _mm512_set1_epi32(x);
  }
  // Signed keys against signed queries through vpdpbusd (unsigned x signed): k + 128 as the
  // unsigned side, so each dot carries 128 * sum(q), which the caller subtracts.
  static constexpr int32_t kS8Bias = 128;
  static IReg prep_s8(IReg k) { return _mm512_xor_si512(k, _mm512_set1_epi8(char(0x80))); }
  static IReg dot_s8(IReg acc, IReg k_prepped, IReg q) { return _mm512_dpbusd_epi32(acc, k_prepped, q); }
  static IReg dot_u8(IReg acc, IReg u, IReg q) { return _mm512_dpbusd_epi32(acc, u, q); }
  static IReg nibbles_lo(IReg v) { return _mm512_and_si512(v, _mm512_set1_epi8(0x0f)); }
  static IReg nibbles_hi(IReg v) { return _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(0x0f)); }
  // out[g] lane j = bytes 4g..4g+3 of the 16 at p + off[j]: 128-bit lane k of r[a] holds row
  // 4k + a, so two rounds of unpacks leave row 4k + a in lane 4k + a.
  static void transpose_chunks(const uint8_t* p, const int32_t* off, IReg* out) {
    auto ld = [&](int j) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + off[j])); };
    IReg r[4];
    for (int a = 0; a < 4; ++a) {
      IReg v = _mm512_castsi128_si512(ld(a));
      v = _mm512_inserti32x4(v, ld(4 + a), 1);
      v = _mm512_inserti32x4(v, ld(8 + a), 2);
      r[a] = _mm512_inserti32x4(v, ld(12 + a), 3);
    }
    const IReg t0 = _mm512_unpacklo_epi32(r[0], r[1]), t1 = _mm512_unpackhi_epi32(r[0], r[1]);
    const IReg t2 = _mm512_unpacklo_epi32(r[2], r[3]), t3 = _mm512_unpackhi_epi32(r[2], r[3]);
    out[0] = _mm512_unpacklo_epi64(t0, t2);
    out[1] = _mm512_unpackhi_epi64(t0, t2);
    out[2] = _mm512_unpacklo_epi64(t1, t3);
    out[3] = _mm512_unpackhi_epi64(t1, t3);
  }
  // The fp16 at p + off[j] of each lane's row (x2: and the one after it, Q2's d and m).
  static Reg gather_f16(const uint8_t* p, const int32_t* off) {
    return _mm512_cvtph_ps(_mm256_set_m128i(halves8(p, off + 8), halves8(p, off)));
  }
  static void gather_f16x2(const uint8_t* p, const int32_t* off, Reg& lo, Reg& hi) {
    lo = gather_f16(p, off);
    hi = gather_f16(p + 2, off);
  }
  // 16 two-bit codes (4 bytes, code l at bits 2l) as floats: vpermps reads the low 4 bits of
  // w >> 2l, and the table maps them to their low 2.
  static Reg codes2(const uint8_t* p) {
    uint32_t w;
    std::memcpy(&w, p, 4);
    const IReg sh = _mm512_srlv_epi32(_mm512_set1_epi32(int32_t(w)),
                                      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30));
    return _mm512_permutexvar_ps(sh, _mm512_setr_ps(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3));
  }
  static Reg load_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  // Q4_0 values q - 8 of 16 bytes' low (or high) nibbles.
  static Reg load_q4(const uint8_t* p, bool high) {
    IReg v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    v = high ? _mm512_srli_epi32(v, 4) : _mm512_and_si512(v, _mm512_set1_epi32(0x0f));
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(v, _mm512_set1_epi32(8)));
  }
  // KernelTable::ssm_scan's 16 partial sums in one register, added in its tree order:
  // lanes l + 8, then l + 4, l + 2, l + 1.
  static float tree16(const Reg* acc) {
    const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(acc[0]), _mm512_extractf32x8_ps(acc[0], 1));
    const __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    const __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));
  }
};

}  // namespace

const KernelTable* avx512_kernels() {
  static const KernelTable t{
      .isa = Isa::Avx512,
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
      .attend = attend_simd<Vec512>,
      .attn_hd_multiple = Vec512::kLanes,
      .silu_mul = silu_mul_simd<Vec512>,
      .ssm_scan = ssm_scan_simd<Vec512>,
  };
  return &t;
}

}  // namespace peregrine
