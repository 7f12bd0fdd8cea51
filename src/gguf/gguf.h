// GGUF v2/v3 reader over a memory map. The file is treated as hostile: every
// count, length, offset and size is checked against the file before use, and a
// bad file yields an Error naming the problem and its byte offset.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/mapped_file.h"
#include "core/status.h"
#include "quant/ggml_type.h"

namespace peregrine::gguf {

// Limits the reader enforces (and the writer, so that what it writes reads back).
inline constexpr uint32_t kMaxDims = 4;
inline constexpr uint64_t kMaxDim = uint64_t{1} << 40;  // elements along one dimension
// Nesting of arrays inside arrays; real files use at most 1.
inline constexpr int kMaxArrayDepth = 4;
// Metadata keys and tensor names longer than this are rejected (real ones are < 100).
inline constexpr uint64_t kMaxKeyLen = 65536;
// Every metadata value is held as a ~100-byte Value, so a hostile file of tiny array
// elements could ask for ~100x its size. Real files hold ~1M values at most (a 256k
// vocabulary's tokens, scores and types, plus merges); past this we refuse.
inline constexpr uint64_t kMaxMetadataValues = uint64_t(1) << 22;

enum class ValueType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, U64 = 10, I64 = 11, F64 = 12,
};
std::string_view value_type_name(ValueType t);

// One metadata value. Arrays own their elements (which may be arrays again).
struct Value {
  ValueType type = ValueType::U8;
  uint64_t u = 0;  // unsigned integers and bool
  int64_t i = 0;   // signed integers
  double f = 0;    // floats
  std::string str;
  ValueType elem_type = ValueType::U8;  // for ARRAY
  std::vector<Value> items;             // for ARRAY

  bool is_integer() const;
  bool is_float() const { return type == ValueType::F32 || type == ValueType::F64; }
};

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // ggml order: dims[0] is the contiguous (row) length
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;         // from the start of the data section
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
  const uint8_t* data = nullptr;  // inside the mapping, bounds-checked

  uint64_t rows() const { return dims.empty() ? 1 : n_elements / dims[0]; }
};

class File {
 public:
  // Map and parse a file. Errors are prefixed with the path.
  static Result<std::unique_ptr<File>> open(const std::string& path);
  // Parse a buffer that outlives the File (fuzzing, tests).
  static Result<std::unique_ptr<File>> parse(const uint8_t* data, size_t size,
                                             const std::string& name);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  size_t file_size() const { return size_; }
  const std::string& name() const { return name_; }
  // Lets the OS drop the mapped pages of [p, p + n) once their bytes were copied
  // (repacked weights). No-op for parsed buffers.
  void release(const uint8_t* p, size_t n) const {
    if (map_) map_->release(p, n);
  }

  const std::vector<std::pair<std::string, Value>>& metadata() const { return kv_; }
  const Value* find(std::string_view key) const;
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find_tensor(std::string_view name) const;

  // Typed accessors: error if missing or of an incompatible type.
  Result<uint64_t> get_uint(std::string_view key) const;
  Result<int64_t> get_int(std::string_view key) const;
  Result<double> get_float(std::string_view key) const;  // accepts integers too
  Result<bool> get_bool(std::string_view key) const;
  Result<std::string> get_string(std::string_view key) const;
  Result<std::vector<std::string>> get_string_array(std::string_view key) const;
  Result<std::vector<int64_t>> get_int_array(std::string_view key) const;
  Result<std::vector<float>> get_float_array(std::string_view key) const;

 private:
  File() = default;
  std::unique_ptr<MappedFile> map_;
  const uint8_t* base_ = nullptr;
  size_t size_ = 0;
  std::string name_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, Value>> kv_;
  std::map<std::string, size_t, std::less<>> kv_index_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;

  friend class Parser;
};

}  // namespace peregrine::gguf
