#include "constrain/json_schema.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "constrain/json_schema_compiler.h"

namespace peregrine::constrain::json_schema_detail {
namespace {

// OpenAI's strict subset (platform.openai.com/docs/guides/structured-outputs, "Supported
// schemas"): limits and the string formats it lists.
constexpr uint32_t kStrictMaxObjectDepth = 10;
constexpr uint64_t kStrictMaxProperties = 5000;
constexpr uint64_t kStrictMaxEnumValues = 1000;
constexpr const char* kStrictFormats[] = {"date-time", "time", "date", "duration", "email",
                                          "hostname",  "ipv4", "ipv6", "uuid"};

// ---- JSON depth (iterative: the document may be deeper than the stack allows)

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

}  // namespace

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

namespace {

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

}  // namespace

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
    return fmt::format("\"{}\"", *canonical(k));  // GCC 12: false -Wrestrict on "\"" + string&&
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
  const bool extras_wanted =
      s.contains("additionalProperties") || opt_.extra_properties_by_default || props.empty();
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

}  // namespace peregrine::constrain::json_schema_detail

namespace peregrine::constrain {

using json_schema_detail::check_json_depth;
using json_schema_detail::Compiler;

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
