// Free helpers of the JSON Schema compiler (json_schema_compiler.h): code points and the
// canonical string encoding, JSON pointers and messages, the keyword table, and types.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "constrain/json_schema_compiler.h"
#include "tokenizer/unicode_utf8.h"

namespace peregrine::constrain::json_schema_detail {

// ---- code points and canonical string encoding

bool decode_utf8(std::string_view s, std::vector<uint32_t>* out) {
  for (size_t i = 0; i < s.size();) {
    const utf8::Seq q = utf8::next(s, i);
    if (q.kind != utf8::Seq::Valid) return false;
    out->push_back(utf8::codepoint(s, i, q.len));
    i += q.len;
  }
  return true;
}

// The one encoding of cp inside a JSON string that canonical values use: `"`, `\` and control
// characters escaped (short forms where JSON has them, else \u00xx), everything else as is.
void append_canonical(std::string& out, uint32_t cp) {
  switch (cp) {
    case '"':
      out += "\\\"";
      return;
    case '\\':
      out += "\\\\";
      return;
    case '\b':
      out += "\\b";
      return;
    case '\f':
      out += "\\f";
      return;
    case '\n':
      out += "\\n";
      return;
    case '\r':
      out += "\\r";
      return;
    case '\t':
      out += "\\t";
      return;
    default:
      break;
  }
  if (cp < 0x20) {
    out += fmt::format("\\u{:04x}", cp);
  } else {
    utf8::append_codepoint(out, cp);
  }
}

std::optional<std::string> canonical(std::string_view utf8_text) {
  std::vector<uint32_t> cps;
  if (!decode_utf8(utf8_text, &cps)) return std::nullopt;
  std::string out;
  for (uint32_t cp : cps) append_canonical(out, cp);
  return out;
}

Ranges normalized(Ranges r) {
  Ranges out;
  for (auto [lo, hi] : r) {
    hi = std::min(hi, kMaxCodePoint);
    if (lo <= hi) out.emplace_back(lo, hi);
  }
  std::sort(out.begin(), out.end());
  Ranges merged;
  for (const auto& x : out) {
    if (!merged.empty() && x.first <= merged.back().second + 1)
      merged.back().second = std::max(merged.back().second, x.second);
    else
      merged.push_back(x);
  }
  return merged;
}

Ranges complement(const Ranges& r) {  // r normalized
  Ranges out;
  uint32_t next = 0;
  for (const auto& [lo, hi] : r) {
    if (lo > next) out.emplace_back(next, lo - 1);
    next = hi + 1;
  }
  if (next <= kMaxCodePoint) out.emplace_back(next, kMaxCodePoint);
  return out;
}

Ranges intersect(const Ranges& a, const Ranges& b) {  // both normalized
  Ranges out;
  size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const uint32_t lo = std::max(a[i].first, b[j].first), hi = std::min(a[i].second, b[j].second);
    if (lo <= hi) out.emplace_back(lo, hi);
    (a[i].second < b[j].second) ? ++i : ++j;
  }
  return out;
}

// ---- JSON pointers and schema keywords

std::string pointer_token(std::string_view s) {
  std::string out;
  for (char ch : s) {
    if (ch == '~')
      out += "~0";
    else if (ch == '/')
      out += "~1";
    else
      out += ch;
  }
  return out;
}

// Outside text as it appears in a message: control, C1 and line-separator characters and
// invalid bytes escaped, and at most `max` code points (the middle elided).
std::string shown(std::string_view s, size_t max) {
  std::vector<std::string> parts;  // one per code point (or invalid byte)
  for (size_t i = 0; i < s.size();) {
    const utf8::Seq q = utf8::next(s, i);
    if (q.kind != utf8::Seq::Valid) {
      parts.push_back(fmt::format("\\x{:02X}", uint8_t(s[i])));
      ++i;
      continue;
    }
    const uint32_t cp = utf8::codepoint(s, i, q.len);
    if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029)
      parts.push_back(fmt::format("\\u{:04x}", cp));
    else
      parts.emplace_back(s.substr(i, q.len));
    i += q.len;
  }
  std::string out;
  for (size_t k = 0; k < parts.size(); ++k) {
    if (parts.size() > max && k == max / 3) {
      out += "...";
      k = parts.size() - (max - max / 3);
    }
    out += parts[k];
  }
  return out;
}

// A location for messages: the JSON pointer as a URI fragment (shown()).
std::string where(const std::string& path) { return fmt::format("#{}", shown(path, 160)); }

std::string label(const std::string& path) {  // a readable rule name for a schema location
  std::vector<std::string> parts;
  size_t start = 1;
  while (start <= path.size()) {
    const size_t end = std::min(path.find('/', start), path.size());
    const std::string t = path.substr(start, end - start);
    if (t != "properties" && t != "items" && t != "prefixItems" && t != "$defs" &&
        t != "definitions" && t != "additionalProperties")
      parts.push_back(t);
    start = end + 1;
  }
  if (parts.empty()) return "root";
  if (parts.size() == 1) return parts[0];
  return parts[parts.size() - 2] + "-" + parts.back();
}

