// Chooses the kernel table once from the CPU (CPUID on x86-64, HWCAP on AArch64), or
// from PEREGRINE_ISA. Each per-ISA unit is compiled only for its own architecture
// (CMakeLists.txt); the tables of the other architecture are nullptr stubs here.
#include <cstdio>
#include <cstdlib>
#include <string>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__aarch64__) && defined(__ARM_FEATURE_DOTPROD) && defined(__linux__)
#include <sys/auxv.h>
#endif

#include "kernels/kernels.h"

namespace peregrine {

#if defined(__x86_64__)
namespace {

uint64_t xgetbv0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}

}  // namespace
#else
const KernelTable* avx2_kernels() { return nullptr; }
const KernelTable* avx512_kernels() { return nullptr; }
#endif
#if !defined(__aarch64__)
const KernelTable* neon_kernels() { return nullptr; }
#endif

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Neon: return "neon";
  }
  return "?";
}

bool cpu_supports(Isa isa) {
  if (isa == Isa::Scalar) return true;
#if defined(__aarch64__)
  if (isa != Isa::Neon) return false;
#if defined(__ARM_FEATURE_DOTPROD) && defined(__linux__)
  // Built with +dotprod: the NEON unit uses SDOT, which armv8.0 cores lack.
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#else
  return true;  // Advanced SIMD is part of every AArch64 core
#endif
#elif defined(__x86_64__)
  if (isa == Isa::Neon) return false;
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  bool osxsave = c & (1u << 27), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!osxsave) return false;
  uint64_t xcr0 = xgetbv0();
  bool ymm_state = (xcr0 & 0x6) == 0x6;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  bool avx2 = b & (1u << 5);
  if (isa == Isa::Avx2) return ymm_state && avx2 && fma && f16c;
  bool zmm_state = (xcr0 & 0xe6) == 0xe6;
  bool f = b & (1u << 16), dq = b & (1u << 17), bw = b & (1u << 30), vl = b & (1u << 31);
  bool vnni = c & (1u << 11);
  unsigned a1, b1, c1, d1;
  bool bf16 = __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) && (a1 & (1u << 5));
  return ymm_state && zmm_state && avx2 && fma && f16c && f && dq && bw && vl && vnni && bf16;
#else
  return false;
#endif
}

const KernelTable& kernels() {
  static const KernelTable* chosen = [] {
    const char* env = std::getenv("PEREGRINE_ISA");
    auto table_for = [](Isa isa) -> const KernelTable* {
      if (!cpu_supports(isa)) return nullptr;
      switch (isa) {
        case Isa::Scalar: return &scalar_kernels();
        case Isa::Avx2: return avx2_kernels();
        case Isa::Avx512: return avx512_kernels();
        case Isa::Neon: return neon_kernels();
      }
      return nullptr;
    };
    if (env != nullptr && *env != '\0') {
      std::string want = env;
      for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
        if (want != isa_name(isa)) continue;
        if (const KernelTable* t = table_for(isa)) return t;
        std::fprintf(stderr, "error: PEREGRINE_ISA=%s is not supported on this CPU\n", env);
        std::exit(2);
      }
      std::fprintf(stderr, "error: PEREGRINE_ISA=%s is unknown (scalar, avx2, avx512, neon)\n", env);
      std::exit(2);
    }
    // The widest table the CPU runs (AVX-512 needs F/BW/VL/DQ + VNNI + BF16).
    if (const KernelTable* t = table_for(Isa::Avx512)) return t;
    if (const KernelTable* t = table_for(Isa::Avx2)) return t;
    if (const KernelTable* t = table_for(Isa::Neon)) return t;
    return &scalar_kernels();
  }();
  return *chosen;
}

}  // namespace peregrine
