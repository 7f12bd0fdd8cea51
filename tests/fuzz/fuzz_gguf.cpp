// libFuzzer target for the GGUF reader. Any input must give either an Error with a message or a
// File whose every metadata value, typed accessor and tensor data range is sound; ASan sees the
// first and last byte of each tensor's data read. Seeds: tests/fuzz/make_seeds.py gguf DIR.
//
//   scripts/test_fuzz.sh                     # bounded run of every fuzz target
//   build-fuzz/bin/fuzz_gguf CORPUS_DIR      # longer run by hand
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "../unit/gguf_builder.h"
#include "gguf/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using peregrine::gguf::File;
  auto r = File::parse(data, size, "fuzz.gguf");
  if (!r.ok()) {
    if (r.error().message.rfind("fuzz.gguf: ", 0) != 0) {
      std::fprintf(stderr, "error message does not name the file: %s\n", r.error().message.c_str());
      std::abort();
    }
    return 0;
  }
  std::string bad = peregrine::test::check_parsed_gguf(**r, data, size);
  if (!bad.empty()) {
    std::fprintf(stderr, "parsed file breaks an invariant: %s\n", bad.c_str());
    std::abort();
  }
  return 0;
}
