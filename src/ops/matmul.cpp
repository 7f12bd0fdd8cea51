#include "ops/matmul.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>

#include "kernels/kernels.h"
#include "ops/ops.h"
#include "quant/kquants.h"
#include "quant/type_table.h"

namespace peregrine {
namespace {

constexpr int64_t kTokenChunk = 64;  // tokens per pass: their activations stay in L2
constexpr size_t kMaxOuts = 4;

// What a weight reads (quant/type_table.h): BlockQ8Act 32-blocks (packed quantized
// panels, unpacked *_0/*_1), Q8_K super-blocks (unpacked K-quants) or floats.
MatmulInput input_of(const Weight& w) {
  if (w.packed) return w.packed->format->is_float ? MatmulInput::Float : MatmulInput::Q8;
  const MatmulInput in = type_info(w.type).row_input;
  PG_ASSERT(in != MatmulInput::None && "matmul: weight type cannot run unpacked");
  return in;
}

KernelTable::PanelDot panel_kernel(const KernelTable& k, GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0: return k.panel_q4_0;
    case GgmlType::Q4_1: return k.panel_q4_1;
    case GgmlType::Q8_0: return k.panel_q8_0;
    case GgmlType::Q2_K: return k.panel_q2_k;
    case GgmlType::Q3_K: return k.panel_q3_k;
    case GgmlType::Q4_K: return k.panel_q4_k;
    case GgmlType::Q5_K: return k.panel_q5_k;
    case GgmlType::Q6_K: return k.panel_q6_k;
    case GgmlType::TQ2_0: return k.panel_ternary;  // the ternary layout (TQ1_0's too)
    default: return nullptr;
  }
}

KernelTable::PanelDotF panel_kernel_f(const KernelTable& k, GgmlType t) {
  switch (t) {
    case GgmlType::F32: return k.panel_f32;
    case GgmlType::F16: return k.panel_f16;
    case GgmlType::BF16: return k.panel_bf16;
    default: return nullptr;
  }
}

// One panel of a packed weight for tokens [t0, t0 + nt): y_t[r] for r < 16.
void run_panel(const KernelTable& k, const Weight& w, int64_t p, const float* x,
               const BlockQ8Act* xq, int64_t t0, int64_t nt, float* y, int64_t y_stride) {
  const PackedMatrix& pm = *w.packed;
  if (pm.format->is_float)
    panel_kernel_f(k, pm.format->type)(pm.panel(p), pm.nb, x + t0 * w.cols, w.cols, nt, y, y_stride);
  else
    panel_kernel(k, pm.format->type)(pm.panel(p), pm.nb, xq + t0 * pm.nb, nt, y, y_stride);
}

KernelTable::DotRows row_kernel(const KernelTable& k, GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0: return k.dot_q4_0;
    case GgmlType::Q4_1: return k.dot_q4_1;
    case GgmlType::Q8_0: return k.dot_q8_0;
    default: return nullptr;
  }
}

// in [n_tok, cols] -> scratch.xq [n_tok, cols/32], normalised on the way if asked.
const BlockQ8Act* quantize_input(const MatIn& in, int64_t n_tok, int64_t cols, ThreadPool& pool,
                                 OpScratch& scratch) {
  const KernelTable& k = kernels();
  const int64_t nb = cols / kQK;
  if (scratch.xq.size() < size_t(n_tok * nb)) scratch.xq.resize(size_t(n_tok * nb));
  BlockQ8Act* xq = scratch.xq.data();
  const float* x = in.x;
  if (in.norm != nullptr && k.quantize_q8_norm == nullptr) {  // no fused kernel: normalise first
    if (scratch.xn.size() < size_t(n_tok * cols)) scratch.xn.resize(size_t(n_tok * cols));
    rmsnorm(in.x, in.norm, scratch.xn.data(), n_tok, cols, in.eps);
    x = scratch.xn.data();
  }
  const bool fused = in.norm != nullptr && x == in.x;
  pool.parallel_range(n_tok, 8, [&](int64_t b, int64_t e, int) {
    for (int64_t t = b; t < e; ++t) {
      const float* xt = x + t * cols;
      if (fused) k.quantize_q8_norm(xt, rms_scale(xt, cols, in.eps), in.norm, xq + t * nb, cols);
      else k.quantize_q8(xt, xq + t * nb, cols);
    }
  });
  return xq;
}

