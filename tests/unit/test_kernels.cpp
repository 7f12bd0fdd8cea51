// Every SIMD kernel table against the scalar reference on random data, including
// lengths that are not multiples of the vector width.
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "kernels/packed.h"
#include "quant/blocks.h"
#include "quant/dequantize.h"
#include "quant/fp16.h"
#include "quant/kquants.h"
#include "quant/quantize.h"

namespace peregrine {
namespace {

std::vector<const KernelTable*> simd_tables() {
  std::vector<const KernelTable*> t;
  if (cpu_supports(Isa::Avx2) && avx2_kernels()) t.push_back(avx2_kernels());
  if (cpu_supports(Isa::Avx512) && avx512_kernels()) t.push_back(avx512_kernels());
  if (cpu_supports(Isa::Neon) && neon_kernels()) t.push_back(neon_kernels());
  return t;
}

std::vector<float> random_floats(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Random weight blocks of a type, with sane (finite, positive) fp16 scales.
std::vector<uint8_t> random_blocks(GgmlType t, int64_t nb, std::mt19937& rng) {
  const size_t bytes = *row_bytes(t, uint64_t(nb) * kQK);
  std::vector<uint8_t> buf(bytes);
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : buf) b = uint8_t(byte(rng));
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  const size_t bb = bytes / size_t(nb);
  for (int64_t i = 0; i < nb; ++i) {
    uint16_t d = f32_to_fp16(scale(rng));
    std::memcpy(buf.data() + size_t(i) * bb, &d, 2);
    if (t == GgmlType::Q4_1) {
      uint16_t m = f32_to_fp16(-scale(rng) * 8);
      std::memcpy(buf.data() + size_t(i) * bb + 2, &m, 2);
    }
  }
  return buf;
}

TEST(Kernels, ScalarQuantizeRoundTripsWithinHalfAStep) {
  std::mt19937 rng(1);
  auto x = random_floats(32 * 7, rng, 3.0f);
  std::vector<BlockQ8Act> q(7);
  scalar_kernels().quantize_q8(x.data(), q.data(), int64_t(x.size()));
  for (int b = 0; b < 7; ++b) {
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
      EXPECT_LE(std::fabs(q[b].d * q[b].qs[j] - x[b * 32 + j]), q[b].d * 0.5f + 1e-6f);
      sum += q[b].qs[j];
    }
    EXPECT_FLOAT_EQ(q[b].s, q[b].d * float(sum));
  }
}

TEST(Kernels, QuantizeIsBitExactAcrossIsas) {
  std::mt19937 rng(2);
  for (const KernelTable* t : simd_tables()) {
    for (int nb : {1, 2, 5, 18, 48}) {
      auto x = random_floats(size_t(nb) * 32, rng, 2.0f);
      x[3] = 0.0f;
      std::vector<BlockQ8Act> a(static_cast<size_t>(nb)), b(static_cast<size_t>(nb));
      scalar_kernels().quantize_q8(x.data(), a.data(), nb * 32);
      t->quantize_q8(x.data(), b.data(), nb * 32);
      ASSERT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(BlockQ8Act)))
          << isa_name(t->isa) << " nb=" << nb;
    }
    // An all-zero block must give d = 0 and no NaN.
    std::vector<float> z(32, 0.0f);
    BlockQ8Act q;
    t->quantize_q8(z.data(), &q, 32);
    EXPECT_EQ(q.d, 0.0f);
    EXPECT_EQ(q.s, 0.0f);
  }
}

// RMSNorm fused into the quantization gives the very blocks of normalising first.
TEST(Kernels, FusedNormQuantizeEqualsNormThenQuantize) {
  std::mt19937 rng(15);
  std::vector<const KernelTable*> tables = simd_tables();
  tables.insert(tables.begin(), &scalar_kernels());
  for (int nb : {1, 18, 48}) {
    auto x = random_floats(size_t(nb) * 32, rng, 3.0f), w = random_floats(size_t(nb) * 32, rng);
    const float scale = 0.37f;
    std::vector<float> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) y[i] = x[i] * scale * w[i];
    std::vector<BlockQ8Act> ref(static_cast<size_t>(nb)), got(ref.size());
    scalar_kernels().quantize_q8(y.data(), ref.data(), nb * 32);
    for (const KernelTable* t : tables) {
      ASSERT_NE(t->quantize_q8_norm, nullptr) << isa_name(t->isa);
      t->quantize_q8_norm(x.data(), scale, w.data(), got.data(), nb * 32);
      ASSERT_EQ(0, std::memcmp(ref.data(), got.data(), ref.size() * sizeof(BlockQ8Act)))
          << isa_name(t->isa) << " nb=" << nb;
    }
  }
}

struct DotCase {
  GgmlType type;
  KernelTable::DotRows KernelTable::*fn;
};
const DotCase kDotCases[] = {{GgmlType::Q4_0, &KernelTable::dot_q4_0},
                             {GgmlType::Q4_1, &KernelTable::dot_q4_1},
                             {GgmlType::Q8_0, &KernelTable::dot_q8_0}};

