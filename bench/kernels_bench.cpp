// Kernel micro-benchmarks (Google Benchmark): how close matmul and the kernels come to
// the machine's memory bandwidth, the roofline of decode (one token reads every weight
// once and does ~2 flops per weight).
//
//   BM_mem_read / BM_mem_copy   the roofline: streaming over 1 GiB with each read loop
//                               the CPU runs (baseline, AVX2, AVX-512: 8 sums, 16 sums,
//                               software prefetch, four streams at once)
//   BM_matmul                   ops::matmul with the active kernel table (PEREGRINE_ISA
//                               picks it), pools of 1 and 2 threads, decode and batch shapes
//   BM_panel                    each ISA table's panel kernel over every panel of a packed
//                               matrix, one thread, n_tok = 1 (no pool, no quantization)
//   BM_dot_rows                 each ISA table's row kernels (the unpacked fallback)
//   BM_quantize_q8              each ISA table's activation quantizer
//   BM_attend                   each ISA table's attention kernel over one run of cached rows
//                               per K/V format (decode: one GQA group of queries per call)
//
// Shapes: 576x1536 (in cache), 4096x16384 (tens to hundreds of MiB) and, per type,
// 4096 x C with C chosen at start-up so the matrix is at least 1.5 x the L3 size: only
// that shape is sure to stream from DRAM.
//
// Counters: bw = bytes of weights (or memory) per second, flops = 2*rows*cols*n_tok
// per second, pct_bw = bw as a percentage of the read bandwidth measured at start-up
// with the same thread count (the fastest read loop). See bench/KERNELS.md.
#include <benchmark/benchmark.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define PEREGRINE_BENCH_X86 1
#endif

#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "kernels/packed.h"
#include "ops/ops.h"
#include "ops/weight.h"
#include "quant/blocks.h"
#include "quant/fp16.h"
#include "quant/ggml_type.h"
#include "quant/quantize.h"

namespace peregrine {
namespace {

// ---------------------------------------------------------------- set-up helpers

// xorshift64*: filling gigabytes with std::mt19937 takes far too long; this is enough.
struct FastRng {
  uint64_t s;
  explicit FastRng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1Dull;
  }
  float uniform(float lo, float hi) {  // [lo, hi)
    return lo + (hi - lo) * float(next() >> 40) * (1.0f / 16777216.0f);
  }
};

ThreadPool& pool(int n_threads) {
  static ThreadPool one(1), two(2);
  return n_threads == 1 ? one : two;
}

// Kernel tables this CPU can run, scalar first.
std::vector<const KernelTable*> runnable_tables() {
  std::vector<const KernelTable*> out;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512}) {
    const KernelTable* t = isa == Isa::Scalar ? &scalar_kernels()
                           : isa == Isa::Avx2 ? avx2_kernels()
                                              : avx512_kernels();
    if (t != nullptr && cpu_supports(isa)) out.push_back(t);
  }
  return out;
}

KernelTable::PanelDot panel_q(const KernelTable& k, GgmlType t) {
  switch (t) {
    case GgmlType::Q4_0: return k.panel_q4_0;
    case GgmlType::Q4_1: return k.panel_q4_1;
    case GgmlType::Q8_0: return k.panel_q8_0;
    default: return nullptr;
  }
}

KernelTable::PanelDotF panel_f(const KernelTable& k, GgmlType t) {
  switch (t) {
    case GgmlType::F32: return k.panel_f32;
    case GgmlType::F16: return k.panel_f16;
    case GgmlType::BF16: return k.panel_bf16;
    default: return nullptr;
  }
}

bool has_panel(const KernelTable& k, GgmlType t) {
  return panel_q(k, t) != nullptr || panel_f(k, t) != nullptr;
}

// ---------------------------------------------------------------- shapes

struct Shape {
  int64_t rows, cols;  // output features, input features
  std::string name() const { return std::to_string(rows) + "x" + std::to_string(cols); }
};
// SmolLM2-135M's ffn_down (fits in L2) and a mid-size matrix (36 MiB as Q4_0, 256 MiB
// as F32: beyond an 8 MiB L3, but inside the 480 MiB one of recent server parts).
constexpr Shape kSmall{576, 1536};
constexpr Shape kMid{4096, 16384};

// Weight bytes per value in GGUF and in the panel layout alike (0.5625 for Q4_0).
double bytes_per_weight(GgmlType type) { return double(*row_bytes(type, 256)) / 256.0; }

// The last-level cache: Google Benchmark's reading of sysfs, else sysconf.
size_t l3_bytes() {
  size_t best = 0;
  for (const auto& c : benchmark::CPUInfo::Get().caches)
    if (c.level == 3 && c.size > 0) best = std::max(best, size_t(c.size));
#ifdef _SC_LEVEL3_CACHE_SIZE
  if (best == 0) {
    const long s = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (s > 0) best = size_t(s);
  }
#endif
  return best;
}

