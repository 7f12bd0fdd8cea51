// GGUF writer: what it writes the reader reads back identically (every value type, nested
// arrays, tensors of every geometry), a real model re-written tensor by tensor is the same
// file byte for byte (llama.cpp's writer made it), bad input is refused with one line, and a
// failed write -- a producer error, a full disk, an unwritable folder -- leaves the
// destination as it was and no temporary file behind. tests/reference/test_gguf_writer.py
// reads written files with gguf-py, the independent reader.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "gguf/gguf_writer.h"
#include "real_model.h"

namespace peregrine {
namespace {

namespace fs = std::filesystem;
using gguf::Value;
using gguf::ValueType;
using gguf::Writer;

Value scalar(ValueType t, uint64_t u, int64_t i = 0, double f = 0) {
  Value v;
  v.type = t;
  v.u = u;
  v.i = i;
  v.f = f;
  return v;
}

Value string_value(std::string s) {
  Value v;
  v.type = ValueType::STRING;
  v.str = std::move(s);
  return v;
}

Value array(ValueType elem, std::vector<Value> items) {
  Value v;
  v.type = ValueType::ARRAY;
  v.elem_type = elem;
  v.items = std::move(items);
  return v;
}

void expect_same(const Value& a, const Value& b, const std::string& key) {
  ASSERT_EQ(a.type, b.type) << key;
  switch (a.type) {
    case ValueType::STRING: EXPECT_EQ(a.str, b.str) << key; break;
    case ValueType::F32: case ValueType::F64: EXPECT_EQ(a.f, b.f) << key; break;
    case ValueType::I8: case ValueType::I16: case ValueType::I32: case ValueType::I64:
      EXPECT_EQ(a.i, b.i) << key;
      break;
    case ValueType::ARRAY:
      ASSERT_EQ(a.elem_type, b.elem_type) << key;
      ASSERT_EQ(a.items.size(), b.items.size()) << key;
      for (size_t k = 0; k < a.items.size(); ++k) expect_same(a.items[k], b.items[k], key);
      break;
    default: EXPECT_EQ(a.u, b.u) << key; break;
  }
}

// Tensor bytes derived from the index, so every tensor's content is distinct.
Status fill_pattern(size_t index, std::span<uint8_t> out) {
  for (size_t k = 0; k < out.size(); ++k) out[k] = uint8_t(index * 31 + k * 7);
  return Status::Ok();
}

class GgufWriterFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("pg_writer_{}_{}", ::getpid(),
                                                    ::testing::UnitTest::GetInstance()->random_seed());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add);
    fs::remove_all(dir_);
  }
  // Files in dir_ other than `keep`.
  std::vector<std::string> others(const std::string& keep) const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_))
      if (e.path().filename() != keep) names.push_back(e.path().filename().string());
    return names;
  }
  fs::path dir_;
};

Writer sample_writer() {
  Writer w;
  EXPECT_TRUE(w.set("general.architecture", string_value("llama")).ok());
  EXPECT_TRUE(w.set("u8", scalar(ValueType::U8, 200)).ok());
  EXPECT_TRUE(w.set("i8", scalar(ValueType::I8, 0, -100)).ok());
  EXPECT_TRUE(w.set("u16", scalar(ValueType::U16, 65535)).ok());
  EXPECT_TRUE(w.set("i16", scalar(ValueType::I16, 0, -32768)).ok());
  EXPECT_TRUE(w.set_u32("u32", 4000000000u).ok());
  EXPECT_TRUE(w.set_i32("i32", -2000000000).ok());
  EXPECT_TRUE(w.set("u64", scalar(ValueType::U64, ~uint64_t{0})).ok());
  EXPECT_TRUE(w.set("i64", scalar(ValueType::I64, 0, INT64_MIN)).ok());
  EXPECT_TRUE(w.set_f32("f32", 0.1f).ok());
  EXPECT_TRUE(w.set("f64", scalar(ValueType::F64, 0, 0, 0.1)).ok());
  EXPECT_TRUE(w.set_bool("bool", true).ok());
  EXPECT_TRUE(w.set_string("empty", "").ok());
  EXPECT_TRUE(w.set_string_array("tokens", {"a", "", "\xe2\x96\x81the", std::string("\0x", 2)}).ok());
  EXPECT_TRUE(w.set("nested", array(ValueType::ARRAY, {array(ValueType::I32, {scalar(ValueType::I32, 0, 7)}),
                                                        array(ValueType::I32, {})}))
                  .ok());
  const uint64_t d1[] = {64};
  const uint64_t d2[] = {256, 3};
  const uint64_t d3[] = {32, 2, 5};
  const uint64_t d4[] = {1, 1, 1, 1};
  EXPECT_TRUE(w.add_tensor("norm.weight", d1, GgmlType::F32).ok());
  EXPECT_TRUE(w.add_tensor("blk.0.q4k", d2, GgmlType::Q4_K).ok());
  EXPECT_TRUE(w.add_tensor("blk.0.q8", d3, GgmlType::Q8_0).ok());
  EXPECT_TRUE(w.add_tensor("scalar", d4, GgmlType::F16).ok());
  return w;
}

