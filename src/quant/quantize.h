// Reference quantizers: one row of floats to blocks of a ggml type, bit-identical to
// ggml's quantize_row_*_ref (ggml-quants.c, as pinned by bench/llama_cpp_build.py) with
// no importance matrix -- what `llama-quantize` writes for these types without
// --imatrix, and what ggml_quantize_chunk() returns with imatrix == NULL.
//
// Written from the algorithms, not copied: quantize.cpp holds the plain, 32-block and
// ternary formats, quantize_k.cpp the K-quants and their scale searches. "Bit-identical"
// rests on three things every function here keeps:
//   - the same float operations in the same order (the build disables FMA contraction,
//     and ggml's own reference build cannot contract either: ggml-base is compiled for
//     baseline x86-64, which has no FMA -- only ggml-cpu gets -march=native);
//   - fp16 stores rounded to nearest even (f32_to_fp16, checked against ggml's
//     conversion for all 2^32 floats);
//   - ggml's rounding helpers: roundf, truncating casts and its nearest_int bit trick.
// tests/reference/test_quantize_ref.py checks every type against ggml itself and gguf-py.
//
// All take x[n] with n a multiple of the type's block size and write n / block blocks.
// Inputs are finite; for NaN or infinite values the output is whatever the arithmetic
// gives (as in ggml), not a contract.
#pragma once

#include <cstdint>

#include "quant/blocks.h"
#include "quant/kquants.h"

namespace peregrine {

// Plain types: F32 is a copy, F16 / BF16 round to nearest even (NaN stays NaN).
void quantize_row_f32_ref(const float* x, float* y, int64_t n);
void quantize_row_f16_ref(const float* x, uint16_t* y, int64_t n);
void quantize_row_bf16_ref(const float* x, uint16_t* y, int64_t n);

// 32-value blocks (kQK), one scale (and a minimum for the *_1 types) per block.
void quantize_row_q4_0_ref(const float* x, BlockQ4_0* y, int64_t n);
void quantize_row_q4_1_ref(const float* x, BlockQ4_1* y, int64_t n);
void quantize_row_q5_0_ref(const float* x, BlockQ5_0* y, int64_t n);
void quantize_row_q5_1_ref(const float* x, BlockQ5_1* y, int64_t n);
void quantize_row_q8_0_ref(const float* x, BlockQ8_0* y, int64_t n);

// K-quants: super-blocks of 256 (kQK_K) with searched sub-block scales (quantize_k.cpp).
void quantize_row_q2_k_ref(const float* x, BlockQ2K* y, int64_t n);
void quantize_row_q3_k_ref(const float* x, BlockQ3K* y, int64_t n);
void quantize_row_q4_k_ref(const float* x, BlockQ4K* y, int64_t n);
void quantize_row_q5_k_ref(const float* x, BlockQ5K* y, int64_t n);
void quantize_row_q6_k_ref(const float* x, BlockQ6K* y, int64_t n);

// Ternary super-blocks of 256 (kquants.h): d = max|x| of the block, values rounded to
// the nearest of -d, 0, d (x / d half away from zero, lroundf as in ggml).
void quantize_row_tq1_0_ref(const float* x, BlockTQ1_0* y, int64_t n);
void quantize_row_tq2_0_ref(const float* x, BlockTQ2_0* y, int64_t n);

// KIVI's 2-bit asymmetric blocks (BlockQ2, the KV cache's quantized K and V; not a GGUF type).
// Per 32 values: m = min, d = (max - min) / 3, both stored as fp16; codes round((x - m) / d)
// (half away from zero) clamped to 0..3, computed with the fp16-rounded d and m, so a value
// decodes to within d / 2 of x plus the fp16 rounding of d and m. d == 0: all codes 0.
void quantize_row_q2_ref(const float* x, BlockQ2* y, int64_t n);
// The per-channel form (KIVI's keys): rows [32][row_stride] floats, 32 positions of n_ch
// channels; out[c] is channel c over the 32 positions (value j = position j), quantized
// exactly as quantize_row_q2_ref quantizes that 32-value column.
void quantize_group_q2_channel(const float* rows, int64_t row_stride, int64_t n_ch, BlockQ2* out);

// ggml's Q8_K activation quantizer: d = max / -127 of the value of largest magnitude.
// Not the engine's activation path (quantize_row_q8_k in kquants.h uses d = max|x| / 127
// and is what the kernels are tested with); this one exists for bit-exact comparisons.
// ggml leaves bsums unwritten for an all-zero block; here they are zero.
void quantize_row_q8_k_ref(const float* x, BlockQ8K* y, int64_t n);

}  // namespace peregrine
