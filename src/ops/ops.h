// Tensor-level operations over row-major float activations. Rows are tokens.
#pragma once

#include <cstdint>
#include <vector>

#include "core/thread_pool.h"
#include "ops/matmul.h"
#include "ops/weight.h"

namespace peregrine {

// y[n_tok, n] = x * weight / rms(x), row by row.
void rmsnorm(const float* x, const float* weight, float* y, int64_t n_tok, int64_t n, float eps);

// In-place rotary embedding on x[n_tok, n_heads * head_dim], "normal" variant:
// rotates adjacent pairs (x[2i], x[2i+1]) by pos * base^(-2i/rot_dim) for 2i < rot_dim.
void rope_adjacent(float* x, const int32_t* pos, int64_t n_tok, int64_t n_heads,
                   int64_t head_dim, int64_t rot_dim, float base);

// g[n] <- silu(g) * u
void swiglu(float* g, const float* u, int64_t n);

// Embedding lookup: out[n_tok, W.cols] <- rows of W (any supported type).
void embed_rows(const Weight& w, const int32_t* tokens, int64_t n_tok, float* out);

}  // namespace peregrine
