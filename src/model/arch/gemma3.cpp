// Gemma 3 (text): pre- and post-norms around attention and FFN, QK-norm, GeGLU,
// embeddings scaled by sqrt(n_embd), tied output. Local layers attend to a sliding
// window with their own RoPE base; every `sliding_window_pattern`-th layer is global.
// RoPE rotates halves ("neox"). As in llama.cpp's GGUF conversion, the norm weights
// already include Gemma's "+1" (RMSNorm scales by 1 + w), so they are used as they are.
// Sources: Gemma 3 technical report (Gemma Team, 2025) and Hugging Face transformers'
// Gemma3 text configuration (sliding_window 512, pattern 6, rope_local_base_freq 10000,
// query_pre_attn_scalar = head_dim for the sizes without an override, which a file states
// as `gemma3.attention.scale`).
#include <cmath>

#include "model/arch/arch.h"
#include "model/blocks/decoder.h"
#include "model/tensor_table.h"

namespace peregrine::arch {
Result<std::unique_ptr<Model>> make_gemma3(std::shared_ptr<const gguf::File> file, ThreadPool& pool) {
  const gguf::File& f = *file;
  const std::string a = "gemma3.";
  DecoderConfig c;
  PG_TRY(read_decoder_hparams(f, "gemma3", c.hp));
  Hparams& hp = c.hp;
  PG_TRY(check_value_length(f, "gemma3", hp));
  // Table 0: local layers (their own base, no scaling); table 1: global layers (read_rope: a
  // scaling factor without a type is linear, as Gemma 3 4B+ conversions write it).
  RopeFreqs local{.rot_dim = hp.head_dim, .base = 10000.0f};
  if (f.find(a + "rope.freq_base_swa")) {
    PG_ASSIGN(double b, f.get_float(a + "rope.freq_base_swa"));
    if (!(b > 1.0 && b < 1e12)) return make_error("{}: rope.freq_base_swa {} is out of range", f.name(), b);
    local.base = float(b);
  }
  hp.rope_dim = hp.head_dim;
  PG_ASSIGN(RopeFreqs global, read_rope(f, "gemma3", hp));
  c.ropes = {local, global};
  PG_ASSIGN(const int64_t window, read_hparam(f, a + "attention.sliding_window", 1, 1 << 20));
  // Every 6th layer global unless sliding_window_pattern says otherwise (an integer N or a flag
  // per layer, true = sliding).
  // (llama.cpp's 0, every layer sliding, is refused: Gemma 3 always has global layers.)
  if (const gguf::Value* v = f.find(a + "attention.sliding_window_pattern"); v && v->type != gguf::ValueType::ARRAY) {
    if (auto every = read_hparam(f, a + "attention.sliding_window_pattern", 1, hp.n_layer); !every.ok())
      return every.error();
  }
  PG_ASSIGN(std::vector<bool> sliding, read_sliding_layers(f, "gemma3", hp.n_layer, 6));
  c.layers = uniform_layers(hp, Glu::GeluTanh);
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    LayerSpec& l = c.layers[size_t(il)];
    l.attn = sliding[size_t(il)] ? AttnKind::sliding(window) : AttnKind::global();
    l.rope_table = sliding[size_t(il)] ? 0 : 1;
  }
  c.style.embed_scale = std::sqrt(float(hp.n_embd));
  c.style.rope = RopeStyle::Neox;
  c.style.qk_norm = true;
  c.style.post_norms = true;
  PG_ASSIGN(c.style.attn_scale, read_attention_scale(f, "gemma3"));
  return make_decoder(std::move(file), pool, std::move(c));
}

}  // namespace peregrine::arch
