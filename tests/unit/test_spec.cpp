// Speculative decoding without a model: n-gram lookup (prompt and history) against brute-force
// references, and the draft-length policy and its step-cost model on made-up costs.

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

// ---- lookup_suffix ---------------------------------------------------------------------------

// The definition, spelled out differently from the implementation: among all (n, j) with
// n_min <= n <= n_max, tokens[j, j + n) equal to the last n tokens and a token after it
// (j + n < L), take the largest n, then the largest j (most recent), and return what follows,
// up to max tokens.
std::optional<std::vector<TokenId>> lookup_reference(const std::vector<TokenId>& t, int n_min, int n_max, int max) {
  const int L = int(t.size());
  std::vector<std::pair<int, int>> matches;  // (n, j)
  for (int n = n_min; n <= n_max; ++n) {
    if (n > L) continue;
    for (int j = 0; j + n < L; ++j) {
      bool eq = true;
      for (int k = 0; k < n; ++k) eq = eq && t[size_t(j + k)] == t[size_t(L - n + k)];
      if (eq) matches.emplace_back(n, j);
    }
  }
  if (matches.empty()) return std::nullopt;
  const auto [n, j] = *std::max_element(matches.begin(), matches.end());
  std::vector<TokenId> out;
  for (int p = j + n; p < L && int(out.size()) < max; ++p) out.push_back(t[size_t(p)]);
  return out;
}

TEST(NgramLookup, MatchesBruteForceOnRandomSequences) {
  std::mt19937_64 rng(2024);
  int found = 0, clipped_by_end = 0, clipped_by_max = 0;
  for (int trial = 0; trial < 4000; ++trial) {
    const int alphabet = 2 + int(rng() % 4);  // small: suffixes recur often
    const int L = int(rng() % 40);
    std::vector<TokenId> t(static_cast<size_t>(L));
    for (TokenId& x : t) x = TokenId(rng() % uint64_t(alphabet));
    const int n_min = 1 + int(rng() % 3), n_max = n_min + int(rng() % 4), max = 1 + int(rng() % 10);
    std::vector<TokenId> out = {777};  // appended to, never cleared
    const bool ok = lookup_suffix(t, n_min, n_max, max, out);
    const auto want = lookup_reference(t, n_min, n_max, max);
    ASSERT_EQ(ok, want.has_value()) << "trial " << trial;
    ASSERT_EQ(out.front(), 777);
    const std::vector<TokenId> got(out.begin() + 1, out.end());
    if (want) {
      ASSERT_EQ(got, *want) << "trial " << trial << " L " << L << " n " << n_min << ".." << n_max << " max " << max;
      ++found;
      if (int(got.size()) == max) ++clipped_by_max;
      else ++clipped_by_end;
    } else {
      ASSERT_TRUE(got.empty());
    }
  }
  // The random cases cover every outcome.
  EXPECT_GT(found, 1000);
  EXPECT_GT(clipped_by_end, 100);
  EXPECT_GT(clipped_by_max, 100);
}

TEST(NgramLookup, PrefersLongerSuffixThenMostRecentAndOverlaps) {
  std::vector<TokenId> out;
  // "5 6" occurs twice, "4 5 6" once (earlier): the longer match wins.
  EXPECT_TRUE(lookup_suffix(std::vector<TokenId>{4, 5, 6, 1, 5, 6, 2, 9, 4, 5, 6}, 2, 4, 3, out));
  EXPECT_EQ(out, (std::vector<TokenId>{1, 5, 6}));
  out.clear();
  // Only a 2-gram: the most recent occurrence.
  EXPECT_TRUE(lookup_suffix(std::vector<TokenId>{5, 6, 1, 5, 6, 2, 9, 5, 6}, 2, 4, 2, out));
  EXPECT_EQ(out, (std::vector<TokenId>{2, 9}));
  out.clear();
  // A repeating pattern: the occurrence may overlap the suffix; the continuation stops at the end.
  EXPECT_TRUE(lookup_suffix(std::vector<TokenId>{3, 3, 3, 3}, 2, 2, 8, out));
  EXPECT_EQ(out, (std::vector<TokenId>{3}));
  out.clear();
  EXPECT_FALSE(lookup_suffix(std::vector<TokenId>{1, 2, 3, 4}, 2, 4, 8, out));
  EXPECT_FALSE(lookup_suffix(std::vector<TokenId>{}, 2, 4, 8, out));
  EXPECT_TRUE(out.empty());
}

// ---- NgramHistory ----------------------------------------------------------------------------

