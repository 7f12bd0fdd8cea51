#include <gtest/gtest.h>

#include <cmath>
#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <vector>

#include "sample/sampler.h"

namespace peregrine {
namespace {

TEST(Sampler, TemperatureZeroIsArgmaxWithLowestIdOnTies) {
  SamplerOptions o;
  o.temperature = 0.0f;
  Sampler s(o);
  std::vector<float> l = {0.1f, 3.0f, -1.0f, 3.0f, 2.9f};
  EXPECT_EQ(s.sample(l.data(), 5), 1);
}

TEST(Sampler, SameSeedSameDraws) {
  SamplerOptions o;
  o.temperature = 1.0f;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.min_p = 0.0f;
  o.seed = 1234;
  std::vector<float> l = {1.0f, 1.1f, 0.9f, 1.05f, 0.2f, 0.0f};
  Sampler a(o), b(o);
  std::vector<int> da, db;
  for (int i = 0; i < 200; ++i) {
    da.push_back(a.sample(l.data(), 6));
    db.push_back(b.sample(l.data(), 6));
  }
  EXPECT_EQ(da, db);
  o.seed = 1235;
  Sampler c(o);
  std::vector<int> dc;
  for (int i = 0; i < 200; ++i) dc.push_back(c.sample(l.data(), 6));
  EXPECT_NE(da, dc);
}

// At temperature 1 with no truncation, draw frequencies follow softmax(logits).
TEST(Sampler, DrawsFollowSoftmax) {
  SamplerOptions o;
  o.temperature = 1.0f;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.min_p = 0.0f;
  o.seed = 7;
  std::vector<float> l = {0.0f, 1.0f, 2.0f};
  Sampler s(o);
  std::map<int, int> n;
  const int N = 30000;
  for (int i = 0; i < N; ++i) n[s.sample(l.data(), 3)]++;
  double z = 1 + std::exp(1.0) + std::exp(2.0);
  EXPECT_NEAR(n[0] / double(N), 1 / z, 0.01);
  EXPECT_NEAR(n[1] / double(N), std::exp(1.0) / z, 0.01);
  EXPECT_NEAR(n[2] / double(N), std::exp(2.0) / z, 0.01);
}

TEST(Sampler, TopKTopPMinPTruncate) {
  std::vector<float> l = {5.0f, 4.0f, 0.0f, -1.0f, -2.0f};
  auto draws = [&](SamplerOptions o) {
    o.temperature = 1.0f;
    Sampler s(o);
    std::map<int, int> n;
    for (int i = 0; i < 3000; ++i) n[s.sample(l.data(), 5)]++;
    return n;
  };
  SamplerOptions p;
  p.top_k = 0; p.top_p = 0.5f; p.min_p = 0.0f;  // p(0) ~ 0.72 > 0.5: only token 0
  EXPECT_EQ(draws(p).size(), 1u);
  SamplerOptions m;
  m.top_k = 0; m.top_p = 1.0f; m.min_p = 0.3f;  // p1/p0 = e^-1 ~ 0.37 kept, e^-5 dropped
  auto n = draws(m);
  EXPECT_EQ(n.size(), 2u);
}

// Top-k = 2 keeps the two best tokens and draws them in proportion to their renormalised
// probabilities (then reshaped by the temperature): not top-1 (which never draws the second),
// not top-3 (which draws the third about 0.5% of the time at temperature 1), not the first two
// ids (the best two are ids 3 and 1).
TEST(Sampler, TopKDrawsTheKeptTokensInProportion) {
  const std::vector<float> l = {0.0f, 4.0f, -1.0f, 5.0f, -2.0f};
  for (float temp : {1.0f, 2.0f}) {
    SamplerOptions o;
    o.temperature = temp;
    o.top_k = 2;
    o.top_p = 1.0f;
    o.min_p = 0.0f;
    o.seed = 99;
    Sampler s(o);
    const int N = 20000;
    std::map<int, int> n;
    for (int i = 0; i < N; ++i) n[s.sample(l.data(), 5)]++;
    EXPECT_EQ(n.count(0) + n.count(2) + n.count(4), 0u) << "temperature " << temp;
    // Renormalised over the two kept tokens: p(3) = 1 / (1 + e^((4 - 5) / T)).
    const double p3 = 1.0 / (1.0 + std::exp((4.0 - 5.0) / temp)), p1 = 1.0 - p3;
    // Pearson's chi-square with one degree of freedom: 23.9 is its 1 - 1e-6 quantile, so a
    // correct sampler fails with probability 1e-6 per seed (and this seed is fixed). At
    // N = 20000 the expected count of the less likely token is >= 5379, so the chi-square
    // approximation is accurate; top-1 would give chi2 = N p1 / p3 > 7000.
    const double e3 = N * p3, e1 = N * p1;
    const double chi2 = (n[3] - e3) * (n[3] - e3) / e3 + (n[1] - e1) * (n[1] - e1) / e1;
    EXPECT_LT(chi2, 23.9) << "temperature " << temp << ": token 3 drawn " << n[3]
                          << " times, token 1 " << n[1] << ", expected " << e3 << " and " << e1;
  }
}

// Top-p and min-p over a large vocabulary without top-k (how the server samples): the sampler
// sorts only a growing head of it, so compare the tokens it can return with the nucleus and
// the min-p set computed from a full sort.
TEST(Sampler, NucleusOfALargeVocabularyMatchesAFullSort) {
  std::mt19937 rng(11);
  std::normal_distribution<float> gauss(0.0f, 2.0f);
  const int64_t V = 20000;
  std::vector<float> l(static_cast<size_t>(V));
  for (float& x : l) x = gauss(rng);
  std::vector<int> order(static_cast<size_t>(V));
  for (int i = 0; i < V; ++i) order[size_t(i)] = i;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return l[size_t(a)] > l[size_t(b)] || (l[size_t(a)] == l[size_t(b)] && a < b); });
  const double mx = l[size_t(order[0])];
  double total = 0.0;
  for (float x : l) total += std::exp(double(x) - mx);
  for (float top_p : {0.05f, 0.5f, 0.95f}) {  // nuclei from a few tokens to thousands (> 512)
    std::set<int> nucleus;
    double acc = 0.0;
    for (int id : order) {
      nucleus.insert(id);
      acc += std::exp(double(l[size_t(id)]) - mx) / total;
      if (acc >= top_p) break;
    }
    SamplerOptions o;
    o.temperature = 1.0f;
    o.top_k = 0;
    o.min_p = 0.0f;
    o.top_p = top_p;
    Sampler s(o);
    std::set<int> seen;
    for (int i = 0; i < 500; ++i) {
      const int t = s.sample(l.data(), V);
      ASSERT_TRUE(nucleus.count(t)) << "token " << t << " outside the top-p " << top_p << " nucleus";
      seen.insert(t);
    }
    if (nucleus.size() <= 20) EXPECT_EQ(seen.size(), nucleus.size()) << top_p;
    else EXPECT_GT(seen.size(), std::min<size_t>(nucleus.size() / 4, 100)) << top_p;
  }
  SamplerOptions m;
  m.temperature = 1.0f;
  m.top_k = 0;
  m.top_p = 1.0f;
  m.min_p = 0.05f;
  Sampler s(m);
  for (int i = 0; i < 500; ++i) {
    const int t = s.sample(l.data(), V);
    ASSERT_GE(std::exp(double(l[size_t(t)]) - mx), 0.05 * (1 - 1e-6)) << t;
  }
}

