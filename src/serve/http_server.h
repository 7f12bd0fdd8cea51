// An HTTP/1.1 server for untrusted networks: Boost.Beast's request parser over Boost.Asio,
// one I/O thread, no knowledge of the API it serves (serve/server.h plugs in as an HttpHandler).
//
// What it guarantees, whatever the peer sends:
//   - memory per connection is bounded: the header (request line and fields) by
//     max_header_bytes and max_fields, the body by max_body_bytes whatever its framing
//     (Content-Length or chunked); Content-Encoding other than identity is refused (415), so
//     nothing is ever decompressed; at most max_connections connections (more get a 503);
//   - time is bounded: a request must arrive whole within read_timeout of its first byte, an
//     idle keep-alive connection is closed after idle_timeout, a write that does not finish
//     within write_timeout closes the connection;
//   - framing is strict (RFC 9112): bad or conflicting Content-Length, Transfer-Encoding other
//     than exactly "chunked", both Transfer-Encoding and Content-Length, bare LF line ends and
//     malformed chunks are refused; whenever a response is sent before a declared body was read
//     (authentication, routing, limits) the connection is closed after it, so a body can never
//     be read as the next request (no request smuggling);
//   - a client that goes away is noticed at once: while a response is being produced the
//     connection keeps reading, and end of stream or an error aborts the exchange (half-closing
//     the sending side counts as leaving);
//   - HTTP/1.0 clients get no chunked encoding: streams end by closing the connection.
// Pipelined requests are answered in order; `Expect: 100-continue` gets its interim response
// only after the header passed the handler's checks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace peregrine::serve {

struct HttpLimits {
  size_t max_header_bytes = 16 << 10;  // request line and header fields together
  size_t max_fields = 100;
  size_t max_body_bytes = 4 << 20;
  double read_timeout = 10.0;   // seconds from a request's first byte to its last
  double idle_timeout = 30.0;   // seconds a keep-alive connection may wait for a request
  double write_timeout = 30.0;  // seconds one write may take
  size_t max_connections = 1024;
};

struct HttpRequest {
  std::string method;  // "GET", "POST", ...
  std::string target;  // as sent, e.g. "/v1/models?x=1"
  std::string path;    // target up to '?'
  int version = 11;    // 10 or 11
  std::vector<std::pair<std::string, std::string>> fields;  // in order, names as sent
  std::string body;
  bool declares_body = false;  // Content-Length > 0 or chunked
  // Set by HttpHandler::check_head (e.g. which API key authenticated it), carried to handle().
  int principal = -1;

  // The first field of that name (ASCII case-insensitive), or "" when absent.
  std::string_view header(std::string_view name) const;
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // extra fields
};

class HttpConnection;

// One request and its response. The handler answers with reply(), or with begin_stream(),
// send()... and end(); these may be called from any thread (they are queued to the I/O thread).
// Calls after the response ended, or after the client left, do nothing.
class HttpExchange {
 public:
  // id tells this exchange from the connection's earlier ones.
  HttpExchange(uint64_t id, HttpRequest req, std::weak_ptr<HttpConnection> conn,
               std::function<void(std::function<void()>)> post);

  const HttpRequest& request() const { return req_; }

  void reply(HttpResponse r);
  // A body of unknown length: chunked for HTTP/1.1, ended by closing for HTTP/1.0.
  void begin_stream(int status, std::string content_type);
  void send(std::string data);
  void end();
  // f runs once, on the I/O thread, if the client leaves (or a write times out, or the server
  // stops) before the response ended; soon, on the I/O thread, if that already happened.
  // Any thread.
  void on_abort(std::function<void()> f);
  bool aborted() const;
  // Runs f on the I/O thread.
  void post(std::function<void()> f) { post_(std::move(f)); }

 private:
  friend class HttpConnection;
  void abort();  // I/O thread

  const uint64_t id_;
  HttpRequest req_;
  std::weak_ptr<HttpConnection> conn_;
  std::function<void(std::function<void()>)> post_;
  mutable std::mutex mu_;
  std::function<void()> on_abort_;
  bool aborted_ = false;
};

class HttpHandler {
 public:
  virtual ~HttpHandler() = default;
  // After the header, before the body: a response to send instead (unknown route, wrong
  // method, authentication, shutting down), or nullopt to read the body and call handle().
  // It may set head.principal for handle() to find in the request.
  virtual std::optional<HttpResponse> check_head(HttpRequest& head) = 0;
  // The whole request, on the I/O thread: answer now or hand the exchange to another thread;
  // never block.
  virtual void handle(std::shared_ptr<HttpExchange> ex) = 0;
  // The body of the server's own error responses (400, 408, 413, 415, 417, 431, 501, 503).
  virtual HttpResponse error_response(int status, std::string_view message) = 0;
};

class HttpServer {
 public:
  HttpServer(const HttpLimits& limits, HttpHandler& handler);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Binds and listens; returns the port (useful with port 0).
  Result<int> bind(const std::string& host, int port);
  // Serves on the calling thread until stop().
  void run();
  // Closes the listener and every connection (aborting their exchanges); run() returns. Any thread.
  void stop();
  size_t connections() const;

  struct Impl;  // the I/O state, shared with the connections (http_server.cpp)

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace peregrine::serve
