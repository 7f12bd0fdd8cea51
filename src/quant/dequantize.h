// Scalar reference dequantization of one row (n values) of a weight type.
#pragma once

#include <cstdint>

#include "quant/ggml_type.h"

namespace peregrine {

// True for the types the engine can compute with (load, dequantize, matmul): the
// model loader accepts a weight only of these types.
bool is_supported_weight_type(GgmlType t);

// True for the types dequantize_row() can decode: the supported weight types plus
// formats that have a scalar reference but no matmul kernel yet (the K-quants). Use it
// where a tensor is only decoded (the dequant command, an embedding lookup), never to
// admit matmul weights.
bool is_dequantizable_type(GgmlType t);

// dst[n] <- src row of type t. n must be a multiple of the type's block size;
// the type must be dequantizable (callers validate both on load).
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);

}  // namespace peregrine
