// How many tokens to draft, step by step.
//
//   fixed    always up to --draft-max.
//   pmin     a model drafter stops at the first token it gives less than --draft-p-min
//            (llama.cpp's --draft-p-min); otherwise as fixed.
//   dynamic  (the default) drafts token j only while it pays: accepting it saves one step of
//            the target, worth v = (cost of the step without drafts) / (tokens that step
//            yields), and it costs the step's extra time per draft token, Δc(j) = (c(base + j)
//            - c(base)) / j, plus the drafting time d. Token j is drafted while P(j) · v >= Δc(j) + d, where P(j) is the
//            chance that the first j draft tokens are all accepted: the product of each
//            token's acceptance rate as observed in this sequence for draft tokens of its
//            confidence band (a model drafter) or of its place in the draft (a drafter without
//            probabilities). The costs come from StepCost, measured on this machine and model as the
//            generation runs. This is the "dynamic speculation length" idea (e.g. DISCO,
//            Mamou et al. 2024; SpecDec++, Huang et al. 2024) with a cost model instead of a
//            trained classifier. With many sequences in a step (a server under load) the step
//            is compute-bound, Δc approaches v and drafting stops by itself.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "engine/spec/drafter.h"

namespace peregrine {

enum class DraftPolicyKind { Fixed, PMin, Dynamic };
std::optional<DraftPolicyKind> parse_draft_policy(std::string_view name);
std::string_view draft_policy_name(DraftPolicyKind k);

struct DraftConfig {
  DraftPolicyKind policy = DraftPolicyKind::Dynamic;
  int32_t max = 8;       // most tokens drafted per step (1..64)
  int32_t min = 0;       // a draft shorter than this is not verified
  float p_min = 0.75f;   // pmin: stop at a draft token below this probability
  Status validate() const;
};

// Seconds a step takes as a function of the tokens in it: an exponential moving average per
// token count, made non-decreasing by isotonic regression (pool-adjacent-violators, weighted
// by how often each count was measured: the true cost does not fall as tokens are added, and
// measurements that say so are noise, averaged away rather than trusted), interpolated
// between counts measured and extrapolated linearly past the largest.
class StepCost {
 public:
  static constexpr int64_t kMaxTokens = 512;
  void record(int64_t n_tokens, double seconds);
  // Seconds for n tokens (n >= 1); before anything is measured, a guess in units of one
  // token's step (1 + 0.1 (n - 1)).
  double seconds(int64_t n) const;
  bool measured() const { return n_measured_ > 0; }

 private:
  void refit() const;
  std::vector<double> ema_ = std::vector<double>(kMaxTokens + 1, 0.0);  // 0: not measured
  std::vector<double> weight_ = std::vector<double>(kMaxTokens + 1, 0.0);  // measurements, capped
  int64_t n_measured_ = 0;
  // The isotonic fit at the measured counts (0 elsewhere), recomputed after a record.
  mutable std::vector<double> fit_ = std::vector<double>(kMaxTokens + 1, 0.0);
  mutable bool dirty_ = false;
};

// One sequence's draft-length state: its acceptance record and the policy's decisions.
class DraftPolicy {
 public:
  explicit DraftPolicy(const DraftConfig& cfg) : cfg_(cfg) {}

