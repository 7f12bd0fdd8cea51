#include "constrain/grammar.h"

#include <algorithm>
#include <unordered_map>
#include <unordered_set>

#include "tokenizer/unicode_utf8.h"

namespace peregrine::constrain {

Expr Expr::literal(std::string s) {
  Expr e;
  e.kind = Kind::Literal;
  e.text = std::move(s);
  return e;
}

Expr Expr::cls(std::vector<std::pair<uint32_t, uint32_t>> ranges, bool negated) {
  Expr e;
  e.kind = Kind::Class;
  e.ranges = std::move(ranges);
  e.negated = negated;
  return e;
}

Expr Expr::ref(uint32_t rule) {
  Expr e;
  e.kind = Kind::Ref;
  e.rule = rule;
  return e;
}

Expr Expr::seq(std::vector<Expr> items) {
  Expr e;
  e.kind = Kind::Seq;
  e.items = std::move(items);
  return e;
}

Expr Expr::alt(std::vector<Expr> items) {
  Expr e;
  e.kind = Kind::Alt;
  e.items = std::move(items);
  return e;
}

Expr Expr::repeat(Expr item, uint32_t min, uint32_t max) {
  Expr e;
  e.kind = Kind::Repeat;
  e.min = min;
  e.max = max;
  e.items.push_back(std::move(item));
  return e;
}

uint64_t expanded_size_sum(uint64_t a, uint64_t b) {
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

uint64_t expanded_size_repeat(uint64_t item, uint32_t min, uint32_t max) {
  const uint64_t copies = max == kUnbounded ? uint64_t(min) + 1 : max;
  if (copies == 0) return 1;  // x{0}: the empty string
  return item > UINT64_MAX / copies ? UINT64_MAX : item * copies;
}

uint64_t expanded_size(const Expr& e) {
  switch (e.kind) {
    case Expr::Kind::Literal:
      return std::max<uint64_t>(1, e.text.size());
    case Expr::Kind::Seq:
    case Expr::Kind::Alt: {
      uint64_t n = 0;
      for (const Expr& x : e.items) n = expanded_size_sum(n, expanded_size(x));
      return std::max<uint64_t>(1, n);
    }
    case Expr::Kind::Repeat:
      return expanded_size_repeat(e.items.empty() ? 1 : expanded_size(e.items[0]), e.min, e.max);
    default:
      return 1;
  }
}

SizedExpr combine_sized(Expr::Kind kind, std::vector<SizedExpr> parts) {
  if (parts.size() == 1) return std::move(parts[0]);
  SizedExpr n;
  std::vector<Expr> items;
  items.reserve(parts.size());
  uint64_t size = 0;
  for (SizedExpr& p : parts) {
    n.depth = std::max(n.depth, p.depth + 1);
    size = expanded_size_sum(size, p.size);
    items.push_back(std::move(p.e));
  }
  n.size = std::max<uint64_t>(1, size);
  n.e = kind == Expr::Kind::Seq ? Expr::seq(std::move(items)) : Expr::alt(std::move(items));
  return n;
}

std::optional<uint32_t> read_repeat_count(std::string_view src, size_t& pos) {
  uint64_t v = 0;
  while (pos < src.size() && src[pos] >= '0' && src[pos] <= '9') {
    v = std::min<uint64_t>(v * 10 + uint64_t(src[pos] - '0'), uint64_t(kMaxRepeatCount) + 1);
    ++pos;
  }
  if (v > kMaxRepeatCount) return std::nullopt;
  return uint32_t(v);
}

uint32_t Grammar::rule_id(const std::string& name) {
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) return uint32_t(i);
  names.push_back(name);
  rules.push_back(Expr::empty());
  return uint32_t(names.size() - 1);
}

// ---- validate ----

namespace {

std::string hex_cp(uint32_t cp) { return fmt::format("U+{:04X}", cp); }

// A rule name for a message: at most 64 bytes (cut at a character boundary), so that a hostile
// name cannot make an error message huge.
std::string short_name(const std::string& name) {
  if (name.size() <= 64) return name;
  size_t cut = 64;
  while (cut > 0 && (uint8_t(name[cut]) & 0xC0) == 0x80) --cut;
  return name.substr(0, cut) + "...";
}

// Checks one rule body's structure (everything but left recursion); `depth` counts the
// expression nodes from the rule body down to e, so recursion stays within kMaxDepth.
Status check_expr(const Expr& e, uint32_t depth, size_t n_rules, const std::string& name) {
  // `name` is already short_name()d.
  if (depth > kMaxDepth)
    return make_error("rule '{}' nests expressions deeper than {} levels", name, kMaxDepth);
  switch (e.kind) {
    case Expr::Kind::Empty:
      return {};
    case Expr::Kind::Literal:
      if (!utf8::is_valid(e.text))
        return make_error("rule '{}': literal is not valid UTF-8 (at byte {})", name,
                          utf8::valid_prefix(e.text));
      return {};
    case Expr::Kind::Class:
      for (const auto& [lo, hi] : e.ranges) {
        if (hi > kMaxCodePoint)
          return make_error("rule '{}': class range ends at {}, above {}", name, hex_cp(hi),
                            hex_cp(kMaxCodePoint));
        if (lo > hi)
          return make_error("rule '{}': class range {}-{} is reversed", name, hex_cp(lo),
                            hex_cp(hi));
      }
      return {};
    case Expr::Kind::Ref:
      if (e.rule >= n_rules)
        return make_error("rule '{}' refers to rule {}, but the grammar has {} rules", name,
                          e.rule, n_rules);
      return {};
    case Expr::Kind::Repeat:
      if (e.items.size() != 1)
        return make_error("rule '{}': a repeat has {} items instead of 1", name, e.items.size());
      if (e.min > e.max)
        return make_error("rule '{}': repeat {{{},{}}} has its minimum above its maximum", name,
                          e.min, e.max);
      if (e.min > kMaxRepeatCount || (e.max != kUnbounded && e.max > kMaxRepeatCount))
        return make_error("rule '{}': repeat count {} is above the limit {}", name,
                          e.min > kMaxRepeatCount ? e.min : e.max, kMaxRepeatCount);
      [[fallthrough]];
    case Expr::Kind::Seq:
    case Expr::Kind::Alt:
      for (const Expr& x : e.items) PG_TRY(check_expr(x, depth + 1, n_rules, name));
      return {};
  }
  return make_error("rule '{}': unknown expression kind {}", name, int(e.kind));
}

// Appends to `out` (when given) the rules that e can call before it has consumed a byte, and
// returns whether e matches the empty string, given which rules do (`nullable`).
bool left_calls(const Expr& e, const std::vector<char>& nullable, std::vector<uint32_t>* out) {
  switch (e.kind) {
    case Expr::Kind::Empty:
      return true;
    case Expr::Kind::Literal:
      return e.text.empty();
    case Expr::Kind::Class:
      return false;
    case Expr::Kind::Ref:
      if (out) out->push_back(e.rule);
      return nullable[e.rule] != 0;
    case Expr::Kind::Seq:
      for (const Expr& x : e.items)
        if (!left_calls(x, nullable, out)) return false;  // later items come after a byte
      return true;
    case Expr::Kind::Alt: {
      bool any = false;
      for (const Expr& x : e.items) any = left_calls(x, nullable, out) || any;
      return any;
    }
    case Expr::Kind::Repeat:
      if (e.max == 0) return true;  // x{0} never runs x
      return left_calls(e.items[0], nullable, out) || e.min == 0;
  }
  return false;
}

void all_calls(const Expr& e, std::vector<uint32_t>* out) {
  if (e.kind == Expr::Kind::Ref) out->push_back(e.rule);
  for (const Expr& x : e.items) all_calls(x, out);
}

// Which rules match the empty string: the least fixpoint, by a worklist (a rule is looked at
// again only when a rule it calls has just become nullable).
std::vector<char> nullable_rules(const std::vector<Expr>& rules) {
  const size_t n = rules.size();
  std::vector<std::vector<uint32_t>> callers(n);  // [n_rules] rules that call rule r
  for (size_t r = 0; r < n; ++r) {
    std::vector<uint32_t> calls;
    all_calls(rules[r], &calls);
    std::sort(calls.begin(), calls.end());
    calls.erase(std::unique(calls.begin(), calls.end()), calls.end());
    for (uint32_t c : calls) callers[c].push_back(uint32_t(r));
  }
  std::vector<char> nullable(n, 0), queued(n, 1);
  std::vector<uint32_t> work(n);
  for (size_t r = 0; r < n; ++r) work[r] = uint32_t(n - 1 - r);
  while (!work.empty()) {
    const uint32_t r = work.back();
    work.pop_back();
    queued[r] = 0;
    if (nullable[r] || !left_calls(rules[r], nullable, nullptr)) continue;
    nullable[r] = 1;
    for (uint32_t c : callers[r])
      if (!nullable[c] && !queued[c]) {
        queued[c] = 1;
        work.push_back(c);
      }
  }
  return nullable;
}

}  // namespace

Status Grammar::validate() const {
  uint32_t bad_rule = 0;
  return validate(&bad_rule);
}

Status Grammar::validate(uint32_t* bad_rule) const {
  const size_t n = rules.size();
  *bad_rule = uint32_t(n);
  if (names.size() != n)
    return make_error("grammar has {} rule names for {} rules", names.size(), n);
  if (n == 0) return make_error("grammar has no rules");
  if (n > UINT32_MAX - 1) return make_error("grammar has too many rules ({})", n);
  if (root >= n) return make_error("root rule {} is out of range ({} rules)", root, n);
  std::unordered_map<std::string_view, uint32_t> seen;
  for (size_t r = 0; r < n; ++r) {
    const auto [it, fresh] = seen.emplace(names[r], uint32_t(r));
    if (!fresh) {
      *bad_rule = uint32_t(r);
      return make_error("rule name '{}' is used by rules {} and {}", short_name(names[r]),
                        it->second, r);
    }
  }
  uint64_t total = 0;
  for (size_t r = 0; r < n; ++r) {
    *bad_rule = uint32_t(r);
    PG_TRY(check_expr(rules[r], 1, n, short_name(names[r])));
    total = expanded_size_sum(total, expanded_size(rules[r]));
    if (total > kMaxExpandedSize)
      return make_error(
          "grammar expands to more than {} elements when repeats are written out (at rule '{}')",
          kMaxExpandedSize, short_name(names[r]));
  }

  // Left recursion: a cycle in the graph of calls made before consuming a byte. Iterative DFS
  // (rules can be many), colours: 0 unvisited, 1 on the current path, 2 done.
  const std::vector<char> nullable = nullable_rules(rules);
  std::vector<std::vector<uint32_t>> left(n);  // [n_rules] rules called before a byte
  for (size_t r = 0; r < n; ++r) left_calls(rules[r], nullable, &left[r]);
  std::vector<uint8_t> colour(n, 0);
  struct Frame {
    uint32_t rule;
    size_t next;  // index into left[rule]
  };
  std::vector<Frame> path;
  for (size_t start = 0; start < n; ++start) {
    if (colour[start]) continue;
    path.push_back({uint32_t(start), 0});
    colour[start] = 1;
    while (!path.empty()) {
      Frame& f = path.back();
      if (f.next == left[f.rule].size()) {
        colour[f.rule] = 2;
        path.pop_back();
        continue;
      }
      const uint32_t c = left[f.rule][f.next++];
      if (colour[c] == 0) {
        colour[c] = 1;
        path.push_back({c, 0});
      } else if (colour[c] == 1) {
        // The cycle c -> ... -> c, its middle elided when long.
        size_t first = path.size() - 1;
        while (path[first].rule != c) --first;
        const size_t len = path.size() - first;
        std::string cycle;
        for (size_t i = first; i < path.size(); ++i) {
          if (len > 8 && i == first + 4) {
            cycle += fmt::format("... ({} more) -> ", len - 6);
            i = path.size() - 3;
            continue;
          }
          cycle += short_name(names[path[i].rule]) + " -> ";
        }
        cycle += short_name(names[c]);
        *bad_rule = c;
        return make_error("rule '{}' is left-recursive: {} can repeat without consuming input",
                          short_name(names[c]), cycle);
      }
    }
  }
  *bad_rule = uint32_t(n);
  return {};
}

// ---- to_gbnf ----

namespace {

bool is_gbnf_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

// Names llama.cpp reads back ([a-zA-Z0-9-]+), unique, the root named "root". Valid names are
// kept first so that renaming others never takes them.
std::vector<std::string> printable_names(const Grammar& g) {
  const size_t n = g.rules.size();
  std::vector<std::string> out(n);
  std::unordered_set<std::string> taken{"root"};
  out[g.root] = "root";
  for (size_t r = 0; r < n; ++r) {
    if (r == g.root) continue;
    const std::string& s = g.names[r];
    if (!s.empty() && std::all_of(s.begin(), s.end(), is_gbnf_name_char) && taken.insert(s).second)
      out[r] = s;
  }
  for (size_t r = 0; r < n; ++r) {
    if (!out[r].empty()) continue;
    std::string base;
    for (char c : g.names[r]) base += is_gbnf_name_char(c) ? c : '-';
    if (base.empty()) base = "rule";
    std::string name = base;
    for (uint32_t k = 2; !taken.insert(name).second; ++k) name = base + "-" + std::to_string(k);
    out[r] = name;
  }
  return out;
}

// Controls, spaces other than U+0020, format characters, variation selectors, specials,
// tags and private use: printed escaped so that --print-grammar shows them.
bool invisible(uint32_t cp) {
  return (cp >= 0x80 && cp <= 0xA0) || cp == 0xAD || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200F) ||
         (cp >= 0x2028 && cp <= 0x202F) || (cp >= 0x205F && cp <= 0x206F) || cp == 0x3000 ||
         (cp >= 0xE000 && cp <= 0xF8FF) || (cp >= 0xFE00 && cp <= 0xFE0F) || cp == 0xFEFF ||
         (cp >= 0xFFF0 && cp <= 0xFFFF) || (cp >= 0xE0000 && cp <= 0xE0FFF) || cp >= 0xF0000;
}

// One code point inside "..." (in_class false) or [...] (in_class true).
void print_char(std::string& out, uint32_t cp, bool in_class) {
  switch (cp) {
    case '\n': out += "\\n"; return;
    case '\r': out += "\\r"; return;
    case '\t': out += "\\t"; return;
    case '\\': out += "\\\\"; return;
    default: break;
  }
  if (!in_class && cp == '"') {
    out += "\\\"";
  } else if (in_class && (cp == ']' || cp == '[' || cp == '-')) {
    out += '\\';
    out += char(cp);
  } else if (in_class && cp == '^') {
    out += "\\x5E";  // GBNF has no \^, and a leading ^ would negate the class
  } else if (cp < 0x20 || cp == 0x7F) {
    out += fmt::format("\\x{:02X}", cp);
  } else if (cp < 0x80) {
    out += char(cp);
  } else if (invisible(cp) || (cp >= 0xD800 && cp <= 0xDFFF)) {
    // Surrogates cannot be written in UTF-8 (only classes hold them); the rest would print as
    // nothing or as a plain space.
    out += cp <= 0xFF ? fmt::format("\\x{:02X}", cp)
           : cp <= 0xFFFF ? fmt::format("\\u{:04X}", cp) : fmt::format("\\U{:08X}", cp);
  } else {
    utf8::append_codepoint(out, cp);
  }
}

void print_literal(std::string& out, const std::string& text) {
  out += '"';
  for (size_t i = 0; i < text.size();) {
    const utf8::Seq q = utf8::next(text, i);
    if (q.kind != utf8::Seq::Valid) {  // validate() refuses this; print something readable
      out += fmt::format("\\x{:02X}", uint8_t(text[i]));
      ++i;
      continue;
    }
    print_char(out, utf8::codepoint(text, i, q.len), false);
    i += q.len;
  }
  out += '"';
}

bool covers_everything(std::vector<std::pair<uint32_t, uint32_t>> ranges) {
  std::sort(ranges.begin(), ranges.end());
  uint64_t next = 0;  // the first code point not covered yet
  for (const auto& [lo, hi] : ranges) {
    if (lo > next) return false;
    next = std::max<uint64_t>(next, uint64_t(hi) + 1);
  }
  return next > kMaxCodePoint;
}

// A class that matches nothing (GBNF has no empty class).
constexpr const char* kNothing = "[^\\x00-\\U0010FFFF]";

void print_class(std::string& out, const Expr& e) {
  const bool all = covers_everything(e.ranges);
  if ((!e.negated && all) || (e.negated && e.ranges.empty())) {
    out += '.';
    return;
  }
  if ((!e.negated && e.ranges.empty()) || (e.negated && all)) {
    out += kNothing;
    return;
  }
  out += e.negated ? "[^" : "[";
  for (const auto& [lo, hi] : e.ranges) {
    print_char(out, lo, true);
    if (hi != lo) {
      out += '-';
      print_char(out, hi, true);
    }
  }
  out += ']';
}

struct Printer {
  const std::vector<std::string>& names;
  std::string& out;

