// Arcee Trinity (`afmoe`): gated attention with sandwich norms and a routed-expert FFN, as
// llama.cpp's src/models/afmoe.cpp builds it.
//   - embeddings times sqrt(n_embd) (muP), always;
//   - attention: q, k, v and a gate g = W_gate * RMSNorm(x) [q_dim]; per-head RMSNorm of q and
//     k; RoPE rotates halves (the converter leaves q/k rows as HF has them); no RoPE where
//     (il + 1) % 4 == 0 (llama.cpp's fixed n_no_rope_layer_step); the output is multiplied by
//     sigmoid(g) before W_o;
//   - with attention.sliding_window > 0, the layers of sliding_window_pattern (default 4: three
//     sliding, one global) attend to that window and rotate with rope.freq_base_swa (default:
//     rope.freq_base; same scaling as the global layers, as llama.cpp copies it);
//   - post_attention_norm and post_ffw_norm on each block's output before the residual;
//   - the first leading_dense_block_count layers have a dense SwiGLU FFN (feed_forward_length);
//     the rest route: sigmoid scores (expert_gating_func, default sigmoid), top-k of score plus
//     exp_probs_b, weights from the unbiased scores, renormalised if expert_weights_norm,
//     times expert_weights_scale, plus an ungated shared SwiGLU expert of
//     expert_shared_count * expert_feed_forward_length.
// Sources: llama.cpp (the pinned 0c1e57098) and Hugging Face transformers' modeling_afmoe.py.
#include <cmath>

#include "model/arch/arch.h"
#include "model/blocks/decoder.h"
#include "model/tensor_table.h"

namespace peregrine::arch {

Result<std::unique_ptr<Model>> make_afmoe(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  const gguf::File& f = *file;
  const std::string a = "afmoe.";
  DecoderConfig c;
  PG_TRY(read_decoder_hparams(f, "afmoe", c.hp));
  Hparams& hp = c.hp;
  PG_TRY(check_value_length(f, "afmoe", hp));
  // llama.cpp requires both (no fallback to n_ff / n_used, no default shared count).
  for (const char* key : {"expert_feed_forward_length", "expert_shared_count"})
    if (f.find(a + key) == nullptr) return make_error("{}: missing metadata '{}{}'", f.name(), a, key);
  PG_ASSIGN(c.moe, read_moe_hparams(f, "afmoe", hp.n_ff, MoeGating::Sigmoid));
  PG_ASSIGN(const int64_t n_shared, read_hparam(f, a + "expert_shared_count", 0, 64));
  c.moe.n_ff_shexp = c.moe.n_ff_exp * n_shared;
  int64_t n_dense = 0;
  if (f.find(a + "leading_dense_block_count")) {
    PG_ASSIGN(n_dense, read_hparam(f, a + "leading_dense_block_count", 0, hp.n_layer));
  }
  int64_t window = 0;
  if (f.find(a + "attention.sliding_window")) {
    PG_ASSIGN(window, read_hparam(f, a + "attention.sliding_window", 0, 1 << 20));
  }
  std::vector<bool> sliding(size_t(hp.n_layer), false);
  if (window > 0) {
    PG_ASSIGN(sliding, read_sliding_layers(f, "afmoe", hp.n_layer, 4));
  }

  // Table 0: global layers; table 1: sliding layers (their own base, the same scaling).
  PG_ASSIGN(RopeFreqs global, read_rope(f, "afmoe", hp));
  RopeFreqs local = global;
  if (window > 0 && f.find(a + "rope.freq_base_swa")) {
    PG_ASSIGN(double b, f.get_float(a + "rope.freq_base_swa"));
    if (!(b > 1.0 && b < 1e12)) return make_error("{}: rope.freq_base_swa {} is out of range", f.name(), b);
    local.base = float(b);
  }
  c.ropes = {global, local};

  c.layers = uniform_layers(hp, Glu::SiLU);
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    LayerSpec& l = c.layers[size_t(il)];
    l.rope = (il + 1) % 4 != 0;
    l.attn = sliding[size_t(il)] ? AttnKind::sliding(window) : AttnKind::global();
    l.rope_table = sliding[size_t(il)] ? 1 : 0;
    if (il >= n_dense) {
      l.ffn = FfnKind::Moe;
      l.n_ff = c.moe.n_ff_exp;
    }
  }
  c.style.embed_scale = std::sqrt(float(hp.n_embd));
  c.style.rope = RopeStyle::Neox;
  c.style.qk_norm = true;
  c.style.post_norms = true;
  c.style.attn_gate = true;
  return make_decoder(std::move(file), pool, std::move(c));
}

}  // namespace peregrine::arch
