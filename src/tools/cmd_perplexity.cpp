// peregrine perplexity -f FILE: perplexity over non-overlapping windows of -c tokens.
// Each window starts from an empty cache; every token after the window's first is
// scored. With --stream the whole text is one sequence fed -b tokens at a time, every
// token after the first scored: with --attn-sinks/--attn-window it runs past the context
// on a fixed KV budget. With --llama-windows the windows are llama-perplexity's (see
// tools/llama_windows.h: BOS in the first slot, only each window's second half scored), so the
// value compares with llama-perplexity's on the same file; its "+/-" estimate goes to stderr.
// The last stdout line is "PPL = <value>".
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

#include "engine/session.h"
#include "tools/commands.h"
#include "tools/common.h"
#include "tools/llama_windows.h"

namespace peregrine::tools {

void register_perplexity(CLI::App& app) {
  struct Opts {
    ModelOptions model;
    std::string file;
    int64_t max_windows = 0;
    bool stream = false;
    bool llama_windows = false;
    int64_t max_tokens = 0;
  };
  auto o = std::make_shared<Opts>();
  o->model.ctx = 512;
  CLI::App* cmd = app.add_subcommand("perplexity", "Perplexity of a text file");
  cmd->add_option("-f,--file", o->file, "Text file")->required();
  cmd->add_option("--chunks", o->max_windows, "Score at most this many windows (0 = all)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  cmd->add_flag("--stream", o->stream, "Score the text as one stream instead of windows");
  cmd->add_flag("--llama-windows", o->llama_windows,
                "Score llama-perplexity's windows: BOS first, only the second half of each scored");
  cmd->add_option("--max-tokens", o->max_tokens, "With --stream: score at most this many tokens (0 = all)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 30));
  add_model_options(cmd, o->model);
  cmd->callback([o] {
    if (o->model.ctx < 2) fail("perplexity needs -c of at least 2");
    if (o->llama_windows && o->stream) fail("--llama-windows and --stream exclude each other");
    if (o->llama_windows && o->model.ctx < kMinLlamaWindow)
      fail(fmt::format("perplexity --llama-windows needs -c of at least {}", kMinLlamaWindow));
    std::ifstream in(o->file, std::ios::binary);
    if (!in) fail(fmt::format("{}: cannot open", o->file));
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    auto session = open_session(o->model);
    const Tokenizer& tok = session->tokenizer();
    const int64_t c = o->model.ctx, n_vocab = session->model().hparams().n_vocab;
    // -log p(target | logits row)
    auto token_nll = [n_vocab](const float* l, TokenId target) {
      return log_sum_exp(std::span<const float>(l, size_t(n_vocab))) - l[target];
    };
    if (o->llama_windows) {
      Result<LlamaWindows> made = make_llama_windows(tok, text, c, o->max_windows);
      if (!made.ok()) fail(fmt::format("{}: {}", o->file, made.error().message));
      const LlamaWindows& lw = *made;
      std::fprintf(stderr, "%zu tokens, %lld windows of %lld, positions %lld..%lld of each scored\n",
                   lw.tokens.size(), (long long)lw.n_windows, (long long)c, (long long)lw.first(),
                   (long long)(c - 2));
      double nll = 0.0, nll2 = 0.0;
      int64_t count = 0;
      std::vector<float> logits, scratch;
      for (int64_t w = 0; w < lw.n_windows; ++w) {
        check(eval_scored_rows(*session, lw, w, logits, scratch));
        const std::vector<TokenId> win = lw.window(w);
        for (int64_t r = 0; r < lw.n_scored(); ++r) {
          const double v = token_nll(logits.data() + r * n_vocab, win[size_t(lw.first() + 1 + r)]);
          nll += v;
          nll2 += v * v;
          ++count;
        }
        std::printf("[%lld] %.4f\n", (long long)(w + 1), std::exp(nll / double(count)));
        std::fflush(stdout);
      }
      // llama-perplexity's "Final estimate": the standard error of the mean NLL, scaled by PPL.
      const double mean = nll / double(count), var = nll2 / double(count) - mean * mean;
      const double ppl = std::exp(mean);
      if (var > 0 && count > 1)
        std::fprintf(stderr, "estimate: PPL = %.4f +/- %.5f over %lld tokens\n", ppl,
                     ppl * std::sqrt(var / double(count - 1)), (long long)count);
      std::printf("PPL = %.4f\n", ppl);
      return;
    }
    // Plain text: special-token strings in the file are just text.
    std::vector<TokenId> tokens = tok.encode(text, false);
    if (o->stream) {
      std::vector<TokenId> seq;
      if (tok.add_bos()) seq.push_back(tok.bos());
      seq.insert(seq.end(), tokens.begin(), tokens.end());
      if (o->max_tokens > 0 && int64_t(seq.size()) > o->max_tokens + 1) seq.resize(size_t(o->max_tokens + 1));
      if (seq.size() < 2) fail(fmt::format("{}: too few tokens to score", o->file));
      if (!session->unbounded() && int64_t(seq.size()) > session->n_ctx())
        fail(fmt::format("{}: {} tokens do not fit in the context of {}: raise -c or use "
                         "--attn-window", o->file, seq.size(), session->n_ctx()));
      std::fprintf(stderr, "%zu tokens as one stream, attention: %s\n", seq.size(),
                   session->cache().shape().kind(0).describe().c_str());
      const int64_t b = o->model.batch;
      std::vector<float> logits;
      std::vector<float> prev(static_cast<size_t>(n_vocab));
      double nll = 0.0;
      int64_t count = 0, next_report = 1024;
      for (int64_t start = 0; start < int64_t(seq.size()); start += b) {
        const int64_t end = std::min<int64_t>(int64_t(seq.size()), start + b);
        check(session->eval(std::span<const TokenId>(seq.data() + start, size_t(end - start)), true, logits));
        for (int64_t i = start; i < end; ++i) {
          if (i > 0) {
            nll += token_nll(i == start ? prev.data() : logits.data() + (i - 1 - start) * n_vocab, seq[size_t(i)]);
            ++count;
          }
        }
        std::copy_n(logits.data() + (end - 1 - start) * n_vocab, n_vocab, prev.data());
        if (count >= next_report || end == int64_t(seq.size())) {
          std::printf("[%lld tokens] %.4f\n", (long long)count, std::exp(nll / double(count)));
          std::fflush(stdout);
          while (next_report <= count) next_report += 1024;
        }
      }
      std::printf("PPL = %.4f\n", std::exp(nll / double(count)));
      return;
    }
    // With add_bos the window's first slot is BOS and c-1 text tokens follow.
    const int64_t per_window = tok.add_bos() ? c - 1 : c;
    int64_t n_windows = int64_t(tokens.size()) / per_window;
    if (o->max_windows > 0) n_windows = std::min(n_windows, o->max_windows);
    if (n_windows == 0)
      fail(fmt::format("{}: {} tokens is less than one window of {}", o->file, tokens.size(), c));
    std::fprintf(stderr, "%zu tokens, %lld windows of %lld\n", tokens.size(), (long long)n_windows,
                 (long long)c);
    double nll = 0.0;
    int64_t count = 0;
    std::vector<float> logits;
    for (int64_t w = 0; w < n_windows; ++w) {
      std::vector<TokenId> win;
      if (tok.add_bos()) win.push_back(tok.bos());
      win.insert(win.end(), tokens.begin() + w * per_window, tokens.begin() + (w + 1) * per_window);
      session->reset();
      check(session->eval(win, true, logits));
      const int64_t first = tok.add_bos() ? 1 : 0;  // score real text tokens only
      for (int64_t i = std::max<int64_t>(first, 1); i < int64_t(win.size()); ++i) {
        nll += token_nll(logits.data() + (i - 1) * n_vocab, win[size_t(i)]);
        ++count;
      }
      std::printf("[%lld] %.4f\n", (long long)(w + 1), std::exp(nll / double(count)));
      std::fflush(stdout);
    }
    std::printf("PPL = %.4f\n", std::exp(nll / double(count)));
  });
}

}  // namespace peregrine::tools
