// matmul (plain, fused QKV-style, gate/up + SwiGLU; row and panel kernels) on a
// multi-threaded pool gives bit-identical results to one thread, and a token's outputs
// do not depend on how many tokens share the call: neither the split of rows across
// threads nor the batch changes what any output element sees.
// Also the workload the ThreadSanitizer run (scripts/test_tsan.sh) checks for races.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <tuple>
#include <vector>

#include "kernels/kernels.h"
#include "ops/matmul.h"
#include "quant/fp16.h"

namespace peregrine {
namespace {

// A weight matrix [rows, cols] of type t with random contents; quantized blocks get
// small positive fp16 scales (and a negative Q4_1 minimum) so the sums stay finite.
struct RandomWeight {
  std::vector<uint8_t> bytes;  // [rows, row_bytes]
  Weight w;

  RandomWeight(GgmlType t, int64_t rows, int64_t cols, std::mt19937& rng) {
    w.type = t;
    w.rows = rows;
    w.cols = cols;
    w.row_bytes = *row_bytes(t, uint64_t(cols));
    bytes.resize(w.row_bytes * size_t(rows));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> scale(0.001f, 0.05f);
    for (int64_t r = 0; r < rows; ++r) {
      uint8_t* row = bytes.data() + size_t(r) * w.row_bytes;
      for (int64_t i = 0; i < cols; ++i) {
        float v = normal(rng);
        if (t == GgmlType::F32) std::memcpy(row + 4 * i, &v, 4);
        if (t == GgmlType::F16 || t == GgmlType::BF16) {
          uint16_t h = t == GgmlType::F16 ? f32_to_fp16(v) : f32_to_bf16(v);
          std::memcpy(row + 2 * i, &h, 2);
        }
      }
      if (t != GgmlType::Q4_0 && t != GgmlType::Q4_1 && t != GgmlType::Q8_0) continue;
      const size_t block = w.row_bytes / size_t(cols / kQK);  // bytes per 32 weights
      for (size_t i = 0; i < w.row_bytes; ++i) row[i] = uint8_t(byte(rng));
      for (int64_t b = 0; b < cols / kQK; ++b) {
        uint16_t d = f32_to_fp16(scale(rng));
        std::memcpy(row + size_t(b) * block, &d, 2);
        if (t == GgmlType::Q4_1) {
          uint16_t m = f32_to_fp16(-8.0f * scale(rng));
          std::memcpy(row + size_t(b) * block + 2, &m, 2);
        }
      }
    }
    w.name = "test." + std::string(type_name(t));
    w.data = bytes.data();
  }
};

// y[n_tok, rows] from the scalar kernels, one token and one row at a time.
std::vector<float> reference_matmul(const Weight& w, const std::vector<float>& x, int64_t n_tok) {
  const KernelTable& k = scalar_kernels();
  const int64_t nb = w.cols / kQK;
  std::vector<BlockQ8Act> xq(size_t(n_tok * nb));
  for (int64_t t = 0; t < n_tok; ++t)
    k.quantize_q8(&x[size_t(t * w.cols)], &xq[size_t(t * nb)], w.cols);
  std::vector<float> y(size_t(n_tok * w.rows));
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t r = 0; r < w.rows; ++r) {
      const uint8_t* wr = w.row(r);
      const float* xt = &x[size_t(t * w.cols)];
      float& out = y[size_t(t * w.rows + r)];
      switch (w.type) {
        case GgmlType::Q4_0: k.dot_q4_0(wr, nb, &xq[size_t(t * nb)], 1, &out, 1); break;
        case GgmlType::Q4_1: k.dot_q4_1(wr, nb, &xq[size_t(t * nb)], 1, &out, 1); break;
        case GgmlType::Q8_0: k.dot_q8_0(wr, nb, &xq[size_t(t * nb)], 1, &out, 1); break;
        case GgmlType::F32: out = k.dot_f32(reinterpret_cast<const float*>(wr), xt, w.cols); break;
        case GgmlType::F16:
          out = k.dot_f16(reinterpret_cast<const uint16_t*>(wr), xt, w.cols);
          break;
        case GgmlType::BF16:
          out = k.dot_bf16(reinterpret_cast<const uint16_t*>(wr), xt, w.cols);
          break;
        default: ADD_FAILURE() << "no reference for " << type_name(w.type);
      }
    }
  return y;
}

// (type, packed): packed quantized weights take the panel kernels when the active
// table has them (pack_weight is a no-op otherwise).
class ThreadedOps : public ::testing::TestWithParam<std::tuple<GgmlType, bool>> {};

constexpr int64_t kRows = 67, kCols = 96;  // 67: not a multiple of 16-row panels or 4-row tiles
constexpr int64_t kTokens = 70;            // more than one 64-token chunk
const int64_t kRounds[] = {kTokens, 1, 4, 7, kTokens};  // the pool reused with new work

std::vector<float> random_input(std::mt19937& rng) {
  std::vector<float> x(size_t(kTokens * kCols));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : x) v = normal(rng);
  return x;
}

