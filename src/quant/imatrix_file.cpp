// Importance matrix files, both of llama.cpp's formats (see imatrix_file.h). The layouts
// follow llama.cpp's tools/imatrix/imatrix.cpp (save_imatrix, save_imatrix_legacy) and
// common/imatrix-loader.cpp; the reader is stricter than llama's about hostile input.
#include "quant/imatrix_file.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>

#include "core/atomic_file.h"
#include "core/mapped_file.h"
#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"

namespace peregrine {
namespace {

constexpr char kGgufMagic[4] = {'G', 'G', 'U', 'F'};
constexpr std::string_view kSumsSuffix = ".in_sum2";
constexpr std::string_view kCountsSuffix = ".counts";
// A weight's name is a GGUF tensor name (under 64 bytes in ggml); a .dat entry's name
// is allowed more, but not without bound.
constexpr int32_t kMaxDatName = 4096;

// Empty, or with a control byte (NUL included): the error's text, else empty.
std::string bad_name(std::string_view s) {
  if (s.empty()) return "an empty name";
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return fmt::format("a name with control byte 0x{:02x} at {}", c, i);
  }
  return {};
}

// Sums of squares and token counts are finite and not negative: the error's text, else empty.
std::string bad_values(const float* v, size_t n, std::string_view what) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(v[i]) || v[i] < 0.0f)
      return fmt::format("{} [{}] is {} (must be finite and not negative)", what, i, v[i]);
  return {};
}

// Little-endian reads from a bounded buffer; the offset is reported in errors.
struct Cursor {
  const uint8_t* data;
  size_t size;
  size_t pos = 0;
  size_t left() const { return size - pos; }
  int32_t i32() {
    int32_t v;
    std::memcpy(&v, data + pos, 4);
    pos += 4;
    return v;
  }
};

Result<Imatrix> parse_dat(const uint8_t* data, size_t size, const std::string& name) {
  Cursor c{data, size};
  Imatrix m;
  auto truncated = [&](std::string_view what) {
    return make_error("{}: truncated .dat imatrix: {} at offset {} runs past the end ({} bytes)", name, what,
                      c.pos, size);
  };
  if (c.left() < 4) return truncated("the entry count");
  const int32_t n_entries = c.i32();
  // Each entry takes at least 17 bytes: name length, a 1-byte name, ncall, count, one value.
  if (n_entries < 1 || size_t(n_entries) > (size - 4) / 17)
    return make_error("{}: .dat imatrix claims {} entries, which a file of {} bytes cannot hold", name,
                      n_entries, size);
  m.entries.reserve(size_t(n_entries));
  for (int32_t e = 0; e < n_entries; ++e) {
    if (c.left() < 4) return truncated(fmt::format("entry {}'s name length", e));
    const size_t at = c.pos;
    const int32_t len = c.i32();
    if (len < 1 || len > kMaxDatName)
      return make_error("{}: .dat imatrix entry {} has a name of {} bytes at offset {} (1 to {} allowed)", name, e,
                        len, at, kMaxDatName);
    if (c.left() < size_t(len)) return truncated(fmt::format("entry {}'s name", e));
    ImatrixEntry& en = m.entries.emplace_back();
    en.name.assign(reinterpret_cast<const char*>(c.data + c.pos), size_t(len));
    c.pos += size_t(len);
    if (std::string bad = bad_name(en.name); !bad.empty())
      return make_error("{}: .dat imatrix entry {} at offset {} has {}", name, e, at, bad);
    if (c.left() < 8) return truncated(fmt::format("entry '{}''s ncall and value count", en.name));
    const int32_t ncall = c.i32();
    const int32_t nval = c.i32();
    if (nval < 1 || size_t(nval) > c.left() / 4)
      return make_error("{}: .dat imatrix entry '{}' claims {} values at offset {}, but {} bytes are left", name,
                        en.name, nval, c.pos - 4, c.left());
    en.n_cols = nval;
    en.n_mat = 1;  // a .dat does not record experts: one row of nval values
    en.sums.resize(size_t(nval));
    std::memcpy(en.sums.data(), c.data + c.pos, size_t(nval) * 4);
    c.pos += size_t(nval) * 4;
    if (std::string bad = bad_values(en.sums.data(), en.sums.size(), "value"); !bad.empty())
      return make_error("{}: .dat imatrix entry '{}': {}", name, en.name, bad);
    // llama-quantize divides by ncall when it is positive and takes the values as they are
    // otherwise; a count of 1 gives the same importance().
    en.counts.assign(1, ncall > 0 ? float(ncall) : 1.0f);
  }
  // The trailer (chunk count, dataset name) is optional: early files end here.
  if (c.left() > 0) {
    if (c.left() < 4) return truncated("the chunk count");
    const int32_t chunks = c.i32();
    if (chunks < 0) return make_error("{}: .dat imatrix chunk count is {}", name, chunks);
    m.chunk_count = uint32_t(chunks);
    if (c.left() > 0) {
      if (c.left() < 4) return truncated("the dataset name length");
      const int32_t len = c.i32();
      if (len < 0 || size_t(len) > c.left())
        return make_error("{}: .dat imatrix dataset name of {} bytes at offset {}, but {} bytes are left", name,
                          len, c.pos - 4, c.left());
      std::string ds(reinterpret_cast<const char*>(c.data + c.pos), size_t(len));
      c.pos += size_t(len);
      if (ds.find('\0') != std::string::npos)
        return make_error("{}: .dat imatrix dataset name contains a NUL byte", name);
      if (!ds.empty()) m.datasets.push_back(std::move(ds));
    }
  }
  if (c.left() > 0)
    return make_error("{}: .dat imatrix has {} unexpected bytes after its end at offset {}", name, c.left(), c.pos);
  return m;
}

