// The mixture-of-experts block (model/blocks/moe.h) against an independent scalar reference:
// weights dequantized to float, every token routed and run on its own in double precision
// (RMSNorm, router, gating, bias for the choice only, group limit, stable top-k, weight
// renormalisation and scale, each chosen expert's FFN, shared expert, latent projections).
// Also: a token's output is bit-identical alone or in a batch and on 1 or 2 threads, ties
// go to the lower expert index, bad configs and shapes give one-line errors, the bytes-read
// accounting counts exactly the experts used, and a repeated step does not allocate.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "model/blocks/moe.h"
#include "quant/type_table.h"

namespace peregrine {
namespace {

constexpr float kEps = 1e-5f;

// A matrix [rows, cols] of random floats, stored in type t (the project's reference
// quantizer) and dequantized back: the reference computes with exactly the weights the
// block reads.
struct Matrix {
  std::vector<uint8_t> bytes;
  std::vector<float> deq;  // [rows, cols]
  Weight w;

  Matrix() = default;
  Matrix(GgmlType t, int64_t rows, int64_t cols, std::mt19937& rng, std::string name) {
    const TypeInfo& ti = type_info(t);
    std::normal_distribution<float> normal(0.0f, 1.0f / std::sqrt(float(cols)));
    std::vector<float> src(size_t(rows * cols));
    for (float& v : src) v = normal(rng);
    w.name = std::move(name);
    w.type = t;
    w.rows = rows;
    w.cols = cols;
    w.row_bytes = *row_bytes(t, uint64_t(cols));
    bytes.resize(w.row_bytes * size_t(rows));
    deq.resize(src.size());
    for (int64_t r = 0; r < rows; ++r) {
      ti.quantize(&src[size_t(r * cols)], bytes.data() + size_t(r) * w.row_bytes, cols);
      ti.dequantize(bytes.data() + size_t(r) * w.row_bytes, &deq[size_t(r * cols)], cols);
    }
    w.data = bytes.data();
  }
  bool present() const { return w.data != nullptr; }
  const float* row(int64_t r) const { return &deq[size_t(r * w.cols)]; }
};

struct Shape {
  int64_t E = 256, n_ff = 256, n_sh = 0, latent = 0;
  bool bias = false;
  GgmlType type = GgmlType::F32;  // experts, shared expert, latent projections
};

// A block's tensors as a GGUF holds them: stacked ffn_*_exps split by expert_views.
struct Block {
  MoeConfig c;
  Shape sh;
  Matrix router, gate, up, down, latent_down, latent_up, sh_gate, sh_up, sh_down;
  std::vector<float> bias;  // [n_expert]
  std::vector<float> norm;  // [E] the FFN norm weight
  MoeWeights w;  // points into the matrices above: a Block is not copied

