// compute_logprobs against a plain double-precision log-softmax, with -inf, huge and tied
// logits, and the degenerate all -inf / +inf cases.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "sample/logprobs.h"

namespace peregrine {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

std::vector<double> reference_log_softmax(const std::vector<float>& l) {
  double mx = -std::numeric_limits<double>::infinity();
  for (float v : l) mx = std::max(mx, double(v));
  double sum = 0.0;
  for (float v : l) sum += std::exp(double(v) - mx);
  std::vector<double> out;
  for (float v : l) out.push_back(double(v) - mx - std::log(sum));
  return out;
}

// Ids of the k largest logits, ties toward the lower id.
std::vector<int32_t> reference_top(const std::vector<float>& l, size_t k) {
  std::vector<int32_t> ids(l.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  ids.resize(std::min(k, ids.size()));
  return ids;
}

void expect_close(float got, double want, const char* what) {
  if (std::isinf(static_cast<float>(want))) {  // -inf, or below the float range
    EXPECT_EQ(got, static_cast<float>(want)) << what;
  } else {
    EXPECT_NEAR(got, want, 1e-5 + 1e-6 * std::abs(want)) << what;
  }
}

TEST(Logprobs, MatchesDoubleReferenceOnRandomLogits) {
  std::mt19937 rng(99);
  TokenLogprobs out;
  for (int iter = 0; iter < 300; ++iter) {
    const int64_t n = 1 + rng() % 300;
    std::vector<float> l(static_cast<size_t>(n));
    const int mode = iter % 4;
    for (float& v : l) {
      switch (mode) {
        case 0: v = std::normal_distribution<float>(0.0f, 3.0f)(rng); break;
        case 1: v = float(std::uniform_real_distribution<double>(-3e38, 3e38)(rng)); break;
        case 2:
          v = rng() % 5 == 0 ? -kInf : std::normal_distribution<float>(20.0f, 10.0f)(rng);
          break;
        default: v = float(int(rng() % 4));  // many ties
      }
    }
    if (mode == 2) l[rng() % l.size()] = 1.0f;  // at least one finite logit
    const std::vector<double> ref = reference_log_softmax(l);
    const int32_t chosen = int32_t(rng() % n);
    const int32_t k = int32_t(rng() % 25);
    compute_logprobs(l.data(), n, chosen, k, out);
    EXPECT_EQ(out.token, chosen);
    expect_close(out.logprob, ref[size_t(chosen)], "chosen");
    const std::vector<int32_t> top = reference_top(l, size_t(k));
    ASSERT_EQ(out.top.size(), top.size()) << "n " << n << " k " << k;
    for (size_t i = 0; i < top.size(); ++i) {
      EXPECT_EQ(out.top[i].first, top[i]) << "rank " << i << " mode " << mode;
      expect_close(out.top[i].second, ref[size_t(top[i])], "top");
      if (i > 0) {
        EXPECT_GE(out.top[i - 1].second, out.top[i].second);
      }
    }
  }
}

TEST(Logprobs, SumsToOne) {
  std::vector<float> l = {1.0f, 2.0f, 3.0f, -kInf, 0.5f};
  TokenLogprobs out;
  compute_logprobs(l.data(), 5, 0, 5, out);
  double p = 0.0;
  for (auto [id, lp] : out.top) p += std::exp(double(lp));
  EXPECT_NEAR(p, 1.0, 1e-6);
  EXPECT_EQ(out.top.back().first, 3);
  EXPECT_EQ(out.top.back().second, -kInf);
}

TEST(Logprobs, HugeLogitsDoNotOverflow) {
  std::vector<float> l = {3.4e38f, 3.4e38f, -3.4e38f};
  TokenLogprobs out;
  compute_logprobs(l.data(), 3, 1, 3, out);
  EXPECT_NEAR(out.logprob, -std::log(2.0), 1e-6);
  EXPECT_EQ(out.top[0].first, 0);  // tie toward the lower id
  EXPECT_EQ(out.top[1].first, 1);
  EXPECT_EQ(out.top[2].first, 2);
  EXPECT_TRUE(std::isinf(out.top[2].second) || out.top[2].second < -1e38f);
}

TEST(Logprobs, DegenerateInputs) {
  TokenLogprobs out;
  std::vector<float> all_neg_inf(4, -kInf);
  compute_logprobs(all_neg_inf.data(), 4, 2, 2, out);
  EXPECT_NEAR(out.logprob, -std::log(4.0), 1e-6);  // taken as uniform
  EXPECT_EQ(out.top[0].first, 0);
  EXPECT_EQ(out.top[1].first, 1);

  std::vector<float> pos_inf = {0.0f, kInf, 5.0f, kInf};
  compute_logprobs(pos_inf.data(), 4, 3, 4, out);
  EXPECT_NEAR(out.logprob, -std::log(2.0), 1e-6);  // the two +inf share everything
  EXPECT_EQ(out.top[0].first, 1);
  EXPECT_EQ(out.top[1].first, 3);
  EXPECT_EQ(out.top[2].second, -kInf);

  std::vector<float> with_nan = {std::nanf(""), 0.0f, 0.0f};
  compute_logprobs(with_nan.data(), 3, 0, 3, out);
  EXPECT_EQ(out.logprob, -kInf);  // NaN counts as -inf
  EXPECT_NEAR(out.top[0].second, -std::log(2.0), 1e-6);
  EXPECT_EQ(out.top[2].first, 0);

  std::vector<float> one = {7.0f};
  compute_logprobs(one.data(), 1, 0, 20, out);  // k clamped to n_vocab
  EXPECT_EQ(out.logprob, 0.0f);
  ASSERT_EQ(out.top.size(), 1u);
  compute_logprobs(one.data(), 1, 0, -3, out);
  EXPECT_TRUE(out.top.empty());
}

}  // namespace
}  // namespace peregrine
