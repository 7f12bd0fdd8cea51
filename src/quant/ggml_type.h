// Tensor element types as numbered in the GGUF format, with their block geometry.
// The geometry queries below are answered from the type table (quant/type_table.h),
// which also holds everything else the engine knows per type.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace peregrine {

enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};

struct TypeTraits {
  std::string_view name;
  uint32_t block_elems;  // values per block (1 for plain types)
  uint32_t block_bytes;  // bytes per block
};

// Geometry of a type id read from a file; nullopt for ids we do not know.
std::optional<TypeTraits> type_traits(uint32_t type_id);
std::string_view type_name(GgmlType t);

// Bytes taken by a row of n elements, or nullopt when n is not a whole number of blocks.
std::optional<size_t> row_bytes(GgmlType t, uint64_t n);

}  // namespace peregrine
