// peregrine imatrix -m MODEL -f TEXT -o FILE: an importance matrix, as llama-imatrix computes
// it. The text (special-token strings in it are plain text) is cut into chunks of -c tokens,
// the first token of each replaced by BOS when the model adds one; each chunk runs from an
// empty cache, up to -b tokens per forward pass (several chunks, as separate sequences, when
// -b holds them). For every weight matrix of the blocks ("blk.*", and output.weight with
// --process-output) the activation observer (model/forward.h) sums each input column's x^2
// over the tokens and counts the tokens. Like llama-imatrix, a matmul of fewer than 16 rows
// (a pass of fewer than 16 tokens) is skipped. Sums are kept in double (llama: float) and
// written as F32. --in-file adds earlier files (either format) first; without -f it only
// merges them. Output: GGUF, or llama's legacy .dat (--output-format, default by the -o
// extension), written atomically.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>

#include "core/read_file.h"
#include "engine/session.h"
#include "quant/imatrix_file.h"
#include "tools/commands.h"
#include "tools/common.h"
#include "tools/llama_windows.h"

namespace peregrine::tools {
namespace {

// llama-imatrix ignores matmuls whose input has fewer rows ("why are small batches
// ignored (<16 tokens)?" in its collect_imatrix); the same rule keeps the files comparable.
constexpr int64_t kMinRows = 16;

// Running sums per weight matrix, in double.
struct Accum {
  int64_t n_cols = 0, n_mat = 1;
  std::vector<double> sums;    // [n_mat][n_cols]
  std::vector<double> counts;  // [n_mat]
};

class Collector final : public ActivationObserver {
 public:
  explicit Collector(bool process_output) : process_output_(process_output) {}

  bool wanted(std::string_view weight) const {
    return weight.starts_with("blk.") || (process_output_ && weight == "output.weight");
  }

  void observe(const Activation& a) override {
    if (a.rows < kMinRows) return;
    bool any = false;
    for (const Weight* w : a.consumers) any = any || wanted(w->name);
    if (!any) return;
    col_.assign(size_t(a.cols), 0.0);  // [cols]: this activation's sum of x^2 per column
    for (int64_t r = 0; r < a.rows; ++r) {
      const float* x = a.data + r * a.cols;
      for (int64_t j = 0; j < a.cols; ++j) col_[size_t(j)] += double(x[j]) * double(x[j]);
    }
    for (const Weight* w : a.consumers) {
      if (!wanted(w->name)) continue;
      Accum& acc = stats_[w->name];
      if (acc.sums.empty()) {
        acc.n_cols = a.cols;
        acc.sums.assign(size_t(a.cols), 0.0);
        acc.counts.assign(1, 0.0);
      }
      if (acc.n_mat != 1 || acc.n_cols != a.cols) {
        mismatch_ = fmt::format("'{}' has input width {} in the model but {} x {} in --in-file", w->name, a.cols,
                                acc.n_cols, acc.n_mat);
        continue;
      }
      for (int64_t j = 0; j < a.cols; ++j) acc.sums[size_t(j)] += col_[size_t(j)];
      acc.counts[0] += double(a.rows);
    }
  }

  // Adds a loaded file. A .dat (chunk_size 0) holds means times chunks: scaled by the chunk
  // size to token sums, as llama-imatrix merges it.
  Status merge(const Imatrix& m, int64_t chunk_size, const std::string& path) {
    const double scale = m.chunk_size == 0 ? double(chunk_size) : 1.0;
    for (const ImatrixEntry& e : m.entries) {
      Accum& acc = stats_[e.name];
      if (acc.sums.empty()) {
        acc.n_cols = e.n_cols;
        acc.n_mat = e.n_mat;
        acc.sums.assign(e.sums.size(), 0.0);
        acc.counts.assign(e.counts.size(), 0.0);
      } else if (acc.n_cols != e.n_cols || acc.n_mat != e.n_mat) {
        return make_error("{}: '{}' is {} x {} here but {} x {} in an earlier file", path, e.name, e.n_cols,
                          e.n_mat, acc.n_cols, acc.n_mat);
      }
      for (size_t i = 0; i < e.sums.size(); ++i) acc.sums[i] += double(e.sums[i]) * scale;
      for (size_t i = 0; i < e.counts.size(); ++i) acc.counts[i] += double(e.counts[i]) * scale;
    }
    datasets_.insert(datasets_.end(), m.datasets.begin(), m.datasets.end());
    return Status::Ok();
  }

