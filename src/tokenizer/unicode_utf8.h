// Strict UTF-8 scanning (RFC 3629: no overlongs, no surrogates, nothing above
// U+10FFFF). The tokenizer feeds only text that passed this check to PCRE2 with
// PCRE2_NO_UTF_CHECK, so it must never accept a byte sequence PCRE2 rejects.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace peregrine::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// What starts at one position of a byte string.
struct Seq {
  enum Kind : uint8_t {
    Valid,      // a complete scalar value of `len` bytes
    Invalid,    // `len` bytes (>= 1) that can never start valid text: the
                // "maximal subpart" that U+FFFD replaces (Unicode ch. 3, 3.9)
    Truncated,  // a valid prefix of `len` bytes cut off by the end of input
  };
  Kind kind;
  uint32_t len;
};

Seq next(std::string_view s, size_t pos);

// The scalar value of a sequence that next() reported Valid.
uint32_t codepoint(std::string_view s, size_t pos, uint32_t len);

// Length of the longest prefix of s that is valid UTF-8.
size_t valid_prefix(std::string_view s);
inline bool is_valid(std::string_view s) { return valid_prefix(s) == s.size(); }

// Appends s to out with every invalid or truncated sequence replaced by U+FFFD
// (one per maximal subpart, as Python's errors="replace" does).
void append_replacing_invalid(std::string& out, std::string_view s);

// Appends the UTF-8 encoding of a scalar value (cp < 0x110000).
void append_codepoint(std::string& out, uint32_t cp);

}  // namespace peregrine::utf8