// in as float rows: x itself, or normalised into scratch.xn.
const float* float_input(const MatIn& in, int64_t n_tok, int64_t cols, OpScratch& scratch) {
  if (in.norm == nullptr) return in.x;
  if (scratch.xn.size() < size_t(n_tok * cols)) scratch.xn.resize(size_t(n_tok * cols));
  rmsnorm(in.x, in.norm, scratch.xn.data(), n_tok, cols, in.eps);
  return scratch.xn.data();
}

// The unit of work: 16-row groups [g0, g1) of one weight (panels when packed).
int64_t n_groups(const Weight& w) { return (w.rows + kPanelRows - 1) / kPanelRows; }

// Groups per task: enough tasks to balance the threads, few enough to keep a task's
// weights and a token chunk's activations together in L2.
int64_t groups_per_task(int64_t total_groups, int n_threads) {
  return std::clamp<int64_t>(total_groups / (int64_t(n_threads) * 4), 1, 8);
}

// Rows [16 g0, 16 g1) of w for all tokens into y [n_tok, w.rows].
void run_groups(const KernelTable& k, const Weight& w, const float* x, const BlockQ8Act* xq,
                const BlockQ8K* xk, int64_t n_tok, float* y, int64_t g0, int64_t g1) {
  const int64_t n_out = w.rows;
  if (w.packed) {
    float tail[kTokenChunk * kPanelRows];
    for (int64_t t0 = 0; t0 < n_tok; t0 += kTokenChunk) {
      const int64_t nt = std::min(kTokenChunk, n_tok - t0);
      for (int64_t p = g0; p < g1; ++p) {
        const int64_t r0 = p * kPanelRows, nr = std::min<int64_t>(kPanelRows, n_out - r0);
        if (nr == kPanelRows) {
          run_panel(k, w, p, x, xq, t0, nt, y + t0 * n_out + r0, n_out);
        } else {  // last panel of a matrix whose rows are not a multiple of 16
          run_panel(k, w, p, x, xq, t0, nt, tail, kPanelRows);
          for (int64_t t = 0; t < nt; ++t)
            std::copy_n(tail + t * kPanelRows, nr, y + (t0 + t) * n_out + r0);
        }
      }
    }
    return;
  }
  const int64_t n_in = w.cols, r1 = std::min(g1 * kPanelRows, n_out);
  if (const DotQ8KFn dot = type_info(w.type).dot_q8k) {
    const int64_t nbk = n_in / kQK_K;
    for (int64_t r = g0 * kPanelRows; r < r1; ++r)
      for (int64_t t = 0; t < n_tok; ++t) y[t * n_out + r] = dot(w.row(r), xk + t * nbk, nbk);
    return;
  }
  for (int64_t r = g0 * kPanelRows; r < r1; ++r) {
    const uint8_t* wr = w.row(r);
    float* yr = y + r;  // column r of y
    if (KernelTable::DotRows dot = row_kernel(k, w.type)) {
      dot(wr, n_in / kQK, xq, n_tok, yr, n_out);
      continue;
    }
    for (int64_t t = 0; t < n_tok; ++t) {
      const float* xt = x + t * n_in;
      switch (w.type) {
        case GgmlType::F32: yr[t * n_out] = k.dot_f32(reinterpret_cast<const float*>(wr), xt, n_in); break;
        case GgmlType::F16: yr[t * n_out] = k.dot_f16(reinterpret_cast<const uint16_t*>(wr), xt, n_in); break;
        case GgmlType::BF16: yr[t * n_out] = k.dot_bf16(reinterpret_cast<const uint16_t*>(wr), xt, n_in); break;
        default: PG_ASSERT(false && "matmul: unsupported weight type");
      }
    }
  }
}

