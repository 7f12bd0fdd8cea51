// The NEON kernel table against the scalar reference, entry by entry. A standalone
// program (no GoogleTest: it is cross-compiled for AArch64 and run under qemu by
// scripts/test_neon.sh, where no aarch64 gtest is installed). Exit status 1 on any
// mismatch, with one line per failure naming the entry, the size and the values.
//
// What is checked:
//   quantize_q8      bit-identical blocks (nb = 1..9, 48; ties, zeros, tiny and huge values)
//   quantize_q8_norm bit-identical, with and without the norm weight
//   dot_q4_0/q4_1/q8_0
//                    bit-identical to the reference (exact integer sums, then the same
//                    float steps); with unit scales both equal the exact integer dot;
//                    strided output; batch invariance (a row alone or in any batch gives
//                    the same bits), for nb = 1..9 blocks and n_x = 1..9 rows
//   panel_q4_0/q4_1/q8_0
//                    bit-identical to the scalar panel kernel for every token tile split
//                    (rows 16, 5, 21, 48: padded panels; nb = 1..9; n_x = 1..9); the
//                    scalar one equals the exact dot of the GGUF rows (unit scales) or
//                    is within a summation bound of it
//   dot_f32/f16/bf16 within the recursive-summation bound 2 n eps sum|w x| of the scalar
//                    result (n = 0..67, 100, 576, 1000); every fp16/bf16 value converts
//                    exactly
//   axpy_f32/f16     within one fused-vs-unfused rounding per element (n = 0..67, 100)
//   panel_ternary    TQ1_0 and TQ2_0 (random bytes, TQ2_0's code 3 included) packed into
//                    the 2-bit panels: bit-identical to the scalar panel kernel for every
//                    token tile split (rows 16, 5, 21; 1..3 super-blocks; n_x = 1..9); with
//                    unit scales the scalar one equals the exact integer dot
//   panel_f32/f16/bf16
//                    bit-identical to the scalar float panel kernel for every token
//                    tile split, strided activations (rows 16, 5, 21; nb = 1..4)
//   silu_mul         bit-identical (n = 0..67)
//   ssm_scan         bit-identical, state included (ds = 16, 64, 128, 256; 6 tokens a call)
//   attend           every K format x every V format as the first of two runs (the second in
//                    other formats), nq 1, 3, 5, hd 64, 128, lengths that are not multiples
//                    of the tile, eviction weights off and on: within 2e-5 (relative and
//                    absolute) of the scalar kernel
//   dispatch         `--isa` prints the table kernels() picked (the script checks
//                    PEREGRINE_ISA handling with it)
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
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

int g_failures = 0;
int g_checks = 0;

// Prints the first failures in full, then only counts them.
#define CHECK(cond, ...)                                                     \
  do {                                                                       \
    ++g_checks;                                                              \
    if (!(cond)) {                                                           \
      if (++g_failures <= 40) {                                              \
        std::fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
        std::fprintf(stderr, __VA_ARGS__);                                   \
        std::fputc('\n', stderr);                                            \
      }                                                                      \
    }                                                                        \
  } while (0)

constexpr double kEps = 1.0 / (1 << 23);  // f32 unit roundoff is kEps / 2; kEps is ample

std::vector<float> random_floats(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

bool same_bits(float a, float b) { return f32_to_bits(a) == f32_to_bits(b); }

// ---- quantize_q8

void check_quantize(const KernelTable& s, const KernelTable& t, std::mt19937& rng) {
  auto compare = [&](const std::vector<float>& x, const char* what) {
    const int64_t nb = int64_t(x.size()) / kQK;
    std::vector<BlockQ8Act> a(static_cast<size_t>(nb)), b(static_cast<size_t>(nb));
    std::memset(a.data(), 0, a.size() * sizeof(BlockQ8Act));  // padding compares equal
    std::memset(b.data(), 0, b.size() * sizeof(BlockQ8Act));
    s.quantize_q8(x.data(), a.data(), int64_t(x.size()));
    t.quantize_q8(x.data(), b.data(), int64_t(x.size()));
    for (int64_t i = 0; i < nb; ++i) {
      const bool same = std::memcmp(&a[size_t(i)], &b[size_t(i)], sizeof(BlockQ8Act)) == 0;
      int j = 0;
      while (j < kQK && a[size_t(i)].qs[j] == b[size_t(i)].qs[j]) ++j;
      CHECK(
          same,
          "quantize_q8 %s nb=%lld block %lld differs: d %a vs %a, s %a vs %a, first qs diff at %d",
          what, (long long)nb, (long long)i, a[size_t(i)].d, b[size_t(i)].d, a[size_t(i)].s,
          b[size_t(i)].s, j);
    }
  };
  for (int nb : {1, 2, 3, 4, 5, 6, 7, 8, 9, 48}) {
    for (float scale : {1.0f, 3.0f, 1e-30f, 1e30f})
      compare(random_floats(size_t(nb) * kQK, rng, scale), "random");
  }
  // amax = 127 makes d = 1 and id = 1, so halves are exact ties: round half to even.
  std::vector<float> ties(kQK * 3);
  std::uniform_int_distribution<int> half(-254, 254);
  for (float& v : ties) v = float(half(rng)) * 0.5f;
  for (int b = 0; b < 3; ++b) ties[size_t(b * kQK + 5)] = b == 1 ? -127.0f : 127.0f;
  compare(ties, "ties");
  // Zero blocks give d = 0 and no NaN; a lone value; negative zero.
  std::vector<float> sparse(kQK * 3, 0.0f);
  sparse[kQK + 7] = -2.5f;
  sparse[2 * kQK + 31] = -0.0f;
  compare(sparse, "zeros");

  // RMSNorm fused into the quantization: (x * scale) * w, or x * scale.
  if (s.quantize_q8_norm == nullptr) return;
  CHECK(t.quantize_q8_norm != nullptr, "the scalar table fuses RMSNorm into quantize, NEON not");
  if (t.quantize_q8_norm == nullptr) return;
  for (int nb : {1, 2, 3, 5, 9}) {
    const auto x = random_floats(size_t(nb) * kQK, rng, 3.0f);
    const auto w = random_floats(size_t(nb) * kQK, rng);
    for (bool with_w : {true, false}) {
      std::vector<BlockQ8Act> a(static_cast<size_t>(nb)), b(static_cast<size_t>(nb));
      std::memset(a.data(), 0, a.size() * sizeof(BlockQ8Act));
      std::memset(b.data(), 0, b.size() * sizeof(BlockQ8Act));
      const float* wp = with_w ? w.data() : nullptr;
      s.quantize_q8_norm(x.data(), 0.37f, wp, a.data(), int64_t(x.size()));
      t.quantize_q8_norm(x.data(), 0.37f, wp, b.data(), int64_t(x.size()));
      CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(BlockQ8Act)) == 0,
            "quantize_q8_norm nb=%d %s differs from the reference", nb, with_w ? "with w" : "no w");
    }
  }
}

