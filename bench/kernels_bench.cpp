// Kernel micro-benchmarks (Google Benchmark): how close matmul and the dot kernels
// come to the machine's memory bandwidth, the roofline of decode (one token reads
// every weight once and does ~2 flops per weight).
//
//   BM_mem_read / BM_mem_copy   the roofline: streaming over 1 GiB, far beyond L3
//   BM_matmul                   ops::matmul with the active kernel table (PEREGRINE_ISA
//                               picks it), pools of 1 and 2 threads, decode and batch shapes
//   BM_dot_rows                 each ISA table's row kernels alone, one thread, n_tok = 1
//   BM_quantize_q8              each ISA table's activation quantizer
//
// Counters: bw = bytes of weights (or memory) per second, flops = 2*rows*cols*n_tok
// per second, pct_bw = bw as a percentage of the read bandwidth measured at start-up
// with the same thread count. See bench/KERNELS.md for how to run and recorded numbers.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/kernels.h"
#include "ops/ops.h"
#include "ops/weight.h"
#include "quant/blocks.h"
#include "quant/fp16.h"
#include "quant/ggml_type.h"

namespace peregrine {
namespace {

// ---------------------------------------------------------------- set-up helpers

// xorshift64*: filling hundreds of MiB with std::mt19937 takes seconds; this is enough.
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

// A weight matrix with random values. Quantized blocks get random nibbles/bytes and
// fp16 scales in 0.001..0.05 (Q4_1 minima in -0.4..-0.008), like real tensors: no
// NaN/inf/denormal slow paths.
struct OwnedWeight {
  std::vector<uint8_t> bytes;  // [rows, row_bytes]
  Weight w;
};

const Weight& random_weight(GgmlType type, int64_t rows, int64_t cols) {
  static std::map<std::tuple<GgmlType, int64_t, int64_t>, std::unique_ptr<OwnedWeight>> cache;
  auto& slot = cache[{type, rows, cols}];
  if (slot) return slot->w;
  slot = std::make_unique<OwnedWeight>();
  const size_t rb = *row_bytes(type, uint64_t(cols));
  std::vector<uint8_t>& buf = slot->bytes;
  buf.resize(rb * size_t(rows));
  FastRng rng(uint64_t(type) * 1000003 + uint64_t(rows * cols));
  switch (type) {
    case GgmlType::F32: {
      for (size_t i = 0; i < buf.size(); i += 4) {
        float v = rng.uniform(-1.0f, 1.0f);
        std::memcpy(&buf[i], &v, 4);
      }
      break;
    }
    case GgmlType::F16:
    case GgmlType::BF16: {
      for (size_t i = 0; i < buf.size(); i += 2) {
        float v = rng.uniform(-1.0f, 1.0f);
        uint16_t h = type == GgmlType::F16 ? f32_to_fp16(v) : f32_to_bf16(v);
        std::memcpy(&buf[i], &h, 2);
      }
      break;
    }
    default: {  // Q4_0, Q4_1, Q8_0: random payload, then valid scales per block
      for (size_t i = 0; i + 8 <= buf.size(); i += 8) {
        uint64_t r = rng.next();
        std::memcpy(&buf[i], &r, 8);
      }
      const size_t bb = *row_bytes(type, kQK);
      for (size_t off = 0; off < buf.size(); off += bb) {
        uint16_t d = f32_to_fp16(rng.uniform(0.001f, 0.05f));
        std::memcpy(&buf[off], &d, 2);
        if (type == GgmlType::Q4_1) {
          uint16_t m = f32_to_fp16(-8.0f * rng.uniform(0.001f, 0.05f));
          std::memcpy(&buf[off + 2], &m, 2);
        }
      }
    }
  }
  slot->w = Weight{std::string(type_name(type)), type, buf.data(), rows, cols, rb};
  // As the model loader does: quantized weights get the panel layout when the
  // active kernel table has panel kernels for the type.
  if (!pack_weight(slot->w).ok()) std::abort();
  return slot->w;
}

std::vector<float> random_floats(size_t n, uint64_t seed) {
  FastRng rng(seed);
  std::vector<float> v(n);
  for (float& f : v) f = rng.uniform(-1.0f, 1.0f);
  return v;
}

// ---------------------------------------------------------------- the roofline

// One buffer far larger than any cache, shared by the read and copy benchmarks and
// the start-up bandwidth probe. Touched once so page faults stay out of the timings.
constexpr size_t kStreamBytes = size_t(1) << 30;

float* stream_buffer() {
  static float* buf = [] {
    const size_t n = kStreamBytes / sizeof(float);
    float* p = new float[n];
    pool(2).parallel_range(int64_t(n), int64_t(n / 16), [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) p[i] = float(i & 1023) * (1.0f / 1024.0f);
    });
    return p;
  }();
  return buf;
}

// Plain C++ that the compiler vectorizes: 32 (AVX2: 64) independent sums hide
// the add latency, so the loop is bound by memory, not by arithmetic. Built twice:
// for the default target (SSE2) and, where the CPU has it, for AVX2 (the roofline is
// the most the machine gives a reader, so read with the widest loads it has).
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
float sum_floats_default(const float* p, int64_t n) { return sum_floats_body<32>(p, n); }
[[gnu::target("avx2")]] float sum_floats_avx2(const float* p, int64_t n) {
  return sum_floats_body<64>(p, n);
}
float sum_floats(const float* p, int64_t n) {
  static const bool avx2 = cpu_supports(Isa::Avx2);
  return avx2 ? sum_floats_avx2(p, n) : sum_floats_default(p, n);
}

// Reads the whole stream buffer with n_threads; returns a sum so nothing is elided.
float read_stream(int n_threads) {
  const int64_t n = int64_t(kStreamBytes / sizeof(float));
  const float* p = stream_buffer();
  struct alignas(64) Partial { float v = 0.0f; };
  Partial part[2];
  pool(n_threads).parallel_range(n, n / 16, [&](int64_t b, int64_t e, int thread) {
    part[thread].v += sum_floats(p + b, e - b);
  });
  return part[0].v + part[1].v;
}

// Best of a few passes: the roofline pct_bw divides by. Index = thread count.
double measured_read_bw(int n_threads) {
  static const std::vector<double> bw = [] {
    stream_buffer();  // allocate and touch outside the timed passes
    std::vector<double> out(3, 0.0);
    for (int t : {1, 2}) {
      for (int rep = 0; rep < 5; ++rep) {
        auto t0 = std::chrono::steady_clock::now();
        benchmark::DoNotOptimize(read_stream(t));
        double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        out[size_t(t)] = std::max(out[size_t(t)], double(kStreamBytes) / s);
      }
    }
    return out;
  }();
  return bw[size_t(n_threads)];
}

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

void bm_mem_read(benchmark::State& state, int n_threads) {
  stream_buffer();
  for (auto _ : state) benchmark::DoNotOptimize(read_stream(n_threads));
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

struct Shape {
  int64_t rows, cols;  // output features, input features
  std::string name() const { return std::to_string(rows) + "x" + std::to_string(cols); }
};
// SmolLM2-135M's ffn_down (fits in L2/L3) and a matrix several times the L3 size
// (36 MiB as Q4_0, 256 MiB as F32).
constexpr Shape kSmall{576, 1536};
constexpr Shape kLarge{4096, 16384};

double weight_bytes(const Weight& w) { return double(w.row_bytes) * double(w.rows); }

void bm_matmul(benchmark::State& state, GgmlType type, Shape shape, int64_t n_tok,
               int n_threads) {
  const Weight& w = random_weight(type, shape.rows, shape.cols);
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

// One table's row kernel over every row, one thread, one token: the kernel without
// the pool or the activation quantization.
void bm_dot_rows(benchmark::State& state, const KernelTable* k, GgmlType type, Shape shape) {
  const Weight& w = random_weight(type, shape.rows, shape.cols);
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

// ---------------------------------------------------------------- registration

std::string str(std::string_view s) { return std::string(s); }

void register_all() {
  using benchmark::RegisterBenchmark;
  const double kMinMemTime = 0.5;  // a 1 GiB pass takes ~0.1 s: a few passes at least
  for (int t : {1, 2}) {
    std::string pl = "/pool:" + std::to_string(t);
    RegisterBenchmark(("BM_mem_read/1GiB" + pl).c_str(), bm_mem_read, t)
        ->UseRealTime()->MinTime(kMinMemTime)->Unit(benchmark::kMillisecond);
    RegisterBenchmark(("BM_mem_copy/512MiB" + pl).c_str(), bm_mem_copy, t)
        ->UseRealTime()->MinTime(kMinMemTime)->Unit(benchmark::kMillisecond);
  }

  const GgmlType kTypes[] = {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0,
                             GgmlType::F16,  GgmlType::BF16, GgmlType::F32};
  const std::string active = str(isa_name(kernels().isa));
  // Decode: n_tok = 1, every weight type, both shapes.
  for (GgmlType type : kTypes)
    for (Shape s : {kSmall, kLarge})
      for (int t : {1, 2})
        RegisterBenchmark(("BM_matmul/" + str(type_name(type)) + "/" + active + "/" + s.name() +
                           "/n_tok:1/pool:" + std::to_string(t)).c_str(),
                          bm_matmul, type, s, int64_t(1), t)
            ->UseRealTime()->Unit(benchmark::kMicrosecond);
  // Small batches (speculative decoding, a few parallel streams) and a prompt chunk.
  for (GgmlType type : {GgmlType::Q4_1, GgmlType::Q8_0})
    for (int64_t n_tok : {2, 4, 8, 16, 512})
      for (int t : {1, 2})
        RegisterBenchmark(("BM_matmul/" + str(type_name(type)) + "/" + active + "/" +
                           kSmall.name() + "/n_tok:" + std::to_string(n_tok) + "/pool:" +
                           std::to_string(t)).c_str(),
                          bm_matmul, type, kSmall, n_tok, t)
            ->UseRealTime()->Unit(benchmark::kMicrosecond);

  for (const KernelTable* k : runnable_tables()) {
    const std::string isa = str(isa_name(k->isa));
    for (GgmlType type : kTypes)
      for (Shape s : {kSmall, kLarge})
        RegisterBenchmark(
            ("BM_dot_rows/" + str(type_name(type)) + "/" + isa + "/" + s.name()).c_str(),
            bm_dot_rows, k, type, s)
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

std::string read_word(const char* path) {
  std::ifstream f(path);
  std::string s;
  return (f >> s) ? s : "?";
}

}  // namespace
}  // namespace peregrine

int main(int argc, char** argv) {
  using namespace peregrine;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  register_all();
  benchmark::AddCustomContext("cpu_model", first_line_matching("/proc/cpuinfo", "model name"));
  benchmark::AddCustomContext("l3_size",
                              read_word("/sys/devices/system/cpu/cpu0/cache/index3/size"));
  benchmark::AddCustomContext("matmul_isa", std::string(isa_name(kernels().isa)));
  // The roofline pct_bw divides by, measured before anything else runs.
  char bw[96];
  std::snprintf(bw, sizeof bw, "%.1f GB/s (1 thread), %.1f GB/s (2 threads)",
                measured_read_bw(1) / 1e9, measured_read_bw(2) / 1e9);
  benchmark::AddCustomContext("measured_read_bw", bw);
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
