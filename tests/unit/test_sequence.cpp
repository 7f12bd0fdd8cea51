// SequenceState without a model: hand-made logits rows over a tiny vocabulary whose token i is
// the letter 'a' + i (token 0 ends generation). Checks the step contract the CLI and the server
// share: rows -> accepted tokens, drafts verified row by row, and every ending (end of
// generation, stop string, max_tokens, context room) the same whether tokens come one per step
// or several.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "engine/sequence.h"

namespace peregrine {
namespace {

constexpr int64_t kVocab = 8;

TokenText letters() {
  return {[](TokenId id) { return std::string(1, char('a' + id)); }, [](TokenId id) { return id == 0; }};
}

// A row whose argmax is `tok` (and a spread of other values so sampling has choices).
std::vector<float> row_for(TokenId tok) {
  std::vector<float> r(kVocab);
  for (int64_t i = 0; i < kVocab; ++i) r[size_t(i)] = float((i * 3) % 5) * 0.1f;
  r[size_t(tok)] = 5.0f;
  return r;
}

std::vector<float> rows_for(const std::vector<TokenId>& toks) {
  std::vector<float> rows;
  for (TokenId t : toks) {
    std::vector<float> r = row_for(t);
    rows.insert(rows.end(), r.begin(), r.end());
  }
  return rows;
}

SequenceOptions greedy() {
  SequenceOptions o;
  o.sampling.temperature = 0.0f;
  return o;
}

std::string text_of(const std::vector<SequenceState::Emitted>& out, const std::string& tail = {}) {
  std::string s;
  for (const auto& e : out) s += e.text;
  return s + tail;
}

TEST(Sequence, DraftRowsAcceptUntilTheFirstMismatch) {
  SequenceState s(greedy(), letters(), kVocab);
  s.set_prompt(std::vector<TokenId>{1, 2});
  std::vector<SequenceState::Emitted> out;
  // Draft b, c, d; the target's rows say b, c, then e: b and c accepted, e is the target's own.
  const std::vector<TokenId> draft = {1, 2, 3};
  const std::vector<float> rows = rows_for({1, 2, 4, 5});
  SequenceState::StepResult r = s.step(rows.data(), 4, draft, out);
  EXPECT_FALSE(r.finished);
  EXPECT_EQ(r.accepted, 3);
  EXPECT_EQ(r.draft_accepted, 2);
  EXPECT_EQ(s.tokens(), (std::vector<TokenId>{1, 2, 1, 2, 4}));
  EXPECT_EQ(text_of(out), "bce");
  // All drafted tokens right: every row is used, the last one is the bonus token.
  out.clear();
  const std::vector<float> rows2 = rows_for({6, 7, 3});
  r = s.step(rows2.data(), 3, std::vector<TokenId>{6, 7}, out);
  EXPECT_EQ(r.accepted, 3);
  EXPECT_EQ(r.draft_accepted, 2);
  EXPECT_EQ(text_of(out), "ghd");
}

// With sampling, several rows in one step give exactly the tokens one-row steps give when the
// draft is what one-row decoding produced (the draws come from the same RNG in the same order).
TEST(Sequence, SampledDraftsMatchOneTokenSteps) {
  SequenceOptions o;
  o.sampling.temperature = 1.5f;
  o.sampling.top_k = 0;
  o.sampling.top_p = 1.0f;
  o.sampling.min_p = 0.0f;
  o.sampling.presence_penalty = 0.7f;
  o.sampling.seed = 42;
  o.ignore_eos = true;
  std::vector<std::vector<float>> rows;
  for (int i = 0; i < 12; ++i) {
    std::vector<float> r(kVocab);
    for (int64_t v = 0; v < kVocab; ++v) r[size_t(v)] = float((v * 7 + i * 3) % 11) * 0.3f;
    rows.push_back(r);
  }
  SequenceState one(o, letters(), kVocab);
  one.set_prompt(std::vector<TokenId>{3});
  std::vector<SequenceState::Emitted> out;
  for (const auto& r : rows) ASSERT_EQ(one.step(r.data(), 1, {}, out).accepted, 1);
  const std::vector<TokenId> want(one.tokens().begin() + 1, one.tokens().end());
  // The same rows four at a time, drafting what one-token steps produced: all accepted.
  SequenceState many(o, letters(), kVocab);
  many.set_prompt(std::vector<TokenId>{3});
  std::vector<SequenceState::Emitted> out2;
  for (size_t i = 0; i < rows.size(); i += 4) {
    std::vector<float> flat;
    for (size_t j = i; j < i + 4; ++j) flat.insert(flat.end(), rows[j].begin(), rows[j].end());
    const std::vector<TokenId> draft(want.begin() + std::ptrdiff_t(i), want.begin() + std::ptrdiff_t(i + 3));
    SequenceState::StepResult r = many.step(flat.data(), 4, draft, out2);
    EXPECT_EQ(r.accepted, 4);
    EXPECT_EQ(r.draft_accepted, 3);
  }
  EXPECT_EQ(many.tokens(), one.tokens());
  EXPECT_EQ(text_of(out2), text_of(out));
}

TEST(Sequence, EndingsInsideAMultiRowStep) {
  std::vector<SequenceState::Emitted> out;
  {  // End of generation on the second row: one token, reason stop, nothing after.
    SequenceState s(greedy(), letters(), kVocab);
    s.set_prompt(std::vector<TokenId>{1});
    const std::vector<float> rows = rows_for({2, 0, 3});
    SequenceState::StepResult r = s.step(rows.data(), 3, std::vector<TokenId>{2, 3}, out);
    EXPECT_TRUE(r.finished);
    EXPECT_EQ(r.reason, FinishReason::Stop);
    EXPECT_EQ(r.accepted, 1);
    EXPECT_EQ(s.n_generated(), 1);
    EXPECT_TRUE(s.finished());
  }
  {  // max_tokens 2 reached on the second row of three.
    SequenceOptions o = greedy();
    o.max_tokens = 2;
    SequenceState s(o, letters(), kVocab);
    s.set_prompt(std::vector<TokenId>{1});
    out.clear();
    const std::vector<float> rows = rows_for({2, 3, 4});
    SequenceState::StepResult r = s.step(rows.data(), 3, std::vector<TokenId>{2, 3}, out);
    EXPECT_TRUE(r.finished);
    EXPECT_EQ(r.reason, FinishReason::Length);
    EXPECT_EQ(r.accepted, 2);
    EXPECT_EQ(text_of(out, r.tail), "cd");
  }
  {  // A stop string completed by the second token: its text is never shown.
    SequenceOptions o = greedy();
    o.stop = {"de"};
    SequenceState s(o, letters(), kVocab);
    s.set_prompt(std::vector<TokenId>{1});
    out.clear();
    const std::vector<float> rows = rows_for({2, 3, 4, 5});
    SequenceState::StepResult r = s.step(rows.data(), 4, std::vector<TokenId>{2, 3, 4}, out);
    EXPECT_TRUE(r.finished);
    EXPECT_EQ(r.reason, FinishReason::Stop);
    EXPECT_EQ(r.accepted, 3);
    EXPECT_EQ(text_of(out, r.tail), "c");
  }
  {  // Room for two more tokens (the context): Length after the second; held text flushed.
    SequenceOptions o = greedy();
    o.stop = {"dx"};  // "d" is held back as a possible start of the stop string
    SequenceState s(o, letters(), kVocab);
    s.set_prompt(std::vector<TokenId>{1});
    out.clear();
    const std::vector<float> rows = rows_for({2, 3, 4});
    SequenceState::StepResult r = s.step(rows.data(), 3, std::vector<TokenId>{2, 3}, out, 2);
    EXPECT_TRUE(r.finished);
    EXPECT_EQ(r.reason, FinishReason::Length);
    EXPECT_EQ(text_of(out), "c");
    EXPECT_EQ(r.tail, "d");
  }
}

TEST(Sequence, LogprobsComeFromTheRawRowAndPenaltiesCountOutput) {
  SequenceOptions o = greedy();
  o.top_logprobs = 2;
  o.sampling.presence_penalty = 2.0f;  // strong enough to move the argmax after one use
  SequenceState s(o, letters(), kVocab);
  s.set_prompt(std::vector<TokenId>{1});
  std::vector<float> r(kVocab, 0.0f);
  r[3] = 1.5f;
  r[4] = 1.0f;
  std::vector<SequenceState::Emitted> out;
  s.step(r.data(), 1, {}, out);
  s.step(r.data(), 1, {}, out);  // 3 was generated: 1.5 - 2 < 1.0, so 4 wins now
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].token, 3);
  EXPECT_EQ(out[1].token, 4);
  ASSERT_TRUE(out[1].has_logprobs);
  EXPECT_EQ(out[1].logprobs.top[0].first, 3);  // the model's own ranking, before penalties
}

}  // namespace
}  // namespace peregrine
