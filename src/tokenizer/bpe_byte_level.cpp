#include "tokenizer/bpe_byte_level.h"

#include <array>

#include "tokenizer/unicode_utf8.h"

namespace peregrine::byte_level {
namespace {

constexpr bool is_self_printed(int b) {
  return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

constexpr std::array<uint16_t, 256> make_table() {
  std::array<uint16_t, 256> t{};
  uint16_t next_extra = 256;
  for (int b = 0; b < 256; ++b) {
    t[b] = is_self_printed(b) ? static_cast<uint16_t>(b) : next_extra++;
  }
  return t;
}

constexpr std::array<uint16_t, 256> kByteToCp = make_table();

// The alphabet lives in [0, 256 + 68); invert it once.
constexpr std::array<int16_t, 324> make_inverse() {
  std::array<int16_t, 324> inv{};
  for (auto& v : inv) v = -1;
  for (int b = 0; b < 256; ++b) inv[kByteToCp[b]] = static_cast<int16_t>(b);
  return inv;
}

constexpr std::array<int16_t, 324> kCpToByte = make_inverse();

static_assert(kByteToCp[' '] == 0x120 && kByteToCp['\n'] == 0x10A && kByteToCp[0xAD] == 0x143);

}  // namespace

uint32_t byte_to_codepoint(uint8_t b) { return kByteToCp[b]; }

int codepoint_to_byte(uint32_t cp) { return cp < kCpToByte.size() ? kCpToByte[cp] : -1; }

std::string byte_to_text(uint8_t b) {
  std::string s;
  utf8::append_codepoint(s, kByteToCp[b]);
  return s;
}

std::string text_to_bytes(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    const utf8::Seq q = utf8::next(text, i);
    if (q.kind != utf8::Seq::Valid) {  // not UTF-8 at all: keep the bytes as they are
      out.append(text.substr(i, q.len));
      i += q.len;
      continue;
    }
    const int b = codepoint_to_byte(utf8::codepoint(text, i, q.len));
    if (b >= 0) {
      out.push_back(static_cast<char>(b));
    } else {
      out.append(text.substr(i, q.len));
    }
    i += q.len;
  }
  return out;
}

}  // namespace peregrine::byte_level