// ---- quantized dots

struct QuantType {
  const char* name;
  GgmlType type;
  KernelTable::DotRows KernelTable::*fn;
  KernelTable::PanelDot KernelTable::*panel;
  size_t block_bytes;
  bool has_m;  // Q4_1
};
const QuantType kQuantTypes[] = {
    {"q4_0", GgmlType::Q4_0, &KernelTable::dot_q4_0, &KernelTable::panel_q4_0, sizeof(BlockQ4_0),
     false},
    {"q4_1", GgmlType::Q4_1, &KernelTable::dot_q4_1, &KernelTable::panel_q4_1, sizeof(BlockQ4_1),
     true},
    {"q8_0", GgmlType::Q8_0, &KernelTable::dot_q8_0, &KernelTable::panel_q8_0, sizeof(BlockQ8_0),
     false},
};

// Random weight blocks: random quant bytes (Q8_0 includes -128), fp16 scales from
// `scale` (and a negative Q4_1 minimum), or exactly 1 (and m = 1) when unit.
std::vector<uint8_t> random_blocks(const QuantType& q, int64_t nb, bool unit, std::mt19937& rng) {
  std::vector<uint8_t> buf(q.block_bytes * size_t(nb));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (auto& b : buf) b = uint8_t(byte(rng));
  for (int64_t i = 0; i < nb; ++i) {
    uint8_t* blk = buf.data() + size_t(i) * q.block_bytes;
    const uint16_t d = f32_to_fp16(unit ? 1.0f : scale(rng));
    std::memcpy(blk, &d, 2);
    if (q.has_m) {
      const uint16_t m = f32_to_fp16(unit ? 1.0f : -8.0f * scale(rng));
      std::memcpy(blk + 2, &m, 2);
    }
  }
  return buf;
}

// Weight j of block `blk` as an integer (the quant, before scale and offset).
int weight_q(const QuantType& q, const uint8_t* blk, int j) {
  if (q.block_bytes == sizeof(BlockQ8_0)) return int8_t(blk[2 + j]);
  const uint8_t byte = blk[(q.has_m ? 4 : 2) + j % 16];
  const int nib = j < 16 ? byte & 0xF : byte >> 4;
  return q.has_m ? nib : nib - 8;
}

// Exact (double) value of the dot as the kernels define it, and sum |terms| for the bound.
void exact_dot(const QuantType& q, const uint8_t* w, const BlockQ8Act* x, int64_t nb, double& value,
               double& abs_sum) {
  value = abs_sum = 0.0;
  for (int64_t i = 0; i < nb; ++i) {
    const uint8_t* blk = w + size_t(i) * q.block_bytes;
    int64_t isum = 0;
    for (int j = 0; j < kQK; ++j) isum += int64_t(weight_q(q, blk, j)) * x[i].qs[j];
    uint16_t dh, mh;
    std::memcpy(&dh, blk, 2);
    double term = double(fp16_to_f32(dh)) * x[i].d * double(isum);
    value += term;
    abs_sum += std::fabs(term);
    if (q.has_m) {
      std::memcpy(&mh, blk + 2, 2);
      term = double(fp16_to_f32(mh)) * x[i].s;
      value += term;
      abs_sum += std::fabs(term);
    }
  }
}

