#include "model/blocks/decoder.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "model/tensor_table.h"
#include "ops/attention.h"

namespace peregrine {
namespace {

struct LayerWeights {
  Weight attn_norm, wq, wk, wv, bq, bk, bv, q_norm, k_norm, wo, post_attn_norm;
  Weight w_attn_gate;  // DecoderStyle::attn_gate: [E, q_dim]
  Weight ffn_norm, w_gate, w_up, w_down, post_ffn_norm;
  // Fused files (DecoderStyle::fused_*): the tensor as bound; wq/wk/wv and w_gate/w_up are then
  // views of its row ranges, so the matmuls, packing and the imatrix see what they would
  // otherwise. Empty when the layer has separate tensors.
  Weight wqkv, w_gate_up;
  Mamba2Weights ssm;                     // MixerKind::Mamba2
  MoeWeights moe;                        // FfnKind::Moe: per-expert views of the stacks below
  Weight exps_gate, exps_up, exps_down;  // ffn_*_exps as bound: [n_expert * n_ff_exp rows]
};

// Rows [r0, r0 + n) of w as a matrix of its own: GGUF rows are contiguous, whole blocks each.
Weight row_view(const Weight& w, int64_t r0, int64_t n) {
  Weight v = w;
  v.name = fmt::format("{}[{}:{}]", w.name, r0, r0 + n);
  v.data = w.row(r0);
  v.rows = n;
  return v;
}

// x[i] *= sigmoid(g[i]) for i < n.
void mul_sigmoid(float* x, const float* g, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] *= 1.0f / (1.0f + std::exp(-g[i]));
}

// Layer il's tensor "blk.<il>.<suffix>" into a tensor table.
void add_layer_tensor(std::vector<TensorSpec>& t, int64_t il, const char* suffix, std::vector<int64_t> dims,
                      TensorRole role, bool required, bool float_only, Weight* dest) {
  t.push_back({fmt::format("blk.{}.{}", il, suffix), std::move(dims), role, il, required, float_only, dest});
}

// x[T, n] += b[n] on every row.
void add_bias(float* x, const Weight& b, int64_t T, int64_t n) {
  const float* bias = b.f32();
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < n; ++i) x[t * n + i] += bias[i];
}

