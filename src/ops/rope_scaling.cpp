#include "ops/rope_scaling.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace peregrine {

std::string_view rope_scaling_name(RopeFreqs::Scaling s) {
  switch (s) {
    case RopeFreqs::Scaling::None: return "none";
    case RopeFreqs::Scaling::Linear: return "linear";
    case RopeFreqs::Scaling::Yarn: return "yarn";
  }
  return "?";
}

namespace {

// The (fractional) pair index at which a full turn takes n_turns original contexts.
double yarn_corr_dim(int64_t rot_dim, int64_t n_ctx_orig, double n_turns, double base) {
  return double(rot_dim) * std::log(double(n_ctx_orig) / (n_turns * 2.0 * std::numbers::pi)) /
         (2.0 * std::log(base));
}

}  // namespace

void rope_angles(const int32_t* pos, int64_t n_tok, const RopeFreqs& f, std::vector<float>& cs) {
  const int64_t half = f.rot_dim / 2;
  if (cs.size() < size_t(n_tok * half * 2)) cs.resize(size_t(n_tok * half * 2));
  const bool yarn = f.scaling == RopeFreqs::Scaling::Yarn;
  double lo = 0.0, hi = 0.0, mscale = 1.0;
  if (yarn) {
    lo = std::max(0.0, std::floor(yarn_corr_dim(f.rot_dim, f.n_ctx_orig, f.beta_fast, f.base)));
    hi = std::min(double(f.rot_dim - 1), std::ceil(yarn_corr_dim(f.rot_dim, f.n_ctx_orig, f.beta_slow, f.base)));
    mscale = double(f.attn_factor) * (1.0 + 0.1 * std::log(double(f.factor)));
  }
  // Pair by pair, so each frequency is computed once for all the positions.
  for (int64_t i = 0; i < half; ++i) {
    double inv_freq = std::pow(double(f.base), -double(2 * i) / double(f.rot_dim));
    if (f.freq_factors != nullptr) inv_freq /= double(f.freq_factors[i]);
    // YaRN: 1 below the ramp (fast pairs: extrapolate), 0 above it (slow pairs: interpolate).
    const double keep = yarn ? 1.0 - std::min(1.0, std::max(0.0, (double(i) - lo) / std::max(0.001, hi - lo))) : 0.0;
    for (int64_t t = 0; t < n_tok; ++t) {
      double theta;
      if (f.scaling == RopeFreqs::Scaling::Linear) {
        theta = double(pos[t]) / double(f.factor) * inv_freq;
      } else if (yarn) {
        const double extrap = double(pos[t]) * inv_freq, interp = extrap / double(f.factor);
        theta = interp * (1.0 - keep) + extrap * keep;
      } else {
        theta = double(pos[t]) * inv_freq;
      }
      cs[size_t((t * half + i) * 2)] = float(std::cos(theta) * mscale);
      cs[size_t((t * half + i) * 2 + 1)] = float(std::sin(theta) * mscale);
    }
  }
}

}  // namespace peregrine
