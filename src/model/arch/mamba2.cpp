// Mamba-2 (`mamba2`): a stack of pre-norm Mamba-2 mixers (blocks/mamba2.h) with residuals, no
// attention and no FFN. Each sequence keeps a fixed-size recurrent state instead of a KV cache,
// so positions are unbounded and a decode step costs the same at any depth.
#include "model/arch/arch.h"
#include "model/blocks/decoder.h"
#include "model/tensor_table.h"

namespace peregrine::arch {

Result<std::unique_ptr<Model>> make_mamba2(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  DecoderConfig c;
  PG_TRY(read_decoder_hparams(*file, "mamba2", c.hp, /*zero_widths=*/true));
  PG_ASSIGN(c.ssm, read_mamba2_dims(*file, "mamba2", c.hp.n_embd));
  c.ropes = {RopeFreqs{}};
  c.layers.resize(size_t(c.hp.n_layer));
  for (LayerSpec& l : c.layers) {
    l.mixer = MixerKind::Mamba2;
    l.ffn = FfnKind::None;
  }
  return make_decoder(std::move(file), pool, std::move(c));
}

}  // namespace peregrine::arch