void add_rows(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

class Decoder final : public Model {
 public:
  Decoder(std::shared_ptr<const gguf::File> file, ThreadPool& pool, DecoderConfig c)
      : pool_(pool), style_(c.style), ropes_(std::move(c.ropes)), rope_freqs_table_(c.rope_freqs_table),
        ignorable_(std::move(c.ignorable)), notes_(std::move(c.notes)), moe_(c.moe), ssm_(c.ssm) {
    file_ = std::move(file);
    hp_ = std::move(c.hp);
    layers_ = std::move(c.layers);
  }

  Status load() {
    const gguf::File& f = *file_;
    if (int64_t(layers_.size()) != hp_.n_layer)
      return make_error("{}: {} layer specs for {} layers", f.name(), layers_.size(), hp_.n_layer);
    for (size_t il = 0; il < layers_.size(); ++il) {
      const LayerSpec& l = layers_[il];
      if (l.mixer == MixerKind::Attention) {
        if (l.n_head < 1 || l.n_head_kv < 1 || l.head_dim < 2)
          return make_error("{}: layer {} is an attention layer without heads ({} heads, {} KV heads)", f.name(), il,
                            l.n_head, l.n_head_kv);
        if (l.kv_dim() != kv_dim())
          return make_error("{}: layer {} has KV width {} but another layer has {}: per-layer KV widths are not "
                            "supported yet", f.name(), il, l.kv_dim(), kv_dim());
        if (l.rope_table < 0 || size_t(l.rope_table) >= ropes_.size())
          return make_error("{}: layer {} names RoPE table {} of {}", f.name(), il, l.rope_table, ropes_.size());
        max_q_dim_ = std::max(max_q_dim_, l.q_dim());
      }
      if (l.mixer == MixerKind::Mamba2) {
        if (Status st = ssm_.check(); !st.ok()) return make_error("{}: {}", f.name(), st.error().message);
        layers_[il].state_floats = ssm_.state_floats();
      }
      if (l.ffn == FfnKind::DenseGlu || l.ffn == FfnKind::DenseReluSqr) {
        if (l.n_ff < 1) return make_error("{}: layer {} has a dense FFN of width {}", f.name(), il, l.n_ff);
        max_ff_ = std::max(max_ff_, l.n_ff);
      }
      if (l.ffn == FfnKind::Moe) {
        if (Status st = check_moe_config(moe_.cfg); !st.ok()) return make_error("{}: {}", f.name(), st.error().message);
      }
    }
    tensors_ = std::make_shared<std::vector<TensorSpec>>(tensor_table());
    PG_TRY(bind_tensors(f, *tensors_, ignorable_));
    for (size_t il = 0; il < layers_.size(); ++il) {
      const LayerSpec& l = layers_[il];
      LayerWeights& L = lw_[il];
      if (L.wqkv.data) {  // [E, q_dim + 2 kv_dim]
        L.wq = row_view(L.wqkv, 0, l.q_dim());
        L.wk = row_view(L.wqkv, l.q_dim(), l.kv_dim());
        L.wv = row_view(L.wqkv, l.q_dim() + l.kv_dim(), l.kv_dim());
      }
      if (L.w_gate_up.data) {  // [E, 2 n_ff]
        L.w_gate = row_view(L.w_gate_up, 0, l.n_ff);
        L.w_up = row_view(L.w_gate_up, l.n_ff, l.n_ff);
      }
      if (l.ffn == FfnKind::Moe) {
        const int64_t X = moe_.cfg.n_expert;
        if (L.exps_gate.data) {
          PG_ASSIGN(L.moe.gate, expert_views(L.exps_gate, X));
        }
        PG_ASSIGN(L.moe.up, expert_views(L.exps_up, X));
        PG_ASSIGN(L.moe.down, expert_views(L.exps_down, X));
        const std::string where = fmt::format("{}: blk.{}", f.name(), il);
        PG_TRY(check_moe(L.moe, moe_.cfg, hp_.n_embd, where.c_str()));
      }
      if (l.mixer == MixerKind::Mamba2) {
        prepare_mamba2(ssm_, L.ssm);
        for (const Weight* v : {&L.ssm.a, &L.ssm.d, &L.ssm.dt_bias})
          for (int64_t i = 0; i < v->cols * v->rows; ++i)
            if (!std::isfinite(v->f32()[i]))
              return make_error("{}: tensor '{}'[{}] is not a finite number", f.name(), v->name, i);
      }
    }
    for (const TensorSpec& s : *tensors_)
      if (s.dest->data) weight_bytes_ += s.dest->row_bytes * size_t(s.dest->rows);
    if (rope_freqs_.data != nullptr) {
      if (rope_freqs_table_ < 0) return make_error("{}: rope_freqs.weight without a table to apply it to", f.name());
      for (int64_t i = 0; i < rope_freqs_.cols; ++i)
        if (!(rope_freqs_.f32()[i] > 0.0f) || !std::isfinite(rope_freqs_.f32()[i]))
          return make_error("{}: rope_freqs.weight[{}] = {} is not a positive number", f.name(), i,
                            rope_freqs_.f32()[i]);
      ropes_[size_t(rope_freqs_table_)].freq_factors = rope_freqs_.f32();
    }
    const bool tied = output_.data == nullptr;
    if (tied) output_ = tok_embd_;  // tied embeddings: token_embd stays for the lookup
    PG_TRY(pack_weights({&output_}, !tied));
    for (LayerWeights& L : lw_) {
      PG_TRY(pack_weights(
          {&L.wq, &L.wk, &L.wv, &L.w_attn_gate, &L.wo, &L.w_gate, &L.w_up, &L.w_down, &L.ssm.in, &L.ssm.out}, true));
      if (!L.moe.up.empty()) PG_TRY(pack_experts(L));
    }
    return Status::Ok();
  }

  // Packs a routed-expert layer; the stacked tensors' file pages are dropped when every view
  // of them was packed (nothing reads the file's bytes then).
  Status pack_experts(LayerWeights& L) {
    const auto start = std::chrono::steady_clock::now();
    PG_ASSIGN(size_t bytes, pack_moe_weights(L.moe));
    pack_stats_.bytes += bytes;
    auto all_packed = [](const std::vector<Weight>& v) {
      return std::all_of(v.begin(), v.end(), [](const Weight& w) { return w.packed != nullptr; });
    };
    const std::pair<const Weight*, const std::vector<Weight>*> stacks[] = {
        {&L.exps_gate, &L.moe.gate}, {&L.exps_up, &L.moe.up}, {&L.exps_down, &L.moe.down}};
    for (auto [stack, views] : stacks) {
      if (stack->data == nullptr || !all_packed(*views)) continue;
      pack_stats_.matrices += int64_t(views->size());
      file_->release(stack->data, stack->row_bytes * size_t(stack->rows));
    }
    pack_stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return Status::Ok();
  }

  size_t weight_bytes() const override { return weight_bytes_; }

  const MoeStats* moe_stats() const override {
    for (const LayerSpec& l : layers_)
      if (l.ffn == FfnKind::Moe) return &scratch_.moe_stats;
    return nullptr;
  }

  std::string describe_extras() const override {
    std::string out;
    for (size_t r = 0; r < ropes_.size(); ++r) {
      const RopeFreqs& f = ropes_[r];
      if (f.plain()) continue;
      out += fmt::format("{}rope table {}: {} scaling x{}{}", out.empty() ? "" : "; ", r,
                         rope_scaling_name(f.scaling), f.factor,
                         f.freq_factors ? ", per-dimension frequency factors (rope_freqs)" : "");
    }
    if (style_.attn_scale > 0.0f)
      out += fmt::format("{}attention scale {}", out.empty() ? "" : "; ", style_.attn_scale);
    std::string nope;
    for (size_t il = 0; il < layers_.size(); ++il)
      if (!layers_[il].rope && layers_[il].mixer == MixerKind::Attention) nope += fmt::format("{}{}", nope.empty() ? "" : ", ", il);
    if (!nope.empty()) out += fmt::format("{}no RoPE on layers {}", out.empty() ? "" : "; ", nope);
    const bool any_moe = std::any_of(layers_.begin(), layers_.end(), [](const LayerSpec& l) { return l.ffn == FfnKind::Moe; });
    if (any_moe) {
      const MoeConfig& m = moe_.cfg;
      static constexpr const char* kGating[] = {"?", "softmax", "sigmoid", "softmax of the chosen", "sqrt-softplus"};
      out += fmt::format("{}experts: {} of width {}, {} used per token ({}{}{}, {}){}", out.empty() ? "" : "; ",
                         m.n_expert, moe_.n_ff_exp, m.n_used, kGating[int(m.gating) >= 1 && int(m.gating) <= 4 ? int(m.gating) : 0],
                         m.norm_weights ? ", renormalised" : "",
                         m.weights_scale != 0.0f && m.weights_scale != 1.0f ? fmt::format(", x{}", m.weights_scale) : "",
                         m.act == MoeAct::SwiGlu ? "SwiGLU" : "squared ReLU",
                         moe_.n_ff_shexp > 0 ? fmt::format(", shared expert {}", moe_.n_ff_shexp) : "");
    }
    const bool any_ssm = std::any_of(layers_.begin(), layers_.end(), [](const LayerSpec& l) { return l.mixer == MixerKind::Mamba2; });
    if (any_ssm)
      out += fmt::format("{}mamba-2: inner {}, state {}, {} heads of {}, {} group{}, conv {}", out.empty() ? "" : "; ",
                         ssm_.d_inner, ssm_.d_state, ssm_.n_head, ssm_.head_dim(), ssm_.n_group,
                         ssm_.n_group == 1 ? "" : "s", ssm_.d_conv);
    for (const std::string& n : notes_) out += fmt::format("{}{}", out.empty() ? "" : "; ", n);
    return out;
  }

  Status check_kv(const KvShape& kv) const override {
    for (int64_t l = 0; l < kv.n_layer && l < hp_.n_layer; ++l) {
      if (kv.kind(l).type != AttnKind::Type::SinksWindow) continue;
      if (style_.rope != RopeStyle::Adjacent)
        return make_error("attention sinks are not supported for {} yet (its RoPE rotates halves)", hp_.arch);
      if (!ropes_[size_t(layers_[size_t(l)].rope_table)].plain())
        return make_error("attention sinks are not supported with RoPE scaling yet");
    }
    for (size_t il = 0; il < layers_.size(); ++il)
      if (layers_[il].mixer == MixerKind::Attention) PG_TRY(check_attention(kv, attention_shape(il)));
    return Status::Ok();
  }

  Status forward(const Batch& batch, KvCache& cache, std::vector<float>& logits,
                 const ForwardOptions& opt) override {
    PG_TRY(check_batch(batch, cache));
    ThreadPool& pool = opt.pool ? *opt.pool : pool_;
    ForwardScratch& sc = opt.scratch ? *opt.scratch : scratch_;
    const int64_t T = batch.size(), E = hp_.n_embd;
    DecoderActivations& a = sc.act;
    a.reserve(T, E, max_q_dim_, kv_dim(), max_ff_);
    float* x = a.x.data();

    embed_rows(tok_embd_, batch.tokens.data(), T, x);  // x [T, E]
    if (style_.embed_scale != 0.0f)
      for (int64_t i = 0; i < T * E; ++i) x[i] *= style_.embed_scale;
    sc.rope.resize(ropes_.size());
    for (size_t r = 0; r < ropes_.size(); ++r)
      rope_angles(batch.pos.data(), T, ropes_[r], sc.rope[r]);  // [T, rope_dim/2, 2]

    for (int64_t il = 0; il < hp_.n_layer; ++il) {
      if (!opt.runs(il)) continue;
      switch (layers_[size_t(il)].mixer) {
        case MixerKind::Attention: attention_block(il, batch, cache, sc, pool, opt.observer); break;
        case MixerKind::Mamba2: mamba2_block(il, batch, cache, sc, pool); break;
        case MixerKind::None: break;
      }
      switch (layers_[size_t(il)].ffn) {
        case FfnKind::DenseGlu: ffn_block(il, T, sc, pool, opt.observer); break;
        case FfnKind::DenseReluSqr: relu_sqr_block(il, T, sc, pool); break;
        case FfnKind::Moe: moe_block(il, T, sc, pool); break;
        case FfnKind::None: break;
      }
    }

    if (opt.observer) {
      const Weight* out[] = {&output_};
      observe(*opt.observer, "out_in", -1, MatIn(x, output_norm_.f32(), hp_.rms_eps), T, E, out, sc);
    }
    output_head(batch, x, output_norm_, output_, logits, pool, sc.ops);  // [n_logits, n_vocab]
    return Status::Ok();
  }

 private:
  AttentionShape attention_shape(size_t il) const {
    const LayerSpec& l = layers_[il];
    const float scale = style_.attn_scale > 0.0f ? style_.attn_scale : 1.0f / std::sqrt(float(l.head_dim));
    // Sink keys are re-rotated with plain adjacent-pair RoPE (check_kv refuses the rest).
    const RopeFreqs& rf = ropes_[size_t(l.rope_table)];
    const bool rerotate = style_.rope == RopeStyle::Adjacent && rf.plain();
    return {l.n_head, l.n_head_kv, l.head_dim, scale, rerotate ? l.rotated_dim() : 0, rf.base};
  }

  // Hands an activation to the observer; a normalised matmul input is materialised first.
  void observe(ActivationObserver& obs, std::string_view name, int64_t layer, const MatIn& in, int64_t T,
               int64_t cols, std::span<const Weight* const> consumers, ForwardScratch& sc) const {
    const float* data = in.x;
    if (in.norm != nullptr) {
      sc.observed.resize(size_t(T * cols));
      rmsnorm(in.x, in.norm, sc.observed.data(), T, cols, in.eps);
      data = sc.observed.data();
    }
    obs.observe(Activation{name, layer, data, T, cols, consumers});
  }

  // x += Wo * attention(RoPE(q), cache) with q, k, v from RMSNorm(x) (attention gated by
  // sigmoid(W_gate * RMSNorm(x)) with DecoderStyle::attn_gate).
  void attention_block(int64_t il, const Batch& batch, KvCache& cache, ForwardScratch& sc, ThreadPool& pool,
                       ActivationObserver* obs) {
    const LayerSpec& l = layers_[size_t(il)];
    const LayerWeights& L = lw_[size_t(il)];
    DecoderActivations& a = sc.act;
    const int64_t T = batch.size(), E = hp_.n_embd, hd = l.head_dim;
    float *x = a.x.data(), *xn = a.xn.data(), *q = a.q.data(), *k = a.k.data(), *v = a.v.data(),
          *att = a.att.data();
    const float* cs = sc.rope[size_t(l.rope_table)].data();
    // q [T, n_head * hd], k and v [T, n_head_kv * hd] from RMSNorm(x)
    const MatIn in(x, L.attn_norm.f32(), hp_.rms_eps);
    if (obs) {
      const Weight* qkv[] = {&L.wq, &L.wk, &L.wv, &L.w_attn_gate};
      const Weight* fused[] = {&L.wqkv};  // the file's matrix, as llama-imatrix names it
      observe(*obs, "attn_in", il, in, T, E,
              L.wqkv.data ? std::span<const Weight* const>(fused)
                          : std::span<const Weight* const>(qkv, style_.attn_gate ? 4 : 3),
              sc);
    }
    // The attention gate g [T, q_dim] waits in xn (sized [T, max(E, q_dim)]), free until W_o.
    float* g = xn;
    if (style_.attn_gate)
      matmul_many({{&L.wq, q}, {&L.wk, k}, {&L.wv, v}, {&L.w_attn_gate, g}}, in, T, pool, sc.ops);
    else
      matmul_many({{&L.wq, q}, {&L.wk, k}, {&L.wv, v}}, in, T, pool, sc.ops);
    if (style_.qkv_bias) {
      add_bias(q, L.bq, T, l.q_dim());
      add_bias(k, L.bk, T, l.kv_dim());
      add_bias(v, L.bv, T, l.kv_dim());
    }
    if (style_.qk_norm) {
      rmsnorm_heads(q, L.q_norm.f32(), T, l.n_head, hd, hp_.rms_eps);
      rmsnorm_heads(k, L.k_norm.f32(), T, l.n_head_kv, hd, hp_.rms_eps);
    }
    if (style_.qk_norm_full) {
      rmsnorm(q, L.q_norm.f32(), q, T, l.q_dim(), hp_.rms_eps);
      rmsnorm(k, L.k_norm.f32(), k, T, l.kv_dim(), hp_.rms_eps);
    }
    // A NoPE layer rotates nothing: K goes into the cache as it is.
    rope_apply(q, cs, T, l.n_head, hd, l.rotated_dim(), style_.rope);
    rope_store_kv(cache, il, batch.seq.data(), batch.pos.data(), k, v, cs, T, l.n_head_kv, hd, l.rotated_dim(),
                  style_.rope);
    attention(q, batch.pos.data(), batch.seq.data(), T, cache, il, attention_shape(size_t(il)), att,
              pool);  // att [T, q_dim]
    if (style_.attn_gate) mul_sigmoid(att, g, T * l.q_dim());  // before W_o, as llama.cpp's afmoe
    if (obs) {
      const Weight* o[] = {&L.wo};
      observe(*obs, "attn_out", il, MatIn(att), T, l.q_dim(), o, sc);
    }
    matmul(L.wo, att, xn, T, pool, sc.ops);  // xn [T, E]
    if (style_.post_norms) rmsnorm(xn, L.post_attn_norm.f32(), xn, T, E, hp_.rms_eps);
    add_rows(x, xn, T * E);
  }

  // x += W_down * glu(W_gate * RMSNorm(x), W_up * RMSNorm(x)).
  void ffn_block(int64_t il, int64_t T, ForwardScratch& sc, ThreadPool& pool, ActivationObserver* obs) {
    const LayerSpec& l = layers_[size_t(il)];
    const LayerWeights& L = lw_[size_t(il)];
    DecoderActivations& a = sc.act;
    const int64_t E = hp_.n_embd;
    float *x = a.x.data(), *xn = a.xn.data(), *gate = a.gate.data();
    const MatIn in(x, L.ffn_norm.f32(), hp_.rms_eps);
    if (obs) {
      const Weight* gu[] = {&L.w_gate, &L.w_up};
      const Weight* fused[] = {&L.w_gate_up};
      observe(*obs, "ffn_in", il, in, T, E,
              L.w_gate_up.data ? std::span<const Weight* const>(fused) : std::span<const Weight* const>(gu), sc);
    }
    matmul_glu(L.w_gate, L.w_up, in, gate, T, pool, sc.ops, l.glu);  // gate [T, n_ff]
    if (obs) {
      const Weight* d[] = {&L.w_down};
      observe(*obs, "ffn_act", il, MatIn(gate), T, l.n_ff, d, sc);
    }
    matmul(L.w_down, gate, xn, T, pool, sc.ops);  // xn [T, E]
    if (style_.post_norms) rmsnorm(xn, L.post_ffn_norm.f32(), xn, T, E, hp_.rms_eps);
    add_rows(x, xn, T * E);
  }

  // x += W_down * relu(W_up * RMSNorm(x))^2 (Nemotron-H's MLP, no gate).
  void relu_sqr_block(int64_t il, int64_t T, ForwardScratch& sc, ThreadPool& pool) {
    const LayerSpec& l = layers_[size_t(il)];
    const LayerWeights& L = lw_[size_t(il)];
    DecoderActivations& a = sc.act;
    const int64_t E = hp_.n_embd;
    float *x = a.x.data(), *xn = a.xn.data(), *h = a.gate.data();
    matmul_many({{&L.w_up, h}}, MatIn(x, L.ffn_norm.f32(), hp_.rms_eps), T, pool, sc.ops);  // h [T, n_ff]
    relu_sqr(h, T * l.n_ff);
    matmul(L.w_down, h, xn, T, pool, sc.ops);  // xn [T, E]
    add_rows(x, xn, T * E);
  }

  // x += Mamba2(RMSNorm(x)); advances each sequence's recurrent state.
  void mamba2_block(int64_t il, const Batch& batch, KvCache& cache, ForwardScratch& sc, ThreadPool& pool) {
    const LayerWeights& L = lw_[size_t(il)];
    DecoderActivations& a = sc.act;
    const int64_t T = batch.size(), E = hp_.n_embd;
    const MatIn in(a.x.data(), L.attn_norm.f32(), hp_.rms_eps);
    mamba2_mixer(ssm_, L.ssm, in, batch.seq.data(), batch.pos.data(), T, cache, il, hp_.rms_eps, a.xn.data(), pool,
                 sc.ops, sc.ssm);  // xn [T, E]
    add_rows(a.x.data(), a.xn.data(), T * E);
  }

  // x += MoE(RMSNorm(x)) (+ the shared expert inside the block).
  void moe_block(int64_t il, int64_t T, ForwardScratch& sc, ThreadPool& pool) {
    const LayerWeights& L = lw_[size_t(il)];
    DecoderActivations& a = sc.act;
    const int64_t E = hp_.n_embd;
    float *x = a.x.data(), *xn = a.xn.data();
    moe_ffn(L.moe, moe_.cfg, MatIn(x, L.ffn_norm.f32(), hp_.rms_eps), xn, T, pool, sc.ops, sc.moe,
            &sc.moe_stats);  // xn [T, E]
    if (style_.post_norms) rmsnorm(xn, L.post_ffn_norm.f32(), xn, T, E, hp_.rms_eps);
    add_rows(x, xn, T * E);
  }

  std::vector<TensorSpec> tensor_table() {
    const int64_t E = hp_.n_embd, V = hp_.n_vocab;
    using R = TensorRole;
    std::vector<TensorSpec> t;
    auto add = [&t](std::string name, std::vector<int64_t> dims, R role, int64_t layer, bool required,
                    bool float_only, Weight* dest) {
      t.push_back({std::move(name), std::move(dims), role, layer, required, float_only, dest});
    };
    add("token_embd.weight", {E, V}, R::TokenEmbd, -1, true, false, &tok_embd_);
    add("output_norm.weight", {E}, R::OutputNorm, -1, true, true, &output_norm_);
    add("output.weight", {E, V}, R::Output, -1, false, false, &output_);
    if (rope_freqs_table_ >= 0)
      add("rope_freqs.weight", {ropes_[size_t(rope_freqs_table_)].rot_dim / 2}, R::RopeFreqs, -1, false, true,
          &rope_freqs_);
    lw_.resize(layers_.size());
    for (int64_t il = 0; il < hp_.n_layer; ++il) {
      const LayerSpec& l = layers_[size_t(il)];
      LayerWeights& L = lw_[size_t(il)];
      auto n = [il](const char* s) { return fmt::format("blk.{}.{}", il, s); };
      if (l.mixer != MixerKind::None) add(n("attn_norm.weight"), {E}, R::AttnNorm, il, true, true, &L.attn_norm);
      if (l.mixer == MixerKind::Mamba2) add_ssm_tensors(t, il, L.ssm);
      if (l.mixer == MixerKind::Attention) add_attention_tensors(t, il, L);
      if (l.ffn == FfnKind::None) continue;
      // Nemotron-H: an FFN-only layer's norm is its attn_norm.
      if (style_.single_norm) add(n("attn_norm.weight"), {E}, R::AttnNorm, il, true, true, &L.ffn_norm);
      else add(n("ffn_norm.weight"), {E}, R::FfnNorm, il, true, true, &L.ffn_norm);
      if (style_.post_norms) add(n("post_ffw_norm.weight"), {E}, R::PostFfnNorm, il, true, true, &L.post_ffn_norm);
      if (l.ffn == FfnKind::Moe) {
        add_moe_tensors(t, il, L);
        continue;
      }
      if (l.ffn == FfnKind::DenseReluSqr) {
        add(n("ffn_up.weight"), {E, l.n_ff}, R::FfnUp, il, true, false, &L.w_up);
        add(n("ffn_down.weight"), {l.n_ff, E}, R::FfnDown, il, true, false, &L.w_down);
        continue;
      }
      if (style_.fused_gate_up) {
        add(n("ffn_up.weight"), {E, 2 * l.n_ff}, R::FfnGateUp, il, true, false, &L.w_gate_up);
      } else {
        add(n("ffn_gate.weight"), {E, l.n_ff}, R::FfnGate, il, true, false, &L.w_gate);
        add(n("ffn_up.weight"), {E, l.n_ff}, R::FfnUp, il, true, false, &L.w_up);
      }
      add(n("ffn_down.weight"), {l.n_ff, E}, R::FfnDown, il, true, false, &L.w_down);
    }
    return t;
  }

  void add_attention_tensors(std::vector<TensorSpec>& t, int64_t il, LayerWeights& L) {
    using R = TensorRole;
    const LayerSpec& l = layers_[size_t(il)];
    const int64_t E = hp_.n_embd, qd = l.q_dim(), kvd = l.kv_dim(), hd = l.head_dim;
    auto add = [&](const char* s, std::vector<int64_t> dims, R role, bool required, bool float_only, Weight* dest) {
      add_layer_tensor(t, il, s, std::move(dims), role, required, float_only, dest);
    };
    // Fused q/k/v when the layer has attn_qkv or lacks attn_q (as llama.cpp reads Phi-3).
    const bool fused_qkv = style_.fused_qkv && (file_->find_tensor(fmt::format("blk.{}.attn_qkv.weight", il)) ||
                                                !file_->find_tensor(fmt::format("blk.{}.attn_q.weight", il)));
    if (fused_qkv) {
      add("attn_qkv.weight", {E, qd + 2 * kvd}, R::AttnQkv, true, false, &L.wqkv);
    } else {
      add("attn_q.weight", {E, qd}, R::AttnQ, true, false, &L.wq);
      add("attn_k.weight", {E, kvd}, R::AttnK, true, false, &L.wk);
      add("attn_v.weight", {E, kvd}, R::AttnV, true, false, &L.wv);
    }
    if (style_.qkv_bias) {
      add("attn_q.bias", {qd}, R::AttnQBias, true, true, &L.bq);
      add("attn_k.bias", {kvd}, R::AttnKBias, true, true, &L.bk);
      add("attn_v.bias", {kvd}, R::AttnVBias, true, true, &L.bv);
    }
    if (style_.qk_norm) {
      add("attn_q_norm.weight", {hd}, R::AttnQNorm, true, true, &L.q_norm);
      add("attn_k_norm.weight", {hd}, R::AttnKNorm, true, true, &L.k_norm);
    }
    if (style_.qk_norm_full) {
      add("attn_q_norm.weight", {qd}, R::AttnQNorm, true, true, &L.q_norm);
      add("attn_k_norm.weight", {kvd}, R::AttnKNorm, true, true, &L.k_norm);
    }
    if (style_.attn_gate) add("attn_gate.weight", {E, qd}, R::AttnGate, true, false, &L.w_attn_gate);
    add("attn_output.weight", {qd, E}, R::AttnOut, true, false, &L.wo);
    if (style_.post_norms) add("post_attention_norm.weight", {E}, R::PostAttnNorm, true, true, &L.post_attn_norm);
  }

  void add_ssm_tensors(std::vector<TensorSpec>& t, int64_t il, Mamba2Weights& w) {
    using R = TensorRole;
    const Mamba2Dims& d = ssm_;
    const int64_t E = hp_.n_embd, CH = d.conv_channels();
    auto add = [&](const char* s, std::vector<int64_t> dims, R role, bool required, bool float_only, Weight* dest) {
      add_layer_tensor(t, il, s, std::move(dims), role, required, float_only, dest);
    };
    add("ssm_in.weight", {E, d.in_proj()}, R::SsmIn, true, false, &w.in);
    add("ssm_conv1d.weight", {d.d_conv, CH}, R::SsmConv, true, true, &w.conv);
    add("ssm_conv1d.bias", {CH}, R::SsmConvBias, hp_.arch == "mamba2", true, &w.conv_bias);
    add("ssm_dt.bias", {d.n_head}, R::SsmDtBias, true, true, &w.dt_bias);
    add("ssm_a", {1, d.n_head}, R::SsmA, true, true, &w.a);
    add("ssm_d", {1, d.n_head}, R::SsmD, true, true, &w.d);
    add("ssm_norm.weight", {d.d_inner / d.n_group, d.n_group}, R::SsmNorm, true, true, &w.norm);
    add("ssm_out.weight", {d.d_inner, E}, R::SsmOut, true, false, &w.out);
  }

  void add_moe_tensors(std::vector<TensorSpec>& t, int64_t il, LayerWeights& L) {
    using R = TensorRole;
    const int64_t E = hp_.n_embd, X = moe_.cfg.n_expert, F = moe_.n_ff_exp, FS = moe_.n_ff_shexp;
    const bool glu = moe_.cfg.act == MoeAct::SwiGlu;
    auto add = [&](const char* s, std::vector<int64_t> dims, R role, bool required, bool float_only, Weight* dest) {
      add_layer_tensor(t, il, s, std::move(dims), role, required, float_only, dest);
    };
    add("ffn_gate_inp.weight", {E, X}, R::FfnRouter, true, false, &L.moe.router);
    add("exp_probs_b.bias", {X}, R::FfnExpertBias, moe_bias_required(), true, &L.moe.selection_bias);
    if (glu) add("ffn_gate_exps.weight", {E, F, X}, R::FfnGateExps, true, false, &L.exps_gate);
    add("ffn_up_exps.weight", {E, F, X}, R::FfnUpExps, true, false, &L.exps_up);
    add("ffn_down_exps.weight", {F, E, X}, R::FfnDownExps, true, false, &L.exps_down);
    if (FS > 0) {
      if (glu) add("ffn_gate_shexp.weight", {E, FS}, R::FfnGateShexp, true, false, &L.moe.shexp_gate);
      add("ffn_up_shexp.weight", {E, FS}, R::FfnUpShexp, true, false, &L.moe.shexp_up);
      add("ffn_down_shexp.weight", {FS, E}, R::FfnDownShexp, true, false, &L.moe.shexp_down);
    }
  }

  // The selection bias is part of sigmoid routing (afmoe, Nemotron-H); softmax routers have none.
  bool moe_bias_required() const { return moe_.cfg.gating == MoeGating::Sigmoid; }

  ThreadPool& pool_;
  DecoderStyle style_;
  std::vector<RopeFreqs> ropes_;
  int32_t rope_freqs_table_ = -1;
  std::vector<std::string> ignorable_;
  std::vector<std::string> notes_;
  Weight tok_embd_, output_norm_, output_, rope_freqs_;
  std::vector<LayerWeights> lw_;
  int64_t max_q_dim_ = 0, max_ff_ = 0;
  ForwardScratch scratch_;
  size_t weight_bytes_ = 0;
  MoeHparams moe_;
  Mamba2Dims ssm_;
};

}  // namespace

