// Gemma 3 (text): pre- and post-norms around attention and FFN, QK-norm, GeGLU,
// embeddings scaled by sqrt(n_embd), tied output. Local layers attend to a sliding
// window with their own RoPE base; every `sliding_window_pattern`-th layer is global.
// RoPE rotates halves ("neox"). As in llama.cpp's GGUF conversion, the norm weights
// already include Gemma's "+1" (RMSNorm scales by 1 + w), so they are used as they are.
// Sources: Gemma 3 technical report (Gemma Team, 2025) and Hugging Face transformers'
// Gemma3 text configuration (sliding_window 512, pattern 6, rope_local_base_freq 10000,
// query_pre_attn_scalar = head_dim for the sizes without an override).
#include <algorithm>
#include <cmath>

#include "model/arch/arch.h"
#include "model/tensor_table.h"
#include "ops/attention.h"
#include "ops/ops.h"

namespace peregrine::arch {
namespace {

struct LayerWeights {
  Weight attn_norm, wq, wk, wv, wo, q_norm, k_norm, post_attn_norm;
  Weight ffn_norm, w_gate, w_up, w_down, post_ffn_norm;
};

class Gemma3 final : public Model {
 public:
  Gemma3(std::shared_ptr<const gguf::File> file, ThreadPool& pool) : pool_(pool) {
    file_ = std::move(file);
  }

  Status load() {
    const gguf::File& f = *file_;
    const std::string a = "gemma3.";
    PG_TRY(read_decoder_hparams(f, "gemma3", hp_));
    if (f.find(a + "attention.value_length")) {
      PG_ASSIGN(int64_t vd, read_hparam(f, a + "attention.value_length", 2, 1024));
      if (vd != hp_.head_dim)
        return make_error("{}: key_length {} and value_length {} differ", f.name(), hp_.head_dim, vd);
    }
    if (f.find(a + "rope.freq_base_swa")) {
      PG_ASSIGN(double b, f.get_float(a + "rope.freq_base_swa"));
      if (!(b > 1.0 && b < 1e12)) return make_error("{}: rope.freq_base_swa {} is out of range", f.name(), b);
      rope_base_local_ = float(b);
    }
    if (f.find(a + "rope.scaling.factor")) {
      PG_ASSIGN(double s, f.get_float(a + "rope.scaling.factor"));
      if (!(s >= 1.0 && s <= 1024.0)) return make_error("{}: rope.scaling.factor {} is out of range", f.name(), s);
      rope_scale_global_ = float(s);
    }
    PG_ASSIGN(window_, read_hparam(f, a + "attention.sliding_window", 1, 1 << 20));
    PG_TRY(read_layer_pattern(f, a));

    std::vector<TensorSpec> table = tensor_table();
    PG_TRY(bind_tensors(f, table));
    for (const TensorSpec& s : table)
      if (s.dest->data) weight_bytes_ += s.dest->row_bytes * size_t(s.dest->rows);
    const bool tied = output_.data == nullptr;
    if (tied) output_ = tok_embd_;
    PG_TRY(pack_weights({&output_}, !tied));
    for (LayerWeights& L : layers_)
      PG_TRY(pack_weights({&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}, true));
    return Status::Ok();
  }

  size_t weight_bytes() const override { return weight_bytes_; }

  std::vector<AttnKind> attn_kinds() const override {
    std::vector<AttnKind> k;
    for (int64_t il = 0; il < hp_.n_layer; ++il)
      k.push_back(global_[size_t(il)] ? AttnKind::global() : AttnKind::sliding(window_));
    return k;
  }

  Status check_kv(const KvShape& kv) const override {
    for (int64_t l = 0; l < kv.n_layer; ++l)
      if (kv.kind(l).type == AttnKind::Type::SinksWindow)
        return make_error("attention sinks are not supported for gemma3 yet (its RoPE rotates halves)");
    return check_attention(kv, attention_shape());
  }

