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

// Attention: self-attention over the KV cache. Mamba2: a state-space mixer with per-sequence
// recurrent state (blocks/mamba2.h). None: the layer has no mixer (a hybrid stack's
// feed-forward-only layers).
enum class MixerKind { Attention, Mamba2, None };
// DenseGlu: gate/up/down. DenseReluSqr: up, squared ReLU, down, no gate (Nemotron-H's MLP). Moe:
// routed experts (blocks/moe.h). None: no feed-forward network (Mamba-2 blocks, a hybrid stack's
// mixer-only layers).
enum class FfnKind { DenseGlu, DenseReluSqr, Moe, None };

struct LayerSpec {
  MixerKind mixer = MixerKind::Attention;
  AttnKind attn;             // the model's own attention kind for this layer
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  int64_t rope_dim = 0;      // rotated dimensions of each head
  int32_t rope_table = 0;    // which of the model's RoPE tables the layer uses
  bool rope = true;          // false: q and k are not rotated at all (NoPE layers, SmolLM 3)
  FfnKind ffn = FfnKind::DenseGlu;
  int64_t n_ff = 0;
  Glu glu = Glu::SiLU;
  int64_t state_floats = 0;  // recurrent state one sequence keeps in this layer (Mamba2)

  int64_t q_dim() const { return n_head * head_dim; }
  int64_t kv_dim() const { return n_head_kv * head_dim; }
  int64_t rotated_dim() const { return rope ? rope_dim : 0; }  // 0: a NoPE layer
};

// What a tensor is for; `info` shows it and the quantize/merge tools choose by it.
enum class TensorRole {
  TokenEmbd, OutputNorm, Output, RopeFreqs,
  AttnNorm, AttnQkv, AttnQ, AttnK, AttnV, AttnQBias, AttnKBias, AttnVBias, AttnQNorm, AttnKNorm,
  AttnGate, AttnOut, PostAttnNorm,
  FfnNorm, FfnGateUp, FfnGate, FfnUp, FfnDown, PostFfnNorm,
  FfnRouter, FfnExpertBias, FfnGateExps, FfnUpExps, FfnDownExps, FfnGateShexp, FfnUpShexp, FfnDownShexp,
  SsmIn, SsmConv, SsmConvBias, SsmDtBias, SsmA, SsmD, SsmNorm, SsmOut,
};
std::string_view tensor_role_name(TensorRole r);

}  // namespace peregrine
