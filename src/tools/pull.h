// Putting known models into the cache.
#pragma once

#include <string>

#include "core/status.h"
#include "tools/model_catalog.h"

namespace peregrine::tools {

std::string model_cache_dir();  // $PEREGRINE_MODELS or ~/.cache/peregrine/models
// Downloads (unless cached and !force), verifies and installs; returns the path.
Result<std::string> pull_model(const KnownModel& m, bool force);

}  // namespace peregrine::tools
