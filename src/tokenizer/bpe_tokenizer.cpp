#include "tokenizer/bpe_tokenizer.h"

#include "tokenizer/bpe_byte_level.h"

namespace peregrine {

Result<std::unique_ptr<Tokenizer>> BpeTokenizer::create(const gguf::File& file) {
  std::unique_ptr<BpeTokenizer> tok(new BpeTokenizer());
  PG_TRY(tok->load_vocab(file));
  PG_TRY(tok->load_merges(file));

  // Files written before tokenizer.ggml.pre existed do not say how the model split text;
  // llama.cpp then guesses its "default" split, which is not the GPT-2 one. Say so rather
  // than guess.
  if (file.find("tokenizer.ggml.pre") == nullptr) {
    return make_error(
        "tokenizer.ggml.pre is missing: the file does not say how this BPE vocabulary splits "
        "text (a conversion older than pre-tokenizer names); reconvert it with a current "
        "convert_hf_to_gguf.py");
  }
  PG_ASSIGN(const std::string pre, file.get_string("tokenizer.ggml.pre"));
  PG_ASSIGN(tok->pre_, Pretokenizer::create(pre));

  // User-defined tokens, like control ones, are recognised only with
  // parse_special (the reference test gives HF both as special tokens), so
  // none is marked in_guarded.
  std::vector<SpecialTokenMatcher::Token> special;
  for (TokenId id = 0; id < tok->n_vocab(); ++id) {
    if (tok->type_[id] == TokenType::Control || tok->type_[id] == TokenType::UserDefined) {
      special.push_back({tok->text_[id], id});
    }
  }
  tok->special_ = std::make_unique<SpecialTokenMatcher>(std::move(special));

  // Llama 3's names add BOS unless the file says otherwise (llama.cpp does the same).
  tok->add_bos_ = tok->pre_->add_bos_by_default();
  PG_TRY(tok->init_special_tokens(file));
  if (tok->add_bos_ && tok->bos_ < 0) {
    return make_error("tokenizer.ggml.pre '{}' adds BOS but tokenizer.ggml.bos_token_id is missing",
                      pre);
  }
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

Status BpeTokenizer::load_vocab(const gguf::File& file) {
  PG_TRY(load_tokens(file));
  for (size_t i = 0; i < text_.size(); ++i) {
    // Control and user-defined tokens hold their literal text, not byte-level spelling.
    const bool literal = type_[i] == TokenType::Control || type_[i] == TokenType::UserDefined;
    bytes_[i] = literal ? text_[i] : byte_level::text_to_bytes(text_[i]);
  }
  for (int b = 0; b < 256; ++b) {
    byte_id_[b] = find_token(byte_level::byte_to_text(static_cast<uint8_t>(b)));
  }
  return {};
}

Status BpeTokenizer::load_merges(const gguf::File& file) {
  PG_ASSIGN(const std::vector<std::string> merges, file.get_string_array("tokenizer.ggml.merges"));
  if (merges.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    return make_error("tokenizer.ggml.merges has {} entries, too many", merges.size());
  }
  merges_.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string_view m = merges[i];
    const size_t sp = m.find(' ');
    if (sp == std::string_view::npos || sp == 0 || sp + 1 == m.size() ||
        m.find(' ', sp + 1) != std::string_view::npos) {
      return make_error("tokenizer.ggml.merges[{}] = '{}' is not two tokens separated by one space",
                        i, m);
    }
    const std::string_view left = m.substr(0, sp), right = m.substr(sp + 1);
    const std::string merged = std::string(left) + std::string(right);
    const TokenId l = find_token(left), r = find_token(right), id = find_token(merged);
    const std::string_view missing =
        l < 0 ? left : r < 0 ? right : id < 0 ? std::string_view(merged) : std::string_view();
    if (!missing.empty()) {
      return make_error("tokenizer.ggml.merges[{}] = '{}': token '{}' is not in the vocab", i, m,
                        missing);
    }
    merges_.add(l, r, {static_cast<int32_t>(i), id});
  }
  return {};
}

std::vector<TokenId> BpeTokenizer::encode_guarded(std::string_view text,
                                                  std::span<const ByteRange> no_special) const {
  std::vector<SpecialTokenMatcher::Fragment> fragments;
  special_->split(text, no_special, fragments);
  std::vector<TokenId> out, scratch;
  out.reserve(text.size() / 3 + 1);
  std::vector<std::string_view> pieces;
  for (const auto& f : fragments) {
    if (f.id >= 0) {
      out.push_back(f.id);
      continue;
    }
    pieces.clear();
    pre_->split(f.text, pieces);
    for (std::string_view p : pieces) encode_piece(p, out, scratch);
  }
  return out;
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<TokenId>& out,
                                std::vector<TokenId>& scratch) const {
  if (pre_->ignore_merges()) {
    // HF's BPE with ignore_merges looks the whole piece up before merging.
    std::string spelled;
    for (char c : piece) spelled += byte_level::byte_to_text(static_cast<uint8_t>(c));
    if (const TokenId id = find_token(spelled); id >= 0) {
      out.push_back(id);
      return;
    }
  }
  scratch.clear();
  for (char c : piece) {
    const TokenId id = byte_id_[static_cast<uint8_t>(c)];
    if (id >= 0) scratch.push_back(id);
  }
  merges_.apply(scratch);
  out.insert(out.end(), scratch.begin(), scratch.end());
}

}  // namespace peregrine
