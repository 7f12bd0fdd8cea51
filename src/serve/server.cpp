#include "serve/server.h"

#include <sys/socket.h>

#include <csignal>
#include <cstdio>
#include <chrono>
#include <random>
#include <thread>

#include <httplib.h>

namespace peregrine::serve {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string random_id(std::string_view prefix) {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}", prefix, rng());
}

// Constant-time comparison, so the key cannot be guessed byte by byte from timings.
bool same_secret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= unsigned(uint8_t(a[i]) ^ uint8_t(b[i]));
  return diff == 0;
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(error_json(e), "application/json");
}

ApiError api_error(int status, std::string type, std::string message, std::string code = {},
                   std::string param = {}) {
  ApiError e;
  e.status = status;
  e.type = std::move(type);
  e.message = std::move(message);
  e.code = std::move(code);
  e.param = std::move(param);
  return e;
}

}  // namespace

// One completion response being written: what has been streamed and what is accumulated.
struct Server::Handler {
  Endpoint endpoint;
  CompletionRequest req;
  std::shared_ptr<RequestStream> stream;
  std::string id;
  int64_t created = 0;
  Clock::time_point start, last_write;
  double ttft = -1.0;  // seconds, once the first token arrived
  bool first_token = true;
  bool finished = false;
  std::vector<Choice> choices;               // per choice: text (whole response), logprobs
  std::vector<int64_t> n_tokens;             // per choice
  std::vector<int64_t> streamed_chars;       // per choice: text_offset of the next chunk
  std::vector<bool> role_sent;               // chat stream: the first chunk carries the role
  std::vector<Clock::time_point> last_token; // per choice, for inter-token latency
  std::vector<RequestStream::Event> events;
};

