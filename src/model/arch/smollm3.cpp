// SmolLM 3 (`smollm3`): the llama block (Q/K rows permuted by the converter, adjacent-pair RoPE)
// with no positional encoding at all on every 4th layer, those with (il + 1) % 4 == 0 ("NoPE":
// q and k are not rotated). The step 4 is fixed, as llama.cpp's n_no_rope_layer_step; the file
// does not state it. As in llama.cpp's smollm3 loader and graph: q.k is scaled by 1/sqrt(head_dim)
// (attention.scale is not read) and there is no rope_freqs.weight.
#include "model/arch/arch.h"
#include "model/blocks/decoder.h"
#include "model/tensor_table.h"

namespace peregrine::arch {

Result<std::unique_ptr<Model>> make_smollm3(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  constexpr int64_t kNoRopeStep = 4;
  DecoderConfig c;
  PG_TRY(read_decoder_hparams(*file, "smollm3", c.hp));
  PG_ASSIGN(RopeFreqs rope, read_rope(*file, "smollm3", c.hp));
  c.ropes = {rope};
  c.layers = uniform_layers(c.hp, Glu::SiLU);
  for (int64_t il = 0; il < c.hp.n_layer; ++il) c.layers[size_t(il)].rope = (il + 1) % kNoRopeStep != 0;
  return make_decoder(std::move(file), pool, std::move(c));
}

}  // namespace peregrine::arch
