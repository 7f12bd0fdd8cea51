#include "constrain/token_masks.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "constrain/pushdown.h"

namespace peregrine::constrain {
namespace {

// States the root can reach through bytes, calls and returns, nearest first (breadth-first):
// the ones generation meets first are walked first.
std::vector<int32_t> reachable_states(const ByteAutomaton& a) {
  std::vector<uint8_t> seen(size_t(a.n_states()), 0);
  std::vector<int32_t> order{a.root_start()};
  seen[size_t(a.root_start())] = 1;
  auto visit = [&](int32_t s) {
    if (s >= 0 && !seen[size_t(s)]) {
      seen[size_t(s)] = 1;
      order.push_back(s);
    }
  };
  for (size_t i = 0; i < order.size(); ++i) {
    const int32_t s = order[i];
    for (int c = 0; c < a.n_classes(); ++c) visit(a.next_class(s, uint8_t(c)));
    for (const RuleCall& c : a.calls(s)) {
      visit(c.start);
      visit(c.ret);
    }
  }
  return order;
}

// The class trie: the automaton only tells bytes apart by class, so tokens with the same
// class sequence are accepted, rejected or uncertain together.
TokenTrie class_trie(const ByteAutomaton& a, const TokenVocab& vocab) {
  std::vector<std::pair<std::string, int32_t>> entries;
  for (int32_t id = 0; id < int32_t(vocab.n_rows()); ++id) {
    const std::string_view b = vocab.bytes(id);
    if (b.empty()) continue;
    std::string cls(b.size(), '\0');
    for (size_t i = 0; i < b.size(); ++i) cls[i] = char(a.class_of(uint8_t(b[i])));
    entries.emplace_back(std::move(cls), id);
  }
  return TokenTrie::build(std::move(entries));
}

// A set of byte classes (there are at most 256).
struct ClassSet {
  uint64_t w[4] = {0, 0, 0, 0};
  void add(uint8_t c) { w[c >> 6] |= uint64_t(1) << (c & 63); }
  bool subset_of(const ClassSet& o) const {
    return !(w[0] & ~o.w[0]) && !(w[1] & ~o.w[1]) && !(w[2] & ~o.w[2]) && !(w[3] & ~o.w[3]);
  }
  void merge(const ClassSet& o) {
    for (int i = 0; i < 4; ++i) w[i] |= o.w[i];
  }
};

// Per node of the class trie: the classes of the nodes below it and how deep they go.
struct Below {
  ClassSet classes;
  uint32_t height = 0;
};
std::vector<Below> below_of(const TokenTrie& trie) {
  const auto& nodes = trie.nodes();
  std::vector<Below> below(nodes.size());
  std::vector<int32_t> parent(nodes.size(), -1), path(trie.max_depth() + 1, -1);
  for (size_t i = 0; i < nodes.size(); ++i) {
    path[nodes[i].depth] = int32_t(i);
    if (nodes[i].depth > 1) parent[i] = path[nodes[i].depth - 1];
  }
  for (size_t i = nodes.size(); i-- > 0;) {
    const int32_t p = parent[i];
    if (p < 0) continue;
    below[size_t(p)].classes.merge(below[i].classes);
    below[size_t(p)].classes.add(nodes[i].byte);
    below[size_t(p)].height = std::max(below[size_t(p)].height, below[i].height + 1);
  }
  return below;
}

// Per state: the classes that all lead to its most common successor, and for how many bytes
// any string of those classes keeps being read from it (a self-loop: forever). A string
// `x{0,1000}` or a `[^"\\]*` loop reads most tokens this way, so a walk accepts whole
// subtrees of the trie at once instead of node by node.
struct Run {
  ClassSet classes;
  uint32_t length = 0;
};
constexpr uint32_t kForever = UINT32_MAX / 2;
std::vector<Run> runs_of(const ByteAutomaton& a) {
  const int32_t n = a.n_states(), nc = a.n_classes();
  std::vector<Run> runs(static_cast<size_t>(n));
  std::vector<int32_t> succ(static_cast<size_t>(n), -1);
  for (int32_t s = 0; s < n; ++s) {
    if (a.has_calls(s)) continue;
    int32_t best = -1, best_n = 0;
    for (int c = 0; c < nc; ++c) {
      const int32_t t = a.next_class(s, uint8_t(c));
      if (t < 0) continue;
      int k = 0;
      for (int c2 = 0; c2 < nc; ++c2) k += a.next_class(s, uint8_t(c2)) == t;
      if (k > best_n) best = t, best_n = k;
      if (best_n * 2 > nc) break;
    }
    if (best < 0) continue;
    succ[size_t(s)] = best;
    for (int c = 0; c < nc; ++c)
      if (a.next_class(s, uint8_t(c)) == best) runs[size_t(s)].classes.add(uint8_t(c));
  }
  // length(s) = 1 + length(succ) when succ reads at least s's classes the same way; chains are
  // followed iteratively (they can be as long as a repetition count), cycles read forever.
  std::vector<uint8_t> state(static_cast<size_t>(n), 0);  // 0 new, 1 on the current chain, 2 done
  std::vector<int32_t> chain;
  for (int32_t s0 = 0; s0 < n; ++s0) {
    if (state[size_t(s0)] || succ[size_t(s0)] < 0) continue;
    chain.clear();
    int32_t s = s0;
    uint32_t tail = 0;
    for (;;) {
      state[size_t(s)] = 1;
      chain.push_back(s);
      const int32_t u = succ[size_t(s)];
      if (u == s) { tail = kForever; break; }
      if (u < 0 || !runs[size_t(s)].classes.subset_of(runs[size_t(u)].classes)) { tail = 0; break; }
      if (state[size_t(u)] == 2) { tail = runs[size_t(u)].length; break; }
      if (state[size_t(u)] == 1) { tail = kForever; break; }  // a cycle of uniform steps
      s = u;
    }
    // The last state of the chain reads one byte plus `tail`; each earlier one, one more.
    uint32_t len = tail >= kForever ? kForever : tail + 1;
    for (size_t k = chain.size(); k-- > 0;) {
      runs[size_t(chain[k])].length = len;
      state[size_t(chain[k])] = 2;
      if (len < kForever) ++len;
    }
  }
  return runs;
}

// One state's walk of the class trie: the accepted and uncertain tokens (see the header).
// Levels hold the configurations after each depth's prefix; almost always that is a single
// configuration whose next state neither calls nor returns, which is kept inline (one table
// lookup per trie node) instead of in a ConfigSet.
class StateWalker {
 public:
  StateWalker(const ByteAutomaton& a, const TokenTrie& trie, const std::vector<Below>& below,
              const std::vector<Run>& runs)
      : a_(a), trie_(trie), below_(below), runs_(runs), level_(trie.max_depth() + 1), sets_(trie.max_depth() + 1) {}

