#include "constrain/token_masks.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <thread>

#include "constrain/pushdown.h"

namespace peregrine::constrain {
namespace {

// States the root can reach through bytes, calls and returns.
std::vector<uint8_t> reachable_states(const ByteAutomaton& a) {
  std::vector<uint8_t> seen(size_t(a.n_states()), 0);
  std::vector<int32_t> work{a.root_start()};
  seen[size_t(a.root_start())] = 1;
  auto visit = [&](int32_t s) {
    if (s >= 0 && !seen[size_t(s)]) {
      seen[size_t(s)] = 1;
      work.push_back(s);
    }
  };
  while (!work.empty()) {
    const int32_t s = work.back();
    work.pop_back();
    for (int b = 0; b < 256; ++b) visit(a.next(s, uint8_t(b)));
    for (const RuleCall& c : a.calls(s)) {
      visit(c.start);
      visit(c.ret);
    }
  }
  return seen;
}

// One state's walk of the class trie: the accepted and uncertain tokens (see the header).
// Levels hold the configurations after each depth's prefix; almost always that is a single
// configuration whose next state neither calls nor returns, which is kept inline (one table
// lookup per trie node) instead of in a ConfigSet.
class StateWalker {
 public:
  StateWalker(const ByteAutomaton& a, const TokenTrie& trie)
      : a_(a), trie_(trie), level_(trie.max_depth() + 1), sets_(trie.max_depth() + 1) {}

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
        } else if (!a_.has_calls(t) && (!a_.accepting(t) || prev.c.parent == kBottom)) {
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
    // A set of one configuration that will not call or return on its next byte can go on
    // inline; anything else stays a set.
    if (set.configs().size() == 1) {
      const Config& c = set.configs()[0];
      if (!a_.has_calls(c.state) && (!a_.accepting(c.state) || c.parent == kBottom)) {
        l.single = true;
        l.c = c;
      }
    }
    return l;
  }

  const ByteAutomaton& a_;
  const TokenTrie& trie_;
  StackArena arena_;
  std::vector<Level> level_;
  std::vector<ConfigSet> sets_;
};

}  // namespace

