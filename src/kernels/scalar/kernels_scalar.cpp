// Scalar reference kernels: plain loops, the oracle for every SIMD path.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/packed.h"
#include "quant/dequantize.h"
#include "quant/fp16.h"

namespace peregrine {
namespace {

// (x * scale) * w, quantized (w null: x * scale). With scale and w from RMSNorm this
// is the norm fused into the quantization, bit-identical to normalising first.
void quantize_q8_norm(const float* x, float scale, const float* w, BlockQ8Act* out, int64_t n) {
  for (int64_t b = 0; b < n / kQK; ++b) {
    float v[kQK];
    for (int j = 0; j < kQK; ++j) {
      v[j] = x[b * kQK + j] * scale;
      if (w != nullptr) v[j] = v[j] * w[b * kQK + j];
    }
    float amax = 0.0f;
    for (int j = 0; j < kQK; ++j) amax = std::fmax(amax, std::fabs(v[j]));
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
    for (int j = 0; j < kQK; ++j) {
      int q = static_cast<int>(std::nearbyint(v[j] * id));  // round half to even
      out[b].qs[j] = static_cast<int8_t>(q);
      sum += q;
    }
    out[b].d = d;
    out[b].s = d * float(sum);
    out[b].sum = int16_t(sum);
    int sum_lo = 0;
    for (int j = 0; j < kQK / 2; ++j) sum_lo += out[b].qs[j];
    out[b].sum_lo = int16_t(sum_lo);
  }
}

void quantize_q8(const float* x, BlockQ8Act* out, int64_t n) { quantize_q8_norm(x, 1.0f, nullptr, out, n); }

float dot_q4_0(const void* w, const BlockQ8Act* x, int64_t nb) {
  auto* b = static_cast<const BlockQ4_0*>(w);
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int sum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      sum += ((b[i].qs[j] & 0xF) - 8) * x[i].qs[j];
      sum += ((b[i].qs[j] >> 4) - 8) * x[i].qs[j + 16];
    }
    acc += fp16_to_f32(b[i].d) * x[i].d * float(sum);
  }
  return acc;
}

float dot_q4_1(const void* w, const BlockQ8Act* x, int64_t nb) {
  auto* b = static_cast<const BlockQ4_1*>(w);
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int sum = 0;
    for (int j = 0; j < kQK / 2; ++j) {
      sum += (b[i].qs[j] & 0xF) * x[i].qs[j];
      sum += (b[i].qs[j] >> 4) * x[i].qs[j + 16];
    }
    acc += fp16_to_f32(b[i].d) * x[i].d * float(sum) + fp16_to_f32(b[i].m) * x[i].s;
  }
  return acc;
}

float dot_q8_0(const void* w, const BlockQ8Act* x, int64_t nb) {
  auto* b = static_cast<const BlockQ8_0*>(w);
  float acc = 0.0f;
  for (int64_t i = 0; i < nb; ++i) {
    int sum = 0;
    for (int j = 0; j < kQK; ++j) sum += b[i].qs[j] * x[i].qs[j];
    acc += fp16_to_f32(b[i].d) * x[i].d * float(sum);
  }
  return acc;
}

float dot_f32(const float* w, const float* x, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += w[i] * x[i];
  return acc;
}

float dot_f16(const uint16_t* w, const float* x, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += fp16_to_f32(w[i]) * x[i];
  return acc;
}

float dot_bf16(const uint16_t* w, const float* x, int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += bf16_to_f32(w[i]) * x[i];
  return acc;
}

