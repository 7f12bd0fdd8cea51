#include "model/tensor_table.h"

#include <algorithm>
#include <unordered_set>

#include <fmt/ranges.h>

#include "quant/dequantize.h"

namespace peregrine {

std::string_view tensor_role_name(TensorRole r) {
  switch (r) {
    case TensorRole::TokenEmbd: return "token embedding";
    case TensorRole::OutputNorm: return "output norm";
    case TensorRole::Output: return "output";
    case TensorRole::RopeFreqs: return "rope frequency factors";
    case TensorRole::AttnNorm: return "attention norm";
    case TensorRole::AttnQkv: return "attention q+k+v";
    case TensorRole::AttnQ: return "attention q";
    case TensorRole::AttnK: return "attention k";
    case TensorRole::AttnV: return "attention v";
    case TensorRole::AttnQBias: return "attention q bias";
    case TensorRole::AttnKBias: return "attention k bias";
    case TensorRole::AttnVBias: return "attention v bias";
    case TensorRole::AttnQNorm: return "attention q norm";
    case TensorRole::AttnKNorm: return "attention k norm";
    case TensorRole::AttnGate: return "attention output gate";
    case TensorRole::AttnOut: return "attention output";
    case TensorRole::PostAttnNorm: return "post-attention norm";
    case TensorRole::FfnNorm: return "ffn norm";
    case TensorRole::FfnGateUp: return "ffn gate+up";
    case TensorRole::FfnGate: return "ffn gate";
    case TensorRole::FfnUp: return "ffn up";
    case TensorRole::FfnDown: return "ffn down";
    case TensorRole::PostFfnNorm: return "post-ffn norm";
    case TensorRole::FfnRouter: return "expert router";
    case TensorRole::FfnExpertBias: return "expert selection bias";
    case TensorRole::FfnGateExps: return "experts' gate";
    case TensorRole::FfnUpExps: return "experts' up";
    case TensorRole::FfnDownExps: return "experts' down";
    case TensorRole::FfnGateShexp: return "shared expert gate";
    case TensorRole::FfnUpShexp: return "shared expert up";
    case TensorRole::FfnDownShexp: return "shared expert down";
    case TensorRole::SsmIn: return "ssm input projection";
    case TensorRole::SsmConv: return "ssm conv1d";
    case TensorRole::SsmConvBias: return "ssm conv1d bias";
    case TensorRole::SsmDtBias: return "ssm dt bias";
    case TensorRole::SsmA: return "ssm A (decay)";
    case TensorRole::SsmD: return "ssm D (skip)";
    case TensorRole::SsmNorm: return "ssm group norm";
    case TensorRole::SsmOut: return "ssm output projection";
  }
  return "?";
}

Status bind_tensors(const gguf::File& file, std::vector<TensorSpec>& table,
                    const std::vector<std::string>& ignorable) {
  std::unordered_set<std::string_view> consumed;
  for (TensorSpec& spec : table) {
    const gguf::TensorInfo* t = file.find_tensor(spec.name);
    if (t == nullptr) {
      if (spec.required) return make_error("{}: missing tensor '{}'", file.name(), spec.name);
      continue;
    }
    consumed.insert(spec.name);
    spec.source = t;
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
  std::vector<std::string_view> unused;
  for (const gguf::TensorInfo& t : file.tensors())
    if (!consumed.count(t.name) && std::find(ignorable.begin(), ignorable.end(), t.name) == ignorable.end())
      unused.push_back(t.name);
  if (!unused.empty()) {
    const size_t shown = std::min<size_t>(unused.size(), 4);
    return make_error("{}: {} tensor{} that this architecture does not use: {}{} (wrong architecture, or a "
                      "variant not supported yet)",
                      file.name(), unused.size(), unused.size() == 1 ? "" : "s",
                      fmt::join(unused.begin(), unused.begin() + std::ptrdiff_t(shown), ", "),
                      unused.size() > shown ? ", ..." : "");
  }
  return Status::Ok();
}

Result<int64_t> read_hparam(const gguf::File& file, const std::string& key, int64_t lo, int64_t hi) {
  PG_ASSIGN(int64_t v, file.get_int(key));
  if (v < lo || v > hi)
    return make_error("{}: metadata '{}' = {} is outside [{}, {}]", file.name(), key, v, lo, hi);
  return v;
}

Result<std::vector<int64_t>> read_layer_hparam(const gguf::File& f, const std::string& key,
                                               int64_t n_layer, int64_t lo, int64_t hi,
                                               int64_t fallback) {
  if (f.find(key) == nullptr) return std::vector<int64_t>(size_t(n_layer), fallback);
  if (f.get_int_array(key).ok()) {
    PG_ASSIGN(std::vector<int64_t> v, f.get_int_array(key));
    if (int64_t(v.size()) != n_layer)
      return make_error("{}: metadata '{}' has {} entries for {} layers", f.name(), key, v.size(), n_layer);
    for (size_t i = 0; i < v.size(); ++i)
      if (v[i] < lo || v[i] > hi)
        return make_error("{}: metadata '{}'[{}] = {} is outside [{}, {}]", f.name(), key, i, v[i], lo, hi);
    return v;
  }
  PG_ASSIGN(int64_t one, read_hparam(f, key, lo, hi));
  return std::vector<int64_t>(size_t(n_layer), one);
}

Status read_decoder_hparams(const gguf::File& f, const std::string& arch, Hparams& hp, bool zero_widths) {
  const std::string a = arch + ".";
  hp.arch = arch;
  hp.name = f.get_string("general.name").ok() ? f.get_string("general.name").value() : "";
  PG_ASSIGN(hp.n_layer, read_hparam(f, a + "block_count", 1, 1024));
  PG_ASSIGN(hp.n_embd, read_hparam(f, a + "embedding_length", 1, 1 << 16));
  auto largest = [](const std::vector<int64_t>& v) { return *std::max_element(v.begin(), v.end()); };
  for (const char* key : {"feed_forward_length", "attention.head_count"})
    if (f.find(a + key) == nullptr) return make_error("{}: missing metadata '{}{}'", f.name(), a, key);
  const int64_t lo = zero_widths ? 0 : 1;
  PG_ASSIGN(auto n_ff, read_layer_hparam(f, a + "feed_forward_length", hp.n_layer, lo, 1 << 18, 0));
  hp.n_ff = largest(n_ff);
  PG_ASSIGN(auto n_head, read_layer_hparam(f, a + "attention.head_count", hp.n_layer, lo, 1024, 0));
  hp.n_head = largest(n_head);
  PG_ASSIGN(auto n_head_kv, read_layer_hparam(f, a + "attention.head_count_kv", hp.n_layer, 0, 1024, 0));
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    int64_t& kv = n_head_kv[size_t(il)];
    const int64_t nh = n_head[size_t(il)];
    if (kv == 0 && !zero_widths) kv = nh;
    if (kv == 0 || nh == 0) continue;  // a layer without attention (zero_widths)
    if (kv > nh || nh % kv != 0)
      return make_error("{}: layer {}: head_count {} is not a multiple of head_count_kv {}", f.name(), il, nh, kv);
  }
  hp.n_head_kv = largest(n_head_kv);
  // The head width: key_length, else n_embd over the first layer's heads that has any.
  hp.head_dim = 0;
  for (int64_t nh : n_head)
    if (nh > 0) {
      hp.head_dim = hp.n_embd / nh;
      break;
    }
  if (f.find(a + "attention.key_length")) {
    PG_ASSIGN(hp.head_dim, read_hparam(f, a + "attention.key_length", 2, 1024));
  }
  const bool attention = hp.n_head > 0;
  if (attention && (hp.head_dim < 2 || hp.head_dim % 2 != 0))
    return make_error("{}: head dimension {} is not a positive even number", f.name(), hp.head_dim);
  hp.rope_dim = hp.head_dim;
  if (attention && f.find(a + "rope.dimension_count")) {
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
  hp.n_head_per_layer = std::move(n_head);
  hp.n_head_kv_per_layer = std::move(n_head_kv);
  hp.n_ff_per_layer = std::move(n_ff);
  return Status::Ok();
}

}  // namespace peregrine
