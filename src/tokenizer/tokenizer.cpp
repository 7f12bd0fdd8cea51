#include "tokenizer/tokenizer.h"

#include <algorithm>
#include <limits>

#include "tokenizer/bpe_tokenizer.h"
#include "tokenizer/spm_tokenizer.h"
#include "tokenizer/unicode_utf8.h"

namespace peregrine {
namespace {

// An optional token id from metadata: -1 when the key is absent, an error
// when it is not an integer or names no token.
Result<TokenId> read_token_id(const gguf::File& file, std::string_view key, int32_t n_vocab) {
  const gguf::Value* v = file.find(key);
  if (v == nullptr) return TokenId{-1};
  if (!v->is_integer()) {
    return make_error("{} has type {}, expected an integer token id", key,
                      gguf::value_type_name(v->type));
  }
  const bool is_signed = v->type == gguf::ValueType::I8 || v->type == gguf::ValueType::I16 ||
                         v->type == gguf::ValueType::I32 || v->type == gguf::ValueType::I64;
  if (is_signed ? (v->i < 0 || v->i >= n_vocab) : v->u >= static_cast<uint64_t>(n_vocab)) {
    return make_error("{} = {} is outside the vocab ({} tokens)", key,
                      is_signed ? std::to_string(v->i) : std::to_string(v->u), n_vocab);
  }
  return static_cast<TokenId>(is_signed ? v->i : static_cast<int64_t>(v->u));
}

// Outside input is bounded before it is encoded (Tokenizer::kMaxEncodeBytes).
Status check_length(std::string_view text) {
  if (text.size() <= Tokenizer::kMaxEncodeBytes) return {};
  return make_error("text of {} bytes is longer than the tokenizer takes at once ({} bytes)",
                    text.size(), Tokenizer::kMaxEncodeBytes);
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> Tokenizer::from_gguf(const gguf::File& file) {
  PG_ASSIGN(const std::string model, file.get_string("tokenizer.ggml.model"));
  if (model == "gpt2") return BpeTokenizer::create(file);
  if (model == "llama") return SpmTokenizer::create(file);
  return make_error(
      "unsupported tokenizer model '{}' (tokenizer.ggml.model); supported: gpt2, llama", model);
}

std::vector<TokenId> Tokenizer::encode(std::string_view text, bool parse_special) const {
  const ByteRange whole{0, text.size()};
  return encode_guarded(text, parse_special || text.empty() ? std::span<const ByteRange>()
                                                            : std::span<const ByteRange>(&whole, 1));
}

Result<std::vector<TokenId>> Tokenizer::try_encode(std::string_view text,
                                                   bool parse_special) const {
  PG_TRY(check_length(text));
  return encode(text, parse_special);
}

Result<std::vector<TokenId>> Tokenizer::try_encode_guarded(
    std::string_view text, std::span<const ByteRange> no_special) const {
  PG_TRY(check_length(text));
  // Sorted, merged where they overlap or touch, empty ones dropped.
  std::vector<ByteRange> ranges;
  ranges.reserve(no_special.size());
  for (const auto& [begin, end] : no_special) {
    if (begin > end || end > text.size()) {
      return make_error("guarded range [{}, {}) is not within the text ({} bytes)", begin, end,
                        text.size());
    }
    if (begin < end) ranges.emplace_back(begin, end);
  }
  std::sort(ranges.begin(), ranges.end());
  size_t n = 0;
  for (const ByteRange& r : ranges) {
    if (n > 0 && r.first <= ranges[n - 1].second) {
      ranges[n - 1].second = std::max(ranges[n - 1].second, r.second);
    } else {
      ranges[n++] = r;
    }
  }
  ranges.resize(n);
  return encode_guarded(text, ranges);
}

Status Tokenizer::load_tokens(const gguf::File& file) {
  PG_ASSIGN(text_, file.get_string_array("tokenizer.ggml.tokens"));
  const size_t n = text_.size();
  if (n == 0) return make_error("tokenizer.ggml.tokens is empty");
  if (n > static_cast<size_t>(std::numeric_limits<TokenId>::max())) {
    return make_error("tokenizer.ggml.tokens has {} entries, more than token ids can hold", n);
  }
  type_.assign(n, TokenType::Normal);
  if (file.find("tokenizer.ggml.token_type") != nullptr) {
    PG_ASSIGN(const std::vector<int64_t> types, file.get_int_array("tokenizer.ggml.token_type"));
    if (types.size() != n) {
      return make_error("tokenizer.ggml.token_type has {} entries but tokenizer.ggml.tokens has {}",
                        types.size(), n);
    }
    for (size_t i = 0; i < n; ++i) {
      if (types[i] < 0 || types[i] > static_cast<int64_t>(TokenType::Byte)) {
        return make_error("tokenizer.ggml.token_type[{}] = {} is not a token type (0..6)", i,
                          types[i]);
      }
      type_[i] = static_cast<TokenType>(types[i]);
    }
  }
  index_.clear();
  index_.reserve(n);
  for (size_t i = 0; i < n; ++i) index_.insert_or_assign(text_[i], static_cast<TokenId>(i));
  bytes_.assign(n, std::string());
  return {};
}

std::string Tokenizer::token_bytes(TokenId id) const {
  if (id < 0 || id >= n_vocab()) return {};
  return bytes_[static_cast<size_t>(id)];
}

std::string_view Tokenizer::token_text(TokenId id) const {
  if (id < 0 || id >= n_vocab()) return {};
  return text_[static_cast<size_t>(id)];
}

TokenType Tokenizer::token_type(TokenId id) const {
  if (id < 0 || id >= n_vocab()) return TokenType::Undefined;
  return type_[static_cast<size_t>(id)];
}

TokenId Tokenizer::find_token(std::string_view text) const {
  const auto it = index_.find(text);
  return it == index_.end() ? -1 : it->second;
}

Status Tokenizer::init_special_tokens(const gguf::File& file) {
  const int32_t n = n_vocab();
  PG_ASSIGN(bos_, read_token_id(file, "tokenizer.ggml.bos_token_id", n));
  PG_ASSIGN(eos_, read_token_id(file, "tokenizer.ggml.eos_token_id", n));
  PG_ASSIGN(eot_, read_token_id(file, "tokenizer.ggml.eot_token_id", n));
  PG_ASSIGN(pad_, read_token_id(file, "tokenizer.ggml.padding_token_id", n));
  PG_ASSIGN(unk_, read_token_id(file, "tokenizer.ggml.unknown_token_id", n));
  if (file.find("tokenizer.ggml.add_bos_token") != nullptr) {
    PG_ASSIGN(add_bos_, file.get_bool("tokenizer.ggml.add_bos_token"));
  }

  // Older conversions carry no eot id; chat models still end turns with a
  // well-known token.
  if (eot_ < 0) {
    for (std::string_view name : {"<|im_end|>", "<|eot_id|>", "<end_of_turn>"}) {
      if (const TokenId id = find_token(name); id >= 0) {
        eot_ = id;
        break;
      }
    }
  }
  end_of_generation_.clear();
  const TokenId im_end = find_token("<|im_end|>");
  const bool chatml = im_end >= 0 && token_type(im_end) == TokenType::Control;
  for (TokenId id : {eos_, eot_, chatml ? im_end : TokenId{-1}}) {
    if (id >= 0 && std::find(end_of_generation_.begin(), end_of_generation_.end(), id) ==
                       end_of_generation_.end()) {
      end_of_generation_.push_back(id);
    }
  }
  return {};
}

bool Tokenizer::is_end_of_generation(TokenId id) const {
  return id >= 0 &&
         std::find(end_of_generation_.begin(), end_of_generation_.end(), id) !=
             end_of_generation_.end();
}

std::string Tokenizer::decode(std::span<const TokenId> ids) const {
  std::string out;
  for (TokenId id : ids) out += token_bytes(id);
  return out;
}

std::string StreamDecoder::push_bytes(std::string_view bytes) {
  pending_ += bytes;
  // Emit every complete sequence; bytes that can never become valid are
  // replaced now (waiting would not help); only a valid but unfinished
  // sequence at the very end is held for the next token.
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const utf8::Seq q = utf8::next(pending_, i);
    if (q.kind == utf8::Seq::Truncated) break;
    if (q.kind == utf8::Seq::Valid) {
      out.append(pending_, i, q.len);
    } else {
      out.append(utf8::kReplacement);
    }
    i += q.len;
  }
  pending_.erase(0, i);
  return out;
}

std::string StreamDecoder::flush() {
  std::string out;
  utf8::append_replacing_invalid(out, pending_);
  pending_.clear();
  return out;
}

}  // namespace peregrine
