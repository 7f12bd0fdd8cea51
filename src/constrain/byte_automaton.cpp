#include "constrain/byte_automaton.h"

#include <algorithm>
#include <functional>
#include <unordered_map>

namespace peregrine::constrain {
namespace {

using Range = std::pair<uint32_t, uint32_t>;

// The code points a class matches: sorted, disjoint, within [0, kMaxCodePoint], without the
// surrogates (which have no UTF-8 encoding).
std::vector<Range> class_ranges(const Expr& e) {
  std::vector<Range> r;
  for (auto [lo, hi] : e.ranges) {
    if (lo > hi || lo > kMaxCodePoint) continue;
    r.emplace_back(lo, std::min(hi, kMaxCodePoint));
  }
  std::sort(r.begin(), r.end());
  std::vector<Range> merged;
  for (const Range& x : r) {
    if (!merged.empty() && x.first <= merged.back().second + 1)
      merged.back().second = std::max(merged.back().second, x.second);
    else
      merged.push_back(x);
  }
  if (e.negated) {
    std::vector<Range> comp;
    uint32_t next = 0;
    for (const Range& x : merged) {
      if (x.first > next) comp.emplace_back(next, x.first - 1);
      next = x.second + 1;
    }
    if (next <= kMaxCodePoint) comp.emplace_back(next, kMaxCodePoint);
    merged = std::move(comp);
  }
  std::vector<Range> out;
  for (const Range& x : merged) {
    if (x.second < 0xD800 || x.first > 0xDFFF) {
      out.push_back(x);
      continue;
    }
    if (x.first < 0xD800) out.emplace_back(x.first, 0xD7FF);
    if (x.second > 0xDFFF) out.emplace_back(0xE000, x.second);
  }
  return out;
}

int utf8_encode(uint32_t cp, uint8_t* b) {
  if (cp < 0x80) { b[0] = uint8_t(cp); return 1; }
  if (cp < 0x800) { b[0] = uint8_t(0xC0 | (cp >> 6)); b[1] = uint8_t(0x80 | (cp & 0x3F)); return 2; }
  if (cp < 0x10000) {
    b[0] = uint8_t(0xE0 | (cp >> 12)); b[1] = uint8_t(0x80 | ((cp >> 6) & 0x3F));
    b[2] = uint8_t(0x80 | (cp & 0x3F));
    return 3;
  }
  b[0] = uint8_t(0xF0 | (cp >> 18)); b[1] = uint8_t(0x80 | ((cp >> 12) & 0x3F));
  b[2] = uint8_t(0x80 | ((cp >> 6) & 0x3F)); b[3] = uint8_t(0x80 | (cp & 0x3F));
  return 4;
}

// A code point range as sequences of byte ranges (each sequence: one byte range per byte of
// the encoding). Split first where the encoding length changes, then where the trailing
// bytes do not cover their full 0x80..0xBF span, so each piece is a product of byte ranges.
using ByteSeq = std::vector<std::pair<uint8_t, uint8_t>>;
void utf8_sequences(uint32_t lo, uint32_t hi, std::vector<ByteSeq>& out) {
  for (uint32_t limit : {0x7Fu, 0x7FFu, 0xFFFFu}) {
    if (lo <= limit && hi > limit) {
      utf8_sequences(lo, limit, out);
      utf8_sequences(limit + 1, hi, out);
      return;
    }
  }
  if (hi < 0x80) {
    out.push_back({{uint8_t(lo), uint8_t(hi)}});
    return;
  }
  for (int i = 1; i < 4; ++i) {
    const uint32_t m = (1u << (6 * i)) - 1;
    if ((lo & ~m) != (hi & ~m)) {
      if ((lo & m) != 0) {
        utf8_sequences(lo, lo | m, out);
        utf8_sequences((lo | m) + 1, hi, out);
        return;
      }
      if ((hi & m) != m) {
        utf8_sequences(lo, (hi & ~m) - 1, out);
        utf8_sequences(hi & ~m, hi, out);
        return;
      }
    }
  }
  uint8_t a[4], b[4];
  const int n = utf8_encode(lo, a);
  utf8_encode(hi, b);
  ByteSeq s;
  for (int i = 0; i < n; ++i) s.emplace_back(a[i], b[i]);
  out.push_back(std::move(s));
}

struct NfaEdge {
  enum Kind : uint8_t { Eps, Byte, Call };
  int32_t from, to;
  Kind kind;
  uint8_t lo, hi;
  uint32_t rule;
};

// Which rules may be inlined: those on no cycle of references whose expanded size (callees
// inlined) stays within the budget.
class RuleGraph {
 public:
  RuleGraph(const Grammar& g, uint32_t max_inline) : g_(g) {
    const size_t n = g.rules.size();
    refs_.resize(n);
    own_size_.assign(n, 0);
    for (size_t r = 0; r < n; ++r) collect(g.rules[r], 1, refs_[r], own_size_[r], 0);
    find_recursive();
    // Sizes in callee-first order (Tarjan's component order), saturating past the budget.
    inlinable_.assign(n, 0);
    std::vector<uint64_t> size(n, 0);
    for (uint32_t r : order_) {
      uint64_t s = own_size_[r];
      for (auto [c, times] : refs_[r])
        if (inlinable_[c]) s = sat(s + sat(times * size[c]));
      size[r] = std::min<uint64_t>(s, uint64_t(max_inline) + 1);
      inlinable_[r] = !recursive_[r] && size[r] <= max_inline;
    }
  }
  bool inlinable(uint32_t r) const { return inlinable_[r] != 0; }

