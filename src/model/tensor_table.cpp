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

}  // namespace peregrine
