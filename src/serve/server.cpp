#include "serve/server.h"

#include "serve/api_constraints.h"
#include "serve/http_request_reader.h"

#include <csignal>
#include <cstdio>
#include <chrono>
#include <fstream>
#include <functional>
#include <random>
#include <thread>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <fmt/format.h>

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

// Constant-time comparison, so a key cannot be guessed byte by byte from timings.
bool same_secret(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= unsigned(uint8_t(a[i]) ^ uint8_t(b[i]));
  return diff == 0;
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

HttpResponse json_response(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

HttpResponse error_reply(const ApiError& e) { return json_response(e.status, error_json(e)); }

// One server-sent event carrying `data` (a JSON text), appended to out.
void append_event(std::string& out, std::string_view data) {
  out += "data: ";
  out += data;
  out += "\n\n";
}

// A message that may quote the request, fit for one log line: no control characters, not long.
std::string loggable(std::string_view s) {
  std::string out(s.substr(0, 300));
  for (char& c : out)
    if (uint8_t(c) < 0x20 || c == 0x7f) c = ' ';
  return out;
}

// 64-bit FNV-1a: a stable salt from a tenant (and user) name; 0 is kept for "no salt".
uint64_t salt_of(std::string_view a, std::string_view b) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](std::string_view s) {
    for (char c : s) h = (h ^ uint8_t(c)) * 0x100000001b3ull;
  };
  mix(a);
  h = (h ^ 0xff) * 0x100000001b3ull;  // separator: ("ab", "c") differs from ("a", "bc")
  mix(b);
  return h == 0 ? 1 : h;
}

struct Route {
  std::string_view path, method;
  bool protected_path;  // needs the API key
};
constexpr Route kRoutes[] = {
    {"/health", "GET", false},
    {"/metrics", "GET", true},
    {"/v1/models", "GET", true},
    {"/v1/completions", "POST", true},
    {"/v1/chat/completions", "POST", true},
};

const Route* find_route(std::string_view path) {
  for (const Route& r : kRoutes)
    if (r.path == path) return &r;
  return nullptr;
}

}  // namespace

Result<std::vector<ApiKey>> load_api_keys(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return make_error("--api-key-file {}: cannot open", path);
  std::vector<ApiKey> keys;
  std::string line;
  size_t bytes = 0;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    bytes += line.size() + 1;
    if (bytes > (size_t(1) << 20)) return make_error("--api-key-file {}: over 1 MiB", path);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const size_t start = line.find_first_not_of(" \t");
    if (start == std::string::npos || line[start] == '#') continue;
    const size_t key_end = line.find_first_of(" \t", start);
    ApiKey k;
    k.key = line.substr(start, key_end - start);
    if (key_end != std::string::npos) {
      const size_t t0 = line.find_first_not_of(" \t", key_end);
      if (t0 != std::string::npos) k.tenant = line.substr(t0, line.find_last_not_of(" \t") + 1 - t0);
    }
    if (k.tenant.empty()) k.tenant = fmt::format("key{}", n);
    if (k.key.size() > 512) return make_error("--api-key-file {}:{}: key over 512 bytes", path, n);
    for (char c : k.key + k.tenant)
      if (uint8_t(c) < 0x20 || uint8_t(c) >= 0x7f)
        return make_error("--api-key-file {}:{}: keys and tenant names are printable ASCII", path, n);
    for (const ApiKey& o : keys)
      if (o.key == k.key) return make_error("--api-key-file {}:{}: repeated key", path, n);
    keys.push_back(std::move(k));
  }
  if (keys.empty()) return make_error("--api-key-file {}: no keys", path);
  return keys;
}

// One completion response in progress. Lives in Server::jobs_ until its response is handed
// to the HTTP layer or its client leaves; the stream's listener holds it weakly.
struct Server::Job {
  std::shared_ptr<HttpExchange> ex;
  Endpoint endpoint;
  const char* path = "";
  CompletionRequest req;
  std::shared_ptr<RequestStream> stream;
  std::string id;
  int64_t created = 0;
  Clock::time_point start;
  double ttft = -1.0;  // seconds, once the first token arrived
  bool first_token = true;
  bool done = false;                        // the response is complete (or abandoned)
  std::atomic<bool> drain_queued{false};    // a drain is posted to the I/O thread
  std::vector<Choice> choices;              // per choice: text (whole response), logprobs
  std::vector<int64_t> n_tokens;            // per choice
  std::vector<int64_t> streamed_chars;      // per choice: text_offset of the next chunk
  std::vector<bool> role_sent;              // chat stream: the first chunk carries the role
  std::vector<Clock::time_point> last_token;  // per choice, for inter-token latency
  std::vector<RequestStream::Event> events;
};