Server::Server(const ServerOptions& opt, Scheduler& scheduler, const Tokenizer& tok,
               std::optional<ChatTemplate> chat)
    : opt_(opt), sched_(scheduler), tok_(tok), chat_(std::move(chat)),
      http_(std::make_unique<httplib::Server>()) {
  limits_.max_body_bytes = opt.max_body_bytes;
  limits_.model_names = opt.model_names;
  limits_.max_n = scheduler.config().n_slots;
  created_ = unix_now();

  requests_ = &metrics_.counter("requests_total", "HTTP requests answered, by status", "status");
  prompt_tokens_ = &metrics_.counter("prompt_tokens_total", "Prompt tokens of accepted requests");
  generated_tokens_ = &metrics_.counter("generation_tokens_total", "Tokens streamed to clients");
  prefix_lookup_ = &metrics_.counter("prefix_cache_lookup_tokens_total",
                                     "Prompt tokens looked up in the prefix cache (whole blocks)");
  prefix_hit_ = &metrics_.counter("prefix_cache_hit_tokens_total",
                                  "Prompt tokens whose KV came from the prefix cache");
  prefix_evictions_ = &metrics_.counter("prefix_cache_evictions_total",
                                        "Cached KV blocks evicted (least recently used) to make room");
  preemptions_ = &metrics_.counter("preemptions_total",
                                   "Sequences preempted (freed, recomputed later) when KV blocks ran out");
  const auto lat = Metrics::exponential_buckets(0.001, 2.0, 16);  // 1 ms .. 33 s
  ttft_ = &metrics_.histogram("time_to_first_token_seconds", "Request arrival to its first token", lat);
  itl_ = &metrics_.histogram("inter_token_latency_seconds", "Time between a choice's tokens", lat);
  duration_ = &metrics_.histogram("request_duration_seconds", "Request arrival to its last byte", lat);
  queue_ = &metrics_.gauge("queue_depth", "Requests (and preempted sequences) waiting for a slot");
  running_ = &metrics_.gauge("running_sequences", "Sequences holding a KV slot");
  blocks_used_ = &metrics_.gauge("kv_blocks_used", "KV blocks referenced by sequences");
  blocks_free_ = &metrics_.gauge("kv_blocks_free", "KV blocks holding nothing");
  blocks_cached_ = &metrics_.gauge("kv_blocks_cached", "Unreferenced KV blocks kept for the prefix cache");
  hit_rate_ = &metrics_.gauge("prefix_cache_hit_rate", "Prefix-cache hit tokens / looked-up tokens");
  spec_drafted_ = &metrics_.counter("spec_draft_tokens_total", "Speculative decoding: draft tokens verified");
  spec_accepted_ = &metrics_.counter("spec_accepted_tokens_total", "Speculative decoding: draft tokens accepted");
  spec_steps_ = &metrics_.counter("spec_decode_steps_total",
                                  "Decode steps of sequences running with speculation (drafted or not)");
  spec_history_drafts_ = &metrics_.counter("spec_history_drafts_total",
                                           "N-gram drafts taken from earlier requests' outputs");
  spec_acceptance_ = &metrics_.gauge("spec_acceptance_rate", "Accepted / drafted tokens since start");
  spec_mean_accepted_ = &metrics_.gauge("spec_mean_accepted_length",
                                        "Tokens generated per decode step of speculating sequences");
  spec_history_tokens_ = &metrics_.gauge("spec_history_tokens", "Tokens of earlier outputs held for n-gram drafts");

  httplib::Server& s = *http_;
  // SO_REUSEADDR (a restart need not wait for TIME_WAIT) but not httplib's default SO_REUSEPORT,
  // with which a second server on the same port would bind too and take half the connections.
  // The listening socket is kept to raise httplib's accept backlog of 5 after binding.
  s.set_socket_options([this](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd_ = sock;
  });
  s.new_task_queue = [n = opt.http_threads] { return new httplib::ThreadPool(size_t(n)); };
  s.set_payload_max_length(opt.max_body_bytes);
  s.set_read_timeout(30, 0);
  s.set_write_timeout(30, 0);

  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    const bool protected_path = req.path.rfind("/v1/", 0) == 0 || req.path == "/metrics";
    if (opt_.api_key.empty() || !protected_path) return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string_view prefix = "Bearer ";
    if (auth.size() > prefix.size() && auth.compare(0, prefix.size(), prefix) == 0 &&
        same_secret(std::string_view(auth).substr(prefix.size()), opt_.api_key))
      return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, api_error(401, "invalid_request_error",
                              auth.empty() ? "missing API key: send 'Authorization: Bearer KEY'"
                                           : "incorrect API key provided",
                              "invalid_api_key"));
    requests_->inc("401");
    return httplib::Server::HandlerResponse::Handled;
  });
  s.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    ApiError e;
    e.status = res.status;
    if (res.status == 404) {
      e.type = "invalid_request_error";
      e.message = fmt::format("no route {} {}", req.method, req.path);
      e.code = "not_found";
    } else if (res.status == 413) {
      e.message = fmt::format("request body is over the {} byte limit", opt_.max_body_bytes);
      e.code = "request_too_large";
    } else {
      e.message = fmt::format("HTTP error {}", res.status);
    }
    res.set_content(error_json(e), "application/json");
    requests_->inc(std::to_string(res.status));
  });
  s.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& ex) {
      what = ex.what();
    } catch (...) {
    }
    send_error(res, api_error(500, "server_error", what));
    requests_->inc("500");
  });

  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (draining_) {
      res.status = 503;
      res.set_content(R"({"status":"shutting down"})", "application/json");
      return;
    }
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    // Only the main name: the others (file name, path) are accepted but not advertised.
    res.set_content(models_json({opt_.model_names.front()}, created_), "application/json");
    requests_->inc("200");
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(render_metrics(), "text/plain; version=0.0.4");
  });
  s.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_completion(Endpoint::Completions, req.body, res);
  });
  s.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) {
    handle_completion(Endpoint::ChatCompletions, req.body, res);
  });
}

Server::~Server() = default;

