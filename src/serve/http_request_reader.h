// Reads one HTTP/1.x request at a time from bytes, with no I/O (the connection in
// http_server.cpp feeds it what arrives; the fuzz target feeds it anything). Parsing is
// Boost.Beast's request parser with header and body limits; on top of it, the framing rules
// Beast leaves to the application (RFC 9112 6.1, 9110 8.4 and 10.1.1):
//   - Transfer-Encoding must be exactly one "chunked" (an unknown coding: 501; chunked not
//     last, or twice: 400; any Transfer-Encoding in HTTP/1.0: 400);
//   - Content-Encoding other than identity: 415 (nothing is ever decompressed);
//   - Expect other than 100-continue: 417; more than max_fields fields: 431.
// Beast itself refuses bad or conflicting Content-Length, Transfer-Encoding with
// Content-Length, bare LF, malformed chunks (400), a header over its limit (431) and a body
// over its limit, declared or chunked (413).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "serve/http_server.h"

namespace peregrine::serve {

// ASCII case-insensitive equality (header names, codings, schemes).
bool ascii_iequals(std::string_view a, std::string_view b);

class HttpRequestReader {
 public:
  explicit HttpRequestReader(const HttpLimits& limits);
  ~HttpRequestReader();
  HttpRequestReader(const HttpRequestReader&) = delete;
  HttpRequestReader& operator=(const HttpRequestReader&) = delete;

  enum class Step {
    NeedMore,  // everything given was taken; feed more
    Head,      // the header is complete and framed correctly: see head(), then read_body()
    Request,   // the whole request is read: take()
    Error,     // error_status() / error_message(); the connection must close
  };
  // Parses from the front of `in`; *used: the bytes taken (the rest belongs to later calls,
  // or to the next request once this one is taken).
  Step feed(std::string_view in, size_t* used);
  // After Head: go on reading the body.
  void read_body();

  // After Head (and until the next request): the request line and fields, body empty.
  const HttpRequest& head() const { return head_; }
  HttpRequest& head() { return head_; }
  int version() const { return head_.version; }
  bool keep_alive() const { return keep_alive_; }
  bool expects_continue() const { return expect_continue_; }  // 100-continue and a body still to come
  bool body_pending() const;  // a declared body is not read completely
  // After Request: the request; the reader is ready for the next one.
  HttpRequest take();
  // Forgets the request being read (e.g. one answered after its head): ready for the next.
  void reset();

  int error_status() const { return error_status_; }
  const std::string& error_message() const { return error_message_; }

 private:
  struct Parser;
  bool check_head();  // the framing rules above; false: error set
  void set_error(int status, std::string message);

  HttpLimits limits_;
  std::unique_ptr<Parser> parser_;
  HttpRequest head_;
  enum class State { Header, Decide, Body, Failed } state_ = State::Header;
  bool keep_alive_ = true, expect_continue_ = false;
  int error_status_ = 0;
  std::string error_message_;
};

}  // namespace peregrine::serve
