// What a forward pass may be asked besides its batch: which layers run, who watches the
// activations, and which pool and scratch it uses.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>

#include "core/thread_pool.h"

namespace peregrine {

struct Weight;
struct ForwardScratch;  // model.h

// A named intermediate of a forward pass: rows [rows, cols], row-major, one per batch token.
struct Activation {
  std::string_view name;           // "attn_in", "attn_out", "ffn_in", "ffn_act", "out_in"
  int64_t layer = -1;              // -1 outside the blocks (the output head)
  const float* data = nullptr;     // [rows, cols]
  int64_t rows = 0, cols = 0;
  // The matrices this activation is the input of (e.g. Q, K and V for "attn_in"): what an
  // importance matrix or a pruning statistic accumulates per weight.
  std::span<const Weight* const> consumers;
};

// Called synchronously during forward(), after each named intermediate is complete, on the
// thread that called forward(). The data is only valid during the call.
class ActivationObserver {
 public:
  virtual ~ActivationObserver() = default;
  virtual void observe(const Activation& a) = 0;
};

struct ForwardOptions {
  // Layers [layer_begin, layer_end) run (layer_end < 0: to the last); a layer outside the range
  // or with run_layer[il] == 0 (when run_layer is not empty) is skipped: the residual stream
  // passes it unchanged and it writes no KV. The output head always runs. A layer-skip draft
  // uses this to run the model's first layers only.
  int64_t layer_begin = 0;
  int64_t layer_end = -1;
  std::span<const uint8_t> run_layer;
  ActivationObserver* observer = nullptr;
  ThreadPool* pool = nullptr;        // null: the model's own pool
  ForwardScratch* scratch = nullptr;  // null: the model's own scratch

  bool runs(int64_t il) const {
    if (il < layer_begin || (layer_end >= 0 && il >= layer_end)) return false;
    return run_layer.empty() || (size_t(il) < run_layer.size() && run_layer[size_t(il)] != 0);
  }
};

}  // namespace peregrine
