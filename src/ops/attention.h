// Causal grouped-query attention of a batch against the KV cache.
#pragma once

#include <cstdint>

#include "core/status.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"

namespace peregrine {

struct AttentionShape {
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  float scale = 1.0f;  // usually 1/sqrt(head_dim)
  // The model's RoPE ("normal" variant, adjacent pairs), for layers with attention sinks:
  // once the positions between the sinks and the window have been evicted, the sink keys
  // are rotated on the fly to sit just before the window, as StreamingLLM assigns positions
  // within the cache; the query-to-key distances then never exceed sinks + window.
  int64_t rope_dim = 0;  // 0: keys are not position-encoded by rotation
  float rope_base = 10000.0f;
};

// q[n_tok, n_head*head_dim] -> out[n_tok, n_head*head_dim]. Token t (sequence
// seq[t], position pos[t]) attends to the positions its layer's kind lets it see
// (KvCache::spans), which must already hold this batch's keys and values. Query head h
// reads KV head h / (n_head / n_head_kv) in place: nothing is copied per head.
// The attention kinds of a cache that attention() can run with this shape.
Status check_attention(const KvShape& kv, const AttentionShape& s);

// An evicting layer (KvShape::evicting) also accumulates its entries' scores and, after the
// step, compacts the heads over budget (KvCache::after_step): the cache is not const.
void attention(const float* q, const int32_t* pos, const int32_t* seq, int64_t n_tok,
               KvCache& cache, int64_t layer, const AttentionShape& s, float* out,
               ThreadPool& pool);

}  // namespace peregrine
