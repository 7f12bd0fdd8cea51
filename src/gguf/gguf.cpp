#include "gguf/gguf.h"

#include <cstring>
#include <limits>

namespace peregrine::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian

}  // namespace

std::string_view value_type_name(ValueType t) {
  switch (t) {
    case ValueType::U8: return "u8";
    case ValueType::I8: return "i8";
    case ValueType::U16: return "u16";
    case ValueType::I16: return "i16";
    case ValueType::U32: return "u32";
    case ValueType::I32: return "i32";
    case ValueType::F32: return "f32";
    case ValueType::BOOL: return "bool";
    case ValueType::STRING: return "string";
    case ValueType::ARRAY: return "array";
    case ValueType::U64: return "u64";
    case ValueType::I64: return "i64";
    case ValueType::F64: return "f64";
  }
  return "?";
}

bool Value::is_integer() const {
  switch (type) {
    case ValueType::U8: case ValueType::I8: case ValueType::U16: case ValueType::I16:
    case ValueType::U32: case ValueType::I32: case ValueType::U64: case ValueType::I64:
      return true;
    default:
      return false;
  }
}

// A cursor over the file with bounds-checked reads; every error names the offset.
class Parser {
 public:
  Parser(const uint8_t* data, size_t size, const std::string& name)
      : p_(data), size_(size), name_(name) {}

  template <typename... Args>
  Error fail(uint64_t at, fmt::format_string<Args...> f, Args&&... args) const {
    return Error{fmt::format("{}: offset {:#x}: {}", name_, at,
                             fmt::format(f, std::forward<Args>(args)...))};
  }

