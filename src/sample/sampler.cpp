#include "sample/sampler.h"

#include <algorithm>
#include <cmath>

namespace peregrine {

Status SamplerOptions::validate() const {
  if (!(temperature >= 0.0f && temperature <= 100.0f))
    return make_error("--temp {} is out of range (0 to 100)", temperature);
  if (top_k < 0) return make_error("--top-k {} is negative", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) return make_error("--top-p {} is out of range (0, 1]", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) return make_error("--min-p {} is out of range [0, 1]", min_p);
  if (!(repeat_penalty > 0.0f && repeat_penalty <= 100.0f))
    return make_error("--repeat-penalty {} is out of range (0, 100]", repeat_penalty);
  if (repeat_last_n < 0) return make_error("--repeat-last-n {} is negative", repeat_last_n);
  if (!(presence_penalty >= -2.0f && presence_penalty <= 2.0f))
    return make_error("--presence-penalty {} is out of range [-2, 2]", presence_penalty);
  if (!(frequency_penalty >= -2.0f && frequency_penalty <= 2.0f))
    return make_error("--frequency-penalty {} is out of range [-2, 2]", frequency_penalty);
  return Status::Ok();
}

Sampler::Sampler(const SamplerOptions& opt) : opt_(opt), rng_(opt.seed) {
  recent_.reserve(size_t(std::max(0, opt.repeat_last_n)));
  seen_.reserve(recent_.capacity());
  if (opt.presence_penalty != 0.0f || opt.frequency_penalty != 0.0f) out_counts_.reserve(256);
}

void Sampler::reset() {
  rng_.seed(opt_.seed);
  recent_.clear();
  head_ = 0;
  out_counts_.clear();  // keeps its capacity
}

void Sampler::count_output(int32_t token) {
  if (opt_.presence_penalty == 0.0f && opt_.frequency_penalty == 0.0f) return;
  for (auto& [id, n] : out_counts_) {
    if (id == token) {
      ++n;
      return;
    }
  }
  out_counts_.emplace_back(token, 1);
}

void Sampler::accept(int32_t token) {
  if (opt_.repeat_last_n == 0) return;
  if (recent_.size() < size_t(opt_.repeat_last_n)) {
    recent_.push_back(token);  // within the reserved capacity
  } else {
    recent_[head_] = token;  // overwrite the oldest
    head_ = (head_ + 1) % recent_.size();
  }
}

size_t Sampler::prepare(const float* logits, int64_t n_vocab, double& sum) {
  cand_.resize(size_t(n_vocab));
  // Room for every candidate's probability at once: how many survive the cuts varies from token
  // to token, and growing to each new largest would allocate mid-generation.
  if (probs_.capacity() < size_t(n_vocab)) probs_.reserve(size_t(n_vocab));
  for (int64_t i = 0; i < n_vocab; ++i) cand_[i] = {int32_t(i), logits[i]};
  for (const auto& [id, n] : out_counts_) {
    if (id < 0 || id >= n_vocab) continue;
    cand_[size_t(id)].logit -= opt_.presence_penalty + opt_.frequency_penalty * float(n);
  }
  if (opt_.repeat_penalty != 1.0f) {
    // Each distinct recent token is penalised once.
    seen_.assign(recent_.begin(), recent_.end());
    std::sort(seen_.begin(), seen_.end());
    seen_.erase(std::unique(seen_.begin(), seen_.end()), seen_.end());
    for (int32_t id : seen_) {
      if (id < 0 || id >= n_vocab) continue;
      float& l = cand_[size_t(id)].logit;
      l = l > 0 ? l / opt_.repeat_penalty : l * opt_.repeat_penalty;
    }
  }
  // Ties break toward the lower id, so greedy is well defined.
  auto better = [](const Candidate& a, const Candidate& b) {
    return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
  };
  if (opt_.temperature <= 0.0f) {
    std::iter_swap(cand_.begin(), std::min_element(cand_.begin(), cand_.end(), better));
    probs_.assign(1, 1.0f);
    sum = 1.0;
    return 1;
  }

  // Only as much of the vocabulary is put in order as the cuts look at: a full sort of ~50k
  // candidates per token would cost more than a batched decode step of the model.
  float mx = -INFINITY;
  for (const Candidate& c : cand_) mx = std::max(mx, c.logit);
  size_t n = cand_.size();
  bool sorted = false;  // cand_[0, n) most likely first
  if (opt_.top_k > 0 && size_t(opt_.top_k) < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + opt_.top_k, cand_.end(), better);
    n = size_t(opt_.top_k);
    sorted = true;
  }
  // Probabilities at temperature 1 decide the top-p and min-p cuts; temperature
  // then reshapes what is left (the order llama.cpp's default chain uses too).
  double mass = 0.0;  // of the candidates left
  for (size_t i = 0; i < n; ++i) mass += std::exp(double(cand_[i].logit - mx));
  if (opt_.top_p < 1.0f) {
    if (!sorted) {
      // Sort a head of the candidates, growing it until it holds top_p of the mass.
      for (size_t head = std::min<size_t>(n, 64);; head = std::min(n, head * 8)) {
        std::partial_sort(cand_.begin(), cand_.begin() + std::ptrdiff_t(head), cand_.begin() + std::ptrdiff_t(n), better);
        double acc = 0.0;
        for (size_t i = 0; i < head; ++i) acc += std::exp(double(cand_[i].logit - mx));
        if (acc >= double(opt_.top_p) * mass || head == n) break;
      }
      sorted = true;
    }
    double acc = 0.0;
    for (size_t i = 0; i < n; ++i) {
      acc += std::exp(double(cand_[i].logit - mx)) / mass;
      if (acc >= opt_.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  if (opt_.min_p > 0.0f) {
    // Keep tokens with p >= min_p * p_max, i.e. logit >= max + log(min_p).
    const float floor = mx + std::log(opt_.min_p);
    if (sorted) {
      size_t keep = 1;
      while (keep < n && cand_[keep].logit >= floor) ++keep;
      n = keep;
    } else {
      n = size_t(std::partition(cand_.begin(), cand_.begin() + std::ptrdiff_t(n),
                                [floor](const Candidate& c) { return c.logit >= floor; }) -
                 cand_.begin());
    }
  }
  probs_.resize(n);
  sum = 0.0;
  for (size_t i = 0; i < n; ++i)
    sum += (probs_[i] = std::exp((cand_[i].logit - mx) / opt_.temperature));
  return n;
}

double Sampler::uniform() {
  // Our own mapping of the generator's bits: std distributions differ across libraries.
  return double(rng_() >> 11) * (1.0 / 9007199254740992.0);
}

int32_t Sampler::sample(const float* logits, int64_t n_vocab) {
  double sum = 0.0;
  const size_t n = prepare(logits, n_vocab, sum);
  if (opt_.temperature <= 0.0f) return cand_[0].id;  // greedy draws nothing
  double u = uniform() * sum;
  for (size_t i = 0; i < n; ++i) {
    u -= probs_[i];
    if (u < 0.0) return cand_[i].id;
  }
  return cand_[n - 1].id;
}

void Sampler::distribution(const float* logits, int64_t n_vocab, TokenDist& out) {
  double sum = 0.0;
  const size_t n = prepare(logits, n_vocab, sum);
  out.resize(n);
  for (size_t i = 0; i < n; ++i) out[i] = {cand_[i].id, float(double(probs_[i]) / sum)};
}

}  // namespace peregrine