Result<Imatrix> parse_gguf(const uint8_t* data, size_t size, const std::string& name) {
  PG_ASSIGN(std::unique_ptr<gguf::File> f, gguf::File::parse(data, size, name));
  Imatrix m;
  if (f->find("general.type") != nullptr) {
    PG_ASSIGN(std::string type, f->get_string("general.type"));
    if (type != "imatrix") return make_error("{}: not an importance matrix (general.type is '{}')", name, type);
  }
  if (f->find("imatrix.datasets") != nullptr) {
    PG_ASSIGN(m.datasets, f->get_string_array("imatrix.datasets"));
  }
  for (auto [key, dest] : {std::pair{"imatrix.chunk_count", &m.chunk_count},
                           std::pair{"imatrix.chunk_size", &m.chunk_size}}) {
    if (f->find(key) == nullptr) continue;
    PG_ASSIGN(uint64_t v, f->get_uint(key));
    if (v > std::numeric_limits<uint32_t>::max())
      return make_error("{}: metadata '{}' is {} (at most 2^32 - 1)", name, key, v);
    *dest = uint32_t(v);
  }
  // Pair "<w>.in_sum2" with "<w>.counts"; other tensors are ignored, as llama.cpp does.
  std::map<std::string, std::pair<const gguf::TensorInfo*, const gguf::TensorInfo*>, std::less<>> pairs;
  for (const gguf::TensorInfo& t : f->tensors()) {
    std::string_view n = t.name;
    if (n.ends_with(kSumsSuffix))
      pairs[std::string(n.substr(0, n.size() - kSumsSuffix.size()))].first = &t;
    else if (n.ends_with(kCountsSuffix))
      pairs[std::string(n.substr(0, n.size() - kCountsSuffix.size()))].second = &t;
  }
  if (pairs.empty())
    return make_error("{}: no importance matrix entries (no tensor named '<weight>.in_sum2')", name);
  m.entries.reserve(pairs.size());
  for (auto& [w, p] : pairs) {
    const auto [sums, counts] = p;
    if (std::string bad = bad_name(w); !bad.empty())
      return make_error("{}: tensor '{}' has {} before its suffix", name, (sums ? sums : counts)->name, bad);
    if (sums == nullptr || counts == nullptr)
      return make_error("{}: '{}{}' has no '{}{}' beside it", name, w, sums ? kSumsSuffix : kCountsSuffix, w,
                        sums ? kCountsSuffix : kSumsSuffix);
    for (const gguf::TensorInfo* t : {sums, counts})
      if (t->type != GgmlType::F32)
        return make_error("{}: tensor '{}' is {} (must be F32)", name, t->name, type_name(t->type));
    const uint64_t n_sums = sums->n_elements, n_mat = counts->n_elements;
    if (n_mat == 0 || n_sums == 0 || n_sums % n_mat != 0)
      return make_error("{}: '{}' has {} sums for {} counts (must be a positive multiple)", name, w, n_sums, n_mat);
    // Both sizes are bounded by the file (the reader checked each tensor's bytes against it).
    ImatrixEntry& en = m.entries.emplace_back();
    en.name = w;
    en.n_mat = int64_t(n_mat);
    en.n_cols = int64_t(n_sums / n_mat);
    en.sums.resize(n_sums);
    en.counts.resize(n_mat);
    std::memcpy(en.sums.data(), sums->data, n_sums * 4);
    std::memcpy(en.counts.data(), counts->data, n_mat * 4);
    if (std::string bad = bad_values(en.sums.data(), en.sums.size(), sums->name); !bad.empty())
      return make_error("{}: {}", name, bad);
    if (std::string bad = bad_values(en.counts.data(), en.counts.size(), counts->name); !bad.empty())
      return make_error("{}: {}", name, bad);
    for (float& c : en.counts) c = std::round(c);  // llama's loader rounds counts to integers
  }
  return m;  // std::map iterates in name order
}


