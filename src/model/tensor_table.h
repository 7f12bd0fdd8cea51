// An architecture's tensors as data: name, expected shape, role, layer, required or not.
// One list drives loading, validation, `info` (and later quantize, merge and LoRA targets).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "gguf/gguf.h"
#include "model/layer_spec.h"
#include "model/model.h"
#include "ops/weight.h"

namespace peregrine {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the row length
  TensorRole role = TensorRole::TokenEmbd;
  int64_t layer = -1;         // -1: not in a block
  bool required = true;
  bool float_only = false;    // norms and biases must be F32
  Weight* dest = nullptr;     // filled on bind; left empty (data == nullptr) if optional and absent
  const gguf::TensorInfo* source = nullptr;  // the file's tensor, after bind; null when absent
};

// Checks every spec against the file (presence, shape, supported type) and binds the
// weights. Every tensor of the file must be consumed by a spec, unless its name is in
// `ignorable`: a file with tensors nothing reads is refused, naming them (a converter
// change or the wrong architecture would otherwise silently drop weights). Errors name the
// tensor and both sides of a mismatch.
Status bind_tensors(const gguf::File& file, std::vector<TensorSpec>& table,
                    const std::vector<std::string>& ignorable = {});

// Reads an integer hyperparameter and checks it lies in [lo, hi].
Result<int64_t> read_hparam(const gguf::File& file, const std::string& key, int64_t lo, int64_t hi);

// A per-layer hyperparameter: the key holds one integer for every layer or an array of
// n_layer integers (files of models whose widths differ per layer); each value in [lo, hi].
// Absent: `fallback` for every layer.
Result<std::vector<int64_t>> read_layer_hparam(const gguf::File& file, const std::string& key,
                                               int64_t n_layer, int64_t lo, int64_t hi,
                                               int64_t fallback);

// The hyperparameters every decoder-only architecture reads the same way, under the key
// prefix "<arch>.": general.name, block_count, embedding_length, feed_forward_length,
// attention.head_count[_kv] (kv defaults to head_count), attention.key_length (defaults to
// embedding_length / head_count), rope.dimension_count (defaults to the head dimension),
// context_length (default 2048), rope.freq_base (default 10000), the RMS epsilon, and
// n_vocab from token_embd. Every value is range-checked. Per-layer arrays are accepted for
// the head counts and feed_forward_length; hp then holds their largest value. zero_widths:
// a layer may have no heads and no FFN (hybrid stacks state the kind of each layer by
// zeros; head_count_kv 0 then stays 0 instead of defaulting to head_count).
Status read_decoder_hparams(const gguf::File& file, const std::string& arch, Hparams& hp,
                            bool zero_widths = false);

}  // namespace peregrine
