#include "core/huge_buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <utility>

namespace peregrine {

namespace {
constexpr size_t kHugePage = size_t(2) << 20;
}  // namespace

HugeBuffer::HugeBuffer(size_t bytes) {
  size_ = std::max<size_t>(bytes, 1);
  // Small buffers gain nothing from a 2 MiB page; big ones get a mapping one huge page larger
  // than asked, so that a 2 MiB-aligned start fits inside it.
  const bool want_huge = size_ >= kHugePage;
  map_size_ = want_huge ? (size_ + kHugePage - 1) / kHugePage * kHugePage + kHugePage : size_;
  void* p = mmap(nullptr, map_size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    map_size_ = size_ = 0;
    return;
  }
  map_ = p;
  auto start = reinterpret_cast<uintptr_t>(p);
  if (want_huge) {
    start = (start + kHugePage - 1) / kHugePage * kHugePage;
#ifdef MADV_HUGEPAGE
    huge_ = madvise(reinterpret_cast<void*>(start), (size_ + kHugePage - 1) / kHugePage * kHugePage,
                    MADV_HUGEPAGE) == 0;
#endif
  }
  data_ = reinterpret_cast<uint8_t*>(start);
}

HugeBuffer::~HugeBuffer() { release(); }

HugeBuffer::HugeBuffer(HugeBuffer&& o) noexcept { *this = std::move(o); }

HugeBuffer& HugeBuffer::operator=(HugeBuffer&& o) noexcept {
  if (this != &o) {
    release();
    data_ = std::exchange(o.data_, nullptr);
    map_ = std::exchange(o.map_, nullptr);
    size_ = std::exchange(o.size_, 0);
    map_size_ = std::exchange(o.map_size_, 0);
    huge_ = std::exchange(o.huge_, false);
  }
  return *this;
}

void HugeBuffer::release() {
  if (map_ != nullptr) munmap(map_, map_size_);
  map_ = nullptr;
  data_ = nullptr;
  size_ = map_size_ = 0;
  huge_ = false;
}

}  // namespace peregrine
