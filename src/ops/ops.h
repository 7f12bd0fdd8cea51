// Tensor-level operations over row-major float activations. Rows are tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "ops/matmul.h"
#include "ops/weight.h"

namespace peregrine {

// y[n_tok, n] = x * weight / rms(x), row by row: y = (x * rms_scale(x)) * weight.
void rmsnorm(const float* x, const float* weight, float* y, int64_t n_tok, int64_t n, float eps);
float rms_scale(const float* x, int64_t n, float eps);  // 1 / sqrt(mean(x^2) + eps)

// x[n] <- relu(x)^2 in place (Nemotron-H's MLP and experts; ggml_relu then ggml_sqr).
void relu_sqr(float* x, int64_t n);

// Rotary embedding: pairs of each head's first rot_dim values are rotated by
// pos * base^(-2i/rot_dim). Adjacent ("normal", llama): pair i is (x[2i], x[2i+1]).
// Neox ("rotate half", Gemma, GPT-NeoX): pair i is (x[i], x[i + rot_dim/2]).
// The angles depend only on the position, so a forward pass computes their cos/sin once
// for all layers: cs[n_tok, rot_dim/2, 2] (cos, sin), in double precision then rounded
// (positions reach 1e5+ and a float angle loses the phase).
enum class RopeStyle { Adjacent, Neox };
// pos_scale > 1: linear position scaling (positions divided by it). The plain case of
// rope_scaling.h's tables (which add YaRN and per-dimension frequency factors).
void rope_angles(const int32_t* pos, int64_t n_tok, int64_t rot_dim, float base,
                 std::vector<float>& cs, float pos_scale = 1.0f);
// In place on x[n_tok, n_heads * head_dim].
void rope_apply(float* x, const float* cs, int64_t n_tok, int64_t n_heads, int64_t head_dim,
                int64_t rot_dim, RopeStyle style = RopeStyle::Adjacent);
inline void rope_adjacent(float* x, const float* cs, int64_t n_tok, int64_t n_heads,
                          int64_t head_dim, int64_t rot_dim) {
  rope_apply(x, cs, n_tok, n_heads, head_dim, rot_dim, RopeStyle::Adjacent);
}
// Rotates K on its way into the cache (no rotated copy in the activations) and
// stores V: k, v [n_tok, n_heads_kv * head_dim].
void rope_store_kv(KvCache& cache, int64_t layer, const int32_t* seq, const int32_t* pos,
                   const float* k, const float* v, const float* cs, int64_t n_tok,
                   int64_t n_heads_kv, int64_t head_dim, int64_t rot_dim,
                   RopeStyle style = RopeStyle::Adjacent);

// RMSNorm of every head of x[n_tok, n_heads * head_dim] in place, one weight[head_dim]
// for all heads (Gemma 3's QK-norm).
void rmsnorm_heads(float* x, const float* weight, int64_t n_tok, int64_t n_heads,
                   int64_t head_dim, float eps);


// Embedding lookup: out[n_tok, W.cols] <- rows of W (any supported type).
void embed_rows(const Weight& w, const int32_t* tokens, int64_t n_tok, float* out);

}  // namespace peregrine
