// K-quant formats (Q2_K .. Q6_K) and Q8_K: block geometry, Q8_K quantization, and the
// scalar weight x Q8_K dot products against the dequantized math. The ternary formats
// (TQ1_0, TQ2_0): geometry, TQ1_0's base-3 bytes, dequantization. The bit layouts
// themselves are checked against gguf-py in tests/reference/test_dequant.py.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "quant/dequantize.h"
#include "quant/fp16.h"
#include "quant/ggml_type.h"
#include "quant/kquants.h"

namespace peregrine {
namespace {

using DotFn = float (*)(const void*, const BlockQ8K*, int64_t);

struct KType {
  GgmlType type;
  size_t size;        // sizeof the block struct
  size_t d_offset;    // byte offset of the fp16 d
  int dmin_offset;    // byte offset of the fp16 dmin, -1 if the format has none
  DotFn dot;
};

const KType kTypes[] = {
    {GgmlType::Q2_K, sizeof(BlockQ2K), offsetof(BlockQ2K, d), int(offsetof(BlockQ2K, dmin)), dot_q2_k_q8_k},
    {GgmlType::Q3_K, sizeof(BlockQ3K), offsetof(BlockQ3K, d), -1, dot_q3_k_q8_k},
    {GgmlType::Q4_K, sizeof(BlockQ4K), offsetof(BlockQ4K, d), int(offsetof(BlockQ4K, dmin)), dot_q4_k_q8_k},
    {GgmlType::Q5_K, sizeof(BlockQ5K), offsetof(BlockQ5K, d), int(offsetof(BlockQ5K, dmin)), dot_q5_k_q8_k},
    {GgmlType::Q6_K, sizeof(BlockQ6K), offsetof(BlockQ6K, d), -1, dot_q6_k_q8_k},
};

void put_fp16(std::vector<uint8_t>& buf, size_t at, float v) {
  uint16_t h = f32_to_fp16(v);
  std::memcpy(buf.data() + at, &h, 2);
}

// nb random super-blocks: random bytes for quants and sub-block scales, then d (and
// dmin) overwritten by the values pick() returns.
template <typename Pick>
std::vector<uint8_t> random_blocks(const KType& t, int64_t nb, std::mt19937& rng, Pick pick) {
  std::vector<uint8_t> buf(t.size * size_t(nb));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : buf) b = uint8_t(byte(rng));
  for (int64_t i = 0; i < nb; ++i) {
    put_fp16(buf, size_t(i) * t.size + t.d_offset, pick());
    if (t.dmin_offset >= 0) put_fp16(buf, size_t(i) * t.size + size_t(t.dmin_offset), pick());
  }
  return buf;
}

// Sane scales as real files have them: magnitude 1e-3 .. 5e-2, either sign.
std::vector<uint8_t> random_blocks(const KType& t, int64_t nb, std::mt19937& rng) {
  std::uniform_real_distribution<float> mag(0.001f, 0.05f);
  std::bernoulli_distribution neg(0.25);
  return random_blocks(t, nb, rng, [&] { return neg(rng) ? -mag(rng) : mag(rng); });
}

// Activations whose magnitude changes from super-block to super-block.
std::vector<float> random_activations(int64_t nb, std::mt19937& rng) {
  std::vector<float> x(size_t(nb) * kQK_K);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int64_t i = 0; i < nb; ++i) {
    const float s = std::ldexp(1.0f, int(i % 7) - 3);
    for (int l = 0; l < kQK_K; ++l) x[size_t(i) * kQK_K + l] = s * g(rng);
  }
  return x;
}

TEST(KQuant, BlockGeometryMatchesTheTypeTable) {
  for (const KType& t : kTypes) {
    auto tr = type_traits(uint32_t(t.type));
    ASSERT_TRUE(tr) << type_name(t.type);
    EXPECT_EQ(tr->block_elems, uint32_t(kQK_K)) << type_name(t.type);
    EXPECT_EQ(tr->block_bytes, t.size) << type_name(t.type);
    EXPECT_EQ(row_bytes(t.type, 3 * kQK_K), 3 * t.size) << type_name(t.type);
    EXPECT_FALSE(row_bytes(t.type, kQK_K + 32)) << type_name(t.type) << ": 288 is not whole super-blocks";
    EXPECT_TRUE(is_dequantizable_type(t.type)) << type_name(t.type);
    // matmul runs them (scalar row kernels on Q8_K activations, test_matmul_types.cpp).
    EXPECT_TRUE(is_supported_weight_type(t.type)) << type_name(t.type);
  }
  EXPECT_EQ(type_traits(uint32_t(GgmlType::Q8_K))->block_bytes, sizeof(BlockQ8K));
  EXPECT_FALSE(is_dequantizable_type(GgmlType::Q8_K));  // activation-only, never in a file
  EXPECT_FALSE(is_supported_weight_type(GgmlType::Q8_K));
  for (GgmlType t :
       {GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1})
    EXPECT_TRUE(is_dequantizable_type(t) && is_supported_weight_type(t)) << type_name(t);
}