// out[n] = act(g) * u for the GLU kind (the scalar table's GeGLU where a table has none).
void (*glu_kernel(Glu glu))(const float*, const float*, float*, int64_t) {
  const KernelTable& k = kernels();
  if (glu == Glu::SiLU) return k.silu_mul;
  return k.gelu_mul ? k.gelu_mul : scalar_kernels().gelu_mul;
}

}  // namespace

Result<size_t> pack_weight(Weight& w) {
  const KernelTable& k = kernels();
  const PanelFormat* f = panel_format(w.type);
  if (w.packed || f == nullptr ||
      (panel_kernel(k, f->type) == nullptr && panel_kernel_f(k, f->type) == nullptr))
    return size_t(0);
  if (w.cols % kQK != 0) return size_t(0);  // float rows of any length stay on the row kernels
  PG_ASSIGN(PackedMatrix pm, pack_matrix(w.type, w.data, w.rows, w.cols, w.row_bytes));
  const size_t bytes = pm.bytes();
  w.packed = std::make_shared<const PackedMatrix>(std::move(pm));
  return bytes;
}

void matmul(const Weight& w, const float* x, float* y, int64_t n_tok, ThreadPool& pool,
            OpScratch& scratch) {
  matmul_many({{&w, y}}, x, n_tok, pool, scratch);
}

void matmul_many(std::initializer_list<MatmulOut> outs, MatIn in, int64_t n_tok,
                 ThreadPool& pool, OpScratch& scratch) {
  PG_ASSERT(outs.size() >= 1 && outs.size() <= kMaxOuts);
  const KernelTable& k = kernels();
  const int64_t cols = outs.begin()->w->cols;
  bool any_quantized = false, any_float = false, any_k = false;
  int64_t total = 0;
  for (const MatmulOut& o : outs) {
    PG_ASSERT(o.w->cols == cols);
    const MatmulInput i = input_of(*o.w);
    any_quantized |= i == MatmulInput::Q8;
    any_k |= i == MatmulInput::Q8K;
    any_float |= i != MatmulInput::Q8;  // Q8_K is quantized from the (normalised) float rows
    total += n_groups(*o.w);
  }
  const BlockQ8Act* xq = any_quantized ? quantize_input(in, n_tok, cols, pool, scratch) : nullptr;
  const float* x = any_float ? float_input(in, n_tok, cols, scratch) : in.x;
  const BlockQ8K* xk = nullptr;
  if (any_k) {  // Q8_K super-blocks of the (normalised) input
    const int64_t nbk = cols / kQK_K;
    if (scratch.xk.size() < size_t(n_tok * nbk)) scratch.xk.resize(size_t(n_tok * nbk));
    pool.parallel_range(n_tok, 8, [&](int64_t b, int64_t e, int) {
      for (int64_t t = b; t < e; ++t) quantize_row_q8_k(x + t * cols, scratch.xk.data() + t * nbk, cols);
    });
    xk = scratch.xk.data();
  }
  const int64_t per_task = groups_per_task(total, pool.size());
  // Task index -> (output, group range), without allocating.
  std::array<int64_t, kMaxOuts + 1> first_task{};
  size_t n = 0;
  for (const MatmulOut& o : outs) {
    first_task[n + 1] = first_task[n] + (n_groups(*o.w) + per_task - 1) / per_task;
    ++n;
  }
  pool.parallel_for(first_task[n], [&](int64_t task, int) {
    size_t j = 0;
    while (task >= first_task[j + 1]) ++j;
    const MatmulOut& o = outs.begin()[j];
    const int64_t g0 = (task - first_task[j]) * per_task;
    run_groups(k, *o.w, x, xq, xk, n_tok, o.y, g0, std::min(g0 + per_task, n_groups(*o.w)));
  });
}

