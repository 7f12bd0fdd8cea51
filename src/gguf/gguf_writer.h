// GGUF v3 writer: metadata in insertion order, then tensor infos, then the tensor data,
// each tensor aligned to general.alignment (32 unless set). Tensor bytes are produced on
// demand, one tensor at a time, so a quantizer can stream a model larger than memory.
//
// The output appears whole or not at all: everything is written to a temporary file in
// the destination's folder, flushed and fsync'ed, then renamed over the destination; any
// failure (a full disk, an unwritable folder, a producer's error) removes the temporary
// file and leaves the destination as it was.
//
// What is added is checked with the reader's limits (gguf.cpp), so whatever the writer
// accepts the reader accepts back: keys and names non-empty, unique and at most 65,536
// bytes (tensor names under 64 bytes, as ggml's GGML_MAX_NAME requires), 1 to 4
// dimensions each at least 1 with no overflow of the element count or byte size, rows a
// whole number of the type's blocks, arrays of one element type nested at most 4 deep.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "gguf/gguf.h"

namespace peregrine::gguf {

class Writer {
 public:
  // Metadata. set() replaces the value of an existing key in place (keeping its position)
  // or appends a new key; the value is checked (nesting, element types) when added.
  Status set(std::string_view key, Value value);
  void remove(std::string_view key);
  Status set_u32(std::string_view key, uint32_t v);
  Status set_i32(std::string_view key, int32_t v);
  Status set_f32(std::string_view key, float v);
  Status set_bool(std::string_view key, bool v);
  Status set_string(std::string_view key, std::string v);
  Status set_string_array(std::string_view key, const std::vector<std::string>& v);
  const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
  const Value* find(std::string_view key) const;

  // A tensor of `type` with dims in ggml order (dims[0] is the row length). Its bytes come
  // from the producer passed to write(), in the order tensors were added.
  Status add_tensor(std::string_view name, std::span<const uint64_t> dims, GgmlType type);
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    GgmlType type;
    uint64_t n_bytes;
    uint64_t offset;  // from the start of the data section
  };
  const std::vector<Tensor>& tensors() const { return tensors_; }
  uint64_t alignment() const;  // general.alignment, or 32
  uint64_t data_bytes() const;  // the data section, padding included

  // Fills out[0, tensors()[index].n_bytes) with the bytes of tensor `index`.
  using Producer = std::function<Status(size_t index, std::span<uint8_t> out)>;
  // Writes the file (atomically, see above). Errors name the path.
  Status write(const std::string& path, const Producer& produce) const;
  // The whole file in memory (tests, fuzz seeds, small files).
  Result<std::vector<uint8_t>> to_bytes(const Producer& produce) const;

 private:
  std::vector<std::pair<std::string, Value>> kv_;
  uint64_t n_values_ = 0;  // array elements in kv_, against kMaxMetadataValues
  std::vector<Tensor> tensors_;
};

// Copies every metadata key of `src` into `w`, in order (a converter's starting point).
Status copy_metadata(const File& src, Writer& w);

}  // namespace peregrine::gguf
