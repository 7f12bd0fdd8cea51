// peregrine quantize IN OUT TYPE: a GGUF model to another precision (quant/quantize_model.h).
// TYPE is a mix as llama-quantize names them (Q4_K_M, Q8_0, F16, TQ2_0 ...). A progress bar
// on stderr when it is a terminal; a summary (sizes before and after, bits per weight,
// tensors per type, time) on stdout, or one JSON object with --json.
#include <unistd.h>

#include <cstdio>
#include <map>

#include <nlohmann/json.hpp>

#include "quant/quantize_model.h"
#include "quant/type_table.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace peregrine::tools {
namespace {

std::string mix_list() {
  std::string s;
  for (const QuantMix& m : all_quant_mixes()) s += fmt::format("  {:<7} {}\n", m.name, m.description);
  return s;
}

GgmlType type_flag(const std::string& flag, const std::string& name) {
  auto t = quantizable_type(name);
  if (!t) fail(fmt::format("{} {}: unknown or unquantizable type", flag, name));
  return *t;
}

void draw_progress(size_t done, size_t total, uint64_t read, uint64_t bytes_total) {
  constexpr int kWidth = 40;
  const double frac = bytes_total > 0 ? double(read) / double(bytes_total) : 1.0;
  const int filled = int(frac * kWidth);
  std::string bar(size_t(filled), '=');
  if (filled < kWidth) bar += '>' + std::string(size_t(kWidth - filled - 1), ' ');
  std::fprintf(stderr, "\r[%s] %3.0f%%  %zu/%zu tensors", bar.c_str(), frac * 100, done, total);
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

}  // namespace

void register_quantize(CLI::App& app) {
  struct Opts {
    std::string input, output, type, imatrix;
    std::vector<std::string> overrides;
    std::string output_type, token_embd_type;
    int threads = 0;
    bool pure = false, dry_run = false, json = false, verbose = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("quantize", "Convert a GGUF model to another precision (mixes as llama-quantize)");
  cmd->footer("TYPE is one of:\n" + mix_list() + "(Q3_K, Q4_K, Q5_K are Q3_K_M, Q4_K_M, Q5_K_M.)");
  cmd->add_option("input", o->input, "Input GGUF (any type we can decode)")->required();
  cmd->add_option("output", o->output, "Output GGUF (written whole or not at all)")->required();
  cmd->add_option("type", o->type, "Target mix, e.g. Q4_K_M")->required();
  cmd->add_option("--imatrix", o->imatrix, "Importance matrix (GGUF or legacy .dat, ours or llama-imatrix's)");
  cmd->add_option("--keep-type,--tensor-type", o->overrides,
                  "PATTERN=TYPE: tensors whose name matches the regex get TYPE (repeatable, first match wins)")
      ->allow_extra_args(false);  // one value per flag, so positionals may follow it
  cmd->add_option("--output-type", o->output_type, "Type of output.weight");
  cmd->add_option("--token-embedding-type", o->token_embd_type, "Type of token_embd.weight");
  cmd->add_flag("--pure", o->pure, "Every quantizable tensor gets the mix's base type (no per-tensor rules)");
  cmd->add_flag("--dry-run", o->dry_run, "Show the types and sizes, write nothing");
  cmd->add_flag("--json", o->json, "Print the summary as one JSON object");
  cmd->add_flag("-v,--verbose", o->verbose, "List every tensor's conversion");
  cmd->add_option("-t,--threads", o->threads, "Threads (default: all cores)")->check(CLI::Range(0, 1024));
  cmd->callback([o] {
    QuantizeModelOptions q;
    q.input = o->input;
    q.output = o->output;
    q.mix = find_quant_mix(o->type);
    if (q.mix == nullptr) fail(fmt::format("unknown type '{}' (types: see peregrine quantize --help)", o->type));
    for (const std::string& s : o->overrides) q.mix_options.overrides.push_back(check(parse_mix_override(s)));
    if (!o->output_type.empty()) q.mix_options.output_type = type_flag("--output-type", o->output_type);
    if (!o->token_embd_type.empty())
      q.mix_options.token_embd_type = type_flag("--token-embedding-type", o->token_embd_type);
    q.mix_options.pure = o->pure;
    Imatrix imatrix;
    if (!o->imatrix.empty()) {
      imatrix = check(load_imatrix(o->imatrix));
      q.imatrix = &imatrix;
      q.imatrix_path = o->imatrix;
    }
    ThreadPool pool(o->threads > 0 ? o->threads : ThreadPool::default_threads());
    q.pool = &pool;
    q.dry_run = o->dry_run;
    if (!o->json && !o->dry_run && ::isatty(STDERR_FILENO)) q.progress = draw_progress;
    const QuantizeModelReport r = check(quantize_model(q));

    std::map<std::string, size_t> per_type;
    for (const QuantizedTensor& t : r.tensors) ++per_type[std::string(type_name(t.to))];
    const double mib = 1024.0 * 1024.0;
    const double bpw_in = 8.0 * double(r.bytes_in) / double(r.n_elements);
    const double bpw_out = 8.0 * double(r.bytes_out) / double(r.n_elements);
    if (o->json) {
      nlohmann::json j = {{"input", o->input}, {"output", o->dry_run ? "" : o->output}, {"type", q.mix->name},
                          {"file_type", q.mix->file_type}, {"threads", pool.size()}, {"seconds", r.seconds},
                          {"n_elements", r.n_elements}, {"tensor_bytes_in", r.bytes_in},
                          {"tensor_bytes_out", r.bytes_out}, {"file_bytes_in", r.file_bytes_in},
                          {"file_bytes_out", r.file_bytes_out}, {"bpw_in", bpw_in}, {"bpw_out", bpw_out},
                          {"fallbacks", r.n_fallback}, {"imatrix_tensors", r.n_imatrix}};
      nlohmann::json types = nlohmann::json::object();
      for (const auto& [name, n] : per_type) types[name] = n;
      j["tensors_per_type"] = types;
      nlohmann::json list = nlohmann::json::array();
      for (const QuantizedTensor& t : r.tensors)
        list.push_back({{"name", t.name}, {"from", type_name(t.from)}, {"to", type_name(t.to)},
                        {"bytes", t.bytes_out}, {"fell_back", t.fell_back}, {"imatrix", t.used_imatrix}});
      j["tensors"] = list;
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    if (o->verbose || o->dry_run) {
      for (const QuantizedTensor& t : r.tensors)
        std::printf("%-40s %6s -> %-6s %10.3f MiB%s%s\n", t.name.c_str(), std::string(type_name(t.from)).c_str(),
                    std::string(type_name(t.to)).c_str(), double(t.bytes_out) / mib,
                    t.fell_back ? "  (rows do not fit the mix's type)" : "", t.used_imatrix ? "  imatrix" : "");
    }
    std::string types;
    for (const auto& [name, n] : per_type) types += fmt::format("{}{} {}", types.empty() ? "" : ", ", n, name);
    std::printf("%s: %.2f MiB (%.2f bpw) -> %.2f MiB (%.2f bpw), %s\n", q.mix->name.data(), double(r.bytes_in) / mib,
                bpw_in, double(r.bytes_out) / mib, bpw_out, types.c_str());
    if (r.n_fallback > 0)
      std::printf("%zu tensors took a smaller-block type: their rows are not a whole number of the mix's blocks\n",
                  r.n_fallback);
    if (q.imatrix != nullptr) std::printf("%zu tensors quantized with importance weights\n", r.n_imatrix);
    if (!o->dry_run)
      std::printf("wrote %s (%.2f MiB) in %.2f s with %d threads\n", o->output.c_str(),
                  double(r.file_bytes_out) / mib, r.seconds, pool.size());
  });
}

}  // namespace peregrine::tools
