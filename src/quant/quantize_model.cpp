#include "quant/quantize_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "quant/quantize_imatrix.h"
#include "quant/type_table.h"

namespace peregrine {
namespace {

constexpr uint32_t kQuantizationVersion = 2;  // ggml's GGML_QNT_VERSION

// The hyperparameters the mix rules read, from the input's metadata.
Result<MixModel> read_mix_model(const gguf::File& f, bool has_imatrix) {
  MixModel m;
  m.has_imatrix = has_imatrix;
  PG_ASSIGN(const std::string arch, f.get_string("general.architecture"));
  auto first_int = [&](const std::string& key, int64_t fallback) -> Result<int64_t> {
    const gguf::Value* v = f.find(key);
    if (v == nullptr) return fallback;
    if (v->type == gguf::ValueType::ARRAY) {
      PG_ASSIGN(auto xs, f.get_int_array(key));
      if (xs.empty()) return make_error("{}: metadata '{}' is an empty array", f.name(), key);
      return xs[0];
    }
    return f.get_int(key);
  };
  PG_ASSIGN(m.n_layer, first_int(arch + ".block_count", 0));
  PG_ASSIGN(const int64_t n_head, first_int(arch + ".attention.head_count", 0));
  PG_ASSIGN(const int64_t n_head_kv, first_int(arch + ".attention.head_count_kv", n_head));
  PG_ASSIGN(m.n_expert, first_int(arch + ".expert_count", 0));
  if (m.n_layer < 0 || m.n_layer > 100000 || n_head < 0 || n_head_kv < 0 || m.n_expert < 0 || m.n_expert > 100000)
    return make_error("{}: implausible block_count, head counts or expert_count", f.name());
  m.n_gqa = n_head_kv > 0 ? n_head / n_head_kv : 1;
  m.is_falcon = arch == "falcon";
  // llama's LLM_TYPE_70B, as each architecture's load_hparams sets it (the only model size
  // the rules read): llama with 80 layers and grouped KV heads (80 layers with as many KV as
  // query heads is LLaMA-1 65B; 8 experts are Mixtral sizes), qwen2, deci and olmo with 80
  // layers, jais2 with 68.
  m.is_70b = (arch == "llama" && m.n_layer == 80 && n_head != n_head_kv && m.n_expert != 8) ||
             ((arch == "qwen2" || arch == "deci" || arch == "olmo") && m.n_layer == 80) ||
             (arch == "jais2" && m.n_layer == 68);
  return m;
}

// The importance vector for a tensor, [n_mat][n_cols], or empty when the matrix has none.
Result<std::vector<float>> importance_for(const Imatrix* im, const gguf::TensorInfo& t) {
  if (im == nullptr) return std::vector<float>{};
  const ImatrixEntry* e = im->find(t.name);
  if (e == nullptr) return std::vector<float>{};
  const uint64_t n_mat = t.dims.size() > 2 ? t.dims[2] : 1;
  // Compared as llama-quantize does: the entry's size against n_cols x n_mat.
  if (uint64_t(e->n_cols) * uint64_t(e->n_mat) != t.dims[0] * n_mat) {
    // llama-quantize skips the token embedding here (its imatrix entry, if any, is never a
    // matmul input of the right width) and refuses every other mismatch.
    if (t.name == "token_embd.weight" || t.name == "per_layer_token_embd.weight") return std::vector<float>{};
    return make_error("imatrix entry '{}' is [{} x {}] but the tensor has rows of {} in {} matrices", t.name,
                      e->n_mat, e->n_cols, t.dims[0], n_mat);
  }
  std::vector<float> w = e->importance();
  for (float x : w)
    if (!std::isfinite(x)) return make_error("imatrix entry '{}' holds a non-finite value", t.name);
  return w;
}

// Decodes and re-encodes rows [r0, r1) of t into out (rows of the target's row size).
Status convert_rows(const gguf::TensorInfo& t, const TypeInfo& to, const std::vector<float>& importance,
                    int64_t r0, int64_t r1, std::vector<float>& row, uint8_t* out) {
  const TypeInfo& from = type_info(t.type);
  const int64_t n = int64_t(t.dims[0]);
  const size_t in_row = size_t(n / from.block_elems * from.block_bytes);
  const size_t out_row = size_t(n / to.block_elems * to.block_bytes);
  const int64_t rows_per_mat = t.dims.size() > 1 ? int64_t(t.dims[1]) : 1;
  const QuantizeImatrixFn weighted = importance.empty() ? nullptr : to.quantize_imatrix;
  row.resize(size_t(n));
  for (int64_t r = r0; r < r1; ++r) {
    from.dequantize(t.data + size_t(r) * in_row, row.data(), n);
    for (int64_t k = 0; k < n; ++k)
      if (!std::isfinite(row[size_t(k)]))
        return make_error("tensor '{}' row {} holds a NaN or infinite value", t.name, r);
    uint8_t* dst = out + size_t(r) * out_row;
    if (weighted != nullptr) weighted(row.data(), dst, n, importance.data() + size_t(r / rows_per_mat) * size_t(n));
    else to.quantize(row.data(), dst, n);
  }
  return Status::Ok();
}

}  // namespace

Result<QuantizeModelReport> quantize_model(const QuantizeModelOptions& o) {
  PG_ASSERT(o.mix != nullptr && o.pool != nullptr);
  const auto start = std::chrono::steady_clock::now();
  PG_ASSIGN(auto file, gguf::File::open(o.input));
  const gguf::File& in = *file;
  PG_ASSIGN(const MixModel model, read_mix_model(in, o.imatrix != nullptr));

  std::vector<MixTensor> descs;
  descs.reserve(in.tensors().size());
  for (const auto& t : in.tensors()) descs.push_back(MixTensor{t.name, t.dims, t.type});
  PG_ASSIGN(const auto choices, choose_tensor_types(*o.mix, model, descs, o.mix_options));

  gguf::Writer w;
  PG_TRY(gguf::copy_metadata(in, w));
  // Re-set keys move to the end, as in llama-quantize (gguf_set_val removes, then appends).
  auto reset_u32 = [&](std::string_view key, uint32_t v) {
    w.remove(key);
    return w.set_u32(key, v);
  };
  auto reset_string = [&](std::string_view key, std::string v) {
    w.remove(key);
    return w.set_string(key, std::move(v));
  };
  PG_TRY(reset_u32("general.quantization_version", kQuantizationVersion));
  PG_TRY(reset_u32("general.file_type", o.mix->file_type));
  for (const char* key : {"split.no", "split.count", "split.tensors.count"}) w.remove(key);
  if (o.imatrix != nullptr) {
    if (!o.imatrix_path.empty()) PG_TRY(reset_string("quantize.imatrix.file", o.imatrix_path.substr(0, 127)));
    if (!o.imatrix->datasets.empty())
      PG_TRY(reset_string("quantize.imatrix.dataset", o.imatrix->datasets[0].substr(0, 127)));
    PG_TRY(reset_u32("quantize.imatrix.entries_count", uint32_t(o.imatrix->entries.size())));
    if (o.imatrix->chunk_count > 0) PG_TRY(reset_u32("quantize.imatrix.chunks_count", o.imatrix->chunk_count));
  }

  QuantizeModelReport report;
  report.file_bytes_in = in.file_size();
  const std::vector<size_t> order = llama_tensor_order(descs);
  std::vector<std::vector<float>> importance(order.size());
  for (size_t i : order) {
    const gguf::TensorInfo& t = in.tensors()[i];
    const MixChoice& ch = choices[i];
    QuantizedTensor q{t.name, t.type, ch.type, t.n_bytes, 0, ch.fell_back, false};
    if (ch.type != t.type) {
      const TypeInfo& to = type_info(ch.type);
      if (to.quantize == nullptr) return make_error("tensor '{}': cannot quantize to {}", t.name, to.name);
      if (type_info(t.type).dequantize == nullptr)
        return make_error("tensor '{}': its type {} cannot be decoded", t.name, type_info(t.type).name);
      PG_ASSIGN(importance[i], importance_for(o.imatrix, t));
      if (importance[i].empty() && ch.needs_imatrix)
        return make_error("tensor '{}': {} in {} needs an importance matrix (--imatrix) for this tensor", t.name,
                          to.name, o.mix->name);
      if (type_info(ch.type).quantize_imatrix == nullptr) importance[i].clear();  // the type ignores importance (ggml too)
      q.used_imatrix = !importance[i].empty();
      report.n_imatrix += q.used_imatrix;
    }
    // ggml writes a tensor's dimensions up to the last one above 1 (ggml_n_dims): a [n, 1, 1]
    // tensor of the input comes out as [n] from llama-quantize, so from us too.
    std::vector<uint64_t> dims = t.dims;
    while (dims.size() > 1 && dims.back() == 1) dims.pop_back();
    PG_TRY(w.add_tensor(t.name, dims, ch.type));
    q.bytes_out = w.tensors().back().n_bytes;
    report.n_elements += t.n_elements;
    report.bytes_in += q.bytes_in;
    report.bytes_out += q.bytes_out;
    report.n_fallback += q.fell_back;
    report.tensors.push_back(std::move(q));
  }

  uint64_t read = 0;
  size_t done = 0;
  std::vector<std::vector<float>> rows(size_t(o.pool->size()));
  auto produce = [&](size_t k, std::span<uint8_t> out) -> Status {
    const size_t i = order[k];
    const gguf::TensorInfo& t = in.tensors()[i];
    const GgmlType to = choices[i].type;
    if (to == t.type) {
      std::memcpy(out.data(), t.data, out.size());
    } else {
      const int64_t n_rows = int64_t(t.rows());
      // Rows per task: about 64k values, so small tensors are not split into crumbs.
      const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 16) / int64_t(t.dims[0]));
      std::vector<Status> errors(size_t(o.pool->size()));
      o.pool->parallel_range(n_rows, grain, [&](int64_t r0, int64_t r1, int thread) {
        if (!errors[size_t(thread)].ok()) return;
        errors[size_t(thread)] =
            convert_rows(t, type_info(to), importance[i], r0, r1, rows[size_t(thread)], out.data());
      });
      for (const Status& s : errors) PG_TRY(s);
      importance[i] = {};
    }
    in.release(t.data, size_t(t.n_bytes));
    read += t.n_bytes;
    if (o.progress) o.progress(++done, order.size(), read, report.bytes_in);
    return Status::Ok();
  };
  if (!o.dry_run) {
    std::error_code same_ec;
    if (std::filesystem::equivalent(o.input, o.output, same_ec))
      return make_error("{}: the output would overwrite the input", o.output);
    PG_TRY(w.write(o.output, produce));
    std::error_code ec;
    report.file_bytes_out = std::filesystem::file_size(o.output, ec);
  }
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace peregrine