std::vector<TokenId> looked_up(const NgramHistory& h, const std::vector<TokenId>& context, int max = 8) {
  std::vector<TokenId> out;
  h.lookup(context, max, out);
  return out;
}

TEST(NgramHistory, FindsEarlierOutputsButNeverCrossesTheirSeparator) {
  NgramHistory h(1000, 2, 4);
  h.add(std::vector<TokenId>{10, 11, 12, 13, 14});
  h.add(std::vector<TokenId>{20, 21, 22});
  EXPECT_EQ(looked_up(h, {5, 11, 12}), (std::vector<TokenId>{13, 14}));  // stops at the output's end
  EXPECT_EQ(looked_up(h, {99, 12, 13}), (std::vector<TokenId>{14}));
  EXPECT_EQ(looked_up(h, {10, 11}, 2), (std::vector<TokenId>{12, 13}));  // clipped to max
  EXPECT_TRUE(looked_up(h, {13, 14}).empty());       // the end of an output: nothing follows
  EXPECT_TRUE(looked_up(h, {14, 20}).empty());       // never adjacent: a separator lies between
  EXPECT_EQ(looked_up(h, {13, 14, 20, 21}), (std::vector<TokenId>{22}));  // only "20 21" matches
  EXPECT_TRUE(looked_up(h, {1, 2}).empty());
  EXPECT_TRUE(looked_up(h, {12}).empty());  // shorter than n_min
  // The most recent output wins for an n-gram seen twice.
  h.add(std::vector<TokenId>{10, 11, 40, 41});
  EXPECT_EQ(looked_up(h, {10, 11}), (std::vector<TokenId>{40, 41}));
  // The longest indexed suffix wins, else the most recent shorter one.
  h.add(std::vector<TokenId>{7, 10, 11, 50});
  h.add(std::vector<TokenId>{8, 10, 11, 60});
  EXPECT_EQ(looked_up(h, {7, 10, 11}), (std::vector<TokenId>{50}));  // the 3-gram, though older
  EXPECT_EQ(looked_up(h, {3, 10, 11}), (std::vector<TokenId>{60}));  // the most recent 2-gram
  EXPECT_EQ(h.size(), 5 + 1 + 3 + 1 + 4 + 1 + 4 + 1 + 4 + 1);
}

TEST(NgramHistory, EmptyOrZeroCapacityFindsNothing) {
  NgramHistory none(0, 2, 4);
  none.add(std::vector<TokenId>{1, 2, 3});
  EXPECT_TRUE(looked_up(none, {1, 2}).empty());
  EXPECT_EQ(none.bytes(), 0u);
  NgramHistory h(100, 2, 4);
  EXPECT_TRUE(looked_up(h, {1, 2}).empty());
  h.add(std::vector<TokenId>{1, 2, 3});
  EXPECT_TRUE(looked_up(h, {1, 2}, 0).empty());
}

TEST(NgramHistory, AnOutputLongerThanTheRingKeepsItsEnd) {
  NgramHistory h(32, 2, 2);
  std::vector<TokenId> longer;
  for (TokenId t = 100; t < 200; ++t) longer.push_back(t);
  h.add(longer);
  EXPECT_EQ(h.size(), 32);
  EXPECT_TRUE(looked_up(h, {100, 101}).empty());  // long gone
  EXPECT_EQ(looked_up(h, {190, 191}, 3), (std::vector<TokenId>{192, 193, 194}));
  EXPECT_EQ(looked_up(h, {197, 198}), (std::vector<TokenId>{199}));
}

// The history as the ring holds it: each output (its last capacity - 1 tokens when longer) and
// a separator, of which the last `capacity` tokens are retained.
struct HistoryModel {
  int64_t capacity;
  std::vector<TokenId> stream;
  void add(const std::vector<TokenId>& out) {
    if (capacity <= 0 || out.empty()) return;
    size_t from = out.size() >= size_t(capacity) ? out.size() - size_t(capacity - 1) : 0;
    stream.insert(stream.end(), out.begin() + std::ptrdiff_t(from), out.end());
    stream.push_back(-1);
  }
  std::vector<TokenId> retained() const {
    const size_t n = std::min(stream.size(), size_t(capacity));
    return std::vector<TokenId>(stream.end() - std::ptrdiff_t(n), stream.end());
  }
};

