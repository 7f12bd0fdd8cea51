// OLMoE (`olmoe`): attention with one RMSNorm over the whole q row and the whole k row (not per
// head) before rotate-half RoPE, and a routed-expert FFN in every layer: softmax over the
// experts, the top expert_used_count with their probabilities as weights (not renormalised, no
// scale), SwiGLU experts of feed_forward_length.
#include "model/arch/arch.h"
#include "model/blocks/decoder.h"
#include "model/tensor_table.h"

namespace peregrine::arch {

Result<std::unique_ptr<Model>> make_olmoe(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  DecoderConfig c;
  PG_TRY(read_decoder_hparams(*file, "olmoe", c.hp));
  PG_ASSIGN(RopeFreqs rope, read_rope(*file, "olmoe", c.hp));
  c.ropes = {rope};
  c.style.rope = RopeStyle::Neox;
  c.style.qk_norm_full = true;
  PG_ASSIGN(c.moe, read_moe_hparams(*file, "olmoe", c.hp.n_ff, MoeGating::Softmax, /*experts_of_n_ff=*/true));
  c.moe.cfg.gating = MoeGating::Softmax;
  c.moe.cfg.norm_weights = false;
  c.moe.cfg.weights_scale = 0.0f;
  c.layers = uniform_layers(c.hp, Glu::SiLU);
  for (LayerSpec& l : c.layers) {
    l.ffn = FfnKind::Moe;
    l.n_ff = c.moe.n_ff_exp;
  }
  return make_decoder(std::move(file), pool, std::move(c));
}

}  // namespace peregrine::arch
