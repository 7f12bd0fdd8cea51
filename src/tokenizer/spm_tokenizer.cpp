#include "tokenizer/spm_tokenizer.h"

#include <algorithm>
#include <cmath>

namespace peregrine {
namespace {

constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's whitespace

// ' ' -> "▁" (how SentencePiece escapes whitespace before segmenting).
void append_escaped(std::string& out, std::string_view text) {
  for (char c : text) {
    if (c == ' ') {
      out += kSpace;
    } else {
      out += c;
    }
  }
}

// "▁" -> ' ' (the way back).
std::string unescape(std::string_view piece) {
  std::string out;
  out.reserve(piece.size());
  for (size_t i = 0; i < piece.size();) {
    if (piece.substr(i).starts_with(kSpace)) {
      out += ' ';
      i += kSpace.size();
    } else {
      out += piece[i++];
    }
  }
  return out;
}

// The byte a byte token stands for: "<0x41>" -> 0x41; -1 if malformed.
int parse_byte_token(std::string_view t) {
  if (t.size() != 6 || !t.starts_with("<0x") || t[5] != '>') return -1;
  int v = 0;
  for (char c : t.substr(3, 2)) {
    v *= 16;
    if (c >= '0' && c <= '9') {
      v += c - '0';
    } else if (c >= 'A' && c <= 'F') {
      v += c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      v += c - 'a' + 10;
    } else {
      return -1;
    }
  }
  return v;
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> SpmTokenizer::create(const gguf::File& file) {
  std::unique_ptr<SpmTokenizer> tok(new SpmTokenizer());
  PG_TRY(tok->load_vocab(file));
  if (file.find("tokenizer.ggml.add_space_prefix") != nullptr) {
    PG_ASSIGN(tok->add_space_prefix_, file.get_bool("tokenizer.ggml.add_space_prefix"));
  }
  if (file.find("tokenizer.ggml.add_eos_token") != nullptr) {
    // Checked for consistency: callers append EOS themselves where they want it.
    PG_TRY(file.get_bool("tokenizer.ggml.add_eos_token"));
  }

  std::vector<SpecialTokenMatcher::Token> special;
  for (TokenId id = 0; id < tok->n_vocab(); ++id) {
    const TokenType t = tok->type_[id];
    if (t != TokenType::UserDefined && t != TokenType::Control) continue;
    std::string escaped;
    append_escaped(escaped, tok->text_[id]);
    special.push_back({std::move(escaped), id, t == TokenType::UserDefined});
  }
  tok->special_ = std::make_unique<SpecialTokenMatcher>(std::move(special));

  PG_TRY(tok->init_special_tokens(file));
  return std::unique_ptr<Tokenizer>(std::move(tok));
}

Status SpmTokenizer::load_vocab(const gguf::File& file) {
  PG_TRY(load_tokens(file));
  const size_t n = text_.size();
  if (file.find("tokenizer.ggml.scores") == nullptr) {
    return make_error(
        "tokenizer.ggml.scores is missing: a SentencePiece ('llama') tokenizer merges by score");
  }
  PG_ASSIGN(const std::vector<float> scores, file.get_float_array("tokenizer.ggml.scores"));
  if (scores.size() != n) {
    return make_error("tokenizer.ggml.scores has {} entries but tokenizer.ggml.tokens has {}",
                      scores.size(), n);
  }

  byte_id_.fill(-1);
  merges_.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const auto id = static_cast<TokenId>(i);
    const std::string_view text = text_[i];
    if (!std::isfinite(scores[i])) {
      return make_error("tokenizer.ggml.scores[{}] = {} is not a finite number", i, scores[i]);
    }
    switch (type_[i]) {
      case TokenType::Byte: {
        const int b = parse_byte_token(text);
        if (b < 0) {
          return make_error("tokenizer.ggml.tokens[{}] = '{}' has type byte but is not <0xXX>", i,
                            text);
        }
        byte_id_[static_cast<size_t>(b)] = id;
        bytes_[i] = std::string(1, static_cast<char>(b));
        break;
      }
      case TokenType::Control:
      case TokenType::Unknown:
        bytes_[i] = text_[i];  // literal, like control tokens of the BPE vocab
        break;
      default:  // normal, user-defined, unused (and undefined, taken as normal)
        bytes_[i] = unescape(text);
        merges_.add(text, {id, scores[i], type_[i] == TokenType::Unused});
        break;
    }
  }
  return {};
}

std::vector<TokenId> SpmTokenizer::encode_guarded(std::string_view text,
                                                  std::span<const ByteRange> no_special) const {
  std::vector<TokenId> out;
  if (text.empty()) return out;
  out.reserve(text.size() / 3 + 2);
  std::string escaped;
  std::vector<ByteRange> guarded;  // no_special's part in this window, in escaped's offsets
  std::vector<SpecialTokenMatcher::Fragment> fragments;
  std::vector<SpmMerges::Span> spans;
  size_t r = 0;  // the first range of no_special that ends after the window's start
  // Windows of at most kMaxEncodeBytes, cut at a character boundary: the
  // whole text at once for every text try_encode() accepts. A character has
  // at most 3 continuation bytes, so the cut moves back at most 3: a longer
  // run is invalid UTF-8 (byte tokens either way), and walking back over all
  // of it made each window one byte long at a cost of kMaxEncodeBytes steps.
  for (size_t pos = 0; pos < text.size();) {
    size_t end = std::min(text.size(), pos + kMaxEncodeBytes);
    for (int k = 0; k < 3 && end < text.size() && end > pos + 1 &&
                    (static_cast<uint8_t>(text[end]) & 0xC0) == 0x80;
         ++k) {
      --end;
    }
    escaped.clear();
    guarded.clear();
    if (pos == 0 && add_space_prefix_) escaped += kSpace;
    // Escaped a stretch at a time, so each guarded range's ends are known in
    // the escaped text. The space prefix stands before the first character
    // and is guarded with it.
    size_t done = pos;
    while (r < no_special.size() && no_special[r].second <= pos) ++r;
    for (size_t k = r; k < no_special.size() && no_special[k].first < end; ++k) {
      const size_t b = std::max(no_special[k].first, pos), e = std::min(no_special[k].second, end);
      append_escaped(escaped, text.substr(done, b - done));
      const size_t eb = b == 0 ? 0 : escaped.size();
      append_escaped(escaped, text.substr(b, e - b));
      guarded.emplace_back(eb, escaped.size());
      done = e;
    }
    append_escaped(escaped, text.substr(done, end - done));
    fragments.clear();
    special_->split(escaped, guarded, fragments);
    for (const auto& f : fragments) {
      if (f.id >= 0) {
        out.push_back(f.id);
      } else {
        encode_plain(f.text, out, spans);
      }
    }
    pos = end;
  }
  return out;
}

void SpmTokenizer::encode_plain(std::string_view text, std::vector<TokenId>& out,
                                std::vector<SpmMerges::Span>& spans) const {
  spans.clear();
  merges_.segment(text, spans);
  for (const SpmMerges::Span& s : spans) {
    const std::string_view piece =
        text.substr(static_cast<size_t>(s.start), static_cast<size_t>(s.len));
    if (const TokenId id = find_token(piece); id >= 0) {
      out.push_back(id);
      continue;
    }
    // Byte fallback: the piece's bytes as <0xXX> tokens; unk when the vocab
    // lacks one of them; dropped when it has no unk either.
    const bool all_bytes = std::all_of(piece.begin(), piece.end(), [&](char c) {
      return byte_id_[static_cast<uint8_t>(c)] >= 0;
    });
    if (all_bytes) {
      for (char c : piece) out.push_back(byte_id_[static_cast<uint8_t>(c)]);
    } else if (unk_ >= 0) {
      out.push_back(unk_);
    }
  }
}

}  // namespace peregrine
