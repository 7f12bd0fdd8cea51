// Turn a -m argument (a cache name like "smollm2-135m" or a path) into a file path,
// pulling a known model into the cache on first use.
#pragma once

#include <string>

#include "core/status.h"

namespace peregrine::tools {

inline constexpr const char* kDefaultModel = "smollm2-135m";

Result<std::string> resolve_model(const std::string& name_or_path);

}  // namespace peregrine::tools
