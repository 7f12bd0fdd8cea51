// Geometry of the panel blocks that weights are repacked into at load time (the layout
// itself, and the packing, are described in kernels/packed.h). Plain data, so that the
// type table (quant/type_table.h) can name each weight type's panel format without the
// quant layer depending on the kernels.
#pragma once

#include <cstddef>

#include "quant/blocks.h"
#include "quant/ggml_type.h"
#include "quant/kquants.h"

namespace peregrine {

inline constexpr int kPanelRows = 16;

// Bytes of one PanelBlock (16 rows x one 32-value block column), and byte offsets of its parts.
struct PanelFormat {
  GgmlType type;      // the layout's name: the kernel table entry that reads it (Q5_0 uses Q8_0's)
  size_t m_offset;    // offsets start (Q4_1), else == d size
  size_t qs_offset;   // quants start
  size_t block_bytes;
  bool is_float;      // F32/F16/BF16: float activations, no scales
  size_t elem_bytes;  // float types: bytes per element
};

namespace panel {

inline constexpr size_t kScales = kPanelRows * sizeof(uint16_t);  // 32 bytes of fp16 per panel block
inline constexpr size_t kScales32 = kPanelRows * sizeof(float);   // 64 bytes of f32

inline constexpr PanelFormat kQ4_0{GgmlType::Q4_0, kScales, kScales, kScales + kPanelRows * kQK / 2, false, 0};
inline constexpr PanelFormat kQ4_1{GgmlType::Q4_1, kScales, 2 * kScales, 2 * kScales + kPanelRows * kQK / 2,
                                   false, 0};
// Also Q5_0's: its values q - 16 widened to int8 are exact at 8 bits per weight.
inline constexpr PanelFormat kQ8_0{GgmlType::Q8_0, kScales, kScales, kScales + kPanelRows * kQK, false, 0};
inline constexpr PanelFormat kF32{GgmlType::F32, 0, 0, kPanelRows * kQK * 4, true, 4};
inline constexpr PanelFormat kF16{GgmlType::F16, 0, 0, kPanelRows * kQK * 2, true, 2};
inline constexpr PanelFormat kBF16{GgmlType::BF16, 0, 0, kPanelRows * kQK * 2, true, 2};
// K-quants, one 32-value sub-block per panel block, effective scales in f32 (exact:
// an fp16 times a 6- or 8-bit integer):
//   Q4_K: d[16] = d * sc, m[16] = -dmin * m (f32), then nibbles as Q4_1
//   Q5_K: as Q4_K, the quants q (0..31) as bytes laid out as Q8_0's
//   Q3_K: as Q6_K with q + 4 (0..7)
//   Q2_K: as Q6_K with q (0..3), then also m[16] per half (-dmin * m, f32) after the two d
//   Q6_K: d[16] for values 0-15 and d[16] for 16-31 (= d * scale of each 16), then
//         q + 32 (0..63) as bytes, laid out as Q8_0's
inline constexpr PanelFormat kQ4K{GgmlType::Q4_K, kScales32, 2 * kScales32, 2 * kScales32 + kPanelRows * kQK / 2,
                                  false, 0};
inline constexpr PanelFormat kQ5K{GgmlType::Q5_K, kScales32, 2 * kScales32, 2 * kScales32 + kPanelRows * kQK,
                                  false, 0};
inline constexpr PanelFormat kQ3K{GgmlType::Q3_K, kScales32, 2 * kScales32, 2 * kScales32 + kPanelRows * kQK,
                                  false, 0};
inline constexpr PanelFormat kQ2K{GgmlType::Q2_K, kScales32, 4 * kScales32, 4 * kScales32 + kPanelRows * kQK,
                                  false, 0};
inline constexpr PanelFormat kQ6K{GgmlType::Q6_K, kScales32, 2 * kScales32, 2 * kScales32 + kPanelRows * kQK,
                                  false, 0};

// Ternary (TQ1_0 and TQ2_0 both): 2-bit codes q (0..3, value d * (q - 1)) and one fp16
// scale per row and 256-value super-block, the block's own d. Not a run of PanelBlocks:
// a panel of nb / 8 super-block columns holds all its codes first, kTernaryCodes bytes
// per column (8 sub-blocks of 32 values x 2 groups x 16 rows x 4 bytes; bits 2k of byte j
// of a row in group g of sub-block s hold value 32 s + 16 g + 4 k + j), then the scales,
// kScales bytes per column. Codes first keeps every 64-byte load of them aligned as the
// panel is (64 bytes when nb / 8 is even, else 32), and the scale is stored once per 256
// values: 1056 bytes per 16 x 256 weights, 2.0625 bits per weight -- TQ2_0's own size,
// and 22% more than TQ1_0's 1.6875: its base-3 bytes would need a multiply-and-shift
// chain per trit in the inner loop, so they are widened to 2 bits once, at load.
// block_bytes is the average per 32 columns, so panel bytes = block_bytes * nb still;
// m_offset and qs_offset are unused.
inline constexpr size_t kTernaryCodes = size_t(kPanelRows) * kQK_K / 4;  // 1024
inline constexpr PanelFormat kTernary{GgmlType::TQ2_0, kScales, 0, (kTernaryCodes + kScales) / (kQK_K / kQK),
                                      false, 0};

}  // namespace panel
}  // namespace peregrine