struct Server::Workers {
  explicit Workers(int n) : pool(size_t(std::max(1, n))) {}
  boost::asio::thread_pool pool;
};

Server::Server(const ServerOptions& opt, Scheduler& scheduler, const Tokenizer& tok,
               std::optional<ChatTemplate> chat)
    : opt_(opt), sched_(scheduler), tok_(tok), chat_(std::move(chat)),
      constraints_(std::make_unique<constrain::ConstraintCompiler>(tok, tok.n_vocab())),
      http_(std::make_unique<HttpServer>(opt.http, static_cast<HttpHandler&>(*this))),
      workers_(std::make_unique<Workers>(opt.prepare_threads)) {
  limits_.max_body_bytes = opt.http.max_body_bytes;
  limits_.model_names = opt.model_names;
  limits_.max_n = scheduler.config().n_slots;
  created_ = unix_now();
  for (TokenId t = 0; t < tok.n_vocab(); ++t) max_token_bytes_ = std::max(max_token_bytes_, tok.token_bytes(t).size());

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
  // What the KV cache type costs (--kv-type): per position of a full layer stack, per sequence
  // at its context, and the cache in all.
  const KvShape& kv = sched_.cache().shape();
  metrics_.gauge("kv_bytes_per_token", std::string("KV bytes one position takes in every attention layer (") +
                 kv.describe_types() + ")").set(double(kv.bytes_per_token()));
  metrics_.gauge("kv_bytes_per_sequence", "KV bytes one sequence takes at its full context")
      .set(double(kv.bytes_per_seq()));
  metrics_.gauge("kv_cache_bytes", "Bytes of the whole KV cache (block pool, rings, state)")
      .set(double(sched_.cache().bytes()));
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

  connections_ = &metrics_.gauge("http_connections", "Open HTTP connections");
}

Server::~Server() {
  // Workers may still hold exchanges that post to the HTTP layer's I/O context: join them first.
  workers_->pool.join();
  workers_.reset();
}

HttpResponse Server::counted_error(const ApiError& e) {
  requests_->inc(std::to_string(e.status));
  return error_reply(e);
}

HttpResponse Server::error_response(int status, std::string_view message) {
  ApiError e = api_error(status, status >= 500 ? "server_error" : "invalid_request_error", std::string(message));
  if (status == 413) e.code = "request_too_large";
  return counted_error(e);
}

std::optional<int> Server::authenticate(const HttpRequest& r) const {
  if (opt_.api_keys.empty()) return -1;
  // "Bearer" is a case-insensitive scheme (RFC 9110 11.1), then one or more spaces.
  std::string_view auth = r.header("Authorization");
  const size_t sp = auth.find(' ');
  if (sp == std::string_view::npos || !ascii_iequals(auth.substr(0, sp), "Bearer")) return std::nullopt;
  std::string_view key = auth.substr(sp);
  while (!key.empty() && key.front() == ' ') key.remove_prefix(1);
  while (!key.empty() && key.back() == ' ') key.remove_suffix(1);
  // Every key is compared (no early exit), each in constant time.
  std::optional<int> found;
  for (size_t i = 0; i < opt_.api_keys.size(); ++i)
    if (same_secret(key, opt_.api_keys[i].key)) found = int(i);
  return found;
}

std::optional<HttpResponse> Server::check_head(HttpRequest& head) {
  const Route* route = find_route(head.path);
  if (route == nullptr)
    return counted_error(api_error(404, "invalid_request_error", fmt::format("no route {}", loggable(head.path)), "not_found"));
  if (head.method != route->method) {
    HttpResponse r = counted_error(api_error(405, "invalid_request_error",
                                             fmt::format("{} takes {}", route->path, route->method), "method_not_allowed"));
    r.headers.emplace_back("Allow", std::string(route->method));
    return r;
  }
  if (route->protected_path) {
    const std::optional<int> key = authenticate(head);
    if (!key)
      return counted_error(api_error(401, "invalid_request_error",
                                     head.header("Authorization").empty()
                                         ? "missing API key: send 'Authorization: Bearer KEY'"
                                         : "incorrect API key provided",
                                     "invalid_api_key"));
    head.principal = *key;  // the tenant, for prepare()
  }
  if (route->method == "POST" && draining_)
    return counted_error(api_error(503, "server_error", "the server is shutting down", "shutting_down"));
  return std::nullopt;
}

