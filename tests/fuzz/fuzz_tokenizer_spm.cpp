// libFuzzer target: arbitrary bytes through the real Gemma 3 SentencePiece
// tokenizer (spm_tokenizer.h). Checks, for every input of at most kMaxInput
// bytes and both settings of parse_special:
//   - every id is inside the vocab, and without parse_special no id is a
//     control token (user text must not smuggle in <start_of_turn>, <eos>...);
//   - try_encode() gives the same ids as encode();
//   - when the ids with parse_special hold no control token, they equal the
//     ids without it (the matcher picks the same user-defined tokens either
//     way: the longest match at a position is then never a control token);
//   - decode(encode(x)) == x for any byte string, valid UTF-8 or not: byte
//     fallback spells every byte, user-defined and control tokens decode to
//     their own text. Two classes of input cannot come back verbatim, and the
//     expected text is adjusted for exactly them (see expected_decode());
//   - a StreamDecoder fed the ids one by one emits only valid UTF-8 and, with
//     flush(), the same text as decoding everything at once with U+FFFD for
//     invalid sequences;
//   - the same input stretched past Tokenizer::kMaxEncodeBytes makes
//     try_encode() fail with an error instead of encoding (or crashing).
// The model path comes from PEREGRINE_GEMMA_PATH (default: the cache); without
// the file every input is accepted unchecked.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "gguf/gguf.h"
#include "tokenizer/spm_tokenizer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode_utf8.h"

