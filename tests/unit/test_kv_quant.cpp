// KIVI's 2-bit KV blocks (BlockQ2, quant/quantize.h): the per-token row quantizer and the
// per-channel group quantizer, against their decoder.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "quant/blocks.h"
#include "quant/dequantize.h"
#include "quant/fp16.h"
#include "quant/quantize.h"

namespace peregrine {
namespace {

int code(const BlockQ2& b, int j) { return (b.qs[j / 4] >> (2 * (j % 4))) & 3; }

// |x - decoded| <= d / 2 for the exact d and m; the stored ones are fp16-rounded, which moves
// the top code's value by up to 3 * |d - d16| and every value by |m - m16|, plus the f32 steps.
void expect_block_within_bound(const float* x, const BlockQ2& b, const float* y, const char* what) {
  const float mn = *std::min_element(x, x + kQK), mx = *std::max_element(x, x + kQK);
  const float d = (mx - mn) / 3.0f, d16 = fp16_to_f32(b.d), m16 = fp16_to_f32(b.m);
  const float bound = d16 / 2 + 3 * std::fabs(d - d16) + std::fabs(mn - m16) + 1e-6f * std::max(std::fabs(mn), std::fabs(mx));
  for (int j = 0; j < kQK; ++j) ASSERT_LE(std::fabs(x[j] - y[j]), bound) << what << " j=" << j << " x=" << x[j];
}

TEST(KvQuant, Q2RowRoundTripsWithinHalfAStep) {
  std::mt19937 rng(21);
  for (float scale : {1e-3f, 1.0f, 40.0f}) {
    std::normal_distribution<float> nd(0.3f * scale, scale);
    std::vector<float> x(32 * 64), y(x.size());
    for (float& v : x) v = nd(rng);
    std::vector<BlockQ2> q(x.size() / kQK);
    quantize_row_q2_ref(x.data(), q.data(), int64_t(x.size()));
    dequantize_row_q2(q.data(), y.data(), int64_t(x.size()));
    for (size_t b = 0; b < q.size(); ++b) {
      expect_block_within_bound(x.data() + b * kQK, q[b], y.data() + b * kQK, "row");
      // The minimum takes code 0, the maximum code 3 (up to the fp16 rounding of d and m).
      const float* xb = x.data() + b * kQK;
      EXPECT_EQ(code(q[b], int(std::min_element(xb, xb + kQK) - xb)), 0);
      EXPECT_EQ(code(q[b], int(std::max_element(xb, xb + kQK) - xb)), 3);
    }
  }
}

TEST(KvQuant, Q2ExactOnFourLevelsAndConstantBlocks) {
  // Values m + k d with m, d fp16-exact: every code exact, decode exact.
  std::vector<float> x(64), y(64);
  for (int j = 0; j < 64; ++j) x[size_t(j)] = (j < 32 ? -1.5f : 2.0f) + float((j * 7) % 4) * (j < 32 ? 0.25f : 0.5f);
  x[0] = -1.5f, x[1] = -1.5f + 0.75f, x[32] = 2.0f, x[33] = 3.5f;  // both extremes in each block
  std::vector<BlockQ2> q(2);
  quantize_row_q2_ref(x.data(), q.data(), 64);
  dequantize_row_q2(q.data(), y.data(), 64);
  for (int j = 0; j < 64; ++j) ASSERT_EQ(y[size_t(j)], x[size_t(j)]) << j;
  // A constant block: d = 0, every code 0, decodes to the constant (an fp16 value here)...
  std::vector<float> c(32, -0.8125f), yc(32);
  quantize_row_q2_ref(c.data(), q.data(), 32);
  EXPECT_EQ(q[0].d, 0);
  for (int j = 0; j < 32; ++j) EXPECT_EQ(code(q[0], j), 0);
  dequantize_row_q2(q.data(), yc.data(), 32);
  for (float v : yc) EXPECT_EQ(v, -0.8125f);
  // ... or to its fp16 rounding, and zeros to zeros.
  std::fill(c.begin(), c.end(), 0.1f);
  quantize_row_q2_ref(c.data(), q.data(), 32);
  dequantize_row_q2(q.data(), yc.data(), 32);
  for (float v : yc) EXPECT_EQ(v, fp16_to_f32(f32_to_fp16(0.1f)));
  std::fill(c.begin(), c.end(), 0.0f);
  quantize_row_q2_ref(c.data(), q.data(), 32);
  dequantize_row_q2(q.data(), yc.data(), 32);
  for (float v : yc) EXPECT_EQ(v, 0.0f);
}

TEST(KvQuant, Q2ChannelGroupQuantizesEachColumnAsARow) {
  std::mt19937 rng(22);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  for (int64_t n_ch : {32, 64, 96}) {
    const int64_t stride = n_ch + 5;  // rows with padding between them
    std::vector<float> rows(size_t(kQK * stride));
    for (float& v : rows) v = nd(rng);
    std::vector<BlockQ2> got(static_cast<size_t>(n_ch));
    quantize_group_q2_channel(rows.data(), stride, n_ch, got.data());
    for (int64_t c = 0; c < n_ch; ++c) {
      float col[kQK], y[kQK];
      for (int j = 0; j < kQK; ++j) col[j] = rows[size_t(j * stride + c)];
      BlockQ2 want;
      quantize_row_q2_ref(col, &want, kQK);
      ASSERT_EQ(got[size_t(c)].d, want.d) << c;
      ASSERT_EQ(got[size_t(c)].m, want.m) << c;
      for (int b = 0; b < kQK / 4; ++b) ASSERT_EQ(got[size_t(c)].qs[b], want.qs[b]) << c;
      dequantize_row_q2(&got[size_t(c)], y, kQK);
      expect_block_within_bound(col, got[size_t(c)], y, "channel");
    }
  }
}

}  // namespace
}  // namespace peregrine
