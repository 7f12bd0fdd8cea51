#include "kv/kv_cache.h"

namespace peregrine {

KvCache::KvCache(const KvShape& shape) : shape_(shape) {
  size_t n = size_t(shape.n_layer * shape.n_seq * shape.n_ctx * shape.kv_dim);
  k_.assign(n, 0.0f);
  v_.assign(n, 0.0f);
}

}  // namespace peregrine
