// Per-layer K/V storage addressed by (sequence slot, position).
// Layout per layer: K and V each [n_seq][n_ctx][n_kv_head * head_dim] f32, so a
// sequence's keys for one layer are one contiguous run of positions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace peregrine {

struct KvShape {
  int64_t n_layer = 0;
  int64_t n_ctx = 0;      // positions per sequence
  int64_t n_seq = 1;      // sequence slots
  int64_t kv_dim = 0;     // n_kv_head * head_dim
};

class KvCache {
 public:
  explicit KvCache(const KvShape& shape);

  const KvShape& shape() const { return shape_; }
  float* k(int64_t layer, int64_t seq, int64_t pos) { return at(k_, layer, seq, pos); }
  float* v(int64_t layer, int64_t seq, int64_t pos) { return at(v_, layer, seq, pos); }
  const float* k(int64_t layer, int64_t seq, int64_t pos) const { return at(k_, layer, seq, pos); }
  const float* v(int64_t layer, int64_t seq, int64_t pos) const { return at(v_, layer, seq, pos); }
  size_t bytes() const { return (k_.size() + v_.size()) * sizeof(float); }
  int64_t bytes_per_token() const { return 2 * shape_.n_layer * shape_.kv_dim * int64_t(sizeof(float)); }

 private:
  float* at(std::vector<float>& b, int64_t layer, int64_t seq, int64_t pos) const {
    return const_cast<float*>(b.data()) + offset(layer, seq, pos);
  }
  const float* at(const std::vector<float>& b, int64_t layer, int64_t seq, int64_t pos) const {
    return b.data() + offset(layer, seq, pos);
  }
  size_t offset(int64_t layer, int64_t seq, int64_t pos) const {
    return size_t(((layer * shape_.n_seq + seq) * shape_.n_ctx + pos) * shape_.kv_dim);
  }
  KvShape shape_;
  std::vector<float> k_, v_;
};

}  // namespace peregrine