// Whether `proposal` is what followed some occurrence of the context's last n tokens
// (n_min <= n <= n_max) in the retained history: the continuation up to max tokens, ending
// early only at a separator or at the end of what was written.
bool is_real_continuation(const std::vector<TokenId>& held, const std::vector<TokenId>& context,
                          const std::vector<TokenId>& proposal, int n_min, int n_max, int max) {
  for (int n = n_min; n <= n_max && n <= int(context.size()); ++n) {
    for (size_t s = 0; s + size_t(n) <= held.size(); ++s) {
      if (!std::equal(context.end() - n, context.end(), held.begin() + std::ptrdiff_t(s))) continue;
      std::vector<TokenId> cont;
      for (size_t p = s + size_t(n); p < held.size() && held[p] != -1 && int(cont.size()) < max; ++p)
        cont.push_back(held[p]);
      if (cont == proposal) return true;
    }
  }
  return false;
}

TEST(NgramHistory, BoundedAndEveryProposalIsARealContinuation) {
  // Small alphabets make n-grams recur with different continuations, small capacities make
  // the ring wrap thousands of times and the table's slots collide (2 slots per token):
  // a stale or colliding entry must never yield tokens that did not follow the n-gram.
  std::mt19937_64 rng(77);
  int64_t proposals = 0, old_lookups_empty = 0;
  for (int config = 0; config < 12; ++config) {
    const int64_t capacity = 17 + int64_t(rng() % 120);
    const int n_min = 1 + int(rng() % 3), n_max = n_min + int(rng() % 3);
    const int alphabet = 3 + int(rng() % 30);
    NgramHistory h(capacity, n_min, n_max);
    HistoryModel model{capacity, {}};
    const size_t bytes = h.bytes();
    EXPECT_EQ(bytes, size_t(capacity) * sizeof(TokenId) + std::bit_ceil(size_t(capacity) * 2) * 16);
    std::vector<std::vector<TokenId>> outputs;
    for (int k = 0; k < 400; ++k) {
      std::vector<TokenId> out(1 + rng() % (k % 50 == 0 ? 3 * uint64_t(capacity) : 30));
      for (TokenId& t : out) t = TokenId(rng() % uint64_t(alphabet));
      h.add(out);
      model.add(out);
      outputs.push_back(out);
      ASSERT_EQ(h.bytes(), bytes);  // memory is fixed at creation
      ASSERT_EQ(h.size(), std::min<int64_t>(capacity, int64_t(model.stream.size())));
      // Contexts: a piece of a recent output, of an old one, and noise.
      const std::vector<TokenId>& recent = outputs[outputs.size() - 1 - rng() % std::min<size_t>(outputs.size(), 3)];
      const std::vector<TokenId>& old = outputs[rng() % outputs.size()];
      std::vector<TokenId> noise(1 + rng() % 6);
      for (TokenId& t : noise) t = TokenId(rng() % uint64_t(alphabet));
      const std::vector<TokenId> held = model.retained();
      const std::vector<TokenId>* sources[] = {&recent, &old, &noise};
      for (const std::vector<TokenId>* src : sources) {
        const size_t end = 1 + rng() % src->size();
        const size_t begin = end > 6 ? end - 6 : 0;
        const std::vector<TokenId> context(src->begin() + std::ptrdiff_t(begin), src->begin() + std::ptrdiff_t(end));
        const int max = 1 + int(rng() % 10);
        const std::vector<TokenId> got = looked_up(h, context, max);
        if (got.empty()) {
          if (src == &old) ++old_lookups_empty;
          continue;
        }
        ++proposals;
        ASSERT_TRUE(is_real_continuation(held, context, got, n_min, n_max, max))
            << "config " << config << " output " << k << ": a proposal that never followed its n-gram";
      }
    }
  }
  EXPECT_GT(proposals, 3000);         // the check above was exercised
  EXPECT_GT(old_lookups_empty, 100);  // and old outputs do fall out of the ring
}

TEST(NgramHistory, OldOutputsAreForgotten) {
  NgramHistory h(64, 2, 3);
  const size_t bytes = h.bytes();
  h.add(std::vector<TokenId>{1000, 1001, 1002, 1003});
  EXPECT_EQ(looked_up(h, {1000, 1001}), (std::vector<TokenId>{1002, 1003}));
  for (int k = 0; k < 500; ++k) h.add(std::vector<TokenId>{TokenId(k % 7), TokenId(k % 5), TokenId(k % 3)});
  EXPECT_TRUE(looked_up(h, {1000, 1001}).empty());
  EXPECT_TRUE(looked_up(h, {1001, 1002}).empty());
  EXPECT_EQ(h.bytes(), bytes);
  EXPECT_EQ(h.size(), 64);
}

