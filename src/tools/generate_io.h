// Output helpers shared by run and chat.
#pragma once

#include <cstdio>

#include "engine/session.h"

namespace peregrine::tools {

// One line on stderr: prompt and generation speed.
inline void print_timing(const GenerateStats& st) {
  auto rate = [](int64_t n, double s) { return s > 0 ? double(n) / s : 0.0; };
  std::fprintf(stderr, "prompt: %lld tokens, %.1f tok/s | generation: %lld tokens, %.1f tok/s%s\n",
               (long long)st.n_prompt, rate(st.n_prompt, st.prompt_seconds),
               (long long)st.n_generated, rate(st.n_generated, st.gen_seconds),
               st.hit_context_limit ? " | stopped at the context limit" : "");
}

}  // namespace peregrine::tools
