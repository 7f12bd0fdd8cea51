#include "kv/hadamard.h"

#include <cmath>

namespace peregrine {

void hadamard_rotate(float* x, int64_t n) {
  // Butterflies of growing span: (a, b) -> (a + b, a - b), then one scale by 1/sqrt(n).
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  const float s = 1.0f / std::sqrt(float(n));
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

void hadamard_rotate_blocks(float* x, int64_t n, int64_t block) {
  for (int64_t i = 0; i < n; i += block) hadamard_rotate(x + i, block);
}

}  // namespace peregrine
