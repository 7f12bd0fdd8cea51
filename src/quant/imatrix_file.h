// Importance matrices: per weight matrix, the sum over calibration tokens of each input
// column's squared activation, and how many tokens were summed. `peregrine imatrix` writes
// them, `peregrine quantize --imatrix` reads them; both of llama.cpp's file formats are
// read and written, so files move between the two tools in either direction:
//   GGUF (llama-imatrix's default): general.type = "imatrix", imatrix.datasets,
//     imatrix.chunk_count, imatrix.chunk_size, and per matrix two F32 tensors
//     "<name>.in_sum2" [n_cols, n_mat] and "<name>.counts" [1, n_mat];
//   legacy .dat: int32 entry count, then per entry the name, ncall and the values
//     (sum / count) * ncall, then the chunk count and the dataset name.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace peregrine {

struct ImatrixEntry {
  std::string name;          // the weight's tensor name: "blk.0.attn_q.weight"
  int64_t n_cols = 0;        // the matrix's input width (its row length)
  int64_t n_mat = 1;         // matrices stacked in the tensor (experts), 1 for dense
  std::vector<float> sums;   // [n_mat][n_cols]: sum over tokens of x[col]^2
  std::vector<float> counts; // [n_mat]: tokens summed per matrix

  // The per-column weights a quantizer is given, [n_mat][n_cols], as llama-quantize
  // computes them: sums / count, and 1 for a matrix no token reached.
  std::vector<float> importance() const;
};

struct Imatrix {
  std::vector<ImatrixEntry> entries;  // sorted by name
  std::vector<std::string> datasets;  // calibration files it was computed from
  uint32_t chunk_count = 0;           // chunks (windows) of calibration text
  uint32_t chunk_size = 0;            // tokens per chunk

  const ImatrixEntry* find(std::string_view name) const;
};

enum class ImatrixFormat { Gguf, Dat };

// Reads either format (told apart by content, not by name). A hostile file gets a
// one-line error naming the problem: counts, lengths and sizes are bounds-checked.
Result<Imatrix> load_imatrix(const std::string& path);
// Writes whole or not at all (a temporary file renamed into place).
Status save_imatrix(const Imatrix& m, const std::string& path, ImatrixFormat format);

}  // namespace peregrine