 private:
  // Rule references of an expression with how often each occurs once repeats are expanded,
  // and its node count counted the same way (saturating).
  static uint64_t sat(uint64_t x) { return std::min<uint64_t>(x, uint64_t(1) << 40); }
  void collect(const Expr& e, uint64_t mult, std::vector<std::pair<uint32_t, uint64_t>>& refs, uint64_t& size,
               uint32_t depth) {
    size = sat(size + mult);
    if (e.kind == Expr::Kind::Ref && e.rule < g_.rules.size()) refs.emplace_back(e.rule, mult);
    if (depth > 4096) return;  // compile() reports the depth; no unbounded recursion here
    uint64_t child = mult;
    if (e.kind == Expr::Kind::Repeat)
      child = sat(mult * std::max<uint64_t>(1, e.max == kUnbounded ? uint64_t(e.min) + 1 : uint64_t(e.max)));
    for (const Expr& c : e.items) collect(c, child, refs, size, depth + 1);
  }
  // Tarjan's strongly connected components, iteratively; recursive_ marks rules on a cycle.
  void find_recursive() {
    const size_t n = refs_.size();
    recursive_.assign(n, 0);
    std::vector<int32_t> index(n, -1), low(n, 0);
    std::vector<uint8_t> on_stack(n, 0);
    std::vector<uint32_t> stack;
    int32_t counter = 0;
    struct Frame { uint32_t v; size_t next; };
    for (uint32_t root = 0; root < n; ++root) {
      if (index[root] >= 0) continue;
      std::vector<Frame> frames{{root, 0}};
      index[root] = low[root] = counter++;
      stack.push_back(root);
      on_stack[root] = 1;
      while (!frames.empty()) {
        Frame& f = frames.back();
        if (f.next < refs_[f.v].size()) {
          const uint32_t w = refs_[f.v][f.next++].first;
          if (w == f.v) recursive_[w] = 1;
          if (index[w] < 0) {
            index[w] = low[w] = counter++;
            stack.push_back(w);
            on_stack[w] = 1;
            frames.push_back({w, 0});
          } else if (on_stack[w]) {
            low[f.v] = std::min(low[f.v], index[w]);
          }
          continue;
        }
        const uint32_t v = f.v;
        frames.pop_back();
        if (!frames.empty()) low[frames.back().v] = std::min(low[frames.back().v], low[v]);
        if (low[v] == index[v]) {
          std::vector<uint32_t> comp;
          uint32_t w;
          do {
            w = stack.back();
            stack.pop_back();
            on_stack[w] = 0;
            comp.push_back(w);
          } while (w != v);
          if (comp.size() > 1)
            for (uint32_t c : comp) recursive_[c] = 1;
          for (uint32_t c : comp) order_.push_back(c);
        }
      }
    }
  }

  const Grammar& g_;
  std::vector<std::vector<std::pair<uint32_t, uint64_t>>> refs_;
  std::vector<uint64_t> own_size_;
  std::vector<uint8_t> recursive_, inlinable_;
  std::vector<uint32_t> order_;  // callees before callers
};

class NfaBuilder {
 public:
  NfaBuilder(const Grammar& g, const AutomatonLimits& lim) : g_(g), lim_(lim), graph_(g, lim.max_inline_size) {
    rule_start_.assign(g.rules.size(), -1);
    rule_final_.assign(g.rules.size(), -1);
  }

  // Builds the NFA of every rule reachable from the root through calls that are not inlined.
  Status build_all() {
    need(g_.root);
    while (!pending_.empty()) {
      const uint32_t r = pending_.back();
      pending_.pop_back();
      const int32_t end = build(g_.rules[r], rule_start_[r], 0);
      if (!err_.ok()) return err_;
      rule_final_[r] = end;
    }
    return Status::Ok();
  }

