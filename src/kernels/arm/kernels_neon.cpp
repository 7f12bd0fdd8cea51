// AArch64 NEON kernels (baseline armv8-a; SDOT when built with +dotprod).
// quantize_q8, the quantized row dots, the panel kernels (Q4_0, Q4_1, Q8_0, ternary) and
// silu_mul are bit-identical to the scalar reference (exact integer sums, then its float
// steps in its order); the float dots and axpy use FMA and several accumulators, so they
// differ from it by rounding (tested with a bound); attend is kernels/attend_simd.h's, as on x86.
// Tested under qemu by scripts/test_neon.sh (tests/arm/test_kernels_neon.cpp).
#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/attend_simd.h"
#include "kernels/kernels.h"
#include "kernels/packed.h"

namespace peregrine {
namespace {

// fp16 -> f32 with FCVTL (exact, subnormals included); the portable fp16_to_f32 is branchy.
inline float h2f(uint16_t h) {
  return vgetq_lane_f32(vcvt_f32_f16(vreinterpret_f16_u16(vdup_n_u16(h))), 0);
}

// Eight halves -> two float32x4 (halves 0..3, 4..7).
inline float32x4_t f16_lo(uint16x8_t h) {
  return vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
}
inline float32x4_t f16_hi(uint16x8_t h) {
  return vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)));
}

// bf16 is the top half of an f32: widen by shifting left 16.
inline float32x4_t bf16_lo(uint16x8_t h) {
  return vreinterpretq_f32_u32(vshll_n_u16(vget_low_u16(h), 16));
}
inline float32x4_t bf16_hi(uint16x8_t h) { return vreinterpretq_f32_u32(vshll_high_n_u16(h, 16)); }

// One block of 32 values (v4[8]) -> 8-bit activations, as the reference does it.
inline void quantize_block(const float32x4_t* v4, BlockQ8Act& out) {
  // maxNum (FMAXNM) ignores NaN like std::fmax in the reference; max is exact in any order.
  float32x4_t m = vdupq_n_f32(0.0f);
  for (int j = 0; j < 8; ++j) m = vmaxnmq_f32(m, vabsq_f32(v4[j]));
  const float amax = vmaxnmvq_f32(m);
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  // FCVTNS rounds to nearest, ties to even: the reference's nearbyint.
  int32x4_t q4[8];
  for (int j = 0; j < 8; ++j) q4[j] = vcvtnq_s32_f32(vmulq_n_f32(v4[j], id));
  int32x4_t s = vaddq_s32(vaddq_s32(vaddq_s32(q4[0], q4[1]), vaddq_s32(q4[2], q4[3])),
                          vaddq_s32(vaddq_s32(q4[4], q4[5]), vaddq_s32(q4[6], q4[7])));
  const int sum = vaddvq_s32(s);
  // |q| <= 127, so the saturating narrows never saturate.
  for (int j = 0; j < 2; ++j) {
    int16x8_t lo = vcombine_s16(vqmovn_s32(q4[4 * j]), vqmovn_s32(q4[4 * j + 1]));
    int16x8_t hi = vcombine_s16(vqmovn_s32(q4[4 * j + 2]), vqmovn_s32(q4[4 * j + 3]));
    vst1q_s8(out.qs + 16 * j, vcombine_s8(vqmovn_s16(lo), vqmovn_s16(hi)));
  }
  out.d = d;
  out.s = d * float(sum);
  out.sum = int16_t(sum);
  out.sum_lo = int16_t(vaddvq_s32(vaddq_s32(vaddq_s32(q4[0], q4[1]), vaddq_s32(q4[2], q4[3]))));
}

void quantize_q8(const float* x, BlockQ8Act* out, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b) {
    float32x4_t v4[8];  // the block's 32 values
    for (int j = 0; j < 8; ++j) v4[j] = vld1q_f32(x + b * kQK + 4 * j);
    quantize_block(v4, out[b]);
  }
}

// RMSNorm fused into the quantization: (x * scale) * w, rounded at each step as the
// reference does (w null: x * scale).
void quantize_q8_norm(const float* x, float scale, const float* w, BlockQ8Act* out, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b) {
    float32x4_t v4[8];
    for (int j = 0; j < 8; ++j) {
      v4[j] = vmulq_n_f32(vld1q_f32(x + b * kQK + 4 * j), scale);
      if (w != nullptr) v4[j] = vmulq_f32(v4[j], vld1q_f32(w + b * kQK + 4 * j));
    }
    quantize_block(v4, out[b]);
  }
}

