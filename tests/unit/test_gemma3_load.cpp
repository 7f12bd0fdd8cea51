// The gemma3 loader on tiny in-memory GGUF files: attention kinds from the metadata's
// layer pattern (integer period or per-layer flags), and clear one-line errors for
// inconsistent metadata. The real model's numerics are checked against an independent
// numpy forward pass in tests/reference/test_forward_gemma.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>

#include "gguf_builder.h"
#include "model/model.h"

namespace peregrine {
namespace {

constexpr int64_t kLayers = 4, kEmbd = 32, kHd = 32, kFf = 32, kVocab = 8;

struct Meta {
  uint32_t window = 16, value_length = kHd;
  bool random_weights = false;  // else zeros
};

std::vector<uint8_t> tiny_gemma3(const std::function<void(test::GgufBuilder&)>& edit, Meta m = {}) {
  test::GgufBuilder b;
  b.kv_str("general.architecture", "gemma3");
  b.kv_u32("gemma3.block_count", kLayers).kv_u32("gemma3.embedding_length", kEmbd);
  b.kv_u32("gemma3.feed_forward_length", kFf).kv_u32("gemma3.attention.head_count", 1);
  b.kv_u32("gemma3.attention.head_count_kv", 1).kv_u32("gemma3.attention.key_length", kHd);
  b.kv_u32("gemma3.attention.value_length", m.value_length).kv_u32("gemma3.context_length", 256);
  b.kv_f32("gemma3.rope.freq_base", 1e6f).kv_f32("gemma3.attention.layer_norm_rms_epsilon", 1e-6f);
  b.kv_u32("gemma3.attention.sliding_window", m.window);
  edit(b);
  uint32_t state = 12345;  // a fixed LCG: the same weights every run
  auto add = [&](const std::string& name, std::vector<uint64_t> dims) {
    std::vector<uint8_t> data;
    if (m.random_weights) {
      const uint64_t n = dims[0] * (dims.size() > 1 ? dims[1] : 1);
      data.resize(size_t(n) * 4);
      for (uint64_t i = 0; i < n; ++i) {
        state = state * 1664525u + 1013904223u;
        const float v = (float(state >> 8) / float(1 << 24) - 0.5f) * 0.5f;
        std::memcpy(data.data() + i * 4, &v, 4);
      }
    }
    b.tensor(name, std::move(dims), GgmlType::F32, std::move(data));
  };
  add("token_embd.weight", {kEmbd, kVocab});
  add("output_norm.weight", {kEmbd});
  for (int il = 0; il < kLayers; ++il) {
    auto n = [il](const char* s) { return fmt::format("blk.{}.{}.weight", il, s); };
    for (const char* norm : {"attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"}) add(n(norm), {kEmbd});
    add(n("attn_q_norm"), {kHd});
    add(n("attn_k_norm"), {kHd});
    for (const char* w : {"attn_q", "attn_k", "attn_v"}) add(n(w), {kEmbd, kHd});
    add(n("attn_output"), {kHd, kEmbd});
    add(n("ffn_gate"), {kEmbd, kFf});
    add(n("ffn_up"), {kEmbd, kFf});
    add(n("ffn_down"), {kFf, kEmbd});
  }
  return b.build();
}

struct Loaded {
  std::vector<uint8_t> bytes;
  ThreadPool pool{1};
  Result<std::unique_ptr<Model>> model = make_error("not loaded");
};

std::unique_ptr<Loaded> load(const std::function<void(test::GgufBuilder&)>& edit, Meta m = {}) {
  auto l = std::make_unique<Loaded>();
  l->bytes = tiny_gemma3(edit, m);
  auto f = gguf::File::parse(l->bytes.data(), l->bytes.size(), "tiny.gguf");
  EXPECT_TRUE(f.ok()) << f.error().message;
  if (f.ok()) l->model = load_model(std::shared_ptr<const gguf::File>(std::move(f).value()), l->pool);
  return l;
}

std::string kinds(const Model& m) {
  std::string s;
  for (const AttnKind& k : m.attn_kinds()) s += k.windowed() ? "L" : "G";
  return s;
}

TEST(Gemma3Load, LayerPatternFromMetadata) {
  auto plain = load([](test::GgufBuilder&) {});  // Gemma 3's default: every 6th layer global
  ASSERT_TRUE(plain->model.ok()) << plain->model.error().message;
  EXPECT_EQ(kinds(**plain->model), "LLLL");
  auto every2 = load([](test::GgufBuilder& b) { b.kv_u32("gemma3.attention.sliding_window_pattern", 2); });
  ASSERT_TRUE(every2->model.ok()) << every2->model.error().message;
  EXPECT_EQ(kinds(**every2->model), "LGLG");
  auto flags = load([](test::GgufBuilder& b) {
    b.kv_i32_array("gemma3.attention.sliding_window_pattern", {1, 0, 0, 1});  // 1 = sliding
  });
  ASSERT_TRUE(flags->model.ok()) << flags->model.error().message;
  EXPECT_EQ(kinds(**flags->model), "LGGL");
  // The KV cache keeps a window ring for local layers (W + batch + the longest draft - 1) and
  // n_ctx slots for global ones.
  const KvShape kv = (*flags->model)->kv_shape(200, 1, KvConfig{}, AttnKind::global(), 8);
  EXPECT_EQ(kv.slots(0), 16 + 8 + kMaxDraftTokens - 1);
  EXPECT_EQ(kv.slots(1), 200);
}

TEST(Gemma3Load, InconsistentMetadataIsAClearError) {
  auto expect_error = [](const std::function<void(test::GgufBuilder&)>& edit, const std::string& needle,
                         Meta m = {}) {
    auto l = load(edit, m);
    ASSERT_FALSE(l->model.ok()) << "accepted: " << needle;
    const std::string& e = l->model.error().message;
    EXPECT_NE(e.find(needle), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  };
  expect_error([](test::GgufBuilder& b) { b.kv_i32_array("gemma3.attention.sliding_window_pattern", {1, 0, 1}); },
               "3 entries for 4 layers");
  expect_error([](test::GgufBuilder& b) { b.kv_u32("gemma3.attention.sliding_window_pattern", 0); },
               "sliding_window_pattern");
  expect_error([](test::GgufBuilder&) {}, "sliding_window", Meta{0, kHd});
  expect_error([](test::GgufBuilder&) {}, "value_length", Meta{16, 16});
}

// Gemma's q.k scale is 1/sqrt(query_pre_attn_scalar); a file states it as gemma3.attention.scale
// (sizes whose scalar is not head_dim need it). Absent, 1/sqrt(head_dim).
TEST(Gemma3Load, AttentionScaleFromMetadata) {
  auto logits = [](const std::function<void(test::GgufBuilder&)>& edit) {
    auto l = load(edit, Meta{16, kHd, true});
    EXPECT_TRUE(l->model.ok()) << l->model.error().message;
    std::vector<float> out;
    if (!l->model.ok()) return out;
    Model& m = **l->model;
    KvCache cache(m.kv_shape(32, 1, KvConfig{KvType::F32, KvType::F32}, AttnKind::global(), 8));
    Batch b;
    for (int32_t i = 0; i < 6; ++i) b.add((i * 5 + 1) % int32_t(kVocab), i, 0, true);
    EXPECT_TRUE(m.forward(b, cache, out).ok());
    return out;
  };
  const std::vector<float> plain = logits([](test::GgufBuilder&) {});
  const std::vector<float> same = logits([](test::GgufBuilder& b) {
    b.kv_f32("gemma3.attention.scale", 1.0f / std::sqrt(float(kHd)));
  });
  const std::vector<float> other = logits([](test::GgufBuilder& b) { b.kv_f32("gemma3.attention.scale", 1.0f); });
  ASSERT_EQ(plain.size(), size_t(6 * kVocab));
  EXPECT_EQ(plain, same);
  EXPECT_NE(plain, other);
  auto bad = load([](test::GgufBuilder& b) { b.kv_f32("gemma3.attention.scale", -1.0f); });
  ASSERT_FALSE(bad->model.ok());
  EXPECT_NE(bad->model.error().message.find("attention.scale"), std::string::npos);
}

// Window rings hold W + n_batch + n_draft - 1 slots, so one forward pass may carry a step's
// tokens plus its drafts for a sequence, and no more.
TEST(Gemma3Load, WindowCacheTakesBatchPlusDrafts) {
  auto l = load([](test::GgufBuilder& b) { b.kv_u32("gemma3.attention.sliding_window_pattern", 2); },
                Meta{16, kHd, true});
  ASSERT_TRUE(l->model.ok()) << l->model.error().message;
  Model& m = **l->model;
  KvShape shape = m.kv_shape(64, 1, KvConfig{KvType::F32, KvType::F32}, AttnKind::global(), 4);
  shape.n_draft = 2;
  auto run = [&](int32_t n) {
    KvCache cache(shape);
    Batch b;
    for (int32_t i = 0; i < n; ++i) b.add(i % int32_t(kVocab), i, 0, true);
    std::vector<float> logits;
    return m.forward(b, cache, logits);
  };
  EXPECT_TRUE(run(6).ok());
  const Status st = run(7);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error().message.find("window cache allows (6)"), std::string::npos) << st.error().message;
}

}  // namespace
}  // namespace peregrine
