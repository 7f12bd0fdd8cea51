// peregrine info FILE: metadata, hyperparameters, tokenizer summary, tensor table.
#include <map>

#include "gguf/gguf.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "model/tensor_table.h"
#include "quant/quant_mix.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace peregrine::tools {
namespace {

std::string value_summary(const gguf::Value& v) {
  using gguf::ValueType;
  switch (v.type) {
    case ValueType::STRING: {
      std::string s = v.str.size() > 80 ? v.str.substr(0, 77) + "..." : v.str;
      for (char& c : s)
        if (c == '\n' || c == '\r' || c == '\t') c = ' ';
      return "\"" + s + "\"";
    }
    case ValueType::ARRAY:
      return fmt::format("[{} x {}]", v.items.size(), gguf::value_type_name(v.elem_type));
    case ValueType::BOOL: return v.u ? "true" : "false";
    case ValueType::F32: case ValueType::F64: return fmt::format("{}", v.f);
    case ValueType::I8: case ValueType::I16: case ValueType::I32: case ValueType::I64:
      return fmt::format("{}", v.i);
    default: return fmt::format("{}", v.u);
  }
}

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) { b /= 1024; ++u; }
  return fmt::format("{:.2f} {}", b, units[u]);
}

}  // namespace

void register_info(CLI::App& app) {
  auto path = std::make_shared<std::string>();
  auto all = std::make_shared<bool>(false);
  CLI::App* cmd = app.add_subcommand("info", "Show a GGUF file's metadata, hyperparameters and tensors");
  cmd->add_option("file", *path, "GGUF file or cache name")->required();
  auto kv_flags = std::make_shared<KvFlags>();
  add_kv_options(cmd, *kv_flags);
  cmd->add_flag("--tensors", *all, "List every tensor");
  cmd->callback([path, all, kv_flags] {
    const KvConfig kv_cfg = kv_config(*kv_flags);  // contradicting flags fail before anything prints
    std::string p = check(resolve_model(*path));
    std::shared_ptr<const gguf::File> f = check(gguf::File::open(p));
    ThreadPool pool(1);
    auto model = load_model(f, pool);
    std::optional<KvShape> kv;
    if (model.ok()) {
      kv = (*model)->kv_shape((*model)->hparams().n_ctx_train, 1, kv_cfg);
      if (Status st = kv->validate(); !st.ok()) fail(st.error());
    }
    std::printf("file:        %s (%s)\n", p.c_str(), human_bytes(double(f->file_size())).c_str());
    std::printf("gguf:        v%u, %zu metadata keys, %zu tensors, alignment %llu\n", f->version(),
                f->metadata().size(), f->tensors().size(), (unsigned long long)f->alignment());
    std::string arch = f->get_string("general.architecture").ok()
                           ? f->get_string("general.architecture").value() : "?";
    std::printf("arch:        %s\n", arch.c_str());
    if (model.ok()) {
      const Hparams& h = (*model)->hparams();
      if (h.n_head == 0)  // a state-space stack: no heads, no RoPE, no FFN widths to show
        std::printf("hparams:     layers %lld, embd %lld, no attention, vocab %lld, ctx %lld, rms eps %g\n",
                    (long long)h.n_layer, (long long)h.n_embd, (long long)h.n_vocab, (long long)h.n_ctx_train,
                    h.rms_eps);
      else
      std::printf("hparams:     layers %lld, embd %lld, heads %lld (kv %lld, dim %lld), ffn %lld, "
                  "vocab %lld, ctx %lld, rope base %g (dims %lld), rms eps %g\n",
                  (long long)h.n_layer, (long long)h.n_embd, (long long)h.n_head,
                  (long long)h.n_head_kv, (long long)h.head_dim, (long long)h.n_ff,
                  (long long)h.n_vocab, (long long)h.n_ctx_train, h.rope_base,
                  (long long)h.rope_dim, h.rms_eps);
      // Attention kinds, run-length summarised: "18 layers: window 512 x15, global x3".
      const std::vector<AttnKind> kinds = (*model)->attn_kinds();
      std::map<std::string, int> count;
      for (const AttnKind& k : kinds) ++count[k.describe()];
      std::string summary;
      for (const auto& [d, n] : count) summary += fmt::format("{}{} x{}", summary.empty() ? "" : ", ", d, n);
      std::printf("attention:   %s\n", summary.c_str());
      // Layer specs, run-length summarised: "30 x attention (9 heads, 3 KV, dim 64) + SwiGLU 1536",
      // "1 x Mamba-2 (137 KiB state), 1 x MoE 128".
      std::string layers;
      const std::vector<LayerSpec>& specs = (*model)->layers();
      auto same = [](const LayerSpec& a, const LayerSpec& b) {
        return a.n_head == b.n_head && a.n_head_kv == b.n_head_kv && a.head_dim == b.head_dim &&
               a.n_ff == b.n_ff && a.glu == b.glu && a.mixer == b.mixer && a.ffn == b.ffn &&
               a.state_floats == b.state_floats;
      };
      auto describe = [](const LayerSpec& l) {
        std::string mixer, ffn;
        switch (l.mixer) {
          case MixerKind::Attention:
            mixer = fmt::format("attention ({} heads, {} KV, dim {})", l.n_head, l.n_head_kv, l.head_dim);
            break;
          case MixerKind::Mamba2:
            mixer = fmt::format("Mamba-2 ({} state)", human_bytes(double(l.state_floats) * sizeof(float)));
            break;
          case MixerKind::None: break;
        }
        switch (l.ffn) {
          case FfnKind::DenseGlu: ffn = fmt::format("{} {}", l.glu == Glu::SiLU ? "SwiGLU" : "GeGLU", l.n_ff); break;
          case FfnKind::DenseReluSqr: ffn = fmt::format("squared-ReLU MLP {}", l.n_ff); break;
          case FfnKind::Moe: ffn = fmt::format("MoE {}", l.n_ff); break;
          case FfnKind::None: break;
        }
        if (mixer.empty() || ffn.empty()) return mixer.empty() && ffn.empty() ? std::string("empty") : mixer + ffn;
        return mixer + " + " + ffn;
      };
      for (size_t i = 0; i < specs.size();) {
        size_t j = i + 1;
        while (j < specs.size() && same(specs[j], specs[i])) ++j;
        layers += fmt::format("{}{} x {}", layers.empty() ? "" : ", ", j - i, describe(specs[i]));
        i = j;
      }
      std::printf("layers:      %s\n", layers.c_str());
      if (std::string extras = (*model)->describe_extras(); !extras.empty())
        std::printf("rope/attn:   %s\n", extras.c_str());
      // State-space layers keep a fixed-size recurrent state per sequence (f32) instead of K/V
      // rows that grow with each token.
      std::string per = kv->bytes_per_token() > 0 || !kv->recurrent()
                            ? fmt::format("{} per token for a global layer stack ({})",
                                          human_bytes(double(kv->bytes_per_token())), kv->describe_types())
                            : std::string("no K/V (no attention layers)");
      if (kv->recurrent())
        per += fmt::format(" + {} of recurrent state per sequence (f32)", human_bytes(double(kv->state_bytes_per_seq())));
      std::printf("kv cache:    %s; one sequence at the trained context (%lld) %s\n", per.c_str(),
                  (long long)h.n_ctx_train, human_bytes(double(kv->bytes_per_seq())).c_str());
      std::printf("kv layout:   %s\n", kv->describe().c_str());
      const Model::PackStats& pk = (*model)->pack_stats();
      std::printf("load:        %lld matrices (%s) repacked into 16-row panels for the %s kernels in %.0f ms\n",
                  (long long)pk.matrices, human_bytes(double(pk.bytes)).c_str(),
                  std::string(isa_name(kernels().isa)).c_str(), pk.seconds * 1e3);
    } else {
      std::printf("model:       cannot run: %s\n", model.error().message.c_str());
    }
    std::printf("\nmetadata:\n");
    for (const auto& [key, v] : f->metadata())
      std::printf("  %-44s %s\n", key.c_str(), value_summary(v).c_str());
    // Tokenizer summary.
    if (auto toks = f->find("tokenizer.ggml.tokens")) {
      std::printf("\ntokenizer:   %s, %zu tokens", value_summary(*f->find("tokenizer.ggml.model")).c_str(),
                  toks->items.size());
      if (auto merges = f->find("tokenizer.ggml.merges")) std::printf(", %zu merges", merges->items.size());
      std::printf("\n");
    }
    // Tensor table: count and bytes by type.
    struct Agg { size_t n = 0; uint64_t bytes = 0, elems = 0; };
    std::map<std::string, Agg> by_type;
    uint64_t total = 0, total_elems = 0;
    for (const auto& t : f->tensors()) {
      Agg& a = by_type[std::string(type_name(t.type))];
      a.n++; a.bytes += t.n_bytes; a.elems += t.n_elements;
      total += t.n_bytes; total_elems += t.n_elements;
    }
    std::string mix;  // general.file_type as llama-quantize names it
    if (auto ft = f->get_uint("general.file_type"); ft.ok()) {
      mix = fmt::format(", file type {}", *ft);
      for (const QuantMix& m : all_quant_mixes())
        if (m.file_type == *ft) mix = fmt::format(", file type {} ({})", m.name, *ft);
    }
    std::printf("\ntensors:     %zu, %.1fM parameters, %s, %.2f bits per weight%s\n", f->tensors().size(),
                double(total_elems) / 1e6, human_bytes(double(total)).c_str(),
                total_elems ? 8.0 * double(total) / double(total_elems) : 0.0, mix.c_str());
    std::printf("  %-8s %6s %14s %8s\n", "type", "count", "bytes", "bits/w");
    for (const auto& [name, a] : by_type)
      std::printf("  %-8s %6zu %14s %8.2f\n", name.c_str(), a.n, human_bytes(double(a.bytes)).c_str(),
                  a.elems ? 8.0 * double(a.bytes) / double(a.elems) : 0.0);
    if (*all && model.ok()) {
      // The architecture's tensor list, in its order, with what each tensor is for.
      std::printf("\n  %-40s %-8s %-22s %s\n", "name", "type", "role", "dims");
      for (const TensorSpec& t : (*model)->tensors()) {
        std::string dims;
        for (size_t i = 0; i < t.dims.size(); ++i) dims += (i ? " x " : "") + std::to_string(t.dims[i]);
        const std::string type = t.source ? std::string(type_name(t.source->type)) : "absent";
        std::printf("  %-40s %-8s %-22s %s\n", t.name.c_str(), type.c_str(),
                    std::string(tensor_role_name(t.role)).c_str(), dims.c_str());
      }
    } else if (*all) {
      std::printf("\n  %-40s %-8s %s\n", "name", "type", "dims");
      for (const auto& t : f->tensors()) {
        std::string dims;
        for (size_t i = 0; i < t.dims.size(); ++i) dims += (i ? " x " : "") + std::to_string(t.dims[i]);
        std::printf("  %-40s %-8s %s\n", t.name.c_str(), std::string(type_name(t.type)).c_str(), dims.c_str());
      }
    }
  });
}

}  // namespace peregrine::tools
