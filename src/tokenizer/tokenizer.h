// Byte-level BPE tokenizer as stored in GGUF (tokenizer.ggml.model == "gpt2"):
// vocab, merges, token types, special ids and the pre-tokenizer name.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "gguf/gguf.h"

namespace peregrine {

using TokenId = int32_t;

// tokenizer.ggml.token_type values.
enum class TokenType : int32_t {
  Undefined = 0, Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6,
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Build from GGUF metadata; a clear error for unsupported or inconsistent tokenizers.
  static Result<std::unique_ptr<Tokenizer>> from_gguf(const gguf::File& file);

  // Text to ids. With parse_special, control and user-defined tokens written
  // literally in the text (e.g. "<|im_start|>") become their single ids.
  // Does not add BOS; callers decide with add_bos().
  virtual std::vector<TokenId> encode(std::string_view text, bool parse_special = true) const = 0;

  // The raw bytes a token stands for (may be part of a UTF-8 sequence).
  // Control tokens decode to their text unless skipped by the caller.
  virtual std::string token_bytes(TokenId id) const = 0;

  // Concatenated bytes of all tokens (valid UTF-8 when the ids came from encode).
  std::string decode(std::span<const TokenId> ids) const;

  virtual int32_t n_vocab() const = 0;
  virtual std::string_view token_text(TokenId id) const = 0;  // as stored in the vocab
  virtual TokenType token_type(TokenId id) const = 0;

  TokenId bos() const { return bos_; }
  TokenId eos() const { return eos_; }
  TokenId eot() const { return eot_; }  // -1 when absent
  TokenId pad() const { return pad_; }  // -1 when absent
  bool add_bos() const { return add_bos_; }
  // End of generation: eos, eot, or a control token the chat template ends turns with.
  bool is_end_of_generation(TokenId id) const;
  // Looks up a token by its exact vocab text; -1 when absent.
  virtual TokenId find_token(std::string_view text) const = 0;

 protected:
  // Reads the special ids (bos, eos, eot, pad, unk), add_bos and the
  // end-of-generation set, checking each id against the vocab. Every tokenizer
  // model calls it once its vocab is in place (it uses the virtuals above).
  Status init_special_tokens(const gguf::File& file);

  TokenId bos_ = -1, eos_ = -1, eot_ = -1, pad_ = -1;
  bool add_bos_ = false;
  std::vector<TokenId> end_of_generation_;
};

// Decodes a stream of tokens into text, holding back bytes of an incomplete
// UTF-8 sequence until the token that completes it arrives.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok) : tok_(tok) {}
  std::string push(TokenId id);   // the text that became complete
  std::string flush();            // whatever is left (replaced by U+FFFD when invalid)

 private:
  const Tokenizer& tok_;
  std::string pending_;
};

}  // namespace peregrine