TEST_P(ThreadedOps, MatmulMatchesOneThreadAndAnyBatchSize) {
  const auto [type, pack] = GetParam();
  std::mt19937 rng(21);
  RandomWeight rw(type, kRows, kCols, rng);
  if (pack) {
    ASSERT_TRUE(pack_weight(rw.w).ok());
  }
  const std::vector<float> x = random_input(rng);
  const std::vector<float> ref = reference_matmul(rw.w, x, kTokens);

  std::vector<float> one;  // one thread, all tokens: the baseline
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    OpScratch scratch;
    for (int64_t nt : kRounds) {
      std::vector<float> y(size_t(nt * kRows), NAN);
      matmul(rw.w, x.data(), y.data(), nt, pool, scratch);
      for (int64_t i = 0; i < nt * kRows; ++i)
        ASSERT_NEAR(y[size_t(i)], ref[size_t(i)], 1e-4f * (1.0f + std::fabs(ref[size_t(i)])))
            << type_name(type) << " threads=" << threads << " n_tok=" << nt << " token "
            << i / kRows << " row " << i % kRows;
      // Every run's tokens match the baseline exactly, whatever the thread count or batch.
      if (one.empty()) one = y;
      for (size_t i = 0; i < y.size(); ++i)
        ASSERT_EQ(y[i], one[i]) << type_name(type) << " threads=" << threads << " n_tok=" << nt
                                << " token " << i / size_t(kRows) << " row " << i % size_t(kRows)
                                << " differs from one thread with " << kTokens << " tokens";
    }
  }
}

// The fused paths: three outputs of one input (as Q, K, V) and gate/up with SwiGLU.
TEST_P(ThreadedOps, MatmulManyAndSwigluMatchOneThread) {
  const auto [type, pack] = GetParam();
  std::mt19937 rng(22);
  RandomWeight a(type, kRows, kCols, rng), b(type, 16, kCols, rng), c(type, 40, kCols, rng);
  for (RandomWeight* w : {&a, &b, &c}) {
    if (pack) {
      ASSERT_TRUE(pack_weight(w->w).ok());
    }
  }
  const std::vector<float> x = random_input(rng);
  const std::vector<float> ra = reference_matmul(a.w, x, kTokens),
                           rc = reference_matmul(c.w, x, kTokens);

  std::vector<float> one_a, one_b, one_s;
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    OpScratch scratch;
    for (int64_t nt : kRounds) {
      std::vector<float> ya(size_t(nt * kRows), NAN), yb(size_t(nt * 16), NAN),
          yc(size_t(nt * 40), NAN);
      matmul_many({{&a.w, ya.data()}, {&b.w, yb.data()}, {&c.w, yc.data()}}, x.data(), nt, pool,
                  scratch);
      // gate = a, up = a: out = silu(a x) * (a x)
      std::vector<float> ys(size_t(nt * kRows), NAN);
      matmul_swiglu(a.w, a.w, x.data(), ys.data(), nt, pool, scratch);
      for (int64_t i = 0; i < nt * kRows; ++i) {
        const float g = ra[size_t(i)], want = g / (1.0f + std::exp(-g)) * g;
        ASSERT_NEAR(ys[size_t(i)], want, 1e-3f * (1.0f + std::fabs(want)))
            << type_name(type) << " swiglu " << i;
      }
      for (int64_t i = 0; i < nt * 40; ++i)
        ASSERT_NEAR(yc[size_t(i)], rc[size_t(i)], 1e-4f * (1.0f + std::fabs(rc[size_t(i)])))
            << type_name(type);
      if (one_a.empty()) {
        one_a = ya;
        one_b = yb;
        one_s = ys;
      }
      for (size_t i = 0; i < ya.size(); ++i)
        ASSERT_EQ(ya[i], one_a[i]) << "matmul_many a, threads=" << threads;
      for (size_t i = 0; i < yb.size(); ++i)
        ASSERT_EQ(yb[i], one_b[i]) << "matmul_many b, threads=" << threads;
      for (size_t i = 0; i < ys.size(); ++i)
        ASSERT_EQ(ys[i], one_s[i]) << "swiglu, threads=" << threads;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Types, ThreadedOps,
    ::testing::Values(std::tuple(GgmlType::F32, false), std::tuple(GgmlType::F16, false),
                      std::tuple(GgmlType::BF16, false), std::tuple(GgmlType::Q4_0, false),
                      std::tuple(GgmlType::Q4_1, false), std::tuple(GgmlType::Q8_0, false),
                      std::tuple(GgmlType::Q4_0, true), std::tuple(GgmlType::Q4_1, true),
                      std::tuple(GgmlType::Q8_0, true)),
    [](const auto& p) {
      return std::string(type_name(std::get<0>(p.param))) + (std::get<1>(p.param) ? "_packed" : "");
    });

}  // namespace
}  // namespace peregrine