  // An alternation's level: `|` binds loosest, so no parentheses are needed here.
  void alternatives(const Expr& e) {
    if (e.kind != Expr::Kind::Alt) return sequence(e);
    if (e.items.empty()) {
      out += kNothing;
      return;
    }
    for (size_t i = 0; i < e.items.size(); ++i) {
      if (i) out += " | ";
      alternatives(e.items[i]);  // an alternation inside one flattens
    }
  }

  void sequence(const Expr& e) {
    if (e.kind != Expr::Kind::Seq) return seq_item(e);
    if (e.items.empty()) {
      out += "\"\"";
      return;
    }
    for (size_t i = 0; i < e.items.size(); ++i) {
      if (i) out += ' ';
      seq_item(e.items[i]);
    }
  }

  void seq_item(const Expr& e) {
    if (e.kind == Expr::Kind::Seq) return sequence(e);  // a sequence inside one flattens
    if (e.kind == Expr::Kind::Alt && e.items.size() == 1) return seq_item(e.items[0]);
    if (e.kind == Expr::Kind::Alt && !e.items.empty()) {
      out += '(';
      alternatives(e);
      out += ')';
      return;
    }
    if (e.kind == Expr::Kind::Repeat) {
      atom(e.items[0]);
      if (e.min == 0 && e.max == kUnbounded) out += '*';
      else if (e.min == 1 && e.max == kUnbounded) out += '+';
      else if (e.min == 0 && e.max == 1) out += '?';
      else if (e.min == e.max) out += fmt::format("{{{}}}", e.min);
      else if (e.max == kUnbounded) out += fmt::format("{{{},}}", e.min);
      else out += fmt::format("{{{},{}}}", e.min, e.max);
      return;
    }
    atom(e);
  }

