// GPT-2's byte-level alphabet: each of the 256 byte values is shown as one
// printable code point, so a BPE vocab of strings can hold arbitrary bytes.
// Printable Latin-1 bytes (! .. ~, ¡ .. ¬, ® .. ÿ) stand for themselves; the
// other 68 (controls, space, DEL, NBSP, soft hyphen) map in byte order to
// U+0100, U+0101, ... (so space is U+0120 'Ġ' and newline U+010A 'Ċ').
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace peregrine::byte_level {

uint32_t byte_to_codepoint(uint8_t b);
// The byte a code point stands for, or -1 when it is not in the alphabet.
int codepoint_to_byte(uint32_t cp);

// The vocab spelling (UTF-8) of a single byte.
std::string byte_to_text(uint8_t b);

// Vocab text -> raw bytes. Code points outside the alphabet (possible only in
// a malformed or hand-edited vocab) are kept as their own UTF-8.
std::string text_to_bytes(std::string_view text);

}  // namespace peregrine::byte_level