void matmul_glu(const Weight& gate, const Weight& up, MatIn in, float* out, int64_t n_tok,
                ThreadPool& pool, OpScratch& scratch, Glu glu) {
  const auto act_mul = glu_kernel(glu);
  const int64_t n_ff = gate.rows;
  PG_ASSERT(up.rows == n_ff && up.cols == gate.cols);
  const bool fused = gate.packed && up.packed && gate.type == up.type;
  if (!fused) {
    if (scratch.tmp.size() < size_t(n_tok * n_ff)) scratch.tmp.resize(size_t(n_tok * n_ff));
    float* g = scratch.tmp.data();
    matmul_many({{&gate, g}, {&up, out}}, in, n_tok, pool, scratch);
    act_mul(g, out, out, n_tok * n_ff);
    return;
  }
  // Both packed alike: each task computes the same rows of gate and up and combines them at once.
  const GroupedJob job{&gate, &up, 0, n_tok, out};
  matmul_grouped(&job, 1, in, n_tok, pool, scratch, glu);
}

bool grouped_packed(const Weight& w) { return w.packed != nullptr; }

void matmul_grouped(const GroupedJob* jobs, int64_t n_jobs, MatIn in, int64_t n_rows, ThreadPool& pool,
                    OpScratch& scratch, Glu glu) {
  if (n_jobs == 0 || n_rows == 0) return;
  const KernelTable& k = kernels();
  const auto act_mul = glu_kernel(glu);
  const int64_t cols = jobs[0].w->cols;
  bool any_q8 = false, any_float = false;
  int64_t total = 0;
  for (int64_t j = 0; j < n_jobs; ++j) {
    const GroupedJob& g = jobs[j];
    PG_ASSERT(g.w->packed && g.w->cols == cols && (!g.gate || (g.gate->packed && g.gate->rows == g.w->rows)));
    (input_of(*g.w) == MatmulInput::Q8 ? any_q8 : any_float) = true;
    if (g.gate) (input_of(*g.gate) == MatmulInput::Q8 ? any_q8 : any_float) = true;
    total += n_groups(*g.w) * (g.gate ? 2 : 1);
  }
  const BlockQ8Act* xq = any_q8 ? quantize_input(in, n_rows, cols, pool, scratch) : nullptr;
  const float* x = any_float ? float_input(in, n_rows, cols, scratch) : in.x;
  // Tasks: per job, runs of groups_per_task panels (a gated job's count twice, as matmul_glu).
  const int64_t per_task = groups_per_task(total, pool.size());
  int64_t n_tasks = 0;
  for (int64_t j = 0; j < n_jobs; ++j) n_tasks += (n_groups(*jobs[j].w) + per_task - 1) / per_task;
  pool.parallel_for(n_tasks, [&](int64_t task, int) {
    int64_t j = 0;
    for (;; ++j) {
      const int64_t t = (n_groups(*jobs[j].w) + per_task - 1) / per_task;
      if (task < t) break;
      task -= t;
    }
    const GroupedJob& g = jobs[j];
    const int64_t n_out = g.w->rows, groups = n_groups(*g.w);
    const int64_t p0 = task * per_task, p1 = std::min(groups, p0 + per_task);
    float a[kTokenChunk * kPanelRows], b[kTokenChunk * kPanelRows];
    for (int64_t c0 = 0; c0 < g.n; c0 += kTokenChunk) {
      const int64_t nt = std::min(kTokenChunk, g.n - c0), t0 = g.row0 + c0;
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t r0 = p * kPanelRows, nr = std::min<int64_t>(kPanelRows, n_out - r0);
        float* y = g.y + c0 * n_out + r0;
        if (g.gate) {
          run_panel(k, *g.gate, p, x, xq, t0, nt, a, kPanelRows);
          run_panel(k, *g.w, p, x, xq, t0, nt, b, kPanelRows);
          for (int64_t t = 0; t < nt; ++t) act_mul(a + t * kPanelRows, b + t * kPanelRows, y + t * n_out, nr);
        } else if (nr == kPanelRows) {
          run_panel(k, *g.w, p, x, xq, t0, nt, y, n_out);
        } else {
          run_panel(k, *g.w, p, x, xq, t0, nt, a, kPanelRows);
          for (int64_t t = 0; t < nt; ++t) std::copy_n(a + t * kPanelRows, nr, y + t * n_out);
        }
      }
    }
  });
}

}  // namespace peregrine
