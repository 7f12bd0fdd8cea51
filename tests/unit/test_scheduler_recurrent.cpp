// Scheduler tests on a recurrent cache (state-space layers), without a model: a stand-in forward
// pass keeps a running hash of each sequence's tokens as its recurrent state (the state can only
// go forward: every sequence's tokens must continue it, as Model::check_batch requires) and
// derives the next token from it; a hybrid variant also writes each token's K/V into a paged
// global layer and checks that the history it reads back hashes to the state. Rejected drafts
// must send the state back to the checkpoint taken before their step and have the verified
// tokens since recomputed; preemption restarts from a zeroed state; n > 1 forks the state; the
// prefix cache stays off (a shared K/V block does not carry the state at its end).
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>
#include <vector>

#include "engine/scheduler.h"

namespace peregrine {
namespace {

constexpr int64_t kVocab = 50;
constexpr TokenId kEog = 0;
constexpr uint64_t kFnvBasis = 1469598103934665603ull;

uint64_t fnv(uint64_t h, TokenId t) { return (h ^ uint64_t(t)) * 1099511628211ull; }
TokenId token_of(uint64_t h) { return TokenId(1 + h % (kVocab - 1)); }

std::vector<TokenId> reference(std::vector<TokenId> tokens, int64_t n_new) {
  std::vector<TokenId> out;
  for (int64_t i = 0; i < n_new; ++i) {
    uint64_t h = kFnvBasis;
    for (TokenId t : tokens) h = fnv(h, t);
    tokens.push_back(token_of(h));
    out.push_back(tokens.back());
  }
  return out;
}

// The state of a state layer: the history's 64-bit hash as four 16-bit floats (exact in f32); an
// empty (zeroed) state stands for the hash of nothing.
uint64_t read_state(const float* s) {
  if (s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == 0) return kFnvBasis;
  uint64_t h = 0;
  for (int i = 0; i < 4; ++i) h |= uint64_t(s[i]) << (16 * i);
  return h;
}
void write_state(float* s, uint64_t h) {
  for (int i = 0; i < 4; ++i) s[i] = float((h >> (16 * i)) & 0xffff);
}

struct FakeRecurrentModel {
  int64_t tokens_computed = 0;
  Status forward(const Batch& b, KvCache& cache, std::vector<float>& logits) {
    const KvShape& shape = cache.shape();
    // The recurrent state continues: as Model::check_batch.
    for (int64_t i = 0; i < b.size(); ++i) {
      int64_t expect = cache.state_pos(b.seq[i]);
      for (int64_t j = i - 1; j >= 0; --j)
        if (b.seq[j] == b.seq[i]) {
          expect = b.pos[j] + 1;
          break;
        }
      if (b.pos[i] != expect)
        return make_error("position {} of sequence {}: the recurrent state continues at {}", b.pos[i], b.seq[i],
                          expect);
    }
    tokens_computed += b.size();
    logits.assign(size_t(b.n_logits() * kVocab), 0.0f);
    std::vector<KvSpan> spans(size_t(cache.max_spans()));
    size_t row = 0;
    for (int64_t i = 0; i < b.size(); ++i) {
      uint64_t h = 0;
      for (int64_t l = 0; l < shape.n_layer; ++l) {
        if (shape.state(l) > 0) {
          float* s = cache.state(l, b.seq[i]);
          h = fnv(read_state(s), b.tokens[i]);
          write_state(s, h);
          cache.state_advanced(l, b.seq[i], b.pos[i] + 1);
        } else {
          if (!cache.holds(b.seq[i], b.pos[i])) return make_error("no block for position {}", b.pos[i]);
          const float k[2] = {float(b.tokens[i]), float(b.pos[i])}, v[2] = {0.0f, 0.0f};
          cache.store(l, b.seq[i], b.pos[i], k, v);
        }
      }
      // The attention layer's history must be the one the state has consumed.
      for (int64_t l = 0; l < shape.n_layer; ++l) {
        if (!shape.kind(l).keeps_kv()) continue;
        uint64_t ha = kFnvBasis;
        const int n = cache.spans(l, b.seq[i], b.pos[i], spans.data());
        for (int r = 0; r < n; ++r)
          for (int64_t j = 0; j < spans[r].n; ++j) {
            const float* kr = static_cast<const float*>(spans[r].k) + j * shape.kv_dim;
            if (int64_t(kr[1]) != spans[r].first_pos + j)
              return make_error("row for position {} holds position {}", spans[r].first_pos + j, kr[1]);
            ha = fnv(ha, TokenId(kr[0]));
          }
        if (ha != h) return make_error("sequence {} position {}: K/V and state disagree", b.seq[i], b.pos[i]);
      }
      if (!b.want_logits[i]) continue;
      logits[row * kVocab + size_t(token_of(h))] = 10.0f;
      ++row;
    }
    return Status::Ok();
  }
};

// Proposes the true continuation with every third position (by a hash) wrong: drafts are
// accepted in part and rejected at every length.
struct RuleDrafter : Drafter {
  std::string_view name() const override { return "rule"; }
  Status propose(const DraftRequest& req, DraftGoOn go_on, Draft& out) override {
    out.clear();
    if (req.n_cached + 1 != int64_t(req.tokens.size()))
      return make_error("{} tokens cached of {}: drafting before the recompute", req.n_cached, req.tokens.size());
    std::vector<TokenId> t(req.tokens.begin(), req.tokens.end());
    for (int32_t j = 1; j <= req.max; ++j) {
      TokenId next = reference(t, 1)[0];
      if ((t.size() * 7 + size_t(j) * 13) % 3 == 0) next = TokenId(1 + next % (kVocab - 2));
      if (!go_on(j, -1.0f)) break;
      out.tokens.push_back(next);
      t.push_back(next);
    }
    return Status::Ok();
  }
};

struct Harness {
  FakeRecurrentModel model;
  std::unique_ptr<Scheduler> sched;

