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

struct TokenMaskTable::Lazy {
  TokenTrie trie;
  std::unique_ptr<StateWalker> walker;  // built on first use (the trie must not move after)
  std::vector<int32_t> accepted;
  std::vector<uint32_t> bits;
};

TokenMaskTable::TokenMaskTable() = default;

TokenMaskTable::~TokenMaskTable() {
  for (size_t s = 0; entries_ && s < n_states_; ++s) delete entries_[s].load();
}

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
    for (size_t id = 0; id < n_rows; ++id)
      if (!(bits[id >> 5] >> (id & 31) & 1)) p.ids.push_back(int32_t(id));
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
  const TokenTrie& trie = lazy_->trie;
  const std::vector<int32_t> states = reachable_states(a);

  // The walks are independent: a few threads take states in order (each with its own walker
  // and stack arena) until the budget is spent.
  const size_t n_rows = size_t(n_rows_);
  const size_t n_threads = std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 8);
  std::atomic<size_t> next{0};
  std::atomic<bool> overflow{false};
  auto work = [&] {
    StateWalker w(a, trie);
    std::vector<int32_t> accepted;
    std::vector<uint32_t> bits(static_cast<size_t>(n_words_), 0u);
    for (size_t k; !overflow.load() && steps_.load() < lim.eager_trie_steps && (k = next.fetch_add(1)) < states.size();) {
      auto p = std::make_unique<Packed>();
      uint64_t steps = 0;
      if (!w.walk(states[k], accepted, p->uncertain, steps)) overflow = true;
      steps_ += steps;
      pack<Packed, Kind>(accepted, bits, n_rows, *p);
      entries_[size_t(states[k])].store(p.release());
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
    l.walker = std::make_unique<StateWalker>(a, l.trie);
    l.bits.resize(size_t(n_words_));
  }
  auto p = std::make_unique<Packed>();
  uint64_t steps = 0;
  // An overflow here (a grammar the eager walks did not reach far enough to refuse) leaves
  // the state with what was found: masks stay a subset of what the grammar allows.
  l.walker->walk(state, l.accepted, p->uncertain, steps);
  steps_ += steps;
  pack<Packed, Kind>(l.accepted, l.bits, size_t(n_rows_), *p);
  const Packed* out = p.release();
  entries_[size_t(state)].store(out, std::memory_order_release);
  return *out;
}

size_t TokenMaskTable::n_walked() const {
  size_t n = 0;
  for (size_t s = 0; s < n_states_; ++s) n += entries_[s].load() != nullptr;
  return n;
}

size_t TokenMaskTable::memory_bytes() const {
  size_t b = n_states_ * sizeof(void*) + (lazy_ ? lazy_->trie.memory_bytes() : 0);
  for (size_t s = 0; s < n_states_; ++s)
    if (const Packed* p = entries_[s].load())
      b += sizeof(Packed) + (p->ids.size() + p->uncertain.size()) * 4 + p->words.size() * 4;
  return b;
}

void TokenMaskTable::add_accepted(const ByteAutomaton& a, int32_t state, uint32_t* words, uint32_t* scratch) const {
  const Packed& e = entry(a, state);
  switch (e.kind) {
    case Kind::List:
      for (int32_t id : e.ids) words[id >> 5] |= 1u << (id & 31);
      return;
    case Kind::Bitset:
      for (int64_t i = 0; i < n_words_; ++i) words[i] |= e.words[size_t(i)];
      return;
    case Kind::Complement:
      std::memset(scratch, 0xFF, size_t(n_words_) * 4);
      if (n_rows_ % 32) scratch[n_words_ - 1] = (1u << (n_rows_ % 32)) - 1;
      for (int32_t id : e.ids) scratch[id >> 5] &= ~(1u << (id & 31));
      for (int64_t i = 0; i < n_words_; ++i) words[i] |= scratch[i];
      return;
  }
}

}  // namespace peregrine::constrain