void Server::handle_completion(Endpoint endpoint, const std::string& body, httplib::Response& res) {
  const auto start = Clock::now();
  const char* path = endpoint == Endpoint::ChatCompletions ? "/v1/chat/completions" : "/v1/completions";
  auto fail = [&](const ApiError& e) {
    send_error(res, e);
    requests_->inc(std::to_string(e.status));
    if (opt_.log_requests) {
      // Messages can quote the request: no control characters into the log, and not too long.
      std::string msg = e.message.substr(0, 300);
      for (char& c : msg)
        if (uint8_t(c) < 0x20 || c == 0x7f) c = ' ';
      std::fprintf(stderr, "POST %s %d %s\n", path, e.status, msg.c_str());
    }
  };
  if (draining_) return fail(api_error(503, "server_error", "the server is shutting down", "shutting_down"));

  auto parsed = parse_request(endpoint, body, limits_);
  if (auto* e = std::get_if<ApiError>(&parsed)) return fail(*e);
  CompletionRequest req = std::move(std::get<CompletionRequest>(parsed));

  // The prompt as tokens.
  std::vector<TokenId> prompt;
  const char* prompt_param = endpoint == Endpoint::ChatCompletions ? "messages" : "prompt";
  if (endpoint == Endpoint::Completions && req.prompt_is_tokens) {
    prompt.assign(req.prompt_tokens.begin(), req.prompt_tokens.end());
  } else {
    std::string text = req.prompt;
    if (endpoint == Endpoint::ChatCompletions) {
      if (!chat_)
        return fail(api_error(400, "invalid_request_error",
                              "this model has no chat template; use /v1/completions", {}, "messages"));
      text = chat_->render(req.messages, true);
    }
    Result<std::vector<TokenId>> ids = tok_.try_encode(text, true);
    if (!ids.ok()) return fail(api_error(400, "invalid_request_error", ids.error().message, {}, prompt_param));
    if (tok_.add_bos()) prompt.push_back(tok_.bos());
    prompt.insert(prompt.end(), ids->begin(), ids->end());
  }
  if (int64_t(prompt.size()) >= sched_.n_ctx())
    return fail(api_error(400, "invalid_request_error",
                          fmt::format("this model's context holds {} tokens, but the prompt has {} (and at "
                                      "least one token must be generated)", sched_.n_ctx(), prompt.size()),
                          "context_length_exceeded", prompt_param));

  GenRequest gen;
  gen.prompt = std::move(prompt);
  gen.max_tokens = req.max_tokens;
  gen.sampling.temperature = req.temperature;
  gen.sampling.top_p = req.top_p;
  gen.sampling.top_k = req.top_k;
  gen.sampling.min_p = req.min_p;
  gen.sampling.repeat_penalty = req.repeat_penalty;
  gen.sampling.repeat_last_n = req.repeat_penalty != 1.0f ? req.repeat_last_n : 0;
  gen.sampling.presence_penalty = req.presence_penalty;
  gen.sampling.frequency_penalty = req.frequency_penalty;
  gen.sampling.seed = req.seed ? *req.seed : std::random_device{}();
  gen.n = req.n;
  gen.top_logprobs = req.logprobs ? req.top_logprobs : -1;
  gen.stop = req.stop;
  gen.ignore_eos = req.ignore_eos;
  const int64_t n_prompt = int64_t(gen.prompt.size());
  Scheduler::Submitted sub = sched_.submit(std::move(gen));
  using Code = Scheduler::Submitted::Code;
  if (sub.code == Code::Invalid) return fail(api_error(400, "invalid_request_error", sub.message, {}, prompt_param));
  if (sub.code == Code::Overloaded)
    return fail(api_error(503, "server_error", "the server is busy: " + sub.message + "; retry later",
                          "server_overloaded"));
  if (sub.code == Code::ShuttingDown)
    return fail(api_error(503, "server_error", "the server is shutting down", "shutting_down"));
  prompt_tokens_->inc(double(n_prompt));

  auto h = std::make_shared<Handler>();
  h->endpoint = endpoint;
  h->stream = sub.stream;
  h->id = random_id(endpoint == Endpoint::ChatCompletions ? "chatcmpl-" : "cmpl-");
  h->created = unix_now();
  h->start = start;
  h->last_write = Clock::now();
  h->choices.resize(size_t(req.n));
  for (int32_t i = 0; i < req.n; ++i) {
    h->choices[size_t(i)].index = i;
    h->choices[size_t(i)].has_logprobs = req.logprobs;
  }
  h->n_tokens.assign(size_t(req.n), 0);
  h->streamed_chars.assign(size_t(req.n), 0);
  h->role_sent.assign(size_t(req.n), false);
  h->last_token.assign(size_t(req.n), start);
  h->req = std::move(req);
  ++active_;

  auto to_logprob = [this](const TokenLogprobs& lp) {
    TokenLogprob t;
    t.token = tok_.token_bytes(lp.token);
    t.logprob = lp.logprob;
    for (const auto& [id, l] : lp.top) t.top.push_back({tok_.token_bytes(id), l});
    return t;
  };

  auto provider = [this, h, to_logprob](size_t, httplib::DataSink& sink) {
    if (h->finished) {
      sink.done();
      return true;
    }
    h->events.clear();
    const bool complete = h->stream->wait(h->events, std::chrono::milliseconds(100));
    const bool streaming = h->req.stream;
    std::string out;
    auto emit_chunk = [&](const Choice& c, int32_t index) {
      const bool first = !h->role_sent[size_t(index)];
      h->role_sent[size_t(index)] = true;
      out += "data: ";
      out += chunk_json(h->endpoint, h->req.model, h->id, h->created, c, first);
      out += "\n\n";
    };
    for (RequestStream::Event& e : h->events) {
      const size_t ci = size_t(e.choice);
      Choice& acc = h->choices[ci];
      if (!e.end) {
        const auto now = Clock::now();
        if (h->first_token) ttft_->observe(h->ttft = seconds_since(h->start));
        else if (h->n_tokens[ci] > 0) itl_->observe(std::chrono::duration<double>(now - h->last_token[ci]).count());
        h->first_token = false;
        h->last_token[ci] = now;
        ++h->n_tokens[ci];
        generated_tokens_->inc();
      }
      if (!streaming) {
        acc.text += e.text;
        if (e.has_logprobs) acc.logprobs.push_back(to_logprob(e.logprobs));
        if (e.end) acc.finish_reason = finish_reason_name(e.finish);
        continue;
      }
      if (!e.text.empty() || e.has_logprobs) {
        Choice c;
        c.index = e.choice;
        c.text = e.text;
        c.has_logprobs = e.has_logprobs;
        if (e.has_logprobs) c.logprobs.push_back(to_logprob(e.logprobs));
        c.text_offset = h->streamed_chars[ci];
        h->streamed_chars[ci] += int64_t(e.text.size());
        emit_chunk(c, e.choice);
      }
      if (e.end) {
        Choice c;
        c.index = e.choice;
        c.finish_reason = finish_reason_name(e.finish);
        c.text_offset = h->streamed_chars[ci];
        emit_chunk(c, e.choice);
      }
    }
    if (complete) {
      Usage u;
      u.prompt_tokens = h->stream->prompt_tokens();
      for (int64_t n : h->n_tokens) u.completion_tokens += n;
      u.cached_tokens = h->stream->cached_tokens();
      if (streaming) {
        if (h->req.include_usage) {
          out += "data: ";
          out += usage_chunk_json(h->endpoint, h->req.model, h->id, h->created, u);
          out += "\n\n";
        }
        out += "data: [DONE]\n\n";
      } else {
        out += completion_json(h->req, h->id, h->created, h->choices, u);
      }
    } else if (out.empty() && seconds_since(h->last_write) > 0.5) {
      // Probe the connection: a client that left makes the write (or the next) fail.
      out = streaming ? ": keep-alive\n\n" : " ";
    }
    if (!out.empty()) {
      if (!sink.write(out.data(), out.size())) {
        h->stream->cancel();
        return false;
      }
      h->last_write = Clock::now();
    }
    if (complete) {
      h->finished = true;
      sink.done();
    }
    return true;
  };
  auto releaser = [this, h, path](bool success) {
    const bool left = !success || !h->finished;
    if (left) {
      h->stream->cancel();
      requests_->inc("disconnected");
    } else {
      requests_->inc("200");
      duration_->observe(seconds_since(h->start));
    }
    if (opt_.log_requests) {
      int64_t completion = 0;
      for (int64_t n : h->n_tokens) completion += n;
      const int64_t drafted = h->stream->drafted_tokens(), accepted = h->stream->accepted_tokens();
      const std::string spec =
          drafted > 0 ? fmt::format(" spec {}/{} accepted ({:.0f}%)", accepted, drafted, 100.0 * double(accepted) / double(drafted))
                      : std::string();
      std::fprintf(stderr, "POST %s %s prompt %lld (cached %lld) completion %lld ttft %.0f ms total %.0f ms%s%s\n",
                   path, left ? "disconnected" : "200", (long long)h->stream->prompt_tokens(),
                   (long long)h->stream->cached_tokens(), (long long)completion, h->ttft * 1000.0,
                   seconds_since(h->start) * 1000.0, spec.c_str(), h->req.stream ? " stream" : "");
    }
    --active_;
  };
  res.set_chunked_content_provider(h->req.stream ? "text/event-stream" : "application/json", provider,
                                   releaser);
}

