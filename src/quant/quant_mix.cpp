// The per-tensor type rules of llama-quantize (quant_mix.h), written from its behaviour for
// the mixes we offer: the K-quant mixes, the 32-block types, the float types and ternary.
#include "quant/quant_mix.h"

#include <algorithm>
#include <cctype>
#include <cstdio>

#include "quant/type_table.h"

namespace peregrine {
namespace {

using T = GgmlType;

// llama_ftype numbers (llama.h).
enum FileType : uint32_t {
  kAllF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 7, kQ5_0 = 8, kQ5_1 = 9, kQ2_K = 10,
  kQ3_K_S = 11, kQ3_K_M = 12, kQ3_K_L = 13, kQ4_K_S = 14, kQ4_K_M = 15, kQ5_K_S = 16, kQ5_K_M = 17,
  kQ6_K = 18, kQ2_K_S = 21, kBF16 = 32, kTQ1_0 = 36, kTQ2_0 = 37,
};

constexpr QuantMix kMixes[] = {
    {"Q4_0", kQ4_0, T::Q4_0, "4.5 bits per weight, one scale per 32"},
    {"Q4_1", kQ4_1, T::Q4_1, "5.0 bpw, scale and minimum per 32"},
    {"Q5_0", kQ5_0, T::Q5_0, "5.5 bpw, one scale per 32"},
    {"Q5_1", kQ5_1, T::Q5_1, "6.0 bpw, scale and minimum per 32"},
    {"TQ1_0", kTQ1_0, T::TQ1_0, "1.69 bpw ternary (BitNet b1.58 models)"},
    {"TQ2_0", kTQ2_0, T::TQ2_0, "2.06 bpw ternary (BitNet b1.58 models)"},
    {"Q2_K", kQ2_K, T::Q2_K, "mostly Q2_K; attn_v, ffn_down, attn_output with more bits"},
    {"Q2_K_S", kQ2_K_S, T::Q2_K, "Q2_K throughout (needs --imatrix)"},
    {"Q3_K_S", kQ3_K_S, T::Q3_K, "Q3_K throughout"},
    {"Q3_K_M", kQ3_K_M, T::Q3_K, "mostly Q3_K; attn_v, ffn_down, attn_output with Q4_K/Q5_K"},
    {"Q3_K_L", kQ3_K_L, T::Q3_K, "mostly Q3_K; attn_v, ffn_down, attn_output with Q5_K"},
    {"Q4_K_S", kQ4_K_S, T::Q4_K, "mostly Q4_K; the first attn_v and ffn_down with Q5_K"},
    {"Q4_K_M", kQ4_K_M, T::Q4_K, "mostly Q4_K; half of attn_v and ffn_down with Q6_K"},
    {"Q5_K_S", kQ5_K_S, T::Q5_K, "Q5_K throughout"},
    {"Q5_K_M", kQ5_K_M, T::Q5_K, "mostly Q5_K; half of attn_v and ffn_down with Q6_K"},
    {"Q6_K", kQ6_K, T::Q6_K, "Q6_K throughout"},
    {"Q8_0", kQ8_0, T::Q8_0, "8.5 bpw, one scale per 32"},
    {"F16", kF16, T::F16, "half precision"},
    {"BF16", kBF16, T::BF16, "bfloat16"},
    {"F32", kAllF32, T::F32, "single precision"},
};

struct Alias {
  std::string_view alias, name;
};
constexpr Alias kAliases[] = {{"Q3_K", "Q3_K_M"}, {"Q4_K", "Q4_K_M"}, {"Q5_K", "Q5_K_M"}};

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::toupper(static_cast<unsigned char>(x)) == std::toupper(static_cast<unsigned char>(y));
         });
}

bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }
bool ends_with(std::string_view s, std::string_view end) {
  return s.size() >= end.size() && s.substr(s.size() - end.size()) == end;
}

bool is_quantized(GgmlType t) { return type_info(t).block_elems > 1; }

enum class Category { Output, TokenEmbd, AttnQkv, AttnKvB, AttnV, AttnK, AttnQ, AttnOutput, FfnUp, FfnGate, FfnDown, Other };