// Activations [n_x, nb] quantized by the scalar table; with unit scales, d = 1
// (so qs = the rounded values and s = sum(qs)) keeps every product an integer.
std::vector<BlockQ8Act> random_activations(const KernelTable& s, int64_t n_x, int64_t nb, bool unit,
                                           std::mt19937& rng) {
  std::vector<float> x = random_floats(size_t(n_x * nb) * kQK, rng, 40.0f);
  std::vector<BlockQ8Act> xq(size_t(n_x * nb));
  if (unit) {
    // amax pinned to 127 so that d = 1 exactly (values beyond are clipped to 127).
    for (size_t i = 0; i < x.size(); ++i) x[i] = std::fmax(-127.0f, std::fmin(127.0f, x[i]));
    for (size_t b = 0; b < xq.size(); ++b) x[b * kQK] = 127.0f;
  }
  s.quantize_q8(x.data(), xq.data(), int64_t(x.size()));
  return xq;
}

void check_quantized_dots(const KernelTable& s, const KernelTable& t, std::mt19937& rng) {
  constexpr int64_t kStride = 3;  // strided output: y[r * 3]; the gaps must stay untouched
  const float kSentinel = -12345.0f;
  for (const QuantType& q : kQuantTypes) {
    for (bool unit : {true, false}) {
      for (int64_t nb = 1; nb <= 9; ++nb) {
        for (int64_t n_x = 1; n_x <= 9; ++n_x) {
          const auto w = random_blocks(q, nb, unit, rng);
          const auto xq = random_activations(s, n_x, nb, unit, rng);
          std::vector<float> ref(size_t(n_x), kSentinel), got(size_t(n_x * kStride), kSentinel);
          (s.*q.fn)(w.data(), nb, xq.data(), n_x, ref.data(), 1);
          (t.*q.fn)(w.data(), nb, xq.data(), n_x, got.data(), kStride);
          for (int64_t r = 0; r < n_x; ++r) {
            const float g = got[size_t(r * kStride)], f = ref[size_t(r)];
            for (int64_t k = 1; k < kStride; ++k)
              CHECK(got[size_t(r * kStride + k)] == kSentinel,
                    "%s nb=%lld n_x=%lld wrote between rows", q.name, (long long)nb,
                    (long long)n_x);
            double exact, abs_sum;
            exact_dot(q, w.data(), xq.data() + r * nb, nb, exact, abs_sum);
            // The NEON table takes the reference's float steps in its order after
            // exact integer sums: bit-identical results.
            CHECK(same_bits(g, f), "%s %s nb=%lld n_x=%lld row %lld: scalar %a neon %a (exact %a)",
                  q.name, unit ? "unit scales" : "random scales", (long long)nb, (long long)n_x,
                  (long long)r, double(f), double(g), exact);
            if (unit) {
              // Every term is an integer below 2^24: the result is the exact integer.
              CHECK(double(f) == exact,
                    "%s unit scales nb=%lld n_x=%lld row %lld: exact %.1f scalar %.1f", q.name,
                    (long long)nb, (long long)n_x, (long long)r, exact, double(f));
            } else {
              // The reference itself: nb block terms, each rounded a few times, summed
              // in order: within (2 nb + 8) eps sum|terms| of the exact value.
              const double tol = double(2 * nb + 8) * kEps * abs_sum + 1e-30;
              CHECK(std::fabs(double(f) - exact) <= tol,
                    "%s nb=%lld n_x=%lld row %lld: scalar %.9g exact %.9g (tol %.3g)", q.name,
                    (long long)nb, (long long)n_x, (long long)r, double(f), exact, tol);
            }
            // Batch invariance: alone, and as the first row of a shorter batch, the row
            // gives the same bits as in the full batch.
            float alone = kSentinel;
            (t.*q.fn)(w.data(), nb, xq.data() + r * nb, 1, &alone, 1);
            std::vector<float> suffix(size_t(n_x - r), kSentinel);
            (t.*q.fn)(w.data(), nb, xq.data() + r * nb, n_x - r, suffix.data(), 1);
            CHECK(same_bits(alone, g) && same_bits(suffix[0], g),
                  "%s nb=%lld n_x=%lld row %lld: batch %a, alone %a, first of %lld %a (batch "
                  "invariance)",
                  q.name, (long long)nb, (long long)n_x, (long long)r, double(g), double(alone),
                  (long long)(n_x - r), double(suffix[0]));
          }
        }
      }
    }
  }
}

// ---- panel kernels (packed weights)

// run(table, t0, nt, y) runs a panel kernel over every panel for tokens [t0, t0 + nt) into y.
// The scalar table's outputs for all n_x tokens, and how many of t's differ from them bit-wise
// when run on all tokens at once and when split into tiles of 1, 2, 3, 4, 5, 1, ... tokens.
struct PanelRuns {
  std::vector<float> ref;
  int bad_all = 0, bad_split = 0;
};
template <class Run>
PanelRuns compare_panel_runs(const KernelTable& s, const KernelTable& t, int64_t n_x, size_t y_size, Run run) {
  PanelRuns r{std::vector<float>(y_size, -1.0f)};
  std::vector<float> all = r.ref, split = r.ref;
  run(s, 0, n_x, r.ref);
  run(t, 0, n_x, all);
  for (int64_t t0 = 0, nt = 1; t0 < n_x; t0 += nt, nt = nt % 5 + 1) run(t, t0, std::min<int64_t>(nt, n_x - t0), split);
  for (size_t i = 0; i < r.ref.size(); ++i) {
    r.bad_all += !same_bits(all[i], r.ref[i]);
    r.bad_split += !same_bits(split[i], r.ref[i]);
  }
  return r;
}

