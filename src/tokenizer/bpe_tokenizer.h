// The byte-level BPE tokenizer (tokenizer.ggml.model == "gpt2"): text is cut
// by the pre-tokenizer, each piece is spelled as single-byte tokens, and the
// ranked merges join them. A SentencePiece-style model would be a sibling
// class of Tokenizer next to this one.
#pragma once

#include <array>
#include <memory>
#include <string>
#include <vector>

#include "tokenizer/bpe_merges.h"
#include "tokenizer/pretokenizer.h"
#include "tokenizer/pretokenizer_special.h"
#include "tokenizer/tokenizer.h"

namespace peregrine {

class BpeTokenizer final : public Tokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> create(const gguf::File& file);

 private:
  BpeTokenizer() = default;
  std::vector<TokenId> encode_guarded(std::string_view text,
                                      std::span<const ByteRange> no_special) const override;
  Status load_vocab(const gguf::File& file);
  Status load_merges(const gguf::File& file);
  // Appends the ids of one pre-tokenized piece; `scratch` avoids an
  // allocation per piece.
  void encode_piece(std::string_view piece, std::vector<TokenId>& out,
                    std::vector<TokenId>& scratch) const;

  // The token spelling each byte alone, or -1: some vocabs lack bytes that
  // never occur in their training text (SmolLM2 has no 0x04 or 0xF1), and
  // such bytes are dropped, as HF tokenizers does without an unk token.
  std::array<TokenId, 256> byte_id_{};
  BpeMerges merges_;
  std::unique_ptr<Pretokenizer> pre_;
  std::unique_ptr<SpecialTokenMatcher> special_;
};

}  // namespace peregrine
