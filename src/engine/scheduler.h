// Scheduler: iteration-level continuous batching over a paged KV cache.
//
// Every step() builds one batch from every running sequence: the decode token of each
// sequence that is generating, then chunks of prompts still being processed (chunked
// prefill), oldest first, under a per-step token budget. One forward pass runs the batch;
// each sequence whose last pending token was in it samples its next token, which is
// streamed to its request at once. Requests that arrive join at the next step; finished or
// cancelled ones leave at once and their KV blocks go back to the pool.
//
// KV memory is a BlockManager over the cache's block pool (kv/block_manager.h): prompts
// whose leading blocks were computed before (a shared system prompt, earlier turns of a
// conversation, the other choices of n > 1) take those blocks instead of computing them.
// A request with n > 1 computes its prompt once: when the prompt is done, choices 1..n-1
// fork the first one's blocks (copy-on-write for the partly filled last block) and all n
// sample their first token from the same logits. When the pool runs out, the youngest
// running sequence not already in this step's batch is preempted: its blocks are freed
// and it waits at the head of the queue to be recomputed, prompt and generated tokens
// alike; because every op is batch-invariant, what it then generates is exactly what it
// would have generated without the interruption.
//
// Tenants. Admission is fair between the tenants named in requests, so one client's burst
// does not hold everyone else up: the next request admitted is the oldest waiting one of the
// tenant with the fewest running sequences (ties: the tenant whose oldest waiting request is
// oldest). A request that does not fit in the free slots yet may be passed by requests of
// other tenants that do, at most max_passes times; then nothing else is admitted until it fits.
// With one tenant this is plain arrival order. Prefix-cache blocks are shared only between
// requests of equal cache_salt (BlockManager), so tenants given different salts cannot learn
// from cached_tokens or time to first token what another one sent.
//
// Speculative decoding: a decoding sequence may add draft tokens after its pending one (each
// with its own length, chosen by its DraftPolicy from its acceptance and the measured cost of
// the step as a whole, so drafting backs off by itself when a full batch makes the step
// compute-bound). The whole run is verified in the same forward pass; the sequence keeps what
// its SequenceState accepts and its blocks and KV are cut back to that (BlockManager::truncate,
// KvCache::rewind). Finished outputs feed the n-gram drafter's history.
//
// Recurrent models (state-space layers, KvShape::recurrent) keep a state per slot that only
// goes forward. It is checkpointed before a step with drafts; after a rejection the rewind
// restores that checkpoint (before the pending token), and the verified tokens after it are
// pending again: the next step computes them as a prompt chunk that ends in the next token, and
// drafting resumes once the sequence has caught up. A preempted sequence restarts from a zeroed
// state, the choices of n > 1 fork the state with the rest, and the prefix cache is off
// (KvShape::prefix_sharing: a block of K/V does not carry the state at its end).
//
// Threads: submit() and RequestStream are safe from any thread; step() runs on one thread
// (start() runs it in a background thread; tests call step() directly).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "engine/sequence.h"
#include "engine/spec/draft_policy.h"
#include "engine/spec/drafter.h"
#include "engine/spec/ngram_drafter.h"
#include "engine/spec/spec_options.h"
#include "kv/block_manager.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "sample/logprobs.h"
#include "sample/sampler.h"
#include "tokenizer/tokenizer.h"

