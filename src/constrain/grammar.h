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
#include <string>
#include <utility>
#include <vector>

#include "core/status.h"

namespace peregrine::constrain {

inline constexpr uint32_t kMaxCodePoint = 0x10FFFF;
inline constexpr uint32_t kUnbounded = UINT32_MAX;  // Repeat::max without an upper bound

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

struct Grammar {
  std::vector<std::string> names;  // [n_rules] rule names (unique)
  std::vector<Expr> rules;         // [n_rules] rule bodies
  uint32_t root = 0;               // the rule a whole output must match

  // Index of the rule named `name`, adding an empty rule by that name when absent.
  uint32_t rule_id(const std::string& name);
  // Checks references and the root are in range and no rule is left-recursive (a rule
  // that can reach itself without consuming a byte would make matching loop forever).
  Status validate() const;
  // The grammar in GBNF syntax (root rule first), for `--print-grammar` and debugging; parsing
  // it back gives an equivalent grammar.
  std::string to_gbnf() const;
};

}  // namespace peregrine::constrain