  template <typename T>
  Result<T> read() {
    if (size_ - pos_ < sizeof(T))
      return fail(pos_, "unexpected end of file reading {} bytes (file is {} bytes)", sizeof(T),
                  size_);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

  Result<std::string> read_string(const char* what) {
    uint64_t at = pos_;
    PG_ASSIGN(uint64_t len, read<uint64_t>());
    if (len > size_ - pos_)
      return fail(at, "{} length {} runs past end of file ({} bytes left)", what, len,
                  size_ - pos_);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), len);
    pos_ += len;
    return s;
  }

  // Smallest encoded size of one value of a type: bounds array counts before allocating.
  static uint64_t min_encoded_size(ValueType t) {
    switch (t) {
      case ValueType::U8: case ValueType::I8: case ValueType::BOOL: return 1;
      case ValueType::U16: case ValueType::I16: return 2;
      case ValueType::U32: case ValueType::I32: case ValueType::F32: return 4;
      case ValueType::U64: case ValueType::I64: case ValueType::F64: return 8;
      case ValueType::STRING: return 8;
      case ValueType::ARRAY: return 12;
    }
    return 1;
  }

  Result<Value> read_value(ValueType type, int depth) {
    Value v;
    v.type = type;
    uint64_t at = pos_;
    switch (type) {
      case ValueType::U8: { PG_ASSIGN(v.u, read<uint8_t>()); break; }
      case ValueType::U16: { PG_ASSIGN(v.u, read<uint16_t>()); break; }
      case ValueType::U32: { PG_ASSIGN(v.u, read<uint32_t>()); break; }
      case ValueType::U64: { PG_ASSIGN(v.u, read<uint64_t>()); break; }
      case ValueType::I8: { PG_ASSIGN(v.i, read<int8_t>()); break; }
      case ValueType::I16: { PG_ASSIGN(v.i, read<int16_t>()); break; }
      case ValueType::I32: { PG_ASSIGN(v.i, read<int32_t>()); break; }
      case ValueType::I64: { PG_ASSIGN(v.i, read<int64_t>()); break; }
      case ValueType::F32: { PG_ASSIGN(v.f, read<float>()); break; }
      case ValueType::F64: { PG_ASSIGN(v.f, read<double>()); break; }
      case ValueType::BOOL: {
        PG_ASSIGN(uint8_t b, read<uint8_t>());
        if (b > 1) return fail(at, "bool value {} is neither 0 nor 1", b);
        v.u = b;
        break;
      }
      case ValueType::STRING: { PG_ASSIGN(v.str, read_string("string")); break; }
      case ValueType::ARRAY: {
        if (depth >= kMaxArrayDepth) return fail(at, "arrays nested deeper than {}", kMaxArrayDepth);
        PG_ASSIGN(uint32_t et, read<uint32_t>());
        if (et > static_cast<uint32_t>(ValueType::F64))
          return fail(at, "unknown array element type {}", et);
        v.elem_type = static_cast<ValueType>(et);
        uint64_t count_at = pos_;
        PG_ASSIGN(uint64_t count, read<uint64_t>());
        uint64_t left = size_ - pos_;
        if (count > left / min_encoded_size(v.elem_type))
          return fail(count_at, "array of {} {} values cannot fit in the {} bytes left", count,
                      value_type_name(v.elem_type), left);
        if (count > kMaxMetadataValues - n_values_)
          return fail(count_at, "metadata holds more than {} values", kMaxMetadataValues);
        n_values_ += count;
        v.items.reserve(count);
        for (uint64_t k = 0; k < count; ++k) {
          PG_ASSIGN(Value item, read_value(v.elem_type, depth + 1));
          v.items.push_back(std::move(item));
        }
        break;
      }
      default:
        return fail(at, "unknown value type {}", static_cast<uint32_t>(type));
    }
    return v;
  }

  Status parse(File& f) {
    PG_ASSIGN(uint32_t magic, read<uint32_t>());
    if (magic != kMagic) return fail(0, "not a GGUF file (bad magic {:#010x})", magic);
    PG_ASSIGN(f.version_, read<uint32_t>());
    if (f.version_ != 2 && f.version_ != 3)
      return fail(4, "unsupported GGUF version {} (supported: 2, 3)", f.version_);
    PG_ASSIGN(uint64_t n_tensors, read<uint64_t>());
    PG_ASSIGN(uint64_t n_kv, read<uint64_t>());
    // Each KV takes >= 8 (key len) + 4 (type) + 1 bytes; each tensor info >= 8 + 4 + 8 + 4 + 8.
    if (n_kv > (size_ - pos_) / 13) return fail(16, "metadata count {} cannot fit in file", n_kv);
    if (n_tensors > (size_ - pos_) / 32)
      return fail(8, "tensor count {} cannot fit in file", n_tensors);

    f.kv_.reserve(n_kv);
    uint64_t alignment_at = 0;  // where general.alignment was, for its error message
    for (uint64_t k = 0; k < n_kv; ++k) {
      uint64_t at = pos_;
      PG_ASSIGN(std::string key, read_string("metadata key"));
      if (key.size() > kMaxKeyLen) return fail(at, "metadata key of {} bytes is too long", key.size());
      if (f.kv_index_.count(key)) return fail(at, "duplicate metadata key '{}'", key);
      uint64_t type_at = pos_;
      PG_ASSIGN(uint32_t type, read<uint32_t>());
      if (type > static_cast<uint32_t>(ValueType::F64))
        return fail(type_at, "metadata '{}' has unknown value type {}", key, type);
      auto value = read_value(static_cast<ValueType>(type), 0);
      if (!value.ok()) return Error{value.error().message + fmt::format(" (in metadata '{}')", key)};
      if (key == "general.alignment") alignment_at = at;
      f.kv_index_.emplace(key, f.kv_.size());
      f.kv_.emplace_back(std::move(key), std::move(value).value());
    }

    if (const Value* a = f.find("general.alignment")) {
      if (!a->is_integer() || a->u == 0 || a->u > (1u << 20) || (a->u & (a->u - 1)) != 0)
        return fail(alignment_at, "general.alignment must be a power of two up to 1 MiB");
      f.alignment_ = a->u;
    }

    f.tensors_.reserve(n_tensors);
    for (uint64_t k = 0; k < n_tensors; ++k) {
      uint64_t at = pos_;
      TensorInfo t;
      PG_ASSIGN(t.name, read_string("tensor name"));
      if (t.name.size() > kMaxKeyLen) return fail(at, "tensor name of {} bytes is too long", t.name.size());
      if (f.tensor_index_.count(t.name)) return fail(at, "duplicate tensor name '{}'", t.name);
      PG_ASSIGN(uint32_t n_dims, read<uint32_t>());
      if (n_dims == 0 || n_dims > kMaxDims)
        return fail(at, "tensor '{}' has {} dimensions (1 to {} allowed)", t.name, n_dims, kMaxDims);
      uint64_t n = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        PG_ASSIGN(uint64_t dim, read<uint64_t>());
        if (dim == 0 || dim > kMaxDim)
          return fail(at, "tensor '{}' dimension {} is {}", t.name, d, dim);
        if (n > std::numeric_limits<uint64_t>::max() / dim)
          return fail(at, "tensor '{}' element count overflows", t.name);
        n *= dim;
        t.dims.push_back(dim);
      }
      t.n_elements = n;
      uint64_t type_at = pos_;
      PG_ASSIGN(uint32_t type, read<uint32_t>());
      auto traits = type_traits(type);
      if (!traits) return fail(type_at, "tensor '{}' has unknown type {}", t.name, type);
      t.type = static_cast<GgmlType>(type);
      if (t.dims[0] % traits->block_elems != 0)
        return fail(at, "tensor '{}' row length {} is not a multiple of the {} block size {}",
                    t.name, t.dims[0], traits->name, traits->block_elems);
      // n / block_elems * block_bytes cannot overflow: n <= 2^160 is excluded by the
      // per-dim cap only loosely, so check explicitly.
      uint64_t blocks = n / traits->block_elems;
      if (blocks > std::numeric_limits<uint64_t>::max() / traits->block_bytes)
        return fail(at, "tensor '{}' byte size overflows", t.name);
      t.n_bytes = blocks * traits->block_bytes;
      uint64_t off_at = pos_;
      PG_ASSIGN(t.offset, read<uint64_t>());
      if (t.offset % f.alignment_ != 0)
        return fail(off_at, "tensor '{}' offset {} is not aligned to {}", t.name, t.offset,
                    f.alignment_);
      f.tensor_index_.emplace(t.name, f.tensors_.size());
      f.tensors_.push_back(std::move(t));
    }

    // The data section starts at the next multiple of the alignment.
    uint64_t data = (pos_ + f.alignment_ - 1) / f.alignment_ * f.alignment_;
    if (f.tensors_.empty()) {
      f.data_offset_ = std::min<uint64_t>(data, size_);
      return Status::Ok();
    }
    if (data > size_) return fail(pos_, "data section at {} starts past end of file ({} bytes)", data, size_);
    f.data_offset_ = data;
    uint64_t avail = size_ - data;
    for (TensorInfo& t : f.tensors_) {
      if (t.offset > avail || t.n_bytes > avail - t.offset)
        return fail(data + std::min(t.offset, avail),
                    "tensor '{}' data at {:#x} + {:#x} + {} bytes runs past end of file ({} bytes)",
                    t.name, data, t.offset, t.n_bytes, size_);
      t.data = p_ + data + t.offset;
    }
    return Status::Ok();
  }

 private:
  const uint8_t* p_;
  size_t size_;
  size_t pos_ = 0;
  uint64_t n_values_ = 0;  // array elements read so far, against kMaxMetadataValues
  const std::string& name_;
};

