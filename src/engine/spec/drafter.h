// Drafter: proposes tokens that a sequence is likely to continue with, for speculative
// decoding. The target model then checks the whole draft in one forward pass (SequenceState
// keeps what it would have generated itself), so a drafter can only cost time, never change
// the output.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "core/function_ref.h"
#include "core/status.h"
#include "sample/sampler.h"
#include "tokenizer/tokenizer.h"

namespace peregrine {

struct Draft {
  std::vector<TokenId> tokens;
  // The drafter's probability of each token given the ones before it, when it has one (a
  // model); empty when it has none (n-gram lookup).
  std::vector<float> confidence;
  // Empty, or for each token the distribution it was drawn from (a draft model sampling at
  // temperature > 0): SequenceState then uses speculative sampling's min(1, p/q) rule.
  std::vector<TokenDist> dists;

  void clear() {
    tokens.clear();
    confidence.clear();
    dists.clear();
  }
  int32_t size() const { return int32_t(tokens.size()); }
  // Keeps the first n tokens.
  void truncate(int32_t n) {
    if (n >= size()) return;
    tokens.resize(size_t(n));
    if (!confidence.empty()) confidence.resize(size_t(n));
    if (!dists.empty()) dists.resize(size_t(n));
  }
};

// Asked after each drafted token (1-based count j, the draft's confidence in it or -1 when it
// has none): whether to draft one more.
using DraftGoOn = FunctionRef<bool(int32_t j, float confidence)>;

// What a drafter is asked for.
struct DraftRequest {
  // The sequence: prompt and output so far. The target's KV holds tokens[0, n_cached) of
  // sequence slot `seq`; the rest (usually one token) is its next input.
  std::span<const TokenId> tokens;
  int64_t n_cached = 0;
  int64_t seq = 0;
  int32_t max = 0;  // most tokens to propose
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  virtual std::string_view name() const = 0;
  // A new sequence starts with these sampling options: greedy drafts greedily; otherwise a
  // drafter with a distribution samples from it, seeded from the options.
  virtual void begin_sequence(int64_t /*seq*/, const SamplerOptions& /*sampling*/) {}
  // Proposes up to req.max tokens to follow req.tokens into `out` (cleared first), asking
  // go_on after each (a drafter that drafts for free may propose all and leave the cut to
  // the caller); proposing nothing is fine.
  virtual Status propose(const DraftRequest& req, DraftGoOn go_on, Draft& out) = 0;
  // Seconds of drafting per drafted token, measured (0 for a drafter that runs no model).
  virtual double seconds_per_token() const { return 0.0; }
};

}  // namespace peregrine
