#include "engine/scheduler.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <unordered_set>
#include <utility>

#include "engine/stop_matcher.h"

namespace peregrine {

// ---- RequestStream ----------------------------------------------------------------------

void RequestStream::push(Event e) {
  {
    std::lock_guard lock(mu_);
    if (e.end) ++ended_;
    events_.push_back(std::move(e));
    if (listener_) listener_();
  }
  cv_.notify_all();
}

void RequestStream::set_listener(std::function<void()> f) {
  std::lock_guard lock(mu_);
  listener_ = std::move(f);
}

bool RequestStream::wait(std::vector<Event>& out, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return !events_.empty(); });
  for (Event& e : events_) out.push_back(std::move(e));
  events_.clear();
  return ended_ == n_choices_;
}

// ---- Scheduler state ---------------------------------------------------------------------

struct Scheduler::Request {
  std::shared_ptr<RequestStream> stream;
  GenRequest gen;
  int32_t open_choices = 0;  // choices not yet ended
  int32_t passes = 0;        // requests of other tenants admitted ahead of it while it did not fit
};

struct Scheduler::Seq {
  std::shared_ptr<Request> req;
  SeqId id = 0;
  int32_t choice = 0;
  int32_t slot = -1;
  uint64_t order = 0;                // admission order; larger is younger
  int64_t n_computed = 0;            // leading tokens whose KV is in the cache
  int64_t cached = 0;                // prompt tokens taken from the prefix cache
  bool awaiting_fork = false;        // choice > 0 of n > 1, until choice 0's prompt is done
  Seq* leader = nullptr;             // while awaiting_fork: the choice 0 it waits for
  bool in_step = false;              // has tokens in the batch being built
  std::vector<Seq*> followers;       // choice 0: the choices waiting for its prompt
  SequenceState state;               // its tokens (prompt, then generated), sampler, stop strings
  // Speculation: its draft-length policy, the draft in this step's batch (after its pending
  // token), and the slot its drafter was last told about.
  std::optional<DraftPolicy> policy;
  Draft draft;
  int32_t drafter_slot = -1;
  Seq(const SequenceOptions& so, const TokenText& text, int64_t n_vocab) : state(so, text, n_vocab) {}
  const std::vector<TokenId>& tokens() const { return state.tokens(); }
};

Result<std::unique_ptr<Scheduler>> Scheduler::create(const SchedulerConfig& cfg, const KvShape& kv,
                                                     int64_t n_vocab, Forward forward, TokenText text,
                                                     const MakeDrafter& make_drafter) {
  PG_TRY(kv.validate());
  if (!kv.paged()) return make_error("the scheduler needs a paged KV cache");
  if (cfg.n_slots < 1 || cfg.n_slots != kv.n_seq)
    return make_error("{} slots for a cache of {} sequences", cfg.n_slots, kv.n_seq);
  if (cfg.step_tokens < 1) return make_error("step token budget {} must be positive", cfg.step_tokens);
  if (cfg.max_requests < 1) return make_error("request queue bound {} must be positive", cfg.max_requests);
  if (kv.any_windowed() && cfg.step_tokens > kv.n_batch)
    return make_error("step token budget {} exceeds the window rings' batch ({})", cfg.step_tokens, kv.n_batch);
  if (kv.n_blocks < kv.max_blocks_per_seq())
    return make_error("{} KV blocks of {} positions cannot hold one {}-position context", kv.n_blocks,
                      kv.block_size, kv.n_ctx);
  if (n_vocab < 1 || !forward || !text.bytes || !text.is_end_of_generation)
    return make_error("scheduler needs a vocabulary, a forward function and token text");
  if (cfg.spec.enabled()) {
    PG_TRY(cfg.spec.validate());
    if (cfg.spec.kind != SpecKind::Ngram && !make_drafter)
      return make_error("--spec {} needs a drafter", spec_kind_name(cfg.spec.kind));
    if (kv.n_draft < cfg.spec.draft.max)
      return make_error("the KV cache allows {} draft tokens per step, fewer than --draft-max {}", kv.n_draft,
                        cfg.spec.draft.max);
  }
  if (cfg.spec_history < 0 || cfg.spec_history > (int64_t(1) << 28))
    return make_error("--spec-history {} is out of range (0 to 268435456 tokens)", cfg.spec_history);
  if (cfg.max_passes < 0) return make_error("max_passes {} must be 0 or more", cfg.max_passes);
  PG_ASSIGN(BlockManager bm, BlockManager::create(int32_t(kv.n_blocks), int32_t(kv.block_size)));
  // Only layers whose KV lives in the shared blocks can take a cached prefix (window layers
  // keep per-sequence rings that a shared block would not carry).
  bm.set_prefix_caching(cfg.prefix_caching && kv.prefix_sharing());
  auto s = std::unique_ptr<Scheduler>(
      new Scheduler(cfg, kv, std::move(bm), n_vocab, std::move(forward), std::move(text)));
  if (cfg.spec.enabled() && cfg.spec.kind != SpecKind::Ngram) {
    PG_ASSIGN(s->drafter_, make_drafter(s->cache_));
  }
  return s;
}

