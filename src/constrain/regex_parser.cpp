// A recursive-descent regex parser whose recursion is bounded by the group depth
// (kMaxDepth). As in gbnf_parser.cpp, expressions carry their depth and expanded size while
// they are built, so a hostile pattern is refused where it crosses a bound.
#include "constrain/regex_parser.h"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

#include "tokenizer/unicode_utf8.h"

namespace peregrine::constrain {

namespace {

using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;

using Node = SizedExpr;

// The class escapes' sets (see regex_parser.h).
const Ranges kDigit = {{'0', '9'}};
const Ranges kWord = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
const Ranges kSpace = {{0x09, 0x0D}, {0x20, 0x20},     {0xA0, 0xA0},     {0x1680, 0x1680},
                       {0x2000, 0x200A}, {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F},
                       {0x3000, 0x3000}, {0xFEFF, 0xFEFF}};

Ranges normalized(Ranges r) {
  std::sort(r.begin(), r.end());
  Ranges out;
  for (const auto& [lo, hi] : r) {
    if (!out.empty() && uint64_t(lo) <= uint64_t(out.back().second) + 1)
      out.back().second = std::max(out.back().second, hi);
    else
      out.emplace_back(lo, hi);
  }
  return out;
}

Ranges complement(const Ranges& r) {  // r normalized
  Ranges out;
  uint64_t next = 0;
  for (const auto& [lo, hi] : r) {
    if (lo > next) out.emplace_back(uint32_t(next), lo - 1);
    next = uint64_t(hi) + 1;
  }
  if (next <= kMaxCodePoint) out.emplace_back(uint32_t(next), kMaxCodePoint);
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_ascii_alnum(char c) {
  return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// One element of a class or an escape outside one: a code point or a set (\d, \W, ...).
struct Item {
  bool is_set = false;
  uint32_t cp = 0;
  Ranges ranges;  // is_set: normalized
  bool negated = false;
};

class RegexParser {
 public:
  explicit RegexParser(std::string_view src) : src_(src) {}

  Result<Grammar> parse() {
    if (src_.size() > kMaxGrammarTextBytes)
      return make_error("regex: pattern is {} bytes, over the limit of {}", src_.size(),
                        kMaxGrammarTextBytes);
    const size_t valid = utf8::valid_prefix(src_);
    if (valid != src_.size()) return fail(valid, "invalid UTF-8");
    if (at('^')) ++pos_;  // matching is always whole: a leading ^ changes nothing
    PG_ASSIGN(Node n, parse_alternation());
    if (at(')')) return fail(pos_, "')' without a matching '('");
    if (!at_end()) return fail(pos_, "unexpected " + describe(pos_));  // not reached
    Grammar g;
    g.names.push_back("root");
    g.rules.push_back(std::move(n.e));
    g.root = 0;
    if (Status s = g.validate(); !s.ok()) return make_error("regex: {}", s.error().message);
    return g;
  }

 private:
  std::string_view src_;
  size_t pos_ = 0;
  uint32_t groups_ = 0;  // open groups around pos_
  std::set<std::string> group_names_;

  Error fail(size_t at, const std::string& what) const {
    size_t col = 1;
    for (size_t i = 0; i < at && i < src_.size(); ++i)
      if ((uint8_t(src_[i]) & 0xC0) != 0x80) ++col;  // count code points
    return make_error("regex: column {}: {}", col, what);
  }

  std::string describe(size_t at) const {
    if (at >= src_.size()) return "the end of the pattern";
    const char c = src_[at];
    if (c > 0x20 && c < 0x7F) return fmt::format("'{}'", c);
    const utf8::Seq q = utf8::next(src_, at);
    return fmt::format("U+{:04X}", utf8::codepoint(src_, at, q.len));
  }

  bool at_end() const { return pos_ >= src_.size(); }
  bool at(char c, size_t ahead = 0) const {
    return pos_ + ahead < src_.size() && src_[pos_ + ahead] == c;
  }
  bool looking_at(std::string_view s) const { return src_.substr(pos_, s.size()) == s; }

  // ---- building, with the bounds ----

  Result<Node> combine(Expr::Kind kind, std::vector<Node> parts) {
    Node n = combine_sized(kind, std::move(parts));
    if (n.depth > kMaxDepth)
      return fail(pos_, fmt::format("expressions nested deeper than {} levels", kMaxDepth));
    if (n.size > kMaxExpandedSize)
      return fail(pos_, fmt::format("the pattern expands to more than {} elements when "
                                    "repeats are written out", kMaxExpandedSize));
    return n;
  }

  static Node literal(std::string text) {
    const uint64_t size = std::max<size_t>(1, text.size());
    return Node{Expr::literal(std::move(text)), 1, size};
  }

  static Node from_item(const Item& it) {
    if (!it.is_set) {
      std::string s;
      utf8::append_codepoint(s, it.cp);
      return literal(std::move(s));
    }
    return Node{Expr::cls(it.ranges, it.negated)};
  }

  // ---- structure ----

  Result<Node> parse_alternation() {
    std::vector<Node> alts;
    PG_ASSIGN(Node first, parse_sequence());
    alts.push_back(std::move(first));
    while (at('|')) {
      ++pos_;
      PG_ASSIGN(Node next, parse_sequence());
      alts.push_back(std::move(next));
    }
    return combine(Expr::Kind::Alt, std::move(alts));
  }

  Result<Node> parse_sequence() {
    std::vector<Node> items;
    bool last_is_plain_literal = false;  // may the next literal be appended to items.back()?
    uint64_t size = 0;
    while (!at_end() && !at('|') && !at(')')) {
      if (at('$') && pos_ + 1 == src_.size() && groups_ == 0) {
        ++pos_;  // a trailing $ changes nothing either
        break;
      }
      PG_ASSIGN(Node atom, parse_atom());
      PG_ASSIGN(const bool quantified, parse_quantifiers(&atom));
      size = expanded_size_sum(size, atom.size);
      if (size > kMaxExpandedSize)
        return fail(pos_, fmt::format("the pattern expands to more than {} elements when "
                                      "repeats are written out", kMaxExpandedSize));
      const bool plain_literal = !quantified && atom.e.kind == Expr::Kind::Literal;
      if (plain_literal && last_is_plain_literal) {
        items.back().e.text += atom.e.text;
        items.back().size = items.back().e.text.size();
      } else {
        items.push_back(std::move(atom));
      }
      last_is_plain_literal = plain_literal;
    }
    if (items.empty()) return Node{};
    return combine(Expr::Kind::Seq, std::move(items));
  }

  Result<Node> parse_atom() {
    const size_t start = pos_;
    const char c = src_[pos_];
    switch (c) {
      case '(':
        return parse_group();
      case '[':
        return parse_class();
      case '.':
        ++pos_;
        return Node{Expr::cls({{'\n', '\n'}}, true)};
      case '\\': {
        PG_ASSIGN(const Item it, parse_escape(false));
        return from_item(it);
      }
      case '^':
        return fail(start, "'^' is only supported as the first character of the pattern "
                           "(matching is always of the whole text); escape a literal one as \\^");
      case '$':
        return fail(start, "'$' is only supported as the last character of the pattern "
                           "(matching is always of the whole text); escape a literal one as \\$");
      case '*': case '+': case '?':
        return fail(start, fmt::format("'{}' has nothing to repeat", c));
      case '{':
        return fail(start, "'{' has nothing to repeat (escape a literal one as \\{)");
      default: {
        const utf8::Seq q = utf8::next(src_, pos_);  // valid: checked up front
        pos_ += q.len;
        return literal(std::string(src_.substr(start, q.len)));
      }
    }
  }

  // Applies the quantifier after an atom, if any; returns whether there was one.
  Result<bool> parse_quantifiers(Node* n) {
    if (at_end()) return false;
    const size_t qpos = pos_;
    uint32_t min = 0, max = kUnbounded;
    const char c = src_[pos_];
    if (c == '*') {
      ++pos_;
    } else if (c == '+') {
      ++pos_;
      min = 1;
    } else if (c == '?') {
      ++pos_;
      max = 1;
    } else if (c == '{') {
      PG_TRY(parse_braces(&min, &max));
    } else {
      return false;
    }
    if (at('+'))
      return fail(qpos, fmt::format("possessive quantifier '{}+' is not supported",
                                    src_.substr(qpos, pos_ - qpos)));
    if (at('?')) ++pos_;  // lazy: the same language
    if (at('*') || at('+') || at('?') || at('{'))
      return fail(pos_, "a quantifier cannot follow a quantifier (group the first: (?:a*)*)");
    if (n->depth + 1 > kMaxDepth)
      return fail(qpos, fmt::format("expressions nested deeper than {} levels", kMaxDepth));
    const uint64_t size = expanded_size_repeat(n->size, min, max);
    if (size > kMaxExpandedSize)
      return fail(qpos, fmt::format("this repetition expands to more than {} elements when "
                                    "written out", kMaxExpandedSize));
    *n = Node{Expr::repeat(std::move(n->e), min, max), n->depth + 1, size};
    return true;
  }

  // {n} {n,} {n,m}; pos_ is at '{'.
  Status parse_braces(uint32_t* min, uint32_t* max) {
    const size_t open = pos_++;
    if (at(','))
      return fail(open, "'{,n}' is not portable (Python reads {0,n}, ECMAScript literal text): "
                        "write {0,n}");
    if (at_end() || !is_digit(src_[pos_]))
      return fail(open, "'{' does not start a quantifier ({n}, {n,} or {n,m}); escape a "
                        "literal one as \\{");
    PG_ASSIGN(*min, parse_count());
    *max = *min;
    if (at(',')) {
      ++pos_;
      *max = kUnbounded;
      if (!at_end() && is_digit(src_[pos_])) {
        PG_ASSIGN(*max, parse_count());
      }
    }
    if (!at('}'))
      return fail(open, "'{' does not start a quantifier ({n}, {n,} or {n,m}); escape a "
                        "literal one as \\{");
    ++pos_;
    if (*min > *max)
      return fail(open, fmt::format("quantifier {{{},{}}} has its minimum above its maximum",
                                    *min, *max));
    return {};
  }

  Result<uint32_t> parse_count() {
    const size_t start = pos_;
    if (std::optional<uint32_t> v = read_repeat_count(src_, pos_)) return *v;
    return fail(start, fmt::format("repetition count {} is above the limit of {}",
                                   src_.substr(start, std::min<size_t>(pos_ - start, 24)), kMaxRepeatCount));
  }

  Result<Node> parse_group() {
    const size_t open = pos_++;
    if (++groups_ > kMaxDepth)
      return fail(open, fmt::format("groups nested deeper than {} levels", kMaxDepth));
    if (at('?')) PG_TRY(parse_group_kind(open));
    PG_ASSIGN(Node inner, parse_alternation());
    if (!at(')'))
      return fail(open, "missing ')' for this '('");
    ++pos_;
    --groups_;
    return inner;
  }

  // After "(?": the plain kinds are consumed, the others refused.
  Status parse_group_kind(size_t open) {
    ++pos_;
    if (at(':')) {
      ++pos_;
      return {};
    }
    if (looking_at("<=") || looking_at("<!"))
      return fail(open, "lookbehind '(?<=' / '(?<!' is not supported");
    if (at('=') || at('!')) return fail(open, "lookahead '(?=' / '(?!' is not supported");
    if (looking_at("P=")) return fail(open, "backreferences '(?P=name)' are not supported");
    if (at('<') || looking_at("P<")) {
      pos_ += at('<') ? 1 : 2;
      const size_t name_at = pos_;
      while (!at_end() && (is_ascii_alnum(src_[pos_]) || src_[pos_] == '_')) ++pos_;
      const std::string name(src_.substr(name_at, pos_ - name_at));
      if (name.empty() || is_digit(name[0]) || !at('>'))
        return fail(name_at, "a group name must be [A-Za-z_][A-Za-z0-9_]* followed by '>'");
      ++pos_;
      if (!group_names_.insert(name).second)
        return fail(name_at, fmt::format("group name '{}' is used twice", name));
      return {};
    }
    if (at('#')) return fail(open, "comments '(?#...)' are not supported");
    if (at('>')) return fail(open, "atomic groups '(?>...)' are not supported");
    if (at('(')) return fail(open, "conditionals '(?(...)...)' are not supported");
    if (looking_at("P>")) return fail(open, "'(?P>' is not supported");
    if (at_end()) return fail(open, "'(?' at the end of the pattern");
    return fail(open, fmt::format("inline flags or group syntax '(?' followed by {} are not "
                                  "supported", describe(pos_)));
  }

  // ---- escapes and classes ----

  // After a backslash: the escapes that mean the same in and out of classes, and (with
  // in_class) \b as U+0008.
  Result<Item> parse_escape(bool in_class) {
    const size_t start = pos_++;
    if (at_end()) return fail(start, "the pattern ends with a lone backslash");
    const char c = src_[pos_++];
    Item it;
    auto set = [&](const Ranges& r, bool negated) {
      it.is_set = true;
      it.ranges = r;
      it.negated = negated;
      return it;
    };
    switch (c) {
      case 'd': return set(kDigit, false);
      case 'D': return set(kDigit, true);
      case 'w': return set(kWord, false);
      case 'W': return set(kWord, true);
      case 's': return set(kSpace, false);
      case 'S': return set(kSpace, true);
      case 'n': it.cp = '\n'; return it;
      case 't': it.cp = '\t'; return it;
      case 'r': it.cp = '\r'; return it;
      case 'f': it.cp = '\f'; return it;
      case 'v': it.cp = '\v'; return it;
      case '0':
        if (!at_end() && is_digit(src_[pos_]))
          return fail(start, "octal escapes are not supported (use \\xHH)");
        it.cp = 0;
        return it;
      case 'b':
        if (in_class) {
          it.cp = 0x08;
          return it;
        }
        return fail(start, "word boundaries '\\b' are not supported");
      case 'B': return fail(start, "'\\B' (not a word boundary) is not supported");
      case 'x': return parse_hex_escape(start, 2);
      case 'u':
        if (at('{'))
          return fail(start, "'\\u{...}' is not supported: write \\uHHHH (a surrogate pair "
                             "above U+FFFF)");
        return parse_hex_escape(start, 4);
      case 'k': return fail(start, "named backreferences '\\k<name>' are not supported");
      case 'p': case 'P':
        return fail(start, fmt::format("Unicode property escapes '\\{}{{...}}' are not supported",
                                       c));
      case 'A': case 'Z': case 'z': case 'G':
        return fail(start, fmt::format("anchor '\\{}' is not supported (matching is always of "
                                       "the whole text)", c));
      case 'c': return fail(start, "control escapes '\\cX' are not supported");
      default: break;
    }
    if (is_digit(c))
      return fail(start, in_class ? "octal escapes are not supported (use \\xHH)"
                                  : "backreferences (\\1 ...) are not supported");
    if (is_ascii_alnum(c))
      return fail(start, fmt::format("unknown escape '\\{}'", c));
    // Punctuation and non-ASCII stand for themselves.
    --pos_;
    const utf8::Seq q = utf8::next(src_, pos_);
    it.cp = utf8::codepoint(src_, pos_, q.len);
    pos_ += q.len;
    return it;
  }

  Result<Item> parse_hex_escape(size_t start, int digits) {
    uint32_t v = 0;
    for (int i = 0; i < digits; ++i) {
      const int h = at_end() ? -1 : hex_value(src_[pos_]);
      if (h < 0) return fail(start, fmt::format("'\\{}' needs {} hex digits", src_[start + 1],
                                                digits));
      v = v * 16 + uint32_t(h);
      ++pos_;
    }
    if (digits == 4 && v >= 0xD800 && v <= 0xDFFF) {
      // A UTF-16 surrogate pair written as two escapes is one code point (as ECMAScript's
      // u flag reads it); a lone surrogate cannot appear in UTF-8 text.
      if (v <= 0xDBFF && looking_at("\\u")) {
        uint32_t lo = 0;
        bool ok = true;
        for (int i = 0; i < 4 && ok; ++i) {
          const int h = pos_ + 2 + i < src_.size() ? hex_value(src_[pos_ + 2 + i]) : -1;
          ok = h >= 0;
          lo = lo * 16 + uint32_t(std::max(h, 0));
        }
        if (ok && lo >= 0xDC00 && lo <= 0xDFFF) {
          pos_ += 6;
          Item it;
          it.cp = 0x10000 + ((v - 0xD800) << 10) + (lo - 0xDC00);
          return it;
        }
      }
      return fail(start, fmt::format("lone surrogate \\u{:04X} (only a high-low pair is a "
                                     "character)", v));
    }
    Item it;
    it.cp = v;
    return it;
  }

  // One class element (pos_ is not at ']').
  Result<Item> parse_class_item() {
    if (at('\\')) return parse_escape(true);
    if (looking_at("[:") || looking_at("[=") || looking_at("[."))
      return fail(pos_, "POSIX classes like '[:alpha:]' are not supported");
    Item it;
    const utf8::Seq q = utf8::next(src_, pos_);
    it.cp = utf8::codepoint(src_, pos_, q.len);
    pos_ += q.len;
    return it;
  }

  Result<Node> parse_class() {
    const size_t open = pos_++;
    const bool negated = at('^');
    if (negated) ++pos_;
    if (at(']'))
      return fail(pos_, "']' first in a class (Python: a literal; ECMAScript: an empty "
                        "class): escape it as \\]");
    Ranges ranges;
    while (!at(']')) {
      if (at_end()) return fail(open, "missing ']' for this '['");
      const size_t item_at = pos_;
      PG_ASSIGN(Item lo, parse_class_item());
      const bool range = at('-') && pos_ + 1 < src_.size() && !at(']', 1);
      if (range && lo.is_set)
        return fail(item_at, "a class escape cannot start a range (escape the '-' as \\-)");
      if (!range) {
        if (!lo.is_set) {
          ranges.emplace_back(lo.cp, lo.cp);
        } else {
          const Ranges add = lo.negated ? complement(lo.ranges) : lo.ranges;
          ranges.insert(ranges.end(), add.begin(), add.end());
        }
        continue;
      }
      ++pos_;
      PG_ASSIGN(Item hi, parse_class_item());
      if (hi.is_set)
        return fail(item_at, "a class escape cannot end a range (escape the '-' as \\-)");
      if (lo.cp > hi.cp)
        return fail(item_at, fmt::format("class range U+{:04X}-U+{:04X} is reversed", lo.cp,
                                         hi.cp));
      ranges.emplace_back(lo.cp, hi.cp);
    }
    ++pos_;
    return Node{Expr::cls(normalized(std::move(ranges)), negated)};
  }
};

}  // namespace

Result<Grammar> parse_regex(std::string_view re) { return RegexParser(re).parse(); }

}  // namespace peregrine::constrain
