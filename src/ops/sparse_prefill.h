// Block-sparse prefill attention (--sparse-prefill topk:N | topp:P, --sparse-block B), training
// free in the manner of SpargeAttn (Zhang et al. 2025, "SpargeAttn: Accurate Sparse Attention
// Accelerating Any Model Inference"): a prompt's queries and keys are cut into blocks of B
// positions, [b*B, (b+1)*B); a query block estimates how much attention each key block draws from
// mean-pooled queries and keys, and its tokens attend only to the key blocks the estimate picks.
//
// Estimate of query block b against key block c <= b (causal), per KV head:
//   pooled q  = mean over the block's B tokens and the GQA group's query heads of q * scale,
//               Hadamard-rotated when the layer stores its keys rotated (kv/hadamard.h): the
//               frame the kernel scores in;
//   pooled kc = mean of key block c's B rows as the cache holds them (dequantized);
//   est[c]    = pooled q . pooled kc.
// Always kept ("forced"): block 0 (the attention sink), the diagonal block b and b - 1 (local
// context). Then
//   topk:N  the N other blocks of highest estimate;
//   topp:P  with p = softmax(est) over all candidates 0..b, the other blocks in decreasing
//           estimate until the kept mass (forced ones included) reaches P; P = 1 keeps all.
// Ties go to the lower block. A query block attends densely when
//   - it is not complete in the batch (all B positions must be tokens of this batch for that
//     sequence: decode steps and a prompt's partial tail block never change, and a complete
//     block's result does not depend on how the rest of the prompt was split into batches),
//   - it has no more candidates than it would keep (b + 1 <= forced + N; topp: b + 1 <= forced),
//   - the layer is not a plain global one (window, sinks, KIVI or evicting layers are dense).
//
// The selected blocks reach the kernel as runs split at key-block boundaries; with B a multiple
// of the attention tile (16) the kernel reads the same tiles in the same order as dense
// attention minus the dropped ones: a selection that keeps everything is bit-identical to it.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "kv/kv_cache.h"
#include "ops/attention.h"

namespace peregrine {

// Which key blocks the complete query blocks of one attention() call keep.
class SparsePrefillPlan {
 public:
  // Estimates and selects for every complete query block of the batch (q [n_tok, n_head *
  // head_dim], unscaled, as attention() gets it); the cache holds the batch's keys. Nothing
  // (and no allocation) for a layer or batch that attends densely.
  void build(const float* q, const int32_t* pos, const int32_t* seq, int64_t n_tok, const KvCache& cache,
             int64_t layer, const AttentionShape& s, ThreadPool& pool);

  bool empty() const { return blocks_.empty(); }
  // Runs a token can have after restrict_runs(): the size of the runs buffer.
  int max_runs(const KvCache& cache) const;
  // Restricts token t's runs for KV head hk (runs[r] reads spans[r]'s positions, at the head's
  // part) to the key blocks its query block keeps, split at key-block boundaries, in place;
  // returns how many runs remain. A token of a dense query block keeps its runs.
  int restrict_runs(int64_t t, int64_t hk, const KvSpan* spans, AttnRows* runs, int n_runs) const;
  // The key blocks query block b of seq keeps in KV head hk, ascending; empty when it attends
  // densely (tests).
  std::vector<int64_t> kept(int64_t seq, int64_t b, int64_t hk) const;

 private:
  struct QueryBlock {
    int32_t seq;
    int64_t b;     // positions [b * block, (b + 1) * block)
    size_t first;  // first of its tokens in order_
    size_t kept;   // offset of its lists in kept_: [n_kv][b + 1] (room for every block)
  };
  int64_t block_ = 0, n_kv_ = 0;
  std::vector<QueryBlock> blocks_;  // the sparse ones
  std::vector<int32_t> token_block_;  // [n_tok]: index in blocks_, -1 dense
  std::vector<int32_t> order_;        // token indices sorted by (seq, pos)
  std::vector<int32_t> kept_;         // per (query block, KV head): the kept key blocks, ascending
  std::vector<int32_t> n_kept_;       // [blocks_][n_kv]: how many
};

}  // namespace peregrine
