// The llama family (Llama 2/3, SmolLM2, ...): pre-norm decoder blocks of
// RMSNorm -> GQA attention with RoPE -> residual, RMSNorm -> SwiGLU FFN -> residual.
// GGUF stores Q and K with rows permuted so RoPE rotates adjacent pairs.
#include <algorithm>
#include <cmath>

#include "model/arch/arch.h"
#include "model/tensor_table.h"
#include "ops/attention.h"
#include "ops/ops.h"

namespace peregrine::arch {
namespace {

struct LayerWeights {
  Weight attn_norm, wq, wk, wv, wo;
  Weight ffn_norm, w_gate, w_up, w_down;
};

class Llama final : public Model {
 public:
  Llama(std::shared_ptr<const gguf::File> file, ThreadPool& pool) : pool_(pool) {
    file_ = std::move(file);
  }

  Status load() {
    PG_TRY(read_decoder_hparams(*file_, "llama", hp_));

    std::vector<TensorSpec> table = tensor_table();
    PG_TRY(bind_tensors(*file_, table));
    for (const TensorSpec& s : table)
      if (s.dest->data) weight_bytes_ += s.dest->row_bytes * size_t(s.dest->rows);
    const bool tied = output_.data == nullptr;
    if (tied) output_ = tok_embd_;  // tied embeddings: token_embd stays for the lookup
    PG_TRY(pack_weights({&output_}, !tied));
    for (LayerWeights& L : layers_)
      PG_TRY(pack_weights({&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}, true));
    return Status::Ok();
  }

  size_t weight_bytes() const override { return weight_bytes_; }

  Status check_kv(const KvShape& kv) const override {
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
    rope_angles(batch.pos.data(), T, hp_.rope_dim, hp_.rope_base, rope_);  // [T, rope_dim/2, 2]
    const float* rope_cs = rope_.data();
    for (int64_t il = 0; il < hp_.n_layer; ++il) {
      const LayerWeights& L = layers_[size_t(il)];
      // q [T, n_head * hd], k and v [T, n_head_kv * hd] from RMSNorm(x)
      const MatIn attn_in(x, L.attn_norm.f32(), hp_.rms_eps);
      matmul_many({{&L.wq, q}, {&L.wk, k}, {&L.wv, v}}, attn_in, T, pool_, ops_);
      rope_adjacent(q, rope_cs, T, hp_.n_head, hd, hp_.rope_dim);
      rope_store_kv(cache, il, batch.seq.data(), batch.pos.data(), k, v, rope_cs, T, hp_.n_head_kv,
                    hd, hp_.rope_dim);
      attention(q, batch.pos.data(), batch.seq.data(), T, cache, il, as, att, pool_);  // [T, q_dim]
      matmul(L.wo, att, xn, T, pool_, ops_);  // xn [T, E]
      for (int64_t i = 0; i < T * E; ++i) x[i] += xn[i];

      const MatIn ffn_in(x, L.ffn_norm.f32(), hp_.rms_eps);
      matmul_swiglu(L.w_gate, L.w_up, ffn_in, gate, T, pool_, ops_);  // gate [T, n_ff]
      matmul(L.w_down, gate, xn, T, pool_, ops_);                 // [T, E]
      for (int64_t i = 0; i < T * E; ++i) x[i] += xn[i];
    }

    output_head(batch, x, output_norm_, output_, logits, pool_, ops_);  // [n_logits, n_vocab]
    return Status::Ok();
  }

 private:
  AttentionShape attention_shape() const {
    const int64_t hd = hp_.head_dim;
    return {hp_.n_head, hp_.n_head_kv, hd, 1.0f / std::sqrt(float(hd)), hp_.rope_dim, hp_.rope_base};
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
      t.push_back({n("attn_output"), {hp_.n_head * hd, E}, true, &L.wo});
      t.push_back({n("ffn_norm"), {E}, true, &L.ffn_norm, true});
      t.push_back({n("ffn_gate"), {E, hp_.n_ff}, true, &L.w_gate});
      t.push_back({n("ffn_up"), {E, hp_.n_ff}, true, &L.w_up});
      t.push_back({n("ffn_down"), {hp_.n_ff, E}, true, &L.w_down});
    }
    return t;
  }

  ThreadPool& pool_;
  Weight tok_embd_, output_norm_, output_;
  std::vector<LayerWeights> layers_;
  DecoderActivations ws_;
  std::vector<float> rope_;  // [T, rope_dim/2, 2] cos/sin per position
  OpScratch ops_;
  size_t weight_bytes_ = 0;
};

}  // namespace

Result<std::unique_ptr<Model>> make_llama(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  auto m = std::make_unique<Llama>(std::move(file), pool);
  PG_TRY(m->load());
  return std::unique_ptr<Model>(std::move(m));
}

}  // namespace peregrine::arch
