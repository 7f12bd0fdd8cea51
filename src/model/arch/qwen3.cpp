// Qwen 3 dense (`qwen3`): the llama block without biases, with an RMSNorm over each head of q
// and k before RoPE (QK-norm), and RoPE that rotates halves (Q/K rows unpermuted).
#include "model/arch/arch.h"
#include "model/blocks/decoder.h"
#include "model/tensor_table.h"

namespace peregrine::arch {

Result<std::unique_ptr<Model>> make_qwen3(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  DecoderConfig c;
  PG_TRY(read_decoder_hparams(*file, "qwen3", c.hp));
  PG_ASSIGN(RopeFreqs rope, read_rope(*file, "qwen3", c.hp));
  c.ropes = {rope};
  c.style.rope = RopeStyle::Neox;
  c.style.qk_norm = true;
  c.layers = uniform_layers(c.hp, Glu::SiLU);
  return make_decoder(std::move(file), pool, std::move(c));
}

}  // namespace peregrine::arch
