// HugeBuffer: zero-filled, writable over its whole size, 2 MiB-aligned when large, and moved
// (not copied) with its mapping.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <utility>

#include "core/huge_buffer.h"

namespace peregrine {
namespace {

TEST(HugeBuffer, LargeBuffersAreZeroedAlignedAndWritable) {
  const size_t n = (size_t(5) << 20) + 12345;  // not a multiple of the huge page
  HugeBuffer b(n);
  ASSERT_NE(b.data(), nullptr);
  EXPECT_EQ(b.size(), n);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % (uintptr_t(2) << 20), 0u);
  for (size_t i = 0; i < n; i += 4093) ASSERT_EQ(b.data()[i], 0) << i;
  EXPECT_EQ(b.data()[n - 1], 0);
  std::memset(b.data(), 0xAB, n);  // every byte is ours (ASan would flag a short mapping)
  EXPECT_EQ(b.data()[n - 1], 0xAB);
}

TEST(HugeBuffer, SmallAndEmptyBuffers) {
  HugeBuffer small(100);
  ASSERT_NE(small.data(), nullptr);
  EXPECT_FALSE(small.huge());
  EXPECT_EQ(small.data()[99], 0);
  HugeBuffer zero(0);  // at least one byte, like calloc(max(n, 1))
  ASSERT_NE(zero.data(), nullptr);
  EXPECT_EQ(zero.size(), 1u);
  HugeBuffer none;
  EXPECT_EQ(none.data(), nullptr);
  EXPECT_EQ(none.size(), 0u);
}

TEST(HugeBuffer, MoveHandsOverTheMapping) {
  HugeBuffer a(size_t(3) << 20);
  a.data()[7] = 42;
  uint8_t* const p = a.data();
  HugeBuffer b(std::move(a));
  EXPECT_EQ(a.data(), nullptr);  // NOLINT(bugprone-use-after-move): the moved-from state is specified
  EXPECT_EQ(b.data(), p);
  EXPECT_EQ(b.data()[7], 42);
  HugeBuffer c(64);
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c.size(), size_t(3) << 20);
}

}  // namespace
}  // namespace peregrine