namespace peregrine {

struct SchedulerConfig {
  int32_t n_slots = 4;          // sequences running at once (each has a KV slot)
  int64_t step_tokens = 512;    // most tokens one forward pass computes
  int32_t max_requests = 256;   // requests queued or running; submit() refuses beyond
  bool prefix_caching = true;
  // Speculative decoding per sequence (ngram here; a draft model is passed to create()). The
  // KV shape's n_draft must be at least spec.draft.max.
  SpecOptions spec;
  // ngram: tokens of earlier outputs kept to draft from (0: none).
  int64_t spec_history = 0;
  // Fair admission: how many requests of other tenants may be admitted ahead of a waiting
  // request that does not fit in the free slots (its n is larger than what is free) before
  // nothing else is admitted until it fits. Bounds how long a large n waits; 0: never passed.
  int32_t max_passes = 8;
};

// A request: the options each of its choices generates with (max_tokens -1: until the context
// is full; choice i is seeded with sampling.seed + i), its prompt and how many choices.
struct GenRequest : SequenceOptions {
  std::vector<TokenId> prompt;
  int32_t n = 1;
  // Who sent it (e.g. an API key's name; "" is a tenant like any other): admission is fair
  // between tenants, first come first served within one.
  std::string tenant;
  // Prefix-cache isolation: the request's KV blocks are shared only with requests of the same
  // salt (0: the common, unsalted cache). Choices of n > 1 share the request's.
  uint64_t cache_salt = 0;
};

// The event stream of one request, filled by the scheduler and read by one client thread.
class RequestStream {
 public:
  // A generated token (its id, the text that became safe to show, logprobs), or the end of a
  // choice (token -1; text: what was held back).
  struct Event : SequenceState::Emitted {
    int32_t choice = 0;
    bool end = false;           // false: one generated token; true: the choice finished
    FinishReason finish = FinishReason::Stop;  // when end
    std::string error;          // when finish == Error
  };

  // Waits until events are available or `timeout` passes and appends them to out. Returns
  // true once every choice has ended and all events have been taken.
  bool wait(std::vector<Event>& out, std::chrono::milliseconds timeout);
  // Calls f (on the scheduler's thread, under the stream's lock: keep it short and never call
  // back into the stream) after every event from now on, so a client that does not block in
  // wait() learns when to take events with wait(out, 0ms). Set it once, right after submit().
  void set_listener(std::function<void()> f);
  // The client is gone: the scheduler frees the request's sequences at its next step.
  void cancel() { cancelled_.store(true); }
  bool cancelled() const { return cancelled_.load(); }

  int32_t n_choices() const { return n_choices_; }
  int64_t prompt_tokens() const { return prompt_tokens_; }
  // Prompt tokens whose KV came from the prefix cache (known once the prompt is done).
  int64_t cached_tokens() const { return cached_tokens_.load(); }
  // Speculation: draft tokens verified and accepted, over all choices so far.
  int64_t drafted_tokens() const { return drafted_.load(); }
  int64_t accepted_tokens() const { return accepted_.load(); }

 private:
  friend class Scheduler;
  void push(Event e);
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
  std::function<void()> listener_;
  int32_t n_choices_ = 1;
  int32_t ended_ = 0;  // choices whose end event was pushed
  int64_t prompt_tokens_ = 0;
  std::atomic<int64_t> cached_tokens_{0};
  std::atomic<int64_t> drafted_{0}, accepted_{0};
  std::atomic<bool> cancelled_{false};
};

struct SchedulerStats {
  int64_t waiting = 0;            // requests and preempted sequences not running
  int64_t running = 0;            // sequences holding a slot
  int64_t blocks_used = 0, blocks_cached = 0, blocks_free = 0;
  int64_t prefix_lookup_tokens = 0, prefix_hit_tokens = 0, prefix_evictions = 0;
  int64_t preemptions = 0;
  int64_t steps = 0;
  SpecStats spec;                 // drafted/accepted tokens, decode steps of speculating sequences
  int64_t spec_history_tokens = 0, spec_history_drafts = 0;
};

class Scheduler {
 public:
  using Forward = std::function<Status(const Batch&, KvCache&, std::vector<float>& logits)>;

  // Makes the drafter for cfg.spec.kind Draft or LayerSkip, given the scheduler's KV cache (a
  // layer-skip drafter writes into it); it drafts for cfg.n_slots sequence slots
  // (DraftRequest::seq is the slot).
  using MakeDrafter = std::function<Result<std::unique_ptr<Drafter>>(KvCache&)>;

