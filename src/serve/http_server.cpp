#include "serve/http_server.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <deque>
#include <unordered_map>

#include <boost/asio.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>

namespace peregrine::serve {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

char lower(char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; }

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return lower(x) == lower(y); });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// The elements of every field named `name`, comma-separated lists split and trimmed (RFC 9110 5.6.1).
std::vector<std::string_view> list_elements(const HttpRequest& r, std::string_view name) {
  std::vector<std::string_view> out;
  for (const auto& [n, v] : r.fields) {
    if (!iequals(n, name)) continue;
    std::string_view rest = v;
    while (true) {
      const size_t comma = rest.find(',');
      if (std::string_view e = trim(rest.substr(0, comma)); !e.empty()) out.push_back(e);
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
  }
  return out;
}

Clock::duration seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

std::string status_line(int version, int status) {
  const auto reason = bhttp::obsolete_reason(bhttp::int_to_status(unsigned(status)));
  return fmt::format("HTTP/{}.{} {} {}\r\n", version / 10, version % 10, status,
                     std::string_view(reason.data(), reason.size()));
}

constexpr size_t kLingerBytes = 1 << 20;           // read and dropped after a closing error
constexpr double kLingerSeconds = 2.0;
constexpr size_t kReadChunk = 16 << 10;

}  // namespace

std::string_view HttpRequest::header(std::string_view name) const {
  for (const auto& [n, v] : fields)
    if (iequals(n, name)) return v;
  return {};
}

// ---- The server's shared state -----------------------------------------------------------

struct HttpServer::Impl {
  Impl(const HttpLimits& l, HttpHandler& h) : limits(l), handler(h) {}
  void accept();

  HttpLimits limits;
  HttpHandler& handler;
  asio::io_context io{1};
  tcp::acceptor acceptor{io};
  asio::steady_timer accept_retry{io};
  // Open connections, touched on the I/O thread only; n_conns mirrors the size for other threads.
  std::unordered_map<HttpConnection*, std::weak_ptr<HttpConnection>> conns;
  std::atomic<size_t> n_conns{0};
  bool stopped = false;
  uint64_t next_exchange = 1;
};