  const std::string& mismatch() const { return mismatch_; }
  std::vector<std::string>& datasets() { return datasets_; }

  // The file's contents; chunk_count as llama-imatrix counts it: the largest token count
  // over the chunk size.
  Result<Imatrix> result(int64_t chunk_size) const {
    Imatrix m;
    m.datasets = datasets_;
    m.chunk_size = uint32_t(chunk_size);
    double max_count = 0.0;
    for (const auto& [name, acc] : stats_) {  // std::map: name order
      ImatrixEntry& e = m.entries.emplace_back();
      e.name = name;
      e.n_cols = acc.n_cols;
      e.n_mat = acc.n_mat;
      for (double s : acc.sums) {
        if (!std::isfinite(float(s))) return make_error("non-finite activation sums for '{}'", name);
        e.sums.push_back(float(s));
      }
      for (double c : acc.counts) {
        e.counts.push_back(float(c));
        max_count = std::max(max_count, c);
      }
    }
    m.chunk_count = uint32_t(std::min(max_count / double(chunk_size), 4e9));
    return m;
  }

 private:
  bool process_output_;
  std::map<std::string, Accum, std::less<>> stats_;
  std::vector<std::string> datasets_;
  std::vector<double> col_;
  std::string mismatch_;
};

ImatrixFormat output_format(const std::string& flag, const std::string& out) {
  if (flag == "gguf") return ImatrixFormat::Gguf;
  if (flag == "dat") return ImatrixFormat::Dat;
  return out.ends_with(".dat") ? ImatrixFormat::Dat : ImatrixFormat::Gguf;
}

}  // namespace

void register_imatrix(CLI::App& app) {
  struct Opts {
    std::string model = kDefaultModel;
    std::string text, out = "imatrix.gguf", format;
    int threads = 0;
    int64_t ctx = 512, batch = 512, chunks = 0;
    bool process_output = false;
    std::vector<std::string> in_files;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("imatrix", "Importance matrix of a calibration text (llama-imatrix)");
  cmd->add_option("-m,--model", o->model, "Model: a cache name (smollm2-135m) or a GGUF path")
      ->capture_default_str();
  cmd->add_option("-f,--file", o->text, "Calibration text");
  cmd->add_option("-o,--output", o->out, "Output file")->capture_default_str();
  cmd->add_option("--output-format", o->format, "gguf or dat (default: dat for a .dat output, else gguf)")
      ->check(CLI::IsMember({"gguf", "dat"}));
  cmd->add_option("-c,--ctx-size", o->ctx, "Tokens per chunk")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(1) << 20));
  cmd->add_option("-b,--batch-size", o->batch, "Tokens per forward pass")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(65536)));
  cmd->add_option("--chunks", o->chunks, "Process at most this many chunks (0 = all)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  cmd->add_option("-t,--threads", o->threads, "Threads (default: all cores)")->check(CLI::Range(0, 1024));
  cmd->add_flag("--process-output", o->process_output, "Also collect output.weight");
  cmd->add_option("--in-file", o->in_files, "Add an earlier imatrix (gguf or dat; repeatable)");
  cmd->callback([o] {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    if (o->text.empty() && o->in_files.empty()) fail("imatrix needs a calibration text (-f) or --in-file to merge");
    const ImatrixFormat format = output_format(o->format, o->out);
    const int64_t c = o->ctx;
    Collector col(o->process_output);
    for (const std::string& in : o->in_files) {
      Imatrix m = check(load_imatrix(in));
      std::fprintf(stderr, "%s: %zu entries, %u chunks of %s\n", in.c_str(), m.entries.size(), m.chunk_count,
                   m.chunk_size > 0 ? fmt::format("{} tokens", m.chunk_size).c_str() : "unknown size (.dat)");
      check(col.merge(m, c, in));
    }
    int64_t n_chunks = 0;
    if (!o->text.empty()) {
      const std::string text = check(read_file(o->text, size_t(1) << 30));
      LoadedModel lm = check(LoadedModel::load(check(resolve_model(o->model)), o->threads));
      Model& model = *lm.model;
      const Tokenizer& tok = *lm.tok;
      // As llama-imatrix: BOS (when the model adds it) and the text, then each chunk's first
      // token replaced by BOS, so chunks start where llama's start.
      const std::vector<TokenId> tokens = llama_text_tokens(tok, text);
      n_chunks = int64_t(tokens.size()) / c;
      if (o->chunks > 0) n_chunks = std::min(n_chunks, o->chunks);
      if (n_chunks == 0)
        fail(fmt::format("{}: {} tokens is less than one chunk of {} (lower -c)", o->text, tokens.size(), c));
      // Chunks per pass (separate sequences), or passes per chunk.
      const int64_t n_seq = std::max<int64_t>(1, o->batch / c);
      const int64_t step = std::min(o->batch, c);
      KvShape shape = model.kv_shape(c, n_seq, KvConfig{}, AttnKind::global(), step);
      check(shape.validate());
      check(model.check_kv(shape));
      KvCache cache(shape);
      ForwardOptions fopt;
      fopt.observer = &col;
      Batch batch;
      std::vector<float> logits;
      std::fprintf(stderr, "%s: %zu tokens, %lld chunks of %lld, %lld chunks per pass\n", o->text.c_str(),
                   tokens.size(), (long long)n_chunks, (long long)c, (long long)n_seq);
      for (int64_t first = 0; first < n_chunks; first += n_seq) {
        const auto tc = Clock::now();
        const int64_t n_here = std::min(n_seq, n_chunks - first);
        for (int64_t s = 0; s < n_here; ++s) cache.reset(s);
        for (int64_t start = 0; start < c; start += step) {
          const int64_t end = std::min(c, start + step);
          batch.clear();
          for (int64_t s = 0; s < n_here; ++s) {
            const TokenId* chunk = tokens.data() + (first + s) * c;
            // The output head's input is observed whole; one row of logits is enough.
            for (int64_t i = start; i < end; ++i)
              batch.add(i == 0 && tok.add_bos() ? tok.bos() : chunk[i], int32_t(i), int32_t(s),
                        s + 1 == n_here && i + 1 == end);
          }
          check(model.forward(batch, cache, logits, fopt));
          if (!col.mismatch().empty()) fail(col.mismatch());
        }
        const double secs = std::chrono::duration<double>(Clock::now() - tc).count();
        for (int64_t s = 0; s < n_here; ++s)
          std::fprintf(stderr, "[%lld/%lld] %.2f s\n", (long long)(first + s + 1), (long long)n_chunks,
                       secs / double(n_here));
      }
      col.datasets().push_back(o->text);
    }
    const Imatrix m = check(col.result(c));
    check(save_imatrix(m, o->out, format));
    const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
    const std::string files = fmt::format("{} file{}", o->in_files.size(), o->in_files.size() > 1 ? "s" : "");
    std::string from = o->text.empty() ? "merged from " + files
                                       : fmt::format("from {} chunks of {} tokens of {}", n_chunks, c, o->text);
    if (!o->text.empty() && !o->in_files.empty()) from += " + " + files;
    std::fprintf(stderr, "imatrix: %zu matrices %s in %.1f s -> %s (%s)\n", m.entries.size(), from.c_str(), secs,
                 o->out.c_str(), format == ImatrixFormat::Gguf ? "gguf" : "dat");
  });
}

}  // namespace peregrine::tools
