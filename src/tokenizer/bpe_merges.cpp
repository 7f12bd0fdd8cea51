#include "tokenizer/bpe_merges.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <queue>

namespace peregrine {

void BpeMerges::reserve(size_t n_merges) {
  size_t cap = 16;
  while (cap < n_merges * 2) cap *= 2;  // load factor <= 1/2
  if (cap <= slots_.size()) return;
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(cap, Slot{0, {0, 0}, false});
  n_ = 0;
  for (const Slot& s : old) {
    if (s.used) {
      add(static_cast<int32_t>(s.key >> 32), static_cast<int32_t>(s.key & 0xFFFFFFFFu), s.m);
    }
  }
}

void BpeMerges::grow() { reserve(std::max<size_t>(8, slots_.size())); }

void BpeMerges::add(int32_t left, int32_t right, Merge m) {
  if ((n_ + 1) * 2 > slots_.size()) grow();
  const uint64_t key = pack(left, right);
  const size_t mask = slots_.size() - 1;
  for (size_t i = hash(key) & mask;; i = (i + 1) & mask) {
    Slot& s = slots_[i];
    if (!s.used) {
      s = Slot{key, m, true};
      ++n_;
      return;
    }
    if (s.key == key) {
      s.m = m;
      return;
    }
  }
}

const BpeMerges::Merge* BpeMerges::find(int32_t left, int32_t right) const {
  if (slots_.empty()) return nullptr;
  const uint64_t key = pack(left, right);
  const size_t mask = slots_.size() - 1;
  for (size_t i = hash(key) & mask;; i = (i + 1) & mask) {
    const Slot& s = slots_[i];
    if (!s.used) return nullptr;
    if (s.key == key) return &s.m;
  }
}

void BpeMerges::apply_short(std::vector<int32_t>& ids) const {
  // Most pieces are a word of a few bytes: keep the rank of every adjacent
  // pair in a small array and merge the first minimum until none is left. The
  // O(n^2) scan costs less than the heap's allocations for such sizes.
  constexpr int32_t kNone = INT32_MAX;
  int32_t rank[kShortPiece];  // rank[i]: pair (ids[i], ids[i + 1])
  int32_t merged[kShortPiece];
  size_t n = ids.size();
  auto rate = [&](size_t i) {
    const Merge* m = find(ids[i], ids[i + 1]);
    rank[i] = m ? m->rank : kNone;
    merged[i] = m ? m->merged : -1;
  };
  for (size_t i = 0; i + 1 < n; ++i) rate(i);
  while (n > 1) {
    size_t best = 0;
    for (size_t i = 1; i + 1 < n; ++i) {
      if (rank[i] < rank[best]) best = i;
    }
    if (rank[best] == kNone) break;
    ids[best] = merged[best];
    ids.erase(ids.begin() + static_cast<std::ptrdiff_t>(best) + 1);
    --n;
    for (size_t i = best + 1; i + 1 < n; ++i) {  // shift the pairs right of the merge
      rank[i] = rank[i + 1];
      merged[i] = merged[i + 1];
    }
    if (best > 0) rate(best - 1);
    if (best + 1 < n) rate(best);
  }
}

void BpeMerges::apply(std::vector<int32_t>& ids) const {
  const auto n = static_cast<int32_t>(ids.size());
  if (n < 2) return;
  if (ids.size() <= kShortPiece) return apply_short(ids);

  // Symbols form a doubly linked list over the original positions; a merge
  // folds the right symbol into the left one and marks the right one dead.
  std::vector<int32_t> prev(n), next(n);
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }

  // A candidate remembers the ids it was made for; when popped it is stale
  // (skipped) unless the left symbol still holds `l` and its neighbour `r`.
  // Merged ids always differ from both parts (their text is longer), so the
  // id check is enough to notice any change to either side.
  struct Cand {
    int32_t rank, pos, l, r, merged;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::vector<Cand> storage;
  storage.reserve(static_cast<size_t>(n));
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> heap(std::greater<Cand>{},
                                                                       std::move(storage));
  auto push = [&](int32_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    const int32_t l = ids[pos], r = ids[next[pos]];
    if (const Merge* m = find(l, r)) heap.push({m->rank, pos, l, r, m->merged});
  };
  for (int32_t i = 0; i + 1 < n; ++i) push(i);

  constexpr int32_t kDead = -1;
  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    if (ids[c.pos] != c.l) continue;
    const int32_t right = next[c.pos];
    if (right < 0 || ids[right] != c.r) continue;
    ids[c.pos] = c.merged;
    ids[right] = kDead;
    next[c.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = c.pos;
    push(prev[c.pos]);
    push(c.pos);
  }
  std::erase(ids, kDead);
}

}  // namespace peregrine
