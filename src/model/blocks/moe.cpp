#include "model/blocks/moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include <fmt/format.h>

#include "ops/ops.h"

namespace peregrine {
namespace {

// ggml_clamp(weights_sum, 6.103515625e-5, INF) before the division: the smallest normal fp16.
constexpr float kMinWeightSum = 6.103515625e-5f;

template <typename T>
void grow(std::vector<T>& v, int64_t n) {
  if (v.size() < size_t(n)) v.resize(size_t(n));
}

// The bytes a matmul streams for w: its panels when packed, else its GGUF rows.
uint64_t weight_bytes(const Weight& w) {
  if (w.data == nullptr) return 0;
  return w.packed ? uint64_t(w.packed->bytes()) : uint64_t(w.row_bytes) * uint64_t(w.rows);
}

// "a ranks before b" for the top-k: higher score, then lower index; NaN after everything.
// A strict weak order, so std::partial_sort is well defined whatever the scores.
struct Better {
  const float* score;
  bool operator()(int32_t a, int32_t b) const {
    const float sa = score[a], sb = score[b];
    if (sa > sb) return true;
    if (sa < sb) return false;
    const bool na = std::isnan(sa), nb = std::isnan(sb);
    if (na != nb) return nb;
    return a < b;
  }
};

// ggml_soft_max on one row, as ggml-cpu computes it: exp(x - max), the sum in double,
// then each value times 1/sum.
void softmax_row(float* x, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += double(x[i]);
  }
  const float inv = float(1.0 / sum);
  for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void gate_probs(MoeGating g, float* p, int64_t n) {
  switch (g) {
    case MoeGating::Softmax: softmax_row(p, n); break;
    case MoeGating::Sigmoid:
      for (int64_t i = 0; i < n; ++i) p[i] = 1.0f / (1.0f + std::exp(-p[i]));
      break;
    case MoeGating::SoftmaxWeight: break;  // softmax over the chosen k, after the top-k
    case MoeGating::SqrtSoftplus:
      for (int64_t i = 0; i < n; ++i) p[i] = std::sqrt(p[i] > 20.0f ? p[i] : std::log(1.0f + std::exp(p[i])));
      break;
  }
}

// Masks to -inf the selection scores of every group outside the best n_group_used, a
// group's score being the sum of its two best scores (ggml_argsort_top_k(.., 2) + sum_rows).
void mask_groups(const MoeConfig& c, float* sel, MoeScratch& s) {
  const int64_t per = c.n_expert / c.n_group;
  float* gs = s.group_score.data();
  int32_t* order = s.order.data();
  for (int64_t g = 0; g < c.n_group; ++g) {
    const float* v = sel + g * per;
    std::iota(order, order + per, 0);
    std::partial_sort(order, order + 2, order + per, Better{v});
    gs[g] = v[order[0]] + v[order[1]];
  }
  std::iota(order, order + c.n_group, 0);
  std::partial_sort(order, order + c.n_group_used, order + c.n_group, Better{gs});
  for (int64_t i = c.n_group_used; i < c.n_group; ++i)
    std::fill_n(sel + int64_t(order[i]) * per, per, -std::numeric_limits<float>::infinity());
}

// y[n_tok, down.rows] = FFN(in) with the block's kind; act [n_tok, n_ff] is scratch.
void run_ffn(MoeAct kind, const Weight* gate, const Weight& up, const Weight& down, MatIn in, float* act,
             float* y, int64_t n_tok, ThreadPool& pool, OpScratch& ops) {
  if (kind == MoeAct::SwiGlu) {
    matmul_glu(*gate, up, in, act, n_tok, pool, ops, Glu::SiLU);  // act [n_tok, n_ff]
  } else {
    matmul_many({{&up, act}}, in, n_tok, pool, ops);  // act [n_tok, n_ff]
    relu_sqr(act, n_tok * up.rows);
  }
  matmul(down, act, y, n_tok, pool, ops);  // y [n_tok, down.rows]
}

Status check_matrix(const char* where, const char* what, const Weight& w, int64_t rows, int64_t cols) {
  if (w.data == nullptr) return make_error("{}: MoE tensor {} is missing", where, what);
  if (w.rows != rows || w.cols != cols)
    return make_error("{}: MoE tensor {} '{}' is [{} rows, {} cols], expected [{}, {}]", where, what, w.name,
                      w.rows, w.cols, rows, cols);
  return Status::Ok();
}

}  // namespace

Result<std::vector<Weight>> expert_views(const Weight& stacked, int64_t n_expert) {
  if (n_expert < 1 || stacked.rows % n_expert != 0)
    return make_error("expert tensor '{}' has {} rows, not a multiple of {} experts", stacked.name, stacked.rows,
                      n_expert);
  const int64_t rows = stacked.rows / n_expert;
  std::vector<Weight> views(static_cast<size_t>(n_expert));
  for (int64_t e = 0; e < n_expert; ++e) {
    Weight& v = views[size_t(e)];
    v.name = fmt::format("{}[{}]", stacked.name, e);
    v.type = stacked.type;
    v.data = stacked.data + size_t(e) * size_t(rows) * stacked.row_bytes;
    v.rows = rows;
    v.cols = stacked.cols;
    v.row_bytes = stacked.row_bytes;
  }
  return views;
}

Result<size_t> pack_moe_weights(MoeWeights& w) {
  size_t bytes = 0;
  auto pack = [&bytes](Weight& m) -> Status {
    if (m.data == nullptr) return Status::Ok();
    PG_ASSIGN(size_t b, pack_weight(m));
    bytes += b;
    return Status::Ok();
  };
  for (Weight* m : {&w.router, &w.latent_down, &w.latent_up, &w.shexp_gate, &w.shexp_up, &w.shexp_down})
    PG_TRY(pack(*m));
  for (std::vector<Weight>* v : {&w.gate, &w.up, &w.down})
    for (Weight& m : *v) PG_TRY(pack(m));
  return bytes;
}

Status check_moe_config(const MoeConfig& c) {
  if (c.n_expert < 1 || c.n_expert > kMaxExperts)
    return make_error("MoE: expert count {} is outside [1, {}]", c.n_expert, kMaxExperts);
  if (c.n_used < 1 || c.n_used > c.n_expert)
    return make_error("MoE: experts used per token {} is outside [1, {}] (the expert count)", c.n_used,
                      c.n_expert);
  if (!std::isfinite(c.weights_scale)) return make_error("MoE: expert weights scale {} is not finite", c.weights_scale);
  if (c.gating < MoeGating::Softmax || c.gating > MoeGating::SqrtSoftplus)
    return make_error("MoE: expert gating function {} is unknown", int(c.gating));
  if (c.n_group < 0 || c.n_group_used < 0)
    return make_error("MoE: expert group count {} / used {} is negative", c.n_group, c.n_group_used);
  if (c.n_group <= 1) return Status::Ok();
  if (c.n_group >= c.n_expert || c.n_expert % c.n_group != 0 || c.n_expert / c.n_group < 2)
    return make_error("MoE: {} experts do not split into {} groups of at least 2", c.n_expert, c.n_group);
  if (c.n_group_used < 1 || c.n_group_used >= c.n_group)
    return make_error("MoE: expert groups used {} is outside [1, {}) (the group count)", c.n_group_used, c.n_group);
  if (c.n_used > c.n_group_used * (c.n_expert / c.n_group))
    return make_error("MoE: {} experts per token do not fit in {} groups of {}", c.n_used, c.n_group_used,
                      c.n_expert / c.n_group);
  return Status::Ok();
}

Status check_moe(const MoeWeights& w, const MoeConfig& c, int64_t n_embd, const char* where) {
  if (Status st = check_moe_config(c); !st.ok()) return make_error("{}: {}", where, st.error().message);
  const int64_t E = n_embd;
  PG_TRY(check_matrix(where, "router", w.router, c.n_expert, E));
  if (w.selection_bias.data != nullptr &&
      (w.selection_bias.type != GgmlType::F32 || w.selection_bias.rows * w.selection_bias.cols != c.n_expert))
    return make_error("{}: MoE selection bias '{}' must be F32 with {} values", where, w.selection_bias.name,
                      c.n_expert);
  if ((w.latent_down.data == nullptr) != (w.latent_up.data == nullptr))
    return make_error("{}: MoE latent projections come in pairs (down and up)", where);
  const int64_t ein = w.has_latent() ? w.latent_down.rows : E;
  if (w.has_latent()) {
    PG_TRY(check_matrix(where, "latent_down", w.latent_down, ein, E));
    PG_TRY(check_matrix(where, "latent_up", w.latent_up, E, ein));
  }
  const bool glu = c.act == MoeAct::SwiGlu;
  if (int64_t(w.up.size()) != c.n_expert || int64_t(w.down.size()) != c.n_expert ||
      int64_t(w.gate.size()) != (glu ? c.n_expert : 0))
    return make_error("{}: MoE has {} gate, {} up and {} down expert matrices for {} experts ({})", where,
                      w.gate.size(), w.up.size(), w.down.size(), c.n_expert,
                      glu ? "SwiGLU: all three" : "squared ReLU: no gate");
  const int64_t n_ff = w.up[0].rows;
  for (int64_t e = 0; e < c.n_expert; ++e) {
    PG_TRY(check_matrix(where, "up_exps", w.up[size_t(e)], n_ff, ein));
    if (glu) PG_TRY(check_matrix(where, "gate_exps", w.gate[size_t(e)], n_ff, ein));
    PG_TRY(check_matrix(where, "down_exps", w.down[size_t(e)], ein, n_ff));
  }
  if (w.has_shexp() || w.shexp_down.data != nullptr || w.shexp_gate.data != nullptr) {
    const int64_t n_sh = w.shexp_up.rows;
    PG_TRY(check_matrix(where, "up_shexp", w.shexp_up, n_sh, E));
    PG_TRY(check_matrix(where, "down_shexp", w.shexp_down, E, n_sh));
    if (glu) PG_TRY(check_matrix(where, "gate_shexp", w.shexp_gate, n_sh, E));
    else if (w.shexp_gate.data != nullptr)
      return make_error("{}: MoE shared expert has a gate but the FFN is squared ReLU (ungated)", where);
  }
  return Status::Ok();
}

void moe_route(const MoeConfig& c, float* logits, const float* selection_bias, int64_t T, MoeScratch& s) {
  const int64_t n = c.n_expert, k = c.n_used;
  grow(s.select, n);
  grow(s.order, std::max(n, c.n_group));
  grow(s.group_score, c.n_group);
  grow(s.experts, T * k);
  grow(s.weights, T * k);
  float* sel = s.select.data();
  int32_t* order = s.order.data();
  for (int64_t t = 0; t < T; ++t) {
    float* p = logits + t * n;  // [n_expert]: logits, then probs
    gate_probs(c.gating, p, n);
    for (int64_t e = 0; e < n; ++e) sel[e] = selection_bias ? p[e] + selection_bias[e] : p[e];
    if (c.n_group > 1) mask_groups(c, sel, s);
    std::iota(order, order + n, 0);
    std::partial_sort(order, order + k, order + n, Better{sel});
    int32_t* ex = s.experts.data() + t * k;
    float* w = s.weights.data() + t * k;
    for (int64_t i = 0; i < k; ++i) {
      ex[i] = order[i];
      w[i] = p[order[i]];  // unbiased: the bias only chooses
    }
    if (c.gating == MoeGating::SoftmaxWeight) softmax_row(w, k);
    if (c.norm_weights) {
      float sum = 0.0f;
      for (int64_t i = 0; i < k; ++i) sum += w[i];
      sum = std::max(sum, kMinWeightSum);
      for (int64_t i = 0; i < k; ++i) w[i] /= sum;
    }
    if (c.weights_scale != 0.0f && c.weights_scale != 1.0f)
      for (int64_t i = 0; i < k; ++i) w[i] *= c.weights_scale;
  }
}

void moe_ffn(const MoeWeights& w, const MoeConfig& c, MatIn in, float* out, int64_t T, ThreadPool& pool,
             OpScratch& ops, MoeScratch& s, MoeStats* stats) {
  if (T <= 0) return;
  const int64_t E = w.router.cols, n = c.n_expert, k = c.n_used;
  const bool latent = w.has_latent();
  const int64_t ein = latent ? w.latent_down.rows : E;  // the experts' input width
  const int64_t n_ff = w.up[0].rows, n_sh = w.has_shexp() ? w.shexp_up.rows : 0;
  uint64_t dense_bytes = weight_bytes(w.router), expert_bytes = 0, experts_run = 0;

  // Router logits for every token, then each token's experts and weights.
  grow(s.logits, T * n);
  matmul_many({{&w.router, s.logits.data()}}, in, T, pool, ops);  // logits [T, n_expert]
  moe_route(c, s.logits.data(), w.selection_bias.data ? w.selection_bias.f32() : nullptr, T, s);

  // Group the (token, expert) pairs by expert (a counting sort: tokens stay in order).
  grow(s.start, n + 1);
  grow(s.pair_tok, T * k);
  grow(s.pair_w, T * k);
  int32_t* start = s.start.data();
  std::fill_n(start, n + 1, 0);
  for (int64_t i = 0; i < T * k; ++i) ++start[s.experts[size_t(i)] + 1];
  for (int64_t e = 0; e < n; ++e) start[e + 1] += start[e];
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < k; ++i) {
      const int32_t e = s.experts[size_t(t * k + i)];
      const int32_t slot = start[e]++;
      s.pair_tok[size_t(slot)] = int32_t(t);
      s.pair_w[size_t(slot)] = s.weights[size_t(t * k + i)];
    }
  for (int64_t e = n; e > 0; --e) start[e] = start[e - 1];  // back to first pair of each
  start[0] = 0;

