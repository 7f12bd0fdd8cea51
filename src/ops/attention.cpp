#include "ops/attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>
#include <vector>

#include "kernels/kernels.h"
#include "kv/hadamard.h"
#include "kv/kv_evict.h"
#include "ops/sparse_prefill.h"
#include "quant/dequantize.h"
#include "quant/fp16.h"

namespace peregrine {
namespace {

constexpr int64_t kMaxSinks = 64;  // a bound on the re-rotated sink keys of one task
// Head dimensions up to this use stack buffers; larger ones (up to the loader's 1024, or
// n_embd / n_head) a per-thread buffer grown once, so no head dimension allocates per token
// once every thread has run a task.
constexpr int64_t kStackHeadDim = 256;

float* grown(std::vector<float>& buf, int64_t n) {
  if (buf.size() < size_t(n)) buf.resize(size_t(n));
  return buf.data();
}

// The cos/sin of a shift, remembered per thread: every KV head and layer of a token asks for
// the same shift, so the trigonometry runs about once per token and thread, not per task.
struct ShiftTable {
  int64_t shift = -1, rot_dim = 0;
  float base = 0.0f;
  float small[kStackHeadDim];  // [rot_dim / 2][2]
  std::vector<float> big;      // the same for a larger rot_dim
  const float* get(int64_t sh, int64_t rd, float b) {
    float* cs = rd <= kStackHeadDim ? small : grown(big, rd);
    if (sh != shift || rd != rot_dim || b != base) {
      for (int64_t i = 0; i < rd; i += 2) {
        const double theta = double(sh) * std::pow(double(b), -double(i) / double(rd));
        cs[i] = float(std::cos(theta));
        cs[i + 1] = float(std::sin(theta));
      }
      shift = sh;
      rot_dim = rd;
      base = b;
    }
    return cs;
  }
};

// Rotates `n` key rows of one head by `shift` positions (adjacent pairs), reading rows
// `stride` elements apart of type T and writing them densely into out (same type).
template <class T>
void rerotate(const T* k, int64_t stride, int64_t n, int64_t hd, int64_t rot_dim, float base,
              int64_t shift, T* out) {
  thread_local ShiftTable table;
  const float* cs = table.get(shift, rot_dim, base);
  for (int64_t i = 0; i < rot_dim; i += 2) {
    const float c = cs[i], s = cs[i + 1];
    for (int64_t j = 0; j < n; ++j) {
      const T* r = k + j * stride;
      float a, b;
      if constexpr (std::is_same_v<T, float>) {
        a = r[i];
        b = r[i + 1];
        out[j * hd + i] = a * c - b * s;
        out[j * hd + i + 1] = a * s + b * c;
      } else {
        a = fp16_to_f32(r[i]);
        b = fp16_to_f32(r[i + 1]);
        out[j * hd + i] = f32_to_fp16(a * c - b * s);
        out[j * hd + i + 1] = f32_to_fp16(a * s + b * c);
      }
    }
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t i = rot_dim; i < hd; ++i) out[j * hd + i] = k[j * stride + i];
}

// One head's row of n values in a row format, as floats.
void dequantize_kv_row(AttnFormat f, const uint8_t* row, float* out, int64_t n) {
  switch (f) {
    case AttnFormat::F32: std::copy_n(reinterpret_cast<const float*>(row), n, out); return;
    case AttnFormat::F16: dequantize_row_f16(reinterpret_cast<const uint16_t*>(row), out, n); return;
    case AttnFormat::Q8_0: dequantize_row_q8_0(reinterpret_cast<const BlockQ8_0*>(row), out, n); return;
    case AttnFormat::Q4_0: dequantize_row_q4_0(reinterpret_cast<const BlockQ4_0*>(row), out, n); return;
    case AttnFormat::Q2: dequantize_row_q2(reinterpret_cast<const BlockQ2*>(row), out, n); return;
    case AttnFormat::Q2Channel: break;  // never a sink run: KIVI layers are global
  }
  PG_ASSERT(false && "no row layout");
}

// An evicting layer's tokens of one sequence: order[begin, begin + n) of the batch.
struct EvictGroup {
  int64_t seq, begin, n, last_pos;
};

}  // namespace

Status check_attention(const KvShape& kv, const AttentionShape& /*s: any head dimension works*/) {
  for (int64_t l = 0; l < kv.n_layer; ++l) {
    const AttnKind& k = kv.kind(l);
    if (k.type == AttnKind::Type::SinksWindow && k.sinks > kMaxSinks)
      return make_error("{} attention sinks: at most {} are supported", k.sinks, kMaxSinks);
  }
  return Status::Ok();
}

void attention(const float* q, const int32_t* pos, const int32_t* seq, int64_t n_tok,
               KvCache& cache, int64_t layer, const AttentionShape& s, float* out,
               ThreadPool& pool) {
  const KernelTable& k = kernels();
  const int64_t hd = s.head_dim, group = s.n_head / s.n_head_kv;
  const KernelTable::Attend attend =
      hd % k.attn_hd_multiple == 0 && k.attend ? k.attend : scalar_kernels().attend;
  const AttnKind& kind = cache.shape().kind(layer);
  // Rows stored rotated (kv/hadamard.h): queries rotate alike, outputs rotate back.
  const int64_t rot_k = cache.shape().rotation(layer, 0), rot_v = cache.shape().rotation(layer, 1);
  // Block-sparse prefill (ops/sparse_prefill.h): the key blocks each complete query block keeps.
  SparsePrefillPlan sparse;
  sparse.build(q, pos, seq, n_tok, cache, layer, s, pool);
  const int max_runs = sparse.max_runs(cache);
  // Eviction statistics (kv/kv_evict.h): which queries add their probabilities to the
  // entries' scores. H2O: every query. SnapKV: the last kSnapWindow of a prompt step, and
  // every generated token (a step of one token).
  const bool evicting = cache.shape().evicting(layer);
  const bool snapkv = evicting && cache.shape().evict == KvEvict::SnapKV;
  // The batch's tokens by sequence, in batch order within one (the calling thread's buffers,
  // named by reference: the pool's threads have their own thread_locals).
  thread_local std::vector<int64_t> order_buf;
  thread_local std::vector<EvictGroup> group_buf;
  std::vector<int64_t>& order = order_buf;       // token indices, grouped by sequence
  std::vector<EvictGroup>& groups = group_buf;   // one per sequence of the batch
  thread_local std::vector<uint8_t> votes_buf;   // per token: whether it adds to the scores
  std::vector<uint8_t>& votes = votes_buf;
  if (evicting) {
    order.resize(size_t(n_tok));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return seq[a] < seq[b]; });
    groups.clear();
    votes.assign(size_t(n_tok), 1);
    for (int64_t i = 0; i < n_tok;) {
      EvictGroup g{seq[order[size_t(i)]], i, 0, -1};
      while (i < n_tok && seq[order[size_t(i)]] == g.seq) g.last_pos = std::max<int64_t>(g.last_pos, pos[order[size_t(i++)]]);
      g.n = i - g.begin;
      cache.begin_step(layer, g.seq, g.n);
      if (snapkv && g.n > 1)
        for (int64_t j = g.begin; j < i; ++j)
          votes[size_t(order[size_t(j)])] = pos[order[size_t(j)]] > g.last_pos - kSnapWindow;
      groups.push_back(g);
    }
  }
  // One task per (token, KV head): the query heads of a GQA group read each K and V
  // row once between them. An evicting layer: one task per (sequence, KV head) going through
  // the sequence's tokens in order, as each adds to its head's scores.
  // A paged cache gives one run per block: a slice of spans and runs per pool thread, grown
  // here on the calling thread (not lazily by whichever worker first takes a task, which made
  // the first steps after a warm-up allocate depending on scheduling).
  const int64_t n_span_slots = cache.max_spans(), n_run_slots = max_runs;
  thread_local std::vector<KvSpan> span_buf;   // [pool threads][n_span_slots]
  thread_local std::vector<AttnRows> run_buf;  // [pool threads][n_run_slots]
  if (span_buf.size() < size_t(pool.size() * n_span_slots)) span_buf.resize(size_t(pool.size() * n_span_slots));
  if (run_buf.size() < size_t(pool.size() * n_run_slots)) run_buf.resize(size_t(pool.size() * n_run_slots));
  KvSpan* const span_base = span_buf.data();
  AttnRows* const run_base = run_buf.data();
  auto attend_token = [&](int64_t t, int64_t hk, int thread) {
    KvSpan* spans = span_base + thread * n_span_slots;
    AttnRows* runs = run_base + thread * n_run_slots;
    int n_spans;
    if (evicting) {
      float* scores = nullptr;
      n_spans = cache.evict_span(layer, seq[t], pos[t], hk, spans, &scores);
      if (n_spans > 0)
        runs[0] = {spans[0].k, spans[0].v, spans[0].n, spans[0].k_stride, spans[0].v_stride, spans[0].kf,
                   spans[0].vf, votes[size_t(t)] ? scores : nullptr};
    } else {
      n_spans = cache.spans(layer, seq[t], pos[t], spans);
      for (int r = 0; r < n_spans; ++r) {
        const KvSpan& sp = spans[r];
        runs[r] = {static_cast<const uint8_t*>(sp.k) + kv_head_offset(sp.kf, hd, hk),
                   static_cast<const uint8_t*>(sp.v) + kv_head_offset(sp.vf, hd, hk),
                   sp.n, sp.k_stride, sp.v_stride, sp.kf, sp.vf};
      }
    }
    const int n_runs = sparse.restrict_runs(t, hk, spans, runs, n_spans);
    // StreamingLLM positions: the sinks move up to just before the window.
    alignas(64) float sink_stack[kMaxSinks * kStackHeadDim];  // [sinks][hd] of the cache type
    thread_local std::vector<float> sink_big;
    const int64_t shift = kind.type == AttnKind::Type::SinksWindow ? kind.first_recent(pos[t]) - kind.sinks : 0;
    if (shift > 0 && s.rope_dim > 0 && n_spans > 0 && spans[0].first_pos == 0) {
      const int64_t n = spans[0].n;
      float* sink_keys = hd <= kStackHeadDim ? sink_stack : grown(sink_big, n * hd);
      AttnRows& r0 = runs[0];
      if (r0.kf == AttnFormat::F16) {
        rerotate(static_cast<const uint16_t*>(r0.k), r0.k_stride / 2, n, hd, s.rope_dim, s.rope_base, shift,
                 reinterpret_cast<uint16_t*>(sink_keys));
        r0.k_stride = hd * 2;
      } else {
        // f32, or quantized rows: rotated in f32 (a handful of sink rows).
        thread_local std::vector<float> deq;
        float* rows = grown(deq, n * hd);
        for (int64_t j = 0; j < n; ++j) {
          dequantize_kv_row(r0.kf, static_cast<const uint8_t*>(r0.k) + j * r0.k_stride, rows + j * hd, hd);
          if (rot_k > 0) hadamard_rotate_blocks(rows + j * hd, hd, rot_k);  // back to RoPE's frame
        }
        rerotate(rows, hd, n, hd, s.rope_dim, s.rope_base, shift, sink_keys);
        if (rot_k > 0) hadamard_rotate_blocks(sink_keys, n * hd, rot_k);
        r0.kf = AttnFormat::F32;
        r0.k_stride = hd * 4;
      }
      r0.k = sink_keys;
    }
    for (int64_t h0 = 0; h0 < group; h0 += kAttnMaxQ) {
      const int64_t nq = std::min(kAttnMaxQ, group - h0);
      const int64_t head = hk * group + h0;
      const float* qh = q + (t * s.n_head + head) * hd;  // [nq, hd]
      float q_stack[kAttnMaxQ * kStackHeadDim];
      thread_local std::vector<float> q_big;
      float* qscaled = hd <= kStackHeadDim ? q_stack : grown(q_big, nq * hd);  // [nq, hd]
      for (int64_t i = 0; i < nq * hd; ++i) qscaled[i] = qh[i] * s.scale;
      if (rot_k > 0) hadamard_rotate_blocks(qscaled, nq * hd, rot_k);
      float* o = out + (t * s.n_head + head) * hd;
      attend(qscaled, nq, hd, runs, n_runs, o);
      if (rot_v > 0) hadamard_rotate_blocks(o, nq * hd, rot_v);
    }
  };
  if (!evicting) {
    pool.parallel_for(n_tok * s.n_head_kv, [&](int64_t task, int thread) {
      attend_token(task / s.n_head_kv, task % s.n_head_kv, thread);
    });
    return;
  }
  pool.parallel_for(int64_t(groups.size()) * s.n_head_kv, [&](int64_t task, int thread) {
    const EvictGroup& g = groups[size_t(task / s.n_head_kv)];
    for (int64_t j = g.begin; j < g.begin + g.n; ++j) attend_token(order[size_t(j)], task % s.n_head_kv, thread);
  });
  for (const EvictGroup& g : groups) cache.after_step(layer, g.seq, g.n);
}

}  // namespace peregrine
