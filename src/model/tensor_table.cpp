#include "model/tensor_table.h"

#include <fmt/ranges.h>

#include "quant/dequantize.h"

namespace peregrine {

Status bind_tensors(const gguf::File& file, std::vector<TensorSpec>& table) {
  for (TensorSpec& spec : table) {
    const gguf::TensorInfo* t = file.find_tensor(spec.name);
    if (t == nullptr) {
      if (spec.required) return make_error("{}: missing tensor '{}'", file.name(), spec.name);
      continue;
    }
    std::vector<int64_t> dims(t->dims.begin(), t->dims.end());
    // Trailing 1-dims are equivalent; compare the shapes without them.
    auto trim = [](std::vector<int64_t> d) {
      while (d.size() > 1 && d.back() == 1) d.pop_back();
      return d;
    };
    if (trim(dims) != trim(spec.dims))
      return make_error("{}: tensor '{}' has shape [{}] but the model needs [{}]", file.name(),
                        spec.name, fmt::join(dims, ", "), fmt::join(spec.dims, ", "));
    if (!is_supported_weight_type(t->type))
      return make_error("{}: tensor '{}' has type {}, which is not supported yet", file.name(),
                        spec.name, type_name(t->type));
    if (spec.float_only && t->type != GgmlType::F32)
      return make_error("{}: tensor '{}' must be F32 (is {})", file.name(), spec.name,
                        type_name(t->type));
    Weight& w = *spec.dest;
    w.name = spec.name;
    w.type = t->type;
    w.data = t->data;
    w.cols = dims[0];
    w.rows = int64_t(t->n_elements) / dims[0];
    w.row_bytes = *row_bytes(t->type, uint64_t(w.cols));
  }
  return Status::Ok();
}

Result<int64_t> read_hparam(const gguf::File& file, const std::string& key, int64_t lo, int64_t hi) {
  PG_ASSIGN(int64_t v, file.get_int(key));
  if (v < lo || v > hi)
    return make_error("{}: metadata '{}' = {} is outside [{}, {}]", file.name(), key, v, lo, hi);
  return v;
}

Status read_decoder_hparams(const gguf::File& f, const std::string& arch, Hparams& hp) {
  const std::string a = arch + ".";
  hp.arch = arch;
  hp.name = f.get_string("general.name").ok() ? f.get_string("general.name").value() : "";
  PG_ASSIGN(hp.n_layer, read_hparam(f, a + "block_count", 1, 1024));
  PG_ASSIGN(hp.n_embd, read_hparam(f, a + "embedding_length", 1, 1 << 16));
  PG_ASSIGN(hp.n_ff, read_hparam(f, a + "feed_forward_length", 1, 1 << 18));
  PG_ASSIGN(hp.n_head, read_hparam(f, a + "attention.head_count", 1, 1024));
  hp.n_head_kv = hp.n_head;
  if (f.find(a + "attention.head_count_kv")) {
    PG_ASSIGN(hp.n_head_kv, read_hparam(f, a + "attention.head_count_kv", 1, hp.n_head));
  }
  if (hp.n_head % hp.n_head_kv != 0)
    return make_error("{}: head_count {} is not a multiple of head_count_kv {}", f.name(), hp.n_head,
                      hp.n_head_kv);
  hp.head_dim = hp.n_embd / hp.n_head;
  if (f.find(a + "attention.key_length")) {
    PG_ASSIGN(hp.head_dim, read_hparam(f, a + "attention.key_length", 2, 1024));
  }
  if (hp.head_dim % 2 != 0) return make_error("{}: head dimension {} is odd", f.name(), hp.head_dim);
  hp.rope_dim = hp.head_dim;
  if (f.find(a + "rope.dimension_count")) {
    PG_ASSIGN(hp.rope_dim, read_hparam(f, a + "rope.dimension_count", 2, hp.head_dim));
  }
  if (hp.rope_dim % 2 != 0) return make_error("{}: rope.dimension_count is odd", f.name());
  hp.n_ctx_train = 2048;
  if (f.find(a + "context_length")) {
    PG_ASSIGN(hp.n_ctx_train, read_hparam(f, a + "context_length", 1, 1 << 24));
  }
  if (f.find(a + "rope.freq_base")) {
    PG_ASSIGN(double base, f.get_float(a + "rope.freq_base"));
    if (!(base > 1.0 && base < 1e12)) return make_error("{}: rope.freq_base {} is out of range", f.name(), base);
    hp.rope_base = float(base);
  }
  PG_ASSIGN(double eps, f.get_float(a + "attention.layer_norm_rms_epsilon"));
  if (!(eps > 0.0 && eps < 1.0)) return make_error("{}: rms epsilon {} is out of range", f.name(), eps);
  hp.rms_eps = float(eps);
  const gguf::TensorInfo* emb = f.find_tensor("token_embd.weight");
  if (emb == nullptr) return make_error("{}: missing tensor 'token_embd.weight'", f.name());
  if (emb->dims.size() < 2 || emb->dims[1] > (1u << 24))
    return make_error("{}: tensor 'token_embd.weight' has a bad shape", f.name());
  hp.n_vocab = int64_t(emb->dims[1]);
  return Status::Ok();
}

}  // namespace peregrine
