// GGUF reader: valid files round-trip, and hostile files give an Error that names the problem and
// its byte offset -- never a crash, a hang or a huge allocation. Run under ASan+UBSan by
// scripts/test_sanitizers.sh; tests/fuzz/fuzz_gguf.cpp explores further.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <unistd.h>

#include "gguf/gguf.h"
#include "gguf_builder.h"
#include "real_model.h"

namespace peregrine {
namespace {

using gguf::File;
using gguf::ValueType;
using test::GgufBuilder;
using test::GgufValue;

constexpr uint64_t kHeader = 24;  // magic, version, tensor count, kv count

// Parse from an exactly-sized heap copy, so that any read past the end trips ASan.
Result<std::unique_ptr<File>> ParseCopy(const std::vector<uint8_t>& bytes, size_t n,
                                        std::unique_ptr<uint8_t[]>& keep) {
  keep.reset(new uint8_t[n]);
  if (n) std::memcpy(keep.get(), bytes.data(), n);
  return File::parse(keep.get(), n, "t.gguf");
}

// Parse a whole buffer that must be valid, and check the invariants of the result.
std::unique_ptr<File> ParseOk(const std::vector<uint8_t>& bytes) {
  auto r = File::parse(bytes.data(), bytes.size(), "t.gguf");
  EXPECT_TRUE(r.ok()) << r.error().message;
  if (!r.ok()) return nullptr;
  std::string bad = test::check_parsed_gguf(**r, bytes.data(), bytes.size());
  EXPECT_EQ(bad, "");
  return std::move(r).value();
}

std::string Offset(uint64_t at) { return fmt::format("t.gguf: offset {:#x}: ", at); }

// Parse a buffer that must be rejected; the message must contain every one of `parts`.
void ExpectError(const std::vector<uint8_t>& bytes, const std::vector<std::string>& parts) {
  std::unique_ptr<uint8_t[]> keep;
  auto r = ParseCopy(bytes, bytes.size(), keep);
  ASSERT_FALSE(r.ok()) << "parsed a bad file of " << bytes.size() << " bytes";
  for (const std::string& p : parts)
    EXPECT_NE(r.error().message.find(p), std::string::npos)
        << "message '" << r.error().message << "' lacks '" << p << "'";
}

std::vector<uint8_t> Le64(uint64_t v) {
  std::vector<uint8_t> out;
  test::put_u64(out, v);
  return out;
}

std::vector<uint8_t> F32Bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * 4);
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// A small file that uses every value type, nested arrays and three tensors; its last tensor
// ends the file, so every proper prefix of it is invalid.
GgufBuilder RichBuilder() {
  GgufBuilder b;
  b.kv_str("general.architecture", "llama");
  b.kv_u8("u8", 200).kv_i8("i8", -100).kv_u16("u16", 60000).kv_i16("i16", -30000);
  b.kv_u32("u32", 4000000000u).kv_i32("i32", -2000000000).kv_u64("u64", 1ull << 63);
  b.kv_i64("i64", -(1ll << 62)).kv_f32("f32", 1.5f).kv_f64("f64", -2.25).kv_bool("yes", true);
  b.kv_bool("no", false).kv_str("empty", "");
  b.kv_str_array("tokens", {"a", "", "<s>"});
  b.kv_i32_array("types", {1, -2, 3});
  b.kv_f32_array("scores", {0.5f, -1.0f});
  b.kv("nested", GgufValue::array(ValueType::ARRAY,
                                  {GgufValue::array(ValueType::U16, {GgufValue::u16(7)}),
                                   GgufValue::array(ValueType::STRING, {GgufValue::str("x")})}));
  b.tensor("a", {8}, GgmlType::F32, F32Bytes({1, 2, 3, 4, 5, 6, 7, 8}));
  b.tensor("b", {32, 2}, GgmlType::Q4_0);
  b.tensor("c", {3, 1, 2}, GgmlType::F16);
  return b;
}

// splitmix64: a fixed, portable sequence, so every run tries the same inputs.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

// A mutated file: either an Error with a message, or a File that satisfies every invariant.
void ParseMutant(const std::vector<uint8_t>& bytes, const std::string& what) {
  std::unique_ptr<uint8_t[]> keep;
  auto r = ParseCopy(bytes, bytes.size(), keep);
  if (!r.ok()) {
    EXPECT_EQ(r.error().message.rfind("t.gguf: ", 0), 0u) << what << ": " << r.error().message;
    return;
  }
  EXPECT_EQ(test::check_parsed_gguf(**r, keep.get(), bytes.size()), "") << what;
}

// ---------------------------------------------------------------- the builder itself

// Bytes written by gguf-py 0.19.0 (GGUFWriter(arch='llama'); add_uint32('llama.block_count', 2);
// add_array('a', [1, 2]); add_tensor('x', f32 [1, 2]); add_tensor('y', f32 3x2 of 3.0)), dumped
// with bytes.hex(). gguf-py pads the file end to the alignment; our builder does not.
const char* kGgufPyHex =
    "474755460300000002000000000000000300000000000000140000000000000067656e6572616c2e617263"
    "6869746563747572650800000005000000000000006c6c616d6111000000000000006c6c616d612e626c6f"
    "636b5f636f756e74040000000200000001000000000000006109000000050000000200000000000000010000"
    "000200000001000000000000007801000000020000000000000000000000000000000000000001000000000000"
    "007902000000030000000000000002000000000000000000000020000000000000000000000000000000000000"
    "000000000000803f000000400000000000000000000000000000000000000000000000000000404000004040"
    "000040400000404000004040000040400000000000000000";

std::vector<uint8_t> FromHex(const char* hex) {
  std::vector<uint8_t> out;
  for (size_t k = 0; hex[k] && hex[k + 1]; k += 2)
    out.push_back(static_cast<uint8_t>(std::stoi(std::string(hex + k, 2), nullptr, 16)));
  return out;
}

TEST(GgufBuilder, MatchesGgufPyBytes) {
  std::vector<uint8_t> want = FromHex(kGgufPyHex);
  ASSERT_EQ(want.size(), 288u);
  GgufBuilder b;
  b.kv_str("general.architecture", "llama").kv_u32("llama.block_count", 2);
  b.kv("a", GgufValue::array(ValueType::I32, {GgufValue::i32(1), GgufValue::i32(2)}));
  b.tensor("x", {2}, GgmlType::F32, F32Bytes({1, 2}));
  b.tensor("y", {3, 2}, GgmlType::F32, F32Bytes({3, 3, 3, 3, 3, 3}));
  std::vector<uint8_t> got = b.build();
  ASSERT_EQ(got.size(), 280u);  // 256 + 24 bytes of y; gguf-py adds 8 bytes of end padding
  EXPECT_TRUE(std::equal(got.begin(), got.end(), want.begin()));
}

// ---------------------------------------------------------------- valid files

TEST(GgufParse, GgufPyFile) {
  std::vector<uint8_t> bytes = FromHex(kGgufPyHex);
  auto f = ParseOk(bytes);
  ASSERT_TRUE(f);
  // gguf-py's GGUFReader on these bytes: data_offset 224, 'x' at 224 and 'y' at 256, y shape [3 2].
  EXPECT_EQ(f->data_offset(), 224u);
  ASSERT_EQ(f->tensors().size(), 2u);
  EXPECT_EQ(f->tensors()[0].data - bytes.data(), 224);
  EXPECT_EQ(f->tensors()[1].data - bytes.data(), 256);
  EXPECT_EQ(f->tensors()[1].dims, (std::vector<uint64_t>{3, 2}));
  EXPECT_EQ(f->tensors()[1].rows(), 2u);
  EXPECT_EQ(f->get_string("general.architecture").value(), "llama");
  EXPECT_EQ(f->get_int_array("a").value(), (std::vector<int64_t>{1, 2}));
  float y0;
  std::memcpy(&y0, f->tensors()[1].data, 4);
  EXPECT_EQ(y0, 3.0f);
}

TEST(GgufParse, EveryValueTypeRoundTrips) {
  auto bytes = RichBuilder().build();
  auto f = ParseOk(bytes);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->version(), 3u);
  EXPECT_EQ(f->metadata().size(), 18u);
  EXPECT_EQ(f->metadata()[1].first, "u8");  // file order is kept
  EXPECT_EQ(f->get_string("general.architecture").value(), "llama");
  EXPECT_EQ(f->get_uint("u8").value(), 200u);
  EXPECT_EQ(f->get_int("i8").value(), -100);
  EXPECT_EQ(f->get_uint("u16").value(), 60000u);
  EXPECT_EQ(f->get_int("i16").value(), -30000);
  EXPECT_EQ(f->get_uint("u32").value(), 4000000000u);
  EXPECT_EQ(f->get_int("i32").value(), -2000000000);
  EXPECT_EQ(f->get_uint("u64").value(), 1ull << 63);
  EXPECT_EQ(f->get_int("i64").value(), -(1ll << 62));
  EXPECT_EQ(f->get_float("f32").value(), 1.5);
  EXPECT_EQ(f->get_float("f64").value(), -2.25);
  EXPECT_EQ(f->get_float("u16").value(), 60000.0);  // integers are numbers too
  EXPECT_EQ(f->get_float("i8").value(), -100.0);
  EXPECT_EQ(f->get_int("u32").value(), 4000000000ll);
  EXPECT_EQ(f->get_uint("i32").ok(), false);
  EXPECT_TRUE(f->get_bool("yes").value());
  EXPECT_FALSE(f->get_bool("no").value());
  EXPECT_EQ(f->get_string("empty").value(), "");
  EXPECT_EQ(f->get_string_array("tokens").value(), (std::vector<std::string>{"a", "", "<s>"}));
  EXPECT_EQ(f->get_int_array("types").value(), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(f->get_float_array("scores").value(), (std::vector<float>{0.5f, -1.0f}));

  const gguf::Value* nested = f->find("nested");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->type, ValueType::ARRAY);
  EXPECT_EQ(nested->elem_type, ValueType::ARRAY);
  ASSERT_EQ(nested->items.size(), 2u);
  EXPECT_EQ(nested->items[0].elem_type, ValueType::U16);
  ASSERT_EQ(nested->items[0].items.size(), 1u);
  EXPECT_EQ(nested->items[0].items[0].u, 7u);
  ASSERT_EQ(nested->items[1].items.size(), 1u);
  EXPECT_EQ(nested->items[1].items[0].str, "x");
  EXPECT_EQ(f->find("absent"), nullptr);
}