  // Starts a step: the step without drafts would hold base_tokens tokens yielding
  // base_yield (one sequence: 1 and 1); other sequences' drafts already add `others` tokens
  // to it (this draft's tokens are priced on top of theirs); `cost` prices steps,
  // `draft_seconds` a draft token.
  void begin(const StepCost& cost, int64_t base_tokens, int64_t base_yield, double draft_seconds,
             int64_t others = 0);
  // Whether drafting can pay at all this step (dynamic: a first token at the best observed
  // acceptance rate; a drafter that runs a model is not asked when it cannot). Rates drift
  // back towards their prior while nothing is drafted, so drafting is tried again later.
  bool worth_drafting() const;
  // Whether to keep draft token j (1-based) given the draft's confidence in it (-1: none),
  // and so draft the next.
  bool go_on(int32_t j, float confidence);
  // The drafter's tokens as the policy keeps them (a drafter without confidences proposes
  // freely; the policy cuts its draft here). Returns the length to verify (0: none).
  int32_t cut(int32_t n_drafted);
  // Asks the drafter for req.tokens' next tokens (go_on decides after each) and keeps what the
  // policy allows: a drafter without confidences proposes freely and cut() shortens its draft;
  // a model draft shorter than --draft-min is dropped. Call after begin().
  Status draft(Drafter& drafter, const DraftRequest& req, Draft& out);
  // The step verified a draft with these confidences (empty: none) and accepted the first
  // `accepted` of its `drafted` tokens.
  void record(std::span<const float> confidence, int32_t drafted, int32_t accepted);

  // Observed chance that a draft token is accepted after its predecessors were, overall.
  double acceptance() const { return rate(kAll); }
  const DraftConfig& config() const { return cfg_; }

 private:
  // Acceptance is tracked per band: for a draft with confidences, per band of the draft's
  // confidence (histogram calibration: a draft model's probabilities are informative but not
  // calibrated; two quantizations of one model agree far more often than the draft's
  // probability says); for a draft without, per position in the draft (1, 2, 3, 4 and later:
  // n-gram drafts come in bursts, a copied span is either not taken at all or taken for many
  // tokens, so the chance of the next token given the previous ones were accepted grows along
  // the draft); and overall. Each rate is the chance that a token is accepted given that the
  // ones before it were. Counts decay by 0.97 per verified step, so recent steps weigh most.
  static constexpr int kConfBands = 4, kPosBands = 4;
  static constexpr int kPos = kConfBands, kAll = kConfBands + kPosBands, kRates = kAll + 1;
  // The band of draft token j (1-based) with this confidence (-1: none).
  static int band(int32_t j, float confidence);
  double rate(int b) const;
  bool pays(int32_t j, double p_all) const;

  DraftConfig cfg_;
  double acc_[kRates] = {}, tried_[kRates] = {};
  // The current step.
  const StepCost* cost_ = nullptr;
  int64_t base_tokens_ = 1, others_ = 0;
  double value_ = 0.0, draft_seconds_ = 0.0;
  double p_all_ = 1.0;  // P(the draft tokens so far are all accepted)
  // Steps since anything was drafted. After explore_after_ of them a step drafts one token
  // whatever the estimates say, so a wrong cost or a stale acceptance rate is measured again
  // instead of stopping speculation for good. The wait starts at 16 steps and doubles (to 512)
  // each time the estimates still say no after exploring, so a sequence that never gains (a
  // server step that is compute-bound) wastes ever less; a draft that pays resets it.
  static constexpr int32_t kExploreFirst = 16, kExploreMax = 512;
  int32_t idle_steps_ = 0;
  int32_t explore_after_ = kExploreFirst;
  bool explored_ = false;  // the last draft was an exploration
  bool explore_ = false;
};

// Counters of speculation, summed over steps (the CLI timing line, /metrics).
struct SpecStats {
  int64_t steps = 0;       // target forward passes while generating
  int64_t drafted = 0;     // draft tokens verified
  int64_t accepted = 0;    // of those, accepted
  int64_t generated = 0;   // tokens generated
  // One step that verified `drafted` tokens, accepted `accepted` of them and generated
  // `generated` tokens in all.
  void count(int64_t drafted_, int64_t accepted_, int64_t generated_) {
    steps += 1;
    drafted += drafted_;
    accepted += accepted_;
    generated += generated_;
  }
  void add(const SpecStats& o);
  // "96 drafted, 80 accepted (83.3%), 40 steps, 3.20 tokens/step"
  std::string describe() const;
};

}  // namespace peregrine