// Pack 8 scales and 8 mins of 6 bits the way kquants.h describes Q4_K's 12 bytes (bytes
// 0..7 hold the low 6 bits of entries 0..3 and lend their top 2 bits to entries 4..7,
// whose low nibbles share bytes 8..11), then unpack with the library.
TEST(KQuant, Q4KScalePackingRoundTrips) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> six(0, 63);
  for (int rep = 0; rep < 200; ++rep) {
    int sc[8], mn[8];
    for (int k = 0; k < 8; ++k) sc[k] = six(rng), mn[k] = six(rng);
    uint8_t b[12];
    for (int k = 0; k < 4; ++k) {
      b[k] = uint8_t((sc[k] & 63) | ((sc[k + 4] >> 4) << 6));
      b[k + 4] = uint8_t((mn[k] & 63) | ((mn[k + 4] >> 4) << 6));
      b[k + 8] = uint8_t((sc[k + 4] & 15) | ((mn[k + 4] & 15) << 4));
    }
    for (int k = 0; k < 8; ++k) {
      int s, m;
      k4_scale_min(b, k, &s, &m);
      ASSERT_EQ(s, sc[k]) << "scale " << k;
      ASSERT_EQ(m, mn[k]) << "min " << k;
    }
  }
}

TEST(KQuant, Q3KScalesAreSixBitSigned) {
  // All bits set: every scale is 63 - 32 = 31; all clear: -32.
  uint8_t ones[12], zeros[12] = {};
  std::memset(ones, 0xFF, sizeof ones);
  for (int k = 0; k < 16; ++k) {
    EXPECT_EQ(q3k_scale(ones, k), 31);
    EXPECT_EQ(q3k_scale(zeros, k), -32);
  }
  // Scale 13 alone gets 0b10'0101 = 37 -> 5: low nibble in the high half of byte 5,
  // high bits in bits 6..7 of byte 9.
  uint8_t b[12] = {};
  b[13 % 8] = uint8_t(0x5 << 4);
  b[8 + 13 % 4] = uint8_t(0x2 << 6);
  for (int k = 0; k < 16; ++k) EXPECT_EQ(q3k_scale(b, k), k == 13 ? 5 : -32) << "scale " << k;
}

TEST(Ternary, BlockGeometryMatchesTheTypeTable) {
  for (const auto& [type, size] :
       {std::pair{GgmlType::TQ1_0, sizeof(BlockTQ1_0)}, std::pair{GgmlType::TQ2_0, sizeof(BlockTQ2_0)}}) {
    auto tr = type_traits(uint32_t(type));
    ASSERT_TRUE(tr) << type_name(type);
    EXPECT_EQ(tr->block_elems, uint32_t(kQK_K)) << type_name(type);
    EXPECT_EQ(tr->block_bytes, size) << type_name(type);
    EXPECT_TRUE(is_dequantizable_type(type) && is_supported_weight_type(type)) << type_name(type);
  }
}

// TQ1_0's bytes are base-3 fractions: every 5-trit number N, stored as ceil(N * 256 / 243)
// as kquants.h describes, comes back trit by trit in the value order it names.
TEST(Ternary, TQ1BytesDecodeEveryTritNumber) {
  for (int n = 0; n < 243; ++n) {
    int trits[5];
    for (int k = 4, v = n; k >= 0; --k, v /= 3) trits[k] = v % 3;  // trits[0] most significant
    const uint8_t byte = uint8_t((n * 256 + 242) / 243);
    BlockTQ1_0 b{};
    b.qs[7] = byte;   // values 7, 39, 71, 103, 135
    b.qs[40] = byte;  // values 168, 184, 200, 216, 232
    if (trits[4] == 0) b.qh[2] = byte;  // four trits: values 242, 246, 250, 254
    int8_t q[kQK_K];
    unpack_tq1_0(b, q);
    for (int k = 0; k < 5; ++k) {
      ASSERT_EQ(q[7 + 32 * k], trits[k]) << "N=" << n << " trit " << k;
      ASSERT_EQ(q[168 + 16 * k], trits[k]) << "N=" << n << " trit " << k;
      if (k < 4 && trits[4] == 0) {
        ASSERT_EQ(q[242 + 4 * k], trits[k]) << "N=" << n << " qh trit " << k;
      }
    }
  }
}