// The "beyond the last-level cache" matrix of a type: 4096 rows and the fewest columns
// (a multiple of 256, at least twice kMid's) that make it >= 1.5 x L3, at most 1.5 GiB.
constexpr double kMaxBigBytes = 1.5 * double(size_t(1) << 30);
struct BigShape {
  Shape shape;
  bool capped;  // 1.5 GiB bound below 1.5 x L3
};
BigShape beyond_l3_shape(GgmlType type) {
  const double l3 = double(l3_bytes() > 0 ? l3_bytes() : size_t(32) << 20);  // unknown: 32 MiB
  const double per_col = double(kMid.rows) * bytes_per_weight(type);
  int64_t cols = int64_t(std::ceil(1.5 * l3 / per_col / 256.0)) * 256;
  cols = std::max(cols, 2 * kMid.cols);
  const int64_t cap = int64_t(kMaxBigBytes / per_col / 256.0) * 256;
  return {{kMid.rows, std::min(cols, cap)}, cols > cap};
}

// ---------------------------------------------------------------- random weights

// Rows generated per RNG seed: the unit of parallel generation and of packing. A
// multiple of kPanelRows, so chunks pack into whole panels.
constexpr int64_t kGenRows = 64;
static_assert(kGenRows % kPanelRows == 0);

// rows rows of `type` (rb bytes each) into dst, from one seed. Quantized
// blocks get random nibbles/bytes and fp16 scales in 0.001..0.05 (Q4_1 minima in
// -0.4..-0.008), like real tensors: no NaN/inf/denormal slow paths.
void fill_rows(GgmlType type, uint8_t* dst, int64_t rows, size_t rb, uint64_t seed) {
  FastRng rng(seed);
  const size_t n = rb * size_t(rows);
  switch (type) {
    case GgmlType::F32:
      for (size_t i = 0; i < n; i += 4) {
        float v = rng.uniform(-1.0f, 1.0f);
        std::memcpy(dst + i, &v, 4);
      }
      break;
    case GgmlType::F16:
    case GgmlType::BF16:
      for (size_t i = 0; i < n; i += 2) {
        float v = rng.uniform(-1.0f, 1.0f);
        uint16_t h = type == GgmlType::F16 ? f32_to_fp16(v) : f32_to_bf16(v);
        std::memcpy(dst + i, &h, 2);
      }
      break;
    default: {  // Q4_0, Q4_1, Q8_0: random payload, then valid scales per block
      size_t i = 0;
      for (; i + 8 <= n; i += 8) {
        uint64_t r = rng.next();
        std::memcpy(dst + i, &r, 8);
      }
      for (; i < n; ++i) dst[i] = uint8_t(rng.next());
      const size_t bb = *row_bytes(type, kQK);
      for (size_t off = 0; off < n; off += bb) {
        uint16_t d = f32_to_fp16(rng.uniform(0.001f, 0.05f));
        std::memcpy(dst + off, &d, 2);
        if (type == GgmlType::Q4_1) {
          uint16_t m = f32_to_fp16(-8.0f * rng.uniform(0.001f, 0.05f));
          std::memcpy(dst + off + 2, &m, 2);
        }
      }
    }
  }
}

uint64_t chunk_seed(GgmlType type, Shape s, int64_t chunk) {
  return (uint64_t(type) * 1000003 + uint64_t(s.rows * s.cols)) * 7919 + uint64_t(chunk);
}

// Rows: GGUF rows as in the file (the row kernels). Packed: the panel layout only, as
// the model loader leaves it (pack_weight, source released).
enum class Layout { Rows, Packed };

struct OwnedWeight {
  std::unique_ptr<uint8_t[]> rows;  // [rows, row_bytes], Layout::Rows only
  Weight w;
};

// Time spent making weights: first generation of each matrix, and regeneration of
// the mid-shape ones that were dropped to bound memory (see random_weight).
struct SetupStats {
  double seconds = 0, bytes = 0;        // first generation
  double re_seconds = 0, re_bytes = 0;  // regeneration
  int regenerated = 0;
};
SetupStats& setup_stats() {
  static SetupStats s;
  return s;
}

// Packs chunk by chunk (kGenRows rows generated, packed, copied, on both threads), so
// a 720 MiB matrix never exists twice. Panel p of a chunk starting at row r0 is panel
// r0/16 + p of the whole matrix: pack_matrix's panels are independent.
std::shared_ptr<const PackedMatrix> generate_packed(GgmlType type, Shape s, size_t rb) {
  auto pm = std::make_shared<PackedMatrix>();
  pm->format = panel_format(type);
  pm->rows = s.rows;
  pm->cols = s.cols;
  pm->nb = s.cols / kQK;
  pm->n_panels = (s.rows + kPanelRows - 1) / kPanelRows;
  pm->panel_bytes = pm->format->block_bytes * size_t(pm->nb);
  void* mem = std::aligned_alloc(64, (pm->bytes() + 63) / 64 * 64);
  if (mem == nullptr) {
    std::fprintf(stderr, "error: out of memory for a %s %s packed matrix (%zu bytes)\n",
                 std::string(type_name(type)).c_str(), s.name().c_str(), pm->bytes());
    std::exit(1);
  }
  pm->data = {static_cast<uint8_t*>(mem), std::free};
  const int64_t n_chunks = (s.rows + kGenRows - 1) / kGenRows;
  pool(2).parallel_range(n_chunks, 1, [&](int64_t b, int64_t e, int) {
    std::vector<uint8_t> src(rb * size_t(kGenRows));  // [kGenRows, row_bytes]
    for (int64_t c = b; c < e; ++c) {
      const int64_t r0 = c * kGenRows, nr = std::min(kGenRows, s.rows - r0);
      fill_rows(type, src.data(), nr, rb, chunk_seed(type, s, c));
      Result<PackedMatrix> part = pack_matrix(type, src.data(), nr, s.cols, rb);
      if (!part.ok()) {
        std::fprintf(stderr, "error: packing %s: %s\n", s.name().c_str(),
                     part.error().message.c_str());
        std::exit(1);
      }
      std::memcpy(pm->data.get() + size_t(r0 / kPanelRows) * pm->panel_bytes,
                  part->data.get(), part->bytes());
    }
  });
  return pm;
}