// ---- One connection ------------------------------------------------------------------------
//
// Phases: Request (reading and parsing a request; the deadline is the idle or the read timeout),
// Response (the exchange is out with the handler or its response is being written; the
// connection keeps reading, to notice a departed client and to buffer pipelined requests, and a
// write deadline runs while bytes are pending), Linger (an error response was sent and the
// connection is closing: the send side is shut, what the client still sends is read and dropped
// for a moment so that it sees the response instead of a reset), Closed.
class HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  HttpConnection(tcp::socket s, HttpServer::Impl& srv) : sock_(std::move(s)), timer_(srv.io), srv_(srv) {}

  void start(bool over_capacity) {
    boost::system::error_code ec;
    sock_.set_option(tcp::no_delay(true), ec);  // streamed tokens go out at once
    if (over_capacity) {
      respond_now(srv_.handler.error_response(503, "too many connections; retry later"), true);
      return;
    }
    new_request();
  }

  void close() {
    if (phase_ == Phase::Closed) return;
    phase_ = Phase::Closed;
    ++timer_gen_;
    timer_.cancel();
    boost::system::error_code ec;
    sock_.shutdown(tcp::socket::shutdown_both, ec);
    sock_.close(ec);
    srv_.conns.erase(this);
    srv_.n_conns.store(srv_.conns.size());
    if (ex_ && !response_done_) ex_->abort();
    ex_.reset();
  }

  // From HttpExchange, on the I/O thread. `id` tells the current exchange from earlier ones.
  void reply(uint64_t id, HttpResponse r) {
    if (!current(id) || streaming_) return;
    respond_now(r, !keep_alive_);
  }

  void begin_stream(uint64_t id, int status, const std::string& content_type) {
    if (!current(id) || streaming_) return;
    streaming_ = true;
    chunked_ = version_ >= 11;
    std::string head = status_line(version_, status);
    head += fmt::format("Content-Type: {}\r\nCache-Control: no-cache\r\n", content_type);
    if (chunked_) {
      head += "Transfer-Encoding: chunked\r\n";
      if (!keep_alive_) head += "Connection: close\r\n";
    } else {
      head += "Connection: close\r\n";  // the end of the body is the end of the connection
    }
    head += "\r\n";
    close_after_ = !keep_alive_ || !chunked_;
    queue(std::move(head));
  }

  void send(uint64_t id, const std::string& data) {
    if (!current(id) || !streaming_ || data.empty()) return;
    queue(chunked_ ? fmt::format("{:x}\r\n{}\r\n", data.size(), data) : data);
  }

  void end(uint64_t id) {
    if (!current(id) || !streaming_) return;
    response_done_ = true;
    if (chunked_) queue("0\r\n\r\n");
    else flush();
  }

 private:
  enum class Phase { Request, Response, Linger, Closed };

  bool current(uint64_t id) const {
    return phase_ == Phase::Response && ex_ && ex_id_ == id && !response_done_;
  }

  void new_request() {
    phase_ = Phase::Request;
    parser_.emplace();
    parser_->header_limit(uint32_t(std::min<size_t>(srv_.limits.max_header_bytes, UINT32_MAX)));
    parser_->body_limit(uint64_t(srv_.limits.max_body_bytes));
    head_ = HttpRequest{};
    head_checked_ = false;
    ex_.reset();
    streaming_ = chunked_ = response_done_ = close_after_ = false;
    keep_alive_ = true;
    version_ = 11;
    request_started_ = in_.size() > 0;
    set_deadline(Clock::now() + seconds(request_started_ ? srv_.limits.read_timeout : srv_.limits.idle_timeout));
    if (request_started_) {
      // A pipelined request is already here; parse it from the I/O loop, not from this stack.
      asio::post(srv_.io, [self = shared_from_this()] {
        if (self->phase_ == Phase::Request) self->parse();
      });
    }
    read();
  }

  void read() {
    if (reading_ || phase_ == Phase::Closed) return;
    // Stop reading while enough is buffered (a pipelining or flooding client): it waits in
    // the kernel until the current response is done.
    if (phase_ != Phase::Linger && in_.size() >= srv_.limits.max_header_bytes + kReadChunk) return;
    reading_ = true;
    sock_.async_read_some(in_.prepare(kReadChunk), [self = shared_from_this()](boost::system::error_code ec, size_t n) {
      self->on_read(ec, n);
    });
  }

  void on_read(boost::system::error_code ec, size_t n) {
    reading_ = false;
    if (phase_ == Phase::Closed) return;
    if (ec) return close();  // end of stream or an error: the client is gone
    in_.commit(n);
    switch (phase_) {
      case Phase::Linger:
        lingered_ += n;
        in_.consume(in_.size());
        if (lingered_ > kLingerBytes) return close();
        break;
      case Phase::Request:
        if (!request_started_) {
          request_started_ = true;
          set_deadline(Clock::now() + seconds(srv_.limits.read_timeout));
        }
        parse();
        break;
      case Phase::Response:  // pipelined bytes wait in in_
      case Phase::Closed:
        break;
    }
    read();
  }

  void parse() {
    while (phase_ == Phase::Request && in_.size() > 0) {
      boost::system::error_code ec;
      const size_t n = parser_->put(in_.data(), ec);
      in_.consume(n);
      if (parser_->is_header_done() && !head_checked_) {
        head_checked_ = true;
        if (!check_header()) return;
      }
      if (ec == bhttp::error::need_more) break;
      if (ec) return fail_parse(ec);
      if (parser_->is_done()) return dispatch();
      if (n == 0) break;
    }
  }

  void fail_parse(boost::system::error_code ec) {
    if (ec == bhttp::error::body_limit)
      return fail(413, fmt::format("request body is over the {} byte limit", srv_.limits.max_body_bytes));
    if (ec == bhttp::error::header_limit)
      return fail(431, fmt::format("request header is over the {} byte limit", srv_.limits.max_header_bytes));
    fail(400, fmt::format("malformed HTTP request: {}", ec.message()));
  }

  // The header is complete: framing rules, then the handler's routing and authentication.
  // false when it answered (the body is left unread and the connection closes).
  bool check_header() {
    const auto& m = parser_->get();
    version_ = int(m.version());
    keep_alive_ = parser_->keep_alive();
    head_.method = std::string(m.method_string());
    head_.target = std::string(m.target());
    head_.path = head_.target.substr(0, head_.target.find('?'));
    head_.version = version_;
    size_t n_fields = 0;
    for (const auto& f : m) {
      if (++n_fields > srv_.limits.max_fields) {
        fail(431, fmt::format("more than {} header fields", srv_.limits.max_fields));
        return false;
      }
      head_.fields.emplace_back(std::string(f.name_string()), std::string(f.value()));
    }
    head_.declares_body = parser_->chunked() || parser_->content_length().value_or(0) > 0;

    auto reject = [this](int status, std::string_view message) {
      fail(status, message);
      return false;
    };
    // Transfer-Encoding: only "chunked", once (RFC 9112 6.1); Beast took "gzip, chunked" as chunked.
    if (const auto te = list_elements(head_, "Transfer-Encoding"); !te.empty()) {
      if (version_ < 11) return reject(400, "Transfer-Encoding in an HTTP/1.0 request");
      const auto n_chunked = std::count_if(te.begin(), te.end(), [](std::string_view e) { return iequals(e, "chunked"); });
      if (n_chunked > 1 || (n_chunked == 1 && !iequals(te.back(), "chunked")))
        return reject(400, "Transfer-Encoding must end with one \"chunked\"");
      if (te.size() != 1 || n_chunked == 0)
        return reject(501, "unsupported Transfer-Encoding (only \"chunked\" is accepted)");
    }
    // Content-Encoding: a compressed body could inflate far past the body limit; none is accepted.
    for (std::string_view e : list_elements(head_, "Content-Encoding"))
      if (!iequals(e, "identity"))
        return reject(415, fmt::format("unsupported Content-Encoding \"{}\"; send the body uncompressed", e));
    bool expect_continue = false;
    if (const auto ex = list_elements(head_, "Expect"); !ex.empty()) {
      if (ex.size() != 1 || !iequals(ex[0], "100-continue")) return reject(417, "unsupported Expect");
      expect_continue = version_ >= 11;
    }
    if (std::optional<HttpResponse> r = srv_.handler.check_head(head_)) {
      respond_now(*r, !keep_alive_ || (head_.declares_body && !parser_->is_done()));
      return false;
    }
    if (expect_continue && head_.declares_body && !parser_->is_done()) queue("HTTP/1.1 100 Continue\r\n\r\n");
    return true;
  }

  void dispatch() {
    head_.body = std::move(parser_->get().body());
    phase_ = Phase::Response;
    set_deadline(Clock::time_point::max());
    ex_id_ = srv_.next_exchange++;
    std::weak_ptr<HttpConnection> weak = weak_from_this();
    ex_ = std::make_shared<HttpExchange>(std::move(head_), weak, [&io = srv_.io](std::function<void()> f) {
      asio::post(io, std::move(f));
    });
    ex_->id_ = ex_id_;
    srv_.handler.handle(ex_);
    read();
  }

  // An error found while reading a request: answer and close.
  void fail(int status, std::string_view message) { respond_now(srv_.handler.error_response(status, message), true); }

  void respond_now(const HttpResponse& r, bool close) {
    phase_ = Phase::Response;
    close_after_ = close;
    std::string out = status_line(version_, r.status);
    out += fmt::format("Content-Type: {}\r\nContent-Length: {}\r\n", r.content_type, r.body.size());
    for (const auto& [n, v] : r.headers) out += fmt::format("{}: {}\r\n", n, v);
    if (close) out += "Connection: close\r\n";
    else if (version_ < 11) out += "Connection: keep-alive\r\n";
    out += "\r\n";
    out += r.body;
    response_done_ = true;
    queue(std::move(out));
  }

  void queue(std::string bytes) {
    out_.push_back(std::move(bytes));
    flush();
  }

  void flush() {
    if (writing_ || phase_ == Phase::Closed) return;
    if (out_.empty()) {
      if (response_done_) finish_response();
      return;
    }
    writing_ = true;
    wbuf_.clear();
    for (std::string& s : out_) wbuf_ += s;
    out_.clear();
    if (phase_ == Phase::Response) set_deadline(Clock::now() + seconds(srv_.limits.write_timeout));
    asio::async_write(sock_, asio::buffer(wbuf_), [self = shared_from_this()](boost::system::error_code ec, size_t) {
      self->writing_ = false;
      if (self->phase_ == Phase::Closed) return;
      if (ec) return self->close();
      // Waiting for the handler's next bytes has no deadline (the client keeps being watched).
      if (self->phase_ == Phase::Response && self->out_.empty()) self->set_deadline(Clock::time_point::max());
      self->flush();
    });
  }

  // The response's last byte is written: the next request, or close.
  void finish_response() {
    if (phase_ != Phase::Response) return;
    if (close_after_) return linger();
    new_request();
  }

  void linger() {
    phase_ = Phase::Linger;
    ex_.reset();
    boost::system::error_code ec;
    sock_.shutdown(tcp::socket::shutdown_send, ec);
    in_.consume(in_.size());
    lingered_ = 0;
    set_deadline(Clock::now() + seconds(kLingerSeconds));
    read();
  }

  void set_deadline(Clock::time_point t) {
    const uint64_t gen = ++timer_gen_;
    if (t == Clock::time_point::max()) {
      timer_.cancel();
      return;
    }
    timer_.expires_at(t);
    timer_.async_wait([self = shared_from_this(), gen](boost::system::error_code ec) {
      if (ec || gen != self->timer_gen_ || self->phase_ == Phase::Closed) return;
      // A request that started but did not arrive in time gets a 408 (if the client reads it
      // within the linger period); everything else just closes.
      if (self->phase_ == Phase::Request && self->request_started_) {
        self->fail(408, "the request did not arrive in time");
        self->set_deadline(Clock::now() + seconds(kLingerSeconds));
        return;
      }
      self->close();
    });
  }

  tcp::socket sock_;
  asio::steady_timer timer_;
  uint64_t timer_gen_ = 0;
  HttpServer::Impl& srv_;
  beast::flat_buffer in_;  // received, not parsed yet
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  HttpRequest head_;       // the request being read
  Phase phase_ = Phase::Request;
  bool request_started_ = false, head_checked_ = false;
  bool reading_ = false, writing_ = false;
  std::deque<std::string> out_;  // queued while a write is in flight
  std::string wbuf_;             // the write in flight
  std::shared_ptr<HttpExchange> ex_;
  uint64_t ex_id_ = 0;
  int version_ = 11;
  bool keep_alive_ = true, streaming_ = false, chunked_ = false;
  bool response_done_ = false;  // the response's last bytes are queued
  bool close_after_ = false;
  size_t lingered_ = 0;
};