template <float (*Dot)(const void*, const BlockQ8Act*, int64_t)>
void dot_rows(const void* w, int64_t nb, const BlockQ8Act* x, int64_t n_x, float* y,
              int64_t y_stride) {
  for (int64_t r = 0; r < n_x; ++r) y[r * y_stride] = Dot(w, x + r * nb, nb);
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void axpy_f16(float a, const uint16_t* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * fp16_to_f32(x[i]);
}

// Panel kernels: the packed layout read with plain loops. The float steps per row
// and block are the ones every SIMD table must reproduce exactly (see kernels.h).
template <GgmlType T>
void panel_dot(const uint8_t* panel, int64_t nb, const BlockQ8Act* x, int64_t n_x, float* y,
               int64_t y_stride) {
  const PanelFormat& f = *panel_format(T);
  for (int64_t t = 0; t < n_x; ++t) {
    for (int r = 0; r < kPanelRows; ++r) {
      float acc = 0.0f;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = panel + size_t(b) * f.block_bytes;
        const BlockQ8Act& xb = x[t * nb + b];
        const uint8_t* qs = blk + f.qs_offset;
        int32_t isum = 0;
        if constexpr (T == GgmlType::Q6_K || T == GgmlType::Q3_K || T == GgmlType::Q2_K) {
          // Two halves of 16, each with its own scale; bytes stored as q + offset.
          constexpr int kOff = T == GgmlType::Q6_K ? 32 : T == GgmlType::Q3_K ? 4 : 0;
          int32_t half[2] = {0, 0};
          for (int g = 0; g < 8; ++g)
            for (int j = 0; j < 4; ++j)
              half[g / 4] += (int(qs[(g * kPanelRows + r) * 4 + j]) - kOff) * xb.qs[4 * g + j];
          float d0, d1;
          std::memcpy(&d0, blk + 4 * r, 4);
          std::memcpy(&d1, blk + f.m_offset + 4 * r, 4);
          acc = std::fma(d0, float(half[0]) * xb.d, acc);
          acc = std::fma(d1, float(half[1]) * xb.d, acc);
          if constexpr (T == GgmlType::Q2_K) {
            float m0, m1;
            std::memcpy(&m0, blk + 128 + 4 * r, 4);
            std::memcpy(&m1, blk + 192 + 4 * r, 4);
            acc = std::fma(m0, float(xb.sum_lo) * xb.d, acc);
            acc = std::fma(m1, float(xb.sum - xb.sum_lo) * xb.d, acc);
          }
          continue;
        } else if constexpr (T == GgmlType::Q8_0) {
          for (int g = 0; g < 8; ++g)
            for (int j = 0; j < 4; ++j)
              isum += int8_t(qs[(g * kPanelRows + r) * 4 + j]) * xb.qs[4 * g + j];
        } else if constexpr (T == GgmlType::Q5_K) {  // unsigned bytes 0..31
          for (int g = 0; g < 8; ++g)
            for (int j = 0; j < 4; ++j) isum += int(qs[(g * kPanelRows + r) * 4 + j]) * xb.qs[4 * g + j];
        } else {
          for (int g = 0; g < 4; ++g)
            for (int j = 0; j < 4; ++j) {
              const uint8_t q = qs[(g * kPanelRows + r) * 4 + j];
              isum += (q & 0xF) * xb.qs[4 * g + j] + (q >> 4) * xb.qs[16 + 4 * g + j];
            }
          if constexpr (T == GgmlType::Q4_0) isum -= 8 * xb.sum;
        }
        if constexpr (T == GgmlType::Q4_K || T == GgmlType::Q5_K) {  // f32 effective scale and offset
          float d, m;
          std::memcpy(&d, blk + 4 * r, 4);
          std::memcpy(&m, blk + f.m_offset + 4 * r, 4);
          acc = std::fma(d, float(isum) * xb.d, acc);
          acc = std::fma(m, xb.s, acc);
          continue;
        }
        uint16_t dh, mh;
        std::memcpy(&dh, blk + 2 * r, 2);
        acc = std::fma(fp16_to_f32(dh), float(isum) * xb.d, acc);
        if constexpr (T == GgmlType::Q4_1) {
          std::memcpy(&mh, blk + f.m_offset + 2 * r, 2);
          acc = std::fma(fp16_to_f32(mh), xb.s, acc);
        }
      }
      y[t * y_stride + r] = acc;
    }
  }
}