// The cached random matrix of a type, shape and layout; the same values in either
// layout. Memory: the beyond-L3 matrices (6 x 720 MiB here) and the small ones stay;
// of the 4096x16384 ones (36..256 MiB) one per layout is kept and the others are made
// again when needed, so the whole run stays near 6 GiB with the 1 GiB stream buffer.
const Weight& random_weight(GgmlType type, Shape s, Layout layout) {
  using Key = std::tuple<GgmlType, int64_t, int64_t, Layout>;
  static std::map<Key, std::unique_ptr<OwnedWeight>> cache;
  static std::map<Key, int> made;  // times each matrix was generated
  const Key key{type, s.rows, s.cols, layout};
  if (auto it = cache.find(key); it != cache.end()) return it->second->w;
  const bool evictable = s.rows == kMid.rows && s.cols == kMid.cols;
  if (evictable)  // at most one kMid matrix per layout: free the previous one first
    std::erase_if(cache, [&](const auto& e) {
      return std::get<1>(e.first) == kMid.rows && std::get<2>(e.first) == kMid.cols &&
             std::get<3>(e.first) == layout;
    });
  const auto t0 = std::chrono::steady_clock::now();
  auto owned = std::make_unique<OwnedWeight>();
  const size_t rb = *row_bytes(type, uint64_t(s.cols));
  owned->w = Weight{std::string(type_name(type)), type, nullptr, s.rows, s.cols, rb, nullptr};
  if (layout == Layout::Packed) {
    owned->w.packed = generate_packed(type, s, rb);
  } else {
    owned->rows.reset(new uint8_t[rb * size_t(s.rows)]);
    uint8_t* dst = owned->rows.get();
    pool(2).parallel_range((s.rows + kGenRows - 1) / kGenRows, 1, [&](int64_t b, int64_t e, int) {
      for (int64_t c = b; c < e; ++c) {
        const int64_t r0 = c * kGenRows;
        fill_rows(type, dst + size_t(r0) * rb, std::min(kGenRows, s.rows - r0), rb,
                  chunk_seed(type, s, c));
      }
    });
    owned->w.data = dst;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double bytes = double(rb) * double(s.rows);
  SetupStats& st = setup_stats();
  if (made[key]++ == 0) {
    st.seconds += secs;
    st.bytes += bytes;
  } else {
    st.re_seconds += secs;
    st.re_bytes += bytes;
    ++st.regenerated;
  }
  return (cache[key] = std::move(owned))->w;
}

// What ops::matmul sees after loading: packed when the active table has panel kernels.
const Weight& matmul_weight(GgmlType type, Shape s) {
  return random_weight(type, s, has_panel(kernels(), type) ? Layout::Packed : Layout::Rows);
}

// Guards the chunked packing above: on the small shape it must give pack_matrix's bytes.
void check_chunked_packing(GgmlType type) {
  const Weight& rows = random_weight(type, kSmall, Layout::Rows);
  const Weight& packed = random_weight(type, kSmall, Layout::Packed);
  Result<PackedMatrix> whole = pack_matrix(type, rows.data, rows.rows, rows.cols, rows.row_bytes);
  if (!whole.ok() || whole->bytes() != packed.packed->bytes() ||
      std::memcmp(whole->data.get(), packed.packed->data.get(), whole->bytes()) != 0) {
    std::fprintf(stderr, "error: chunked packing of %s %s differs from pack_matrix\n",
                 std::string(type_name(type)).c_str(), kSmall.name().c_str());
    std::exit(1);
  }
}

std::vector<float> random_floats(size_t n, uint64_t seed) {
  FastRng rng(seed);
  std::vector<float> v(n);
  for (float& f : v) f = rng.uniform(-1.0f, 1.0f);
  return v;
}

// ---------------------------------------------------------------- the roofline

// One buffer far larger than most caches, shared by the read and copy benchmarks and
// the start-up bandwidth probe. Touched once so page faults stay out of the timings.
constexpr size_t kStreamBytes = size_t(1) << 30;

float* stream_buffer() {
  static float* buf = [] {
    const size_t n = kStreamBytes / sizeof(float);
    float* p = static_cast<float*>(std::aligned_alloc(64, kStreamBytes));
    pool(2).parallel_range(int64_t(n), int64_t(n / 16), [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) p[i] = float(i & 1023) * (1.0f / 1024.0f);
    });
    return p;
  }();
  return buf;
}