  const Grammar& g_;
  const AutomatonLimits& lim_;
  RuleGraph graph_;
  std::vector<NfaEdge> edges_;
  int32_t n_states_ = 0;
  std::vector<int32_t> rule_start_, rule_final_;  // [n_rules] NFA states, -1 when not built
  std::vector<uint32_t> compiled_;                // rules with their own automaton, in order

 private:
  void need(uint32_t r) {
    if (rule_start_[r] >= 0) return;
    rule_start_[r] = new_state();
    compiled_.push_back(r);
    pending_.push_back(r);
  }
  int32_t new_state() {
    if (uint32_t(n_states_) >= lim_.max_nfa_states && err_.ok())
      err_ = make_error("grammar too large: more than {} automaton states (lower its repetition counts or size)",
                        lim_.max_nfa_states);
    return n_states_++;
  }
  void edge(int32_t from, int32_t to, NfaEdge::Kind k, uint8_t lo = 0, uint8_t hi = 0, uint32_t rule = 0) {
    edges_.push_back({from, to, k, lo, hi, rule});
  }

  // Adds the expression's NFA starting at `from` (edges only leave `from`, never enter it,
  // so alternatives can share it); returns its end state.
  int32_t build(const Expr& e, int32_t from, uint32_t depth) {
    if (!err_.ok()) return from;
    if (depth > lim_.max_depth) {
      err_ = make_error("grammar nested too deeply (more than {} levels)", lim_.max_depth);
      return from;
    }
    switch (e.kind) {
      case Expr::Kind::Empty:
        return from;
      case Expr::Kind::Literal: {
        int32_t cur = from;
        for (unsigned char c : e.text) {
          const int32_t nxt = new_state();
          edge(cur, nxt, NfaEdge::Byte, c, c);
          cur = nxt;
        }
        return cur;
      }
      case Expr::Kind::Class: {
        const int32_t end = new_state();
        std::vector<ByteSeq> seqs;
        for (auto [lo, hi] : class_ranges(e)) utf8_sequences(lo, hi, seqs);
        for (const ByteSeq& s : seqs) {
          int32_t cur = from;
          for (size_t i = 0; i < s.size(); ++i) {
            const int32_t nxt = i + 1 == s.size() ? end : new_state();
            edge(cur, nxt, NfaEdge::Byte, s[i].first, s[i].second);
            cur = nxt;
          }
        }
        return end;
      }
      case Expr::Kind::Ref: {
        if (e.rule >= g_.rules.size()) {
          err_ = make_error("grammar refers to rule #{} which does not exist", e.rule);
          return from;
        }
        if (graph_.inlinable(e.rule)) return build(g_.rules[e.rule], from, depth + 1);
        need(e.rule);
        const int32_t end = new_state();
        edge(from, end, NfaEdge::Call, 0, 0, e.rule);
        return end;
      }
      case Expr::Kind::Seq: {
        int32_t cur = from;
        for (const Expr& c : e.items) cur = build(c, cur, depth + 1);
        return cur;
      }
      case Expr::Kind::Alt: {
        const int32_t end = new_state();
        for (const Expr& c : e.items) edge(build(c, from, depth + 1), end, NfaEdge::Eps);
        return end;
      }
      case Expr::Kind::Repeat: {
        if (e.items.size() != 1 || (e.max != kUnbounded && e.max < e.min)) {
          err_ = make_error("grammar has a malformed repetition");
          return from;
        }
        const Expr& item = e.items[0];
        int32_t cur = from;
        for (uint32_t i = 0; i < e.min && err_.ok(); ++i) {
          // Each copy starts in a fresh state: a copy may loop back to its own start.
          const int32_t s = new_state();
          edge(cur, s, NfaEdge::Eps);
          cur = build(item, s, depth + 1);
        }
        if (e.max == kUnbounded) {
          const int32_t loop = new_state();
          edge(cur, loop, NfaEdge::Eps);
          edge(build(item, loop, depth + 1), loop, NfaEdge::Eps);
          return loop;
        }
        const int32_t end = new_state();
        edge(cur, end, NfaEdge::Eps);
        for (uint32_t i = e.min; i < e.max && err_.ok(); ++i) {
          const int32_t s = new_state();
          edge(cur, s, NfaEdge::Eps);
          cur = build(item, s, depth + 1);
          edge(cur, end, NfaEdge::Eps);
        }
        return end;
      }
    }
    return from;
  }

