// matmul with the weight types that run through another type's panels or their own
// newer ones: Q5_0 (widened into Q8_0 panels), Q5_1 (into Q5_K's), the K-quants and the ternary TQ1_0 / TQ2_0
// (widened into one 2-bit panel layout). Against
// an independent evaluation: dequantize_row (bit-identical to gguf-py, see
// tests/reference/test_dequant.py) and a double-precision dot with the float input.
// Also: the same result on 1 and 2 threads, and for a token alone or in a batch.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/packed.h"
#include "ops/matmul.h"
#include "quant/dequantize.h"
#include "quant/fp16.h"
#include "quant/kquants.h"
#include "quant/quantize.h"

namespace peregrine {
namespace {

struct Case {
  GgmlType type;
  size_t d_offset;  // fp16 scale of each block
  int dmin_offset;  // fp16 min (Q4_K/Q5_K/Q2_K), -1 if none
};

class MatmulTypes : public ::testing::TestWithParam<Case> {};

TEST_P(MatmulTypes, MatchesDequantizedReferenceOnAnyThreadsAndBatch) {
  const Case c = GetParam();
  const int64_t rows = 37, cols = 512, n_tok = 9;
  std::mt19937 rng(31);
  const size_t rb = *row_bytes(c.type, uint64_t(cols));
  const auto traits = *type_traits(uint32_t(c.type));
  std::vector<uint8_t> bytes(rb * size_t(rows));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : bytes) b = uint8_t(byte(rng));
  std::uniform_real_distribution<float> mag(0.001f, 0.05f);
  for (size_t off = 0; off < bytes.size(); off += traits.block_bytes) {
    uint16_t d = f32_to_fp16(mag(rng));
    std::memcpy(&bytes[off + c.d_offset], &d, 2);
    if (c.dmin_offset >= 0) {
      uint16_t m = f32_to_fp16(mag(rng));
      std::memcpy(&bytes[off + size_t(c.dmin_offset)], &m, 2);
    }
  }
  Weight w{"test", c.type, bytes.data(), rows, cols, rb};
  ASSERT_TRUE(pack_weight(w).ok());
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(size_t(n_tok * cols));
  for (float& v : x) v = normal(rng);

  // Reference: dequantized weights, double accumulation.
  std::vector<float> wf(size_t(rows * cols));
  for (int64_t r = 0; r < rows; ++r) dequantize_row(c.type, w.row(r), &wf[size_t(r * cols)], cols);
  std::vector<float> ref(size_t(n_tok * rows));
  std::vector<double> mass(ref.size());
  for (int64_t t = 0; t < n_tok; ++t)
    for (int64_t r = 0; r < rows; ++r) {
      double s = 0, a = 0;
      for (int64_t i = 0; i < cols; ++i) {
        s += double(wf[size_t(r * cols + i)]) * x[size_t(t * cols + i)];
        a += std::fabs(double(wf[size_t(r * cols + i)]) * x[size_t(t * cols + i)]);
      }
      ref[size_t(t * rows + r)] = float(s);
      mass[size_t(t * rows + r)] = a;
    }

  std::vector<float> y1(ref.size()), y2(ref.size());
  OpScratch s1, s2;
  ThreadPool one(1), two(2);
  matmul(w, x.data(), y1.data(), n_tok, one, s1);
  matmul(w, x.data(), y2.data(), n_tok, two, s2);
  ASSERT_EQ(0, std::memcmp(y1.data(), y2.data(), y1.size() * 4)) << "thread count changed results";
  for (size_t i = 0; i < ref.size(); ++i)  // 8-bit activations: error ~ |w.x| / 127 at most
    ASSERT_NEAR(y1[i], ref[i], 0.01 * mass[i]) << type_name(c.type) << " i=" << i;
  // Panel layouts: every SIMD table's panel kernel equals the scalar one bit for bit.
  if (w.packed) {
    const PackedMatrix& pm = *w.packed;
    auto panel_of = [&](const KernelTable& k) {
      switch (pm.format->type) {
        case GgmlType::Q8_0: return k.panel_q8_0;
        case GgmlType::Q2_K: return k.panel_q2_k;
        case GgmlType::Q3_K: return k.panel_q3_k;
        case GgmlType::Q4_K: return k.panel_q4_k;
        case GgmlType::Q5_K: return k.panel_q5_k;
        case GgmlType::Q6_K: return k.panel_q6_k;
        case GgmlType::TQ2_0: return k.panel_ternary;
        default: return KernelTable::PanelDot(nullptr);
      }
    };
    std::vector<BlockQ8Act> xq(size_t(n_tok * pm.nb));
    for (int64_t t = 0; t < n_tok; ++t)
      scalar_kernels().quantize_q8(&x[size_t(t * cols)], &xq[size_t(t * pm.nb)], cols);
    const int64_t width = pm.n_panels * kPanelRows;
    auto run = [&](const KernelTable& k) {
      std::vector<float> y(size_t(n_tok * width));
      for (int64_t p = 0; p < pm.n_panels; ++p)
        panel_of(k)(pm.panel(p), pm.nb, xq.data(), n_tok, y.data() + p * kPanelRows, width);
      return y;
    };
    const std::vector<float> ref_panel = run(scalar_kernels());
    for (const KernelTable* k : {avx2_kernels(), avx512_kernels()}) {
      if (k == nullptr || !cpu_supports(k->isa) || panel_of(*k) == nullptr) continue;
      ASSERT_EQ(0, std::memcmp(run(*k).data(), ref_panel.data(), ref_panel.size() * 4))
          << isa_name(k->isa) << " " << type_name(c.type);
    }
  }
  for (int64_t t = 0; t < n_tok; ++t) {  // each token alone
    std::vector<float> alone(static_cast<size_t>(rows));
    matmul(w, &x[size_t(t * cols)], alone.data(), 1, two, s2);
    ASSERT_EQ(0, std::memcmp(alone.data(), &y1[size_t(t * rows)], alone.size() * 4))
        << type_name(c.type) << " token " << t << " differs alone";
  }
}

INSTANTIATE_TEST_SUITE_P(
    Types, MatmulTypes,
    ::testing::Values(Case{GgmlType::Q5_0, 0, -1}, Case{GgmlType::Q5_1, 0, 2},
                      Case{GgmlType::Q2_K, offsetof(BlockQ2K, d), int(offsetof(BlockQ2K, dmin))},
                      Case{GgmlType::Q3_K, offsetof(BlockQ3K, d), -1},
                      Case{GgmlType::Q4_K, offsetof(BlockQ4K, d), int(offsetof(BlockQ4K, dmin))},
                      Case{GgmlType::Q5_K, offsetof(BlockQ5K, d), int(offsetof(BlockQ5K, dmin))},
                      Case{GgmlType::Q6_K, offsetof(BlockQ6K, d), -1},
                      Case{GgmlType::TQ1_0, offsetof(BlockTQ1_0, d), -1},
                      Case{GgmlType::TQ2_0, offsetof(BlockTQ2_0, d), -1}),
    [](const auto& info) { return std::string(type_name(info.param.type)); });

}  // namespace
}  // namespace peregrine

