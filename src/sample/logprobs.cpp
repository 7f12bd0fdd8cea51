#include "sample/logprobs.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/status.h"

namespace peregrine {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

float logit_at(const float* logits, int64_t i) {
  return std::isnan(logits[i]) ? kNegInf : logits[i];
}

}  // namespace

void compute_logprobs(const float* logits, int64_t n_vocab, int32_t chosen, int32_t top_k,
                      TokenLogprobs& out) {
  PG_ASSERT(n_vocab > 0 && chosen >= 0 && chosen < n_vocab);
  float mx = kNegInf;
  for (int64_t i = 0; i < n_vocab; ++i) mx = std::max(mx, logit_at(logits, i));

  // logprob(i) = l_i - mx - log(sum_j exp(l_j - mx)). The degenerate cases take the limit a
  // finite shift of the logits would give: all -inf -> uniform; some +inf -> they share all.
  double log_sum = 0.0;  // >= 0: the maximum contributes exp(0) = 1
  if (mx == kNegInf) {
    log_sum = std::log(static_cast<double>(n_vocab));
  } else {
    double sum = 0.0;
    for (int64_t i = 0; i < n_vocab; ++i) {
      const float l = logit_at(logits, i);
      sum += std::isinf(mx) ? (l == mx ? 1.0 : 0.0) : std::exp(double(l) - double(mx));
    }
    log_sum = std::log(sum);
  }
  auto logprob = [&](int64_t i) -> float {
    const float l = logit_at(logits, i);
    if (l == mx) return static_cast<float>(-log_sum);  // also covers all -inf and +inf
    if (std::isinf(mx)) return kNegInf;                // mx is +inf, l is finite or -inf
    return static_cast<float>(double(l) - double(mx) - log_sum);
  };

  out.token = chosen;
  out.logprob = logprob(chosen);
  out.top.clear();
  const size_t k = static_cast<size_t>(std::clamp<int64_t>(top_k, 0, n_vocab));
  if (k == 0) return;
  // One pass keeping the k largest logits in order. Ids ascend, so an equal logit lands after
  // those already kept: ties go toward the lower id. Holds logits until the end.
  auto& top = out.top;
  for (int64_t i = 0; i < n_vocab; ++i) {
    const float l = logit_at(logits, i);
    if (top.size() == k && !(l > top.back().second)) continue;
    size_t pos = top.size();
    while (pos > 0 && l > top[pos - 1].second) --pos;
    if (top.size() == k) top.pop_back();
    top.insert(top.begin() + static_cast<std::ptrdiff_t>(pos), {static_cast<int32_t>(i), l});
  }
  for (auto& [id, lp] : top) lp = logprob(id);
}

}  // namespace peregrine