Result<std::unique_ptr<File>> File::open(const std::string& path) {
  PG_ASSIGN(auto map, MappedFile::open(path));
  PG_ASSIGN(auto f, parse(map->data(), map->size(), path));
  f->map_ = std::move(map);
  return f;
}

Result<std::unique_ptr<File>> File::parse(const uint8_t* data, size_t size,
                                          const std::string& name) {
  std::unique_ptr<File> f(new File());
  f->base_ = data;
  f->size_ = size;
  f->name_ = name;
  if (size < 8 || data == nullptr) {
    if (size >= 4 && data && std::memcmp(data, "GGUF", 4) != 0)
      return make_error("{}: not a GGUF file (bad magic)", name);
    return make_error("{}: file too small to be GGUF ({} bytes)", name, size);
  }
  Parser p(data, size, name);
  PG_TRY(p.parse(*f));
  return f;
}

const Value* File::find(std::string_view key) const {
  auto it = kv_index_.find(key);
  return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const TensorInfo* File::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

Result<const Value*> lookup(const File& f, std::string_view key) {
  const Value* v = f.find(key);
  if (!v) return make_error("{}: missing metadata '{}'", f.name(), key);
  return v;
}

Error wrong_type(const File& f, std::string_view key, const Value& v, const char* want) {
  return make_error("{}: metadata '{}' is {} (expected {})", f.name(), key,
                    value_type_name(v.type), want);
}

bool is_signed(ValueType t) {
  return t == ValueType::I8 || t == ValueType::I16 || t == ValueType::I32 || t == ValueType::I64;
}

}  // namespace

