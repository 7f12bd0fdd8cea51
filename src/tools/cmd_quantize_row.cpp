// Hidden test command: the reference quantizer of a type applied to raw floats.
//   peregrine quantize-row --type Q4_K -i in.f32 -o out.bin
// in.f32 holds float32 values (little-endian, a whole number of the type's blocks);
// out.bin receives the blocks exactly as a GGUF tensor stores them. Every reference
// quantizer works block by block, so the rows of a matrix can simply be concatenated.
//
// Why a command: tests/reference/test_quantize_ref.py compares these bytes with ggml's
// own quantizer (a small C program built from the pinned ggml source) and gguf-py's.
// A subcommand lets that test drive any type, length and value mix it generates, with
// no fixture files shared between the Python and C++ test suites; the C++ unit tests
// (tests/unit/test_quantize_ref.cpp) cover round trips and edge cases in-process.
// Hidden from --help: it is a test hook, not a user feature.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

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

}  // namespace

void register_quantize_row(CLI::App& app) {
  struct Opts {
    std::string type, in, out;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("quantize-row", "Quantize raw float32 values with a type's reference quantizer");
  cmd->group("");  // hidden
  cmd->add_option("--type", o->type, "Type name, as ggml spells it (Q4_K, BF16, ...)")->required();
  cmd->add_option("-i,--input", o->in, "float32 input file")->required();
  cmd->add_option("-o,--output", o->out, "Output file (blocks)")->required();
  cmd->callback([o] {
    const TypeInfo& t = quantizable_type(o->type);
    const std::vector<float> x = read_floats(o->in);
    if (x.size() % t.block_elems != 0)
      fail(fmt::format("{}: {} values is not a whole number of {}-value {} blocks", o->in, x.size(),
                       t.block_elems, t.name));
    std::vector<uint8_t> blocks(x.size() / t.block_elems * t.block_bytes);
    t.quantize(x.data(), blocks.data(), int64_t(x.size()));
    std::ofstream out(o->out, std::ios::binary);
    if (!out) fail(fmt::format("{}: cannot write", o->out));
    out.write(reinterpret_cast<const char*>(blocks.data()), std::streamsize(blocks.size()));
    if (!out) fail(fmt::format("{}: write failed", o->out));
  });
}

}  // namespace peregrine::tools