Result<TokenMaskTable> TokenMaskTable::build(const ByteAutomaton& a, const TokenVocab& vocab, const MaskLimits& lim) {
  TokenMaskTable t;
  t.n_rows_ = vocab.n_rows();
  t.n_words_ = vocab.n_words();
  t.entries_.resize(size_t(a.n_states()));
  const std::vector<uint8_t> live = reachable_states(a);
  // The automaton only tells bytes apart by class, so tokens with the same class sequence
  // are accepted, rejected or uncertain together: walk a trie of class sequences.
  std::vector<std::pair<std::string, int32_t>> entries;
  for (int32_t id = 0; id < int32_t(vocab.n_rows()); ++id) {
    const std::string_view b = vocab.bytes(id);
    if (b.empty()) continue;
    std::string cls(b.size(), '\0');
    for (size_t i = 0; i < b.size(); ++i) cls[i] = char(a.class_of(uint8_t(b[i])));
    entries.emplace_back(std::move(cls), id);
  }
  const TokenTrie trie = TokenTrie::build(std::move(entries));
  std::vector<int32_t> states;
  for (int32_t s = 0; s < a.n_states(); ++s)
    if (live[size_t(s)]) states.push_back(s);

  // The walks are independent: split the states over a few threads (each with its own
  // walker and stack arena), results kept per state and packed in state order.
  // Each state's sets are packed by its thread (bitmask, list or complement list, whichever
  // is smallest) and concatenated in state order afterwards.
  struct Packed {
    Kind kind = Kind::List;
    std::vector<int32_t> ids;      // List / Complement
    std::vector<uint32_t> words;   // Bitset
    std::vector<int32_t> uncertain;
  };
  std::vector<Packed> results(states.size());
  const size_t n_rows = size_t(t.n_rows_), n_words = size_t(t.n_words_);
  auto pack = [&](const std::vector<int32_t>& accepted, std::vector<uint32_t>& bits, Packed& p) {
    std::fill(bits.begin(), bits.end(), 0u);
    for (int32_t id : accepted) bits[size_t(id) >> 5] |= 1u << (id & 31);
    const size_t k = accepted.size();
    if (k <= n_words && k <= n_rows - k) {
      p.kind = Kind::List;
      for (size_t w = 0; w < n_words; ++w)
        for (uint32_t m = bits[w]; m; m &= m - 1) p.ids.push_back(int32_t(w * 32 + size_t(__builtin_ctz(m))));
    } else if (n_rows - k <= n_words) {
      p.kind = Kind::Complement;
      for (size_t id = 0; id < n_rows; ++id)
        if (!(bits[id >> 5] >> (id & 31) & 1)) p.ids.push_back(int32_t(id));
    } else {
      p.kind = Kind::Bitset;
      p.words = bits;
    }
  };
  const size_t n_threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 8);
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> steps{0};
  std::atomic<int> failure{0};  // 1: overflow, 2: too many steps, 3: arena too large
  auto work = [&] {
    StateWalker w(a, trie);
    std::vector<int32_t> accepted;
    std::vector<uint32_t> bits(n_words);
    uint64_t my_steps = 0;
    for (size_t k; failure.load() == 0 && (k = next.fetch_add(1)) < states.size();) {
      if (!w.walk(states[k], accepted, results[k].uncertain, my_steps)) failure = 1;
      pack(accepted, bits, results[k]);
      if (steps.fetch_add(my_steps) + my_steps > lim.max_trie_steps) failure = 2;
      my_steps = 0;
      if (w.arena_size() > (size_t(1) << 24)) failure = 3;
    }
  };
  {
    std::vector<std::thread> pool;
    const bool parallel = states.size() > 8 && trie.nodes().size() > 1000;
    for (size_t i = 1; parallel && i < n_threads; ++i) pool.emplace_back(work);
    work();
    for (std::thread& th : pool) th.join();
  }
  t.steps_ = steps.load();
  if (failure == 1)
    return make_error("grammar too ambiguous: more than {} parses of one token at once", ConfigSet::kMaxConfigs);
  if (failure == 2)
    return make_error("grammar too expensive to compile: token masks would take more than {} trie steps",
                      lim.max_trie_steps);
  if (failure == 3) return make_error("grammar too ambiguous: too many stack frames");

  for (size_t r = 0; r < states.size(); ++r) {
    Packed& p = results[r];
    Entry& e = t.entries_[size_t(states[r])];
    e.kind = p.kind;
    if (p.kind == Kind::Bitset) {
      e.begin = uint32_t(t.words_.size());
      t.words_.insert(t.words_.end(), p.words.begin(), p.words.end());
      e.end = uint32_t(t.words_.size());
    } else {
      e.begin = uint32_t(t.ids_.size());
      t.ids_.insert(t.ids_.end(), p.ids.begin(), p.ids.end());
      e.end = uint32_t(t.ids_.size());
    }
    e.unc_begin = uint32_t(t.ids_.size());
    t.ids_.insert(t.ids_.end(), p.uncertain.begin(), p.uncertain.end());
    e.unc_end = uint32_t(t.ids_.size());
    t.n_uncertain_ += p.uncertain.size();
    if (t.ids_.size() > (size_t(1) << 31) || t.words_.size() > (size_t(1) << 31))
      return make_error("grammar too large: its token masks exceed the size limit");
    p = Packed{};
  }
  return t;
}

void TokenMaskTable::add_accepted(int32_t state, uint32_t* words, uint32_t* scratch) const {
  const Entry& e = entries_[size_t(state)];
  switch (e.kind) {
    case Kind::Unreached:
      return;
    case Kind::List:
      for (uint32_t i = e.begin; i < e.end; ++i) words[ids_[i] >> 5] |= 1u << (ids_[i] & 31);
      return;
    case Kind::Bitset: {
      const uint32_t* w = words_.data() + e.begin;
      for (int64_t i = 0; i < n_words_; ++i) words[i] |= w[i];
      return;
    }
    case Kind::Complement: {
      std::memset(scratch, 0xFF, size_t(n_words_) * 4);
      if (n_rows_ % 32) scratch[n_words_ - 1] = (1u << (n_rows_ % 32)) - 1;
      for (uint32_t i = e.begin; i < e.end; ++i) scratch[ids_[i] >> 5] &= ~(1u << (ids_[i] & 31));
      for (int64_t i = 0; i < n_words_; ++i) words[i] |= scratch[i];
      return;
    }
  }
}

}  // namespace peregrine::constrain