  // Fills accepted and uncertain for state s; false when the configurations overflowed.
  bool walk(int32_t s, std::vector<int32_t>& accepted, std::vector<int32_t>& uncertain, uint64_t& steps) {
    accepted.clear();
    uncertain.clear();
    // Returning before the first byte is not uncertain: at run time the configuration set
    // already holds the frame beneath (closure returns into it), whose own sets cover tokens
    // read from there.
    level_[0] = close(0, {s, kBottom}, false);
    level_[0].esc = false;
    const auto& nodes = trie_.nodes();
    for (size_t i = 0; i < nodes.size();) {
      const TokenTrie::Node& n = nodes[i];
      const size_t d = n.depth;
      Level& cur = level_[d];
      const Level& prev = level_[d - 1];
      ++steps;
      if (prev.single) {
        const int32_t t = a_.next_class(prev.c.state, n.byte);
        if (t < 0) {
          cur.empty = true;
          cur.single = false;
          cur.esc = prev.esc;
        } else if (stays_single({t, prev.c.parent})) {
          cur.single = true;
          cur.empty = false;
          cur.c = {t, prev.c.parent};
          cur.esc = prev.esc || a_.accepting(t);
        } else {
          cur = close(d, {t, prev.c.parent}, prev.esc);
        }
      } else {
        sets_[d - 1].advance(a_, arena_, n.byte, sets_[d]);
        if (sets_[d].overflow()) return false;
        cur = from_set(d, prev.esc);
      }
      if (cur.empty) {
        if (cur.esc) {
          auto sub = trie_.tokens_in_subtree(i);
          uncertain.insert(uncertain.end(), sub.begin(), sub.end());
        }
        i = size_t(n.subtree_end);
        continue;
      }
      // Every string below this node read along the state's run: the whole subtree is accepted.
      if (cur.single) {
        const Below& b = below_[i];
        const Run& r = runs_[size_t(cur.c.state)];
        if (b.height > 0 && b.height <= r.length && b.classes.subset_of(r.classes)) {
          auto sub = trie_.tokens_in_subtree(i);
          accepted.insert(accepted.end(), sub.begin(), sub.end());
          i = size_t(n.subtree_end);
          continue;
        }
      }
      auto here = trie_.tokens_at(i);
      accepted.insert(accepted.end(), here.begin(), here.end());
      ++i;
    }
    return true;
  }
  size_t arena_size() const { return arena_.size(); }

