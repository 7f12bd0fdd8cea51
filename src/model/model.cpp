#include "model/model.h"

#include <algorithm>
#include <chrono>

#include "ops/matmul.h"

namespace peregrine {

int64_t Batch::n_logits() const {
  int64_t n = 0;
  for (uint8_t w : want_logits) n += w;
  return n;
}

void DecoderActivations::reserve(int64_t T, int64_t n_embd, int64_t q_dim, int64_t kv_dim, int64_t n_ff) {
  if (T <= cap) return;
  cap = T;
  x.resize(size_t(T * n_embd));
  xn.resize(size_t(T * std::max(n_embd, q_dim)));
  q.resize(size_t(T * q_dim));
  k.resize(size_t(T * kv_dim));
  v.resize(size_t(T * kv_dim));
  att.resize(size_t(T * q_dim));
  gate.resize(size_t(T * n_ff));
}

std::vector<AttnKind> Model::attn_kinds() const {
  std::vector<AttnKind> kinds;
  for (const LayerSpec& l : layers_) kinds.push_back(l.mixer == MixerKind::Attention ? l.attn : AttnKind::none());
  return kinds;
}

bool Model::recurrent() const {
  for (const LayerSpec& l : layers_)
    if (l.state_floats > 0) return true;
  return false;
}

int64_t Model::kv_dim() const {
  int64_t d = 0;
  for (const LayerSpec& l : layers_)
    if (l.mixer == MixerKind::Attention) d = std::max(d, l.kv_dim());
  return d;
}

KvShape Model::kv_shape(int64_t n_ctx, int64_t n_seq, const KvConfig& kv, const AttnKind& global_override,
                        int64_t n_batch) const {
  std::vector<AttnKind> kinds = attn_kinds();
  for (AttnKind& k : kinds)
    if (k.type == AttnKind::Type::Global) k = global_override;
  // Room for the longest draft whether or not this run speculates: the ring size decides where
  // attention's runs of positions wrap, so it must not change with --spec for speculation to
  // leave the output bit-identical.
  KvShape shape{hp_.n_layer, n_ctx, n_seq, kv_dim(), kv.k, std::move(kinds), n_batch};
  if (kv.v != kv.k) shape.type_v = kv.v;
  shape.evict = kv.evict;
  shape.evict_budget = kv.budget;
  shape.sparse = kv.sparse;
  shape.rotate = kv.rotate;
  for (const LayerSpec& l : layers_)
    if (l.mixer == MixerKind::Attention) shape.head_dim = std::max(shape.head_dim, l.head_dim);
  shape.n_draft = kMaxDraftTokens;
  if (recurrent())
    for (const LayerSpec& l : layers_) shape.state_floats.push_back(l.state_floats);
  return shape;
}

Status Model::check_batch(const Batch& b, const KvCache& cache) const {
  const int64_t n = b.size();
  if (n == 0) return make_error("empty batch");
  // A window ring holds W + max_step() - 1 slots: a larger batch would overwrite positions its
  // first tokens still see.
  if (cache.shape().any_windowed() && n > cache.shape().max_step())
    return make_error("batch of {} tokens is larger than the window cache allows ({})", n,
                      cache.shape().max_step());
  if (int64_t(b.pos.size()) != n || int64_t(b.seq.size()) != n || int64_t(b.want_logits.size()) != n)
    return make_error("batch arrays differ in length");
  const KvShape& s = cache.shape();
  if (s.n_layer != hp_.n_layer || s.kv_dim != kv_dim())
    return make_error("KV cache shape does not match the model");
  for (int64_t l = 0; l < s.n_layer; ++l)
    if (s.state(l) != layers_[size_t(l)].state_floats)
      return make_error("KV cache recurrent state does not match the model's layer {}", l);
  for (int64_t i = 0; i < n; ++i) {
    if (b.tokens[i] < 0 || b.tokens[i] >= hp_.n_vocab)
      return make_error("token id {} at batch index {} is outside the vocabulary (0..{})",
                        b.tokens[i], i, hp_.n_vocab - 1);
    if (b.pos[i] < 0 || (!s.unbounded() && b.pos[i] >= s.n_ctx))
      return make_error("position {} at batch index {} is outside the context (0..{})", b.pos[i],
                        i, s.n_ctx - 1);
    if (b.seq[i] < 0 || b.seq[i] >= s.n_seq)
      return make_error("sequence {} at batch index {} is outside 0..{}", b.seq[i], i, s.n_seq - 1);
    if (!cache.holds(b.seq[i], b.pos[i]))
      return make_error("position {} of sequence {} at batch index {} has no KV block", b.pos[i],
                        b.seq[i], i);
  }
  if (s.recurrent()) {
    // A state-space layer's state can only go forward: each sequence's tokens continue it,
    // one position after another.
    for (int64_t i = 0; i < n; ++i) {
      int64_t expect = cache.state_pos(b.seq[i]);
      for (int64_t j = i - 1; j >= 0; --j)
        if (b.seq[j] == b.seq[i]) {
          expect = b.pos[j] + 1;
          break;
        }
      if (b.pos[i] != expect)
        return make_error("position {} of sequence {} at batch index {}: the recurrent state continues at "
                          "position {}", b.pos[i], b.seq[i], i, expect);
    }
  }
  return Status::Ok();
}

void Model::output_head(const Batch& batch, float* x, const Weight& norm, const Weight& output,
                        std::vector<float>& logits, ThreadPool& pool, OpScratch& scratch) const {
  const int64_t E = hp_.n_embd;
  int64_t n_out = 0;
  for (int64_t t = 0; t < batch.size(); ++t)
    if (batch.want_logits[size_t(t)]) std::copy_n(x + t * E, E, x + (n_out++) * E);
  logits.resize(size_t(n_out * hp_.n_vocab));
  if (n_out == 0) return;
  matmul_many({{&output, logits.data()}}, MatIn(x, norm.f32(), hp_.rms_eps), n_out, pool, scratch);
}

Status Model::pack_weights(std::initializer_list<Weight*> weights, bool release_source) {
  const auto start = std::chrono::steady_clock::now();
  for (Weight* w : weights) {
    if (w->data == nullptr) continue;
    PG_ASSIGN(size_t bytes, pack_weight(*w));
    if (bytes == 0) continue;
    ++pack_stats_.matrices;
    pack_stats_.bytes += bytes;
    if (release_source) file_->release(w->data, w->row_bytes * size_t(w->rows));
  }
  pack_stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return Status::Ok();
}

}  // namespace peregrine
