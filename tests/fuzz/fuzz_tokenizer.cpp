// libFuzzer target: arbitrary bytes through the real SmolLM2 tokenizer.
// Checks, for every input and both settings of parse_special:
//   - every id is inside the vocab;
//   - decode(encode(x)) == x, less the bytes the vocab cannot spell (SmolLM2
//     lacks e.g. 0x04 and 0xF1; encode drops them as HF tokenizers does) —
//     for valid UTF-8 without such bytes that is exactly x;
//   - a StreamDecoder fed the ids one by one emits only valid UTF-8 and, with
//     flush(), the same text as decoding everything at once with U+FFFD for
//     invalid sequences.
// The model path comes from PEREGRINE_MODEL_PATH (default: the cache); without
// a model every input is accepted unchecked.
#include <array>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "gguf/gguf.h"
#include "tokenizer/bpe_byte_level.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode_utf8.h"

namespace {

using namespace peregrine;

struct Loaded {
  std::unique_ptr<gguf::File> file;
  std::unique_ptr<Tokenizer> tok;
  std::array<bool, 256> spellable{};
};

std::string default_model() {
  if (const char* p = std::getenv("PEREGRINE_MODEL_PATH"); p && *p) return p;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

const Loaded* load() {
  auto f = gguf::File::open(default_model());
  if (!f.ok()) {
    std::fprintf(stderr, "fuzz_tokenizer: %s (nothing is checked)\n", f.error().message.c_str());
    return nullptr;
  }
  auto l = std::make_unique<Loaded>();
  l->file = std::move(f).value();
  auto t = Tokenizer::from_gguf(*l->file);
  if (!t.ok()) {
    std::fprintf(stderr, "fuzz_tokenizer: %s\n", t.error().message.c_str());
    std::abort();  // the real model must load
  }
  l->tok = std::move(t).value();
  for (int b = 0; b < 256; ++b) {
    l->spellable[b] = l->tok->find_token(byte_level::byte_to_text(static_cast<uint8_t>(b))) >= 0;
  }
  return l.release();
}

[[noreturn]] void fail(const char* what, std::string_view input) {
  std::fprintf(stderr, "fuzz_tokenizer: %s (input of %zu bytes)\n", what, input.size());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Loaded* l = load();
  if (l == nullptr) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::string expect;
  for (char c : text) {
    if (l->spellable[static_cast<uint8_t>(c)]) expect += c;
  }
  for (bool parse_special : {true, false}) {
    const std::vector<TokenId> ids = l->tok->encode(text, parse_special);
    for (TokenId id : ids) {
      if (id < 0 || id >= l->tok->n_vocab()) fail("id outside the vocab", text);
    }
    const std::string decoded = l->tok->decode(ids);
    if (decoded != expect) fail("decode(encode(x)) != x", text);

    StreamDecoder stream(*l->tok);
    std::string streamed;
    for (TokenId id : ids) {
      const std::string piece = stream.push(id);
      if (!utf8::is_valid(piece)) fail("StreamDecoder::push emitted invalid UTF-8", text);
      streamed += piece;
    }
    streamed += stream.flush();
    std::string whole;
    utf8::append_replacing_invalid(whole, decoded);
    if (streamed != whole) fail("StreamDecoder output differs from decode()", text);
  }
  return 0;
}