TEST(NgramDrafter, PromptLookupFirstThenHistory) {
  auto history = std::make_shared<NgramHistory>(1000, NgramDrafter::kNMin, NgramDrafter::kNMax);
  history->add(std::vector<TokenId>{7, 8, 9, 10, 11});
  NgramDrafter d(history);
  EXPECT_EQ(d.name(), "ngram");
  Draft out;
  auto go_on = [](int32_t, float) { return true; };
  // Nothing to copy from the sequence itself: the history drafts.
  std::vector<TokenId> seq = {1, 2, 3, 7, 8};
  ASSERT_TRUE(d.propose(DraftRequest{seq, 4, 0, 3}, go_on, out).ok());
  EXPECT_EQ(out.tokens, (std::vector<TokenId>{9, 10, 11}));
  EXPECT_TRUE(out.confidence.empty());
  EXPECT_TRUE(out.dists.empty());
  EXPECT_EQ(d.history_drafts(), 1);
  // The sequence repeats itself: its own continuation wins.
  seq = {7, 8, 42, 43, 44, 7, 8};
  ASSERT_TRUE(d.propose(DraftRequest{seq, 6, 0, 2}, go_on, out).ok());
  EXPECT_EQ(out.tokens, (std::vector<TokenId>{42, 43}));
  EXPECT_EQ(d.history_drafts(), 1);
  // max 0: nothing.
  ASSERT_TRUE(d.propose(DraftRequest{seq, 6, 0, 0}, go_on, out).ok());
  EXPECT_TRUE(out.tokens.empty());
  // Without a history, only the sequence.
  NgramDrafter alone;
  seq = {1, 2, 3, 7, 8};
  ASSERT_TRUE(alone.propose(DraftRequest{seq, 4, 0, 3}, go_on, out).ok());
  EXPECT_TRUE(out.tokens.empty());
}

TEST(Draft, TruncateKeepsTheParallelVectorsAligned) {
  Draft d;
  d.tokens = {1, 2, 3, 4};
  d.confidence = {0.9f, 0.8f, 0.7f, 0.6f};
  d.dists = {{{1, 1.0f}}, {{2, 1.0f}}, {{3, 1.0f}}, {{4, 1.0f}}};
  d.truncate(9);
  EXPECT_EQ(d.size(), 4);
  d.truncate(2);
  EXPECT_EQ(d.tokens, (std::vector<TokenId>{1, 2}));
  EXPECT_EQ(d.confidence.size(), 2u);
  EXPECT_EQ(d.dists.size(), 2u);
  d.clear();
  EXPECT_EQ(d.size(), 0);
  EXPECT_TRUE(d.confidence.empty() && d.dists.empty());
}

// ---- StepCost ---------------------------------------------------------------------------------

TEST(StepCost, GuessInterpolateExtrapolate) {
  StepCost c;
  EXPECT_FALSE(c.measured());
  EXPECT_DOUBLE_EQ(c.seconds(1), 1.0);  // the guess, in units of a one-token step
  EXPECT_DOUBLE_EQ(c.seconds(11), 2.0);
  c.record(1, 0.010);
  c.record(5, 0.030);
  EXPECT_TRUE(c.measured());
  EXPECT_DOUBLE_EQ(c.seconds(1), 0.010);
  EXPECT_DOUBLE_EQ(c.seconds(5), 0.030);
  EXPECT_NEAR(c.seconds(3), 0.020, 1e-12);  // linear between measured counts
  EXPECT_NEAR(c.seconds(9), 0.030 + 4 * 0.005, 1e-12);  // past the largest: the last slope
  EXPECT_NEAR(c.seconds(0), 0.010, 1e-12);               // n clamps to 1
  // Moving average: 20% towards each new measurement.
  c.record(5, 0.040);
  EXPECT_NEAR(c.seconds(5), 0.032, 1e-12);
  // Nonsense is ignored.
  c.record(0, 1.0);
  c.record(-3, 1.0);
  c.record(StepCost::kMaxTokens + 1, 1.0);
  c.record(2, 0.0);
  c.record(2, -1.0);
  c.record(2, std::nan(""));
  c.record(2, INFINITY);
  EXPECT_NEAR(c.seconds(2), 0.010 + 0.25 * 0.022, 1e-12);  // still interpolated
}