// Decoders: one weight block -> 32 int8 weights as two int8x16 (weights 0..15, 16..31),
// matching the activation order x.qs[0..15], x.qs[16..31].
struct Q4_0Decode {
  using Block = BlockQ4_0;
  static constexpr bool kOffset = false;
  static void q(const Block& b, int8x16_t& q0, int8x16_t& q1) {
    const uint8x16_t v = vld1q_u8(b.qs);
    q0 = vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f))), vdupq_n_s8(8));
    q1 = vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8(v, 4)), vdupq_n_s8(8));
  }
  static float m(const Block&) { return 0.0f; }
};
struct Q4_1Decode {
  using Block = BlockQ4_1;
  static constexpr bool kOffset = true;
  static void q(const Block& b, int8x16_t& q0, int8x16_t& q1) {
    const uint8x16_t v = vld1q_u8(b.qs);  // nibbles 0..15 fit int8 unchanged
    q0 = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f)));
    q1 = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
  }
  static float m(const Block& b) { return h2f(b.m); }
};
struct Q8_0Decode {
  using Block = BlockQ8_0;
  static constexpr bool kOffset = false;
  static void q(const Block& b, int8x16_t& q0, int8x16_t& q1) {
    q0 = vld1q_s8(b.qs);
    q1 = vld1q_s8(b.qs + 16);
  }
  static float m(const Block&) { return 0.0f; }
};

// sum_j w[j] * x[j] over one block of 32, as four exact int32 partial sums (each at
// most 8 products of |w| <= 128 and |x| <= 128).
inline int32x4_t block_dot(int8x16_t w0, int8x16_t w1, const int8_t* xq) {
  const int8x16_t x0 = vld1q_s8(xq), x1 = vld1q_s8(xq + 16);
#if defined(__ARM_FEATURE_DOTPROD)
  return vdotq_s32(vdotq_s32(vdupq_n_s32(0), w0, x0), w1, x1);
#else
  // int8 x int8 fits int16; pairwise widening adds keep everything exact.
  int32x4_t s = vpaddlq_s16(vmull_s8(vget_low_s8(w0), vget_low_s8(x0)));
  s = vpadalq_s16(s, vmull_high_s8(w0, x0));
  s = vpadalq_s16(s, vmull_s8(vget_low_s8(w1), vget_low_s8(x1)));
  return vpadalq_s16(s, vmull_high_s8(w1, x1));
#endif
}

// Per row and block, the float steps are the scalar reference's, in its order:
//   t = (d * dx) * float(isum)  [+ m * s for Q4_1];  acc = acc + t
// and isum is the exact integer dot, so every row equals the scalar result bit for bit
// (with -ffp-contract=off, as the build sets: a fused multiply-add rounds once, not
// twice). The same holds for any n_x, which is batch invariance: a row's result never
// depends on which other rows share the call.

// One weight row against four activation rows: the weight block is decoded once, and
// the four rows' float steps run side by side, one row per lane.
template <class D>
void dot4(const typename D::Block* b, int64_t nb, const BlockQ8Act* x, float* y, int64_t y_stride) {
  const BlockQ8Act* x0 = x;  // rows [4, nb]
  const BlockQ8Act* x1 = x + nb;
  const BlockQ8Act* x2 = x + 2 * nb;
  const BlockQ8Act* x3 = x + 3 * nb;
  float32x4_t acc = vdupq_n_f32(0.0f);  // [row]
  for (int64_t i = 0; i < nb; ++i) {
    int8x16_t q0, q1;
    D::q(b[i], q0, q1);
    const int32x4_t s0 = block_dot(q0, q1, x0[i].qs), s1 = block_dot(q0, q1, x1[i].qs);
    const int32x4_t s2 = block_dot(q0, q1, x2[i].qs), s3 = block_dot(q0, q1, x3[i].qs);
    const int32x4_t isum = vpaddq_s32(vpaddq_s32(s0, s1), vpaddq_s32(s2, s3));  // [row]
    const float dx[4] = {x0[i].d, x1[i].d, x2[i].d, x3[i].d};
    float32x4_t t = vmulq_f32(vmulq_n_f32(vld1q_f32(dx), h2f(b[i].d)), vcvtq_f32_s32(isum));
    if constexpr (D::kOffset) {
      const float sx[4] = {x0[i].s, x1[i].s, x2[i].s, x3[i].s};
      t = vaddq_f32(t, vmulq_n_f32(vld1q_f32(sx), D::m(b[i])));
    }
    acc = vaddq_f32(acc, t);
  }
  y[0] = vgetq_lane_f32(acc, 0);
  y[y_stride] = vgetq_lane_f32(acc, 1);
  y[2 * y_stride] = vgetq_lane_f32(acc, 2);
  y[3 * y_stride] = vgetq_lane_f32(acc, 3);
}

