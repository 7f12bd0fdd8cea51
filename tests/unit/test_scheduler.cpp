// Scheduler tests without a model: a stand-in forward pass writes each token's K/V into the
// paged cache and derives the next token from the whole history it reads back through the
// cache's spans, block by block. A wrong block table, a missing copy-on-write, a prefix hit
// on the wrong blocks or a recompute that differs would change what it reads and so the
// tokens generated; the expected tokens come from running the same rule on plain vectors.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/scheduler.h"

namespace peregrine {
namespace {

constexpr int64_t kVocab = 50;
constexpr TokenId kEog = 0;

// The rule: next token from the history (never end-of-generation).
TokenId next_token(const std::vector<TokenId>& history) {
  uint64_t h = 1469598103934665603ull;
  for (TokenId t : history) h = (h ^ uint64_t(t)) * 1099511628211ull;
  return TokenId(1 + h % (kVocab - 1));
}

std::vector<TokenId> reference(std::vector<TokenId> tokens, int64_t n_new) {
  std::vector<TokenId> out;
  for (int64_t i = 0; i < n_new; ++i) {
    tokens.push_back(next_token(tokens));
    out.push_back(tokens.back());
  }
  return out;
}

struct FakeModel {
  int64_t forwards = 0;
  int64_t tokens_computed = 0;
  int64_t fail_at = 0;  // > 0: that forward pass (1-based) fails before writing any KV
  Status forward(const Batch& b, KvCache& cache, std::vector<float>& logits) {
    ++forwards;
    if (forwards == fail_at) return make_error("forward pass {} failed", forwards);
    tokens_computed += b.size();
    for (int64_t i = 0; i < b.size(); ++i) {
      if (!cache.holds(b.seq[i], b.pos[i])) return make_error("no block for position {}", b.pos[i]);
      const float k[2] = {float(b.tokens[i]), float(b.pos[i])}, v[2] = {float(b.tokens[i]), 0.0f};
      for (int64_t l = 0; l < cache.shape().n_layer; ++l) cache.store(l, b.seq[i], b.pos[i], k, v);
    }
    logits.assign(size_t(b.n_logits() * kVocab), 0.0f);
    std::vector<KvSpan> spans(size_t(cache.max_spans()));
    size_t row = 0;
    for (int64_t i = 0; i < b.size(); ++i) {
      if (!b.want_logits[i]) continue;
      std::vector<TokenId> history;
      const int n = cache.spans(cache.shape().n_layer - 1, b.seq[i], b.pos[i], spans.data());
      for (int r = 0; r < n; ++r)
        for (int64_t j = 0; j < spans[r].n; ++j) {
          const float* kr = static_cast<const float*>(spans[r].k) + j * cache.shape().kv_dim;
          if (int64_t(kr[1]) != spans[r].first_pos + j)
            return make_error("row for position {} holds position {}", spans[r].first_pos + j, kr[1]);
          history.push_back(TokenId(kr[0]));
        }
      logits[row * kVocab + size_t(next_token(history))] = 10.0f;
      ++row;
    }
    return Status::Ok();
  }
};

// A drafter that knows the rule: it proposes the true continuation, except that every draft
// position whose (length, index) hash is 0 mod 3 gets a wrong token, so drafts are accepted in
// part, cut back, and rewound at every length.
struct RuleDrafter : Drafter {
  int64_t proposals = 0;
  std::string_view name() const override { return "rule"; }
  Status propose(const DraftRequest& req, DraftGoOn go_on, Draft& out) override {
    out.clear();
    if (req.n_cached + 1 != int64_t(req.tokens.size()))
      return make_error("{} tokens cached of {}: the pending token should be the only one", req.n_cached,
                        req.tokens.size());
    ++proposals;
    std::vector<TokenId> t(req.tokens.begin(), req.tokens.end());
    for (int32_t j = 1; j <= req.max; ++j) {
      TokenId next = next_token(t);
      if ((t.size() * 7 + size_t(j) * 13) % 3 == 0) next = TokenId(1 + next % (kVocab - 2));  // wrong
      if (!go_on(j, -1.0f)) break;
      out.tokens.push_back(next);
      t.push_back(next);
    }
    return Status::Ok();
  }
};

struct Harness {
  FakeModel model;
  std::unique_ptr<Scheduler> sched;
  RuleDrafter* drafter = nullptr;

