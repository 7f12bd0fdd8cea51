// Token sampling: penalties -> top-k -> top-p -> min-p -> temperature -> draw.
// Seeded and deterministic: the same seed and logits give the same token.
//
// Two kinds of penalty, applied in this order:
//   presence/frequency (OpenAI's definition): over the tokens generated so far (count_output),
//     logit[t] -= presence_penalty * (count[t] > 0) + frequency_penalty * count[t];
//   repetition (CTRL): over the last repeat_last_n accepted tokens (prompt and output).
#pragma once

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

#include "core/status.h"

namespace peregrine {

// A sparse distribution over tokens: (token id, probability) pairs.
using TokenDist = std::vector<std::pair<int32_t, float>>;

struct SamplerOptions {
  float temperature = 0.8f;   // 0 = greedy
  int32_t top_k = 40;         // 0 = off
  float top_p = 0.95f;        // 1 = off
  float min_p = 0.05f;        // 0 = off
  float repeat_penalty = 1.0f;  // 1 = off (CTRL-style: divide positive logits, multiply negative)
  int32_t repeat_last_n = 64;
  float presence_penalty = 0.0f;   // 0 = off; -2 to 2
  float frequency_penalty = 0.0f;  // 0 = off; -2 to 2
  uint64_t seed = 0;

  Status validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& opt);
  // Picks a token from logits[n_vocab]. The logits are not modified.
  int32_t sample(const float* logits, int64_t n_vocab);
  // The distribution sample() draws from (penalties, cuts and temperature applied), as
  // (token, probability) pairs summing to 1; greedy: the argmax with probability 1. Draws
  // nothing from the generator.
  void distribution(const float* logits, int64_t n_vocab, TokenDist& out);
  // The next uniform draw in [0, 1) from the sampler's generator (speculative sampling's
  // accept/reject decisions share the sequence's seeded stream).
  double uniform();
  // Tokens seen so far (prompt and output) feed the repetition penalty.
  void accept(int32_t token);
  // A generated token (not the prompt's) feeds the presence and frequency penalties. Call it
  // besides accept() for every sampled token; a no-op while both penalties are 0.
  void count_output(int32_t token);
  // Back to the state after construction: reseeded, no accepted or counted tokens.
  void reset();

 private:
  // Penalties and cuts into cand_[0, n) with unnormalised probabilities probs_[0, n) (sum in
  // `sum`); greedy: n = 1, the argmax first.
  size_t prepare(const float* logits, int64_t n_vocab, double& sum);
  struct Candidate {
    int32_t id;
    float logit;
  };
  SamplerOptions opt_;
  std::mt19937_64 rng_;
  // The last repeat_last_n accepted tokens, a ring: recent_[(head_ + i) % size].
  std::vector<int32_t> recent_;
  size_t head_ = 0;
  // Buffers reused across calls: sampling allocates nothing once they have grown.
  std::vector<Candidate> cand_;
  std::vector<float> probs_;
  std::vector<int32_t> seen_;
  // How often each distinct generated token occurred, in first-seen order. Searched linearly:
  // it holds at most one entry per distinct output token, and sample() walks it anyway.
  std::vector<std::pair<int32_t, int32_t>> out_counts_;  // (token id, count)
};

}  // namespace peregrine
