#include "gguf/gguf_writer.h"

#include <algorithm>
#include <limits>

#include "core/atomic_file.h"
#include "quant/type_table.h"

namespace peregrine::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint32_t kVersion = 3;
constexpr uint64_t kDefaultAlignment = 32;
constexpr size_t kMaxTensorName = 63;  // ggml's GGML_MAX_NAME (64) includes the terminator

// Byte sink: a growing buffer, flushed to a file when one is set.
class Sink {
 public:
  explicit Sink(AtomicFile* file = nullptr) : file_(file) {}

  template <typename T>
  void put(T v) {
    bytes(&v, sizeof(T));
  }
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    buf_.insert(buf_.end(), b, b + n);
    written_ += n;
  }
  void zeros(size_t n) { buf_.insert(buf_.end(), n, 0), written_ += n; }
  // n zero bytes appended, for the caller to fill in place.
  std::span<uint8_t> extend(size_t n) {
    zeros(n);
    return std::span<uint8_t>(buf_.data() + buf_.size() - n, n);
  }
  void string(std::string_view s) {
    put<uint64_t>(s.size());
    bytes(s.data(), s.size());
  }
  uint64_t written() const { return written_; }
  // Hands the buffered bytes to the file (no-op in memory).
  Status flush() {
    if (file_ == nullptr) return Status::Ok();
    PG_TRY(file_->write(buf_.data(), buf_.size()));
    buf_.clear();
    return Status::Ok();
  }
  std::vector<uint8_t>& buffer() { return buf_; }

 private:
  AtomicFile* file_;
  std::vector<uint8_t> buf_;
  uint64_t written_ = 0;
};

void put_value(Sink& s, const Value& v) {
  switch (v.type) {
    case ValueType::U8: s.put<uint8_t>(uint8_t(v.u)); break;
    case ValueType::U16: s.put<uint16_t>(uint16_t(v.u)); break;
    case ValueType::U32: s.put<uint32_t>(uint32_t(v.u)); break;
    case ValueType::U64: s.put<uint64_t>(v.u); break;
    case ValueType::I8: s.put<int8_t>(int8_t(v.i)); break;
    case ValueType::I16: s.put<int16_t>(int16_t(v.i)); break;
    case ValueType::I32: s.put<int32_t>(int32_t(v.i)); break;
    case ValueType::I64: s.put<int64_t>(v.i); break;
    case ValueType::F32: s.put<float>(float(v.f)); break;
    case ValueType::F64: s.put<double>(v.f); break;
    case ValueType::BOOL: s.put<uint8_t>(v.u != 0); break;
    case ValueType::STRING: s.string(v.str); break;
    case ValueType::ARRAY:
      s.put<uint32_t>(uint32_t(v.elem_type));
      s.put<uint64_t>(v.items.size());
      for (const Value& item : v.items) put_value(s, item);
      break;
  }
}

// Checks a value before it is stored: known types, integers in range, arrays of one
// element type nested at most kMaxArrayDepth deep. Counts its array elements into *n.
Status check_value(std::string_view key, const Value& v, int depth, uint64_t* n) {
  if (uint32_t(v.type) > uint32_t(ValueType::F64))
    return make_error("metadata '{}': unknown value type {}", key, uint32_t(v.type));
  auto out_of_range = [&](bool bad) -> Status {
    if (bad) return make_error("metadata '{}': value out of range for {}", key, value_type_name(v.type));
    return Status::Ok();
  };
  switch (v.type) {
    case ValueType::U8: return out_of_range(v.u > 0xff);
    case ValueType::U16: return out_of_range(v.u > 0xffff);
    case ValueType::U32: return out_of_range(v.u > 0xffffffffu);
    case ValueType::BOOL: return out_of_range(v.u > 1);
    case ValueType::I8: return out_of_range(v.i < -128 || v.i > 127);
    case ValueType::I16: return out_of_range(v.i < -32768 || v.i > 32767);
    case ValueType::I32:
      return out_of_range(v.i < std::numeric_limits<int32_t>::min() || v.i > std::numeric_limits<int32_t>::max());
    case ValueType::ARRAY: {
      if (depth >= kMaxArrayDepth) return make_error("metadata '{}': arrays nested deeper than {}", key, kMaxArrayDepth);
      if (uint32_t(v.elem_type) > uint32_t(ValueType::F64))
        return make_error("metadata '{}': unknown array element type {}", key, uint32_t(v.elem_type));
      *n += v.items.size();
      if (*n > kMaxMetadataValues) return make_error("metadata holds more than {} values", kMaxMetadataValues);
      for (const Value& item : v.items) {
        if (item.type != v.elem_type)
          return make_error("metadata '{}': array of {} holds a {}", key, value_type_name(v.elem_type),
                            value_type_name(item.type));
        PG_TRY(check_value(key, item, depth + 1, n));
      }
      return Status::Ok();
    }
    default: return Status::Ok();
  }
}