TEST(GgufWriter, RoundTripsEveryValueTypeAndTensor) {
  const Writer w = sample_writer();
  auto bytes = w.to_bytes(fill_pattern);
  ASSERT_TRUE(bytes.ok()) << bytes.error().message;
  auto f = gguf::File::parse(bytes->data(), bytes->size(), "mem");
  ASSERT_TRUE(f.ok()) << f.error().message;
  ASSERT_EQ((*f)->metadata().size(), w.metadata().size());
  for (size_t k = 0; k < w.metadata().size(); ++k) {
    EXPECT_EQ((*f)->metadata()[k].first, w.metadata()[k].first);
    expect_same((*f)->metadata()[k].second, w.metadata()[k].second, w.metadata()[k].first);
  }
  EXPECT_EQ((*f)->version(), 3u);
  ASSERT_EQ((*f)->tensors().size(), w.tensors().size());
  for (size_t i = 0; i < w.tensors().size(); ++i) {
    const auto& t = (*f)->tensors()[i];
    const auto& e = w.tensors()[i];
    EXPECT_EQ(t.name, e.name);
    EXPECT_EQ(t.dims, e.dims);
    EXPECT_EQ(t.type, e.type);
    EXPECT_EQ(t.n_bytes, e.n_bytes);
    EXPECT_EQ(t.offset % 32, 0u);
    std::vector<uint8_t> want(t.n_bytes);
    ASSERT_TRUE(fill_pattern(i, want).ok());
    EXPECT_EQ(std::memcmp(t.data, want.data(), want.size()), 0) << t.name;
  }
  EXPECT_EQ(w.tensors()[1].n_bytes, 3u * 144);
  EXPECT_EQ((*f)->file_size(), (*f)->data_offset() + w.data_bytes());
}

TEST(GgufWriter, SetReplacesInPlaceAndAlignmentIsHonoured) {
  Writer w;
  ASSERT_TRUE(w.set_u32("general.alignment", 64).ok());
  ASSERT_TRUE(w.set_string("a", "1").ok());
  ASSERT_TRUE(w.set_string("b", "2").ok());
  ASSERT_TRUE(w.set_u32("a", 3).ok());
  ASSERT_EQ(w.metadata().size(), 3u);
  EXPECT_EQ(w.metadata()[1].first, "a");
  EXPECT_EQ(w.metadata()[1].second.u, 3u);
  w.remove("b");
  EXPECT_EQ(w.find("b"), nullptr);
  const uint64_t d[] = {32};
  ASSERT_TRUE(w.add_tensor("x", d, GgmlType::F32).ok());
  ASSERT_TRUE(w.add_tensor("y", d, GgmlType::F16).ok());
  EXPECT_EQ(w.tensors()[1].offset, 128u);
  auto bytes = w.to_bytes(fill_pattern);
  ASSERT_TRUE(bytes.ok());
  auto f = gguf::File::parse(bytes->data(), bytes->size(), "mem");
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ((*f)->alignment(), 64u);
  EXPECT_EQ((*f)->data_offset() % 64, 0u);
  EXPECT_FALSE(w.set_u32("general.alignment", 32).ok()) << "alignment changed after tensors were laid out";
}

TEST(GgufWriter, RefusesBadInputWithOneLine) {
  Writer w;
  const uint64_t ok[] = {256, 2};
  ASSERT_TRUE(w.add_tensor("t", ok, GgmlType::Q4_K).ok());
  auto expect_error = [](const Status& s, const std::string& part) {
    ASSERT_FALSE(s.ok()) << part;
    EXPECT_NE(s.error().message.find(part), std::string::npos) << s.error().message;
    EXPECT_EQ(s.error().message.find('\n'), std::string::npos) << s.error().message;
  };
  expect_error(w.add_tensor("t", ok, GgmlType::Q4_K), "duplicate");
  expect_error(w.add_tensor(std::string(64, 'n'), ok, GgmlType::F32), "longer than 63");
  expect_error(w.add_tensor("", ok, GgmlType::F32), "empty");
  const uint64_t zero[] = {32, 0};
  expect_error(w.add_tensor("z", zero, GgmlType::F32), "dimension 1 is 0");
  const uint64_t five[] = {1, 1, 1, 1, 1};
  expect_error(w.add_tensor("f", five, GgmlType::F32), "5 dimensions");
  expect_error(w.add_tensor("e", {}, GgmlType::F32), "0 dimensions");
  const uint64_t odd[] = {100};
  expect_error(w.add_tensor("o", odd, GgmlType::Q4_K), "not a multiple of the Q4_K block size 256");
  expect_error(w.add_tensor("u", ok, GgmlType(99)), "unknown type 99");
  const uint64_t huge[] = {uint64_t{1} << 40, uint64_t{1} << 40, uint64_t{1} << 40};
  expect_error(w.add_tensor("h", huge, GgmlType::F32), "overflows");
  expect_error(w.set_u32("general.alignment", 48), "power of two");
  expect_error(w.set("", scalar(ValueType::U8, 1)), "empty");
  expect_error(w.set("k", scalar(ValueType::U8, 256)), "out of range");
  expect_error(w.set("k", array(ValueType::I32, {string_value("x")})), "holds a string");
  Value deep = scalar(ValueType::U8, 1);
  for (int d = 0; d < 5; ++d) deep = array(deep.type, {deep});
  expect_error(w.set("deep", deep), "nested deeper");
  expect_error(w.set("k", scalar(ValueType(77), 0)), "unknown value type");
}

