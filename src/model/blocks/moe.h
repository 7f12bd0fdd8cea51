// The mixture-of-experts feed-forward block, as llama.cpp's build_moe_ffn computes it
// (src/llama-graph.cpp) for qwen3moe, olmoe, afmoe and nemotron_h / nemotron_h_moe:
//
//   logits = router * x                         [T, n_expert]   (x: the RMS-normed input)
//   probs  = gating(logits)                     softmax / sigmoid / ...
//   select = probs + selection_bias             (bias only chooses; weights use probs)
//            with the groups outside the best n_group_used masked to -inf (group routing)
//   top-k of select per token -> experts e_1..e_k, w_i = probs[e_i]
//   w /= max(sum w, 2^-14) if norm_weights;  w *= weights_scale if it is neither 0 nor 1
//   out = sum_i w_i * FFN_{e_i}(x)  +  shared FFN(x)
//
// FFN kinds: SwiGLU (down * (silu(gate x) * up x)) or squared ReLU without a gate (down *
// relu(up x)^2, Nemotron-H). The shared expert, when present, is an FFN of the same kind on
// the same normed input, added after the routed sum, with no gate of its own (afmoe and
// Nemotron-H have none; Qwen2-MoE's sigmoid-gated shared expert is not supported here).
// Nemotron 3 Super's latent projections are optional: the experts then run on
// latent_down * x and their sum goes through latent_up; router and shared expert still see x.
//
// How a step runs: one matmul gives all T tokens' router logits; routing picks each token's
// experts; the (token, expert) pairs are grouped by expert; for each expert chosen by n_e > 0
// tokens, those tokens' input rows are gathered into a contiguous [n_e, E] block; all chosen
// experts run in two grouped parallel steps (matmul_grouped: gate/up, then down; one after
// another when a weight is not packed), and w * result is added to the tokens' outputs. So an
// expert's weights are streamed once per step, not once per token that chose it, experts nobody
// chose are not touched, and a decode step (T = 1) reads only its n_used experts.
//
// Batch invariance: a token's output never depends on the other tokens of the step. The
// gathered rows are the raw input rows and the matmuls normalise them on the way in (MatIn),
// exactly as the dense FFN does, so activation quantization is per row and the same for a
// token alone or in a batch; each token's expert results are added in increasing expert index,
// whatever else was routed. (llama.cpp adds them in top-k order: a float rounding difference.)
#pragma once

#include <cstdint>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "ops/matmul.h"
#include "ops/weight.h"

namespace peregrine {

// How router logits become probabilities (llama_expert_gating_func_type; the numbers are
// the GGUF "<arch>.expert_gating_func" values).
enum class MoeGating {
  Softmax = 1,        // softmax over all experts (qwen3moe, olmoe)
  Sigmoid = 2,        // per expert (nemotron_h*, afmoe's default)
  SoftmaxWeight = 3,  // probs = logits; softmax over the chosen k only
  SqrtSoftplus = 4,   // sqrt(softplus(logit))
};

// The experts' (and the shared expert's) FFN.
enum class MoeAct {
  SwiGlu,   // down * (silu(gate * x) * (up * x))
  ReluSqr,  // down * relu(up * x)^2, no gate (Nemotron-H)
};

inline constexpr int64_t kMaxExperts = 1024;  // llama.cpp's LLAMA_MAX_EXPERTS

struct MoeConfig {
  int64_t n_expert = 0;      // experts in the layer ("<arch>.expert_count")
  int64_t n_used = 0;        // experts per token, top-k ("<arch>.expert_used_count")
  // Group-limited routing (DeepSeek V3 style, "<arch>.expert_group_count" /
  // "expert_group_used_count"): experts form n_group equal groups, a group's score is the sum
  // of its two best selection scores, and only the best n_group_used groups may be chosen.
  // 0 or 1: off. llama.cpp applies it to any architecture whose file sets the keys.
  int64_t n_group = 0;
  int64_t n_group_used = 0;
  MoeGating gating = MoeGating::Softmax;
  bool norm_weights = false;   // renormalise the k weights to sum 1 ("expert_weights_norm";
                               // qwen3moe always, olmoe never)
  float weights_scale = 0.0f;  // multiply the weights after the renormalisation
                               // ("expert_weights_scale"); 0 or 1: no scaling, as in llama.cpp
  MoeAct act = MoeAct::SwiGlu;  // routed and shared experts alike
};

struct MoeWeights {
  Weight router;          // ffn_gate_inp [n_expert rows, E cols] (ggml [E, n_expert])
  Weight selection_bias;  // ffn_exp_probs_b [n_expert], F32; optional (data == nullptr)
  // Per expert (expert_views of the stacked ffn_*_exps tensors): gate and up [n_ff_exp
  // rows, Ein cols], down [Ein rows, n_ff_exp cols]; Ein = E, or the latent width. gate
  // is empty for MoeAct::ReluSqr.
  std::vector<Weight> gate, up, down;
  // Optional latent projections (Nemotron 3 Super): latent_down [L rows, E cols],
  // latent_up [E rows, L cols]; both or neither.
  Weight latent_down, latent_up;
  // Optional shared expert (ffn_*_shexp): gate / up [n_ff_shexp rows, E], down [E rows,
  // n_ff_shexp]; gate only for MoeAct::SwiGlu.
  Weight shexp_gate, shexp_up, shexp_down;

