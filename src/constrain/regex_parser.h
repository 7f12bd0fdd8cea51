// Regular expressions (JSON Schema `pattern`, `--regex`, vLLM's guided_regex) parsed into a
// Grammar whose root matches exactly the strings the regex matches in full, as Python's
// re.fullmatch does: the output is always matched as a whole.
//
// The syntax is the common subset of ECMAScript (what JSON Schema patterns are written in)
// and Python, so a pattern means the same to us as to the tools that check our output:
//   literals (any UTF-8), escaped metacharacters and other ASCII punctuation (\. \\ \/ \{ ...)
//   \n \t \r \f \v \0 \xHH \uHHHH (a surrogate pair \uD83D\uDE00 is one code point)
//   \d = [0-9], \w = [A-Za-z0-9_], \s = ECMAScript's whitespace ([\t-\r \u00A0 \u1680
//     \u2000-\u200A \u2028 \u2029 \u202F \u205F \u3000 \uFEFF]), \D \W \S their complements
//   [...] and [^...] with ranges and the escapes above inside (\b there is U+0008)
//   .  any code point but \n (Python's meaning; ECMAScript also excludes \r \u2028 \u2029)
//   ( ), (?: ), (?<name> ), (?P<name> ): all plain groups
//   |, and * + ? {n} {n,} {n,m} with their lazy forms (*? ...: the same language)
//   ^ as the very first and $ as the very last character: accepted and ignored
// Refused with an error naming the construct: backreferences (\1, \k<n>, (?P=n)), lookaround,
// \b \B \A \Z \z, inline flags (?i), atomic groups and possessive quantifiers (*+),
// conditionals, comments (?#), \p{..}, \cX, \u{...}, octal escapes, other letters escaped,
// ^ and $ elsewhere, {,n} (Python: {0,n}; ECMAScript: literal text), a '{' that starts no
// quantifier, ']' first in a class (Python: literal; ECMAScript: empty class), a class
// escape as a range end, [:alpha:]-style POSIX classes, a quantifier after a quantifier.
// Unicode: \d \w \s are the ASCII/ECMAScript sets above, not Python's Unicode-aware ones.
//
// Hostile input: the same bounds as GBNF (grammar.h: kMaxGrammarTextBytes, kMaxDepth for
// groups and expression nesting, kMaxRepeatCount, kMaxExpandedSize), valid UTF-8. Errors are
// one line, "regex: column C: problem", C counting code points from 1.
#pragma once

#include <string_view>

#include "constrain/grammar.h"
#include "core/status.h"

namespace peregrine::constrain {

// A grammar of one rule, "root", matching exactly what `re` matches in full.
Result<Grammar> parse_regex(std::string_view re);

}  // namespace peregrine::constrain