TEST(GgufParse, TensorsPointAtTheirData) {
  GgufBuilder::Layout l;
  auto bytes = RichBuilder().build(&l);
  auto f = ParseOk(bytes);
  ASSERT_TRUE(f);
  EXPECT_EQ(f->data_offset(), l.data_offset);
  EXPECT_EQ(f->data_offset() % 32, 0u);
  ASSERT_EQ(f->tensors().size(), 3u);
  const gguf::TensorInfo* a = f->find_tensor("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->type, GgmlType::F32);
  EXPECT_EQ(a->n_elements, 8u);
  EXPECT_EQ(a->n_bytes, 32u);
  float a7;
  std::memcpy(&a7, a->data + 28, 4);
  EXPECT_EQ(a7, 8.0f);
  const gguf::TensorInfo* b = f->find_tensor("b");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(b->type, GgmlType::Q4_0);
  EXPECT_EQ(b->n_bytes, 2u * 18u);  // 2 rows of one 32-value block of 18 bytes
  EXPECT_EQ(b->rows(), 2u);
  EXPECT_EQ(b->offset, l.tensor_offsets[1]);
  EXPECT_EQ(b->data, bytes.data() + l.data_offset + l.tensor_offsets[1]);
  const gguf::TensorInfo* c = f->find_tensor("c");
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(c->dims, (std::vector<uint64_t>{3, 1, 2}));
  EXPECT_EQ(c->n_bytes, 12u);
  EXPECT_EQ(c->data + c->n_bytes, bytes.data() + bytes.size());
  EXPECT_EQ(f->find_tensor("d"), nullptr);
}

TEST(GgufParse, WrongTypeAndMissingKeyErrors) {
  auto bytes = RichBuilder().build();
  auto f = ParseOk(bytes);
  ASSERT_TRUE(f);
  auto expect_err = [](const auto& r, const std::string& part) {
    ASSERT_FALSE(r.ok());
    EXPECT_NE(r.error().message.find(part), std::string::npos) << r.error().message;
  };
  expect_err(f->get_uint("missing"), "missing metadata 'missing'");
  expect_err(f->get_string("u8"), "metadata 'u8' is u8 (expected string)");
  expect_err(f->get_bool("u8"), "metadata 'u8' is u8 (expected bool)");
  expect_err(f->get_uint("general.architecture"), "is string (expected an integer)");
  expect_err(f->get_int("f32"), "is f32 (expected an integer)");
  expect_err(f->get_float("yes"), "is bool (expected a number)");
  expect_err(f->get_float("tokens"), "is array (expected a number)");
  expect_err(f->get_uint("i8"), "metadata 'i8' is negative (-100)");
  expect_err(f->get_int("u64"), "metadata 'u64' is out of range");
  expect_err(f->get_string_array("types"), "expected array of strings");
  expect_err(f->get_int_array("tokens"), "expected array of integers");
  expect_err(f->get_int_array("scores"), "expected array of integers");
  expect_err(f->get_float_array("types"), "expected array of floats");
  expect_err(f->get_string_array("nested"), "expected array of strings");
  expect_err(f->get_string_array("u32"), "expected array of strings");

  GgufBuilder big;
  big.kv("big", GgufValue::array(ValueType::U64, {GgufValue::u64(1), GgufValue::u64(~0ull)}));
  big.kv("f64s", GgufValue::array(ValueType::F64, {GgufValue::f64(0.25)}));
  auto bb = big.build();
  auto g = ParseOk(bb);
  ASSERT_TRUE(g);
  expect_err(g->get_int_array("big"), "metadata 'big' has an out-of-range element");
  EXPECT_EQ(g->get_float_array("f64s").value(), (std::vector<float>{0.25f}));
}

TEST(GgufParse, Version2AndVersion3) {
  for (uint32_t v : {2u, 3u}) {
    GgufBuilder b = RichBuilder();
    b.version = v;
    auto bytes = b.build();
    auto f = ParseOk(bytes);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->version(), v);
    EXPECT_EQ(f->tensors().size(), 3u);
  }
}