// Sum loops: enough independent sums to hide the add latency, so each is bound by how
// fast memory delivers, not by arithmetic. The roofline is the most the machine gives
// a reader, so the probe tries several loops and keeps the fastest:
//  - the widest loads the CPU has (a wider load means more cache lines in flight for
//    the same out-of-order window);
//  - acc:16 doubles the AVX-512 sums: the same bandwidth shows the loop is not the limit;
//  - pf:4k adds the software prefetch 4 KiB ahead that the panel kernels issue;
//  - streams:4 reads four far-apart parts of the range at once: each hardware prefetch
//    stream runs only so far ahead, so one core gets more lines in flight from several
//    streams than from one (what a single-stream kernel can reach is the acc:N figure).
template <int kLanes>
[[gnu::always_inline]] inline float sum_floats_body(const float* p, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) acc[j] += p[i + j];
  for (; i < n; ++i) acc[0] += p[i];
  float s = 0.0f;
  for (float a : acc) s += a;
  return s;
}
// Compiled for the baseline target (SSE2 on x86-64): 8 vector sums.
float sum_floats_baseline(const float* p, int64_t n) { return sum_floats_body<32>(p, n); }

#ifdef PEREGRINE_BENCH_X86
[[gnu::target("avx2")]] float sum_floats_avx2(const float* p, int64_t n) {
  return sum_floats_body<64>(p, n);  // 8 ymm sums
}

template <int kAcc, int kAhead = 0>
[[gnu::target("avx512f")]] float sum_floats_avx512(const float* p, int64_t n) {
  __m512 acc[kAcc];
  for (int j = 0; j < kAcc; ++j) acc[j] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 * kAcc <= n; i += 16 * kAcc)
    for (int j = 0; j < kAcc; ++j) {
      if constexpr (kAhead > 0)  // bytes ahead, one prefetch per 64-byte line
        _mm_prefetch(reinterpret_cast<const char*>(p + i + 16 * j) + kAhead, _MM_HINT_T0);
      acc[j] = _mm512_add_ps(acc[j], _mm512_loadu_ps(p + i + 16 * j));
    }
  for (int j = 1; j < kAcc; ++j) acc[0] = _mm512_add_ps(acc[0], acc[j]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, acc[0]);
  float s = 0.0f;
  for (float v : lanes) s += v;
  for (; i < n; ++i) s += p[i];
  return s;
}

// kStreams equal parts of [p, p + n) read side by side, four sums per stream.
template <int kStreams>
[[gnu::target("avx512f")]] float sum_floats_avx512_streams(const float* p, int64_t n) {
  const int64_t part = n / kStreams / 64 * 64;  // floats per stream, whole 4-vector steps
  __m512 acc[kStreams][4];
  for (auto& a : acc)
    for (auto& v : a) v = _mm512_setzero_ps();
  for (int64_t i = 0; i < part; i += 64)
    for (int st = 0; st < kStreams; ++st)
      for (int j = 0; j < 4; ++j)
        acc[st][j] = _mm512_add_ps(acc[st][j], _mm512_loadu_ps(p + st * part + i + 16 * j));
  __m512 t = _mm512_setzero_ps();
  for (auto& a : acc)
    for (auto& v : a) t = _mm512_add_ps(t, v);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, t);
  float s = 0.0f;
  for (float v : lanes) s += v;
  for (int64_t i = kStreams * part; i < n; ++i) s += p[i];
  return s;
}
#endif

struct Reader {
  std::string name;  // ISA/loop shape, e.g. avx512/acc:16 (16 vector sums)
  float (*sum)(const float* p, int64_t n);
};

// Read loops this CPU runs, narrowest first.
const std::vector<Reader>& readers() {
  static const std::vector<Reader> out = [] {
#ifdef PEREGRINE_BENCH_X86
    std::vector<Reader> r{{"sse2/acc:8", sum_floats_baseline}};
    if (cpu_supports(Isa::Avx2)) r.push_back({"avx2/acc:8", sum_floats_avx2});
    if (cpu_supports(Isa::Avx512)) {
      r.push_back({"avx512/acc:8", sum_floats_avx512<8>});
      r.push_back({"avx512/acc:16", sum_floats_avx512<16>});
      r.push_back({"avx512/acc:8/pf:4k", sum_floats_avx512<8, 4096>});
      r.push_back({"avx512/streams:4", sum_floats_avx512_streams<4>});
    }
#else
    std::vector<Reader> r{{"baseline/acc:8", sum_floats_baseline}};
#endif
    return r;
  }();
  return out;
}

// Reads the whole stream buffer with n_threads; returns a sum so nothing is elided.
float read_stream(const Reader& rd, int n_threads) {
  const int64_t n = int64_t(kStreamBytes / sizeof(float));
  const float* p = stream_buffer();
  struct alignas(64) Partial { float v = 0.0f; };
  Partial part[2];
  pool(n_threads).parallel_range(n, n / 16, [&](int64_t b, int64_t e, int thread) {
    part[thread].v += rd.sum(p + b, e - b);
  });
  return part[0].v + part[1].v;
}