// One weight row against one activation row: the same steps, in scalar registers.
template <class D>
float dot1(const typename D::Block* b, int64_t nb, const BlockQ8Act* x) {
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int8x16_t q0, q1;
    D::q(b[i], q0, q1);
    const int isum = vaddvq_s32(block_dot(q0, q1, x[i].qs));
    float t = h2f(b[i].d) * x[i].d * float(isum);
    if constexpr (D::kOffset) t = t + D::m(b[i]) * x[i].s;
    acc = acc + t;
  }
  return acc;
}

// One weight row against n_x activation rows (nb blocks each), four at a time.
template <class D>
void dot_rows(const void* w, int64_t nb, const BlockQ8Act* x, int64_t n_x, float* y,
              int64_t y_stride) {
  auto* b = static_cast<const typename D::Block*>(w);
  int64_t r = 0;
  for (; r + 4 <= n_x; r += 4) dot4<D>(b, nb, x + r * nb, y + r * y_stride, y_stride);
  for (; r < n_x; ++r) y[r * y_stride] = dot1<D>(b, nb, x + r * nb);
}

float dot_f32(const float* w, const float* x, int64_t n) {
  float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = vfmaq_f32(a0, vld1q_f32(w + i), vld1q_f32(x + i));
    a1 = vfmaq_f32(a1, vld1q_f32(w + i + 4), vld1q_f32(x + i + 4));
    a2 = vfmaq_f32(a2, vld1q_f32(w + i + 8), vld1q_f32(x + i + 8));
    a3 = vfmaq_f32(a3, vld1q_f32(w + i + 12), vld1q_f32(x + i + 12));
  }
  for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, vld1q_f32(w + i), vld1q_f32(x + i));
  float acc = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
  for (; i < n; ++i) acc += w[i] * x[i];
  return acc;
}

float dot_f16(const uint16_t* w, const float* x, int64_t n) {
  float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint16x8_t h = vld1q_u16(w + i);
    a0 = vfmaq_f32(a0, f16_lo(h), vld1q_f32(x + i));
    a1 = vfmaq_f32(a1, f16_hi(h), vld1q_f32(x + i + 4));
  }
  float acc = vaddvq_f32(vaddq_f32(a0, a1));
  for (; i < n; ++i) acc += h2f(w[i]) * x[i];
  return acc;
}

float dot_bf16(const uint16_t* w, const float* x, int64_t n) {
  float32x4_t a0 = vdupq_n_f32(0.0f), a1 = a0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint16x8_t h = vld1q_u16(w + i);
    a0 = vfmaq_f32(a0, bf16_lo(h), vld1q_f32(x + i));
    a1 = vfmaq_f32(a1, bf16_hi(h), vld1q_f32(x + i + 4));
  }
  float acc = vaddvq_f32(vaddq_f32(a0, a1));
  for (; i < n; ++i) acc += vgetq_lane_f32(bf16_lo(vdupq_n_u16(w[i])), 0) * x[i];
  return acc;
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
    vst1q_f32(y + i + 4, vfmaq_n_f32(vld1q_f32(y + i + 4), vld1q_f32(x + i + 4), a));
  }
  for (; i + 4 <= n; i += 4) vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), vld1q_f32(x + i), a));
  for (; i < n; ++i) y[i] += a * x[i];
}

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const uint16x8_t h = vld1q_u16(x + i);
    vst1q_f32(y + i, vfmaq_n_f32(vld1q_f32(y + i), f16_lo(h), a));
    vst1q_f32(y + i + 4, vfmaq_n_f32(vld1q_f32(y + i + 4), f16_hi(h), a));
  }
  for (; i < n; ++i) y[i] += a * h2f(x[i]);
}

