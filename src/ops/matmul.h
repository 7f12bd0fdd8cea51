// Products of activations with weight matrices: y[n_tok, W.rows] = x[n_tok, W.cols] * W^T.
// Quantized weights run on 8-bit activations quantized once per call; with packed
// weights (pack_weight) the panel kernels read each weight block once for a tile of
// tokens. Rows are spread over the pool's threads; a token's result never depends on
// the other tokens in the batch or on the thread count.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "ops/weight.h"
#include "quant/blocks.h"
#include "quant/kquants.h"

namespace peregrine {

// Reusable scratch (grows to the largest batch, then stays: no allocation in the
// steady-state decode loop).
struct OpScratch {
  std::vector<BlockQ8Act> xq;  // quantized activations [n_tok, cols/32]
  std::vector<BlockQ8K> xk;    // Q8_K activations [n_tok, cols/256] for K-quant weights
  std::vector<float> xn;       // normalised input, when a float weight needs it
  std::vector<float> tmp;      // fallback paths' intermediate results
};

// A matmul input: rows x [n_tok, cols], optionally RMS-normalised on the way in
// (y = x / rms(x) * norm). Quantized weights never see the normalised rows: the norm
// is applied inside the activation quantization.
struct MatIn {
  const float* x;
  const float* norm = nullptr;  // [cols], or null for x as it is
  float eps = 0.0f;
  MatIn(const float* rows) : x(rows) {}  // NOLINT: implicit, a plain input
  MatIn(const float* rows, const float* norm_weight, float norm_eps)
      : x(rows), norm(norm_weight), eps(norm_eps) {}
};

// Repacks w for the active kernel table's panel kernels; a no-op for types (or
// tables) without them. Returns the packed bytes (0 when nothing was packed).
Result<size_t> pack_weight(Weight& w);

void matmul(const Weight& w, const float* x, float* y, int64_t n_tok, ThreadPool& pool,
            OpScratch& scratch);

// Several products of the same input, e.g. Q, K and V: x is quantized once and the
// rows of all weights are shared out in one parallel step. All weights have x's width.
struct MatmulOut {
  const Weight* w;
  float* y;  // [n_tok, w->rows]
};
void matmul_many(std::initializer_list<MatmulOut> outs, MatIn in, int64_t n_tok,
                 ThreadPool& pool, OpScratch& scratch);

// Gated linear units: out[n_tok, n_ff] = act(x * gate^T) * (x * up^T), act = SiLU
// (SwiGLU, llama) or tanh-GELU (GeGLU, Gemma). With both packed alike, each task computes
// the same rows of gate and up and combines them at once.
enum class Glu { SiLU, GeluTanh };
void matmul_glu(const Weight& gate, const Weight& up, MatIn in, float* out, int64_t n_tok,
                ThreadPool& pool, OpScratch& scratch, Glu glu);
// Grouped products over one input matrix in one parallel step (the experts of a MoE step):
// job i takes rows [row0, row0 + n) of in [n_rows, cols] (normalised and quantized once for all
// jobs) and writes y [n, w.rows] = rows * w^T, or, with a gate, y [n, gate.rows] = act(rows *
// gate^T) * (rows * up^T). Every weight must be packed (grouped_packed()); a row's result is
// the same bits as matmul / matmul_glu give it.
struct GroupedJob {
  const Weight* gate = nullptr;  // null: a plain product with `w`
  const Weight* w = nullptr;     // the product's weight (with a gate: the up matrix)
  int64_t row0 = 0, n = 0;
  float* y = nullptr;
};
bool grouped_packed(const Weight& w);
void matmul_grouped(const GroupedJob* jobs, int64_t n_jobs, MatIn in, int64_t n_rows, ThreadPool& pool,
                    OpScratch& scratch, Glu glu = Glu::SiLU);

inline void matmul_swiglu(const Weight& gate, const Weight& up, MatIn in, float* out,
                          int64_t n_tok, ThreadPool& pool, OpScratch& scratch) {
  matmul_glu(gate, up, in, out, n_tok, pool, scratch, Glu::SiLU);
}

}  // namespace peregrine
