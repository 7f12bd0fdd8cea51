#include "engine/session.h"

#include <algorithm>
#include <chrono>
#include <optional>

#include "engine/spec/model_drafter.h"
#include "engine/spec/ngram_drafter.h"

namespace peregrine {

Result<LoadedModel> LoadedModel::load(const std::string& path, int n_threads) {
  if (n_threads < 0 || n_threads > 1024)
    return make_error("thread count {} is out of range (1 to 1024)", n_threads);
  LoadedModel m;
  PG_ASSIGN(auto file, gguf::File::open(path));
  m.file = std::shared_ptr<gguf::File>(std::move(file));
  m.pool = std::make_unique<ThreadPool>(n_threads > 0 ? n_threads : ThreadPool::default_threads());
  PG_ASSIGN(m.model, load_model(m.file, *m.pool));
  PG_ASSIGN(m.tok, Tokenizer::from_gguf(*m.file));
  const Hparams& hp = m.model->hparams();
  if (m.tok->n_vocab() != hp.n_vocab)
    return make_error("{}: tokenizer has {} tokens but the model's vocabulary is {}", path,
                      m.tok->n_vocab(), hp.n_vocab);
  return m;
}

Result<int64_t> LoadedModel::context_size(int64_t n_ctx) const {
  const int64_t n = n_ctx > 0 ? n_ctx : std::min<int64_t>(model->hparams().n_ctx_train, 4096);
  if (n_ctx < 0 || n > (int64_t(1) << 20))
    return make_error("context size {} is out of range (1 to 1048576)", n_ctx);
  return n;
}

Result<std::unique_ptr<Session>> Session::open(const std::string& path, const SessionOptions& opt) {
  if (opt.n_batch < 1 || opt.n_batch > 65536)
    return make_error("batch size {} is out of range (1 to 65536)", opt.n_batch);
  auto s = std::unique_ptr<Session>(new Session());
  PG_ASSIGN(s->m_, LoadedModel::load(path, opt.n_threads));
  PG_ASSIGN(const int64_t n_ctx, s->m_.context_size(opt.n_ctx));
  const AttnKind& a = opt.attention;
  if (a.windowed()) {
    if (a.window < 1) return make_error("--attn-window {} must be at least 1", a.window);
    if (a.sinks < 0) return make_error("--attn-sinks {} is negative", a.sinks);
    if (a.sinks + a.window > n_ctx)
      return make_error("attention {} is larger than the context ({} positions; raise -c)",
                        a.describe(), n_ctx);
  }
  PG_TRY(opt.spec.validate());
  if (opt.kv.evict != KvEvict::None && opt.spec.kind != SpecKind::None)
    return make_error("--kv-evict cannot be combined with --spec: evicted entries cannot come back when drafts are rejected");
  KvShape shape = s->m_.model->kv_shape(n_ctx, 1, opt.kv, a, opt.n_batch);
  PG_TRY(shape.validate());
  PG_TRY(s->m_.model->check_kv(shape));
  PG_TRY(check_kv_memory(shape));
  s->cache_ = std::make_unique<KvCache>(shape);
  s->n_batch_ = opt.n_batch;
  s->text_ = TokenText::of(*s->m_.tok);
  s->spec_ = opt.spec;
  Model& target = *s->m_.model;
  switch (opt.spec.kind) {
    case SpecKind::None: break;
    case SpecKind::Ngram: s->drafter_ = std::make_unique<NgramDrafter>(); break;
    case SpecKind::Draft: {
      PG_ASSIGN(auto d, DraftModelDrafter::open(opt.spec.draft_model, target, *s->m_.tok, n_ctx, 1,
                                                opt.spec.draft.max, s->m_.pool->size()));
      d->share_pool(*s->m_.pool);
      s->drafter_ = std::move(d);
      break;
    }
    case SpecKind::LayerSkip: {
      const int64_t n = opt.spec.draft_layers > 0 ? opt.spec.draft_layers : target.hparams().n_layer / 2;
      PG_ASSIGN(s->drafter_, LayerSkipDrafter::create(target, *s->cache_, n));
      break;
    }
  }
  if (s->drafter_ && opt.spec.draft.policy == DraftPolicyKind::Dynamic) s->calibrate_step_cost();
  return s;
}

Status Session::eval(std::span<const TokenId> tokens, bool all_logits, std::vector<float>& logits) {
  if (tokens.empty()) return make_error("nothing to evaluate");
  if (!unbounded() && n_past_ + int64_t(tokens.size()) > n_ctx())
    return make_error("{} tokens do not fit in the context: {} used of {} (raise -c)",
                      tokens.size(), n_past_, n_ctx());
  logits.clear();
  for (size_t start = 0; start < tokens.size(); start += size_t(n_batch_)) {
    size_t end = std::min(tokens.size(), start + size_t(n_batch_));
    batch_.clear();
    for (size_t i = start; i < end; ++i)
      batch_.add(tokens[i], int32_t(n_past_ + int64_t(i - start)), 0,
                 all_logits || i + 1 == tokens.size());
    PG_TRY(m_.model->forward(batch_, *cache_, chunk_logits_));
    logits.insert(logits.end(), chunk_logits_.begin(), chunk_logits_.end());
    n_past_ += int64_t(end - start);
    history_.insert(history_.end(), tokens.begin() + std::ptrdiff_t(start),
                    tokens.begin() + std::ptrdiff_t(end));
  }
  return Status::Ok();
}

Result<GenerateStats> Session::generate(std::span<const TokenId> prompt, SequenceState& seq,
                                        const OnEmit& on_emit) {
  using Clock = std::chrono::steady_clock;
  GenerateStats st;
  std::vector<float> logits;
  const int64_t n_vocab = m_.model->hparams().n_vocab;
  if (prompt.empty()) return make_error("the prompt is empty");
  // Keep the cached prefix; at least one token is evaluated to get logits.
  size_t keep = 0;
  while (keep + 1 < prompt.size() && keep < history_.size() && history_[keep] == prompt[keep]) ++keep;
  // Back to the shared prefix; a window ring that already reused the slots position `keep`
  // still needs keeps less (rewind says how much is still exact).
  keep = size_t(cache_->rewind(0, int64_t(keep)));
  n_past_ = int64_t(keep);
  history_.resize(keep);
  auto t0 = Clock::now();
  PG_TRY(eval(prompt.subspan(keep), false, logits));
  seq.set_prompt(prompt);
  auto t1 = Clock::now();
  st.n_prompt = int64_t(prompt.size() - keep);
  st.prompt_seconds = std::chrono::duration<double>(t1 - t0).count();
  if (seq.options().max_tokens == 0) return st;
  std::optional<DraftPolicy> policy;
  Drafter* const drafter = speculating_ ? drafter_.get() : nullptr;
  if (drafter) {
    drafter->begin_sequence(0, seq.options().sampling);
    policy.emplace(spec_.draft);
  }
  draft_.clear();
  int64_t n_rows = 1;       // rows of `logits` the next step reads: the pending token's and the draft's
  int64_t n_verified = n_past_;  // positions before the draft (the pending token's included)
  SequenceState::StepResult r;
  for (;;) {
    // Tokens the sequence may still take: the last one needs no position of its own.
    const int64_t room = unbounded() ? INT64_MAX : n_ctx() + 1 - n_verified;
    emitted_.clear();
    r = seq.step(logits.data() + logits.size() - size_t(n_rows * n_vocab), n_rows, draft_.tokens, emitted_, room,
                 draft_.dists);
    if (drafter) {
      // Keep the verified tokens' KV: the pending token and the accepted drafts.
      st.spec.count(draft_.size(), r.draft_accepted, r.accepted);
      policy->record(draft_.confidence, draft_.size(), r.draft_accepted);
      const int64_t verified = n_verified + r.draft_accepted;
      if (verified < n_past_) {
        // A recurrent state cannot drop tokens: it goes back to the checkpoint taken before
        // the step, and the verified tokens after it are computed again in the next step.
        n_past_ = cache_->rewind(0, verified);
        history_.resize(size_t(n_past_));
      }
    }
    bool go_on = true;
    for (const SequenceState::Emitted& e : emitted_) go_on = on_emit(e) && go_on;
    st.n_generated += r.accepted;
    if (!r.finished && !go_on) r = seq.finish(FinishReason::Cancelled);
    if (r.finished) break;
    // The next step: the tokens not in the cache (the pending one; after a recurrent state went
    // back to its checkpoint, the verified ones before it too), and a draft after the pending
    // token when nothing else is to be recomputed (every row's logits from the pending one on).
    const std::vector<TokenId>& tokens = seq.tokens();
    draft_.clear();
    if (drafter && int64_t(tokens.size()) == n_past_ + 1) PG_TRY(draft_next(seq, *policy));
    step_tokens_.assign(tokens.begin() + std::ptrdiff_t(n_past_), tokens.end());
    step_tokens_.insert(step_tokens_.end(), draft_.tokens.begin(), draft_.tokens.end());
    // Drafts may be rejected: a recurrent state is saved first (a no-op without one).
    if (draft_.size() > 0) cache_->checkpoint(0);
    const auto ts = Clock::now();
    PG_TRY(eval(step_tokens_, draft_.size() > 0, logits));
    if (drafter) step_cost_.record(int64_t(step_tokens_.size()), std::chrono::duration<double>(Clock::now() - ts).count());
    n_rows = 1 + draft_.size();
    n_verified = n_past_ - draft_.size();
  }
  st.finish = r.reason;
  const int64_t max = seq.options().max_tokens;
  st.hit_context_limit = r.reason == FinishReason::Length && !(max > 0 && seq.n_generated() >= max);
  if (!r.tail.empty()) on_emit(SequenceState::Emitted{-1, r.tail, false, {}});
  st.gen_seconds = std::chrono::duration<double>(Clock::now() - t1).count();
  return st;
}

}  // namespace peregrine