  Status forward(const Batch& batch, KvCache& cache, std::vector<float>& logits) override {
    PG_TRY(check_batch(batch, cache));
    const int64_t T = batch.size(), E = hp_.n_embd, hd = hp_.head_dim;
    ws_.reserve(T, hp_);
    float *x = ws_.x.data(), *xn = ws_.xn.data(), *q = ws_.q.data(), *k = ws_.k.data(),
          *v = ws_.v.data(), *att = ws_.att.data(), *gate = ws_.gate.data();
    const AttentionShape as = attention_shape();

    embed_rows(tok_embd_, batch.tokens.data(), T, x);  // x [T, E]
    const float embed_scale = std::sqrt(float(E));
    for (int64_t i = 0; i < T * E; ++i) x[i] *= embed_scale;
    // RoPE angles for both layer kinds: [T, hd/2, 2] each.
    rope_angles(batch.pos.data(), T, hd, rope_base_local_, rope_local_);
    rope_angles(batch.pos.data(), T, hd, hp_.rope_base, rope_global_, rope_scale_global_);

    for (int64_t il = 0; il < hp_.n_layer; ++il) {
      const LayerWeights& L = layers_[size_t(il)];
      const float* cs = global_[size_t(il)] ? rope_global_.data() : rope_local_.data();
      // q [T, n_head * hd], k and v [T, n_head_kv * hd] from RMSNorm(x)
      const MatIn attn_in(x, L.attn_norm.f32(), hp_.rms_eps);
      matmul_many({{&L.wq, q}, {&L.wk, k}, {&L.wv, v}}, attn_in, T, pool_, ops_);
      rmsnorm_heads(q, L.q_norm.f32(), T, hp_.n_head, hd, hp_.rms_eps);
      rmsnorm_heads(k, L.k_norm.f32(), T, hp_.n_head_kv, hd, hp_.rms_eps);
      rope_apply(q, cs, T, hp_.n_head, hd, hd, RopeStyle::Neox);
      rope_store_kv(cache, il, batch.seq.data(), batch.pos.data(), k, v, cs, T, hp_.n_head_kv, hd,
                    hd, RopeStyle::Neox);
      attention(q, batch.pos.data(), batch.seq.data(), T, cache, il, as, att, pool_);  // [T, q_dim]
      matmul(L.wo, att, xn, T, pool_, ops_);                                             // [T, E]
      rmsnorm(xn, L.post_attn_norm.f32(), xn, T, E, hp_.rms_eps);
      for (int64_t i = 0; i < T * E; ++i) x[i] += xn[i];

      const MatIn ffn_in(x, L.ffn_norm.f32(), hp_.rms_eps);
      matmul_glu(L.w_gate, L.w_up, ffn_in, gate, T, pool_, ops_, Glu::GeluTanh);  // [T, n_ff]
      matmul(L.w_down, gate, xn, T, pool_, ops_);                                  // [T, E]
      rmsnorm(xn, L.post_ffn_norm.f32(), xn, T, E, hp_.rms_eps);
      for (int64_t i = 0; i < T * E; ++i) x[i] += xn[i];
    }

    output_head(batch, x, output_norm_, output_, logits, pool_, ops_);  // [n_logits, n_vocab]
    return Status::Ok();
  }

 private:
  AttentionShape attention_shape() const {
    // query_pre_attn_scalar = head_dim; no sink re-rotation (rope_dim 0: see check_kv).
    return {hp_.n_head, hp_.n_head_kv, hp_.head_dim, 1.0f / std::sqrt(float(hp_.head_dim)), 0};
  }