TEST(StepCost, EdgesOfTheMeasuredRange) {
  StepCost below;
  below.record(4, 0.5);
  EXPECT_DOUBLE_EQ(below.seconds(1), 0.5);                // no cheaper than the smallest measured
  EXPECT_NEAR(below.seconds(6), 0.5 + 2 * 0.05, 1e-12);  // one point: a 10% per-token slope
  StepCost falling;  // measured noise: a larger step timed faster
  falling.record(1, 0.2);
  falling.record(2, 0.1);
  // Pooled (isotonic regression): both counts cost their weighted mean.
  EXPECT_DOUBLE_EQ(falling.seconds(1), 0.15);
  EXPECT_DOUBLE_EQ(falling.seconds(2), 0.15);
  EXPECT_DOUBLE_EQ(falling.seconds(10), 0.15);  // the slope past the largest is 0, never negative
  falling.record(8, 0.15);
  EXPECT_DOUBLE_EQ(falling.seconds(5), 0.15);
  falling.record(6, 0.09);
  // 1, 2 and 6 pool: (0.2 + 0.1 + 0.09) / 3; 8 stays above them.
  EXPECT_NEAR(falling.seconds(1), 0.13, 1e-12);
  EXPECT_NEAR(falling.seconds(5), 0.13, 1e-12);
  EXPECT_NEAR(falling.seconds(8), 0.15, 1e-12);
  EXPECT_NEAR(falling.seconds(7), 0.14, 1e-12);
  // Weights: a count measured more often pulls the pool towards it.
  StepCost weighted;
  for (int i = 0; i < 3; ++i) weighted.record(3, 0.3);  // the EMA stays 0.3, weight 3
  weighted.record(4, 0.1);                                // weight 1
  EXPECT_NEAR(weighted.seconds(3), (3 * 0.3 + 0.1) / 4, 1e-12);
  EXPECT_NEAR(weighted.seconds(4), (3 * 0.3 + 0.1) / 4, 1e-12);
}

// ---- DraftPolicy ------------------------------------------------------------------------------

StepCost costs(double (*c)(int64_t)) {
  StepCost s;
  for (int64_t n = 1; n <= 65; ++n) s.record(n, c(n));
  return s;
}

DraftConfig config(DraftPolicyKind k, int32_t max = 8, int32_t min = 0, float p_min = 0.75f) {
  DraftConfig c;
  c.policy = k;
  c.max = max;
  c.min = min;
  c.p_min = p_min;
  return c;
}

// Drafts j = 1, 2, ... while go_on says so: how many it keeps.
int32_t drafted(DraftPolicy& p, float confidence) {
  int32_t j = 1;
  while (j <= 100 && p.go_on(j, confidence)) ++j;
  return j - 1;
}

TEST(DraftPolicy, FixedAndPMin) {
  const StepCost c = costs([](int64_t n) { return 0.01 * double(n); });  // drafting never pays
  DraftPolicy fixed(config(DraftPolicyKind::Fixed, 6));
  fixed.begin(c, 1, 1, 0.0);
  EXPECT_TRUE(fixed.worth_drafting());
  EXPECT_EQ(drafted(fixed, 0.01f), 6);
  EXPECT_EQ(fixed.cut(20), 6);
  EXPECT_EQ(fixed.cut(3), 3);
  for (int i = 0; i < 50; ++i) fixed.record({}, 6, 0);  // history changes nothing
  fixed.begin(c, 1, 1, 0.0);
  EXPECT_EQ(fixed.cut(20), 6);

  DraftPolicy pmin(config(DraftPolicyKind::PMin, 6, 0, 0.75f));
  pmin.begin(c, 1, 1, 0.0);
  EXPECT_TRUE(pmin.worth_drafting());
  EXPECT_TRUE(pmin.go_on(1, 0.8f));
  EXPECT_TRUE(pmin.go_on(2, 0.75f));
  EXPECT_FALSE(pmin.go_on(3, 0.74f));
  EXPECT_EQ(drafted(pmin, 0.99f), 6);   // never past max
  EXPECT_EQ(drafted(pmin, -1.0f), 6);   // no confidence: as fixed
  EXPECT_EQ(pmin.cut(20), 6);
}

TEST(DraftPolicy, DraftMinDropsShortDrafts) {
  const StepCost free_extra = costs([](int64_t) { return 0.01; });
  for (DraftPolicyKind k : {DraftPolicyKind::Fixed, DraftPolicyKind::PMin, DraftPolicyKind::Dynamic}) {
    DraftPolicy p(config(k, 8, 3));
    p.begin(free_extra, 1, 1, 0.0);
    EXPECT_EQ(p.cut(2), 0) << draft_policy_name(k);
    EXPECT_EQ(p.cut(3), 3) << draft_policy_name(k);
    EXPECT_EQ(p.cut(12), 8) << draft_policy_name(k);
  }
}

