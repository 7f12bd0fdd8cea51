// Quantization mixes: which type each tensor of a model gets when a user asks for
// "Q4_K_M". The names, file-type numbers and per-tensor rules are llama-quantize's (as
// pinned by bench/llama_cpp_build.py; src/llama-quant.cpp there), so a file we write for a
// mix holds the same tensor types as llama-quantize's and users' expectations carry over:
//   - only tensors named *weight with 2 or more dimensions are quantized; norms, expert
//     routers and a few small tables keep their type;
//   - the output head (and the token embedding when it doubles as the head) gets Q6_K
//     unless the mix is Q8_0 (Q8_0 when its rows do not split into the type's blocks);
//   - attn_v, ffn_down and attn_output get more bits in some mixes and layers (K_M: the
//     first and last eighth of the layers and every third in between get Q6_K);
//   - a row length that is not a whole number of the chosen type's blocks falls back to a
//     type with smaller blocks (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K/TQ ->
//     Q4_0) and to F16 when even that does not fit.
// The rules run over the tensors in llama's order (by layer, then name), because some of
// them count the tensors of a kind seen so far.
#pragma once

#include <cstdint>
#include <optional>
#include <regex>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "quant/ggml_type.h"

namespace peregrine {

struct QuantMix {
  std::string_view name;  // "Q4_K_M"
  uint32_t file_type;     // llama_ftype, written as general.file_type
  GgmlType base;          // the type most tensors get
  std::string_view description;
};

// Every mix, in llama-quantize's listing order.
std::span<const QuantMix> all_quant_mixes();
// By name, case-insensitive; the short K names are the _M mixes (Q3_K = Q3_K_M, Q4_K =
// Q4_K_M, Q5_K = Q5_K_M), as in llama-quantize. nullptr when unknown.
const QuantMix* find_quant_mix(std::string_view name);
// A tensor type by its ggml name (case-insensitive), for --keep-type; only types we can
// quantize to. nullopt when unknown.
std::optional<GgmlType> quantizable_type(std::string_view name);

// What the rules read from the model's metadata.
struct MixModel {
  int64_t n_layer = 0;    // <arch>.block_count
  int64_t n_gqa = 1;      // attention heads per KV head (layer 0)
  int64_t n_expert = 0;   // <arch>.expert_count, 0 for dense models
  bool is_falcon = false;
  bool is_70b = false;    // llama's LLM_TYPE_70B: attn_v gets Q5_K instead of Q3_K/Q4_K
  bool has_imatrix = false;
};

struct MixTensor {
  std::string name;
  std::vector<uint64_t> dims;  // ggml order
  GgmlType type;               // its type in the input file
};

struct MixOverride {
  std::string pattern;  // an ECMAScript regex searched in the tensor name, lower-cased as llama does
  std::regex re;
  GgmlType type;
};

struct MixOptions {
  std::vector<MixOverride> overrides;  // --keep-type PATTERN=TYPE, first match wins
  bool pure = false;                   // every quantizable tensor gets the base type
  std::optional<GgmlType> output_type;       // --output-type
  std::optional<GgmlType> token_embd_type;   // --token-embedding-type
};

struct MixChoice {
  GgmlType type;
  bool quantize;     // the tensor may be quantized at all (else `type` is its own)
  bool fell_back;    // the rules' type did not fit its rows
  bool needs_imatrix;  // llama refuses this type without an importance matrix (Q2_K_S)
};

// The type of every tensor (in the order given). Errors: an override that names a type
// that does not fit the tensor's rows, an expert tensor without a layer number.
Result<std::vector<MixChoice>> choose_tensor_types(const QuantMix& mix, const MixModel& model,
                                                   std::span<const MixTensor> tensors,
                                                   const MixOptions& options);

// llama's tensor order: by the N of "blk.N." (tensors outside the blocks first), then by
// name. Indexes into `tensors`. llama-quantize writes its files in this order.
std::vector<size_t> llama_tensor_order(std::span<const MixTensor> tensors);

// Parses "PATTERN=TYPE" (the regex checked, the type known and quantizable).
Result<MixOverride> parse_mix_override(std::string_view text);

}  // namespace peregrine