 private:
  struct Level {
    bool single = false, empty = true, esc = false;  // esc: the walk's rule could end on the way here
    Config c{0, kBottom};                            // when single
  };
  Level close(size_t d, Config c, bool esc) {
    sets_[d].clear();
    sets_[d].add_closed(a_, arena_, c);
    return from_set(d, esc);
  }
  Level from_set(size_t d, bool esc) {
    const ConfigSet& set = sets_[d];
    Level l;
    l.esc = esc || set.escaped();
    l.empty = set.empty();
    if (set.configs().size() == 1 && stays_single(set.configs()[0])) {
      l.single = true;
      l.c = set.configs()[0];
    }
    return l;
  }
  // A configuration whose closure is itself (it neither calls nor returns into a frame the
  // walk knows) can go on inline; anything else stays a set.
  bool stays_single(Config c) const {
    return !a_.has_calls(c.state) && (!a_.accepting(c.state) || c.parent == kBottom);
  }

  const ByteAutomaton& a_;
  const TokenTrie& trie_;
  const std::vector<Below>& below_;  // [trie nodes]
  const std::vector<Run>& runs_;     // [states]
  StackArena arena_;
  std::vector<Level> level_;
  std::vector<ConfigSet> sets_;
};

}  // namespace

struct TokenMaskTable::Lazy {
  TokenTrie trie;
  std::vector<Below> below;
  std::vector<Run> runs;
  std::unique_ptr<StateWalker> walker;  // built on first use (the trie must not move after)
  std::vector<int32_t> accepted;
  std::vector<uint32_t> bits;
};

TokenMaskTable::TokenMaskTable() = default;

TokenMaskTable::~TokenMaskTable() = default;  // owned_ holds every set; entries_ only points at them

namespace {

// A state's accepted tokens as the smallest of a list, a complement list and a bitmask.
template <typename Packed, typename Kind>
void pack(const std::vector<int32_t>& accepted, std::vector<uint32_t>& bits, size_t n_rows, Packed& p) {
  const size_t n_words = bits.size();
  std::fill(bits.begin(), bits.end(), 0u);
  for (int32_t id : accepted) bits[size_t(id) >> 5] |= 1u << (id & 31);
  const size_t k = accepted.size();
  p.ids.clear();
  if (k <= n_words && k <= n_rows - k) {
    p.kind = Kind::List;
    for (size_t w = 0; w < n_words; ++w)
      for (uint32_t m = bits[w]; m; m &= m - 1) p.ids.push_back(int32_t(w * 32 + size_t(__builtin_ctz(m))));
  } else if (n_rows - k <= n_words) {
    p.kind = Kind::Complement;
    for (size_t w = 0; w < n_words; ++w) {
      uint32_t m = ~bits[w];
      if (w + 1 == n_words && n_rows % 32) m &= (1u << (n_rows % 32)) - 1;
      for (; m; m &= m - 1) p.ids.push_back(int32_t(w * 32 + size_t(__builtin_ctz(m))));
    }
  } else {
    p.kind = Kind::Bitset;
    p.words = bits;
  }
}

}  // namespace

Status TokenMaskTable::build(const ByteAutomaton& a, const TokenVocab& vocab, const MaskLimits& lim) {
  n_rows_ = vocab.n_rows();
  n_words_ = vocab.n_words();
  n_states_ = size_t(a.n_states());
  entries_ = std::make_unique<std::atomic<const Packed*>[]>(n_states_);
  for (size_t s = 0; s < n_states_; ++s) entries_[s].store(nullptr);
  lazy_ = std::make_unique<Lazy>();
  lazy_->trie = class_trie(a, vocab);
  lazy_->below = below_of(lazy_->trie);
  lazy_->runs = runs_of(a);
  const TokenTrie& trie = lazy_->trie;
  const std::vector<int32_t> states = reachable_states(a);

  // The walks are independent: a few threads take states in order (each with its own walker
  // and stack arena) until the budget is spent.
  const size_t n_rows = size_t(n_rows_);
  const size_t n_threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 8);
  std::atomic<size_t> next{0};
  std::atomic<bool> overflow{false};
  auto work = [&] {
    StateWalker w(a, trie, lazy_->below, lazy_->runs);
    std::vector<int32_t> accepted;
    std::vector<uint32_t> bits(static_cast<size_t>(n_words_), 0u);
    for (size_t k; !overflow.load() && steps_.load() < lim.eager_trie_steps && (k = next.fetch_add(1)) < states.size();) {
      auto p = std::make_unique<Packed>();
      uint64_t steps = 0;
      if (!w.walk(states[k], accepted, p->uncertain, steps)) overflow = true;
      steps_ += steps;
      pack<Packed, Kind>(accepted, bits, n_rows, *p);
      entries_[size_t(states[k])].store(intern(std::move(p)));
      if (w.arena_size() > (size_t(1) << 24)) overflow = true;
    }
  };
  std::vector<std::thread> pool;
  const bool parallel = states.size() > 8 && trie.nodes().size() > 1000;
  for (size_t i = 1; parallel && i < n_threads; ++i) pool.emplace_back(work);
  work();
  for (std::thread& th : pool) th.join();
  if (overflow)
    return make_error("grammar too ambiguous: more than {} parses of one token at once", ConfigSet::kMaxConfigs);
  return Status::Ok();
}