// out[n] = silu(g) * u with libm's exp, as the reference: the same bits at every
// position. (A NEON exp polynomial would have to treat the tail as the body does, or a
// token's result would depend on where it falls in the batch.)
void silu_mul(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

// KernelTable::ssm_scan: a state row's block of 64 floats in 16 registers while the tokens pass;
// the 16 partial sums in four registers (acc[4 r + l] in lane l of register r), carried across
// blocks in `carry`, added in the tree order: r + 2, then r + 1 (lanes l + 8, l + 4), then lanes
// l + 2, l + 1. ds a multiple of 16.
void ssm_scan(float* S, const float* x, const float* B, const float* C, int64_t in_stride, const float* dt,
              const float* dA, float D, int64_t hd, int64_t ds, int64_t n_tok, float* y, int64_t y_stride) {
  constexpr int64_t kBlock = 64, kRegs = kBlock / 4;
  thread_local std::vector<float> carry;
  if (ds > kBlock && carry.size() < size_t(n_tok * 16)) carry.resize(size_t(n_tok * 16));
  for (int64_t i = 0; i < hd; ++i) {
    float* s = S + i * ds;
    for (int64_t b0 = 0; b0 < ds; b0 += kBlock) {
      const int64_t nr = std::min(kBlock, ds - b0) / 4;
      const bool first = b0 == 0, last = b0 + kBlock >= ds;
      float32x4_t st[kRegs];
      for (int64_t q = 0; q < nr; ++q) st[q] = vld1q_f32(s + b0 + 4 * q);
      for (int64_t t = 0; t < n_tok; ++t) {
        const float* xt = x + t * in_stride;
        const float *Bt = B + t * in_stride + b0, *Ct = C + t * in_stride + b0;
        const float32x4_t xdt = vdupq_n_f32(xt[i] * dt[t]), da = vdupq_n_f32(dA[t]);
        float32x4_t acc[4];
        for (int r = 0; r < 4; ++r) acc[r] = first ? vdupq_n_f32(0.0f) : vld1q_f32(carry.data() + t * 16 + 4 * r);
        for (int64_t q = 0; q < nr; ++q) {
          st[q] = vfmaq_f32(vmulq_f32(vld1q_f32(Bt + 4 * q), xdt), st[q], da);
          acc[q % 4] = vfmaq_f32(acc[q % 4], st[q], vld1q_f32(Ct + 4 * q));
        }
        if (last) {
          const float32x4_t a = vaddq_f32(vaddq_f32(acc[0], acc[2]), vaddq_f32(acc[1], acc[3]));
          const float32x2_t b = vadd_f32(vget_low_f32(a), vget_high_f32(a));
          y[t * y_stride + i] = std::fma(D, xt[i], vget_lane_f32(b, 0) + vget_lane_f32(b, 1));
        } else {
          for (int r = 0; r < 4; ++r) vst1q_f32(carry.data() + t * 16 + 4 * r, acc[r]);
        }
      }
      for (int64_t q = 0; q < nr; ++q) vst1q_f32(s + b0 + 4 * q, st[q]);
    }
  }
}

// ---- Panel kernels (packed layout, kernels/packed.h). A 64-byte panel group is four
// 16-byte quarters, rows 0-3, 4-7, 8-11, 12-15; each quarter is done on its own so that
// its weights stay in registers while up to four tokens pass. Lane i of every vector is
// row 4 * quarter + i: no horizontal reductions. Integer sums are exact; the float
// steps are the scalar reference's (kernels.h), so results are bit-identical to it.
template <GgmlType T>
struct QuarterWeights {
  static constexpr int kGroups = 8;  // Q8: 8 groups of 4 weights; Q4: 4 low + 4 high nibbles
  int8x16_t w[kGroups];              // Q4: nibbles 0..15 (w[g] pairs with x_offset(g)); Q8: q
  float32x4_t d, m;                  // [row]

  void load(const uint8_t* blk, const PanelFormat& f, int quarter) {
    // Four fp16 values at p: this quarter's rows.
    auto f16x4 = [](const uint8_t* p) {
      return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(p))));
    };
    d = f16x4(blk + 8 * quarter);
    if constexpr (T == GgmlType::Q4_1) m = f16x4(blk + f.m_offset + 8 * quarter);
    const uint8_t* qs = blk + f.qs_offset + 16 * quarter;
    if constexpr (T == GgmlType::Q8_0) {
      for (int g = 0; g < 8; ++g) w[g] = vld1q_s8(reinterpret_cast<const int8_t*>(qs + 64 * g));
    } else {
      for (int g = 0; g < 4; ++g) {
        const uint8x16_t v = vld1q_u8(qs + 64 * g);
        w[g] = vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0f)));
        w[g + 4] = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
      }
    }
  }

  static constexpr int x_offset(int g) {
    return T == GgmlType::Q8_0 ? 4 * g : (g < 4 ? 4 * g : 16 + 4 * (g - 4));
  }
  // The four activation bytes that pair with group g, in every 32-bit lane.
  static int8x16_t bcast(const BlockQ8Act& x, int g) {
    int32_t x4;
    std::memcpy(&x4, x.qs + x_offset(g), 4);
    return vreinterpretq_s8_s32(vdupq_n_s32(x4));
  }

  float32x4_t accumulate(const BlockQ8Act& x, float32x4_t acc) const {
    int32x4_t isum;  // [row]
#if defined(__ARM_FEATURE_DOTPROD)
    isum = vdupq_n_s32(0);
    for (int g = 0; g < kGroups; ++g) isum = vdotq_s32(isum, w[g], bcast(x, g));
#else
    // Products fit int16; pairwise widening adds into rows 0-1 (lo) and 2-3 (hi).
    int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0);
    for (int g = 0; g < kGroups; ++g) {
      const int8x16_t xb = bcast(x, g);
      lo = vpadalq_s16(lo, vmull_s8(vget_low_s8(w[g]), vget_low_s8(xb)));
      hi = vpadalq_s16(hi, vmull_high_s8(w[g], xb));
    }
    isum = vpaddq_s32(lo, hi);
