// The architectures in model/arch/, one file each. registry.cpp lists them once
// (PEREGRINE_ARCHITECTURES) and declares every factory from that list.
#pragma once

#include <memory>

#include "model/model.h"

// general.architecture name, factory suffix: adding an architecture is its file plus one entry.
#define PEREGRINE_ARCHITECTURES(X) \
  X("llama", llama)                \
  X("gemma3", gemma3)              \
  X("qwen2", qwen2)                \
  X("qwen3", qwen3)                \
  X("phi3", phi3)                  \
  X("smollm3", smollm3)            \
  X("qwen3moe", qwen3moe)          \
  X("olmoe", olmoe)                \
  X("mamba2", mamba2)              \
  X("nemotron_h", nemotron_h)      \
  X("nemotron_h_moe", nemotron_h_moe) \
  X("afmoe", afmoe)

namespace peregrine::arch {

#define PEREGRINE_DECLARE_ARCH(name, id) \
  Result<std::unique_ptr<Model>> make_##id(std::shared_ptr<const gguf::File> file, ThreadPool& pool);
PEREGRINE_ARCHITECTURES(PEREGRINE_DECLARE_ARCH)
#undef PEREGRINE_DECLARE_ARCH

}  // namespace peregrine::arch