void Server::handle(std::shared_ptr<HttpExchange> ex) {
  const std::string& path = ex->request().path;
  if (path == "/health") {
    ex->reply(draining_ ? json_response(503, R"({"status":"shutting down"})") : json_response(200, R"({"status":"ok"})"));
  } else if (path == "/v1/models") {
    // Only the main name: the others (file name, path) are accepted but not advertised.
    requests_->inc("200");
    ex->reply(json_response(200, models_json({opt_.model_names.front()}, created_)));
  } else if (path == "/metrics") {
    HttpResponse r = json_response(200, render_metrics());
    r.content_type = "text/plain; version=0.0.4";
    ex->reply(std::move(r));
  } else {
    const Endpoint e = path == "/v1/chat/completions" ? Endpoint::ChatCompletions : Endpoint::Completions;
    boost::asio::post(workers_->pool, [this, ex = std::move(ex), e] {
      try {
        prepare(ex, e);
      } catch (const std::exception& err) {
        // Never the exception's text to the client: it may name files or internals.
        std::fprintf(stderr, "error: %s: %s\n", ex->request().path.c_str(), loggable(err.what()).c_str());
        fail(ex, ex->request().path.c_str(), api_error(500, "server_error", "internal error"));
      }
    });
  }
}

void Server::fail(const std::shared_ptr<HttpExchange>& ex, const char* path, const ApiError& e) {
  if (opt_.log_requests) std::fprintf(stderr, "POST %s %d %s\n", path, e.status, loggable(e.message).c_str());
  ex->reply(counted_error(e));
}

