#include "kv/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

#include <fmt/format.h>

#include "kv/hadamard.h"
#include "kv/kv_evict.h"
#include "quant/dequantize.h"
#include "quant/fp16.h"
#include "quant/quantize.h"

namespace peregrine {

KvCache::KvCache(const KvShape& shape) : shape_(shape) {
  PG_ASSERT(shape.validate().ok());
  size_t off = 0;
  for (int64_t l = 0; l < shape.n_layer; ++l) {
    slots_.push_back(shape.slots(l));
    ring_.push_back(shape.kind(l).windowed() ? slots_.back() - shape.kind(l).sinks : 0);
    layer_base_.push_back(off);
    plane_.push_back(size_t(shape.layer_rows(l)) * shape.row_bytes(l, 0));
    off += plane_.back() + size_t(shape.layer_rows(l)) * shape.row_bytes(l, 1);
  }
  for (int64_t l = 0; l < shape.n_layer; ++l) {
    kivi_base_.push_back(off);
    off += size_t(shape.n_seq) * shape.side_bytes(l);
  }
  bytes_ = off;
  data_ = HugeBuffer(off);
  PG_ASSERT(data_.data() != nullptr);  // check_kv_memory() keeps requests within the machine
  tables_.assign(size_t(shape.n_seq * shape.max_blocks_per_seq()), -1);
  held_.resize(size_t(shape.n_layer * shape.n_seq));
  for (int64_t l = 0; l < shape.n_layer; ++l)
    for (int64_t q = 0; q < shape.n_seq; ++q) held(l, q).lo = shape.kind(l).sinks;
  int64_t state_off = 0;
  for (int64_t l = 0; l < shape.n_layer; ++l) {
    state_base_.push_back(state_off);
    state_off += shape.state(l) * shape.n_seq;
  }
  state_.assign(size_t(state_off), 0.0f);
  bytes_ += size_t(state_off) * sizeof(float);
  int64_t heads = 0;
  for (int64_t l = 0; l < shape.n_layer; ++l) {
    evict_base_.push_back(shape.evicting(l) ? heads : -1);
    if (shape.evicting(l)) heads += shape.n_seq * shape.n_head_kv();
  }
  if (heads > 0) {
    evict_n_.assign(size_t(heads), 0);
    evict_pos_.assign(size_t(heads * shape.evict_capacity()), 0);
    evict_score_.assign(size_t(heads * shape.evict_capacity()), 0.0f);
    snap_done_.assign(size_t(shape.n_layer * shape.n_seq), 0);
  }
  checkpoint_pos_.assign(size_t(shape.n_seq), -1);
}

int64_t KvCache::slot(int64_t layer, int64_t pos) const {
  const AttnKind& k = shape_.kind(layer);
  if (!k.windowed() || pos < k.sinks) return pos;
  const int64_t ring = slots_[size_t(layer)] - k.sinks;
  return k.sinks + (pos - k.sinks) % ring;
}

size_t KvCache::offset(int64_t layer, int64_t seq, int64_t pos, int kv) const {
  int64_t row;
  if (paged_layer(layer)) {
    const int64_t bs = shape_.block_size;
    const int32_t block = tables_[size_t(seq * shape_.max_blocks_per_seq() + pos / bs)];
    PG_ASSERT(block >= 0);
    row = block * bs + pos % bs;
  } else {
    row = seq * slots_[size_t(layer)] + slot(layer, pos);
  }
  return plane_offset(layer, kv) + size_t(row) * shape_.row_bytes(layer, kv);
}

uint16_t* KvCache::residual(int64_t layer, int64_t seq, int64_t pos, int kv) const {
  const int64_t ring = shape_.kivi_ring();
  const size_t row = size_t((seq * 2 + kv) * ring + pos % ring);
  return reinterpret_cast<uint16_t*>(data_.data() + kivi_base_[size_t(layer)] + row * size_t(shape_.kv_dim) * 2);
}

Status KvCache::set_block_table(int64_t seq, const int32_t* blocks, int64_t n) {
  const int64_t mb = shape_.max_blocks_per_seq();
  if (!shape_.paged()) return make_error("the KV cache is not paged");
  if (seq < 0 || seq >= shape_.n_seq) return make_error("sequence {} is outside 0..{}", seq, shape_.n_seq - 1);
  if (n < 0 || n > mb) return make_error("block table of {} blocks: at most {} fit the context", n, mb);
  for (int64_t i = 0; i < n; ++i)
    if (blocks[i] < 0 || blocks[i] >= shape_.n_blocks)
      return make_error("block {} is outside 0..{}", blocks[i], shape_.n_blocks - 1);
  int32_t* t = tables_.data() + seq * mb;
  std::copy_n(blocks, n, t);
  std::fill(t + n, t + mb, -1);
  return Status::Ok();
}

bool KvCache::holds(int64_t seq, int64_t pos) const {
  if (!shape_.paged() || pos < 0) return true;
  const int64_t b = pos / shape_.block_size;
  return b < shape_.max_blocks_per_seq() && tables_[size_t(seq * shape_.max_blocks_per_seq() + b)] >= 0;
}

void KvCache::copy_block(int32_t src, int32_t dst) {
  PG_ASSERT(shape_.paged() && src >= 0 && dst >= 0 && src < shape_.n_blocks && dst < shape_.n_blocks);
  for (int64_t l = 0; l < shape_.n_layer; ++l) {
    if (!paged_layer(l)) continue;  // (layers without K/V are not paged)
    for (int kv = 0; kv < 2; ++kv) {
      const size_t block_bytes = size_t(shape_.block_size) * shape_.row_bytes(l, kv);
      uint8_t* base = data_.data() + plane_offset(l, kv);
      std::memcpy(base + size_t(dst) * block_bytes, base + size_t(src) * block_bytes, block_bytes);
    }
  }
}

// --- Validity, rewind, fork ----------------------------------------------------------------

bool KvCache::written(int64_t layer, int64_t seq, int64_t pos) const {
  const Held& h = held(layer, seq);
  if (pos < 0 || pos >= h.end) return false;
  return ring_[size_t(layer)] == 0 || pos < shape_.kind(layer).sinks || pos >= h.lo;
}

int64_t KvCache::n_pos(int64_t seq) const {
  int64_t n = std::numeric_limits<int64_t>::max();
  for (int64_t l = 0; l < shape_.n_layer; ++l)
    if (shape_.keeps(l)) n = std::min(n, held(l, seq).end);
  return n == std::numeric_limits<int64_t>::max() ? 0 : n;
}

int64_t KvCache::state_pos(int64_t seq) const {
  int64_t n = -1;
  for (int64_t l = 0; l < shape_.n_layer; ++l)
    if (shape_.state(l) > 0) n = n < 0 ? held(l, seq).end : std::min(n, held(l, seq).end);
  return n;
}

void KvCache::state_advanced(int64_t layer, int64_t seq, int64_t n) {
  PG_ASSERT(shape_.state(layer) > 0 && seq >= 0 && seq < shape_.n_seq && n >= held(layer, seq).end);
  held(layer, seq).end = n;
}

void KvCache::checkpoint(int64_t seq) {
  PG_ASSERT(seq >= 0 && seq < shape_.n_seq);
  if (!shape_.recurrent()) return;
  if (checkpoint_.empty()) checkpoint_.assign(state_.size(), 0.0f);
  for (int64_t l = 0; l < shape_.n_layer; ++l) {
    const int64_t n = shape_.state(l);
    if (n > 0) std::copy_n(state_.data() + state_offset(l, seq), n, checkpoint_.data() + state_offset(l, seq));
  }
  checkpoint_pos_[size_t(seq)] = state_pos(seq);
}

void KvCache::check_valid(int64_t layer, int64_t seq, int64_t first, int64_t last) const {
#ifndef NDEBUG
  // Positions are valid as ranges: the ends of a run inside one range cover the run.
  const int64_t sinks = shape_.kind(layer).sinks;
  const bool ok = first > last || (written(layer, seq, first) && written(layer, seq, last) &&
                                   (ring_[size_t(layer)] == 0 || first >= sinks || last < sinks));
  if (!ok) {
    const Held& h = held(layer, seq);
    std::fprintf(stderr,
                 "internal error: KV cache layer %lld (%s) sequence %lld: positions %lld..%lld are read "
                 "but only [0, %lld) was written%s\n",
                 (long long)layer, shape_.kind(layer).describe().c_str(), (long long)seq, (long long)first,
                 (long long)last, (long long)h.end,
                 ring_[size_t(layer)] == 0 ? "" : fmt::format(" and the ring holds [{}, {})", h.lo, h.end).c_str());
    std::abort();
  }
#else
  (void)layer, (void)seq, (void)first, (void)last;
#endif
}

int64_t KvCache::kv_keepable(int64_t seq, int64_t n_keep) const {
  int64_t kept = n_keep;
  for (int64_t l = 0; l < shape_.n_layer; ++l) {
    if (!shape_.kind(l).keeps_kv()) continue;
    const Held& h = held(l, seq);
    int64_t k = std::min(n_keep, h.end);
    // A ring that no longer holds the oldest position k will see keeps only its sinks.
    const AttnKind& kind = shape_.kind(l);
    const int64_t first = kind.first_recent(k);
    if (ring_[size_t(l)] > 0 && first < k && first < h.lo) k = std::min(k, kind.sinks);
    // A KIVI residual that no longer holds what position k reads in f16 keeps nothing.
    if (shape_.kivi(l) && shape_.kivi_quantized(k) < h.lo) k = 0;
    kept = std::min(kept, k);
  }
  return kept;
}

int64_t KvCache::rewind(int64_t seq, int64_t n_keep) {
  PG_ASSERT(seq >= 0 && seq < shape_.n_seq && n_keep >= 0);
  int64_t kept = kv_keepable(seq, n_keep);
  const int64_t state_end = state_pos(seq);
  if (state_end > kept) {
    // The state has consumed positions past the kept ones: back to the checkpoint when it
    // lies at or before them (and the K/V layers still hold what it attends to), else empty.
    const int64_t ckpt = checkpoint_pos_[size_t(seq)];
    int64_t target = ckpt >= 0 && ckpt <= kept ? ckpt : 0;
    if (kv_keepable(seq, target) < target) target = 0;
    kept = target;
    for (int64_t l = 0; l < shape_.n_layer; ++l) {
      const int64_t n = shape_.state(l);
      if (n == 0) continue;
      float* s = state_.data() + state_offset(l, seq);
      if (kept > 0) std::copy_n(checkpoint_.data() + state_offset(l, seq), n, s);
      else std::fill_n(s, n, 0.0f);
      held(l, seq).end = kept;
    }
  }
  if (kept == 0 || (checkpoint_pos_[size_t(seq)] > kept)) checkpoint_pos_[size_t(seq)] = -1;
  for (int64_t l = 0; l < shape_.n_layer; ++l) {
    if (!shape_.evicting(l)) continue;
    for (int64_t h = 0; h < shape_.n_head_kv(); ++h) {
      const size_t e = evict_index(l, seq, h);
      const int32_t* p = evict_pos_.data() + e * size_t(shape_.evict_capacity());
      evict_n_[e] = int32_t(std::lower_bound(p, p + evict_n_[e], int32_t(kept)) - p);
    }
    if (kept == 0) snap_done_[size_t(l * shape_.n_seq + seq)] = 0;
  }
  for (int64_t l = 0; l < shape_.n_layer; ++l) {
    Held& h = held(l, seq);
    h.end = std::min(h.end, kept);
  }
  return kept;
}

void KvCache::fork(int64_t src_seq, int64_t dst_seq) {
  PG_ASSERT(src_seq >= 0 && dst_seq >= 0 && src_seq < shape_.n_seq && dst_seq < shape_.n_seq);
  if (src_seq == dst_seq) return;
  for (int64_t l = 0; l < shape_.n_layer; ++l) {
    held(l, dst_seq) = held(l, src_seq);
    if (const int64_t n = shape_.state(l); n > 0)
      std::copy_n(state_.data() + state_offset(l, src_seq), n, state_.data() + state_offset(l, dst_seq));
    if (shape_.kivi(l)) {  // the residual rings, K and V
      const size_t ring_bytes = 2 * size_t(shape_.kivi_ring() * shape_.kv_dim) * 2;
      uint8_t* base = data_.data() + kivi_base_[size_t(l)];
      std::memcpy(base + size_t(dst_seq) * ring_bytes, base + size_t(src_seq) * ring_bytes, ring_bytes);
    }
    if (shape_.evicting(l)) {  // every head's entries, positions and scores
      const int64_t cap = shape_.evict_capacity();
      snap_done_[size_t(l * shape_.n_seq + dst_seq)] = snap_done_[size_t(l * shape_.n_seq + src_seq)];
      for (int64_t h = 0; h < shape_.n_head_kv(); ++h) {
        const size_t es = evict_index(l, src_seq, h), ed = evict_index(l, dst_seq, h);
        const int32_t n = evict_n_[es];
        evict_n_[ed] = n;
        std::copy_n(evict_pos_.data() + es * size_t(cap), n, evict_pos_.data() + ed * size_t(cap));
        std::copy_n(evict_score_.data() + es * size_t(cap), n, evict_score_.data() + ed * size_t(cap));
        for (int kv = 0; kv < 2; ++kv)
          std::memcpy(head_row(l, dst_seq, h, 0, kv), head_row(l, src_seq, h, 0, kv),
                      size_t(n) * (shape_.row_bytes(l, kv) / size_t(shape_.n_head_kv())));
      }
      continue;
    }
    if (!shape_.kind(l).keeps_kv() || paged_layer(l)) continue;  // paged: the block table below
    // A ring: all its slots; a contiguous global layer: the written rows.
    const int64_t rows = ring_[size_t(l)] > 0 ? slots_[size_t(l)] : held(l, src_seq).end;
    for (int kv = 0; kv < 2; ++kv) {
      const size_t seq_bytes = size_t(slots_[size_t(l)]) * shape_.row_bytes(l, kv);
      uint8_t* base = data_.data() + plane_offset(l, kv);
      std::memcpy(base + size_t(dst_seq) * seq_bytes, base + size_t(src_seq) * seq_bytes,
                  size_t(rows) * shape_.row_bytes(l, kv));
    }
  }
  checkpoint_pos_[size_t(dst_seq)] = -1;
  if (shape_.paged()) {
    const int64_t mb = shape_.max_blocks_per_seq();
    std::copy_n(tables_.data() + src_seq * mb, mb, tables_.data() + dst_seq * mb);
  }
}

void KvCache::adopt_prefix(int64_t seq, int64_t n) {
  PG_ASSERT(shape_.prefix_sharing() && seq >= 0 && seq < shape_.n_seq && n >= 0);
  for (int64_t l = 0; l < shape_.n_layer; ++l)
    if (shape_.kind(l).keeps_kv()) held(l, seq).end = n;
}

int KvCache::max_spans() const {
  // Paged: a run per block (KIVI: its groups' blocks, then up to two of its f16 ring).
  return shape_.paged() ? int(std::max<int64_t>(3, shape_.max_blocks_per_seq() + 2)) : 3;
}

void KvCache::store(int64_t layer, int64_t seq, int64_t pos, const float* k, const float* v) {
  Held& h = held(layer, seq);
#ifndef NDEBUG
  if (pos > h.end) {
    std::fprintf(stderr,
                 "internal error: KV cache layer %lld sequence %lld: position %lld stored past the end "
                 "(%lld): positions in between were never written\n",
                 (long long)layer, (long long)seq, (long long)pos, (long long)h.end);
    std::abort();
  }
#endif
  if (const int64_t ring = ring_[size_t(layer)]; ring > 0) {
    // Writing pos evicts pos - ring; a ring position already evicted (a restart, or a rewind
    // past what the ring held) starts the held range afresh; a sink empties the ring part.
    const int64_t sinks = shape_.kind(layer).sinks;
    if (pos < sinks) h.lo = sinks;
    else if (pos < h.lo) h.lo = pos;
    else h.lo = std::max(h.lo, pos + 1 - ring);
  }
  if (shape_.kivi(layer)) {  // the residual ring's held range, as a window ring's
    const int64_t ring = shape_.kivi_ring();
    h.lo = pos < h.lo ? pos : std::max(h.lo, pos + 1 - ring);
  }
  h.end = pos + 1;
  // Rotated rows (see "Rotation") go through a per-thread copy.
  thread_local std::vector<float> rotated[2];
  const float* in[2] = {k, v};
  for (int kv = 0; kv < 2; ++kv)
    if (const int64_t block = shape_.rotation(layer, kv); block > 0) {
      rotated[kv].assign(in[kv], in[kv] + shape_.kv_dim);
      hadamard_rotate_blocks(rotated[kv].data(), shape_.kv_dim, block);
      in[kv] = rotated[kv].data();
    }
  if (shape_.kivi(layer)) return store_kivi(layer, seq, pos, in[0], in[1]);
  if (shape_.evicting(layer)) return store_evicting(layer, seq, pos, in[0], in[1]);
  for (int kv = 0; kv < 2; ++kv)
    store_row(shape_.format(layer, kv), in[kv], shape_.kv_dim, data_.data() + offset(layer, seq, pos, kv));
}

uint8_t* KvCache::head_row(int64_t layer, int64_t seq, int64_t h, int64_t slot, int kv) const {
  const size_t row = shape_.row_bytes(layer, kv) / size_t(shape_.n_head_kv());  // one head's part
  const int64_t cap = shape_.evict_capacity();
  return data_.data() + plane_offset(layer, kv) + size_t((seq * shape_.n_head_kv() + h) * cap + slot) * row;
}

void KvCache::store_evicting(int64_t layer, int64_t seq, int64_t pos, const float* k, const float* v) {
  const int64_t hd = shape_.kv_dim / shape_.n_head_kv(), cap = shape_.evict_capacity();
  for (int64_t h = 0; h < shape_.n_head_kv(); ++h) {
    const size_t e = evict_index(layer, seq, h);
    int32_t& n = evict_n_[e];
    int32_t* p = evict_pos_.data() + e * size_t(cap);
    while (n > 0 && p[n - 1] >= pos) --n;  // writing pos again drops what followed it
    PG_ASSERT(n < cap);                     // after_step() leaves room for a step
    p[n] = int32_t(pos);
    evict_score_[e * size_t(cap) + size_t(n)] = 0.0f;
    for (int kv = 0; kv < 2; ++kv)
      store_row(shape_.format(layer, kv), (kv == 0 ? k : v) + h * hd, hd, head_row(layer, seq, h, n, kv));
    ++n;
  }
}

int KvCache::evict_span(int64_t layer, int64_t seq, int64_t pos, int64_t h, KvSpan* out, float** scores) {
  const size_t e = evict_index(layer, seq, h);
  const int64_t cap = shape_.evict_capacity();
  const int32_t* p = evict_pos_.data() + e * size_t(cap);
  const int64_t m = std::upper_bound(p, p + evict_n_[e], int32_t(pos)) - p;  // causal: entries up to pos
  *scores = evict_score_.data() + e * size_t(cap);
  if (m == 0) return 0;
  const int64_t n_head = shape_.n_head_kv();
  *out = {head_row(layer, seq, h, 0, 0), head_row(layer, seq, h, 0, 1), m, p[0],
          int64_t(shape_.row_bytes(layer, 0)) / n_head, int64_t(shape_.row_bytes(layer, 1)) / n_head,
          shape_.format(layer, 0), shape_.format(layer, 1)};
  return 1;
}

int64_t KvCache::evict_count(int64_t layer, int64_t seq, int64_t h) const { return evict_n_[evict_index(layer, seq, h)]; }

const int32_t* KvCache::evict_positions(int64_t layer, int64_t seq, int64_t h) const {
  return evict_pos_.data() + evict_index(layer, seq, h) * size_t(shape_.evict_capacity());
}

void KvCache::begin_step(int64_t layer, int64_t seq, int64_t n_tok) {
  if (!shape_.evicting(layer) || shape_.evict != KvEvict::SnapKV || n_tok < 2) return;
  snap_done_[size_t(layer * shape_.n_seq + seq)] = 0;  // a new prompt: compress it when generation starts
  const int64_t cap = shape_.evict_capacity();
  for (int64_t h = 0; h < shape_.n_head_kv(); ++h) {
    const size_t e = evict_index(layer, seq, h);
    std::fill_n(evict_score_.data() + e * size_t(cap), evict_n_[e], 0.0f);
  }
}

void KvCache::compact(int64_t layer, int64_t seq, int64_t h, const std::vector<int32_t>& keep) {
  const size_t e = evict_index(layer, seq, h);
  const int64_t cap = shape_.evict_capacity();
  int32_t* p = evict_pos_.data() + e * size_t(cap);
  float* sc = evict_score_.data() + e * size_t(cap);
  const size_t rk = shape_.row_bytes(layer, 0) / size_t(shape_.n_head_kv());
  const size_t rv = shape_.row_bytes(layer, 1) / size_t(shape_.n_head_kv());
  for (size_t i = 0; i < keep.size(); ++i) {  // ascending: a row only moves down
    const int64_t from = keep[i];
    if (from == int64_t(i)) continue;
    p[i] = p[from];
    sc[i] = sc[from];
    std::memcpy(head_row(layer, seq, h, int64_t(i), 0), head_row(layer, seq, h, from, 0), rk);
    std::memcpy(head_row(layer, seq, h, int64_t(i), 1), head_row(layer, seq, h, from, 1), rv);
  }
  evict_n_[e] = int32_t(keep.size());
}

void KvCache::after_step(int64_t layer, int64_t s, int64_t n_tok) {
  if (!shape_.evicting(layer)) return;
  const int64_t cap = shape_.evict_capacity(), budget = shape_.evict_budget;
  if (shape_.evict == KvEvict::SnapKV) {
    // Compress a prompt once generation starts (a step of one token), then keep what comes.
    uint8_t& done = snap_done_[size_t(layer * shape_.n_seq + s)];
    if (n_tok > 1 || done) return;
    done = 1;
  }
  thread_local std::vector<int32_t> keep;
  for (int64_t h = 0; h < shape_.n_head_kv(); ++h) {
    const size_t e = evict_index(layer, s, h);
    const int64_t n = evict_n_[e];
    if (n <= budget) continue;
    const int32_t* p = evict_pos_.data() + e * size_t(cap);
    const float* sc = evict_score_.data() + e * size_t(cap);
    if (shape_.evict == KvEvict::H2O) h2o_select(p, sc, n, budget, keep);
    else snapkv_select(p, sc, n, budget, keep);
    compact(layer, s, h, keep);
  }
}

void KvCache::store_row(AttnFormat f, const float* x, int64_t n, uint8_t* d) {
  switch (f) {
    case AttnFormat::F32: std::memcpy(d, x, size_t(n) * 4); break;
    case AttnFormat::F16: quantize_row_f16_ref(x, reinterpret_cast<uint16_t*>(d), n); break;
    case AttnFormat::Q8_0: quantize_row_q8_0_ref(x, reinterpret_cast<BlockQ8_0*>(d), n); break;
    case AttnFormat::Q4_0: quantize_row_q4_0_ref(x, reinterpret_cast<BlockQ4_0*>(d), n); break;
    case AttnFormat::Q2:
    case AttnFormat::Q2Channel: PG_ASSERT(false && "KIVI rows are stored by store_kivi"); break;
  }
}

void KvCache::store_kivi(int64_t layer, int64_t seq, int64_t pos, const float* k, const float* v) {
  const int64_t n = shape_.kv_dim;
  quantize_row_f16_ref(k, residual(layer, seq, pos, 0), n);
  quantize_row_f16_ref(v, residual(layer, seq, pos, 1), n);
  // Values: 2-bit per token (or the V type given beside KIVI keys).
  uint8_t* vd = data_.data() + offset(layer, seq, pos, 1);
  if (shape_.format(layer, 1) == AttnFormat::Q2) quantize_row_q2_ref(v, reinterpret_cast<BlockQ2*>(vd), n);
  else store_row(shape_.format(layer, 1), v, n, vd);
  if (shape_.format(layer, 0) != AttnFormat::Q2Channel) {  // KIVI values beside other keys
    store_row(shape_.format(layer, 0), k, n, data_.data() + offset(layer, seq, pos, 0));
    return;
  }
  if ((pos + 1) % kKiviGroup != 0) return;
  // The group's last position: its keys, per channel, from the f16 residual (which holds the
  // whole group: the ring is longer than a group).
  thread_local std::vector<float> rows;  // [kKiviGroup][kv_dim]
  rows.resize(size_t(kKiviGroup * n));
  const int64_t first = pos + 1 - kKiviGroup;
  for (int64_t j = 0; j < kKiviGroup; ++j) {
    const uint16_t* r = residual(layer, seq, first + j, 0);
    for (int64_t i = 0; i < n; ++i) rows[size_t(j * n + i)] = fp16_to_f32(r[i]);
  }
  quantize_group_q2_channel(rows.data(), n, n, reinterpret_cast<BlockQ2*>(data_.data() + offset(layer, seq, first, 0)));
}

int KvCache::spans(int64_t layer, int64_t seq, int64_t pos, KvSpan* out) const {
  const AttnKind& kind = shape_.kind(layer);
  const AttnFormat kf = shape_.format(layer, 0), vf = shape_.format(layer, 1);
  const int64_t ks = int64_t(shape_.row_bytes(layer, 0)), vs = int64_t(shape_.row_bytes(layer, 1));
  int n = 0;
  auto add = [&](int64_t first, int64_t count) {  // positions [first, first + count), no wrap
    if (count <= 0) return;
    check_valid(layer, seq, first, first + count - 1);
    out[n++] = {k(layer, seq, first), v(layer, seq, first), count, first, ks, vs, kf, vf};
  };
  if (shape_.kivi(layer)) {
    // Whole 2-bit groups up to kivi_quantized(pos) (per block when paged), then the f16 ring.
    const int64_t q = shape_.kivi_quantized(pos);
    const int64_t run = paged_layer(layer) ? shape_.block_size : q;
    for (int64_t first = 0; first < q; first += run) {
      const int64_t count = std::min(run, q - first);
      check_valid(layer, seq, first, first + count - 1);
      out[n++] = {k(layer, seq, first), v(layer, seq, first), count, first,
                  kf == AttnFormat::Q2Channel ? ks * kKiviGroup : ks, vs, kf, vf};
    }
    const int64_t ring = shape_.kivi_ring();
    const int64_t until_wrap = ring - q % ring, count = pos + 1 - q;
#ifndef NDEBUG
    if (count > 0 && q < held(layer, seq).lo) {
      std::fprintf(stderr, "internal error: KIVI layer %lld sequence %lld: position %lld reads %lld in f16 but the ring holds [%lld, %lld)\n",
                   (long long)layer, (long long)seq, (long long)pos, (long long)q, (long long)held(layer, seq).lo,
                   (long long)held(layer, seq).end);
      std::abort();
    }
#endif
    const int64_t rs = shape_.kv_dim * 2;
    auto add_residual = [&](int64_t first, int64_t c) {
      if (c > 0)
        out[n++] = {residual(layer, seq, first, 0), residual(layer, seq, first, 1), c, first, rs, rs,
                    AttnFormat::F16, AttnFormat::F16};
    };
    add_residual(q, std::min(count, until_wrap));
    add_residual(q + until_wrap, count - until_wrap);
    return n;
  }
  if (paged_layer(layer)) {
    for (int64_t first = 0; first <= pos; first += shape_.block_size)
      add(first, std::min(shape_.block_size, pos + 1 - first));
    return n;
  }
  if (!kind.windowed()) {
    add(0, pos + 1);
    return n;
  }
  add(0, std::min(pos + 1, kind.sinks));
  const int64_t first = kind.first_recent(pos);
  if (first > pos) return n;
  const int64_t ring = slots_[size_t(layer)] - kind.sinks;
  const int64_t until_wrap = ring - (slot(layer, first) - kind.sinks);  // slots before the ring's end
  const int64_t count = pos - first + 1;
  add(first, std::min(count, until_wrap));
  add(first + until_wrap, count - until_wrap);
  return n;
}

namespace {
// Value i of a row stored in format f (not a key group).
float row_value(AttnFormat f, const uint8_t* row, int64_t i) {
  switch (f) {
    case AttnFormat::F32: return reinterpret_cast<const float*>(row)[i];
    case AttnFormat::F16: return fp16_to_f32(reinterpret_cast<const uint16_t*>(row)[i]);
    case AttnFormat::Q8_0: {
      const auto& b = reinterpret_cast<const BlockQ8_0*>(row)[i / kQK];
      return fp16_to_f32(b.d) * float(b.qs[i % kQK]);
    }
    case AttnFormat::Q4_0: {
      const auto& b = reinterpret_cast<const BlockQ4_0*>(row)[i / kQK];
      const int j = int(i % kQK);
      return fp16_to_f32(b.d) * float(((b.qs[j % 16] >> (4 * (j / 16))) & 0xF) - 8);
    }
    case AttnFormat::Q2:
    case AttnFormat::Q2Channel: {
      const auto& b = reinterpret_cast<const BlockQ2*>(row)[i / kQK];
      const int j = int(i % kQK);
      return fp16_to_f32(b.d) * float((b.qs[j / 4] >> (2 * (j % 4))) & 3) + fp16_to_f32(b.m);
    }
  }
  return 0.0f;
}
}  // namespace

float KvCache::k_at(int64_t layer, int64_t seq, int64_t pos, int64_t i) const {
  if (shape_.evicting(layer)) return evicted_value(layer, seq, pos, i, 0);
  if (shape_.kivi(layer)) {
    if (pos >= shape_.kivi_quantized(std::max<int64_t>(held(layer, seq).end - 1, 0)))
      return fp16_to_f32(residual(layer, seq, pos, 0)[i]);
    if (shape_.format(layer, 0) != AttnFormat::Q2Channel)
      return row_value(shape_.format(layer, 0), static_cast<const uint8_t*>(k(layer, seq, pos)), i);
    // Channel i of the group: record i, value pos % kKiviGroup.
    const uint8_t* group = data_.data() + offset(layer, seq, pos - pos % kKiviGroup, 0);
    const auto& b = reinterpret_cast<const BlockQ2*>(group)[i];
    const int64_t j = pos % kKiviGroup;
    return fp16_to_f32(b.d) * float((b.qs[j / 4] >> (2 * (j % 4))) & 3) + fp16_to_f32(b.m);
  }
  return row_value(shape_.format(layer, 0), static_cast<const uint8_t*>(k(layer, seq, pos)), i);
}
float KvCache::evicted_value(int64_t layer, int64_t seq, int64_t pos, int64_t i, int kv) const {
  const int64_t hd = shape_.kv_dim / shape_.n_head_kv(), h = i / hd;
  const int32_t* p = evict_positions(layer, seq, h);
  const int64_t n = evict_count(layer, seq, h);
  const int64_t slot = std::lower_bound(p, p + n, int32_t(pos)) - p;
  if (slot == n || p[slot] != pos) return std::nanf("");  // evicted
  return row_value(shape_.format(layer, kv), head_row(layer, seq, h, slot, kv), i % hd);
}

float KvCache::v_at(int64_t layer, int64_t seq, int64_t pos, int64_t i) const {
  if (shape_.evicting(layer)) return evicted_value(layer, seq, pos, i, 1);
  if (shape_.kivi(layer) && pos >= shape_.kivi_quantized(std::max<int64_t>(held(layer, seq).end - 1, 0)))
    return fp16_to_f32(residual(layer, seq, pos, 1)[i]);
  return row_value(shape_.format(layer, 1), static_cast<const uint8_t*>(v(layer, seq, pos)), i);
}

}  // namespace peregrine
