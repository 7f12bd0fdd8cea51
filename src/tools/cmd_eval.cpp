// peregrine eval -m MODEL --base BASE -f TEXT: what a compressed model lost against its base,
// measured the way llama.cpp's `llama-perplexity --kl-divergence` does.
//
// The text is cut into llama-perplexity's windows (tools/llama_windows.h: -c tokens each, BOS in
// the first slot when the model adds BOS, positions c/2 .. c-2 scored). Each window is evaluated
// with BASE, then with MODEL; at every scored position both rows of logits become log-softmaxes
// (double sums) and give:
//   KLD      KL(P_base || P_model) = sum_i p_base(i) * (log p_base(i) - log p_model(i))
//   same top argmax of both rows equal (llama-perplexity's "Same top p"; ties: the lower id)
//   dp       p_model(next token) - p_base(next token)
// Only one window's scored logits per model are held (n_scored x n_vocab floats each), plus one
// KLD per scored token for the percentiles.
//
// stdout: a table, or with --json one object with these fields:
//   model, base, file          the paths as given
//   n_ctx, windows             window size (-c) and windows scored
//   scored_tokens              positions scored: windows * (n_ctx - 1 - n_ctx/2)
//   ppl_model, ppl_base        exp(mean NLL) of each model
//   ppl_model_err, ppl_base_err  their uncertainty as llama-perplexity gives it: PPL times the
//                              standard error of the mean NLL
//   ln_ppl_ratio(_err)         ln(PPL(model)/PPL(base)) = mean NLL difference, and its standard
//                              error (the two NLLs' covariance taken into account)
//   kld_mean(_err)             mean KLD in nats and its standard error
//   kld_max, kld_p99_9, kld_p99, kld_p90, kld_median  KLD percentiles (linear interpolation
//                              between sorted values, as llama-perplexity and numpy do)
//   top1_agreement(_err)       fraction of positions whose argmax agrees, in [0, 1], and its
//                              standard error
//   dp_mean(_err), dp_abs_mean, dp_rms  mean, mean absolute and root mean square of dp, as
//                              probabilities (not percent)
// Standard errors are 0 with 10 or fewer scored tokens, as in llama-perplexity.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/read_file.h"
#include "engine/session.h"
#include "tools/commands.h"
#include "tools/common.h"
#include "tools/llama_windows.h"

namespace peregrine::tools {
namespace {

// The text is tokenized whole; bounded so a wrong -f cannot exhaust memory.
constexpr size_t kMaxTextBytes = size_t{256} << 20;

// One scored position, both models.
struct RowStats {
  double nll_base = 0, nll_model = 0;  // -log p(next token)
  double kld = 0;                      // KL(P_base || P_model), nats
  double dp = 0;                       // p_model(next) - p_base(next)
  bool same_top = false;
};

int64_t argmax(std::span<const float> row) {
  return std::max_element(row.begin(), row.end()) - row.begin();  // the first maximum
}

// base, model: [n_vocab] logits of one position; target: the token that follows it.
RowStats score_row(std::span<const float> base, std::span<const float> model, TokenId target) {
  const double lse_b = log_sum_exp(base), lse_m = log_sum_exp(model);
  double kld = 0.0;
  for (size_t i = 0; i < base.size(); ++i) {
    const double lp_b = double(base[i]) - lse_b, lp_m = double(model[i]) - lse_m;
    kld += std::exp(lp_b) * (lp_b - lp_m);
  }
  RowStats r;
  r.nll_base = lse_b - double(base[size_t(target)]);
  r.nll_model = lse_m - double(model[size_t(target)]);
  r.kld = kld;
  r.dp = std::exp(-r.nll_model) - std::exp(-r.nll_base);
  r.same_top = argmax(base) == argmax(model);
  return r;
}

// Running sums over every scored position, in window order (the result does not depend on -t).
struct Totals {
  int64_t n = 0;
  double nll_b = 0, nll_b2 = 0, nll_m = 0, nll_m2 = 0, nll_bm = 0;
  double kld = 0, kld2 = 0;
  double dp = 0, dp2 = 0, dp_abs = 0;
  int64_t same_top = 0;
  std::vector<double> klds;  // [n] for the percentiles

