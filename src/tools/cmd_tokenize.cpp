// peregrine tokenize: text -> token ids with the model's own tokenizer.
//   -p TEXT       ids of TEXT, space-separated, on one line
//   --jsonl       stdin: one JSON string per line; stdout: one JSON array of ids
//                 per line (so a reference test tokenizes thousands of lines in
//                 one process)
//   --pieces      one line per token: id, then the bytes it stands for
//   --no-special  "<|im_start|>" in the text is plain text, not a control token
#include <cstdio>
#include <iostream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "gguf/gguf.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode_utf8.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace peregrine::tools {
namespace {

struct TokenizeOptions {
  std::string model = kDefaultModel;
  std::string prompt;
  bool jsonl = false;
  bool no_special = false;
  bool pieces = false;
};

// A token's bytes as one readable, quoted field: valid UTF-8 as it is, control
// characters and bytes of partial or invalid sequences escaped, so a token that
// holds half a character stays visible.
std::string quote_piece(const std::string& bytes) {
  std::string out = "'";
  size_t i = 0;
  while (i < bytes.size()) {
    const auto b = static_cast<unsigned char>(bytes[i]);
    const utf8::Seq q = utf8::next(bytes, i);
    if (b == '\\' || b == '\'') {
      out += '\\';
      out += static_cast<char>(b);
    } else if (b == '\n') {
      out += "\\n";
    } else if (b == '\t') {
      out += "\\t";
    } else if (b < 0x20 || b == 0x7F || q.kind != utf8::Seq::Valid) {
      out += fmt::format("\\x{:02x}", b);
    } else {
      out.append(bytes, i, q.len);
      i += q.len;
      continue;
    }
    ++i;
  }
  return out + "'";
}

int run_tokenize(const TokenizeOptions& o) {
  const std::string path = check(resolve_model(o.model));
  const std::unique_ptr<gguf::File> file = check(gguf::File::open(path));
  const std::unique_ptr<Tokenizer> tok = check(Tokenizer::from_gguf(*file));
  const bool special = !o.no_special;

  if (!o.jsonl) {
    const std::vector<TokenId> ids = tok->encode(o.prompt, special);
    if (o.pieces) {
      for (TokenId id : ids) std::printf("%d\t%s\n", id, quote_piece(tok->token_bytes(id)).c_str());
    } else {
      std::string line;
      for (size_t k = 0; k < ids.size(); ++k) line += (k ? " " : "") + std::to_string(ids[k]);
      std::printf("%s\n", line.c_str());
    }
    return 0;
  }

  std::ios::sync_with_stdio(false);
  std::string line, out;
  for (size_t line_no = 1; std::getline(std::cin, line); ++line_no) {
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_string()) fail(fmt::format("stdin line {}: expected a JSON string", line_no));
    out = nlohmann::json(tok->encode(j.get_ref<const std::string&>(), special)).dump();
    out += '\n';
    std::fwrite(out.data(), 1, out.size(), stdout);
  }
  return 0;
}

}  // namespace

void register_tokenize(CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  CLI::App* cmd = app.add_subcommand("tokenize", "Print the token ids of a text");
  cmd->add_option("-m,--model", o->model, "Model: a cache name (smollm2-135m) or a GGUF path")
      ->capture_default_str();
  auto* prompt = cmd->add_option("-p,--prompt", o->prompt, "Text to tokenize");
  auto* jsonl = cmd->add_flag("--jsonl", o->jsonl,
                              "Read JSON strings from stdin, one per line; write id arrays");
  prompt->excludes(jsonl);
  cmd->add_flag("--no-special", o->no_special, "Treat control-token text as plain text");
  cmd->add_flag("--pieces", o->pieces, "Print each id with the bytes it stands for");
  cmd->callback([o, prompt, jsonl] {
    if (prompt->count() == 0 && jsonl->count() == 0) fail("tokenize needs -p TEXT or --jsonl");
    if (run_tokenize(*o) != 0) throw CLI::RuntimeError(1);
  });
}

}  // namespace peregrine::tools
