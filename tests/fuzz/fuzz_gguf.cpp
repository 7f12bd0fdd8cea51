// libFuzzer target for the GGUF reader and writer. Any input must give either an Error with a
// message or a File whose every metadata value, typed accessor and tensor data range is sound;
// ASan sees the first and last byte of each tensor's data read. A file the reader accepts is then
// re-written by gguf::Writer: the writer may refuse it (it is stricter: no empty keys, tensor
// names under 64 bytes), but what it writes must parse back to the same metadata, tensors and
// bytes. A file the reader accepts is also handed to the model loader; a model that loads (the
// seeds include tiny routed-expert, Mamba-2 and hybrid models) runs a two-token forward pass, so
// hostile hyperparameters and shapes must be refused by the loader, never reach the kernels.
// Seeds: tests/fuzz/make_seeds.py gguf DIR.
//
//   scripts/test_fuzz.sh                     # bounded run of every fuzz target
//   build-fuzz/bin/fuzz_gguf CORPUS_DIR      # longer run by hand
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>

#include "../unit/gguf_builder.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "model/model.h"

namespace {

using peregrine::gguf::Value;
using peregrine::gguf::ValueType;

bool same_value(const Value& a, const Value& b) {
  if (a.type != b.type) return false;
  switch (a.type) {
    case ValueType::STRING: return a.str == b.str;
    case ValueType::F32: case ValueType::F64:
      return a.f == b.f || (a.f != a.f && b.f != b.f);  // NaN stays NaN
    case ValueType::I8: case ValueType::I16: case ValueType::I32: case ValueType::I64: return a.i == b.i;
    case ValueType::ARRAY:
      if (a.elem_type != b.elem_type || a.items.size() != b.items.size()) return false;
      for (size_t k = 0; k < a.items.size(); ++k)
        if (!same_value(a.items[k], b.items[k])) return false;
      return true;
    default: return a.u == b.u;
  }
}

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "writer round trip: %s\n", what);
  std::abort();
}

void check_rewrite(const peregrine::gguf::File& f) {
  using namespace peregrine;
  gguf::Writer w;
  if (!gguf::copy_metadata(f, w).ok()) return;
  for (const auto& t : f.tensors())
    if (!w.add_tensor(t.name, t.dims, t.type).ok()) return;
  auto bytes = w.to_bytes([&](size_t i, std::span<uint8_t> out) {
    std::memcpy(out.data(), f.tensors()[i].data, out.size());
    return Status::Ok();
  });
  if (!bytes.ok()) die("to_bytes failed");
  auto g = gguf::File::parse(bytes->data(), bytes->size(), "rewrite.gguf");
  if (!g.ok()) die(g.error().message.c_str());
  const gguf::File& h = **g;
  if (h.metadata().size() != f.metadata().size() || h.tensors().size() != f.tensors().size()) die("counts differ");
  for (size_t k = 0; k < f.metadata().size(); ++k)
    if (h.metadata()[k].first != f.metadata()[k].first || !same_value(h.metadata()[k].second, f.metadata()[k].second))
      die("metadata differs");
  for (size_t i = 0; i < f.tensors().size(); ++i) {
    const auto& a = f.tensors()[i];
    const auto& b = h.tensors()[i];
    if (a.name != b.name || a.dims != b.dims || a.type != b.type || a.n_bytes != b.n_bytes ||
        std::memcmp(a.data, b.data, a.n_bytes) != 0)
      die("tensor differs");
  }
}

}  // namespace

// Loads the file as a model; one that loads runs tokens 0 and 1 through a small cache.
void check_model(std::shared_ptr<const peregrine::gguf::File> f) {
  using namespace peregrine;
  static ThreadPool pool(1);
  auto m = load_model(std::move(f), pool);
  if (!m.ok()) return;
  Model& model = **m;
  const KvShape shape = model.kv_shape(8, 1, KvConfig{KvType::F32, KvType::F32}, AttnKind::global(), 4);
  if (!shape.validate().ok() || !model.check_kv(shape).ok()) return;
  if (shape.bytes() > (size_t(1) << 26)) return;  // a declared width the cache cannot hold here
  KvCache cache(shape);
  Batch b;
  b.add(0, 0, 0, true);
  if (model.hparams().n_vocab > 1) b.add(1, 1, 0, true);
  std::vector<float> logits;
  (void)model.forward(b, cache, logits);
}

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
  check_rewrite(**r);
  check_model(std::shared_ptr<const File>(std::move(*r)));
  return 0;
}
