// A whole GGUF model to another precision: every tensor's type chosen by a mix
// (quant_mix.h), decoded from any type the table can decode, re-encoded with ggml's
// reference quantizers -- or the importance-weighted ones when an importance matrix covers
// the tensor -- and written by the GGUF writer, whole or not at all.
//
// The output is laid out as llama-quantize lays out its files: the input's metadata with
// general.quantization_version and general.file_type re-set (so moved to the end), the
// imatrix keys after them when one is used, and the tensors in llama's order (by layer,
// then name). Without an importance matrix our file is byte-identical to llama-quantize's
// for the same input and mix (tests/reference/test_quantize_file.py checks it).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "quant/imatrix_file.h"
#include "quant/quant_mix.h"

namespace peregrine {

struct QuantizeModelOptions {
  std::string input, output;
  const QuantMix* mix = nullptr;
  MixOptions mix_options;
  const Imatrix* imatrix = nullptr;  // optional
  std::string imatrix_path;          // recorded in the output's metadata
  ThreadPool* pool = nullptr;        // required
  bool dry_run = false;              // choose types and sizes, write nothing
  // Called after each tensor: (tensors done, of total, bytes of input read so far, of total).
  std::function<void(size_t, size_t, uint64_t, uint64_t)> progress;
};

struct QuantizedTensor {
  std::string name;
  GgmlType from, to;
  uint64_t bytes_in = 0, bytes_out = 0;
  bool fell_back = false;    // the mix's type did not fit the rows
  bool used_imatrix = false;
};

struct QuantizeModelReport {
  std::vector<QuantizedTensor> tensors;  // in output order
  uint64_t n_elements = 0;
  uint64_t bytes_in = 0, bytes_out = 0;  // tensor data only
  uint64_t file_bytes_in = 0, file_bytes_out = 0;
  size_t n_fallback = 0;
  size_t n_imatrix = 0;  // tensors quantized with importance weights
  double seconds = 0;
};

Result<QuantizeModelReport> quantize_model(const QuantizeModelOptions& o);

}  // namespace peregrine