std::string Server::render_metrics() {
  const SchedulerStats st = sched_.stats();
  {
    std::lock_guard lock(metrics_mu_);
    prefix_lookup_->inc(double(st.prefix_lookup_tokens - last_stats_.prefix_lookup_tokens));
    prefix_hit_->inc(double(st.prefix_hit_tokens - last_stats_.prefix_hit_tokens));
    prefix_evictions_->inc(double(st.prefix_evictions - last_stats_.prefix_evictions));
    preemptions_->inc(double(st.preemptions - last_stats_.preemptions));
    spec_drafted_->inc(double(st.spec.drafted - last_stats_.spec.drafted));
    spec_accepted_->inc(double(st.spec.accepted - last_stats_.spec.accepted));
    spec_steps_->inc(double(st.spec.steps - last_stats_.spec.steps));
    spec_history_drafts_->inc(double(st.spec_history_drafts - last_stats_.spec_history_drafts));
    last_stats_ = st;
  }
  queue_->set(double(st.waiting));
  running_->set(double(st.running));
  blocks_used_->set(double(st.blocks_used));
  blocks_free_->set(double(st.blocks_free));
  blocks_cached_->set(double(st.blocks_cached));
  hit_rate_->set(st.prefix_lookup_tokens > 0 ? double(st.prefix_hit_tokens) / double(st.prefix_lookup_tokens) : 0.0);
  spec_acceptance_->set(st.spec.drafted > 0 ? double(st.spec.accepted) / double(st.spec.drafted) : 0.0);
  spec_mean_accepted_->set(st.spec.steps > 0 ? double(st.spec.generated) / double(st.spec.steps) : 0.0);
  spec_history_tokens_->set(double(st.spec_history_tokens));
  return metrics_.render();
}

