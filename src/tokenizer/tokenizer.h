// The tokenizer interface, built from GGUF metadata (tokenizer.ggml.*). Two
// models implement it: byte-level BPE (tokenizer.ggml.model == "gpt2",
// bpe_tokenizer.h) and SentencePiece-style BPE by score ("llama",
// spm_tokenizer.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
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
  Tokenizer(const Tokenizer&) = delete;  // index_ views the strings of text_
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Build from GGUF metadata; a clear error for unsupported or inconsistent tokenizers.
  static Result<std::unique_ptr<Tokenizer>> from_gguf(const gguf::File& file);

  // The longest text try_encode() accepts. Encoding needs memory linear in the
  // text (up to ~40 bytes per input byte for SentencePiece's merge loop, which
  // sees a whole stretch between special tokens at once), so outside input is
  // bounded here rather than trusted.
  static constexpr size_t kMaxEncodeBytes = size_t{16} << 20;

  // [begin, end) bytes of a text.
  using ByteRange = std::pair<size_t, size_t>;

  // Text to ids. With parse_special, control and user-defined tokens written
  // literally in the text (e.g. "<|im_start|>") become their single ids.
  // Does not add BOS; callers decide with add_bos(). Never fails; text longer
  // than kMaxEncodeBytes may be encoded in independent windows of that size.
  std::vector<TokenId> encode(std::string_view text, bool parse_special = true) const;
  // encode(), or a one-line error when the text is longer than kMaxEncodeBytes.
  Result<std::vector<TokenId>> try_encode(std::string_view text, bool parse_special = true) const;
  // try_encode(text, true), except that a special token is recognised only
  // where it lies wholly outside every `no_special` range: one that starts,
  // ends or lies inside such a range is plain text, as with parse_special
  // false (SentencePiece's user-defined pieces, matched in any text, stay
  // matched). Plain text is still cut only at recognised tokens, so text whose
  // guarded ranges write no special token encodes exactly as try_encode(text,
  // true). For chat prompts, where the ranges are the messages' text
  // (encode_chat in chat_template.h). Ranges may overlap and come in any order;
  // an error if one is reversed or runs past the text.
  Result<std::vector<TokenId>> try_encode_guarded(std::string_view text,
                                                  std::span<const ByteRange> no_special) const;

  // The raw bytes a token stands for (may be part of a UTF-8 sequence); empty
  // for an id outside the vocab. Control tokens decode to their text unless
  // skipped by the caller.
  std::string token_bytes(TokenId id) const;

  // Concatenated bytes of all tokens (valid UTF-8 when the ids came from encode).
  std::string decode(std::span<const TokenId> ids) const;

  int32_t n_vocab() const { return static_cast<int32_t>(text_.size()); }
  std::string_view token_text(TokenId id) const;  // as stored in the vocab
  TokenType token_type(TokenId id) const;         // Undefined outside the vocab

  TokenId bos() const { return bos_; }
  TokenId eos() const { return eos_; }
  TokenId eot() const { return eot_; }  // -1 when absent
  TokenId pad() const { return pad_; }  // -1 when absent
  TokenId unk() const { return unk_; }  // -1 when absent
  bool add_bos() const { return add_bos_; }
  // End of generation: eos, eot, or a control token the chat template ends turns with.
  bool is_end_of_generation(TokenId id) const;
  // Looks up a token by its exact vocab text; -1 when absent.
  TokenId find_token(std::string_view text) const;

 protected:
  Tokenizer() = default;

  // The one encoder each model implements: special tokens are recognised
  // outside the `no_special` ranges (sorted, disjoint, non-empty, within text);
  // parse_special false is the whole text guarded.
  virtual std::vector<TokenId> encode_guarded(std::string_view text,
                                              std::span<const ByteRange> no_special) const = 0;

  // Reads tokenizer.ggml.tokens and tokenizer.ggml.token_type (all Normal when
  // absent) into text_ and type_, checking their sizes, and indexes the texts.
  // Each model then fills bytes_ its own way.
  Status load_tokens(const gguf::File& file);

  // Reads the special ids (bos, eos, eot, pad, unk), add_bos and the
  // end-of-generation set, checking each id against the vocab. Every tokenizer
  // model calls it once its vocab is in place (it looks tokens up by name).
  Status init_special_tokens(const gguf::File& file);

  std::vector<std::string> text_;   // [n_vocab] as stored
  std::vector<std::string> bytes_;  // [n_vocab] what each token decodes to
  std::vector<TokenType> type_;     // [n_vocab]
  // Views of text_ (never resized after load_tokens); like llama.cpp and a
  // Python dict built from the list, a later duplicate wins.
  std::unordered_map<std::string_view, TokenId> index_;

  TokenId bos_ = -1, eos_ = -1, eot_ = -1, pad_ = -1, unk_ = -1;
  bool add_bos_ = false;
  std::vector<TokenId> end_of_generation_;
};

// Decodes a stream of tokens into text, holding back bytes of an incomplete
// UTF-8 sequence until the token that completes it arrives.
// Without a tokenizer it takes the tokens' bytes directly (push_bytes).
class StreamDecoder {
 public:
  StreamDecoder() = default;
  explicit StreamDecoder(const Tokenizer& tok) : tok_(&tok) {}
  std::string push(TokenId id) { return push_bytes(tok_ ? tok_->token_bytes(id) : std::string()); }
  std::string push_bytes(std::string_view bytes);  // the text that became complete
  std::string flush();            // whatever is left (replaced by U+FFFD when invalid)

 private:
  const Tokenizer* tok_ = nullptr;
  std::string pending_;
};

}  // namespace peregrine