#endif
    if constexpr (T == GgmlType::Q4_0)
      isum = vsubq_s32(isum, vdupq_n_s32(8 * x.sum));  // nibble - 8
    const float32x4_t t = vmulq_n_f32(vcvtq_f32_s32(isum), x.d);
    acc = vfmaq_f32(acc, d, t);                                         // fma(d, isum * dx, acc)
    if constexpr (T == GgmlType::Q4_1) acc = vfmaq_n_f32(acc, m, x.s);  // fma(m, s, acc)
    return acc;
  }
};

template <GgmlType T, int NT>
void panel_tile(const uint8_t* panel, int64_t nb, const BlockQ8Act* x, float* y, int64_t y_stride) {
  const PanelFormat& f = *panel_format(T);
  for (int quarter = 0; quarter < kPanelRows / 4; ++quarter) {
    float32x4_t acc[NT];  // [token][row]
    for (int t = 0; t < NT; ++t) acc[t] = vdupq_n_f32(0.0f);
    QuarterWeights<T> qw;
    for (int64_t b = 0; b < nb; ++b) {
      qw.load(panel + size_t(b) * f.block_bytes, f, quarter);
      for (int t = 0; t < NT; ++t) acc[t] = qw.accumulate(x[t * nb + b], acc[t]);
    }
    for (int t = 0; t < NT; ++t) vst1q_f32(y + t * y_stride + 4 * quarter, acc[t]);
  }
}

// ---- Ternary panels (quant/panel_format.h), one quarter (4 rows) at a time: per 32-value
// sub-block two 16-byte loads hold the quarter's 2-bit codes; byte shifts by 0, 2, 4, 6
// (masked) give w[G] (0..3) for activation bytes 4G..4G+3. isum starts at -sum(x), so it
// ends as sum((q - 1) * x), exact; then the scalar float steps.
template <int NT>
void ternary_tile(const uint8_t* panel, int64_t nb, const BlockQ8Act* x, float* y, int64_t y_stride) {
  constexpr int kSub = kQK_K / kQK;
  const int64_t nbk = nb / kSub;
  const uint8_t* scales = panel + size_t(nbk) * panel::kTernaryCodes;
  const uint8x16_t three = vdupq_n_u8(3);
  for (int quarter = 0; quarter < kPanelRows / 4; ++quarter) {
    float32x4_t acc[NT];  // [token][row]
    for (int t = 0; t < NT; ++t) acc[t] = vdupq_n_f32(0.0f);
    for (int64_t i = 0; i < nbk; ++i) {
      const float32x4_t d = vcvt_f32_f16(vreinterpret_f16_u16(
          vld1_u16(reinterpret_cast<const uint16_t*>(scales + i * panel::kScales + 8 * quarter))));
      const uint8_t* codes = panel + size_t(i) * panel::kTernaryCodes;
      for (int s = 0; s < kSub; ++s) {
        int8x16_t w[8];
        for (int g = 0; g < 2; ++g) {
          const uint8x16_t v = vld1q_u8(codes + 128 * s + 64 * g + 16 * quarter);
          w[4 * g] = vreinterpretq_s8_u8(vandq_u8(v, three));
          w[4 * g + 1] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 2), three));
          w[4 * g + 2] = vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(v, 4), three));
          w[4 * g + 3] = vreinterpretq_s8_u8(vshrq_n_u8(v, 6));
        }
        for (int t = 0; t < NT; ++t) {
          const BlockQ8Act& xb = x[t * nb + i * kSub + s];
          auto bcast = [&](int g) {
            int32_t x4;
            std::memcpy(&x4, xb.qs + 4 * g, 4);
            return vreinterpretq_s8_s32(vdupq_n_s32(x4));
          };
          int32x4_t isum;  // [row]
#if defined(__ARM_FEATURE_DOTPROD)
          isum = vdupq_n_s32(-xb.sum);
          for (int g = 0; g < 8; ++g) isum = vdotq_s32(isum, w[g], bcast(g));
#else
          int32x4_t lo = vdupq_n_s32(0), hi = vdupq_n_s32(0);
          for (int g = 0; g < 8; ++g) {
            const int8x16_t xv = bcast(g);
            lo = vpadalq_s16(lo, vmull_s8(vget_low_s8(w[g]), vget_low_s8(xv)));
            hi = vpadalq_s16(hi, vmull_high_s8(w[g], xv));
          }
          isum = vsubq_s32(vpaddq_s32(lo, hi), vdupq_n_s32(xb.sum));
#endif
          acc[t] = vfmaq_f32(acc[t], d, vmulq_n_f32(vcvtq_f32_s32(isum), xb.d));  // fma(d, isum * dx, acc)
        }
      }
    }
    for (int t = 0; t < NT; ++t) vst1q_f32(y + t * y_stride + 4 * quarter, acc[t]);
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