TEST(Sampler, RepeatPenaltyDemotesRecentTokens) {
  SamplerOptions o;
  o.temperature = 0.0f;
  o.repeat_penalty = 2.0f;
  Sampler s(o);
  std::vector<float> l = {2.0f, 1.5f};
  EXPECT_EQ(s.sample(l.data(), 2), 0);
  s.accept(0);
  EXPECT_EQ(s.sample(l.data(), 2), 1);  // 2.0 / 2 = 1.0 < 1.5
}

TEST(Sampler, ValidateRejectsBadOptions) {
  SamplerOptions o;
  o.temperature = -1.0f;
  EXPECT_FALSE(o.validate().ok());
  o = {};
  o.top_p = 0.0f;
  EXPECT_FALSE(o.validate().ok());
  o = {};
  o.min_p = 1.5f;
  EXPECT_FALSE(o.validate().ok());
  o = {};
  o.temperature = NAN;
  EXPECT_FALSE(o.validate().ok());
  EXPECT_TRUE(SamplerOptions{}.validate().ok());
}

// --- Presence and frequency penalties (OpenAI) -------------------------------------------------

SamplerOptions greedy_with(float presence, float frequency) {
  SamplerOptions o;
  o.temperature = 0.0f;
  o.presence_penalty = presence;
  o.frequency_penalty = frequency;
  return o;
}

