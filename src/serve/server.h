// The OpenAI-compatible HTTP server: routes, authentication, request → scheduler → response
// (whole JSON or server-sent events), metrics, graceful shutdown. HTTP is cpp-httplib's
// (Debian's libcpp-httplib); JSON is built and parsed in serve/api.h.
//
//   POST /v1/completions, /v1/chat/completions   (stream or not)
//   GET  /v1/models, /health, /metrics
//
// Every request's response is written as a chunked stream, also when it is one JSON object:
// while a request waits for tokens the handler probes its connection (SSE comment lines for
// a stream, JSON whitespace otherwise) so a client that has gone away is noticed within
// about half a second and its sequence cancelled at the scheduler's next step.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/status.h"
#include "engine/scheduler.h"
#include "serve/api.h"
#include "serve/metrics.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
struct Response;
}

namespace peregrine::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;
  std::string api_key;                   // empty: no authentication
  std::vector<std::string> model_names;  // accepted "model" values; the first is listed
  size_t max_body_bytes = 4 << 20;
  int http_threads = 64;                 // connections served at once
  double grace_seconds = 10.0;           // SIGTERM: how long in-flight requests may finish
  bool log_requests = true;              // one line per completion request on stderr
};

class Server {
 public:
  // chat: the model's template (absent: /v1/chat/completions answers 400).
  Server(const ServerOptions& opt, Scheduler& scheduler, const Tokenizer& tok,
         std::optional<ChatTemplate> chat);
  ~Server();

  // Binds and serves until shutdown(); an error when the address cannot be bound.
  // on_listening runs once the socket is bound (e.g. to print the address).
  Status run(const std::function<void(int port)>& on_listening = {});
  // Stops taking requests (503), lets in-flight ones finish within the grace period
  // (cancelling the rest), then closes the listener so run() returns. Any thread.
  void shutdown();

  Metrics& metrics() { return metrics_; }

 private:
  struct Handler;
  void handle_completion(Endpoint e, const std::string& body, httplib::Response& res);
  std::string render_metrics();

  ServerOptions opt_;
  Scheduler& sched_;
  const Tokenizer& tok_;
  std::optional<ChatTemplate> chat_;
  ApiLimits limits_;
  std::unique_ptr<httplib::Server> http_;
  std::atomic<bool> draining_{false};
  std::atomic<int> active_{0};  // completion responses still being written
  int64_t created_ = 0;         // server start, for /v1/models
  int listen_fd_ = -1;

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