TEST_F(GgufWriterFiles, WritesAtomicallyAndKeepsTheOldFileOnFailure) {
  const Writer w = sample_writer();
  const std::string dest = (dir_ / "out.gguf").string();
  ASSERT_TRUE(w.write(dest, fill_pattern).ok());
  auto f = gguf::File::open(dest);
  ASSERT_TRUE(f.ok()) << f.error().message;
  auto mem = w.to_bytes(fill_pattern);
  ASSERT_TRUE(mem.ok());
  EXPECT_EQ(fs::file_size(dest), mem->size());
  EXPECT_TRUE(others("out.gguf").empty());

  // A producer failing half way: the error comes back, the old file stays, no temp file.
  auto failing = [](size_t index, std::span<uint8_t> out) -> Status {
    if (index == 2) return make_error("tensor {}: no data", index);
    return fill_pattern(index, out);
  };
  const auto before = fs::file_size(dest);
  Status s = w.write(dest, failing);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("tensor 2: no data"), std::string::npos);
  EXPECT_EQ(fs::file_size(dest), before);
  EXPECT_TRUE(gguf::File::open(dest).ok());
  EXPECT_TRUE(others("out.gguf").empty());

  // A destination that is a folder, a folder that does not exist.
  EXPECT_NE(w.write(dir_.string(), fill_pattern).error().message.find("is a directory"), std::string::npos);
  Status missing = w.write((dir_ / "no" / "such" / "x.gguf").string(), fill_pattern);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("cannot create"), std::string::npos) << missing.error().message;
}

TEST_F(GgufWriterFiles, FullDiskLeavesNothingBehind) {
  // RLIMIT_FSIZE stands in for a full disk: writes past the limit fail with EFBIG.
  const Writer w = sample_writer();
  const std::string dest = (dir_ / "full.gguf").string();
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  auto* prev = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit low = old;
  low.rlim_cur = 1000;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &low), 0);
  Status s = w.write(dest, fill_pattern);
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, prev);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("write failed"), std::string::npos) << s.error().message;
  EXPECT_FALSE(fs::exists(dest));
  EXPECT_TRUE(others("").empty());
}

TEST_F(GgufWriterFiles, UnwritableFolderIsAnError) {
  if (::geteuid() == 0) GTEST_SKIP() << "root writes anywhere";
  fs::permissions(dir_, fs::perms::owner_read | fs::perms::owner_exec);
  Status s = sample_writer().write((dir_ / "x.gguf").string(), fill_pattern);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("cannot create"), std::string::npos) << s.error().message;
}

TEST(GgufWriter, RewritesARealModelByteForByte) {
  // The release file was written by llama.cpp's converter; the same metadata and tensors laid
  // out by our writer must give the same bytes (same order, alignment and padding rules).
  if (!fs::exists(test::smollm_path())) GTEST_SKIP() << "model not found";
  auto f = gguf::File::open(test::smollm_path());
  ASSERT_TRUE(f.ok()) << f.error().message;
  const gguf::File& src = **f;
  Writer w;
  ASSERT_TRUE(gguf::copy_metadata(src, w).ok());
  for (const auto& t : src.tensors()) ASSERT_TRUE(w.add_tensor(t.name, t.dims, t.type).ok()) << t.name;
  auto bytes = w.to_bytes([&](size_t i, std::span<uint8_t> out) {
    std::memcpy(out.data(), src.tensors()[i].data, out.size());
    return Status::Ok();
  });
  ASSERT_TRUE(bytes.ok()) << bytes.error().message;
  std::ifstream in(test::smollm_path(), std::ios::binary);
  std::vector<uint8_t> orig{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  ASSERT_EQ(bytes->size(), orig.size());
  EXPECT_TRUE(*bytes == orig);
}

}  // namespace
}  // namespace peregrine
