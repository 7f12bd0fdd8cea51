// A test helper shared by test_json_schema.cpp and fuzz_json_schema.cpp: nlohmann::json
// refuses numbers beyond double range, which JSON allows, so strings sampled from grammars
// are checked after their exponents are made small.
#pragma once

#include <cctype>
#include <cstdint>
#include <string>

namespace peregrine::constrain {

// JSON text with every exponent outside strings replaced by e0 (nlohmann refuses numbers
// beyond double range, which JSON allows).
inline std::string small_exponents(const std::string& s) {
  std::string out;
  bool in_string = false;
  for (size_t i = 0; i < s.size(); ++i) {
    const char ch = s[i];
    if (in_string) {
      out += ch;
      if (ch == '\\' && i + 1 < s.size())
        out += s[++i];
      else if (ch == '"')
        in_string = false;
    } else if ((ch == 'e' || ch == 'E') && i + 1 < s.size() &&
               (std::isdigit(uint8_t(s[i + 1])) || s[i + 1] == '-' || s[i + 1] == '+')) {
      out += "e0";
      ++i;
      while (i < s.size() && (std::isdigit(uint8_t(s[i])) || s[i] == '-' || s[i] == '+')) ++i;
      --i;
    } else {
      out += ch;
      in_string = ch == '"';
    }
  }
  return out;
}

}  // namespace peregrine::constrain
