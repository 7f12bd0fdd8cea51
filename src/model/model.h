// What a model is: hyperparameters, a batch in, logits out. Every architecture
// implements Model in one file under model/arch/ and has one line in registry.cpp.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/status.h"
#include "core/thread_pool.h"
#include "gguf/gguf.h"
#include "kv/kv_cache.h"
#include "model/blocks/mamba2.h"
#include "model/blocks/moe.h"
#include "model/forward.h"
#include "model/layer_spec.h"
#include "ops/matmul.h"
#include "ops/weight.h"

namespace peregrine {

// A list of (token, position, sequence, wants-logits). Prompt processing,
// generation, chunked prefill and continuous batching are all just batches.
struct Batch {
  std::vector<int32_t> tokens;
  std::vector<int32_t> pos;
  std::vector<int32_t> seq;
  std::vector<uint8_t> want_logits;

  void clear() { tokens.clear(); pos.clear(); seq.clear(); want_logits.clear(); }
  void add(int32_t token, int32_t position, int32_t sequence, bool logits) {
    tokens.push_back(token);
    pos.push_back(position);
    seq.push_back(sequence);
    want_logits.push_back(logits ? 1 : 0);
  }
  int64_t size() const { return int64_t(tokens.size()); }
  int64_t n_logits() const;
};

struct Hparams {
  std::string arch;
  std::string name;
  int64_t n_vocab = 0;
  int64_t n_ctx_train = 0;
  int64_t n_embd = 0;
  int64_t n_layer = 0;
  int64_t n_head = 0;
  int64_t n_head_kv = 0;
  int64_t head_dim = 0;
  int64_t n_ff = 0;
  int64_t rope_dim = 0;  // rotated dimensions per head
  float rope_base = 10000.0f;
  float rms_eps = 1e-5f;
  // Per-layer widths as the file states them (n_head, n_head_kv and n_ff above are the
  // largest); every layer's entry, also when the file gives one value for all.
  std::vector<int64_t> n_head_per_layer, n_head_kv_per_layer, n_ff_per_layer;
};

struct TensorSpec;

// Activation buffers of a decoder's forward pass, grown to the largest batch seen (so a decode
// step allocates nothing). The architectures add their own (RoPE tables) beside them.
struct DecoderActivations {
  int64_t cap = 0;
  std::vector<float> x;     // [T, n_embd] the residual stream
  std::vector<float> xn;    // [T, max(n_embd, q_dim)] a projection's output
  std::vector<float> q;     // [T, n_head * head_dim]
  std::vector<float> k, v;  // [T, n_head_kv * head_dim]
  std::vector<float> att;   // [T, n_head * head_dim]
  std::vector<float> gate;  // [T, n_ff]
  // Sized for the widest layer.
  void reserve(int64_t T, int64_t n_embd, int64_t q_dim, int64_t kv_dim, int64_t n_ff);
};

// The scratch of a forward pass: activations, the matmuls' quantized inputs and the RoPE
// tables. A model owns one; ForwardOptions::scratch lends it another (a second caller).
struct ForwardScratch {
  DecoderActivations act;
  OpScratch ops;
  std::vector<std::vector<float>> rope;  // per RoPE table: [T, rope_dim/2, 2] cos/sin
  std::vector<float> observed;           // an observed matmul input, normalised [T, cols]
  Mamba2Scratch ssm;                     // state-space layers
  MoeScratch moe;                        // routed-expert layers
  MoeStats moe_stats;                    // what the routed-expert layers read, summed over passes
};

class Model {
 public:
  virtual ~Model() = default;
  const Hparams& hparams() const { return hp_; }
  const gguf::File& file() const { return *file_; }

  // Runs the batch: writes its K/V into the cache, then fills `logits` with
  // [batch.n_logits(), n_vocab] rows, in batch order. Bad tokens, positions or
  // sequence ids give an error and leave the cache unchanged. `opt` chooses the layers that
  // run, an activation observer, the pool and the scratch (forward.h).
  virtual Status forward(const Batch& batch, KvCache& cache, std::vector<float>& logits,
                         const ForwardOptions& opt) = 0;
  Status forward(const Batch& batch, KvCache& cache, std::vector<float>& logits) {
    return forward(batch, cache, logits, ForwardOptions{});
  }

  // Each layer's mixer, FFN and widths.
  const std::vector<LayerSpec>& layers() const { return layers_; }
  // The tensors the model expects and what each is for (bound to the file's on load).
  const std::vector<TensorSpec>& tensors() const { return *tensors_; }
  // One line on anything the architecture reads beyond the common hyperparameters (RoPE
  // scaling, attention scale), for `info`; empty when nothing.
  virtual std::string describe_extras() const { return {}; }

  // The cache this model needs for n_ctx positions and n_seq sequences. Each layer gets
  // the model's own attention kind (window layers of Gemma 3, say); `global_override`
  // replaces the kind of the global layers (e.g. sinks + window for a llama model).
  // n_batch: the most tokens of one sequence a forward pass writes.
  KvShape kv_shape(int64_t n_ctx, int64_t n_seq, const KvConfig& kv = {},
                   const AttnKind& global_override = AttnKind::global(), int64_t n_batch = 512) const;
  // Whether forward() can run with this cache (attention kinds it supports).
  virtual Status check_kv(const KvShape&) const { return Status::Ok(); }
  // Per-layer attention kinds from the model's metadata (none for layers without attention).
  std::vector<AttnKind> attn_kinds() const;
  // Whether some layer keeps recurrent state (state-space layers) instead of K/V.
  bool recurrent() const;
  // Width of a K (= V) row of the attention layers (the widest; 0 without attention layers).
  int64_t kv_dim() const;
  // Weight bytes actually used by the model.
  virtual size_t weight_bytes() const = 0;
  // What the routed-expert layers have read in this model's own forward passes (summed since
  // load); null for a model without them.
  virtual const MoeStats* moe_stats() const { return nullptr; }

  // Load-time repacking of matmul weights for the panel kernels (kernels/packed.h).
  struct PackStats {
    int64_t matrices = 0;
    size_t bytes = 0;
    double seconds = 0.0;
  };
  const PackStats& pack_stats() const { return pack_stats_; }

 protected:
  Status check_batch(const Batch& batch, const KvCache& cache) const;
  // Final RMSNorm and output projection of the rows of x [batch.size(), n_embd] that want
  // logits (x is compacted in place): logits [batch.n_logits(), n_vocab].
  void output_head(const Batch& batch, float* x, const Weight& norm, const Weight& output,
                   std::vector<float>& logits, ThreadPool& pool, OpScratch& scratch) const;
  // Packs each weight the kernels have a panel layout for. With release_source the
  // file's pages of that weight are dropped afterwards (nothing else reads them).
  Status pack_weights(std::initializer_list<Weight*> weights, bool release_source);
  PackStats pack_stats_;
  Hparams hp_;
  std::vector<LayerSpec> layers_;
  std::shared_ptr<std::vector<TensorSpec>> tensors_;
  std::shared_ptr<const gguf::File> file_;
};

// Build the model named by the file's general.architecture.
Result<std::unique_ptr<Model>> load_model(std::shared_ptr<const gguf::File> file, ThreadPool& pool);

// The architectures the registry knows, for messages and `info`.
std::vector<std::string> supported_architectures();

}  // namespace peregrine