TEST(GgufParse, CustomAlignment) {
  for (uint32_t align : {1u, 8u, 64u, 4096u}) {
    GgufBuilder b;
    b.alignment(align);
    b.tensor("a", {3}, GgmlType::F32, F32Bytes({1, 2, 3}));  // 12 bytes: b is padded after it
    b.tensor("b", {5}, GgmlType::F32, F32Bytes({4, 5, 6, 7, 8}));
    GgufBuilder::Layout l;
    auto bytes = b.build(&l);
    auto f = ParseOk(bytes);
    ASSERT_TRUE(f);
    EXPECT_EQ(f->alignment(), align);
    EXPECT_EQ(f->data_offset(), l.data_offset);
    EXPECT_EQ(f->data_offset() % align, 0u);
    EXPECT_EQ(f->tensors()[1].offset, l.tensor_offsets[1]);
    EXPECT_EQ(f->tensors()[1].offset, align <= 12 ? (12 + align - 1) / align * align : align);
    float b0;
    std::memcpy(&b0, f->tensors()[1].data, 4);
    EXPECT_EQ(b0, 4.0f);
  }
}

TEST(GgufParse, EmptyFiles) {
  GgufBuilder b;
  auto bytes = b.build();
  ASSERT_EQ(bytes.size(), kHeader);
  auto f = ParseOk(bytes);
  ASSERT_TRUE(f);
  EXPECT_TRUE(f->metadata().empty());
  EXPECT_TRUE(f->tensors().empty());
  // Metadata only, no tensors: valid, and nothing after the metadata is needed.
  b.kv_str("general.architecture", "llama");
  auto g = ParseOk(b.build());
  ASSERT_TRUE(g);
  EXPECT_EQ(g->metadata().size(), 1u);
}

