// Importance matrix files (quant/imatrix_file.h): both formats round-trip through save and
// load, are told apart by content, are written atomically; hostile files (truncated, huge
// counts, bad names, bad values) give a one-line error naming the file, never a crash.
// Agreement with llama-imatrix itself: tests/reference/test_imatrix_llama.py.
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>

#include "gguf_builder.h"
#include "quant/imatrix_file.h"

namespace peregrine {
namespace {

namespace fs = std::filesystem;

class ImatrixFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / fmt::format("peregrine-imatrix-{}-{}", ::getpid(),
                                                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return (dir_ / name).string(); }

  static std::vector<uint8_t> read(const std::string& p) {
    std::ifstream in(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(in), {}};
  }
  static void write(const std::string& p, const std::vector<uint8_t>& bytes) {
    std::ofstream out(p, std::ios::binary);
    out.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  }
  // Parses bytes, expecting an error whose message names the file and contains `what`.
  static void expect_error(const std::vector<uint8_t>& bytes, const std::string& what) {
    Result<Imatrix> r = parse_imatrix(bytes.data(), bytes.size(), "bad.imatrix");
    ASSERT_FALSE(r.ok()) << "accepted; expected an error about: " << what;
    EXPECT_EQ(r.error().message.rfind("bad.imatrix: ", 0), 0u) << r.error().message;
    EXPECT_NE(r.error().message.find(what), std::string::npos) << r.error().message;
    EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << r.error().message;
  }

  fs::path dir_;
};

// Two dense matrices and one of 3 experts, one of which no token reached.
Imatrix sample() {
  Imatrix m;
  m.datasets = {"first.txt", "calib.txt"};
  m.chunk_count = 5;
  m.chunk_size = 128;
  auto add = [&](std::string name, int64_t cols, int64_t mats, std::vector<float> counts) {
    ImatrixEntry e;
    e.name = std::move(name);
    e.n_cols = cols;
    e.n_mat = mats;
    for (int64_t i = 0; i < cols * mats; ++i) e.sums.push_back(0.25f * float(i + 1) + 0.001f * float(i * i));
    e.counts = std::move(counts);
    m.entries.push_back(std::move(e));
  };
  add("blk.1.ffn_down.weight", 8, 1, {640});
  add("blk.0.attn_q.weight", 6, 1, {640});
  add("blk.0.ffn_up_exps.weight", 4, 3, {300, 0, 340});
  return m;
}

void put_i32(std::vector<uint8_t>& out, int32_t v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + 4);
}
void put_f32(std::vector<uint8_t>& out, float v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  out.insert(out.end(), p, p + 4);
}
// A .dat entry: name, ncall, values.
void put_entry(std::vector<uint8_t>& out, std::string_view name, int32_t ncall, const std::vector<float>& v) {
  put_i32(out, int32_t(name.size()));
  out.insert(out.end(), name.begin(), name.end());
  put_i32(out, ncall);
  put_i32(out, int32_t(v.size()));
  for (float x : v) put_f32(out, x);
}
std::vector<uint8_t> small_dat() {
  std::vector<uint8_t> out;
  put_i32(out, 2);
  put_entry(out, "blk.0.attn_k.weight", 3, {3.0f, 6.0f});
  put_entry(out, "blk.0.attn_q.weight", 3, {1.5f, 0.0f, 9.0f});
  put_i32(out, 3);
  put_i32(out, 8);
  out.insert(out.end(), {'c', 'a', 'l', 'i', 'b', '.', 't', 'x'});
  return out;
}

