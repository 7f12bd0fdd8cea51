// Scalar reference dequantization of one row (n values) of a weight type.
#pragma once

#include <cstdint>

#include "quant/ggml_type.h"

namespace peregrine {

// True for the types the engine can compute with (load, dequantize, matmul).
bool is_supported_weight_type(GgmlType t);

// dst[n] <- src row of type t. n must be a multiple of the type's block size;
// the type must be supported (callers validate both on load).
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);

}  // namespace peregrine
