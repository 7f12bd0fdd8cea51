#include "engine/spec/draft_policy.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

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
  if (max < 1 || max > 64) return make_error("--draft-max {} is out of range (1 to 64)", max);
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
}

double StepCost::seconds(int64_t n) const {
  n = std::clamp<int64_t>(n, 1, kMaxTokens);
  if (n_measured_ == 0) return 1.0 + 0.1 * double(n - 1);
  if (ema_[size_t(n)] > 0.0) return ema_[size_t(n)];
  int64_t lo = n - 1, hi = n + 1;
  while (lo >= 1 && ema_[size_t(lo)] == 0.0) --lo;
  while (hi <= kMaxTokens && ema_[size_t(hi)] == 0.0) ++hi;
  if (lo >= 1 && hi <= kMaxTokens) {
    const double t = double(n - lo) / double(hi - lo);
    return ema_[size_t(lo)] + t * (ema_[size_t(hi)] - ema_[size_t(lo)]);
  }
  if (lo < 1) return ema_[size_t(hi)];  // below the smallest measured: no cheaper than it
  // Past the largest: the slope between the two largest measured, at least 0.
  int64_t lo2 = lo - 1;
  while (lo2 >= 1 && ema_[size_t(lo2)] == 0.0) --lo2;
  const double slope =
      lo2 >= 1 ? std::max(0.0, (ema_[size_t(lo)] - ema_[size_t(lo2)]) / double(lo - lo2)) : 0.1 * ema_[size_t(lo)];
  return ema_[size_t(lo)] + slope * double(n - lo);
}

// ---- DraftPolicy ---------------------------------------------------------------------------

void DraftPolicy::begin(const StepCost& cost, int64_t base_tokens, int64_t base_yield, double draft_seconds) {
  cost_ = &cost;
  base_tokens_ = std::max<int64_t>(1, base_tokens);
  value_ = cost.seconds(base_tokens_) / double(std::max<int64_t>(1, base_yield));
  draft_seconds_ = draft_seconds;
  p_all_ = 1.0;
  predicted_step_ = 0.0;
}

bool DraftPolicy::pays(int32_t j, double p_all) const {
  const double extra = cost_->seconds(base_tokens_ + j) - cost_->seconds(base_tokens_ + j - 1);
  return p_all * value_ >= std::max(0.0, extra) + draft_seconds_;
}

bool DraftPolicy::worth_drafting() const {
  return cfg_.policy != DraftPolicyKind::Dynamic || pays(1, acceptance());
}

bool DraftPolicy::go_on(int32_t j, float confidence) {
  if (j > cfg_.max) return false;
  switch (cfg_.policy) {
    case DraftPolicyKind::Fixed: return true;
    case DraftPolicyKind::PMin: return confidence < 0.0f || confidence >= cfg_.p_min;
    case DraftPolicyKind::Dynamic: break;
  }
  if (confidence < 0.0f) {
    p_all_ = std::pow(acceptance(), double(j));
  } else {
    // The draft's own probabilities, scaled by how its predictions have fared.
    p_all_ *= double(confidence);
    const double calib = (seen_ + 1.0) / (predicted_ + 1.0);
    const double p = std::min(1.0, p_all_ * calib);
    if (!pays(j, p)) return false;
    predicted_step_ += p;
    return true;
  }
  return pays(j, p_all_);
}

int32_t DraftPolicy::cut(int32_t n_drafted) {
  int32_t n = std::min(n_drafted, cfg_.max);
  if (cfg_.policy == DraftPolicyKind::Dynamic) {
    int32_t keep = 0;
    while (keep < n && pays(keep + 1, std::pow(acceptance(), double(keep + 1)))) ++keep;
    n = keep;
  }
  return n < cfg_.min ? 0 : n;
}

void DraftPolicy::record(int32_t drafted, int32_t accepted) {
  constexpr double kDecay = 0.95;
  acc_ = kDecay * acc_ + accepted;
  tried_ = kDecay * tried_ + accepted + (accepted < drafted ? 1 : 0);
  if (predicted_step_ > 0.0) {
    seen_ = kDecay * seen_ + accepted;
    predicted_ = kDecay * predicted_ + predicted_step_;
  }
  predicted_step_ = 0.0;
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