TEST_F(ImatrixFileTest, GgufRoundTripKeepsEverything) {
  const Imatrix m = sample();
  ASSERT_TRUE(save_imatrix(m, path("a.gguf"), ImatrixFormat::Gguf).ok());
  Result<Imatrix> r = load_imatrix(path("a.gguf"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->datasets, m.datasets);
  EXPECT_EQ(r->chunk_count, 5u);
  EXPECT_EQ(r->chunk_size, 128u);
  ASSERT_EQ(r->entries.size(), 3u);
  EXPECT_EQ(r->entries[0].name, "blk.0.attn_q.weight");  // name order
  EXPECT_EQ(r->entries[1].name, "blk.0.ffn_up_exps.weight");
  for (const ImatrixEntry& want : m.entries) {
    const ImatrixEntry* got = r->find(want.name);
    ASSERT_NE(got, nullptr) << want.name;
    EXPECT_EQ(got->n_cols, want.n_cols);
    EXPECT_EQ(got->n_mat, want.n_mat);
    EXPECT_EQ(got->sums, want.sums);  // F32 both ways: exact
    EXPECT_EQ(got->counts, want.counts);
  }
  EXPECT_EQ(r->find("blk.9.attn_q.weight"), nullptr);
  // ggml's layout: a dense matrix's tensors are [n_cols] and [1], experts' [n_cols, n_mat], [1, n_mat].
  auto f = gguf::File::open(path("a.gguf"));
  ASSERT_TRUE(f.ok());
  EXPECT_EQ((*f)->get_string("general.type").value(), "imatrix");
  EXPECT_EQ((*f)->find_tensor("blk.0.attn_q.weight.in_sum2")->dims, (std::vector<uint64_t>{6}));
  EXPECT_EQ((*f)->find_tensor("blk.0.attn_q.weight.counts")->dims, (std::vector<uint64_t>{1}));
  EXPECT_EQ((*f)->find_tensor("blk.0.ffn_up_exps.weight.in_sum2")->dims, (std::vector<uint64_t>{4, 3}));
  EXPECT_EQ((*f)->find_tensor("blk.0.ffn_up_exps.weight.counts")->dims, (std::vector<uint64_t>{1, 3}));
}

TEST_F(ImatrixFileTest, DatRoundTripKeepsTheImportance) {
  const Imatrix m = sample();
  ASSERT_TRUE(save_imatrix(m, path("a.dat"), ImatrixFormat::Dat).ok());
  Result<Imatrix> r = load_imatrix(path("a.dat"));
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->datasets, std::vector<std::string>{"calib.txt"});  // a .dat keeps the last one
  EXPECT_EQ(r->chunk_count, 5u);
  EXPECT_EQ(r->chunk_size, 0u);  // unknown in a .dat
  ASSERT_EQ(r->entries.size(), 3u);
  for (const ImatrixEntry& want : m.entries) {
    const ImatrixEntry* got = r->find(want.name);
    ASSERT_NE(got, nullptr) << want.name;
    EXPECT_EQ(got->n_cols * got->n_mat, want.n_cols * want.n_mat);  // a .dat has no expert dimension
    // ncall = ceil(max count / chunk size): 640 / 128 = 5, 340 / 128 -> 3
    EXPECT_EQ(got->counts, std::vector<float>{want.name.find("exps") != std::string::npos ? 3.0f : 5.0f});
    const std::vector<float> a = want.importance(), b = got->importance();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], 1e-6f * a[i]) << want.name << " [" << i << "]";
  }
  // The expert no token reached: importance 1 in both (llama stores 1s for it).
  const std::vector<float> imp = r->find("blk.0.ffn_up_exps.weight")->importance();
  for (size_t i = 4; i < 8; ++i) EXPECT_FLOAT_EQ(imp[i], 1.0f);
  // Saved again as .dat (chunk size unknown: ncall is the count), the bytes are the same.
  ASSERT_TRUE(save_imatrix(*r, path("b.dat"), ImatrixFormat::Dat).ok());
  EXPECT_EQ(read(path("a.dat")), read(path("b.dat")));
}

TEST_F(ImatrixFileTest, DatLayoutIsLlamas) {
  Imatrix m;
  m.chunk_size = 10;
  m.chunk_count = 2;
  m.datasets = {"d.txt"};
  m.entries.push_back({"w", 2, 1, {4.0f, 8.0f}, {20.0f}});
  ASSERT_TRUE(save_imatrix(m, path("w.dat"), ImatrixFormat::Dat).ok());
  std::vector<uint8_t> want;
  put_i32(want, 1);
  put_entry(want, "w", 2, {4.0f / 20 * 2, 8.0f / 20 * 2});  // (sum / count) * ncall
  put_i32(want, 2);
  put_i32(want, 5);
  want.insert(want.end(), {'d', '.', 't', 'x', 't'});
  EXPECT_EQ(read(path("w.dat")), want);
}

