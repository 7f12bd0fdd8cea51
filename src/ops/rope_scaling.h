// RoPE angle tables with the context-extension schemes GGUF files carry: linear position
// scaling, per-dimension frequency factors (Llama 3's `rope_freqs.weight`), and YaRN.
//
// For rotated pair i of rot_dim (i < rot_dim / 2) at position p:
//   theta_extrap = p * base^(-2i / rot_dim) / freq_factor[i]         (freq_factor 1 when absent)
//   theta_interp = theta_extrap / factor                              (linear and YaRN)
//   YaRN (Peng et al., 2023, "YaRN: Efficient Context Window Extension of Large Language Models"):
//     pairs that rotate fast enough to see many turns within the original context keep
//     theta_extrap, slow ones take theta_interp, with a linear ramp between the pair indices
//     where a full turn takes beta_fast and beta_slow original contexts; cos and sin are scaled by
//     attn_factor * (1 + 0.1 ln(factor)) so the attention logits keep their temperature.
// The ramp bounds follow ggml's definition (ggml_rope_yarn_corr_dims), so files tuned for
// llama.cpp get the same angles here.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

namespace peregrine {

struct RopeFreqs {
  enum class Scaling { None, Linear, Yarn };
  int64_t rot_dim = 0;          // rotated dimensions per head
  float base = 10000.0f;
  Scaling scaling = Scaling::None;
  float factor = 1.0f;          // context extension factor (Linear, Yarn)
  const float* freq_factors = nullptr;  // [rot_dim / 2] divisors of each pair's frequency, or null
  int64_t n_ctx_orig = 0;       // YaRN: the context the model was trained with
  float attn_factor = 1.0f;     // YaRN: extra scale of cos and sin
  float beta_fast = 32.0f, beta_slow = 1.0f;  // YaRN ramp, in turns per original context

  // Whether the angles are the plain p * base^(-2i/rot_dim) (what sink re-rotation assumes).
  bool plain() const { return scaling == Scaling::None && freq_factors == nullptr; }
};

std::string_view rope_scaling_name(RopeFreqs::Scaling s);  // "none", "linear", "yarn"

// cs[n_tok, rot_dim/2, 2] (cos, sin) for the positions, computed in double and rounded.
void rope_angles(const int32_t* pos, int64_t n_tok, const RopeFreqs& f, std::vector<float>& cs);

}  // namespace peregrine
