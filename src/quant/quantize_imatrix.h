// Importance-matrix quantizers: one row of floats to blocks of a ggml type, bit-identical
// to what ggml_quantize_chunk() writes for that row when it is given an importance
// matrix (imatrix) -- ggml's quantize_row_*_impl in ggml-quants.c, as pinned by
// bench/llama_cpp_build.py, i.e. what `llama-quantize --imatrix` writes for these types.
// Without an imatrix ggml falls back to the reference quantizers of quantize.h.
//
// The importance vector has one non-negative weight per column of the matrix (for
// llama-quantize: the mean squared activation that column saw), so a row of n_per_row
// values takes importance[n_per_row], and the weight of value i in the searches is
//     importance[i] * sqrt(sigma2 + x[i]^2)
// with sigma2 a mean square of x (Q6_K alone uses importance[i] as is). Where that mean
// is taken over is part of ggml's algorithm and kept here: the whole row for the
// 32-value types (so a row is NOT a concatenation of independent blocks: the functions
// take the row length, and the tests quantize row by row), the 256-value super-block
// for the K-quants (2x the mean square for Q3_K / Q4_K / Q5_K, 1x for Q2_K).
//
// With those weights the searches change too (quantize_imatrix.cpp has the details):
// Q4_0 / Q5_0 use the weighted make_qx_quants instead of a max-based scale; Q4_1 / Q5_1
// and the sub-blocks of Q2_K / Q4_K / Q5_K the weighted affine search; and the K-quants
// quantize their sub-block scales with a weighted search (make_qp_quants, or
// make_qx_quants for Q3_K) instead of scaling by the largest one.
//
// Bit-exact in the same way as quantize.h (ggml's float order, its nearest_int, fp16
// round-to-nearest-even, no FMA contraction); tests/reference/test_quantize_imatrix.py
// checks every type against ggml itself. Inputs are finite; n_per_row is a multiple of
// the type's block size; importance is non-null.
#pragma once

#include <cstdint>

#include "quant/blocks.h"
#include "quant/ggml_type.h"
#include "quant/kquants.h"

namespace peregrine {

// x[n_per_row] -> y[n_per_row / block], weighted by importance[n_per_row].
void quantize_row_q4_0_imatrix(const float* x, BlockQ4_0* y, int64_t n_per_row, const float* importance);
void quantize_row_q4_1_imatrix(const float* x, BlockQ4_1* y, int64_t n_per_row, const float* importance);
void quantize_row_q5_0_imatrix(const float* x, BlockQ5_0* y, int64_t n_per_row, const float* importance);
void quantize_row_q5_1_imatrix(const float* x, BlockQ5_1* y, int64_t n_per_row, const float* importance);
void quantize_row_q2_k_imatrix(const float* x, BlockQ2K* y, int64_t n_per_row, const float* importance);
void quantize_row_q3_k_imatrix(const float* x, BlockQ3K* y, int64_t n_per_row, const float* importance);
void quantize_row_q4_k_imatrix(const float* x, BlockQ4K* y, int64_t n_per_row, const float* importance);
void quantize_row_q5_k_imatrix(const float* x, BlockQ5K* y, int64_t n_per_row, const float* importance);
void quantize_row_q6_k_imatrix(const float* x, BlockQ6K* y, int64_t n_per_row, const float* importance);

// The function above for a type, seen through an untyped signature; nullptr for types
// without one (ggml ignores the imatrix for Q8_0 and the float types).

}  // namespace peregrine