// Rows [rows, nb blocks] packed into 16-row panels; every panel against n_x tokens.
// NEON must equal the scalar panel kernel bit for bit, for any token tile split, and
// with unit scales both must give the exact integer dot of the GGUF rows.
void check_panels(const KernelTable& s, const KernelTable& t, std::mt19937& rng) {
  for (const QuantType& q : kQuantTypes) {
    if (s.*q.panel == nullptr) continue;  // no panel kernels in this tree
    CHECK(t.*q.panel != nullptr, "%s: the scalar table has a panel kernel, NEON has none", q.name);
    if (t.*q.panel == nullptr) continue;
    for (bool unit : {true, false}) {
      for (int64_t rows : {16, 5, 21, 48}) {  // 5 and 21: a padded last panel
        for (int64_t nb = 1; nb <= 9; ++nb) {
          const int64_t n_x = 1 + (nb * 7 + rows) % 9;            // 1..9 across the cases
          const auto w = random_blocks(q, rows * nb, unit, rng);  // [rows, nb] blocks
          const size_t rb = q.block_bytes * size_t(nb);
          auto packed = pack_matrix(q.type, w.data(), rows, nb * kQK, rb);
          CHECK(packed.ok(), "%s: pack_matrix failed: %s", q.name,
                packed.ok() ? "" : packed.error().message.c_str());
          if (!packed.ok()) continue;
          const auto xq = random_activations(s, n_x, nb, unit, rng);
          const int64_t n_panels = packed->n_panels;
          const int64_t stride = n_panels * kPanelRows + 3;  // y [n_x, stride]: gaps stay untouched
          auto run = [&](const KernelTable& k, int64_t t0, int64_t nt, std::vector<float>& y) {
            for (int64_t p = 0; p < n_panels; ++p)
              (k.*q.panel)(packed->panel(p), nb, xq.data() + t0 * nb, nt,
                           y.data() + t0 * stride + p * kPanelRows, stride);
          };
          const auto [ref, bad_all, bad_split] = compare_panel_runs(s, t, n_x, size_t(n_x * stride), run);
          CHECK(bad_all == 0 && bad_split == 0,
                "panel %s %s rows=%lld nb=%lld n_x=%lld: %d outputs differ from scalar, %d when "
                "split into tiles",
                q.name, unit ? "unit scales" : "random scales", (long long)rows, (long long)nb,
                (long long)n_x, bad_all, bad_split);
          for (int64_t tok = 0; tok < n_x; ++tok)
            for (int64_t r = 0; r < n_panels * kPanelRows; ++r) {
              const float f = ref[size_t(tok * stride + r)];
              double exact = 0.0, abs_sum = 0.0;
              if (r < rows)
                exact_dot(q, w.data() + size_t(r) * rb, xq.data() + tok * nb, nb, exact, abs_sum);
              const double tol = unit ? 0.0 : double(2 * nb + 8) * kEps * abs_sum + 1e-30;
              CHECK(std::fabs(double(f) - exact) <= tol,
                    "panel %s scalar reference rows=%lld nb=%lld token %lld row %lld: %.9g, exact "
                    "%.9g",
                    q.name, (long long)rows, (long long)nb, (long long)tok, (long long)r, double(f),
                    exact);
            }
        }
      }
    }
  }
}

// Ternary panels: both ternary types widen into one 2-bit layout. NEON equals the scalar
// panel kernel bit for bit for any token split; with d = 1 in weights and activations
// every term is an integer, so the scalar result is the exact dot of the decoded rows.
void check_ternary_panels(const KernelTable& s, const KernelTable& t, std::mt19937& rng) {
  if (s.panel_ternary == nullptr) return;  // no ternary panels in this tree
  CHECK(t.panel_ternary != nullptr, "ternary: the scalar table has a panel kernel, NEON has none");
  if (t.panel_ternary == nullptr) return;
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.001f, 0.05f);
  for (GgmlType type : {GgmlType::TQ1_0, GgmlType::TQ2_0}) {
    const char* name = type == GgmlType::TQ1_0 ? "tq1_0" : "tq2_0";
    const size_t block = type == GgmlType::TQ1_0 ? sizeof(BlockTQ1_0) : sizeof(BlockTQ2_0);
    for (bool unit : {true, false}) {
      for (int64_t rows : {16, 5, 21}) {
        for (int64_t nbk = 1; nbk <= 3; ++nbk) {
          const int64_t nb = nbk * (kQK_K / kQK), n_x = 1 + (nbk * 7 + rows) % 9;
          const size_t rb = block * size_t(nbk);
          std::vector<uint8_t> w(rb * size_t(rows));
          for (auto& b : w) b = uint8_t(byte(rng));
          for (size_t off = block - 2; off < w.size(); off += block) {
            const uint16_t d = f32_to_fp16(unit ? 1.0f : scale(rng));
            std::memcpy(&w[off], &d, 2);
          }
          auto packed = pack_matrix(type, w.data(), rows, nbk * kQK_K, rb);
          CHECK(packed.ok(), "%s: pack_matrix failed: %s", name, packed.ok() ? "" : packed.error().message.c_str());
          if (!packed.ok()) continue;
          const auto xq = random_activations(s, n_x, nb, unit, rng);
          const int64_t n_panels = packed->n_panels, stride = n_panels * kPanelRows + 3;
          auto run = [&](const KernelTable& k, int64_t t0, int64_t nt, std::vector<float>& y) {
            for (int64_t p = 0; p < n_panels; ++p)
              k.panel_ternary(packed->panel(p), nb, xq.data() + t0 * nb, nt, y.data() + t0 * stride + p * kPanelRows,
                              stride);
          };
          const auto [ref, bad_all, bad_split] = compare_panel_runs(s, t, n_x, size_t(n_x * stride), run);
          CHECK(bad_all == 0 && bad_split == 0,
                "panel %s %s rows=%lld nbk=%lld n_x=%lld: %d outputs differ from scalar, %d when split into tiles",
                name, unit ? "unit scales" : "random scales", (long long)rows, (long long)nbk, (long long)n_x, bad_all,
                bad_split);
          if (!unit) continue;
          std::vector<float> wf(size_t(nbk) * kQK_K);
          for (int64_t r = 0; r < rows; ++r) {
            dequantize_row(type, w.data() + size_t(r) * rb, wf.data(), nbk * kQK_K);
            for (int64_t tok = 0; tok < n_x; ++tok) {
              double exact = 0.0;
              for (size_t i = 0; i < wf.size(); ++i)
                exact += double(wf[i]) * xq[size_t(tok * nb) + i / kQK].qs[i % kQK];
              const float f = ref[size_t(tok * stride + r)];
              CHECK(double(f) == exact, "panel %s unit scales rows=%lld nbk=%lld token %lld row %lld: %.1f, exact %.1f",
                    name, (long long)rows, (long long)nbk, (long long)tok, (long long)r, double(f), exact);
            }
          }
        }
      }
    }
  }
}

