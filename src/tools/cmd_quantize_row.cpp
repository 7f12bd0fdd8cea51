// Hidden test command: the reference quantizer of a type applied to raw floats.
//   peregrine quantize-row --type Q4_K -i in.f32 -o out.bin
//   peregrine quantize-row --type Q4_K -i in.f32 -o out.bin --imatrix imp.f32 --n-per-row 512
// in.f32 holds float32 values (little-endian, a whole number of the type's blocks);
// out.bin receives the blocks exactly as a GGUF tensor stores them. Every reference
// quantizer works block by block, so the rows of a matrix can simply be concatenated.
// With --imatrix, in.f32 is a whole number of rows of --n-per-row values, each quantized
// with the importance-matrix quantizer (quantize_imatrix.h) and the importance vector
// imp.f32 (n-per-row float32 values, one per column): those use whole-row statistics, so
// the row length is part of the input.
//
// Why a command: tests/reference/test_quantize_ref.py and test_quantize_imatrix.py
// compare these bytes with ggml's own quantizer (a small C program built from the pinned
// ggml source) and gguf-py's. A subcommand lets those tests drive any type, length and
// value mix they generate, with no fixture files shared between the Python and C++ test
// suites; the C++ unit tests (tests/unit/test_quantize_ref.cpp) cover round trips and
// edge cases in-process. Hidden from --help: it is a test hook, not a user feature.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "quant/quantize_imatrix.h"
#include "quant/type_table.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace peregrine::tools {
namespace {

const TypeInfo& quantizable_type(const std::string& name) {
  std::string known;
  for (const TypeInfo& t : all_type_infos()) {
    if (t.quantize == nullptr) continue;
    if (t.name == name) return t;
    known += (known.empty() ? "" : ", ") + std::string(t.name);
  }
  fail(fmt::format("--type {}: no reference quantizer for that type (types: {})", name, known));
}

std::vector<float> read_floats(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(fmt::format("{}: cannot read", path));
  std::vector<char> bytes{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  if (bytes.size() % sizeof(float) != 0)
    fail(fmt::format("{}: {} bytes is not a whole number of float32 values", path, bytes.size()));
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), bytes.size());
  return v;
}

// The blocks of x quantized row by row with t's importance-matrix quantizer.
std::vector<uint8_t> quantize_with_imatrix(const TypeInfo& t, const std::vector<float>& x, const std::string& x_path,
                                           const std::string& imatrix_path, int64_t n_per_row) {
  const QuantizeImatrixFn quantize = t.quantize_imatrix;
  if (quantize == nullptr) fail(fmt::format("--type {}: no importance-matrix quantizer for that type", t.name));
  if (n_per_row <= 0 || n_per_row % t.block_elems != 0)
    fail(fmt::format("--n-per-row {}: not a positive multiple of {}'s {}-value blocks", n_per_row, t.name,
                     t.block_elems));
  const std::vector<float> importance = read_floats(imatrix_path);
  if (int64_t(importance.size()) != n_per_row)
    fail(fmt::format("{}: {} values, but --n-per-row is {} (one importance per column)", imatrix_path,
                     importance.size(), n_per_row));
  if (x.size() % uint64_t(n_per_row) != 0)
    fail(fmt::format("{}: {} values is not a whole number of rows of {}", x_path, x.size(), n_per_row));
  const int64_t rows = int64_t(x.size()) / n_per_row;
  const size_t row_bytes = size_t(n_per_row / t.block_elems) * t.block_bytes;
  std::vector<uint8_t> blocks(size_t(rows) * row_bytes);
  for (int64_t r = 0; r < rows; ++r)
    quantize(x.data() + r * n_per_row, blocks.data() + size_t(r) * row_bytes, n_per_row, importance.data());
  return blocks;
}

}  // namespace

void register_quantize_row(CLI::App& app) {
  struct Opts {
    std::string type, in, out, imatrix;
    int64_t n_per_row = 0;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("quantize-row", "Quantize raw float32 values with a type's reference quantizer");
  cmd->group("");  // hidden
  cmd->add_option("--type", o->type, "Type name, as ggml spells it (Q4_K, BF16, ...)")->required();
  cmd->add_option("-i,--input", o->in, "float32 input file")->required();
  cmd->add_option("-o,--output", o->out, "Output file (blocks)")->required();
  CLI::Option* imatrix =
      cmd->add_option("--imatrix", o->imatrix, "float32 importance per column: use the importance-matrix quantizer");
  CLI::Option* n_per_row = cmd->add_option("--n-per-row", o->n_per_row, "Row length for --imatrix");
  imatrix->needs(n_per_row);
  n_per_row->needs(imatrix);
  cmd->callback([o] {
    const TypeInfo& t = quantizable_type(o->type);
    const std::vector<float> x = read_floats(o->in);
    std::vector<uint8_t> blocks;
    if (!o->imatrix.empty()) {
      blocks = quantize_with_imatrix(t, x, o->in, o->imatrix, o->n_per_row);
    } else {
      if (x.size() % t.block_elems != 0)
        fail(fmt::format("{}: {} values is not a whole number of {}-value {} blocks", o->in, x.size(),
                         t.block_elems, t.name));
      blocks.resize(x.size() / t.block_elems * t.block_bytes);
      t.quantize(x.data(), blocks.data(), int64_t(x.size()));
    }
    std::ofstream out(o->out, std::ios::binary);
    if (!out) fail(fmt::format("{}: cannot write", o->out));
    out.write(reinterpret_cast<const char*>(blocks.data()), std::streamsize(blocks.size()));
    if (!out) fail(fmt::format("{}: write failed", o->out));
  });
}

}  // namespace peregrine::tools