Scheduler::Scheduler(const SchedulerConfig& cfg, const KvShape& kv, BlockManager bm, int64_t n_vocab,
                     Forward forward, TokenText text)
    : cfg_(cfg), cache_(kv), bm_(std::move(bm)), n_vocab_(n_vocab), forward_(std::move(forward)),
      text_(std::move(text)) {
  for (int32_t s = cfg.n_slots - 1; s >= 0; --s) free_slots_.push_back(s);
  if (cfg.spec.kind == SpecKind::Ngram) {
    if (cfg.spec_history > 0)
      history_ = std::make_shared<NgramHistory>(cfg.spec_history, NgramDrafter::kNMin, NgramDrafter::kNMax);
    auto ngram = std::make_unique<NgramDrafter>(history_);
    ngram_ = ngram.get();
    drafter_ = std::move(ngram);
  }
  publish_stats();
}

Scheduler::~Scheduler() { shutdown(std::chrono::milliseconds(0)); }

Scheduler::Submitted Scheduler::submit(GenRequest req) {
  using Code = Submitted::Code;
  const int64_t n_ctx = cache_.shape().n_ctx;
  if (req.prompt.empty()) return {Code::Invalid, "the prompt is empty", nullptr};
  for (TokenId t : req.prompt)
    if (t < 0 || t >= n_vocab_)
      return {Code::Invalid, fmt::format("token id {} is outside the vocabulary (0..{})", t, n_vocab_ - 1), nullptr};
  if (int64_t(req.prompt.size()) >= n_ctx)
    return {Code::Invalid,
            fmt::format("the prompt has {} tokens but the context holds {} (prompt and at least one "
                        "generated token)", req.prompt.size(), n_ctx),
            nullptr};
  if (req.n < 1 || req.n > cfg_.n_slots)
    return {Code::Invalid, fmt::format("n = {} is out of range (1 to {}, the server's parallel slots)", req.n, cfg_.n_slots), nullptr};
  if (req.max_tokens == 0 || req.max_tokens < -1)
    return {Code::Invalid, fmt::format("max_tokens {} must be positive", req.max_tokens), nullptr};
  if (Status st = req.sampling.validate(); !st.ok()) return {Code::Invalid, st.error().message, nullptr};
  auto r = std::make_shared<Request>();
  r->stream = std::make_shared<RequestStream>();
  r->stream->n_choices_ = req.n;
  r->stream->prompt_tokens_ = int64_t(req.prompt.size());
  r->open_choices = req.n;
  r->gen = std::move(req);
  {
    std::lock_guard lock(mu_);
    if (!accepting_) return {Code::ShuttingDown, "the server is shutting down", nullptr};
    if (n_requests_ >= cfg_.max_requests)
      return {Code::Overloaded, fmt::format("{} requests are queued or running (the limit)", n_requests_), nullptr};
    ++n_requests_;
    incoming_.push_back(r);
  }
  wake_.notify_all();
  return {Code::Ok, {}, r->stream};
}

void Scheduler::intake() {
  std::lock_guard lock(mu_);
  while (!incoming_.empty()) {
    waiting_.push_back(std::move(incoming_.front()));
    incoming_.pop_front();
  }
}