  Block(const Block&) = delete;
  Block& operator=(const Block&) = delete;
  Block(const MoeConfig& cfg, const Shape& s, uint32_t seed) : c(cfg), sh(s) {
    std::mt19937 rng(seed);
    const int64_t n = c.n_expert, ein = s.latent ? s.latent : s.E;
    router = Matrix(GgmlType::F32, n, s.E, rng, "ffn_gate_inp");  // llama-quantize keeps it F32
    if (c.act == MoeAct::SwiGlu) gate = Matrix(s.type, n * s.n_ff, ein, rng, "ffn_gate_exps");
    up = Matrix(s.type, n * s.n_ff, ein, rng, "ffn_up_exps");
    down = Matrix(s.type, n * ein, s.n_ff, rng, "ffn_down_exps");
    if (s.latent) {
      latent_down = Matrix(s.type, s.latent, s.E, rng, "ffn_latent_down");
      latent_up = Matrix(s.type, s.E, s.latent, rng, "ffn_latent_up");
    }
    if (s.n_sh) {
      if (c.act == MoeAct::SwiGlu) sh_gate = Matrix(s.type, s.n_sh, s.E, rng, "ffn_gate_shexp");
      sh_up = Matrix(s.type, s.n_sh, s.E, rng, "ffn_up_shexp");
      sh_down = Matrix(s.type, s.E, s.n_sh, rng, "ffn_down_shexp");
    }
    std::normal_distribution<float> b(0.0f, 0.3f);
    if (s.bias)
      for (int64_t e = 0; e < n; ++e) bias.push_back(b(rng));
    std::uniform_real_distribution<float> g(0.5f, 1.5f);
    for (int64_t i = 0; i < s.E; ++i) norm.push_back(g(rng));

    w.router = router.w;
    if (s.bias) w.selection_bias = Weight{"exp_probs_b", GgmlType::F32,
                                          reinterpret_cast<const uint8_t*>(bias.data()), 1, n, size_t(n) * 4};
    if (gate.present()) w.gate = expert_views(gate.w, n).value();
    w.up = expert_views(up.w, n).value();
    w.down = expert_views(down.w, n).value();
    w.latent_down = latent_down.w;
    w.latent_up = latent_up.w;
    w.shexp_gate = sh_gate.w;
    w.shexp_up = sh_up.w;
    w.shexp_down = sh_down.w;
  }
};

// ---- the reference: one token at a time, double precision --------------------------------

std::vector<double> matvec(const Matrix& m, const std::vector<double>& x, int64_t row0 = 0, int64_t rows = -1) {
  if (rows < 0) rows = m.w.rows;
  std::vector<double> y(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = m.row(row0 + r);
    double s = 0;
    for (int64_t i = 0; i < m.w.cols; ++i) s += double(wr[i]) * x[size_t(i)];
    y[size_t(r)] = s;
  }
  return y;
}

// Indices of v sorted best first; a stable sort, so equal values keep increasing index.
std::vector<int> ranked(const std::vector<double>& v) {
  std::vector<int> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return v[size_t(a)] > v[size_t(b)]; });
  return idx;
}

struct RefToken {
  std::vector<int> experts;
  std::vector<double> weights, out;
};

std::vector<double> ref_probs(MoeGating g, std::vector<double> l) {
  switch (g) {
    case MoeGating::Softmax: {
      const double mx = *std::max_element(l.begin(), l.end());
      double sum = 0;
      for (double& v : l) sum += (v = std::exp(v - mx));
      for (double& v : l) v /= sum;
      break;
    }
    case MoeGating::Sigmoid:
      for (double& v : l) v = 1.0 / (1.0 + std::exp(-v));
      break;
    case MoeGating::SoftmaxWeight: break;
    case MoeGating::SqrtSoftplus:
      for (double& v : l) v = std::sqrt(std::log1p(std::exp(v)));
      break;
  }
  return l;
}

// Routing from logits alone (used by the ffn reference and the routing tests).
void ref_route(const MoeConfig& c, const std::vector<double>& logits, const std::vector<float>& bias,
               RefToken& r) {
  const std::vector<double> p = ref_probs(c.gating, logits);
  std::vector<double> sel = p;
  for (size_t e = 0; e < bias.size(); ++e) sel[e] += bias[e];
  if (c.n_group > 1) {
    const int64_t per = c.n_expert / c.n_group;
    std::vector<double> score(size_t(c.n_group));
    for (int64_t g = 0; g < c.n_group; ++g) {
      std::vector<double> v(sel.begin() + g * per, sel.begin() + (g + 1) * per);
      std::sort(v.begin(), v.end(), std::greater<>());
      score[size_t(g)] = v[0] + v[1];
    }
    const std::vector<int> groups = ranked(score);
    for (int64_t i = c.n_group_used; i < c.n_group; ++i)
      for (int64_t j = 0; j < per; ++j) sel[size_t(groups[size_t(i)] * per + j)] = -INFINITY;
  }
  const std::vector<int> order = ranked(sel);
  r.experts.assign(order.begin(), order.begin() + c.n_used);
  r.weights.clear();
  for (int e : r.experts) r.weights.push_back(p[size_t(e)]);
  if (c.gating == MoeGating::SoftmaxWeight) r.weights = ref_probs(MoeGating::Softmax, r.weights);
  if (c.norm_weights) {
    double sum = 0;
    for (double v : r.weights) sum += v;
    for (double& v : r.weights) v /= std::max(sum, 6.103515625e-5);
  }
  if (c.weights_scale != 0.0f && c.weights_scale != 1.0f)
    for (double& v : r.weights) v *= c.weights_scale;
}

