// A recursive-descent parser whose recursion is bounded by the parenthesis depth
// (kMaxDepth). Expressions carry their depth and expanded size as they are built, so a
// hostile grammar is refused where the bound is crossed, before anything large exists.
#include "constrain/gbnf_parser.h"

#include <algorithm>
#include <string>
#include <unordered_map>
#include <vector>

#include "tokenizer/unicode_utf8.h"

namespace peregrine::constrain {

namespace {

constexpr size_t kNone = SIZE_MAX;

// An expression with its nesting depth and expanded size (grammar.h).
using Node = SizedExpr;

bool is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '_';
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// A rule name (ASCII) for a message, cut at 64 characters.
std::string short_name(const std::string& name) {
  return name.size() <= 64 ? name : name.substr(0, 64) + "...";
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

class GbnfParser {
 public:
  explicit GbnfParser(std::string_view src) : src_(src) {}

  Result<Grammar> parse() {
    if (src_.size() > kMaxGrammarTextBytes)
      return make_error("gbnf: grammar is {} bytes, over the limit of {}", src_.size(),
                        kMaxGrammarTextBytes);
    const size_t valid = utf8::valid_prefix(src_);
    if (valid != src_.size()) return fail(valid, "invalid UTF-8");
    if (src_.substr(0, 3) == "\xEF\xBB\xBF") pos_ = 3;  // a byte order mark
    skip_space(true);
    while (!at_end()) PG_TRY(parse_rule());

    // The first use (in the text) of a rule never defined.
    size_t undefined = kNone;
    for (size_t r = 0; r < g_.rules.size(); ++r)
      if (defined_at_[r] == kNone && (undefined == kNone || used_at_[r] < used_at_[undefined]))
        undefined = r;
    if (undefined != kNone)
      return fail(used_at_[undefined], fmt::format("rule '{}' is used but never defined",
                                                    short_name(g_.names[undefined])));
    const auto root = ids_.find("root");
    if (root == ids_.end() || defined_at_[root->second] == kNone)
      return make_error("gbnf: no rule named 'root' (the rule the whole output must match)");
    g_.root = root->second;
    in_definition_order();
    uint32_t bad = 0;
    if (Status s = g_.validate(&bad); !s.ok()) {
      if (bad < g_.rules.size()) return fail(defined_at_[bad], s.error().message);
      return make_error("gbnf: {}", s.error().message);
    }
    return std::move(g_);
  }

 private:
  std::string_view src_;
  size_t pos_ = 0;
  uint32_t parens_ = 0;  // open parentheses around pos_
  Grammar g_;
  std::unordered_map<std::string, uint32_t> ids_;  // rule name -> index in g_
  std::vector<size_t> defined_at_;                 // [n_rules] offset of `name ::=`, or kNone
  std::vector<size_t> used_at_;                    // [n_rules] offset of the first use, or kNone
  uint64_t total_size_ = 0;                        // expanded size of the rules so far

  // Rules are numbered by first mention while parsing; renumber them in the order of their
  // definitions, so that to_gbnf() prints them as the file has them.
  void in_definition_order() {
    const size_t n = g_.rules.size();
    std::vector<uint32_t> order(n), new_id(n);
    for (size_t r = 0; r < n; ++r) order[r] = uint32_t(r);
    std::sort(order.begin(), order.end(),
              [&](uint32_t a, uint32_t b) { return defined_at_[a] < defined_at_[b]; });
    for (size_t i = 0; i < n; ++i) new_id[order[i]] = uint32_t(i);
    Grammar out;
    std::vector<size_t> defined_at(n);
    for (size_t i = 0; i < n; ++i) {
      out.names.push_back(std::move(g_.names[order[i]]));
      out.rules.push_back(std::move(g_.rules[order[i]]));
      renumber(out.rules.back(), new_id);
      defined_at[i] = defined_at_[order[i]];
    }
    out.root = new_id[g_.root];
    g_ = std::move(out);
    defined_at_ = std::move(defined_at);
  }

  // Recursion within kMaxDepth: the parser bounded every expression's depth.
  static void renumber(Expr& e, const std::vector<uint32_t>& new_id) {
    if (e.kind == Expr::Kind::Ref) e.rule = new_id[e.rule];
    for (Expr& x : e.items) renumber(x, new_id);
  }

  // ---- positions and errors ----

  // "line:column" of a byte offset; columns count code points from 1.
  std::string line_col(size_t at) const {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < src_.size(); ++i) {
      const auto b = uint8_t(src_[i]);
      if (b == '\n') {
        ++line;
        col = 1;
      } else if ((b & 0xC0) != 0x80) {  // not a continuation byte
        ++col;
      }
    }
    return fmt::format("{}:{}", line, col);
  }

  Error fail(size_t at, const std::string& what) const {
    return make_error("gbnf: line {}: {}", line_col(at), what);
  }

  // What is at `at`, for "found ..." in messages.
  std::string describe(size_t at) const {
    if (at >= src_.size()) return "the end of the input";
    const char c = src_[at];
    if (c == '\n') return "a newline";
    if (c == '\r') return "a carriage return";
    if (c > 0x20 && c < 0x7F) return fmt::format("'{}'", c);
    const utf8::Seq q = utf8::next(src_, at);
    return fmt::format("U+{:04X}", utf8::codepoint(src_, at, q.len));
  }

  bool at_end() const { return pos_ >= src_.size(); }
  bool at(char c, size_t ahead = 0) const {
    return pos_ + ahead < src_.size() && src_[pos_ + ahead] == c;
  }
  bool at_newline() const { return at('\n') || at('\r'); }

  // Spaces, tabs and # comments; newlines too where the syntax allows them.
  void skip_space(bool newlines) {
    while (!at_end()) {
      const char c = src_[pos_];
      if (c == ' ' || c == '\t' || (newlines && (c == '\n' || c == '\r'))) {
        ++pos_;
      } else if (c == '#') {
        while (!at_end() && !at_newline()) ++pos_;
      } else {
        break;
      }
    }
  }

  // ---- rules ----

  uint32_t intern(const std::string& name) {
    const auto [it, fresh] = ids_.emplace(name, uint32_t(g_.rules.size()));
    if (fresh) {
      g_.names.push_back(name);
      g_.rules.push_back(Expr::empty());
      defined_at_.push_back(kNone);
      used_at_.push_back(kNone);
    }
    return it->second;
  }

  std::string parse_name() {
    const size_t start = pos_;
    while (!at_end() && is_name_char(src_[pos_])) ++pos_;
    return std::string(src_.substr(start, pos_ - start));
  }

  Status parse_rule() {
    const size_t start = pos_;
    const std::string name = parse_name();
    if (name.empty()) return fail(pos_, "expected a rule name, found " + describe(pos_));
    skip_space(false);
    if (src_.substr(pos_, 3) != "::=")
      return fail(pos_, fmt::format("expected '::=' after rule name '{}', found {}",
                                    short_name(name), describe(pos_)));
    pos_ += 3;
    skip_space(true);
    const uint32_t id = intern(name);
    if (defined_at_[id] != kNone)
      return fail(start, fmt::format("rule '{}' is defined twice (first at line {})",
                                     short_name(name), line_col(defined_at_[id])));
    defined_at_[id] = start;
    PG_ASSIGN(Node body, parse_alternatives(false));
    total_size_ = expanded_size_sum(total_size_, body.size);
    if (total_size_ > kMaxExpandedSize)
      return fail(start, fmt::format("the grammar expands to more than {} elements when "
                                     "repeats are written out (at rule '{}')",
                                     kMaxExpandedSize, short_name(name)));
    g_.rules[id] = std::move(body.e);
    if (at_newline()) {
      if (at('\r')) ++pos_;
      if (at('\n')) ++pos_;
    } else if (src_.substr(pos_, 3) == "::=") {
      return fail(pos_, "'::=' inside a rule body: a new rule must start on its own line");
    } else if (at(')')) {
      return fail(pos_, "')' without a matching '('");
    } else if (!at_end()) {
      return fail(pos_, "expected a symbol, '|' or the end of the line, found " + describe(pos_));
    }
    skip_space(true);
    return {};
  }

  // ---- expressions ----

  Result<Node> combine(Expr::Kind kind, std::vector<Node> parts) {
    Node n = combine_sized(kind, std::move(parts));
    if (n.depth > kMaxDepth)
      return fail(pos_, fmt::format("expressions nested deeper than {} levels", kMaxDepth));
    return n;
  }

  // `nested`: inside parentheses, where newlines are spaces.
  Result<Node> parse_alternatives(bool nested) {
    std::vector<Node> alts;
    PG_ASSIGN(Node first, parse_sequence(nested));
    alts.push_back(std::move(first));
    while (at('|')) {
      ++pos_;
      skip_space(true);  // a newline after '|' continues the rule
      PG_ASSIGN(Node next, parse_sequence(nested));
      alts.push_back(std::move(next));
    }
    return combine(Expr::Kind::Alt, std::move(alts));
  }

  Result<Node> parse_sequence(bool nested) {
    std::vector<Node> items;
    uint64_t size = 0;
    while (!at_end()) {
      const char c = src_[pos_];
      if (c == '*' || c == '+' || c == '?' || c == '{')
        return fail(pos_, fmt::format("'{}' has nothing to repeat", c));
      if (!(c == '"' || c == '[' || c == '(' || c == '.' || c == '<' || c == '!' ||
            is_name_char(c)))
        break;
      PG_ASSIGN(Node item, parse_quantified(nested));
      size = expanded_size_sum(size, item.size);
      if (size > kMaxExpandedSize)
        return fail(pos_, fmt::format("the rule expands to more than {} elements when "
                                      "repeats are written out", kMaxExpandedSize));
      items.push_back(std::move(item));
    }
    if (items.empty()) return Node{};
    return combine(Expr::Kind::Seq, std::move(items));
  }

  Result<Node> parse_quantified(bool nested) {
    PG_ASSIGN(Node n, parse_primary());
    skip_space(nested);
    while (at('*') || at('+') || at('?') || at('{')) {
      const size_t qpos = pos_;
      uint32_t min = 0, max = kUnbounded;
      const char c = src_[pos_++];
      if (c == '+') min = 1;
      else if (c == '?') max = 1;
      else if (c == '{') PG_TRY(parse_braces(qpos, nested, &min, &max));
      skip_space(nested);
      if (n.depth + 1 > kMaxDepth)
        return fail(qpos, fmt::format("expressions nested deeper than {} levels", kMaxDepth));
      const uint64_t size = expanded_size_repeat(n.size, min, max);
      if (size > kMaxExpandedSize)
        return fail(qpos, fmt::format("this repetition expands to more than {} elements when "
                                      "written out", kMaxExpandedSize));
      n = Node{Expr::repeat(std::move(n.e), min, max), n.depth + 1, size};
    }
    return n;
  }

  // {m} {m,} {m,n} {,n} (spaces allowed inside, as llama.cpp does); pos_ is after '{'.
  Status parse_braces(size_t open, bool nested, uint32_t* min, uint32_t* max) {
    skip_space(nested);
    if (is_digit_at()) {
      PG_ASSIGN(*min, parse_count());
    } else if (!at(',')) {
      return fail(pos_, "expected a number after '{', found " + describe(pos_));
    }
    skip_space(nested);
    if (at('}')) {
      *max = *min;
    } else if (at(',')) {
      ++pos_;
      skip_space(nested);
      if (is_digit_at()) {
        PG_ASSIGN(*max, parse_count());
        skip_space(nested);
      }
    }
    if (!at('}'))
      return fail(pos_, fmt::format("expected '}}' to close the repetition at line {}, found {}",
                                    line_col(open), describe(pos_)));
    ++pos_;
    if (*min > *max)
      return fail(open, fmt::format("repetition {{{},{}}} has its minimum above its maximum",
                                    *min, *max));
    return {};
  }

  bool is_digit_at() const { return !at_end() && is_digit(src_[pos_]); }

  Result<uint32_t> parse_count() {
    const size_t start = pos_;
    if (std::optional<uint32_t> v = read_repeat_count(src_, pos_)) return *v;
    return fail(start, fmt::format("repetition count {} is above the limit of {}",
                                   src_.substr(start, std::min<size_t>(pos_ - start, 24)), kMaxRepeatCount));
  }

  Result<Node> parse_primary() {
    const size_t start = pos_;
    const char c = src_[pos_];
    if (c == '"') return parse_literal();
    if (c == '[') return parse_class();
    if (c == '.') {
      ++pos_;
      return Node{Expr::any_char()};
    }
    if (c == '<' || c == '!')
      return fail(start, "token references ('<[id]>', '<token>', '!<...>') are not supported: "
                         "grammars here constrain text");
    if (c == '(') {
      if (++parens_ > kMaxDepth)
        return fail(start, fmt::format("parentheses nested deeper than {} levels", kMaxDepth));
      ++pos_;
      skip_space(true);
      PG_ASSIGN(Node inner, parse_alternatives(true));
      if (!at(')'))
        return fail(pos_, fmt::format("expected ')' to close the '(' at line {}, found {}",
                                      line_col(start), describe(pos_)));
      ++pos_;
      --parens_;
      return inner;
    }
    const std::string name = parse_name();  // the caller saw a name character
    const uint32_t id = intern(name);
    if (used_at_[id] == kNone) used_at_[id] = start;
    return Node{Expr::ref(id)};
  }

  // One character of a literal or class: an escape or a UTF-8 code point (the text is
  // valid UTF-8, checked up front).
  Result<uint32_t> parse_char() {
    const size_t start = pos_;
    if (!at('\\')) {
      const utf8::Seq q = utf8::next(src_, pos_);
      pos_ += q.len;
      return utf8::codepoint(src_, start, q.len);
    }
    ++pos_;
    if (at_end()) return fail(start, "unfinished escape at the end of the input");
    const char c = src_[pos_++];
    int digits = 0;
    switch (c) {
      case 'n': return uint32_t('\n');
      case 'r': return uint32_t('\r');
      case 't': return uint32_t('\t');
      case '\\': case '"': case '[': case ']': case '-': return uint32_t(uint8_t(c));
      case 'x': digits = 2; break;
      case 'u': digits = 4; break;
      case 'U': digits = 8; break;
      default:
        return fail(start, fmt::format("unknown escape {} (GBNF has \\n \\r \\t \\\\ \\\" "
                                       "\\[ \\] \\- \\xHH \\uHHHH \\UHHHHHHHH)",
                                       c > 0x20 && c < 0x7F ? fmt::format("'\\{}'", c)
                                                            : "'\\' before " + describe(pos_ - 1)));
    }
    uint64_t v = 0;
    for (int i = 0; i < digits; ++i) {
      const int h = at_end() ? -1 : hex_value(src_[pos_]);
      if (h < 0)
        return fail(start, fmt::format("'\\{}' needs {} hex digits", c, digits));
      v = v * 16 + uint64_t(h);
      ++pos_;
    }
    if (v > kMaxCodePoint)
      return fail(start, fmt::format("code point U+{:X} is above U+10FFFF", v));
    return uint32_t(v);
  }

  Result<Node> parse_literal() {
    const size_t start = pos_++;
    std::string text;
    while (!at('"')) {
      if (at_end()) return fail(start, "unterminated string literal");
      if (at_newline())
        return fail(start, "unterminated string literal (a literal cannot span lines; write \\n)");
      const size_t char_at = pos_;
      PG_ASSIGN(const uint32_t cp, parse_char());
      if (cp >= 0xD800 && cp <= 0xDFFF)
        return fail(char_at, fmt::format("surrogate U+{:04X} in a literal (not encodable in "
                                         "UTF-8)", cp));
      utf8::append_codepoint(text, cp);
    }
    ++pos_;
    if (text.empty()) return Node{};
    const uint64_t size = text.size();
    return Node{Expr::literal(std::move(text)), 1, size};
  }

  Result<Node> parse_class() {
    const size_t start = pos_++;
    const bool negated = at('^');
    if (negated) ++pos_;
    std::vector<std::pair<uint32_t, uint32_t>> ranges;
    while (!at(']')) {
      if (at_end()) return fail(start, "unterminated character class");
      if (at_newline())
        return fail(start, "unterminated character class (a class cannot span lines)");
      const size_t lo_at = pos_;
      PG_ASSIGN(const uint32_t lo, parse_char());
      uint32_t hi = lo;
      if (at('-') && pos_ + 1 < src_.size() && !at(']', 1) && !at('\n', 1) && !at('\r', 1)) {
        ++pos_;
        PG_ASSIGN(hi, parse_char());
        if (lo > hi)
          return fail(lo_at, fmt::format("class range U+{:04X}-U+{:04X} is reversed", lo, hi));
      }
      ranges.emplace_back(lo, hi);
    }
    ++pos_;
    if (ranges.empty())
      return fail(start, negated ? "empty class '[^]' (write '.' for any character)"
                                 : "empty class '[]' matches nothing");
    return Node{Expr::cls(std::move(ranges), negated)};
  }
};

}  // namespace

Result<Grammar> parse_gbnf(std::string_view text) { return GbnfParser(text).parse(); }

}  // namespace peregrine::constrain
