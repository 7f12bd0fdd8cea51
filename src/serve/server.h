// The OpenAI-compatible server: routes, authentication and tenants, request -> scheduler ->
// response (whole JSON or server-sent events), metrics, graceful shutdown. HTTP is
// serve/http_server.h (Boost.Beast); JSON is built and parsed in serve/api.h.
//
//   POST /v1/completions, /v1/chat/completions   (stream or not)
//   GET  /v1/models, /health, /metrics
//
// Threads: the HTTP layer's one I/O thread routes, authenticates and writes; a few worker
// threads parse bodies, render chat templates and tokenize prompts (the costly part of a
// request before the scheduler, kept off the I/O thread so /health answers during a flood of
// large prompts); the scheduler's thread generates and wakes the I/O thread through each
// request's stream listener. Nothing blocks the I/O thread.
//
// Tenants: each API key (--api-key, --api-key-file) belongs to a tenant. The prefix cache is
// salted per tenant (or per tenant and `user`, or not at all: CacheScope), so one client
// cannot learn from cached_tokens or the time to first token what another sent; admission is
// fair between tenants (engine/scheduler.h).
//
// What a client sees when generation fails: a non-streamed request gets an error status (503
// when the server shut down before it finished, 500 for an engine error) with an OpenAI error
// body, never a 200; a stream, whose 200 is already sent, gets a last event
// `data: {"error": {...}}` (which OpenAI's SDKs raise as an APIError) and no `data: [DONE]`.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/status.h"
#include "engine/scheduler.h"
#include "constrain/constraint_spec.h"
#include "serve/api.h"
#include "serve/http_server.h"
#include "serve/metrics.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace peregrine::serve {

struct ApiKey {
  std::string key;
  std::string tenant;  // keys with the same tenant share its prefix cache and its fair share
};

// Reads --api-key-file: one key per line, optionally followed by whitespace and a tenant name
// (default: the key's line number), '#' starts a comment line. Keys are printable ASCII
// without spaces, at most 512 bytes; a repeated key is an error.
Result<std::vector<ApiKey>> load_api_keys(const std::string& path);

// Which requests may share cached KV blocks.
enum class CacheScope {
  Global,  // everyone (no isolation)
  Tenant,  // requests of the same tenant (API key); without keys, everyone
  User,    // requests of the same tenant and the same `user` field
};

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::vector<ApiKey> api_keys;  // empty: no authentication
  CacheScope cache_scope = CacheScope::Tenant;
  std::vector<std::string> model_names;  // accepted "model" values; the first is listed
  HttpLimits http;                       // body, header, connections, timeouts
  int64_t max_tokens_limit = 0;          // most tokens one request may ask for; 0: the context
  bool parse_special = false;            // control tokens written in message content count (unsafe)
  int prepare_threads = 2;               // parse and tokenize requests
  double grace_seconds = 10.0;           // SIGTERM: how long in-flight requests may finish
  bool log_requests = true;              // one line per completion request on stderr
};

class Server : private HttpHandler {
 public:
  // chat: the model's template (absent: /v1/chat/completions answers 400).
  Server(const ServerOptions& opt, Scheduler& scheduler, const Tokenizer& tok,
         std::optional<ChatTemplate> chat);
  ~Server() override;

  // Binds and serves until shutdown(); an error when the address cannot be bound.
  // on_listening runs once the socket is bound (e.g. to print the address). Returns at once
  // when shutdown() came first.
  Status run(const std::function<void(int port)>& on_listening = {});
  // Stops taking requests (503), lets in-flight ones finish within the grace period
  // (cancelling the rest), then closes every connection so run() returns. Any thread.
  void shutdown();
  // The first step of shutdown() alone: from now on new completion requests get a 503. For a
  // signal handler thread that hands the rest of shutdown() to another thread.
  void refuse_new_requests() { draining_.store(true); }

  Metrics& metrics() { return metrics_; }

 private:
  struct Job;
  struct Workers;

  // HttpHandler
  std::optional<HttpResponse> check_head(HttpRequest& head) override;
  void handle(std::shared_ptr<HttpExchange> ex) override;
  HttpResponse error_response(int status, std::string_view message) override;

  // The key's index in opt_.api_keys; -1 when keys are off; nullopt when the request is not
  // authenticated. check_head keeps it in the request's principal.
  std::optional<int> authenticate(const HttpRequest& r) const;
  // An error answer, counted in requests_total by its status.
  HttpResponse counted_error(const ApiError& e);
  void prepare(const std::shared_ptr<HttpExchange>& ex, Endpoint endpoint);  // on a worker
  void start_job(const std::shared_ptr<Job>& job);
  void drain(const std::shared_ptr<Job>& job);  // on the I/O thread
  void drain_events(Job& job);
  // Ends a job's response with an error: a last SSE event after `out` (a stream), or the error
  // status and body; the generation is cancelled.
  void end_with_error(Job& job, std::string out, const ApiError& e, const char* outcome);
  // A finished tool-call choice: its text becomes message.tool_calls, finish "tool_calls".
  static void as_tool_call(Choice& c);
  void finish(Job& job, const char* outcome);
  void fail(const std::shared_ptr<HttpExchange>& ex, const char* path, const ApiError& e);
  std::string render_metrics();

  ServerOptions opt_;
  Scheduler& sched_;
  const Tokenizer& tok_;
  std::optional<ChatTemplate> chat_;
  std::unique_ptr<constrain::ConstraintCompiler> constraints_;  // shared by the workers, caches by content
  ApiLimits limits_;
  size_t max_token_bytes_ = 1;  // the longest token's bytes: prompt bytes / this <= its tokens
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<Workers> workers_;
  std::atomic<bool> draining_{false};
  std::atomic<bool> shutting_down_{false};
  int64_t created_ = 0;  // server start, for /v1/models

  std::mutex jobs_mu_;
  std::unordered_map<Job*, std::shared_ptr<Job>> jobs_;  // completion responses in progress

  Metrics metrics_;
  Counter* requests_;
  Counter* prompt_tokens_;
  Counter* generated_tokens_;
  Counter* prefix_lookup_;
  Counter* prefix_hit_;
  Counter* prefix_evictions_;
  Counter* preemptions_;
  Histogram* ttft_;
  Histogram* itl_;
  Histogram* duration_;
  Gauge* queue_;
  Gauge* running_;
  Gauge* connections_;
  Gauge* blocks_used_;
  Gauge* blocks_free_;
  Gauge* blocks_cached_;
  Gauge* hit_rate_;
  Counter* spec_drafted_;
  Counter* spec_accepted_;
  Counter* spec_steps_;
  Counter* spec_history_drafts_;
  Gauge* spec_acceptance_;
  Gauge* spec_mean_accepted_;
  Gauge* spec_history_tokens_;
  std::mutex metrics_mu_;
  SchedulerStats last_stats_;  // what the counters above already hold
};

}  // namespace peregrine::serve