Category category_of(std::string_view name) {
  if (name == "output.weight") return Category::Output;
  if (name == "token_embd.weight" || name == "per_layer_token_embd.weight") return Category::TokenEmbd;
  if (contains(name, "attn_qkv.weight")) return Category::AttnQkv;
  if (contains(name, "attn_kv_b.weight")) return Category::AttnKvB;
  if (contains(name, "attn_v.weight")) return Category::AttnV;
  if (contains(name, "attn_k.weight")) return Category::AttnK;
  if (contains(name, "attn_q.weight")) return Category::AttnQ;
  if (contains(name, "attn_output.weight")) return Category::AttnOutput;
  if (contains(name, "ffn_up")) return Category::FfnUp;
  if (contains(name, "ffn_gate")) return Category::FfnGate;
  if (contains(name, "ffn_down")) return Category::FfnDown;
  return Category::Other;
}

bool is_attn_v_like(Category c) { return c == Category::AttnV || c == Category::AttnQkv || c == Category::AttnKvB; }

// Tensors that stay as they are: 1-D ones, norms, routers, positional and small tables.
bool may_quantize(const MixTensor& t) {
  // llama counts dimensions as ggml_n_dims does: trailing 1s do not count, so a [n, 1, 1]
  // "weight" (RWKV's time_mix_lerp_*, written so by gguf-py) is a vector and stays.
  size_t n_dims = t.dims.size();
  while (n_dims > 1 && t.dims[n_dims - 1] <= 1) --n_dims;
  if (n_dims < 2) return false;
  const std::string_view n = t.name;
  if (!ends_with(n, "weight")) return false;
  static constexpr std::string_view kKeep[] = {
      "_norm.weight", "ffn_gate_inp.weight", "ffn_gate_tid2eid.weight", "altup", "laurel",
      "per_layer_model_proj", "ssm_conv1d", "shortconv.conv.weight", "indexer.k_proj.weight",
      "indexer.q_proj.weight", "time_mix_first.weight", "time_mix_w0.weight", "time_mix_w1.weight",
      "time_mix_w2.weight", "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
      "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight", "time_mix_g1.weight",
      "time_mix_g2.weight", "time_mix_decay_w1.weight", "time_mix_decay_w2.weight",
      "time_mix_lerp_fused.weight", "attn_rel_b.weight", ".position_embd", ".rel_pos", ".patch_embd",
      "sam.pos_embd", "sam.neck.", "sam.net_", ".patch_merger", "a.rvq.codebook", "mm.a.code_embd"};
  for (std::string_view k : kKeep)
    if (contains(n, k)) return false;
  return n != "position_embd.weight" && n != "token_types.weight";
}

