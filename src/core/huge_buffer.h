// A large zero-filled buffer (the KV cache) backed by transparent huge pages where the kernel
// offers them. Attention reads each KV head's piece of every cache row, a few hundred bytes
// apart: with 4 KiB pages that is a TLB miss every ~10 rows and the hardware prefetcher stops at
// each page boundary; 2 MiB pages remove both. Linux's default THP mode is "madvise", so the
// buffer asks for them (MADV_HUGEPAGE) on a 2 MiB-aligned anonymous mapping. Pages are faulted
// in (zeroed) on first touch, like calloc's; elsewhere, or when the kernel declines, it is an
// ordinary mapping.
#pragma once

#include <cstddef>
#include <cstdint>

namespace peregrine {

class HugeBuffer {
 public:
  HugeBuffer() = default;
  // bytes zeroed bytes (at least 1); null data() when the mapping fails.
  explicit HugeBuffer(size_t bytes);
  ~HugeBuffer();
  HugeBuffer(HugeBuffer&& o) noexcept;
  HugeBuffer& operator=(HugeBuffer&& o) noexcept;
  HugeBuffer(const HugeBuffer&) = delete;
  HugeBuffer& operator=(const HugeBuffer&) = delete;

  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  // Whether the kernel accepted MADV_HUGEPAGE for the buffer (it may still back parts with
  // small pages when it cannot find free 2 MiB ones).
  bool huge() const { return huge_; }

 private:
  void release();
  uint8_t* data_ = nullptr;  // inside the mapping, 2 MiB-aligned
  void* map_ = nullptr;      // the whole mapping
  size_t size_ = 0, map_size_ = 0;
  bool huge_ = false;
};

}  // namespace peregrine