std::vector<LayerSpec> uniform_layers(const Hparams& hp, Glu glu) {
  std::vector<LayerSpec> layers(size_t(hp.n_layer));
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    LayerSpec& l = layers[size_t(il)];
    l.n_head = hp.n_head_per_layer.empty() ? hp.n_head : hp.n_head_per_layer[size_t(il)];
    l.n_head_kv = hp.n_head_kv_per_layer.empty() ? hp.n_head_kv : hp.n_head_kv_per_layer[size_t(il)];
    l.n_ff = hp.n_ff_per_layer.empty() ? hp.n_ff : hp.n_ff_per_layer[size_t(il)];
    l.head_dim = hp.head_dim;
    l.rope_dim = hp.rope_dim;
    l.glu = glu;
  }
  return layers;
}

Result<RopeFreqs> read_rope(const gguf::File& f, const std::string& arch, const Hparams& hp) {
  RopeFreqs r;
  r.rot_dim = hp.rope_dim;
  r.base = hp.rope_base;
  r.n_ctx_orig = hp.n_ctx_train;
  const std::string a = arch + ".rope.scaling.";
  auto read_float = [&](const char* key, float lo, float hi, float& out) -> Status {
    if (f.find(a + key) == nullptr) return Status::Ok();
    PG_ASSIGN(double v, f.get_float(a + key));
    if (!(v >= lo && v <= hi)) return make_error("{}: metadata '{}{}' = {} is outside [{}, {}]", f.name(), a, key, v, lo, hi);
    out = float(v);
    return Status::Ok();
  };
  // As llama.cpp's loader: a factor without a type is linear scaling; older files give it as
  // "<arch>.rope.scale_linear".
  std::string type = "linear";
  if (f.find(a + "type")) {
    PG_ASSIGN(type, f.get_string(a + "type"));
  }
  const std::string old_key = arch + ".rope.scale_linear";
  if (f.find(old_key) && !f.find(a + "factor")) {
    PG_ASSIGN(double v, f.get_float(old_key));
    if (!(v >= 0.0 && v <= 1024.0)) return make_error("{}: metadata '{}' = {} is outside [0, 1024]", f.name(), old_key, v);
    r.factor = float(v);
  }
  PG_TRY(read_float("factor", 0.0f, 1024.0f, r.factor));
  if (type == "none" || r.factor == 0.0f || r.factor == 1.0f) {
    r.scaling = RopeFreqs::Scaling::None;
    r.factor = 1.0f;
  } else if (type == "linear") {
    r.scaling = RopeFreqs::Scaling::Linear;
  } else if (type == "yarn") {
    r.scaling = RopeFreqs::Scaling::Yarn;
  } else {
    return make_error("{}: RoPE scaling '{}' ({}type) is not supported (supported: none, linear, yarn)", f.name(),
                      type, a);
  }
  if (r.scaling != RopeFreqs::Scaling::None && r.factor < 1.0f)
    return make_error("{}: RoPE scaling factor {} is below 1", f.name(), r.factor);
  if (f.find(a + "original_context_length")) {
    PG_ASSIGN(r.n_ctx_orig, read_hparam(f, a + "original_context_length", 1, 1 << 24));
  }
  PG_TRY(read_float("attn_factor", 0.0f, 100.0f, r.attn_factor));
  // YaRN's ramp stays at beta_fast 32, beta_slow 1 whatever "yarn_beta_*" says: llama.cpp
  // (0c1e57098) never reads those keys, and files are made to run there.
  return r;
}

