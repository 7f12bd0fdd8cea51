// Weights repacked at load time for the panel kernels.
//
// A quantized matrix [rows, cols] becomes panels of kPanelRows rows. Within a panel,
// block column b (32 weights per row) is stored as one PanelBlock:
//
//   d[16]   fp16 scales of the 16 rows                        (32 bytes)
//   m[16]   fp16 offsets of the 16 rows (Q4_1 only)           (32 bytes)
//   qs      the quants, four bytes of a row at a time:
//           Q4: 4 groups g x 16 rows x 4 bytes; row r's bytes 4g..4g+3 of its GGUF block
//               (low nibbles = weights 4g..4g+3, high nibbles = weights 16+4g..16+4g+3)
//           Q8: 8 groups g x 16 rows x 4 bytes; row r's weights 4g..4g+3
//
// so one 64-byte load holds the same four weight positions for all 16 rows, and a
// vpdpbusd with four broadcast activation bytes gives 16 row sums at once: no
// horizontal reductions and one scale conversion per 16 rows. The layout has the
// same bytes per weight as GGUF. Rows past the matrix end are zero (scale 0).
//
// Ternary types (TQ1_0, TQ2_0) widen into one 2-bit layout with a scale per row and
// 256 columns (quant/panel_format.h, panel::kTernary): 2.0625 bits per weight, so TQ1_0
// weights take 22% more memory packed than in the file (1.6875).
//
// Float types (F32, F16, BF16) use the same panels with 32 columns per block and no
// scales: element [k][r] (k < 32, r < 16), so one load gives column k of all 16 rows
// and an FMA with the broadcast activation x[k] updates 16 row sums.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "core/status.h"
#include "quant/blocks.h"
#include "quant/ggml_type.h"
#include "quant/panel_format.h"

namespace peregrine {

// The panel format of a weight type (TypeInfo::panel in quant/type_table.h): Q4_0, Q4_1,
// Q8_0, the K-quants, F32, F16, BF16; Q5_0 is packed as Q8_0 (its values q - 16 widened
// to int8, exact), TQ1_0 and TQ2_0 into the ternary panels. nullptr for others. Byte
// offsets and sizes are in quant/panel_format.h.
const PanelFormat* panel_format(GgmlType type);

// A packed matrix: n_panels panels of nb PanelBlocks each, 64-byte aligned.
struct PackedMatrix {
  const PanelFormat* format = nullptr;
  int64_t rows = 0, cols = 0, nb = 0, n_panels = 0;
  size_t panel_bytes = 0;
  std::unique_ptr<uint8_t, void (*)(void*)> data{nullptr, nullptr};

  const uint8_t* panel(int64_t p) const { return data.get() + size_t(p) * panel_bytes; }
  size_t bytes() const { return panel_bytes * size_t(n_panels); }
};

// Repacks rows of GGUF blocks (row r at src + r * row_bytes). The type must have a
// panel format and cols must be a multiple of 32.
Result<PackedMatrix> pack_matrix(GgmlType type, const uint8_t* src, int64_t rows, int64_t cols,
                                 size_t row_bytes);

}  // namespace peregrine
