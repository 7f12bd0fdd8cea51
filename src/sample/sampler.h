// Token sampling: penalties -> top-k -> top-p -> min-p -> temperature -> draw.
// Seeded and deterministic: the same seed and logits give the same token.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "core/status.h"

namespace peregrine {

struct SamplerOptions {
  float temperature = 0.8f;   // 0 = greedy
  int32_t top_k = 40;         // 0 = off
  float top_p = 0.95f;        // 1 = off
  float min_p = 0.05f;        // 0 = off
  float repeat_penalty = 1.0f;  // 1 = off (CTRL-style: divide positive logits, multiply negative)
  int32_t repeat_last_n = 64;
  uint64_t seed = 0;

  Status validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& opt);
  // Picks a token from logits[n_vocab]. The logits are not modified.
  int32_t sample(const float* logits, int64_t n_vocab);
  // Tokens seen so far (prompt and output) feed the repetition penalty.
  void accept(int32_t token);
  void reset();

 private:
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
};

}  // namespace peregrine