TEST(GgufParse, ArraysNestedToTheLimit) {
  // Four levels (the reader's limit: real files use one) parse; the innermost holds an i8.
  GgufValue v = GgufValue::array(ValueType::I8, {GgufValue::i8(-5)});
  for (int k = 0; k < 3; ++k) v = GgufValue::array(ValueType::ARRAY, {v});
  GgufBuilder b;
  b.kv("deep", v);
  auto bytes = b.build();
  auto f = ParseOk(bytes);
  ASSERT_TRUE(f);
  const gguf::Value* x = f->find("deep");
  for (int k = 0; k < 3; ++k) {
    ASSERT_EQ(x->items.size(), 1u);
    x = &x->items[0];
  }
  ASSERT_EQ(x->items.size(), 1u);
  EXPECT_EQ(x->items[0].i, -5);
}

// ---------------------------------------------------------------- files on disk

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    path = std::filesystem::temp_directory_path() / fmt::format("peregrine-gguf-{}", ::getpid());
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::string write(const std::string& name, const std::vector<uint8_t>& bytes) const {
    std::string p = (path / name).string();
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()),
                                             static_cast<std::streamsize>(bytes.size()));
    return p;
  }
};

TEST(GgufOpen, FilesOnDisk) {
  TempDir dir;
  auto bytes = RichBuilder().build();
  std::string good = dir.write("good.gguf", bytes);
  auto f = File::open(good);
  ASSERT_TRUE(f.ok()) << f.error().message;
  EXPECT_EQ((*f)->file_size(), bytes.size());
  EXPECT_EQ((*f)->name(), good);
  EXPECT_EQ((*f)->find_tensor("a")->data[4 * 7 + 3], 0x41);  // 8.0f = 0x41000000
  EXPECT_EQ(test::check_parsed_gguf(**f, (*f)->tensors()[0].data - (*f)->data_offset(),
                                    bytes.size()),
            "");

  auto missing = File::open((dir.path / "nope.gguf").string());
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("nope.gguf: cannot open"), std::string::npos);
  auto directory = File::open(dir.path.string());
  ASSERT_FALSE(directory.ok());
  EXPECT_NE(directory.error().message.find("not a regular file"), std::string::npos);
  auto empty = File::open(dir.write("empty.gguf", {}));
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.error().message.find("empty.gguf: file too small"), std::string::npos);
  bytes.resize(bytes.size() - 1);
  auto cut = File::open(dir.write("cut.gguf", bytes));
  ASSERT_FALSE(cut.ok());
  EXPECT_EQ(cut.error().message.rfind(dir.path.string() + "/cut.gguf: offset 0x", 0), 0u)
      << cut.error().message;
  EXPECT_NE(cut.error().message.find("tensor 'c' data"), std::string::npos);
}

// ---------------------------------------------------------------- corruption suite

TEST(GgufCorrupt, TruncatedAtEveryOffset) {
  auto bytes = RichBuilder().build();
  ASSERT_LT(bytes.size(), 2000u);
  for (size_t n = 0; n < bytes.size(); ++n) {
    std::unique_ptr<uint8_t[]> keep;
    auto r = ParseCopy(bytes, n, keep);
    ASSERT_FALSE(r.ok()) << "prefix of " << n << " bytes parsed";
    const std::string& m = r.error().message;
    bool named = false;
    for (const char* why : {"end of file", "cannot fit", "too small"})
      named = named || m.find(why) != std::string::npos;
    EXPECT_TRUE(named) << n << ": " << m;
    if (n >= 8) {
      EXPECT_EQ(m.rfind("t.gguf: offset 0x", 0), 0u) << n << ": " << m;
    }
  }
}

