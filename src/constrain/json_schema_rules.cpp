// The JSON Schema compiler's grammar building blocks: Expr builders (counted toward
// kMaxWork), the shared JSON rules made on first use, and integers and decimals in a range
// as digit strings.
#include <fmt/format.h>

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "constrain/json_schema_compiler.h"

namespace peregrine::constrain::json_schema_detail {

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

}  // namespace peregrine::constrain::json_schema_detail
