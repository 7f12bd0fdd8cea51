// The llama family (Llama 2/3, SmolLM2, Mistral-style dense files): pre-norm decoder blocks of
// RMSNorm -> GQA attention with RoPE -> residual, RMSNorm -> SwiGLU FFN -> residual.
// llama.cpp's converter permutes the Q and K rows so that RoPE rotates adjacent pairs.
// Llama 3.1+ files carry `rope_freqs.weight` (per-dimension frequency divisors computed by the
// converter from rope_scaling's factor, low/high_freq_factor and original context); linear and
// YaRN scaling come from `llama.rope.scaling.*`.
#include "model/arch/arch.h"
#include "model/blocks/decoder.h"
#include "model/tensor_table.h"

namespace peregrine::arch {

Result<std::unique_ptr<Model>> make_llama(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  DecoderConfig c;
  PG_TRY(read_decoder_hparams(*file, "llama", c.hp));
  PG_ASSIGN(RopeFreqs rope, read_rope(*file, "llama", c.hp));
  c.ropes = {rope};
  c.rope_freqs_table = 0;
  PG_ASSIGN(c.style.attn_scale, read_attention_scale(*file, "llama"));
  c.layers = uniform_layers(c.hp, Glu::SiLU);
  return make_decoder(std::move(file), pool, std::move(c));
}

}  // namespace peregrine::arch