  // Which layers are global: `sliding_window_pattern` as an integer N (every N-th layer,
  // counting from 1, is global) or as a per-layer bool array (true = sliding); Gemma 3's
  // N = 6 when absent.
  Status read_layer_pattern(const gguf::File& f, const std::string& a) {
    global_.assign(size_t(hp_.n_layer), false);
    const std::string key = a + "attention.sliding_window_pattern";
    const gguf::Value* v = f.find(key);
    if (v != nullptr && f.get_int_array(key).ok()) {
      PG_ASSIGN(std::vector<int64_t> flags, f.get_int_array(key));
      if (int64_t(flags.size()) != hp_.n_layer)
        return make_error("{}: {} has {} entries for {} layers", f.name(), key, flags.size(), hp_.n_layer);
      for (int64_t il = 0; il < hp_.n_layer; ++il) global_[size_t(il)] = flags[size_t(il)] == 0;
      return Status::Ok();
    }
    int64_t every = 6;
    if (v != nullptr) {
      PG_ASSIGN(every, read_hparam(f, key, 1, hp_.n_layer));
    }
    for (int64_t il = 0; il < hp_.n_layer; ++il) global_[size_t(il)] = (il + 1) % every == 0;
    return Status::Ok();
  }

  std::vector<TensorSpec> tensor_table() {
    const int64_t E = hp_.n_embd, hd = hp_.head_dim;
    std::vector<TensorSpec> t;
    t.push_back({"token_embd.weight", {E, hp_.n_vocab}, true, &tok_embd_});
    t.push_back({"output_norm.weight", {E}, true, &output_norm_, true});
    t.push_back({"output.weight", {E, hp_.n_vocab}, false, &output_});
    layers_.resize(size_t(hp_.n_layer));
    for (int64_t il = 0; il < hp_.n_layer; ++il) {
      LayerWeights& L = layers_[size_t(il)];
      auto n = [il](const char* s) { return fmt::format("blk.{}.{}.weight", il, s); };
      t.push_back({n("attn_norm"), {E}, true, &L.attn_norm, true});
      t.push_back({n("attn_q"), {E, hp_.n_head * hd}, true, &L.wq});
      t.push_back({n("attn_k"), {E, hp_.n_head_kv * hd}, true, &L.wk});
      t.push_back({n("attn_v"), {E, hp_.n_head_kv * hd}, true, &L.wv});
      t.push_back({n("attn_q_norm"), {hd}, true, &L.q_norm, true});
      t.push_back({n("attn_k_norm"), {hd}, true, &L.k_norm, true});
      t.push_back({n("attn_output"), {hp_.n_head * hd, E}, true, &L.wo});
      t.push_back({n("post_attention_norm"), {E}, true, &L.post_attn_norm, true});
      t.push_back({n("ffn_norm"), {E}, true, &L.ffn_norm, true});
      t.push_back({n("ffn_gate"), {E, hp_.n_ff}, true, &L.w_gate});
      t.push_back({n("ffn_up"), {E, hp_.n_ff}, true, &L.w_up});
      t.push_back({n("ffn_down"), {hp_.n_ff, E}, true, &L.w_down});
      t.push_back({n("post_ffw_norm"), {E}, true, &L.post_ffn_norm, true});
    }
    return t;
  }

  ThreadPool& pool_;
  Weight tok_embd_, output_norm_, output_;
  std::vector<LayerWeights> layers_;
  std::vector<bool> global_;
  int64_t window_ = 0;
  float rope_base_local_ = 10000.0f;
  float rope_scale_global_ = 1.0f;
  DecoderActivations ws_;
  std::vector<float> rope_local_;  // [T, rope_dim/2, 2] cos/sin per position
  std::vector<float> rope_global_;  // [T, rope_dim/2, 2] cos/sin per position
  OpScratch ops_;
  size_t weight_bytes_ = 0;
};

}  // namespace

Result<std::unique_ptr<Model>> make_gemma3(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  auto m = std::make_unique<Gemma3>(std::move(file), pool);
  PG_TRY(m->load());
  return std::unique_ptr<Model>(std::move(m));
}

}  // namespace peregrine::arch
