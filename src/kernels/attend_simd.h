// The attention kernel (and the SIMD silu_mul and ssm_scan) written once over a vector-traits
// class V (V::kLanes floats per register), instantiated by the AVX2 and AVX-512 units (Vec256,
// Vec512) and, for attend, the NEON one (Vec128), each with its own target flags. Internal
// linkage for the same reason as x86/x86_common.h. Same algorithm as the scalar reference
// (kernels_scalar.cpp): tiles of kAttnTile positions, online softmax.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "kernels/kernels.h"
#include "quant/blocks.h"

namespace peregrine {
namespace {  // NOLINT: internal linkage in a header, see x86/x86_common.h

// Queries handled together: their accumulators stay in registers while one K or V
// row is converted once for all of them (a GQA group is 2-8 heads).
constexpr int64_t kAttnQueryChunk = 4;

// f(i0, chunk) for the queries in chunks of kAttnQueryChunk, the last one smaller, with the
// chunk's size a compile-time constant (decltype(chunk)::value): the per-query loops unroll
// and their accumulators stay in registers.
template <class F>
void for_query_chunks(int64_t nq, F&& f) {
  int64_t i0 = 0;
  for (; i0 + kAttnQueryChunk <= nq; i0 += kAttnQueryChunk) f(i0, std::integral_constant<int64_t, kAttnQueryChunk>{});
  switch (nq - i0) {
    case 3: f(i0, std::integral_constant<int64_t, 3>{}); break;
    case 2: f(i0, std::integral_constant<int64_t, 2>{}); break;
    case 1: f(i0, std::integral_constant<int64_t, 1>{}); break;
    default: break;
  }
}

// What the tile functions of one call share: the queries, as floats and (for Q8_0 / Q4_0 keys)
// quantized per 32 values, and the current Q2Channel group's folded queries.
struct AttnCtx {
  const float* q;         // [nq, hd]
  int64_t nq, hd, nb;     // nb = hd / 32
  const BlockQ8Act* qa;   // [nq, nb] or null
  float* qd;              // [nq, hd] Q2Channel: q_c * d_c of the group
  float* bias;            // [nq]     Q2Channel: sum_c q_c * m_c of the group
  float* scratch;         // [2 * hd] Q2Channel: the group's d_c and m_c
};

// Tile row offsets in bytes from the tile's first row; rows past the end (nt <= j < kAttnTile)
// repeat the last one, so every load stays inside the run.
inline void tile_offsets(int64_t stride, int64_t nt, int32_t* off) {
  for (int64_t j = 0; j < kAttnTile; ++j) off[j] = int32_t(std::min(j, nt - 1) * stride);
}

// One register (lanes c * kLanes ...) of a float-decoded K row: F32, F16, or Q2 in registers.
template <class V, AttnFormat F>
typename V::Reg load_row(const uint8_t* row, int64_t c) {
  constexpr int64_t L = V::kLanes;
  if constexpr (F == AttnFormat::F32) {
    return V::load(reinterpret_cast<const float*>(row) + c * L);
  } else if constexpr (F == AttnFormat::F16) {
    return V::load(reinterpret_cast<const uint16_t*>(row) + c * L);
  } else {
    static_assert(F == AttnFormat::Q2);
    const auto* b = reinterpret_cast<const BlockQ2*>(row) + (c * L) / kQK;
    const int64_t o = (c * L) % kQK;  // first value of the register within its block
    return V::fma(V::set1(V::h2f(b->d)), V::codes2(b->qs + o / 4), V::set1(V::h2f(b->m)));
  }
}

// Scores p[i][j] = q_i . k_j for float-decoded keys: four rows at a time, all queries of a chunk
// against each row register, then V::reduce_add4 sums the four rows' accumulators at once (a
// horizontal sum per row costs more than the row's FMAs at hd 64). A tile's last rows repeat
// its last row, so every row's sum takes the same path wherever it falls in the tile.
template <class V, AttnFormat KF>
void score_tile_float(AttnCtx& cx, const AttnRows& run, int64_t j0, int64_t nt, float (*p)[kAttnTile]) {
  using Reg = typename V::Reg;
  constexpr int64_t L = V::kLanes, R = 4;
  const int64_t nc = cx.hd / L, hd = cx.hd;
  const uint8_t* base = static_cast<const uint8_t*>(run.k) + j0 * run.k_stride;
  for (int64_t j = 0; j < nt; j += R) {
    const uint8_t* kr[R];
    for (int64_t r = 0; r < R; ++r) kr[r] = base + std::min(j + r, nt - 1) * run.k_stride;
    for_query_chunks(cx.nq, [&](int64_t i0, auto chunk) {
      constexpr int64_t ni = decltype(chunk)::value;
      Reg acc[kAttnQueryChunk][R];
      for (int64_t ii = 0; ii < ni; ++ii)
        for (int64_t r = 0; r < R; ++r) acc[ii][r] = V::zero();
      for (int64_t c = 0; c < nc; ++c)
        for (int64_t r = 0; r < R; ++r) {
          const Reg kv = load_row<V, KF>(kr[r], c);
          for (int64_t ii = 0; ii < ni; ++ii) acc[ii][r] = V::fma(V::load(cx.q + (i0 + ii) * hd + c * L), kv, acc[ii][r]);
        }
      for (int64_t ii = 0; ii < ni; ++ii) {
        alignas(16) float sums[R];
        V::reduce_add4(acc[ii], sums);
        for (int64_t r = 0; r < std::min(R, nt - j); ++r) p[i0 + ii][j + r] = sums[r];
      }
    });
  }
}

// Scores for Q8_0 / Q4_0 keys: exact integer dots against the quantized queries, rows in lanes.
// Per block, V::transpose_chunks turns 16-byte pieces of kLanes rows into registers whose lane
// j holds bytes 4g..4g+3 of row j; one broadcast query dword then multiplies every row at once
// and a block's integer sum lands in lane j with no horizontal reduction:
//   s_j += float(isum_j) * (d_k,j * d_q).
template <class V, AttnFormat KF>
void score_tile_int8(AttnCtx& cx, const AttnRows& run, int64_t j0, int64_t nt, float (*p)[kAttnTile]) {
  using Reg = typename V::Reg;
  using IReg = typename V::IReg;
  constexpr int64_t L = V::kLanes;
  constexpr bool kQ8 = KF == AttnFormat::Q8_0;
  constexpr int64_t kBlockBytes = kQ8 ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0);
  const uint8_t* base = static_cast<const uint8_t*>(run.k) + j0 * run.k_stride;
  alignas(64) int32_t off[kAttnTile];
  tile_offsets(run.k_stride, nt, off);
  for (int64_t js = 0; js < nt; js += L) {  // one set of kLanes rows
    for (int64_t b = 0; b < cx.nb; ++b) {
      const uint8_t* blk = base + b * kBlockBytes;
      const Reg dk = V::gather_f16(blk, off + js);
      // kt[g] pairs with query bytes 4g..4g+3 (Q4_0: low nibbles with 0..15, high with 16..31).
      IReg kt[8];
      if constexpr (kQ8) {
        V::transpose_chunks(blk + 2, off + js, kt);
        V::transpose_chunks(blk + 18, off + js, kt + 4);
      } else {
        V::transpose_chunks(blk + 2, off + js, kt);
        for (int g = 0; g < 4; ++g) {
          kt[g + 4] = V::nibbles_hi(kt[g]);
          kt[g] = V::nibbles_lo(kt[g]);
        }
      }
      // kQ8: dot_s8 adds kS8Bias * sum(q) (its unsigned-times-signed trick); Q4_0: codes are q + 8.
      constexpr int32_t kBias = kQ8 ? V::kS8Bias : 8;
      for_query_chunks(cx.nq, [&](int64_t i0, auto chunk) {
        constexpr int64_t ni = decltype(chunk)::value;
        // Two sums per query (even and odd g) where registers allow: more chains in flight.
        constexpr int64_t A = 2 * ni <= V::kRegs / 4 ? 2 : 1;
        IReg acc[ni][A];
        const BlockQ8Act* qb[ni];
        for (int64_t ii = 0; ii < ni; ++ii) {
          qb[ii] = cx.qa + (i0 + ii) * cx.nb + b;
          acc[ii][0] = V::set1_i32(-kBias * qb[ii]->sum);
          if constexpr (A == 2) acc[ii][1] = V::set1_i32(0);
        }
        for (int g = 0; g < 8; ++g) {
          if constexpr (kQ8) {
            const auto kp = V::prep_s8(kt[g]);
            for (int64_t ii = 0; ii < ni; ++ii)
              acc[ii][g % A] = V::dot_s8(acc[ii][g % A], kp, V::bcast4(qb[ii]->qs + 4 * g));
          } else {
            for (int64_t ii = 0; ii < ni; ++ii)
              acc[ii][g % A] = V::dot_u8(acc[ii][g % A], kt[g], V::bcast4(qb[ii]->qs + 4 * g));
          }
        }
        for (int64_t ii = 0; ii < ni; ++ii) {
          float* pr = p[i0 + ii] + js;
          const IReg isum = A == 2 ? V::add_i32(acc[ii][0], acc[ii][A - 1]) : acc[ii][0];
          const Reg s = V::mul(V::cvt_i32(isum), V::mul(dk, V::set1(qb[ii]->d)));
          V::store(pr, b == 0 ? s : V::add(V::load(pr), s));
        }
      });
    }
  }
}

// Scores for Q2Channel keys (KIVI's per-channel keys): within a group of 32 positions channel c
// is d_c * code + m_c, so s_j = sum_c (q_c d_c) code_cj + sum_c q_c m_c. At a group's first tile
// the queries are folded with the group's scales (qd, bias); then each channel's codes for the
// tile's positions are unpacked into lanes (lane j = position j) and added with one fma per query.
template <class V>
void score_tile_q2c(AttnCtx& cx, const AttnRows& run, int64_t j0, int64_t nt, float (*p)[kAttnTile]) {
  using Reg = typename V::Reg;
  constexpr int64_t L = V::kLanes, R = kAttnTile / L;  // registers per tile row
  const int64_t hd = cx.hd, nc = hd / L;
  const auto* grp = reinterpret_cast<const BlockQ2*>(static_cast<const uint8_t*>(run.k) + (j0 / kQK) * run.k_stride);
  if (j0 % kQK == 0) {
    float *d = cx.scratch, *m = cx.scratch + hd;
    for (int64_t c = 0; c < hd; ++c) {
      d[c] = V::h2f(grp[c].d);
      m[c] = V::h2f(grp[c].m);
    }
    for (int64_t i = 0; i < cx.nq; ++i) {
      Reg bias = V::zero();
      for (int64_t c = 0; c < nc; ++c) {
        const Reg qv = V::load(cx.q + i * hd + c * L);
        V::store(cx.qd + i * hd + c * L, V::mul(qv, V::load(d + c * L)));
        bias = V::fma(qv, V::load(m + c * L), bias);
      }
      cx.bias[i] = V::reduce_add(bias);
    }
  }
  const int64_t half = (j0 % kQK) / kAttnTile;  // positions 16 * half ... of the group
  for_query_chunks(cx.nq, [&](int64_t i0, auto chunk) {
    constexpr int64_t ni = decltype(chunk)::value;
    // A accumulators per (query, register) take channels in turn: ni * R * A fma chains to cover
    // the fma latency, within half the register file (hd is a multiple of 32, so of A).
    constexpr int64_t A = 4 * ni * R <= V::kRegs / 2 ? 4 : 2 * ni * R <= V::kRegs / 2 ? 2 : 1;
    Reg acc[ni][R][A];
    for (int64_t ii = 0; ii < ni; ++ii)
      for (int64_t r = 0; r < R; ++r)
        for (int64_t a = 0; a < A; ++a) acc[ii][r][a] = a == 0 ? V::set1(cx.bias[i0 + ii]) : V::zero();
    for (int64_t c0 = 0; c0 < hd; c0 += A)
      for (int64_t a = 0; a < A; ++a) {
        const int64_t c = c0 + a;
        const uint8_t* codes = grp[c].qs + (half * kAttnTile) / 4;
        for (int64_t r = 0; r < R; ++r) {
          const Reg k = V::codes2(codes + r * L / 4);
          for (int64_t ii = 0; ii < ni; ++ii)
            acc[ii][r][a] = V::fma(V::set1(cx.qd[(i0 + ii) * hd + c]), k, acc[ii][r][a]);
        }
      }
    for (int64_t ii = 0; ii < ni; ++ii)
      for (int64_t r = 0; r < R; ++r) {
        Reg sum = acc[ii][r][0];
        for (int64_t a = 1; a < A; ++a) sum = V::add(sum, acc[ii][r][a]);
        V::store(p[i0 + ii] + r * L, sum);
      }
  });
  (void)nt;  // a Q2Channel run has whole groups: every tile is full
}

// Output registers per query that one pass over a tile's rows updates: each (query, register)
// is its own fma chain across the rows, and one chain per query (nq = 3: three chains) would leave
// the loop bound by fma latency; R registers give ni * R chains within the register file.
template <class V>
constexpr int64_t value_regs(int64_t ni) {
  return std::max<int64_t>(1, std::min<int64_t>(kQK / V::kLanes, 8 / ni));
}

// out[i0 + ii] registers c .. c + R += sum over the tile's rows j of w[ii][j] * decode(row j, c + r),
// then + add[ii] (Q2's minimum term) when add is not null.
template <class V, int64_t NI, int64_t R, class Decode>
void value_group(float* out, int64_t hd, int64_t i0, int64_t c, const uint8_t* base, int64_t stride, int64_t nt,
                 const float (*w)[kAttnTile], const float* add, Decode decode) {
  using Reg = typename V::Reg;
  constexpr int64_t L = V::kLanes;
  Reg o[NI][R];
  for (int64_t ii = 0; ii < NI; ++ii)
    for (int64_t r = 0; r < R; ++r) o[ii][r] = V::load(out + (i0 + ii) * hd + (c + r) * L);
  for (int64_t j = 0; j < nt; ++j) {
    Reg vv[R];
    for (int64_t r = 0; r < R; ++r) vv[r] = decode(base + j * stride, c + r);
    for (int64_t ii = 0; ii < NI; ++ii) {
      const Reg wv = V::set1(w[i0 + ii][j]);
      for (int64_t r = 0; r < R; ++r) o[ii][r] = V::fma(wv, vv[r], o[ii][r]);
    }
  }
  for (int64_t ii = 0; ii < NI; ++ii)
    for (int64_t r = 0; r < R; ++r) {
      if (add != nullptr) o[ii][r] = V::add(o[ii][r], V::set1(add[i0 + ii]));
      V::store(out + (i0 + ii) * hd + (c + r) * L, o[ii][r]);
    }
}

// out_i += sum_j p[i][j] v_j for float V rows (F32, F16): the query chunk's output registers stay
// in place while the tile's rows pass, each row register converted once for the chunk.
template <class V, AttnFormat VF>
void value_tile_float(AttnCtx& cx, const AttnRows& run, int64_t j0, int64_t nt, float (*p)[kAttnTile], float* out) {
  const int64_t nc = cx.hd / V::kLanes;
  const uint8_t* base = static_cast<const uint8_t*>(run.v) + j0 * run.v_stride;
  auto decode = [](const uint8_t* row, int64_t c) { return load_row<V, VF>(row, c); };
  for_query_chunks(cx.nq, [&](int64_t i0, auto chunk) {
    constexpr int64_t ni = decltype(chunk)::value, R = value_regs<V>(ni);
    int64_t c = 0;
    for (; c + R <= nc; c += R) value_group<V, ni, R>(out, cx.hd, i0, c, base, run.v_stride, nt, p, nullptr, decode);
    for (; c < nc; ++c) value_group<V, ni, 1>(out, cx.hd, i0, c, base, run.v_stride, nt, p, nullptr, decode);
  });
}

// Quantized V rows (Q8_0, Q4_0, Q2): per block the rows' scales are loaded once for the tile and
// folded into the probabilities, pd[i][j] = p[i][j] * d_j, so a row register is just its codes
// converted to floats; Q2's minimum adds sum_j p[i][j] * m_j to the block's lanes once per tile.
template <class V, AttnFormat VF>
void value_tile_quant(AttnCtx& cx, const AttnRows& run, int64_t j0, int64_t nt, float (*p)[kAttnTile], float* out) {
  using Reg = typename V::Reg;
  constexpr int64_t L = V::kLanes;
  constexpr int64_t kBlockBytes = VF == AttnFormat::Q8_0   ? sizeof(BlockQ8_0)
                                  : VF == AttnFormat::Q4_0 ? sizeof(BlockQ4_0)
                                                           : sizeof(BlockQ2);
  const uint8_t* base = static_cast<const uint8_t*>(run.v) + j0 * run.v_stride;
  alignas(64) int32_t off[kAttnTile];
  tile_offsets(run.v_stride, nt, off);
  alignas(64) float pd[kAttnMaxQ][kAttnTile];
  float pm[kAttnMaxQ];
  for (int64_t b = 0; b < cx.nb; ++b) {
    const uint8_t* blk = base + b * kBlockBytes;
    for (int64_t js = 0; js < kAttnTile; js += L) {
      Reg d, m;
      if constexpr (VF == AttnFormat::Q2) V::gather_f16x2(blk, off + js, d, m);
      else d = V::gather_f16(blk, off + js);
      for (int64_t i = 0; i < cx.nq; ++i) {
        const Reg pv = V::load(p[i] + js);  // zero past nt (the driver clears the tail)
        V::store(pd[i] + js, V::mul(pv, d));
        if constexpr (VF == AttnFormat::Q2) {
          const float s = V::reduce_add(V::mul(pv, m));
          pm[i] = js == 0 ? s : pm[i] + s;
        }
      }
    }
    // Register c of a row: values (c * L) % 32 ... of block b.
    auto decode = [b](const uint8_t* row, int64_t c) {
      const uint8_t* vb = row + b * kBlockBytes;
      const int64_t o = (c * L) % kQK;
      if constexpr (VF == AttnFormat::Q8_0) return V::load_i8(reinterpret_cast<const int8_t*>(vb + 2) + o);
      else if constexpr (VF == AttnFormat::Q4_0) return V::load_q4(vb + 2 + o % 16, o >= 16);
      else return V::codes2(vb + 4 + o / 4);
    };
    const float* add = VF == AttnFormat::Q2 ? pm : nullptr;
    for_query_chunks(cx.nq, [&](int64_t i0, auto chunk) {
      constexpr int64_t ni = decltype(chunk)::value, R = value_regs<V>(ni);
      for (int64_t c = b * (kQK / L); c < (b + 1) * (kQK / L); c += R)
        value_group<V, ni, R>(out, cx.hd, i0, c, base, run.v_stride, nt, pd, add, decode);
    });
  }
}

using ScoreTile = void (*)(AttnCtx&, const AttnRows&, int64_t, int64_t, float (*)[kAttnTile]);
using ValueTile = void (*)(AttnCtx&, const AttnRows&, int64_t, int64_t, float (*)[kAttnTile], float*);

template <class V>
ScoreTile score_tile(AttnFormat f) {
  switch (f) {
    case AttnFormat::F32: return score_tile_float<V, AttnFormat::F32>;
    case AttnFormat::F16: return score_tile_float<V, AttnFormat::F16>;
    case AttnFormat::Q8_0: return score_tile_int8<V, AttnFormat::Q8_0>;
    case AttnFormat::Q4_0: return score_tile_int8<V, AttnFormat::Q4_0>;
    case AttnFormat::Q2: return score_tile_float<V, AttnFormat::Q2>;
    case AttnFormat::Q2Channel: return score_tile_q2c<V>;
  }
  return nullptr;
}

template <class V>
ValueTile value_tile(AttnFormat f) {
  switch (f) {
    case AttnFormat::F32: return value_tile_float<V, AttnFormat::F32>;
    case AttnFormat::F16: return value_tile_float<V, AttnFormat::F16>;
    case AttnFormat::Q8_0: return value_tile_quant<V, AttnFormat::Q8_0>;
    case AttnFormat::Q4_0: return value_tile_quant<V, AttnFormat::Q4_0>;
    case AttnFormat::Q2: return value_tile_quant<V, AttnFormat::Q2>;
    case AttnFormat::Q2Channel: break;  // keys only
  }
  return nullptr;
}

inline bool is_quantized(AttnFormat f) { return f != AttnFormat::F32 && f != AttnFormat::F16; }

// Bytes of one row of hd values (Q2Channel: of one group of 32 rows).
inline int64_t attn_row_bytes(AttnFormat f, int64_t hd) {
  const int64_t nb = hd / kQK;
  switch (f) {
    case AttnFormat::F32: return hd * 4;
    case AttnFormat::F16: return hd * 2;
    case AttnFormat::Q8_0: return nb * int64_t(sizeof(BlockQ8_0));
    case AttnFormat::Q4_0: return nb * int64_t(sizeof(BlockQ4_0));
    case AttnFormat::Q2: return nb * int64_t(sizeof(BlockQ2));
    case AttnFormat::Q2Channel: return hd * int64_t(sizeof(BlockQ2));
  }
  return 0;
}

// A cache line wanted soon. Inline asm, not __builtin_prefetch: GCC deletes loops whose only
// statements are __builtin_prefetch calls (as it did prefetch_rows' at -O2 and -O3).
inline void prefetch_line(const char* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht0 %0" : : "m"(*p));
#elif defined(__aarch64__)
  asm volatile("prfm pldl1keep, [%0]" : : "r"(p));
#else
  __builtin_prefetch(p);
#endif
}

// Asks for rows [j, j + n) of one side of a run ahead of use: decode streams the cache from
// memory, and the hardware prefetcher alone leaves the quantized rows (read 16 bytes at a time
// from 4-16 rows at once) waiting on DRAM.
inline void prefetch_rows(const void* base, int64_t stride, int64_t row_bytes, int64_t j, int64_t n) {
  const auto* p = static_cast<const char*>(base) + j * stride;
  if (stride == row_bytes) {  // rows back to back: one range
    for (int64_t o = 0; o < n * row_bytes; o += 64) prefetch_line(p + o);
    return;
  }
  for (int64_t r = 0; r < n; ++r)
    for (int64_t o = 0; o < row_bytes; o += 64) prefetch_line(p + r * stride + o);
}

// Tiles ahead that a tile's prefetch covers (2, 4 and 8 measured alike beyond the L3; 4 kept).
constexpr int64_t kAttnPrefetchTiles = 4;

// Every run, float rows too: a head's rows are one piece of each cache row (the cache row holds
// every KV head), and the hardware prefetcher does not follow those pieces across pages. Measured
// on SmolLM2 (3 KV heads) with an f16 cache, decode at depth 4096 went from 54 to 83 tok/s.
inline void prefetch_tile(const AttnRows& run, int64_t hd, int64_t j0) {
  const int64_t j = j0 + kAttnPrefetchTiles * kAttnTile;
  if (j >= run.n) return;
  const int64_t n = std::min(kAttnTile, run.n - j);
  if (run.kf != AttnFormat::Q2Channel) prefetch_rows(run.k, run.k_stride, attn_row_bytes(run.kf, hd), j, n);
  else if (j % kQK == 0) prefetch_rows(run.k, run.k_stride, attn_row_bytes(run.kf, hd), j / kQK, 1);  // its group
  prefetch_rows(run.v, run.v_stride, attn_row_bytes(run.vf, hd), j, n);
}

// KernelTable::attend: the same online softmax as the scalar reference (kernels_scalar.cpp), a
// driver over runs that picks each run's score and value tile functions by format.
template <class V>
void attend_simd(const float* q, int64_t nq, int64_t hd, const AttnRows* runs, int n_runs, float* out) {
  using Reg = typename V::Reg;
  constexpr int64_t L = V::kLanes;
  const int64_t nc = hd / L;
  bool int8_keys = false, q2c_keys = false;
  for (int r = 0; r < n_runs; ++r) {
    const AttnRows& run = runs[r];
    // Quantized rows are addressed through 32-bit offsets within a tile: fine for any KV layout
    // (rows of at most 2^27 bytes apart); anything else takes the reference.
    constexpr int64_t kMaxStride = (int64_t(1) << 31) / kAttnTile;
    if ((is_quantized(run.kf) && std::abs(run.k_stride) >= kMaxStride) ||
        (is_quantized(run.vf) && std::abs(run.v_stride) >= kMaxStride))
      return scalar_kernels().attend(q, nq, hd, runs, n_runs, out);
    int8_keys |= run.kf == AttnFormat::Q8_0 || run.kf == AttnFormat::Q4_0;
    q2c_keys |= run.kf == AttnFormat::Q2Channel;
  }
  // Scratch: on the stack up to hd = 256, past that per thread.
  constexpr int64_t kStackHd = 256;
  alignas(64) BlockQ8Act qa_stack[kAttnMaxQ * kStackHd / kQK];
  alignas(64) float qd_stack[(kAttnMaxQ + 2) * kStackHd];
  thread_local std::vector<BlockQ8Act> qa_heap;
  thread_local std::vector<float> qd_heap;
  AttnCtx cx{q, nq, hd, hd / kQK, nullptr, nullptr, nullptr, nullptr};
  float bias[kAttnMaxQ];
  if (int8_keys) {
    BlockQ8Act* qa = qa_stack;
    if (hd > kStackHd) qa = (qa_heap.resize(size_t(nq * cx.nb)), qa_heap.data());
    for (int64_t i = 0; i < nq; ++i) V::quantize_query(q + i * hd, qa + i * cx.nb, hd);
    cx.qa = qa;
  }
  if (q2c_keys) {
    float* qd = qd_stack;
    if (hd > kStackHd) qd = (qd_heap.resize(size_t((nq + 2) * hd)), qd_heap.data());
    cx.qd = qd;
    cx.scratch = qd + nq * hd;
    cx.bias = bias;
  }

  alignas(64) float p[kAttnMaxQ][kAttnTile] = {};  // scores, then probabilities; lanes past a run's end 0
  float m[kAttnMaxQ], l[kAttnMaxQ];
  Reg lv[kAttnMaxQ];  // l per query as kLanes partial sums, added up once at the end
  for (int64_t i = 0; i < nq; ++i) {
    m[i] = -INFINITY;
    lv[i] = V::zero();
    std::fill(out + i * hd, out + (i + 1) * hd, 0.0f);
  }
  for (int r = 0; r < n_runs; ++r) {
    const AttnRows& run = runs[r];
    const ScoreTile score = score_tile<V>(run.kf);
    const ValueTile value = value_tile<V>(run.vf);
    for (int64_t j0 = 0; j0 < run.n; j0 += kAttnTile) {
      const int64_t nt = std::min(kAttnTile, run.n - j0);
      prefetch_tile(run, hd, j0);
      score(cx, run, j0, nt, p);
      // Softmax step per query: rescale the running state to the new maximum.
      for (int64_t i = 0; i < nq; ++i) {
        float tile_max = -INFINITY;
        if (nt == kAttnTile) {
          Reg mx = V::load(p[i]);
          for (int64_t j = L; j < kAttnTile; j += L) mx = V::max(mx, V::load(p[i] + j));
          tile_max = V::reduce_max(mx);
        } else {
          for (int64_t j = 0; j < nt; ++j) tile_max = std::max(tile_max, p[i][j]);
        }
        const float m_new = std::max(m[i], tile_max);
        // 0 on the first tile; once the maximum settles, 1 without a call to exp.
        const float corr = m_new == m[i] ? 1.0f : std::exp(m[i] - m_new);
        Reg sum = V::zero();
        for (int64_t j = 0; j < kAttnTile; j += L) {
          Reg e = V::exp(V::sub(V::load(&p[i][j]), V::set1(m_new)));
          if (j + L > nt) e = V::first_n(e, nt - j);  // past the run's end: 0 (quantized V sums over the tile)
          V::store(&p[i][j], e);
          sum = V::add(sum, e);
        }
        lv[i] = V::fma(lv[i], V::set1(corr), sum);
        m[i] = m_new;
        if (corr != 1.0f) {
          float* o = out + i * hd;
          for (int64_t c = 0; c < nc; ++c) V::store(o + c * L, V::mul(V::load(o + c * L), V::set1(corr)));
        }
      }
      value(cx, run, j0, nt, p, out);
    }
  }
  for (int64_t i = 0; i < nq; ++i) l[i] = V::reduce_add(lv[i]);
  // Eviction statistics: with the final m and l known, each row's probabilities once more.
  for (int r = 0; r < n_runs; ++r) {
    const AttnRows& run = runs[r];
    if (run.weights == nullptr) continue;
    const ScoreTile score = score_tile<V>(run.kf);
    for (int64_t j0 = 0; j0 < run.n; j0 += kAttnTile) {
      const int64_t nt = std::min(kAttnTile, run.n - j0);
      score(cx, run, j0, nt, p);
      for (int64_t j = 0; j < kAttnTile; j += L) {
        Reg w = V::zero();
        for (int64_t i = 0; i < nq; ++i)
          w = V::fma(V::exp(V::sub(V::load(&p[i][j]), V::set1(m[i]))), V::set1(1.0f / l[i]), w);
        alignas(64) float wl[L];
        V::store(wl, w);
        for (int64_t jj = j; jj < std::min(j + L, nt); ++jj) run.weights[j0 + jj] += wl[jj - j];
      }
    }
  }
  for (int64_t i = 0; i < nq; ++i) {
    const Reg inv = V::set1(1.0f / l[i]);
    for (int64_t c = 0; c < nc; ++c) V::store(out + i * hd + c * L, V::mul(V::load(out + i * hd + c * L), inv));
  }
}

template <class V>
void silu_mul_simd(const float* g, const float* u, float* out, int64_t n) {
  constexpr int64_t L = V::kLanes;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    const typename V::Reg gv = V::load(g + i);
    const typename V::Reg e = V::exp(V::sub(V::zero(), gv));
    V::store(out + i, V::mul(V::div(gv, V::add(V::set1(1.0f), e)), V::load(u + i)));
  }
  if (i < n) {  // the tail through the same vector code: an element's result never
               // depends on where a call's chunk boundaries fall
    alignas(64) float gt[L] = {}, ut[L] = {};
    std::copy(g + i, g + n, gt);
    std::copy(u + i, u + n, ut);
    silu_mul_simd<V>(gt, ut, gt, L);
    std::copy(gt, gt + (n - i), out + i);
  }
}