  // Something a quantifier applies to as a whole.
  void atom(const Expr& e) {
    switch (e.kind) {
      case Expr::Kind::Empty: out += "\"\""; return;
      case Expr::Kind::Literal: print_literal(out, e.text); return;
      case Expr::Kind::Class: print_class(out, e); return;
      case Expr::Kind::Ref: out += names[e.rule]; return;
      default:
        if (e.kind == Expr::Kind::Alt && e.items.empty()) {
          out += kNothing;
          return;
        }
        out += '(';
        alternatives(e);
        out += ')';
    }
  }
};

}  // namespace

std::string Grammar::to_gbnf() const {
  // Printing walks references and recurses: only a valid grammar is safe to print.
  if (Status s = validate(); !s.ok()) {
    std::string why = s.error().message;  // names in it may hold line breaks
    std::replace(why.begin(), why.end(), '\n', ' ');
    std::replace(why.begin(), why.end(), '\r', ' ');
    return "# invalid grammar: " + why + "\n";
  }
  const std::vector<std::string> printed = printable_names(*this);
  std::string out;
  Printer p{printed, out};
  auto rule = [&](size_t r) {
    out += printed[r];
    out += " ::= ";
    p.alternatives(rules[r]);
    out += '\n';
  };
  rule(root);
  for (size_t r = 0; r < rules.size(); ++r)
    if (r != root) rule(r);
  return out;
}

}  // namespace peregrine::constrain