  void add(const RowStats& r) {
    ++n;
    nll_b += r.nll_base;
    nll_b2 += r.nll_base * r.nll_base;
    nll_m += r.nll_model;
    nll_m2 += r.nll_model * r.nll_model;
    nll_bm += r.nll_base * r.nll_model;
    kld += r.kld;
    kld2 += r.kld * r.kld;
    dp += r.dp;
    dp2 += r.dp * r.dp;
    dp_abs += std::fabs(r.dp);
    same_top += r.same_top ? 1 : 0;
    klds.push_back(r.kld);
  }
};

struct MeanErr {
  double mean = 0, err = 0;
};

// llama-perplexity's mean_and_uncertainty: the mean and its standard error (0 for n <= 10).
MeanErr mean_err(double sum, double sum2, int64_t n) {
  MeanErr m;
  if (n < 1) return m;
  m.mean = sum / double(n);
  const double var = sum2 / double(n) - m.mean * m.mean;
  m.err = var > 0 && n > 10 ? std::sqrt(var / double(n - 1)) : 0.0;
  return m;
}

// sorted: ascending; fraction in [0, 1]; linear between the two nearest ranks.
double percentile(const std::vector<double>& sorted, double fraction) {
  const double p = fraction * double(sorted.size() - 1);
  const size_t i = size_t(p);
  const double t = p - double(i);
  return (1 - t) * sorted[i] + t * sorted[std::min(i + 1, sorted.size() - 1)];
}

// KLD and agreement need the same token behind every id, and the same windows (BOS policy).
void check_same_tokenizer(Session& model, Session& base, const std::string& model_name,
                          const std::string& base_name) {
  const Tokenizer& tm = model.tokenizer();
  const Tokenizer& tb = base.tokenizer();
  auto differ = [&](const std::string& what) {
    fail(fmt::format("{} and {} do not share a tokenizer: {}", model_name, base_name, what));
  };
  const int64_t nm = model.model().hparams().n_vocab;
  const int64_t nb = base.model().hparams().n_vocab;
  if (nm != nb || tm.n_vocab() != tb.n_vocab())
    differ(fmt::format("{} tokens against {}", tm.n_vocab(), tb.n_vocab()));
  for (TokenId id = 0; id < tm.n_vocab(); ++id)
    if (tm.token_text(id) != tb.token_text(id)) differ(fmt::format("token {} differs", id));
  if (tm.add_bos() != tb.add_bos() || (tm.add_bos() && tm.bos() != tb.bos()))
    differ("one adds a BOS token the other does not");
}

struct Report {
  std::string model, base, file;
  int64_t n_ctx = 0, windows = 0;
  Totals t;
};

nlohmann::ordered_json to_json(const Report& r) {
  const Totals& t = r.t;
  const MeanErr nll_m = mean_err(t.nll_m, t.nll_m2, t.n), nll_b = mean_err(t.nll_b, t.nll_b2, t.n);
  // Covariance of the two mean NLLs (llama-perplexity's, 0 under 10 tokens).
  const double cov = t.n < 10 ? 0.0
                              : (t.nll_bm / double(t.n) - nll_m.mean * nll_b.mean) / double(t.n - 1);
  const double ratio_var = nll_m.err * nll_m.err + nll_b.err * nll_b.err - 2 * cov;
  const MeanErr kld = mean_err(t.kld, t.kld2, t.n), dp = mean_err(t.dp, t.dp2, t.n);
  const double agree = double(t.same_top) / double(t.n);
  std::vector<double> sorted = t.klds;
  std::sort(sorted.begin(), sorted.end());
  return nlohmann::ordered_json{
      {"model", r.model},
      {"base", r.base},
      {"file", r.file},
      {"n_ctx", r.n_ctx},
      {"windows", r.windows},
      {"scored_tokens", t.n},
      {"ppl_model", std::exp(nll_m.mean)},
      {"ppl_model_err", std::exp(nll_m.mean) * nll_m.err},
      {"ppl_base", std::exp(nll_b.mean)},
      {"ppl_base_err", std::exp(nll_b.mean) * nll_b.err},
      {"ln_ppl_ratio", nll_m.mean - nll_b.mean},
      {"ln_ppl_ratio_err", std::sqrt(std::max(0.0, ratio_var))},
      {"kld_mean", kld.mean},
      {"kld_mean_err", kld.err},
      {"kld_max", sorted.back()},
      {"kld_p99_9", percentile(sorted, 0.999)},
      {"kld_p99", percentile(sorted, 0.99)},
      {"kld_p90", percentile(sorted, 0.90)},
      {"kld_median", percentile(sorted, 0.5)},
      {"top1_agreement", agree},
      {"top1_agreement_err", t.n > 1 ? std::sqrt(agree * (1 - agree) / double(t.n - 1)) : 0.0},
      {"dp_mean", dp.mean},
      {"dp_mean_err", dp.err},
      {"dp_abs_mean", t.dp_abs / double(t.n)},
      {"dp_rms", std::sqrt(t.dp2 / double(t.n))},
  };
}

void print_table(const nlohmann::ordered_json& j) {
  auto d = [&](const char* k) { return j[k].get<double>(); };
  std::printf("model:  %s\n", j["model"].get<std::string>().c_str());
  std::printf("base:   %s\n", j["base"].get<std::string>().c_str());
  std::printf("text:   %s, %lld windows of %lld, %lld scored tokens\n\n", j["file"].get<std::string>().c_str(),
              (long long)j["windows"].get<int64_t>(), (long long)j["n_ctx"].get<int64_t>(),
              (long long)j["scored_tokens"].get<int64_t>());
  std::printf("PPL(model)                %12.6f ± %10.6f\n", d("ppl_model"), d("ppl_model_err"));
  std::printf("PPL(base)                 %12.6f ± %10.6f\n", d("ppl_base"), d("ppl_base_err"));
  std::printf("ln(PPL(model)/PPL(base))  %12.6f ± %10.6f\n", d("ln_ppl_ratio"), d("ln_ppl_ratio_err"));
  std::printf("KLD mean                  %12.6f ± %10.6f\n", d("kld_mean"), d("kld_mean_err"));
  std::printf("KLD max                   %12.6f\n", d("kld_max"));
  std::printf("KLD 99.9%%                 %12.6f\n", d("kld_p99_9"));
  std::printf("KLD 99%%                   %12.6f\n", d("kld_p99"));
  std::printf("KLD 90%%                   %12.6f\n", d("kld_p90"));
  std::printf("KLD median                %12.6f\n", d("kld_median"));
  std::printf("top-1 agreement           %10.3f %% ± %6.3f %%\n", 100 * d("top1_agreement"),
              100 * d("top1_agreement_err"));
  std::printf("Δp mean                   %10.3f %% ± %6.3f %%\n", 100 * d("dp_mean"), 100 * d("dp_mean_err"));
  std::printf("|Δp| mean                 %10.3f %%\n", 100 * d("dp_abs_mean"));
  std::printf("Δp RMS                    %10.3f %%\n", 100 * d("dp_rms"));
}

}  // namespace

void register_eval(CLI::App& app) {
  struct Opts {
    ModelOptions model;
    std::string base, file;
    int64_t max_windows = 0;
    bool json = false;
  };
  auto o = std::make_shared<Opts>();
  o->model.ctx = 512;  // llama-perplexity's default
  CLI::App* cmd = app.add_subcommand(
      "eval", "What a model lost against its base: PPL of both, KL divergence, top-1 agreement "
              "(like llama-perplexity --kl-divergence)");
  cmd->add_option("--base", o->base, "The reference model (GGUF path or cache name), opened like -m")
      ->required();
  cmd->add_option("-f,--file", o->file, "Text file")->required();
  cmd->add_option("--chunks", o->max_windows, "Score at most this many windows (0 = all)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  cmd->add_flag("--json", o->json, "Print one JSON object instead of the table");
  add_model_options(cmd, o->model);
  cmd->get_option("--ctx-size")->description("Window size in tokens, llama-perplexity's -c")->capture_default_str();
  cmd->callback([o] {
    if (o->model.ctx < kMinLlamaWindow)
      fail(fmt::format("eval needs -c of at least {} (got {})", kMinLlamaWindow, o->model.ctx));
    const std::string text = check(read_file(o->file, kMaxTextBytes));
    ModelOptions base_opt = o->model;
    base_opt.model = o->base;
    auto base = open_session(base_opt);
    auto model = open_session(o->model);
    check_same_tokenizer(*model, *base, o->model.model, o->base);

    Result<LlamaWindows> made = make_llama_windows(base->tokenizer(), text, o->model.ctx, o->max_windows);
    if (!made.ok()) fail(fmt::format("{}: {}", o->file, made.error().message));
    const LlamaWindows& lw = *made;
    const int64_t n_vocab = base->model().hparams().n_vocab, n_scored = lw.n_scored();
    std::fprintf(stderr, "%zu tokens, %lld windows of %lld, positions %lld..%lld of each scored\n",
                 lw.tokens.size(), (long long)lw.n_windows, (long long)lw.n_ctx, (long long)lw.first(),
                 (long long)(lw.n_ctx - 2));

    Report rep{o->model.model, o->base, o->file, lw.n_ctx, lw.n_windows, {}};
    rep.t.klds.reserve(size_t(lw.n_windows * n_scored));
    std::vector<float> base_logits, model_logits, scratch;  // [n_scored, n_vocab] each
    std::vector<RowStats> rows(static_cast<size_t>(n_scored));
    for (int64_t w = 0; w < lw.n_windows; ++w) {
      check(eval_scored_rows(*base, lw, w, base_logits, scratch));
      check(eval_scored_rows(*model, lw, w, model_logits, scratch));
      const std::vector<TokenId> win = lw.window(w);
      model->pool().parallel_range(n_scored, 1, [&](int64_t begin, int64_t end, int) {
        for (int64_t r = begin; r < end; ++r) {
          const size_t at = size_t(r * n_vocab);
          rows[size_t(r)] = score_row(std::span<const float>(base_logits.data() + at, size_t(n_vocab)),
                                      std::span<const float>(model_logits.data() + at, size_t(n_vocab)),
                                      win[size_t(lw.first() + 1 + r)]);
        }
      });
      for (const RowStats& r : rows) rep.t.add(r);
      const Totals& t = rep.t;
      std::fprintf(stderr, "[%lld/%lld] PPL(model) %.4f, PPL(base) %.4f, KLD %.6f, top-1 %.2f%%\n",
                   (long long)(w + 1), (long long)lw.n_windows, std::exp(t.nll_m / double(t.n)),
                   std::exp(t.nll_b / double(t.n)), t.kld / double(t.n), 100.0 * double(t.same_top) / double(t.n));
    }
    const nlohmann::ordered_json j = to_json(rep);
    if (o->json)
      std::printf("%s\n", j.dump(2).c_str());
    else
      print_table(j);
  });
}

}  // namespace peregrine::tools