// ---- Float panels: 32-column blocks of element [k][r], so column k of the 16 rows is
// 16 consecutive elements. Per row, two chains of fma(w, x, acc) (even and odd columns)
// in column order, then even + odd: the scalar reference's steps (kernels.h), so the
// results are bit-identical to it. Each half panel (8 rows, two vectors) is done on its
// own so that up to four tokens fit in registers.
struct Bf16 {
  uint16_t bits;
};
inline void load8(const float* p, float32x4_t& a, float32x4_t& b) {
  a = vld1q_f32(p);
  b = vld1q_f32(p + 4);
}
inline void load8(const uint16_t* p, float32x4_t& a, float32x4_t& b) {
  const uint16x8_t h = vld1q_u16(p);
  a = f16_lo(h);
  b = f16_hi(h);
}
inline void load8(const Bf16* p, float32x4_t& a, float32x4_t& b) {
  const uint16x8_t h = vld1q_u16(&p->bits);
  a = bf16_lo(h);
  b = bf16_hi(h);
}

template <class E, int NT>
void panel_tile_f(const E* w, int64_t n_cols, const float* x, int64_t x_stride, float* y,
                  int64_t y_stride) {
  for (int half = 0; half < 2; ++half) {
    float32x4_t acc[NT][2][2];  // [token][even, odd column][rows 0-3, 4-7 of the half]
    for (int t = 0; t < NT; ++t)
      for (int c = 0; c < 2; ++c) acc[t][c][0] = acc[t][c][1] = vdupq_n_f32(0.0f);
    const E* wh = w + 8 * half;
    for (int64_t k = 0; k < n_cols; k += 2) {  // n_cols is a multiple of 32
      for (int c = 0; c < 2; ++c) {
        float32x4_t w0, w1;
        load8(wh + (k + c) * kPanelRows, w0, w1);
        for (int t = 0; t < NT; ++t) {
          const float xk = x[t * x_stride + k + c];
          acc[t][c][0] = vfmaq_n_f32(acc[t][c][0], w0, xk);  // fma(w, x, acc)
          acc[t][c][1] = vfmaq_n_f32(acc[t][c][1], w1, xk);
        }
      }
    }
    for (int t = 0; t < NT; ++t) {
      vst1q_f32(y + t * y_stride + 8 * half, vaddq_f32(acc[t][0][0], acc[t][1][0]));
      vst1q_f32(y + t * y_stride + 8 * half + 4, vaddq_f32(acc[t][0][1], acc[t][1][1]));
    }
  }
}

template <class E>
void panel_dot_f(const uint8_t* panel, int64_t nb, const float* x, int64_t x_stride, int64_t n_x,
                 float* y, int64_t y_stride) {
  const auto* w = reinterpret_cast<const E*>(panel);  // [nb * 32 columns][16 rows]
  const int64_t n_cols = nb * kQK;
  int64_t t = 0;
  for (; t + 4 <= n_x; t += 4)
    panel_tile_f<E, 4>(w, n_cols, x + t * x_stride, x_stride, y + t * y_stride, y_stride);
  switch (n_x - t) {
    case 3:
      panel_tile_f<E, 3>(w, n_cols, x + t * x_stride, x_stride, y + t * y_stride, y_stride);
      break;
    case 2:
      panel_tile_f<E, 2>(w, n_cols, x + t * x_stride, x_stride, y + t * y_stride, y_stride);
      break;
    case 1:
      panel_tile_f<E, 1>(w, n_cols, x + t * x_stride, x_stride, y + t * y_stride, y_stride);
      break;
    default: break;
  }
}

