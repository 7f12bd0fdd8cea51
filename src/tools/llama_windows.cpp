#include "tools/llama_windows.h"

#include <algorithm>
#include <cmath>

namespace peregrine::tools {

std::vector<TokenId> LlamaWindows::window(int64_t w) const {
  std::vector<TokenId> win(tokens.begin() + w * n_ctx, tokens.begin() + (w + 1) * n_ctx);
  if (bos >= 0) win[0] = bos;
  return win;
}

std::vector<TokenId> llama_text_tokens(const Tokenizer& tok, std::string_view text) {
  std::vector<TokenId> tokens;
  if (tok.add_bos()) tokens.push_back(tok.bos());
  const std::vector<TokenId> body = tok.encode(text, false);  // plain text: "<s>" in the file is text
  tokens.insert(tokens.end(), body.begin(), body.end());
  return tokens;
}

Result<LlamaWindows> make_llama_windows(const Tokenizer& tok, std::string_view text, int64_t n_ctx,
                                        int64_t max_windows) {
  if (n_ctx < kMinLlamaWindow)
    return make_error("-c {} is too small: llama-perplexity windows need -c of at least {}", n_ctx,
                      kMinLlamaWindow);
  LlamaWindows lw;
  lw.n_ctx = n_ctx;
  if (tok.add_bos()) lw.bos = tok.bos();
  lw.tokens = llama_text_tokens(tok, text);
  lw.n_windows = int64_t(lw.tokens.size()) / n_ctx;
  if (lw.n_windows == 0)
    return make_error("{} tokens{}, fewer than one window of {} (-c)", lw.tokens.size(),
                      tok.add_bos() ? " with BOS" : "", n_ctx);
  if (max_windows > 0) lw.n_windows = std::min(lw.n_windows, max_windows);
  return lw;
}

Status eval_scored_rows(Session& s, const LlamaWindows& lw, int64_t w, std::vector<float>& logits,
                        std::vector<float>& scratch) {
  const std::vector<TokenId> win = lw.window(w);  // [n_ctx]
  const std::span<const TokenId> all(win);
  s.reset();
  PG_TRY(s.eval(all.first(size_t(lw.first())), false, scratch));
  return s.eval(all.subspan(size_t(lw.first()), size_t(lw.n_scored())), true, logits);
}

double log_sum_exp(std::span<const float> row) {
  const float mx = *std::max_element(row.begin(), row.end());
  double sum = 0.0;
  for (float v : row) sum += std::exp(double(v - mx));
  return std::log(sum) + mx;
}

}  // namespace peregrine::tools