Result<std::vector<bool>> read_sliding_layers(const gguf::File& f, const std::string& arch, int64_t n_layer,
                                              int64_t default_pattern) {
  const std::string key = arch + ".attention.sliding_window_pattern";
  std::vector<bool> sliding(size_t(n_layer), false);
  const gguf::Value* v = f.find(key);
  if (v != nullptr && v->type == gguf::ValueType::ARRAY) {
    if (v->elem_type != gguf::ValueType::BOOL && !gguf::Value{v->elem_type}.is_integer())
      return make_error("{}: metadata '{}' is an array of {}, not of integers or bools", f.name(), key,
                        gguf::value_type_name(v->elem_type));
    if (int64_t(v->items.size()) != n_layer)
      return make_error("{}: metadata '{}' has {} entries for {} layers", f.name(), key, v->items.size(), n_layer);
    for (int64_t il = 0; il < n_layer; ++il) {
      const gguf::Value& e = v->items[size_t(il)];
      sliding[size_t(il)] = (e.u | uint64_t(e.i)) != 0;  // u holds unsigned values and bools, i signed ones
    }
    return sliding;
  }
  int64_t every = default_pattern;
  if (v != nullptr) {
    PG_ASSIGN(every, read_hparam(f, key, 0, n_layer));
  }
  for (int64_t il = 0; il < n_layer; ++il) sliding[size_t(il)] = every == 0 || il % every < every - 1;
  return sliding;
}

Status check_value_length(const gguf::File& f, const std::string& arch, const Hparams& hp) {
  const std::string key = arch + ".attention.value_length";
  if (f.find(key) == nullptr) return Status::Ok();
  PG_ASSIGN(int64_t vd, read_hparam(f, key, 2, 1024));
  if (vd != hp.head_dim) return make_error("{}: key_length {} and value_length {} differ", f.name(), hp.head_dim, vd);
  return Status::Ok();
}

Result<float> read_attention_scale(const gguf::File& f, const std::string& arch) {
  const std::string key = arch + ".attention.scale";
  if (f.find(key) == nullptr) return 0.0f;
  PG_ASSIGN(double s, f.get_float(key));
  if (!(s > 0.0 && s < 1e3)) return make_error("{}: metadata '{}' = {} is out of range", f.name(), key, s);
  return float(s);
}

Result<std::unique_ptr<Model>> make_decoder(std::shared_ptr<const gguf::File> file, ThreadPool& pool,
                                            DecoderConfig config) {
  auto m = std::make_unique<Decoder>(std::move(file), pool, std::move(config));
  PG_TRY(m->load());
  return std::unique_ptr<Model>(std::move(m));
}

}  // namespace peregrine