TEST(DraftPolicy, DynamicDraftsToMaxWhenExtraTokensAreNearlyFreeAndAccepted) {
  // A memory-bound step: 8 more tokens cost 8% more; every draft token has been accepted.
  const StepCost c = costs([](int64_t n) { return 0.010 * (1.0 + 0.01 * double(n - 1)); });
  DraftPolicy p(config(DraftPolicyKind::Dynamic, 8));
  for (int i = 0; i < 60; ++i) p.record({}, 8, 8);
  EXPECT_GT(p.acceptance(), 0.95);
  p.begin(c, 1, 1, 0.0);
  EXPECT_TRUE(p.worth_drafting());
  EXPECT_EQ(p.cut(30), 8);
  p.begin(c, 1, 1, 0.0);
  EXPECT_EQ(drafted(p, -1.0f), 8);
  p.begin(c, 1, 1, 0.0);
  EXPECT_EQ(drafted(p, 0.95f), 8);
  // Drafting time counts: a draft token that costs as much as a target step is not worth it.
  p.begin(c, 1, 1, 0.010);
  EXPECT_FALSE(p.worth_drafting());
  EXPECT_EQ(p.cut(30), 0);
}

TEST(DraftPolicy, DynamicDraftsNothingWhenComputeBound) {
  // c(n) = n c(1): a draft token costs exactly the step it might save, so no acceptance rate
  // below 1 makes it pay, not even a perfect record.
  const StepCost c = costs([](int64_t n) { return 0.004 * double(n); });
  DraftPolicy p(config(DraftPolicyKind::Dynamic, 8));
  for (int round = 0; round < 2; ++round) {
    p.begin(c, 1, 1, 0.0);
    EXPECT_FALSE(p.worth_drafting());
    EXPECT_EQ(p.cut(8), 0);
    p.begin(c, 1, 1, 0.0);
    EXPECT_FALSE(p.go_on(1, 0.99f));
    for (int i = 0; i < 60; ++i) p.record({}, 8, 8);
  }
  // The same record with a base of 16 tokens yielding 16 (a busy server step): also compute-
  // bound, no drafting.
  p.begin(c, 16, 16, 0.0);
  EXPECT_FALSE(p.worth_drafting());
}

TEST(DraftPolicy, DynamicStopsAfterRejectionsAndTriesAgainLater) {
  const StepCost c = costs([](int64_t n) { return 0.010 * (1.0 + 0.05 * double(n - 1)); });
  DraftPolicy p(config(DraftPolicyKind::Dynamic, 8));
  p.begin(c, 1, 1, 0.0);
  ASSERT_TRUE(p.worth_drafting());  // at the prior rate (1/2) drafting pays here
  ASSERT_GT(p.cut(8), 0);
  for (int i = 0; i < 100; ++i) p.record({}, 4, 0);  // every draft rejected at its first token
  EXPECT_LT(p.acceptance(), 0.05);
  p.begin(c, 1, 1, 0.0);
  EXPECT_FALSE(p.worth_drafting());
  EXPECT_EQ(p.cut(8), 0);
  // Steps without drafts decay the record back towards the prior (1/2)...
  for (int i = 0; i < 15; ++i) p.record({}, 0, 0);
  p.begin(c, 1, 1, 0.0);
  EXPECT_FALSE(p.worth_drafting());
  for (int i = 0; i < 300; ++i) p.record({}, 0, 0);
  EXPECT_NEAR(p.acceptance(), 0.5, 0.01);
  // ...and a draft that then pays is drafted at length again.
  p.record({}, 1, 1);  // (a step that drafted: not an exploration step below)
  p.begin(c, 1, 1, 0.0);
  EXPECT_TRUE(p.worth_drafting());
  EXPECT_GT(p.cut(8), 1);
}

TEST(DraftPolicy, DynamicExploresOneTokenAfterIdleStepsWaitingLongerEachTime) {
  // Compute-bound: drafting never pays by the estimates, but after 16 steps without a draft one
  // token is drafted anyway to measure again; while the estimates still say no afterwards, the
  // wait doubles (16, 32, 64, ...), so a sequence that never gains wastes ever less.
  const StepCost c = costs([](int64_t n) { return 0.004 * double(n); });
  DraftPolicy p(config(DraftPolicyKind::Dynamic, 8));
  int32_t wait = 16;
  for (int round = 0; round < 4; ++round, wait *= 2) {
    for (int i = 0; i < wait; ++i) {  // steps with 0..wait-1 idle steps before them
      p.begin(c, 1, 1, 0.0);
      EXPECT_FALSE(p.worth_drafting()) << "round " << round << " idle step " << i;
      EXPECT_EQ(p.cut(8), 0);
      p.record({}, 0, 0);
    }
    p.begin(c, 1, 1, 0.0);
    EXPECT_TRUE(p.worth_drafting()) << "round " << round;
    EXPECT_EQ(p.cut(8), 1);
    EXPECT_EQ(p.cut(0), 0);
    p.begin(c, 1, 1, 0.0);
    EXPECT_TRUE(p.go_on(1, 0.5f));
    EXPECT_FALSE(p.go_on(2, 0.99f));
    p.record({}, 1, round % 2);  // accepted or not: measured, and idle again from 0
  }
}