void put_i32(std::vector<uint8_t>& out, int32_t v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + 4);
}

void put_bytes(std::vector<uint8_t>& out, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  out.insert(out.end(), b, b + n);
}

// Each entry consistent with itself and names unique: the error, else Ok. The entries in
// name order come back in `order`.
Status check_entries(const Imatrix& m, const std::string& path, std::vector<const ImatrixEntry*>& order) {
  order.clear();
  for (const ImatrixEntry& e : m.entries) {
    if (std::string bad = bad_name(e.name); !bad.empty()) return make_error("{}: an entry has {}", path, bad);
    if (e.n_cols < 1 || e.n_mat < 1 || e.n_cols > (int64_t(1) << 40) / e.n_mat ||
        e.sums.size() != size_t(e.n_cols * e.n_mat) || e.counts.size() != size_t(e.n_mat))
      return make_error("{}: entry '{}' has {} sums and {} counts for {} columns x {} matrices", path, e.name,
                        e.sums.size(), e.counts.size(), e.n_cols, e.n_mat);
    order.push_back(&e);
  }
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->name < b->name; });
  for (size_t i = 1; i < order.size(); ++i)
    if (order[i]->name == order[i - 1]->name) return make_error("{}: two entries named '{}'", path, order[i]->name);
  if (order.empty()) return make_error("{}: no importance matrix entries to write", path);
  return Status::Ok();
}

Status save_gguf(const Imatrix& m, const std::string& path, const std::vector<const ImatrixEntry*>& order) {
  gguf::Writer w;
  PG_TRY(w.set_string("general.type", "imatrix"));
  PG_TRY(w.set_string_array("imatrix.datasets", m.datasets));
  PG_TRY(w.set_u32("imatrix.chunk_count", m.chunk_count));
  PG_TRY(w.set_u32("imatrix.chunk_size", m.chunk_size));
  for (const ImatrixEntry* e : order) {
    // ggml drops trailing dimensions of 1 (ggml_n_dims), so a dense matrix's tensors are
    // [n_cols] and [1]: written the same way, the files match llama-imatrix's.
    const uint64_t n_cols = uint64_t(e->n_cols), n_mat = uint64_t(e->n_mat);
    std::vector<uint64_t> sums_dims{n_cols}, counts_dims{1};
    if (n_mat > 1) {
      sums_dims.push_back(n_mat);
      counts_dims.push_back(n_mat);
    }
    PG_TRY(w.add_tensor(e->name + std::string(kSumsSuffix), sums_dims, GgmlType::F32));
    PG_TRY(w.add_tensor(e->name + std::string(kCountsSuffix), counts_dims, GgmlType::F32));
  }
  return w.write(path, [&](size_t index, std::span<uint8_t> out) -> Status {
    const ImatrixEntry& e = *order[index / 2];
    const std::vector<float>& v = index % 2 == 0 ? e.sums : e.counts;
    if (out.size() != v.size() * sizeof(float))
      return make_error("{}: tensor {} takes {} bytes for {} values", path, index, out.size(), v.size());
    std::memcpy(out.data(), v.data(), out.size());
    return Status::Ok();
  });
}