// Ternary panels (quant/panel_format.h): codes of each 256-column super-block, then the
// scales. Per row and 32-value sub-block, isum = sum((q - 1) * x) exactly, then one fma.
void panel_dot_ternary(const uint8_t* panel, int64_t nb, const BlockQ8Act* x, int64_t n_x, float* y,
                       int64_t y_stride) {
  const int64_t nbk = nb / (kQK_K / kQK);
  const uint8_t* scales = panel + size_t(nbk) * panel::kTernaryCodes;  // [nbk][16] fp16
  for (int64_t t = 0; t < n_x; ++t) {
    for (int r = 0; r < kPanelRows; ++r) {
      float acc = 0.0f;
      for (int64_t i = 0; i < nbk; ++i) {
        uint16_t dh;
        std::memcpy(&dh, scales + size_t(i) * panel::kScales + 2 * r, 2);
        const float d = fp16_to_f32(dh);
        const uint8_t* codes = panel + size_t(i) * panel::kTernaryCodes;
        for (int s = 0; s < kQK_K / kQK; ++s) {
          const BlockQ8Act& xb = x[t * nb + i * (kQK_K / kQK) + s];
          int32_t isum = -xb.sum;
          for (int g = 0; g < 2; ++g)
            for (int j = 0; j < 4; ++j) {
              const uint8_t c = codes[((2 * s + g) * kPanelRows + r) * 4 + j];
              for (int k = 0; k < 4; ++k) isum += ((c >> (2 * k)) & 3) * xb.qs[16 * g + 4 * k + j];
            }
          acc = std::fma(d, float(isum) * xb.d, acc);
        }
      }
      y[t * y_stride + r] = acc;
    }
  }
}

// ---- Attention (KernelTable::attend): the reference every SIMD table is tested against.

// Row j of a run's K or V as floats, dst[hd]. Q2Channel (K only): channel c of position j is
// value j % 32 of record c of group j / 32, groups `stride` bytes apart.
void attn_row(AttnFormat f, const void* base, int64_t stride, int64_t j, int64_t hd, float* dst) {
  const uint8_t* row = static_cast<const uint8_t*>(base) + j * stride;
  switch (f) {
    case AttnFormat::F32: dequantize_row_f32(reinterpret_cast<const float*>(row), dst, hd); break;
    case AttnFormat::F16: dequantize_row_f16(reinterpret_cast<const uint16_t*>(row), dst, hd); break;
    case AttnFormat::Q8_0: dequantize_row_q8_0(reinterpret_cast<const BlockQ8_0*>(row), dst, hd); break;
    case AttnFormat::Q4_0: dequantize_row_q4_0(reinterpret_cast<const BlockQ4_0*>(row), dst, hd); break;
    case AttnFormat::Q2: dequantize_row_q2(reinterpret_cast<const BlockQ2*>(row), dst, hd); break;
    case AttnFormat::Q2Channel: {
      const auto* group = reinterpret_cast<const BlockQ2*>(static_cast<const uint8_t*>(base) + (j / kQK) * stride);
      const int64_t v = j % kQK;  // as dequantize_row_q2 decodes value v of each record
      for (int64_t c = 0; c < hd; ++c)
        dst[c] = fp16_to_f32(group[c].d) * float((group[c].qs[v / 4] >> (2 * (v % 4))) & 3) + fp16_to_f32(group[c].m);
      break;
    }
  }
}

bool int8_keys(AttnFormat f) { return f == AttnFormat::Q8_0 || f == AttnFormat::Q4_0; }

// Q8_0 / Q4_0 key row against a query quantized per 32 values (qa[nb]):
// sum over blocks of float(isum) * (d_k * d_q).
float attn_score_int8(AttnFormat f, const uint8_t* row, const BlockQ8Act* qa, int64_t nb) {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; ++b) {
    int isum = 0;
    uint16_t dk;
    if (f == AttnFormat::Q8_0) {
      const auto& kb = reinterpret_cast<const BlockQ8_0*>(row)[b];
      for (int j = 0; j < kQK; ++j) isum += kb.qs[j] * qa[b].qs[j];
      dk = kb.d;
    } else {
      const auto& kb = reinterpret_cast<const BlockQ4_0*>(row)[b];
      for (int j = 0; j < kQK / 2; ++j)
        isum += ((kb.qs[j] & 0xF) - 8) * qa[b].qs[j] + ((kb.qs[j] >> 4) - 8) * qa[b].qs[j + 16];
      dk = kb.d;
    }
    acc += float(isum) * (fp16_to_f32(dk) * qa[b].d);
  }
  return acc;
}