void Server::prepare(const std::shared_ptr<HttpExchange>& ex, Endpoint endpoint) {
  const auto start = Clock::now();
  const char* path = endpoint == Endpoint::ChatCompletions ? "/v1/chat/completions" : "/v1/completions";
  const char* prompt_param = endpoint == Endpoint::ChatCompletions ? "messages" : "prompt";
  if (ex->aborted()) return;
  auto parsed = parse_request(endpoint, ex->request().body, limits_);
  if (auto* e = std::get_if<ApiError>(&parsed)) return fail(ex, path, *e);
  CompletionRequest req = std::move(std::get<CompletionRequest>(parsed));
  const int64_t n_ctx = sched_.n_ctx();
  auto too_long = [&](int64_t n_prompt) {
    return api_error(400, "invalid_request_error",
                     fmt::format("this model's context holds {} tokens, but the prompt has {} (and at least "
                                 "one token must be generated)", n_ctx, n_prompt),
                     "context_length_exceeded", prompt_param);
  };

  // The prompt as tokens; text that cannot fit is refused before it is tokenized (each token
  // stands for at most max_token_bytes_ bytes).
  if (endpoint == Endpoint::ChatCompletions && !chat_)
    return fail(ex, path, api_error(400, "invalid_request_error",
                                    "this model has no chat template; use /v1/completions", {}, "messages"));
  std::vector<TokenId> prompt;
  if (!req.prompt_is_tokens) {
    size_t text_bytes = req.prompt.size();  // completions; chat: its messages' text
    for (const ChatMessage& m : req.messages) text_bytes += m.content.size();
    const int64_t at_least = int64_t(text_bytes / max_token_bytes_);
    if (at_least >= n_ctx) return fail(ex, path, too_long(at_least));
  }
  if (req.prompt_is_tokens) {  // completions only
    prompt.assign(req.prompt_tokens.begin(), req.prompt_tokens.end());
  } else if (endpoint == Endpoint::ChatCompletions) {
    // A tool call: the model is told the functions and the answer's form by a system turn.
    if (req.tool_call) {
      if (!req.messages.empty() && req.messages[0].role == "system")
        req.messages[0].content = tool_system_text(req) + "\n" + req.messages[0].content;
      else
        req.messages.insert(req.messages.begin(), ChatMessage{"system", tool_system_text(req)});
    }
    // Control tokens only where the template writes them, never from message text (unless
    // --parse-special): a message cannot forge a turn.
    Result<std::vector<TokenId>> ids = encode_chat(tok_, *chat_, req.messages, true, opt_.parse_special);
    if (!ids.ok()) return fail(ex, path, api_error(400, "invalid_request_error", ids.error().message, {}, prompt_param));
    prompt = std::move(*ids);
  } else {
    Result<std::vector<TokenId>> ids = tok_.try_encode(req.prompt, true);
    if (!ids.ok()) return fail(ex, path, api_error(400, "invalid_request_error", ids.error().message, {}, prompt_param));
    if (tok_.add_bos()) prompt.push_back(tok_.bos());
    prompt.insert(prompt.end(), ids->begin(), ids->end());
  }
  const int64_t n_prompt = int64_t(prompt.size());
  if (n_prompt >= n_ctx) return fail(ex, path, too_long(n_prompt));
  const int64_t limit = opt_.max_tokens_limit > 0 ? opt_.max_tokens_limit : n_ctx;
  if (req.max_tokens > limit)
    return fail(ex, path, api_error(400, "invalid_request_error",
                                    fmt::format("max_tokens is {}, but this server generates at most {} tokens per request",
                                                req.max_tokens, limit),
                                    "invalid_value", "max_tokens"));
  if (req.max_tokens > 0 && n_prompt + req.max_tokens > n_ctx)
    return fail(ex, path, api_error(400, "invalid_request_error",
                                    fmt::format("this model's context holds {} tokens, but {} were requested ({} in the "
                                                "prompt, {} to generate); reduce the prompt or max_tokens",
                                                n_ctx, n_prompt + req.max_tokens, n_prompt, req.max_tokens),
                                    "context_length_exceeded", "max_tokens"));

  // The output constraint, compiled here on the worker (cached by content across requests).
  std::shared_ptr<const constrain::CompiledConstraint> constraint;
  if (req.tool_call || !req.constraint.empty()) {
    constrain::ConstraintSpec spec = req.constraint;
    std::string param = req.constraint_param;
    if (req.tool_call) {
      spec.kind = constrain::ConstraintSpec::Kind::JsonSchema;
      spec.text = tool_call_schema(req);
      param = "tools";
    }
    auto c = constraints_->compile(spec);
    if (!c.ok())
      return fail(ex, path, api_error(400, "invalid_request_error", fmt::format("Invalid '{}': {}", param, c.error().message),
                                      "invalid_value", param));
    constraint = std::move(c).value();
  }

  // Tenant: the key's, for fair admission; the cache salt by scope.
  const int key = ex->request().principal;  // check_head authenticated it
  const std::string tenant = key >= 0 ? opt_.api_keys[size_t(key)].tenant : std::string();
  GenRequest gen;
  gen.prompt = std::move(prompt);
  gen.max_tokens = req.max_tokens > 0 ? req.max_tokens : (opt_.max_tokens_limit > 0 ? opt_.max_tokens_limit : -1);
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
  if (constraint) gen.constraint = [constraint] { return constraint->make(); };
  gen.tenant = tenant;
  switch (opt_.cache_scope) {
    case CacheScope::Global: gen.cache_salt = 0; break;
    case CacheScope::Tenant: gen.cache_salt = key >= 0 ? salt_of(tenant, {}) : 0; break;
    case CacheScope::User: gen.cache_salt = salt_of(tenant, req.user); break;
  }
  Scheduler::Submitted sub = sched_.submit(std::move(gen));
  using Code = Scheduler::Submitted::Code;
  if (sub.code == Code::Invalid) return fail(ex, path, api_error(400, "invalid_request_error", sub.message, {}, prompt_param));
  if (sub.code == Code::Overloaded)
    return fail(ex, path, api_error(503, "server_error", "the server is busy: " + sub.message + "; retry later",
                                    "server_overloaded"));
  if (sub.code == Code::ShuttingDown)
    return fail(ex, path, api_error(503, "server_error", "the server is shutting down", "shutting_down"));
  prompt_tokens_->inc(double(n_prompt));

  auto job = std::make_shared<Job>();
  job->ex = ex;
  job->endpoint = endpoint;
  job->path = path;
  job->stream = sub.stream;
  job->id = random_id(endpoint == Endpoint::ChatCompletions ? "chatcmpl-" : "cmpl-");
  job->created = unix_now();
  job->start = start;
  job->choices.resize(size_t(req.n));
  for (int32_t i = 0; i < req.n; ++i) {
    job->choices[size_t(i)].index = i;
    job->choices[size_t(i)].has_logprobs = req.logprobs;
  }
  job->n_tokens.assign(size_t(req.n), 0);
  job->streamed_chars.assign(size_t(req.n), 0);
  job->role_sent.assign(size_t(req.n), false);
  job->last_token.assign(size_t(req.n), start);
  job->req = std::move(req);
  start_job(job);
}

