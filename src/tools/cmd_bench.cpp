// peregrine bench: prompt-processing and generation throughput in the terms of
// llama.cpp's llama-bench (pp512: a 512-token prompt as one batch from an empty
// cache; tg128: 128 tokens generated one at a time), mean ± sd over repetitions.
// With -d N each test starts after N cached positions (llama-bench's -d: pp512 @ d4096 is
// a 512-token prompt after 4096 already in the cache, tg128 @ d4096 the generation there;
// filling the cache is not timed). With --spec also sg128: 128 tokens generated greedily from a real prompt, without and
// with speculative decoding in alternating runs, with the speedup and acceptance.
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

#include <nlohmann/json.hpp>

#include "engine/session.h"
#include "tokenizer/chat_template.h"
#include "kernels/kernels.h"
#include "tools/commands.h"
#include "tools/common.h"

namespace peregrine::tools {
namespace {

// The sg test's default prompt: a passage to copy with one change, so n-gram drafts have
// something to find (a user's own workload goes in --spec-prompt).
constexpr const char* kSpecBenchPrompt =
    "Copy the following notes, replacing every \"Tuesday\" with \"Thursday\" and changing nothing else.\n\n"
    "Notes from the planning meeting on Tuesday. The committee reviewed the budget for the coming year and "
    "approved funds for the new library wing, which will hold the local history collection and a reading room "
    "for children. The decision on the park renovation was delayed until the engineers report on the drainage "
    "problem near the east gate. The city engineer was asked to present a plan for the bridge repairs by the "
    "end of March, including the cost of closing the bridge to traffic for two weeks. The next meeting will be "
    "held on Tuesday at the same time, in the council chamber, and is open to the public.";

struct Stat {
  double mean = 0, sd = 0;
};

Stat summarize(const std::vector<double>& v) {
  Stat s;
  for (double x : v) s.mean += x;
  s.mean /= double(v.size());
  for (double x : v) s.sd += (x - s.mean) * (x - s.mean);
  s.sd = v.size() > 1 ? std::sqrt(s.sd / double(v.size() - 1)) : 0.0;
  return s;
}

}  // namespace

void register_bench(CLI::App& app) {
  struct Opts {
    ModelOptions model;
    int64_t n_prompt = 512, n_gen = 128, depth = 0;
    int reps = 3;
    bool json = false;
    std::string spec_prompt;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("bench", "Prompt processing and generation speed (like llama-bench)");
  cmd->add_option("-p,--n-prompt", o->n_prompt, "Prompt tokens (0 = skip)")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 16));
  cmd->add_option("-n,--n-gen", o->n_gen, "Generated tokens (0 = skip)")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 16));
  cmd->add_option("-d,--depth", o->depth, "Positions already in the cache before each test (untimed fill)")
      ->capture_default_str()->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  cmd->add_option("-r,--repetitions", o->reps, "Repetitions")->capture_default_str()->check(CLI::Range(1, 1000));
  cmd->add_flag("--json", o->json, "Print JSON");
  add_model_options(cmd, o->model, false);
  add_spec_options(cmd, o->model);
  cmd->add_option("--spec-prompt", o->spec_prompt,
                  "With --spec: the prompt of the sg test (default: a passage to copy, chat-templated)");
  cmd->callback([o] {
    using Clock = std::chrono::steady_clock;
    std::string path = check(resolve_model(o->model.model));
    SessionOptions so = session_options(o->model);
    // Room for the test (8: the warm-up) and for the attention window if one is asked for;
    // the prompt goes in as one batch, as llama-bench's pp does.
    so.n_ctx = std::max<int64_t>({o->depth + o->n_prompt + o->n_gen, 8, o->model.attn_sinks + o->model.attn_window});
    if (so.spec.enabled()) so.n_ctx = std::max<int64_t>(so.n_ctx, 1024 + o->n_gen);
    so.n_batch = std::max<int64_t>(o->model.batch, o->n_prompt);
    auto session = check(Session::open(path, so));
    const int64_t n_vocab = session->model().hparams().n_vocab;
    std::mt19937 rng(42);
    std::uniform_int_distribution<int32_t> tok(0, int32_t(n_vocab - 1));
    std::vector<float> logits;
    // Warm-up: touch the weights and size the scratch buffers.
    {
      std::vector<TokenId> w = {tok(rng), tok(rng)};
      check(session->eval(w, false, logits));
      session->reset();
    }
    // The cache filled with o->depth random tokens (untimed), in prompt-sized batches.
    std::vector<TokenId> fill(size_t(o->depth));
    for (TokenId& t : fill) t = tok(rng);
    auto reset_to_depth = [&] {
      session->reset();
      if (!fill.empty()) check(session->eval(fill, false, logits));
    };
    std::vector<double> pp, tg, sg_plain, sg_spec;
    double moe_expert_bytes = -1, moe_dense_bytes = 0;  // per generated token (tg), -1: no MoE
    SpecStats sg_stats;
    // sg (with --spec): the same greedy generation from a real prompt without and with
    // speculation, alternating, so the ratio is measured under the same conditions.
    std::vector<TokenId> sg_prompt;
    if (so.spec.enabled() && o->n_gen > 0) {
      std::string text = o->spec_prompt.empty() ? std::string(kSpecBenchPrompt) : o->spec_prompt;
      if (o->spec_prompt.empty())
        if (auto tpl = ChatTemplate::from_gguf(session->file()); tpl.ok()) text = tpl->render({{"user", text}}, true);
      sg_prompt = prompt_tokens(session->tokenizer(), text);
      if (int64_t(sg_prompt.size()) + o->n_gen > session->n_ctx()) fail("--spec-prompt is too long for the sg test");
    }
    auto sg_run = [&](bool speculate) {
      SequenceOptions g;
      g.sampling.temperature = 0.0f;
      g.max_tokens = o->n_gen;
      g.ignore_eos = true;
      SequenceState seq(g, session->token_text(), n_vocab);
      session->reset();
      session->set_speculating(speculate);
      GenerateStats st = check(session->generate(sg_prompt, seq, [](const SequenceState::Emitted&) { return true; }));
      (speculate ? sg_spec : sg_plain).push_back(double(st.n_generated) / st.gen_seconds);
      if (speculate) sg_stats.add(st.spec);
    };
    for (int r = 0; r < o->reps; ++r) {
      if (!sg_prompt.empty()) {
        sg_run(false);
        sg_run(true);
      }
      if (o->n_prompt > 0) {
        std::vector<TokenId> prompt(size_t(o->n_prompt));
        for (TokenId& t : prompt) t = tok(rng);
        reset_to_depth();
        auto t0 = Clock::now();
        check(session->eval(prompt, false, logits));
        pp.push_back(double(o->n_prompt) / std::chrono::duration<double>(Clock::now() - t0).count());
      }
      if (o->n_gen > 0) {
        reset_to_depth();
        TokenId t = tok(rng);
        const MoeStats* moe = session->model().moe_stats();
        const MoeStats moe0 = moe ? *moe : MoeStats{};
        auto t0 = Clock::now();
        for (int64_t i = 0; i < o->n_gen; ++i) {
          TokenId one[1] = {t};
          check(session->eval(one, false, logits));
          t = tok(rng);
        }
        tg.push_back(double(o->n_gen) / std::chrono::duration<double>(Clock::now() - t0).count());
        if (moe) {  // what one generated token read in the routed-expert layers, all of them
          moe_expert_bytes = double(moe->expert_bytes - moe0.expert_bytes) / double(o->n_gen);
          moe_dense_bytes = double(moe->dense_bytes - moe0.dense_bytes) / double(o->n_gen);
        }
      }
    }
    struct rusage ru {};
    getrusage(RUSAGE_SELF, &ru);
    const double peak_mib = double(ru.ru_maxrss) / 1024.0;
    const Hparams& hp = session->model().hparams();
    const double weight_mib = double(session->model().weight_bytes()) / (1024.0 * 1024.0);
    const std::string isa(isa_name(kernels().isa));
    const int threads = session->pool().size();
    const Model::PackStats& pk = session->model().pack_stats();
    const double packed_mib = double(pk.bytes) / (1024.0 * 1024.0);
    const KvShape& kv = session->cache().shape();
    const double kv_mib = double(session->cache().bytes()) / (1024.0 * 1024.0);
    if (o->json) {
      nlohmann::json j = {{"model", path}, {"arch", hp.arch}, {"threads", threads}, {"isa", isa},
                          {"weights_mib", weight_mib}, {"peak_rss_mib", peak_mib}, {"repetitions", o->reps},
                          {"depth", o->depth},
                          {"repacked_matrices", pk.matrices}, {"repacked_mib", packed_mib},
                          {"repack_seconds", pk.seconds}, {"kv_mib", kv_mib}, {"kv_positions", kv.n_ctx}};
      if (!pp.empty()) j["pp"] = {{"n", o->n_prompt}, {"tps_mean", summarize(pp).mean}, {"tps_sd", summarize(pp).sd}};
      if (!tg.empty()) j["tg"] = {{"n", o->n_gen}, {"tps_mean", summarize(tg).mean}, {"tps_sd", summarize(tg).sd}};
      if (!tg.empty() && moe_expert_bytes >= 0)
        j["tg"]["moe_bytes_per_token"] = {{"experts", moe_expert_bytes}, {"router_and_shared", moe_dense_bytes}};
      if (!sg_spec.empty())
        j["sg"] = {{"n", o->n_gen}, {"spec", o->model.spec}, {"plain_tps_mean", summarize(sg_plain).mean},
                   {"spec_tps_mean", summarize(sg_spec).mean}, {"speedup", summarize(sg_spec).mean / summarize(sg_plain).mean},
                   {"drafted", sg_stats.drafted}, {"accepted", sg_stats.accepted}, {"steps", sg_stats.steps}};
      std::printf("%s\n", j.dump().c_str());
      return;
    }
    std::printf("model: %s (%s, %.1f MiB of weights), %d threads, %s kernels\n", path.c_str(),
                hp.arch.c_str(), weight_mib, threads, isa.c_str());
    std::printf("load: %lld matrices (%.1f MiB) repacked into 16-row panels in %.0f ms\n",
                (long long)pk.matrices, packed_mib, pk.seconds * 1e3);
    std::printf("kv cache: %.2f MiB %s for -c %lld: %s\n", kv_mib, kv.describe_types().c_str(),
                (long long)kv.n_ctx, kv.describe().c_str());
    const std::string at = o->depth > 0 ? fmt::format(" @ d{}", o->depth) : "";
    std::printf("| test   |          t/s |\n|--------|--------------|\n");
    if (!pp.empty()) {
      Stat s = summarize(pp);
      std::printf("| pp%-4lld | %7.2f ± %.2f |%s\n", (long long)o->n_prompt, s.mean, s.sd, at.c_str());
    }
    if (!tg.empty()) {
      Stat s = summarize(tg);
      std::printf("| tg%-4lld | %7.2f ± %.2f |%s\n", (long long)o->n_gen, s.mean, s.sd, at.c_str());
    }
    if (!sg_spec.empty()) {
      Stat a = summarize(sg_plain), b = summarize(sg_spec);
      std::printf("| sg%-4lld | %7.2f ± %.2f | without speculation\n", (long long)o->n_gen, a.mean, a.sd);
      std::printf("| sg%-4lld | %7.2f ± %.2f | --spec %s: %.2fx, %s\n", (long long)o->n_gen, b.mean, b.sd,
                  o->model.spec.c_str(), b.mean / a.mean, sg_stats.describe().c_str());
    }
    if (!tg.empty() && moe_expert_bytes >= 0)
      std::printf("moe: a generated token read %.2f MiB of routed experts and %.2f MiB of routers and shared "
                  "experts\n", moe_expert_bytes / (1024.0 * 1024.0), moe_dense_bytes / (1024.0 * 1024.0));
    std::printf("peak memory: %.1f MiB\n", peak_mib);
  });
}

}  // namespace peregrine::tools