// Integer dot products: the per-block integer sums are exact on every path, so
// the only difference is the order of float accumulation.
TEST(Kernels, QuantizedDotsMatchScalar) {
  std::mt19937 rng(3);
  for (const KernelTable* t : simd_tables()) {
    for (const DotCase& c : kDotCases) {
      for (int nb : {1, 3, 8, 17, 48}) {
        const int n_x = 7;  // not a multiple of the 4-row tile
        auto w = random_blocks(c.type, nb, rng);
        auto x = random_floats(size_t(nb) * 32 * n_x, rng);
        std::vector<BlockQ8Act> xq(static_cast<size_t>(nb * n_x));
        scalar_kernels().quantize_q8(x.data(), xq.data(), nb * 32 * n_x);
        std::vector<float> ref(n_x), got(n_x * 2);
        (scalar_kernels().*c.fn)(w.data(), nb, xq.data(), n_x, ref.data(), 1);
        (t->*c.fn)(w.data(), nb, xq.data(), n_x, got.data(), 2);  // strided output
        for (int r = 0; r < n_x; ++r) {
          EXPECT_NEAR(got[r * 2], ref[r], 1e-5f * (1.0f + std::fabs(ref[r])))
              << isa_name(t->isa) << " " << type_name(c.type) << " nb=" << nb << " row " << r;
          // Batch invariance: the row alone gives bit-identical output.
          float alone = 0.0f;
          (t->*c.fn)(w.data(), nb, xq.data() + r * nb, 1, &alone, 1);
          EXPECT_EQ(alone, got[r * 2]) << isa_name(t->isa) << " " << type_name(c.type);
        }
      }
    }
  }
}

// Packed panels: the scalar panel kernel agrees with the row kernel on the GGUF
// layout (same integer sums, float steps in another order); every SIMD panel kernel
// equals the scalar one bit for bit, for any number of tokens and any tile split.
const struct PanelCase {
  GgmlType type;
  KernelTable::PanelDot KernelTable::*panel;
  KernelTable::DotRows KernelTable::*rows;
} kPanelCases[] = {{GgmlType::Q4_0, &KernelTable::panel_q4_0, &KernelTable::dot_q4_0},
                   {GgmlType::Q4_1, &KernelTable::panel_q4_1, &KernelTable::dot_q4_1},
                   {GgmlType::Q8_0, &KernelTable::panel_q8_0, &KernelTable::dot_q8_0}};

TEST(Kernels, PanelKernelsMatchRowKernelsAndAreBitExactAcrossIsas) {
  std::mt19937 rng(11);
  std::vector<const KernelTable*> tables = simd_tables();
  tables.insert(tables.begin(), &scalar_kernels());
  for (const PanelCase& c : kPanelCases) {
    for (int rows : {16, 21, 48}) {  // 21: a padded last panel
      for (int nb : {1, 3, 18}) {
        const size_t rb = *row_bytes(c.type, uint64_t(nb) * 32);
        std::vector<uint8_t> w;
        for (int r = 0; r < rows; ++r) {
          auto row = random_blocks(c.type, nb, rng);
          w.insert(w.end(), row.begin(), row.end());
        }
        auto packed = pack_matrix(c.type, w.data(), rows, nb * 32, rb);
        ASSERT_TRUE(packed.ok()) << packed.error().message;
        const int n_x = 13;  // not a multiple of any token tile
        auto x = random_floats(size_t(nb) * 32 * n_x, rng);
        std::vector<BlockQ8Act> xq(size_t(nb * n_x));
        scalar_kernels().quantize_q8(x.data(), xq.data(), nb * 32 * n_x);
        const int64_t n_panels = packed->n_panels, width = n_panels * kPanelRows;
        auto run = [&](const KernelTable& t, int64_t t0, int64_t nt, std::vector<float>& y) {
          for (int64_t p = 0; p < n_panels; ++p)
            (t.*c.panel)(packed->panel(p), nb, xq.data() + t0 * nb, nt,
                         y.data() + t0 * width + p * kPanelRows, width);
        };
        std::vector<float> ref(size_t(n_x * width));
        run(scalar_kernels(), 0, n_x, ref);
        for (int r = 0; r < rows; ++r) {
          std::vector<float> by_row(n_x);
          (scalar_kernels().*c.rows)(w.data() + size_t(r) * rb, nb, xq.data(), n_x, by_row.data(), 1);
          for (int t = 0; t < n_x; ++t)
            ASSERT_NEAR(ref[size_t(t * width + r)], by_row[t], 2e-5f * (1.0f + std::fabs(by_row[t])))
                << type_name(c.type) << " rows=" << rows << " nb=" << nb << " r=" << r << " t=" << t;
        }
        for (int r = rows; r < width; ++r) ASSERT_EQ(ref[size_t(r)], 0.0f) << "padding row " << r;
        for (const KernelTable* t : tables) {
          std::vector<float> all(ref.size()), split(ref.size());
          run(*t, 0, n_x, all);
          for (int64_t t0 = 0, nt = 1; t0 < n_x; t0 += nt, nt = nt % 5 + 1)  // tiles 1,2,3,4,5,1..
            run(*t, t0, std::min<int64_t>(nt, n_x - t0), split);
          ASSERT_EQ(0, std::memcmp(all.data(), ref.data(), ref.size() * 4))
              << isa_name(t->isa) << " " << type_name(c.type) << " rows=" << rows << " nb=" << nb;
          ASSERT_EQ(0, std::memcmp(split.data(), ref.data(), ref.size() * 4))
              << isa_name(t->isa) << " " << type_name(c.type) << " split into tiles";
        }
      }
    }
  }
}

