// peregrine serve: the OpenAI-compatible HTTP server (serve/server.h) over a continuous-
// batching scheduler with a paged KV cache (engine/scheduler.h).
#include <pthread.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "engine/scheduler.h"
#include "engine/session.h"
#include "engine/spec/model_drafter.h"
#include "serve/server.h"
#include "tools/commands.h"
#include "tools/common.h"
#include "tools/model_catalog.h"

namespace peregrine::tools {

void register_serve(CLI::App& app) {
  struct Opts {
    std::string model = kDefaultModel;
    int threads = 0;
    int64_t ctx = 0;
    std::string host = "127.0.0.1";
    int port = 8080;
    int32_t parallel = 4;
    std::string api_key;
    std::string api_key_file;
    std::string cache_scope = "tenant";
    int64_t max_tokens_limit = 0;
    size_t max_connections = 1024;
    double read_timeout = 10.0, idle_timeout = 30.0, write_timeout = 30.0;
    bool parse_special = false;
    int64_t step_tokens = 128;
    int64_t kv_blocks = 0;
    int32_t block_size = 16;
    KvFlags kv;
    int32_t max_queue = 128;
    double grace = 10.0;
    bool no_prefix_cache = false;
    bool quiet = false;
    size_t max_body = 4 << 20;
    ModelOptions spec;  // --spec and its flags
    int64_t spec_history = 262144;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("serve", "OpenAI-compatible HTTP server (continuous batching)");
  cmd->add_option("-m,--model", o->model, "Model: a cache name (smollm2-135m) or a GGUF path")->capture_default_str();
  cmd->add_option("-t,--threads", o->threads, "Threads (default: all cores)")->check(CLI::Range(0, 1024));
  cmd->add_option("-c,--ctx-size", o->ctx, "Context per request in tokens (default: min(trained, 4096))")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 20));
  cmd->add_option("--host", o->host, "Address to listen on")->capture_default_str();
  cmd->add_option("--port", o->port, "Port (0: any free port)")->capture_default_str()->check(CLI::Range(0, 65535));
  cmd->add_option("--parallel", o->parallel, "Sequences generated at once")
      ->capture_default_str()
      ->check(CLI::Range(1, 256));
  cmd->add_option("--api-key", o->api_key, "Require 'Authorization: Bearer KEY' (default: $PEREGRINE_API_KEY)")
      ->envname("PEREGRINE_API_KEY");
  cmd->add_option("--api-key-file", o->api_key_file,
                  "Keys, one per line, each optionally followed by a tenant name (tenants get separate prefix caches and fair shares)");
  cmd->add_option("--cache-scope", o->cache_scope,
                  "Who may share prefix-cache blocks: tenant (requests with keys of one tenant), user (also the same 'user' field), global")
      ->capture_default_str()
      ->check(CLI::IsMember({"tenant", "user", "global"}));
  cmd->add_option("--max-tokens-limit", o->max_tokens_limit, "Most tokens one request may generate (0: the context)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("--max-connections", o->max_connections, "Open connections; more get a 503")
      ->capture_default_str()
      ->check(CLI::Range(size_t(1), size_t(1) << 20));
  cmd->add_option("--read-timeout", o->read_timeout, "Seconds a request may take to arrive, from its first byte")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  cmd->add_option("--idle-timeout", o->idle_timeout, "Seconds an idle keep-alive connection is kept")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  cmd->add_option("--write-timeout", o->write_timeout, "Seconds one write to a client may take")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 3600.0));
  cmd->add_flag("--parse-special", o->parse_special,
                "Control tokens written in message content become control tokens (lets clients forge turns)");
  cmd->add_option("-b,--step-tokens", o->step_tokens, "Most tokens per forward pass (prefill chunk budget)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(1), int64_t(65536)));
  cmd->add_option("--kv-blocks", o->kv_blocks, "KV blocks in the pool (default: parallel x context)")
      ->check(CLI::Range(int64_t(0), int64_t(1) << 24));
  cmd->add_option("--kv-block-size", o->block_size, "Positions per KV block (a multiple of 16)")
      ->capture_default_str()
      ->check(CLI::Range(16, 4096));
  add_kv_options(cmd, o->kv);
  cmd->add_option("--max-queue", o->max_queue, "Requests queued or running before 503")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--grace", o->grace, "Seconds in-flight requests may finish after SIGTERM")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 3600.0));
  cmd->add_flag("--no-prefix-cache", o->no_prefix_cache, "Never reuse KV blocks of earlier prompts");
  cmd->add_flag("-q,--quiet", o->quiet, "No line per request on stderr");
  cmd->add_option("--max-body", o->max_body, "Largest request body in bytes")->capture_default_str()->check(CLI::Range(size_t(1024), size_t(1) << 30));
  add_spec_options(cmd, o->spec);
  cmd->add_option("--spec-history", o->spec_history,
                  "--spec ngram: tokens of earlier outputs kept to draft from (0: none; ~36 bytes each)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t(0), int64_t(1) << 28));
  cmd->callback([o, cmd] {
    if (o->block_size % 16 != 0) fail(fmt::format("--kv-block-size {} is not a multiple of 16", o->block_size));
    // SIGTERM and SIGINT are taken by one thread with sigtimedwait(): block them before any
    // thread (the model's pool, the scheduler, the HTTP workers) exists, so all inherit the mask.
    // The first signal before the server exists (still loading) exits at once; once serving,
    // the first drains (serve::Server::shutdown, on its own thread) and a second exits at once.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    std::atomic<serve::Server*> serving{nullptr};
    std::atomic<bool> done{false};
    std::thread draining;
    std::thread signals([&] {
      const timespec tick{0, 200'000'000};
      while (!done.load()) {
        const int sig = sigtimedwait(&sigs, nullptr, &tick);
        if (sig <= 0) continue;
        serve::Server* server = serving.load();
        if (server == nullptr) {
          std::fprintf(stderr, "stopped before serving\n");
          std::_Exit(0);
        }
        if (draining.joinable()) {
          std::fprintf(stderr, "second signal: exiting now\n");
          std::_Exit(128 + sig);
        }
        std::fprintf(stderr, "shutting down: finishing in-flight requests (up to %.0f s; again to exit now)\n", o->grace);
        server->refuse_new_requests();
        draining = std::thread([server] { server->shutdown(); });
      }
    });
    // An error while loading (fail() throws) unwinds through this guard, which stops and joins
    // the signal thread. Once serving, it is joined explicitly below, before the server it may
    // point to is destroyed.
    struct JoinSignals {
      std::atomic<bool>& done;
      std::thread& t;
      ~JoinSignals() {
        done.store(true);
        if (t.joinable()) t.join();
      }
    } join_signals{done, signals};

    const SpecOptions spec = spec_options(o->spec);
    const std::string path = check(resolve_model(o->model));
    LoadedModel m = check(LoadedModel::load(path, o->threads));
    const int64_t n_ctx = check(m.context_size(o->ctx));
    const KvConfig kv_cfg = kv_config(o->kv);
    if (kv_cfg.evict != KvEvict::None && spec.kind != SpecKind::None)
      fail("--kv-evict cannot be combined with --spec: evicted entries cannot come back when drafts are rejected");
    KvShape kv = m.model->kv_shape(n_ctx, o->parallel, kv_cfg, AttnKind::global(), o->step_tokens);
    // KIVI quantizes keys in groups of 32 positions, which must not straddle blocks: the default
    // block of 16 becomes 32 (an explicit size that does not fit is refused by validate()).
    const bool block_given = cmd->count("--kv-block-size") > 0;
    kv.block_size = kv_cfg.k == KvType::Kivi2 && !block_given ? int32_t(kKiviGroup) : o->block_size;
    kv.n_blocks = o->kv_blocks > 0 ? o->kv_blocks : o->parallel * kv.max_blocks_per_seq();
    check(kv.validate());
    check(m.model->check_kv(kv));
    check(check_kv_memory(kv));

    SchedulerConfig cfg;
    cfg.n_slots = o->parallel;
    cfg.step_tokens = o->step_tokens;
    cfg.max_requests = o->max_queue;
    cfg.prefix_caching = !o->no_prefix_cache;
    cfg.spec = spec;
    cfg.spec_history = spec.kind == SpecKind::Ngram ? o->spec_history : 0;
    // A draft model drafts for every slot with its own KV; a layer-skip draft runs the target's
    // first layers on the scheduler's cache.
    Scheduler::MakeDrafter make_drafter = [&](KvCache& cache) -> Result<std::unique_ptr<Drafter>> {
      if (spec.kind == SpecKind::LayerSkip) {
        const int64_t n = spec.draft_layers > 0 ? spec.draft_layers : m.model->hparams().n_layer / 2;
        PG_ASSIGN(auto d, LayerSkipDrafter::create(*m.model, cache, n));
        return std::unique_ptr<Drafter>(std::move(d));
      }
      PG_ASSIGN(auto d, DraftModelDrafter::open(spec.draft_model, *m.model, *m.tok, n_ctx, o->parallel,
                                                spec.draft.max, m.pool->size()));
      d->share_pool(*m.pool);
      return std::unique_ptr<Drafter>(std::move(d));
    };
    Model* model = m.model.get();
    const Tokenizer* tok = m.tok.get();
    TokenText text{[tok](TokenId t) { return tok->token_bytes(t); },
                   [tok](TokenId t) { return tok->is_end_of_generation(t); }};
    auto sched = check(Scheduler::create(
        cfg, kv, m.model->hparams().n_vocab,
        [model](const Batch& b, KvCache& c, std::vector<float>& l) { return model->forward(b, c, l); }, text,
        make_drafter));

    std::optional<ChatTemplate> chat;
    if (auto t = ChatTemplate::from_gguf(*m.file); t.ok()) chat = *t;

    serve::ServerOptions so;
    so.host = o->host;
    so.port = o->port;
    // The model's id: its cache name when it is a known model's file, else the file's stem;
    // the file name and the -m value are accepted too.
    const std::filesystem::path p(path);
    std::string id = p.stem().string();
    for (const KnownModel& k : kKnownModels)
      if (k.file_name == p.filename().string()) id = std::string(k.name);
    so.model_names = {id};
    for (std::string alt : {p.filename().string(), p.stem().string(), o->model})
      if (std::find(so.model_names.begin(), so.model_names.end(), alt) == so.model_names.end())
        so.model_names.push_back(alt);
    if (!o->api_key.empty()) so.api_keys.push_back({o->api_key, "default"});
    if (!o->api_key_file.empty())
      for (serve::ApiKey& k : check(serve::load_api_keys(o->api_key_file))) so.api_keys.push_back(std::move(k));
    so.cache_scope = o->cache_scope == "global" ? serve::CacheScope::Global
                     : o->cache_scope == "user" ? serve::CacheScope::User
                                                : serve::CacheScope::Tenant;
    so.http.max_body_bytes = o->max_body;
    so.http.max_connections = o->max_connections;
    so.http.read_timeout = o->read_timeout;
    so.http.idle_timeout = o->idle_timeout;
    so.http.write_timeout = o->write_timeout;
    so.max_tokens_limit = o->max_tokens_limit;
    so.parse_special = o->parse_special;
    so.grace_seconds = o->grace;
    so.log_requests = !o->quiet;
    serve::Server server(so, *sched, *m.tok, chat);

    sched->start();
    serving.store(&server);
    Status st = server.run([&](int port) {
      const std::string spec_line =
          spec.enabled() ? fmt::format(", spec {} ({} policy, draft max {})", spec_kind_name(spec.kind),
                                       draft_policy_name(spec.draft.policy), spec.draft.max)
                         : std::string();
      std::fprintf(stderr, "peregrine serve: %s on http://%s:%d (%d parallel, context %lld, KV %s%s)\n",
                   so.model_names[0].c_str(), o->host.c_str(), port, o->parallel, (long long)n_ctx,
                   kv.describe().c_str(), spec_line.c_str());
      std::fflush(stderr);
    });
    done.store(true);
    signals.join();
    if (draining.joinable()) draining.join();
    sched->shutdown(std::chrono::milliseconds(0));
    check(st);
    std::fprintf(stderr, "stopped\n");
  });
}

}  // namespace peregrine::tools