TEST(DraftPolicy, AnExplorationThatPaysResetsTheWait) {
  // Costs that make drafting pay once the acceptance is known to be high: after the forced
  // token is accepted, the estimates draft by themselves, and the next wait is 16 again.
  StepCost c = costs([](int64_t n) { return 0.004 * double(n); });
  DraftPolicy p(config(DraftPolicyKind::Dynamic, 8));
  for (int i = 0; i < 16; ++i) {
    p.begin(c, 1, 1, 0.0);
    EXPECT_FALSE(p.worth_drafting());
    p.record({}, 0, 0);
  }
  p.begin(c, 1, 1, 0.0);
  EXPECT_EQ(p.cut(8), 1);  // the exploration
  p.record({}, 1, 1);
  const StepCost free = costs([](int64_t n) { return 0.004 + 1e-6 * double(n); });
  p.begin(free, 1, 1, 0.0);
  EXPECT_GT(p.cut(8), 0);  // chosen by the estimates
  p.record({}, 2, 2);
  for (int i = 0; i < 16; ++i) {
    p.begin(c, 1, 1, 0.0);
    EXPECT_FALSE(p.worth_drafting()) << i;
    p.record({}, 0, 0);
  }
  p.begin(c, 1, 1, 0.0);
  EXPECT_TRUE(p.worth_drafting()) << "the wait should be back to 16";
}

TEST(DraftPolicy, DraftMinAppliesToExplorations) {
  const StepCost c = costs([](int64_t n) { return 0.004 * double(n); });
  // draft_min still applies to an exploration step.
  DraftPolicy m(config(DraftPolicyKind::Dynamic, 8, 2));
  for (int i = 0; i < 16; ++i) m.record({}, 0, 0);
  m.begin(c, 1, 1, 0.0);
  EXPECT_EQ(m.cut(8), 0);
}

TEST(DraftPolicy, DynamicLengthFollowsAcceptance) {
  // 10% more time per draft token: token j pays while P(first j accepted) >= 0.1. Drafts of 8
  // with `acc` accepted (then one rejection): the more accepted, the longer the draft.
  const StepCost c = costs([](int64_t n) { return 0.010 * (1.0 + 0.1 * double(n - 1)); });
  std::vector<int32_t> lengths;
  for (int32_t acc : {7, 5, 3, 1, 0}) {
    DraftPolicy p(config(DraftPolicyKind::Dynamic, 8));
    for (int i = 0; i < 100; ++i) p.record({}, 8, acc);
    p.begin(c, 1, 1, 0.0);
    lengths.push_back(p.cut(8));
  }
  EXPECT_EQ(lengths.front(), 8);
  for (size_t i = 1; i < lengths.size(); ++i) EXPECT_LE(lengths[i], lengths[i - 1]) << "accepted " << i;
  EXPECT_EQ(lengths.back(), 0);
}

TEST(DraftPolicy, DynamicRatesDraftsWithoutConfidencePerPosition) {
  // N-gram drafts whose first `acc` tokens are always accepted and the next always rejected:
  // rated per position in the draft, the policy keeps exactly those `acc` (one overall rate,
  // ~acc/(acc+1) per token, would keep more or fewer).
  const StepCost c = costs([](int64_t n) { return 0.010 * (1.0 + 0.1 * double(n - 1)); });
  for (int32_t acc : {1, 2, 3}) {
    DraftPolicy p(config(DraftPolicyKind::Dynamic, 8));
    for (int i = 0; i < 100; ++i) p.record({}, 8, acc);
    p.begin(c, 1, 1, 0.0);
    EXPECT_EQ(p.cut(8), acc) << "accepted " << acc << " of 8";
    p.begin(c, 1, 1, 0.0);
    EXPECT_EQ(drafted(p, -1.0f), acc) << "accepted " << acc << " of 8";
  }
}

