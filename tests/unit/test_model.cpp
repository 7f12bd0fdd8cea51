// Whole-model invariants on the real SmolLM2 file (skipped when absent): the
// same tokens give the same logits whether processed as one batch, in chunks,
// one at a time, or next to another sequence.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>

#include "engine/session.h"
#include "model/model.h"
#include "real_model.h"

namespace peregrine {
namespace {

std::string model_path() { return test::smollm_path(); }

using ModelTest = test::RealModelTest;

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
  // Every K and V row of every slot, as raw bytes; together they must be the whole cache.
  auto snapshot = [](const KvCache& kv) {
    const KvShape& s = kv.shape();
    std::vector<uint8_t> out;
    for (int64_t layer = 0; layer < s.n_layer; ++layer)
      for (int64_t seq = 0; seq < s.n_seq; ++seq)
        for (int64_t pos = 0; pos < s.slots(layer); ++pos)
          for (const void* r : {kv.k(layer, seq, pos), kv.v(layer, seq, pos)}) {
            const auto* b = static_cast<const uint8_t*>(r);
            out.insert(out.end(), b, b + s.row_bytes(layer, 0));
          }
    return out;
  };
  // Which rows the cache counts as written, per layer, sequence and position.
  auto written = [](const KvCache& kv) {
    const KvShape& s = kv.shape();
    std::vector<bool> out;
    for (int64_t layer = 0; layer < s.n_layer; ++layer)
      for (int64_t seq = 0; seq < s.n_seq; ++seq)
        for (int64_t pos = 0; pos < s.n_ctx; ++pos) out.push_back(kv.written(layer, seq, pos));
    return out;
  };
  std::vector<float> l, expect;
  // Real content first (positions 0..2), so "unchanged" also means "not overwritten".
  Batch prefix;
  for (int32_t i = 0; i < 3; ++i) prefix.add(kTokens[size_t(i)], i, 0, false);
  ASSERT_TRUE(model_->forward(prefix, c, l).ok());
  const std::vector<uint8_t> before = snapshot(c);
  const std::vector<bool> written_before = written(c);
  ASSERT_EQ(before.size(), c.bytes());
  ASSERT_EQ(c.n_pos(0), 3);
  const int32_t V = int32_t(model_->hparams().n_vocab);

  struct Tok {
    int32_t token, pos;
  };
  struct Bad {
    std::vector<Tok> tokens;  // all in sequence 0 ...
    int32_t seq;              // ... but the last, which is in this one
    std::string needle;       // what the error must say
  };
  const std::vector<Bad> bad = {
      {{{-1, 3}}, 0, "token id -1 at batch index 0 is outside the vocabulary"},
      {{{V, 3}}, 0, "token id " + std::to_string(V) + " at batch index 0 is outside the vocabulary"},
      {{{1, 8}}, 0, "position 8 at batch index 0 is outside the context (0..7)"},
      {{{1, -1}}, 0, "position -1 at batch index 0 is outside the context"},
      {{{1, 3}}, 1, "sequence 1 at batch index 0 is outside 0..0"},
      {{}, 0, "empty batch"},
      // A bad token after good ones: nothing of the batch may be written, not even the good
      // tokens before it.
      {{{kTokens[3], 3}, {kTokens[4], 4}, {-5, 5}}, 0, "token id -5 at batch index 2"},
      {{{kTokens[3], 3}, {kTokens[4], 4}, {1, 9}}, 0, "position 9 at batch index 2"},
      {{{kTokens[3], 3}, {kTokens[4], 4}}, -1, "sequence -1 at batch index 1"},
  };
  for (const Bad& t : bad) {
    Batch b;
    for (size_t i = 0; i < t.tokens.size(); ++i)
      b.add(t.tokens[i].token, t.tokens[i].pos, i + 1 == t.tokens.size() ? t.seq : 0, true);
    const Status st = model_->forward(b, c, l);
    ASSERT_FALSE(st.ok()) << t.needle;
    EXPECT_NE(st.error().message.find(t.needle), std::string::npos)
        << "error '" << st.error().message << "' does not say '" << t.needle << "'";
    EXPECT_TRUE(snapshot(c) == before) << "the cache changed after: " << st.error().message;
    EXPECT_TRUE(written(c) == written_before) << "rows marked written after: " << st.error().message;
    EXPECT_EQ(c.n_pos(0), 3) << st.error().message;
    EXPECT_EQ(c.bytes(), before.size());
  }

  // The cache still continues the prefix: position 3 gives what it gives after the prefix in
  // a fresh cache.
  KvCache fresh(model_->kv_shape(8, 1));
  ASSERT_TRUE(model_->forward(prefix, fresh, l).ok());
  Batch next;
  next.add(kTokens[3], 3, 0, true);
  ASSERT_TRUE(model_->forward(next, fresh, expect).ok());
  ASSERT_TRUE(model_->forward(next, c, l).ok());
  EXPECT_EQ(l, expect);
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
