// $ref lookup and allOf merging for the JSON Schema compiler: a $ref target found by JSON
// pointer, and the conjunction of schemas (allOf, $ref with siblings, anyOf/oneOf with
// siblings) merged into one schema; disjoint() for oneOf.
#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "constrain/json_schema_compiler.h"

namespace peregrine::constrain::json_schema_detail {
namespace {

// JSON values in j, counted up to just past cap (iterative: the document may be deeper than
// the stack allows).
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

}  // namespace

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

}  // namespace peregrine::constrain::json_schema_detail
