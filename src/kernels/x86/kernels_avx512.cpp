// AVX-512 kernels: not written yet (fast CPU kernels issue). Dispatch falls back
// to AVX2 when this returns nullptr.
#include "kernels/kernels.h"

namespace peregrine {

const KernelTable* avx512_kernels() { return nullptr; }

}  // namespace peregrine