// ---- Attention: kernels/attend_simd.h over 4-lane registers.

// exp(x) = 2^n * e^r as the x86 units compute it: n = round(x / ln 2), |r| <= ln 2 / 2, a
// degree-6 Taylor polynomial, 2^n built in the exponent bits. Below -87 (and -inf) -> 0.
inline float32x4_t exp128(float32x4_t x) {
  const uint32x4_t tiny = vcltq_f32(x, vdupq_n_f32(-87.0f));
  x = vmaxq_f32(vminq_f32(x, vdupq_n_f32(88.0f)), vdupq_n_f32(-87.0f));
  const float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504088896341f));
  float32x4_t r = vfmsq_f32(x, n, vdupq_n_f32(0.693359375f));  // ln 2 split in two
  r = vfmsq_f32(r, n, vdupq_n_f32(-2.12194440e-4f));
  float32x4_t p = vdupq_n_f32(1.0f / 720);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 120), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 24), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 6), p, r);
  p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  const int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)), 23);  // n in [-126, 127]
  const float32x4_t y = vmulq_f32(p, vreinterpretq_f32_s32(e));
  return vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(y), tiny));
}

struct Vec128 {
  using Reg = float32x4_t;
  static constexpr int64_t kLanes = 4;
  static constexpr int64_t kRegs = 32;  // vector registers
  static Reg zero() { return vdupq_n_f32(0.0f); }
  static Reg set1(float x) { return vdupq_n_f32(x); }
  static Reg load(const float* p) { return vld1q_f32(p); }
  static Reg load(const uint16_t* p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
  static void store(float* p, Reg v) { vst1q_f32(p, v); }
  static Reg fma(Reg a, Reg b, Reg c) { return vfmaq_f32(c, a, b); }
  static Reg add(Reg a, Reg b) { return vaddq_f32(a, b); }
  static Reg sub(Reg a, Reg b) { return vsubq_f32(a, b); }
  static Reg mul(Reg a, Reg b) { return vmulq_f32(a, b); }
  static float reduce_add(Reg v) { return vaddvq_f32(v); }
  // out[r] = the sum of a[r]'s lanes, r < 4: pairwise adds of pairs of rows.
  static void reduce_add4(const Reg* a, float* out) {
    vst1q_f32(out, vpaddq_f32(vpaddq_f32(a[0], a[1]), vpaddq_f32(a[2], a[3])));
  }
  static Reg max(Reg a, Reg b) { return vmaxq_f32(a, b); }
  static float reduce_max(Reg v) { return vmaxvq_f32(v); }
  static Reg exp(Reg x) { return exp128(x); }
  static Reg first_n(Reg v, int64_t n) {  // lanes >= n cleared
    const int32x4_t iota = {0, 1, 2, 3};
    const uint32x4_t keep = vcltq_s32(iota, vdupq_n_s32(int32_t(std::clamp<int64_t>(n, 0, 4))));
    return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(v), keep));
  }

  // ---- for attend_simd's quantized rows
  using IReg = int32x4_t;
  static float h2f(uint16_t h) { return peregrine::h2f(h); }
  static void quantize_query(const float* x, BlockQ8Act* out, int64_t n) { quantize_q8(x, out, n); }
  static Reg cvt_i32(IReg v) { return vcvtq_f32_s32(v); }
  static IReg set1_i32(int32_t x) { return vdupq_n_s32(x); }
  static IReg add_i32(IReg a, IReg b) { return vaddq_s32(a, b); }
  static IReg bcast4(const int8_t* p) {
    int32_t x;
    std::memcpy(&x, p, 4);
    return vdupq_n_s32(x);
  }
  // Signed x signed bytes, four per lane: SDOT, or widening multiplies and pairwise adds.
  static constexpr int32_t kS8Bias = 0;
  static IReg prep_s8(IReg k) { return k; }
  static IReg dot_s8(IReg acc, IReg k, IReg q) {
    const int8x16_t a = vreinterpretq_s8_s32(k), b = vreinterpretq_s8_s32(q);
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    const int32x4_t lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));  // byte pairs of lanes 0, 1
    const int32x4_t hi = vpaddlq_s16(vmull_high_s8(a, b));                      // of lanes 2, 3
    return vaddq_s32(acc, vpaddq_s32(lo, hi));
