// The grammar every text constraint compiles to: named rules whose bodies are expressions
// over Unicode code points and references to other rules. GBNF files (gbnf_parser.h),
// regular expressions (regex_parser.h) and JSON Schemas (json_schema.h, through GBNF) all
// produce a Grammar; grammar_compiler.h turns it into byte-level automata for masking.
//
// Text is matched as UTF-8 bytes: a literal is its UTF-8 encoding and a class of code points
// becomes the byte sequences that encode them, so tokens that end inside a multi-byte
// character are handled by the same automaton as everything else.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace peregrine::constrain {

inline constexpr uint32_t kMaxCodePoint = 0x10FFFF;
inline constexpr uint32_t kUnbounded = UINT32_MAX;  // Repeat::max without an upper bound

// Bounds on hostile input. The text front ends (GBNF, regex) refuse text that exceeds them with
// a positioned error, and validate() holds every Grammar to the same bounds (so to_gbnf() of a
// valid grammar parses back, if its text is within kMaxGrammarTextBytes): recursion over an
// expression stays within kMaxDepth frames, and a compiler that writes repeats out builds at
// most kMaxExpandedSize nodes.
inline constexpr size_t kMaxGrammarTextBytes = size_t(1) << 20;  // GBNF or regex source
inline constexpr uint32_t kMaxDepth = 256;             // expression nesting (and parentheses)
inline constexpr uint32_t kMaxRepeatCount = 10000;     // m and n in {m,n}
inline constexpr uint64_t kMaxExpandedSize = 1 << 20;  // expanded_size() summed over all rules

struct Expr {
  enum class Kind : uint8_t {
    Empty,    // matches the empty string
    Literal,  // `text` (UTF-8 bytes, matched exactly)
    Class,    // one code point in `ranges` (or, with `negated`, one code point outside them)
    Ref,      // the rule `rule` (an index into Grammar::rules)
    Seq,      // `items` one after another
    Alt,      // one of `items`
    Repeat,   // items[0] between `min` and `max` times (max may be kUnbounded)
  };
  Kind kind = Kind::Empty;
  std::string text;                                  // Literal
  std::vector<std::pair<uint32_t, uint32_t>> ranges;  // Class: inclusive code point ranges
  bool negated = false;                              // Class
  uint32_t rule = 0;                                 // Ref
  uint32_t min = 0, max = 0;                         // Repeat
  std::vector<Expr> items;                           // Seq, Alt, Repeat (exactly one)

  static Expr empty() { return {}; }
  static Expr literal(std::string s);
  static Expr cls(std::vector<std::pair<uint32_t, uint32_t>> ranges, bool negated = false);
  static Expr any_char() { return cls({{0, kMaxCodePoint}}); }
  static Expr ref(uint32_t rule);
  static Expr seq(std::vector<Expr> items);
  static Expr alt(std::vector<Expr> items);
  static Expr repeat(Expr item, uint32_t min, uint32_t max);
};

// The size of `e` with every repeat written out: a literal counts its bytes, a class, a
// reference or the empty string 1, a sequence or alternation the sum of its items, and
// x{m,n} n copies of x (m + 1 for x{m,}); never less than 1, saturating at UINT64_MAX.
// Recursive: for expressions within kMaxDepth.
uint64_t expanded_size(const Expr& e);
// The same quantities for front ends that compute sizes while they build (kept in one place
// so that they agree with validate()).
uint64_t expanded_size_sum(uint64_t a, uint64_t b);

// An expression with what the front ends bound while they build it: nesting depth and
// expanded size (as expanded_size counts it).
struct SizedExpr {
  Expr e;
  uint32_t depth = 1;
  uint64_t size = 1;
};
// `parts` as one Seq or Alt (a single part: itself), depth and size accumulated; the caller
// checks them against its limits.
SizedExpr combine_sized(Expr::Kind kind, std::vector<SizedExpr> parts);
// Reads the decimal digits at src[pos] (pos moves past them) as a repetition count; nullopt
// when the number passes kMaxRepeatCount (the front ends say where).
std::optional<uint32_t> read_repeat_count(std::string_view src, size_t& pos);
uint64_t expanded_size_repeat(uint64_t item, uint32_t min, uint32_t max);

struct Grammar {
  std::vector<std::string> names;  // [n_rules] rule names (unique)
  std::vector<Expr> rules;         // [n_rules] rule bodies
  uint32_t root = 0;               // the rule a whole output must match

  // Index of the rule named `name`, adding an empty rule by that name when absent.
  uint32_t rule_id(const std::string& name);
  // Checks references and the root are in range and no rule is left-recursive (a rule
  // that can reach itself without consuming a byte would make matching loop forever), and
  // the bounds above: nesting depth, repeat counts (min <= max), the total expanded size;
  // also that names are unique, literals valid UTF-8 and class ranges ordered code points.
  Status validate() const;
  // The same; on an error about one rule, *bad_rule is that rule's index (else n_rules), so
  // that a parser can say where the rule was defined.
  Status validate(uint32_t* bad_rule) const;
  // The grammar in GBNF syntax (root rule first), for `--print-grammar` and debugging; parsing
  // it back gives an equivalent grammar. Rule names are kept where llama.cpp would read them
  // ([a-zA-Z0-9-]+, unique), else made so ('_' and other characters become '-', then "-2",
  // "-3"... for clashes); the root is printed as "root". A grammar validate() refuses prints
  // as one "#" comment line with the reason.
  std::string to_gbnf() const;
};

}  // namespace peregrine::constrain
