// Output helpers shared by run and chat.
#pragma once

#include <cstdio>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "engine/session.h"

namespace peregrine::tools {

// One line on stderr: prompt and generation speed.
// With speculation (spec_name non-empty) also the drafter's counts.
inline void print_timing(const GenerateStats& st, std::string_view spec_name = {}) {
  auto rate = [](int64_t n, double s) { return s > 0 ? double(n) / s : 0.0; };
  const std::string spec =
      spec_name.empty() ? std::string() : fmt::format(" | spec {}: {}", spec_name, st.spec.describe());
  std::fprintf(stderr, "prompt: %lld tokens, %.1f tok/s | generation: %lld tokens, %.1f tok/s%s%s\n",
               (long long)st.n_prompt, rate(st.n_prompt, st.prompt_seconds),
               (long long)st.n_generated, rate(st.n_generated, st.gen_seconds), spec.c_str(),
               st.hit_context_limit ? " | stopped at the context limit" : "");
}

}  // namespace peregrine::tools