// ---- HttpExchange ----------------------------------------------------------------------------

HttpExchange::HttpExchange(HttpRequest req, std::weak_ptr<HttpConnection> conn,
                           std::function<void(std::function<void()>)> post)
    : req_(std::move(req)), conn_(std::move(conn)), post_(std::move(post)) {}

void HttpExchange::reply(HttpResponse r) {
  post_([c = conn_, id = id_, r = std::move(r)]() mutable {
    if (auto conn = c.lock()) conn->reply(id, std::move(r));
  });
}

void HttpExchange::begin_stream(int status, std::string content_type) {
  post_([c = conn_, id = id_, status, ct = std::move(content_type)] {
    if (auto conn = c.lock()) conn->begin_stream(id, status, ct);
  });
}

void HttpExchange::send(std::string data) {
  post_([c = conn_, id = id_, d = std::move(data)] {
    if (auto conn = c.lock()) conn->send(id, d);
  });
}

void HttpExchange::end() {
  post_([c = conn_, id = id_] {
    if (auto conn = c.lock()) conn->end(id);
  });
}

void HttpExchange::on_abort(std::function<void()> f) {
  std::unique_lock lock(mu_);
  if (!aborted_) {
    on_abort_ = std::move(f);
    return;
  }
  lock.unlock();
  post_(std::move(f));
}

