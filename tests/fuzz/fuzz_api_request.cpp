// libFuzzer target: arbitrary bytes as an OpenAI request body.
// The first byte picks the endpoint (bit 0) and the limits (bit 1: a list of accepted model
// names, small limits); the rest is the body. Checks, for every input:
//   - parse_request returns (never throws, never crashes, never recurses without bound);
//   - an accepted request satisfies every limit it was parsed under;
//   - the error body, or the response, chunk and usage bodies built from the parsed request,
//     are valid UTF-8 JSON that parses back with the model name intact.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "serve/api.h"
#include "tokenizer/unicode_utf8.h"

namespace {

using namespace peregrine;
using namespace peregrine::serve;
using json = nlohmann::json;

[[noreturn]] void fail(const char* what, std::string_view body) {
  std::fprintf(stderr, "fuzz_api_request: %s (body of %zu bytes)\n", what, body.size());
  std::abort();
}

json parse_back(const std::string& out, std::string_view body) {
  if (!utf8::is_valid(out)) fail("output is not valid UTF-8", body);
  json j = json::parse(out, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail("output is not valid JSON", body);
  return j;
}

void check_limits(const CompletionRequest& r, const ApiLimits& l, std::string_view body) {
  if (r.n < 1 || r.n > l.max_n) fail("n outside the limits", body);
  if (r.stop.size() > size_t(l.max_stop)) fail("too many stop strings", body);
  for (const std::string& s : r.stop) {
    if (s.empty() || s.size() > l.max_stop_bytes) fail("bad stop string", body);
  }
  if (r.max_tokens != -1 && (r.max_tokens < 1 || r.max_tokens > l.max_tokens_cap))
    fail("max_tokens outside the limits", body);
  if (!(r.temperature >= 0.0f && r.temperature <= 2.0f)) fail("temperature out of range", body);
  if (!(r.top_p > 0.0f && r.top_p <= 1.0f)) fail("top_p out of range", body);
  if (!(r.presence_penalty >= -2.0f && r.presence_penalty <= 2.0f)) fail("presence_penalty", body);
  if (!(r.frequency_penalty >= -2.0f && r.frequency_penalty <= 2.0f))
    fail("frequency_penalty", body);
  const int32_t max_top =
      r.endpoint == Endpoint::ChatCompletions ? l.max_top_logprobs : l.max_completion_logprobs;
  if (r.top_logprobs < 0 || r.top_logprobs > max_top) fail("top_logprobs out of range", body);
  if (r.top_logprobs > 0 && !r.logprobs) fail("top_logprobs without logprobs", body);
  if (r.include_usage && !r.stream) fail("include_usage without stream", body);
  if (r.model.empty()) fail("empty model accepted", body);
  if (!l.model_names.empty() && r.model != l.model_names[0]) fail("unknown model accepted", body);
  if (r.endpoint == Endpoint::ChatCompletions) {
    if (r.messages.empty() || r.messages.size() > l.max_messages) fail("message count", body);
    for (const ChatMessage& m : r.messages) {
      if (m.role != "system" && m.role != "user" && m.role != "assistant") fail("role", body);
    }
  } else if (r.prompt_is_tokens ? r.prompt_tokens.empty() : r.prompt.empty()) {
    fail("empty prompt accepted", body);
  }
  for (int32_t t : r.prompt_tokens) {
    if (t < 0) fail("negative token id accepted", body);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const Endpoint e = (data[0] & 1) ? Endpoint::ChatCompletions : Endpoint::Completions;
  ApiLimits limits;
  if (data[0] & 2) {
    limits.model_names = {"m"};
    limits.max_body_bytes = 4096;
    limits.max_n = 2;
    limits.max_stop = 2;
    limits.max_stop_bytes = 8;
    limits.max_messages = 4;
    limits.max_top_logprobs = 3;
    limits.max_tokens_cap = 100;
    limits.max_depth = 8;
  }
  const std::string_view body(reinterpret_cast<const char*>(data) + 1, size - 1);

  std::variant<CompletionRequest, ApiError> parsed = parse_request(e, body, limits);
  if (const ApiError* err = std::get_if<ApiError>(&parsed)) {
    if (err->status != 400 && err->status != 404 && err->status != 413) fail("odd status", body);
    if (err->message.empty()) fail("error without a message", body);
    json j = parse_back(error_json(*err), body);
    if (!j["error"]["message"].is_string()) fail("error_json without a message", body);
    return 0;
  }
  const CompletionRequest& r = std::get<CompletionRequest>(parsed);
  check_limits(r, limits, body);

  // Build every response shape from the parsed values: the request's own strings (stop
  // strings, message text, the user field) stand in for generated text and tokens.
  std::vector<Choice> choices(size_t(r.n));
  for (int32_t i = 0; i < r.n; ++i) {
    Choice& c = choices[size_t(i)];
    c.index = i;
    c.text = r.endpoint == Endpoint::ChatCompletions ? r.messages.back().content : r.prompt;
    c.finish_reason = i % 2 ? "stop" : "length";
    c.has_logprobs = r.logprobs;
    for (const std::string& s : r.stop) {
      TokenLogprob t{s.substr(0, s.size() / 2 + 1), -0.5f * float(i), {}};
      for (int32_t k = 0; k < r.top_logprobs; ++k) t.top.push_back({r.user, -float(k)});
      c.logprobs.push_back(std::move(t));
    }
  }
  const Usage usage{int64_t(r.prompt_tokens.size()), r.max_tokens,
                    r.seed ? int64_t(*r.seed & 0xFFFF) : -1};
  json j = parse_back(completion_json(r, r.user, 1, choices, usage), body);
  if (j["model"] != r.model) fail("model name changed", body);  // parsed strings are valid UTF-8
  if (j["choices"].size() != choices.size()) fail("choices lost", body);
  for (const Choice& c : choices) {
    parse_back(chunk_json(r.endpoint, r.model, r.user, 2, c, c.index == 0), body);
  }
  parse_back(usage_chunk_json(r.endpoint, r.model, r.user, 3, usage), body);
  parse_back(models_json({r.model, r.user}, 4), body);
  return 0;
}
