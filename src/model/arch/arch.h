// Factories of the architectures in model/arch/, listed in registry.cpp.
#pragma once

#include <memory>

#include "model/model.h"

namespace peregrine::arch {

Result<std::unique_ptr<Model>> make_llama(std::shared_ptr<const gguf::File> file, ThreadPool& pool);
Result<std::unique_ptr<Model>> make_gemma3(std::shared_ptr<const gguf::File> file, ThreadPool& pool);

}  // namespace peregrine::arch