// The roofline pct_bw divides by: the best pass of any read loop. Index = thread count.
struct ReadRoofline {
  double bw[3] = {};
  std::string reader[3];
};
const ReadRoofline& roofline() {
  static const ReadRoofline r = [] {
    stream_buffer();  // allocate and touch outside the timed passes
    ReadRoofline out;
    for (int t : {1, 2})
      for (const Reader& rd : readers())
        for (int rep = 0; rep < 3; ++rep) {
          auto t0 = std::chrono::steady_clock::now();
          benchmark::DoNotOptimize(read_stream(rd, t));
          double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          if (double(kStreamBytes) / s > out.bw[t]) {
            out.bw[t] = double(kStreamBytes) / s;
            out.reader[t] = rd.name;
          }
        }
    return out;
  }();
  return r;
}
double measured_read_bw(int n_threads) { return roofline().bw[n_threads]; }

void set_rates(benchmark::State& state, double bytes_per_iter, double flops_per_iter) {
  const double it = double(state.iterations());
  state.counters["bw"] = benchmark::Counter(bytes_per_iter * it, benchmark::Counter::kIsRate);
  if (flops_per_iter > 0)
    state.counters["flops"] =
        benchmark::Counter(flops_per_iter * it, benchmark::Counter::kIsRate);
}

// pct_bw needs the elapsed time, which State does not expose: time the loop here too.
class LoopTimer {
 public:
  LoopTimer() : t0_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

 private:
  std::chrono::steady_clock::time_point t0_;
};

void set_pct_bw(benchmark::State& state, double bytes_per_iter, double seconds, int n_threads) {
  if (seconds <= 0) return;
  double bw = bytes_per_iter * double(state.iterations()) / seconds;
  state.counters["pct_bw"] = 100.0 * bw / measured_read_bw(n_threads);
}

void bm_mem_read(benchmark::State& state, const Reader* rd, int n_threads) {
  stream_buffer();
  for (auto _ : state) benchmark::DoNotOptimize(read_stream(*rd, n_threads));
  set_rates(state, double(kStreamBytes), 0);
}

// memcpy of the first half into the second half; bw counts bytes read + written
// (as STREAM does), so it compares directly with bm_mem_read.
void bm_mem_copy(benchmark::State& state, int n_threads) {
  uint8_t* base = reinterpret_cast<uint8_t*>(stream_buffer());
  const int64_t half = int64_t(kStreamBytes / 2);
  for (auto _ : state) {
    pool(n_threads).parallel_range(half, half / 16, [&](int64_t b, int64_t e, int) {
      std::memcpy(base + half + b, base + b, size_t(e - b));
    });
    benchmark::ClobberMemory();
  }
  set_rates(state, double(kStreamBytes), 0);
}

// ---------------------------------------------------------------- matmul and kernels

double weight_bytes(const Weight& w) {
  return w.packed ? double(w.packed->bytes()) : double(w.row_bytes) * double(w.rows);
}