  bool has_shexp() const { return shexp_up.data != nullptr; }
  bool has_latent() const { return latent_down.data != nullptr; }
};

// Per-expert views of a bound 3-D tensor ffn_*_exps (ggml [cols, rows_per_expert,
// n_expert], bound as one Weight of n_expert * rows_per_expert rows): view e holds rows
// [e * rows_per_expert, (e + 1) * rows_per_expert), named "<name>[e]". Views point into the
// same bytes (no copy); pack them one by one (pack_moe_weights) for the panel kernels.
Result<std::vector<Weight>> expert_views(const Weight& stacked, int64_t n_expert);

// Repacks every matmul weight of the block for the panel kernels (pack_weight); returns
// the packed bytes.
Result<size_t> pack_moe_weights(MoeWeights& w);

// The routing hyperparameters alone: n_expert in [1, kMaxExperts], n_used in [1, n_expert],
// a finite weights_scale, and consistent groups. One-line errors naming the value.
Status check_moe_config(const MoeConfig& c);

// The config and the weights together (counts, shapes, which optional tensors go with
// which FFN kind) for an input width n_embd; `where` prefixes the message (e.g. "blk.3").
Status check_moe(const MoeWeights& w, const MoeConfig& c, int64_t n_embd, const char* where = "moe");

// Reusable buffers: they grow to the largest batch and then stay, so the steady-state
// decode loop does not allocate. Row-major; T is the step's token count.
struct MoeScratch {
  std::vector<float> logits;      // [T, n_expert] router logits, then probs in place
  std::vector<float> select;      // [n_expert] one token's selection scores
  std::vector<int32_t> order;     // [max(n_expert, n_group)] index scratch for the top-k
  std::vector<float> group_score; // [n_group]
  std::vector<int32_t> experts;   // [T, n_used] chosen experts, best first
  std::vector<float> weights;     // [T, n_used] their weights
  std::vector<int32_t> start;     // [n_expert + 1] first pair of each expert in `pair_*`
  std::vector<int32_t> pair_tok;  // [T * n_used] token of each (token, expert) pair, by expert
  std::vector<float> pair_w;      // [T * n_used] its weight
  std::vector<float> latent;      // [T, L] latent_down * x
  std::vector<float> acc;         // [T, L] the routed sum in latent space
  std::vector<float> xin;         // [T * n_used, Ein] the pairs' input rows, by expert
  std::vector<float> act;         // [max(T * n_used * n_ff_exp, T * n_ff_shexp)] FFN activations
  std::vector<float> y;           // [max(T * n_used * Ein, T * E)] the experts' (or the shared) outputs
  std::vector<GroupedJob> jobs;   // [n_expert] the chosen experts' matmul jobs
};

// What the block read, summed over calls, for "bytes of weights read per token" reports.
// Bytes are those the kernels stream: the packed size when a weight is packed, else its
// GGUF rows. One MoeStats may be shared by all layers; tokens then count once per layer.
struct MoeStats {
  uint64_t calls = 0;          // moe_ffn calls (layers x steps)
  uint64_t tokens = 0;         // tokens over all calls
  uint64_t pairs = 0;          // (token, expert) assignments: tokens * n_used
  uint64_t experts_run = 0;    // routed experts whose weights were read, over all calls
  uint64_t expert_bytes = 0;   // routed experts' gate, up and down bytes read
  uint64_t dense_bytes = 0;    // router, latent projections and shared expert: every call
  double bytes_per_token() const {
    return tokens ? double(expert_bytes + dense_bytes) / double(tokens) : 0.0;
  }
};

// Routing alone: logits [T, n_expert] -> s.experts [T, n_used] (best first) and s.weights
// [T, n_used]. Top-k order: higher selection score first, equal scores (and the -inf of
// masked groups) by lower expert index, NaN last -- a deterministic choice where llama.cpp's
// std::sort leaves ties unspecified. The same rule ranks the groups. `logits` is overwritten
// with the probabilities. selection_bias: [n_expert] or null.
void moe_route(const MoeConfig& c, float* logits, const float* selection_bias, int64_t T, MoeScratch& s);

// out[T, E] = the block's output for in [T, E] (raw rows with the FFN norm in MatIn, as
// the dense FFN takes them); out does not alias in.x and is overwritten (the caller adds
// the residual). Weights and config must have passed check_moe.
void moe_ffn(const MoeWeights& w, const MoeConfig& c, MatIn in, float* out, int64_t T, ThreadPool& pool,
             OpScratch& ops, MoeScratch& s, MoeStats* stats = nullptr);

}  // namespace peregrine
