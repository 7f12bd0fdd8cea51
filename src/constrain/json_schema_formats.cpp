// String formats and patterns for the JSON Schema compiler: format rules (date, time, uuid,
// email, hostname, ip, uri, ...) and patterns, whose regex (regex_parser.h) is spliced into
// the grammar in canonical JSON string encoding.
#include <fmt/format.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "constrain/json_schema_compiler.h"
#include "constrain/regex_parser.h"

namespace peregrine::constrain::json_schema_detail {
namespace {

// ---- pattern text: top-level alternatives and anchors (regex_parser.h reads the rest)

// Walks the pattern text outside character classes, reading classes as regex_parser.h does
// (Python's syntax: a ']' right after '[' or '[^' is a member): visit(i) sees every character
// outside a class -- an escape at its backslash, the escaped character skipped -- and returns
// false to stop the walk.
template <typename Visit>
void scan_outside_classes(std::string_view re, Visit visit) {
  bool in_class = false;
  for (size_t i = 0; i < re.size(); ++i) {
    const char ch = re[i];
    if (in_class) {
      if (ch == '\\') ++i;
      else if (ch == ']') in_class = false;
      continue;
    }
    if (!visit(i)) return;
    if (ch == '\\') {
      ++i;
    } else if (ch == '[') {
      in_class = true;
      if (i + 1 < re.size() && re[i + 1] == '^') ++i;
      if (i + 1 < re.size() && re[i + 1] == ']') ++i;
    }
  }
}

// Splits at '|' outside groups and classes.
std::vector<std::string_view> split_alternatives(std::string_view re) {
  std::vector<std::string_view> out;
  size_t depth = 0, start = 0;
  scan_outside_classes(re, [&](size_t i) {
    if (re[i] == '(') {
      ++depth;
    } else if (re[i] == ')') {
      if (depth > 0) --depth;
    } else if (re[i] == '|' && depth == 0) {
      out.push_back(re.substr(start, i - start));
      start = i + 1;
    }
    return true;
  });
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
  std::optional<std::string> found;
  scan_outside_classes(re, [&](size_t i) {
    if (re[i] == '\\' && i + 1 < re.size() && std::string_view("bBAZzG").find(re[i + 1]) != std::string_view::npos)
      found = std::string(re.substr(i, 2));
    else if (re[i] == '^' || re[i] == '$')
      found = std::string(1, re[i]);
    return !found;
  });
  return found;
}

}  // namespace

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

}  // namespace peregrine::constrain::json_schema_detail