Status Server::run(const std::function<void(int port)>& on_listening) {
  std::signal(SIGPIPE, SIG_IGN);  // a client that went away is a failed write, not a signal
  int port = opt_.port;
  if (port == 0) {
    port = http_->bind_to_any_port(opt_.host);
    if (port < 0) return make_error("cannot bind {}:{}", opt_.host, opt_.port);
  } else if (!http_->bind_to_port(opt_.host, port)) {
    return make_error("cannot bind {}:{} (in use, or not an address of this machine)", opt_.host, port);
  }
  // A burst of clients (64 connecting at once) overflows a backlog of 5: connections are
  // dropped and retried or reset. Calling listen() again on a listening socket resizes it.
  if (listen_fd_ >= 0) ::listen(listen_fd_, SOMAXCONN);
  if (on_listening) on_listening(port);
  if (!http_->listen_after_bind() && !draining_) return make_error("the HTTP server stopped unexpectedly");
  return Status::Ok();
}

void Server::shutdown() {
  if (draining_.exchange(true)) return;
  const auto grace = std::chrono::milliseconds(int64_t(opt_.grace_seconds * 1000));
  sched_.shutdown(grace);
  // The scheduler has ended every stream; give the handlers a moment to write their ends.
  const auto deadline = Clock::now() + std::chrono::seconds(5);
  while (active_.load() > 0 && Clock::now() < deadline) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  http_->stop();
}

}  // namespace peregrine::serve