// x[E] * norm / rms(x).
std::vector<double> ref_norm(const Block& b, const float* x) {
  const int64_t E = b.sh.E;
  double ss = 0;
  for (int64_t i = 0; i < E; ++i) ss += double(x[i]) * x[i];
  const double scale = 1.0 / std::sqrt(ss / double(E) + kEps);
  std::vector<double> xn(static_cast<size_t>(E));
  for (int64_t i = 0; i < E; ++i) xn[size_t(i)] = x[i] * scale * b.norm[size_t(i)];
  return xn;
}

// One FFN on x: SwiGLU with a gate, else squared ReLU; rows [f0, f0 + n_ff) of gate and up
// and [o0, o0 + n_out) of down (an expert's rows of the stacked tensors).
std::vector<double> ref_ffn(const Matrix* gate, const Matrix& up, const Matrix& down, int64_t f0, int64_t n_ff,
                            int64_t o0, int64_t n_out, const std::vector<double>& x) {
  const std::vector<double> u = matvec(up, x, f0, n_ff);
  std::vector<double> a(u.size());
  if (gate) {
    const std::vector<double> g = matvec(*gate, x, f0, n_ff);
    for (size_t j = 0; j < a.size(); ++j) a[j] = g[j] / (1.0 + std::exp(-g[j])) * u[j];
  } else {
    for (size_t j = 0; j < a.size(); ++j) a[j] = u[j] > 0 ? u[j] * u[j] : 0.0;
  }
  return matvec(down, a, o0, n_out);
}

RefToken ref_token(const Block& b, const float* x) {
  const int64_t E = b.sh.E, ein = b.sh.latent ? b.sh.latent : E, n_ff = b.sh.n_ff;
  const std::vector<double> xn = ref_norm(b, x);
  RefToken r;
  ref_route(b.c, matvec(b.router, xn), b.bias, r);
  const std::vector<double> h = b.sh.latent ? matvec(b.latent_down, xn) : xn;
  const bool glu = b.c.act == MoeAct::SwiGlu;
  std::vector<double> sum(size_t(ein), 0.0);
  for (size_t i = 0; i < r.experts.size(); ++i) {
    const int64_t e = r.experts[i];
    const std::vector<double> y = ref_ffn(glu ? &b.gate : nullptr, b.up, b.down, e * n_ff, n_ff, e * ein, ein, h);
    for (int64_t j = 0; j < ein; ++j) sum[size_t(j)] += r.weights[i] * y[size_t(j)];
  }
  r.out = b.sh.latent ? matvec(b.latent_up, sum) : sum;
  if (b.sh.n_sh) {
    const std::vector<double> y = ref_ffn(glu ? &b.sh_gate : nullptr, b.sh_up, b.sh_down, 0, b.sh.n_sh, 0, E, xn);
    for (int64_t j = 0; j < E; ++j) r.out[size_t(j)] += y[size_t(j)];
  }
  return r;
}

// Tokens of different scales (the RMS norm removes them).
std::vector<float> random_input(int64_t T, int64_t E, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(size_t(T * E));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < E; ++i) x[size_t(t * E + i)] = normal(rng) * float(1 + t % 3);
  return x;
}

std::vector<float> run(const Block& b, const std::vector<float>& x, int64_t T, ThreadPool& pool, MoeScratch& s,
                       MoeStats* stats = nullptr) {
  OpScratch ops;
  std::vector<float> out(size_t(T * b.sh.E), NAN);
  moe_ffn(b.w, b.c, MatIn(x.data(), b.norm.data(), kEps), out.data(), T, pool, ops, s, stats);
  return out;
}

// ---- against the reference --------------------------------------------------------------

struct Case {
  const char* name;
  MoeConfig c;
  Shape sh;
  bool pack;
  double tol;  // relative RMS error: |out - ref| / |ref| over all tokens
};

MoeConfig config(int64_t n, int64_t k, MoeGating g, bool norm, float scale, MoeAct act) {
  MoeConfig c;
  c.n_expert = n;
  c.n_used = k;
  c.gating = g;
  c.norm_weights = norm;
  c.weights_scale = scale;
  c.act = act;
  return c;
}

Shape shape(GgmlType t, int64_t n_sh = 0, bool bias = false, int64_t latent = 0, int64_t n_ff = 256) {
  Shape s;
  s.type = t;
  s.n_sh = n_sh;
  s.bias = bias;
  s.latent = latent;
  s.n_ff = n_ff;
  return s;
}

