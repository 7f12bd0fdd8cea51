// Inner loops, one table per instruction set. The scalar table is the reference
// every SIMD table is tested against; the active table is chosen once, at first
// use, from the CPU: the widest it runs (AVX-512, else AVX2, else scalar on x86-64;
// NEON on AArch64). PEREGRINE_ISA=scalar|avx2|avx512|neon forces one.
#pragma once

#include <cstdint>
#include <string_view>

#include "quant/blocks.h"

namespace peregrine {

enum class Isa { Scalar, Avx2, Avx512, Neon };
std::string_view isa_name(Isa isa);

// How a run of cached K or V rows is stored (kv/kv_cache.h chooses per layer; one run has one
// format for K and one for V).
enum class AttnFormat : uint8_t {
  F32,
  F16,
  Q8_0,  // a row is head_dim / 32 BlockQ8_0 (value = d * q)
  Q4_0,  // a row is head_dim / 32 BlockQ4_0 (value = d * (q - 8))
  Q2,    // a row is head_dim / 32 BlockQ2 (per token: KIVI's values)
  // KIVI's keys, per channel over groups of 32 positions: a group is head_dim BlockQ2, record c
  // holding channel c of the group's 32 positions (position j of the group is value j). Only as
  // K, and a run of this format starts at a group's first position and has n % 32 == 0.
  Q2Channel,
};

// A run of K/V rows for the attention kernels.
struct AttnRows {
  const void* k;
  const void* v;
  int64_t n;
  // Bytes between rows (Q2Channel K: between groups of 32 rows).
  int64_t k_stride, v_stride;
  AttnFormat kf = AttnFormat::F32, vf = AttnFormat::F32;
  // Optional (eviction statistics): weights[j] += sum over the nq queries of the final softmax
  // probability of row j, exp(s_ij - m_i) / l_i, computed without a score matrix.
  float* weights = nullptr;
};

struct KernelTable {
  Isa isa;
  // x[n] -> n/32 activation blocks (n multiple of 32).
  void (*quantize_q8)(const float* x, BlockQ8Act* out, int64_t n);
  // (x[i] * scale) * w[i] quantized, w may be null: RMSNorm fused into the
  // quantization, bit-identical to normalising into a buffer first. nullptr: no fusion.
  void (*quantize_q8_norm)(const float* x, float scale, const float* w, BlockQ8Act* out,
                           int64_t n) = nullptr;
  // One weight row (nb blocks) against n_x activation rows (each nb blocks, one after
  // another): y[r * y_stride] = dot(w, x_r). A row's result is the same for any n_x.
  using DotRows = void (*)(const void* w, int64_t nb, const BlockQ8Act* x, int64_t n_x,
                           float* y, int64_t y_stride);
  DotRows dot_q4_0;
  DotRows dot_q4_1;
  DotRows dot_q8_0;
  // Float weights against float activations (n any length).
  float (*dot_f32)(const float* w, const float* x, int64_t n);
  float (*dot_f16)(const uint16_t* w, const float* x, int64_t n);
  float (*dot_bf16)(const uint16_t* w, const float* x, int64_t n);
  // y[n] += a * x[n]
  void (*axpy_f32)(float a, const float* x, float* y, int64_t n);
  void (*axpy_f16)(float a, const uint16_t* x, float* y, int64_t n);
  // Packed weights (kernels/packed.h): one panel of kPanelRows rows and nb blocks
  // against n_x activation rows of nb blocks each:
  //   y[t * y_stride + r] = dot(row r, x_t),  r < kPanelRows, t < n_x.
  // Per row and block: isum = exact integer dot; acc = fma(d, float(isum) * dx, acc),
  // then for Q4_1 acc = fma(m, s, acc) -- the same float operations in every table,
  // so SIMD results equal the scalar ones bit for bit, for any n_x (batch invariance).
  // nullptr: the table has no panel kernels and matmul uses the row kernels above.
  using PanelDot = void (*)(const uint8_t* panel, int64_t nb, const BlockQ8Act* x, int64_t n_x,
                            float* y, int64_t y_stride);
  PanelDot panel_q4_0 = nullptr;
  PanelDot panel_q4_1 = nullptr;
  PanelDot panel_q8_0 = nullptr;
  // K-quant panels (packed.cpp): per 32-value sub-block f32 effective scales.
  //   Q4_K: as Q4_1 with f32 d and m.
  //   Q6_K: two halves of 16, isum_h exact; acc = fma(d_h, float(isum_h) * dx, acc), h = 0, 1.
  //   Q5_K: as Q4_K, quants as bytes (0..31).
  //   Q2_K, Q3_K: as Q6_K (halves of 16) with q and q + 4; Q2_K then adds, per half h,
  //   acc = fma(m_h, float(sum_h) * dx, acc) for its mins.
  PanelDot panel_q2_k = nullptr;
  PanelDot panel_q3_k = nullptr;
  PanelDot panel_q4_k = nullptr;
  PanelDot panel_q5_k = nullptr;
  PanelDot panel_q6_k = nullptr;
  // Ternary panels (TQ1_0 and TQ2_0, panel::kTernary): per 32-value sub-block
  // isum = sum(q * x) - sum(x) = sum((q - 1) * x), exact; acc = fma(d, float(isum) * dx, acc)
  // with d the fp16 scale of the row's super-block.
  PanelDot panel_ternary = nullptr;
  // Float panels (element [k][r] per 32-column block) against float activations
  // x_t = x + t * x_stride. Per row: two partial sums, even and odd columns, each a
  // chain of fma(w, x, acc) in column order; y = even + odd. Same in every table.
  using PanelDotF = void (*)(const uint8_t* panel, int64_t nb, const float* x, int64_t x_stride,
                             int64_t n_x, float* y, int64_t y_stride);
  PanelDotF panel_f32 = nullptr;
  PanelDotF panel_f16 = nullptr;
  PanelDotF panel_bf16 = nullptr;
  // Attention of nq query rows that share one KV head (a GQA group) over runs of
  // cached rows: out[nq, hd] = softmax(q K^T) V over all rows of all runs, q [nq, hd]
  // already scaled. Run r has rows.n rows in the formats it names; row j of K at
  // k + j * k_stride bytes, of V at v + j * v_stride. Online softmax over tiles of kAttnTile
  // rows; no score row is materialised. nq <= kAttnMaxQ, hd a multiple of 32 when a run is
  // quantized. Quantized keys (Q8_0, Q4_0) are scored with integer dot products against the
  // queries quantized per 32 values (quantize_q8, as the matmuls quantize activations):
  // s = sum over blocks b of float(isum_b) * (d_k,b * d_q,b); Q2 / Q2Channel keys and all
  // quantized values are dequantized in registers (d * q + m), never into a copy of the run.
  // A run with weights != nullptr also accumulates its rows' softmax probabilities (see
  // AttnRows). nullptr (or hd not a multiple of attn_hd_multiple): the scalar table's.
  using Attend = void (*)(const float* q, int64_t nq, int64_t hd, const AttnRows* runs, int n_runs, float* out);
  Attend attend = nullptr;
  int64_t attn_hd_multiple = 1;
  // out[n] = silu(g) * u = g / (1 + exp(-g)) * u
  void (*silu_mul)(const float* g, const float* u, float* out, int64_t n) = nullptr;
  // out[n] = gelu(g) * u with GELU's tanh approximation (GeGLU);
  // gelu(g) = g / 2 * (1 + tanh(sqrt(2/pi) * (g + 0.044715 g^3))). nullptr: the scalar table's.
  void (*gelu_mul)(const float* g, const float* u, float* out, int64_t n) = nullptr;
  // n_tok consecutive tokens of one sequence through one Mamba-2 head's scan
  // (model/blocks/mamba2.h). Token t reads x_t = x + t * in_stride [hd], B_t = B + t * in_stride
  // [ds], C_t likewise, dt[t] and dA[t] = exp(dt[t] * A), and writes y + t * y_stride [hd]. For
  // each token in order and each of the hd state rows S_i = S + i * ds, with xdt = x_t[i] * dt[t]
  // and 16 partial sums acc[16] = 0:
  //   for j < ds:  S_i[j] = fma(S_i[j], dA[t], B_t[j] * xdt);  acc[j % 16] = fma(S_i[j], C_t[j], acc[j % 16])
  //   then acc[l] += acc[l + k] for k = 8, 4, 2, 1 (l < k), and y_t[i] = fma(D, x_t[i], acc[0]).
  // The same float operations in every table (SIMD results equal the scalar ones bit for bit, for
  // any split of the tokens into calls). SIMD tables need ds to be a multiple of 16 (the caller
  // uses the scalar table's otherwise).
  void (*ssm_scan)(float* S, const float* x, const float* B, const float* C, int64_t in_stride, const float* dt,
                   const float* dA, float D, int64_t hd, int64_t ds, int64_t n_tok, float* y,
                   int64_t y_stride) = nullptr;
};

// Adds 16 partial sums in the tree order ssm_scan states: lanes l + 8 into l, then + 4, + 2, + 1.
inline float tree_sum16(float* acc) {
  for (int k = 8; k >= 1; k /= 2)
    for (int l = 0; l < k; ++l) acc[l] += acc[l + k];
  return acc[0];
}

inline constexpr int64_t kAttnTile = 16;
inline constexpr int64_t kAttnMaxQ = 16;

const KernelTable& scalar_kernels();
const KernelTable* avx2_kernels();    // nullptr when not compiled in
const KernelTable* avx512_kernels();  // nullptr when not compiled in
const KernelTable* neon_kernels();    // nullptr when not compiled in (AArch64 only)

// Can this CPU run the ISA? (CPUID and OS support for the register state.)
bool cpu_supports(Isa isa);

// The table in use. Reads PEREGRINE_ISA once; an unknown or unsupported value is a
// fatal configuration error reported on stderr.
const KernelTable& kernels();

}  // namespace peregrine
