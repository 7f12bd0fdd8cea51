#include "tokenizer/unicode_utf8.h"

namespace peregrine::utf8 {

Seq next(std::string_view s, size_t pos) {
  const auto b0 = static_cast<uint8_t>(s[pos]);
  if (b0 < 0x80) return {Seq::Valid, 1};
  // Number of continuation bytes and the allowed range of the first one; the
  // narrowed ranges are what exclude overlongs, surrogates and > U+10FFFF.
  uint32_t need = 0;
  uint8_t lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {Seq::Invalid, 1};  // continuation byte, C0/C1, F5..FF
  }
  for (uint32_t k = 1; k <= need; ++k) {
    if (pos + k >= s.size()) return {Seq::Truncated, k};
    const auto b = static_cast<uint8_t>(s[pos + k]);
    if (b < lo || b > hi) return {Seq::Invalid, k};
    lo = 0x80;
    hi = 0xBF;
  }
  return {Seq::Valid, need + 1};
}

uint32_t codepoint(std::string_view s, size_t pos, uint32_t len) {
  static constexpr uint8_t kLeadMask[5] = {0, 0x7F, 0x1F, 0x0F, 0x07};
  uint32_t cp = static_cast<uint8_t>(s[pos]) & kLeadMask[len];
  for (uint32_t k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[pos + k]) & 0x3F);
  return cp;
}

size_t valid_prefix(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    // ASCII fast path: most text is mostly ASCII.
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const Seq q = next(s, i);
    if (q.kind != Seq::Valid) break;
    i += q.len;
  }
  return i;
}

void append_replacing_invalid(std::string& out, std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const Seq q = next(s, i);
    if (q.kind == Seq::Valid) {
      out.append(s.substr(i, q.len));
    } else {
      out.append(kReplacement);
    }
    i += q.len;
  }
}

void append_codepoint(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace peregrine::utf8
