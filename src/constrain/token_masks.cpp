#include "constrain/token_masks.h"

#include <algorithm>
#include <cstring>

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

}  // namespace

Result<TokenMaskTable> TokenMaskTable::build(const ByteAutomaton& a, const TokenVocab& vocab, const MaskLimits& lim) {
  TokenMaskTable t;
  t.n_rows_ = vocab.n_rows();
  t.n_words_ = vocab.n_words();
  t.entries_.resize(size_t(a.n_states()));
  const std::vector<uint8_t> live = reachable_states(a);
  const auto& nodes = vocab.nodes();
  const size_t max_depth = vocab.max_token_bytes();

  StackArena arena;
  std::vector<ConfigSet> level(max_depth + 1);
  std::vector<uint8_t> esc(max_depth + 1);
  std::vector<int32_t> accepted, uncertain;
  for (int32_t s = 0; s < a.n_states(); ++s) {
    if (!live[size_t(s)]) continue;
    accepted.clear();
    uncertain.clear();
    level[0].clear();
    level[0].add_closed(a, arena, {s, kBottom});
    esc[0] = level[0].escaped();
    for (size_t i = 0; i < nodes.size();) {
      const TokenVocab::Node& n = nodes[i];
      const size_t d = n.depth;
      level[d - 1].advance(a, arena, n.byte, level[d]);
      if (level[d].overflow())
        return make_error("grammar too ambiguous: more than {} parses of one token at once", ConfigSet::kMaxConfigs);
      esc[d] = esc[d - 1] || level[d].escaped();
      ++t.steps_;
      if (level[d].empty()) {
        if (esc[d]) {
          auto sub = vocab.tokens_in_subtree(i);
          uncertain.insert(uncertain.end(), sub.begin(), sub.end());
        }
        i = size_t(n.subtree_end);
        continue;
      }
      auto here = vocab.tokens_at(i);
      accepted.insert(accepted.end(), here.begin(), here.end());
      ++i;
    }
    if (t.steps_ > lim.max_trie_steps)
      return make_error("grammar too expensive to compile: token masks would take more than {} trie steps",
                        lim.max_trie_steps);
    if (arena.size() > (size_t(1) << 24)) return make_error("grammar too ambiguous: too many stack frames");

    Entry& e = t.entries_[size_t(s)];
    std::sort(accepted.begin(), accepted.end());
    const size_t k = accepted.size(), n_rows = size_t(t.n_rows_);
    const size_t bitset_ids = size_t(t.n_words_);  // a bitset costs as much as this many ids
    if (k <= bitset_ids && k <= n_rows - k) {
      e.kind = Kind::List;
      e.begin = uint32_t(t.ids_.size());
      t.ids_.insert(t.ids_.end(), accepted.begin(), accepted.end());
    } else if (n_rows - k <= bitset_ids) {
      e.kind = Kind::Complement;
      e.begin = uint32_t(t.ids_.size());
      size_t j = 0;
      for (int32_t id = 0; id < int32_t(n_rows); ++id) {
        if (j < k && accepted[j] == id) {
          ++j;
          continue;
        }
        t.ids_.push_back(id);
      }
    } else {
      e.kind = Kind::Bitset;
      e.begin = uint32_t(t.words_.size());
      t.words_.resize(t.words_.size() + size_t(t.n_words_), 0);
      uint32_t* w = t.words_.data() + e.begin;
      for (int32_t id : accepted) w[id >> 5] |= 1u << (id & 31);
    }
    e.end = e.kind == Kind::Bitset ? uint32_t(t.words_.size()) : uint32_t(t.ids_.size());
    e.unc_begin = uint32_t(t.ids_.size());
    t.ids_.insert(t.ids_.end(), uncertain.begin(), uncertain.end());
    e.unc_end = uint32_t(t.ids_.size());
    t.n_uncertain_ += uncertain.size();
    if (t.ids_.size() > (size_t(1) << 31) || t.words_.size() > (size_t(1) << 31))
      return make_error("grammar too large: its token masks exceed the size limit");
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
