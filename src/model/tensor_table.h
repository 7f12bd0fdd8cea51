// An architecture's list of tensors (name, expected shape, required or not).
// One table drives loading and validation (and later info, quantize and merge).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "ops/weight.h"

namespace peregrine {

struct TensorSpec {
  std::string name;
  std::vector<int64_t> dims;  // ggml order: dims[0] is the row length
  bool required = true;
  Weight* dest = nullptr;     // filled on bind; left empty (data == nullptr) if optional and absent
  bool float_only = false;    // norms and biases must be F32
};

// Checks every spec against the file (presence, shape, supported type) and binds
// the weights. Errors name the tensor and both sides of a mismatch.
Status bind_tensors(const gguf::File& file, std::vector<TensorSpec>& table);

// Reads an integer hyperparameter and checks it lies in [lo, hi].
Result<int64_t> read_hparam(const gguf::File& file, const std::string& key, int64_t lo, int64_t hi);

// The hyperparameters every decoder-only architecture reads the same way, under the key
// prefix "<arch>.": general.name, block_count, embedding_length, feed_forward_length,
// attention.head_count[_kv] (kv defaults to head_count), attention.key_length (defaults to
// embedding_length / head_count), rope.dimension_count (defaults to the head dimension),
// context_length (default 2048), rope.freq_base (default 10000), the RMS epsilon, and
// n_vocab from token_embd. Every value is range-checked.
Status read_decoder_hparams(const gguf::File& file, const std::string& arch, Hparams& hp);

}  // namespace peregrine
