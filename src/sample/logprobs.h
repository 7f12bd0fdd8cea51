// Log-probabilities of tokens for the API's "logprobs" option: the chosen token's and the
// top_k most likely, from the model's raw logits (before any penalty, truncation or
// temperature, as OpenAI reports them).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace peregrine {

struct TokenLogprobs {
  int32_t token = -1;
  float logprob = 0.0f;
  std::vector<std::pair<int32_t, float>> top;  // (token id, logprob), most likely first
};

// log_softmax(logits)[chosen] and the top_k highest entries (ties toward the lower id;
// top_k is clamped to 0..n_vocab). The normalizer is computed in double after subtracting the
// maximum, so huge logits do not overflow and -inf logits give -inf. NaN counts as -inf; if
// every logit is -inf the distribution is taken as uniform, and if some are +inf those share
// all the probability. out.top keeps its capacity: no allocation once it has grown to top_k.
// Requires n_vocab > 0 and 0 <= chosen < n_vocab.
void compute_logprobs(const float* logits, int64_t n_vocab, int32_t chosen, int32_t top_k,
                      TokenLogprobs& out);

}  // namespace peregrine
