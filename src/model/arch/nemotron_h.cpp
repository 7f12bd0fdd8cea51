// Nemotron-H (`nemotron_h`: Nemotron-H 8B and kin; `nemotron_h_moe`: NVIDIA Nemotron 3 Nano with
// routed experts): a hybrid stack
// whose layers are each ONE block after one RMSNorm (`attn_norm`): a Mamba-2 mixer, an attention
// (no RoPE anywhere), or a routed-expert FFN. The kind of each layer comes from the per-layer
// arrays, as llama.cpp decides it: head_count_kv 0 and feed_forward_length 0 -> Mamba-2;
// feed_forward_length 0 with KV heads -> attention; otherwise an FFN layer: a squared-ReLU MLP
// (up, relu^2, down, no gate) without experts, else routed experts. The experts are
// squared-ReLU up/down without a gate, routed by sigmoid scores with a selection-only bias
// (exp_probs_b), weights optionally renormalised and scaled; a shared squared-ReLU expert of
// expert_shared_feed_forward_length is added unweighted.
#include "model/arch/arch.h"
#include "model/blocks/decoder.h"
#include "model/tensor_table.h"

namespace peregrine::arch {

namespace {

Result<std::unique_ptr<Model>> make_nemotron_h(std::shared_ptr<const gguf::File> file, ThreadPool& pool,
                                               const std::string& arch) {
  const gguf::File& f = *file;
  DecoderConfig c;
  PG_TRY(read_decoder_hparams(f, arch, c.hp, /*zero_widths=*/true));
  PG_ASSIGN(c.ssm, read_mamba2_dims(f, arch, c.hp.n_embd));
  c.style.single_norm = true;
  PG_ASSIGN(c.style.attn_scale, read_attention_scale(f, arch));
  c.ropes = {RopeFreqs{}};
  c.layers = uniform_layers(c.hp, Glu::SiLU);
  bool any_ffn = false;
  for (int64_t il = 0; il < c.hp.n_layer; ++il) {
    LayerSpec& l = c.layers[size_t(il)];
    l.rope = false;
    const int64_t kv = c.hp.n_head_kv_per_layer[size_t(il)], ff = c.hp.n_ff_per_layer[size_t(il)];
    l.ffn = FfnKind::None;
    if (ff == 0 && kv == 0) {
      l.mixer = MixerKind::Mamba2;
    } else if (ff == 0) {
      l.mixer = MixerKind::Attention;
    } else {
      if (kv != 0)
        return make_error("{}: layer {} has both feed_forward_length {} and head_count_kv {}: a Nemotron-H layer "
                          "is one block ({}.attention.head_count_kv, {}.feed_forward_length)",
                          f.name(), il, ff, kv, arch, arch);
      l.mixer = MixerKind::None;
      l.ffn = FfnKind::DenseReluSqr;
      any_ffn = true;
    }
  }
  if (any_ffn && f.find(arch + ".expert_count") != nullptr) {  // routed experts in every FFN layer
    // The expert width falls back to the first FFN layer's feed_forward_length / n_used.
    int64_t n_ff = 0;
    for (int64_t v : c.hp.n_ff_per_layer) n_ff = n_ff > 0 ? n_ff : v;
    PG_ASSIGN(c.moe, read_moe_hparams(f, arch, n_ff, MoeGating::Sigmoid));
    c.moe.cfg.gating = MoeGating::Sigmoid;  // whatever the file says, as llama.cpp
    c.moe.cfg.act = MoeAct::ReluSqr;
    if (f.find(arch + ".expert_shared_feed_forward_length")) {
      PG_ASSIGN(c.moe.n_ff_shexp, read_hparam(f, arch + ".expert_shared_feed_forward_length", 0, 1 << 18));
    }
    for (LayerSpec& l : c.layers)
      if (l.ffn == FfnKind::DenseReluSqr) {
        l.ffn = FfnKind::Moe;
        l.n_ff = c.moe.n_ff_exp;
      }
  }
  return make_decoder(std::move(file), pool, std::move(c));
}

}  // namespace

Result<std::unique_ptr<Model>> make_nemotron_h_moe(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  return make_nemotron_h(std::move(file), pool, "nemotron_h_moe");
}

Result<std::unique_ptr<Model>> make_nemotron_h(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  return make_nemotron_h(std::move(file), pool, "nemotron_h");
}

}  // namespace peregrine::arch