TEST(DraftPolicy, DynamicTracksAcceptancePerConfidenceBand) {
  // Confident draft tokens were always accepted, unconfident ones always rejected: the policy
  // keeps drafting through the first and stops at the second.
  const StepCost c = costs([](int64_t n) { return 0.010 * (1.0 + 0.1 * double(n - 1)); });
  DraftPolicy p(config(DraftPolicyKind::Dynamic, 8));
  const std::vector<float> conf = {0.95f, 0.95f, 0.1f, 0.1f};
  for (int i = 0; i < 100; ++i) p.record(conf, 4, 2);
  p.begin(c, 1, 1, 0.0);
  EXPECT_TRUE(p.worth_drafting());
  EXPECT_TRUE(p.go_on(1, 0.95f));
  EXPECT_TRUE(p.go_on(2, 0.97f));
  EXPECT_FALSE(p.go_on(3, 0.1f));
  p.begin(c, 1, 1, 0.0);
  EXPECT_FALSE(p.go_on(1, 0.2f));
}

// ---- options ------------------------------------------------------------------------------------

void expect_error_naming(const Status& s, const std::string& flag) {
  ASSERT_FALSE(s.ok()) << "accepted; expected an error naming " << flag;
  EXPECT_NE(s.error().message.find(flag), std::string::npos) << s.error().message;
}

TEST(SpecOptions, ValidateRejectsOutOfRangeWithTheFlag) {
  DraftConfig d;
  EXPECT_TRUE(d.validate().ok());
  d.max = 0;
  expect_error_naming(d.validate(), "--draft-max");
  d.max = 65;
  expect_error_naming(d.validate(), "--draft-max");
  d.max = 64;
  EXPECT_TRUE(d.validate().ok());
  d.max = 4;
  d.min = 5;
  expect_error_naming(d.validate(), "--draft-min");
  d.min = -1;
  expect_error_naming(d.validate(), "--draft-min");
  d.min = 4;
  EXPECT_TRUE(d.validate().ok());
  for (float p : {-0.01f, 1.01f, std::nanf("")}) {
    d.p_min = p;
    expect_error_naming(d.validate(), "--draft-p-min");
  }
  d.p_min = 0.0f;
  EXPECT_TRUE(d.validate().ok());

  SpecOptions s;
  EXPECT_TRUE(s.validate().ok());
  EXPECT_FALSE(s.enabled());
  s.kind = SpecKind::Draft;
  expect_error_naming(s.validate(), "-md");
  s.draft_model = "draft.gguf";
  EXPECT_TRUE(s.validate().ok());
  s.kind = SpecKind::Ngram;
  expect_error_naming(s.validate(), "-md");
  s.draft_model.clear();
  EXPECT_TRUE(s.validate().ok());
  s.draft_layers = 3;
  expect_error_naming(s.validate(), "--draft-layers");
  s.kind = SpecKind::LayerSkip;
  EXPECT_TRUE(s.validate().ok());
  s.draft_layers = -1;
  expect_error_naming(s.validate(), "--draft-layers");
  s.draft_layers = 0;
  s.draft.max = 100;
  expect_error_naming(s.validate(), "--draft-max");
}

TEST(SpecOptions, NamesRoundTrip) {
  for (SpecKind k : {SpecKind::None, SpecKind::Ngram, SpecKind::Draft, SpecKind::LayerSkip})
    EXPECT_EQ(parse_spec_kind(spec_kind_name(k)), k);
  for (DraftPolicyKind k : {DraftPolicyKind::Fixed, DraftPolicyKind::PMin, DraftPolicyKind::Dynamic})
    EXPECT_EQ(parse_draft_policy(draft_policy_name(k)), k);
  EXPECT_FALSE(parse_spec_kind("bogus").has_value());
  EXPECT_FALSE(parse_spec_kind("").has_value());
  EXPECT_FALSE(parse_draft_policy("Dynamic").has_value());
}

TEST(SpecStats, Describe) {
  SpecStats a{40, 96, 80, 128};
  EXPECT_EQ(a.describe(), "96 drafted, 80 accepted (83.3%), 40 steps, 3.20 tokens/step");
  SpecStats none;
  EXPECT_EQ(none.describe(), "0 drafted, 0 accepted (0.0%), 0 steps, 0.00 tokens/step");
  a.add(SpecStats{1, 4, 2, 3});
  EXPECT_EQ(a.steps, 41);
  EXPECT_EQ(a.drafted, 100);
  EXPECT_EQ(a.accepted, 82);
  EXPECT_EQ(a.generated, 131);
}

}  // namespace
}  // namespace peregrine