void bm_matmul(benchmark::State& state, GgmlType type, Shape shape, int64_t n_tok,
               int n_threads) {
  const Weight& w = matmul_weight(type, shape);
  std::vector<float> x = random_floats(size_t(n_tok * shape.cols), 7);  // [n_tok, cols]
  std::vector<float> y(size_t(n_tok * shape.rows));                     // [n_tok, rows]
  OpScratch scratch;
  ThreadPool& p = pool(n_threads);
  matmul(w, x.data(), y.data(), n_tok, p, scratch);  // warm: scratch sized, pages touched
  LoopTimer timer;
  for (auto _ : state) {
    matmul(w, x.data(), y.data(), n_tok, p, scratch);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double secs = timer.seconds();
  const double bytes = weight_bytes(w);
  set_rates(state, bytes, 2.0 * double(shape.rows) * double(shape.cols) * double(n_tok));
  set_pct_bw(state, bytes, secs, n_threads);
}

// One table's panel kernel over every panel of the packed matrix, one thread, one
// token, activations quantized once outside the loop: the kernel as matmul calls it,
// without the pool, the task split or the quantization.
void bm_panel(benchmark::State& state, const KernelTable* k, GgmlType type, Shape shape) {
  const Weight& w = random_weight(type, shape, Layout::Packed);
  const PackedMatrix& pm = *w.packed;
  std::vector<float> x = random_floats(size_t(shape.cols), 11);  // [cols]
  std::vector<BlockQ8Act> xq(static_cast<size_t>(pm.nb));         // [cols / 32]
  k->quantize_q8(x.data(), xq.data(), shape.cols);
  std::vector<float> y(size_t(pm.n_panels * kPanelRows));  // [n_panels * 16]
  KernelTable::PanelDot pq = panel_q(*k, type);
  KernelTable::PanelDotF pf = panel_f(*k, type);
  LoopTimer timer;
  for (auto _ : state) {
    for (int64_t p = 0; p < pm.n_panels; ++p) {
      float* yp = y.data() + p * kPanelRows;
      if (pf != nullptr) pf(pm.panel(p), pm.nb, x.data(), shape.cols, 1, yp, kPanelRows);
      else pq(pm.panel(p), pm.nb, xq.data(), 1, yp, kPanelRows);
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double secs = timer.seconds();
  const double bytes = double(pm.bytes());
  set_rates(state, bytes, 2.0 * double(shape.rows) * double(shape.cols));
  set_pct_bw(state, bytes, secs, 1);
}

// One table's row kernel over every row, one thread, one token: the path matmul takes
// for weights that are not packed.
void bm_dot_rows(benchmark::State& state, const KernelTable* k, GgmlType type, Shape shape) {
  const Weight& w = random_weight(type, shape, Layout::Rows);
  const int64_t nb = shape.cols / kQK;
  std::vector<float> x = random_floats(size_t(shape.cols), 11);  // [cols]
  std::vector<BlockQ8Act> xq(static_cast<size_t>(nb));            // [cols / 32]
  k->quantize_q8(x.data(), xq.data(), shape.cols);
  std::vector<float> y(size_t(shape.rows));  // [rows]
  KernelTable::DotRows dot = type == GgmlType::Q4_0   ? k->dot_q4_0
                             : type == GgmlType::Q4_1 ? k->dot_q4_1
                                                      : k->dot_q8_0;
  LoopTimer timer;
  for (auto _ : state) {
    for (int64_t r = 0; r < w.rows; ++r) {
      const uint8_t* wr = w.row(r);
      switch (type) {
        case GgmlType::F32:
          y[size_t(r)] = k->dot_f32(reinterpret_cast<const float*>(wr), x.data(), w.cols);
          break;
        case GgmlType::F16:
          y[size_t(r)] = k->dot_f16(reinterpret_cast<const uint16_t*>(wr), x.data(), w.cols);
          break;
        case GgmlType::BF16:
          y[size_t(r)] = k->dot_bf16(reinterpret_cast<const uint16_t*>(wr), x.data(), w.cols);
          break;
        default: dot(wr, nb, xq.data(), 1, &y[size_t(r)], 1);
      }
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double secs = timer.seconds();
  const double bytes = weight_bytes(w);
  set_rates(state, bytes, 2.0 * double(shape.rows) * double(shape.cols));
  set_pct_bw(state, bytes, secs, 1);
}

// bw counts float bytes read.
void bm_quantize_q8(benchmark::State& state, const KernelTable* k, int64_t n) {
  std::vector<float> x = random_floats(size_t(n), 13);  // [n]
  std::vector<BlockQ8Act> q(size_t(n / kQK));           // [n / 32]
  for (auto _ : state) {
    k->quantize_q8(x.data(), q.data(), n);
    benchmark::DoNotOptimize(q.data());
    benchmark::ClobberMemory();
  }
  set_rates(state, double(n) * sizeof(float), 0);
  state.SetItemsProcessed(state.iterations() * n);
}

// ---------------------------------------------------------------- attention

// Names as kv/kv_cache.h's formats read in a benchmark name.
const char* attn_format_name(AttnFormat f) {
  constexpr const char* kNames[] = {"F32", "F16", "Q8_0", "Q4_0", "Q2", "Q2Channel"};
  return kNames[int(f)];
}

// Bytes of one row of hd values (Q2Channel: of one group of 32 rows).
int64_t attn_row_bytes(AttnFormat f, int64_t hd) {
  const int64_t nb = hd / kQK;
  const int64_t bytes[] = {hd * 4, hd * 2, nb * int64_t(sizeof(BlockQ8_0)), nb * int64_t(sizeof(BlockQ4_0)),
                           nb * int64_t(sizeof(BlockQ2)), hd * int64_t(sizeof(BlockQ2))};
  return bytes[int(f)];
}

// n rows of random values (unit Gaussian-ish) quantized to a format, rows back to back.
std::vector<uint8_t> attn_rows_of(AttnFormat f, int64_t n, int64_t hd, uint64_t seed) {
  FastRng rng(seed);
  std::vector<float> x(size_t(n * hd));
  for (float& v : x) v = rng.uniform(-1.7f, 1.7f);
  const int64_t rb = attn_row_bytes(f, hd);
  std::vector<uint8_t> out(size_t((f == AttnFormat::Q2Channel ? n / kQK : n) * rb));
  for (int64_t j = 0; j < (f == AttnFormat::Q2Channel ? n / kQK : n); ++j) {
    uint8_t* row = out.data() + j * rb;
    const float* xr = x.data() + j * hd;
    switch (f) {
      case AttnFormat::F32: std::memcpy(row, xr, size_t(rb)); break;
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

// One call per iteration: nq queries (a GQA group) over n cached rows of one KV head, as
// decode runs it. heads > 1 cycles through that many heads' rows so the reads come from
// beyond the last-level cache (the many-streams case); bw = K and V bytes read per second.
void bm_attend(benchmark::State& state, const KernelTable* k, AttnFormat kf, AttnFormat vf, int64_t hd, int64_t nq,
               int64_t n, int64_t heads, bool weights) {
  const int64_t kb = attn_row_bytes(kf, hd), vb = attn_row_bytes(vf, hd);
  // Cold: laid out as the KV cache holds them, the rows of kHeadsPerRow heads interleaved (a
  // cache row is every KV head's part; SmolLM2 has 3), so a head reads every third piece. The
  // hardware prefetcher follows back-to-back rows but not these. Q2Channel keys (a block per 32
  // positions) stay back to back.
  constexpr int64_t kHeadsPerRow = 3;
  const int64_t per_k = heads > 1 && kf != AttnFormat::Q2Channel ? kHeadsPerRow : 1;
  const int64_t per_v = heads > 1 ? kHeadsPerRow : 1;
  std::vector<std::vector<uint8_t>> ks, vs;
  for (int64_t h = 0; h < heads; h += kHeadsPerRow) {
    ks.push_back(attn_rows_of(kf, n * per_k, hd, uint64_t(2 * h + 1)));
    vs.push_back(attn_rows_of(vf, n * per_v, hd, uint64_t(2 * h + 2)));
  }
  std::vector<float> q = random_floats(size_t(nq * hd), 17);  // [nq, hd]
  for (float& v : q) v *= 0.125f;                              // 1 / sqrt(hd) at hd = 64
  std::vector<float> out(static_cast<size_t>(nq * hd)), w(static_cast<size_t>(n));
  KernelTable::Attend attend = k->attend != nullptr ? k->attend : scalar_kernels().attend;
  int64_t h = 0;
  LoopTimer timer;
  for (auto _ : state) {
    const size_t buf = size_t(h / kHeadsPerRow);
    const int64_t part = h % kHeadsPerRow;
    const AttnRows run{ks[buf].data() + (part % per_k) * kb, vs[buf].data() + (part % per_v) * vb, n,
                       kb * per_k, vb * per_v, kf, vf, weights ? w.data() : nullptr};
    attend(q.data(), nq, hd, &run, 1, out.data());
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
    h = h + 1 == heads ? 0 : h + 1;
  }
  const double bytes = double(n) * double(vb) + double(kf == AttnFormat::Q2Channel ? n / kQK : n) * double(kb);
  const double secs = timer.seconds();
  set_rates(state, bytes, 0);
  set_pct_bw(state, bytes, secs, 1);
  state.counters["per_row"] = benchmark::Counter(double(n) * double(state.iterations()),
                                                 benchmark::Counter::kIsRate | benchmark::Counter::kInvert);
}

// ---------------------------------------------------------------- registration

std::string str(std::string_view s) { return std::string(s); }

constexpr GgmlType kTypes[] = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0,
                               GgmlType::F16,  GgmlType::BF16, GgmlType::F32};

void register_all() {
  using benchmark::RegisterBenchmark;
  const double kMinMemTime = 0.5;  // a 1 GiB pass takes ~0.1 s: a few passes at least
  for (int t : {1, 2}) {
    const std::string pl = "/pool:" + std::to_string(t);
    for (const Reader& rd : readers())
      RegisterBenchmark(("BM_mem_read/1GiB/" + rd.name + pl).c_str(), bm_mem_read, &rd, t)
          ->UseRealTime()->MinTime(kMinMemTime)->Unit(benchmark::kMillisecond);
    RegisterBenchmark(("BM_mem_copy/512MiB" + pl).c_str(), bm_mem_copy, t)
        ->UseRealTime()->MinTime(kMinMemTime)->Unit(benchmark::kMillisecond);
  }

  const std::string active = str(isa_name(kernels().isa));
  // Decode: n_tok = 1, every weight type, all three shapes.
  for (GgmlType type : kTypes)
    for (Shape s : {kSmall, kMid, beyond_l3_shape(type).shape})
      for (int t : {1, 2})
        RegisterBenchmark(("BM_matmul/" + str(type_name(type)) + "/" + active + "/" + s.name() +
                           "/n_tok:1/pool:" + std::to_string(t)).c_str(),
                          bm_matmul, type, s, int64_t(1), t)
            ->UseRealTime()->Unit(benchmark::kMicrosecond);
  // Small batches (speculative decoding, a few parallel streams) and a prompt chunk.
  for (GgmlType type : {GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::F16})
    for (int64_t n_tok : {2, 4, 8, 16, 512})
      for (int t : {1, 2})
        RegisterBenchmark(("BM_matmul/" + str(type_name(type)) + "/" + active + "/" +
                           kSmall.name() + "/n_tok:" + std::to_string(n_tok) + "/pool:" +
                           std::to_string(t)).c_str(),
                          bm_matmul, type, kSmall, n_tok, t)
            ->UseRealTime()->Unit(benchmark::kMicrosecond);

  for (const KernelTable* k : runnable_tables()) {
    const std::string isa = str(isa_name(k->isa));
    for (GgmlType type : kTypes) {
      if (!has_panel(*k, type)) continue;
      for (Shape s : {kSmall, kMid, beyond_l3_shape(type).shape})
        RegisterBenchmark(
            ("BM_panel/" + str(type_name(type)) + "/" + isa + "/" + s.name()).c_str(),
            bm_panel, k, type, s)
            ->UseRealTime()->Unit(benchmark::kMicrosecond);
    }
  }
  // Row kernels: the fallback path; small and mid shapes only (time and memory).
  for (const KernelTable* k : runnable_tables()) {
    const std::string isa = str(isa_name(k->isa));
    for (GgmlType type : kTypes)
      for (Shape s : {kSmall, kMid})
        RegisterBenchmark(
            ("BM_dot_rows/" + str(type_name(type)) + "/" + isa + "/" + s.name()).c_str(),
            bm_dot_rows, k, type, s)
            ->UseRealTime()->Unit(benchmark::kMicrosecond);
  }
  // Attention: SmolLM2-135M's decode shape (hd 64, a GQA group of 3 queries, 4096 cached
  // rows) in each KV format, hot (one head, in cache) and cold (enough heads to pass 1.5 x L3).
  const std::pair<AttnFormat, AttnFormat> kAttnFormats[] = {
      {AttnFormat::F32, AttnFormat::F32},   {AttnFormat::F16, AttnFormat::F16},
      {AttnFormat::Q8_0, AttnFormat::Q8_0}, {AttnFormat::Q4_0, AttnFormat::Q4_0},
      {AttnFormat::Q2, AttnFormat::Q2},     {AttnFormat::Q2Channel, AttnFormat::Q2}};
  // "weights": the eviction statistics' second pass over the keys as well.
  for (const KernelTable* k : runnable_tables())
    for (const auto& [kf, vf] : kAttnFormats)
      for (const char* variant : {"hot", "cold", "hot/weights"}) {
        constexpr int64_t hd = 64, nq = 3, n = 4096;
        const bool cold = std::string(variant) == "cold", weights = std::string(variant) == "hot/weights";
        if (weights && kf != AttnFormat::F16 && kf != AttnFormat::Q8_0) continue;
        const double head_bytes = double(n) * double(attn_row_bytes(kf, hd) / (kf == AttnFormat::Q2Channel ? kQK : 1) +
                                                     attn_row_bytes(vf, hd));
        const double l3 = double(l3_bytes() > 0 ? l3_bytes() : size_t(32) << 20);
        const int64_t heads = cold ? (int64_t(std::ceil(1.5 * l3 / head_bytes)) + 2) / 3 * 3 : 1;
        RegisterBenchmark(("BM_attend/" + std::string(attn_format_name(kf)) + "_" + attn_format_name(vf) + "/" +
                           str(isa_name(k->isa)) + "/hd:64/nq:3/n:4096/" + variant).c_str(),
                          bm_attend, k, kf, vf, hd, nq, n, heads, weights)
            ->UseRealTime()->Unit(benchmark::kMicrosecond);
      }
  for (const KernelTable* k : runnable_tables())
    for (int64_t n : {int64_t(1536), int64_t(512) * 576})
      RegisterBenchmark(
          ("BM_quantize_q8/" + str(isa_name(k->isa)) + "/n:" + std::to_string(n)).c_str(),
          bm_quantize_q8, k, n)
          ->UseRealTime()->Unit(benchmark::kMicrosecond);
}

std::string first_line_matching(const char* path, const std::string& key) {
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(key, 0) != 0) continue;
    size_t colon = line.find(':');
    return colon == std::string::npos ? line : line.substr(colon + 2);
  }
  return "?";
}

std::string mib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.0f MiB", bytes / double(1 << 20));
  return b;
}

// "Q4_0 4096x327680 (720 MiB), ..." and whether the 1.5 GiB cap bound.
std::string describe_big_shapes() {
  std::string out = "L3 ";
  out += l3_bytes() > 0 ? mib(double(l3_bytes())) : std::string("unknown (32 MiB assumed)");
  out += "; matrices >= 1.5 x L3:";
  bool any_capped = false;
  for (GgmlType type : kTypes) {
    const BigShape b = beyond_l3_shape(type);
    out.append(" ").append(type_name(type)).append(" ").append(b.shape.name()).append(" (");
    out.append(mib(double(b.shape.rows) * double(b.shape.cols) * bytes_per_weight(type)));
    out.append(")");
    any_capped |= b.capped;
  }
  if (any_capped) out += "; CAPPED at 1.5 GiB per matrix: capped ones are below 1.5 x L3";
  return out;
}

}  // namespace
}  // namespace peregrine

int main(int argc, char** argv) {
  using namespace peregrine;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  for (GgmlType type : kTypes)
    if (panel_format(type) != nullptr) check_chunked_packing(type);
  register_all();
  benchmark::AddCustomContext("cpu_model", first_line_matching("/proc/cpuinfo", "model name"));
  benchmark::AddCustomContext("beyond_l3", describe_big_shapes());
  benchmark::AddCustomContext("matmul_isa", std::string(isa_name(kernels().isa)));
  // The roofline pct_bw divides by, measured before anything else runs.
  char bw[160];
  std::snprintf(bw, sizeof bw, "%.1f GB/s (1 thread, %s), %.1f GB/s (2 threads, %s)",
                measured_read_bw(1) / 1e9, roofline().reader[1].c_str(),
                measured_read_bw(2) / 1e9, roofline().reader[2].c_str());
  benchmark::AddCustomContext("measured_read_bw", bw);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  const SetupStats& st = setup_stats();
  std::fprintf(stderr,
               "set-up: %.2f GiB of random weights made in %.1f s, %d made again (%.2f GiB, "
               "%.1f s); peak RSS %.2f GiB\n",
               st.bytes / double(1 << 30), st.seconds, st.regenerated, st.re_bytes / double(1 << 30),
               st.re_seconds, double(ru.ru_maxrss) / double(1 << 20));
  return 0;
}