namespace {

using namespace peregrine;

// Per-input work stays bounded: the merge loop is O(n log n) and the special
// token trie O(n * longest token), so 4 KiB keeps every input in milliseconds.
constexpr size_t kMaxInput = 4096;
constexpr std::string_view kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's whitespace

struct Loaded {
  std::unique_ptr<gguf::File> file;
  std::unique_ptr<Tokenizer> tok;
  bool add_space_prefix = false;
  // kMaxEncodeBytes + 1 + kMaxInput bytes: an input copied to its front and
  // viewed past the bound checks try_encode()'s error path without
  // allocating 16 MiB per input.
  std::string oversized;
};

std::string gemma_path() {
  if (const char* p = std::getenv("PEREGRINE_GEMMA_PATH"); p && *p) return p;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/peregrine/models/gemma-3-270m-q4_k_m.gguf";
}

Loaded* load() {
  auto f = gguf::File::open(gemma_path());
  if (!f.ok()) {
    std::fprintf(stderr, "fuzz_tokenizer_spm: %s (nothing is checked)\n",
                 f.error().message.c_str());
    return nullptr;
  }
  auto l = std::make_unique<Loaded>();
  l->file = std::move(f).value();
  auto t = Tokenizer::from_gguf(*l->file);
  if (!t.ok()) {
    std::fprintf(stderr, "fuzz_tokenizer_spm: %s\n", t.error().message.c_str());
    std::abort();  // the real model must load
  }
  l->tok = std::move(t).value();
  const auto* spm = dynamic_cast<const SpmTokenizer*>(l->tok.get());
  if (spm == nullptr) {
    std::fprintf(stderr, "fuzz_tokenizer_spm: %s is not a SentencePiece ('llama') tokenizer\n",
                 gemma_path().c_str());
    std::abort();
  }
  l->add_space_prefix = spm->add_space_prefix();
  l->oversized.assign(Tokenizer::kMaxEncodeBytes + 1 + kMaxInput, 'a');
  return l.release();
}

[[noreturn]] void fail(const char* what, std::string_view input, bool parse_special) {
  std::fprintf(stderr, "fuzz_tokenizer_spm: %s (input of %zu bytes, parse_special=%d)\n", what,
               input.size(), parse_special ? 1 : 0);
  std::abort();
}

// What decode(encode(x)) must give. Every byte survives; the exceptions are
// exactly the two ways SentencePiece's normalizer changes text (spm_tokenizer.h):
//   - the character U+2581 "▁" itself: the escaped text cannot tell it from
//     an escaped ' ' (both are "▁"), and "▁" decodes to ' ', as in
//     SentencePiece. So x is expected with every U+2581 written as ' '; the
//     ids must then equal those of that rewritten text (checked separately).
//     The three bytes E2 96 81 cannot overlap another copy of themselves, so
//     the rewrite is the same whether or not the bytes around them are valid
//     UTF-8 (escaping works on bytes too);
//   - with add_space_prefix (false for Gemma 3, true for Llama 2) a non-empty
//     text gains a leading "▁", which decodes to a leading ' '.
// Special-token text needs no exception: user-defined and control tokens
// decode to exactly the text they matched (Gemma's runs of spaces are stored
// with ' ' and matched against the escaped "▁"s), with or without parse_special.
std::string expected_decode(std::string_view text, bool add_space_prefix) {
  std::string out;
  out.reserve(text.size() + 1);
  if (add_space_prefix && !text.empty()) out += ' ';
  for (size_t i = 0; i < text.size();) {
    if (text.substr(i).starts_with(kSpace)) {
      out += ' ';
      i += kSpace.size();
    } else {
      out += text[i++];
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Loaded* l = load();
  if (l == nullptr) return 0;
  if (size > kMaxInput) return -1;  // keep per-input work bounded; not added to the corpus
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const Tokenizer& tok = *l->tok;
  const std::string expect = expected_decode(text, l->add_space_prefix);
  const bool has_sp_char = text.find(kSpace) != std::string_view::npos;
  // The input with U+2581 already written as ' ' (expect without the prefix).
  const std::string_view rewritten =
      std::string_view(expect).substr(l->add_space_prefix && !text.empty() ? 1 : 0);

  // The error path past the bound: the input at the front of a longer view.
  if (size > 0) std::memcpy(l->oversized.data(), data, size);
  const bool big_special = size % 2 == 0;
  for (size_t over : {size_t{1}, size_t{1} + size}) {
    const std::string_view big(l->oversized.data(), Tokenizer::kMaxEncodeBytes + over);
    const auto r = tok.try_encode(big, big_special);
    if (r.ok()) fail("try_encode() accepted text longer than kMaxEncodeBytes", text, big_special);
    if (r.error().message.empty()) fail("try_encode() failed without a message", text, big_special);
  }

  std::vector<TokenId> with_special;
  for (bool parse_special : {true, false}) {
    const std::vector<TokenId> ids = tok.encode(text, parse_special);
    if (parse_special) {
      with_special = ids;
    } else if (std::none_of(with_special.begin(), with_special.end(), [&](TokenId id) {
                 return tok.token_type(id) == TokenType::Control;
               }) &&
               ids != with_special) {
      fail("parse_special changed ids without any control token", text, parse_special);
    }
    for (TokenId id : ids) {
      if (id < 0 || id >= tok.n_vocab()) fail("id outside the vocab", text, parse_special);
      if (!parse_special && tok.token_type(id) == TokenType::Control) {
        fail("a control token without parse_special", text, parse_special);
      }
    }
    const auto tried = tok.try_encode(text, parse_special);
    if (!tried.ok()) fail("try_encode() refused a short text", text, parse_special);
    if (tried.value() != ids) fail("try_encode() differs from encode()", text, parse_special);
    if (has_sp_char && tok.encode(rewritten, parse_special) != ids) {
      fail("U+2581 encodes differently from ' '", text, parse_special);
    }

    const std::string decoded = tok.decode(ids);
    if (decoded != expect) fail("decode(encode(x)) != x", text, parse_special);

    StreamDecoder stream(tok);
    std::string streamed;
    for (TokenId id : ids) {
      const std::string piece = stream.push(id);
      if (!utf8::is_valid(piece)) {
        fail("StreamDecoder::push emitted invalid UTF-8", text, parse_special);
      }
      streamed += piece;
    }
    const std::string rest = stream.flush();
    if (!utf8::is_valid(rest)) {
      fail("StreamDecoder::flush emitted invalid UTF-8", text, parse_special);
    }
    streamed += rest;
    std::string whole;
    utf8::append_replacing_invalid(whole, decoded);
    if (streamed != whole) fail("StreamDecoder output differs from decode()", text, parse_special);
  }
  return 0;
}