// Frees s's blocks and slot and takes it out of running_ or preempted_.
std::unique_ptr<Scheduler::Seq> Scheduler::detach(Seq& s) {
  bm_.free_sequence(s.id);
  if (s.slot >= 0) free_slots_.push_back(s.slot);
  s.slot = -1;
  auto is_s = [p = &s](const std::unique_ptr<Seq>& u) { return u.get() == p; };
  std::unique_ptr<Seq> owned;
  if (auto it = std::find_if(running_.begin(), running_.end(), is_s); it != running_.end()) {
    owned = std::move(*it);
    running_.erase(it);
  } else if (auto jt = std::find_if(preempted_.begin(), preempted_.end(), is_s); jt != preempted_.end()) {
    owned = std::move(*jt);
    preempted_.erase(jt);
  }
  return owned;
}

void Scheduler::finish(Seq& s, FinishReason reason, std::string tail, std::string error) {
  RequestStream::Event e;
  e.choice = s.choice;
  e.end = true;
  e.finish = reason;
  e.text = std::move(tail);
  e.error = std::move(error);
  std::shared_ptr<Request> req = s.req;  // s is destroyed below
  if (history_ && (reason == FinishReason::Stop || reason == FinishReason::Length))
    history_->add(std::span<const TokenId>(s.tokens()).subspan(size_t(s.state.n_prompt())));
  // A choice 0 that ends before its prompt is done takes its followers with it; a follower
  // that ends first (its request cancelled) leaves its leader's list.
  std::vector<Seq*> followers = std::move(s.followers);
  for (Seq* f : followers) f->leader = nullptr;  // s is gone when they finish below
  if (s.awaiting_fork && s.leader != nullptr) std::erase(s.leader->followers, &s);
  req->stream->push(std::move(e));
  detach(s);
  if (--req->open_choices == 0) {
    std::lock_guard lock(mu_);
    --n_requests_;
  }
  for (Seq* f : followers) finish(*f, reason, {}, error);
}

void Scheduler::reap_cancelled() {
  auto cancelled = [](const std::unique_ptr<Seq>& s) { return s->req->stream->cancelled(); };
  for (;;) {
    auto it = std::find_if(running_.begin(), running_.end(), cancelled);
    if (it == running_.end()) break;
    finish(**it, FinishReason::Cancelled, {});
  }
  for (;;) {
    auto it = std::find_if(preempted_.begin(), preempted_.end(), cancelled);
    if (it == preempted_.end()) break;
    finish(**it, FinishReason::Cancelled, {});
  }
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if (!(*it)->stream->cancelled()) {
      ++it;
      continue;
    }
    for (int32_t c = 0; c < (*it)->gen.n; ++c) {
      RequestStream::Event e;
      e.choice = c;
      e.end = true;
      e.finish = FinishReason::Cancelled;
      (*it)->stream->push(std::move(e));
    }
    {
      std::lock_guard lock(mu_);
      --n_requests_;
    }
    it = waiting_.erase(it);
  }
}

void Scheduler::admit() {
  // Preempted sequences first (oldest first), then new requests fairly between tenants
  // (next_admission); a request needs a slot for each of its n choices.
  while (!preempted_.empty() && !free_slots_.empty()) {
    std::unique_ptr<Seq> s = std::move(preempted_.front());
    preempted_.pop_front();
    s->slot = free_slots_.back();
    free_slots_.pop_back();
    cache_.reset(s->slot);
    PG_ASSERT(bm_.add_sequence(s->id, s->req->gen.cache_salt).ok());
    // Back in admission order.
    auto at = std::find_if(running_.begin(), running_.end(), [&](auto& r) { return r->order > s->order; });
    running_.insert(at, std::move(s));
  }
  if (!preempted_.empty() || waiting_.empty() || free_slots_.empty()) return;
  // Keys view the tenant strings of requests that outlive this call (running or waiting).
  std::unordered_map<std::string_view, int64_t> running;
  for (const auto& s : running_) running[s->req->gen.tenant]++;
  while (!free_slots_.empty()) {
    const int64_t k = next_admission(running);
    if (k < 0) break;
    std::shared_ptr<Request> r = std::move(waiting_[size_t(k)]);
    waiting_.erase(waiting_.begin() + k);
    running[r->gen.tenant] += r->gen.n;
    Seq* leader = nullptr;
    for (int32_t c = 0; c < r->gen.n; ++c) {
      SequenceOptions opt = r->gen;
      opt.sampling.seed += uint64_t(c);
      auto s = std::make_unique<Seq>(opt, text_, n_vocab_);
      if (drafter_) s->policy.emplace(cfg_.spec.draft);
      s->req = r;
      s->id = next_seq_id_++;
      s->choice = c;
      s->order = next_order_++;
      s->slot = free_slots_.back();
      free_slots_.pop_back();
      cache_.reset(s->slot);
      s->state.set_prompt(r->gen.prompt);
      if (c == 0) {
        PG_ASSERT(bm_.add_sequence(s->id, r->gen.cache_salt).ok());  // the others fork it
        leader = s.get();
      } else {
        s->awaiting_fork = true;
        s->leader = leader;
        leader->followers.push_back(s.get());
      }
      running_.push_back(std::move(s));
    }
  }
}