TEST(SamplerPenalties, PresenceSubtractsOncePerDistinctToken) {
  Sampler s(greedy_with(1.0f, 0.0f));
  std::vector<float> l = {2.0f, 1.5f, 0.9f};
  EXPECT_EQ(s.sample(l.data(), 3), 0);
  s.count_output(0);
  EXPECT_EQ(s.sample(l.data(), 3), 1);  // 2.0 - 1 = 1.0 < 1.5
  s.count_output(0);
  s.count_output(0);
  s.count_output(1);
  // Both counted: 1.0 and 0.5, untouched 0.9 sits between; presence does not grow with count.
  EXPECT_EQ(s.sample(l.data(), 3), 0);
}

TEST(SamplerPenalties, FrequencyGrowsWithCount) {
  Sampler s(greedy_with(0.0f, 0.5f));
  std::vector<float> l = {3.0f, 1.5f};
  int picks_of_0 = 0;
  for (int i = 0; i < 6; ++i) {
    const int32_t t = s.sample(l.data(), 2);
    picks_of_0 += t == 0;
    s.count_output(t);
  }
  // 0 four times (3.0 - 0.5 n >= 1.5 for n <= 3; ties go to the lower id), then 1 (1.0 < 1.5),
  // then 0 again (1.0 == 1.0).
  EXPECT_EQ(picks_of_0, 5);
}

TEST(SamplerPenalties, NegativePenaltiesPromote) {
  Sampler s(greedy_with(-1.0f, -0.25f));
  std::vector<float> l = {1.0f, 1.5f};
  s.count_output(0);
  s.count_output(0);
  EXPECT_EQ(s.sample(l.data(), 2), 0);  // 1.0 + 1 + 0.5 = 2.5 > 1.5
}

TEST(SamplerPenalties, AppliedBeforeRepeatPenalty) {
  // presence first: (4 - 1) / 2 = 1.5 > 1.25; repeat first would give 4 / 2 - 1 = 1.0 < 1.25.
  SamplerOptions o = greedy_with(1.0f, 0.0f);
  o.repeat_penalty = 2.0f;
  Sampler s(o);
  std::vector<float> l = {4.0f, 1.25f};
  s.accept(0);
  s.count_output(0);
  EXPECT_EQ(s.sample(l.data(), 2), 0);
}

TEST(SamplerPenalties, LogitsUntouchedAndResetClears) {
  Sampler s(greedy_with(2.0f, 2.0f));
  std::vector<float> l = {2.0f, 1.0f};
  const std::vector<float> copy = l;
  s.count_output(0);
  s.count_output(7);   // outside this vocab: ignored
  s.count_output(-1);  // never a token: ignored
  EXPECT_EQ(s.sample(l.data(), 2), 1);
  EXPECT_EQ(l, copy);
  s.reset();
  EXPECT_EQ(s.sample(l.data(), 2), 0);
}

TEST(SamplerPenalties, OffByDefault) {
  SamplerOptions o;
  o.temperature = 0.0f;
  Sampler s(o);
  std::vector<float> l = {2.0f, 1.0f};
  for (int i = 0; i < 10; ++i) s.count_output(0);
  EXPECT_EQ(s.sample(l.data(), 2), 0);
}

// Sampling with penalties at temperature 1 follows softmax of the penalized logits.
TEST(SamplerPenalties, DrawsFollowPenalizedSoftmax) {
  SamplerOptions o;
  o.temperature = 1.0f;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.min_p = 0.0f;
  o.presence_penalty = 0.5f;
  o.frequency_penalty = 0.25f;
  o.seed = 3;
  Sampler s(o);
  s.count_output(2);
  s.count_output(2);  // logit 2: 2 - 0.5 - 0.5 = 1
  std::vector<float> l = {0.0f, 1.0f, 2.0f};
  std::map<int, int> n;
  const int N = 30000;
  for (int i = 0; i < N; ++i) n[s.sample(l.data(), 3)]++;
  const double z = 1 + 2 * std::exp(1.0);
  EXPECT_NEAR(n[0] / double(N), 1 / z, 0.01);
  EXPECT_NEAR(n[1] / double(N), std::exp(1.0) / z, 0.01);
  EXPECT_NEAR(n[2] / double(N), std::exp(1.0) / z, 0.01);
}

TEST(SamplerPenalties, ValidateRange) {
  SamplerOptions o;
  o.presence_penalty = 2.0f;
  o.frequency_penalty = -2.0f;
  EXPECT_TRUE(o.validate().ok());
  o.presence_penalty = 2.01f;
  EXPECT_FALSE(o.validate().ok());
  o = {};
  o.frequency_penalty = -2.5f;
  Status st = o.validate();
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("frequency"), std::string::npos) << st.error().message;
  o = {};
  o.presence_penalty = NAN;
  EXPECT_FALSE(o.validate().ok());
}

}  // namespace
}  // namespace peregrine
