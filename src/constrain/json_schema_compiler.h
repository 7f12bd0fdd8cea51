// Internal to the JSON Schema compiler (json_schema*.cpp); not part of the public API, which
// is json_schema.h. Declares the Compiler class, split across
//   json_schema.cpp          the public functions, checks, schema nodes and the driver
//   json_schema_rules.cpp    Expr builders, the shared JSON rules and digit-range builders
//   json_schema_merge.cpp    $ref lookup and allOf merging
//   json_schema_formats.cpp  format and pattern rules
//   json_schema_util.cpp     the free helpers declared below
// and the types, limits and helpers that more than one of those files needs.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "constrain/grammar.h"
#include "constrain/json_schema.h"
#include "core/status.h"

namespace peregrine::constrain::json_schema_detail {

using ojson = nlohmann::ordered_json;
using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;
using Maybe = std::optional<Expr>;  // nullopt: no JSON value matches

inline constexpr uint32_t kInf = kUnbounded;
inline constexpr uint32_t kNoRule = UINT32_MAX;
inline constexpr size_t kMaxJsonDepth = 512;         // nesting of the schema document itself
inline constexpr uint64_t kMaxWork = 1u << 22;       // builder calls
inline constexpr uint64_t kMaxMergeWork = 1u << 20;  // JSON values copied while merging allOf/$ref
inline constexpr uint32_t kHoistDepth = 128;  // deeper subexpressions move to rules of their own
inline constexpr int64_t kMaxBound = 1000000000000000000;  // |numeric bound| <= 1e18
inline constexpr size_t kMaxAnyOfProduct = 256;   // branches from multiplying out two anyOf
inline constexpr size_t kMaxExcludedName = 1024;  // code points of a name excluded from extra keys

// ---- code points and canonical string encoding

// Code points a JSON string may hold unescaped (surrogates are never text).
inline const Ranges kUnescaped = {
    {0x20, 0x21}, {0x23, 0x5B}, {0x5D, 0xD7FF}, {0xE000, kMaxCodePoint}};
inline const Ranges kNeedsEscape = {{0x00, 0x1F}, {0x22, 0x22}, {0x5C, 0x5C}};
inline const Ranges kScalars = {{0, 0xD7FF}, {0xE000, kMaxCodePoint}};

bool decode_utf8(std::string_view s, std::vector<uint32_t>* out);
void append_canonical(std::string& out, uint32_t cp);
std::optional<std::string> canonical(std::string_view utf8_text);  // nullopt: invalid UTF-8
Ranges normalized(Ranges r);
Ranges complement(const Ranges& r);                  // r normalized
Ranges intersect(const Ranges& a, const Ranges& b);  // both normalized

// ---- JSON pointers, messages and schema keywords

std::string pointer_token(std::string_view s);
std::string shown(std::string_view s, size_t max = 80);
std::string where(const std::string& path);
std::string label(const std::string& path);

struct Keyword {
  const char* name;
  bool constrains;  // false: an annotation, or $defs/definitions (used only through $ref)
  bool strict_ok;   // within OpenAI's strict subset
};
const Keyword* find_keyword(std::string_view k);  // nullptr: not a supported keyword
bool constrains(std::string_view k);
ojson constraints_of(const ojson& s, std::initializer_list<std::string_view> drop);
bool is_true_schema(const ojson& s);
bool is_false_schema(const ojson& s);
ojson conj(const ojson& a, const ojson& b);

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
inline constexpr uint8_t kAllTypes = kNull | kBool | kObject | kArray | kString | kNumber;
inline constexpr std::pair<const char*, uint8_t> kTypeNames[] = {
    {"null", kNull},     {"boolean", kBool},  {"object", kObject},  {"array", kArray},
    {"string", kString}, {"number", kNumber}, {"integer", kInteger}};

uint8_t intersect_types(uint8_t a, uint8_t b);
ojson types_json(uint8_t mask);
bool is_integral(const ojson& v);
uint8_t value_type(const ojson& v);
bool has_type(const ojson& v, uint8_t mask);
uint8_t inferred_types(const ojson& s);

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

}  // namespace peregrine::constrain::json_schema_detail