// Candidates are each tenant's oldest waiting request (first come first served within a
// tenant), in order of the tenant's running sequences, fewest first, then of age. The first
// candidate that fits in the free slots is admitted, and every candidate before it that did not
// fit counts a pass; one passed max_passes times already is not passed again: nothing is
// admitted until it fits (slots free up as sequences end), so a large n cannot starve.
int64_t Scheduler::next_admission(const std::unordered_map<std::string_view, int64_t>& running) {
  struct Candidate {
    int64_t running;
    size_t index;  // in waiting_ (arrival order)
  };
  std::vector<Candidate> cands;
  std::unordered_set<std::string_view> seen;
  for (size_t i = 0; i < waiting_.size(); ++i) {
    const std::string& tenant = waiting_[i]->gen.tenant;
    if (!seen.insert(tenant).second) continue;
    const auto it = running.find(tenant);
    cands.push_back({it == running.end() ? 0 : it->second, i});
  }
  std::ranges::sort(cands, [](const Candidate& a, const Candidate& b) {
    return a.running != b.running ? a.running < b.running : a.index < b.index;
  });
  for (size_t c = 0; c < cands.size(); ++c) {
    const Request& r = *waiting_[cands[c].index];
    if (r.gen.n <= int64_t(free_slots_.size())) {
      for (size_t p = 0; p < c; ++p) waiting_[cands[p].index]->passes++;
      return int64_t(cands[c].index);
    }
    if (r.passes >= cfg_.max_passes) return -1;
  }
  return -1;
}

void Scheduler::preempt(Seq& s) {
  PG_ASSERT(!s.awaiting_fork);
  std::unique_ptr<Seq> owned = detach(s);
  PG_ASSERT(owned != nullptr);
  owned->n_computed = 0;
  owned->cached = 0;
  ++preemptions_;
  auto at = std::find_if(preempted_.begin(), preempted_.end(), [&](auto& q) { return q->order > owned->order; });
  preempted_.insert(at, std::move(owned));
}

// Preempts the youngest running sequence younger than `self` (the sequence asking) that holds
// blocks and has nothing in this step's batch; false if there is none.
bool Scheduler::preempt_youngest(const Seq* self) {
  for (size_t i = running_.size(); i-- > 0;) {  // running_ is in admission order
    Seq& s = *running_[i];
    if (s.order <= self->order) break;  // never an older sequence for a younger one
    if (s.awaiting_fork || s.in_step) continue;
    if (!bm_.has_sequence(s.id) || bm_.n_tokens(s.id).value() == 0) continue;
    preempt(s);
    return true;
  }
  return false;
}