// Online softmax over tiles of kAttnTile positions: per query a running max m, sum l and
// unnormalised output o; each tile rescales them by exp(m_old - m_new). Rows are decoded one
// at a time into a float buffer (hd values), never a whole run.
void attend(const float* q, int64_t nq, int64_t hd, const AttnRows* runs, int n_runs, float* out) {
  constexpr int64_t kStackHd = 256;
  const int64_t nb = hd / kQK;
  BlockQ8Act qa_stack[kAttnMaxQ * (kStackHd / kQK)];  // [nq][nb] queries quantized per 32 values
  float row_stack[2 * kStackHd];                     // one K row, one V row
  thread_local std::vector<BlockQ8Act> qa_heap;
  thread_local std::vector<float> row_heap;
  BlockQ8Act* qa = qa_stack;
  float* kbuf = row_stack;
  if (hd > kStackHd) {
    qa_heap.resize(size_t(nq * nb));
    row_heap.resize(size_t(2 * hd));
    qa = qa_heap.data();
    kbuf = row_heap.data();
  }
  float* vbuf = kbuf + hd;
  bool quantized_keys = false;
  for (int r = 0; r < n_runs; ++r) quantized_keys |= int8_keys(runs[r].kf);
  if (quantized_keys)
    for (int64_t i = 0; i < nq; ++i) quantize_q8(q + i * hd, qa + i * nb, hd);

  // s[nq] = scores of row j of a run.
  auto score = [&](const AttnRows& run, int64_t j, float* s) {
    if (int8_keys(run.kf)) {
      const uint8_t* row = static_cast<const uint8_t*>(run.k) + j * run.k_stride;
      for (int64_t i = 0; i < nq; ++i) s[i] = attn_score_int8(run.kf, row, qa + i * nb, nb);
      return;
    }
    attn_row(run.kf, run.k, run.k_stride, j, hd, kbuf);
    for (int64_t i = 0; i < nq; ++i) {
      float acc = 0.0f;
      for (int64_t d = 0; d < hd; ++d) acc += q[i * hd + d] * kbuf[d];
      s[i] = acc;
    }
  };

  float m[kAttnMaxQ], l[kAttnMaxQ], p[kAttnMaxQ][kAttnTile], s[kAttnMaxQ];
  for (int64_t i = 0; i < nq; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
    std::fill(out + i * hd, out + (i + 1) * hd, 0.0f);
  }
  for (int r = 0; r < n_runs; ++r) {
    const AttnRows& run = runs[r];
    for (int64_t j0 = 0; j0 < run.n; j0 += kAttnTile) {
      const int64_t nt = std::min(kAttnTile, run.n - j0);
      for (int64_t j = 0; j < nt; ++j) {
        score(run, j0 + j, s);
        for (int64_t i = 0; i < nq; ++i) p[i][j] = s[i];
      }
      for (int64_t i = 0; i < nq; ++i) {
        float tile_max = -INFINITY;
        for (int64_t j = 0; j < nt; ++j) tile_max = std::max(tile_max, p[i][j]);
        const float m_new = std::max(m[i], tile_max);
        const float corr = std::exp(m[i] - m_new);  // 0 on the first tile
        float sum = 0.0f;
        for (int64_t j = 0; j < nt; ++j) sum += (p[i][j] = std::exp(p[i][j] - m_new));
        l[i] = l[i] * corr + sum;
        m[i] = m_new;
        float* o = out + i * hd;
        for (int64_t d = 0; d < hd; ++d) o[d] *= corr;
      }
      for (int64_t j = 0; j < nt; ++j) {
        attn_row(run.vf, run.v, run.v_stride, j0 + j, hd, vbuf);
        for (int64_t i = 0; i < nq; ++i) {
          float* o = out + i * hd;
          for (int64_t d = 0; d < hd; ++d) o[d] += p[i][j] * vbuf[d];
        }
      }
    }
  }
  // Eviction statistics: with the final m and l known, each row's probabilities once more.
  for (int r = 0; r < n_runs; ++r) {
    if (runs[r].weights == nullptr) continue;
    for (int64_t j = 0; j < runs[r].n; ++j) {
      score(runs[r], j, s);
      float w = 0.0f;
      for (int64_t i = 0; i < nq; ++i) w += std::exp(s[i] - m[i]) / l[i];
      runs[r].weights[j] += w;
    }
  }
  for (int64_t i = 0; i < nq; ++i) {
    const float inv = 1.0f / l[i];
    for (int64_t d = 0; d < hd; ++d) out[i * hd + d] *= inv;
  }
}