#endif
  }
  static IReg dot_u8(IReg acc, IReg u, IReg q) { return dot_s8(acc, u, q); }  // u <= 15: a signed byte too
  static IReg nibbles_lo(IReg v) {
    return vreinterpretq_s32_u8(vandq_u8(vreinterpretq_u8_s32(v), vdupq_n_u8(0x0f)));
  }
  static IReg nibbles_hi(IReg v) { return vreinterpretq_s32_u8(vshrq_n_u8(vreinterpretq_u8_s32(v), 4)); }
  // out[g] lane j = bytes 4g..4g+3 of the 16 at p + off[j]: a 4 x 4 transpose of dwords.
  static void transpose_chunks(const uint8_t* p, const int32_t* off, IReg* out) {
    IReg r[4];
    for (int a = 0; a < 4; ++a) r[a] = vreinterpretq_s32_u8(vld1q_u8(p + off[a]));
    const int64x2_t t0 = vreinterpretq_s64_s32(vtrn1q_s32(r[0], r[1]));
    const int64x2_t t1 = vreinterpretq_s64_s32(vtrn2q_s32(r[0], r[1]));
    const int64x2_t t2 = vreinterpretq_s64_s32(vtrn1q_s32(r[2], r[3]));
    const int64x2_t t3 = vreinterpretq_s64_s32(vtrn2q_s32(r[2], r[3]));
    out[0] = vreinterpretq_s32_s64(vtrn1q_s64(t0, t2));
    out[1] = vreinterpretq_s32_s64(vtrn1q_s64(t1, t3));
    out[2] = vreinterpretq_s32_s64(vtrn2q_s64(t0, t2));
    out[3] = vreinterpretq_s32_s64(vtrn2q_s64(t1, t3));
  }
  // The fp16 at p + off[j] of each lane's row (x2: and the one after it, Q2's d and m).
  static Reg gather_f16(const uint8_t* p, const int32_t* off) {
    uint16_t h[4];
    for (int j = 0; j < 4; ++j) std::memcpy(&h[j], p + off[j], 2);
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(h)));
  }
  static void gather_f16x2(const uint8_t* p, const int32_t* off, Reg& lo, Reg& hi) {
    lo = gather_f16(p, off);
    hi = gather_f16(p + 2, off);
  }
  // 4 two-bit codes (one byte, code l at bits 2l) as floats.
  static Reg codes2(const uint8_t* p) {
    const int32x4_t shifts = {0, -2, -4, -6};
    const uint32x4_t v = vshlq_u32(vdupq_n_u32(*p), shifts);
    return vcvtq_f32_u32(vandq_u32(v, vdupq_n_u32(3)));
  }
  static Reg load_i8(const int8_t* p) {  // 4 values
    int32_t w;
    std::memcpy(&w, p, 4);
    const int16x8_t h = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(w)));
    return vcvtq_f32_s32(vmovl_s16(vget_low_s16(h)));
  }
  // Q4_0 values q - 8 of 4 bytes' low (or high) nibbles.
  static Reg load_q4(const uint8_t* p, bool high) {
    uint32_t w;
    std::memcpy(&w, p, 4);
    const uint16x8_t h = vmovl_u8(vreinterpret_u8_u32(vdup_n_u32(w)));
    uint32x4_t v = vmovl_u16(vget_low_u16(h));
    v = high ? vshrq_n_u32(v, 4) : vandq_u32(v, vdupq_n_u32(0x0f));
    return vcvtq_f32_s32(vsubq_s32(vreinterpretq_s32_u32(v), vdupq_n_s32(8)));
  }
};

}  // namespace

const KernelTable* neon_kernels() {
  static const KernelTable t{
      .isa = Isa::Neon,
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
      .panel_ternary = panel_dot<GgmlType::TQ2_0>,
      .panel_f32 = panel_dot_f<float>,
      .panel_f16 = panel_dot_f<uint16_t>,
      .panel_bf16 = panel_dot_f<Bf16>,
      .attend = attend_simd<Vec128>,
      .attn_hd_multiple = Vec128::kLanes,
      .silu_mul = silu_mul,
      .ssm_scan = ssm_scan,
  };
  return &t;
}

}  // namespace peregrine
