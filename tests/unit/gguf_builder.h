// GgufBuilder: writes GGUF bytes for tests, valid or deliberately broken.
//
//   GgufBuilder b;
//   b.kv_str("general.architecture", "llama").kv_u32("llama.block_count", 2);
//   b.kv_str_array("tokenizer.ggml.tokens", {"a", "b"});
//   b.tensor("x", {32, 4}, GgmlType::F32);            // zero data of the right size
//   std::vector<uint8_t> bytes = b.build();
//
// Layout follows the GGUF spec (little-endian): magic, version, tensor count, kv count, the kvs,
// the tensor infos, zero padding to the alignment, then the tensor data. The file ends right after
// the last tensor's data (no trailing padding), so cutting off any byte breaks it.
//
// Everything that can be wrong in a file can be written: header fields and counts are public
// members, GgufValue::raw / array_raw take any type tag and count, tensor_info takes any type id
// and offset. Tensor byte sizes come from the builder's own table of block sizes (from the GGUF
// spec), not from the library under test.
//
// check_parsed_gguf() (at the end) states what any successfully parsed File must satisfy.
#pragma once

#include <cstdint>
#include <cstring>
#include <cstddef>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "gguf/gguf.h"
#include "quant/ggml_type.h"

namespace peregrine::test {

using gguf::ValueType;

inline void put_u32(std::vector<uint8_t>& out, uint32_t v) {
  for (int k = 0; k < 4; ++k) out.push_back(static_cast<uint8_t>(v >> (8 * k)));
}
inline void put_u64(std::vector<uint8_t>& out, uint64_t v) {
  for (int k = 0; k < 8; ++k) out.push_back(static_cast<uint8_t>(v >> (8 * k)));
}
inline void put_str(std::vector<uint8_t>& out, std::string_view s) {
  put_u64(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

// One metadata value: its type tag and the bytes that follow the tag.
struct GgufValue {
  uint32_t type = 0;  // raw, so that unknown tags can be written
  std::vector<uint8_t> bytes;

  template <typename T>
  static GgufValue scalar(ValueType t, T v) {
    GgufValue g{static_cast<uint32_t>(t), std::vector<uint8_t>(sizeof(T))};
    std::memcpy(g.bytes.data(), &v, sizeof(T));
    return g;
  }
  static GgufValue u8(uint8_t v) { return scalar(ValueType::U8, v); }
  static GgufValue i8(int8_t v) { return scalar(ValueType::I8, v); }
  static GgufValue u16(uint16_t v) { return scalar(ValueType::U16, v); }
  static GgufValue i16(int16_t v) { return scalar(ValueType::I16, v); }
  static GgufValue u32(uint32_t v) { return scalar(ValueType::U32, v); }
  static GgufValue i32(int32_t v) { return scalar(ValueType::I32, v); }
  static GgufValue u64(uint64_t v) { return scalar(ValueType::U64, v); }
  static GgufValue i64(int64_t v) { return scalar(ValueType::I64, v); }
  static GgufValue f32(float v) { return scalar(ValueType::F32, v); }
  static GgufValue f64(double v) { return scalar(ValueType::F64, v); }
  // Any byte, so that a bool of 2 can be written.
  static GgufValue boolean(uint8_t v) { return scalar(ValueType::BOOL, v); }
  static GgufValue str(std::string_view s) {
    GgufValue g{static_cast<uint32_t>(ValueType::STRING), {}};
    put_str(g.bytes, s);
    return g;
  }
  // An array whose items all have type `elem` (nested arrays: items made by array()).
  static GgufValue array(ValueType elem, const std::vector<GgufValue>& items) {
    std::vector<uint8_t> body;
    for (const GgufValue& it : items) {
      if (it.type != static_cast<uint32_t>(elem))
        throw std::invalid_argument("GgufValue::array: item type differs from element type");
      body.insert(body.end(), it.bytes.begin(), it.bytes.end());
    }
    return array_raw(static_cast<uint32_t>(elem), items.size(), std::move(body));
  }
  // An array header claiming `count` items of type `elem`, followed by `body` as given.
  static GgufValue array_raw(uint32_t elem, uint64_t count, std::vector<uint8_t> body = {}) {
    GgufValue g{static_cast<uint32_t>(ValueType::ARRAY), {}};
    put_u32(g.bytes, elem);
    put_u64(g.bytes, count);
    g.bytes.insert(g.bytes.end(), body.begin(), body.end());
    return g;
  }
  // Any tag followed by any bytes.
  static GgufValue raw(uint32_t type, std::vector<uint8_t> bytes) { return {type, std::move(bytes)}; }
};

// Values per block and bytes per block of the tensor types tests use, from the GGUF spec.
inline std::optional<std::pair<uint64_t, uint64_t>> builder_block_geometry(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return std::pair<uint64_t, uint64_t>{1, 4};
    case GgmlType::F16: case GgmlType::BF16: return std::pair<uint64_t, uint64_t>{1, 2};
    case GgmlType::I8: return std::pair<uint64_t, uint64_t>{1, 1};
    case GgmlType::I16: return std::pair<uint64_t, uint64_t>{1, 2};
    case GgmlType::I32: return std::pair<uint64_t, uint64_t>{1, 4};
    case GgmlType::I64: case GgmlType::F64: return std::pair<uint64_t, uint64_t>{1, 8};
    case GgmlType::Q4_0: return std::pair<uint64_t, uint64_t>{32, 18};  // f16 d + 16 nibble bytes
    case GgmlType::Q4_1: return std::pair<uint64_t, uint64_t>{32, 20};  // f16 d, m + 16
    case GgmlType::Q5_0: return std::pair<uint64_t, uint64_t>{32, 22};
    case GgmlType::Q5_1: return std::pair<uint64_t, uint64_t>{32, 24};
    case GgmlType::Q8_0: return std::pair<uint64_t, uint64_t>{32, 34};  // f16 d + 32 int8
    case GgmlType::Q2_K: return std::pair<uint64_t, uint64_t>{256, 84};
    case GgmlType::Q3_K: return std::pair<uint64_t, uint64_t>{256, 110};
    case GgmlType::Q4_K: return std::pair<uint64_t, uint64_t>{256, 144};
    case GgmlType::Q5_K: return std::pair<uint64_t, uint64_t>{256, 176};
    case GgmlType::Q6_K: return std::pair<uint64_t, uint64_t>{256, 210};
    default: return std::nullopt;
  }
}

class GgufBuilder {
 public:
  // Header fields, public so tests can break them.
  uint32_t magic = 0x46554747;  // "GGUF"
  uint32_t version = 3;
  std::optional<uint64_t> tensor_count;  // written instead of the real count when set
  std::optional<uint64_t> kv_count;
  uint64_t layout_alignment = 32;        // padding and offsets; set by alignment()

  GgufBuilder& kv(std::string_view key, GgufValue v) {
    kvs_.emplace_back(std::string(key), std::move(v));
    return *this;
  }
  GgufBuilder& kv_u8(std::string_view k, uint8_t v) { return kv(k, GgufValue::u8(v)); }
  GgufBuilder& kv_i8(std::string_view k, int8_t v) { return kv(k, GgufValue::i8(v)); }
  GgufBuilder& kv_u16(std::string_view k, uint16_t v) { return kv(k, GgufValue::u16(v)); }
  GgufBuilder& kv_i16(std::string_view k, int16_t v) { return kv(k, GgufValue::i16(v)); }
  GgufBuilder& kv_u32(std::string_view k, uint32_t v) { return kv(k, GgufValue::u32(v)); }
  GgufBuilder& kv_i32(std::string_view k, int32_t v) { return kv(k, GgufValue::i32(v)); }
  GgufBuilder& kv_u64(std::string_view k, uint64_t v) { return kv(k, GgufValue::u64(v)); }
  GgufBuilder& kv_i64(std::string_view k, int64_t v) { return kv(k, GgufValue::i64(v)); }
  GgufBuilder& kv_f32(std::string_view k, float v) { return kv(k, GgufValue::f32(v)); }
  GgufBuilder& kv_f64(std::string_view k, double v) { return kv(k, GgufValue::f64(v)); }
  GgufBuilder& kv_bool(std::string_view k, bool v) { return kv(k, GgufValue::boolean(v ? 1 : 0)); }
  GgufBuilder& kv_str(std::string_view k, std::string_view v) { return kv(k, GgufValue::str(v)); }

  GgufBuilder& kv_str_array(std::string_view k, const std::vector<std::string>& v) {
    return kv(k, make_array(ValueType::STRING, v, [](const std::string& s) { return GgufValue::str(s); }));
  }
  GgufBuilder& kv_i32_array(std::string_view k, const std::vector<int32_t>& v) {
    return kv(k, make_array(ValueType::I32, v, [](int32_t x) { return GgufValue::i32(x); }));
  }
  GgufBuilder& kv_u32_array(std::string_view k, const std::vector<uint32_t>& v) {
    return kv(k, make_array(ValueType::U32, v, [](uint32_t x) { return GgufValue::u32(x); }));
  }
  GgufBuilder& kv_f32_array(std::string_view k, const std::vector<float>& v) {
    return kv(k, make_array(ValueType::F32, v, [](float x) { return GgufValue::f32(x); }));
  }

  // Lay out tensor data at multiples of `a` and record it as general.alignment (u32).
  GgufBuilder& alignment(uint32_t a) {
    layout_alignment = a;
    return kv_u32("general.alignment", a);
  }

  // A tensor placed after the previous one (aligned). Empty data means zeros of the size the
  // type and dims call for; dims are in ggml order (dims[0] is the row length).
  GgufBuilder& tensor(std::string_view name, std::vector<uint64_t> dims, GgmlType type,
                      std::vector<uint8_t> data = {}) {
    if (data.empty()) data.assign(tensor_bytes(dims, type), 0);
    Tensor t{std::string(name), std::move(dims), static_cast<uint32_t>(type), 0, std::move(data), true};
    tensors_.push_back(std::move(t));
    return *this;
  }
  // A tensor info written exactly as given, with no data behind it.
  GgufBuilder& tensor_info(std::string_view name, std::vector<uint64_t> dims, uint32_t type_id,
                           uint64_t offset) {
    tensors_.push_back(Tensor{std::string(name), std::move(dims), type_id, offset, {}, false});
    return *this;
  }

  // Bytes of a tensor by the builder's own table; throws for types it does not know.
  static uint64_t tensor_bytes(const std::vector<uint64_t>& dims, GgmlType type) {
    auto g = builder_block_geometry(type);
    if (!g || dims.empty() || dims[0] % g->first != 0)
      throw std::invalid_argument("GgufBuilder: pass data for this tensor type/shape");
    uint64_t n = 1;
    for (uint64_t d : dims) n *= d;
    return n / g->first * g->second;
  }

  // Offsets known after build(): where each tensor info starts, where the data section
  // starts, and each placed tensor's offset within it (in the order added).
  struct Layout {
    size_t kv_start = 24;
    std::vector<size_t> kv_offsets;
    std::vector<size_t> tensor_info_offsets;
    size_t header_end = 0;
    size_t data_offset = 0;
    std::vector<uint64_t> tensor_offsets;
  };

  std::vector<uint8_t> build(Layout* layout = nullptr) const {
    Layout l;
    std::vector<uint8_t> out;
    put_u32(out, magic);
    put_u32(out, version);
    put_u64(out, tensor_count.value_or(tensors_.size()));
    put_u64(out, kv_count.value_or(kvs_.size()));
    for (const auto& [key, v] : kvs_) {
      l.kv_offsets.push_back(out.size());
      put_str(out, key);
      put_u32(out, v.type);
      out.insert(out.end(), v.bytes.begin(), v.bytes.end());
    }
    // Offsets of placed tensors: each at the next multiple of the alignment.
    uint64_t cursor = 0, data_size = 0;
    for (const Tensor& t : tensors_) {
      uint64_t off = t.offset;
      if (t.placed) {
        off = align_up(cursor, layout_alignment);
        cursor = off + t.data.size();
        data_size = cursor;
      }
      l.tensor_offsets.push_back(off);
      l.tensor_info_offsets.push_back(out.size());
      put_str(out, t.name);
      put_u32(out, static_cast<uint32_t>(t.dims.size()));
      for (uint64_t d : t.dims) put_u64(out, d);
      put_u32(out, t.type);
      put_u64(out, off);
    }
    l.header_end = out.size();
    l.data_offset = out.size();
    if (!tensors_.empty()) {
      l.data_offset = align_up(out.size(), layout_alignment);
      out.resize(l.data_offset + data_size, 0);
      for (size_t k = 0; k < tensors_.size(); ++k) {
        const Tensor& t = tensors_[k];
        if (t.placed && !t.data.empty())
          std::memcpy(out.data() + l.data_offset + l.tensor_offsets[k], t.data.data(), t.data.size());
      }
    }
    if (layout) *layout = std::move(l);
    return out;
  }

 private:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;
    uint32_t type;
    uint64_t offset;  // for tensor_info only; placed tensors get theirs in build()
    std::vector<uint8_t> data;
    bool placed;
  };

  static uint64_t align_up(uint64_t x, uint64_t a) { return a == 0 ? x : (x + a - 1) / a * a; }

  template <typename T, typename F>
  static GgufValue make_array(ValueType elem, const std::vector<T>& v, F make) {
    std::vector<GgufValue> items;
    items.reserve(v.size());
    for (const T& x : v) items.push_back(make(x));
    return GgufValue::array(elem, items);
  }

  std::vector<std::pair<std::string, GgufValue>> kvs_;
  std::vector<Tensor> tensors_;
};

// What every File that parsed must satisfy, whatever the input was. Reads the first and last
// byte of each tensor's data, so that ASan catches a pointer outside the buffer, and calls
// every typed accessor on every key. `base`/`size` are the buffer that was parsed.
// Returns "" or a description of the first broken invariant. Used by the unit tests and by
// tests/fuzz/fuzz_gguf.cpp.
inline std::string check_parsed_gguf(const gguf::File& f, const uint8_t* base, size_t size) {
  if (f.version() != 2 && f.version() != 3) return "version";
  if (f.alignment() == 0 || (f.alignment() & (f.alignment() - 1)) != 0) return "alignment";
  if (f.file_size() != size) return "file_size";
  if (f.data_offset() > size) return "data_offset past end";
  if (!f.tensors().empty() && f.data_offset() % f.alignment() != 0) return "data_offset unaligned";

  std::vector<const gguf::Value*> stack;  // walk nested values without recursion
  for (const auto& [key, value] : f.metadata()) {
    if (f.find(key) != &value) return "find('" + key + "') is not its entry";
    stack.assign(1, &value);
    while (!stack.empty()) {
      const gguf::Value* v = stack.back();
      stack.pop_back();
      if (static_cast<uint32_t>(v->type) > static_cast<uint32_t>(ValueType::F64))
        return "value type out of range in '" + key + "'";
      if (v->type == ValueType::BOOL && v->u > 1) return "bool > 1 in '" + key + "'";
      if (v->type == ValueType::ARRAY) {
        for (const gguf::Value& it : v->items) {
          if (it.type != v->elem_type) return "array item of the wrong type in '" + key + "'";
          stack.push_back(&it);
        }
      } else if (!v->items.empty()) {
        return "scalar with items in '" + key + "'";
      }
    }
    bool is_array = value.type == ValueType::ARRAY;
    bool is_int = value.is_integer();
    if (f.get_string(key).ok() != (value.type == ValueType::STRING)) return "get_string " + key;
    if (f.get_bool(key).ok() != (value.type == ValueType::BOOL)) return "get_bool " + key;
    if (!is_int && (f.get_uint(key).ok() || f.get_int(key).ok())) return "get_uint " + key;
    if (f.get_float(key).ok() != (is_int || value.is_float())) return "get_float " + key;
    auto sa = f.get_string_array(key);
    if (sa.ok() != (is_array && value.elem_type == ValueType::STRING)) return "get_string_array " + key;
    if (sa.ok() && sa->size() != value.items.size()) return "get_string_array size " + key;
    auto ia = f.get_int_array(key);
    if (ia.ok() && (!is_array || ia->size() != value.items.size())) return "get_int_array " + key;
    auto fa = f.get_float_array(key);
    if (fa.ok() && (!is_array || fa->size() != value.items.size())) return "get_float_array " + key;
  }

  volatile uint8_t sink = 0;
  for (const gguf::TensorInfo& t : f.tensors()) {
    if (f.find_tensor(t.name) != &t) return "find_tensor('" + t.name + "') is not its entry";
    if (t.dims.empty() || t.dims.size() > 4) return "dims count of " + t.name;
    uint64_t n = 1;
    for (uint64_t d : t.dims) {
      if (d == 0 || n > UINT64_MAX / d) return "dims of " + t.name;
      n *= d;
    }
    if (n != t.n_elements) return "n_elements of " + t.name;
    if (auto g = builder_block_geometry(t.type)) {
      if (t.dims[0] % g->first != 0 || n / g->first * g->second != t.n_bytes)
        return "n_bytes of " + t.name;
    } else if (!type_traits(static_cast<uint32_t>(t.type))) {
      return "unknown type of " + t.name;
    }
    if (t.n_bytes == 0) return "no bytes in " + t.name;
    if (t.offset % f.alignment() != 0) return "offset of " + t.name;
    if (t.data != base + f.data_offset() + t.offset) return "data pointer of " + t.name;
    if (t.offset > size - f.data_offset() || t.n_bytes > size - f.data_offset() - t.offset)
      return "data of " + t.name + " outside the buffer";
    sink = sink + t.data[0] + t.data[t.n_bytes - 1];
  }
  (void)sink;
  return "";
}

}  // namespace peregrine::test