// Adds s's next tokens to the batch if its blocks can be had, preempting younger sequences
// for them; when none can give way, s waits (preempted itself if it is the youngest holding
// blocks).
void Scheduler::schedule_seq(Seq& s, int64_t& budget) {
  const int64_t pending = int64_t(s.tokens().size()) - s.n_computed;
  if (pending == 1 && s.draft.size() > 0 && 1 + s.draft.size() <= budget) {
    // The pending token and its draft, verified together: every row's logits are wanted.
    chunk_.assign(1, s.tokens().back());
    chunk_.insert(chunk_.end(), s.draft.tokens.begin(), s.draft.tokens.end());
    for (;;) {
      if (bm_.append_tokens(s.id, chunk_, 0).ok()) break;
      if (preempt_youngest(&s)) continue;
      s.draft.clear();  // no blocks for the draft: decode the pending token alone
      break;
    }
    if (s.draft.size() > 0) {
      // Drafts may be rejected: a recurrent state is saved first (a no-op without one), and
      // sample_and_emit's rewind goes back to it.
      cache_.checkpoint(s.slot);
      for (size_t i = 0; i < chunk_.size(); ++i) batch_.add(chunk_[i], int32_t(s.n_computed + int64_t(i)), s.slot, true);
      in_batch_.push_back({&s, int32_t(chunk_.size())});
      s.in_step = true;
      budget -= int64_t(chunk_.size());
      s.n_computed += int64_t(chunk_.size());
      return;
    }
  }
  s.draft.clear();
  const int64_t take = std::min(pending, budget);
  if (take <= 0) return;
  const bool finishes = take == pending;
  const std::span<const TokenId> chunk(s.tokens().data() + s.n_computed, size_t(take));
  // The last pending token is always computed: its logits are what the step is for.
  const int32_t max_hit = int32_t(finishes ? take - 1 : take);
  int32_t hits = 0;
  for (;;) {
    Result<int32_t> r = bm_.append_tokens(s.id, chunk, max_hit);
    if (r.ok()) {
      hits = *r;
      break;
    }
    if (preempt_youngest(&s)) continue;
    // Nothing younger can give way now. If younger sequences hold blocks (they are in this
    // step's batch), s keeps its own and waits: they give way when they next need a block.
    // Otherwise s is the youngest holder and is preempted itself.
    const bool younger_holds = std::any_of(running_.begin(), running_.end(), [&](const auto& o) {
      return o->order > s.order && bm_.has_sequence(o->id) && bm_.n_tokens(o->id).value() > 0;
    });
    if (!younger_holds && bm_.n_tokens(s.id).value() > 0) preempt(s);
    return;
  }
  if (s.n_computed < int64_t(s.req->gen.prompt.size())) s.cached += hits;
  if (hits > 0) cache_.adopt_prefix(s.slot, s.n_computed + hits);
  for (int64_t j = s.n_computed + hits; j < s.n_computed + take; ++j)
    batch_.add(s.tokens()[size_t(j)], int32_t(j), s.slot, j + 1 == int64_t(s.tokens().size()));
  in_batch_.push_back({&s, finishes ? 1 : 0});
  s.in_step = true;
  budget -= take - hits;
  s.n_computed += take;
}

