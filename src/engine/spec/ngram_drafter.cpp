#include "engine/spec/ngram_drafter.h"

#include <algorithm>
#include <bit>

namespace peregrine {
namespace {

constexpr TokenId kSeparator = -1;  // between outputs in the history: matches no token

uint64_t hash_ngram(std::span<const TokenId> g) {
  uint64_t h = 0x9e3779b97f4a7c15ull ^ g.size();
  for (TokenId t : g) {
    h ^= uint64_t(uint32_t(t)) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    h *= 0xff51afd7ed558ccdull;
  }
  return h ^ (h >> 33);
}

}  // namespace

bool lookup_suffix(std::span<const TokenId> tokens, int32_t n_min, int32_t n_max, int32_t max,
                   std::vector<TokenId>& out) {
  const int64_t L = int64_t(tokens.size());
  if (max <= 0) return false;
  for (int64_t n = std::min<int64_t>(n_max, L - 1); n >= n_min; --n) {
    const TokenId* suffix = tokens.data() + (L - n);
    // Most recent occurrence first; it must end before the suffix itself starts... or overlap
    // it (a repeating pattern), as long as a token follows it.
    for (int64_t j = L - n - 1; j >= 0; --j) {
      if (tokens[size_t(j)] != suffix[0] || !std::equal(suffix, suffix + n, tokens.data() + j)) continue;
      const int64_t from = j + n, to = std::min(L, from + max);
      out.insert(out.end(), tokens.begin() + from, tokens.begin() + to);
      return true;
    }
  }
  return false;
}

// ---- NgramHistory ----------------------------------------------------------------------------

NgramHistory::NgramHistory(int64_t capacity, int32_t n_min, int32_t n_max)
    : n_min_(std::clamp(n_min, 1, 16)), n_max_(std::clamp(n_max, n_min_, 16)) {
  if (capacity <= 0) return;
  ring_.assign(size_t(capacity), kSeparator);
  table_.resize(std::bit_ceil(size_t(capacity) * 2));
}

void NgramHistory::push(TokenId t) {
  ring_[written_ % ring_.size()] = t;
  ++written_;
  if (t == kSeparator) return;
  // Index the n-grams that end just before the next position.
  for (int32_t n = n_min_; n <= n_max_; ++n) {
    if (written_ < uint64_t(n)) break;
    const uint64_t start = written_ - uint64_t(n);
    if (!held(start)) break;
    TokenId g[16];
    bool clean = true;
    for (int32_t i = 0; i < n; ++i) {
      g[i] = at(start + uint64_t(i));
      clean = clean && g[i] != kSeparator;
    }
    if (!clean) break;
    const uint64_t h = hash_ngram({g, size_t(n)});
    table_[h & (table_.size() - 1)] = {h, written_ + 1};
  }
}

void NgramHistory::add(std::span<const TokenId> tokens) {
  if (ring_.empty() || tokens.empty()) return;
  // An output longer than the ring: only its end fits.
  if (tokens.size() >= ring_.size()) tokens = tokens.last(ring_.size() - 1);
  for (TokenId t : tokens) push(t);
  push(kSeparator);
}

void NgramHistory::lookup(std::span<const TokenId> context, int32_t max, std::vector<TokenId>& out) const {
  if (ring_.empty() || max <= 0) return;
  for (int64_t n = std::min<int64_t>(n_max_, int64_t(context.size())); n >= n_min_; --n) {
    std::span<const TokenId> g = context.last(size_t(n));
    const uint64_t h = hash_ngram(g);
    const Entry& e = table_[h & (table_.size() - 1)];
    if (e.next == 0 || e.hash != h) continue;
    const uint64_t next = e.next - 1;
    if (next < uint64_t(n) || !held(next - uint64_t(n))) continue;  // overwritten since
    bool same = true;
    for (int64_t i = 0; i < n && same; ++i) same = at(next - uint64_t(n) + uint64_t(i)) == g[size_t(i)];
    if (!same) continue;  // a hash collision
    for (uint64_t p = next; p < written_ && int32_t(out.size()) < max; ++p) {
      if (!held(p) || at(p) == kSeparator) break;
      out.push_back(at(p));
    }
    return;
  }
}

// ---- NgramDrafter ------------------------------------------------------------------------------

Status NgramDrafter::propose(const DraftRequest& req, DraftGoOn /*go_on*/, Draft& out) {
  out.clear();
  if (req.max <= 0) return Status::Ok();
  if (!lookup_suffix(req.tokens, n_min_, n_max_, req.max, out.tokens) && history_ != nullptr) {
    history_->lookup(req.tokens, req.max, out.tokens);
    if (!out.tokens.empty()) ++history_drafts_;
  }
  return Status::Ok();
}

}  // namespace peregrine