void Server::start_job(const std::shared_ptr<Job>& job) {
  {
    std::lock_guard lock(jobs_mu_);
    jobs_[job.get()] = job;
  }
  // Each event wakes the I/O thread once: a drain already queued takes the later events too.
  std::weak_ptr<Job> weak = job;
  job->stream->set_listener([this, weak] {
    auto j = weak.lock();
    if (j && !j->drain_queued.exchange(true)) j->ex->post([this, j] { drain(j); });
  });
  job->ex->on_abort([this, weak] {
    auto j = weak.lock();
    if (!j || j->done) return;
    j->stream->cancel();
    requests_->inc("disconnected");
    finish(*j, "disconnected");
  });
  if (job->req.stream) job->ex->begin_stream(200, "text/event-stream");
  if (!job->drain_queued.exchange(true)) job->ex->post([this, job] { drain(job); });
}

void Server::drain(const std::shared_ptr<Job>& jp) {
  Job& job = *jp;
  job.drain_queued.store(false);  // before taking events: a later event queues another drain
  if (job.done) return;
  try {
    drain_events(job);
  } catch (const std::exception& e) {
    // Logged, never shown to the client; the request ends like an engine error.
    std::fprintf(stderr, "error: %s: %s\n", job.path, loggable(e.what()).c_str());
    end_with_error(job, {}, api_error(500, "server_error", "internal error"), "500 (internal error)");
  }
}

void Server::end_with_error(Job& job, std::string out, const ApiError& e, const char* outcome) {
  job.stream->cancel();  // the other choices, if any
  if (job.req.stream) {
    append_event(out, error_json(e));
    job.ex->send(std::move(out));
    job.ex->end();
    requests_->inc(std::to_string(e.status));
  } else {
    job.ex->reply(counted_error(e));
  }
  finish(job, outcome);
}

void Server::drain_events(Job& job) {
  job.events.clear();
  const bool complete = job.stream->wait(job.events, std::chrono::milliseconds(0));
  const bool streaming = job.req.stream;
  auto to_logprob = [this](const TokenLogprobs& lp) {
    TokenLogprob t;
    t.token = tok_.token_bytes(lp.token);
    t.logprob = lp.logprob;
    for (const auto& [id, l] : lp.top) t.top.push_back({tok_.token_bytes(id), l});
    return t;
  };
  std::string out;
  auto emit_chunk = [&](const Choice& c, int32_t index) {
    const bool first = !job.role_sent[size_t(index)];
    job.role_sent[size_t(index)] = true;
    append_event(out, chunk_json(job.endpoint, job.req.model, job.id, job.created, c, first));
  };
  std::optional<ApiError> failed;  // the generation ended in an error or was cancelled by the server
  for (RequestStream::Event& e : job.events) {
    const size_t ci = size_t(e.choice);
    Choice& acc = job.choices[ci];
    if (e.end && (e.finish == FinishReason::Error || e.finish == FinishReason::Cancelled)) {
      if (!failed) {
        failed = e.finish == FinishReason::Error
                     ? api_error(500, "server_error", "generation failed: " + e.error)
                     : api_error(503, "server_error", "the server shut down before the request finished",
                                 "shutting_down");
      }
      continue;
    }
    if (!e.end) {
      const auto now = Clock::now();
      if (job.first_token) ttft_->observe(job.ttft = seconds_since(job.start));
      else if (job.n_tokens[ci] > 0) itl_->observe(std::chrono::duration<double>(now - job.last_token[ci]).count());
      job.first_token = false;
      job.last_token[ci] = now;
      ++job.n_tokens[ci];
      generated_tokens_->inc();
    }
    if (!streaming || job.req.tool_call) {
      acc.text += e.text;
      if (e.has_logprobs) acc.logprobs.push_back(to_logprob(e.logprobs));
      if (e.end) {
        acc.finish_reason = finish_reason_name(e.finish);
        if (job.req.tool_call) as_tool_call(acc);
        // A tool call is streamed whole once generated: its arguments are only known to be
        // a complete call at the end.
        if (streaming) {
          Choice body = acc;  // the call (or the cut-short text), then the finish on its own
          body.finish_reason.clear();
          emit_chunk(body, e.choice);
          Choice c;
          c.index = e.choice;
          c.finish_reason = acc.finish_reason;
          emit_chunk(c, e.choice);
        }
      }
      continue;
    }
    if (!e.text.empty() || e.has_logprobs) {
      Choice c;
      c.index = e.choice;
      c.text = e.text;
      c.has_logprobs = e.has_logprobs;
      if (e.has_logprobs) c.logprobs.push_back(to_logprob(e.logprobs));
      c.text_offset = job.streamed_chars[ci];
      job.streamed_chars[ci] += int64_t(e.text.size());
      emit_chunk(c, e.choice);
    }
    if (e.end) {
      Choice c;
      c.index = e.choice;
      c.finish_reason = finish_reason_name(e.finish);
      c.text_offset = job.streamed_chars[ci];
      emit_chunk(c, e.choice);
    }
  }
  if (failed)
    return end_with_error(job, std::move(out), *failed, failed->status == 503 ? "503 (shut down)" : "500 (engine error)");
  if (complete) {
    Usage u;
    u.prompt_tokens = job.stream->prompt_tokens();
    for (int64_t n : job.n_tokens) u.completion_tokens += n;
    u.cached_tokens = job.stream->cached_tokens();
    if (streaming) {
      if (job.req.include_usage) append_event(out, usage_chunk_json(job.endpoint, job.req.model, job.id, job.created, u));
      append_event(out, "[DONE]");
    } else {
      job.ex->reply(json_response(200, completion_json(job.req, job.id, job.created, job.choices, u)));
    }
  }
  if (streaming && !out.empty()) job.ex->send(std::move(out));
  if (complete) {
    if (streaming) job.ex->end();
    requests_->inc("200");
    duration_->observe(seconds_since(job.start));
    finish(job, "200");
  }
}

