// Qwen 2 / 2.5 (`qwen2`): the llama block with biases on the Q, K and V projections, and RoPE
// that rotates halves (llama.cpp's converter leaves Q/K rows unpermuted for this family).
#include "model/arch/arch.h"
#include "model/blocks/decoder.h"
#include "model/tensor_table.h"

namespace peregrine::arch {

Result<std::unique_ptr<Model>> make_qwen2(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  DecoderConfig c;
  PG_TRY(read_decoder_hparams(*file, "qwen2", c.hp));
  PG_ASSIGN(RopeFreqs rope, read_rope(*file, "qwen2", c.hp));
  c.ropes = {rope};
  c.style.rope = RopeStyle::Neox;
  c.style.qkv_bias = true;
  c.layers = uniform_layers(c.hp, Glu::SiLU);
  return make_decoder(std::move(file), pool, std::move(c));
}

}  // namespace peregrine::arch
