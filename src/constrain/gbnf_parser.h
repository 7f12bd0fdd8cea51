// GBNF, llama.cpp's grammar syntax (its grammars/README.md), parsed into a Grammar so that
// users' grammar files work unchanged:
//
//   root  ::= "1. " move (" " move)* "\n"    # comments run to the end of the line
//   move  ::= [a-h] [1-8] | "O-O" ("-O")?
//
// - Rules `name ::= body`, one per line; names are [a-zA-Z0-9_-]+ (llama.cpp: no '_').
//   A body continues on the next line after `|`, and anywhere inside parentheses.
// - Alternatives `|`, sequences, groups `( )`, quantifiers `* + ? {m} {m,} {m,n}` and `{,n}`
//   (several in a row nest: `x*?` is `(x*)?`), `.` for any code point.
// - "literals" and [classes] / [^negated classes] over code points, raw UTF-8 or escaped:
//   \n \r \t \\ \" \[ \] \- \xHH \uHHHH \UHHHHHHHH (code points, so "\xE9" is U+00E9).
//   A range's '-' is literal first or last in a class: [a-], [-a].
// - A rule named `root` is required; it becomes Grammar::root. Rules may be used before
//   their definition; rules nobody uses are kept.
//
// Differences from llama.cpp, all refusals with an error rather than other meanings:
// token references (`<[id]>`, `<name>`, `!<...>`) are unsupported (we constrain text);
// a rule defined twice is an error (llama.cpp keeps the last); an empty class `[]` or `[^]`
// is an error (llama.cpp reads it as the empty string); a literal or class may not span lines;
// a count above kMaxRepeatCount is an error (llama.cpp turns a large n into "unbounded").
//
// Hostile input: at most kMaxGrammarTextBytes, parentheses and expressions nested at most
// kMaxDepth deep, repeat counts at most kMaxRepeatCount, at most kMaxExpandedSize elements
// with repeats written out, valid UTF-8. Every error is one line, "gbnf: line L:C: problem",
// where C counts code points from 1 (whole-text problems, over the size limit or no root rule,
// have no position).
#pragma once

#include <string_view>

#include "constrain/grammar.h"
#include "core/status.h"

namespace peregrine::constrain {

// The grammar `text` defines, validated (Grammar::validate: no left recursion, every rule
// used is defined), or the first problem found.
Result<Grammar> parse_gbnf(std::string_view text);

}  // namespace peregrine::constrain
