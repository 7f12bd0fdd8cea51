// libFuzzer target for the importance matrix reader (quant/imatrix_file.h), both formats: any
// input gives either an Error naming the input or an Imatrix whose entries are sorted, unique,
// consistent in size, with finite non-negative sums and counts; importance() runs on each.
// Seeds: tests/fuzz/make_seeds.py imatrix DIR.
//
//   scripts/test_fuzz.sh                        # bounded run of every fuzz target
//   build-fuzz/bin/fuzz_imatrix CORPUS_DIR      # longer run by hand
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "quant/imatrix_file.h"

namespace {

[[noreturn]] void broken(const char* what) {
  std::fprintf(stderr, "parsed imatrix breaks an invariant: %s\n", what);
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto r = peregrine::parse_imatrix(data, size, "fuzz.imatrix");
  if (!r.ok()) {
    if (r.error().message.rfind("fuzz.imatrix: ", 0) != 0) {
      std::fprintf(stderr, "error message does not name the input: %s\n", r.error().message.c_str());
      std::abort();
    }
    return 0;
  }
  if (r->entries.empty()) broken("no entries");
  for (size_t i = 0; i < r->entries.size(); ++i) {
    const peregrine::ImatrixEntry& e = r->entries[i];
    if (i > 0 && !(r->entries[i - 1].name < e.name)) broken("entries not sorted and unique");
    if (e.name.empty()) broken("empty name");
    if (e.n_cols < 1 || e.n_mat < 1 || e.sums.size() != size_t(e.n_cols * e.n_mat) ||
        e.counts.size() != size_t(e.n_mat))
      broken("sizes");
    if (e.sums.size() * 4 > size) broken("more values than the input holds");
    for (float v : e.sums)
      if (!std::isfinite(v) || v < 0) broken("a sum not finite or negative");
    for (float v : e.counts)
      if (!std::isfinite(v) || v < 0) broken("a count not finite or negative");
    for (float v : e.importance())
      if (std::isnan(v) || v < 0) broken("importance NaN or negative");
  }
  return 0;
}