TEST(GgufCorrupt, EveryBitFlipped) {
  auto bytes = RichBuilder().build();
  for (size_t at = 0; at < bytes.size(); ++at) {
    for (int bit = 0; bit < 8; ++bit) {
      auto m = bytes;
      m[at] ^= static_cast<uint8_t>(1u << bit);
      ParseMutant(m, fmt::format("bit {} of byte {}", bit, at));
    }
  }
}

TEST(GgufCorrupt, InterestingWordsAtEveryOffset) {
  // Counts, lengths, dims, types and offsets are 4- or 8-byte fields: overwrite each position
  // with values that break naive arithmetic.
  const uint64_t words[] = {0, 1, 0xff, 0x7fffffff, 0xffffffff, 1ull << 32, 1ull << 62,
                            1ull << 63, ~0ull, ~0ull - 31};
  auto bytes = RichBuilder().build();
  for (size_t at = 0; at < bytes.size(); ++at) {
    for (uint64_t w : words) {
      for (size_t width : {4u, 8u}) {
        auto m = bytes;
        for (size_t k = 0; k < width && at + k < m.size(); ++k)
          m[at + k] = static_cast<uint8_t>(w >> (8 * k));
        ParseMutant(m, fmt::format("{}-byte {:#x} at {}", width, w, at));
      }
    }
  }
}

TEST(GgufCorrupt, RandomMutations) {
  Rng rng{0x5eed};
  std::vector<std::vector<uint8_t>> bases = {RichBuilder().build(), FromHex(kGgufPyHex)};
  for (int iter = 0; iter < 4000; ++iter) {
    auto m = bases[iter % bases.size()];
    int edits = 1 + static_cast<int>(rng.next() % 6);
    for (int e = 0; e < edits; ++e) {
      size_t at = rng.next() % m.size();
      switch (rng.next() % 4) {
        case 0: m[at] = static_cast<uint8_t>(rng.next()); break;
        case 1: m[at] = (rng.next() & 1) ? 0xff : 0x00; break;
        case 2: m.erase(m.begin() + static_cast<long>(at)); break;  // shifts everything after
        default: m.insert(m.begin() + static_cast<long>(at), static_cast<uint8_t>(rng.next())); break;
      }
      if (m.empty()) m.push_back(0);
    }
    if (rng.next() % 4 == 0) m.resize(rng.next() % m.size() + 1);
    ParseMutant(m, fmt::format("random mutant {}", iter));
  }
}

// ---------------------------------------------------------------- hand-made absurd files

// One kv named "k": its type tag is at 24 + 8 + 1 = 33 and its value at 37.
constexpr uint64_t kTypeAt = 33, kValueAt = 37;

TEST(GgufAbsurd, Header) {
  GgufBuilder b;
  b.magic = 0x4c4d4747;  // "GGML"
  ExpectError(b.build(), {Offset(0), "not a GGUF file"});
  ExpectError({'G', 'G', 'U', 'F', 3, 0}, {"too small"});
  ExpectError({'G', 'G', 'M', 'L', 3}, {"not a GGUF file"});
  ExpectError({}, {"too small"});
  for (uint32_t v : {0u, 1u, 4u, 0xffffffffu}) {
    GgufBuilder c;
    c.version = v;
    ExpectError(c.build(), {Offset(4), fmt::format("unsupported GGUF version {}", v)});
  }
}

TEST(GgufAbsurd, Counts) {
  GgufBuilder b;
  b.kv_u32("k", 1);
  b.kv_count = 1ull << 63;
  ExpectError(b.build(), {Offset(16), "metadata count 9223372036854775808 cannot fit"});
  b.kv_count = 2;  // one more than there is: 17 bytes left cannot hold two
  ExpectError(b.build(), {Offset(16), "metadata count 2 cannot fit"});
  b.kv_str("k2", std::string(30, 'x'));  // 52 bytes
  b.kv_count = 3;  // room for three by the count check, but the third is not there
  ExpectError(b.build(), {Offset(kHeader + 17 + 52), "unexpected end of file"});
  GgufBuilder c;
  c.tensor("t", {4}, GgmlType::F32);
  c.tensor_count = 1ull << 62;
  ExpectError(c.build(), {Offset(8), "tensor count 4611686018427387904 cannot fit"});
}

