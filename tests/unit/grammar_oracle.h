// A deliberately naive matcher for Grammar (constrain/grammar.h), the test oracle for the
// text front ends (GBNF, regex) and for the byte-automaton compiler. It shares no code with
// them: it reads the IR's definition directly.
//
// Method: for an expression and a start position, the set of byte positions where a match of
// it can end ("end set"), computed by recursion over the expression and memoised per
// (expression node, start position), so nested repeats cost no more than flat ones. The text matches when the root rule, started at 0, can end at the end
// of the text. Sets are vectors of flags over the n + 1 positions, so time and memory grow
// with the text length times the grammar size: meant for short strings only.
//
// Definitions it implements (the IR's, as grammar.h states them):
//   Empty        the empty string
//   Literal      exactly the bytes of `text`
//   Class        one code point, decoded as strict UTF-8 (RFC 3629: no overlongs, no
//                surrogates, nothing above U+10FFFF), inside `ranges` (outside, if `negated`);
//                a byte that does not start a valid code point matches no class
//   Ref          the rule's body
//   Seq / Alt    concatenation / union
//   Repeat       items[0] k times, for some k with min <= k <= max (max may be kUnbounded)
// A grammar with left recursion (which validate() refuses) throws std::logic_error instead of
// looping.
//
// grammar_sample() makes random strings of a grammar (random derivations), the positive
// examples for tests; it is not uniform and may give up on deeply recursive grammars.
#pragma once

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "constrain/grammar.h"

namespace peregrine::constrain {

namespace oracle_detail {

// Length of the valid UTF-8 code point at s[i] (its value in *cp), or 0 if there is none.
inline size_t decode_code_point(std::string_view s, size_t i, uint32_t* cp) {
  const auto b0 = uint8_t(s[i]);
  size_t len;
  uint32_t v;
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  } else if ((b0 & 0xE0) == 0xC0) {
    len = 2;
    v = b0 & 0x1F;
  } else if ((b0 & 0xF0) == 0xE0) {
    len = 3;
    v = b0 & 0x0F;
  } else if ((b0 & 0xF8) == 0xF0) {
    len = 4;
    v = b0 & 0x07;
  } else {
    return 0;  // a continuation byte or 0xF8..0xFF
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto b = uint8_t(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b & 0x3F);
  }
  static constexpr uint32_t kSmallest[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (v < kSmallest[len]) return 0;            // overlong
  if (v >= 0xD800 && v <= 0xDFFF) return 0;    // surrogate
  if (v > 0x10FFFF) return 0;
  *cp = v;
  return len;
}

class Matcher {
 public:
  using Ends = std::vector<char>;  // [n + 1] flags: can a match end at this byte position?

  Matcher(const Grammar& g, std::string_view text) : g_(g), text_(text), n_(text.size()) {}

  Ends rule_ends(uint32_t rule, size_t p) {
    if (rule >= g_.rules.size()) throw std::logic_error("oracle: reference out of range");
    const auto key = std::make_pair(rule, p);
    if (auto it = memo_.find(key); it != memo_.end()) return it->second;
    if (!active_.insert(key).second)
      throw std::logic_error("oracle: left recursion through rule '" + g_.names[rule] + "'");
    Ends e = ends(g_.rules[rule], p);
    active_.erase(key);
    memo_.emplace(key, e);
    return e;
  }

  Ends ends(const Expr& e, size_t p) {
    if (e.kind == Expr::Kind::Ref) return rule_ends(e.rule, p);  // memoised per rule
    const auto key = std::make_pair(&e, p);
    if (auto it = node_memo_.find(key); it != node_memo_.end()) return it->second;
    Ends out = compute(e, p);
    node_memo_.emplace(key, out);
    return out;
  }

 private:
  const Grammar& g_;
  std::string_view text_;
  size_t n_;
  std::map<std::pair<uint32_t, size_t>, Ends> memo_;             // rule calls
  std::map<std::pair<const Expr*, size_t>, Ends> node_memo_;     // other nodes
  std::set<std::pair<uint32_t, size_t>> active_;  // rule calls being computed

  Ends compute(const Expr& e, size_t p) {
    Ends out(n_ + 1, 0);
    switch (e.kind) {
      case Expr::Kind::Empty:
        out[p] = 1;
        break;
      case Expr::Kind::Literal:
        if (text_.substr(p).substr(0, e.text.size()) == e.text) out[p + e.text.size()] = 1;
        break;
      case Expr::Kind::Class: {
        uint32_t cp = 0;
        const size_t len = p < n_ ? decode_code_point(text_, p, &cp) : 0;
        if (len == 0) break;
        bool inside = false;
        for (const auto& [lo, hi] : e.ranges) inside = inside || (lo <= cp && cp <= hi);
        if (inside != e.negated) out[p + len] = 1;
        break;
      }
      case Expr::Kind::Ref:
        return rule_ends(e.rule, p);
      case Expr::Kind::Seq: {
        out[p] = 1;
        for (const Expr& item : e.items) out = step(item, out);
        break;
      }
      case Expr::Kind::Alt:
        for (const Expr& item : e.items) {
          const Ends x = ends(item, p);
          for (size_t q = 0; q <= n_; ++q) out[q] |= x[q];
        }
        break;
      case Expr::Kind::Repeat:
        return repeat_ends(e, p);
    }
    return out;
  }

  // The end set of `item` started at any position in `from`.
  Ends step(const Expr& item, const Ends& from) {
    Ends out(n_ + 1, 0);
    for (size_t q = 0; q <= n_; ++q) {
      if (!from[q]) continue;
      const Ends x = ends(item, q);
      for (size_t r = 0; r <= n_; ++r) out[r] |= x[r];
    }
    return out;
  }