bool HttpExchange::aborted() const {
  std::lock_guard lock(mu_);
  return aborted_;
}

void HttpExchange::abort() {
  std::function<void()> f;
  {
    std::lock_guard lock(mu_);
    if (aborted_) return;
    aborted_ = true;
    f = std::move(on_abort_);
  }
  if (f) f();
}

// ---- HttpServer ------------------------------------------------------------------------------

void HttpServer::Impl::accept() {
  acceptor.async_accept([this](boost::system::error_code ec, tcp::socket sock) {
    if (stopped) return;
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      // Out of descriptors or memory: try again shortly rather than spin.
      accept_retry.expires_after(std::chrono::milliseconds(50));
      accept_retry.async_wait([this](boost::system::error_code e) {
        if (!e && !stopped) accept();
      });
      return;
    }
    const size_t open = conns.size();
    if (open >= 2 * limits.max_connections) {
      boost::system::error_code ignored;
      sock.close(ignored);  // far over: not even a 503
    } else {
      auto c = std::make_shared<HttpConnection>(std::move(sock), *this);
      conns[c.get()] = c;
      n_conns.store(conns.size());
      c->start(open >= limits.max_connections);
    }
    accept();
  });
}

HttpServer::HttpServer(const HttpLimits& limits, HttpHandler& handler)
    : impl_(std::make_unique<Impl>(limits, handler)) {}