uint64_t count_values(const Value& v) {
  if (v.type != ValueType::ARRAY) return 0;
  uint64_t n = v.items.size();
  for (const Value& item : v.items) n += count_values(item);
  return n;
}

uint64_t pad_to(uint64_t n, uint64_t align) { return (n + align - 1) / align * align; }

}  // namespace

const Value* Writer::find(std::string_view key) const {
  for (const auto& [k, v] : kv_)
    if (k == key) return &v;
  return nullptr;
}

Status Writer::set(std::string_view key, Value value) {
  if (key.empty()) return make_error("metadata key is empty");
  if (key.size() > kMaxKeyLen) return make_error("metadata key of {} bytes is too long", key.size());
  auto it = std::find_if(kv_.begin(), kv_.end(), [&](const auto& kv) { return kv.first == key; });
  Value* old = it != kv_.end() ? &it->second : nullptr;
  uint64_t n = n_values_ - (old != nullptr ? count_values(*old) : 0);  // the other keys' values
  PG_TRY(check_value(key, value, 0, &n));
  if (key == "general.alignment") {
    const bool is_unsigned = value.type == ValueType::U8 || value.type == ValueType::U16 ||
                             value.type == ValueType::U32 || value.type == ValueType::U64;
    const uint64_t a = is_unsigned ? value.u : 0;
    if (a == 0 || a > (1u << 20) || (a & (a - 1)) != 0)
      return make_error("general.alignment must be an unsigned power of two up to 1 MiB");
    if (!tensors_.empty()) return make_error("general.alignment must be set before tensors are added");
  }
  n_values_ = n;
  if (old != nullptr) {
    *old = std::move(value);
    return Status::Ok();
  }
  kv_.emplace_back(std::string(key), std::move(value));
  return Status::Ok();
}

void Writer::remove(std::string_view key) {
  std::erase_if(kv_, [&](const auto& kv) {
    if (kv.first != key) return false;
    n_values_ -= count_values(kv.second);
    return true;
  });
}

namespace {

template <typename Field, typename T>
Value typed_value(ValueType type, Field Value::*field, T v) {
  Value x;
  x.type = type;
  x.*field = Field(v);
  return x;
}

}  // namespace

Status Writer::set_u32(std::string_view key, uint32_t v) { return set(key, typed_value(ValueType::U32, &Value::u, v)); }
Status Writer::set_i32(std::string_view key, int32_t v) { return set(key, typed_value(ValueType::I32, &Value::i, v)); }
Status Writer::set_f32(std::string_view key, float v) { return set(key, typed_value(ValueType::F32, &Value::f, v)); }
Status Writer::set_bool(std::string_view key, bool v) { return set(key, typed_value(ValueType::BOOL, &Value::u, v)); }
Status Writer::set_string(std::string_view key, std::string v) {
  return set(key, typed_value(ValueType::STRING, &Value::str, std::move(v)));
}
Status Writer::set_string_array(std::string_view key, const std::vector<std::string>& v) {
  Value x;
  x.type = ValueType::ARRAY;
  x.elem_type = ValueType::STRING;
  x.items.reserve(v.size());
  for (const std::string& s : v) {
    Value item;
    item.type = ValueType::STRING;
    item.str = s;
    x.items.push_back(std::move(item));
  }
  return set(key, std::move(x));
}

uint64_t Writer::alignment() const {
  const Value* a = find("general.alignment");
  return a != nullptr ? a->u : kDefaultAlignment;
}

uint64_t Writer::data_bytes() const {
  if (tensors_.empty()) return 0;
  const Tensor& last = tensors_.back();
  return pad_to(last.offset + last.n_bytes, alignment());
}

