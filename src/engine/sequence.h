// SequenceState: everything one generated sequence carries between forward passes, and the
// one place where sampled tokens become output, for the CLI (Session) and the server
// (Scheduler) alike: token history, the sampler with its RNG and penalty counts, the stop
// strings, the streaming UTF-8 decoder, logprobs, the length limit, end-of-generation
// tokens, and a slot for a token constraint.
//
// A step hands it rows of logits: row 0 is the distribution of the next token after the
// sequence's tokens; row i (i >= 1) the distribution after those tokens plus draft[0..i). It
// samples row 0; while the sample equals the draft token at that place it goes on to the next
// row. Every sample is a draw from the target model's own distribution at its true context,
// so the accepted tokens are exactly those of one-at-a-time generation with the same seed
// (greedy or not); the first sample that differs from the draft is kept and ends the step.
// With one row and no draft this is plain decoding.
//
// A draft that was itself sampled (a draft model at temperature > 0) can come with the
// distributions q its tokens were drawn from: then each draft token d is kept with
// probability min(1, p(d)/q(d)) and a rejection draws from the residual max(0, p - q)
// (standard speculative sampling). The output is still distributed exactly as the target's,
// and more draft tokens survive than by matching samples, but it is no longer the same
// token stream as unspeculated generation with the same seed. For a deterministic draft
// (q one-hot) the two rules coincide in distribution, so matching is used.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "engine/stop_matcher.h"
#include "sample/logprobs.h"
#include "sample/sampler.h"
#include "tokenizer/tokenizer.h"

namespace peregrine {

// What a sequence needs to know about tokens: their bytes and which end generation.
struct TokenText {
  std::function<std::string(TokenId)> bytes;
  std::function<bool(TokenId)> is_end_of_generation;
  static TokenText of(const Tokenizer& tok);
};

enum class FinishReason { Stop, Length, Cancelled, Error };
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled", "error"

// Restricts which tokens may come next (grammars, JSON schemas, catalogues plug in here).
class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  // Sets logits of tokens that may not come next to -inf (row [n_vocab]).
  virtual void mask(float* logits, int64_t n_vocab) const = 0;
  // The same set as a bitmask: bit t % 32 of words[t / 32] is set when token t may come next
  // (words: [(n_vocab + 31) / 32]; the layout of xgrammar's and llguidance's token bitmasks).
  virtual void allowed_tokens(uint32_t* words, int64_t n_vocab) const = 0;
  // The token was emitted; false if it was not allowed (the sequence then ends with an error).
  virtual bool advance(TokenId token) = 0;
  // Whether generation may end here (end-of-generation tokens are masked otherwise).
  virtual bool complete() const = 0;
};

struct SequenceOptions {
  SamplerOptions sampling;
  int64_t max_tokens = -1;     // -1: no limit (the caller ends it at the context)
  std::vector<std::string> stop;  // stop strings, never emitted
  int32_t top_logprobs = -1;   // -1: no logprobs; k >= 0: the chosen token's and the top k
  bool ignore_eos = false;     // end-of-generation tokens are ordinary tokens (benchmarks)
  // Makes each sequence's constraint (a grammar, a catalogue; empty: none). A factory, so that
  // every choice of a request (n > 1) gets its own matcher.
  std::function<std::unique_ptr<TokenConstraint>()> constraint;
};

class SequenceState {
 public:
  SequenceState(const SequenceOptions& opt, const TokenText& text, int64_t n_vocab);

  // The prompt: the sequence's first tokens (they feed the repetition penalty).
  void set_prompt(std::span<const TokenId> prompt);
  void set_constraint(std::unique_ptr<TokenConstraint> c) { constraint_ = std::move(c); }

  // One accepted token, as the API and the CLI report it.
  struct Emitted {
    TokenId token = -1;
    std::string text;            // text that became safe to show (may be empty)
    bool has_logprobs = false;
    TokenLogprobs logprobs;
  };
  struct StepResult {
    int32_t accepted = 0;        // tokens appended to tokens() (each in `out`)
    int32_t draft_accepted = 0;  // of those, how many equalled the draft
    bool finished = false;
    FinishReason reason = FinishReason::Stop;
    std::string tail;            // when finished: held-back text to show last
  };
  // rows [n_rows, n_vocab] with n_rows = draft.size() + 1 (see the header comment); appends
  // the accepted tokens' output to `out`. `room`: how many more tokens the sequence may take
  // before its context is full (the step ends with Length when it is used up).
  // draft_dists: empty, or for each draft token the distribution it was drawn from (above;
  // used when sampling, ignored when greedy).
  StepResult step(const float* rows, int64_t n_rows, std::span<const TokenId> draft,
                  std::vector<Emitted>& out, int64_t room = INT64_MAX,
                  std::span<const TokenDist> draft_dists = {});
  // Ends the sequence for `reason` (context full, cancelled, ...): returns the text still held
  // back (an unfinished UTF-8 sequence, the prefix of a possible stop string); a stop string
  // completed by it turns the reason into Stop.
  StepResult finish(FinishReason reason);

  const std::vector<TokenId>& tokens() const { return tokens_; }
  int64_t n_prompt() const { return n_prompt_; }
  int64_t n_generated() const { return int64_t(tokens_.size()) - n_prompt_; }
  // Tokens max_tokens still allows (INT64_MAX without a limit).
  int64_t tokens_left() const { return opt_.max_tokens > 0 ? opt_.max_tokens - n_generated() : INT64_MAX; }
  bool finished() const { return finished_; }
  const SequenceOptions& options() const { return opt_; }

 private:
  enum class Took { Token, TokenAndEnd, End };
  // The row with the constraint's mask applied (the row itself without a constraint).
  const float* constrained(const float* row);
  // The token a (constrained) row yields: a sample, or with a draft token drawn from q the
  // speculative sampling decision (the draft token or a residual draw).
  TokenId choose(const float* row, TokenId draft, const TokenDist* q);
  // Appends the token (Token, or TokenAndEnd when it ends the sequence) or ends the sequence
  // without one (End: end of generation); res is filled when it ends. Logprobs come from
  // `row`, the constrained distribution.
  Took emit(TokenId tok, const float* row, std::vector<Emitted>& out, StepResult& res);
  // Ends the sequence inside a step: res keeps its counts and takes finish()'s reason and tail.
  void end_step(StepResult& res, FinishReason reason);

  SequenceOptions opt_;
  TokenText text_;
  int64_t n_vocab_;
  Sampler sampler_;
  StreamDecoder decoder_;
  StopMatcher stop_;
  std::unique_ptr<TokenConstraint> constraint_;
  std::vector<float> masked_;  // a row with the constraint applied [n_vocab]
  TokenDist p_;                // the target's distribution of a speculative-sampling row
  std::vector<float> qdense_;  // a draft distribution, dense [n_vocab] (zero between uses)
  std::vector<TokenId> tokens_;
  int64_t n_prompt_ = 0;
  bool finished_ = false;
};

}  // namespace peregrine
