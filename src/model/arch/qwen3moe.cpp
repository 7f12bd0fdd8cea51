// Qwen 3 mixture-of-experts (`qwen3moe`, Qwen3-30B-A3B and kin): Qwen 3's attention (QK-norm,
// rotate-half RoPE) with a routed-expert FFN in every layer: softmax over the experts, the top
// expert_used_count, their weights renormalised to sum 1 (llama.cpp always renormalises for
// this architecture and reads no scale), SwiGLU experts, no shared expert.
#include "model/arch/arch.h"
#include "model/blocks/decoder.h"
#include "model/tensor_table.h"

namespace peregrine::arch {

Result<std::unique_ptr<Model>> make_qwen3moe(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  DecoderConfig c;
  PG_TRY(read_decoder_hparams(*file, "qwen3moe", c.hp));
  PG_ASSIGN(RopeFreqs rope, read_rope(*file, "qwen3moe", c.hp));
  c.ropes = {rope};
  c.style.rope = RopeStyle::Neox;
  c.style.qk_norm = true;
  PG_ASSIGN(c.moe, read_moe_hparams(*file, "qwen3moe", c.hp.n_ff, MoeGating::Softmax));
  c.moe.cfg.gating = MoeGating::Softmax;
  c.moe.cfg.norm_weights = true;
  c.moe.cfg.weights_scale = 0.0f;
  c.layers = uniform_layers(c.hp, Glu::SiLU);
  for (LayerSpec& l : c.layers) {
    l.ffn = FfnKind::Moe;
    l.n_ff = c.moe.n_ff_exp;
  }
  return make_decoder(std::move(file), pool, std::move(c));
}

}  // namespace peregrine::arch
