// A weight matrix as it lies in the GGUF mapping: rows of `cols` values of `type`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "kernels/packed.h"
#include "quant/ggml_type.h"

namespace peregrine {

struct Weight {
  std::string name;
  GgmlType type = GgmlType::F32;
  const uint8_t* data = nullptr;
  int64_t rows = 0;       // output features (ggml dims[1]), 1 for vectors
  int64_t cols = 0;       // input features (ggml dims[0]), contiguous
  size_t row_bytes = 0;
  // The same matrix repacked for the panel kernels (pack_weight), or null.
  std::shared_ptr<const PackedMatrix> packed;

  const uint8_t* row(int64_t r) const { return data + size_t(r) * row_bytes; }
  const float* f32() const { return reinterpret_cast<const float*>(data); }
};

}  // namespace peregrine