  // hybrid: layer 0 state-space, layer 1 global attention; else two state-space layers.
  Harness(bool hybrid, int32_t slots, int64_t n_ctx, int64_t n_blocks, int32_t draft_max = 0,
          int64_t step_tokens = 64) {
    KvShape kv{2, n_ctx, slots, 2, KvType::F32, {AttnKind::none(), hybrid ? AttnKind::global() : AttnKind::none()},
               512, 16, n_blocks, draft_max};
    kv.state_floats = {4, hybrid ? 0 : 4};
    SchedulerConfig cfg;
    cfg.n_slots = slots;
    cfg.step_tokens = step_tokens;
    Scheduler::MakeDrafter make;
    if (draft_max > 0) {
      cfg.spec.kind = SpecKind::Draft;
      cfg.spec.draft_model = "rule";
      cfg.spec.draft.policy = DraftPolicyKind::Fixed;
      cfg.spec.draft.max = draft_max;
      make = [](KvCache&) -> Result<std::unique_ptr<Drafter>> { return std::unique_ptr<Drafter>(new RuleDrafter()); };
    }
    TokenText text{[](TokenId t) { return std::string(1, char('a' + t % 26)); },
                   [](TokenId t) { return t == kEog; }};
    auto s = Scheduler::create(
        cfg, kv, kVocab, [this](const Batch& b, KvCache& c, std::vector<float>& l) { return model.forward(b, c, l); },
        text, make);
    EXPECT_TRUE(s.ok()) << (s.ok() ? "" : s.error().message);
    sched = std::move(*s);
  }
};

GenRequest greedy(std::vector<TokenId> prompt, int64_t max_tokens, int32_t n = 1) {
  GenRequest r;
  r.prompt = std::move(prompt);
  r.max_tokens = max_tokens;
  r.sampling.temperature = 0.0f;
  r.n = n;
  return r;
}

struct Collected {
  std::map<int32_t, std::vector<TokenId>> tokens;
  std::map<int32_t, FinishReason> finish;
  bool done = false;
};

void drain(const std::shared_ptr<RequestStream>& s, Collected& c) {
  std::vector<RequestStream::Event> ev;
  c.done = s->wait(ev, std::chrono::milliseconds(0));
  for (auto& e : ev) {
    if (e.end) c.finish[e.choice] = e.finish;
    else c.tokens[e.choice].push_back(e.token);
  }
}

std::vector<TokenId> random_tokens(std::mt19937& rng, size_t n) {
  std::vector<TokenId> t(n);
  for (auto& x : t) x = TokenId(1 + rng() % (kVocab - 1));
  return t;
}

struct Workload {
  std::vector<std::vector<TokenId>> prompts;
  std::vector<int64_t> max_tokens;
  std::vector<int32_t> n;
};

// Submits every request at once, steps until all are done, checks each choice against the
// reference; returns the scheduler's stats.
SchedulerStats run_and_check(Harness& h, const Workload& run) {
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (size_t i = 0; i < run.prompts.size(); ++i) {
    auto sub = h.sched->submit(greedy(run.prompts[i], run.max_tokens[i], run.n[i]));
    EXPECT_EQ(sub.code, Scheduler::Submitted::Code::Ok) << sub.message;
    streams.push_back(sub.stream);
  }
  std::vector<Collected> got(streams.size());
  for (int i = 0; i < 100000 && h.sched->step(); ++i)
    for (size_t r = 0; r < streams.size(); ++r) drain(streams[r], got[r]);
  for (size_t r = 0; r < streams.size(); ++r) {
    drain(streams[r], got[r]);
    EXPECT_TRUE(got[r].done) << "request " << r;
    for (int32_t c = 0; c < run.n[r]; ++c) {
      EXPECT_EQ(got[r].tokens[c], reference(run.prompts[r], run.max_tokens[r])) << "request " << r << " choice " << c;
      EXPECT_EQ(got[r].finish[c], FinishReason::Length) << "request " << r << " choice " << c;
    }
  }
  const SchedulerStats st = h.sched->stats();
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.blocks_used, 0);
  return st;
}

Workload concurrent_run(uint32_t seed, int requests) {
  std::mt19937 rng(seed);
  Workload run;
  for (int i = 0; i < requests; ++i) {
    run.prompts.push_back(random_tokens(rng, 5 + rng() % 40));
    run.max_tokens.push_back(10 + int64_t(rng() % 30));
    run.n.push_back(1);
  }
  return run;
}

class SchedulerRecurrent : public ::testing::TestWithParam<bool> {};

TEST_P(SchedulerRecurrent, ConcurrentRequestsMatchTheReference) {
  Harness h(GetParam(), 4, 128, 64);
  const SchedulerStats st = run_and_check(h, concurrent_run(1, 10));
  EXPECT_LT(st.steps, 200) << "requests were not batched together";
}

TEST_P(SchedulerRecurrent, RejectedDraftsGoBackToTheCheckpointAndRecompute) {
  const int32_t draft_max = 4;
  Harness h(GetParam(), 4, 128, 64, draft_max);
  const Workload run = concurrent_run(2, 8);
  const SchedulerStats st = run_and_check(h, run);
  EXPECT_GT(st.spec.accepted, 20);
  EXPECT_GT(st.spec.drafted - st.spec.accepted, 20) << "drafts were never rejected";
  // A rejection recomputes only the step's pending token and accepted drafts (from the checkpoint
  // taken before the step), in a step that yields the next token: at most (3 + draft_max) / 2
  // tokens computed per generated token. Recomputing each sequence from its start takes over
  // twice that here.
  int64_t bound = 0;
  for (size_t i = 0; i < run.prompts.size(); ++i)
    bound += int64_t(run.prompts[i].size()) + (3 + draft_max) * run.max_tokens[i] / 2;
  EXPECT_LE(h.model.tokens_computed, bound);
}

TEST_P(SchedulerRecurrent, DraftsInSmallStepsMatchTheReference) {
  // A step budget of 3 tokens: drafts are cut to fit and recomputes span several steps.
  Harness h(GetParam(), 3, 96, 32, 4, 3);
  run_and_check(h, concurrent_run(3, 6));
}

TEST_P(SchedulerRecurrent, PreemptionRecomputesFromAZeroedState) {
  // 8 blocks of 16 = 128 positions for 3 sequences that each grow to about 100.
  for (int32_t draft_max : {0, 3}) {
    Harness h(GetParam(), 3, 128, 8, draft_max);
    std::mt19937 rng(4);
    Workload run;
    for (int i = 0; i < 3; ++i) {
      run.prompts.push_back(random_tokens(rng, 20 + 5 * size_t(i)));
      run.max_tokens.push_back(70);
      run.n.push_back(1);
    }
    EXPECT_GT(run_and_check(h, run).preemptions, 0) << "draft_max " << draft_max;
  }
}

TEST_P(SchedulerRecurrent, ChoicesForkTheState) {
  for (int32_t draft_max : {0, 3}) {
    Harness h(GetParam(), 4, 128, 32, draft_max);
    std::mt19937 rng(5);
    Workload run{{random_tokens(rng, 37), random_tokens(rng, 9)}, {20, 15}, {3, 1}};
    run_and_check(h, run);
    if (draft_max == 0) {
      EXPECT_EQ(h.model.tokens_computed, 37 + 3 * 19 + 9 + 14);
    }
  }
}

TEST_P(SchedulerRecurrent, NoPrefixCacheAndSaltsAreHarmless) {
  Harness h(GetParam(), 2, 256, 48);
  std::mt19937 rng(6);
  const auto prompt = random_tokens(rng, 100);  // six whole blocks: a prefix-cache candidate
  for (uint64_t salt : {0, 0, 7, 7}) {
    GenRequest r = greedy(prompt, 5, salt == 7 ? 2 : 1);
    r.cache_salt = salt;
    r.tenant = salt == 7 ? "b" : "a";
    auto s = h.sched->submit(r).stream;
    for (int i = 0; i < 10000 && h.sched->step(); ++i) {
    }
    Collected c;
    drain(s, c);
    ASSERT_TRUE(c.done);
    for (int32_t k = 0; k < r.n; ++k) EXPECT_EQ(c.tokens[k], reference(prompt, 5));
    EXPECT_EQ(s->cached_tokens(), 0);
  }
  const SchedulerStats st = h.sched->stats();
  EXPECT_EQ(st.prefix_hit_tokens, 0);
  EXPECT_EQ(h.model.tokens_computed, 4 * (100 + 4) + 2 * 4);
}

INSTANTIATE_TEST_SUITE_P(Kinds, SchedulerRecurrent, ::testing::Values(false, true),
                         [](const auto& p) { return p.param ? "Hybrid" : "StateOnly"; });

}  // namespace
}  // namespace peregrine