// The first and last eighth of the layers, and every third layer in between.
bool use_more_bits(int64_t i, int64_t n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

int64_t layer_of(std::string_view name) {
  int layer = -1;
  std::sscanf(std::string(name).c_str(), "blk.%d.", &layer);
  return layer;
}

// Rows of `n_cols` that do not split into `t`'s blocks get a type with smaller blocks.
GgmlType fallback_for_shape(GgmlType t, uint64_t n_cols, bool* fell_back) {
  if (n_cols % type_info(t).block_elems == 0) return t;
  *fell_back = true;
  GgmlType r = t;
  switch (t) {
    case T::Q2_K: case T::Q3_K: case T::TQ1_0: case T::TQ2_0: r = T::Q4_0; break;
    case T::Q4_K: r = T::Q5_0; break;
    case T::Q5_K: r = T::Q5_1; break;
    case T::Q6_K: r = T::Q8_0; break;
    default: break;
  }
  if (n_cols % type_info(r).block_elems != 0) r = T::F16;
  return r;
}

// The running counts some rules read, in llama's tensor order.
struct Counters {
  int64_t n_attention_wv = 0, i_attention_wv = 0;
  int64_t n_ffn = 0, i_ffn_down = 0, i_ffn_gate = 0, i_ffn_up = 0;
  bool tied_embeddings = true;
};

// llama_tensor_get_type_impl for the mixes of kMixes (no IQ types).
Result<GgmlType> mix_rule(const QuantMix& mix, const MixModel& m, const MixTensor& t, Category cat, Counters& c,
                          GgmlType type) {
  const uint32_t ft = mix.file_type;
  // The layer a per-layer rule looks at: the count so far, or for MoE models the name's.
  auto layer_info = [&](int64_t counter) -> Result<std::pair<int64_t, int64_t>> {
    if (m.n_expert > 1) {
      const int64_t il = layer_of(t.name);
      if (il < 0 || il >= m.n_layer)
        return make_error("tensor '{}': no layer number in [0, {}) in its name", t.name, m.n_layer);
      return std::make_pair(il, m.n_layer);
    }
    return std::make_pair(counter, c.n_ffn);
  };

  if (cat == Category::Output || (c.tied_embeddings && cat == Category::TokenEmbd)) {
    const uint64_t nx = t.dims[0];
    if (m.is_falcon || nx % type_info(type).block_elems != 0) type = T::Q8_0;
    else if (type != T::Q8_0) type = T::Q6_K;
    return type;
  }
  if (cat == Category::TokenEmbd) {
    if (ft == kTQ1_0 || ft == kTQ2_0) type = T::Q4_K;
    return type;
  }
  if (is_attn_v_like(cat)) {
    if (ft == kQ2_K) type = m.n_gqa >= 4 ? T::Q4_K : T::Q3_K;
    else if (ft == kQ2_K_S && m.n_gqa >= 4) type = T::Q4_K;
    else if (ft == kQ3_K_M) type = c.i_attention_wv < 2 ? T::Q5_K : T::Q4_K;
    else if (ft == kQ3_K_L) type = T::Q5_K;
    else if ((ft == kQ4_K_M || ft == kQ5_K_M) && use_more_bits(c.i_attention_wv, c.n_attention_wv)) type = T::Q6_K;
    else if (ft == kQ4_K_S && c.i_attention_wv < 4) type = T::Q5_K;
    if (m.is_70b && (type == T::Q3_K || type == T::Q4_K)) type = T::Q5_K;
    if (m.n_expert == 8) type = T::Q8_0;
    ++c.i_attention_wv;
    return type;
  }
  if (cat == Category::AttnK) {
    if (m.n_expert == 8) type = T::Q8_0;
    return type;
  }
  if (cat == Category::FfnDown) {
    PG_ASSIGN(auto info, layer_info(c.i_ffn_down));
    const auto [il, nl] = info;
    if (ft == kQ2_K) type = T::Q3_K;
    else if (ft == kQ2_K_S) {
      if (il < nl / 8) type = T::Q4_K;
    } else if (ft == kQ3_K_M) {
      type = il < nl / 16 ? T::Q5_K : (!m.is_falcon || use_more_bits(il, nl)) ? T::Q4_K : T::Q3_K;
    } else if (ft == kQ3_K_L) {
      type = m.is_falcon ? T::Q4_K : T::Q5_K;
    } else if (ft == kQ4_K_M) {
      if (m.is_falcon) type = il < nl / 16 ? T::Q6_K : use_more_bits(il, nl) ? T::Q5_K : T::Q4_K;
      else if (use_more_bits(il, nl)) type = T::Q6_K;
    } else if (ft == kQ5_K_M && use_more_bits(il, nl)) {
      type = T::Q6_K;
    } else if (ft == kQ4_K_S && !m.is_falcon && il < nl / 8) {
      type = T::Q5_K;
    } else if ((ft == kQ4_0 || ft == kQ5_0) && m.has_imatrix && il < nl / 8) {
      type = ft == kQ4_0 ? T::Q4_1 : T::Q5_1;
    }
    ++c.i_ffn_down;
    return type;
  }
  if (cat == Category::AttnOutput) {
    if (!m.is_falcon) {
      if (m.n_expert == 8) {
        if (ft == kQ2_K || ft == kQ3_K_S || ft == kQ3_K_M || ft == kQ4_K_S || ft == kQ4_K_M) type = T::Q5_K;
      } else {
        if (ft == kQ2_K) type = T::Q3_K;
        else if (ft == kQ3_K_M) type = T::Q4_K;
        else if (ft == kQ3_K_L) type = T::Q5_K;
      }
    } else if (ft == kQ3_K_L) {
      type = T::Q4_K;
    }
    return type;
  }
  if (cat == Category::AttnQkv) {  // not reached (attn_v-like above), kept for llama's order of rules
    return type;
  }
  if (cat == Category::FfnGate) {
    PG_TRY(layer_info(c.i_ffn_gate));
    ++c.i_ffn_gate;
  } else if (cat == Category::FfnUp) {
    PG_TRY(layer_info(c.i_ffn_up));
    ++c.i_ffn_up;
  }
  return type;
}

}  // namespace