TEST(GgufAbsurd, Strings) {
  GgufBuilder b;
  auto body = Le64(~0ull);
  body.insert(body.end(), {'a', 'b', 'c'});
  b.kv("k", GgufValue::raw(uint32_t(ValueType::STRING), body));
  ExpectError(b.build(), {Offset(kValueAt), "string length 18446744073709551615 runs past end",
                          "(in metadata 'k')"});

  // The key's own length.
  std::vector<uint8_t> raw = GgufBuilder().build();
  raw[16] = 1;  // one kv
  auto len = Le64(1ull << 40);
  raw.insert(raw.end(), len.begin(), len.end());
  raw.resize(raw.size() + 16, 'x');
  ExpectError(raw, {Offset(kHeader), "metadata key length 1099511627776 runs past end"});

  GgufBuilder c;
  c.kv_u8(std::string(70000, 'k'), 1);
  ExpectError(c.build(), {Offset(kHeader), "metadata key of 70000 bytes is too long"});
  GgufBuilder d;
  d.tensor(std::string(70000, 't'), {4}, GgmlType::F32);
  ExpectError(d.build(), {Offset(kHeader), "tensor name of 70000 bytes is too long"});
  GgufBuilder e;
  e.tensor_info("t", {4}, 0, 0);
  auto bytes = e.build();
  bytes[kHeader] = 0xff;  // the name's length, was 1
  ExpectError(bytes, {Offset(kHeader), "tensor name length 255 runs past end"});
}

TEST(GgufAbsurd, Arrays) {
  GgufBuilder b;
  b.kv("k", GgufValue::array_raw(uint32_t(ValueType::U64), 1ull << 60, Le64(5)));
  ExpectError(b.build(), {Offset(kValueAt + 4), "array of 1152921504606846976 u64 values cannot fit",
                          "(in metadata 'k')"});
  // Three strings fit by the count check, but the third claims 5 bytes that are not there.
  GgufBuilder c;
  std::vector<uint8_t> strings = Le64(0);
  for (uint64_t len : {0, 5}) {
    auto l = Le64(len);
    strings.insert(strings.end(), l.begin(), l.end());
  }
  c.kv("k", GgufValue::array_raw(uint32_t(ValueType::STRING), 3, strings));
  ExpectError(c.build(), {Offset(kValueAt + 12 + 16), "string length 5 runs past end",
                          "(in metadata 'k')"});
  // An array of 10^5 empty arrays fits and parses: each inner array is 12 bytes.
  std::vector<uint8_t> body;
  for (int k = 0; k < 100000; ++k) {
    test::put_u32(body, uint32_t(ValueType::U8));
    test::put_u64(body, 0);
  }
  GgufBuilder d;
  d.kv("k", GgufValue::array_raw(uint32_t(ValueType::ARRAY), 100000, body));
  auto f = ParseOk(d.build());
  ASSERT_TRUE(f);
  EXPECT_EQ(f->find("k")->items.size(), 100000u);
}

TEST(GgufAbsurd, TooManyMetadataValuesIsRefused) {
  // 5M one-byte elements fit in a 5 MB file but would cost ~500 MB as Values.
  const uint64_t n = 5u << 20;
  GgufBuilder b;
  b.kv("big", GgufValue::array_raw(uint32_t(ValueType::U8), n, std::vector<uint8_t>(n, 1)));
  auto bytes = b.build();
  auto f = gguf::File::parse(bytes.data(), bytes.size(), "big.gguf");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.error().message.find("metadata holds more than"), std::string::npos) << f.error().message;
  // The budget counts across arrays too: two arrays of 3M each.
  GgufBuilder c;
  const uint64_t m = 3u << 20;
  c.kv("a", GgufValue::array_raw(uint32_t(ValueType::U8), m, std::vector<uint8_t>(m, 1)));
  c.kv("b", GgufValue::array_raw(uint32_t(ValueType::U8), m, std::vector<uint8_t>(m, 1)));
  bytes = c.build();
  EXPECT_FALSE(gguf::File::parse(bytes.data(), bytes.size(), "two.gguf").ok());
}

TEST(GgufAbsurd, ArraysNested100Deep) {
  GgufValue v = GgufValue::array(ValueType::U8, {GgufValue::u8(1)});
  for (int k = 0; k < 99; ++k) v = GgufValue::array(ValueType::ARRAY, {v});
  GgufBuilder b;
  b.kv("k", v);
  // Levels 0..3 are allowed; the fifth array header starts 4 * 12 bytes into the value.
  ExpectError(b.build(), {Offset(kValueAt + 48), "arrays nested deeper than 4", "(in metadata 'k')"});
}

TEST(GgufAbsurd, UnknownValueTypes) {
  for (uint32_t t : {13u, 100u, 0xffffffffu}) {
    GgufBuilder b;
    b.kv("k", GgufValue::raw(t, Le64(0)));
    ExpectError(b.build(), {Offset(kTypeAt), fmt::format("metadata 'k' has unknown value type {}", t)});
    GgufBuilder c;
    c.kv("k", GgufValue::array_raw(t, 1, Le64(0)));
    ExpectError(c.build(), {Offset(kValueAt), fmt::format("unknown array element type {}", t),
                            "(in metadata 'k')"});
  }
}

