// What one decoder layer is: its mixer (how tokens see each other), its feed-forward network,
// and its widths. Architectures state a spec per layer; the shared decoder (blocks/decoder.h)
// runs them, so widths may differ per layer (pruned models, OpenELM-style files) and new
// mixer or FFN kinds (state-space layers, mixture-of-experts) are new enum values with a block
// of their own, not a new copy of the forward loop.
#pragma once

#include <cstdint>
#include <string_view>

#include "kv/kv_cache.h"
#include "ops/matmul.h"

namespace peregrine {

enum class MixerKind { Attention };
enum class FfnKind { DenseGlu };

struct LayerSpec {
  MixerKind mixer = MixerKind::Attention;
  AttnKind attn;             // the model's own attention kind for this layer
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  int64_t rope_dim = 0;      // rotated dimensions of each head
  int32_t rope_table = 0;    // which of the model's RoPE tables the layer uses
  FfnKind ffn = FfnKind::DenseGlu;
  int64_t n_ff = 0;
  Glu glu = Glu::SiLU;

  int64_t q_dim() const { return n_head * head_dim; }
  int64_t kv_dim() const { return n_head_kv * head_dim; }
};

// What a tensor is for; `info` shows it and the quantize/merge tools choose by it.
enum class TensorRole {
  TokenEmbd, OutputNorm, Output, RopeFreqs,
  AttnNorm, AttnQ, AttnK, AttnV, AttnQBias, AttnKBias, AttnVBias, AttnQNorm, AttnKNorm,
  AttnOut, PostAttnNorm,
  FfnNorm, FfnGate, FfnUp, FfnDown, PostFfnNorm,
};
std::string_view tensor_role_name(TensorRole r);

}  // namespace peregrine
