// The decode loop allocates nothing per token: every buffer (activations, quantized
// inputs, logits, sampler candidates, repetition window) is reused once grown.
// Counted with a replacement operator new over the whole test binary.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <new>

#include "engine/session.h"
#include "sample/logprobs.h"
#include "sample/sampler.h"

#if !defined(PEREGRINE_SANITIZER_BUILD)  // sanitizer runtimes replace operator new themselves

namespace {
std::atomic<int64_t> g_allocations{0};
}  // namespace

void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace peregrine {
namespace {

std::string model_path() {
  const char* p = std::getenv("PEREGRINE_MODEL_PATH");
  return p != nullptr ? p : "";
}

TEST(NoAlloc, DecodeAllocationsDoNotGrowWithTokens) {
  if (model_path().empty() || !std::filesystem::exists(model_path()))
    GTEST_SKIP() << "PEREGRINE_MODEL_PATH not set";
  SessionOptions o;
  o.n_threads = 2;
  o.n_ctx = 256;
  auto s = Session::open(model_path(), o);
  ASSERT_TRUE(s.ok()) << s.error().message;
  SequenceOptions gen;
  SamplerOptions& so = gen.sampling;
  so.temperature = 0.8f;
  so.top_k = 0;  // full-vocabulary sort
  so.repeat_penalty = 1.1f;
  so.presence_penalty = 0.2f;
  so.seed = 7;
  const std::vector<TokenId> prompt = {1, 504, 3458, 282, 4649, 314};
  const int64_t n_vocab = (*s)->model().hparams().n_vocab;
  auto any = [](const SequenceState::Emitted&) { return true; };
  // Allocations of a whole generate() call with n tokens, after a warm-up call. Each call has a
  // new SequenceState (its sampler's buffers are allocated once, on its first token), so a
  // difference between n = 4 and n = 36 is an allocation that grows with the tokens.
  auto count = [&](int64_t n) {
    gen.max_tokens = 40;
    SequenceState warm_seq(gen, (*s)->token_text(), n_vocab);
    auto warm = (*s)->generate(prompt, warm_seq, any);
    EXPECT_TRUE(warm.ok());
    gen.max_tokens = n;
    SequenceState seq(gen, (*s)->token_text(), n_vocab);
    const int64_t before = g_allocations.load();
    auto st = (*s)->generate(prompt, seq, any);
    EXPECT_TRUE(st.ok());
    EXPECT_EQ(st->n_generated, n) << "stopped early; pick another prompt";
    return g_allocations.load() - before;
  };
  const int64_t few = count(4), many = count(36);
  EXPECT_EQ(few, many) << "allocations grew with the number of decoded tokens";
}

// Presence/frequency penalties and logprobs (the server's per-token work) allocate nothing once
// their buffers have grown; no model needed.
TEST(NoAlloc, PenaltiesAndLogprobsAfterWarmUp) {
  SamplerOptions so;
  so.temperature = 0.8f;
  so.top_k = 0;
  so.presence_penalty = 0.5f;
  so.frequency_penalty = 0.3f;
  so.repeat_penalty = 1.1f;
  so.seed = 11;
  constexpr int64_t kVocab = 1000;
  std::vector<float> logits(kVocab);
  for (int64_t i = 0; i < kVocab; ++i) logits[size_t(i)] = float((i * 7919) % 101) * 0.05f;
  Sampler sampler(so);
  TokenLogprobs lp;
  auto step = [&] {
    const int32_t t = sampler.sample(logits.data(), kVocab);
    sampler.accept(t);
    sampler.count_output(t);
    compute_logprobs(logits.data(), kVocab, t, 20, lp);
  };
  for (int i = 0; i < 64; ++i) step();  // warm-up
  sampler.reset();
  const int64_t before = g_allocations.load();
  for (int i = 0; i < 64; ++i) step();
  EXPECT_EQ(g_allocations.load() - before, 0);
}

}  // namespace
}  // namespace peregrine

#endif  // !PEREGRINE_SANITIZER_BUILD