  Harness(int32_t slots, int64_t n_ctx, int64_t n_blocks, int64_t step_tokens = 64,
          int32_t max_requests = 64, int32_t draft_max = 0, int32_t max_passes = 8) {
    KvShape kv{2, n_ctx, slots, 2, KvType::F32, {}, 512, 16, n_blocks, draft_max};
    SchedulerConfig cfg;
    cfg.n_slots = slots;
    cfg.step_tokens = step_tokens;
    cfg.max_requests = max_requests;
    cfg.max_passes = max_passes;
    Scheduler::MakeDrafter make;
    if (draft_max > 0) {
      cfg.spec.kind = SpecKind::Draft;
      cfg.spec.draft_model = "rule";
      cfg.spec.draft.policy = DraftPolicyKind::Fixed;
      cfg.spec.draft.max = draft_max;
      make = [this](KvCache&) -> Result<std::unique_ptr<Drafter>> {
        auto d = std::make_unique<RuleDrafter>();
        drafter = d.get();
        return std::unique_ptr<Drafter>(std::move(d));
      };
    }
    TokenText text{[](TokenId t) { return std::string(1, char('a' + t % 26)); },
                   [](TokenId t) { return t == kEog; }};
    auto s = Scheduler::create(
        cfg, kv, kVocab,
        [this](const Batch& b, KvCache& c, std::vector<float>& l) { return model.forward(b, c, l); },
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

GenRequest from(std::string tenant, GenRequest r) {
  r.tenant = std::move(tenant);
  return r;
}

struct Collected {
  std::map<int32_t, std::vector<TokenId>> tokens;
  std::map<int32_t, std::string> text;
  std::map<int32_t, FinishReason> finish;
  bool done = false;
};

void drain(const std::shared_ptr<RequestStream>& s, Collected& c) {
  std::vector<RequestStream::Event> ev;
  c.done = s->wait(ev, std::chrono::milliseconds(0));
  for (auto& e : ev) {
    c.text[e.choice] += e.text;
    if (e.end) {
      EXPECT_FALSE(c.finish.count(e.choice)) << "choice ended twice";
      c.finish[e.choice] = e.finish;
    } else {
      EXPECT_FALSE(c.finish.count(e.choice)) << "token after the end";
      c.tokens[e.choice].push_back(e.token);
    }
  }
}

void run_all(Scheduler& s, int max_steps = 100000) {
  for (int i = 0; i < max_steps && s.step(); ++i) {
  }
}

std::vector<TokenId> random_tokens(std::mt19937& rng, size_t n) {
  std::vector<TokenId> t(n);
  for (auto& x : t) x = TokenId(1 + rng() % (kVocab - 1));
  return t;
}

TEST(Scheduler, ConcurrentRequestsMatchTheReference) {
  Harness h(4, 128, 64);
  std::mt19937 rng(1);
  const std::vector<TokenId> system = random_tokens(rng, 40);  // shared by half the prompts
  std::vector<std::vector<TokenId>> prompts;
  std::vector<std::shared_ptr<RequestStream>> streams;
  std::vector<int64_t> lengths;
  for (int i = 0; i < 12; ++i) {
    std::vector<TokenId> p = i % 2 ? system : std::vector<TokenId>{};
    auto tail = random_tokens(rng, 1 + rng() % 50);
    p.insert(p.end(), tail.begin(), tail.end());
    prompts.push_back(p);
    lengths.push_back(1 + rng() % 30);
    auto sub = h.sched->submit(greedy(p, lengths.back()));
    ASSERT_EQ(sub.code, Scheduler::Submitted::Code::Ok) << sub.message;
    streams.push_back(sub.stream);
  }
  std::vector<Collected> got(streams.size());
  for (int i = 0; i < 100000 && h.sched->step(); ++i)
    for (size_t r = 0; r < streams.size(); ++r) drain(streams[r], got[r]);
  for (size_t r = 0; r < streams.size(); ++r) {
    drain(streams[r], got[r]);
    EXPECT_TRUE(got[r].done);
    EXPECT_EQ(got[r].tokens[0], reference(prompts[r], lengths[r])) << "request " << r;
    EXPECT_EQ(got[r].finish[0], FinishReason::Length);
  }
  const SchedulerStats st = h.sched->stats();
  EXPECT_EQ(st.running, 0);
  EXPECT_EQ(st.blocks_used, 0);
  EXPECT_GT(st.prefix_hit_tokens, 0) << "the shared system prompt was never reused";
  EXPECT_LT(st.steps, 200) << "requests were not batched together";
}

TEST(Scheduler, PreemptsTheYoungestWhenBlocksRunOutAndStillMatches) {
  // 8 blocks of 16 = 128 positions for 3 sequences that each grow to 100.
  Harness h(3, 128, 8);
  std::mt19937 rng(2);
  std::vector<std::vector<TokenId>> prompts;
  std::vector<std::shared_ptr<RequestStream>> streams;
  for (int i = 0; i < 3; ++i) {
    prompts.push_back(random_tokens(rng, 20 + 5 * i));
    streams.push_back(h.sched->submit(greedy(prompts.back(), 70)).stream);
  }
  std::vector<Collected> got(3);
  int first_done = -1;
  for (int i = 0; i < 100000 && h.sched->step(); ++i)
    for (int r = 0; r < 3; ++r) {
      drain(streams[size_t(r)], got[size_t(r)]);
      if (got[size_t(r)].done && first_done < 0) first_done = r;
    }
  EXPECT_GT(h.sched->stats().preemptions, 0);
  EXPECT_EQ(first_done, 0) << "the oldest request should never be the one preempted";
  for (int r = 0; r < 3; ++r) {
    drain(streams[size_t(r)], got[size_t(r)]);
    EXPECT_EQ(got[size_t(r)].tokens[0], reference(prompts[size_t(r)], 70)) << "request " << r;
  }
  EXPECT_EQ(h.sched->stats().blocks_used, 0);
}

TEST(Scheduler, SharedPrefixIsComputedOnce) {
  Harness h(2, 256, 32);
  std::mt19937 rng(3);
  const std::vector<TokenId> prefix = random_tokens(rng, 100);
  auto a = prefix, b = prefix;
  a.push_back(7);
  b.push_back(9);
  b.push_back(11);
  auto sa = h.sched->submit(greedy(a, 5)).stream;
  run_all(*h.sched);
  const int64_t computed_a = h.model.tokens_computed;
  auto sb = h.sched->submit(greedy(b, 5)).stream;
  run_all(*h.sched);
  Collected ca, cb;
  drain(sa, ca);
  drain(sb, cb);
  EXPECT_EQ(ca.tokens[0], reference(a, 5));
  EXPECT_EQ(cb.tokens[0], reference(b, 5));
  EXPECT_EQ(sb->cached_tokens(), 96);  // six whole blocks of 16
  EXPECT_EQ(h.model.tokens_computed - computed_a, int64_t(b.size()) - 96 + 4);
  EXPECT_EQ(h.sched->stats().prefix_hit_tokens, 96);
}

// A forward pass that fails writes no KV: its blocks must not enter the prefix cache, or a later
// request with the same prompt would take their garbage KV instead of computing it.
TEST(Scheduler, FailedForwardPassCachesNoBlocks) {
  Harness h(2, 128, 32);
  std::mt19937 rng(7);
  const auto prompt = random_tokens(rng, 40);  // two full blocks of 16 and a partial one
  h.model.fail_at = 1;
  auto a = h.sched->submit(greedy(prompt, 5)).stream;
  run_all(*h.sched);
  Collected ca;
  drain(a, ca);
  ASSERT_TRUE(ca.done);
  EXPECT_EQ(ca.finish[0], FinishReason::Error);
  EXPECT_EQ(h.sched->stats().blocks_cached, 0) << "blocks of the failed pass were cached";
  EXPECT_EQ(h.sched->stats().blocks_used, 0);
  const int64_t computed = h.model.tokens_computed;
  auto b = h.sched->submit(greedy(prompt, 5)).stream;
  run_all(*h.sched);
  Collected cb;
  drain(b, cb);
  ASSERT_TRUE(cb.done);
  EXPECT_EQ(cb.finish[0], FinishReason::Length);
  EXPECT_EQ(cb.tokens[0], reference(prompt, 5));
  EXPECT_EQ(b->cached_tokens(), 0);
  EXPECT_EQ(h.model.tokens_computed - computed, int64_t(prompt.size()) + 4) << "the prompt was not computed";
  // Its own blocks, written by a pass that succeeded, are cached for the next request.
  auto c = h.sched->submit(greedy(prompt, 5)).stream;
  run_all(*h.sched);
  Collected cc;
  drain(c, cc);
  EXPECT_EQ(cc.tokens[0], reference(prompt, 5));
  EXPECT_EQ(c->cached_tokens(), 32);
}

TEST(Scheduler, ChoicesShareThePromptAndCopyOnWrite) {
  Harness h(4, 128, 32);
  std::mt19937 rng(4);
  const auto prompt = random_tokens(rng, 37);  // ends inside a block: the choices share it
  auto s = h.sched->submit(greedy(prompt, 20, 3)).stream;
  Collected c;
  for (int i = 0; i < 1000 && h.sched->step(); ++i) drain(s, c);
  drain(s, c);
  ASSERT_TRUE(c.done);
  for (int k = 0; k < 3; ++k) EXPECT_EQ(c.tokens[k], reference(prompt, 20)) << "choice " << k;
  // The prompt ran once, then three decode streams of 19 tokens.
  EXPECT_EQ(h.model.tokens_computed, int64_t(prompt.size()) + 3 * 19);
  EXPECT_EQ(h.sched->stats().blocks_used, 0);
}

TEST(Scheduler, SeededSamplingDiffersPerChoiceAndRepeats) {
  auto run = [](uint64_t seed) {
    Harness h(3, 64, 16);
    GenRequest r = greedy({1, 2, 3}, 12, 3);
    r.sampling.temperature = 50.0f;  // near uniform over the one-hot logits
    r.sampling.top_k = 0;
    r.sampling.top_p = 1.0f;
    r.sampling.min_p = 0.0f;
    r.sampling.seed = seed;
    auto s = h.sched->submit(r).stream;
    run_all(*h.sched);
    Collected c;
    drain(s, c);
    return c.tokens;
  };
  auto a = run(5), b = run(5);
  EXPECT_EQ(a, b);
  EXPECT_NE(a[0], a[1]);
  EXPECT_NE(a[1], a[2]);
}

TEST(Scheduler, StopsAtStopStringsEndOfGenerationAndTheContext) {
  Harness h(2, 40, 16);
  const std::vector<TokenId> prompt = {3, 1, 4, 1, 5};
  const auto ref = reference(prompt, 10);
  std::string ref_text;
  for (TokenId t : ref) ref_text += char('a' + t % 26);
  GenRequest r = greedy(prompt, 10);
  r.stop = {ref_text.substr(4, 2)};
  auto s = h.sched->submit(r).stream;
  // Runs until the context is full (40 positions: 35 new tokens).
  auto full = h.sched->submit(greedy(prompt, -1)).stream;
  run_all(*h.sched);
  Collected c, f;
  drain(s, c);
  drain(full, f);
  EXPECT_EQ(c.finish[0], FinishReason::Stop);
  EXPECT_EQ(c.text[0], ref_text.substr(0, ref_text.find(r.stop[0])));
  EXPECT_EQ(f.finish[0], FinishReason::Length);
  EXPECT_EQ(f.tokens[0].size(), 40u - prompt.size() + 1);
}

TEST(Scheduler, CancelFreesBlocksAtTheNextStep) {
  Harness h(2, 128, 16);
  auto s = h.sched->submit(greedy(std::vector<TokenId>(50, 3), 60)).stream;
  for (int i = 0; i < 5; ++i) h.sched->step();
  EXPECT_GT(h.sched->stats().blocks_used, 0);
  s->cancel();
  h.sched->step();
  EXPECT_EQ(h.sched->stats().blocks_used, 0);
  EXPECT_EQ(h.sched->stats().running, 0);
  Collected c;
  drain(s, c);
  EXPECT_TRUE(c.done);
  EXPECT_EQ(c.finish[0], FinishReason::Cancelled);
}

TEST(Scheduler, CancelWhileTheFirstChoiceIsPreemptedBeforeItsPrompt) {
  // A (older) fills the pool while B's first choice is still reading its prompt: B's choice 0
  // is preempted with choice 1 still waiting for it; then B is cancelled.
  Harness h(3, 128, 8, 16);
  std::mt19937 rng(6);
  const auto pa = random_tokens(rng, 60), pb = random_tokens(rng, 100);
  auto a = h.sched->submit(greedy(pa, 60)).stream;
  auto b = h.sched->submit(greedy(pb, 5, 2)).stream;
  for (int i = 0; i < 1000 && h.sched->stats().preemptions == 0; ++i) h.sched->step();
  ASSERT_GT(h.sched->stats().preemptions, 0);
  b->cancel();
  run_all(*h.sched);
  Collected ca, cb;
  drain(a, ca);
  drain(b, cb);
  EXPECT_EQ(ca.tokens[0], reference(pa, 60));
  EXPECT_TRUE(cb.done);
  EXPECT_EQ(cb.finish[0], FinishReason::Cancelled);
  EXPECT_EQ(cb.finish[1], FinishReason::Cancelled);
  EXPECT_EQ(h.sched->stats().blocks_used, 0);
  EXPECT_EQ(h.sched->stats().running, 0);
}

// Random arrivals, pool sizes, step budgets, n, lengths and cancellations: every request that
// is not cancelled gets exactly the reference tokens, every stream ends once, and the pool is
// empty at the end.
// Random workloads (prompts sharing prefixes, n > 1, cancels, tight block pools, small step
// budgets); draft_max > 0 adds drafts, partly wrong, verified in the same steps.
// tenants > 1: request i is tenant i % tenants's, with that tenant's cache salt (fair admission
// passing requests that do not fit; prefixes shared only within a tenant).
void randomized_workloads(uint32_t seed, int32_t draft_max, int tenants = 1) {
  std::mt19937 rng(seed);
  int64_t preemptions = 0, hits = 0, cancels = 0, drafted = 0, accepted = 0;
  for (int round = 0; round < 24; ++round) {
    const int32_t slots = 1 + int32_t(rng() % 5);
    const int64_t n_ctx = 64 + 16 * int64_t(rng() % 5);
    const int64_t n_blocks = n_ctx / 16 + int64_t(rng() % 12);
    const int64_t budget = 1 + int64_t(rng() % 40);
    Harness h(slots, n_ctx, n_blocks, budget, 64, draft_max);
    const std::vector<TokenId> shared = random_tokens(rng, 40);
    struct Req {
      std::vector<TokenId> prompt;
      int64_t max_tokens;
      int32_t n;
      std::shared_ptr<RequestStream> stream;
      Collected got;
      bool cancelled = false;
    };
    std::vector<Req> reqs;
    for (int step = 0; step < 4000; ++step) {
      if (reqs.size() < 14 && rng() % 4 == 0) {
        Req r;
        r.prompt = rng() % 2 ? std::vector<TokenId>(shared.begin(), shared.begin() + 1 + rng() % 40)
                             : std::vector<TokenId>{};
        auto tail = random_tokens(rng, 1 + rng() % 20);
        r.prompt.insert(r.prompt.end(), tail.begin(), tail.end());
        r.max_tokens = 1 + int64_t(rng() % 40);
        r.n = 1 + int32_t(rng() % std::min<uint32_t>(3, uint32_t(slots)));
        GenRequest g = greedy(r.prompt, r.max_tokens, r.n);
        if (tenants > 1) {
          g.tenant = std::to_string(reqs.size() % size_t(tenants));
          g.cache_salt = reqs.size() % size_t(tenants);
        }
        auto sub = h.sched->submit(std::move(g));
        ASSERT_EQ(sub.code, Scheduler::Submitted::Code::Ok) << sub.message;
        r.stream = sub.stream;
        reqs.push_back(std::move(r));
      }
      if (!reqs.empty() && rng() % 40 == 0) {
        Req& r = reqs[rng() % reqs.size()];
        r.stream->cancel();
        r.cancelled = true;
      }
      h.sched->step();
      for (Req& r : reqs) drain(r.stream, r.got);
      if (reqs.size() >= 14 && std::all_of(reqs.begin(), reqs.end(), [](const Req& r) { return r.got.done; })) break;
    }
    run_all(*h.sched);
    for (size_t i = 0; i < reqs.size(); ++i) {
      Req& r = reqs[i];
      drain(r.stream, r.got);
      ASSERT_TRUE(r.got.done) << "round " << round << " request " << i;
      ASSERT_EQ(int32_t(r.got.finish.size()), r.n);
      if (r.cancelled) continue;
      const int64_t room = n_ctx - int64_t(r.prompt.size()) + 1;  // the context bounds the output
      const auto want = reference(r.prompt, std::min(r.max_tokens, room));
      for (int32_t c = 0; c < r.n; ++c) {
        EXPECT_EQ(r.got.tokens[c], want) << "round " << round << " request " << i << " choice " << c;
        EXPECT_EQ(r.got.finish[c], FinishReason::Length);
      }
    }
    const SchedulerStats st = h.sched->stats();
    EXPECT_EQ(st.blocks_used, 0) << "round " << round;
    EXPECT_EQ(st.running, 0);
    EXPECT_EQ(st.waiting, 0);
    preemptions += st.preemptions;
    hits += st.prefix_hit_tokens;
    cancels += std::count_if(reqs.begin(), reqs.end(), [](const Req& r) { return r.cancelled; });
    drafted += st.spec.drafted;
    accepted += st.spec.accepted;
  }
  // The workloads did exercise what they are for.
  EXPECT_GT(preemptions, 10);
  EXPECT_GT(hits, 0);
  EXPECT_GT(cancels, 5);
  if (draft_max > 0) {
    EXPECT_GT(accepted, 100);
    EXPECT_GT(drafted - accepted, 100) << "drafts were never rejected";
  }
}

TEST(Scheduler, RandomizedWorkloadsMatchTheReference) { randomized_workloads(99, 0); }

TEST(Scheduler, RandomizedWorkloadsWithDraftsMatchTheReference) {
  // Verification steps of 1 + up to 4 tokens, cut back to what is accepted: the output must be
  // the reference's whatever the drafts were.
  randomized_workloads(99, 4);
  randomized_workloads(7, 2);
}

TEST(Scheduler, RandomizedWorkloadsWithTenantsMatchTheReference) {
  randomized_workloads(99, 0, 3);
  randomized_workloads(5, 2, 2);
}

// Requests of different cache salts never share prefix blocks; equal salts share as before,
// and the choices of n > 1 keep their request's salt.
TEST(Scheduler, CacheSaltsKeepPrefixesApart) {
  Harness h(2, 256, 48);
  std::mt19937 rng(8);
  const auto prompt = random_tokens(rng, 100);  // six whole blocks of 16 and a partial one
  auto run = [&](uint64_t salt, int32_t n = 1) {
    GenRequest r = greedy(prompt, 5, n);
    r.cache_salt = salt;
    auto s = h.sched->submit(r).stream;
    run_all(*h.sched);
    Collected c;
    drain(s, c);
    EXPECT_TRUE(c.done);
    for (int32_t k = 0; k < n; ++k) EXPECT_EQ(c.tokens[k], reference(prompt, 5)) << "salt " << salt;
    return s->cached_tokens();
  };
  EXPECT_EQ(run(1), 0);
  EXPECT_EQ(run(2, 2), 0) << "another salt's prefix was found";
  EXPECT_EQ(run(0), 0) << "a salted prefix was found without a salt";
  EXPECT_EQ(run(1), 96);
  EXPECT_EQ(run(2), 96) << "the choices of n = 2 cached under another salt";
  EXPECT_EQ(run(0), 96);
  EXPECT_EQ(h.sched->stats().blocks_used, 0);
}

// Steps a scheduler and notes, for each stream it is given, the step that brought its first
// token (the step that admitted it, for prompts that fit in one step's budget).
struct FirstTokens {
  Scheduler& sched;
  std::vector<std::shared_ptr<RequestStream>> streams;
  std::vector<Collected> got;
  std::vector<int> first;  // per stream: 1-based step, -1 before its first token
  int steps = 0;

  size_t add(std::shared_ptr<RequestStream> s) {
    EXPECT_NE(s, nullptr);
    streams.push_back(std::move(s));
    got.emplace_back();
    first.push_back(-1);
    return streams.size() - 1;
  }
  bool step() {
    const bool busy = sched.step();
    ++steps;
    for (size_t r = 0; r < streams.size(); ++r) {
      drain(streams[r], got[r]);
      if (first[r] < 0 && !got[r].tokens.empty()) first[r] = steps;
    }
    return busy;
  }
  void run() {
    for (int i = 0; i < 100000 && step(); ++i) {
    }
    for (size_t r = 0; r < streams.size(); ++r) EXPECT_TRUE(got[r].done) << "request " << r;
  }
};

// Tenant a queues six requests on two slots, then tenant b one: b's runs as soon as a slot is
// free to a tenant with fewer running sequences, not after all of a's. Labelled a, it waits
// for all of them (arrival order, as with one tenant).
TEST(Scheduler, AdmitsTheTenantWithFewestRunningFirst) {
  for (const bool own_tenant : {true, false}) {
    Harness h(2, 128, 32);
    FirstTokens ft{*h.sched};
    for (int i = 0; i < 6; ++i) ft.add(h.sched->submit(from("a", greedy({TokenId(1 + i), 2, 3}, 5))).stream);
    ft.add(h.sched->submit(from(own_tenant ? "b" : "a", greedy({9, 8, 7}, 5))).stream);
    ft.run();
    if (own_tenant) {
      EXPECT_EQ(ft.first[6], ft.first[0]) << "b has no running sequence: it goes next, beside a's first";
      EXPECT_LT(ft.first[6], ft.first[1]);
    } else {
      EXPECT_GT(ft.first[6], ft.first[5]);
    }
    for (int r = 0; r < 6; ++r) EXPECT_EQ(ft.got[size_t(r)].tokens[0], reference({TokenId(1 + r), 2, 3}, 5));
    EXPECT_EQ(ft.got[6].tokens[0], reference({9, 8, 7}, 5));
  }
  // a's requests already hold both slots when b's arrives: when they end, a's oldest waiting
  // request and b's share the slots (a tie at 0 running goes to the older), before a's others.
  for (const bool own_tenant : {true, false}) {
    Harness h(2, 128, 32);
    FirstTokens ft{*h.sched};
    for (int i = 0; i < 6; ++i) ft.add(h.sched->submit(from("a", greedy({TokenId(1 + i), 2, 3}, 5))).stream);
    ASSERT_TRUE(ft.step());
    ft.add(h.sched->submit(from(own_tenant ? "b" : "a", greedy({9, 8, 7}, 5))).stream);
    ft.run();
    EXPECT_EQ(ft.first[0], 1);
    EXPECT_EQ(ft.first[1], 1);
    if (own_tenant) {
      EXPECT_EQ(ft.first[6], ft.first[2]);
      EXPECT_LT(ft.first[6], ft.first[3]);
    } else {
      EXPECT_GT(ft.first[6], ft.first[5]);
    }
  }
}

// A request for every slot, behind a stream of small requests of another tenant: those pass it
// (they fit, it does not) at most max_passes times; then the slots drain and it runs.
TEST(Scheduler, ARequestThatDoesNotFitIsPassedAtMostMaxPasses) {
  for (const int32_t max_passes : {0, 3, 8, 1000}) {
    Harness h(4, 128, 64, 64, 64, 0, max_passes);
    FirstTokens ft{*h.sched};
    std::vector<std::vector<TokenId>> prompts;
    auto submit = [&](const std::string& tenant, int64_t max_tokens, int32_t n) {
      prompts.push_back({TokenId(1 + prompts.size() % 40), 5, 6});
      auto sub = h.sched->submit(from(tenant, greedy(prompts.back(), max_tokens, n)));
      EXPECT_EQ(sub.code, Scheduler::Submitted::Code::Ok) << sub.message;
      return ft.add(sub.stream);
    };
    for (int i = 0; i < 3; ++i) submit("small", 4 + 3 * i, 1);
    ASSERT_TRUE(ft.step());  // three slots taken, one free
    const size_t big = submit("big", 6, 4);
    for (int i = 0; i < 20; ++i) submit("small", 2 + i % 5, 1);
    ft.run();
    int passed = 0;
    for (size_t r = big + 1; r < ft.streams.size(); ++r) passed += ft.first[r] < ft.first[big];
    EXPECT_EQ(passed, std::min(max_passes, 20)) << "max_passes " << max_passes;
    for (int32_t k = 0; k < 4; ++k) EXPECT_EQ(ft.got[big].tokens[k], reference(prompts[big], 6)) << "choice " << k;
  }
// A request for more choices than there are slots could never fit: refused as before.
  Harness h(2, 32, 8);
  EXPECT_EQ(h.sched->submit(from("big", greedy({1}, 4, 3))).code, Scheduler::Submitted::Code::Invalid);
}

TEST(Scheduler, RejectsBadRequestsAndBoundsTheQueue) {
  Harness h(2, 32, 8, 64, 2);
  using Code = Scheduler::Submitted::Code;
  EXPECT_EQ(h.sched->submit(greedy({}, 4)).code, Code::Invalid);
  EXPECT_EQ(h.sched->submit(greedy({1, 99}, 4)).code, Code::Invalid);
  EXPECT_EQ(h.sched->submit(greedy({1, -1}, 4)).code, Code::Invalid);
  EXPECT_EQ(h.sched->submit(greedy(std::vector<TokenId>(32, 1), 4)).code, Code::Invalid);
  EXPECT_EQ(h.sched->submit(greedy({1}, 4, 3)).code, Code::Invalid);
  EXPECT_EQ(h.sched->submit(greedy({1}, 0)).code, Code::Invalid);
  EXPECT_EQ(h.sched->submit(greedy({1}, 4)).code, Code::Ok);
  EXPECT_EQ(h.sched->submit(greedy({1}, 4)).code, Code::Ok);
  auto over = h.sched->submit(greedy({1}, 4));
  EXPECT_EQ(over.code, Code::Overloaded);
  EXPECT_FALSE(over.message.empty());
  run_all(*h.sched);
  EXPECT_EQ(h.sched->submit(greedy({1}, 4)).code, Code::Ok);
}

TEST(Scheduler, ShutdownCancelsWhatIsLeft) {
  Harness h(2, 128, 16);
  auto s = h.sched->submit(greedy({1, 2, 3}, 100)).stream;
  h.sched->start();
  h.sched->shutdown(std::chrono::milliseconds(0));
  Collected c;
  drain(s, c);
  EXPECT_TRUE(c.done);
  EXPECT_EQ(h.sched->submit(greedy({1}, 4)).code, Scheduler::Submitted::Code::ShuttingDown);
}

TEST(Scheduler, BackgroundThreadServesClientThreads) {
  Harness h(4, 128, 32);
  h.sched->start();
  std::vector<std::thread> clients;
  std::vector<std::vector<TokenId>> prompts(8), got(8);
  std::vector<int> cancelled_done(8, 0);
  for (int i = 0; i < 8; ++i) {
    prompts[size_t(i)] = {TokenId(1 + i), 2, 3, TokenId(4 + i)};
    clients.emplace_back([&, i] {
      auto s = h.sched->submit(greedy(prompts[size_t(i)], 30)).stream;
      if (i == 7) s->cancel();  // one client leaves at once
      Collected c;
      while (!c.done) {
        std::vector<RequestStream::Event> ev;
        c.done = s->wait(ev, std::chrono::milliseconds(50));
        for (auto& e : ev)
          if (!e.end) c.tokens[0].push_back(e.token);
      }
      got[size_t(i)] = c.tokens[0];
    });
  }
  for (auto& t : clients) t.join();
  h.sched->shutdown(std::chrono::milliseconds(1000));
  for (int i = 0; i < 7; ++i) EXPECT_EQ(got[size_t(i)], reference(prompts[size_t(i)], 30)) << i;
  EXPECT_EQ(h.sched->stats().blocks_used, 0);
}

TEST(Scheduler, RefusesCachesItCannotRun) {
  TokenText text{[](TokenId) { return std::string(); }, [](TokenId) { return false; }};
  auto fwd = [](const Batch&, KvCache&, std::vector<float>&) { return Status::Ok(); };
  SchedulerConfig cfg;
  cfg.n_slots = 2;
  KvShape contiguous{2, 64, 2, 2, KvType::F32, {}, 512};
  EXPECT_FALSE(Scheduler::create(cfg, contiguous, kVocab, fwd, text).ok());
  KvShape small{2, 64, 2, 2, KvType::F32, {}, 512, 16, 3};  // 3 blocks < one 64-position context
  EXPECT_FALSE(Scheduler::create(cfg, small, kVocab, fwd, text).ok());
  KvShape slots{2, 64, 3, 2, KvType::F32, {}, 512, 16, 8};
  EXPECT_FALSE(Scheduler::create(cfg, slots, kVocab, fwd, text).ok());
  KvShape fine{2, 64, 2, 2, KvType::F32, {}, 512, 16, 8};
  cfg.max_passes = -1;
  EXPECT_FALSE(Scheduler::create(cfg, fine, kVocab, fwd, text).ok());
}

}  // namespace
}  // namespace peregrine