// Ternary panels (TQ1_0 and TQ2_0 widened into one 2-bit layout): the scalar panel
// against a double-precision dot of the dequantized weights and the dequantized Q8
// activations (d * qs), every SIMD table bit-identical to it for any token split.
TEST(Kernels, TernaryPanelsMatchDequantizedDotAndAreBitExactAcrossIsas) {
  std::mt19937 rng(15);
  std::vector<const KernelTable*> tables = simd_tables();
  tables.insert(tables.begin(), &scalar_kernels());
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> mag(0.001f, 0.05f);
  std::bernoulli_distribution neg(0.25);
  for (GgmlType type : {GgmlType::TQ1_0, GgmlType::TQ2_0}) {
    const size_t block = type == GgmlType::TQ1_0 ? sizeof(BlockTQ1_0) : sizeof(BlockTQ2_0);
    for (int rows : {16, 21, 48}) {
      for (int nbk : {1, 3}) {  // super-blocks of 256 per row
        const int cols = nbk * 256, nb = cols / 32;
        const size_t rb = *row_bytes(type, uint64_t(cols));
        std::vector<uint8_t> w(rb * size_t(rows));
        for (auto& b : w) b = uint8_t(byte(rng));  // TQ2_0: code 3 (+2 d) included
        for (size_t off = block - 2; off < w.size(); off += block) {
          const uint16_t d = f32_to_fp16(neg(rng) ? -mag(rng) : mag(rng));
          std::memcpy(&w[off], &d, 2);
        }
        auto packed = pack_matrix(type, w.data(), rows, cols, rb);
        ASSERT_TRUE(packed.ok()) << packed.error().message;
        ASSERT_EQ(packed->bytes(), size_t(packed->n_panels) * nbk * 1056) << "2.0625 bits per weight";
        for (int n_x : {1, 6, 13}) {
          auto x = random_floats(size_t(cols) * n_x, rng);
          std::vector<BlockQ8Act> xq(size_t(nb * n_x));
          scalar_kernels().quantize_q8(x.data(), xq.data(), int64_t(cols) * n_x);
          const int64_t width = packed->n_panels * kPanelRows;
          auto run = [&](const KernelTable& t, int64_t t0, int64_t nt, std::vector<float>& y) {
            for (int64_t p = 0; p < packed->n_panels; ++p)
              t.panel_ternary(packed->panel(p), nb, xq.data() + t0 * nb, nt, y.data() + t0 * width + p * kPanelRows,
                              width);
          };
          std::vector<float> ref(size_t(n_x * width));
          run(scalar_kernels(), 0, n_x, ref);
          std::vector<float> wf(static_cast<size_t>(cols));
          for (int r = 0; r < rows; ++r) {
            dequantize_row(type, w.data() + size_t(r) * rb, wf.data(), cols);
            for (int t = 0; t < n_x; ++t) {
              double dot = 0, mass = 0;
              for (int i = 0; i < cols; ++i) {
                const BlockQ8Act& xb = xq[size_t(t * nb + i / 32)];
                const double p = double(wf[size_t(i)]) * (double(xb.d) * xb.qs[i % 32]);
                dot += p;
                mass += std::fabs(p);
              }
              ASSERT_NEAR(ref[size_t(t * width + r)], dot, 1e-5 * mass + 1e-30)
                  << type_name(type) << " rows=" << rows << " nbk=" << nbk << " r=" << r << " t=" << t;
            }
          }
          for (int t = 0; t < n_x; ++t)
            for (int r = rows; r < width; ++r) ASSERT_EQ(ref[size_t(t * width + r)], 0.0f) << "padding row " << r;
          for (const KernelTable* k : tables) {
            ASSERT_NE(k->panel_ternary, nullptr) << isa_name(k->isa);
            std::vector<float> all(ref.size()), split(ref.size());
            run(*k, 0, n_x, all);
            for (int64_t t0 = 0, nt = 1; t0 < n_x; t0 += nt, nt = nt % 7 + 1)  // tiles 1..7
              run(*k, t0, std::min<int64_t>(nt, n_x - t0), split);
            ASSERT_EQ(0, std::memcmp(all.data(), ref.data(), ref.size() * 4))
                << isa_name(k->isa) << " " << type_name(type) << " rows=" << rows << " nbk=" << nbk << " n_x=" << n_x;
            ASSERT_EQ(0, std::memcmp(split.data(), ref.data(), ref.size() * 4))
                << isa_name(k->isa) << " " << type_name(type) << " split into tiles";
          }
        }
      }
    }
  }
}

// Float panels (F32, F16, BF16): scalar panel vs the row dot within rounding,
// SIMD panels bit-identical to the scalar panel for any token split.
TEST(Kernels, FloatPanelsMatchRowDotsAndAreBitExactAcrossIsas) {
  std::mt19937 rng(14);
  std::vector<const KernelTable*> tables = simd_tables();
  tables.insert(tables.begin(), &scalar_kernels());
  const struct {
    GgmlType type;
    KernelTable::PanelDotF KernelTable::*panel;
  } cases[] = {{GgmlType::F32, &KernelTable::panel_f32},
               {GgmlType::F16, &KernelTable::panel_f16},
               {GgmlType::BF16, &KernelTable::panel_bf16}};
  for (const auto& c : cases) {
    for (int rows : {16, 37}) {
      for (int nb : {1, 4}) {
        const int cols = nb * 32;
        auto wf = random_floats(size_t(rows * cols), rng);
        const size_t eb = c.type == GgmlType::F32 ? 4 : 2;
        std::vector<uint8_t> w(wf.size() * eb);
        for (size_t i = 0; i < wf.size(); ++i) {
          if (c.type == GgmlType::F32) std::memcpy(&w[i * 4], &wf[i], 4);
          uint16_t h = c.type == GgmlType::F16 ? f32_to_fp16(wf[i]) : f32_to_bf16(wf[i]);
          if (c.type != GgmlType::F32) std::memcpy(&w[i * 2], &h, 2);
        }
        auto packed = pack_matrix(c.type, w.data(), rows, cols, size_t(cols) * eb);
        ASSERT_TRUE(packed.ok()) << packed.error().message;
        const int n_x = 11;
        auto x = random_floats(size_t(n_x * cols), rng);
        const int64_t width = packed->n_panels * kPanelRows;
        auto run = [&](const KernelTable& t, int64_t t0, int64_t nt, std::vector<float>& y) {
          for (int64_t p = 0; p < packed->n_panels; ++p)
            (t.*c.panel)(packed->panel(p), nb, x.data() + t0 * cols, cols, nt,
                         y.data() + t0 * width + p * kPanelRows, width);
        };
        std::vector<float> ref(size_t(n_x * width));
        run(scalar_kernels(), 0, n_x, ref);
        for (int r = 0; r < rows; ++r)
          for (int t = 0; t < n_x; ++t) {
            const uint8_t* wr = w.data() + size_t(r * cols) * eb;
            const float* xt = x.data() + t * cols;
            const float by_row =
                c.type == GgmlType::F32   ? scalar_kernels().dot_f32(reinterpret_cast<const float*>(wr), xt, cols)
                : c.type == GgmlType::F16 ? scalar_kernels().dot_f16(reinterpret_cast<const uint16_t*>(wr), xt, cols)
                                          : scalar_kernels().dot_bf16(reinterpret_cast<const uint16_t*>(wr), xt, cols);
            ASSERT_NEAR(ref[size_t(t * width + r)], by_row, 1e-4f * (1.0f + std::fabs(by_row)))
                << type_name(c.type) << " r=" << r << " t=" << t;
          }
        for (const KernelTable* t : tables) {
          std::vector<float> all(ref.size()), split(ref.size());
          run(*t, 0, n_x, all);
          for (int64_t t0 = 0, nt = 1; t0 < n_x; t0 += nt, nt = nt % 9 + 1)
            run(*t, t0, std::min<int64_t>(nt, n_x - t0), split);
          ASSERT_EQ(0, std::memcmp(all.data(), ref.data(), ref.size() * 4)) << isa_name(t->isa) << " " << type_name(c.type);
          ASSERT_EQ(0, std::memcmp(split.data(), ref.data(), ref.size() * 4)) << isa_name(t->isa) << " split";
        }
      }
    }
  }
}