Result<uint64_t> File::get_uint(std::string_view key) const {
  PG_ASSIGN(const Value* v, lookup(*this, key));
  if (!v->is_integer()) return wrong_type(*this, key, *v, "an integer");
  if (is_signed(v->type)) {
    if (v->i < 0) return make_error("{}: metadata '{}' is negative ({})", name_, key, v->i);
    return static_cast<uint64_t>(v->i);
  }
  return v->u;
}

Result<int64_t> File::get_int(std::string_view key) const {
  PG_ASSIGN(const Value* v, lookup(*this, key));
  if (!v->is_integer()) return wrong_type(*this, key, *v, "an integer");
  if (is_signed(v->type)) return v->i;
  if (v->u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
    return make_error("{}: metadata '{}' is out of range ({})", name_, key, v->u);
  return static_cast<int64_t>(v->u);
}

Result<double> File::get_float(std::string_view key) const {
  PG_ASSIGN(const Value* v, lookup(*this, key));
  if (v->is_float()) return v->f;
  if (v->is_integer()) return is_signed(v->type) ? double(v->i) : double(v->u);
  return wrong_type(*this, key, *v, "a number");
}

Result<bool> File::get_bool(std::string_view key) const {
  PG_ASSIGN(const Value* v, lookup(*this, key));
  if (v->type != ValueType::BOOL) return wrong_type(*this, key, *v, "bool");
  return v->u != 0;
}

Result<std::string> File::get_string(std::string_view key) const {
  PG_ASSIGN(const Value* v, lookup(*this, key));
  if (v->type != ValueType::STRING) return wrong_type(*this, key, *v, "string");
  return v->str;
}

Result<std::vector<std::string>> File::get_string_array(std::string_view key) const {
  PG_ASSIGN(const Value* v, lookup(*this, key));
  if (v->type != ValueType::ARRAY || v->elem_type != ValueType::STRING)
    return wrong_type(*this, key, *v, "array of strings");
  std::vector<std::string> out;
  out.reserve(v->items.size());
  for (const Value& item : v->items) out.push_back(item.str);
  return out;
}

Result<std::vector<int64_t>> File::get_int_array(std::string_view key) const {
  PG_ASSIGN(const Value* v, lookup(*this, key));
  if (v->type != ValueType::ARRAY || !Value{v->elem_type}.is_integer())
    return wrong_type(*this, key, *v, "array of integers");
  std::vector<int64_t> out;
  out.reserve(v->items.size());
  for (const Value& item : v->items) {
    if (!is_signed(item.type) && item.u > uint64_t(std::numeric_limits<int64_t>::max()))
      return make_error("{}: metadata '{}' has an out-of-range element", name_, key);
    out.push_back(is_signed(item.type) ? item.i : static_cast<int64_t>(item.u));
  }
  return out;
}

Result<std::vector<float>> File::get_float_array(std::string_view key) const {
  PG_ASSIGN(const Value* v, lookup(*this, key));
  if (v->type != ValueType::ARRAY || !Value{v->elem_type}.is_float())
    return wrong_type(*this, key, *v, "array of floats");
  std::vector<float> out;
  out.reserve(v->items.size());
  for (const Value& item : v->items) out.push_back(static_cast<float>(item.f));
  return out;
}

}  // namespace peregrine::gguf