TEST_F(ImatrixFileTest, FormatIsToldByContentNotName) {
  const Imatrix m = sample();
  ASSERT_TRUE(save_imatrix(m, path("really-gguf.dat"), ImatrixFormat::Gguf).ok());
  ASSERT_TRUE(save_imatrix(m, path("really-dat.gguf"), ImatrixFormat::Dat).ok());
  Result<Imatrix> g = load_imatrix(path("really-gguf.dat"));
  Result<Imatrix> d = load_imatrix(path("really-dat.gguf"));
  ASSERT_TRUE(g.ok()) << g.error().message;
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(g->chunk_size, 128u);
  EXPECT_EQ(d->chunk_size, 0u);
  for (const ImatrixEntry& e : g->entries) {
    const std::vector<float> a = e.importance(), b = d->find(e.name)->importance();
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i], 1e-6f * a[i]);
  }
}

TEST_F(ImatrixFileTest, ImportanceIsSumOverCountOrOne) {
  ImatrixEntry e{"w", 2, 2, {2.0f, 4.0f, 5.0f, 7.0f}, {4.0f, 0.0f}};
  EXPECT_EQ(e.importance(), (std::vector<float>{0.5f, 1.0f, 1.0f, 1.0f}));
}

TEST_F(ImatrixFileTest, DatWithNonPositiveNcallKeepsTheValues) {
  // llama-quantize divides by ncall only when it is positive.
  std::vector<uint8_t> b;
  put_i32(b, 1);
  put_entry(b, "w", 0, {3.0f, 5.0f});
  Result<Imatrix> r = parse_imatrix(b.data(), b.size(), "x");  // no trailer: early files
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_EQ(r->entries[0].importance(), (std::vector<float>{3.0f, 5.0f}));
  EXPECT_TRUE(r->datasets.empty());
}

TEST_F(ImatrixFileTest, WritesAreAtomic) {
  const Imatrix m = sample();
  const std::string p = path("out.gguf");
  write(p, {1, 2, 3});
  Imatrix bad = m;
  bad.entries[1].sums.pop_back();  // inconsistent: refused before anything is written
  for (ImatrixFormat f : {ImatrixFormat::Gguf, ImatrixFormat::Dat}) {
    Status s = save_imatrix(bad, p, f);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.error().message.find("blk.0.attn_q.weight"), std::string::npos) << s.error().message;
    EXPECT_EQ(read(p), (std::vector<uint8_t>{1, 2, 3}));
  }
  // An unwritable destination: an error naming it, no file.
  for (ImatrixFormat f : {ImatrixFormat::Gguf, ImatrixFormat::Dat}) {
    Status s = save_imatrix(m, path("no/such/dir/x"), f);
    ASSERT_FALSE(s.ok());
    EXPECT_NE(s.error().message.find("no/such/dir/x"), std::string::npos) << s.error().message;
  }
  // Success replaces the file and leaves no temporary behind.
  ASSERT_TRUE(save_imatrix(m, p, ImatrixFormat::Dat).ok());
  ASSERT_TRUE(save_imatrix(m, path("out2.gguf"), ImatrixFormat::Gguf).ok());
  EXPECT_TRUE(load_imatrix(p).ok());
  int n = 0;
  for (const auto& e : fs::directory_iterator(dir_)) n += e.is_regular_file() ? 1 : 0;
  EXPECT_EQ(n, 2);
}

TEST_F(ImatrixFileTest, SaveRefusesWhatCannotBeWritten) {
  Imatrix m = sample();
  m.entries.push_back(m.entries[0]);
  Status s = save_imatrix(m, path("x.gguf"), ImatrixFormat::Gguf);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.error().message.find("two entries named"), std::string::npos) << s.error().message;
  EXPECT_FALSE(save_imatrix(Imatrix{}, path("x.gguf"), ImatrixFormat::Gguf).ok());
  Imatrix none;
  none.entries.push_back({"w", 2, 1, {0.0f, 0.0f}, {0.0f}});  // no token: nothing for a .dat
  EXPECT_FALSE(save_imatrix(none, path("x.dat"), ImatrixFormat::Dat).ok());
  EXPECT_FALSE(fs::exists(path("x.gguf")));
  EXPECT_FALSE(fs::exists(path("x.dat")));
}

TEST_F(ImatrixFileTest, MissingAndEmptyFilesAreErrors) {
  Result<Imatrix> r = load_imatrix(path("absent.gguf"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("absent.gguf"), std::string::npos);
  write(path("empty"), {});
  r = load_imatrix(path("empty"));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("empty file"), std::string::npos) << r.error().message;
}