TEST(Kernels, PackRejectsBadShapesAndTypes) {
  std::vector<uint8_t> w(64);
  EXPECT_FALSE(pack_matrix(GgmlType::IQ4_NL, w.data(), 1, 32, 18).ok());  // no panel layout
  EXPECT_FALSE(pack_matrix(GgmlType::Q4_K, w.data(), 1, 128, 72).ok());   // not whole super-blocks
  EXPECT_FALSE(pack_matrix(GgmlType::TQ2_0, w.data(), 1, 128, 33).ok());
  EXPECT_FALSE(pack_matrix(GgmlType::F16, w.data(), 1, 48, 96).ok());
  EXPECT_FALSE(pack_matrix(GgmlType::Q4_0, w.data(), 1, 33, 18).ok());
  EXPECT_FALSE(pack_matrix(GgmlType::Q4_0, w.data(), 0, 32, 18).ok());
}

// ---- Attention over runs of cached rows in every K and V format (KernelTable::attend).

constexpr AttnFormat kKeyFormats[] = {AttnFormat::F32, AttnFormat::F16, AttnFormat::Q8_0,
                                      AttnFormat::Q4_0, AttnFormat::Q2, AttnFormat::Q2Channel};
constexpr AttnFormat kValueFormats[] = {AttnFormat::F32, AttnFormat::F16, AttnFormat::Q8_0, AttnFormat::Q4_0,
                                        AttnFormat::Q2};

const char* format_name(AttnFormat f) {
  constexpr const char* kNames[] = {"F32", "F16", "Q8_0", "Q4_0", "Q2", "Q2Channel"};
  return kNames[int(f)];
}

// n rows of hd values in one format, `stride` bytes apart (Q2Channel: groups of 32 rows), with
// padding between rows, and the floats they decode to ([n][hd]).
struct EncodedRows {
  std::vector<uint8_t> bytes;
  int64_t stride = 0;
  std::vector<float> decoded;
};

EncodedRows encode_rows(AttnFormat f, const std::vector<float>& x, int64_t n, int64_t hd) {
  EncodedRows e;
  const int64_t nb = hd / kQK;
  const int64_t row_bytes[] = {hd * 4, hd * 2, nb * 34, nb * 18, nb * 12, hd * 12};
  e.stride = row_bytes[int(f)] + 8;
  const int64_t n_rows = f == AttnFormat::Q2Channel ? n / kQK : n;
  e.bytes.assign(size_t(n_rows * e.stride), 0xCD);
  e.decoded.resize(size_t(n * hd));
  for (int64_t j = 0; j < n_rows; ++j) {
    uint8_t* row = e.bytes.data() + j * e.stride;
    const float* xr = x.data() + j * hd;
    float* dr = e.decoded.data() + j * hd;
    switch (f) {
      case AttnFormat::F32:
        std::memcpy(row, xr, size_t(hd) * 4);
        dequantize_row_f32(reinterpret_cast<float*>(row), dr, hd);
        break;
      case AttnFormat::F16:
        quantize_row_f16_ref(xr, reinterpret_cast<uint16_t*>(row), hd);
        dequantize_row_f16(reinterpret_cast<uint16_t*>(row), dr, hd);
        break;
      case AttnFormat::Q8_0:
        quantize_row_q8_0_ref(xr, reinterpret_cast<BlockQ8_0*>(row), hd);
        dequantize_row_q8_0(reinterpret_cast<BlockQ8_0*>(row), dr, hd);
        break;
      case AttnFormat::Q4_0:
        quantize_row_q4_0_ref(xr, reinterpret_cast<BlockQ4_0*>(row), hd);
        dequantize_row_q4_0(reinterpret_cast<BlockQ4_0*>(row), dr, hd);
        break;
      case AttnFormat::Q2:
        quantize_row_q2_ref(xr, reinterpret_cast<BlockQ2*>(row), hd);
        dequantize_row_q2(reinterpret_cast<BlockQ2*>(row), dr, hd);
        break;
      case AttnFormat::Q2Channel: {  // group j: rows 32j..32j+31, record c = channel c
        auto* rec = reinterpret_cast<BlockQ2*>(row);
        quantize_group_q2_channel(x.data() + j * kQK * hd, hd, hd, rec);
        for (int64_t c = 0; c < hd; ++c) {
          float col[kQK];
          dequantize_row_q2(rec + c, col, kQK);
          for (int64_t p = 0; p < kQK; ++p) e.decoded[size_t((j * kQK + p) * hd + c)] = col[p];
        }
        break;
      }
    }
  }
  return e;
}