  std::vector<uint32_t> pending_;
  Status err_;
};

struct VecHash {
  size_t operator()(const std::vector<int32_t>& v) const {
    uint64_t h = 1469598103934665603ull;
    for (int32_t x : v) h = (h ^ uint32_t(x)) * 1099511628211ull;
    return size_t(h);
  }
};

}  // namespace

Result<ByteAutomaton> ByteAutomaton::compile(const Grammar& g, const AutomatonLimits& lim) {
  if (g.rules.empty() || g.root >= g.rules.size()) return make_error("grammar has no root rule");
  NfaBuilder nb(g, lim);
  PG_TRY(nb.build_all());

  // Edges by source state (CSR).
  const int32_t n_nfa = nb.n_states_;
  std::vector<uint32_t> begin(size_t(n_nfa) + 1, 0);
  for (const NfaEdge& e : nb.edges_) ++begin[size_t(e.from) + 1];
  for (int32_t i = 0; i < n_nfa; ++i) begin[size_t(i) + 1] += begin[size_t(i)];
  std::vector<NfaEdge> edges(nb.edges_.size());
  {
    std::vector<uint32_t> fill(begin.begin(), begin.end() - 1);
    for (const NfaEdge& e : nb.edges_) edges[fill[size_t(e.from)]++] = e;
  }

  // Byte classes: a new class starts wherever some edge's range starts or ends.
  ByteAutomaton a;
  {
    bool cut[257] = {};
    for (const NfaEdge& e : edges)
      if (e.kind == NfaEdge::Byte) {
        cut[e.lo] = true;
        cut[size_t(e.hi) + 1] = true;
      }
    int32_t c = -1;
    for (int b = 0; b < 256; ++b) {
      if (b == 0 || cut[b]) ++c;
      a.class_of_[b] = uint8_t(c);
    }
    a.n_classes_ = c + 1;
  }
  const size_t nc = size_t(a.n_classes_);

  // Subset construction per rule. A DFA state is an epsilon-closed set of NFA states.
  std::vector<uint8_t> seen(size_t(n_nfa), 0);
  auto closure = [&](std::vector<int32_t>& set) {
    std::vector<int32_t> work(set.begin(), set.end());
    for (int32_t s : set) seen[size_t(s)] = 1;
    while (!work.empty()) {
      const int32_t s = work.back();
      work.pop_back();
      for (uint32_t i = begin[size_t(s)]; i < begin[size_t(s) + 1]; ++i)
        if (edges[i].kind == NfaEdge::Eps && !seen[size_t(edges[i].to)]) {
          seen[size_t(edges[i].to)] = 1;
          set.push_back(edges[i].to);
          work.push_back(edges[i].to);
        }
    }
    for (int32_t s : set) seen[size_t(s)] = 0;
    std::sort(set.begin(), set.end());
  };

  std::vector<std::vector<int32_t>> members;  // [n_dfa] NFA states of each DFA state
  struct PendingCall { int32_t from; uint32_t rule; int32_t ret; };
  std::vector<PendingCall> pending_calls;
  std::vector<int32_t> dfa_start(g.rules.size(), -1);
  uint64_t subset_work = 0;
  for (uint32_t r : nb.compiled_) {
    std::unordered_map<std::vector<int32_t>, int32_t, VecHash> ids;
    const int32_t final_state = nb.rule_final_[r];
    auto intern = [&](std::vector<int32_t> set) -> Result<int32_t> {
      closure(set);
      // Subset construction can take time quadratic in the NFA (big sets, many states): bound
      // the NFA states it handles in all, so a grammar that explodes fails fast.
      subset_work += set.size();
      if (subset_work > lim.max_subset_work)
        return make_error("grammar too complex: building its automaton takes more than {} steps", lim.max_subset_work);
      auto it = ids.find(set);
      if (it != ids.end()) return it->second;
      if (a.accepting_.size() >= lim.max_dfa_states)
        return make_error("grammar too complex: more than {} automaton states", lim.max_dfa_states);
      const int32_t id = int32_t(a.accepting_.size());
      a.accepting_.push_back(std::binary_search(set.begin(), set.end(), final_state) ? 1 : 0);
      a.next_.resize(a.next_.size() + nc, -1);
      ids.emplace(set, id);
      members.push_back(std::move(set));
      return id;
    };
    const size_t first = members.size();
    PG_ASSIGN(dfa_start[r], intern({nb.rule_start_[r]}));
    std::vector<std::vector<int32_t>> by_class(nc);
    for (size_t d = first; d < members.size(); ++d) {
      for (auto& v : by_class) v.clear();
      std::vector<std::pair<uint32_t, int32_t>> calls;  // (rule, NFA target)
      for (int32_t s : members[d])
        for (uint32_t i = begin[size_t(s)]; i < begin[size_t(s) + 1]; ++i) {
          const NfaEdge& e = edges[i];
          if (e.kind == NfaEdge::Byte)
            for (int c = a.class_of_[e.lo]; c <= a.class_of_[e.hi]; ++c) by_class[size_t(c)].push_back(e.to);
          else if (e.kind == NfaEdge::Call)
            calls.emplace_back(e.rule, e.to);
        }
      for (size_t c = 0; c < nc; ++c) {
        if (by_class[c].empty()) continue;
        std::sort(by_class[c].begin(), by_class[c].end());
        by_class[c].erase(std::unique(by_class[c].begin(), by_class[c].end()), by_class[c].end());
        PG_ASSIGN(const int32_t t, intern(by_class[c]));
        a.next_[d * nc + c] = t;
      }
      std::sort(calls.begin(), calls.end());
      for (size_t i = 0; i < calls.size();) {
        std::vector<int32_t> targets;
        size_t j = i;
        for (; j < calls.size() && calls[j].first == calls[i].first; ++j) targets.push_back(calls[j].second);
        PG_ASSIGN(const int32_t t, intern(targets));
        pending_calls.push_back({int32_t(d), calls[i].first, t});
        i = j;
      }
    }
  }
  const size_t n = a.accepting_.size();
  a.root_start_ = dfa_start[g.root];

  // Trim: keep only transitions into states from which an accepting state can be reached
  // (a call needs both the callee's start and the return state to be productive).
  std::vector<uint8_t> prod(a.accepting_);
  std::vector<std::vector<int32_t>> rev(n);
  for (size_t s = 0; s < n; ++s)
    for (size_t c = 0; c < nc; ++c)
      if (a.next_[s * nc + c] >= 0) rev[size_t(a.next_[s * nc + c])].push_back(int32_t(s));
  for (const PendingCall& pc : pending_calls) {
    rev[size_t(dfa_start[pc.rule])].push_back(pc.from);
    rev[size_t(pc.ret)].push_back(pc.from);
  }
  std::vector<std::vector<size_t>> calls_from(n);
  for (size_t i = 0; i < pending_calls.size(); ++i) calls_from[size_t(pending_calls[i].from)].push_back(i);
  auto productive = [&](int32_t s) {
    for (size_t c = 0; c < nc; ++c) {
      const int32_t t = a.next_[size_t(s) * nc + c];
      if (t >= 0 && prod[size_t(t)]) return true;
    }
    for (size_t i : calls_from[size_t(s)]) {
      const PendingCall& pc = pending_calls[i];
      if (prod[size_t(dfa_start[pc.rule])] && prod[size_t(pc.ret)]) return true;
    }
    return false;
  };
  std::vector<int32_t> work;
  for (size_t s = 0; s < n; ++s)
    if (prod[s]) work.push_back(int32_t(s));
  while (!work.empty()) {
    const int32_t t = work.back();
    work.pop_back();
    for (int32_t s : rev[size_t(t)])
      if (!prod[size_t(s)] && productive(s)) {
        prod[size_t(s)] = 1;
        work.push_back(s);
      }
  }
  if (!prod[size_t(a.root_start_)]) return make_error("the grammar matches no text at all");
  for (size_t s = 0; s < n; ++s)
    for (size_t c = 0; c < nc; ++c) {
      int32_t& t = a.next_[s * nc + c];
      if (t >= 0 && !prod[size_t(t)]) t = -1;
    }
  a.call_begin_.assign(n + 1, 0);
  for (const PendingCall& pc : pending_calls)
    if (prod[size_t(dfa_start[pc.rule])] && prod[size_t(pc.ret)]) ++a.call_begin_[size_t(pc.from) + 1];
  for (size_t s = 0; s < n; ++s) a.call_begin_[s + 1] += a.call_begin_[s];
  a.calls_.resize(a.call_begin_[n]);
  {
    std::vector<uint32_t> fill(a.call_begin_.begin(), a.call_begin_.end() - 1);
    for (const PendingCall& pc : pending_calls)
      if (prod[size_t(dfa_start[pc.rule])] && prod[size_t(pc.ret)])
        a.calls_[fill[size_t(pc.from)]++] = {dfa_start[pc.rule], pc.ret};
  }
  return a;
}

size_t ByteAutomaton::memory_bytes() const {
  return next_.size() * sizeof(int32_t) + accepting_.size() + call_begin_.size() * sizeof(uint32_t) +
         calls_.size() * sizeof(RuleCall);
}

}  // namespace peregrine::constrain