bool Scheduler::step() {
  intake();
  reap_cancelled();
  admit();
  if (running_.empty()) {
    publish_stats();
    return false;
  }
  batch_.clear();
  in_batch_.clear();
  int64_t budget = cfg_.step_tokens;
  // Decode tokens first (one each, oldest first), then prompt chunks, oldest first.
  // Preemption moves sequences out of running_, so walk a snapshot.
  order_.clear();
  for (auto& s : running_) {
    s->in_step = false;
    order_.push_back(s.get());
  }
  // What the step would hold without drafts: decode tokens (each yields one token) and
  // prompt chunks; drafting is priced against it.
  int64_t n_decoding = 0, n_prefill = 0;
  for (Seq* s : order_) {
    const int64_t pending = int64_t(s->tokens().size()) - s->n_computed;
    if (s->slot < 0 || s->awaiting_fork || pending == 0) continue;
    if (s->state.n_generated() > 0 && pending == 1) ++n_decoding;
    else n_prefill += pending;
  }
  const int64_t base_tokens = std::min(budget, n_decoding + n_prefill);
  int64_t drafted = 0;  // draft tokens already in this step: each next draft is priced on top
  for (int pass = 0; pass < 2; ++pass) {
    for (Seq* s : order_) {
      if (budget <= 0) break;
      const int64_t pending = int64_t(s->tokens().size()) - s->n_computed;
      const bool decoding = s->state.n_generated() > 0 && pending == 1;
      if (s->slot < 0 || s->awaiting_fork || s->in_step || pending == 0 || decoding != (pass == 0)) continue;
      if (decoding) draft_for(*s, budget, base_tokens, n_decoding, drafted);
      schedule_seq(*s, budget);
      drafted += s->draft.size();
    }
  }
  if (batch_.size() == 0) {
    publish_stats();
    return !running_.empty();
  }
  for (const auto& [src, dst] : bm_.take_copies()) cache_.copy_block(src, dst);
  for (const auto& [s, rows] : in_batch_) {
    Result<std::span<const int32_t>> table = bm_.block_table(s->id);
    PG_ASSERT(table.ok());
    PG_ASSERT(cache_.set_block_table(s->slot, table->data(), int64_t(table->size())).ok());
  }
  const auto t0 = std::chrono::steady_clock::now();
  if (Status st = forward_(batch_, cache_, logits_); !st.ok()) {
    fail_batch(st.error().message);  // their uncommitted blocks are freed, never cached
    publish_stats();
    return true;
  }
  // The KV of the batch exists now: its full blocks may enter the prefix cache (rejected draft
  // tokens too: their KV is exact for their own tokens).
  for (const auto& [s, rows] : in_batch_) PG_ASSERT(bm_.commit(s->id).ok());
  // Rows of logits in batch order; sample each sequence whose last pending token ran.
  size_t row = 0;
  for (const auto& [s, rows] : in_batch_) {
    if (rows == 0) continue;
    on_logits(*s, logits_.data() + row * size_t(n_vocab_));
    row += size_t(rows);
  }
  // What a step of this many tokens costs: the forward pass and the sampling of its rows.
  if (drafter_) step_cost_.record(batch_.size(), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  ++steps_;
  publish_stats();
  return true;
}

void Scheduler::fail_batch(const std::string& message) {
  std::vector<Seq*> seqs;
  for (const auto& e : in_batch_) seqs.push_back(e.first);
  in_batch_.clear();
  for (Seq* s : seqs) finish(*s, FinishReason::Error, {}, message);
}

void Scheduler::on_logits(Seq& s, const float* rows) {
  // The prompt of a request with n > 1 is done: the other choices share its blocks and
  // sample from the same logits.
  std::vector<Seq*> followers = std::move(s.followers);
  s.followers.clear();
  if (s.state.n_generated() == 0) s.req->stream->cached_tokens_.store(s.cached);
  for (Seq* f : followers) {
    PG_ASSERT(bm_.fork(s.id, f->id).ok());
    cache_.fork(s.slot, f->slot);
    f->n_computed = s.n_computed;
    f->cached = s.cached;
    f->awaiting_fork = false;
    f->leader = nullptr;
  }
  sample_and_emit(s, rows);
  for (Seq* f : followers) sample_and_emit(*f, rows);
}

// The sequence's state takes its rows (one, or one per draft token more) and says what to
// stream and whether the sequence ended; a draft's rejected tokens leave the blocks and KV.
void Scheduler::sample_and_emit(Seq& s, const float* rows) {
  emitted_.clear();
  // The last token needs no position of its own: a sequence may hold n_ctx + 1 tokens.
  const int64_t room = cache_.shape().n_ctx + 1 - int64_t(s.tokens().size());
  const int32_t k = s.draft.size();
  SequenceState::StepResult r = s.state.step(rows, 1 + k, s.draft.tokens, emitted_, room, s.draft.dists);
  if (s.policy) {
    s.policy->record(s.draft.confidence, k, r.draft_accepted);
    spec_stats_.count(k, r.draft_accepted, r.accepted);
    s.req->stream->drafted_ += k;
    s.req->stream->accepted_ += r.draft_accepted;
  }
  if (k > 0 && !r.finished) {
    // Keep the pending token and the accepted drafts. A recurrent state goes back to its
    // checkpoint (before the pending token) instead: the tokens from there on are pending again
    // and the next steps compute them as a prompt chunk (without drafts) before decoding on.
    const int64_t keep = s.n_computed - k + r.draft_accepted;
    PG_ASSERT(bm_.truncate(s.id, int32_t(keep)).ok());
    s.n_computed = cache_.rewind(s.slot, keep);
    if (s.n_computed < keep) PG_ASSERT(bm_.truncate(s.id, int32_t(s.n_computed)).ok());
  }
  s.draft.clear();
  for (SequenceState::Emitted& em : emitted_) {
    RequestStream::Event e;
    static_cast<SequenceState::Emitted&>(e) = std::move(em);
    e.choice = s.choice;
    s.req->stream->push(std::move(e));
  }
  if (r.finished) finish(s, r.reason, std::move(r.tail));
}

void Scheduler::draft_for(Seq& s, int64_t budget, int64_t base_tokens, int64_t base_yield, int64_t others) {
  s.draft.clear();
  if (!drafter_ || !s.policy) return;
  // Room: the step's budget, positions after the pending token's, tokens the sequence may
  // still take after it.
  const int64_t cap = std::min<int64_t>({cfg_.spec.draft.max, budget - 1, cache_.shape().n_ctx - 1 - s.n_computed,
                                         s.state.tokens_left() - 1});
  if (cap <= 0) return;
  s.policy->begin(step_cost_, base_tokens, std::max<int64_t>(1, base_yield), drafter_->seconds_per_token(), others);
  if (!s.policy->worth_drafting()) return;
  if (s.drafter_slot != s.slot) {
    drafter_->begin_sequence(s.slot, s.state.options().sampling);
    s.drafter_slot = s.slot;
  }
  // A layer-skip draft writes its rows into this cache: the positions it feeds (the pending
  // token's and all drafts but the last) need blocks now. They are reserved with placeholder
  // tokens and given back after drafting; the verification appends the real tokens and
  // rewrites every row.
  const bool writes_target = cfg_.spec.kind == SpecKind::LayerSkip;
  if (writes_target) {
    chunk_.assign(size_t(cap), s.tokens().back());
    if (!bm_.append_tokens(s.id, chunk_, 0).ok()) return;
    for (const auto& [src, dst] : bm_.take_copies()) cache_.copy_block(src, dst);
    Result<std::span<const int32_t>> table = bm_.block_table(s.id);
    PG_ASSERT(table.ok() && cache_.set_block_table(s.slot, table->data(), int64_t(table->size())).ok());
  }
  const bool drafted = s.policy->draft(*drafter_, DraftRequest{s.tokens(), s.n_computed, s.slot, int32_t(cap)}, s.draft).ok();
  if (writes_target) PG_ASSERT(bm_.truncate(s.id, int32_t(s.n_computed)).ok());
  if (!drafted) s.draft.clear();  // a draft that failed costs nothing but itself
}

void Scheduler::publish_stats() {
  std::lock_guard lock(mu_);
  SchedulerStats& st = published_;
  st.waiting = int64_t(waiting_.size() + incoming_.size() + preempted_.size());
  st.running = int64_t(running_.size());
  st.blocks_used = bm_.n_used();
  st.blocks_cached = bm_.n_cached();
  st.blocks_free = bm_.n_free();
  st.prefix_lookup_tokens = bm_.stats().lookup_tokens;
  st.prefix_hit_tokens = bm_.stats().hit_tokens;
  st.prefix_evictions = bm_.stats().evictions;
  st.preemptions = preemptions_;
  st.steps = steps_;
  st.spec = spec_stats_;
  st.spec_history_tokens = history_ ? history_->size() : 0;
  st.spec_history_drafts = ngram_ ? ngram_->history_drafts() : 0;
}

SchedulerStats Scheduler::stats() const {
  std::lock_guard lock(mu_);
  return published_;
}

void Scheduler::start() {
  thread_ = std::thread([this] {
    for (;;) {
      {
        std::unique_lock lock(mu_);
        if (stop_) break;
      }
      if (!step()) {
        std::unique_lock lock(mu_);
        wake_.wait_for(lock, std::chrono::milliseconds(50),
                       [&] { return stop_ || !incoming_.empty(); });
      }
    }
  });
}

void Scheduler::shutdown(std::chrono::milliseconds grace) {
  {
    std::lock_guard lock(mu_);
    accepting_ = false;
  }
  if (thread_.joinable()) {
    const auto deadline = std::chrono::steady_clock::now() + grace;
    for (;;) {
      {
        std::lock_guard lock(mu_);
        if (n_requests_ == 0) break;
      }
      if (std::chrono::steady_clock::now() >= deadline) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  // Whatever is left is cancelled (this thread now owns the state).
  intake();
  while (!running_.empty()) finish(*running_.front(), FinishReason::Cancelled, {});
  while (!preempted_.empty()) finish(*preempted_.front(), FinishReason::Cancelled, {});
  for (auto& r : waiting_) r->stream->cancel();
  reap_cancelled();
}

}  // namespace peregrine