// One run of a call: its rows in both formats and its (optional) weights.
struct TestRun {
  AttnFormat kf, vf;
  int64_t n;
  EncodedRows k, v;
  std::vector<float> weights;
};

TestRun make_run(AttnFormat kf, AttnFormat vf, int64_t n, int64_t hd, bool weights, std::mt19937& rng) {
  TestRun r{kf, vf, n, {}, {}, {}};
  r.k = encode_rows(kf, random_floats(size_t(n * hd), rng), n, hd);
  r.v = encode_rows(vf, random_floats(size_t(n * hd), rng), n, hd);
  if (weights) r.weights.assign(size_t(n), 0.0f);
  return r;
}

std::vector<AttnRows> attn_rows(std::vector<TestRun>& runs) {
  std::vector<AttnRows> rows;
  for (TestRun& r : runs)
    rows.push_back(AttnRows{r.k.bytes.data(), r.v.bytes.data(), r.n, r.k.stride, r.v.stride, r.kf, r.vf,
                            r.weights.empty() ? nullptr : r.weights.data()});
  return rows;
}

// Every K format x every V format as the first of two runs, the second run in other formats;
// nq 1..16, hd 64..256, lengths that are not multiples of the tile (Q2Channel: of 32), weights
// off and on. fn(q, nq, hd, runs, label) for each case.
template <class Fn>
void for_each_attend_case(uint32_t seed, Fn fn) {
  std::mt19937 rng(seed);
  constexpr int64_t kLengths[] = {1, 15, 17, 37, 100}, kGroupLengths[] = {32, 64, 96};
  int case_no = 0;
  for (size_t ik = 0; ik < std::size(kKeyFormats); ++ik)
    for (size_t iv = 0; iv < std::size(kValueFormats); ++iv)
      for (int64_t hd : {64, 128, 256})
        for (int64_t nq : {1, 3, 4, 5, 16})
          for (bool weights : {false, true}) {
            const AttnFormat kf[2] = {kKeyFormats[ik], kKeyFormats[(ik + 1 + iv) % std::size(kKeyFormats)]};
            const AttnFormat vf[2] = {kValueFormats[iv], kValueFormats[(iv + 2 + ik) % std::size(kValueFormats)]};
            std::vector<TestRun> runs;
            std::string label;
            for (int r = 0; r < 2; ++r) {
              const int64_t n = kf[r] == AttnFormat::Q2Channel ? kGroupLengths[(case_no + r) % 3]
                                                               : kLengths[(case_no + 2 * r) % 5];
              runs.push_back(make_run(kf[r], vf[r], n, hd, weights, rng));
              label += std::string(" ") + format_name(kf[r]) + "/" + format_name(vf[r]) + " n=" + std::to_string(n);
            }
            ++case_no;
            const auto q = random_floats(size_t(nq * hd), rng, 0.3f);
            fn(q, nq, hd, runs, label + " hd=" + std::to_string(hd) + " nq=" + std::to_string(nq) +
                                    (weights ? " weights" : ""));
          }
}

// The scalar kernel against a direct softmax in double over the dequantized rows; for Q8_0 / Q4_0
// keys the query is the one the kernel scores with, quantized per 32 values and dequantized.
// Weights against the probabilities (each row's summed over the queries; all rows' sum to nq).
TEST(Kernels, ScalarAttendMatchesDoubleSoftmaxOverDequantizedRows) {
  for_each_attend_case(12, [](const std::vector<float>& q, int64_t nq, int64_t hd, std::vector<TestRun>& runs,
                              const std::string& label) {
    const int64_t nb = hd / kQK;
    std::vector<BlockQ8Act> qa(size_t(nq * nb));
    scalar_kernels().quantize_q8(q.data(), qa.data(), nq * hd);
    std::vector<double> want(size_t(nq * hd), 0.0);
    std::vector<std::vector<double>> prob(runs.size());  // [run][row], summed over the queries
    for (size_t r = 0; r < runs.size(); ++r) prob[r].assign(size_t(runs[r].n), 0.0);
    for (int64_t i = 0; i < nq; ++i) {
      std::vector<std::vector<double>> s(runs.size());
      double mx = -INFINITY, sum = 0.0;
      for (size_t r = 0; r < runs.size(); ++r) {
        const bool int8 = runs[r].kf == AttnFormat::Q8_0 || runs[r].kf == AttnFormat::Q4_0;
        for (int64_t j = 0; j < runs[r].n; ++j) {
          double acc = 0.0;
          for (int64_t d = 0; d < hd; ++d) {
            const BlockQ8Act& b = qa[size_t(i * nb + d / kQK)];
            const double qd = int8 ? double(b.d) * b.qs[d % kQK] : double(q[size_t(i * hd + d)]);
            acc += qd * runs[r].k.decoded[size_t(j * hd + d)];
          }
          s[r].push_back(acc);
          mx = std::max(mx, acc);
        }
      }
      for (size_t r = 0; r < runs.size(); ++r)
        for (double& e : s[r]) sum += (e = std::exp(e - mx));
      for (size_t r = 0; r < runs.size(); ++r)
        for (int64_t j = 0; j < runs[r].n; ++j) {
          prob[r][size_t(j)] += s[r][size_t(j)] / sum;
          for (int64_t d = 0; d < hd; ++d)
            want[size_t(i * hd + d)] += s[r][size_t(j)] / sum * runs[r].v.decoded[size_t(j * hd + d)];
        }
    }
    std::vector<AttnRows> rows = attn_rows(runs);
    std::vector<float> got(size_t(nq * hd));
    scalar_kernels().attend(q.data(), nq, hd, rows.data(), int(rows.size()), got.data());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-4 * (1.0 + std::fabs(want[i]))) << label << " i=" << i;
    if (runs[0].weights.empty()) return;
    double total = 0.0;
    for (size_t r = 0; r < runs.size(); ++r)
      for (int64_t j = 0; j < runs[r].n; ++j) {
        ASSERT_NEAR(runs[r].weights[size_t(j)], prob[r][size_t(j)], 1e-5 + 1e-4 * prob[r][size_t(j)])
            << label << " run " << r << " row " << j;
        total += runs[r].weights[size_t(j)];
      }
    EXPECT_NEAR(total, double(nq), 1e-4 * double(nq)) << label;
  });
}

