// Phi-3 / Phi-3.5 / Phi-4 dense (`phi3`): the llama block with Q, K and V as one `attn_qkv`
// matrix (rows q, k, v; separate attn_q/k/v are read too, as llama.cpp does) and SwiGLU's gate
// and up as one `ffn_up` of 2 n_ff rows, gate rows first (llama.cpp's LLM_FFN_SWIGLU:
// silu(first half) * second half). RoPE rotates halves ("neox", rows unpermuted), over
// rope.dimension_count of each head (Phi-4-mini rotates 3/4). q.k is scaled by 1/sqrt(head_dim)
// whatever attention.scale says, as in llama.cpp's phi3 graph.
// Not supported yet: LongRoPE (the 128k-context files' rope_factors_long/short, chosen by context
// length), refused by name. The sliding window the converter writes (Phi-3-mini: 2047) is ignored,
// as llama.cpp does ("Phi SWA is currently disabled"): every layer attends globally.
#include "model/arch/arch.h"
#include "model/blocks/decoder.h"
#include "model/tensor_table.h"

namespace peregrine::arch {

Result<std::unique_ptr<Model>> make_phi3(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  const gguf::File& f = *file;
  for (const char* t : {"rope_factors_long.weight", "rope_factors_short.weight"})
    if (f.find_tensor(t) != nullptr)
      return make_error("{}: tensor '{}' (Phi-3 LongRoPE scaling, 128k-context files) is not supported yet",
                        f.name(), t);
  DecoderConfig c;
  PG_TRY(read_decoder_hparams(f, "phi3", c.hp));
  PG_ASSIGN(RopeFreqs rope, read_rope(f, "phi3", c.hp));
  c.ropes = {rope};
  c.style.rope = RopeStyle::Neox;
  c.style.fused_qkv = true;
  c.style.fused_gate_up = true;
  c.layers = uniform_layers(c.hp, Glu::SiLU);
  if (f.find("phi3.attention.sliding_window")) {
    PG_ASSIGN(int64_t window, read_hparam(f, "phi3.attention.sliding_window", 0, int64_t(1) << 32));
    if (window > 0) c.notes.push_back(fmt::format("sliding window {} ignored (as llama.cpp does)", window));
  }
  return make_decoder(std::move(file), pool, std::move(c));
}

}  // namespace peregrine::arch
