// The Mamba-2 mixer (Dao & Gu 2024, "Transformers are SSMs"; the SSD layer as llama.cpp runs
// `mamba2` and the Mamba layers of `nemotron_h`): a per-sequence recurrent state instead of K/V.
//
//   zxBCdt = in_proj(RMSNorm(x))               [T, d_inner + conv_ch + n_head]
//   xBC    = SiLU(causal depthwise conv1d(xBC) + bias) over the last d_conv inputs of the sequence
//   x, B, C = xBC split [d_inner | n_group*d_state | n_group*d_state]
//   per head h (group g = h / (n_head / n_group)):  dt = softplus(dt_h + dt_bias_h),
//       S_h = exp(dt * A_h) * S_h + dt * x_h (outer) B_g     S_h [head_dim, d_state]
//       y_h = S_h C_g + D_h * x_h
//   y = RMSNorm_per_group(y * SiLU(z)) * norm     (groups of d_inner / n_group values)
//   out = out_proj(y)                           [T, n_embd]
//
// State per sequence (KvCache::state): the conv window, the last d_conv - 1 rows of xBC
// [d_conv - 1, conv_ch], then S [n_head, head_dim, d_state]. Tokens of a batch run in batch
// order; each sequence's tokens must continue its state (Model::check_batch).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "kv/kv_cache.h"
#include "ops/matmul.h"
#include "ops/weight.h"

namespace peregrine {

struct Mamba2Dims {
  int64_t n_embd = 0;
  int64_t d_inner = 0;   // ssm.inner_size
  int64_t d_state = 0;   // ssm.state_size
  int64_t n_head = 0;    // ssm.time_step_rank
  int64_t n_group = 0;   // ssm.group_count
  int64_t d_conv = 0;    // ssm.conv_kernel

  int64_t head_dim() const { return d_inner / n_head; }
  int64_t conv_channels() const { return d_inner + 2 * n_group * d_state; }  // x, B, C
  int64_t in_proj() const { return d_inner + conv_channels() + n_head; }     // z, xBC, dt
  int64_t conv_state() const { return (d_conv - 1) * conv_channels(); }
  int64_t ssm_state() const { return d_inner * d_state; }
  int64_t state_floats() const { return conv_state() + ssm_state(); }
  // Divisibility and ranges; errors name the file's keys.
  Status check() const;
};

struct Mamba2Weights {
  Weight in;         // ssm_in [n_embd -> in_proj]
  Weight conv;       // ssm_conv1d.weight [conv_ch rows, d_conv]
  Weight conv_bias;  // ssm_conv1d.bias [conv_ch], optional (nemotron_h)
  Weight dt_bias;    // ssm_dt.bias [n_head]
  Weight a;          // ssm_a [n_head]: the converter stores A = -exp(A_log)
  Weight d;          // ssm_d [n_head]
  Weight norm;       // ssm_norm.weight [d_inner] (n_group groups)
  Weight out;        // ssm_out [d_inner -> n_embd]
  std::vector<float> conv_by_tap;  // conv transposed, [d_conv][conv_ch] (prepare_mamba2)
};

// What the mixer derives from the weights once, after they are bound (the conv by tap).
void prepare_mamba2(const Mamba2Dims& dims, Mamba2Weights& w);

struct Mamba2Scratch {
  std::vector<float> proj;  // [T, in_proj]
  std::vector<float> xbc;   // [T, conv_ch] after the conv
  std::vector<float> y;     // [T, d_inner]
};

// out[T, n_embd] = the mixer's output for the batch's tokens (not added to the residual);
// advances each sequence's state in `cache` layer `layer` and marks its positions consumed.
void mamba2_mixer(const Mamba2Dims& dims, const Mamba2Weights& w, MatIn in, const int32_t* seq,
                  const int32_t* pos, int64_t T, KvCache& cache, int64_t layer, float norm_eps, float* out,
                  ThreadPool& pool, OpScratch& ops, Mamba2Scratch& sc);

inline float softplus(float v) { return v > 20.0f ? v : std::log1p(std::exp(v)); }

}  // namespace peregrine
