#include "kv/kv_cache.h"

#include <cstring>

#include "quant/fp16.h"

namespace peregrine {

std::string_view kv_type_name(KvType t) { return t == KvType::F16 ? "f16" : "f32"; }

std::optional<KvType> parse_kv_type(std::string_view name) {
  if (name == "f16") return KvType::F16;
  if (name == "f32") return KvType::F32;
  return std::nullopt;
}

KvCache::KvCache(const KvShape& shape) : shape_(shape) {
  size_t n = size_t(shape.n_layer * shape.n_seq * shape.n_ctx * shape.kv_dim) * shape.elem_bytes();
  k_.assign(n, 0);
  v_.assign(n, 0);
}

void KvCache::store(int64_t layer, int64_t seq, int64_t pos, const float* k, const float* v) {
  const size_t off = offset(layer, seq, pos);
  if (shape_.type == KvType::F32) {
    std::memcpy(k_.data() + off, k, size_t(shape_.kv_dim) * 4);
    std::memcpy(v_.data() + off, v, size_t(shape_.kv_dim) * 4);
    return;
  }
  auto* kh = reinterpret_cast<uint16_t*>(k_.data() + off);
  auto* vh = reinterpret_cast<uint16_t*>(v_.data() + off);
  for (int64_t i = 0; i < shape_.kv_dim; ++i) {
    kh[i] = f32_to_fp16(k[i]);
    vh[i] = f32_to_fp16(v[i]);
  }
}

namespace {
float value_at(KvType t, const void* row, int64_t i) {
  if (t == KvType::F32) return static_cast<const float*>(row)[i];
  return fp16_to_f32(static_cast<const uint16_t*>(row)[i]);
}
}  // namespace

float KvCache::k_at(int64_t layer, int64_t seq, int64_t pos, int64_t i) const {
  return value_at(shape_.type, k(layer, seq, pos), i);
}
float KvCache::v_at(int64_t layer, int64_t seq, int64_t pos, int64_t i) const {
  return value_at(shape_.type, v(layer, seq, pos), i);
}

}  // namespace peregrine
