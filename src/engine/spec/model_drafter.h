// Drafting with a model, autoregressively: a small draft model that shares the target's
// vocabulary (DraftModelDrafter: its own weights and KV cache), or the target's own first
// layers and output head (LayerSkipDrafter: self-speculation with early exit, as in
// LayerSkip, Elhoushi et al. 2024, and Draft & Verify, Zhang et al. 2023; no extra weights
// and no extra KV: the first layers' KV of the verified tokens is exactly what the target
// wrote, and the draft's own rows are overwritten by the verification pass).
//
// Greedy sequences draft greedily; sampled ones draw each draft token from the draft's own
// distribution q (the sequence's sampling options without penalties) and hand q to the
// verifier (speculative sampling). Each drafted token's probability is its confidence for
// the draft-length policy.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "engine/spec/drafter.h"
#include "kv/kv_cache.h"
#include "model/model.h"

namespace peregrine {

struct LoadedModel;

class ModelDrafter : public Drafter {
 public:
  void begin_sequence(int64_t seq, const SamplerOptions& sampling) override;
  Status propose(const DraftRequest& req, DraftGoOn go_on, Draft& out) override;
  double seconds_per_token() const override { return seconds_per_token_; }

 protected:
  ModelDrafter(Model& model, KvCache& cache, int64_t n_batch) : model_(model), cache_(cache), n_batch_(n_batch) {}
  // Makes the draft's KV of req.seq hold a prefix of req.tokens; returns its length.
  virtual int64_t sync(const DraftRequest& req) = 0;
  // The draft's KV of seq now holds tokens and then drafts.
  virtual void fed(int64_t /*seq*/, std::span<const TokenId> /*tokens*/, std::span<const TokenId> /*drafts*/) {}
  // A forward pass of seq ended at position end (exclusive).
  virtual void ran(int64_t /*seq*/, int64_t /*end*/) {}
  // seq holds the request's tokens (not yet any draft token).
  virtual void caught_up(int64_t /*seq*/) {}

  ForwardOptions fopt_;

 private:
  // Runs tokens at positions pos.. for seq; logits_ gets the last one's row.
  Status run(int64_t seq, std::span<const TokenId> tokens, int64_t pos);
  // The next draft token from logits_ (greedy or drawn from q) and its probability.
  TokenId pick(int64_t seq, float& confidence, TokenDist* q);

  Model& model_;
  KvCache& cache_;
  int64_t n_batch_;
  Batch batch_;
  std::vector<float> logits_;
  TokenDist q_;                 // a sampled draft token's distribution (reused)
  struct SeqSampling {
    bool greedy = true;
    Sampler sampler{SamplerOptions{}};
  };
  std::unordered_map<int64_t, SeqSampling> sampling_;
  double seconds_per_token_ = 0.0;
};

// A separate draft model: its vocabulary must be the target's, token for token. A recurrent
// draft model (state-space layers) saves its state once it has caught up with the request's
// tokens, before drafting: the next request, which starts with those tokens, goes back to that
// checkpoint and feeds only what was verified since.
class DraftModelDrafter : public ModelDrafter {
 public:
  // n_ctx, n_seq: the target's positions and sequence slots; max_draft: the most tokens one
  // step drafts (the KV shape's n_draft).
  static Result<std::unique_ptr<DraftModelDrafter>> open(const std::string& path, const Model& target,
                                                         const Tokenizer& target_tok, int64_t n_ctx,
                                                         int64_t n_seq, int32_t max_draft, int n_threads);
  ~DraftModelDrafter() override;
  std::string_view name() const override { return "draft"; }
  const Model& model() const;
  // Runs the draft's forward passes on this pool (the target's: two pools' idle workers
  // would spin against each other).
  void share_pool(ThreadPool& pool);

 protected:
  int64_t sync(const DraftRequest& req) override;
  void fed(int64_t seq, std::span<const TokenId> tokens, std::span<const TokenId> drafts) override;
  void caught_up(int64_t seq) override;

 private:
  DraftModelDrafter(std::unique_ptr<LoadedModel> m, std::unique_ptr<KvCache> cache, int64_t n_batch);
  std::unique_ptr<LoadedModel> m_;
  std::unique_ptr<KvCache> own_cache_;
  std::vector<std::vector<TokenId>> held_;  // per sequence slot: the tokens in the draft's KV
};

// The target's first n_layers layers and its output head. On a recurrent target (state-space
// layers) the draft advances the first layers' state too: it checkpoints the target's state
// before drafting and rewinds to it afterwards, and marks the layers it skips as having consumed
// the drafted positions meanwhile (so every state layer ends at the same position and each
// draft pass continues the state, as forward() requires), then restored with the rest.
class LayerSkipDrafter : public ModelDrafter {
 public:
  // n_layers: 1 .. the target's layers - 1.
  static Result<std::unique_ptr<LayerSkipDrafter>> create(Model& target, KvCache& target_cache, int64_t n_layers);
  std::string_view name() const override { return "layerskip"; }
  Status propose(const DraftRequest& req, DraftGoOn go_on, Draft& out) override;
  int64_t n_layers() const { return fopt_.layer_end; }

 protected:
  int64_t sync(const DraftRequest& req) override;
  void ran(int64_t seq, int64_t end) override;

 private:
  LayerSkipDrafter(Model& target, KvCache& cache, int64_t n_layers);
  KvCache& target_cache_;
};

}  // namespace peregrine