// Every SIMD table against the scalar kernel on the same cases (tables that leave attend null
// use the scalar one and are skipped).
TEST(Kernels, AttendMatchesScalarInEveryFormat) {
  for (const KernelTable* t : simd_tables()) {
    if (t->attend == nullptr) continue;
    for_each_attend_case(13, [&](const std::vector<float>& q, int64_t nq, int64_t hd, std::vector<TestRun>& runs,
                                 const std::string& label) {
      if (hd % t->attn_hd_multiple != 0) return;
      std::vector<AttnRows> rows = attn_rows(runs);
      std::vector<float> want(size_t(nq * hd)), got(want.size());
      scalar_kernels().attend(q.data(), nq, hd, rows.data(), int(rows.size()), want.data());
      std::vector<std::vector<float>> want_w;
      for (TestRun& r : runs) {
        want_w.push_back(r.weights);
        std::fill(r.weights.begin(), r.weights.end(), 0.0f);
      }
      t->attend(q.data(), nq, hd, rows.data(), int(rows.size()), got.data());
      for (size_t i = 0; i < want.size(); ++i)
        ASSERT_NEAR(got[i], want[i], 2e-5f + 2e-5f * std::fabs(want[i])) << isa_name(t->isa) << label << " i=" << i;
      for (size_t r = 0; r < runs.size(); ++r)
        for (size_t j = 0; j < runs[r].weights.size(); ++j)
          ASSERT_NEAR(runs[r].weights[j], want_w[r][j], 1e-6f + 1e-5f * want_w[r][j])
              << isa_name(t->isa) << label << " run " << r << " row " << j;
    });
  }
}

