// phi3 and smollm3 on tiny in-memory GGUF files, by equivalence with architectures already
// checked against llama.cpp:
//   - phi3 with fused attn_qkv and ffn_up (gate rows first) computes what qwen2 computes from the
//     same weights as separate matrices with zero biases (both rotate halves, scale 1/sqrt(hd));
//     separate attn_q/k/v in a phi3 file give the same again.
//   - smollm3 is llama except that every 4th layer skips RoPE: with 3 layers the two agree
//     everywhere; with 4 they agree at position 0 only (RoPE is the identity there).
// And the one-line errors for broken fused files. The numerics against llama.cpp itself are in
// tests/reference/test_forward_synthetic.py.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <map>

#include "gguf_builder.h"
#include "kv/kv_cache.h"
#include "model/model.h"
#include "model/tensor_table.h"

namespace peregrine {
namespace {

// Widths that are multiples of 32, so the matrices (and the fused matrices' row views) are packed.
constexpr int64_t kEmbd = 64, kHead = 4, kHeadKv = 2, kHd = 16, kFf = 96, kVocab = 16;
constexpr int64_t kQ = kHead * kHd, kKv = kHeadKv * kHd;

using Tensors = std::map<std::string, std::pair<std::vector<uint64_t>, std::vector<float>>>;

// Random "HF" weights under separate names: attn_q/k/v, ffn_gate/up (ggml dims: {cols, rows}).
Tensors random_weights(int n_layer) {
  uint32_t state = 2024;
  auto rnd = [&](std::vector<uint64_t> dims, float scale, float offset = 0.0f) {
    const uint64_t n = dims[0] * (dims.size() > 1 ? dims[1] : 1);
    std::vector<float> v(n);
    for (float& x : v) {
      state = state * 1664525u + 1013904223u;
      x = offset + (float(state >> 8) / float(1 << 24) - 0.5f) * scale;
    }
    return std::make_pair(std::move(dims), std::move(v));
  };
  Tensors t;
  t["token_embd.weight"] = rnd({kEmbd, kVocab}, 1.0f);
  t["output_norm.weight"] = rnd({kEmbd}, 0.4f, 1.0f);
  for (int il = 0; il < n_layer; ++il) {
    auto n = [il](const char* s) { return fmt::format("blk.{}.{}.weight", il, s); };
    t[n("attn_norm")] = rnd({kEmbd}, 0.4f, 1.0f);
    t[n("ffn_norm")] = rnd({kEmbd}, 0.4f, 1.0f);
    t[n("attn_q")] = rnd({kEmbd, kQ}, 1.0f);
    t[n("attn_k")] = rnd({kEmbd, kKv}, 1.0f);
    t[n("attn_v")] = rnd({kEmbd, kKv}, 0.5f);
    t[n("attn_output")] = rnd({kQ, kEmbd}, 0.5f);
    t[n("ffn_gate")] = rnd({kEmbd, kFf}, 0.5f);
    t[n("ffn_up")] = rnd({kEmbd, kFf}, 0.5f);
    t[n("ffn_down")] = rnd({kFf, kEmbd}, 0.5f);
  }
  return t;
}

// Moves the named tensors into one whose rows are theirs in order (ggml: concatenated data).
void fuse(Tensors& t, const std::string& out, std::initializer_list<std::string> parts) {
  std::vector<float> data;
  uint64_t rows = 0, cols = 0;
  for (const std::string& p : parts) {
    auto node = t.extract(p);
    cols = node.mapped().first[0];
    rows += node.mapped().first[1];
    data.insert(data.end(), node.mapped().second.begin(), node.mapped().second.end());
  }
  t[out] = {{cols, rows}, std::move(data)};
}

struct Loaded {
  std::vector<uint8_t> bytes;
  ThreadPool pool{1};
  Result<std::unique_ptr<Model>> model = make_error("not loaded");
};

std::unique_ptr<Loaded> load(const std::string& arch, int n_layer, const Tensors& t,
                             uint32_t sliding_window = 0) {
  test::GgufBuilder b;
  const std::string a = arch + ".";
  b.kv_str("general.architecture", arch);
  b.kv_u32(a + "block_count", uint32_t(n_layer)).kv_u32(a + "embedding_length", kEmbd);
  b.kv_u32(a + "feed_forward_length", kFf).kv_u32(a + "attention.head_count", kHead);
  b.kv_u32(a + "attention.head_count_kv", kHeadKv).kv_u32(a + "context_length", 256);
  b.kv_f32(a + "rope.freq_base", 100.0f).kv_f32(a + "attention.layer_norm_rms_epsilon", 1e-5f);
  if (sliding_window) b.kv_u32(a + "attention.sliding_window", sliding_window);
  for (const auto& [name, tensor] : t) {
    std::vector<uint8_t> data(tensor.second.size() * 4);
    std::memcpy(data.data(), tensor.second.data(), data.size());
    b.tensor(name, tensor.first, GgmlType::F32, std::move(data));
  }
  auto l = std::make_unique<Loaded>();
  l->bytes = b.build();
  auto f = gguf::File::parse(l->bytes.data(), l->bytes.size(), "tiny.gguf");
  EXPECT_TRUE(f.ok()) << f.error().message;
  if (f.ok()) l->model = load_model(std::shared_ptr<const gguf::File>(std::move(f).value()), l->pool);
  return l;
}

// Logits [T, kVocab] of a fixed 12-token sequence from position 0.
std::vector<float> logits(Model& m) {
  KvCache cache(m.kv_shape(32, 1, KvConfig{KvType::F32, KvType::F32}));
  Batch batch;
  for (int32_t i = 0; i < 12; ++i) batch.add((i * 7 + 3) % int32_t(kVocab), i, 0, true);
  std::vector<float> out;
  const Status st = m.forward(batch, cache, out);
  EXPECT_TRUE(st.ok()) << st.error().message;
  return out;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b, size_t from, size_t to) {
  float d = 0.0f;
  for (size_t i = from; i < to; ++i) d = std::max(d, std::abs(a[i] - b[i]));
  return d;
}

Tensors qwen2_zero_bias(Tensors t, int n_layer) {
  for (int il = 0; il < n_layer; ++il)
    for (auto [w, n] : {std::pair{"q", kQ}, {"k", kKv}, {"v", kKv}})
      t[fmt::format("blk.{}.attn_{}.bias", il, w)] = {{uint64_t(n)}, std::vector<float>(size_t(n), 0.0f)};
  return t;
}

Tensors phi3_fused(Tensors t, int n_layer, bool fuse_qkv = true) {
  for (int il = 0; il < n_layer; ++il) {
    auto n = [il](const char* s) { return fmt::format("blk.{}.{}.weight", il, s); };
    if (fuse_qkv) fuse(t, n("attn_qkv"), {n("attn_q"), n("attn_k"), n("attn_v")});
    fuse(t, n("ffn_up"), {n("ffn_gate"), n("ffn_up")});
  }
  return t;
}

TEST(Phi3, FusedMatricesComputeWhatSeparateOnesDo) {
  const Tensors w = random_weights(2);
  auto ref = load("qwen2", 2, qwen2_zero_bias(w, 2));
  auto fused = load("phi3", 2, phi3_fused(w, 2));
  auto separate_qkv = load("phi3", 2, phi3_fused(w, 2, false));
  ASSERT_TRUE(ref->model.ok()) << ref->model.error().message;
  ASSERT_TRUE(fused->model.ok()) << fused->model.error().message;
  ASSERT_TRUE(separate_qkv->model.ok()) << separate_qkv->model.error().message;
  const std::vector<float> want = logits(**ref->model);
  float scale = 0.0f;
  for (float x : want) scale = std::max(scale, std::abs(x));
  ASSERT_GT(scale, 0.1f);
  for (Loaded* l : {fused.get(), separate_qkv.get()}) {
    const std::vector<float> got = logits(**l->model);
    ASSERT_EQ(got.size(), want.size());
    EXPECT_LE(max_abs_diff(got, want, 0, want.size()), 1e-5f * scale);
  }
  // The tensor table lists the file's fused matrices, with their own roles.
  int qkv = 0, gate_up = 0;
  for (const TensorSpec& s : (*fused->model)->tensors()) {
    qkv += s.role == TensorRole::AttnQkv && s.source != nullptr;
    gate_up += s.role == TensorRole::FfnGateUp && s.source != nullptr;
  }
  EXPECT_EQ(qkv, 2);
  EXPECT_EQ(gate_up, 2);
}

TEST(Phi3, SlidingWindowIsIgnoredAndSaidSo) {
  auto l = load("phi3", 2, phi3_fused(random_weights(2), 2), 2047);
  ASSERT_TRUE(l->model.ok()) << l->model.error().message;
  for (const AttnKind& k : (*l->model)->attn_kinds()) EXPECT_FALSE(k.windowed());
  EXPECT_NE((*l->model)->describe_extras().find("sliding window 2047 ignored"), std::string::npos)
      << (*l->model)->describe_extras();
}

TEST(Phi3, BrokenFusedFilesNameTheTensor) {
  auto error_of = [](Tensors t) {
    auto l = load("phi3", 2, t);
    return l->model.ok() ? std::string("loaded") : l->model.error().message;
  };
  const Tensors good = phi3_fused(random_weights(2), 2);
  {
    Tensors t = good;
    t.erase("blk.1.attn_qkv.weight");
    EXPECT_NE(error_of(t).find("missing tensor 'blk.1.attn_qkv.weight'"), std::string::npos) << error_of(t);
  }
  {
    Tensors t = good;
    t["blk.0.ffn_up.weight"] = t["blk.0.ffn_down.weight"];  // [n_ff, E] instead of [E, 2 n_ff]
    const std::string e = error_of(t);
    EXPECT_NE(e.find("tensor 'blk.0.ffn_up.weight' has shape [96, 64] but the model needs [64, 192]"),
              std::string::npos) << e;
  }
  {
    Tensors t = good;
    t["blk.1.attn_qkv.weight"].first[1] -= 1;  // one row short
    t["blk.1.attn_qkv.weight"].second.resize(size_t(kEmbd * (kQ + 2 * kKv - 1)));
    const std::string e = error_of(t);
    EXPECT_NE(e.find("tensor 'blk.1.attn_qkv.weight' has shape [64, 127] but the model needs [64, 128]"),
              std::string::npos) << e;
  }
  {
    Tensors t = good;
    t["rope_factors_long.weight"] = {{kHd / 2}, std::vector<float>(kHd / 2, 1.0f)};
    t["rope_factors_short.weight"] = {{kHd / 2}, std::vector<float>(kHd / 2, 1.0f)};
    const std::string e = error_of(t);
    EXPECT_NE(e.find("tensor 'rope_factors_long.weight'"), std::string::npos) << e;
    EXPECT_NE(e.find("not supported"), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
}

TEST(SmolLM3, IsLlamaWithoutRopeOnEveryFourthLayer) {
  {
    const Tensors w = random_weights(3);  // no NoPE layer: (il + 1) % 4 != 0 for il < 3
    auto ref = load("llama", 3, w), got = load("smollm3", 3, w);
    ASSERT_TRUE(ref->model.ok()) << ref->model.error().message;
    ASSERT_TRUE(got->model.ok()) << got->model.error().message;
    const std::vector<float> a = logits(**ref->model), b = logits(**got->model);
    EXPECT_EQ(max_abs_diff(a, b, 0, a.size()), 0.0f);
  }
  const Tensors w = random_weights(8);
  auto ref = load("llama", 8, w), got = load("smollm3", 8, w);
  ASSERT_TRUE(ref->model.ok()) << ref->model.error().message;
  ASSERT_TRUE(got->model.ok()) << got->model.error().message;
  const std::vector<LayerSpec>& layers = (*got->model)->layers();
  for (size_t il = 0; il < layers.size(); ++il) EXPECT_EQ(layers[il].rope, il != 3 && il != 7) << il;
  EXPECT_NE((*got->model)->describe_extras().find("no RoPE on layers 3, 7"), std::string::npos);
  const std::vector<float> a = logits(**ref->model), b = logits(**got->model);
  EXPECT_EQ(max_abs_diff(a, b, 0, kVocab), 0.0f);          // position 0: RoPE rotates by 0
  EXPECT_GT(max_abs_diff(a, b, kVocab, a.size()), 1e-3f);  // later: the NoPE layers differ
}

}  // namespace
}  // namespace peregrine