// Float panels (F32, F16, BF16): NEON equals the scalar panel kernel bit for bit for
// any token tile split, with strided activations; the scalar one is within the
// summation bound of the exact dot.
void check_float_panels(const KernelTable& s, const KernelTable& t, std::mt19937& rng) {
  const struct {
    const char* name;
    GgmlType type;
    KernelTable::PanelDotF KernelTable::*fn;
  } cases[] = {{"f32", GgmlType::F32, &KernelTable::panel_f32},
               {"f16", GgmlType::F16, &KernelTable::panel_f16},
               {"bf16", GgmlType::BF16, &KernelTable::panel_bf16}};
  for (const auto& c : cases) {
    if (s.*c.fn == nullptr) continue;  // no float panels in this tree
    CHECK(t.*c.fn != nullptr, "%s: the scalar table has a float panel kernel, NEON has none",
          c.name);
    if (t.*c.fn == nullptr) continue;
    for (int64_t rows : {16, 5, 21}) {
      for (int64_t nb = 1; nb <= 4; ++nb) {
        const int64_t cols = nb * kQK, n_x = 1 + (nb * 5 + rows) % 9;
        const auto wf = random_floats(size_t(rows * cols), rng);
        // Row-major source rows of the element type, and their exact float values.
        std::vector<uint8_t> src;
        std::vector<float> wv(wf.size());
        for (size_t i = 0; i < wf.size(); ++i) {
          if (c.type == GgmlType::F32) {
            wv[i] = wf[i];
            src.insert(src.end(), reinterpret_cast<const uint8_t*>(&wf[i]),
                       reinterpret_cast<const uint8_t*>(&wf[i]) + 4);
          } else {
            const uint16_t h = c.type == GgmlType::F16 ? f32_to_fp16(wf[i]) : f32_to_bf16(wf[i]);
            wv[i] = c.type == GgmlType::F16 ? fp16_to_f32(h) : bf16_to_f32(h);
            src.push_back(uint8_t(h & 0xff));
            src.push_back(uint8_t(h >> 8));
          }
        }
        auto packed = pack_matrix(c.type, src.data(), rows, cols, src.size() / size_t(rows));
        CHECK(packed.ok(), "%s: pack_matrix failed: %s", c.name,
              packed.ok() ? "" : packed.error().message.c_str());
        if (!packed.ok()) continue;
        const int64_t x_stride = cols + 3;
        const auto x = random_floats(size_t(n_x * x_stride), rng);
        const int64_t n_panels = packed->n_panels, stride = n_panels * kPanelRows + 3;
        auto run = [&](const KernelTable& k, int64_t t0, int64_t nt, std::vector<float>& y) {
          for (int64_t p = 0; p < n_panels; ++p)
            (k.*c.fn)(packed->panel(p), nb, x.data() + t0 * x_stride, x_stride, nt,
                      y.data() + t0 * stride + p * kPanelRows, stride);
        };
        const auto [ref, bad_all, bad_split] = compare_panel_runs(s, t, n_x, size_t(n_x * stride), run);
        CHECK(bad_all == 0 && bad_split == 0,
              "panel %s rows=%lld nb=%lld n_x=%lld: %d outputs differ from scalar, %d when split "
              "into tiles",
              c.name, (long long)rows, (long long)nb, (long long)n_x, bad_all, bad_split);
        for (int64_t tok = 0; tok < n_x; ++tok)
          for (int64_t r = 0; r < rows; ++r) {
            double exact = 0.0, abs_sum = 0.0;
            for (int64_t k = 0; k < cols; ++k) {
              const double p = double(wv[size_t(r * cols + k)]) * x[size_t(tok * x_stride + k)];
              exact += p;
              abs_sum += std::fabs(p);
            }
            const float f = ref[size_t(tok * stride + r)];
            CHECK(
                std::fabs(double(f) - exact) <= double(cols) * kEps * abs_sum + 1e-30,
                "panel %s scalar reference rows=%lld nb=%lld token %lld row %lld: %.9g, exact %.9g",
                c.name, (long long)rows, (long long)nb, (long long)tok, (long long)r, double(f),
                exact);
          }
      }
    }
  }
}

