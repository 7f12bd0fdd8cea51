// Forward options on the real SmolLM2 file (skipped when absent): the activation observer sees
// every named intermediate with the right shape and values and changes nothing; the layer range
// and mask run exactly the layers asked for; the tensor list describes what was loaded.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>

#include "model/model.h"
#include "model/tensor_table.h"
#include "quant/dequantize.h"
#include "real_model.h"

namespace peregrine {
namespace {

struct Recorder final : ActivationObserver {
  struct Seen {
    int64_t rows, cols;
    std::vector<float> data;
    std::vector<std::string> consumers;
  };
  std::map<std::pair<std::string, int64_t>, Seen> seen;  // (name, layer)
  int64_t calls = 0;
  void observe(const Activation& a) override {
    ++calls;
    Seen s{a.rows, a.cols, std::vector<float>(a.data, a.data + a.rows * a.cols), {}};
    for (const Weight* w : a.consumers) s.consumers.push_back(w->name);
    seen[{std::string(a.name), a.layer}] = std::move(s);
  }
};

class ForwardOptionsTest : public test::RealModelTest {
 protected:
  std::vector<float> run(const ForwardOptions& opt, KvCache* keep = nullptr) {
    KvCache own(model_->kv_shape(64, 1));
    KvCache& c = keep ? *keep : own;
    Batch b;
    for (size_t i = 0; i < kTokens.size(); ++i) b.add(kTokens[i], int32_t(i), 0, true);
    std::vector<float> logits;
    EXPECT_TRUE(model_->forward(b, c, logits, opt).ok());
    return logits;
  }
  const std::vector<int32_t> kTokens = {1, 504, 3458, 282, 4649, 314, 8240};
};

TEST_F(ForwardOptionsTest, ObserverSeesEveryIntermediateAndChangesNothing) {
  const Hparams& hp = model_->hparams();
  const int64_t T = int64_t(kTokens.size());
  Recorder rec;
  ForwardOptions opt;
  opt.observer = &rec;
  EXPECT_EQ(run(opt), run(ForwardOptions{}));  // bit for bit
  EXPECT_EQ(rec.calls, 4 * hp.n_layer + 1);
  for (int64_t il = 0; il < hp.n_layer; ++il) {
    const LayerSpec& l = model_->layers()[size_t(il)];
    const auto& in = rec.seen.at({"attn_in", il});
    EXPECT_EQ(in.rows, T);
    EXPECT_EQ(in.cols, hp.n_embd);
    EXPECT_EQ(in.consumers, (std::vector<std::string>{fmt::format("blk.{}.attn_q.weight", il),
                                                      fmt::format("blk.{}.attn_k.weight", il),
                                                      fmt::format("blk.{}.attn_v.weight", il)}));
    EXPECT_EQ(rec.seen.at({"attn_out", il}).cols, l.q_dim());
    EXPECT_EQ(rec.seen.at({"ffn_in", il}).consumers.size(), 2u);
    EXPECT_EQ(rec.seen.at({"ffn_act", il}).cols, l.n_ff);
    EXPECT_EQ(rec.seen.at({"ffn_act", il}).consumers,
              std::vector<std::string>{fmt::format("blk.{}.ffn_down.weight", il)});
  }
  EXPECT_EQ(rec.seen.at({"out_in", -1}).cols, hp.n_embd);

  // Layer 0's attention input, independently: RMSNorm(embedding) * attn_norm, in double.
  const gguf::TensorInfo* emb = file_->find_tensor("token_embd.weight");
  const gguf::TensorInfo* norm = file_->find_tensor("blk.0.attn_norm.weight");
  ASSERT_TRUE(emb && norm);
  const auto& seen = rec.seen.at({"attn_in", 0}).data;
  std::vector<float> row(size_t(hp.n_embd));
  const size_t rb = *row_bytes(emb->type, uint64_t(hp.n_embd));
  const float* w = reinterpret_cast<const float*>(norm->data);
  for (int64_t t = 0; t < T; ++t) {
    dequantize_row(emb->type, emb->data + size_t(kTokens[size_t(t)]) * rb, row.data(), hp.n_embd);
    double ss = 0;
    for (float v : row) ss += double(v) * v;
    const double inv = 1.0 / std::sqrt(ss / double(hp.n_embd) + double(hp.rms_eps));
    for (int64_t i = 0; i < hp.n_embd; ++i)
      ASSERT_NEAR(seen[size_t(t * hp.n_embd + i)], double(row[size_t(i)]) * inv * w[i], 1e-4)
          << "token " << t << " dim " << i;
  }
}

TEST_F(ForwardOptionsTest, LayerRangeAndMaskRunExactlyThoseLayers) {
  const int64_t L = model_->hparams().n_layer;
  ForwardOptions all;
  all.layer_end = L;
  EXPECT_EQ(run(all), run(ForwardOptions{}));

  // The first 6 layers: only they are observed and only their KV is written.
  Recorder rec;
  ForwardOptions first;
  first.layer_end = 6;
  first.observer = &rec;
  KvCache c(model_->kv_shape(64, 1));
  const std::vector<float> draft = run(first, &c);
  EXPECT_NE(draft, run(ForwardOptions{}));
  for (int64_t il = 0; il < L; ++il) EXPECT_EQ(rec.seen.count({"attn_in", il}), il < 6 ? 1u : 0u) << il;
  auto written = [&](int64_t layer) {
    for (int64_t i = 0; i < c.shape().kv_dim; ++i)
      if (c.k_at(layer, 0, 0, i) != 0.0f) return true;
    return false;
  };
  EXPECT_TRUE(written(5));
  EXPECT_FALSE(written(6));

  // A mask that skips layer 3 only: the same as running [0, 3) then [4, L) is not checkable
  // piecewise, but the observed layers and the KV say which ran.
  Recorder rec2;
  std::vector<uint8_t> mask(size_t(L), 1);
  mask[3] = 0;
  ForwardOptions skip;
  skip.run_layer = mask;
  skip.observer = &rec2;
  KvCache c2(model_->kv_shape(64, 1));
  EXPECT_NE(run(skip, &c2), run(ForwardOptions{}));
  EXPECT_EQ(rec2.seen.count({"attn_in", 3}), 0u);
  EXPECT_EQ(rec2.seen.count({"attn_in", 4}), 1u);
  bool any3 = false;
  for (int64_t i = 0; i < c2.shape().kv_dim; ++i) any3 |= c2.k_at(3, 0, 0, i) != 0.0f;
  EXPECT_FALSE(any3);
}

TEST_F(ForwardOptionsTest, TensorListDescribesTheFile) {
  const Hparams& hp = model_->hparams();
  const std::vector<TensorSpec>& t = model_->tensors();
  int64_t bound = 0;
  for (const TensorSpec& s : t) {
    const gguf::TensorInfo* info = file_->find_tensor(s.name);
    EXPECT_EQ(s.source, info) << s.name;
    if (s.source == nullptr) {
      EXPECT_FALSE(s.required) << s.name;
      continue;
    }
    ++bound;
    EXPECT_EQ(s.dest->name, s.name);
    EXPECT_EQ(int64_t(info->dims[0]), s.dims[0]) << s.name;
    if (s.layer >= 0) EXPECT_NE(s.name.find(fmt::format("blk.{}.", s.layer)), std::string::npos) << s.name;
  }
  // Every tensor of the file is bound by exactly one spec (SmolLM2 ties its output).
  EXPECT_EQ(bound, int64_t(file_->tensors().size()));
  EXPECT_EQ(bound, 2 + 9 * hp.n_layer);
}

}  // namespace
}  // namespace peregrine
