// The SentencePiece-style tokenizer stored in GGUF (tokenizer.ggml.model ==
// "llama": Llama 1/2, Gemma, ...): pieces with scores, merged by score
// (spm_merges.h), whitespace written as U+2581 "▁", characters no piece spells
// written as byte tokens <0x00>..<0xFF> ("byte fallback").
//
// Encoding follows SentencePiece's encoder with the normalizer these models
// use (identity rules, whitespace escaped, extra whitespace kept):
//   1. every ' ' becomes "▁"; with tokenizer.ggml.add_space_prefix (default
//      true, SentencePiece's add_dummy_prefix) a "▁" is put in front of a
//      non-empty text;
//   2. user-defined tokens (always) and control tokens (with parse_special,
//      and outside guarded ranges: Tokenizer::try_encode_guarded) are
//      matched in that text, leftmost first and the longest at a
//      position, and stand for themselves; SentencePiece matches its
//      user-defined pieces the same way. llama.cpp's converter writes the "▁"
//      of user-defined pieces as ' ' (Gemma's runs of spaces), so they are
//      escaped back before matching;
//   3. each stretch between them is segmented by score; a piece that is not
//      in the vocab becomes its bytes' <0xXX> tokens (or unk without them).
// Bytes that are not valid UTF-8 are kept as byte tokens, so decode(encode(x))
// gives x back for any x without the character "▁" (which decodes to a space,
// as in SentencePiece) and, with the space prefix, less the leading space.
#pragma once

#include <array>
#include <memory>
#include <string_view>
#include <vector>

#include "tokenizer/pretokenizer_special.h"
#include "tokenizer/spm_merges.h"
#include "tokenizer/tokenizer.h"

namespace peregrine {

class SpmTokenizer final : public Tokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> create(const gguf::File& file);

  bool add_space_prefix() const { return add_space_prefix_; }

 private:
  SpmTokenizer() = default;
  std::vector<TokenId> encode_guarded(std::string_view text,
                                      std::span<const ByteRange> no_special) const override;
  Status load_vocab(const gguf::File& file);
  // Appends the ids of one stretch of escaped text without special tokens.
  void encode_plain(std::string_view text, std::vector<TokenId>& out,
                    std::vector<SpmMerges::Span>& spans) const;

  SpmMerges merges_;                    // mergeable pieces; views into text_
  std::array<TokenId, 256> byte_id_{};  // <0xXX> token of each byte, or -1
  bool add_space_prefix_ = true;
  // User-defined (in_guarded: matched always) and control tokens.
  std::unique_ptr<SpecialTokenMatcher> special_;
};

}  // namespace peregrine
