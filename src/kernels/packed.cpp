#include "kernels/packed.h"

#include <cstdlib>
#include <cstring>

namespace peregrine {
namespace {

constexpr size_t kScales = kPanelRows * sizeof(uint16_t);  // 32 bytes of fp16 per panel block

constexpr PanelFormat kQ4_0{GgmlType::Q4_0, kScales, kScales, kScales + kPanelRows * kQK / 2, false, 0};
constexpr PanelFormat kQ4_1{GgmlType::Q4_1, kScales, 2 * kScales, 2 * kScales + kPanelRows * kQK / 2, false, 0};
constexpr PanelFormat kQ8_0{GgmlType::Q8_0, kScales, kScales, kScales + kPanelRows * kQK, false, 0};
constexpr PanelFormat kF32{GgmlType::F32, 0, 0, kPanelRows * kQK * 4, true, 4};
constexpr PanelFormat kF16{GgmlType::F16, 0, 0, kPanelRows * kQK * 2, true, 2};
constexpr PanelFormat kBF16{GgmlType::BF16, 0, 0, kPanelRows * kQK * 2, true, 2};

// The scale, offset and quant bytes of one GGUF block.
struct BlockView {
  uint16_t d, m;
  const uint8_t* qs;
  int qs_bytes;
};

BlockView view_block(GgmlType t, const uint8_t* row, int64_t b) {
  switch (t) {
    case GgmlType::Q4_0: {
      auto* blk = reinterpret_cast<const BlockQ4_0*>(row) + b;
      return {blk->d, 0, blk->qs, kQK / 2};
    }
    case GgmlType::Q4_1: {
      auto* blk = reinterpret_cast<const BlockQ4_1*>(row) + b;
      return {blk->d, blk->m, blk->qs, kQK / 2};
    }
    case GgmlType::Q5_0: {  // widened into `widened` (one block at a time)
      auto* blk = reinterpret_cast<const BlockQ5_0*>(row) + b;
      thread_local int8_t widened[kQK];
      unpack_q5_0(*blk, widened);
      return {blk->d, 0, reinterpret_cast<const uint8_t*>(widened), kQK};
    }
    default: {
      auto* blk = reinterpret_cast<const BlockQ8_0*>(row) + b;
      return {blk->d, 0, reinterpret_cast<const uint8_t*>(blk->qs), kQK};
    }
  }
}

}  // namespace

const PanelFormat* panel_format(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0: return &kQ4_0;
    case GgmlType::Q4_1: return &kQ4_1;
    case GgmlType::Q8_0: return &kQ8_0;
    case GgmlType::Q5_0: return &kQ8_0;  // unpacked to int8 q - 16: exact, 8 bits per weight
    case GgmlType::F32: return &kF32;
    case GgmlType::F16: return &kF16;
    case GgmlType::BF16: return &kBF16;
    default: return nullptr;
  }
}

Result<PackedMatrix> pack_matrix(GgmlType type, const uint8_t* src, int64_t rows, int64_t cols,
                                 size_t row_bytes) {
  const PanelFormat* f = panel_format(type);
  if (f == nullptr) return make_error("no panel layout for type {}", type_name(type));
  if (rows <= 0 || cols <= 0 || cols % kQK != 0)
    return make_error("cannot pack a [{}, {}] matrix: columns must be a positive multiple of {}",
                      rows, cols, kQK);
  PackedMatrix pm;
  pm.format = f;
  pm.rows = rows;
  pm.cols = cols;
  pm.nb = cols / kQK;
  pm.n_panels = (rows + kPanelRows - 1) / kPanelRows;
  pm.panel_bytes = f->block_bytes * size_t(pm.nb);
  const size_t bytes = pm.bytes();
  void* mem = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (mem == nullptr) return make_error("out of memory packing {} bytes of weights", bytes);
  pm.data = {static_cast<uint8_t*>(mem), std::free};
  std::memset(mem, 0, bytes);  // padding rows: zero scales and quants

  for (int64_t p = 0; p < pm.n_panels; ++p) {
    for (int64_t b = 0; b < pm.nb; ++b) {
      uint8_t* out = pm.data.get() + size_t(p) * pm.panel_bytes + size_t(b) * f->block_bytes;
      if (f->is_float) {  // element [k][r]
        const size_t e = f->elem_bytes;
        for (int r = 0; r < kPanelRows && p * kPanelRows + r < rows; ++r) {
          const uint8_t* src_row = src + size_t(p * kPanelRows + r) * row_bytes + size_t(b) * kQK * e;
          for (int k = 0; k < kQK; ++k) std::memcpy(out + (size_t(k) * kPanelRows + r) * e, src_row + k * e, e);
        }
        continue;
      }
      auto* d = reinterpret_cast<uint16_t*>(out);
      auto* m = reinterpret_cast<uint16_t*>(out + f->m_offset);
      uint8_t* qs = out + f->qs_offset;
      for (int r = 0; r < kPanelRows; ++r) {
        const int64_t row = p * kPanelRows + r;
        if (row >= rows) break;
        const BlockView v = view_block(type, src + size_t(row) * row_bytes, b);
        d[r] = v.d;
        if (type == GgmlType::Q4_1) m[r] = v.m;
        for (int g = 0; g < v.qs_bytes / 4; ++g)
          std::memcpy(qs + (g * kPanelRows + r) * 4, v.qs + g * 4, 4);
      }
    }
  }
  return pm;
}

}  // namespace peregrine
