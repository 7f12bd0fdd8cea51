#include "constrain/json_schema.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "constrain/regex_parser.h"
#include "tokenizer/unicode_utf8.h"

namespace peregrine::constrain {
namespace {

using ojson = nlohmann::ordered_json;
using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;
using Maybe = std::optional<Expr>;  // nullopt: no JSON value matches

constexpr uint32_t kInf = kUnbounded;
constexpr uint32_t kNoRule = UINT32_MAX;
constexpr size_t kMaxJsonDepth = 512;         // nesting of the schema document itself
constexpr uint64_t kMaxWork = 1u << 22;       // builder calls
constexpr uint64_t kMaxMergeWork = 1u << 20;  // JSON values copied while merging allOf/$ref
constexpr uint32_t kHoistDepth = 128;         // deeper subexpressions move to rules of their own
constexpr int64_t kMaxBound = 1000000000000000000;  // |numeric bound| <= 1e18
constexpr size_t kMaxAnyOfProduct = 256;            // branches from multiplying out two anyOf
constexpr size_t kMaxExcludedName = 1024;  // code points of a name excluded from extra keys

// OpenAI's strict subset (platform.openai.com/docs/guides/structured-outputs, "Supported
// schemas"): limits and the string formats it lists.
constexpr uint32_t kStrictMaxObjectDepth = 10;
constexpr uint64_t kStrictMaxProperties = 5000;
constexpr uint64_t kStrictMaxEnumValues = 1000;
constexpr const char* kStrictFormats[] = {"date-time", "time", "date", "duration", "email",
                                          "hostname",  "ipv4", "ipv6", "uuid"};

// ---- code points and canonical string encoding

// Code points a JSON string may hold unescaped (surrogates are never text).
const Ranges kUnescaped = {{0x20, 0x21}, {0x23, 0x5B}, {0x5D, 0xD7FF}, {0xE000, kMaxCodePoint}};
const Ranges kNeedsEscape = {{0x00, 0x1F}, {0x22, 0x22}, {0x5C, 0x5C}};
const Ranges kScalars = {{0, 0xD7FF}, {0xE000, kMaxCodePoint}};

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
std::string shown(std::string_view s, size_t max = 80) {
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

struct Keyword {
  const char* name;
  bool constrains;  // false: an annotation, or $defs/definitions (used only through $ref)
  bool strict_ok;   // within OpenAI's strict subset
};
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

enum : uint8_t {
  kNull = 1,
  kBool = 2,
  kObject = 4,
  kArray = 8,
  kString = 16,
  kNumber = 32,
  kInteger = 64
};
constexpr uint8_t kAllTypes = kNull | kBool | kObject | kArray | kString | kNumber;
constexpr std::pair<const char*, uint8_t> kTypeNames[] = {
    {"null", kNull},     {"boolean", kBool},  {"object", kObject},  {"array", kArray},
    {"string", kString}, {"number", kNumber}, {"integer", kInteger}};

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

// ---- pattern text: top-level alternatives and anchors (regex_parser.h reads the rest)

// Splits at '|' outside groups and classes (Python's class syntax, as regex_parser.h reads it:
// a ']' right after '[' or '[^' is a member).
std::vector<std::string_view> split_alternatives(std::string_view re) {
  std::vector<std::string_view> out;
  size_t depth = 0, start = 0;
  bool in_class = false;
  for (size_t i = 0; i < re.size(); ++i) {
    const char ch = re[i];
    if (ch == '\\') {
      ++i;
    } else if (in_class) {
      if (ch == ']') in_class = false;
    } else if (ch == '[') {
      in_class = true;
      if (i + 1 < re.size() && re[i + 1] == '^') ++i;
      if (i + 1 < re.size() && re[i + 1] == ']') ++i;
    } else if (ch == '(') {
      ++depth;
    } else if (ch == ')') {
      if (depth > 0) --depth;
    } else if (ch == '|' && depth == 0) {
      out.push_back(re.substr(start, i - start));
      start = i + 1;
    }
  }
  out.push_back(re.substr(start));
  return out;
}

bool ends_with_anchor(std::string_view re) {
  if (re.empty() || re.back() != '$') return false;
  size_t backslashes = 0;
  for (size_t i = re.size() - 1; i > 0 && re[i - 1] == '\\'; --i) ++backslashes;
  return backslashes % 2 == 0;
}

// An anchor or word-boundary assertion outside a class, which `.*(p).*` would misread.
std::optional<std::string> inner_assertion(std::string_view re) {
  bool in_class = false;
  for (size_t i = 0; i < re.size(); ++i) {
    const char ch = re[i];
    if (ch == '\\') {
      if (i + 1 < re.size() && !in_class &&
          std::string_view("bBAZzG").find(re[i + 1]) != std::string_view::npos)
        return std::string(re.substr(i, 2));
      ++i;
    } else if (in_class) {
      if (ch == ']') in_class = false;
    } else if (ch == '[') {
      in_class = true;
      if (i + 1 < re.size() && re[i + 1] == '^') ++i;
      if (i + 1 < re.size() && re[i + 1] == ']') ++i;
    } else if (ch == '^' || ch == '$') {
      return std::string(1, ch);
    }
  }
  return std::nullopt;
}

// ---- JSON size and depth (iterative: the document may be deeper than the stack allows)

template <typename J>
Status check_json_depth(const J& j) {
  std::vector<std::pair<const J*, size_t>> stack{{&j, 1}};
  while (!stack.empty()) {
    const auto [p, d] = stack.back();
    stack.pop_back();
    if (d > kMaxJsonDepth)
      return make_error("json schema: the schema document nests deeper than {} levels",
                        kMaxJsonDepth);
    if (p->is_structured())
      for (const auto& x : *p) stack.emplace_back(&x, d + 1);
  }
  return {};
}

uint64_t json_size(const ojson& j, uint64_t cap) {
  uint64_t n = 0;
  std::vector<const ojson*> stack{&j};
  while (!stack.empty() && n <= cap) {
    const ojson* p = stack.back();
    stack.pop_back();
    ++n;
    if (p->is_structured())
      for (const auto& x : *p) stack.push_back(&x);
  }
  return n;
}

// ---- the compiler

class Compiler {
 public:
  Compiler(const ojson& root, const JsonSchemaOptions& opt) : root_(root), opt_(opt) {}

  Result<Grammar> compile();
  Grammar object_grammar();

 private:
  struct Ctx {
    std::string path;      // JSON pointer of the schema ("" for the root)
    uint32_t depth = 0;    // schema nesting
    uint32_t objects = 0;  // object nesting (strict mode's limit)
  };
  static Ctx sub(const Ctx& c, std::string_view a) {
    return {c.path + "/" + pointer_token(a), c.depth + 1, c.objects};
  }
  static Ctx sub(const Ctx& c, std::string_view a, std::string_view b) {
    return {c.path + "/" + pointer_token(a) + "/" + pointer_token(b), c.depth + 1, c.objects};
  }
  static Ctx sub(const Ctx& c, std::string_view a, size_t i) {
    return sub(c, a, std::to_string(i));
  }

  // Builders (each call counts toward kMaxWork).
  Expr lit(std::string s) {
    ++work_;
    return Expr::literal(std::move(s));
  }
  Expr cls(Ranges r) {
    ++work_;
    return Expr::cls(std::move(r));
  }
  Expr chr(char lo, char hi) { return cls({{uint32_t(uint8_t(lo)), uint32_t(uint8_t(hi))}}); }
  Expr ref(uint32_t rule) {
    ++work_;
    return Expr::ref(rule);
  }
  Expr seq(std::vector<Expr> items);
  Expr alt(std::vector<Expr> items);
  Expr rep(Expr e, uint32_t min, uint32_t max);
  Expr opt(Expr e) { return rep(std::move(e), 0, 1); }
  Expr ws() { return opt_.whitespace == JsonWhitespace::Compact ? Expr::empty() : ref(ws_rule()); }
  Expr sep() { return seq({ws(), lit(","), ws()}); }
  Expr digits(uint32_t min, uint32_t max) { return rep(chr('0', '9'), min, max); }
  Expr hex() { return cls({{'0', '9'}, {'A', 'F'}, {'a', 'f'}}); }

  uint32_t add_rule(std::string_view base, Expr body);
  // e itself when small, else a reference to a new rule holding it (for expressions that
  // appear more than once or are repeated).
  Expr share(Expr e, std::string_view base);
  void hoist(Expr& e, uint32_t depth, const std::string& owner);

  // Shared rules, made on first use.
  uint32_t ws_rule();
  uint32_t char_rule();
  uint32_t string_rule();
  uint32_t number_rule(bool integer);
  uint32_t value_rule();
  uint32_t escapes_rule();
  Expr any_value() { return ref(value_rule()); }
  Maybe canonical_class(const Ranges& set);
  Expr key_not_in(const std::vector<std::vector<uint32_t>>& names);
  Expr uint_range(uint64_t lo, std::optional<uint64_t> hi);
  Expr same_length_range(std::string_view lo, std::string_view hi);
  Maybe fraction_range(uint64_t a, bool a_open, std::optional<uint64_t> b, bool b_open);

  Result<Maybe> node(const ojson& s, const Ctx& c);
  Result<Maybe> ref_node(const ojson& s, const Ctx& c);
  Result<Maybe> union_node(const ojson& s, const Ctx& c);
  Result<Maybe> enum_node(const ojson& s, const Ctx& c);
  Result<Maybe> typed_node(const ojson& s, const Ctx& c);
  Result<Maybe> object_node(const ojson& s, const Ctx& c);
  Result<Maybe> array_node(const ojson& s, const Ctx& c);
  Result<Maybe> string_node(const ojson& s, const Ctx& c);
  Result<Maybe> number_node(const ojson& s, const Ctx& c, bool integer);
  Result<Expr> value_literal(const ojson& v, const Ctx& c);

  Status check_keywords(const ojson& s, const Ctx& c);
  Status check_strict(const ojson& s, const Ctx& c);
  Result<std::optional<uint8_t>> declared_types(const ojson& s, const Ctx& c);
  Result<uint32_t> read_count(const ojson& s, const char* key, uint32_t absent, const Ctx& c);

  Result<uint32_t> ref_rule(const ojson& ref, const Ctx& c);
  Result<std::string> ref_pointer(const std::string& ref, const Ctx& c);
  Result<const ojson*> lookup(const std::string& pointer, const std::string& ref, const Ctx& c);

  Result<ojson> resolve(const ojson& s, const Ctx& c, uint32_t depth);
  Result<ojson> merge(const ojson& a, const ojson& b, const Ctx& c);
  Status charge(const ojson& j, const Ctx& c);
  Result<bool> disjoint(const ojson& a, const ojson& b, const Ctx& c, int depth);

  Result<uint32_t> format_rule(const std::string& name, const Ctx& c);
  Result<uint32_t> pattern_rule(const std::string& re, const Ctx& c);
  Result<uint32_t> splice_regex(const Grammar& rg, const std::string& base, const Ctx& c);
  Result<Expr> regex_expr(const Expr& e, const std::vector<uint32_t>& ids, uint32_t depth,
                          const Ctx& c);

  Error too_large(const Ctx& c) const {
    return make_error("json schema: the grammar grows too large (at {}); simplify the schema",
                      where(c.path));
  }

  const ojson& root_;
  JsonSchemaOptions opt_;
  Grammar g_;
  std::unordered_map<std::string, uint32_t> rule_names_;
  std::unordered_map<std::string, uint32_t> name_suffix_;  // last suffix used per base name
  uint64_t work_ = 0, merge_work_ = 0;
  uint32_t root_rule_ = kNoRule;
  uint32_t ws_ = kNoRule, char_ = kNoRule, string_ = kNoRule, number_ = kNoRule, integer_ = kNoRule,
           value_ = kNoRule, escapes_ = kNoRule;
  struct PendingRef {
    std::string pointer;
    const ojson* target;
    uint32_t rule;
    std::string used_at;
  };
  std::map<std::string, uint32_t> ref_rules_;  // decoded JSON pointer -> rule
  std::vector<PendingRef> pending_;            // $ref targets still to compile
  std::map<std::string, uint32_t> format_rules_, pattern_rules_;
  uint64_t strict_properties_ = 0, strict_enum_values_ = 0;
};

// ---- builders

Expr Compiler::seq(std::vector<Expr> items) {
  ++work_;
  std::vector<Expr> out;
  auto push = [&](Expr&& x) {
    if (x.kind == Expr::Kind::Literal && !out.empty() && out.back().kind == Expr::Kind::Literal)
      out.back().text += x.text;
    else
      out.push_back(std::move(x));
  };
  for (Expr& e : items) {
    if (e.kind == Expr::Kind::Empty || (e.kind == Expr::Kind::Literal && e.text.empty())) continue;
    if (e.kind == Expr::Kind::Seq) {
      for (Expr& x : e.items) push(std::move(x));
    } else {
      push(std::move(e));
    }
  }
  if (out.empty()) return Expr::empty();
  if (out.size() == 1) return std::move(out[0]);
  return Expr::seq(std::move(out));
}

Expr Compiler::alt(std::vector<Expr> items) {
  ++work_;
  PG_ASSERT(!items.empty());
  if (items.size() == 1) return std::move(items[0]);
  return Expr::alt(std::move(items));
}

Expr Compiler::rep(Expr e, uint32_t min, uint32_t max) {
  ++work_;
  if (max == 0 || e.kind == Expr::Kind::Empty) return Expr::empty();
  if (min == 1 && max == 1) return e;
  return Expr::repeat(std::move(e), min, max);
}

uint32_t Compiler::add_rule(std::string_view base, Expr body) {
  std::string name;
  for (char ch : base) {
    const bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                    (ch >= '0' && ch <= '9') || ch == '-';
    name += ok ? ch : '-';
  }
  if (name.empty()) name = "rule";
  if (name.size() > 48) name.resize(48);
  std::string unique = name;
  while (rule_names_.count(unique)) unique = fmt::format("{}-{}", name, ++name_suffix_[name] + 1);
  const auto id = uint32_t(g_.rules.size());
  rule_names_.emplace(unique, id);
  g_.names.push_back(unique);
  g_.rules.push_back(std::move(body));
  return id;
}

Expr Compiler::share(Expr e, std::string_view base) {
  if (expanded_size(e) <= 8) return e;
  return ref(add_rule(base, std::move(e)));
}

// Moves subexpressions at depth kHoistDepth into rules of their own, so that every rule stays
// within validate()'s nesting bound however deeply the schema nests.
void Compiler::hoist(Expr& e, uint32_t depth, const std::string& owner) {
  if (e.items.empty()) return;
  if (depth >= kHoistDepth) {
    const uint32_t id = add_rule(owner + "-part", std::move(e));
    e = Expr::ref(id);
    return;
  }
  for (Expr& x : e.items) hoist(x, depth + 1, owner);
}

// ws ::= ( " " | "\n" [ \t]{0,20} )?
uint32_t Compiler::ws_rule() {
  if (ws_ == kNoRule)
    ws_ = add_rule(
        "ws", opt(alt({lit(" "), seq({lit("\n"), rep(cls({{'\t', '\t'}, {' ', ' '}}), 0, 20)})})));
  return ws_;
}

// char ::= unescaped | "\" (["\/bfnrt] | "u" hex{4} but not a surrogate)
uint32_t Compiler::char_rule() {
  if (char_ != kNoRule) return char_;
  Expr not_d = cls({{'0', '9'}, {'A', 'C'}, {'E', 'F'}, {'a', 'c'}, {'e', 'f'}});
  Expr u = alt({seq({std::move(not_d), hex(), hex(), hex()}),
                seq({cls({{'D', 'D'}, {'d', 'd'}}), chr('0', '7'), hex(), hex()})});
  Expr esc = alt({cls({{'"', '"'},
                       {'/', '/'},
                       {'\\', '\\'},
                       {'b', 'b'},
                       {'f', 'f'},
                       {'n', 'n'},
                       {'r', 'r'},
                       {'t', 't'}}),
                  seq({lit("u"), std::move(u)})});
  char_ = add_rule("char", alt({cls(kUnescaped), seq({lit("\\"), std::move(esc)})}));
  return char_;
}

uint32_t Compiler::string_rule() {
  if (string_ == kNoRule) {
    const uint32_t ch = char_rule();
    string_ = add_rule("string", seq({lit("\""), rep(ref(ch), 0, kInf), lit("\"")}));
  }
  return string_;
}

// integer ::= "-"? ("0" | [1-9] [0-9]*); number adds ("." [0-9]+)? ([eE] [-+]? [0-9]+)?
uint32_t Compiler::number_rule(bool integer) {
  uint32_t& slot = integer ? integer_ : number_;
  if (slot != kNoRule) return slot;
  Expr whole = seq({opt(lit("-")), alt({lit("0"), seq({chr('1', '9'), digits(0, kInf)})})});
  if (integer) {
    slot = add_rule("integer", std::move(whole));
  } else {
    slot =
        add_rule("number", seq({std::move(whole), opt(seq({lit("."), digits(1, kInf)})),
                                opt(seq({cls({{'E', 'E'}, {'e', 'e'}}),
                                         opt(cls({{'+', '+'}, {'-', '-'}})), digits(1, kInf)}))}));
  }
  return slot;
}

// value ::= object | array | string | number | "true" | "false" | "null"
// object ::= "{" ws ( string ws ":" ws value ( sep string ws ":" ws value )* ws )? "}"
// array ::= "[" ws ( value ( sep value )* ws )? "]"
uint32_t Compiler::value_rule() {
  if (value_ != kNoRule) return value_;
  value_ = add_rule("value", Expr::empty());
  const uint32_t object = add_rule("object", Expr::empty());
  const uint32_t array = add_rule("array", Expr::empty());
  const uint32_t str = string_rule(), num = number_rule(false);
  auto member = [&] { return seq({ref(str), ws(), lit(":"), ws(), ref(value_)}); };
  Expr obj = seq(
      {lit("{"), ws(), opt(seq({member(), rep(seq({sep(), member()}), 0, kInf), ws()})), lit("}")});
  Expr arr =
      seq({lit("["), ws(), opt(seq({ref(value_), rep(seq({sep(), ref(value_)}), 0, kInf), ws()})),
           lit("]")});
  g_.rules[object] = std::move(obj);
  g_.rules[array] = std::move(arr);
  g_.rules[value_] =
      alt({ref(object), ref(array), ref(str), ref(num), lit("true"), lit("false"), lit("null")});
  return value_;
}

// The canonical escapes of all 34 characters that need one.
uint32_t Compiler::escapes_rule() {
  if (escapes_ != kNoRule) return escapes_;
  std::vector<Expr> alts;
  for (const auto& [lo, hi] : kNeedsEscape)
    for (uint32_t cp = lo; cp <= hi; ++cp) {
      std::string s;
      append_canonical(s, cp);
      alts.push_back(lit(std::move(s)));
    }
  escapes_ = add_rule("escape", alt(std::move(alts)));
  return escapes_;
}

// One code point of `set`, in canonical encoding (nullopt for an empty set).
Maybe Compiler::canonical_class(const Ranges& set) {
  const Ranges s = intersect(normalized(set), kScalars);
  std::vector<Expr> alts;
  Ranges plain = intersect(s, kUnescaped);
  if (!plain.empty()) alts.push_back(cls(std::move(plain)));
  const Ranges special = intersect(s, kNeedsEscape);
  if (special == kNeedsEscape) {
    alts.push_back(ref(escapes_rule()));
  } else {
    for (const auto& [lo, hi] : special)
      for (uint32_t cp = lo; cp <= hi; ++cp) {
        std::string t;
        append_canonical(t, cp);
        alts.push_back(lit(std::move(t)));
      }
  }
  if (alts.empty()) return std::nullopt;
  return alt(std::move(alts));
}

// The content of a JSON string (between its quotes) whose value is none of `names`: a trie of
// the names where, at each node, the text may stop (unless a name ends there), go on with a
// child's character, or leave the trie with any other character and then continue freely.
// Characters on the trie are canonical; after leaving it, any encoding.
Expr Compiler::key_not_in(const std::vector<std::vector<uint32_t>>& names) {
  struct Node {
    std::map<uint32_t, size_t> next;
    bool end = false;
  };
  std::vector<Node> trie(1);
  for (const auto& name : names) {
    size_t n = 0;
    for (uint32_t cp : name) {
      auto it = trie[n].next.find(cp);
      if (it == trie[n].next.end()) {
        trie.emplace_back();
        it = trie[n].next.emplace(cp, trie.size() - 1).first;
      }
      n = it->second;
    }
    trie[n].end = true;
  }
  const uint32_t ch = char_rule();
  auto build = [&](auto&& self, size_t n) -> Expr {
    std::vector<Expr> alts;
    if (!trie[n].end) alts.push_back(Expr::empty());
    Ranges children;
    for (const auto& [cp, child] : trie[n].next) {
      std::string t;
      append_canonical(t, cp);
      alts.push_back(seq({lit(std::move(t)), self(self, child)}));
      children.emplace_back(cp, cp);
    }
    if (Maybe other = canonical_class(complement(normalized(children))))
      alts.push_back(seq({std::move(*other), rep(ref(ch), 0, kInf)}));
    return alt(std::move(alts));
  };
  return build(build, 0);
}

// ---- integer ranges as digit strings (no leading zeros)

// Decimal strings of equal length n >= 1 from lo to hi (lo <= hi).
Expr Compiler::same_length_range(std::string_view lo, std::string_view hi) {
  if (lo == hi) return lit(std::string(lo));
  size_t i = 0;
  while (lo[i] == hi[i]) ++i;
  const std::string prefix(lo.substr(0, i));
  const char a = lo[i], b = hi[i];
  const std::string_view lo_rest = lo.substr(i + 1), hi_rest = hi.substr(i + 1);
  const auto m = uint32_t(lo_rest.size());
  if (m == 0) return seq({lit(prefix), chr(a, b)});
  const bool lo_zeros = lo_rest.find_first_not_of('0') == std::string_view::npos;
  const bool hi_nines = hi_rest.find_first_not_of('9') == std::string_view::npos;
  std::vector<Expr> alts;
  if (!lo_zeros)
    alts.push_back(seq({lit(std::string(1, a)), same_length_range(lo_rest, std::string(m, '9'))}));
  const char first = lo_zeros ? a : char(a + 1), last = hi_nines ? b : char(b - 1);
  if (first <= last) alts.push_back(seq({chr(first, last), digits(m, m)}));
  if (!hi_nines)
    alts.push_back(seq({lit(std::string(1, b)), same_length_range(std::string(m, '0'), hi_rest)}));
  return seq({lit(prefix), alt(std::move(alts))});
}

// Integers in [lo, hi] (hi absent: unbounded) as decimal strings without leading zeros.
Expr Compiler::uint_range(uint64_t lo, std::optional<uint64_t> hi) {
  const std::string los = std::to_string(lo);
  const size_t hi_len = hi ? std::to_string(*hi).size() : los.size();
  std::vector<Expr> alts;
  for (size_t len = los.size(); len <= hi_len; ++len) {
    const std::string from =
        len == los.size() ? los : fmt::format("1{}", std::string(len - 1, '0'));
    const std::string to = hi && len == hi_len ? std::to_string(*hi) : std::string(len, '9');
    alts.push_back(same_length_range(from, to));
  }
  if (!hi) alts.push_back(seq({chr('1', '9'), digits(uint32_t(los.size()), kInf)}));
  return alt(std::move(alts));
}

// Non-negative decimals (integer part without leading zeros, optional fraction, no exponent)
// whose value m satisfies a <(=) m <(=) b, for whole numbers a and b.
Maybe Compiler::fraction_range(uint64_t a, bool a_open, std::optional<uint64_t> b, bool b_open) {
  auto any_fraction = [&] { return opt(seq({lit("."), digits(1, kInf)})); };
  auto zero_fraction = [&] { return opt(seq({lit("."), rep(lit("0"), 1, kInf)})); };
  auto nonzero_fraction = [&] {
    return seq({lit("."), digits(0, kInf), chr('1', '9'), digits(0, kInf)});
  };
  if (b && a > *b) return std::nullopt;
  if (b && a == *b) {
    if (a_open || b_open) return std::nullopt;
    return seq({lit(std::to_string(a)), zero_fraction()});
  }
  std::vector<Expr> alts;
  alts.push_back(seq({lit(std::to_string(a)), a_open ? nonzero_fraction() : any_fraction()}));
  if (!b || a + 1 <= *b - 1) {
    std::optional<uint64_t> hi;
    if (b) hi = *b - 1;
    alts.push_back(seq({uint_range(a + 1, hi), any_fraction()}));
  }
  if (b && !b_open) alts.push_back(seq({lit(std::to_string(*b)), zero_fraction()}));
  return alt(std::move(alts));
}

// ---- checks

Status Compiler::check_keywords(const ojson& s, const Ctx& c) {
  for (auto it = s.begin(); it != s.end(); ++it)
    if (!find_keyword(it.key()))
      return make_error("json schema: unsupported keyword '{}' at {}", shown(it.key()),
                        where(c.path));
  return {};
}

Status Compiler::check_strict(const ojson& s, const Ctx& c) {
  for (auto it = s.begin(); it != s.end(); ++it)
    if (!find_keyword(it.key())->strict_ok)
      return make_error("json schema (strict): '{}' is not supported in strict mode, at {}",
                        shown(it.key()), where(c.path));
  if (s.contains("items") && !s["items"].is_object())
    return make_error("json schema (strict): 'items' must be a schema object, at {}",
                      where(c.path));
  if (s.contains("format") && s["format"].is_string()) {
    const auto f = s["format"].get<std::string>();
    if (std::find(std::begin(kStrictFormats), std::end(kStrictFormats), f) ==
        std::end(kStrictFormats))
      return make_error("json schema (strict): format '{}' is not supported in strict mode, at {}",
                        shown(f), where(c.path));
  }
  if (s.contains("$ref") && !constraints_of(s, {"$ref"}).empty())
    return make_error("json schema (strict): '$ref' with sibling keywords at {}", where(c.path));
  if (!s.contains("type") && !s.contains("anyOf") && !s.contains("$ref") && !s.contains("enum") &&
      !s.contains("const"))
    return make_error("json schema (strict): the schema at {} has no 'type'", where(c.path));
  return {};
}

Result<std::optional<uint8_t>> Compiler::declared_types(const ojson& s, const Ctx& c) {
  std::optional<uint8_t> mask;
  if (s.contains("type")) {
    const ojson& t = s["type"];
    std::vector<const ojson*> names;
    if (t.is_string()) {
      names.push_back(&t);
    } else if (t.is_array()) {
      for (const ojson& x : t) names.push_back(&x);
    } else {
      return make_error("json schema: 'type' at {} must be a string or an array of strings",
                        where(c.path));
    }
    mask = 0;
    for (const ojson* x : names) {
      uint8_t bit = 0;
      for (const auto& [name, b] : kTypeNames)
        if (x->is_string() && x->get<std::string>() == name) bit = b;
      if (!bit)
        return make_error("json schema: unknown type {} at {}",
                          shown(x->dump(-1, ' ', false, ojson::error_handler_t::replace)),
                          where(c.path));
      *mask |= bit;
    }
  }
  if (s.contains("nullable")) {
    if (!s["nullable"].is_boolean())
      return make_error("json schema: 'nullable' at {} must be a boolean", where(c.path));
    if (s["nullable"].get<bool>() && mask) *mask |= kNull;
  }
  return mask;
}

Result<uint32_t> Compiler::read_count(const ojson& s, const char* key, uint32_t absent,
                                      const Ctx& c) {
  if (!s.contains(key)) return absent;
  const ojson& v = s[key];
  if (!is_integral(v) || v.get<double>() < 0)
    return make_error("json schema: '{}' at {} must be a non-negative integer", key, where(c.path));
  if (v.get<double>() > double(opt_.max_repeat))
    return make_error("json schema: '{}' {} at {} is above the limit {}", key, v.dump(),
                      where(c.path), opt_.max_repeat);
  return uint32_t(v.get<double>());
}

// ---- schema nodes

Result<Maybe> Compiler::node(const ojson& s, const Ctx& c) {
  if (c.depth > opt_.max_depth)
    return make_error("json schema: schemas nest deeper than {} levels at {}", opt_.max_depth,
                      where(c.path));
  if (work_ > kMaxWork) return too_large(c);
  if (s.is_boolean()) {
    if (opt_.strict) return make_error("json schema (strict): boolean schema at {}", where(c.path));
    if (!s.get<bool>()) return Maybe{};
    return Maybe(any_value());
  }
  if (!s.is_object())
    return make_error("json schema: the schema at {} must be an object or a boolean, not {}",
                      where(c.path), s.type_name());
  PG_TRY(check_keywords(s, c));
  if (opt_.strict) PG_TRY(check_strict(s, c));
  if (s.contains("$ref")) return ref_node(s, c);
  if (s.contains("allOf")) {
    PG_ASSIGN(ojson merged, resolve(s, c, 0));
    return node(merged, {c.path, c.depth + 1, c.objects});
  }
  if (s.contains("anyOf") || s.contains("oneOf")) return union_node(s, c);
  if (s.contains("enum") || s.contains("const")) return enum_node(s, c);
  return typed_node(s, c);
}

Result<Maybe> Compiler::ref_node(const ojson& s, const Ctx& c) {
  if (!constraints_of(s, {"$ref"}).empty()) {  // siblings constrain too: their conjunction
    PG_ASSIGN(ojson merged, resolve(s, c, 0));
    return node(merged, {c.path, c.depth + 1, c.objects});
  }
  PG_ASSIGN(uint32_t rule, ref_rule(s["$ref"], c));
  return Maybe(ref(rule));
}

Result<Maybe> Compiler::union_node(const ojson& s, const Ctx& c) {
  if (s.contains("anyOf") && s.contains("oneOf"))
    return make_error("json schema: 'anyOf' together with 'oneOf' at {} is not supported",
                      where(c.path));
  const char* kw = s.contains("anyOf") ? "anyOf" : "oneOf";
  const ojson& branches = s[kw];
  if (!branches.is_array() || branches.empty())
    return make_error("json schema: '{}' at {} must be a non-empty array", kw, where(c.path));
  const ojson rest = constraints_of(s, {kw});
  std::optional<ojson> rest_resolved;
  if (!rest.empty()) {
    PG_ASSIGN(ojson r, resolve(rest, c, 0));
    rest_resolved = std::move(r);
  }
  std::vector<ojson> merged;  // the branches with the siblings merged in (if any)
  for (size_t i = 0; i < branches.size(); ++i) {
    if (!rest_resolved) break;
    PG_ASSIGN(ojson b, resolve(branches[i], sub(c, kw, i), 0));
    PG_ASSIGN(ojson m, merge(*rest_resolved, b, c));
    merged.push_back(std::move(m));
  }
  auto branch = [&](size_t i) -> const ojson& { return rest_resolved ? merged[i] : branches[i]; };
  if (std::string_view(kw) == "oneOf" && !opt_.oneof_as_anyof) {
    if (branches.size() > 256)
      return make_error("json schema: 'oneOf' at {} has more than 256 branches", where(c.path));
    for (size_t i = 0; i < branches.size(); ++i)
      for (size_t j = i + 1; j < branches.size(); ++j) {
        PG_ASSIGN(bool d, disjoint(branch(i), branch(j), sub(c, kw, i), 0));
        if (!d)
          return make_error(
              "json schema: 'oneOf' at {}: branches {} and {} may both match a value (oneOf "
              "compiles as anyOf only when its branches are provably disjoint; use anyOf, or "
              "the oneof_as_anyof option)",
              where(c.path), i, j);
      }
  }
  std::vector<Expr> alts;
  for (size_t i = 0; i < branches.size(); ++i) {
    PG_ASSIGN(Maybe e, node(branch(i), sub(c, kw, i)));
    if (e) alts.push_back(std::move(*e));
  }
  if (alts.empty()) return Maybe{};
  return Maybe(alt(std::move(alts)));
}

// Keywords that may accompany enum/const: they filter the values (value_allowed()).
constexpr const char* kValueFilters[] = {"enum",
                                         "const",
                                         "type",
                                         "nullable",
                                         "minimum",
                                         "maximum",
                                         "exclusiveMinimum",
                                         "exclusiveMaximum",
                                         "minLength",
                                         "maxLength",
                                         "minItems",
                                         "maxItems",
                                         "required"};

// Whether the value satisfies the filtering keywords of s (each applies to its own type).
bool value_allowed(const ojson& v, const ojson& s) {
  auto num = [&](const char* k) { return s.contains(k) && s[k].is_number(); };
  auto flag = [&](const char* k) { return s.contains(k) && s[k].is_boolean() && s[k].get<bool>(); };
  if (v.is_number()) {
    const double x = v.get<double>();
    if (num("minimum") && (flag("exclusiveMinimum") ? x <= s["minimum"].get<double>()
                                                    : x < s["minimum"].get<double>()))
      return false;
    if (num("maximum") && (flag("exclusiveMaximum") ? x >= s["maximum"].get<double>()
                                                    : x > s["maximum"].get<double>()))
      return false;
    if (num("exclusiveMinimum") && x <= s["exclusiveMinimum"].get<double>()) return false;
    if (num("exclusiveMaximum") && x >= s["exclusiveMaximum"].get<double>()) return false;
  }
  auto count_ok = [&](double n, const char* lo, const char* hi) {
    return !(num(lo) && n < s[lo].get<double>()) && !(num(hi) && n > s[hi].get<double>());
  };
  if (v.is_string()) {
    std::vector<uint32_t> cps;
    if (!decode_utf8(v.get_ref<const std::string&>(), &cps)) return false;
    if (!count_ok(double(cps.size()), "minLength", "maxLength")) return false;
  }
  if (v.is_array() && !count_ok(double(v.size()), "minItems", "maxItems")) return false;
  if (v.is_object() && s.contains("required") && s["required"].is_array())
    for (const ojson& r : s["required"])
      if (r.is_string() && !v.contains(r.get<std::string>())) return false;
  return true;
}

Result<Maybe> Compiler::enum_node(const ojson& s, const Ctx& c) {
  for (auto it = s.begin(); it != s.end(); ++it) {
    const std::string& k = it.key();
    if (constrains(k) &&
        std::find_if(std::begin(kValueFilters), std::end(kValueFilters),
                     [&](const char* f) { return k == f; }) == std::end(kValueFilters))
      return make_error(
          "json schema: '{}' together with '{}' at {} is not supported (enum and const may only "
          "be narrowed by type and by bounds on numbers, lengths, item counts and required)",
          k, s.contains("enum") ? "enum" : "const", where(c.path));
  }
  std::vector<const ojson*> values;
  if (s.contains("enum")) {
    if (!s["enum"].is_array())
      return make_error("json schema: 'enum' at {} must be an array", where(c.path));
    for (const ojson& v : s["enum"])
      if (!s.contains("const") || v == s["const"]) values.push_back(&v);
  } else {
    values.push_back(&s["const"]);
  }
  PG_ASSIGN(std::optional<uint8_t> types, declared_types(s, c));
  if (opt_.strict) {
    strict_enum_values_ += values.size();
    if (strict_enum_values_ > kStrictMaxEnumValues)
      return make_error("json schema (strict): more than {} enum values in all (at {})",
                        kStrictMaxEnumValues, where(c.path));
  }
  std::set<std::string> seen;
  std::vector<Expr> alts;
  for (const ojson* v : values) {
    if ((types && !has_type(*v, *types)) || !value_allowed(*v, s)) continue;
    if (!seen.insert(v->dump(-1, ' ', false, ojson::error_handler_t::replace)).second) continue;
    PG_ASSIGN(Expr e, value_literal(*v, c));
    alts.push_back(std::move(e));
    if (work_ > kMaxWork) return too_large(c);
  }
  if (alts.empty()) return Maybe{};
  return Maybe(alt(std::move(alts)));
}

// A JSON value as text under the whitespace policy, strings in canonical form.
Result<Expr> Compiler::value_literal(const ojson& v, const Ctx& c) {
  ++work_;
  if (v.is_string()) {
    std::optional<std::string> t = canonical(v.get_ref<const std::string&>());
    if (!t) return make_error("json schema: a string at {} is not valid UTF-8", where(c.path));
    return lit("\"" + *t + "\"");
  }
  if (v.is_number_float() && !std::isfinite(v.get<double>()))
    return make_error("json schema: a number at {} is not finite", where(c.path));
  if (v.is_null() || v.is_boolean() || v.is_number()) return lit(v.dump());
  if (v.is_array() || v.is_object()) {
    const bool obj = v.is_object();
    std::vector<Expr> items;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!items.empty()) items.push_back(sep());
      if (obj) {
        std::optional<std::string> k = canonical(it.key());
        if (!k) return make_error("json schema: a key at {} is not valid UTF-8", where(c.path));
        items.push_back(seq({lit("\"" + *k + "\""), ws(), lit(":"), ws()}));
      }
      PG_ASSIGN(Expr x, value_literal(it.value(), c));
      items.push_back(std::move(x));
    }
    if (!items.empty()) items.push_back(ws());
    return seq({lit(obj ? "{" : "["), ws(), seq(std::move(items)), lit(obj ? "}" : "]")});
  }
  return make_error("json schema: unsupported value of type {} at {}", v.type_name(),
                    where(c.path));
}

Result<Maybe> Compiler::typed_node(const ojson& s, const Ctx& c) {
  PG_ASSIGN(std::optional<uint8_t> declared, declared_types(s, c));
  uint8_t mask;
  if (declared) {
    mask = *declared;
  } else {
    const uint8_t inferred = inferred_types(s);
    if (!inferred) return Maybe(any_value());
    mask = inferred;
    if (s.contains("nullable") && s["nullable"].get<bool>()) mask |= kNull;
  }
  std::vector<Expr> alts;
  auto add = [&](Result<Maybe> r) -> Status {
    if (!r.ok()) return r.error();
    if (r.value()) alts.push_back(std::move(*r.value()));
    return {};
  };
  if (mask & kObject) PG_TRY(add(object_node(s, c)));
  if (mask & kArray) PG_TRY(add(array_node(s, c)));
  if (mask & kString) PG_TRY(add(string_node(s, c)));
  if (mask & (kNumber | kInteger)) PG_TRY(add(number_node(s, c, !(mask & kNumber))));
  if (mask & kBool) alts.push_back(alt({lit("true"), lit("false")}));
  if (mask & kNull) alts.push_back(lit("null"));
  if (alts.empty()) return Maybe{};
  return Maybe(alt(std::move(alts)));
}

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

Result<Maybe> Compiler::object_node(const ojson& s, const Ctx& c0) {
  Ctx c = c0;
  ++c.objects;
  const std::string name = label(c.path);
  if (opt_.strict && c.objects > kStrictMaxObjectDepth)
    return make_error("json schema (strict): objects nest deeper than {} levels at {}",
                      kStrictMaxObjectDepth, where(c.path));
  static const ojson kEmpty = ojson::object();
  const ojson& props = s.contains("properties") ? s["properties"] : kEmpty;
  if (!props.is_object())
    return make_error("json schema: 'properties' at {} must be an object", where(c.path));
  std::vector<std::string> required;  // in order, without repeats
  std::set<std::string> required_set, listed;
  if (s.contains("required")) {
    if (!s["required"].is_array())
      return make_error("json schema: 'required' at {} must be an array", where(c.path));
    for (const ojson& r : s["required"]) {
      if (!r.is_string())
        return make_error("json schema: 'required' at {} must list strings", where(c.path));
      if (required_set.insert(r.get<std::string>()).second)
        required.push_back(r.get<std::string>());
    }
  }
  for (auto it = props.begin(); it != props.end(); ++it) listed.insert(it.key());
  const ojson ap = s.contains("additionalProperties") ? s["additionalProperties"] : ojson(true);
  if (!ap.is_boolean() && !ap.is_object())
    return make_error("json schema: 'additionalProperties' at {} must be a boolean or a schema",
                      where(c.path));
  auto is_required = [&](const std::string& k) { return required_set.count(k) != 0; };
  if (opt_.strict) {
    if (!(ap.is_boolean() && !ap.get<bool>()))
      return make_error("json schema (strict): objects need \"additionalProperties\": false, at {}",
                        where(c.path));
    for (auto it = props.begin(); it != props.end(); ++it)
      if (!is_required(it.key()))
        return make_error(
            "json schema (strict): property '{}' at {} is not in 'required' (in "
            "strict mode every property is required; use a null type for "
            "optional ones)",
            shown(it.key()), where(c.path));
    for (const std::string& r : required)
      if (!listed.count(r))
        return make_error(
            "json schema (strict): required property '{}' at {} is not in "
            "'properties'",
            shown(r), where(c.path));
    strict_properties_ += props.size();
    if (strict_properties_ > kStrictMaxProperties)
      return make_error("json schema (strict): more than {} properties in all (at {})",
                        kStrictMaxProperties, where(c.path));
  }

  struct Member {
    Expr kv;  // "name" ws ":" ws value
    bool required;
  };
  std::vector<Member> members;
  std::vector<std::vector<uint32_t>> names;  // code points of every listed name
  auto key_of = [&](const std::string& k) -> Result<std::string> {
    std::vector<uint32_t> cps;
    if (!decode_utf8(k, &cps))
      return make_error("json schema: a property name at {} is not valid UTF-8", where(c.path));
    names.push_back(std::move(cps));
    return "\"" + *canonical(k) + "\"";
  };
  std::vector<std::pair<std::string, Expr>> values;  // property name -> value
  for (auto it = props.begin(); it != props.end(); ++it) {
    PG_ASSIGN(std::string key, key_of(it.key()));
    PG_ASSIGN(Maybe v, node(it.value(), sub(c, "properties", it.key())));
    if (!v) {
      if (is_required(it.key())) return Maybe{};
      continue;
    }
    values.emplace_back(key, std::move(*v));
    members.push_back({Expr::empty(), is_required(it.key())});
  }
  // additionalProperties: the value of required names not in properties and of other members.
  Maybe ap_value;
  if (!is_false_schema(ap)) {
    PG_ASSIGN(Maybe v, node(ap, sub(c, "additionalProperties")));
    if (v) ap_value = share(std::move(*v), name + "-additional");
  }
  for (const std::string& r : required) {
    if (listed.count(r)) continue;
    if (!ap_value) return Maybe{};
    PG_ASSIGN(std::string key, key_of(r));
    values.emplace_back(key, *ap_value);
    members.push_back({Expr::empty(), true});
  }
  const size_t n = members.size();
  size_t first_required = n;
  for (size_t i = 0; i < n; ++i)
    if (members[i].required) {
      first_required = i;
      break;
    }
  // Values appear more than once when optional members precede the first required one.
  const bool copies = n > 1 && first_required > 0;
  for (size_t i = 0; i < n; ++i) {
    Expr v = std::move(values[i].second);
    if (copies) v = share(std::move(v), name + "-" + values[i].first);
    members[i].kv = seq({lit(values[i].first), ws(), lit(":"), ws(), std::move(v)});
  }
  Maybe extra;  // sep-less additional member
  // Other members only where the schema asks for them: absent additionalProperties allows
  // them (so any output still validates) but generates none beside listed properties unless
  // the options say so; an object that lists none is any object.
  const bool extras_wanted = s.contains("additionalProperties") || opt_.extra_properties_by_default || props.empty();
  if (ap_value && extras_wanted && (ap.is_object() || ap.get<bool>())) {
    for (const auto& nm : names)
      if (nm.size() > kMaxExcludedName)
        return make_error("json schema: a property name at {} is longer than {} characters",
                          where(c.path), kMaxExcludedName);
    Expr member =
        seq({lit("\""), key_not_in(names), lit("\""), ws(), lit(":"), ws(), std::move(*ap_value)});
    extra = ref(add_rule(name + "-extra", std::move(member)));
  }
  Expr extra_tail = extra ? rep(seq({sep(), *extra}), 0, kInf) : Expr::empty();

  // Layout: members in order, each optional one may be missing; commas only between members.
  // first_alts[j]: member j is the first one present (only optional ones may precede it), then
  // tail(j + 1): every later member, each preceded by a comma.
  auto piece = [&](size_t l) {
    Expr x = seq({sep(), members[l].kv});
    return members[l].required ? x : opt(std::move(x));
  };
  // Tails are copied once per possible first member: beyond a small total, each tail is a
  // rule (tail i = piece i, then tail i + 1) so the object stays linear in its members.
  const size_t firsts = std::min(first_required + 1, n);
  const bool tail_rules = firsts > 1 && firsts * n > 32;
  std::vector<uint32_t> tails;  // [n + 1] rule per tail when tail_rules
  if (tail_rules) {
    tails.resize(n + 1);
    tails[n] = add_rule(name + "-tail", extra_tail);
    for (size_t i = n; i-- > 1;)
      tails[i] = add_rule(name + "-tail", seq({piece(i), ref(tails[i + 1])}));
  }
  auto tail = [&](size_t i) {
    if (tail_rules) return ref(tails[i]);
    std::vector<Expr> items;
    for (size_t l = i; l < n; ++l) items.push_back(piece(l));
    items.push_back(extra_tail);
    return seq(std::move(items));
  };
  std::vector<Expr> first_alts;
  for (size_t j = 0; j < n && j <= first_required; ++j)
    first_alts.push_back(seq({members[j].kv, tail(j + 1)}));
  if (first_required == n && extra) first_alts.push_back(seq({*extra, extra_tail}));
  std::vector<Expr> items = {lit("{"), ws()};
  if (!first_alts.empty()) {
    Expr body = seq({alt(std::move(first_alts)), ws()});
    items.push_back(first_required < n ? std::move(body) : opt(std::move(body)));
  }
  items.push_back(lit("}"));
  return Maybe(seq(std::move(items)));
}

Result<Maybe> Compiler::array_node(const ojson& s, const Ctx& c) {
  std::vector<const ojson*> prefix;
  std::vector<Ctx> prefix_ctx;
  static const ojson kTrue = true;
  const ojson* rest = &kTrue;
  Ctx rest_ctx = sub(c, "items");
  if (s.contains("items") && s["items"].is_array()) {  // draft 4-7 tuples
    for (size_t i = 0; i < s["items"].size(); ++i) {
      prefix.push_back(&s["items"][i]);
      prefix_ctx.push_back(sub(c, "items", i));
    }
    if (s.contains("additionalItems")) rest = &s["additionalItems"];
    rest_ctx = sub(c, "additionalItems");
  } else {
    if (s.contains("prefixItems")) {
      if (!s["prefixItems"].is_array())
        return make_error("json schema: 'prefixItems' at {} must be an array", where(c.path));
      for (size_t i = 0; i < s["prefixItems"].size(); ++i) {
        prefix.push_back(&s["prefixItems"][i]);
        prefix_ctx.push_back(sub(c, "prefixItems", i));
      }
    }
    if (s.contains("items")) rest = &s["items"];
  }
  if (prefix.size() > opt_.max_repeat)
    return make_error("json schema: more than {} prefixItems at {}", opt_.max_repeat,
                      where(c.path));
  PG_ASSIGN(uint32_t min_items, read_count(s, "minItems", 0, c));
  PG_ASSIGN(uint32_t max_items, read_count(s, "maxItems", kInf, c));
  const auto k = uint32_t(prefix.size());
  std::vector<Expr> xs;
  for (uint32_t i = 0; i < k && i < max_items; ++i) {
    PG_ASSIGN(Maybe x, node(*prefix[i], prefix_ctx[i]));
    if (!x) {
      max_items = i;
      break;
    }
    xs.push_back(std::move(*x));
  }
  Maybe r;
  if (max_items > k) {
    PG_ASSIGN(Maybe x, node(*rest, rest_ctx));
    if (x)
      r = share(std::move(*x), label(c.path) + "-item");
    else
      max_items = k;
  }
  if (min_items > max_items) return Maybe{};
  if (max_items == 0) return Maybe(seq({lit("["), ws(), lit("]")}));
  auto minus = [](uint32_t v, uint32_t d) { return v == kInf ? kInf : v - d; };
  Expr content;
  if (k == 0) {
    content =
        seq({*r, rep(seq({sep(), *r}), min_items > 0 ? min_items - 1 : 0, minus(max_items, 1))});
  } else {
    Expr t = max_items > k
                 ? rep(seq({sep(), *r}), min_items > k ? min_items - k : 0, minus(max_items, k))
                 : Expr::empty();
    for (uint32_t i = uint32_t(xs.size()); i-- > 1;) {
      Expr x = seq({sep(), std::move(xs[i]), std::move(t)});
      t = i < min_items ? std::move(x) : opt(std::move(x));
    }
    content = seq({std::move(xs[0]), std::move(t)});
  }
  Expr body = seq({std::move(content), ws()});
  return Maybe(
      seq({lit("["), ws(), min_items > 0 ? std::move(body) : opt(std::move(body)), lit("]")}));
}

Result<Maybe> Compiler::string_node(const ojson& s, const Ctx& c) {
  const bool lengths = s.contains("minLength") || s.contains("maxLength");
  PG_ASSIGN(uint32_t min_len, read_count(s, "minLength", 0, c));
  PG_ASSIGN(uint32_t max_len, read_count(s, "maxLength", kInf, c));
  for (const char* k : {"pattern", "format"})
    if (s.contains(k) && !s[k].is_string())
      return make_error("json schema: '{}' at {} must be a string", k, where(c.path));
  if (s.contains("pattern") && s.contains("format"))
    return make_error("json schema: 'pattern' together with 'format' at {} is not supported",
                      where(c.path));
  Expr content;
  if (s.contains("pattern") || s.contains("format")) {
    const char* k = s.contains("pattern") ? "pattern" : "format";
    if (lengths)
      return make_error(
          "json schema: '{}' together with 'minLength'/'maxLength' at {} is not supported", k,
          where(c.path));
    const auto text = s[k].get<std::string>();
    PG_ASSIGN(uint32_t rule, s.contains("pattern") ? pattern_rule(text, c) : format_rule(text, c));
    content = ref(rule);
  } else if (!lengths || (min_len == 0 && max_len == kInf)) {
    return Maybe(ref(string_rule()));
  } else {
    if (min_len > max_len) return Maybe{};
    content = rep(ref(char_rule()), min_len, max_len);
  }
  return Maybe(seq({lit("\""), std::move(content), lit("\"")}));
}

Result<Maybe> Compiler::number_node(const ojson& s, const Ctx& c, bool integer) {
  struct Bound {
    int64_t v;
    bool open;
  };
  std::optional<Bound> lo, hi;  // number: whole-number bounds; integer: inclusive (open false)
  auto tighten = [](std::optional<Bound>& cur, Bound b, bool lower) {
    if (!cur || (lower ? (b.v > cur->v || (b.v == cur->v && b.open))
                       : (b.v < cur->v || (b.v == cur->v && b.open))))
      cur = b;
  };
  struct BoundKeyword {
    const char* key;
    bool lower, exclusive;
  };
  for (const auto& [key, lower, exclusive_kw] :
       {BoundKeyword{"minimum", true, false}, BoundKeyword{"exclusiveMinimum", true, true},
        BoundKeyword{"maximum", false, false}, BoundKeyword{"exclusiveMaximum", false, true}}) {
    if (!s.contains(key)) continue;
    const ojson& j = s[key];
    if (exclusive_kw && j.is_boolean()) {  // draft 4: modifies minimum/maximum
      if (!s.contains(lower ? "minimum" : "maximum"))
        return make_error("json schema: boolean '{}' at {} without '{}'", key, where(c.path),
                          lower ? "minimum" : "maximum");
      continue;
    }
    if (!j.is_number())
      return make_error("json schema: '{}' at {} must be a number", key, where(c.path));
    bool open = exclusive_kw;
    if (!exclusive_kw) {
      const char* modifier = lower ? "exclusiveMinimum" : "exclusiveMaximum";
      open = s.contains(modifier) && s[modifier].is_boolean() && s[modifier].get<bool>();
    }
    const double d = j.get<double>();
    if (!(std::fabs(d) <= double(kMaxBound)))
      return make_error("json schema: '{}' {} at {} is outside the supported range ±1e18", key,
                        j.dump(), where(c.path));
    if (integer) {
      int64_t v;
      if (j.is_number_integer()) {
        v = j.get<int64_t>();
        if (open) v += lower ? 1 : -1;
      } else {
        v = int64_t(lower ? (open ? std::floor(d) + 1 : std::ceil(d))
                          : (open ? std::ceil(d) - 1 : std::floor(d)));
      }
      tighten(lower ? lo : hi, {v, false}, lower);
    } else {
      if (!is_integral(j))
        return make_error(
            "json schema: '{}' {} at {} is not a whole number (bounds of a 'number' must be "
            "whole numbers; use 'integer' or scale the value)",
            key, j.dump(), where(c.path));
      tighten(lower ? lo : hi, {j.is_number_integer() ? j.get<int64_t>() : int64_t(d), open},
              lower);
    }
  }
  if (!lo && !hi) return Maybe(ref(number_rule(integer)));
  std::vector<Expr> alts;
  if (integer) {
    if (lo && hi && lo->v > hi->v) return Maybe{};
    if (!hi || hi->v >= 0) {
      std::optional<uint64_t> top;
      if (hi) top = uint64_t(hi->v);
      alts.push_back(uint_range(lo && lo->v > 0 ? uint64_t(lo->v) : 0, top));
    }
    if (!lo || lo->v < 0) {
      std::optional<uint64_t> top;
      if (lo) top = uint64_t(-lo->v);
      const uint64_t bottom = hi && hi->v < 0 ? uint64_t(-hi->v) : 1;
      alts.push_back(seq({lit("-"), uint_range(bottom, top)}));
    }
  } else {
    // value >= 0: m = value; value < 0: "-" m with m = -value.
    if (!hi || hi->v > 0 || (hi->v == 0 && !hi->open)) {
      const uint64_t a = lo && lo->v >= 0 ? uint64_t(lo->v) : 0;
      const bool a_open = lo && lo->v >= 0 && lo->open;
      std::optional<uint64_t> b;
      if (hi) b = uint64_t(hi->v);
      if (Maybe m = fraction_range(a, a_open, b, hi && hi->open)) alts.push_back(std::move(*m));
    }
    if (!lo || lo->v < 0) {
      uint64_t a = 0;
      bool a_open = false;
      if (hi && hi->v <= 0) {
        a = uint64_t(-hi->v);
        a_open = hi->open;
      }
      std::optional<uint64_t> b;
      if (lo) b = uint64_t(-lo->v);
      if (Maybe m = fraction_range(a, a_open, b, lo && lo->open))
        alts.push_back(seq({lit("-"), std::move(*m)}));
    }
  }
  if (alts.empty()) return Maybe{};
  return Maybe(alt(std::move(alts)));
}

// ---- $ref

Result<std::string> Compiler::ref_pointer(const std::string& ref, const Ctx& c) {
  if (ref.empty() || ref[0] != '#')
    return make_error(
        "json schema: remote $ref '{}' at {} is not supported (only '#' and '#/json/pointer' "
        "into this schema)",
        shown(ref), where(c.path));
  if (ref.size() > 1 && ref[1] != '/')
    return make_error(
        "json schema: $ref '{}' at {}: anchors are not supported (only '#/json/pointer')",
        shown(ref), where(c.path));
  std::string out;  // the fragment, percent-decoded
  for (size_t i = 1; i < ref.size(); ++i) {
    if (ref[i] != '%') {
      out += ref[i];
      continue;
    }
    auto hexval = [](char h) {
      return h >= '0' && h <= '9'   ? h - '0'
             : h >= 'a' && h <= 'f' ? h - 'a' + 10
             : h >= 'A' && h <= 'F' ? h - 'A' + 10
                                    : -1;
    };
    if (i + 2 >= ref.size())
      return make_error("json schema: $ref '{}' at {}: bad percent-encoding", shown(ref),
                        where(c.path));
    const int h1 = hexval(ref[i + 1]), h2 = hexval(ref[i + 2]);
    if (h1 < 0 || h2 < 0)
      return make_error("json schema: $ref '{}' at {}: bad percent-encoding", shown(ref),
                        where(c.path));
    out += char(h1 * 16 + h2);
    i += 2;
  }
  return out;
}

Result<const ojson*> Compiler::lookup(const std::string& pointer, const std::string& ref,
                                      const Ctx& c) {
  const ojson* cur = &root_;
  size_t start = 1;
  while (start <= pointer.size() && !pointer.empty()) {
    const size_t end = std::min(pointer.find('/', start), pointer.size());
    std::string token;
    for (size_t i = start; i < end; ++i) {
      if (pointer[i] != '~') {
        token += pointer[i];
      } else if (i + 1 < end && (pointer[i + 1] == '0' || pointer[i + 1] == '1')) {
        token += pointer[++i] == '0' ? '~' : '/';
      } else {
        return make_error("json schema: $ref '{}' at {}: bad '~' escape", shown(ref),
                          where(c.path));
      }
    }
    const ojson* next = nullptr;
    if (cur->is_object() && cur->contains(token)) {
      next = &(*cur)[token];
    } else if (cur->is_array() && !token.empty() && token.size() < 10 &&
               token.find_first_not_of("0123456789") == std::string::npos &&
               (token == "0" || token[0] != '0') && std::stoul(token) < cur->size()) {
      next = &(*cur)[std::stoul(token)];
    }
    if (!next)
      return make_error("json schema: $ref '{}' at {} points to nothing", shown(ref),
                        where(c.path));
    cur = next;
    start = end + 1;
  }
  return cur;
}

Result<uint32_t> Compiler::ref_rule(const ojson& ref, const Ctx& c) {
  if (!ref.is_string())
    return make_error("json schema: '$ref' at {} must be a string", where(c.path));
  const auto& text = ref.get_ref<const std::string&>();
  PG_ASSIGN(std::string pointer, ref_pointer(text, c));
  if (auto it = ref_rules_.find(pointer); it != ref_rules_.end()) return it->second;
  PG_ASSIGN(const ojson* target, lookup(pointer, text, c));
  const uint32_t id = add_rule(label(pointer), Expr::empty());
  ref_rules_.emplace(pointer, id);
  pending_.push_back({pointer, target, id, where(c.path)});
  return id;
}

// ---- allOf merging

Status Compiler::charge(const ojson& j, const Ctx& c) {
  merge_work_ += json_size(j, kMaxMergeWork);
  if (merge_work_ > kMaxMergeWork)
    return make_error(
        "json schema: merging allOf/$ref at {} takes too much work; simplify the "
        "schema",
        where(c.path));
  return {};
}

// The schema with its $ref and allOf merged in (what applies to a value at this location, as
// one schema object or a boolean); nested schemas keep their $refs.
Result<ojson> Compiler::resolve(const ojson& s, const Ctx& c, uint32_t depth) {
  if (depth > opt_.max_depth)
    return make_error("json schema: $ref/allOf chain longer than {} at {} (a $ref cycle?)",
                      opt_.max_depth, where(c.path));
  if (s.is_boolean()) return s;
  if (!s.is_object())
    return make_error("json schema: the schema at {} must be an object or a boolean, not {}",
                      where(c.path), s.type_name());
  PG_TRY(check_keywords(s, c));
  PG_TRY(charge(s, c));
  ojson out = ojson::object();
  for (auto it = s.begin(); it != s.end(); ++it)
    if (it.key() != "$ref" && it.key() != "allOf" && it.key() != "$defs" &&
        it.key() != "definitions")
      out[it.key()] = it.value();
  if (s.contains("$ref")) {
    if (!s["$ref"].is_string())
      return make_error("json schema: '$ref' at {} must be a string", where(c.path));
    const auto& text = s["$ref"].get_ref<const std::string&>();
    PG_ASSIGN(std::string pointer, ref_pointer(text, c));
    PG_ASSIGN(const ojson* target, lookup(pointer, text, c));
    PG_ASSIGN(ojson t, resolve(*target, {pointer, c.depth, c.objects}, depth + 1));
    PG_ASSIGN(ojson m, merge(t, out, c));
    out = std::move(m);
  }
  if (s.contains("allOf")) {
    const ojson& all = s["allOf"];
    if (!all.is_array() || all.empty())
      return make_error("json schema: 'allOf' at {} must be a non-empty array", where(c.path));
    for (size_t i = 0; i < all.size(); ++i) {
      PG_ASSIGN(ojson b, resolve(all[i], sub(c, "allOf", i), depth + 1));
      PG_ASSIGN(ojson m, merge(out, b, c));
      out = std::move(m);
    }
  }
  return out;
}

// The conjunction of two resolved schemas as one schema (or an error naming what cannot be
// merged). Keywords constrain independently, so a keyword on one side only is copied; the
// keywords below interact and are combined.
Result<ojson> Compiler::merge(const ojson& a, const ojson& b, const Ctx& c) {
  PG_TRY(charge(a, c));
  PG_TRY(charge(b, c));
  if (a.is_boolean()) return a.get<bool>() ? b : a;
  if (b.is_boolean()) return b.get<bool>() ? a : b;
  ojson out = ojson::object();
  PG_ASSIGN(std::optional<uint8_t> ta, declared_types(a, c));
  PG_ASSIGN(std::optional<uint8_t> tb, declared_types(b, c));
  if (ta || tb) {
    const uint8_t t = ta && tb ? intersect_types(*ta, *tb) : ta ? *ta : *tb;
    if (t == 0) return ojson(false);
    out["type"] = types_json(t);
  }
  static const ojson kTrue = true;
  auto get = [](const ojson& s, const char* k, const ojson& dflt) -> const ojson& {
    return s.contains(k) ? s[k] : dflt;
  };
  // properties and additionalProperties: per name, what each side says about it.
  if (a.contains("properties") || b.contains("properties") || a.contains("additionalProperties") ||
      b.contains("additionalProperties")) {
    static const ojson kNoProps = ojson::object();
    const ojson &pa = get(a, "properties", kNoProps), &pb = get(b, "properties", kNoProps);
    if (!pa.is_object() || !pb.is_object())
      return make_error("json schema: 'properties' at {} must be an object", where(c.path));
    const ojson &apa = get(a, "additionalProperties", kTrue),
                &apb = get(b, "additionalProperties", kTrue);
    ojson props = ojson::object();
    for (const ojson* p : {&pa, &pb})
      for (auto it = p->begin(); it != p->end(); ++it)
        if (!props.contains(it.key()))
          props[it.key()] = conj(get(pa, it.key().c_str(), apa), get(pb, it.key().c_str(), apb));
    if (!props.empty()) out["properties"] = std::move(props);
    const ojson ap = conj(apa, apb);
    if (!is_true_schema(ap)) out["additionalProperties"] = ap;
  }
  // prefixItems/items (and draft 4-7 tuples): per position.
  auto tuple = [&](const ojson& s, ojson* prefix, ojson* rest) {
    *prefix = ojson::array();
    *rest = true;
    if (s.contains("items") && s["items"].is_array()) {
      *prefix = s["items"];
      if (s.contains("additionalItems")) *rest = s["additionalItems"];
    } else {
      if (s.contains("prefixItems")) *prefix = s["prefixItems"];
      if (s.contains("items")) *rest = s["items"];
    }
  };
  if (a.contains("items") || b.contains("items") || a.contains("prefixItems") ||
      b.contains("prefixItems")) {
    ojson pa, ra, pb, rb;
    tuple(a, &pa, &ra);
    tuple(b, &pb, &rb);
    if (!pa.is_array() || !pb.is_array())
      return make_error("json schema: 'prefixItems' at {} must be an array", where(c.path));
    ojson prefix = ojson::array();
    for (size_t i = 0; i < std::max(pa.size(), pb.size()); ++i)
      prefix.push_back(conj(i < pa.size() ? pa[i] : ra, i < pb.size() ? pb[i] : rb));
    if (!prefix.empty()) out["prefixItems"] = std::move(prefix);
    const ojson r = conj(ra, rb);
    if (!is_true_schema(r)) out["items"] = r;
  }
  const std::set<std::string> handled = {
      "type",  "nullable",    "properties",     "additionalProperties",
      "items", "prefixItems", "additionalItems"};
  const std::set<std::string> larger = {"minimum", "exclusiveMinimum", "minLength", "minItems"};
  const std::set<std::string> smaller = {"maximum", "exclusiveMaximum", "maxLength", "maxItems"};
  for (const ojson* side : {&a, &b}) {
    for (auto it = side->begin(); it != side->end(); ++it) {
      const std::string& k = it.key();
      if (handled.count(k) || (side == &b && a.contains(k))) continue;
      const ojson& x = it.value();
      if (!b.contains(k) || side == &b || !constrains(k) || x == b[k]) {
        out[k] = x;
        continue;
      }
      const ojson& y = b[k];
      if ((larger.count(k) || smaller.count(k)) && x.is_number() && y.is_number()) {
        const bool take_x = larger.count(k) ? x.get<double>() >= y.get<double>()
                                            : x.get<double>() <= y.get<double>();
        out[k] = take_x ? x : y;
      } else if (k == "required" && x.is_array() && y.is_array()) {
        ojson r = x;
        for (const ojson& n : y)
          if (std::find(r.begin(), r.end(), n) == r.end()) r.push_back(n);
        out[k] = std::move(r);
      } else if (k == "enum" && x.is_array() && y.is_array()) {
        ojson r = ojson::array();
        for (const ojson& v : x)
          if (std::find(y.begin(), y.end(), v) != y.end()) r.push_back(v);
        if (r.empty()) return ojson(false);
        out[k] = std::move(r);
      } else if (k == "const") {
        return ojson(false);  // two different constants
      } else if ((k == "anyOf" || k == "oneOf") && x.is_array() && y.is_array()) {
        if (x.size() * y.size() > kMaxAnyOfProduct)
          return make_error("json schema: merging two '{}' at {} gives more than {} branches", k,
                            where(c.path), kMaxAnyOfProduct);
        ojson r = ojson::array();
        for (const ojson& u : x)
          for (const ojson& v : y) r.push_back(conj(u, v));
        out[k] = std::move(r);
      } else {
        return make_error("json schema: allOf at {}: cannot merge two different '{}'",
                          where(c.path), k);
      }
    }
  }
  if (out.contains("anyOf") && out.contains("oneOf"))
    return make_error("json schema: allOf at {}: cannot merge 'anyOf' with 'oneOf'", where(c.path));
  return out;
}

// Whether no value matches both a and b, by cheap reasoning (false: not shown). Uses only
// what the schemas say (declared types, enum/const, required and forbidden properties), never
// the narrowing this compiler applies to untyped schemas.
Result<bool> Compiler::disjoint(const ojson& a0, const ojson& b0, const Ctx& c, int depth) {
  if (depth > 4) return false;
  PG_ASSIGN(ojson a, resolve(a0, c, 0));
  PG_ASSIGN(ojson b, resolve(b0, c, 0));
  if (is_false_schema(a) || is_false_schema(b)) return true;
  if (!a.is_object() || !b.is_object()) return false;
  auto types = [&](const ojson& s) -> Result<uint8_t> {
    PG_ASSIGN(std::optional<uint8_t> t, declared_types(s, c));
    uint8_t m = t ? *t : kAllTypes;
    const ojson* values = s.contains("const") ? nullptr : s.contains("enum") ? &s["enum"] : nullptr;
    uint8_t vm = 0;
    if (s.contains("const")) vm = value_type(s["const"]);
    if (values && values->is_array())
      for (const ojson& v : *values) vm |= value_type(v);
    if (s.contains("const") || (values && values->is_array())) m = intersect_types(m, vm);
    return m;
  };
  PG_ASSIGN(uint8_t ta, types(a));
  PG_ASSIGN(uint8_t tb, types(b));
  const uint8_t both = intersect_types(ta, tb);
  if (both == 0) return true;
  auto values = [](const ojson& s) -> std::optional<ojson> {
    if (s.contains("const")) return ojson::array({s["const"]});
    if (s.contains("enum") && s["enum"].is_array()) return s["enum"];
    return std::nullopt;
  };
  const auto va = values(a), vb = values(b);
  if (va && vb) {
    bool common = false;
    for (const ojson& v : *va) common = common || std::find(vb->begin(), vb->end(), v) != vb->end();
    if (!common) return true;
  }
  if (both != kObject) return false;
  auto required = [](const ojson& s) {
    std::vector<std::string> r;
    if (s.contains("required") && s["required"].is_array())
      for (const ojson& n : s["required"])
        if (n.is_string()) r.push_back(n.get<std::string>());
    return r;
  };
  auto prop = [](const ojson& s, const std::string& p) -> const ojson* {
    if (s.contains("properties") && s["properties"].is_object() && s["properties"].contains(p))
      return &s["properties"][p];
    return nullptr;
  };
  auto forbids = [&](const ojson& s, const std::string& p) {
    const ojson* x = prop(s, p);
    if (x) return is_false_schema(*x);
    return s.contains("additionalProperties") && is_false_schema(s["additionalProperties"]);
  };
  const auto ra = required(a), rb = required(b);
  for (const std::string& p : ra) {
    if (forbids(b, p)) return true;
    if (std::find(rb.begin(), rb.end(), p) == rb.end()) continue;
    const ojson *x = prop(a, p), *y = prop(b, p);
    if (!x || !y) continue;
    PG_ASSIGN(bool d, disjoint(*x, *y, c, depth + 1));
    if (d) return true;
  }
  for (const std::string& p : rb)
    if (forbids(a, p)) return true;
  return false;
}

// ---- formats

Result<uint32_t> Compiler::format_rule(const std::string& f, const Ctx& c) {
  if (auto it = format_rules_.find(f); it != format_rules_.end()) return it->second;
  auto two = [&](char a0, char a1, char b0, char b1) { return seq({chr(a0, a1), chr(b0, b1)}); };
  auto hour = [&] { return alt({two('0', '1', '0', '9'), two('2', '2', '0', '3')}); };
  auto minute = [&] { return two('0', '5', '0', '9'); };
  // Years 0001-9999 (Python's datetime, which jsonschema checks with, has no year 0); days
  // per month, and 02-29 only in leap years (YY multiple of 4 but not 00, or CC multiple of 4
  // with YY = 00).
  auto date = [&] {
    auto d = [&] { return chr('0', '9'); };
    auto year = [&] {
      return alt({seq({lit("000"), chr('1', '9')}), seq({lit("00"), chr('1', '9'), d()}),
                  seq({lit("0"), chr('1', '9'), d(), d()}), seq({chr('1', '9'), d(), d(), d()})});
    };
    auto mult4 = [&](bool zero) {  // two digits, a multiple of 4 (00 only if zero)
      return alt({seq({cls({{'0', '0'}, {'2', '2'}, {'4', '4'}, {'6', '6'}, {'8', '8'}}),
                       cls(zero ? Ranges{{'0', '0'}, {'4', '4'}, {'8', '8'}}
                                : Ranges{{'4', '4'}, {'8', '8'}})}),
                  seq({cls({{'2', '2'}, {'4', '4'}, {'6', '6'}, {'8', '8'}}), lit("0")}),
                  seq({cls({{'1', '1'}, {'3', '3'}, {'5', '5'}, {'7', '7'}, {'9', '9'}}),
                       cls({{'2', '2'}, {'6', '6'}})})});
    };
    Expr leap = alt({seq({d(), d(), mult4(false)}), seq({mult4(false), lit("00")})});
    Expr long_months =
        seq({alt({lit("01"), lit("03"), lit("05"), lit("07"), lit("08"), lit("10"), lit("12")}),
             lit("-"),
             alt({two('0', '0', '1', '9'), two('1', '2', '0', '9'), two('3', '3', '0', '1')})});
    Expr short_months = seq({alt({lit("04"), lit("06"), lit("09"), lit("11")}), lit("-"),
                             alt({two('0', '0', '1', '9'), two('1', '2', '0', '9'), lit("30")})});
    Expr february =
        seq({lit("02-"),
             alt({two('0', '0', '1', '9'), two('1', '1', '0', '9'), two('2', '2', '0', '8')})});
    return alt({seq({year(), lit("-"),
                     alt({std::move(long_months), std::move(short_months), std::move(february)})}),
                seq({std::move(leap), lit("-02-29")})});
  };
  auto time = [&] {
    return seq({hour(), lit(":"), minute(), lit(":"), minute(), opt(seq({lit("."), digits(1, 9)})),
                alt({cls({{'Z', 'Z'}, {'z', 'z'}}),
                     seq({cls({{'+', '+'}, {'-', '-'}}), hour(), lit(":"), minute()})})});
  };
  auto hexes = [&](uint32_t n) { return rep(hex(), n, n); };
  auto alnum = [&] { return cls({{'0', '9'}, {'A', 'Z'}, {'a', 'z'}}); };
  auto hostname = [&] {
    auto label = [&] {
      return seq(
          {alnum(),
           opt(seq({rep(cls({{'-', '-'}, {'0', '9'}, {'A', 'Z'}, {'a', 'z'}}), 0, 61), alnum()}))});
    };
    return seq({label(), rep(seq({lit("."), label()}), 0, kInf)});
  };
  Expr body;
  if (f == "date") {
    body = date();
  } else if (f == "time") {
    body = time();
  } else if (f == "date-time") {
    body = seq({date(), cls({{'T', 'T'}, {'t', 't'}}), time()});
  } else if (f == "duration") {  // RFC 3339 appendix A
    auto num = [&](const char* unit) { return seq({digits(1, kInf), lit(unit)}); };
    auto second = [&] { return num("S"); };
    auto min = [&] { return seq({num("M"), opt(second())}); };
    auto hr = [&] { return seq({num("H"), opt(min())}); };
    auto t = [&] { return seq({lit("T"), alt({hr(), min(), second()})}); };
    Expr day_date = num("D");
    Expr month_date = seq({num("M"), opt(num("D"))});
    Expr year_date = seq({num("Y"), opt(seq({num("M"), opt(num("D"))}))});
    Expr dates =
        seq({alt({std::move(day_date), std::move(month_date), std::move(year_date)}), opt(t())});
    body = seq({lit("P"), alt({std::move(dates), t(), num("W")})});
  } else if (f == "uuid") {
    body = seq({hexes(8), lit("-"), hexes(4), lit("-"), hexes(4), lit("-"), hexes(4), lit("-"),
                hexes(12)});
  } else if (f == "hostname") {
    body = hostname();
  } else if (f == "email") {
    auto atom = [&] {
      return rep(cls(normalized({{'0', '9'},
                                 {'A', 'Z'},
                                 {'a', 'z'},
                                 {'!', '!'},
                                 {'#', '\''},
                                 {'*', '+'},
                                 {'-', '-'},
                                 {'/', '/'},
                                 {'=', '='},
                                 {'?', '?'},
                                 {'^', '`'},
                                 {'{', '~'}})),
                 1, kInf);
    };
    body = seq({atom(), rep(seq({lit("."), atom()}), 0, kInf), lit("@"), hostname()});
  } else if (f == "ipv4") {
    auto octet = [&] { return uint_range(0, 255); };
    body = seq({octet(), lit("."), octet(), lit("."), octet(), lit("."), octet()});
  } else if (f == "ipv6") {  // RFC 3986 IPv6address
    PG_ASSIGN(uint32_t v4, format_rule("ipv4", c));
    auto h16 = [&] { return rep(hex(), 1, 4); };
    auto h16c = [&](uint32_t n) { return rep(seq({h16(), lit(":")}), n, n); };
    auto ls32 = [&] { return alt({seq({h16(), lit(":"), h16()}), ref(v4)}); };
    auto pre = [&](uint32_t k) { return opt(seq({rep(seq({h16(), lit(":")}), 0, k), h16()})); };
    body =
        alt({seq({h16c(6), ls32()}), seq({lit("::"), h16c(5), ls32()}),
             seq({pre(0), lit("::"), h16c(4), ls32()}), seq({pre(1), lit("::"), h16c(3), ls32()}),
             seq({pre(2), lit("::"), h16c(2), ls32()}),
             seq({pre(3), lit("::"), h16(), lit(":"), ls32()}), seq({pre(4), lit("::"), ls32()}),
             seq({pre(5), lit("::"), h16()}), seq({pre(6), lit("::")})});
  } else if (f == "uri") {  // RFC 3986 URI (IP-literals: IPv6 only)
    PG_ASSIGN(uint32_t v6, format_rule("ipv6", c));
    const Ranges unreserved = {{'-', '.'}, {'0', '9'}, {'A', 'Z'},
                               {'_', '_'}, {'a', 'z'}, {'~', '~'}};
    const Ranges sub_delims = {{'!', '!'}, {'$', '$'}, {'&', ','}, {';', ';'}, {'=', '='}};
    auto chars = [&](Ranges extra) {
      Ranges r = unreserved;
      r.insert(r.end(), sub_delims.begin(), sub_delims.end());
      r.insert(r.end(), extra.begin(), extra.end());
      return alt({cls(normalized(std::move(r))), seq({lit("%"), hex(), hex()})});
    };
    auto pchar = [&] { return chars({{':', ':'}, {'@', '@'}}); };
    auto segments = [&] { return rep(seq({lit("/"), rep(pchar(), 0, kInf)}), 0, kInf); };
    Expr scheme =
        seq({cls({{'A', 'Z'}, {'a', 'z'}}),
             rep(cls({{'+', '+'}, {'-', '.'}, {'0', '9'}, {'A', 'Z'}, {'a', 'z'}}), 0, kInf)});
    Expr authority = seq({opt(seq({rep(chars({{':', ':'}}), 0, kInf), lit("@")})),
                          alt({seq({lit("["), ref(v6), lit("]")}), rep(chars({}), 0, kInf)}),
                          opt(seq({lit(":"), digits(0, kInf)}))});
    Expr hier = alt({seq({lit("//"), std::move(authority), segments()}),
                     seq({lit("/"), opt(seq({rep(pchar(), 1, kInf), segments()}))}),
                     seq({rep(pchar(), 1, kInf), segments()}), Expr::empty()});
    auto query = [&] { return rep(alt({pchar(), cls({{'/', '/'}, {'?', '?'}})}), 0, kInf); };
    body = seq({std::move(scheme), lit(":"), std::move(hier), opt(seq({lit("?"), query()})),
                opt(seq({lit("#"), query()}))});
  } else {
    return make_error(
        "json schema: unsupported format '{}' at {} (supported: date, time, date-time, "
        "duration, uuid, email, hostname, ipv4, ipv6, uri)",
        shown(f), where(c.path));
  }
  const uint32_t id = add_rule("format-" + f, std::move(body));
  format_rules_.emplace(f, id);
  return id;
}

// ---- patterns

Result<uint32_t> Compiler::pattern_rule(const std::string& re, const Ctx& c) {
  if (auto it = pattern_rules_.find(re); it != pattern_rules_.end()) return it->second;
  const uint32_t ch = char_rule();
  const std::vector<std::string_view> branches = split_alternatives(re);
  bool anchored = false;
  for (std::string_view b : branches)
    anchored = anchored || (!b.empty() && b[0] == '^') || ends_with_anchor(b);
  std::vector<std::string_view> parts = anchored ? branches : std::vector<std::string_view>{re};
  const std::string base = fmt::format("pattern{}", pattern_rules_.size() + 1);
  std::vector<Expr> alts;
  for (std::string_view p : parts) {
    const bool start = !p.empty() && p[0] == '^';
    if (start) p.remove_prefix(1);
    const bool end = ends_with_anchor(p);
    if (end) p.remove_suffix(1);
    if (std::optional<std::string> a = inner_assertion(p))
      return make_error(
          "json schema: pattern '{}' at {}: '{}' is only supported at the start or end of the "
          "pattern or of a top-level alternative",
          shown(re), where(c.path), *a);
    Result<Grammar> rg = parse_regex(p);
    if (!rg.ok())
      return make_error("json schema: pattern '{}' at {}: {}", shown(re), where(c.path),
                        rg.error().message);
    PG_ASSIGN(uint32_t inner, splice_regex(rg.value(), base, c));
    alts.push_back(seq({start ? Expr::empty() : rep(ref(ch), 0, kInf), ref(inner),
                        end ? Expr::empty() : rep(ref(ch), 0, kInf)}));
  }
  const uint32_t id = add_rule(base, alt(std::move(alts)));
  pattern_rules_.emplace(re, id);
  return id;
}

// Copies a regex grammar's rules into ours, each literal and class rewritten to the canonical
// JSON encoding of the code points it matches (the regex describes the decoded string).
Result<uint32_t> Compiler::splice_regex(const Grammar& rg, const std::string& base, const Ctx& c) {
  std::vector<uint32_t> ids(rg.rules.size());
  for (size_t i = 0; i < rg.rules.size(); ++i)
    ids[i] = add_rule(base + "-" + (i < rg.names.size() ? rg.names[i] : "r"), Expr::empty());
  for (size_t i = 0; i < rg.rules.size(); ++i) {
    PG_ASSIGN(Expr body, regex_expr(rg.rules[i], ids, 0, c));
    g_.rules[ids[i]] = std::move(body);
  }
  if (rg.root >= ids.size())
    return make_error("json schema: pattern at {}: the regex grammar has no root", where(c.path));
  return ids[rg.root];
}

Result<Expr> Compiler::regex_expr(const Expr& e, const std::vector<uint32_t>& ids, uint32_t depth,
                                  const Ctx& c) {
  if (depth > kMaxDepth)
    return make_error("json schema: pattern at {} nests too deeply", where(c.path));
  if (work_ > kMaxWork) return too_large(c);
  switch (e.kind) {
    case Expr::Kind::Empty:
      return Expr::empty();
    case Expr::Kind::Literal: {
      std::optional<std::string> t = canonical(e.text);
      if (!t) return make_error("json schema: pattern at {} is not valid UTF-8", where(c.path));
      return lit(std::move(*t));
    }
    case Expr::Kind::Class: {
      Ranges set = normalized(e.ranges);
      if (e.negated) set = complement(set);
      if (Maybe x = canonical_class(set)) return std::move(*x);
      return cls({});  // matches nothing
    }
    case Expr::Kind::Ref:
      if (e.rule >= ids.size())
        return make_error("json schema: pattern at {}: bad rule reference", where(c.path));
      return ref(ids[e.rule]);
    case Expr::Kind::Seq:
    case Expr::Kind::Alt:
    case Expr::Kind::Repeat: {
      std::vector<Expr> items;
      for (const Expr& x : e.items) {
        PG_ASSIGN(Expr y, regex_expr(x, ids, depth + 1, c));
        items.push_back(std::move(y));
      }
      ++work_;
      Expr out;
      out.kind = e.kind;
      out.min = e.min;
      out.max = e.max;
      out.items = std::move(items);
      return out;
    }
  }
  return make_error("json schema: pattern at {}: unknown expression", where(c.path));
}

// ---- driver

Result<Grammar> Compiler::compile() {
  root_rule_ = add_rule("root", Expr::empty());
  ref_rules_.emplace("", root_rule_);
  const Ctx top{"", 0, 0};
  if (opt_.strict) {
    std::optional<uint8_t> t;
    if (root_.is_object()) {
      PG_ASSIGN(t, declared_types(root_, top));
    }
    if (!t || *t != kObject || root_.contains("anyOf"))
      return make_error(
          "json schema (strict): the root must be an object schema (\"type\": \"object\", not "
          "anyOf)");
    for (const char* defs : {"$defs", "definitions"})  // strict checks every definition
      if (root_.contains(defs) && root_[defs].is_object())
        for (auto it = root_[defs].begin(); it != root_[defs].end(); ++it) {
          const ojson ref = "#/" + std::string(defs) + "/" + pointer_token(it.key());
          PG_TRY(ref_rule(ref, top));
        }
  }
  PG_ASSIGN(Maybe body, node(root_, top));
  if (!body) return make_error("json schema: no JSON value matches the schema");
  g_.rules[root_rule_] = std::move(*body);
  for (size_t i = 0; i < pending_.size(); ++i) {
    const PendingRef p = pending_[i];
    PG_ASSIGN(Maybe b, node(*p.target, {p.pointer, 0, 0}));
    if (!b)
      return make_error("json schema: $ref to {} (used at {}) matches no JSON value",
                        where(p.pointer), p.used_at);
    g_.rules[p.rule] = std::move(*b);
  }
  for (size_t r = 0; r < g_.rules.size(); ++r) {  // grows as parts are hoisted
    Expr body_r = std::move(g_.rules[r]);
    hoist(body_r, 1, std::string(g_.names[r]));
    g_.rules[r] = std::move(body_r);
  }
  g_.root = root_rule_;
  if (Status st = g_.validate(); !st.ok()) {
    if (st.error().message.find("left-recursive") != std::string::npos)
      return make_error("json schema: a $ref cycle that consumes no input ({})",
                        st.error().message);
    return make_error("json schema: the grammar is too large or invalid: {}", st.error().message);
  }
  return std::move(g_);
}

Grammar Compiler::object_grammar() {
  root_rule_ = add_rule("root", Expr::empty());
  value_rule();
  g_.rules[root_rule_] = ref(rule_names_.at("object"));
  g_.root = root_rule_;
  return std::move(g_);
}

}  // namespace

Result<Grammar> json_schema_to_grammar(const nlohmann::ordered_json& schema,
                                       const JsonSchemaOptions& opt) {
  PG_TRY(check_json_depth(schema));
  Compiler c(schema, opt);
  return c.compile();
}

Result<Grammar> json_schema_to_grammar(const nlohmann::json& schema, const JsonSchemaOptions& opt) {
  PG_TRY(check_json_depth(schema));
  const nlohmann::ordered_json ordered(schema);
  return json_schema_to_grammar(ordered, opt);
}

Result<Grammar> json_schema_text_to_grammar(std::string_view schema_text,
                                            const JsonSchemaOptions& opt) {
  const auto schema =
      nlohmann::ordered_json::parse(schema_text, nullptr, /*allow_exceptions=*/false);
  if (schema.is_discarded()) return make_error("json schema: the schema is not valid JSON");
  return json_schema_to_grammar(schema, opt);
}

Grammar json_object_grammar(JsonWhitespace ws) {
  static const nlohmann::ordered_json kNone;
  JsonSchemaOptions opt;
  opt.whitespace = ws;
  Compiler c(kNone, opt);
  return c.object_grammar();
}

}  // namespace peregrine::constrain
