// Importance matrices: per weight matrix, the sum over calibration tokens of each input
// column's squared activation, and how many tokens were summed. `peregrine imatrix` writes
// them, `peregrine quantize --imatrix` reads them; both of llama.cpp's file formats are
// read and written, so files move between the two tools in either direction:
//   GGUF (llama-imatrix's default): general.type = "imatrix", imatrix.datasets,
//     imatrix.chunk_count, imatrix.chunk_size, and per matrix two F32 tensors
//     "<name>.in_sum2" [n_cols, n_mat] and "<name>.counts" [1, n_mat] (a trailing
//     dimension of 1 is dropped, as ggml writes them: [n_cols] and [1] for a dense matrix);
//   legacy .dat (llama-imatrix --output-format dat): int32 entry count, then per entry the
//     name (int32 length, bytes), int32 ncall, int32 value count and the float values
//     (sum / count) * ncall, then int32 chunk count and the dataset name (int32 length,
//     bytes). ncall is the count in chunks, rounded up; a .dat keeps only the means.
#pragma once

#include <cstddef>
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
  std::vector<ImatrixEntry> entries;  // sorted by name (as load_imatrix returns them)
  std::vector<std::string> datasets;  // calibration files it was computed from
  uint32_t chunk_count = 0;           // chunks (windows) of calibration text
  // Tokens per chunk; 0 when unknown (a .dat file). Then each entry holds what the .dat
  // has: sums are the means times ncall and the count is ncall (1 where ncall <= 0, so
  // that importance() gives the stored values, as llama-quantize uses them); the ratio,
  // all a quantizer needs, is exact, but the token counts are not known.
  uint32_t chunk_size = 0;

  const ImatrixEntry* find(std::string_view name) const;
};

enum class ImatrixFormat { Gguf, Dat };

// Reads either format (told apart by content, not by name: GGUF by its magic). A hostile
// file gets a one-line error naming the file and the problem: counts, lengths and sizes
// are checked against the file before anything is allocated; names must be non-empty,
// unique and free of control bytes; sums and counts finite and not negative.
Result<Imatrix> load_imatrix(const std::string& path);
// The same from bytes in memory (tests, fuzzing); `name` prefixes the errors.
Result<Imatrix> parse_imatrix(const uint8_t* data, size_t size, const std::string& name);

// Writes whole or not at all (a temporary file renamed into place). Entries are written in
// name order. Dat, as llama-imatrix writes it: ncall = ceil(max count / chunk_size) (the
// count itself when chunk_size is 0), a matrix no token reached stored as 1s, an entry no
// token reached at all left out, and only the last dataset kept.
Status save_imatrix(const Imatrix& m, const std::string& path, ImatrixFormat format);

}  // namespace peregrine