  // kv must be paged (block_size > 0) with n_seq == cfg.n_slots and hold at least one
  // full context of blocks.
  static Result<std::unique_ptr<Scheduler>> create(const SchedulerConfig& cfg, const KvShape& kv,
                                                   int64_t n_vocab, Forward forward, TokenText text,
                                                   const MakeDrafter& make_drafter = nullptr);
  ~Scheduler();

  struct Submitted {
    enum class Code { Ok, Invalid, Overloaded, ShuttingDown } code = Code::Ok;
    std::string message;
    std::shared_ptr<RequestStream> stream;
  };
  Submitted submit(GenRequest req);

  // One iteration: admit, build a batch, run it, sample, stream. Returns false when there
  // was nothing to do.
  bool step();

  // Runs step() in a background thread until shutdown().
  void start();
  // Stops admitting requests, lets running and queued ones finish for up to `grace`, then
  // cancels what is left (their streams end with FinishReason::Cancelled) and joins.
  void shutdown(std::chrono::milliseconds grace);

  SchedulerStats stats() const;
  const KvCache& cache() const { return cache_; }
  const SchedulerConfig& config() const { return cfg_; }
  int64_t n_ctx() const { return cache_.shape().n_ctx; }

 private:
  struct Seq;
  struct Request;
  Scheduler(const SchedulerConfig& cfg, const KvShape& kv, BlockManager bm, int64_t n_vocab,
            Forward forward, TokenText text);

  void intake();
  void reap_cancelled();
  void admit();
  // Index in waiting_ of the next request to admit, or -1 (running: tenant -> sequences).
  int64_t next_admission(const std::unordered_map<std::string_view, int64_t>& running);
  void schedule_seq(Seq& s, int64_t& budget);
  bool preempt_youngest(const Seq* self);
  void preempt(Seq& s);
  void on_logits(Seq& s, const float* rows);
  void sample_and_emit(Seq& s, const float* rows);
  // Drafts s's next tokens into s.draft (the decode pass; budget: tokens left in the step;
  // others: draft tokens of sequences before it in this step).
  void draft_for(Seq& s, int64_t budget, int64_t base_tokens, int64_t base_yield, int64_t others);
  void finish(Seq& s, FinishReason reason, std::string tail, std::string error = {});
  std::unique_ptr<Seq> detach(Seq& s);
  void fail_batch(const std::string& message);
  void publish_stats();

  SchedulerConfig cfg_;
  KvCache cache_;
  BlockManager bm_;
  int64_t n_vocab_;
  Forward forward_;
  TokenText text_;

  // Scheduler thread only.
  std::vector<std::unique_ptr<Seq>> running_;   // admission order: oldest first
  std::deque<std::unique_ptr<Seq>> preempted_;  // oldest first; resumed before new requests
  std::deque<std::shared_ptr<Request>> waiting_;
  std::vector<int32_t> free_slots_;
  Batch batch_;
  std::vector<float> logits_;
  std::vector<std::pair<Seq*, int32_t>> in_batch_;  // (sequence, rows of logits it wants) in batch order
  std::vector<TokenId> chunk_;                      // a pending token and its draft
  // Speculation.
  std::unique_ptr<Drafter> drafter_;
  std::shared_ptr<NgramHistory> history_;
  NgramDrafter* ngram_ = nullptr;  // drafter_ when it is the n-gram one
  StepCost step_cost_;
  SpecStats spec_stats_;
  std::vector<Seq*> order_;                      // running_ at the start of the step
  std::vector<int32_t> table_buf_;
  std::vector<SequenceState::Emitted> emitted_;
  uint64_t next_order_ = 0;
  SeqId next_seq_id_ = 0;
  int64_t preemptions_ = 0, steps_ = 0;

  // Shared with submit(), stats() and shutdown().
  mutable std::mutex mu_;
  std::condition_variable wake_;
  std::deque<std::shared_ptr<Request>> incoming_;
  int64_t n_requests_ = 0;  // submitted and not finished
  bool accepting_ = true;
  bool stop_ = false;
  SchedulerStats published_;
  std::thread thread_;
};

}  // namespace peregrine
