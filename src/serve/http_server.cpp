#include "serve/http_server.h"

#include "serve/http_request_reader.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
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
  HttpConnection(tcp::socket s, HttpServer::Impl& srv)
      : sock_(std::move(s)), timer_(srv.io), srv_(srv), reader_(srv.limits) {}

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
    return phase_ == Phase::Response && ex_ && ex_->id_ == id && !response_done_;
  }

  void new_request() {
    phase_ = Phase::Request;
    reader_.reset();  // a request answered after its head is still in the reader
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
    while (phase_ == Phase::Request) {
      size_t used = 0;
      const auto step = reader_.feed(std::string_view(static_cast<const char*>(in_.data().data()), in_.size()), &used);
      in_.consume(used);
      switch (step) {
        case HttpRequestReader::Step::NeedMore: return;
        case HttpRequestReader::Step::Error:
          return fail(reader_.error_status(), reader_.error_message());
        case HttpRequestReader::Step::Head: {
          // Routing and authentication before the body: an answer here leaves it unread, and
          // the connection closes after the answer.
          version_ = reader_.version();
          keep_alive_ = reader_.keep_alive();
          std::optional<HttpResponse> r;
          try {
            r = srv_.handler.check_head(reader_.head());
          } catch (const std::exception& e) {
            return internal_error(e.what());
          }
          if (r) return respond_now(*r, !keep_alive_ || reader_.body_pending());
          if (reader_.expects_continue()) queue("HTTP/1.1 100 Continue\r\n\r\n");
          reader_.read_body();
          break;
        }
        case HttpRequestReader::Step::Request: return dispatch();
      }
    }
  }

  void dispatch() {
    phase_ = Phase::Response;
    set_deadline(Clock::time_point::max());
    ex_ = std::make_shared<HttpExchange>(srv_.next_exchange++, reader_.take(), weak_from_this(),
                                         [&io = srv_.io](std::function<void()> f) { asio::post(io, std::move(f)); });
    try {
      srv_.handler.handle(ex_);
    } catch (const std::exception& e) {
      return internal_error(e.what());
    }
    read();
  }

  // The handler threw: logged here, never shown to the client (it may name internals).
  void internal_error(const char* what) {
    std::fprintf(stderr, "error: HTTP handler: %.300s\n", what);
    if (streaming_ || response_done_) return close();
    respond_now(srv_.handler.error_response(500, "internal error"), true);
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
  HttpRequestReader reader_;
  beast::flat_buffer in_;  // received, not parsed yet
  Phase phase_ = Phase::Request;
  bool request_started_ = false;
  bool reading_ = false, writing_ = false;
  std::deque<std::string> out_;  // queued while a write is in flight
  std::string wbuf_;             // the write in flight
  std::shared_ptr<HttpExchange> ex_;
  int version_ = 11;
  bool keep_alive_ = true, streaming_ = false, chunked_ = false;
  bool response_done_ = false;  // the response's last bytes are queued
  bool close_after_ = false;
  size_t lingered_ = 0;
};

// ---- HttpExchange ----------------------------------------------------------------------------

HttpExchange::HttpExchange(uint64_t id, HttpRequest req, std::weak_ptr<HttpConnection> conn,
                           std::function<void(std::function<void()>)> post)
    : id_(id), req_(std::move(req)), conn_(std::move(conn)), post_(std::move(post)) {}

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
