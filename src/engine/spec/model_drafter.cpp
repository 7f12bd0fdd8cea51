#include "engine/spec/model_drafter.h"

#include <algorithm>
#include <cmath>

#include "engine/session.h"

namespace peregrine {

// ---- ModelDrafter ---------------------------------------------------------------------------

void ModelDrafter::begin_sequence(int64_t seq, const SamplerOptions& sampling) {
  SamplerOptions q = sampling;
  // q need only be the distribution the draft tokens are drawn from: the draft skips the
  // penalties (they depend on history it does not track) and uses its own stream of draws.
  q.repeat_penalty = 1.0f;
  q.presence_penalty = q.frequency_penalty = 0.0f;
  q.seed = sampling.seed ^ 0x9e3779b97f4a7c15ull;
  SeqSampling& s = sampling_[seq];
  s.greedy = sampling.temperature <= 0.0f;
  s.sampler = Sampler(q);
}

Status ModelDrafter::run(int64_t seq, std::span<const TokenId> tokens, int64_t pos) {
  for (size_t start = 0; start < tokens.size(); start += size_t(n_batch_)) {
    const size_t end = std::min(tokens.size(), start + size_t(n_batch_));
    batch_.clear();
    for (size_t i = start; i < end; ++i)
      batch_.add(tokens[i], int32_t(pos + int64_t(i)), int32_t(seq), i + 1 == tokens.size());
    PG_TRY(model_.forward(batch_, cache_, logits_, fopt_));
    ran(seq, pos + int64_t(end));
  }
  return Status::Ok();
}

TokenId ModelDrafter::pick(int64_t seq, float& confidence, TokenDist* q) {
  const int64_t n_vocab = model_.hparams().n_vocab;
  const float* row = logits_.data();
  SeqSampling& s = sampling_[seq];
  if (s.greedy || q == nullptr) {
    const TokenId best = TokenId(std::max_element(row, row + n_vocab) - row);
    // softmax(row)[best]; logits more than 24 below the top add under n_vocab * e^-24 (about
    // 2e-6 for 50k tokens) to the sum and are skipped: a compare per token, an exp for few.
    const float top = row[best], floor = top - 24.0f;
    double sum = 0.0;
    for (int64_t i = 0; i < n_vocab; ++i)
      if (row[i] > floor) sum += std::exp(double(row[i] - top));
    confidence = float(1.0 / sum);
    return best;
  }
  s.sampler.distribution(row, n_vocab, *q);
  double u = s.sampler.uniform();
  for (const auto& [id, p] : *q) {
    u -= p;
    if (u < 0.0) {
      confidence = p;
      return id;
    }
  }
  confidence = q->back().second;
  return q->back().first;
}

Status ModelDrafter::propose(const DraftRequest& req, DraftGoOn go_on, Draft& out) {
  using Clock = std::chrono::steady_clock;
  out.clear();
  const int64_t L = int64_t(req.tokens.size());
  // Positions L .. L + max - 2 are fed (the last draft token is not).
  const int32_t max = int32_t(std::min<int64_t>(req.max, cache_.shape().unbounded() ? req.max : cache_.shape().n_ctx - L + 1));
  if (max <= 0 || L == 0) return Status::Ok();
  const int64_t held = std::min(sync(req), L - 1);
  if (Status st = run(req.seq, req.tokens.subspan(size_t(held)), held); !st.ok()) {
    fed(req.seq, {}, {});  // what the KV holds is unknown: the next proposal starts over
    return st;
  }
  caught_up(req.seq);
  const bool sampled = !sampling_[req.seq].greedy;
  const auto t0 = Clock::now();
  int32_t fed_drafts = 0;
  for (int32_t j = 1; j <= max; ++j) {
    float conf = 0.0f;
    const TokenId tok = pick(req.seq, conf, sampled ? &q_ : nullptr);
    if (!go_on(j, conf)) break;
    out.tokens.push_back(tok);
    out.confidence.push_back(conf);
    if (sampled) out.dists.push_back(q_);
    if (j == max) break;
    const TokenId one[1] = {tok};
    if (Status st = run(req.seq, one, L + j - 1); !st.ok()) {
      fed(req.seq, {}, {});
      return st;
    }
    ++fed_drafts;
  }
  fed(req.seq, req.tokens, std::span<const TokenId>(out.tokens).first(size_t(fed_drafts)));
  // The cost of one more draft token: one forward pass of the draft (the catch-up above is
  // prompt processing, not drafting).
  if (out.size() > 0) {
    const double s = std::chrono::duration<double>(Clock::now() - t0).count() / double(out.size());
    seconds_per_token_ = seconds_per_token_ == 0.0 ? s : seconds_per_token_ + 0.2 * (s - seconds_per_token_);
  }
  return Status::Ok();
}

// ---- DraftModelDrafter --------------------------------------------------------------------------

DraftModelDrafter::DraftModelDrafter(std::unique_ptr<LoadedModel> m, std::unique_ptr<KvCache> cache, int64_t n_batch)
    : ModelDrafter(*m->model, *cache, n_batch), m_(std::move(m)), own_cache_(std::move(cache)) {
  held_.resize(size_t(own_cache_->shape().n_seq));
}

void DraftModelDrafter::share_pool(ThreadPool& pool) { fopt_.pool = &pool; }

DraftModelDrafter::~DraftModelDrafter() = default;

const Model& DraftModelDrafter::model() const { return *m_->model; }

Result<std::unique_ptr<DraftModelDrafter>> DraftModelDrafter::open(const std::string& path, const Model& target,
                                                                   const Tokenizer& target_tok, int64_t n_ctx,
                                                                   int64_t n_seq, int32_t max_draft, int n_threads) {
  auto m = std::make_unique<LoadedModel>();
  PG_ASSIGN(*m, LoadedModel::load(path, n_threads));
  const Tokenizer& dt = *m->tok;
  const int64_t nv = target.hparams().n_vocab;
  if (m->model->hparams().n_vocab != nv)
    return make_error("draft model {} has {} tokens in its vocabulary but the target has {}: a draft must share "
                      "the target's vocabulary", path, m->model->hparams().n_vocab, nv);
  for (TokenId id = 0; id < TokenId(nv); ++id) {
    if (dt.token_bytes(id) != target_tok.token_bytes(id) ||
        dt.is_end_of_generation(id) != target_tok.is_end_of_generation(id))
      return make_error("draft model {} has a different vocabulary: token {} differs from the target's", path, id);
  }
  const int64_t n_batch = 512;
  KvShape shape = m->model->kv_shape(n_ctx, n_seq, KvConfig{}, AttnKind::global(), n_batch);
  PG_ASSERT(shape.n_draft >= max_draft);
  PG_TRY(shape.validate());
  PG_TRY(m->model->check_kv(shape));
  PG_TRY(check_kv_memory(shape));
  auto cache = std::make_unique<KvCache>(shape);
  return std::unique_ptr<DraftModelDrafter>(new DraftModelDrafter(std::move(m), std::move(cache), n_batch));
}

int64_t DraftModelDrafter::sync(const DraftRequest& req) {
  std::vector<TokenId>& h = held_[size_t(req.seq)];
  // At least the last token is fed again (its logits start the draft); a recurrent state can
  // only go back to its checkpoint, so the rewind goes no further than that.
  const size_t limit = req.tokens.empty() ? 0 : req.tokens.size() - 1;
  size_t common = 0;
  while (common < h.size() && common < limit && h[common] == req.tokens[common]) ++common;
  const int64_t kept = own_cache_->rewind(req.seq, int64_t(common));
  h.resize(size_t(kept));
  return kept;
}

void DraftModelDrafter::caught_up(int64_t seq) { own_cache_->checkpoint(seq); }

void DraftModelDrafter::fed(int64_t seq, std::span<const TokenId> tokens, std::span<const TokenId> drafts) {
  std::vector<TokenId>& h = held_[size_t(seq)];
  h.assign(tokens.begin(), tokens.end());
  h.insert(h.end(), drafts.begin(), drafts.end());
}

// ---- LayerSkipDrafter ----------------------------------------------------------------------------

LayerSkipDrafter::LayerSkipDrafter(Model& target, KvCache& cache, int64_t n_layers)
    : ModelDrafter(target, cache, cache.shape().n_batch), target_cache_(cache) {
  fopt_.layer_end = n_layers;
}

Result<std::unique_ptr<LayerSkipDrafter>> LayerSkipDrafter::create(Model& target, KvCache& target_cache,
                                                                   int64_t n_layers) {
  const int64_t n = target.hparams().n_layer;
  if (n < 2) return make_error("layer-skip drafting needs a model with at least 2 layers ({} has {})", target.hparams().name, n);
  if (n_layers < 1 || n_layers >= n)
    return make_error("--draft-layers {} is out of range (1 to {}, the target's layers - 1)", n_layers, n - 1);
  return std::unique_ptr<LayerSkipDrafter>(new LayerSkipDrafter(target, target_cache, n_layers));
}

int64_t LayerSkipDrafter::sync(const DraftRequest& req) {
  // The target's first layers hold exactly what the draft would have written for the
  // verified tokens (propose() drops the draft's own rows after each draft). A recurrent
  // state is saved here, at n_cached, for propose() to go back to.
  target_cache_.checkpoint(req.seq);
  return req.n_cached;
}

void LayerSkipDrafter::ran(int64_t seq, int64_t end) {
  // The skipped state layers count as having consumed the draft's positions too: the next draft
  // pass then continues every layer's state, and the rewind below restores all of them.
  const KvShape& s = target_cache_.shape();
  for (int64_t l = 0; l < s.n_layer; ++l)
    if (s.state(l) > 0 && !fopt_.runs(l)) target_cache_.state_advanced(l, seq, end);
}

Status LayerSkipDrafter::propose(const DraftRequest& req, DraftGoOn go_on, Draft& out) {
  const Status st = ModelDrafter::propose(req, go_on, out);
  // The draft's rows past the verified tokens, in the first layers only: gone before the
  // target's next step (its verification rewrites those positions in every layer). A recurrent
  // state goes back to the checkpoint sync() took, at n_cached.
  const int64_t kept = target_cache_.rewind(req.seq, req.n_cached);
  PG_ASSERT(kept == req.n_cached || !target_cache_.shape().recurrent());
  return st;
}

}  // namespace peregrine