Status save_dat(const Imatrix& m, const std::string& path, const std::vector<const ImatrixEntry*>& order) {
  constexpr int64_t kMaxI32 = std::numeric_limits<int32_t>::max();
  std::vector<uint8_t> out;
  int32_t n_entries = 0;
  put_i32(out, 0);  // the entry count, patched below
  std::vector<float> tmp;
  for (const ImatrixEntry* e : order) {
    const float max_count = *std::max_element(e->counts.begin(), e->counts.end());
    if (!(max_count > 0.0f)) continue;  // no token reached it: llama leaves it out too
    const int64_t nval = e->n_cols * e->n_mat;
    if (nval > kMaxI32 || int64_t(e->name.size()) > kMaxI32)
      return make_error("{}: entry '{}' is too large for a .dat file", path, e->name);
    // ncall: the count in chunks, rounded up so that it is never 0 (as llama writes it).
    const double cs = m.chunk_size > 0 ? double(m.chunk_size) : 1.0;
    const double ncall_d = std::ceil(std::round(double(max_count)) / cs);
    if (ncall_d > double(kMaxI32)) return make_error("{}: entry '{}' has {} chunks", path, e->name, ncall_d);
    const auto ncall = int32_t(ncall_d);
    put_i32(out, int32_t(e->name.size()));
    put_bytes(out, e->name.data(), e->name.size());
    put_i32(out, ncall);
    put_i32(out, int32_t(nval));
    tmp.resize(size_t(nval));
    for (int64_t mat = 0; mat < e->n_mat; ++mat) {
      const float count = e->counts[size_t(mat)];
      for (int64_t j = 0; j < e->n_cols; ++j) {
        const size_t i = size_t(mat * e->n_cols + j);
        // A matrix no token reached (one expert of several) is stored as 1s: llama's choice.
        // Counts already in chunks (a loaded .dat) keep their values bit for bit.
        tmp[i] = count == float(ncall) ? e->sums[i]
                 : count > 0.0f        ? e->sums[i] / count * float(ncall)
                                       : float(ncall);
      }
    }
    put_bytes(out, tmp.data(), tmp.size() * sizeof(float));
    ++n_entries;
  }
  if (n_entries == 0) return make_error("{}: no entry has any tokens: nothing to write", path);
  std::memcpy(out.data(), &n_entries, 4);
  if (m.chunk_count > uint32_t(kMaxI32)) return make_error("{}: chunk count {} is too large", path, m.chunk_count);
  put_i32(out, int32_t(m.chunk_count));
  const std::string dataset = m.datasets.empty() ? std::string() : m.datasets.back();
  if (int64_t(dataset.size()) > kMaxI32) return make_error("{}: dataset name is too long", path);
  put_i32(out, int32_t(dataset.size()));
  put_bytes(out, dataset.data(), dataset.size());
  PG_ASSIGN(AtomicFile f, AtomicFile::create(path));
  PG_TRY(f.write(out.data(), out.size()));
  return f.commit();
}

}  // namespace

std::vector<float> ImatrixEntry::importance() const {
  PG_ASSERT(sums.size() == size_t(n_cols * n_mat) && counts.size() == size_t(n_mat));
  std::vector<float> out(sums.size());
  for (int64_t mat = 0; mat < n_mat; ++mat) {
    const float count = counts[size_t(mat)];
    for (int64_t j = 0; j < n_cols; ++j) {
      const size_t i = size_t(mat * n_cols + j);
      out[i] = count > 0.0f ? sums[i] / count : 1.0f;
    }
  }
  return out;
}

const ImatrixEntry* Imatrix::find(std::string_view name) const {
  for (const ImatrixEntry& e : entries)
    if (e.name == name) return &e;
  return nullptr;
}

Result<Imatrix> parse_imatrix(const uint8_t* data, size_t size, const std::string& name) {
  if (size >= 4 && std::memcmp(data, kGgufMagic, 4) == 0) return parse_gguf(data, size, name);
  Result<Imatrix> r = parse_dat(data, size, name);
  if (!r.ok()) return r;
  std::vector<ImatrixEntry>& es = r->entries;
  std::sort(es.begin(), es.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  for (size_t i = 1; i < es.size(); ++i)
    if (es[i].name == es[i - 1].name)
      return make_error("{}: .dat imatrix has two entries named '{}'", name, es[i].name);
  return r;
}

Result<Imatrix> load_imatrix(const std::string& path) {
  PG_ASSIGN(std::unique_ptr<MappedFile> f, MappedFile::open(path));
  if (f->size() == 0) return make_error("{}: empty file (not an importance matrix)", path);
  return parse_imatrix(f->data(), f->size(), path);
}

Status save_imatrix(const Imatrix& m, const std::string& path, ImatrixFormat format) {
  std::vector<const ImatrixEntry*> order;
  PG_TRY(check_entries(m, path, order));
  return format == ImatrixFormat::Gguf ? save_gguf(m, path, order) : save_dat(m, path, order);
}

}  // namespace peregrine