void Server::as_tool_call(Choice& c) {
  if (c.finish_reason != "stop") return;  // cut short: the text as it is, finish "length"
  std::optional<ToolCall> call = parse_tool_call(c.text);
  if (!call) return;
  c.tool_calls.push_back(std::move(*call));
  c.text.clear();
  c.finish_reason = "tool_calls";
}

void Server::finish(Job& job, const char* outcome) {
  job.done = true;
  if (opt_.log_requests) {
    int64_t completion = 0;
    for (int64_t n : job.n_tokens) completion += n;
    const int64_t drafted = job.stream->drafted_tokens(), accepted = job.stream->accepted_tokens();
    const std::string spec =
        drafted > 0 ? fmt::format(" spec {}/{} accepted ({:.0f}%)", accepted, drafted, 100.0 * double(accepted) / double(drafted))
                    : std::string();
    std::fprintf(stderr, "POST %s %s prompt %lld (cached %lld) completion %lld ttft %.0f ms total %.0f ms%s%s\n",
                 job.path, outcome, (long long)job.stream->prompt_tokens(), (long long)job.stream->cached_tokens(),
                 (long long)completion, job.ttft * 1000.0, seconds_since(job.start) * 1000.0, spec.c_str(),
                 job.req.stream ? " stream" : "");
  }
  job.stream->set_listener({});
  std::lock_guard lock(jobs_mu_);
  jobs_.erase(&job);
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
  connections_->set(double(http_->connections()));
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
  PG_ASSIGN(const int port, http_->bind(opt_.host, opt_.port));
  if (draining_) return Status::Ok();  // shut down before serving
  if (on_listening) on_listening(port);
  http_->run();
  return Status::Ok();
}

void Server::shutdown() {
  draining_.store(true);
  if (shutting_down_.exchange(true)) return;
  sched_.shutdown(std::chrono::milliseconds(int64_t(opt_.grace_seconds * 1000)));
  // The scheduler has ended every stream; give the I/O thread a moment to hand the last
  // responses over. Clients too slow to read them are not waited for.
  const auto deadline = Clock::now() + std::chrono::seconds(2);
  while (Clock::now() < deadline) {
    {
      std::lock_guard lock(jobs_mu_);
      if (jobs_.empty()) break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  http_->stop();
}

}  // namespace peregrine::serve
