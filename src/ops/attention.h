// Causal grouped-query attention of a batch against the KV cache.
#pragma once

#include <cstdint>

#include "core/thread_pool.h"
#include "kv/kv_cache.h"

namespace peregrine {

struct AttentionShape {
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  float scale = 1.0f;  // usually 1/sqrt(head_dim)
};

// q[n_tok, n_head*head_dim] -> out[n_tok, n_head*head_dim]. Token t (sequence
// seq[t], position pos[t]) attends to cache positions 0..pos[t] of its sequence,
// which must already hold this batch's keys and values. Query head h reads KV head
// h / (n_head / n_head_kv) in place: nothing is copied per head.
void attention(const float* q, const int32_t* pos, const int32_t* seq, int64_t n_tok,
               const KvCache& cache, int64_t layer, const AttentionShape& s, float* out,
               ThreadPool& pool);

}  // namespace peregrine
