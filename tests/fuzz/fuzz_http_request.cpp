// libFuzzer target: arbitrary bytes as what a client sends on one connection, read by
// HttpRequestReader (serve/http_request_reader.h) with small limits. The first byte seeds how
// the rest is cut into reads. Checks, for every input:
//   - the reader never crashes, never takes more bytes than it is given, and always makes
//     progress or asks for more;
//   - every request it returns obeys the limits (fields, body bytes; header bytes within twice
//     the limit), and an
//     error is one of the statuses it documents;
//   - the outcome does not depend on how the bytes were cut: the requests (method, target,
//     fields, body) read from one contiguous buffer equal those read from the same bytes in
//     arbitrary small pieces, up to where one of them stops at an error (see below).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <algorithm>
#include <string_view>
#include <vector>

#include "serve/http_request_reader.h"

namespace {

using namespace peregrine::serve;

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_http_request: %s\n", what);
  std::abort();
}

HttpLimits small_limits() {
  HttpLimits l;
  l.max_header_bytes = 512;
  l.max_fields = 8;
  l.max_body_bytes = 256;
  return l;
}

struct Outcome {
  std::vector<std::string> requests;  // method, target, fields and body, serialized
  int error = 0;
  bool operator==(const Outcome&) const = default;
};

// Reads `in` cut into pieces of the sizes `cuts` gives (cycling; 0 = all that is left).
Outcome read_all(std::string_view in, const std::vector<size_t>& cuts) {
  const HttpLimits limits = small_limits();
  HttpRequestReader reader(limits);
  Outcome out;
  std::string pending;  // given to the reader but not taken yet
  size_t pos = 0, cut = 0;
  for (int guard = 0; guard < 100000; ++guard) {
    size_t used = 0;
    const auto step = reader.feed(pending, &used);
    if (used > pending.size()) fail("took more bytes than given");
    pending.erase(0, used);
    switch (step) {
      case HttpRequestReader::Step::Error: {
        const int s = reader.error_status();
        if (s != 400 && s != 413 && s != 415 && s != 417 && s != 431 && s != 501) fail("undocumented error status");
        if (reader.error_message().empty()) fail("error without a message");
        out.error = s;
        return out;
      }
      case HttpRequestReader::Step::Head:
        if (reader.head().fields.size() > limits.max_fields) fail("more fields than the limit");
        reader.read_body();
        break;
      case HttpRequestReader::Step::Request: {
        HttpRequest r = reader.take();
        if (r.body.size() > limits.max_body_bytes) fail("body over the limit");
        if (r.version != 10 && r.version != 11) fail("version neither 1.0 nor 1.1");
        std::string s = r.method + ' ' + r.target + '\n';
        size_t header_bytes = s.size();
        for (const auto& [n, v] : r.fields) {
          s += n + ':' + v + '\n';
          header_bytes += n.size() + v.size();
        }
        // Beast holds the request line and the fields to the limit separately (a header can reach
        // a little past it), so the bound checked is twice the limit.
        if (header_bytes > 2 * limits.max_header_bytes) fail("header over the limit");
        out.requests.push_back(s + '\n' + r.body);
        break;
      }
      case HttpRequestReader::Step::NeedMore: {
        if (pos == in.size()) return out;  // the client stopped sending
        size_t n = cuts.empty() ? 0 : cuts[cut++ % cuts.size()];
        if (n == 0 || n > in.size() - pos) n = in.size() - pos;
        pending.append(in.substr(pos, n));
        pos += n;
        break;
      }
    }
  }
  fail("no progress");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<size_t> cuts;
  for (uint32_t x = data[0] | 1u, i = 0; i < 16; ++i) {  // piece sizes 1..16 from the first byte
    x = x * 1103515245u + 12345u;
    cuts.push_back(1 + (x >> 16) % 16);
  }
  const Outcome whole = read_all(in, {});
  const Outcome pieces = read_all(in, cuts);
  // Beast's header accounting depends on how much has arrived: which fault of a header it
  // reports first (a bad byte or the size limit), whether a header just under the limit
  // passes, and whether a malformed header is refused before its end or waits for it (the
  // server then answers with the read deadline's 408). What must not depend on the cuts: every
  // request read in both ways is the same, and one way reads fewer only by stopping at an error.
  const Outcome& fewer = whole.requests.size() <= pieces.requests.size() ? whole : pieces;
  const Outcome& more = &fewer == &whole ? pieces : whole;
  if (!std::equal(fewer.requests.begin(), fewer.requests.end(), more.requests.begin()))
    fail("a request reads differently depending on how the bytes were cut");
  if (fewer.requests.size() != more.requests.size() && fewer.error == 0)
    fail("requests lost depending on how the bytes were cut");
  return 0;
}