// Float panels: element [k][r] per 32-column block; two partial sums (even and odd
// columns) per row, as kernels.h specifies for every table.
struct Bf16 {
  uint16_t bits;
};
inline float load_elem(const float* p) { return *p; }
inline float load_elem(const uint16_t* p) { return fp16_to_f32(*p); }
inline float load_elem(const Bf16* p) { return bf16_to_f32(p->bits); }

template <class E>
void panel_dot_f(const uint8_t* panel, int64_t nb, const float* x, int64_t x_stride, int64_t n_x,
                 float* y, int64_t y_stride) {
  const auto* w = reinterpret_cast<const E*>(panel);
  for (int64_t t = 0; t < n_x; ++t) {
    const float* xt = x + t * x_stride;
    for (int r = 0; r < kPanelRows; ++r) {
      float acc[2] = {0.0f, 0.0f};
      for (int64_t k = 0; k < nb * kQK; ++k)
        acc[k & 1] = std::fma(load_elem(w + k * kPanelRows + r), xt[k], acc[k & 1]);
      y[t * y_stride + r] = acc[0] + acc[1];
    }
  }
}

void silu_mul(const float* g, const float* u, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}

void gelu_mul(const float* g, const float* u, float* out, int64_t n) {
  constexpr float kSqrt2OverPi = 0.7978845608028654f;
  for (int64_t i = 0; i < n; ++i) {
    const float x = g[i];
    out[i] = 0.5f * x * (1.0f + std::tanh(kSqrt2OverPi * (x + 0.044715f * x * x * x))) * u[i];
  }
}

void ssm_scan(float* S, const float* x, const float* B, const float* C, int64_t in_stride, const float* dt,
              const float* dA, float D, int64_t hd, int64_t ds, int64_t n_tok, float* y, int64_t y_stride) {
  for (int64_t t = 0; t < n_tok; ++t) {
    const float *xt = x + t * in_stride, *Bt = B + t * in_stride, *Ct = C + t * in_stride;
    for (int64_t i = 0; i < hd; ++i) {
      float* s = S + i * ds;
      const float xdt = xt[i] * dt[t];
      float acc[16] = {};
      for (int64_t j = 0; j < ds; ++j) {
        s[j] = std::fma(s[j], dA[t], Bt[j] * xdt);
        acc[j % 16] = std::fma(s[j], Ct[j], acc[j % 16]);
      }
      y[t * y_stride + i] = std::fma(D, xt[i], tree_sum16(acc));
    }
  }
}

}  // namespace

const KernelTable& scalar_kernels() {
  static const KernelTable t{
      .isa = Isa::Scalar,
      .quantize_q8 = quantize_q8,
      .quantize_q8_norm = quantize_q8_norm,
      .dot_q4_0 = dot_rows<dot_q4_0>,
      .dot_q4_1 = dot_rows<dot_q4_1>,
      .dot_q8_0 = dot_rows<dot_q8_0>,
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
      .panel_ternary = panel_dot_ternary,
      .panel_f32 = panel_dot_f<float>,
      .panel_f16 = panel_dot_f<uint16_t>,
      .panel_bf16 = panel_dot_f<Bf16>,
      .attend = attend,
      .attn_hd_multiple = 1,
      .silu_mul = silu_mul,
      .gelu_mul = gelu_mul,
      .ssm_scan = ssm_scan,
  };
  return t;
}

}  // namespace peregrine
