// The attention kernel written once over a vector-traits class V (V::kLanes floats
// per register), instantiated by the AVX2 and AVX-512 units with their own target
// flags. Internal linkage for the same reason as x86_common.h. Same algorithm as the
// scalar reference (kernels_scalar.cpp): tiles of kAttnTile positions, online softmax.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/kernels.h"

namespace peregrine {
namespace {  // NOLINT: internal linkage in a header, see x86_common.h

// Queries handled together: their accumulators stay in registers while one K or V
// row is converted once for all of them (a GQA group is 2-8 heads).
constexpr int64_t kAttnQueryChunk = 4;

template <class V, class KV>
void attend_simd(const float* q, int64_t nq, int64_t hd, const AttnRows* runs, int n_runs,
                 float* out) {
  using Reg = typename V::Reg;
  constexpr int64_t L = V::kLanes;
  const int64_t nc = hd / L;  // registers per head row
  alignas(64) float p[kAttnMaxQ][kAttnTile];
  float m[kAttnMaxQ], l[kAttnMaxQ];
  for (int64_t i = 0; i < nq; ++i) {
    m[i] = -INFINITY;
    l[i] = 0.0f;
    std::fill(out + i * hd, out + (i + 1) * hd, 0.0f);
  }
  for (int r = 0; r < n_runs; ++r) {
    const KV* k = static_cast<const KV*>(runs[r].k);
    const KV* v = static_cast<const KV*>(runs[r].v);
    const int64_t n = runs[r].n, k_stride = runs[r].k_stride, v_stride = runs[r].v_stride;
    for (int64_t j0 = 0; j0 < n; j0 += kAttnTile) {
      const int64_t nt = std::min(kAttnTile, n - j0);
      // Scores p[i][j] = q_i . k_j
      for (int64_t j = 0; j < nt; ++j) {
        const KV* kr = k + (j0 + j) * k_stride;
        for (int64_t i0 = 0; i0 < nq; i0 += kAttnQueryChunk) {
          const int64_t ni = std::min(kAttnQueryChunk, nq - i0);
          Reg acc[kAttnQueryChunk];
          for (int64_t ii = 0; ii < kAttnQueryChunk; ++ii) acc[ii] = V::zero();
          for (int64_t c = 0; c < nc; ++c) {
            const Reg kv = V::load(kr + c * L);
            for (int64_t ii = 0; ii < ni; ++ii)
              acc[ii] = V::fma(V::load(q + (i0 + ii) * hd + c * L), kv, acc[ii]);
          }
          for (int64_t ii = 0; ii < ni; ++ii) p[i0 + ii][j] = V::reduce_add(acc[ii]);
        }
      }
      // Softmax step per query: rescale the running state to the new maximum.
      for (int64_t i = 0; i < nq; ++i) {
        float tile_max = -INFINITY;
        for (int64_t j = 0; j < nt; ++j) tile_max = std::max(tile_max, p[i][j]);
        const float m_new = std::max(m[i], tile_max);
        const float corr = std::exp(m[i] - m_new);  // 0 on the first tile
        float sum = 0.0f;
        int64_t j = 0;
        for (; j + L <= nt; j += L) {
          const Reg e = V::exp(V::sub(V::load(&p[i][j]), V::set1(m_new)));
          V::store(&p[i][j], e);
          sum += V::reduce_add(e);
        }
        if (j < nt) {  // the tail through the same vector exp (p rows are padded to kAttnTile)
          alignas(64) float tail[V::kLanes] = {};
          std::copy(&p[i][j], &p[i][nt], tail);
          const Reg e = V::exp(V::sub(V::load(tail), V::set1(m_new)));
          V::store(tail, e);
          for (int64_t jj = j; jj < nt; ++jj) sum += (p[i][jj] = tail[jj - j]);
        }
        l[i] = l[i] * corr + sum;
        m[i] = m_new;
        if (corr != 1.0f) {
          float* o = out + i * hd;
          for (int64_t c = 0; c < nc; ++c) V::store(o + c * L, V::mul(V::load(o + c * L), V::set1(corr)));
        }
      }
      // out_i += sum_j p[i][j] v_j
      for (int64_t c = 0; c < nc; ++c) {
        for (int64_t i0 = 0; i0 < nq; i0 += kAttnQueryChunk) {
          const int64_t ni = std::min(kAttnQueryChunk, nq - i0);
          Reg o[kAttnQueryChunk];
          for (int64_t ii = 0; ii < ni; ++ii) o[ii] = V::load(out + (i0 + ii) * hd + c * L);
          for (int64_t j = 0; j < nt; ++j) {
            const Reg vv = V::load(v + (j0 + j) * v_stride + c * L);
            for (int64_t ii = 0; ii < ni; ++ii) o[ii] = V::fma(V::set1(p[i0 + ii][j]), vv, o[ii]);
          }
          for (int64_t ii = 0; ii < ni; ++ii) V::store(out + (i0 + ii) * hd + c * L, o[ii]);
        }
      }
    }
  }
  for (int64_t i = 0; i < nq; ++i) {
    const Reg inv = V::set1(1.0f / l[i]);
    for (int64_t c = 0; c < nc; ++c)
      V::store(out + i * hd + c * L, V::mul(V::load(out + i * hd + c * L), inv));
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
