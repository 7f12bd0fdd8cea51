// A whole file read into memory, bounded: outside input (a grammar, a catalogue) never makes
// the process allocate without limit.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "core/status.h"

namespace peregrine {

// The file's bytes, or a one-line error: "PATH: cannot open: REASON", "PATH: cannot read:
// REASON" or "PATH: more than MAX bytes" followed by `over_limit_note`.
Result<std::string> read_file(const std::string& path, size_t max_bytes, std::string_view over_limit_note = {});

}  // namespace peregrine