// KernelTable::ssm_scan. A state row is held in registers, 128 floats at a time, while the
// tokens pass (the state is read and written once per call, not once per token); the 16 partial
// sums of a token are 16 / kLanes registers (lane l of register r is acc[r * kLanes + l]), carried
// across the row's blocks in `carry` and added in the tree order by V::tree16. ds a multiple of 16.
// One block of NR registers (a compile-time count, so the block stays in registers).
template <class V, int64_t NR>
void ssm_scan_block(float* s, const float* x, const float* B, const float* C, int64_t in_stride, const float* dt,
                    const float* dA, float D, int64_t i, int64_t n_tok, bool first, bool last, float* carry,
                    float* y, int64_t y_stride) {
  constexpr int64_t L = V::kLanes, R = 16 / L;
  using Reg = typename V::Reg;
  Reg st[NR];
  for (int64_t q = 0; q < NR; ++q) st[q] = V::load(s + q * L);
  for (int64_t t = 0; t < n_tok; ++t) {
    const float* xt = x + t * in_stride;
    const float *Bt = B + t * in_stride, *Ct = C + t * in_stride;
    const Reg xdt = V::set1(xt[i] * dt[t]), da = V::set1(dA[t]);
    Reg acc[R];
    for (int64_t r = 0; r < R; ++r) acc[r] = first ? V::zero() : V::load(carry + t * 16 + r * L);
    for (int64_t q = 0; q < NR; ++q) {
      st[q] = V::fma(st[q], da, V::mul(V::load(Bt + q * L), xdt));
      acc[q % R] = V::fma(st[q], V::load(Ct + q * L), acc[q % R]);
    }
    if (last) y[t * y_stride + i] = std::fma(D, xt[i], V::tree16(acc));
    else
      for (int64_t r = 0; r < R; ++r) V::store(carry + t * 16 + r * L, acc[r]);
  }
  for (int64_t q = 0; q < NR; ++q) V::store(s + q * L, st[q]);
}

