// A loaded model with its tokenizer, thread pool and KV cache, driving one
// sequence: prompt processing in batches, then token-by-token generation.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "engine/sequence.h"
#include "engine/spec/draft_policy.h"
#include "engine/spec/drafter.h"
#include "engine/spec/spec_options.h"
#include "gguf/gguf.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "sample/sampler.h"
#include "tokenizer/tokenizer.h"

namespace peregrine {

struct SessionOptions {
  int n_threads = 0;     // 0 = all cores
  int64_t n_ctx = 0;     // 0 = min(trained context, 4096)
  int64_t n_batch = 512; // prompt tokens per forward pass
  KvConfig kv;  // --kv-type, --kv-type-k, --kv-type-v
  // Replaces the attention of the model's global layers, e.g. sinks + window
  // (StreamingLLM) to run past the context with a fixed KV budget.
  AttnKind attention = AttnKind::global();
  // Speculative decoding during generate() (engine/spec/).
  SpecOptions spec;
};

// A model file opened for inference: the file, a thread pool, the model and its tokenizer
// (checked against each other). A Session adds a KV cache for one sequence; the server
// adds a Scheduler with a paged one.
struct LoadedModel {
  std::shared_ptr<gguf::File> file;
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tok;

  // n_threads 0: all cores.
  static Result<LoadedModel> load(const std::string& path, int n_threads);
  // opt.n_ctx resolved: 0 means min(trained context, 4096); error when out of range.
  Result<int64_t> context_size(int64_t n_ctx) const;
};

struct GenerateStats {
  int64_t n_prompt = 0;
  int64_t n_generated = 0;
  double prompt_seconds = 0;
  double gen_seconds = 0;
  bool hit_context_limit = false;
  FinishReason finish = FinishReason::Stop;
  SpecStats spec;  // with speculation: drafted and accepted tokens, steps
};

class Session {
 public:
  static Result<std::unique_ptr<Session>> open(const std::string& path, const SessionOptions& opt);

  Model& model() { return *m_.model; }
  const Tokenizer& tokenizer() const { return *m_.tok; }
  const gguf::File& file() const { return *m_.file; }
  ThreadPool& pool() { return *m_.pool; }
  int64_t n_ctx() const { return cache_->shape().n_ctx; }
  // No global layer: the stream may run past n_ctx (only the windows are kept).
  bool unbounded() const { return cache_->shape().unbounded(); }
  const KvCache& cache() const { return *cache_; }
  int64_t n_past() const { return n_past_; }
  // Starts over: an empty sequence (a recurrent state zeroed, which a later eval() from
  // position 0 needs).
  void reset() {
    n_past_ = 0;
    history_.clear();
    cache_->reset(0);
  }

  // Appends tokens to the sequence. Logits of the last token (or of every token
  // with all_logits) land in `logits` as [rows, n_vocab].
  Status eval(std::span<const TokenId> tokens, bool all_logits, std::vector<float>& logits);

  // Evaluates the prompt (reusing the longest prefix already in the cache, so a multi-turn
  // chat only computes its new turn), then generates with `seq` (its prompt is set here) until
  // it finishes (end of generation, a stop string, its max_tokens), the context is full, or
  // on_emit returns false (Cancelled). on_emit gets every accepted token with its text, then
  // (token -1) the text held back to the end, if any. With speculation on a recurrent model the
  // state is checkpointed before each step with drafts; after a rejection it goes back there
  // and the next step recomputes the verified tokens (without drafts) before drafting again.
  using OnEmit = std::function<bool(const SequenceState::Emitted&)>;
  Result<GenerateStats> generate(std::span<const TokenId> prompt, SequenceState& seq, const OnEmit& on_emit);
  // The per-token text and end-of-generation rules of this model's tokenizer.
  const TokenText& token_text() const { return text_; }
  // The drafter generate() speculates with (null without speculation).
  const Drafter* drafter() const { return drafter_.get(); }
  // Off: generate() decodes one token per step although a drafter is loaded (benchmarks
  // compare both in one process).
  void set_speculating(bool on) { speculating_ = on; }
  const SpecOptions& spec() const { return spec_; }

 private:
  LoadedModel m_;
  std::unique_ptr<KvCache> cache_;
  int64_t n_batch_ = 512;
  int64_t n_past_ = 0;
  std::vector<TokenId> history_;  // the tokens whose K/V are in the cache
  Batch batch_;
  std::vector<float> chunk_logits_;  // reused: no allocation per decoded token
  std::vector<TokenId> step_tokens_;  // a generation step's input: the pending token and its draft
  std::vector<SequenceState::Emitted> emitted_;  // reused
  TokenText text_;

  // Speculative decoding.
  // Times forward passes of 1 .. draft max + 1 tokens (at load, on the empty cache), so the
  // dynamic policy starts from measured costs.
  void calibrate_step_cost();
  // Drafts for the next step of seq (empty without speculation or when it does not pay).
  Status draft_next(const SequenceState& seq, DraftPolicy& policy);
  SpecOptions spec_;
  std::unique_ptr<Drafter> drafter_;
  bool speculating_ = true;
  StepCost step_cost_;
  Draft draft_;
};

}  // namespace peregrine