// ---- float dots and axpy

void check_float_dots(const KernelTable& s, const KernelTable& t, std::mt19937& rng) {
  std::vector<int> sizes;
  for (int n = 0; n <= 67; ++n) sizes.push_back(n);
  for (int n : {100, 576, 1000}) sizes.push_back(n);
  for (int n : sizes) {
    // One element of offset: nothing may assume aligned pointers.
    auto wv = random_floats(size_t(n) + 1, rng), xv = random_floats(size_t(n) + 1, rng);
    const float* w = wv.data() + 1;
    const float* x = xv.data() + 1;
    std::vector<uint16_t> h(size_t(n) + 1), bf(size_t(n) + 1);
    for (int i = 0; i < n; ++i) {
      h[size_t(i) + 1] = f32_to_fp16(w[i]);
      bf[size_t(i) + 1] = f32_to_bf16(w[i]);
    }
    struct Case {
      const char* name;
      float ref, got;
      double abs_sum;
    };
    double a32 = 0, a16 = 0, ab16 = 0;
    for (int i = 0; i < n; ++i) {
      a32 += std::fabs(double(w[i]) * x[i]);
      a16 += std::fabs(double(fp16_to_f32(h[size_t(i) + 1])) * x[i]);
      ab16 += std::fabs(double(bf16_to_f32(bf[size_t(i) + 1])) * x[i]);
    }
    const Case cases[] = {
        {"dot_f32", s.dot_f32(w, x, n), t.dot_f32(w, x, n), a32},
        {"dot_f16", s.dot_f16(h.data() + 1, x, n), t.dot_f16(h.data() + 1, x, n), a16},
        {"dot_bf16", s.dot_bf16(bf.data() + 1, x, n), t.dot_bf16(bf.data() + 1, x, n), ab16},
    };
    for (const Case& c : cases) {
      // Recursive summation errs by at most n * u * sum|w x| (u = eps / 2) on each side.
      const double tol = double(n) * kEps * c.abs_sum + 1e-30;
      CHECK(std::fabs(double(c.got) - double(c.ref)) <= tol,
            "%s n=%d: scalar %.9g neon %.9g (tol %.3g)", c.name, n, double(c.ref), double(c.got),
            tol);
    }

    // axpy: NEON fuses a*x+y (one rounding), the reference rounds a*x first: per
    // element they differ by at most one rounding of |a x| and one of |a x + y|.
    for (float a : {0.37f, -1.5f}) {
      std::vector<float> y1(xv.begin() + 1, xv.end()), y2 = y1;
      s.axpy_f32(a, w, y1.data(), n);
      t.axpy_f32(a, w, y2.data(), n);
      for (int i = 0; i < n; ++i) {
        const double tol =
            kEps * (std::fabs(double(a) * w[i]) + std::fabs(double(y1[size_t(i)]))) + 1e-37;
        CHECK(std::fabs(double(y1[size_t(i)]) - y2[size_t(i)]) <= tol,
              "axpy_f32 a=%g n=%d i=%d: scalar %.9g neon %.9g", double(a), n, i,
              double(y1[size_t(i)]), double(y2[size_t(i)]));
      }
      y1.assign(xv.begin() + 1, xv.end());
      y2 = y1;
      s.axpy_f16(a, h.data() + 1, y1.data(), n);
      t.axpy_f16(a, h.data() + 1, y2.data(), n);
      for (int i = 0; i < n; ++i) {
        const double ax = std::fabs(double(a) * fp16_to_f32(h[size_t(i) + 1]));
        const double tol = kEps * (ax + std::fabs(double(y1[size_t(i)]))) + 1e-37;
        CHECK(std::fabs(double(y1[size_t(i)]) - y2[size_t(i)]) <= tol,
              "axpy_f16 a=%g n=%d i=%d: scalar %.9g neon %.9g", double(a), n, i,
              double(y1[size_t(i)]), double(y2[size_t(i)]));
      }
    }
  }
}

// silu_mul: bit-identical to the reference at every length and position.
void check_silu_mul(const KernelTable& s, const KernelTable& t, std::mt19937& rng) {
  CHECK(t.silu_mul != nullptr, "silu_mul is null (matmul_swiglu calls it unconditionally)");
  if (t.silu_mul == nullptr) return;
  for (int n = 0; n <= 67; ++n) {
    auto g = random_floats(size_t(n), rng, 4.0f), u = random_floats(size_t(n), rng);
    if (n > 3) g[0] = -100.0f, g[1] = 100.0f, g[2] = 0.0f;
    std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n));
    s.silu_mul(g.data(), u.data(), a.data(), n);
    t.silu_mul(g.data(), u.data(), b.data(), n);
    int bad = 0;
    for (int i = 0; i < n; ++i) bad += !same_bits(a[size_t(i)], b[size_t(i)]);
    CHECK(bad == 0, "silu_mul n=%d: %d values differ from the reference", n, bad);
  }
}