  static bool none(const Ends& s) {
    for (char c : s)
      if (c) return false;
    return true;
  }

  // Level sets: S_0 = {p}, S_k+1 = step(S_k); the answer is the union of S_k for k in
  // [min, max]. Two facts end the iteration early: an empty S_k stays empty, and S_k+1 == S_k
  // means every later set is S_k too.
  Ends repeat_ends(const Expr& e, size_t p) {
    const Expr& item = e.items.at(0);
    Ends cur(n_ + 1, 0), out(n_ + 1, 0);
    cur[p] = 1;
    const bool unbounded = e.max == kUnbounded;
    // Bounded: every k up to max. Unbounded: up to min, then the closure below.
    const uint64_t last = unbounded ? e.min : e.max;
    for (uint64_t k = 0;; ++k) {
      if (k >= e.min) {
        for (size_t q = 0; q <= n_; ++q) out[q] |= cur[q];
      }
      if (k == last) break;
      Ends next = step(item, cur);
      if (next == cur) {  // S_j == cur for every j > k, and some such j lies in [min, max]
        for (size_t q = 0; q <= n_; ++q) out[q] |= cur[q];
        return out;
      }
      if (none(next)) return out;
      cur = std::move(next);
    }
    if (!unbounded) return out;
    // out == S_min; add every position reachable from it by more repetitions.
    std::vector<size_t> work;
    for (size_t q = 0; q <= n_; ++q)
      if (out[q]) work.push_back(q);
    while (!work.empty()) {
      const size_t q = work.back();
      work.pop_back();
      const Ends x = ends(item, q);
      for (size_t r = 0; r <= n_; ++r)
        if (x[r] && !out[r]) {
          out[r] = 1;
          work.push_back(r);
        }
    }
    return out;
  }
};

// Appends a random derivation of e to *out within `budget` steps; false when it ran out or
// e matches nothing it can pick.
inline bool sample_into(const Grammar& g, const Expr& e, std::mt19937_64& rng, int* budget,
                        std::string* out) {
  if (--*budget < 0) return false;
  auto append_cp = [out](uint32_t cp) {
    if (cp < 0x80) {
      *out += char(cp);
    } else if (cp < 0x800) {
      *out += char(0xC0 | (cp >> 6));
      *out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      *out += char(0xE0 | (cp >> 12));
      *out += char(0x80 | ((cp >> 6) & 0x3F));
      *out += char(0x80 | (cp & 0x3F));
    } else {
      *out += char(0xF0 | (cp >> 18));
      *out += char(0x80 | ((cp >> 12) & 0x3F));
      *out += char(0x80 | ((cp >> 6) & 0x3F));
      *out += char(0x80 | (cp & 0x3F));
    }
  };
  switch (e.kind) {
    case Expr::Kind::Empty:
      return true;
    case Expr::Kind::Literal:
      *out += e.text;
      return true;
    case Expr::Kind::Class: {
      auto inside = [&](uint32_t cp) {
        bool in = false;
        for (const auto& [lo, hi] : e.ranges) in = in || (lo <= cp && cp <= hi);
        return in != e.negated && !(cp >= 0xD800 && cp <= 0xDFFF);
      };
      // A few tries inside the ranges (or, negated, among characters of every UTF-8 length).
      static constexpr uint32_t kProbe[] = {'a', 'Z', '0', ' ', '\n', '"', '\\', '-',
                                            0x00, 0x7F, 0xE9, 0x20AC, 0x1F600, 0x10FFFF};
      for (int t = 0; t < 16; ++t) {
        uint32_t cp;
        if (!e.negated && !e.ranges.empty()) {
          const auto& [lo, hi] = e.ranges[rng() % e.ranges.size()];
          cp = lo + uint32_t(rng() % (uint64_t(hi) - lo + 1));
        } else {
          cp = kProbe[rng() % std::size(kProbe)];
        }
        if (inside(cp)) {
          append_cp(cp);
          return true;
        }
      }
      return false;
    }
    case Expr::Kind::Ref:
      return sample_into(g, g.rules.at(e.rule), rng, budget, out);
    case Expr::Kind::Seq:
      for (const Expr& x : e.items)
        if (!sample_into(g, x, rng, budget, out)) return false;
      return true;
    case Expr::Kind::Alt:
      if (e.items.empty()) return false;
      return sample_into(g, e.items[rng() % e.items.size()], rng, budget, out);
    case Expr::Kind::Repeat: {
      const uint64_t hi = std::min<uint64_t>(e.max, uint64_t(e.min) + 3);
      const uint64_t k = e.min + rng() % (hi - e.min + 1);
      for (uint64_t i = 0; i < k; ++i)
        if (!sample_into(g, e.items.at(0), rng, budget, out)) return false;
      return true;
    }
  }
  return false;
}

}  // namespace oracle_detail

// A random string of the grammar's root, or nullopt after `tries` derivations that ran out
// of `budget` steps or met a part that matches nothing.
inline std::optional<std::string> grammar_sample(const Grammar& g, std::mt19937_64& rng,
                                                 int budget = 200, int tries = 20) {
  for (int t = 0; t < tries; ++t) {
    std::string s;
    int left = budget;
    if (oracle_detail::sample_into(g, g.rules.at(g.root), rng, &left, &s)) return s;
  }
  return std::nullopt;
}

// Whether the whole of `utf8_text` matches the grammar's root rule.
inline bool grammar_matches(const Grammar& g, std::string_view utf8_text) {
  oracle_detail::Matcher m(g, utf8_text);
  return m.rule_ends(g.root, 0)[utf8_text.size()] != 0;
}

}  // namespace peregrine::constrain
