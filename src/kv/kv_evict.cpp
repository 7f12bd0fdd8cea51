#include "kv/kv_evict.h"

#include <algorithm>
#include <numeric>

namespace peregrine {
namespace {

// Keeps every index in [0, n) that `forced` says, then the best-scored others up to budget
// (ties to the older entry), ascending.
template <class Forced>
void keep_best(const float* score, int64_t n, int64_t budget, Forced forced, std::vector<int32_t>& keep) {
  keep.clear();
  std::vector<int32_t> rest;
  for (int32_t i = 0; i < int32_t(n); ++i) (forced(i) ? keep : rest).push_back(i);
  const int64_t room = std::max<int64_t>(0, budget - int64_t(keep.size()));
  if (int64_t(rest.size()) > room) {
    auto better = [&](int32_t a, int32_t b) { return score[a] > score[b] || (score[a] == score[b] && a < b); };
    std::nth_element(rest.begin(), rest.begin() + room, rest.end(), better);
    rest.resize(size_t(room));
  }
  keep.insert(keep.end(), rest.begin(), rest.end());
  std::sort(keep.begin(), keep.end());
}

}  // namespace

void h2o_select(const int32_t* pos, const float* score, int64_t n, int64_t budget, std::vector<int32_t>& keep) {
  if (n <= budget) {
    keep.resize(size_t(n));
    std::iota(keep.begin(), keep.end(), 0);
    return;
  }
  const int64_t recent = budget / 2;  // the paper's even split between recent and heavy hitters
  keep_best(score, n, budget, [&](int32_t i) { return pos[i] < kEvictSinks || i >= n - recent; }, keep);
}

void snapkv_select(const int32_t* pos, const float* score, int64_t n, int64_t budget, std::vector<int32_t>& keep) {
  if (n <= budget) {
    keep.resize(size_t(n));
    std::iota(keep.begin(), keep.end(), 0);
    return;
  }
  // Votes max-pooled over kSnapPool neighbours (in position order) keep clusters together.
  std::vector<float> pooled(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    float m = score[i];
    for (int64_t j = std::max<int64_t>(0, i - kSnapPool / 2); j <= std::min(n - 1, i + kSnapPool / 2); ++j)
      m = std::max(m, score[j]);
    pooled[size_t(i)] = m;
  }
  keep_best(pooled.data(), n, budget, [&](int32_t i) { return pos[i] < kEvictSinks || i >= n - kSnapWindow; }, keep);
}

}  // namespace peregrine
