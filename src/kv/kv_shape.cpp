// KvShape: what the KV cache keeps per layer (types, slots, eviction, bytes) and its checks;
// the cache itself is kv_cache.cpp.
#include "kv/kv_cache.h"

#include <algorithm>

#include <unistd.h>

#include <fmt/format.h>

#include "kv/kv_evict.h"

namespace peregrine {

std::string_view kv_type_name(KvType t) {
  switch (t) {
    case KvType::F32: return "f32";
    case KvType::F16: return "f16";
    case KvType::Q8_0: return "q8_0";
    case KvType::Q4_0: return "q4_0";
    case KvType::Kivi2: return "kivi2";
  }
  return "?";
}

std::optional<KvType> parse_kv_type(std::string_view name) {
  for (KvType t : {KvType::F32, KvType::F16, KvType::Q8_0, KvType::Q4_0, KvType::Kivi2})
    if (name == kv_type_name(t)) return t;
  return std::nullopt;
}

std::string_view kv_evict_name(KvEvict e) {
  switch (e) {
    case KvEvict::None: return "none";
    case KvEvict::H2O: return "h2o";
    case KvEvict::SnapKV: return "snapkv";
  }
  return "?";
}

std::optional<KvEvict> parse_kv_evict(std::string_view name) {
  for (KvEvict e : {KvEvict::None, KvEvict::H2O, KvEvict::SnapKV})
    if (name == kv_evict_name(e)) return e;
  return std::nullopt;
}

bool kv_type_blocked(KvType t) { return t == KvType::Q8_0 || t == KvType::Q4_0 || t == KvType::Kivi2; }

namespace {
// Bytes of n values in a row format.
size_t format_bytes(AttnFormat f, int64_t n) {
  switch (f) {
    case AttnFormat::F32: return size_t(n) * 4;
    case AttnFormat::F16: return size_t(n) * 2;
    case AttnFormat::Q8_0: return size_t(n / kQK) * sizeof(BlockQ8_0);
    case AttnFormat::Q4_0: return size_t(n / kQK) * sizeof(BlockQ4_0);
    case AttnFormat::Q2:
    case AttnFormat::Q2Channel: return size_t(n / kQK) * sizeof(BlockQ2);
  }
  return 0;
}
}  // namespace

size_t kv_head_offset(AttnFormat f, int64_t head_dim, int64_t h) {
  // A key group holds head_dim records (one per channel) per head.
  if (f == AttnFormat::Q2Channel) return size_t(h * head_dim) * sizeof(BlockQ2);
  return size_t(h) * format_bytes(f, head_dim);
}

bool KvShape::kivi(int64_t layer) const {
  return (type_k() == KvType::Kivi2 || type_of_v() == KvType::Kivi2) && kind(layer).type == AttnKind::Type::Global;
}

AttnFormat KvShape::format(int64_t layer, int kv) const {
  switch (kv == 0 ? type_k() : type_of_v()) {
    case KvType::F32: return AttnFormat::F32;
    case KvType::F16: return AttnFormat::F16;
    case KvType::Q8_0: return AttnFormat::Q8_0;
    case KvType::Q4_0: return AttnFormat::Q4_0;
    case KvType::Kivi2:
      if (!kivi(layer)) return AttnFormat::F16;  // a window's bounded ring stays f16
      return kv == 0 ? AttnFormat::Q2Channel : AttnFormat::Q2;
  }
  return AttnFormat::F16;
}

int64_t KvShape::rotation(int64_t layer, int kv) const {
  const int64_t hd = head_dim > 0 ? head_dim : kv_dim;
  if (!rotate || hd % 64 != 0) return 0;
  const AttnFormat f = format(layer, kv);
  const bool quantized = f != AttnFormat::F32 && f != AttnFormat::F16;
  if (!quantized) return 0;
  if (kv == 1) return 64;
  int64_t n = 64;
  while (hd % (2 * n) == 0) n *= 2;
  return n;
}

size_t KvShape::row_bytes(int64_t layer, int kv) const { return format_bytes(format(layer, kv), kv_dim); }

std::string KvShape::describe_types() const {
  std::string out = type_k() == type_of_v()
                        ? std::string(kv_type_name(type_k()))
                        : fmt::format("K {}, V {}", kv_type_name(type_k()), kv_type_name(type_of_v()));
  bool any_kivi = false;
  for (int64_t l = 0; l < n_layer; ++l) any_kivi = any_kivi || kivi(l);
  if (any_kivi) out += fmt::format(" (last {}-{} positions in f16)", kivi_residual, kivi_residual + kKiviGroup - 1);
  return out;
}

std::string AttnKind::describe() const {
  switch (type) {
    case Type::Global: return "global";
    case Type::Window: return fmt::format("window {}", window);
    case Type::SinksWindow: return fmt::format("sinks {} + window {}", sinks, window);
    case Type::None: return "none";
  }
  return "?";
}

int64_t AttnKind::first_recent(int64_t p) const {
  if (type == Type::Global) return 0;
  return std::max(sinks, p - window + 1);
}

const AttnKind& KvShape::kind(int64_t layer) const {
  static const AttnKind kGlobal;
  return kinds.empty() ? kGlobal : kinds[size_t(layer)];
}

bool KvShape::unbounded() const {
  if (kinds.empty()) return false;
  return std::none_of(kinds.begin(), kinds.end(), [](const AttnKind& k) { return k.type == AttnKind::Type::Global; });
}

bool KvShape::recurrent() const {
  return std::any_of(state_floats.begin(), state_floats.end(), [](int64_t n) { return n > 0; });
}

size_t KvShape::state_bytes_per_seq() const {
  size_t n = 0;
  for (int64_t f : state_floats) n += size_t(f) * sizeof(float);
  return n;
}

int64_t KvShape::bytes_per_token() const {
  int64_t n = 0;
  for (int64_t l = 0; l < n_layer; ++l)
    if (kind(l).keeps_kv()) n += int64_t(row_bytes(l, 0) + row_bytes(l, 1));
  return n;
}

bool KvShape::any_windowed() const {
  return std::any_of(kinds.begin(), kinds.end(), [](const AttnKind& k) { return k.windowed(); });
}

bool KvShape::prefix_sharing() const {
  bool any = false;
  for (int64_t l = 0; l < n_layer; ++l) {
    if (state(l) > 0 || kivi(l)) return false;
    if (!kind(l).keeps_kv()) continue;
    if (!supports_prefix_sharing(l)) return false;
    any = true;
  }
  return any;
}

int64_t KvShape::slots(int64_t layer) const {
  const AttnKind& k = kind(layer);
  if (!k.keeps_kv()) return 0;
  if (evicting(layer)) return evict_capacity();
  if (!k.windowed()) return n_ctx;
  const int64_t ring = k.window + max_step() - 1;
  const int64_t total = k.sinks + ring;
  // A bounded cache never holds positions past n_ctx, so a ring longer than that is waste.
  return unbounded() ? total : std::min(total, n_ctx);
}

Status KvShape::validate() const {
  bool any_kv = kinds.empty();
  for (const AttnKind& k : kinds) any_kv = any_kv || k.keeps_kv();
  if (n_layer < 1 || n_ctx < 1 || n_seq < 1 || kv_dim < (any_kv ? 1 : 0) || n_batch < 1)
    return make_error("KV cache shape has a non-positive dimension");
  if (n_draft < 0 || n_draft > (int64_t(1) << 16) || n_batch > (int64_t(1) << 24))
    return make_error("KV cache steps of {} tokens and {} drafted are out of range", n_batch, n_draft);
  if (!kinds.empty() && int64_t(kinds.size()) != n_layer)
    return make_error("{} attention kinds for {} layers", kinds.size(), n_layer);
  if (!state_floats.empty() && int64_t(state_floats.size()) != n_layer)
    return make_error("{} recurrent state sizes for {} layers", state_floats.size(), n_layer);
  for (int64_t l = 0; l < int64_t(state_floats.size()); ++l)
    if (state_floats[size_t(l)] < 0 || state_floats[size_t(l)] > (int64_t(1) << 30))
      return make_error("layer {}: recurrent state of {} values is out of range", l, state_floats[size_t(l)]);
  for (int64_t l = 0; l < int64_t(kinds.size()); ++l) {
    const AttnKind& k = kinds[size_t(l)];
    if (!k.windowed()) continue;
    if (k.window < 1) return make_error("layer {}: attention window {} must be positive", l, k.window);
    if (k.sinks < 0) return make_error("layer {}: {} attention sinks is negative", l, k.sinks);
    if (k.type == AttnKind::Type::Window && k.sinks != 0)
      return make_error("layer {}: a plain window has no sinks", l);
    if (k.window > (int64_t(1) << 24) || k.sinks > (int64_t(1) << 24))
      return make_error("layer {}: {} is too large", l, k.describe());
  }
  if (block_size < 0 || (paged() && (n_blocks < 1 || block_size > 4096 || n_blocks > (int64_t(1) << 24))))
    return make_error("paged KV cache: {} blocks of {} positions is out of range", n_blocks, block_size);
  const int64_t hd = head_dim > 0 ? head_dim : kv_dim;
  for (KvType t : {type_k(), type_of_v()}) {
    if (!kv_type_blocked(t) || !any_kv) continue;
    if (hd < 1 || hd % kQK != 0 || kv_dim % hd != 0)
      return make_error("--kv-type {} needs a head dimension that is a multiple of {}; this model's is {}",
                        kv_type_name(t), kQK, hd);
  }
  if (evict != KvEvict::None) {
    if (evict_budget < kMinEvictBudget || evict_budget > (int64_t(1) << 24))
      return make_error("--kv-budget {} is out of range: at least {} entries per layer and head (the sinks, "
                        "the observation window and room to choose)",
                        evict_budget, kMinEvictBudget);
    if (type_k() == KvType::Kivi2 || type_of_v() == KvType::Kivi2)
      return make_error("--kv-evict cannot be combined with --kv-type kivi2");
  }
  bool any_kivi = false;
  for (int64_t l = 0; l < n_layer; ++l) any_kivi = any_kivi || kivi(l);
  if (any_kivi) {
    if (kivi_residual < kKiviGroup || kivi_residual % kKiviGroup != 0 || kivi_residual > (int64_t(1) << 20))
      return make_error("KIVI residual of {} positions: it must be a positive multiple of {}", kivi_residual,
                        kKiviGroup);
    if (paged() && block_size % kKiviGroup != 0)
      return make_error("kivi2 in a paged cache needs blocks of a multiple of {} positions, not {} "
                        "(--kv-block-size)",
                        kKiviGroup, block_size);
  }
  return Status::Ok();
}

int64_t KvShape::layer_rows(int64_t layer) const {
  if (supports_prefix_sharing(layer)) return n_blocks * block_size;
  return n_seq * slots(layer);
}

size_t KvShape::side_bytes(int64_t layer) const {
  if (evicting(layer)) return size_t(n_head_kv() * evict_capacity()) * 8;
  return kivi(layer) ? 2 * size_t(kivi_ring() * kv_dim) * 2 : 0;
}

size_t KvShape::bytes() const {
  size_t total = 0;
  for (int64_t l = 0; l < n_layer; ++l)
    total += size_t(layer_rows(l)) * (row_bytes(l, 0) + row_bytes(l, 1)) +
             size_t(n_seq) * side_bytes(l);
  return total + size_t(n_seq) * state_bytes_per_seq();
}

size_t KvShape::bytes_per_seq() const {
  size_t total = 0;
  for (int64_t l = 0; l < n_layer; ++l) {
    if (!kind(l).keeps_kv()) continue;
    const int64_t rows = supports_prefix_sharing(l) ? n_ctx : slots(l);
    total += size_t(rows) * (row_bytes(l, 0) + row_bytes(l, 1)) + side_bytes(l);
  }
  return total + state_bytes_per_seq();
}

std::string KvShape::describe() const {
  std::string out;
  for (int64_t l = 0; l < n_layer;) {
    int64_t run = 1;
    while (l + run < n_layer && kind(l + run).describe() == kind(l).describe() && state(l + run) == state(l)) ++run;
    const AttnKind& k = kind(l);
    std::string keeps;
    if (!k.keeps_kv()) {
      const std::string what = state(l) > 0 ? fmt::format("state-space: {} KiB of state per sequence",
                                                          double(state(l)) * 4.0 / 1024.0)
                                            : "feed-forward only";
      out += fmt::format("{}{} x {}", out.empty() ? "" : ", ", run, what);
      l += run;
      continue;
    }
    if (evicting(l)) {
      keeps = fmt::format("{} budget {} of {} entries per head", kv_evict_name(evict), evict_budget, slots(l));
    } else if (supports_prefix_sharing(l)) {
      keeps = fmt::format("paged: {} blocks of {}", n_blocks, block_size);
    } else if (!k.windowed() || slots(l) < k.sinks + k.window + max_step() - 1) {
      keeps = fmt::format("{} slots", slots(l));  // global, or a ring as long as the context
    } else {
      // The ring holds the window plus one step's new tokens, drafts included, less one.
      keeps = fmt::format("{} slots: {}W + {} batch{} - 1", slots(l), k.sinks > 0 ? "S + " : "", n_batch,
                          n_draft > 0 ? fmt::format(" + {} draft", n_draft) : "");
    }
    out += fmt::format("{}{} x {} ({})", out.empty() ? "" : ", ", run, kind(l).describe(), keeps);
    l += run;
  }
  return out;
}

Status check_kv_memory(const KvShape& shape) {
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page <= 0) return Status::Ok();  // unknown: nothing to compare with
  const double phys = double(pages) * double(page), need = double(shape.bytes());
  if (need > 0.75 * phys)
    return make_error("the KV cache would take {:.1f} GiB of this machine's {:.1f} GiB ({}); lower the "
                      "context, the parallel sequences or the KV blocks",
                      need / double(1 << 30), phys / double(1 << 30), shape.describe());
  return Status::Ok();
}

}  // namespace peregrine
