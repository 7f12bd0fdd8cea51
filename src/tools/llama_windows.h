// The windows llama.cpp's llama-perplexity scores (tools/perplexity/perplexity.cpp: perplexity()
// and kl_divergence()), so that `peregrine perplexity --llama-windows` and `peregrine eval` report
// numbers comparable with llama-perplexity's on the same file:
//   - the text is tokenized once, special-token strings as plain text, BOS in front when the
//     model adds BOS;
//   - window w is tokens [w*n_ctx, (w+1)*n_ctx), its first slot replaced by BOS when the model
//     adds BOS, evaluated from an empty cache; a tail shorter than n_ctx is dropped;
//   - only the second half is scored: positions first = n_ctx/2 .. n_ctx-2, each predicting the
//     token after it (n_ctx - 1 - n_ctx/2 tokens per window), so every scored token has at
//     least n_ctx/2 tokens of context.
// llama-perplexity also refuses texts of fewer than 2*n_ctx tokens; here one window is enough.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "engine/session.h"
#include "tokenizer/tokenizer.h"

namespace peregrine::tools {

struct LlamaWindows {
  std::vector<TokenId> tokens;  // [n_tokens] the whole text, BOS first when the model adds BOS
  int64_t n_ctx = 0;
  int64_t n_windows = 0;        // windows to score (at most n_tokens / n_ctx)
  TokenId bos = -1;             // written into each window's first slot; -1: the model adds none

  int64_t first() const { return n_ctx / 2; }              // first scored position
  int64_t n_scored() const { return n_ctx - 1 - first(); }  // scored positions per window
  // Window w as the model sees it: [n_ctx] tokens.
  std::vector<TokenId> window(int64_t w) const;
};

// The whole text as llama.cpp's perplexity and imatrix tools feed it: BOS first when the model
// adds BOS, then the text's tokens (special-token strings in it are plain text).
std::vector<TokenId> llama_text_tokens(const Tokenizer& tok, std::string_view text);

// The smallest -c with at least one scored position per window and a first half to condition on.
inline constexpr int64_t kMinLlamaWindow = 4;

// `text` as windows of n_ctx tokens, at most max_windows of them (0: all). An error when n_ctx is
// below kMinLlamaWindow or the text has fewer than n_ctx tokens.
Result<LlamaWindows> make_llama_windows(const Tokenizer& tok, std::string_view text, int64_t n_ctx,
                                        int64_t max_windows);

// Evaluates window w from an empty cache. `logits` gets the rows of the scored positions,
// [n_scored, n_vocab]: row r predicts window(w)[first + 1 + r]. The first half runs without
// logits and the window's last token is not fed (nothing reads its logits), so a window costs
// n_ctx - 1 positions and n_scored rows of the output head. `scratch` is reused between calls.
Status eval_scored_rows(Session& s, const LlamaWindows& lw, int64_t w, std::vector<float>& logits,
                        std::vector<float>& scratch);

// log(sum(exp(row))), shifted by the row's maximum, summed in double.
double log_sum_exp(std::span<const float> row);

}  // namespace peregrine::tools