// The StreamingLLM geometry (ops/attention.cpp with --attn-sinks / --attn-window): per call up to
// three F16/F16 runs of one KV head -- the re-rotated sink keys in a dense buffer (K stride hd * 2
// bytes) with their values in the cache ring (V stride n_kv * hd * 2: K and V strides differ), then
// the window from the ring in one or two pieces -- of any length (0 included) and start; q and out
// at addresses that are not 64-byte aligned, out holding garbage beforehand. Keys are scaled per
// run so that whole tiles sit far below the running maximum (down to exp underflow: sink keys along
// the query), set a new one, or tie it. Every SIMD table against the scalar kernel, within float
// rounding of the scores (|error| grows with sum_d |q_d k_d|); nothing outside out[nq * hd] written.
TEST(Kernels, AttendMatchesScalarOnStreamingRuns) {
  constexpr int64_t kLens[] = {0, 1, 2, 3, 4, 15, 16, 17, 31, 32, 33, 47, 56, 60};
  constexpr int64_t kCtx = 64, kKv = 3;
  std::mt19937 rng(31);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (const KernelTable* t : simd_tables()) {
    if (t->attend == nullptr) continue;
    for (int64_t hd : {64, 128}) {
      if (hd % t->attn_hd_multiple != 0) continue;
      const int64_t row = kKv * hd;  // halves per ring position
      for (int c = 0; c < 400; ++c) {
        const int64_t nq = 1 + c % 3, hk = c % kKv;
        const int64_t n_sink = std::min<int64_t>(4, kLens[size_t(c) % std::size(kLens)]);
        const int64_t n1 = kLens[size_t(c / 3) % std::size(kLens)], n2 = kLens[size_t(c / 7 + 3) % std::size(kLens)];
        const int kind = c % 5;  // 0: alike; 1: sinks along the queries (scores ~ +100 and more)
        const float w_scale[2] = {kind == 2 ? 0.02f : kind == 3 ? 3.0f : 1.0f, kind == 4 ? 4.0f : 1.0f};
        // q and out 1..15 floats past a 64-byte boundary; guards around out.
        const int64_t qo = 1 + c % 15, oo = 1 + (c * 7) % 15, guard = 32;
        std::vector<float> qbuf(size_t(nq * hd + 16), 0.0f), want(size_t(nq * hd));
        float* q = qbuf.data() + qo;
        const float q_scale = (c % 3 == 0 ? 4.0f : 1.0f) / std::sqrt(float(hd));
        for (int64_t i = 0; i < nq * hd; ++i) q[i] = nd(rng) * q_scale;
        std::vector<uint16_t> ring(size_t(kCtx * row)), sink_k(size_t(4 * hd + 8));
        const int64_t s1 = std::max<int64_t>(n2, kCtx - n1);  // window: rows [s1, s1 + n1), then [0, n2)
        for (int64_t j = 0; j < kCtx; ++j)
          for (int64_t d = 0; d < row; ++d)
            ring[size_t(j * row + d)] = f32_to_fp16(nd(rng) * (j >= s1 ? w_scale[0] : w_scale[1]));
        double q0 = 0.0;  // |q_0|^2: sink keys 120 q_0 / |q_0|^2 score about 120 against query 0
        for (int64_t d = 0; d < hd; ++d) q0 += double(q[d]) * q[d];
        uint16_t* sk = sink_k.data() + c % 8;  // dense sink rows, not 64-byte aligned either
        for (int64_t j = 0; j < 4; ++j)
          for (int64_t d = 0; d < hd; ++d)
            sk[j * hd + d] = f32_to_fp16(kind == 1 ? float(120.0 / q0) * q[d] + 0.1f * nd(rng) : nd(rng));
        const uint16_t* rb = ring.data() + hk * hd;
        std::vector<AttnRows> runs;
        if (n_sink > 0 || c % 2 == 0)  // a run of 0 rows now and then
          runs.push_back({sk, rb, n_sink, hd * 2, row * 2, AttnFormat::F16, AttnFormat::F16});
        runs.push_back({rb + s1 * row, rb + s1 * row, std::min(n1, kCtx - s1), row * 2, row * 2, AttnFormat::F16,
                        AttnFormat::F16});
        runs.push_back({rb, rb, n2, row * 2, row * 2, AttnFormat::F16, AttnFormat::F16});
        // Per query: max over rows of sum_d |q_d k_d|; over all rows: max |v|.
        std::vector<double> sabs(size_t(nq), 0.0);
        double vmax = 0.0;
        for (const AttnRows& r : runs)
          for (int64_t j = 0; j < r.n; ++j) {
            const auto* kr = reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(r.k) + j * r.k_stride);
            const auto* vr = reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(r.v) + j * r.v_stride);
            for (int64_t i = 0; i < nq; ++i) {
              double a = 0.0;
              for (int64_t d = 0; d < hd; ++d) a += std::fabs(double(q[i * hd + d]) * fp16_to_f32(kr[d]));
              sabs[size_t(i)] = std::max(sabs[size_t(i)], a);
            }
            for (int64_t d = 0; d < hd; ++d) vmax = std::max(vmax, std::fabs(double(fp16_to_f32(vr[d]))));
          }
        if (vmax == 0.0) continue;  // no rows at all
        const std::vector<float> q_before = qbuf;
        scalar_kernels().attend(q, nq, hd, runs.data(), int(runs.size()), want.data());
        std::vector<float> obuf(size_t(nq * hd + 2 * guard + 16), std::nanf(""));
        float* out = obuf.data() + guard + oo;
        t->attend(q, nq, hd, runs.data(), int(runs.size()), out);
        std::string label = std::string(isa_name(t->isa)) + " hd=" + std::to_string(hd) + " nq=" + std::to_string(nq) +
                            " case " + std::to_string(c) + " runs";
        for (const AttnRows& r : runs) label += " " + std::to_string(r.n);
        for (int64_t i = 0; i < nq * hd; ++i) {
          const double w = want[size_t(i)], tol = 2e-5 + 2e-5 * std::fabs(w) + 2e-7 * sabs[size_t(i / hd)] * vmax;
          ASSERT_NEAR(out[i], w, tol) << label << " i=" << i;
        }
        for (int64_t i = 0; i < guard + oo; ++i) ASSERT_TRUE(std::isnan(obuf[size_t(i)])) << label << " before out";
        for (size_t i = size_t(guard + oo + nq * hd); i < obuf.size(); ++i)
          ASSERT_TRUE(std::isnan(obuf[i])) << label << " after out";
        ASSERT_EQ(0, std::memcmp(qbuf.data(), q_before.data(), qbuf.size() * sizeof(float))) << label << " q written";
      }
    }
  }
}

// silu(g) * u: the vector exp is within a few ulp of std::exp over the range that
// matters (including saturation at both ends), and every element's result is the
// same wherever it falls in a call (the tail takes the vector path too).
TEST(Kernels, SiluMulMatchesScalarAndIsPositionIndependent) {
  std::mt19937 rng(13);
  for (const KernelTable* t : simd_tables()) {
    auto g = random_floats(203, rng, 6.0f), u = random_floats(203, rng);
    g[0] = -100.0f;
    g[1] = 100.0f;
    g[2] = 0.0f;
    std::vector<float> ref(g.size()), got(g.size());
    scalar_kernels().silu_mul(g.data(), u.data(), ref.data(), int64_t(g.size()));
    t->silu_mul(g.data(), u.data(), got.data(), int64_t(g.size()));
    for (size_t i = 0; i < g.size(); ++i)
      ASSERT_NEAR(got[i], ref[i], 1e-6f + 1e-6f * std::fabs(ref[i])) << isa_name(t->isa) << " g=" << g[i];
    for (size_t i = 0; i < g.size(); ++i) {
      float one = 0.0f;
      t->silu_mul(&g[i], &u[i], &one, 1);
      ASSERT_EQ(one, got[i]) << isa_name(t->isa) << " element " << i;
    }
  }
}

// The scalar quantized dot equals the float dot of dequantized weights and
// dequantized activations (up to float rounding): the reference is right.
TEST(Kernels, ScalarQuantizedDotMatchesDequantizedMath) {
  std::mt19937 rng(4);
  for (const DotCase& c : kDotCases) {
    const int nb = 9;
    auto w = random_blocks(c.type, nb, rng);
    auto x = random_floats(size_t(nb) * 32, rng);
    std::vector<BlockQ8Act> xq(nb);
    scalar_kernels().quantize_q8(x.data(), xq.data(), nb * 32);
    std::vector<float> wf(size_t(nb) * 32);
    dequantize_row(c.type, w.data(), wf.data(), nb * 32);
    double ref = 0.0;
    for (int i = 0; i < nb * 32; ++i) ref += double(wf[i]) * xq[i / 32].d * xq[i / 32].qs[i % 32];
    float got = 0.0f;
    (scalar_kernels().*c.fn)(w.data(), nb, xq.data(), 1, &got, 1);
    EXPECT_NEAR(got, ref, 1e-4 * (1.0 + std::fabs(ref))) << type_name(c.type);
  }
}