TEST_F(ImatrixFileTest, EveryTruncationOfADatIsHandled) {
  const std::vector<uint8_t> full = small_dat();
  ASSERT_TRUE(parse_imatrix(full.data(), full.size(), "x").ok());
  // The trailer is optional (early files end after the entries; llama reads a chunk count
  // alone too): those two lengths load, every other prefix is an error.
  const size_t entries_end = full.size() - 4 - 4 - 8;
  for (size_t n = 0; n < full.size(); ++n) {
    std::vector<uint8_t> cut(full.begin(), full.begin() + std::ptrdiff_t(n));
    Result<Imatrix> r = parse_imatrix(cut.data(), cut.size(), "bad.imatrix");
    if (n == entries_end || n == entries_end + 4) {
      EXPECT_TRUE(r.ok()) << n << ": " << r.error().message;
    } else {
      ASSERT_FALSE(r.ok()) << "a prefix of " << n << " bytes was accepted";
      EXPECT_EQ(r.error().message.rfind("bad.imatrix: ", 0), 0u) << r.error().message;
    }
  }
}

TEST_F(ImatrixFileTest, HostileDatFiles) {
  auto one = [](std::string_view name, int32_t ncall, std::vector<float> v) {
    std::vector<uint8_t> b;
    put_i32(b, 1);
    put_entry(b, name, ncall, v);
    return b;
  };
  std::vector<uint8_t> b;
  put_i32(b, std::numeric_limits<int32_t>::max());
  put_entry(b, "w", 1, {1.0f});
  expect_error(b, "entries");
  b.clear();
  put_i32(b, -1);
  expect_error(b, "entries");
  b.clear();
  put_i32(b, 0);
  put_entry(b, "w", 1, {1.0f});
  expect_error(b, "entries");

  expect_error(one("", 1, {1.0f, 2.0f, 3.0f, 4.0f, 5.0f}), "name of 0 bytes");
  expect_error(one(std::string("a\0b", 3), 1, {1.0f}), "control byte 0x00");
  expect_error(one("a\nb", 1, {1.0f}), "control byte 0x0a");
  expect_error(one("w", 1, {std::nanf("")}), "must be finite");
  expect_error(one("w", 1, {INFINITY}), "must be finite");
  expect_error(one("w", 1, {-1.0f}), "not negative");

  // A name length or value count past the file, or huge.
  for (int32_t len : {-5, 5000, std::numeric_limits<int32_t>::max()}) {
    b.clear();
    put_i32(b, 1);
    put_i32(b, len);
    b.resize(b.size() + 40, 'a');
    expect_error(b, "name of");
  }
  b.clear();
  put_i32(b, 1);
  put_i32(b, 5000);
  b.resize(b.size() + 60, 'a');
  expect_error(b, "name of 5000 bytes");
  for (int32_t nval : {0, -1, 1000, std::numeric_limits<int32_t>::max()}) {
    b.clear();
    put_i32(b, 1);
    put_i32(b, 1);
    b.push_back('w');
    put_i32(b, 1);
    put_i32(b, nval);
    put_f32(b, 1.0f);
    put_f32(b, 1.0f);
    put_f32(b, 1.0f);
    expect_error(b, "values");
  }

  // Two entries of the same name.
  b.clear();
  put_i32(b, 2);
  put_entry(b, "w", 1, {1.0f});
  put_entry(b, "w", 1, {2.0f});
  expect_error(b, "two entries named 'w'");

  // Trailer: negative chunk count, dataset length past the end, bytes after the end.
  b = one("w", 1, {1.0f});
  put_i32(b, -3);
  expect_error(b, "chunk count is -3");
  b = one("w", 1, {1.0f});
  put_i32(b, 1);
  put_i32(b, 100);
  b.push_back('x');
  expect_error(b, "dataset name of 100 bytes");
  b = one("w", 1, {1.0f});
  put_i32(b, 1);
  put_i32(b, 1);
  b.push_back('x');
  b.push_back('y');
  expect_error(b, "1 unexpected bytes");
}

