// The one table of ggml tensor types: everything the engine knows about a type, in one
// row per type (type_table.cpp). Geometry (ggml_type.h), decoding (dequantize.h), ggml's
// reference quantizers (quantize.h), the loader's admission of matmul weights, what the
// matmul feeds each weight and the panel layout it is repacked into are all answered
// from here, so adding a type is adding a row, not a case in five switches.
//
// Look a type up once per matrix (or per call), never per block: type_info() is an array
// index, but the functions it returns are per-row loops.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "quant/ggml_type.h"
#include "quant/panel_format.h"

namespace peregrine {

struct BlockQ8K;

// What a matmul quantizes its input to for a weight read as plain rows (ops/matmul.cpp).
// Packed weights always read the input their panel format names: float rows for float
// panels, Q8 for the quantized ones (K-quants included).
enum class MatmulInput : uint8_t {
  None,   // not a matmul weight
  Float,  // float rows: F32, F16, BF16 weights
  Q8,     // BlockQ8Act: 8-bit blocks of 32, f32 scale (quant/blocks.h)
  Q8K,    // BlockQ8K: 8-bit super-blocks of 256 (quant/kquants.h)
};

// dst[n] <- n values decoded from n / block_elems blocks at src.
using DequantizeRowFn = void (*)(const void* src, float* dst, int64_t n);
// src[n] -> n / block_elems blocks at dst; n a multiple of block_elems.
using QuantizeRowFn = void (*)(const float* src, void* dst, int64_t n);
// src[n_per_row] -> one row of blocks at dst, each value weighted by importance[n_per_row]
// (an importance matrix's column weights); ggml's quantize_row_*_impl (quantize_imatrix.h).
using QuantizeImatrixFn = void (*)(const float* src, void* dst, int64_t n_per_row, const float* importance);
// Dot product of one weight row of nb super-blocks with nb Q8_K activation blocks.
using DotQ8KFn = float (*)(const void* w, const BlockQ8K* x, int64_t nb);

struct TypeInfo {
  GgmlType type;
  std::string_view name;       // as ggml and gguf-py spell it: "Q4_K", "BF16"
  uint32_t block_elems;        // values per block (1 for plain types)
  uint32_t block_bytes;        // bytes per block
  DequantizeRowFn dequantize;  // scalar reference decoder; nullptr: cannot decode
  QuantizeRowFn quantize;      // ggml's reference quantizer (no importance matrix),
                               // bit-identical to quantize_row_*_ref; nullptr: none
  bool activation_only;        // ggml uses it for activations only (Q8_1, Q8_K): no file holds it
  bool matmul_weight;          // the loader accepts it as a weight of any tensor
  MatmulInput row_input;       // what the matmul feeds it when it runs unpacked
  DotQ8KFn dot_q8k;            // the scalar row kernel when row_input == Q8K
  const PanelFormat* panel;    // layout when repacked (kernels/packed.h), or nullptr
  QuantizeImatrixFn quantize_imatrix = nullptr;  // importance-weighted quantizer; nullptr:
                                                 // the type ignores an imatrix (as in ggml)
};

// The row of a type id read from a file; nullptr for ids the table does not know.
const TypeInfo* find_type_info(uint32_t type_id);

// The row of a known type (every GgmlType enumerator has one).
const TypeInfo& type_info(GgmlType t);

// All rows, in type-id order (for tests and listings).
std::span<const TypeInfo> all_type_infos();

}  // namespace peregrine
