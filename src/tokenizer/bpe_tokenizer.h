// The byte-level BPE tokenizer (tokenizer.ggml.model == "gpt2"): text is cut
// by the pre-tokenizer, each piece is spelled as single-byte tokens, and the
// ranked merges join them. A SentencePiece-style model would be a sibling
// class of Tokenizer next to this one.
#pragma once

#include <array>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/bpe_merges.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/pretokenizer_special.h"
#include "tokenizer/tokenizer.h"

namespace peregrine {

class BpeTokenizer final : public Tokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> create(const gguf::File& file);

  std::vector<TokenId> encode(std::string_view text, bool parse_special = true) const override;
  std::string token_bytes(TokenId id) const override;
  int32_t n_vocab() const override { return static_cast<int32_t>(text_.size()); }
  std::string_view token_text(TokenId id) const override;
  TokenType token_type(TokenId id) const override;
  TokenId find_token(std::string_view text) const override;

 private:
  BpeTokenizer() = default;
  Status load_vocab(const gguf::File& file);
  Status load_merges(const gguf::File& file);
  // Appends the ids of one pre-tokenized piece; `scratch` avoids an
  // allocation per piece.
  void encode_piece(std::string_view piece, std::vector<TokenId>& out,
                    std::vector<TokenId>& scratch) const;

  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };

  std::vector<std::string> text_;   // [n_vocab] as stored (byte-level spelling)
  std::vector<std::string> bytes_;  // [n_vocab] what each token decodes to
  std::vector<TokenType> type_;     // [n_vocab]
  std::unordered_map<std::string, TokenId, StringHash, std::equal_to<>> index_;
  // The token spelling each byte alone, or -1: some vocabs lack bytes that
  // never occur in their training text (SmolLM2 has no 0x04 or 0xF1), and
  // such bytes are dropped, as HF tokenizers does without an unk token.
  std::array<TokenId, 256> byte_id_{};
  BpeMerges merges_;
  std::unique_ptr<Pretokenizer> pre_;
  std::unique_ptr<SpecialTokenMatcher> special_;
};

}  // namespace peregrine
