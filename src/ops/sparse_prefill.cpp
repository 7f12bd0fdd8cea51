#include "ops/sparse_prefill.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/status.h"
#include "kv/hadamard.h"
#include "quant/dequantize.h"

namespace peregrine {
namespace {

// Query block b has b + 1 candidate key blocks, of which 0, b - 1 and b are forced: whether
// selecting could drop any (otherwise the block attends densely).
bool selects(const SparsePrefill& sp, int64_t b) {
  const int64_t forced = std::min<int64_t>(b + 1, 3);
  return b + 1 > forced + (sp.mode == SparsePrefill::Mode::TopK ? sp.top_k : 0);
}

// The rule of the header over estimates est[0..b]; keep[b + 1] flags. `order` is scratch.
void select_blocks(const SparsePrefill& sp, const double* est, int64_t b, uint8_t* keep,
                   std::vector<int64_t>& order) {
  std::fill(keep, keep + b + 1, uint8_t(0));
  keep[0] = keep[b - 1] = keep[b] = 1;  // b >= 2 here: three distinct blocks
  order.resize(size_t(b - 2));
  std::iota(order.begin(), order.end(), int64_t(1));  // the others, 1..b-2
  std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) { return est[x] > est[y]; });
  if (sp.mode == SparsePrefill::Mode::TopK) {
    for (size_t i = 0; i < order.size() && int64_t(i) < sp.top_k; ++i) keep[order[i]] = 1;
    return;
  }
  double mx = est[0];
  for (int64_t c = 1; c <= b; ++c) mx = std::max(mx, est[c]);
  double z = 0.0;
  for (int64_t c = 0; c <= b; ++c) z += std::exp(est[c] - mx);
  double mass = (std::exp(est[0] - mx) + std::exp(est[b - 1] - mx) + std::exp(est[b] - mx)) / z;
  for (const int64_t c : order) {
    if (sp.top_p < 1.0 && mass >= sp.top_p) break;  // every block has mass > 0: P = 1 keeps all
    keep[c] = 1;
    mass += std::exp(est[c] - mx) / z;
  }
}

// One head's key row of n values as floats (never a KIVI key group: those layers are dense).
void key_row(AttnFormat f, const uint8_t* row, float* out, int64_t n) {
  switch (f) {
    case AttnFormat::F32: std::copy_n(reinterpret_cast<const float*>(row), n, out); return;
    case AttnFormat::F16: dequantize_row_f16(reinterpret_cast<const uint16_t*>(row), out, n); return;
    case AttnFormat::Q8_0: dequantize_row_q8_0(reinterpret_cast<const BlockQ8_0*>(row), out, n); return;
    case AttnFormat::Q4_0: dequantize_row_q4_0(reinterpret_cast<const BlockQ4_0*>(row), out, n); return;
    case AttnFormat::Q2: dequantize_row_q2(reinterpret_cast<const BlockQ2*>(row), out, n); return;
    case AttnFormat::Q2Channel: break;
  }
  PG_ASSERT(false && "no key row layout");
}

}  // namespace