HttpServer::~HttpServer() = default;

Result<int> HttpServer::bind(const std::string& host, int port) {
  boost::system::error_code ec;
  const asio::ip::address addr = asio::ip::make_address(host, ec);
  if (ec) return make_error("--host {}: not an IP address", host);
  tcp::acceptor& a = impl_->acceptor;
  const tcp::endpoint ep(addr, uint16_t(port));
  a.open(ep.protocol(), ec);
  if (!ec) a.set_option(tcp::acceptor::reuse_address(true), ec);  // a restart need not wait for TIME_WAIT
  if (!ec) a.bind(ep, ec);
  if (!ec) a.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    a.close(ec);
    return make_error("cannot bind {}:{}: {}", host, port, ec.message());
  }
  return int(a.local_endpoint().port());
}

void HttpServer::run() {
  if (!impl_->acceptor.is_open()) return;
  impl_->accept();
  impl_->io.run();
}

void HttpServer::stop() {
  asio::post(impl_->io, [impl = impl_.get()] {
    impl->stopped = true;
    boost::system::error_code ec;
    impl->acceptor.close(ec);
    impl->accept_retry.cancel();
    std::vector<std::shared_ptr<HttpConnection>> open;
    for (auto& [p, w] : impl->conns)
      if (auto c = w.lock()) open.push_back(std::move(c));
    for (auto& c : open) c->close();
    impl->io.stop();
  });
}

size_t HttpServer::connections() const { return impl_->n_conns.load(); }

}  // namespace peregrine::serve