const TokenMaskTable::Packed& TokenMaskTable::entry(const ByteAutomaton& a, int32_t state) const {
  if (const Packed* p = entries_[size_t(state)].load(std::memory_order_acquire)) return *p;
  std::lock_guard<std::mutex> lock(mu_);
  if (const Packed* p = entries_[size_t(state)].load(std::memory_order_acquire)) return *p;
  Lazy& l = *lazy_;
  if (!l.walker) {
    l.walker = std::make_unique<StateWalker>(a, l.trie, l.below, l.runs);
    l.bits.resize(size_t(n_words_));
  }
  auto p = std::make_unique<Packed>();
  uint64_t steps = 0;
  // An overflow here (a grammar the eager walks did not reach far enough to refuse) leaves
  // the state with what was found: masks stay a subset of what the grammar allows.
  l.walker->walk(state, l.accepted, p->uncertain, steps);
  steps_ += steps;
  pack<Packed, Kind>(l.accepted, l.bits, size_t(n_rows_), *p);
  const Packed* out = intern(std::move(p));
  entries_[size_t(state)].store(out, std::memory_order_release);
  return *out;
}

const TokenMaskTable::Packed* TokenMaskTable::intern(std::unique_ptr<Packed> p) const {
  uint64_t h = 1469598103934665603ull ^ uint64_t(p->kind);
  auto mix = [&h](uint32_t x) { h = (h ^ x) * 1099511628211ull; };
  for (int32_t x : p->ids) mix(uint32_t(x));
  mix(0xFFFFFFFFu);
  for (uint32_t x : p->words) mix(x);
  mix(0xFFFFFFFFu);
  for (int32_t x : p->uncertain) mix(uint32_t(x));
  std::lock_guard<std::mutex> lock(intern_mu_);
  auto [lo, hi] = by_content_.equal_range(h);
  for (auto it = lo; it != hi; ++it) {
    const Packed& q = *it->second;
    if (q.kind == p->kind && q.ids == p->ids && q.words == p->words && q.uncertain == p->uncertain) return &q;
  }
  const Packed* out = p.get();
  owned_.push_back(std::move(p));
  by_content_.emplace(h, out);
  return out;
}

size_t TokenMaskTable::n_walked() const {
  size_t n = 0;
  for (size_t s = 0; s < n_states_; ++s) n += entries_[s].load() != nullptr;
  return n;
}

size_t TokenMaskTable::memory_bytes() const {
  size_t b = n_states_ * sizeof(void*) + (lazy_ ? lazy_->trie.memory_bytes() : 0);
  std::lock_guard<std::mutex> lock(intern_mu_);
  for (const auto& p : owned_) b += sizeof(Packed) + (p->ids.size() + p->uncertain.size()) * 4 + p->words.size() * 4;
  return b;
}

void TokenMaskTable::add_accepted(const ByteAutomaton& a, int32_t state, uint32_t* words, uint32_t* scratch,
                                  bool words_zero) const {
  const Packed& e = entry(a, state);
  const size_t n_words = size_t(n_words_);
  const uint32_t tail = n_rows_ % 32 ? (1u << (n_rows_ % 32)) - 1 : ~0u;  // the last word's real bits
  switch (e.kind) {
    case Kind::List:
      for (int32_t id : e.ids) words[id >> 5] |= 1u << (id & 31);
      return;
    case Kind::Bitset:
      if (words_zero) {
        std::memcpy(words, e.words.data(), n_words * 4);
        return;
      }
      for (size_t i = 0; i < n_words; ++i) words[i] |= e.words[i];
      return;
    case Kind::Complement: {
      uint32_t* dst = words_zero ? words : scratch;  // every token but the listed ones
      std::memset(dst, 0xFF, n_words * 4);
      dst[n_words - 1] = tail;
      for (int32_t id : e.ids) dst[id >> 5] &= ~(1u << (id & 31));
      if (!words_zero)
        for (size_t i = 0; i < n_words; ++i) words[i] |= scratch[i];
      return;
    }
  }
}

}  // namespace peregrine::constrain