MoeConfig grouped(MoeConfig c, int64_t n_group, int64_t n_group_used) {
  c.n_group = n_group;
  c.n_group_used = n_group_used;
  return c;
}

// Float weights leave only float rounding (~4e-7 seen); quantized ones add the 8-bit
// activations of two matmuls in a row: ~1.2% seen with 32-value blocks, ~2% with the
// coarser 256-value Q8_K blocks of unpacked K-quants.
const Case kCases[] = {
    // qwen3moe: softmax, always renormalised, SwiGLU.
    {"qwen3moe_f32", config(8, 2, MoeGating::Softmax, true, 0.0f, MoeAct::SwiGlu), shape(GgmlType::F32), true, 1e-5},
    {"qwen3moe_q8_0", config(8, 2, MoeGating::Softmax, true, 0.0f, MoeAct::SwiGlu), shape(GgmlType::Q8_0), true, 2e-2},
    {"qwen3moe_q8_0_unpacked", config(8, 2, MoeGating::Softmax, true, 0.0f, MoeAct::SwiGlu), shape(GgmlType::Q8_0),
     false, 2e-2},
    {"qwen3moe_q4_k", config(8, 3, MoeGating::Softmax, true, 0.0f, MoeAct::SwiGlu), shape(GgmlType::Q4_K), true, 2e-2},
    {"qwen3moe_q4_k_unpacked", config(8, 3, MoeGating::Softmax, true, 0.0f, MoeAct::SwiGlu), shape(GgmlType::Q4_K),
     false, 3e-2},
    // olmoe: softmax without renormalisation.
    {"olmoe_f32", config(16, 4, MoeGating::Softmax, false, 0.0f, MoeAct::SwiGlu), shape(GgmlType::F32), true, 1e-5},
    {"olmoe_q8_0", config(16, 4, MoeGating::Softmax, false, 0.0f, MoeAct::SwiGlu), shape(GgmlType::Q8_0), true, 2e-2},
    // nemotron_h_moe: sigmoid, selection bias, renormalised and scaled, squared ReLU, ungated
    // shared expert.
    {"nemotron_f32", config(8, 3, MoeGating::Sigmoid, true, 2.5f, MoeAct::ReluSqr), shape(GgmlType::F32, 128, true),
     true, 1e-5},
    {"nemotron_q8_0", config(8, 3, MoeGating::Sigmoid, true, 2.5f, MoeAct::ReluSqr), shape(GgmlType::Q8_0, 128, true),
     true, 2e-2},
    // Nemotron 3 Super: experts in a 64-wide latent space.
    {"nemotron_latent_f32", config(8, 2, MoeGating::Sigmoid, true, 2.5f, MoeAct::ReluSqr),
     shape(GgmlType::F32, 128, true, 64, 96), true, 1e-5},
    {"nemotron_latent_q8_0", config(8, 2, MoeGating::Sigmoid, true, 2.5f, MoeAct::ReluSqr),
     shape(GgmlType::Q8_0, 128, true, 64, 96), true, 2e-2},
    // afmoe: sigmoid, bias, renormalised, scale, SwiGLU shared expert.
    {"afmoe_q4_k", config(8, 2, MoeGating::Sigmoid, true, 2.826f, MoeAct::SwiGlu), shape(GgmlType::Q4_K, 256, true),
     true, 2e-2},
    {"afmoe_f32_no_norm", config(8, 2, MoeGating::Sigmoid, false, 0.0f, MoeAct::SwiGlu),
     shape(GgmlType::F32, 64, true), true, 1e-5},
    // Group-limited routing (any architecture whose file sets expert_group_count).
    {"groups_f32", grouped(config(16, 3, MoeGating::Sigmoid, true, 1.0f, MoeAct::SwiGlu), 4, 2),
     shape(GgmlType::F32, 0, true), true, 1e-5},
    // The other gating functions an afmoe file may name.
    {"softmax_weight_f32", config(8, 3, MoeGating::SoftmaxWeight, false, 0.0f, MoeAct::SwiGlu), shape(GgmlType::F32),
     true, 1e-5},
    {"sqrt_softplus_f32", config(8, 3, MoeGating::SqrtSoftplus, true, 1.5f, MoeAct::SwiGlu), shape(GgmlType::F32),
     true, 1e-5},
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class MoeBlock : public ::testing::TestWithParam<Case> {};

TEST_P(MoeBlock, MatchesScalarReference) {
  const Case& cs = GetParam();
  Block b(cs.c, cs.sh, 11);
  ASSERT_TRUE(check_moe(b.w, b.c, cs.sh.E).ok()) << check_moe(b.w, b.c, cs.sh.E).error().message;
  if (cs.pack) {
    ASSERT_TRUE(pack_moe_weights(b.w).ok());
  }
  const int64_t T = 13, E = cs.sh.E, k = cs.c.n_used;
  const std::vector<float> x = random_input(T, E, 5);
  ThreadPool pool(2);
  MoeScratch s;
  const std::vector<float> out = run(b, x, T, pool, s);

  double max_ref = 0, ref_sq = 0, err_sq = 0;
  int bias_changed = 0;
  for (int64_t t = 0; t < T; ++t) {
    const RefToken r = ref_token(b, &x[size_t(t * E)]);
    for (int64_t i = 0; i < k; ++i) {
      ASSERT_EQ(s.experts[size_t(t * k + i)], r.experts[size_t(i)]) << cs.name << " token " << t << " choice " << i;
      ASSERT_NEAR(s.weights[size_t(t * k + i)], r.weights[size_t(i)], 1e-5 * (1 + std::fabs(r.weights[size_t(i)])))
          << cs.name << " token " << t << " choice " << i;
    }
    for (int64_t i = 0; i < E; ++i) {
      const double d = out[size_t(t * E + i)] - r.out[size_t(i)];
      max_ref = std::max(max_ref, std::fabs(r.out[size_t(i)]));
      ref_sq += r.out[size_t(i)] * r.out[size_t(i)];
      err_sq += d * d;
    }
    if (cs.sh.bias) {  // does the bias matter here? (the choice without it)
      RefToken plain;
      ref_route(cs.c, matvec(b.router, ref_norm(b, &x[size_t(t * E)])), {}, plain);
      bias_changed += plain.experts != r.experts;
    }
  }
  EXPECT_GT(max_ref, 0.01) << cs.name;
  EXPECT_LE(std::sqrt(err_sq / ref_sq), cs.tol) << cs.name << ": relative RMS error";
  if (cs.sh.bias) {
    EXPECT_GT(bias_changed, 0) << cs.name << ": the selection bias never changed a choice";
  }
}

// A token's output is the same bits alone, in any batch, and on any thread count.
TEST_P(MoeBlock, BatchInvariantAndThreadInvariant) {
  const Case& cs = GetParam();
  Block b(cs.c, cs.sh, 23);
  if (cs.pack) {
    ASSERT_TRUE(pack_moe_weights(b.w).ok());
  }
  const int64_t T = 9, E = cs.sh.E;
  const std::vector<float> x = random_input(T, E, 8);
  ThreadPool two(2), one(1);
  MoeScratch s;
  const std::vector<float> all = run(b, x, T, two, s);
  EXPECT_EQ(0, std::memcmp(all.data(), run(b, x, T, one, s).data(), all.size() * 4)) << cs.name << ": threads";
  for (int64_t t = 0; t < T; ++t) {
    const std::vector<float> xt(x.begin() + t * E, x.begin() + (t + 1) * E);
    const std::vector<float> alone = run(b, xt, 1, two, s);
    ASSERT_EQ(0, std::memcmp(alone.data(), &all[size_t(t * E)], size_t(E) * 4)) << cs.name << ": token " << t;
  }
  // A batch of the last 4 tokens (other companions, other expert groupings).
  const std::vector<float> tail(x.end() - 4 * E, x.end());
  const std::vector<float> part = run(b, tail, 4, two, s);
  EXPECT_EQ(0, std::memcmp(part.data(), &all[size_t((T - 4) * E)], size_t(4 * E) * 4)) << cs.name;
}

INSTANTIATE_TEST_SUITE_P(Moe, MoeBlock, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

// ---- routing ------------------------------------------------------------------------------

std::vector<int32_t> route(const MoeConfig& c, std::vector<float> logits, const std::vector<float>& bias,
                           std::vector<float>* weights = nullptr) {
  MoeScratch s;
  const int64_t T = int64_t(logits.size()) / c.n_expert;
  moe_route(c, logits.data(), bias.empty() ? nullptr : bias.data(), T, s);
  if (weights) weights->assign(s.weights.begin(), s.weights.begin() + T * c.n_used);
  return {s.experts.begin(), s.experts.begin() + T * c.n_used};
}

TEST(MoeRouting, TiesGoToTheLowerExpertIndex) {
  MoeConfig c = config(6, 3, MoeGating::Softmax, true, 0.0f, MoeAct::SwiGlu);
  EXPECT_EQ(route(c, {1, 3, 3, 2, 3, 0}, {}), (std::vector<int32_t>{1, 2, 4}));
  EXPECT_EQ(route(c, {0, 0, 0, 0, 0, 0}, {}), (std::vector<int32_t>{0, 1, 2}));
  // Equal after the bias: the index decides, not the unbiased probability (expert 2 has the
  // highest, but the bias lifts 0, 1 and 4 above it).
  c.gating = MoeGating::Sigmoid;
  std::vector<float> w;
  const std::vector<float> logits = {0, 0, 1, 0, 0, 0};
  EXPECT_EQ(route(c, logits, {0.3f, 0.3f, 0, 0, 0.3f, 0}, &w), (std::vector<int32_t>{0, 1, 4}));
  // Weights come from the unbiased probabilities: here 0.5, 0.5, sigmoid(1), renormalised.
  EXPECT_EQ(route(c, logits, {0.3f, 0.3f, 0, 0, 0.2f, 0}, &w), (std::vector<int32_t>{0, 1, 2}));
  const float s1 = 1.0f / (1.0f + std::exp(-1.0f)), sum = 1.0f + s1;
  EXPECT_NEAR(w[0], 0.5f / sum, 1e-6f);
  EXPECT_NEAR(w[1], 0.5f / sum, 1e-6f);
  EXPECT_NEAR(w[2], s1 / sum, 1e-6f);
  // NaN ranks last.
  c.n_used = 2;
  EXPECT_EQ(route(c, {NAN, 0, 0, NAN, 0, 0}, {}), (std::vector<int32_t>{1, 2}));
}

TEST(MoeRouting, GroupsAreRankedByTheirTwoBestScoresThenIndex) {
  // 4 groups of 2; group sums 0.9, 1.1, 1.1, 0.2 -> groups 1 and 2 (tie: lower index first
  // among equals, both kept); the overall best expert (0, in group 0) is masked.
  MoeConfig c = grouped(config(8, 2, MoeGating::SoftmaxWeight, false, 0.0f, MoeAct::SwiGlu), 4, 2);
  EXPECT_EQ(route(c, {0.9f, 0.0f, 0.6f, 0.5f, 0.55f, 0.55f, 0.1f, 0.1f}, {}), (std::vector<int32_t>{2, 4}));
  // Three groups tie; only one kept: the lowest index.
  c.n_group_used = 1;
  EXPECT_EQ(route(c, {0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.0f, 0.9f}, {}), (std::vector<int32_t>{0, 1}));
}

TEST(MoeRouting, WeightsRenormaliseThenScaleAndClampTinySums) {
  MoeConfig c = config(4, 2, MoeGating::Sigmoid, true, 3.0f, MoeAct::ReluSqr);
  std::vector<float> w;
  route(c, {2, -1, 1, -3}, {}, &w);
  const double a = 1 / (1 + std::exp(-2.0)), b = 1 / (1 + std::exp(-1.0));
  EXPECT_NEAR(w[0], 3 * a / (a + b), 1e-6);
  EXPECT_NEAR(w[1], 3 * b / (a + b), 1e-6);
  // A sum below 2^-14 is clamped: the weights stay tiny instead of blowing up.
  c.weights_scale = 0.0f;  // 0: no scaling
  route(c, {-30, -40, -31, -50}, {}, &w);
  const double p0 = 1 / (1 + std::exp(30.0)), p1 = 1 / (1 + std::exp(31.0));
  EXPECT_NEAR(w[0], p0 / 6.103515625e-5, 1e-9);
  EXPECT_NEAR(w[1], p1 / 6.103515625e-5, 1e-9);
}

// A router of zeros ties every expert: each token takes experts 0..k-1 with equal weights.
TEST(MoeRouting, ZeroRouterPicksTheFirstExperts) {
  MoeConfig c = config(8, 3, MoeGating::Softmax, false, 0.0f, MoeAct::SwiGlu);
  Block b(c, shape(GgmlType::F32), 3);
  std::fill(b.router.deq.begin(), b.router.deq.end(), 0.0f);
  std::memset(b.router.bytes.data(), 0, b.router.bytes.size());
  const int64_t T = 5;
  const std::vector<float> x = random_input(T, 256, 1);
  ThreadPool pool(2);
  MoeScratch s;
  const std::vector<float> out = run(b, x, T, pool, s);
  for (int64_t t = 0; t < T; ++t) {
    EXPECT_EQ(std::vector<int32_t>(s.experts.begin() + t * 3, s.experts.begin() + t * 3 + 3),
              (std::vector<int32_t>{0, 1, 2}));
    const RefToken r = ref_token(b, &x[size_t(t * 256)]);
    for (int64_t i = 0; i < 256; ++i) ASSERT_NEAR(out[size_t(t * 256 + i)], r.out[size_t(i)], 1e-4);
  }
}

// ---- accounting and allocation -----------------------------------------------------------

TEST(MoeStats, CountsTheBytesOfTheExpertsRead) {
  MoeConfig c = config(16, 2, MoeGating::Softmax, true, 0.0f, MoeAct::SwiGlu);
  Block b(c, shape(GgmlType::Q8_0, 128), 4);
  const uint64_t per_expert = 3 * uint64_t(b.w.up[0].row_bytes) * 256;  // gate, up, down: 256 x 256
  const uint64_t dense = uint64_t(b.router.w.row_bytes) * 16 + uint64_t(b.sh_gate.w.row_bytes) * 128 +
                         uint64_t(b.sh_up.w.row_bytes) * 128 + uint64_t(b.sh_down.w.row_bytes) * 256;
  ThreadPool pool(2);
  MoeScratch s;
  MoeStats st;
  const std::vector<float> x = random_input(8, 256, 2);
  run(b, std::vector<float>(x.begin(), x.begin() + 256), 1, pool, s, &st);  // decode: 2 experts
  EXPECT_EQ(st.calls, 1u);
  EXPECT_EQ(st.tokens, 1u);
  EXPECT_EQ(st.pairs, 2u);
  EXPECT_EQ(st.experts_run, 2u);
  EXPECT_EQ(st.expert_bytes, 2 * per_expert);
  EXPECT_EQ(st.dense_bytes, dense);
  EXPECT_DOUBLE_EQ(st.bytes_per_token(), double(2 * per_expert + dense));

  MoeStats batch;  // 8 tokens: each distinct expert once, however many tokens chose it
  run(b, x, 8, pool, s, &batch);
  std::vector<bool> used(16);
  for (int64_t i = 0; i < 16; ++i) used[size_t(s.experts[size_t(i)])] = true;
  const uint64_t distinct = uint64_t(std::count(used.begin(), used.end(), true));
  EXPECT_EQ(batch.experts_run, distinct);
  EXPECT_EQ(batch.expert_bytes, distinct * per_expert);
  EXPECT_EQ(batch.pairs, 16u);

  ASSERT_TRUE(pack_moe_weights(b.w).ok());  // packed: the panels' bytes
  MoeStats packed;
  run(b, std::vector<float>(x.begin(), x.begin() + 256), 1, pool, s, &packed);
  const uint64_t per_packed = b.w.up[0].packed->bytes() + b.w.gate[0].packed->bytes() + b.w.down[0].packed->bytes();
  EXPECT_EQ(packed.expert_bytes, 2 * per_packed);
}

TEST(MoeScratch, ARepeatedStepReusesItsBuffers) {
  MoeConfig c = config(8, 2, MoeGating::Sigmoid, true, 2.0f, MoeAct::ReluSqr);
  Block b(c, shape(GgmlType::Q8_0, 128, true, 64, 96), 6);
  ASSERT_TRUE(pack_moe_weights(b.w).ok());
  const std::vector<float> x = random_input(6, 256, 9);
  ThreadPool pool(2);
  MoeScratch s;
  OpScratch ops;
  std::vector<float> out(x.size());
  const MatIn in(x.data(), b.norm.data(), kEps);
  moe_ffn(b.w, c, in, out.data(), 6, pool, ops, s);
  auto pointers = [&] {
    return std::vector<const void*>{s.logits.data(), s.experts.data(), s.weights.data(), s.pair_tok.data(),
                                    s.pair_w.data(), s.latent.data(), s.acc.data(), s.xin.data(),
                                    s.act.data(), s.y.data(), s.select.data(), s.order.data(),
                                    ops.xq.data(), ops.xn.data(), ops.tmp.data()};
  };
  const std::vector<const void*> before = pointers();
  for (int64_t T : {1, 6, 3}) moe_ffn(b.w, c, in, out.data(), T, pool, ops, s);
  EXPECT_EQ(before, pointers());
}

// ---- errors ---------------------------------------------------------------------------------

void expect_error(const Status& st, const std::string& needle) {
  ASSERT_FALSE(st.ok()) << "expected an error mentioning '" << needle << "'";
  EXPECT_NE(st.error().message.find(needle), std::string::npos) << st.error().message;
  EXPECT_EQ(st.error().message.find('\n'), std::string::npos) << st.error().message;
}

TEST(MoeConfigCheck, RefusesOutOfRangeCounts) {
  const MoeConfig ok = config(8, 2, MoeGating::Softmax, true, 0.0f, MoeAct::SwiGlu);
  EXPECT_TRUE(check_moe_config(ok).ok());
  MoeConfig c = ok;
  c.n_used = 0;
  expect_error(check_moe_config(c), "experts used per token 0");
  c.n_used = 9;
  expect_error(check_moe_config(c), "experts used per token 9");
  c = ok;
  c.n_expert = 0;
  expect_error(check_moe_config(c), "expert count 0");
  c.n_expert = kMaxExperts + 1;
  expect_error(check_moe_config(c), "expert count 1025");
  c = ok;
  c.weights_scale = INFINITY;
  expect_error(check_moe_config(c), "scale");
  c = ok;
  c.gating = MoeGating(7);
  expect_error(check_moe_config(c), "gating function 7");
  expect_error(check_moe_config(grouped(ok, 3, 1)), "do not split into 3 groups");
  expect_error(check_moe_config(grouped(ok, 4, 4)), "groups used 4");
  expect_error(check_moe_config(grouped(ok, 4, 0)), "groups used 0");
  MoeConfig wide = grouped(ok, 4, 1);
  wide.n_used = 3;  // one group of 2 cannot give 3 experts
  expect_error(check_moe_config(wide), "do not fit");
  EXPECT_TRUE(check_moe_config(grouped(ok, 4, 2)).ok());
}

TEST(MoeConfigCheck, RefusesWeightsThatDoNotMatch) {
  const MoeConfig swiglu = config(4, 2, MoeGating::Softmax, true, 0.0f, MoeAct::SwiGlu);
  Block b(swiglu, shape(GgmlType::F32, 64), 1);
  EXPECT_TRUE(check_moe(b.w, swiglu, 256).ok());
  expect_error(check_moe(b.w, swiglu, 128, "blk.3"), "blk.3: MoE tensor router 'ffn_gate_inp' is [4 rows, 256 cols]");
  MoeConfig more = swiglu;
  more.n_expert = 5;
  expect_error(check_moe(b.w, more, 256), "router");
  MoeConfig relu = swiglu;
  relu.act = MoeAct::ReluSqr;
  expect_error(check_moe(b.w, relu, 256), "squared ReLU: no gate");
  MoeWeights no_gate = b.w;
  no_gate.gate.clear();
  expect_error(check_moe(no_gate, swiglu, 256), "SwiGLU: all three");
  expect_error(check_moe(no_gate, relu, 256), "shared expert has a gate");
  MoeWeights sh = b.w;
  sh.shexp_down = Weight{};
  expect_error(check_moe(sh, swiglu, 256), "down_shexp");
  MoeWeights half_latent = b.w;
  half_latent.latent_up = b.w.router;
  expect_error(check_moe(half_latent, swiglu, 256), "latent");
  MoeWeights bias = b.w;
  bias.selection_bias = Weight{"exp_probs_b", GgmlType::F32, b.router.bytes.data(), 1, 3, 12};
  expect_error(check_moe(bias, swiglu, 256), "4 values");
  expect_error(expert_views(b.up.w, 3).ok() ? Status::Ok() : Status(expert_views(b.up.w, 3).error()),
               "not a multiple of 3 experts");
}

}  // namespace
}  // namespace peregrine
