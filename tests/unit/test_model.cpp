// Whole-model invariants on the real SmolLM2 file (skipped when absent): the
// same tokens give the same logits whether processed as one batch, in chunks,
// one at a time, or next to another sequence.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "engine/session.h"
#include "model/model.h"

namespace peregrine {
namespace {

std::string model_path() {
  if (const char* p = std::getenv("PEREGRINE_MODEL_PATH")) return p;
  const char* home = std::getenv("HOME");
  return std::string(home ? home : "") + "/.cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

class ModelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(model_path())) GTEST_SKIP() << "model not found";
    auto f = gguf::File::open(model_path());
    ASSERT_TRUE(f.ok()) << f.error().message;
    file_ = std::shared_ptr<const gguf::File>(std::move(f).value());
    auto m = load_model(file_, pool_);
    ASSERT_TRUE(m.ok()) << m.error().message;
    model_ = std::move(m).value();
  }
  ThreadPool pool_{2};
  std::shared_ptr<const gguf::File> file_;
  std::unique_ptr<Model> model_;
};

const std::vector<int32_t> kTokens = {1, 504, 3458, 282, 4649, 314, 8240, 30, 657, 4427, 28, 2};

TEST_F(ModelTest, ChunkedAndSingleTokenMatchOneBatch) {
  const int64_t V = model_->hparams().n_vocab, T = int64_t(kTokens.size());
  KvCache c1(model_->kv_shape(64, 1)), c2(model_->kv_shape(64, 1));
  Batch all;
  for (int64_t i = 0; i < T; ++i) all.add(kTokens[i], int32_t(i), 0, true);
  std::vector<float> ref, got, step;
  ASSERT_TRUE(model_->forward(all, c1, ref).ok());
  // Chunks of 5, then single tokens.
  for (int64_t i = 0; i < T;) {
    int64_t n = i < 10 ? std::min<int64_t>(5, T - i) : 1;
    Batch b;
    for (int64_t j = i; j < i + n; ++j) b.add(kTokens[j], int32_t(j), 0, true);
    ASSERT_TRUE(model_->forward(b, c2, step).ok());
    got.insert(got.end(), step.begin(), step.end());
    i += n;
  }
  ASSERT_EQ(ref.size(), got.size());
  // Activations are quantized per token row, so a token's logits do not depend on
  // its batch neighbours: equality is exact.
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(ref[i], got[i]) << "index " << i << " of " << V * T;
}

TEST_F(ModelTest, TwoSequencesInOneBatchMatchAlone) {
  KvCache alone(model_->kv_shape(32, 1)), both(model_->kv_shape(32, 2));
  const std::vector<int32_t> other = {1, 9519, 28, 1300, 253, 2};
  Batch a, b;
  for (size_t i = 0; i < kTokens.size(); ++i) a.add(kTokens[i], int32_t(i), 0, true);
  // Interleave: sequence 1 gets `other`, sequence 0 gets kTokens.
  for (size_t i = 0; i < kTokens.size(); ++i) {
    b.add(kTokens[i], int32_t(i), 0, true);
    if (i < other.size()) b.add(other[i], int32_t(i), 1, false);
  }
  std::vector<float> la, lb;
  ASSERT_TRUE(model_->forward(a, alone, la).ok());
  ASSERT_TRUE(model_->forward(b, both, lb).ok());
  ASSERT_EQ(la, lb);
}

TEST_F(ModelTest, RejectsBadBatches) {
  KvCache c(model_->kv_shape(8, 1));
  std::vector<float> l;
  Batch b;
  b.add(-1, 0, 0, true);
  EXPECT_FALSE(model_->forward(b, c, l).ok());
  b.clear();
  b.add(int32_t(model_->hparams().n_vocab), 0, 0, true);
  EXPECT_FALSE(model_->forward(b, c, l).ok());
  b.clear();
  b.add(1, 8, 0, true);  // position past the context
  EXPECT_FALSE(model_->forward(b, c, l).ok());
  b.clear();
  b.add(1, 0, 1, true);  // no such sequence slot
  EXPECT_FALSE(model_->forward(b, c, l).ok());
  b.clear();
  EXPECT_FALSE(model_->forward(b, c, l).ok());
}

TEST_F(ModelTest, SessionRejectsPromptsPastTheContext) {
  SessionOptions o;
  o.n_ctx = 4;
  o.n_threads = 1;
  auto s = Session::open(model_path(), o);
  ASSERT_TRUE(s.ok()) << s.error().message;
  std::vector<float> l;
  std::vector<int32_t> five = {1, 2, 3, 4, 5};
  auto st = (*s)->eval(five, false, l);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("context"), std::string::npos);
}

}  // namespace
}  // namespace peregrine