void SparsePrefillPlan::build(const float* q, const int32_t* pos, const int32_t* seq, int64_t n_tok,
                              const KvCache& cache, int64_t layer, const AttentionShape& s, ThreadPool& pool) {
  const KvShape& kv = cache.shape();
  const SparsePrefill& sp = kv.sparse;
  const int64_t B = sp.block;
  blocks_.clear();
  if (!sp.on() || n_tok < B || kv.kind(layer).type != AttnKind::Type::Global || kv.kivi(layer) ||
      kv.evicting(layer))
    return;
  block_ = B;
  n_kv_ = s.n_head_kv;
  const int64_t hd = s.head_dim, group = s.n_head / s.n_head_kv;

  // Tokens in (seq, pos) order: a complete query block is B consecutive ones, its positions.
  order_.resize(size_t(n_tok));
  std::iota(order_.begin(), order_.end(), 0);
  std::sort(order_.begin(), order_.end(),
            [&](int32_t x, int32_t y) { return seq[x] != seq[y] ? seq[x] < seq[y] : pos[x] < pos[y]; });
  size_t n_lists = 0;
  for (size_t i = 0; i < order_.size();) {
    const int32_t t0 = order_[i];
    const int64_t b = pos[t0] / B;
    size_t j = i + 1;
    while (j < order_.size() && seq[order_[j]] == seq[t0] && pos[order_[j]] / B == b) ++j;
    // Positions of a sequence are distinct within a batch: B of them in the block fill it.
    if (int64_t(j - i) == B && selects(sp, b)) {
      blocks_.push_back({seq[t0], b, i, n_lists});
      n_lists += size_t(n_kv_ * (b + 1));
    }
    i = j;
  }
  if (blocks_.empty()) return;
  token_block_.assign(size_t(n_tok), -1);
  for (size_t i = 0; i < blocks_.size(); ++i)
    for (int64_t j = 0; j < B; ++j) token_block_[size_t(order_[blocks_[i].first + size_t(j)])] = int32_t(i);
  kept_.resize(n_lists);
  n_kept_.resize(blocks_.size() * size_t(n_kv_));

  // Pooled keys, once per sequence for the key blocks its query blocks reach (blocks_ is in
  // (seq, b) order): [n_kb][n_kv][hd] per sequence, in the frame the cache stores them.
  struct SeqKeys {
    int32_t seq;
    int64_t n_kb;       // key blocks 0..n_kb-1
    int64_t first_task;
    size_t offset;      // in pooled_k
  };
  std::vector<SeqKeys> seqs;
  for (const QueryBlock& qb : blocks_) {
    if (seqs.empty() || seqs.back().seq != qb.seq) seqs.push_back({qb.seq, 0, 0, 0});
    seqs.back().n_kb = qb.b + 1;
  }
  int64_t n_tasks = 0;
  size_t n_pooled = 0;
  for (SeqKeys& sk : seqs) {
    sk.first_task = n_tasks;
    sk.offset = n_pooled;
    n_tasks += sk.n_kb;
    n_pooled += size_t(sk.n_kb * n_kv_ * hd);
  }
  std::vector<double> pooled_k(n_pooled);
  const AttnFormat kf = kv.format(layer, 0);
  pool.parallel_for(n_tasks, [&](int64_t task, int) {  // one key block of one sequence
    size_t si = 0;
    while (si + 1 < seqs.size() && seqs[si + 1].first_task <= task) ++si;
    const SeqKeys& sk = seqs[si];
    const int64_t c = task - sk.first_task;
    double* pk = pooled_k.data() + sk.offset + size_t(c * n_kv_ * hd);  // [n_kv][hd]
    thread_local std::vector<float> row;
    row.resize(size_t(hd));
    for (int64_t p = c * B; p < (c + 1) * B; ++p) {
      const auto* r = static_cast<const uint8_t*>(cache.k(layer, sk.seq, p));
      for (int64_t hk = 0; hk < n_kv_; ++hk) {
        key_row(kf, r + kv_head_offset(kf, hd, hk), row.data(), hd);
        for (int64_t i = 0; i < hd; ++i) pk[hk * hd + i] += double(row[size_t(i)]);
      }
    }
    for (int64_t i = 0; i < n_kv_ * hd; ++i) pk[i] /= double(B);
  });

  // Pooled query and selection per (query block, KV head).
  const int64_t rot_k = kv.rotation(layer, 0);
  pool.parallel_for(int64_t(blocks_.size()) * n_kv_, [&](int64_t task, int) {
    const QueryBlock& qb = blocks_[size_t(task / n_kv_)];
    const int64_t hk = task % n_kv_;
    thread_local std::vector<double> pq, est;
    thread_local std::vector<float> pq_rot;
    thread_local std::vector<int64_t> order;
    thread_local std::vector<uint8_t> keep;
    pq.assign(size_t(hd), 0.0);
    for (int64_t j = 0; j < B; ++j) {
      const int64_t t = order_[qb.first + size_t(j)];
      const float* qh = q + (t * s.n_head + hk * group) * hd;  // [group, hd]
      for (int64_t h = 0; h < group; ++h)
        for (int64_t i = 0; i < hd; ++i) pq[size_t(i)] += double(qh[h * hd + i]);
    }
    const double norm = double(s.scale) / double(B * group);
    for (double& x : pq) x *= norm;
    if (rot_k > 0) {  // the kernel scores rotated queries against rotated keys
      pq_rot.assign(pq.begin(), pq.end());
      hadamard_rotate_blocks(pq_rot.data(), hd, rot_k);
      pq.assign(pq_rot.begin(), pq_rot.end());
    }
    const SeqKeys* sk = &seqs[0];
    while (sk->seq != qb.seq) ++sk;
    est.resize(size_t(qb.b + 1));
    for (int64_t c = 0; c <= qb.b; ++c) {
      const double* pk = pooled_k.data() + sk->offset + size_t((c * n_kv_ + hk) * hd);
      double dot = 0.0;
      for (int64_t i = 0; i < hd; ++i) dot += pq[size_t(i)] * pk[i];
      est[size_t(c)] = dot;
    }
    keep.resize(size_t(qb.b + 1));
    select_blocks(sp, est.data(), qb.b, keep.data(), order);
    int32_t* list = kept_.data() + qb.kept + size_t(hk * (qb.b + 1));
    int32_t n = 0;
    for (int64_t c = 0; c <= qb.b; ++c)
      if (keep[size_t(c)]) list[n++] = int32_t(c);
    n_kept_[size_t(task)] = n;
  });
}