std::span<const QuantMix> all_quant_mixes() { return kMixes; }

const QuantMix* find_quant_mix(std::string_view name) {
  for (const Alias& a : kAliases)
    if (iequals(name, a.alias)) name = a.name;
  for (const QuantMix& m : kMixes)
    if (iequals(name, m.name)) return &m;
  return nullptr;
}

std::optional<GgmlType> quantizable_type(std::string_view name) {
  for (const TypeInfo& t : all_type_infos())
    if (t.quantize != nullptr && !t.activation_only && iequals(name, t.name)) return t.type;
  return std::nullopt;
}

Result<MixOverride> parse_mix_override(std::string_view text) {
  const size_t eq = text.rfind('=');
  if (eq == std::string_view::npos || eq == 0 || eq + 1 == text.size())
    return make_error("'{}': expected PATTERN=TYPE (e.g. attn_v=Q8_0)", text);
  // llama-quantize lower-cases the pattern (ASCII, before compiling it), so "ATTN_V=Q8_0"
  // matches attn_v there (and \D means \d); done alike so that the files stay the same.
  std::string pattern(text.substr(0, eq));
  for (char& ch : pattern) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  const auto type = quantizable_type(text.substr(eq + 1));
  if (!type) return make_error("'{}': unknown or unquantizable type '{}'", text, text.substr(eq + 1));
  try {
    return MixOverride{pattern, std::regex(pattern, std::regex::ECMAScript), *type};
  } catch (const std::regex_error& e) {
    return make_error("'{}': bad pattern: {}", text, e.what());
  }
}

std::vector<size_t> llama_tensor_order(std::span<const MixTensor> tensors) {
  std::vector<size_t> order(tensors.size());
  std::vector<int64_t> layer(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) order[i] = i, layer[i] = layer_of(tensors[i].name);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (layer[a] != layer[b]) return layer[a] < layer[b];
    return tensors[a].name < tensors[b].name;
  });
  return order;
}

Result<std::vector<MixChoice>> choose_tensor_types(const QuantMix& mix, const MixModel& model,
                                                   std::span<const MixTensor> tensors, const MixOptions& options) {
  Counters c;
  c.n_ffn = model.n_layer;
  std::vector<Category> cats(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    cats[i] = category_of(tensors[i].name);
    if (is_attn_v_like(cats[i])) ++c.n_attention_wv;
    if (cats[i] == Category::Output) c.tied_embeddings = false;
  }
  std::vector<MixChoice> out(tensors.size());
  for (size_t i : llama_tensor_order(tensors)) {
    const MixTensor& t = tensors[i];
    MixChoice ch{t.type, may_quantize(t), false, false};
    if (ch.quantize) {
      GgmlType type = mix.base;
      if (options.token_embd_type && cats[i] == Category::TokenEmbd) {
        type = *options.token_embd_type;
      } else if (options.output_type && cats[i] == Category::Output) {
        type = *options.output_type;
      } else if (is_quantized(mix.base)) {
        bool manual = false;
        for (const MixOverride& o : options.overrides) {
          if (std::regex_search(t.name, o.re)) {
            type = o.type;
            manual = true;
            break;
          }
        }
        if (!manual && !options.pure) {
          PG_ASSIGN(type, mix_rule(mix, model, t, cats[i], c, type));
        }
        type = fallback_for_shape(type, t.dims[0], &ch.fell_back);
      } else {
        // Float targets: llama applies no rule; an override still names a type here.
        for (const MixOverride& o : options.overrides) {
          if (std::regex_search(t.name, o.re)) {
            type = o.type;
            break;
          }
        }
      }
      if (t.dims[0] % type_info(type).block_elems != 0)
        return make_error("tensor '{}': rows of {} are not a whole number of {} blocks of {}", t.name, t.dims[0],
                          type_info(type).name, type_info(type).block_elems);
      ch.type = type;
      ch.needs_imatrix = mix.file_type == kQ2_K_S && type == T::Q2_K && cats[i] != Category::TokenEmbd &&
                         cats[i] != Category::Output;
    }
    out[i] = ch;
  }
  return out;
}

}  // namespace peregrine
