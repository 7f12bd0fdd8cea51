// Scalar reference dequantization: one row of blocks back to floats. The per-type
// decoders of the plain and 32-value block formats are here (the K-quants' are in
// kquants.h); dequantize_row() dispatches through the type table (type_table.h).
#pragma once

#include <cstdint>

#include "quant/blocks.h"
#include "quant/ggml_type.h"

namespace peregrine {

// True for the types the engine can compute with (load, dequantize, matmul): the
// model loader accepts a weight only of these types. (TypeInfo::matmul_weight.)
bool is_supported_weight_type(GgmlType t);

// True for the types dequantize_row() can decode: the supported weight types plus
// formats that have a scalar reference but no matmul kernel (none today). Use it where a
// tensor is only decoded (the dequant command, an embedding lookup), never to admit
// matmul weights. False for Q8_K, which only activations use.
bool is_dequantizable_type(GgmlType t);

// dst[n] <- src row of type t. n must be a multiple of the type's block size;
// the type must be dequantizable (callers validate both on load).
void dequantize_row(GgmlType t, const void* src, float* dst, int64_t n);

// The per-type decoders behind dequantize_row (n a multiple of the block size). Each
// computes d * q (+ m) in f32 in that order, as gguf-py's numpy dequantizers do.
void dequantize_row_f32(const float* src, float* dst, int64_t n);
void dequantize_row_f16(const uint16_t* src, float* dst, int64_t n);
void dequantize_row_bf16(const uint16_t* src, float* dst, int64_t n);
void dequantize_row_q4_0(const BlockQ4_0* src, float* dst, int64_t n);
void dequantize_row_q4_1(const BlockQ4_1* src, float* dst, int64_t n);
void dequantize_row_q5_0(const BlockQ5_0* src, float* dst, int64_t n);
void dequantize_row_q5_1(const BlockQ5_1* src, float* dst, int64_t n);
void dequantize_row_q8_0(const BlockQ8_0* src, float* dst, int64_t n);
// KIVI's 2-bit blocks of the KV cache (not a GGUF type): d * code + m.
void dequantize_row_q2(const BlockQ2* src, float* dst, int64_t n);

}  // namespace peregrine