TEST(Kernels, FloatDotsAndAxpyMatchScalar) {
  std::mt19937 rng(5);
  for (const KernelTable* t : simd_tables()) {
    for (int n : {1, 7, 8, 9, 15, 16, 17, 33, 64, 100, 576}) {
      auto w = random_floats(size_t(n), rng), x = random_floats(size_t(n), rng);
      std::vector<uint16_t> h(static_cast<size_t>(n)), bf(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) {
        h[i] = f32_to_fp16(w[i]);
        bf[i] = f32_to_bf16(w[i]);
      }
      const float tol = 1e-5f * float(n);
      EXPECT_NEAR(t->dot_f32(w.data(), x.data(), n), scalar_kernels().dot_f32(w.data(), x.data(), n), tol);
      EXPECT_NEAR(t->dot_f16(h.data(), x.data(), n), scalar_kernels().dot_f16(h.data(), x.data(), n), tol);
      EXPECT_NEAR(t->dot_bf16(bf.data(), x.data(), n), scalar_kernels().dot_bf16(bf.data(), x.data(), n), tol);
      std::vector<float> y1 = x, y2 = x;
      scalar_kernels().axpy_f32(0.37f, w.data(), y1.data(), n);
      t->axpy_f32(0.37f, w.data(), y2.data(), n);
      for (int i = 0; i < n; ++i) EXPECT_NEAR(y1[i], y2[i], 1e-6f) << i;
      y1 = x;
      y2 = x;
      scalar_kernels().axpy_f16(-1.5f, h.data(), y1.data(), n);
      t->axpy_f16(-1.5f, h.data(), y2.data(), n);
      for (int i = 0; i < n; ++i) EXPECT_NEAR(y1[i], y2[i], 1e-5f) << i;
    }
  }
}

TEST(Fp16, ConversionsAreExactOnRepresentableValues) {
  // Every finite half converts to float and back unchanged.
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // NaN payloads
    float f = fp16_to_f32(uint16_t(h));
    ASSERT_EQ(f32_to_fp16(f), h) << std::hex << h;
  }
  EXPECT_EQ(fp16_to_f32(0x3c00), 1.0f);
  EXPECT_EQ(fp16_to_f32(0xc000), -2.0f);
  EXPECT_EQ(fp16_to_f32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_fp16(1e6f), 0x7c00);               // overflow -> inf
  EXPECT_EQ(f32_to_fp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie -> even
  EXPECT_EQ(bf16_to_f32(0x3f80), 1.0f);
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3f80);
}

// ssm_scan (one Mamba-2 head over a run of tokens): every table equals the scalar reference bit
// for bit, state included, over several calls (the state feeds back), state widths that fit one
// register block or need several, and any split of the tokens into calls.
TEST(Kernels, SsmScanIsBitExactAcrossIsasAndSplits) {
  std::mt19937 rng(21);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<const KernelTable*> tables = simd_tables();
  tables.push_back(&scalar_kernels());
  for (const KernelTable* t : tables) {
    ASSERT_NE(t->ssm_scan, nullptr) << isa_name(t->isa);
    for (int64_t ds : {16, 64, 128, 256}) {
      const int64_t hd = 5, n_tok = 6, stride = ds * 2 + hd + 3;  // token rows: x | B | C, padded
      const size_t nh = static_cast<size_t>(hd), ns = static_cast<size_t>(ds);
      std::vector<float> S(nh * ns), in(static_cast<size_t>(n_tok * stride)), dt(6), dA(6);
      for (float& v : S) v = nd(rng);
      std::vector<float> S_ref = S, S_split = S;
      for (int call = 0; call < 3; ++call) {
        for (float& v : in) v = nd(rng);
        for (int64_t k = 0; k < n_tok; ++k) {
          dt[size_t(k)] = std::abs(nd(rng)) * 0.5f;
          dA[size_t(k)] = std::exp(-dt[size_t(k)]);
        }
        const float D = nd(rng);
        const float *x = in.data(), *B = x + hd, *C = B + ds;
        std::vector<float> y(static_cast<size_t>(n_tok * hd)), y_ref(y.size()), y_split(y.size());
        scalar_kernels().ssm_scan(S_ref.data(), x, B, C, stride, dt.data(), dA.data(), D, hd, ds, n_tok, y_ref.data(), hd);
        t->ssm_scan(S.data(), x, B, C, stride, dt.data(), dA.data(), D, hd, ds, n_tok, y.data(), hd);
        ASSERT_EQ(y, y_ref) << isa_name(t->isa) << " ds " << ds << " call " << call;
        ASSERT_EQ(S, S_ref) << isa_name(t->isa) << " ds " << ds << " call " << call;
        // The same tokens as runs of 1, 2 and 3.
        for (auto [first, n] : {std::pair<int64_t, int64_t>{0, 1}, {1, 2}, {3, 3}})
          t->ssm_scan(S_split.data(), x + first * stride, B + first * stride, C + first * stride, stride,
                      dt.data() + first, dA.data() + first, D, hd, ds, n, y_split.data() + first * hd, hd);
        ASSERT_EQ(y_split, y_ref) << isa_name(t->isa) << " ds " << ds << " split";
        ASSERT_EQ(S_split, S_ref) << isa_name(t->isa) << " ds " << ds << " split";
      }
    }
  }
}

}  // namespace
}  // namespace peregrine
