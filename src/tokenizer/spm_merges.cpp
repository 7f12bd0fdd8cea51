#include "tokenizer/spm_merges.h"

#include <queue>
#include <unordered_map>
#include <utility>

#include "tokenizer/unicode_utf8.h"

namespace peregrine {

void SpmMerges::segment(std::string_view text, std::vector<Span>& out) const {
  // Symbols form a doubly linked list over their first positions; a merge
  // folds the right symbol into the left one and leaves the right one empty.
  struct Sym {
    int32_t start, len, prev, next;
  };
  std::vector<Sym> sym;  // [n_chars]
  sym.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const utf8::Seq q = utf8::next(text, i);
    const auto len = static_cast<int32_t>(q.kind == utf8::Seq::Valid ? q.len : 1);
    const auto k = static_cast<int32_t>(sym.size());
    sym.push_back({static_cast<int32_t>(i), len, k - 1, k + 1});
    i += static_cast<size_t>(len);
  }
  if (sym.empty()) return;
  sym.back().next = -1;

  // A candidate remembers the combined length it was made for: when popped it
  // is stale (skipped) unless both symbols are still alive with those lengths
  // (a symbol only ever grows, so any change to either side shows).
  struct Cand {
    float score;
    int32_t left, right, len;
  };
  auto worse = [](const Cand& a, const Cand& b) {  // heap top: best score, then leftmost
    return a.score != b.score ? a.score < b.score : a.left > b.left;
  };
  std::vector<Cand> storage;
  storage.reserve(sym.size());
  std::priority_queue<Cand, std::vector<Cand>, decltype(worse)> heap(worse, std::move(storage));
  // Unused pieces are split again at the end where the last candidate that
  // produced them split (keyed by piece id: the split's left length).
  std::unordered_map<int32_t, int32_t> unused_split;  // id -> left length; rarely used

  auto push = [&](int32_t l) {
    if (l < 0) return;
    const int32_t r = sym[l].next;
    if (r < 0) return;
    const int32_t len = sym[l].len + sym[r].len;
    const Piece* p = find(text.substr(static_cast<size_t>(sym[l].start), static_cast<size_t>(len)));
    if (p == nullptr) return;
    heap.push({p->score, l, r, len});
    if (p->unused) unused_split.insert_or_assign(p->id, sym[l].len);
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(sym.size()); ++i) push(i);

  while (!heap.empty()) {
    const Cand c = heap.top();
    heap.pop();
    Sym& l = sym[c.left];
    Sym& r = sym[c.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != c.len) continue;
    l.len = c.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = c.left;
    push(l.prev);
    push(c.left);
  }

  auto split_of = [&](int32_t id) -> int32_t {
    const auto it = unused_split.find(id);
    return it == unused_split.end() ? 0 : it->second;
  };
  std::vector<Span> stack;
  for (int32_t i = 0; i >= 0; i = sym[i].next) {
    if (unused_split.empty()) {
      out.push_back({sym[i].start, sym[i].len});
      continue;
    }
    stack.push_back({sym[i].start, sym[i].len});
    while (!stack.empty()) {
      const Span s = stack.back();
      stack.pop_back();
      const Piece* p =
          find(text.substr(static_cast<size_t>(s.start), static_cast<size_t>(s.len)));
      const int32_t left = p != nullptr && p->unused ? split_of(p->id) : 0;
      if (left <= 0 || left >= s.len) {
        out.push_back(s);
        continue;
      }
      stack.push_back({s.start + left, s.len - left});  // right half after the left one
      stack.push_back({s.start, left});
    }
  }
}

}  // namespace peregrine