int SparsePrefillPlan::max_runs(const KvCache& cache) const {
  // Each key-block boundary splits at most one run.
  if (empty()) return cache.max_spans();
  return cache.max_spans() + int((cache.shape().n_ctx + block_ - 1) / block_);
}

int SparsePrefillPlan::restrict_runs(int64_t t, int64_t hk, const KvSpan* spans, AttnRows* runs, int n_runs) const {
  if (blocks_.empty() || token_block_[size_t(t)] < 0) return n_runs;
  const size_t task = size_t(token_block_[size_t(t)] * n_kv_ + hk);
  const QueryBlock& qb = blocks_[size_t(token_block_[size_t(t)])];
  const int32_t* kept = kept_.data() + qb.kept + size_t(hk * (qb.b + 1));
  thread_local std::vector<AttnRows> in;
  in.assign(runs, runs + n_runs);
  // Runs hold ascending, disjoint positions (a global layer): walk them beside the kept blocks.
  int n = 0, r = 0;
  for (int32_t i = 0; i < n_kept_[task]; ++i) {
    const int64_t lo = kept[i] * block_, hi = lo + block_;  // the key block's positions
    while (r < n_runs && spans[r].first_pos + in[size_t(r)].n <= lo) ++r;
    for (int u = r; u < n_runs && spans[u].first_pos < hi; ++u) {
      const AttnRows& run = in[size_t(u)];
      const int64_t first = spans[u].first_pos;
      const int64_t j = std::max(lo, first) - first, end = std::min(hi, first + run.n) - first;
      AttnRows& piece = runs[n++];
      piece = run;
      piece.k = static_cast<const uint8_t*>(run.k) + j * run.k_stride;
      piece.v = static_cast<const uint8_t*>(run.v) + j * run.v_stride;
      piece.n = end - j;
      if (run.weights) piece.weights = run.weights + j;
    }
  }
  return n;
}

std::vector<int64_t> SparsePrefillPlan::kept(int64_t seq, int64_t b, int64_t hk) const {
  std::vector<int64_t> out;
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const QueryBlock& qb = blocks_[i];
    if (qb.seq != seq || qb.b != b) continue;
    const int32_t* kept = kept_.data() + qb.kept + size_t(hk * (qb.b + 1));
    out.assign(kept, kept + n_kept_[i * size_t(n_kv_) + size_t(hk)]);
  }
  return out;
}

}  // namespace peregrine