// The block of nr registers (a multiple of 16 / kLanes, at most NR) with its compile-time count.
template <class V, int64_t NR>
void ssm_scan_block_n(int64_t nr, float* s, const float* x, const float* B, const float* C, int64_t in_stride,
                      const float* dt, const float* dA, float D, int64_t i, int64_t n_tok, bool first, bool last,
                      float* carry, float* y, int64_t y_stride) {
  constexpr int64_t R = 16 / V::kLanes;
  if (nr == NR) {
    ssm_scan_block<V, NR>(s, x, B, C, in_stride, dt, dA, D, i, n_tok, first, last, carry, y, y_stride);
  } else if constexpr (NR > R) {
    ssm_scan_block_n<V, NR - R>(nr, s, x, B, C, in_stride, dt, dA, D, i, n_tok, first, last, carry, y, y_stride);
  }
}

template <class V>
void ssm_scan_simd(float* S, const float* x, const float* B, const float* C, int64_t in_stride, const float* dt,
                   const float* dA, float D, int64_t hd, int64_t ds, int64_t n_tok, float* y, int64_t y_stride) {
  constexpr int64_t L = V::kLanes, kBlock = 128, kRegs = kBlock / L;
  if (n_tok == 1) {  // decode: nothing to keep in registers between tokens; stream each row once
    constexpr int64_t R = 16 / L;
    using Reg = typename V::Reg;
    const Reg da = V::set1(dA[0]);
    for (int64_t i = 0; i < hd; ++i) {
      float* s = S + i * ds;
      const Reg xdt = V::set1(x[i] * dt[0]);
      Reg acc[R];
      for (int64_t r = 0; r < R; ++r) acc[r] = V::zero();
      for (int64_t j = 0; j < ds; j += 16)
        for (int64_t r = 0; r < R; ++r) {
          const int64_t o = j + r * L;
          const Reg sv = V::fma(V::load(s + o), da, V::mul(V::load(B + o), xdt));
          V::store(s + o, sv);
          acc[r] = V::fma(sv, V::load(C + o), acc[r]);
        }
      y[i] = std::fma(D, x[i], V::tree16(acc));
    }
    return;
  }
  thread_local std::vector<float> carry;  // [n_tok][16] partial sums between a row's blocks
  if (ds > kBlock && carry.size() < size_t(n_tok * 16)) carry.resize(size_t(n_tok * 16));
  for (int64_t i = 0; i < hd; ++i) {
    float* s = S + i * ds;
    for (int64_t b0 = 0; b0 < ds; b0 += kBlock)
      ssm_scan_block_n<V, kRegs>(std::min(kBlock, ds - b0) / L, s + b0, x, B + b0, C + b0, in_stride, dt, dA, D, i,
                                 n_tok, b0 == 0, b0 + kBlock >= ds, carry.data(), y, y_stride);
  }
}

}  // namespace
}  // namespace peregrine
