#include "engine/spec/draft_policy.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "kv/kv_cache.h"

namespace peregrine {

std::optional<DraftPolicyKind> parse_draft_policy(std::string_view name) {
  if (name == "fixed") return DraftPolicyKind::Fixed;
  if (name == "pmin") return DraftPolicyKind::PMin;
  if (name == "dynamic") return DraftPolicyKind::Dynamic;
  return std::nullopt;
}

std::string_view draft_policy_name(DraftPolicyKind k) {
  switch (k) {
    case DraftPolicyKind::Fixed: return "fixed";
    case DraftPolicyKind::PMin: return "pmin";
    case DraftPolicyKind::Dynamic: return "dynamic";
  }
  return "?";
}

Status DraftConfig::validate() const {
  if (max < 1 || max > kMaxDraftTokens)
    return make_error("--draft-max {} is out of range (1 to {})", max, kMaxDraftTokens);
  if (min < 0 || min > max) return make_error("--draft-min {} is out of range (0 to --draft-max {})", min, max);
  if (!(p_min >= 0.0f && p_min <= 1.0f)) return make_error("--draft-p-min {} is out of range [0, 1]", p_min);
  return Status::Ok();
}

// ---- StepCost ------------------------------------------------------------------------------

void StepCost::record(int64_t n_tokens, double seconds) {
  if (n_tokens < 1 || n_tokens > kMaxTokens || !(seconds > 0.0) || !std::isfinite(seconds)) return;
  double& e = ema_[size_t(n_tokens)];
  if (e == 0.0) {
    e = seconds;
    ++n_measured_;
  } else {
    e += 0.2 * (seconds - e);
  }
  weight_[size_t(n_tokens)] = std::min(weight_[size_t(n_tokens)] + 1.0, 32.0);
  dirty_ = true;
}

void StepCost::refit() const {
  // Pool adjacent violators: blocks of consecutive measured counts with their weighted mean;
  // a block whose mean is below its predecessor's merges into it.
  struct Block {
    double sum, weight;
    int64_t first, last;  // token counts covered
  };
  std::vector<Block> blocks;
  for (int64_t n = 1; n <= kMaxTokens; ++n) {
    if (ema_[size_t(n)] == 0.0) continue;
    blocks.push_back({ema_[size_t(n)] * weight_[size_t(n)], weight_[size_t(n)], n, n});
    while (blocks.size() > 1) {
      Block& b = blocks[blocks.size() - 1];
      Block& a = blocks[blocks.size() - 2];
      if (a.sum / a.weight <= b.sum / b.weight) break;
      a = {a.sum + b.sum, a.weight + b.weight, a.first, b.last};
      blocks.pop_back();
    }
  }
  std::fill(fit_.begin(), fit_.end(), 0.0);
  for (const Block& b : blocks)
    for (int64_t n = b.first; n <= b.last; ++n)
      if (ema_[size_t(n)] > 0.0) fit_[size_t(n)] = b.sum / b.weight;
  dirty_ = false;
}

double StepCost::seconds(int64_t n) const {
  n = std::clamp<int64_t>(n, 1, kMaxTokens);
  if (n_measured_ == 0) return 1.0 + 0.1 * double(n - 1);
  if (dirty_) refit();
  const std::vector<double>& f = fit_;
  if (f[size_t(n)] > 0.0) return f[size_t(n)];
  int64_t lo = n - 1, hi = n + 1;
  while (lo >= 1 && f[size_t(lo)] == 0.0) --lo;
  while (hi <= kMaxTokens && f[size_t(hi)] == 0.0) ++hi;
  if (lo >= 1 && hi <= kMaxTokens) {
    const double t = double(n - lo) / double(hi - lo);
    return f[size_t(lo)] + t * (f[size_t(hi)] - f[size_t(lo)]);
  }
  if (lo < 1) return f[size_t(hi)];  // below the smallest measured: no cheaper than it
  // Past the largest: the slope between the two largest measured (0 or more: the fit is
  // non-decreasing); with one point, a tenth of it per token.
  int64_t lo2 = lo - 1;
  while (lo2 >= 1 && f[size_t(lo2)] == 0.0) --lo2;
  const double slope = lo2 >= 1 ? (f[size_t(lo)] - f[size_t(lo2)]) / double(lo - lo2) : 0.1 * f[size_t(lo)];
  return f[size_t(lo)] + slope * double(n - lo);
}

// ---- DraftPolicy ---------------------------------------------------------------------------

void DraftPolicy::begin(const StepCost& cost, int64_t base_tokens, int64_t base_yield, double draft_seconds,
                        int64_t others) {
  others_ = std::max<int64_t>(0, others);
  cost_ = &cost;
  explore_ = cfg_.policy == DraftPolicyKind::Dynamic && idle_steps_ >= explore_after_;
  base_tokens_ = std::max<int64_t>(1, base_tokens);
  value_ = cost.seconds(base_tokens_) / double(std::max<int64_t>(1, base_yield));
  draft_seconds_ = draft_seconds;
  p_all_ = 1.0;
}

int DraftPolicy::band(int32_t j, float confidence) {
  if (confidence < 0.0f) return kPos + std::clamp(j - 1, 0, kPosBands - 1);
  if (confidence < 0.3f) return 0;
  if (confidence < 0.6f) return 1;
  if (confidence < 0.9f) return 2;
  return 3;
}

double DraftPolicy::rate(int b) const {
  // Overall: a prior of 1/2 worth two tokens. A band: the overall rate as its prior, so a
  // band that has seen nothing yet is tried at the sequence's usual rate.
  const double prior = b == kAll ? 0.5 : rate(kAll);
  return (acc_[b] + 2.0 * prior) / (tried_[b] + 2.0);
}

bool DraftPolicy::pays(int32_t j, double p_all) const {
  // The step's extra time per draft token so far: an average over j tokens, which measured
  // costs (noisy, not quite monotone) price more steadily than one token's difference.
  const int64_t from = base_tokens_ + others_;
  const double extra = (cost_->seconds(from + j) - cost_->seconds(from)) / double(j);
  return p_all * value_ >= std::max(0.0, extra) + draft_seconds_;
}

bool DraftPolicy::worth_drafting() const {
  if (cfg_.policy != DraftPolicyKind::Dynamic || explore_) return true;
  // The first token's best case: its position band, or the best confidence band.
  double best = rate(kPos);
  for (int b = 0; b < kConfBands; ++b) best = std::max(best, rate(b));
  return pays(1, best);
}

bool DraftPolicy::go_on(int32_t j, float confidence) {
  if (j > cfg_.max) return false;
  switch (cfg_.policy) {
    case DraftPolicyKind::Fixed: return true;
    case DraftPolicyKind::PMin: return confidence < 0.0f || confidence >= cfg_.p_min;
    case DraftPolicyKind::Dynamic: break;
  }
  p_all_ *= rate(band(j, confidence));
  return (explore_ && j == 1) || pays(j, p_all_);
}

int32_t DraftPolicy::cut(int32_t n_drafted) {
  int32_t n = std::min(n_drafted, cfg_.max);
  if (cfg_.policy == DraftPolicyKind::Dynamic) {
    double p = 1.0;
    int32_t keep = 0;
    while (keep < n && pays(keep + 1, p *= rate(band(keep + 1, -1.0f)))) ++keep;
    n = explore_ ? std::max(keep, std::min(n, 1)) : keep;
  }
  return n < cfg_.min ? 0 : n;
}

Status DraftPolicy::draft(Drafter& drafter, const DraftRequest& req, Draft& out) {
  PG_TRY(drafter.propose(req, [this](int32_t j, float c) { return go_on(j, c); }, out));
  out.truncate(out.confidence.empty() ? cut(out.size()) : (out.size() < cfg_.min ? 0 : out.size()));
  return Status::Ok();
}

void DraftPolicy::record(std::span<const float> confidence, int32_t drafted, int32_t accepted) {
  constexpr double kDecay = 0.97;
  if (drafted > 0) {
    // An exploration is one forced token; a draft the estimates chose resets the wait.
    explore_after_ = explore_ ? explore_after_ : kExploreFirst;
    explored_ = explore_;
    idle_steps_ = 0;
  } else {
    if (explored_) explore_after_ = std::min(2 * explore_after_, kExploreMax);  // still no: wait longer
    explored_ = false;
    ++idle_steps_;
  }
  for (int b = 0; b < kRates; ++b) {
    acc_[b] *= kDecay;
    tried_[b] *= kDecay;
  }
  // Tokens 1..accepted were accepted; token accepted + 1 (if drafted) was rejected; later
  // ones were never judged.
  const int32_t judged = std::min(drafted, accepted + 1);
  for (int32_t i = 0; i < judged; ++i) {
    const int b = band(i + 1, size_t(i) < confidence.size() ? confidence[size_t(i)] : -1.0f);
    const double ok = i < accepted ? 1.0 : 0.0;
    acc_[b] += ok;
    tried_[b] += 1.0;
    acc_[kAll] += ok;
    tried_[kAll] += 1.0;
  }
}

// ---- SpecStats ------------------------------------------------------------------------------

void SpecStats::add(const SpecStats& o) {
  steps += o.steps;
  drafted += o.drafted;
  accepted += o.accepted;
  generated += o.generated;
}

std::string SpecStats::describe() const {
  const double rate = drafted > 0 ? 100.0 * double(accepted) / double(drafted) : 0.0;
  const double per_step = steps > 0 ? double(generated) / double(steps) : 0.0;
  return fmt::format("{} drafted, {} accepted ({:.1f}%), {} steps, {:.2f} tokens/step", drafted, accepted, rate,
                     steps, per_step);
}

}  // namespace peregrine