namespace {

constexpr Keyword kKeywords[] = {
    {"title", false, true},
    {"description", false, true},
    {"default", false, true},
    {"examples", false, true},
    {"$schema", false, true},
    {"$id", false, true},
    {"$comment", false, true},
    {"deprecated", false, true},
    {"readOnly", false, true},
    {"writeOnly", false, true},
    {"$defs", false, true},
    {"definitions", false, true},
    {"type", true, true},
    {"nullable", true, false},
    {"properties", true, true},
    {"required", true, true},
    {"additionalProperties", true, true},
    {"items", true, true},
    {"prefixItems", true, false},
    {"additionalItems", true, false},
    {"minItems", true, true},
    {"maxItems", true, true},
    {"enum", true, true},
    {"const", true, true},
    {"anyOf", true, true},
    {"oneOf", true, false},
    {"allOf", true, false},
    {"$ref", true, true},
    {"minLength", true, false},
    {"maxLength", true, false},
    {"pattern", true, true},
    {"format", true, true},
    {"minimum", true, true},
    {"maximum", true, true},
    {"exclusiveMinimum", true, true},
    {"exclusiveMaximum", true, true},
};

}  // namespace

const Keyword* find_keyword(std::string_view k) {
  for (const Keyword& kw : kKeywords)
    if (k == kw.name) return &kw;
  return nullptr;
}

bool constrains(std::string_view k) {
  const Keyword* kw = find_keyword(k);
  return kw && kw->constrains;
}

// The schema without `drop` and without its annotations.
ojson constraints_of(const ojson& s, std::initializer_list<std::string_view> drop) {
  ojson out = ojson::object();
  for (auto it = s.begin(); it != s.end(); ++it) {
    if (!constrains(it.key())) continue;
    if (std::find(drop.begin(), drop.end(), it.key()) != drop.end()) continue;
    out[it.key()] = it.value();
  }
  return out;
}

bool is_true_schema(const ojson& s) {
  return (s.is_boolean() && s.get<bool>()) || (s.is_object() && constraints_of(s, {}).empty());
}
bool is_false_schema(const ojson& s) { return s.is_boolean() && !s.get<bool>(); }

// allOf of two schemas without merging (merge() resolves the wrapper when it is compiled).
ojson conj(const ojson& a, const ojson& b) {
  if (is_false_schema(a) || is_false_schema(b)) return false;
  if (is_true_schema(a)) return b;
  if (is_true_schema(b) || a == b) return a;
  return ojson{{"allOf", ojson::array({a, b})}};
}

// ---- types

uint8_t intersect_types(uint8_t a, uint8_t b) {
  uint8_t r = a & b & uint8_t(~(kNumber | kInteger));
  if ((a & kNumber) && (b & kNumber))
    r |= kNumber;
  else if ((a & (kNumber | kInteger)) && (b & (kNumber | kInteger)))
    r |= kInteger;
  return r;
}

ojson types_json(uint8_t mask) {
  ojson out = ojson::array();
  for (const auto& [name, bit] : kTypeNames)
    if (mask & bit) out.push_back(name);
  if (out.size() == 1) return out[0];
  return out;
}

bool is_integral(const ojson& v) {
  if (v.is_number_integer()) return true;
  if (!v.is_number_float()) return false;
  const double d = v.get<double>();
  return std::isfinite(d) && std::trunc(d) == d;
}

uint8_t value_type(const ojson& v) {
  if (v.is_null()) return kNull;
  if (v.is_boolean()) return kBool;
  if (v.is_object()) return kObject;
  if (v.is_array()) return kArray;
  if (v.is_string()) return kString;
  return is_integral(v) ? kInteger : kNumber;
}

bool has_type(const ojson& v, uint8_t mask) {
  const uint8_t t = value_type(v);
  if (t == kInteger) return (mask & (kInteger | kNumber)) != 0;
  return (mask & t) != 0;
}

// Kinds implied by type-specific keywords of a schema without `type` (0: none).
uint8_t inferred_types(const ojson& s) {
  uint8_t m = 0;
  for (const char* k : {"properties", "required", "additionalProperties"})
    if (s.contains(k)) m |= kObject;
  for (const char* k : {"items", "prefixItems", "additionalItems", "minItems", "maxItems"})
    if (s.contains(k)) m |= kArray;
  for (const char* k : {"minLength", "maxLength", "pattern", "format"})
    if (s.contains(k)) m |= kString;
  for (const char* k : {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
    if (s.contains(k)) m |= kNumber;
  return m;
}

}  // namespace peregrine::constrain::json_schema_detail
