// Pre-tokenization: cutting text into the pieces that BPE merges within (it
// never merges across a piece boundary). Chosen by tokenizer.ggml.pre.
#pragma once

#include <memory>
#include <string_view>
#include <vector>

#include "core/status.h"

namespace peregrine {

enum class PretokenizerKind {
  Gpt2,            // "gpt-2", "mpt", "olmo", ...: the GPT-2 regex
  DigitsIsolated,  // "smollm", "starcoder", "refact", ...: each digit alone, then the GPT-2 regex
  Llama3,          // "llama-bpe", "llama3", "dbrx", ...: Llama 3's regex, digits in runs of <= 3
  Qwen2,           // "qwen2", "stablelm2", ...: Llama 3's regex with each digit alone
};

class Pretokenizer {
 public:
  // Takes every tokenizer.ggml.pre name llama.cpp maps to one of the splits above (the
  // table in pretokenizer.cpp); any other name is the one-line error "unsupported tokenizer
  // pre-tokenizer 'X' (tokenizer.ggml.pre); supported: gpt-2, ...".
  static Result<std::unique_ptr<Pretokenizer>> create(std::string_view pre_name);
  ~Pretokenizer();
  Pretokenizer(const Pretokenizer&) = delete;
  Pretokenizer& operator=(const Pretokenizer&) = delete;

  PretokenizerKind kind() const { return kind_; }
  // What llama.cpp ties to some names besides the split (Llama 3's: "llama-bpe", "llama3", ...):
  // a piece that is itself a token is taken whole, before any merge (HF BPE's ignore_merges),
  // and BOS is added unless tokenizer.ggml.add_bos_token says otherwise.
  bool ignore_merges() const { return ignore_merges_; }
  bool add_bos_by_default() const { return add_bos_by_default_; }

  // Appends the pieces of `text` to `out` (views into text; together they
  // cover every byte exactly once, in order). Text need not be valid UTF-8:
  // valid runs go through the regex and each invalid sequence becomes a piece
  // of its own, so arbitrary bytes still round-trip. Thread-safe.
  void split(std::string_view text, std::vector<std::string_view>& out) const;

 private:
  struct Regex;
  Pretokenizer(PretokenizerKind kind, bool ignore_merges, bool add_bos_by_default,
               std::unique_ptr<Regex> re);
  void split_valid(std::string_view text, std::vector<std::string_view>& out) const;

  PretokenizerKind kind_;
  bool ignore_merges_, add_bos_by_default_;
  std::unique_ptr<Regex> re_;
};

}  // namespace peregrine