Status Writer::add_tensor(std::string_view name, std::span<const uint64_t> dims, GgmlType type) {
  if (name.empty()) return make_error("tensor name is empty");
  if (name.size() > kMaxTensorName)
    return make_error("tensor name '{}' is longer than {} bytes", name, kMaxTensorName);
  for (const Tensor& t : tensors_)
    if (t.name == name) return make_error("duplicate tensor name '{}'", name);
  if (dims.empty() || dims.size() > kMaxDims)
    return make_error("tensor '{}' has {} dimensions (1 to {} allowed)", name, dims.size(), kMaxDims);
  const TypeInfo* info = find_type_info(uint32_t(type));
  if (info == nullptr) return make_error("tensor '{}' has unknown type {}", name, uint32_t(type));
  uint64_t n = 1;
  for (size_t d = 0; d < dims.size(); ++d) {
    if (dims[d] == 0 || dims[d] > kMaxDim) return make_error("tensor '{}' dimension {} is {}", name, d, dims[d]);
    if (n > std::numeric_limits<uint64_t>::max() / dims[d])
      return make_error("tensor '{}' element count overflows", name);
    n *= dims[d];
  }
  if (dims[0] % info->block_elems != 0)
    return make_error("tensor '{}' row length {} is not a multiple of the {} block size {}", name, dims[0],
                      info->name, info->block_elems);
  const uint64_t blocks = n / info->block_elems;
  if (blocks > std::numeric_limits<uint64_t>::max() / info->block_bytes / 2)
    return make_error("tensor '{}' byte size overflows", name);
  const uint64_t bytes = blocks * info->block_bytes;
  const uint64_t offset = data_bytes();
  if (offset > std::numeric_limits<uint64_t>::max() / 2 - bytes)
    return make_error("tensor '{}': the data section overflows", name);
  tensors_.push_back(Tensor{std::string(name), {dims.begin(), dims.end()}, type, bytes, offset});
  return Status::Ok();
}

namespace {

// Header, metadata and tensor infos, padded to the data section.
void put_header(Sink& s, const std::vector<std::pair<std::string, Value>>& kv,
                const std::vector<Writer::Tensor>& tensors, uint64_t align) {
  s.put<uint32_t>(kMagic);
  s.put<uint32_t>(kVersion);
  s.put<uint64_t>(tensors.size());
  s.put<uint64_t>(kv.size());
  for (const auto& [key, v] : kv) {
    s.string(key);
    s.put<uint32_t>(uint32_t(v.type));
    put_value(s, v);
  }
  for (const Writer::Tensor& t : tensors) {
    s.string(t.name);
    s.put<uint32_t>(uint32_t(t.dims.size()));
    for (uint64_t d : t.dims) s.put<uint64_t>(d);
    s.put<uint32_t>(uint32_t(t.type));
    s.put<uint64_t>(t.offset);
  }
  s.zeros(pad_to(s.written(), align) - s.written());
}

// Writes the tensors' bytes through the producer, each padded to the alignment.
Status put_tensors(Sink& s, const std::vector<Writer::Tensor>& tensors, uint64_t align,
                   const Writer::Producer& produce, const std::string& where) {
  const uint64_t data_start = s.written();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Writer::Tensor& t = tensors[i];
    PG_ASSERT(s.written() - data_start == t.offset);
    if (t.n_bytes > std::numeric_limits<size_t>::max() / 2)
      return make_error("{}: tensor '{}' is too large", where, t.name);
    PG_TRY(produce(i, s.extend(size_t(t.n_bytes))));
    s.zeros(pad_to(t.n_bytes, align) - t.n_bytes);
    PG_TRY(s.flush());
  }
  return Status::Ok();
}

}  // namespace

Result<std::vector<uint8_t>> Writer::to_bytes(const Producer& produce) const {
  Sink s;
  put_header(s, kv_, tensors_, alignment());
  PG_TRY(put_tensors(s, tensors_, alignment(), produce, "<memory>"));
  return std::move(s.buffer());
}

Status Writer::write(const std::string& path, const Producer& produce) const {
  PG_ASSIGN(AtomicFile file, AtomicFile::create(path));
  Sink s(&file);
  put_header(s, kv_, tensors_, alignment());
  PG_TRY(s.flush());
  PG_TRY(put_tensors(s, tensors_, alignment(), produce, path));
  return file.commit();
}

Status copy_metadata(const File& src, Writer& w) {
  for (const auto& [key, value] : src.metadata()) PG_TRY(w.set(key, value));
  return Status::Ok();
}

}  // namespace peregrine::gguf