  // The experts' input: the raw rows (normalised inside each matmul, like the dense FFN),
  // or the latent rows, computed once for all tokens.
  const float* src = in.x;
  MatIn expert_in = in;
  if (latent) {
    grow(s.latent, T * ein);
    matmul_many({{&w.latent_down, s.latent.data()}}, in, T, pool, ops);  // latent [T, L]
    src = s.latent.data();
    expert_in = MatIn(nullptr);
    dense_bytes += weight_bytes(w.latent_down) + weight_bytes(w.latent_up);
  }
  float* acc = out;  // the routed sum [T, Ein]
  if (latent) {
    grow(s.acc, T * ein);
    acc = s.acc.data();
  }
  std::fill_n(acc, T * ein, 0.0f);

  // Every chosen expert's tokens gathered, by expert: xin [P, Ein] (pair j is token pair_tok[j]).
  const int64_t P = T * k;
  grow(s.xin, P * ein);
  grow(s.act, std::max(P * n_ff, T * n_sh));
  grow(s.y, std::max(P * ein, T * E));
  float *xin = s.xin.data(), *act = s.act.data(), *y = s.y.data();
  const int32_t* toks = s.pair_tok.data();
  pool.parallel_range(P, 16, [&](int64_t b, int64_t end, int) {
    for (int64_t j = b; j < end; ++j) std::memcpy(xin + j * ein, src + int64_t(toks[j]) * ein, size_t(ein) * 4);
  });
  expert_in.x = xin;
  // The chosen experts' FFNs, y [P, Ein]: with every one packed, all of them in two grouped
  // parallel steps (gate/up, then down); otherwise one after another on their rows.
  bool grouped = true;
  grow(s.jobs, n);
  GroupedJob* jobs = s.jobs.data();
  int64_t nj = 0;
  for (int64_t e = 0; e < n; ++e) {
    const int64_t p0 = start[e], ne = start[e + 1] - p0;
    if (ne == 0) continue;
    const Weight* gate = c.act == MoeAct::SwiGlu ? &w.gate[size_t(e)] : nullptr;
    grouped = grouped && grouped_packed(w.up[size_t(e)]) && grouped_packed(w.down[size_t(e)]) &&
              (gate == nullptr || grouped_packed(*gate));
    jobs[nj++] = {gate, &w.up[size_t(e)], p0, ne, act + p0 * n_ff};
    expert_bytes += weight_bytes(w.up[size_t(e)]) + weight_bytes(w.down[size_t(e)]) + (gate ? weight_bytes(*gate) : 0);
    ++experts_run;
  }
  if (grouped) {
    matmul_grouped(jobs, nj, expert_in, P, pool, ops, Glu::SiLU);  // act [P, n_ff]
    if (c.act == MoeAct::ReluSqr) relu_sqr(act, P * n_ff);
    for (int64_t i = 0; i < nj; ++i) {
      GroupedJob& g = jobs[i];
      g = {nullptr, &w.down[size_t(g.w - w.up.data())], g.row0, g.n, y + g.row0 * ein};
    }
    matmul_grouped(jobs, nj, MatIn(act), P, pool, ops);  // y [P, Ein]
  } else {
    for (int64_t i = 0; i < nj; ++i) {
      const GroupedJob& g = jobs[i];
      MatIn rows = expert_in;
      rows.x = xin + g.row0 * ein;
      run_ffn(c.act, g.gate, *g.w, w.down[size_t(g.w - w.up.data())], rows, g.y, y + g.row0 * ein, g.n, pool, ops);
    }
  }
  // Each token's experts are added in increasing expert index (the pairs' order), columns
  // shared out over the threads.
  const float* pw = s.pair_w.data();
  pool.parallel_range(ein, 64, [&](int64_t c0, int64_t c1, int) {
    for (int64_t j = 0; j < P; ++j) {
      float* o = acc + int64_t(toks[j]) * ein;
      const float* yj = y + j * ein;
      const float wj = pw[j];
      for (int64_t i = c0; i < c1; ++i) o[i] += wj * yj[i];
    }
  });
  if (latent) matmul(w.latent_up, acc, out, T, pool, ops);  // out [T, E]

  if (w.has_shexp()) {
    const Weight* gate = c.act == MoeAct::SwiGlu ? &w.shexp_gate : nullptr;
    run_ffn(c.act, gate, w.shexp_up, w.shexp_down, in, act, y, T, pool, ops);  // y [T, E]
    for (int64_t i = 0; i < T * E; ++i) out[i] += y[i];
    dense_bytes += weight_bytes(w.shexp_up) + weight_bytes(w.shexp_down) + (gate ? weight_bytes(*gate) : 0);
  }

  if (stats) {
    ++stats->calls;
    stats->tokens += uint64_t(T);
    stats->pairs += uint64_t(T * k);
    stats->experts_run += experts_run;
    stats->expert_bytes += expert_bytes;
    stats->dense_bytes += dense_bytes;
  }
}

}  // namespace peregrine
