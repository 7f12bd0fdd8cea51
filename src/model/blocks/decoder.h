// The shared decoder: token embedding, a stack of layers run from their specs, the output
// head. Architectures (model/arch/*.cpp) differ only in what DecoderStyle and their layer
// specs say, so each is a short file that reads its metadata into a DecoderConfig.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "gguf/gguf.h"
#include "model/blocks/block_hparams.h"
#include "model/layer_spec.h"
#include "model/model.h"
#include "ops/ops.h"
#include "ops/rope_scaling.h"

namespace peregrine {

// The places where decoder architectures of the llama lineage differ.
struct DecoderStyle {
  float embed_scale = 0.0f;   // x *= embed_scale after the lookup (Gemma: sqrt(n_embd)); 0: none
  RopeStyle rope = RopeStyle::Adjacent;  // llama's converter permutes Q/K rows for adjacent pairs
  bool qkv_bias = false;      // Q, K and V projections have biases (Qwen 2)
  bool qk_norm = false;       // RMSNorm over each head of q and k before RoPE (Gemma 3, Qwen 3)
  bool post_norms = false;    // RMSNorm of the attention and FFN outputs before the residual (Gemma 3)
  float attn_scale = 0.0f;    // scale of q.k; 0: 1/sqrt(head_dim)
  // Q, K and V may come as one `attn_qkv` matrix (rows: q, then k, then v), read when a layer has
  // it or lacks `attn_q` (Phi-3); the three row ranges become three matrices at load.
  bool fused_qkv = false;
  // Gate and up come as one `ffn_up` matrix of 2 n_ff rows, gate rows first (Phi-3: llama.cpp's
  // LLM_FFN_SWIGLU, silu(first half) * second half); split into two matrices at load.
  bool fused_gate_up = false;
  // RMSNorm over the whole q row [q_dim] and k row [kv_dim] instead of per head (OLMoE).
  bool qk_norm_full = false;
  // One norm per layer, `attn_norm`, before whichever block the layer has (Nemotron-H, whose
  // layers are each a Mamba-2 mixer, an attention or an FFN).
  bool single_norm = false;
  // Gated attention (afmoe): g = W_gate * RMSNorm(x) [q_dim] from the same normed input as q, k
  // and v (`attn_gate`), and the attention output is multiplied by sigmoid(g) element-wise
  // before W_o.
  bool attn_gate = false;
};

struct DecoderConfig {
  Hparams hp;
  DecoderStyle style;
  std::vector<RopeFreqs> ropes;        // the RoPE tables; each layer names one (rope_table)
  std::vector<LayerSpec> layers;
  int32_t rope_freqs_table = -1;       // table that takes `rope_freqs.weight` (Llama 3), -1: none
  std::vector<std::string> ignorable;  // tensors a file may hold that nothing reads
  std::vector<std::string> notes;      // for `info`: what the file states that the model ignores, say
  MoeHparams moe;                      // layers with FfnKind::Moe
  Mamba2Dims ssm;                      // layers with MixerKind::Mamba2
};

// One spec per layer from hp's per-layer widths: global attention, dense GLU, RoPE table 0.
std::vector<LayerSpec> uniform_layers(const Hparams& hp, Glu glu);

// hp's RoPE (rope_dim, base) plus the scaling "<arch>.rope.scaling.*" states: type (none,
// linear, yarn; linear when only a factor is given, as llama.cpp reads it), factor (or the older
// "<arch>.rope.scale_linear"), original_context_length, attn_factor (YaRN's ramp keeps beta
// 32/1, as llama.cpp does). Types
// llama.cpp knows but this engine does not (longrope) are an error.
Result<RopeFreqs> read_rope(const gguf::File& f, const std::string& arch, const Hparams& hp);

// Which layers attend to a sliding window, as llama.cpp's load_swa_pattern reads
// "<arch>.attention.sliding_window_pattern": a per-layer array (non-zero: sliding; integers or
// bools), or an integer N: layer il slides when il % N < N - 1 (every N-th layer, counting from
// 1, is global; N = 0: every layer slides); `default_pattern` when the key is absent.
Result<std::vector<bool>> read_sliding_layers(const gguf::File& f, const std::string& arch, int64_t n_layer,
                                              int64_t default_pattern);

// "<arch>.attention.value_length", when the file has it, must equal the head width (V rows as
// wide as K rows).
Status check_value_length(const gguf::File& f, const std::string& arch, const Hparams& hp);

// "<arch>.attention.scale" when the file has it (the scale of q.k), else 0 (1/sqrt(head_dim)).
Result<float> read_attention_scale(const gguf::File& f, const std::string& arch);

// Builds the model: binds the tensors the config implies (checked against the file, nothing
// left unread), packs the matmul weights.
Result<std::unique_ptr<Model>> make_decoder(std::shared_ptr<const gguf::File> file, ThreadPool& pool,
                                            DecoderConfig config);

}  // namespace peregrine