TEST(Ternary, DequantizeIsScaleTimesCodeMinusOne) {
  std::mt19937 rng(21);
  std::uniform_int_distribution<int> byte(0, 255);
  BlockTQ2_0 b2[2];
  BlockTQ1_0 b1[2];
  auto fill = [&](void* p, size_t n) {
    for (size_t i = 0; i < n; ++i) static_cast<uint8_t*>(p)[i] = uint8_t(byte(rng));
  };
  fill(b2, sizeof b2);  // TQ2_0 codes include 3 (+2 d), which no quantizer writes
  fill(b1, sizeof b1);
  b2[0].d = b1[0].d = f32_to_fp16(0.25f);
  b2[1].d = b1[1].d = f32_to_fp16(-3.0f);
  std::vector<float> y(2 * kQK_K);
  int8_t q[kQK_K];
  dequantize_row(GgmlType::TQ2_0, b2, y.data(), 2 * kQK_K);
  for (int i = 0; i < 2; ++i) {
    unpack_tq2_0(b2[i], q);
    for (int l = 0; l < kQK_K; ++l) {
      EXPECT_EQ(q[l], (b2[i].qs[32 * (l / 128) + l % 32] >> (2 * (l % 128 / 32))) & 3) << l;
      ASSERT_EQ(y[size_t(i * kQK_K + l)], fp16_to_f32(b2[i].d) * float(q[l] - 1)) << "TQ2_0 " << l;
    }
  }
  dequantize_row(GgmlType::TQ1_0, b1, y.data(), 2 * kQK_K);
  for (int i = 0; i < 2; ++i) {
    unpack_tq1_0(b1[i], q);
    for (int l = 0; l < kQK_K; ++l) {
      ASSERT_LE(q[l], 2) << "TQ1_0 trits are 0..2 for any byte";
      ASSERT_EQ(y[size_t(i * kQK_K + l)], fp16_to_f32(b1[i].d) * float(q[l] - 1)) << "TQ1_0 " << l;
    }
  }
}

TEST(KQuant, Q8KRoundTripsWithinHalfAStepAndBsumsAreExact) {
  std::mt19937 rng(1);
  const int64_t nb = 9;
  auto x = random_activations(nb, rng);
  x[3 * kQK_K + 17] = -40.0f;                     // a negative maximum
  std::fill_n(x.begin() + 5 * kQK_K, kQK_K, 0.0f);  // an all-zero block
  x[5 * kQK_K + 200] = 1e-3f;                       // ... but for one value
  std::vector<BlockQ8K> q(nb);
  quantize_row_q8_k(x.data(), q.data(), nb * kQK_K);
  std::vector<float> back(x.size());
  dequantize_row_q8_k(q.data(), back.data(), nb * kQK_K);
  for (int64_t i = 0; i < nb; ++i) {
    float amax = 0.0f;
    for (int l = 0; l < kQK_K; ++l) amax = std::fmax(amax, std::fabs(x[size_t(i) * kQK_K + l]));
    EXPECT_EQ(q[i].d, amax / 127.0f) << "block " << i;
    int top = 0;
    for (int l = 0; l < kQK_K; ++l) {
      const size_t at = size_t(i) * kQK_K + l;
      ASSERT_GE(q[i].qs[l], -127) << "block " << i;
      top = std::max(top, std::abs(int(q[i].qs[l])));
      ASSERT_LE(std::fabs(x[at] - back[at]), 0.5f * q[i].d * (1.0f + 1e-5f))
          << "block " << i << " value " << l;
    }
    EXPECT_EQ(top, 127) << "block " << i << ": the largest value maps to +-127";
    for (int j = 0; j < 16; ++j) {
      int sum = 0;
      for (int l = 0; l < 16; ++l) sum += q[i].qs[16 * j + l];
      EXPECT_EQ(q[i].bsums[j], sum) << "block " << i << " bsum " << j;
    }
  }
  EXPECT_EQ(q[3].qs[17], -127);
  EXPECT_EQ(q[5].qs[200], 127);
}

TEST(KQuant, ZeroBlocksGiveZerosNotNaN) {
  std::mt19937 rng(2);
  std::vector<float> zeros(2 * kQK_K, 0.0f);
  std::vector<BlockQ8K> xz(2);
  quantize_row_q8_k(zeros.data(), xz.data(), 2 * kQK_K);
  for (const BlockQ8K& b : xz) {
    EXPECT_EQ(b.d, 0.0f);
    for (int l = 0; l < kQK_K; ++l) ASSERT_EQ(b.qs[l], 0);
    for (int j = 0; j < 16; ++j) ASSERT_EQ(b.bsums[j], 0);
  }
  auto xr = random_activations(2, rng);
  std::vector<BlockQ8K> xq(2);
  quantize_row_q8_k(xr.data(), xq.data(), 2 * kQK_K);
  for (const KType& t : kTypes) {
    auto w = random_blocks(t, 2, rng);
    EXPECT_EQ(t.dot(w.data(), xz.data(), 2), 0.0f) << type_name(t.type) << " . zero activations";
    std::vector<uint8_t> wz(2 * t.size, 0);  // d = dmin = 0, all quants and scales 0
    EXPECT_EQ(t.dot(wz.data(), xq.data(), 2), 0.0f) << type_name(t.type) << " zero weights . x";
    std::vector<float> f(2 * kQK_K, 1.0f);
    dequantize_row(t.type, wz.data(), f.data(), 2 * kQK_K);
    for (float v : f) ASSERT_EQ(v, 0.0f) << type_name(t.type);
  }
}

