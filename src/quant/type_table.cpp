// The type table (type_table.h) and the geometry queries of ggml_type.h answered from it.
#include "quant/type_table.h"

#include <array>

#include "core/status.h"
#include "quant/dequantize.h"
#include "quant/kquants.h"
#include "quant/quantize.h"
#include "quant/quantize_imatrix.h"

namespace peregrine {
namespace {

// The typed per-format functions seen through the table's untyped signatures.
template <typename Block, void (*F)(const Block*, float*, int64_t)>
void dequantize_as(const void* src, float* dst, int64_t n) {
  F(static_cast<const Block*>(src), dst, n);
}
template <typename Block, void (*F)(const float*, Block*, int64_t)>
void quantize_as(const float* src, void* dst, int64_t n) {
  F(src, static_cast<Block*>(dst), n);
}
template <typename Block, void (*F)(const float*, Block*, int64_t, const float*)>
void quantize_imatrix_as(const float* src, void* dst, int64_t n, const float* importance) {
  F(src, static_cast<Block*>(dst), n, importance);
}

// A type the engine only knows the size of (gguf can walk past its tensors).
constexpr TypeInfo geometry(GgmlType t, std::string_view name, uint32_t elems, uint32_t bytes) {
  return TypeInfo{t, name, elems, bytes, nullptr, nullptr, false, false, MatmulInput::None, nullptr, nullptr};
}

using MI = MatmulInput;
using T = GgmlType;

// One row per type, in type-id order. Columns: type, name, block values, block bytes,
// dequantize, reference quantize, activation only, matmul weight, row input, Q8_K row
// dot, panel format, importance-weighted quantize.
constexpr TypeInfo kTypes[] = {
    {T::F32, "F32", 1, 4, dequantize_as<float, dequantize_row_f32>, quantize_as<float, quantize_row_f32_ref>,
     false, true, MI::Float, nullptr, &panel::kF32},
    {T::F16, "F16", 1, 2, dequantize_as<uint16_t, dequantize_row_f16>,
     quantize_as<uint16_t, quantize_row_f16_ref>, false, true, MI::Float, nullptr, &panel::kF16},
    {T::Q4_0, "Q4_0", 32, 18, dequantize_as<BlockQ4_0, dequantize_row_q4_0>,
     quantize_as<BlockQ4_0, quantize_row_q4_0_ref>, false, true, MI::Q8, nullptr, &panel::kQ4_0,
     quantize_imatrix_as<BlockQ4_0, quantize_row_q4_0_imatrix>},
    {T::Q4_1, "Q4_1", 32, 20, dequantize_as<BlockQ4_1, dequantize_row_q4_1>,
     quantize_as<BlockQ4_1, quantize_row_q4_1_ref>, false, true, MI::Q8, nullptr, &panel::kQ4_1,
     quantize_imatrix_as<BlockQ4_1, quantize_row_q4_1_imatrix>},
    // Q5_0 has no row kernel: it always runs repacked, widened into Q8_0's panels.
    {T::Q5_0, "Q5_0", 32, 22, dequantize_as<BlockQ5_0, dequantize_row_q5_0>,
     quantize_as<BlockQ5_0, quantize_row_q5_0_ref>, false, true, MI::None, nullptr, &panel::kQ8_0,
     quantize_imatrix_as<BlockQ5_0, quantize_row_q5_0_imatrix>},
    // Q5_1 has no row kernel: it runs repacked into Q5_K's panels (d and m as f32, quants as
    // bytes 0..31), exact at 8 bits per weight.
    {T::Q5_1, "Q5_1", 32, 24, dequantize_as<BlockQ5_1, dequantize_row_q5_1>,
     quantize_as<BlockQ5_1, quantize_row_q5_1_ref>, false, true, MI::None, nullptr, &panel::kQ5K,
     quantize_imatrix_as<BlockQ5_1, quantize_row_q5_1_imatrix>},
    {T::Q8_0, "Q8_0", 32, 34, dequantize_as<BlockQ8_0, dequantize_row_q8_0>,
     quantize_as<BlockQ8_0, quantize_row_q8_0_ref>, false, true, MI::Q8, nullptr, &panel::kQ8_0},
    {T::Q8_1, "Q8_1", 32, 36, nullptr, nullptr, true, false, MI::None, nullptr, nullptr},
    {T::Q2_K, "Q2_K", 256, 84, dequantize_as<BlockQ2K, dequantize_row_q2_k>,
     quantize_as<BlockQ2K, quantize_row_q2_k_ref>, false, true, MI::Q8K, dot_q2_k_q8_k, &panel::kQ2K,
     quantize_imatrix_as<BlockQ2K, quantize_row_q2_k_imatrix>},
    {T::Q3_K, "Q3_K", 256, 110, dequantize_as<BlockQ3K, dequantize_row_q3_k>,
     quantize_as<BlockQ3K, quantize_row_q3_k_ref>, false, true, MI::Q8K, dot_q3_k_q8_k, &panel::kQ3K,
     quantize_imatrix_as<BlockQ3K, quantize_row_q3_k_imatrix>},
    {T::Q4_K, "Q4_K", 256, 144, dequantize_as<BlockQ4K, dequantize_row_q4_k>,
     quantize_as<BlockQ4K, quantize_row_q4_k_ref>, false, true, MI::Q8K, dot_q4_k_q8_k, &panel::kQ4K,
     quantize_imatrix_as<BlockQ4K, quantize_row_q4_k_imatrix>},
    {T::Q5_K, "Q5_K", 256, 176, dequantize_as<BlockQ5K, dequantize_row_q5_k>,
     quantize_as<BlockQ5K, quantize_row_q5_k_ref>, false, true, MI::Q8K, dot_q5_k_q8_k, &panel::kQ5K,
     quantize_imatrix_as<BlockQ5K, quantize_row_q5_k_imatrix>},
    {T::Q6_K, "Q6_K", 256, 210, dequantize_as<BlockQ6K, dequantize_row_q6_k>,
     quantize_as<BlockQ6K, quantize_row_q6_k_ref>, false, true, MI::Q8K, dot_q6_k_q8_k, &panel::kQ6K,
     quantize_imatrix_as<BlockQ6K, quantize_row_q6_k_imatrix>},
    {T::Q8_K, "Q8_K", 256, 292, dequantize_as<BlockQ8K, dequantize_row_q8_k>,
     quantize_as<BlockQ8K, quantize_row_q8_k_ref>, true, false, MI::None, nullptr, nullptr},
    geometry(T::IQ2_XXS, "IQ2_XXS", 256, 66),
    geometry(T::IQ2_XS, "IQ2_XS", 256, 74),
    geometry(T::IQ3_XXS, "IQ3_XXS", 256, 98),
    geometry(T::IQ1_S, "IQ1_S", 256, 50),
    geometry(T::IQ4_NL, "IQ4_NL", 32, 18),
    geometry(T::IQ3_S, "IQ3_S", 256, 110),
    geometry(T::IQ2_S, "IQ2_S", 256, 82),
    geometry(T::IQ4_XS, "IQ4_XS", 256, 136),
    geometry(T::I8, "I8", 1, 1),
    geometry(T::I16, "I16", 1, 2),
    geometry(T::I32, "I32", 1, 4),
    geometry(T::I64, "I64", 1, 8),
    geometry(T::F64, "F64", 1, 8),
    geometry(T::IQ1_M, "IQ1_M", 256, 56),
    {T::BF16, "BF16", 1, 2, dequantize_as<uint16_t, dequantize_row_bf16>,
     quantize_as<uint16_t, quantize_row_bf16_ref>, false, true, MI::Float, nullptr, &panel::kBF16},
    // The ternary types have no row kernel: both always run repacked into 2-bit panels.
    {T::TQ1_0, "TQ1_0", 256, 54, dequantize_as<BlockTQ1_0, dequantize_row_tq1_0>,
     quantize_as<BlockTQ1_0, quantize_row_tq1_0_ref>, false, true, MI::None, nullptr, &panel::kTernary},
    {T::TQ2_0, "TQ2_0", 256, 66, dequantize_as<BlockTQ2_0, dequantize_row_tq2_0>,
     quantize_as<BlockTQ2_0, quantize_row_tq2_0_ref>, false, true, MI::None, nullptr, &panel::kTernary},
    geometry(T::MXFP4, "MXFP4", 32, 17),
};

// Type id -> row, -1 for ids without one.
constexpr size_t kMaxId = 64;
constexpr std::array<int8_t, kMaxId> kIndex = [] {
  std::array<int8_t, kMaxId> index{};
  index.fill(-1);
  for (size_t i = 0; i < std::size(kTypes); ++i) index[size_t(kTypes[i].type)] = int8_t(i);
  return index;
}();

static_assert([] {  // rows in id order, each id once
  for (size_t i = 1; i < std::size(kTypes); ++i)
    if (uint32_t(kTypes[i - 1].type) >= uint32_t(kTypes[i].type)) return false;
  return true;
}());

}  // namespace

const TypeInfo* find_type_info(uint32_t id) {
  if (id >= kMaxId || kIndex[id] < 0) return nullptr;
  return &kTypes[kIndex[id]];
}

const TypeInfo& type_info(GgmlType t) {
  const TypeInfo* info = find_type_info(uint32_t(t));
  PG_ASSERT(info != nullptr && "type_info: unknown type id");
  return *info;
}

std::span<const TypeInfo> all_type_infos() { return kTypes; }

// ---- ggml_type.h -------------------------------------------------------------------------

std::optional<TypeTraits> type_traits(uint32_t id) {
  const TypeInfo* info = find_type_info(id);
  if (info == nullptr) return std::nullopt;
  return TypeTraits{info->name, info->block_elems, info->block_bytes};
}

std::string_view type_name(GgmlType t) {
  const TypeInfo* info = find_type_info(uint32_t(t));
  return info ? info->name : std::string_view("?");
}

std::optional<size_t> row_bytes(GgmlType t, uint64_t n) {
  const TypeInfo* info = find_type_info(uint32_t(t));
  if (info == nullptr || n % info->block_elems != 0) return std::nullopt;
  return static_cast<size_t>(n / info->block_elems * info->block_bytes);
}

}  // namespace peregrine
