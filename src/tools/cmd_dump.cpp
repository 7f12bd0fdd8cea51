// Debugging and test commands that dump raw float32 arrays:
//   peregrine logits  -m MODEL --tokens 1,2,3 -o OUT   -> [n_tokens, n_vocab] logits
//   peregrine dequant -m GGUF --tensor NAME -o OUT     -> the tensor as float32
#include <cstdio>
#include <fstream>
#include <sstream>

#include "engine/session.h"
#include "quant/dequantize.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace peregrine::tools {
namespace {

void write_floats(const std::string& path, const float* data, size_t n) {
  std::ofstream out(path, std::ios::binary);
  if (!out) fail(fmt::format("{}: cannot write", path));
  out.write(reinterpret_cast<const char*>(data), std::streamsize(n * sizeof(float)));
  if (!out) fail(fmt::format("{}: write failed", path));
}

std::vector<TokenId> parse_ids(const std::string& s) {
  std::vector<TokenId> ids;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try {
      size_t used = 0;
      long v = std::stol(item, &used);
      if (used != item.size() || v < 0 || v > INT32_MAX) throw std::out_of_range("");
      ids.push_back(TokenId(v));
    } catch (const std::exception&) {
      fail(fmt::format("--tokens: '{}' is not a token id", item));
    }
  }
  return ids;
}

}  // namespace

void register_logits(CLI::App& app) {
  struct Opts {
    ModelOptions model;
    std::string tokens, out;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("logits", "Write the logits of every position of a token list (float32)");
  cmd->add_option("--tokens", o->tokens, "Comma-separated token ids")->required();
  cmd->add_option("-o,--output", o->out, "Output file")->required();
  add_model_options(cmd, o->model);
  cmd->callback([o] {
    std::vector<TokenId> ids = parse_ids(o->tokens);
    if (ids.empty()) fail("--tokens is empty");
    auto session = open_session(o->model);
    std::vector<float> logits;
    check(session->eval(ids, true, logits));
    write_floats(o->out, logits.data(), logits.size());
  });
}

void register_dequant(CLI::App& app) {
  struct Opts {
    std::string model, tensor, out;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("dequant", "Write a tensor dequantized to float32");
  cmd->add_option("-m,--model", o->model, "GGUF file or cache name")->required();
  cmd->add_option("--tensor", o->tensor, "Tensor name")->required();
  cmd->add_option("-o,--output", o->out, "Output file")->required();
  cmd->callback([o] {
    auto f = check(gguf::File::open(check(resolve_model(o->model))));
    const gguf::TensorInfo* t = f->find_tensor(o->tensor);
    if (!t) fail(fmt::format("{}: no tensor '{}'", f->name(), o->tensor));
    if (!is_dequantizable_type(t->type))
      fail(fmt::format("tensor '{}' has type {}, which is not supported yet", t->name, type_name(t->type)));
    std::vector<float> out(t->n_elements);
    const size_t rb = *row_bytes(t->type, t->dims[0]);
    for (uint64_t r = 0; r < t->rows(); ++r)
      dequantize_row(t->type, t->data + r * rb, out.data() + r * t->dims[0], int64_t(t->dims[0]));
    write_floats(o->out, out.data(), out.size());
  });
}

}  // namespace peregrine::tools