// The dot equals sum_i w_i * x_i over dequantize_row(w) and the dequantized Q8_K
// activations, taken in double. The two differ only by float rounding: the reference
// rounds every w_i to f32, the dot rounds (dx * d) * isum per super-block and the
// running sum. Tolerance: 1e-5 * sum_i |w_i x_i| (observed: below 1e-7).
TEST(KQuant, DotMatchesDequantizedDoubleDot) {
  std::mt19937 rng(3);
  for (const KType& t : kTypes) {
    for (int64_t nb : {1, 3, 8}) {
      for (int rep = 0; rep < 20; ++rep) {
        auto w = random_blocks(t, nb, rng);
        auto x = random_activations(nb, rng);
        std::vector<BlockQ8K> xq(static_cast<size_t>(nb));
        quantize_row_q8_k(x.data(), xq.data(), nb * kQK_K);
        std::vector<float> wf(x.size()), xf(x.size());
        dequantize_row(t.type, w.data(), wf.data(), nb * kQK_K);
        dequantize_row_q8_k(xq.data(), xf.data(), nb * kQK_K);
        double ref = 0.0, mag = 0.0;
        for (size_t i = 0; i < x.size(); ++i) {
          ref += double(wf[i]) * double(xf[i]);
          mag += std::fabs(double(wf[i]) * double(xf[i]));
        }
        const float got = t.dot(w.data(), xq.data(), nb);
        ASSERT_TRUE(std::isfinite(got)) << type_name(t.type);
        ASSERT_NEAR(got, ref, 1e-5 * mag) << type_name(t.type) << " nb=" << nb << " rep " << rep;
      }
    }
  }
}

// With power-of-two scales and small activations nothing rounds, so the sub-block
// integer formula (scales times integer dots, mins times bsums) must equal, exactly,
// the per-value sum over dequantized weights taken in a different order.
TEST(KQuant, DotIsExactlyTheIntegerFormula) {
  std::mt19937 rng(4);
  std::uniform_int_distribution<int> pow2(0, 2), small(-8, 8);
  for (const KType& t : kTypes) {
    for (int rep = 0; rep < 50; ++rep) {
      const int64_t nb = 1 + rep % 3;
      auto w = random_blocks(t, nb, rng, [&] { return std::ldexp(1.0f, -pow2(rng)); });
      std::vector<BlockQ8K> xq(static_cast<size_t>(nb));
      for (BlockQ8K& b : xq) {
        b.d = std::ldexp(1.0f, -pow2(rng));
        for (int l = 0; l < kQK_K; ++l) b.qs[l] = int8_t(small(rng));
        for (int j = 0; j < 16; ++j) {
          int s = 0;
          for (int l = 0; l < 16; ++l) s += b.qs[16 * j + l];
          b.bsums[j] = int16_t(s);
        }
      }
      std::vector<float> wf(size_t(nb) * kQK_K);
      dequantize_row(t.type, w.data(), wf.data(), nb * kQK_K);
      double want = 0.0;  // every term and partial sum is a short dyadic: exact in double
      for (int64_t i = nb * kQK_K - 1; i >= 0; --i)  // backwards, value by value
        want += double(wf[size_t(i)]) * xq[size_t(i / kQK_K)].d * xq[size_t(i / kQK_K)].qs[i % kQK_K];
      ASSERT_EQ(double(t.dot(w.data(), xq.data(), nb)), want) << type_name(t.type) << " rep " << rep;
    }
  }
}

// The row dot is the running sum of the super-block dots, in order: splitting a row
// changes nothing (what a SIMD kernel that splits by super-block must reproduce).
TEST(KQuant, DotAccumulatesSuperBlocksInOrder) {
  std::mt19937 rng(5);
  const int64_t nb = 6;
  for (const KType& t : kTypes) {
    auto w = random_blocks(t, nb, rng);
    auto x = random_activations(nb, rng);
    std::vector<BlockQ8K> xq(nb);
    quantize_row_q8_k(x.data(), xq.data(), nb * kQK_K);
    float acc = 0.0f;
    for (int64_t i = 0; i < nb; ++i) acc += t.dot(w.data() + size_t(i) * t.size, &xq[size_t(i)], 1);
    EXPECT_EQ(t.dot(w.data(), xq.data(), nb), acc) << type_name(t.type);
  }
}

}  // namespace
}  // namespace peregrine