namespace peregrine {
namespace {

// matmul_grouped: each job's rows give the same bits as matmul / matmul_glu of those rows alone
// (normalised input, a partial last panel, gated and plain jobs, float and quantized panels).
TEST(MatmulGrouped, EqualsTheSeparateProductsBitForBit) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t rows = 37, cols = 256, n_rows = 11;
  for (GgmlType type : {GgmlType::Q8_0, GgmlType::F32}) {
    std::vector<std::vector<uint8_t>> store;
    auto make = [&](const char* name) {
      const size_t rb = *row_bytes(type, uint64_t(cols));
      std::vector<float> f(static_cast<size_t>(rows * cols));
      for (float& v : f) v = nd(rng) * 0.1f;
      store.emplace_back(rb * size_t(rows));
      for (int64_t r = 0; r < rows; ++r) {
        if (type == GgmlType::F32) std::memcpy(store.back().data() + size_t(r) * rb, &f[size_t(r * cols)], rb);
        else quantize_row_q8_0_ref(&f[size_t(r * cols)], reinterpret_cast<BlockQ8_0*>(store.back().data() + size_t(r) * rb), cols);
      }
      Weight w{name, type, store.back().data(), rows, cols, rb};
      EXPECT_TRUE(pack_weight(w).ok());
      EXPECT_NE(w.packed, nullptr);
      return w;
    };
    store.reserve(3);
    const Weight gate = make("gate"), up = make("up"), plain = make("plain");
    std::vector<float> x(static_cast<size_t>(n_rows * cols)), norm(static_cast<size_t>(cols));
    for (float& v : x) v = nd(rng);
    for (float& v : norm) v = 1.0f + 0.1f * nd(rng);
    const MatIn in(x.data(), norm.data(), 1e-5f);
    std::vector<float> y0(static_cast<size_t>(4 * rows)), y1(static_cast<size_t>(7 * rows)),
        y2(static_cast<size_t>(4 * rows));
    const GroupedJob jobs[] = {{&gate, &up, 0, 4, y0.data()}, {nullptr, &plain, 4, 7, y1.data()},
                               {&gate, &up, 7, 4, y2.data()}};
    ThreadPool pool(2);
    OpScratch ops, ref_ops;
    matmul_grouped(jobs, 3, in, n_rows, pool, ops);
    std::vector<float> want(static_cast<size_t>(n_rows * rows));
    auto rows_in = [&](int64_t r0) { return MatIn(x.data() + r0 * cols, norm.data(), 1e-5f); };
    matmul_glu(gate, up, rows_in(0), want.data(), 4, pool, ref_ops, Glu::SiLU);
    EXPECT_EQ(0, std::memcmp(want.data(), y0.data(), y0.size() * 4)) << type_name(type);
    matmul_many({{&plain, want.data()}}, rows_in(4), 7, pool, ref_ops);
    EXPECT_EQ(0, std::memcmp(want.data(), y1.data(), y1.size() * 4)) << type_name(type);
    matmul_glu(gate, up, rows_in(7), want.data(), 4, pool, ref_ops, Glu::SiLU);
    EXPECT_EQ(0, std::memcmp(want.data(), y2.data(), y2.size() * 4)) << type_name(type);
  }
}

}  // namespace
}  // namespace peregrine