TEST(GgufAbsurd, BoolNeitherZeroNorOne) {
  GgufBuilder b;
  b.kv("k", GgufValue::boolean(2));
  ExpectError(b.build(), {Offset(kValueAt), "bool value 2 is neither 0 nor 1"});
  GgufBuilder c;
  c.kv("k", GgufValue::array(ValueType::BOOL, {GgufValue::boolean(1), GgufValue::boolean(0xff)}));
  ExpectError(c.build(), {Offset(kValueAt + 12 + 1), "bool value 255", "(in metadata 'k')"});
}

TEST(GgufAbsurd, DuplicateKeysAndTensorNames) {
  GgufBuilder b;
  b.kv_u32("a", 1).kv_u32("b", 1).kv_str("a", "x");
  GgufBuilder::Layout l;
  auto bytes = b.build(&l);
  ExpectError(bytes, {Offset(l.kv_offsets[2]), "duplicate metadata key 'a'"});
  GgufBuilder c;
  c.tensor("w", {4}, GgmlType::F32).tensor("v", {4}, GgmlType::F32).tensor("w", {8}, GgmlType::F32);
  bytes = c.build(&l);
  ExpectError(bytes, {Offset(l.tensor_info_offsets[2]), "duplicate tensor name 'w'"});
}

// A single tensor info named "t": dims start at 24 + 9 + 4 = 37.
TEST(GgufAbsurd, TensorDims) {
  for (size_t n : {0u, 5u, 8u}) {
    GgufBuilder b;
    b.tensor_info("t", std::vector<uint64_t>(n, 32), 0, 0);
    ExpectError(b.build(), {Offset(kHeader), fmt::format("tensor 't' has {} dimensions", n)});
  }
  GgufBuilder b;
  b.tensor_info("t", {32, 0}, 0, 0);
  ExpectError(b.build(), {Offset(kHeader), "tensor 't' dimension 1 is 0"});
  GgufBuilder c;
  c.tensor_info("t", {1ull << 41}, 0, 0);
  ExpectError(c.build(), {Offset(kHeader), "tensor 't' dimension 0 is 2199023255552"});
  GgufBuilder d;  // each dim is allowed, their product is 2^80
  d.tensor_info("t", {1ull << 40, 1ull << 40}, 0, 0);
  ExpectError(d.build(), {Offset(kHeader), "tensor 't' element count overflows"});
  GgufBuilder e;  // 2^63 elements fit in u64, 2^65 bytes of F32 do not
  e.tensor_info("t", {1ull << 32, 1ull << 31}, uint32_t(GgmlType::F32), 0);
  ExpectError(e.build(), {Offset(kHeader), "tensor 't' byte size overflows"});
  GgufBuilder f;  // 2^62 bytes: fine arithmetic, but not in this file
  f.tensor_info("t", {1ull << 40, 1ull << 20}, uint32_t(GgmlType::F32), 0);
  ExpectError(f.build(), {"tensor 't' data at", "+ 4611686018427387904 bytes runs past end of file"});
}

TEST(GgufAbsurd, TensorTypes) {
  for (uint32_t t : {4u, 5u, 31u, 99u, 0xffffffffu}) {  // 4, 5: the removed Q4_2, Q4_3
    GgufBuilder b;
    b.tensor_info("t", {32}, t, 0);
    ExpectError(b.build(), {Offset(kHeader + 9 + 4 + 8), fmt::format("tensor 't' has unknown type {}", t)});
  }
  GgufBuilder b;
  b.tensor_info("t", {33, 2}, uint32_t(GgmlType::Q4_0), 0);
  ExpectError(b.build(), {Offset(kHeader), "row length 33 is not a multiple of the Q4_0 block size 32"});
  GgufBuilder c;
  c.tensor_info("t", {128}, uint32_t(GgmlType::Q4_K), 0);
  ExpectError(c.build(), {"row length 128 is not a multiple of the Q4_K block size 256"});
}

TEST(GgufAbsurd, TensorOffsets) {
  constexpr uint64_t kOffsetAt = kHeader + 9 + 4 + 8 + 4;  // one dim
  GgufBuilder b;
  b.tensor_info("t", {8}, uint32_t(GgmlType::F32), 4);
  ExpectError(b.build(), {Offset(kOffsetAt), "tensor 't' offset 4 is not aligned to 32"});

  // Header ends at 57, so data starts at 64 and the file is 64 bytes with no data at all.
  GgufBuilder c;
  c.tensor_info("t", {8}, uint32_t(GgmlType::F32), 1024);
  auto bytes = c.build();
  ASSERT_EQ(bytes.size(), 64u);
  ExpectError(bytes, {Offset(64), "tensor 't' data at 0x40 + 0x400 + 32 bytes runs past end of file (64 bytes)"});

  // Offset near 2^64: offset + size wraps around; it must still be past the end.
  GgufBuilder d;
  d.tensor("a", {8}, GgmlType::F32);
  d.tensor_info("t", {8}, uint32_t(GgmlType::F32), ~0ull - 31);
  ExpectError(d.build(), {"tensor 't' data at 0x60 + 0xffffffffffffffe0 + 32 bytes runs past end"});

  // Data in the file but 4 bytes short.
  GgufBuilder e;
  e.tensor("a", {8}, GgmlType::F32);
  e.tensor_info("t", {8}, uint32_t(GgmlType::F32), 4 * 32);
  GgufBuilder::Layout l;
  bytes = e.build(&l);
  bytes.resize(l.data_offset + 4 * 32 + 28);
  ExpectError(bytes, {fmt::format("tensor 't' data at {:#x} + 0x80 + 32 bytes runs past end of file ({} bytes)",
                                  l.data_offset, bytes.size())});
}