std::vector<uint8_t> f32_bytes(const std::vector<float>& v) {
  std::vector<uint8_t> out(v.size() * 4);
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

TEST_F(ImatrixFileTest, HostileGgufFiles) {
  using test::GgufBuilder;
  auto base = [] {
    GgufBuilder b;
    b.kv_str("general.type", "imatrix").kv_str_array("imatrix.datasets", {"d"});
    b.kv_u32("imatrix.chunk_count", 1).kv_u32("imatrix.chunk_size", 4);
    return b;
  };
  {  // a valid one, for contrast
    GgufBuilder b = base();
    b.tensor("w.in_sum2", {2}, GgmlType::F32, f32_bytes({1.0f, 2.0f})).tensor("w.counts", {1}, GgmlType::F32,
                                                                              f32_bytes({4.0f}));
    std::vector<uint8_t> bytes = b.build();
    Result<Imatrix> r = parse_imatrix(bytes.data(), bytes.size(), "ok");
    ASSERT_TRUE(r.ok()) << r.error().message;
    EXPECT_EQ(r->entries[0].importance(), (std::vector<float>{0.25f, 0.5f}));
    // Every truncation is an error (the reader checks the GGUF itself).
    for (size_t n = 4; n < bytes.size(); n += 7) {
      Result<Imatrix> c = parse_imatrix(bytes.data(), n, "bad.imatrix");
      ASSERT_FALSE(c.ok()) << n;
      EXPECT_EQ(c.error().message.rfind("bad.imatrix: ", 0), 0u) << c.error().message;
    }
  }
  {
    GgufBuilder b = base();
    b.tensor("w.in_sum2", {2}, GgmlType::F32);
    expect_error(b.build(), "'w.in_sum2' has no 'w.counts'");
  }
  {
    GgufBuilder b = base();
    b.tensor("w.counts", {1}, GgmlType::F32);
    expect_error(b.build(), "'w.counts' has no 'w.in_sum2'");
  }
  {
    GgufBuilder b = base();
    b.tensor("w.in_sum2", {2}, GgmlType::F16).tensor("w.counts", {1}, GgmlType::F32);
    expect_error(b.build(), "must be F32");
  }
  {
    GgufBuilder b = base();
    b.tensor("w.in_sum2", {5}, GgmlType::F32).tensor("w.counts", {2}, GgmlType::F32);
    expect_error(b.build(), "5 sums for 2 counts");
  }
  {
    GgufBuilder b = base();
    b.tensor(".in_sum2", {2}, GgmlType::F32).tensor(".counts", {1}, GgmlType::F32);
    expect_error(b.build(), "empty name");
  }
  {
    GgufBuilder b = base();
    b.tensor("w.in_sum2", {2}, GgmlType::F32).tensor("w.counts", {1}, GgmlType::F32, f32_bytes({NAN}));
    expect_error(b.build(), "w.counts [0] is nan");
  }
  {
    GgufBuilder b = base();
    b.tensor("w.in_sum2", {2}, GgmlType::F32, f32_bytes({1.0f, -2.0f})).tensor("w.counts", {1}, GgmlType::F32);
    expect_error(b.build(), "w.in_sum2 [1] is -2");
  }
  {
    GgufBuilder b;
    b.kv_str("general.type", "model").tensor("w.in_sum2", {2}, GgmlType::F32).tensor("w.counts", {1},
                                                                                      GgmlType::F32);
    expect_error(b.build(), "general.type is 'model'");
  }
  {
    GgufBuilder b = base();
    b.tensor("token_embd.weight", {2, 2}, GgmlType::F32);
    expect_error(b.build(), "no importance matrix entries");
  }
  {
    GgufBuilder b;
    b.kv_u32("imatrix.datasets", 3).tensor("w.in_sum2", {2}, GgmlType::F32).tensor("w.counts", {1}, GgmlType::F32);
    expect_error(b.build(), "imatrix.datasets");
  }
  {
    GgufBuilder b;
    b.kv_u64("imatrix.chunk_size", uint64_t(1) << 40).tensor("w.in_sum2", {2}, GgmlType::F32);
    b.tensor("w.counts", {1}, GgmlType::F32);
    expect_error(b.build(), "imatrix.chunk_size");
  }
  {  // the GGUF magic and nothing more
    expect_error({'G', 'G', 'U', 'F'}, "bad.imatrix");
  }
}

}  // namespace
}  // namespace peregrine