namespace peregrine {

Status Session::draft_next(const SequenceState& seq, DraftPolicy& policy) {
  const std::vector<TokenId>& tokens = seq.tokens();
  // Positions after the pending token's, and tokens the sequence may still take beyond it:
  // drafting past either is wasted.
  int64_t cap = std::min<int64_t>(spec_.draft.max, seq.tokens_left() - 1);
  if (!unbounded()) cap = std::min(cap, n_ctx() - 1 - n_past_);
  if (cap <= 0) return Status::Ok();
  policy.begin(step_cost_, 1, 1, drafter_->seconds_per_token());
  if (!policy.worth_drafting()) return Status::Ok();
  return policy.draft(*drafter_, DraftRequest{tokens, n_past_, 0, int32_t(cap)}, draft_);
}

void Session::calibrate_step_cost() {
  using Clock = std::chrono::steady_clock;
  const int64_t top = int64_t(spec_.draft.max) + 1;
  std::vector<float> scratch;
  for (int64_t m = 1; m <= top; m = m < 4 ? m + 1 : m + (m + 1) / 2) {
    if (!unbounded() && m > n_ctx()) break;
    double best = 0.0;
    for (int rep = 0; rep < 4; ++rep) {
      batch_.clear();
      for (int64_t i = 0; i < m; ++i) batch_.add(TokenId(i % 2), int32_t(i), 0, true);
      const auto t0 = Clock::now();
      const bool ok = m_.model->forward(batch_, *cache_, scratch).ok();
      const double s = std::chrono::duration<double>(Clock::now() - t0).count();
      cache_->reset(0);
      if (!ok) return;
      if (rep > 0) best = rep == 1 ? s : std::min(best, s);  // the first run warms up
    }
    step_cost_.record(m, best);
  }
}

}  // namespace peregrine
