// Per-layer K/V storage addressed by (sequence slot, position).
// Layout per layer: K and V each [n_seq][n_ctx][n_kv_head * head_dim] of the cache
// type (f16 by default, f32 on request), so a sequence's keys for one layer are one
// contiguous run of positions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

namespace peregrine {

enum class KvType { F32, F16 };
std::string_view kv_type_name(KvType t);
std::optional<KvType> parse_kv_type(std::string_view name);

struct KvShape {
  int64_t n_layer = 0;
  int64_t n_ctx = 0;      // positions per sequence
  int64_t n_seq = 1;      // sequence slots
  int64_t kv_dim = 0;     // n_kv_head * head_dim
  KvType type = KvType::F16;

  size_t elem_bytes() const { return type == KvType::F16 ? 2 : 4; }
  // K and V of every layer for one position.
  int64_t bytes_per_token() const { return 2 * n_layer * kv_dim * int64_t(elem_bytes()); }
};

class KvCache {
 public:
  explicit KvCache(const KvShape& shape);

  const KvShape& shape() const { return shape_; }
  KvType type() const { return shape_.type; }
  size_t bytes() const { return k_.size() + v_.size(); }

  // Writes one position's K and V rows (kv_dim floats each), converting to the cache type.
  void store(int64_t layer, int64_t seq, int64_t pos, const float* k, const float* v);

  // Raw rows: f32 or f16 values as the type says.
  const void* k(int64_t layer, int64_t seq, int64_t pos) const { return k_.data() + offset(layer, seq, pos); }
  const void* v(int64_t layer, int64_t seq, int64_t pos) const { return v_.data() + offset(layer, seq, pos); }
  // One value as float (tests and debugging).
  float k_at(int64_t layer, int64_t seq, int64_t pos, int64_t i) const;
  float v_at(int64_t layer, int64_t seq, int64_t pos, int64_t i) const;

 private:
  size_t offset(int64_t layer, int64_t seq, int64_t pos) const {
    return size_t(((layer * shape_.n_seq + seq) * shape_.n_ctx + pos) * shape_.kv_dim) * shape_.elem_bytes();
  }
  KvShape shape_;
  std::vector<uint8_t> k_, v_;
};

}  // namespace peregrine