// ssm_scan: bit-identical to the reference, state included, over several calls of 6 tokens,
// state widths of one register block or several.
void check_ssm_scan(const KernelTable& s, const KernelTable& t, std::mt19937& rng) {
  CHECK(t.ssm_scan != nullptr, "ssm_scan is null");
  if (t.ssm_scan == nullptr) return;
  for (int64_t ds : {16, 64, 128, 256}) {
    const int64_t hd = 5, n_tok = 6, stride = 2 * ds + hd + 3;
    auto S = random_floats(size_t(hd * ds), rng);
    auto S_ref = S;
    std::vector<float> y(static_cast<size_t>(n_tok * hd)), y_ref(y.size()), dt(6), dA(6);
    int bad = 0;
    for (int call = 0; call < 3; ++call) {
      auto in = random_floats(size_t(n_tok * stride), rng);
      for (int k = 0; k < n_tok; ++k) {
        dt[size_t(k)] = 0.2f + 0.1f * float(k + call);
        dA[size_t(k)] = std::exp(-dt[size_t(k)]);
      }
      const float *x = in.data(), *B = x + hd, *C = B + ds;
      s.ssm_scan(S_ref.data(), x, B, C, stride, dt.data(), dA.data(), 0.7f, hd, ds, n_tok, y_ref.data(), hd);
      t.ssm_scan(S.data(), x, B, C, stride, dt.data(), dA.data(), 0.7f, hd, ds, n_tok, y.data(), hd);
      for (size_t i = 0; i < y.size(); ++i) bad += !same_bits(y[i], y_ref[i]);
      for (size_t i = 0; i < S.size(); ++i) bad += !same_bits(S[i], S_ref[i]);
    }
    CHECK(bad == 0, "ssm_scan ds=%d: %d values differ from the reference", int(ds), bad);
  }
}

// Every 16-bit pattern converts exactly: through the vector path (n = 8, one non-zero
// weight at lane 0..7 so 0 * inf never happens) and, for f16, through axpy with a = 1.
void check_conversions(const KernelTable& s, const KernelTable& t) {
  std::vector<uint16_t> all(65536);
  for (uint32_t i = 0; i < 65536; ++i) all[i] = uint16_t(i);
  std::vector<float> y1(65536, 0.0f), y2(65536, 0.0f);
  s.axpy_f16(1.0f, all.data(), y1.data(), 65536);
  t.axpy_f16(1.0f, all.data(), y2.data(), 65536);
  int bad = 0;
  for (uint32_t i = 0; i < 65536; ++i)
    if (!(same_bits(y1[i], y2[i]) || (std::isnan(y1[i]) && std::isnan(y2[i])))) ++bad;
  CHECK(bad == 0, "axpy_f16(1, every half) differs from the reference for %d values", bad);

  int bad16 = 0, badbf = 0;
  float x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (uint32_t i = 0; i < 65536; ++i) {
    const int lane = int(i % 8);
    uint16_t w[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    w[lane] = uint16_t(i);
    x[lane] = 1.0f;
    const float r16 = s.dot_f16(w, x, 8), g16 = t.dot_f16(w, x, 8);
    const float rbf = s.dot_bf16(w, x, 8), gbf = t.dot_bf16(w, x, 8);
    x[lane] = 0.0f;
    if (!(same_bits(r16, g16) || (std::isnan(r16) && std::isnan(g16)))) ++bad16;
    if (!(same_bits(rbf, gbf) || (std::isnan(rbf) && std::isnan(gbf)))) ++badbf;
  }
  CHECK(bad16 == 0, "dot_f16 of a single half differs from the reference for %d values", bad16);
  CHECK(badbf == 0, "dot_bf16 of a single bf16 differs from the reference for %d values", badbf);
}

// ---- attend

// n rows of hd values in format f, `stride` bytes apart (Q2Channel: groups of 32 rows).
std::vector<uint8_t> encode_attn_rows(AttnFormat f, const std::vector<float>& x, int64_t n, int64_t hd,
                                      int64_t& stride) {
  const int64_t nb = hd / kQK;
  const int64_t row_bytes[] = {hd * 4, hd * 2, nb * 34, nb * 18, nb * 12, hd * 12};
  stride = row_bytes[int(f)] + 8;
  const int64_t n_rows = f == AttnFormat::Q2Channel ? n / kQK : n;
  std::vector<uint8_t> out(size_t(n_rows * stride), 0xCD);
  for (int64_t j = 0; j < n_rows; ++j) {
    uint8_t* row = out.data() + j * stride;
    const float* xr = x.data() + j * hd;
    switch (f) {
      case AttnFormat::F32: std::memcpy(row, xr, size_t(hd) * 4); break;
      case AttnFormat::F16: quantize_row_f16_ref(xr, reinterpret_cast<uint16_t*>(row), hd); break;
      case AttnFormat::Q8_0: quantize_row_q8_0_ref(xr, reinterpret_cast<BlockQ8_0*>(row), hd); break;
      case AttnFormat::Q4_0: quantize_row_q4_0_ref(xr, reinterpret_cast<BlockQ4_0*>(row), hd); break;
      case AttnFormat::Q2: quantize_row_q2_ref(xr, reinterpret_cast<BlockQ2*>(row), hd); break;
      case AttnFormat::Q2Channel:
        quantize_group_q2_channel(x.data() + j * kQK * hd, hd, hd, reinterpret_cast<BlockQ2*>(row));
        break;
    }
  }
  return out;
}

void check_attend(const KernelTable& s, const KernelTable& t, std::mt19937& rng) {
  CHECK(t.attend != nullptr, "NEON has no attend");
  if (t.attend == nullptr) return;
  const AttnFormat keys[] = {AttnFormat::F32, AttnFormat::F16, AttnFormat::Q8_0,
                             AttnFormat::Q4_0, AttnFormat::Q2, AttnFormat::Q2Channel};
  const AttnFormat values[] = {AttnFormat::F32, AttnFormat::F16, AttnFormat::Q8_0, AttnFormat::Q4_0, AttnFormat::Q2};
  const int64_t lengths[] = {1, 15, 17, 37, 100}, group_lengths[] = {32, 64, 96};
  int case_no = 0;
  for (int ik = 0; ik < 6; ++ik)
    for (int iv = 0; iv < 5; ++iv)
      for (int64_t hd : {64, 128})
        for (int64_t nq : {1, 3, 5})
          for (bool weights : {false, true}) {
            const AttnFormat kf[2] = {keys[ik], keys[(ik + 1 + iv) % 6]};
            const AttnFormat vf[2] = {values[iv], values[(iv + 2 + ik) % 5]};
            std::vector<uint8_t> kb[2], vb[2];
            std::vector<float> w_ref[2], w_got[2];
            AttnRows runs[2];
            for (int r = 0; r < 2; ++r) {
              const int64_t n = kf[r] == AttnFormat::Q2Channel ? group_lengths[(case_no + r) % 3]
                                                               : lengths[(case_no + 2 * r) % 5];
              int64_t ks = 0, vs = 0;
              kb[r] = encode_attn_rows(kf[r], random_floats(size_t(n * hd), rng), n, hd, ks);
              vb[r] = encode_attn_rows(vf[r], random_floats(size_t(n * hd), rng), n, hd, vs);
              w_ref[r].assign(size_t(n), 0.0f);
              w_got[r].assign(size_t(n), 0.0f);
              runs[r] = AttnRows{kb[r].data(), vb[r].data(), n, ks, vs, kf[r], vf[r], nullptr};
            }
            ++case_no;
            const auto q = random_floats(size_t(nq * hd), rng, 0.3f);
            std::vector<float> want(size_t(nq * hd)), got(want.size());
            for (int r = 0; r < 2; ++r) runs[r].weights = weights ? w_ref[r].data() : nullptr;
            s.attend(q.data(), nq, hd, runs, 2, want.data());
            for (int r = 0; r < 2; ++r) runs[r].weights = weights ? w_got[r].data() : nullptr;
            t.attend(q.data(), nq, hd, runs, 2, got.data());
            int bad = 0;
            for (size_t i = 0; i < want.size(); ++i) bad += !(std::fabs(got[i] - want[i]) <= 2e-5f + 2e-5f * std::fabs(want[i]));
            for (int r = 0; r < 2; ++r)
              for (size_t j = 0; j < w_ref[r].size(); ++j)
                bad += !(std::fabs(w_got[r][j] - w_ref[r][j]) <= 1e-6f + 1e-5f * w_ref[r][j]);
            CHECK(bad == 0, "attend K %d/%d V %d/%d hd=%lld nq=%lld weights=%d: %d values off", int(kf[0]),
                  int(kf[1]), int(vf[0]), int(vf[1]), (long long)hd, (long long)nq, int(weights), bad);
          }
}

}  // namespace
}  // namespace peregrine