TEST(GgufAbsurd, Alignment) {
  // general.alignment sits at 24; it is a u32 that must be a power of two up to 1 MiB.
  for (uint32_t a : {0u, 3u, 24u, 1u << 21, 0x80000000u, 0xffffffffu}) {
    GgufBuilder b;
    b.kv_u32("general.alignment", a);
    b.tensor("t", {8}, GgmlType::F32);
    ExpectError(b.build(), {Offset(kHeader), "general.alignment must be a power of two"});
  }
  GgufBuilder b;
  b.kv_str("general.architecture", "llama").kv_str("general.alignment", "32");
  GgufBuilder::Layout l;
  auto bytes = b.build(&l);
  ExpectError(bytes, {Offset(l.kv_offsets[1]), "general.alignment must be a power of two"});
}

// ---------------------------------------------------------------- the real model

// Expected values from gguf-py 0.19.0 (GGUFReader on SmolLM2-135M-Instruct.Q4_1.gguf, run once
// by hand): 272 tensors, 33 metadata keys (36 fields less the three GGUF.* header fields),
// version 3, data_offset 1785664, alignment 32, llama.block_count 30, 49152 tokens from
// '<|endoftext|>' to 'ectable';
//   token_embd.weight   Q8_0 shape [576, 49152] data_offset 1785664  n_bytes 30081024
//   blk.0.attn_q.weight Q4_1 shape [576, 576]   data_offset 33806656 n_bytes 207360
//   output_norm.weight  F32  shape [576]        data_offset 98360128 n_bytes 2304
// (gguf-py's data_offset is from the file start.)
std::string RealModelPath() { return test::smollm_path(); }

TEST(GgufRealModel, MatchesGgufPy) {
  std::string path = RealModelPath();
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "no model at " << path;
  auto r = File::open(path);
  ASSERT_TRUE(r.ok()) << r.error().message;
  const File& f = **r;
  if (f.file_size() != 98362432u) GTEST_SKIP() << path << " is not the SmolLM2 Q4_1 file";
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.tensors().size(), 272u);
  EXPECT_EQ(f.metadata().size(), 33u);
  EXPECT_EQ(f.alignment(), 32u);
  EXPECT_EQ(f.data_offset(), 1785664u);
  EXPECT_EQ(f.get_string("general.architecture").value(), "llama");
  EXPECT_EQ(f.get_uint("llama.block_count").value(), 30u);
  auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  ASSERT_TRUE(tokens.ok());
  ASSERT_EQ(tokens->size(), 49152u);
  EXPECT_EQ(tokens->front(), "<|endoftext|>");
  EXPECT_EQ(tokens->back(), "ectable");
  struct Want { const char* name; GgmlType type; std::vector<uint64_t> dims; uint64_t abs, bytes; };
  for (const Want& w : {Want{"token_embd.weight", GgmlType::Q8_0, {576, 49152}, 1785664, 30081024},
                        Want{"blk.0.attn_q.weight", GgmlType::Q4_1, {576, 576}, 33806656, 207360},
                        Want{"output_norm.weight", GgmlType::F32, {576}, 98360128, 2304}}) {
    const gguf::TensorInfo* t = f.find_tensor(w.name);
    ASSERT_NE(t, nullptr) << w.name;
    EXPECT_EQ(t->type, w.type) << w.name;
    EXPECT_EQ(t->dims, w.dims) << w.name;
    EXPECT_EQ(f.data_offset() + t->offset, w.abs) << w.name;
    EXPECT_EQ(t->n_bytes, w.bytes) << w.name;
  }
  const uint8_t* base = f.tensors()[0].data - f.tensors()[0].offset - f.data_offset();
  EXPECT_EQ(test::check_parsed_gguf(f, base, f.file_size()), "");

  // Cut the real file inside its metadata, tensor table and data: always an error.
  std::vector<size_t> cuts = {0, 7, 8, 23, 24, 25, 1000, 1785663, 1785664, 98362431};
  for (size_t c = 4096; c < f.data_offset(); c += 65521) cuts.push_back(c);
  for (size_t c : cuts) {
    auto cut = File::parse(base, c, "cut.gguf");
    EXPECT_FALSE(cut.ok()) << "cut at " << c;
  }
}

}  // namespace
}  // namespace peregrine
