// Speculative sampling without a model: Sampler::distribution against sample(), and the
// min(1, p/q) rule in SequenceState checked statistically against the target distribution.
//
// Statistical tests use fixed seeds (so they are deterministic) and a chi-square test whose
// false-failure rate is 1e-6 for a correct implementation; each also checks that the same
// counts reject a wrong distribution, so the test has the power to fail.

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <bit>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/sequence.h"
#include "engine/spec/draft_policy.h"
#include "engine/spec/ngram_drafter.h"
#include "engine/spec/spec_options.h"
#include "sample/sampler.h"

namespace peregrine {
namespace {

// ---- statistics helpers ----------------------------------------------------------------------

// Regularized upper incomplete gamma Q(a, x) (series below a + 1, continued fraction above;
// Numerical Recipes' gser/gcf).
double gamma_q(double a, double x) {
  if (x <= 0.0) return 1.0;
  const double front = std::exp(-x + a * std::log(x) - std::lgamma(a));
  if (x < a + 1.0) {
    double ap = a, del = 1.0 / a, sum = del;
    for (int n = 0; n < 10000; ++n) {
      ap += 1.0;
      del *= x / ap;
      sum += del;
      if (std::fabs(del) < std::fabs(sum) * 1e-16) break;
    }
    return std::max(0.0, 1.0 - sum * front);
  }
  constexpr double kTiny = 1e-300;
  double b = x + 1.0 - a, c = 1.0 / kTiny, d = 1.0 / b, h = d;
  for (int i = 1; i < 10000; ++i) {
    const double an = -double(i) * (double(i) - a);
    b += 2.0;
    d = an * d + b;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = b + an / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1.0 / d;
    const double del = d * c;
    h *= del;
    if (std::fabs(del - 1.0) < 1e-16) break;
  }
  return front * h;
}

constexpr double kAlpha = 1e-6;  // false-failure rate of every statistical check here

// Pearson's chi-square p-value of observed counts against expected probabilities. Cells
// expected to hold fewer than 5 counts are pooled into one (the chi-square approximation needs
// it); a count in a cell of probability 0 fails outright (p = 0).
double chi2_pvalue(const std::vector<int64_t>& counts, const std::vector<double>& probs) {
  int64_t n = 0;
  for (int64_t c : counts) n += c;
  double stat = 0.0, pooled_e = 0.0, pooled_o = 0.0;
  int cells = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (probs[i] <= 0.0) {
      if (counts[i] > 0) return 0.0;
      continue;
    }
    const double e = double(n) * probs[i];
    if (e < 5.0) {
      pooled_e += e;
      pooled_o += double(counts[i]);
      continue;
    }
    stat += (double(counts[i]) - e) * (double(counts[i]) - e) / e;
    ++cells;
  }
  if (pooled_e > 0.0) {
    stat += (pooled_o - pooled_e) * (pooled_o - pooled_e) / pooled_e;
    ++cells;
  }
  return cells < 2 ? 1.0 : gamma_q(0.5 * (cells - 1), 0.5 * stat);
}

TEST(Statistics, ChiSquareHelperMatchesTables) {
  // Known quantiles: chi2(2) survival is exp(-x/2); chi2(7) at 14.067 and chi2(63) at 82.529 are
  // the 5% points, chi2(7) at 24.322 the 0.1% point.
  EXPECT_NEAR(gamma_q(1.0, 5.0), std::exp(-5.0), 1e-12);
  EXPECT_NEAR(gamma_q(3.5, 14.067 / 2), 0.05, 2e-4);
  EXPECT_NEAR(gamma_q(31.5, 82.529 / 2), 0.05, 2e-4);
  EXPECT_NEAR(gamma_q(3.5, 24.322 / 2), 0.001, 2e-5);
}

// Draws an index from probabilities (inverse CDF) with the test's own generator.
int draw(const std::vector<double>& p, std::mt19937_64& rng) {
  double u = double(rng() >> 11) * (1.0 / 9007199254740992.0);
  for (size_t i = 0; i < p.size(); ++i) {
    u -= p[i];
    if (u < 0.0) return int(i);
  }
  for (size_t i = p.size(); i-- > 0;)
    if (p[i] > 0.0) return int(i);
  return 0;
}

// ---- Sampler::distribution -------------------------------------------------------------------

SamplerOptions plain(uint64_t seed) {
  SamplerOptions o;
  o.temperature = 1.0f;
  o.top_k = 0;
  o.top_p = 1.0f;
  o.min_p = 0.0f;
  o.seed = seed;
  return o;
}

std::vector<float> spread_logits(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<float> l(static_cast<size_t>(n));
  for (float& x : l) x = float(double(rng() >> 11) * (1.0 / 9007199254740992.0) * 6.0 - 3.0);
  return l;
}

TEST(SamplerDistribution, SumsToOneAndItsSupportIsWhatSampleReturns) {
  struct Case {
    float temp;
    int32_t top_k;
    float top_p, min_p, repeat, presence;
  };
  const Case cases[] = {{1.0f, 0, 1.0f, 0.0f, 1.0f, 0.0f},  {0.7f, 5, 1.0f, 0.0f, 1.0f, 0.0f},
                        {1.3f, 0, 0.8f, 0.0f, 1.0f, 0.0f},  {0.9f, 0, 1.0f, 0.2f, 1.0f, 0.0f},
                        {0.8f, 40, 0.95f, 0.05f, 1.3f, 0.8f}};
  for (const Case& c : cases) {
    SamplerOptions o = plain(11);
    o.temperature = c.temp;
    o.top_k = c.top_k;
    o.top_p = c.top_p;
    o.min_p = c.min_p;
    o.repeat_penalty = c.repeat;
    o.presence_penalty = c.presence;
    const int64_t V = 60;
    const std::vector<float> l = spread_logits(V, 5);
    Sampler s(o);
    for (int32_t t : {3, 17, 17, 40}) {  // penalties in play where the case has them
      s.accept(t);
      s.count_output(t);
    }
    TokenDist dist;
    s.distribution(l.data(), V, dist);
    ASSERT_FALSE(dist.empty());
    double sum = 0.0;
    std::vector<double> probs(size_t(V), 0.0);
    std::set<int32_t> ids;
    for (const auto& [id, p] : dist) {
      ASSERT_GE(id, 0);
      ASSERT_LT(id, V);
      EXPECT_GT(p, 0.0f);
      sum += p;
      probs[size_t(id)] = p;
      ids.insert(id);
    }
    EXPECT_EQ(ids.size(), dist.size()) << "a token listed twice";
    EXPECT_NEAR(sum, 1.0, 1e-5);
    if (c.top_k > 0) {
      EXPECT_LE(dist.size(), size_t(c.top_k));
    }
    // Draws land only in the support and follow it (chi-square); distribution() drew nothing,
    // so the sampler's stream is where it was.
    std::vector<int64_t> counts(size_t(V), 0);
    const int N = 40000;
    for (int i = 0; i < N; ++i) counts[size_t(s.sample(l.data(), V))]++;
    std::set<int32_t> drawn;
    for (int64_t i = 0; i < V; ++i)
      if (counts[size_t(i)] > 0) drawn.insert(int32_t(i));
    for (int32_t id : drawn) EXPECT_TRUE(ids.count(id)) << "sample() returned " << id << ", outside distribution()";
    for (const auto& [id, p] : dist) {
      if (p > 1e-3f) {
        EXPECT_TRUE(drawn.count(id)) << "token " << id << " (p " << p << ") never drawn";
      }
    }
    EXPECT_GT(chi2_pvalue(counts, probs), kAlpha) << "temp " << c.temp << " top_k " << c.top_k;
    // Power: the same counts against the raw softmax (no cuts, no temperature, no penalties)
    // are rejected, for every case that changes it.
    if (&c != &cases[0]) {
      std::vector<double> raw(static_cast<size_t>(V));
      double z = 0.0;
      for (int64_t i = 0; i < V; ++i) z += (raw[size_t(i)] = std::exp(double(l[size_t(i)])));
      for (double& r : raw) r /= z;
      EXPECT_LT(chi2_pvalue(counts, raw), kAlpha) << "temp " << c.temp << " top_k " << c.top_k;
    }
    EXPECT_LT(chi2_pvalue(counts, std::vector<double>(size_t(V), 1.0 / double(V))), kAlpha);
  }
}

TEST(SamplerDistribution, GreedyIsTheArgmaxWithProbabilityOne) {
  SamplerOptions o = plain(1);
  o.temperature = 0.0f;
  Sampler s(o);
  const std::vector<float> l = {0.1f, 3.0f, -1.0f, 3.0f, 2.9f};
  TokenDist d;
  s.distribution(l.data(), 5, d);
  ASSERT_EQ(d.size(), 1u);
  EXPECT_EQ(d[0].first, 1);  // ties go to the lower id
  EXPECT_EQ(d[0].second, 1.0f);
  EXPECT_EQ(s.sample(l.data(), 5), 1);
}

TEST(SamplerDistribution, DrawingFromItWithUniformIsSample) {
  // sample() == walking distribution() with one uniform(): the same use of the generator,
  // token for token, over changing logits and penalties.
  SamplerOptions o = plain(99);
  o.temperature = 0.9f;
  o.top_k = 30;
  o.top_p = 0.9f;
  o.min_p = 0.01f;
  o.repeat_penalty = 1.1f;
  o.frequency_penalty = 0.4f;
  Sampler a(o), b(o);
  TokenDist d;
  for (int i = 0; i < 3000; ++i) {
    const std::vector<float> l = spread_logits(200, uint64_t(i));
    const int32_t ta = a.sample(l.data(), 200);
    b.distribution(l.data(), 200, d);
    double u = b.uniform();
    int32_t tb = d.back().first;
    for (const auto& [id, p] : d) {
      u -= p;
      if (u < 0.0) {
        tb = id;
        break;
      }
    }
    ASSERT_EQ(ta, tb) << "draw " << i;
    for (Sampler* s : {&a, &b}) {
      s->accept(ta);
      s->count_output(ta);
    }
  }
  // One generator draw per sampled token, mapped as 53 bits / 2^53: uniform() after n draws is
  // the generator's (n + 1)-th output.
  Sampler c(plain(5));
  std::mt19937_64 ref(5);
  const std::vector<float> l = spread_logits(10, 1);
  for (int i = 0; i < 17; ++i) (void)c.sample(l.data(), 10);
  ref.discard(17);
  EXPECT_EQ(c.uniform(), double(ref() >> 11) * (1.0 / 9007199254740992.0));
  // Greedy draws nothing.
  SamplerOptions g = plain(5);
  g.temperature = 0.0f;
  Sampler e(g);
  for (int i = 0; i < 5; ++i) (void)e.sample(l.data(), 10);
  std::mt19937_64 ref2(5);
  EXPECT_EQ(e.uniform(), double(ref2() >> 11) * (1.0 / 9007199254740992.0));
}

TEST(SamplerDistribution, SampleStreamUnchangedByTheRefactor) {
  // Tokens from the sampler before distribution()/uniform() were split out of sample()
  // (commit 6d300b8), for these options, seeds and logits: the same seed must keep giving the
  // same text.
  struct Case {
    float temp;
    int32_t top_k;
    float top_p, min_p, rep, pres, freq;
    uint64_t seed;
    int vocab;
    std::vector<int32_t> want;
  };
  const Case cases[] = {
      {0.8f, 40, 0.95f, 0.05f, 1.0f, 0.0f, 0.0f, 42, 100,
       {70, 62, 12, 54, 95, 64, 87, 79, 68, 10, 52, 88, 51, 77, 16, 60, 0,  89, 31, 52, 17, 12, 6,  77,
        95, 37, 31, 57, 54, 33, 6,  64, 24, 63, 21, 96, 96, 96, 59, 72, 61, 74, 84, 68, 89, 15, 75, 72}},
      {1.3f, 0, 1.0f, 0.0f, 1.2f, 0.5f, 0.0f, 7, 64,
       {44, 59, 11, 54, 9,  1,  55, 57, 13, 41, 49, 36, 22, 19, 55, 21, 63, 62, 52, 15, 38, 16, 3, 3,
        8,  12, 18, 21, 37, 41, 29, 1,  21, 49, 31, 60, 39, 17, 11, 48, 8,  40, 42, 23, 0,  33, 20, 6}},
      {0.5f, 5, 1.0f, 0.0f, 1.0f, 0.0f, 0.3f, 99, 300,
       {89,  128, 272, 46,  232, 182, 158, 24, 55,  165, 175, 20,  101, 216, 6,   163,
        244, 160, 102, 70,  151, 253, 140, 179, 45, 84,  241, 26,  188, 75,  12,  229,
        19,  252, 21,  249, 44,  154, 298, 261, 111, 48, 184, 92,  0,   23,  201, 235}},
      {1.0f, 0, 0.7f, 0.02f, 1.0f, 0.0f, 0.0f, 3, 5000,
       {3995, 4459, 2644, 2589, 4337, 3962, 1964, 4622, 2223, 2063, 3287, 2699, 274,  863,  4927, 1563,
        1935, 4640, 3735, 1905, 602,  1079, 2206, 638,  3120, 4554, 2611, 4388, 33,   2581, 2201, 2903,
        4245, 2664, 3956, 883,  2660, 1415, 2940, 730,  2221, 3836, 97,   4593, 1911, 1774, 4951, 25}},
  };
  for (const Case& c : cases) {
    SamplerOptions o;
    o.temperature = c.temp;
    o.top_k = c.top_k;
    o.top_p = c.top_p;
    o.min_p = c.min_p;
    o.repeat_penalty = c.rep;
    o.presence_penalty = c.pres;
    o.frequency_penalty = c.freq;
    o.seed = c.seed;
    Sampler s(o);
    std::vector<float> l(size_t(c.vocab));
    std::vector<int32_t> got;
    for (int step = 0; step < 48; ++step) {
      // Exact integer arithmetic: no libm differences between machines.
      for (int i = 0; i < c.vocab; ++i) l[size_t(i)] = 0.05f * float((i * 37 + step * 11 + (i * i) % 13) % 97);
      const int32_t t = s.sample(l.data(), c.vocab);
      s.accept(t);
      s.count_output(t);
      got.push_back(t);
    }
    EXPECT_EQ(got, c.want) << "seed " << c.seed;
  }
}

// ---- speculative sampling in SequenceState ----------------------------------------------------

constexpr int64_t kVocab = 8;

TokenText no_end() {
  return {[](TokenId id) { return std::string(1, char('a' + id)); }, [](TokenId) { return false; }};
}

SequenceOptions sampled_seq(uint64_t seed) {
  SequenceOptions o;
  o.sampling = plain(seed);
  return o;
}

// Logits whose softmax at temperature 1 is p (every p > 0).
std::vector<float> logits_of(const std::vector<double>& p) {
  std::vector<float> l;
  for (double x : p) l.push_back(float(std::log(x)));
  return l;
}

TokenDist dist_of(const std::vector<double>& q) {
  TokenDist d;
  for (size_t i = 0; i < q.size(); ++i)
    if (q[i] > 0.0) d.emplace_back(int32_t(i), float(q[i]));
  return d;
}

// The target p and a different draft q (q gives 0 to tokens 4 and 7, which p does not: the
// residual alone must produce them).
const std::vector<double> kP = {0.30, 0.05, 0.20, 0.02, 0.15, 0.08, 0.12, 0.08};
const std::vector<double> kQ = {0.05, 0.30, 0.10, 0.25, 0.00, 0.10, 0.20, 0.00};

double overlap(const std::vector<double>& p, const std::vector<double>& q) {
  double s = 0.0;
  for (size_t i = 0; i < p.size(); ++i) s += std::min(p[i], q[i]);
  return s;
}

// A rate seen `hits` times in n trials is within 5.5 standard deviations of `want`
// (two-sided false-failure rate below 1e-7).
void expect_rate(int64_t hits, int64_t n, double want, const char* what) {
  const double rate = double(hits) / double(n), sd = std::sqrt(want * (1.0 - want) / double(n));
  EXPECT_NEAR(rate, want, 5.5 * sd) << what;
}

TEST(SpeculativeSampling, FirstTokenIsDistributedAsTheTargetAndAcceptanceIsTheOverlap) {
  const int N = 20000;
  const std::vector<float> row0 = logits_of(kP);
  const std::vector<float> row1 = logits_of({0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.2, 0.2});
  std::vector<float> rows = row0;
  rows.insert(rows.end(), row1.begin(), row1.end());
  const std::vector<TokenDist> dists = {dist_of(kQ)};
  std::mt19937_64 draft_rng(4321);
  std::vector<int64_t> first(kVocab, 0), via_residual(kVocab, 0);
  int64_t accepted = 0;
  for (int t = 0; t < N; ++t) {
    SequenceState s(sampled_seq(1000 + uint64_t(t)), no_end(), kVocab);
    s.set_prompt(std::vector<TokenId>{1});
    const std::vector<TokenId> draft = {TokenId(draw(kQ, draft_rng))};
    std::vector<SequenceState::Emitted> out;
    const SequenceState::StepResult r = s.step(rows.data(), 2, draft, out, INT64_MAX, dists);
    ASSERT_FALSE(r.finished);
    ASSERT_EQ(size_t(r.accepted), out.size());
    ASSERT_EQ(r.accepted, r.draft_accepted + 1);  // every accepted draft gets the bonus row too
    first[size_t(out[0].token)]++;
    if (r.draft_accepted == 1) {
      ++accepted;
      ASSERT_EQ(out[0].token, draft[0]);
    } else {
      ASSERT_NE(out[0].token, draft[0]);  // a rejected draft token is never the residual's draw
      via_residual[size_t(out[0].token)]++;
    }
  }
  EXPECT_GT(chi2_pvalue(first, kP), kAlpha);
  EXPECT_LT(chi2_pvalue(first, kQ), kAlpha);  // power: the draft's own distribution is rejected
  expect_rate(accepted, N, overlap(kP, kQ), "acceptance = sum_x min(p(x), q(x))");
  // The residual max(0, p - q), normalised, is what rejections draw from.
  std::vector<double> residual(kVocab);
  double z = 0.0;
  for (int64_t i = 0; i < kVocab; ++i) z += (residual[size_t(i)] = std::max(0.0, kP[size_t(i)] - kQ[size_t(i)]));
  for (double& x : residual) x /= z;
  EXPECT_GT(chi2_pvalue(via_residual, residual), kAlpha);
}

// Target p1(y | x) and draft q1(y | x): the second token's distributions depend on the first.
std::vector<double> rotated(const std::vector<double>& base, int shift) {
  std::vector<double> r(base.size());
  for (size_t i = 0; i < base.size(); ++i) r[(i + size_t(shift)) % base.size()] = base[i];
  return r;
}
std::vector<double> p1_of(TokenId x) { return rotated({0.25, 0.04, 0.18, 0.03, 0.2, 0.1, 0.12, 0.08}, 3 * x); }
std::vector<double> q1_of(TokenId x) { return rotated({0.0, 0.3, 0.2, 0.2, 0.0, 0.1, 0.1, 0.1}, 5 * x); }

TEST(SpeculativeSampling, TwoTokenDraftGivesTheTargetsJointDistribution) {
  // A 2-token draft d0 ~ q0, d1 ~ q1(. | d0), verified with rows p0, p1(. | d0), p2. The first
  // two tokens of the sequence (taking a plain second step when the first step emits only one)
  // must be distributed as p0(x0) p1(x1 | x0).
  const int N = 50000;
  const std::vector<double> p2 = {0.125, 0.125, 0.125, 0.125, 0.125, 0.125, 0.125, 0.125};
  std::mt19937_64 draft_rng(99);
  std::vector<int64_t> joint(kVocab * kVocab, 0), per_step(4, 0);
  for (int t = 0; t < N; ++t) {
    SequenceState s(sampled_seq(77777 + uint64_t(t)), no_end(), kVocab);
    s.set_prompt(std::vector<TokenId>{2});
    const TokenId d0 = TokenId(draw(kQ, draft_rng));
    const TokenId d1 = TokenId(draw(q1_of(d0), draft_rng));
    std::vector<float> rows = logits_of(kP);
    for (const auto& p : {p1_of(d0), p2}) {
      const std::vector<float> r = logits_of(p);
      rows.insert(rows.end(), r.begin(), r.end());
    }
    const std::vector<TokenDist> dists = {dist_of(kQ), dist_of(q1_of(d0))};
    std::vector<SequenceState::Emitted> out;
    const SequenceState::StepResult r = s.step(rows.data(), 3, std::vector<TokenId>{d0, d1}, out, INT64_MAX, dists);
    ASSERT_EQ(size_t(r.accepted), out.size());
    per_step[size_t(r.accepted)]++;
    if (out.size() == 1) {  // the second token from the target's own row after x0
      const std::vector<float> next = logits_of(p1_of(out[0].token));
      s.step(next.data(), 1, {}, out);
    }
    ASSERT_GE(out.size(), 2u);
    joint[size_t(out[0].token * kVocab + out[1].token)]++;
  }
  std::vector<double> want(kVocab * kVocab), draft_joint(kVocab * kVocab);
  for (TokenId x = 0; x < kVocab; ++x)
    for (TokenId y = 0; y < kVocab; ++y) {
      want[size_t(x * kVocab + y)] = kP[size_t(x)] * p1_of(x)[size_t(y)];
      draft_joint[size_t(x * kVocab + y)] = kP[size_t(x)] * kP[size_t(y)];  // independence: wrong
    }
  EXPECT_GT(chi2_pvalue(joint, want), kAlpha);
  EXPECT_LT(chi2_pvalue(joint, draft_joint), kAlpha);  // power: ignoring the context is rejected
  // All three outcomes happen: rejection at the first token, at the second, both accepted.
  EXPECT_GT(per_step[1], 1000);
  EXPECT_GT(per_step[2], 1000);
  EXPECT_GT(per_step[3], 1000);
}

TEST(SpeculativeSampling, DraftEqualToTargetIsAlwaysAccepted) {
  // q == p exactly (the draft's distribution computed as the sequence computes p): keep with
  // probability min(1, p/q) = 1.
  const std::vector<float> row = logits_of(kP);
  Sampler same(plain(0));
  TokenDist q;
  same.distribution(row.data(), kVocab, q);
  std::vector<double> qd(kVocab, 0.0);
  for (const auto& [id, p] : q) qd[size_t(id)] = p;
  std::vector<float> rows = row;
  rows.insert(rows.end(), row.begin(), row.end());
  std::mt19937_64 draft_rng(5);
  for (int t = 0; t < 5000; ++t) {
    SequenceState s(sampled_seq(uint64_t(t)), no_end(), kVocab);
    s.set_prompt(std::vector<TokenId>{1});
    std::vector<SequenceState::Emitted> out;
    const TokenId d = TokenId(draw(qd, draft_rng));
    const auto r = s.step(rows.data(), 2, std::vector<TokenId>{d}, out, INT64_MAX, std::vector<TokenDist>{q});
    ASSERT_EQ(r.draft_accepted, 1) << "trial " << t;
  }
}

TEST(SpeculativeSampling, MatchingRuleWithoutDistsIsPlainSampling) {
  // No draft_dists: a deterministic draft token d is kept when the target's own sample equals
  // it, so the first token is exactly plain sampling's with the same seed, distributed as p,
  // and d is accepted at rate p(d).
  const int N = 20000;
  const TokenId d = 2;
  const std::vector<float> row0 = logits_of(kP);
  std::vector<float> rows = row0;
  rows.insert(rows.end(), row0.begin(), row0.end());
  std::vector<int64_t> first(kVocab, 0);
  int64_t accepted = 0;
  for (int t = 0; t < N; ++t) {
    const SequenceOptions o = sampled_seq(555 + uint64_t(t));
    SequenceState s(o, no_end(), kVocab);
    s.set_prompt(std::vector<TokenId>{1});
    std::vector<SequenceState::Emitted> out;
    const auto r = s.step(rows.data(), 2, std::vector<TokenId>{d}, out);
    Sampler alone(o.sampling);
    ASSERT_EQ(out[0].token, alone.sample(row0.data(), kVocab)) << "trial " << t;
    first[size_t(out[0].token)]++;
    accepted += r.draft_accepted;
  }
  EXPECT_GT(chi2_pvalue(first, kP), kAlpha);
  expect_rate(accepted, N, kP[size_t(d)], "matching: acceptance = p(d)");
  // A drawn (not fixed) draft without its dists: still p, acceptance sum_x q(x) p(x).
  std::mt19937_64 draft_rng(8);
  std::fill(first.begin(), first.end(), 0);
  accepted = 0;
  for (int t = 0; t < N; ++t) {
    SequenceState s(sampled_seq(99 + uint64_t(t)), no_end(), kVocab);
    s.set_prompt(std::vector<TokenId>{1});
    std::vector<SequenceState::Emitted> out;
    const auto r = s.step(rows.data(), 2, std::vector<TokenId>{TokenId(draw(kQ, draft_rng))}, out);
    first[size_t(out[0].token)]++;
    accepted += r.draft_accepted;
  }
  double pq = 0.0;
  for (int64_t i = 0; i < kVocab; ++i) pq += kP[size_t(i)] * kQ[size_t(i)];
  EXPECT_GT(chi2_pvalue(first, kP), kAlpha);
  expect_rate(accepted, N, pq, "matching a drawn draft: acceptance = sum_x p(x) q(x)");
}

TEST(SpeculativeSampling, GreedyIgnoresDraftDists) {
  // Greedy keeps a draft token only if it is the argmax, whatever q says: token 1 has 0.40
  // under the softmax and q(1) = 0.4, so min(1, p/q) on the softmax would keep it, but the
  // argmax is token 0.
  SequenceOptions o;
  o.sampling.temperature = 0.0f;
  const std::vector<double> p = {0.45, 0.40, 0.05, 0.02, 0.02, 0.02, 0.02, 0.02};
  const std::vector<float> row = logits_of(p);
  std::vector<float> rows = row;
  rows.insert(rows.end(), row.begin(), row.end());
  const std::vector<TokenDist> dists = {{{1, 0.4f}, {0, 0.6f}}};
  for (int t = 0; t < 50; ++t) {
    o.sampling.seed = uint64_t(t);
    SequenceState s(o, no_end(), kVocab);
    s.set_prompt(std::vector<TokenId>{3});
    std::vector<SequenceState::Emitted> out;
    const auto r = s.step(rows.data(), 2, std::vector<TokenId>{1}, out, INT64_MAX, dists);
    ASSERT_EQ(r.accepted, 1);
    ASSERT_EQ(r.draft_accepted, 0);
    ASSERT_EQ(out[0].token, 0);
  }
  // A draft of the argmax is kept, and the bonus row is greedy too.
  SequenceState s(o, no_end(), kVocab);
  s.set_prompt(std::vector<TokenId>{3});
  std::vector<SequenceState::Emitted> out;
  const auto r = s.step(rows.data(), 2, std::vector<TokenId>{0}, out, INT64_MAX,
                        std::vector<TokenDist>{{{0, 0.01f}, {1, 0.99f}}});
  EXPECT_EQ(r.draft_accepted, 1);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[1].token, 0);
}

}  // namespace
}  // namespace peregrine