int main(int argc, char** argv) {
  using namespace peregrine;
  if (argc > 1 && std::string(argv[1]) == "--isa") {  // which table kernels() picks
    std::printf("%s\n", std::string(isa_name(kernels().isa)).c_str());
    return 0;
  }
#if defined(__ARM_FEATURE_DOTPROD)
  const char* variant = "neon+dotprod";
#else
  const char* variant = "neon (armv8-a)";
#endif
  const KernelTable* t = neon_kernels();
  CHECK(t != nullptr, "neon_kernels() is nullptr on AArch64");
  CHECK(cpu_supports(Isa::Neon), "cpu_supports(Isa::Neon) is false");
  CHECK(!cpu_supports(Isa::Avx2) && !cpu_supports(Isa::Avx512) && avx2_kernels() == nullptr &&
            avx512_kernels() == nullptr,
        "x86 tables claimed on AArch64");
  if (t == nullptr) return 1;
  CHECK(t->isa == Isa::Neon && isa_name(t->isa) == "neon", "table isa is %d",
        static_cast<int>(t->isa));

  const KernelTable& s = scalar_kernels();
  std::mt19937 rng(20240607);
  check_quantize(s, *t, rng);
  check_quantized_dots(s, *t, rng);
  check_panels(s, *t, rng);
  check_ternary_panels(s, *t, rng);
  check_float_panels(s, *t, rng);
  check_float_dots(s, *t, rng);
  check_conversions(s, *t);
  check_silu_mul(s, *t, rng);
  check_ssm_scan(s, *t, rng);
  check_attend(s, *t, rng);

  if (g_failures > 0) {
    std::fprintf(stderr, "%s: %d of %d checks FAILED\n", variant, g_failures, g_checks);
    return 1;
  }
  std::printf("%s: %d checks passed\n", variant, g_checks);
  return 0;
}
