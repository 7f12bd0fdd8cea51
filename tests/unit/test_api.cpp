// OpenAI API JSON: request parsing and validation (every field, wrong types, ranges, refused
// features, hostile bodies) and response bodies parsed back field by field.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <variant>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "serve/api.h"
#include "serve/api_constraints.h"
#include "tokenizer/unicode_utf8.h"

namespace peregrine::serve {
namespace {

using json = nlohmann::json;
constexpr Endpoint kChat = Endpoint::ChatCompletions;
constexpr Endpoint kText = Endpoint::Completions;

CompletionRequest accept(Endpoint e, std::string_view body, const ApiLimits& limits = {}) {
  auto r = parse_request(e, body, limits);
  if (const ApiError* err = std::get_if<ApiError>(&r)) {
    ADD_FAILURE() << "rejected " << body << ": " << err->message;
    return {};
  }
  return std::get<CompletionRequest>(std::move(r));
}

ApiError reject(Endpoint e, std::string_view body, const ApiLimits& limits = {}) {
  auto r = parse_request(e, body, limits);
  if (std::holds_alternative<CompletionRequest>(r)) {
    ADD_FAILURE() << "accepted " << body;
    return {};
  }
  return std::get<ApiError>(std::move(r));
}

// A chat body with one user message plus the given extra fields (a JSON object's inside).
std::string chat(std::string_view extra) {
  std::string b = R"({"model":"m","messages":[{"role":"user","content":"hi"}])";
  if (!extra.empty()) b += fmt::format(",{}", extra);
  return b + "}";
}
std::string text(std::string_view extra) {
  std::string b = R"({"model":"m","prompt":"Once upon")";
  if (!extra.empty()) b += fmt::format(",{}", extra);
  return b + "}";
}

// The body is rejected with status 400 and the error names `param`.
#define EXPECT_REJECTS(endpoint, body, param_name)                   \
  do {                                                               \
    ApiError e_ = reject(endpoint, body);                            \
    EXPECT_EQ(e_.status, 400) << (body);                             \
    EXPECT_EQ(e_.param, param_name) << (body) << ": " << e_.message; \
    EXPECT_EQ(e_.type, "invalid_request_error");                     \
    EXPECT_FALSE(e_.message.empty());                                \
  } while (0)

bool contains(const std::string& s, std::string_view part) {
  return s.find(part) != std::string::npos;
}

// --- Requests ----------------------------------------------------------------------------------

TEST(ApiRequest, ChatMinimalGetsDefaults) {
  CompletionRequest r = accept(kChat, chat(""));
  EXPECT_EQ(r.endpoint, kChat);
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_EQ(r.messages[0].role, "user");
  EXPECT_EQ(r.messages[0].content, "hi");
  EXPECT_EQ(r.max_tokens, -1);
  EXPECT_EQ(r.temperature, 1.0f);
  EXPECT_EQ(r.top_p, 1.0f);
  EXPECT_FALSE(r.seed.has_value());
  EXPECT_TRUE(r.stop.empty());
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 0);
  EXPECT_EQ(r.presence_penalty, 0.0f);
  EXPECT_EQ(r.frequency_penalty, 0.0f);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.include_usage);
  EXPECT_TRUE(r.prompt.empty());
  EXPECT_FALSE(r.prompt_is_tokens);
}

TEST(ApiRequest, CompletionsMinimalDefaultsTo16Tokens) {
  CompletionRequest r = accept(kText, text(""));
  EXPECT_EQ(r.endpoint, kText);
  EXPECT_EQ(r.prompt, "Once upon");
  EXPECT_FALSE(r.prompt_is_tokens);
  EXPECT_EQ(r.max_tokens, 16);
  EXPECT_TRUE(r.messages.empty());
}

TEST(ApiRequest, ChatEveryField) {
  CompletionRequest r = accept(kChat, R"({
    "model": "smollm2-135m",
    "messages": [
      {"role": "developer", "content": "Be brief."},
      {"role": "user", "content": [{"type": "text", "text": "Hello, "},
                                    {"type": "text", "text": "world"}], "name": "bob"},
      {"role": "assistant", "content": null},
      {"role": "assistant"},
      {"role": "user", "content": "caf\u00e9 \ud83d\ude00 nul:\u0000."}
    ],
    "max_tokens": 100, "max_completion_tokens": 50, "temperature": 0.5, "top_p": 0.9,
    "seed": -1, "stop": ["\n\n", "END"], "n": 3, "logprobs": true, "top_logprobs": 20,
    "presence_penalty": -2, "frequency_penalty": 1.5, "user": "u-1", "stream": true,
    "stream_options": {"include_usage": true}, "tools": [], "tool_choice": "none",
    "response_format": {"type": "text"}, "logit_bias": {}, "parallel_tool_calls": false,
    "metadata": {"a": [1, {"b": null}]}
  })");
  EXPECT_EQ(r.model, "smollm2-135m");
  ASSERT_EQ(r.messages.size(), 5u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[0].content, "Be brief.");
  EXPECT_EQ(r.messages[1].content, "Hello, world");
  EXPECT_EQ(r.messages[2].role, "assistant");
  EXPECT_EQ(r.messages[2].content, "");
  EXPECT_EQ(r.messages[3].content, "");
  EXPECT_EQ(r.messages[4].content, std::string_view("caf\xC3\xA9 \xF0\x9F\x98\x80 nul:\0.", 17));
  EXPECT_EQ(r.max_tokens, 50);  // max_completion_tokens wins
  EXPECT_FLOAT_EQ(r.temperature, 0.5f);
  EXPECT_FLOAT_EQ(r.top_p, 0.9f);
  ASSERT_TRUE(r.seed.has_value());
  EXPECT_EQ(*r.seed, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_EQ(r.n, 3);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 20);
  EXPECT_FLOAT_EQ(r.presence_penalty, -2.0f);
  EXPECT_FLOAT_EQ(r.frequency_penalty, 1.5f);
  EXPECT_EQ(r.user, "u-1");
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
}

TEST(ApiRequest, CompletionsEveryField) {
  CompletionRequest r = accept(kText, R"({"model":"m","prompt":["only one"],"max_tokens":7.0,
      "temperature":0,"top_p":0,"seed":18446744073709551615,"stop":"###","n":16,"logprobs":3,
      "echo":false,"suffix":"","best_of":1,"stream":false,"max_completion_tokens":0})");
  EXPECT_EQ(r.prompt, "only one");
  EXPECT_EQ(r.max_tokens, 7);  // max_completion_tokens is not a completions field: ignored
  EXPECT_EQ(r.temperature, 0.0f);
  EXPECT_EQ(r.top_p, kMinTopP);  // 0 keeps just the likeliest token
  EXPECT_EQ(*r.seed, std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(r.stop, std::vector<std::string>{"###"});
  EXPECT_EQ(r.n, 16);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 3);

  r = accept(kText, text(R"("logprobs":0)"));
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 0);
  r = accept(kText, text(R"("logprobs":null)"));
  EXPECT_FALSE(r.logprobs);
}

TEST(ApiRequest, PromptAsTokenIds) {
  CompletionRequest r = accept(kText, R"({"model":"m","prompt":[1, 504, 0, 2147483647, 3.0]})");
  EXPECT_TRUE(r.prompt_is_tokens);
  EXPECT_EQ(r.prompt_tokens, (std::vector<int32_t>{1, 504, 0, 2147483647, 3}));
  EXPECT_TRUE(r.prompt.empty());
  r = accept(kText, R"({"model":"m","prompt":[[5, 6]]})");
  EXPECT_TRUE(r.prompt_is_tokens);
  EXPECT_EQ(r.prompt_tokens, (std::vector<int32_t>{5, 6}));
}

TEST(ApiRequest, BadPrompts) {
  EXPECT_REJECTS(kText, R"({"model":"m"})", "prompt");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":null})", "prompt");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":""})", "prompt");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":[]})", "prompt");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":[""]})", "prompt");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":[[]]})", "prompt");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":["a","b"]})", "prompt");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":[[1],[2]]})", "prompt");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":7})", "prompt");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":{"text":"a"}})", "prompt");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":[1,2,-1]})", "prompt[2]");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":[1,"a"]})", "prompt[1]");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":[1.5]})", "prompt[0]");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":[2147483648]})", "prompt[0]");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":[null]})", "prompt[0]");
  EXPECT_REJECTS(kText, R"({"model":"m","prompt":[[1,-5]]})", "prompt[0][1]");
  ApiError e = reject(kText, R"({"model":"m","prompt":["a","b","c"]})");
  EXPECT_TRUE(contains(e.message, "one request per prompt")) << e.message;
}

TEST(ApiRequest, BodyTooLargeIs413) {
  ApiLimits limits;
  limits.max_body_bytes = 64;
  const std::string body = chat(R"("user":")" + std::string(100, 'x') + "\"");
  ApiError e = reject(kChat, body, limits);
  EXPECT_EQ(e.status, 413);
  EXPECT_EQ(e.type, "invalid_request_error");
  EXPECT_EQ(e.code, "request_too_large");
  EXPECT_TRUE(contains(e.message, "64")) << e.message;
  limits.max_body_bytes = body.size();
  accept(kChat, body, limits);  // exactly at the limit
}

TEST(ApiRequest, MalformedJsonIs400WithWhere) {
  const std::initializer_list<std::string_view> bodies = {"",
                                                          " ",
                                                          "{",
                                                          "}",
                                                          "{\"model\":}",
                                                          "nul",
                                                          "{} x",
                                                          "{\"a\":1,}",
                                                          "{'model':'m'}",
                                                          "{\"model\":\"m\" \"x\":1}",
                                                          "{\"a\":\"\xff\"}",
                                                          "{\"a\":\"\\ud800\"}",
                                                          "{\"a\":01}",
                                                          "{\"a\":1e400}",
                                                          "{\"a\":NaN}",
                                                          "{\"a\":Infinity}",
                                                          "{\"a\":\"tab\there\"}",
                                                          "{\"a\":1} /* comment */",
                                                          std::string_view("{\"a\":\0}", 7)};
  for (std::string_view body : bodies) {
    ApiError e = reject(kChat, body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_EQ(e.code, "invalid_json") << body;
    EXPECT_TRUE(e.param.empty());
  }
  ApiError e = reject(kChat, "{\n\"model\": tru}");
  EXPECT_TRUE(contains(e.message, "line 2")) << e.message;
}

TEST(ApiRequest, BodyMustBeAnObject) {
  for (std::string_view body : {"[]", "1", "\"s\"", "null", "true", "[{\"model\":\"m\"}]"}) {
    ApiError e = reject(kText, body);
    EXPECT_EQ(e.status, 400) << body;
    EXPECT_TRUE(contains(e.message, "object")) << e.message;
  }
}

TEST(ApiRequest, DeepNestingIsRejectedWithoutRecursion) {
  ApiError e = reject(kChat, std::string(100000, '['));
  EXPECT_EQ(e.status, 400);
  EXPECT_TRUE(contains(e.message, "deeper than 64")) << e.message;
  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += "{\"a\":";
  EXPECT_EQ(reject(kChat, objects).status, 400);
  // Brackets inside strings do not count; escaped quotes do not end a string.
  accept(
      kChat,
      chat(
          R"("user":"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"[[[[[[")"));
  // 64 levels in total are fine, 65 are not.
  auto nested = [](int levels) {  // the body's own object is level 1
    return chat(R"("x":)" + std::string(size_t(levels - 1), '[') +
                std::string(size_t(levels - 1), ']'));
  };
  accept(kChat, nested(64));
  EXPECT_EQ(reject(kChat, nested(65)).status, 400);
}

TEST(ApiRequest, Model) {
  EXPECT_REJECTS(kChat, R"({"messages":[{"role":"user","content":"hi"}]})", "model");
  EXPECT_REJECTS(kChat, R"({"model":null,"messages":[{"role":"user","content":"hi"}]})", "model");
  EXPECT_REJECTS(kChat, R"({"model":"","messages":[{"role":"user","content":"hi"}]})", "model");
  EXPECT_REJECTS(kChat, R"({"model":7,"messages":[{"role":"user","content":"hi"}]})", "model");
  EXPECT_REJECTS(kChat, R"({"model":["m"],"messages":[{"role":"user","content":"hi"}]})", "model");

  ApiLimits limits;
  limits.model_names = {"smollm2-135m", "gemma3-270m"};
  accept(kText, R"({"model":"gemma3-270m","prompt":"x"})", limits);
  ApiError e = reject(kText, R"({"model":"gpt-4o","prompt":"x"})", limits);
  EXPECT_EQ(e.status, 404);
  EXPECT_EQ(e.type, "invalid_request_error");
  EXPECT_EQ(e.code, "model_not_found");
  EXPECT_EQ(e.param, "model");
  EXPECT_TRUE(contains(e.message, "gpt-4o")) << e.message;
  // Model names compare exactly.
  EXPECT_EQ(reject(kText, R"({"model":"SmolLM2-135M","prompt":"x"})", limits).status, 404);
}

TEST(ApiRequest, BadMessages) {
  EXPECT_REJECTS(kChat, R"({"model":"m"})", "messages");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":null})", "messages");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":[]})", "messages");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":"hi"})", "messages");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":{"role":"user","content":"hi"}})", "messages");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":["hi"]})", "messages[0]");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":[{"content":"hi"}]})", "messages[0].role");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":[{"role":1,"content":"hi"}]})",
                 "messages[0].role");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":[{"role":"User","content":"hi"}]})",
                 "messages[0].role");
  EXPECT_REJECTS(kChat,
                 R"({"model":"m","messages":[{"role":"user","content":"a"},{"role":"user"}]})",
                 "messages[1].content");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":[{"role":"system","content":null}]})",
                 "messages[0].content");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":[{"role":"user","content":5}]})",
                 "messages[0].content");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":[{"role":"user","content":{"text":"a"}}]})",
                 "messages[0].content");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":[{"role":"user","content":["a"]}]})",
                 "messages[0].content[0]");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":[{"role":"user","content":[{"text":"a"}]}]})",
                 "messages[0].content[0].type");
  EXPECT_REJECTS(kChat, R"({"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]})",
                 "messages[0].content[0].text");
  EXPECT_REJECTS(
      kChat, R"({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":1}]}]})",
      "messages[0].content[0].text");
  EXPECT_REJECTS(kChat,
                 R"({"model":"m","messages":[{"role":"user","content":[{"type":"video"}]}]})",
                 "messages[0].content[0].type");

  ApiLimits limits;
  limits.max_messages = 2;
  std::string three = R"({"model":"m","messages":[)";
  for (int i = 0; i < 3; ++i)
    three += std::string(i ? "," : "") + R"({"role":"user","content":"x"})";
  ApiError e = reject(kChat, three + "]}", limits);
  EXPECT_EQ(e.param, "messages");
  EXPECT_TRUE(contains(e.message, "limit of 2")) << e.message;
}

TEST(ApiRequest, UnsupportedMessageKindsSaySo) {
  ApiError e = reject(kChat, R"({"model":"m","messages":[{"role":"function","content":"x","name":"f"}]})");
  EXPECT_EQ(e.param, "messages[0].role");
  EXPECT_TRUE(contains(e.message, "not supported")) << e.message;
  e = reject(kChat, R"({"model":"m","messages":[{"role":"user","content":[
      {"type":"text","text":"what is this?"},
      {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]}]})");
  EXPECT_EQ(e.param, "messages[0].content[1].type");
  EXPECT_TRUE(contains(e.message, "image_url") && contains(e.message, "not supported"))
      << e.message;
  e = reject(kChat, R"({"model":"m","messages":[{"role":"user","content":"x"},
      {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function"}]}]})");
  EXPECT_EQ(e.param, "messages[1].tool_calls[0].function");
}

// Tool turns become text the model reads: the assistant's call as the JSON it answers with,
// the tool's result as a user turn that says what it is.
TEST(ApiRequest, ToolTurnsBecomeText) {
  CompletionRequest r = accept(kChat, R"({"model":"m","messages":[{"role":"user","content":"t?"},
      {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function",
       "function":{"name":"get_time","arguments":"{\"tz\":\"UTC\"}"}}]},
      {"role":"tool","tool_call_id":"c1","content":"12:00"}]})");
  ASSERT_EQ(r.messages.size(), 3u);
  EXPECT_EQ(r.messages[1].role, "assistant");
  EXPECT_EQ(r.messages[1].content, R"({"arguments":{"tz":"UTC"},"name":"get_time"})");
  EXPECT_EQ(r.messages[2].role, "user");
  EXPECT_TRUE(contains(r.messages[2].content, "c1") && contains(r.messages[2].content, "12:00"));
}

TEST(ApiRequest, MaxTokens) {
  EXPECT_EQ(accept(kChat, chat(R"("max_tokens":1)")).max_tokens, 1);
  EXPECT_EQ(accept(kChat, chat(R"("max_tokens":1048576)")).max_tokens, 1 << 20);
  EXPECT_EQ(accept(kChat, chat(R"("max_completion_tokens":9)")).max_tokens, 9);
  EXPECT_EQ(accept(kText, text(R"("max_tokens":null)")).max_tokens, 16);
  EXPECT_EQ(accept(kChat, chat(R"("max_tokens":null)")).max_tokens, -1);
  for (std::string_view v : {"0", "-1", "1.5", "\"5\"", "true", "1048577", "[5]", "1e300",
                             "18446744073709551615", "-9223372036854775808"}) {
    EXPECT_REJECTS(kChat, chat(fmt::format(R"("max_tokens":{})", v)), "max_tokens");
    EXPECT_REJECTS(kText, text(fmt::format(R"("max_tokens":{})", v)), "max_tokens");
    EXPECT_REJECTS(kChat, chat(fmt::format(R"("max_completion_tokens":{})", v)),
                   "max_completion_tokens");
  }
  ApiError e = reject(kChat, chat(R"("max_tokens":0)"));
  EXPECT_TRUE(contains(e.message, "'max_tokens'") && contains(e.message, "got 0")) << e.message;
}

TEST(ApiRequest, SamplingNumbers) {
  EXPECT_EQ(accept(kChat, chat(R"("temperature":2)")).temperature, 2.0f);
  EXPECT_EQ(accept(kChat, chat(R"("temperature":0.0)")).temperature, 0.0f);
  EXPECT_EQ(accept(kChat, chat(R"("top_p":1)")).top_p, 1.0f);
  EXPECT_EQ(accept(kChat, chat(R"("top_p":-0.0)")).top_p, kMinTopP);
  EXPECT_EQ(accept(kChat, chat(R"("presence_penalty":2)")).presence_penalty, 2.0f);
  EXPECT_EQ(accept(kChat, chat(R"("frequency_penalty":-2.0)")).frequency_penalty, -2.0f);
  // Extensions (llama-server's): the CLI's sampling chain, off unless given.
  EXPECT_EQ(accept(kChat, chat(R"("temperature":1)")).top_k, 0);
  EXPECT_EQ(accept(kChat, chat(R"("temperature":1)")).min_p, 0.0f);
  EXPECT_EQ(accept(kChat, chat(R"("temperature":1)")).repeat_penalty, 1.0f);
  EXPECT_EQ(accept(kChat, chat(R"("top_k":40)")).top_k, 40);
  EXPECT_EQ(accept(kText, text(R"("min_p":0.05)")).min_p, 0.05f);
  EXPECT_EQ(accept(kText, text(R"("repeat_penalty":1.1)")).repeat_penalty, 1.1f);
  EXPECT_EQ(accept(kText, text(R"("repeat_last_n":0)")).repeat_last_n, 0);
  struct Bad {
    const char* field;
    const char* value;
  };
  for (Bad b : {Bad{"temperature", "-0.1"},
                Bad{"temperature", "2.0001"},
                Bad{"temperature", "\"1\""},
                Bad{"temperature", "true"},
                Bad{"temperature", "[]"},
                Bad{"temperature", "1e308"},
                Bad{"top_p", "1.01"},
                Bad{"top_p", "-0.5"},
                Bad{"top_p", "{}"},
                Bad{"presence_penalty", "2.5"},
                Bad{"presence_penalty", "-3"},
                Bad{"frequency_penalty", "\"0\""},
                Bad{"frequency_penalty", "-2.01"},
                Bad{"top_k", "-1"},
                Bad{"top_k", "2.5"},
                Bad{"top_k", "\"5\""},
                Bad{"min_p", "1.5"},
                Bad{"min_p", "-0.1"},
                Bad{"repeat_penalty", "0"},
                Bad{"repeat_penalty", "101"},
                Bad{"repeat_last_n", "-1"},
                Bad{"n", "0"},
                Bad{"n", "17"},
                Bad{"n", "2.5"},
                Bad{"n", "\"2\""},
                Bad{"seed", "1.5"},
                Bad{"seed", "\"1\""},
                Bad{"seed", "1e30"},
                Bad{"seed", "18446744073709551616"},
                Bad{"seed", "false"},
                Bad{"user", "5"},
                Bad{"user", "{}"},
                Bad{"stream", "\"true\""},
                Bad{"stream", "1"}}) {
    EXPECT_REJECTS(kChat, chat(fmt::format(R"("{}":{})", b.field, b.value)), b.field);
    EXPECT_REJECTS(kText, text(fmt::format(R"("{}":{})", b.field, b.value)), b.field);
  }
  ApiError e = reject(kChat, chat(R"("temperature":"hot")"));
  EXPECT_TRUE(contains(e.message, "'temperature'") && contains(e.message, "a number") &&
              contains(e.message, "a string"))
      << e.message;
  EXPECT_EQ(accept(kChat, chat(R"("n":16)")).n, 16);
  EXPECT_EQ(accept(kChat, chat(R"("n":2.0)")).n, 2);
  EXPECT_EQ(*accept(kChat, chat(R"("seed":42)")).seed, 42u);
  EXPECT_EQ(*accept(kChat, chat(R"("seed":-2)")).seed, static_cast<uint64_t>(int64_t{-2}));
  EXPECT_EQ(*accept(kChat, chat(R"("seed":-9223372036854775808)")).seed, uint64_t{1} << 63);
  EXPECT_EQ(*accept(kChat, chat(R"("seed":1e3)")).seed, 1000u);
  EXPECT_EQ(*accept(kChat, chat(R"("seed":-3.0)")).seed, static_cast<uint64_t>(int64_t{-3}));
}

TEST(ApiRequest, Stop) {
  EXPECT_TRUE(accept(kChat, chat(R"("stop":null)")).stop.empty());
  EXPECT_TRUE(accept(kChat, chat(R"("stop":[])")).stop.empty());
  EXPECT_EQ(accept(kChat, chat(R"("stop":"x")")).stop, std::vector<std::string>{"x"});
  EXPECT_EQ(accept(kChat, chat(R"("stop":["a","b","c","\u00e9"])")).stop,
            (std::vector<std::string>{"a", "b", "c", "\xC3\xA9"}));
  const std::string s256(256, 's'), s257(257, 's');
  EXPECT_EQ(accept(kChat, chat(fmt::format(R"("stop":"{}")", s256))).stop[0], s256);
  EXPECT_REJECTS(kChat, chat(fmt::format(R"("stop":"{}")", s257)), "stop");
  EXPECT_REJECTS(kChat, chat(fmt::format(R"("stop":["a","{}"])", s257)), "stop[1]");
  EXPECT_REJECTS(kChat, chat(R"("stop":["a","b","c","d","e"])"), "stop");
  EXPECT_REJECTS(kChat, chat(R"("stop":"")"), "stop");
  EXPECT_REJECTS(kChat, chat(R"("stop":["a",""])"), "stop[1]");
  EXPECT_REJECTS(kChat, chat(R"("stop":[1])"), "stop[0]");
  EXPECT_REJECTS(kChat, chat(R"("stop":[null])"), "stop[0]");
  EXPECT_REJECTS(kText, text(R"("stop":5)"), "stop");
  EXPECT_REJECTS(kText, text(R"("stop":{"a":"b"})"), "stop");
}

TEST(ApiRequest, Logprobs) {
  CompletionRequest r = accept(kChat, chat(R"("logprobs":true)"));
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 0);
  r = accept(kChat, chat(R"("logprobs":false,"top_logprobs":null)"));
  EXPECT_FALSE(r.logprobs);
  EXPECT_REJECTS(kChat, chat(R"("logprobs":1)"), "logprobs");
  EXPECT_REJECTS(kChat, chat(R"("logprobs":"true")"), "logprobs");
  EXPECT_REJECTS(kChat, chat(R"("logprobs":true,"top_logprobs":21)"), "top_logprobs");
  EXPECT_REJECTS(kChat, chat(R"("logprobs":true,"top_logprobs":-1)"), "top_logprobs");
  EXPECT_REJECTS(kChat, chat(R"("logprobs":true,"top_logprobs":true)"), "top_logprobs");
  EXPECT_REJECTS(kChat, chat(R"("top_logprobs":2)"), "top_logprobs");
  EXPECT_REJECTS(kChat, chat(R"("logprobs":false,"top_logprobs":0)"), "top_logprobs");
  EXPECT_REJECTS(kText, text(R"("logprobs":6)"), "logprobs");
  EXPECT_REJECTS(kText, text(R"("logprobs":-1)"), "logprobs");
  EXPECT_REJECTS(kText, text(R"("logprobs":true)"), "logprobs");
  ApiLimits limits;
  limits.max_top_logprobs = 2;
  EXPECT_EQ(reject(kChat, chat(R"("logprobs":true,"top_logprobs":3)"), limits).param,
            "top_logprobs");
}

TEST(ApiRequest, StreamOptions) {
  CompletionRequest r =
      accept(kText, text(R"("stream":true,"stream_options":{"include_usage":true})"));
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  r = accept(kChat, chat(R"("stream":true,"stream_options":{})"));
  EXPECT_FALSE(r.include_usage);
  r = accept(kChat, chat(R"("stream":false,"stream_options":null)"));
  EXPECT_FALSE(r.stream);
  EXPECT_REJECTS(kChat, chat(R"("stream_options":{"include_usage":true})"), "stream_options");
  EXPECT_REJECTS(kChat, chat(R"("stream":false,"stream_options":{"include_usage":true})"),
                 "stream_options");
  EXPECT_REJECTS(kChat, chat(R"("stream":true,"stream_options":true)"), "stream_options");
  EXPECT_REJECTS(kChat, chat(R"("stream":true,"stream_options":{"include_usage":"yes"})"),
                 "stream_options.include_usage");
}

TEST(ApiRequest, FeaturesWeCannotHonourAreRefused) {
  struct Case {
    Endpoint e;
    const char* extra;
    const char* param;
  };
  for (Case c : {Case{kChat, R"("tools":[{"type":"function","function":{"name":"f"}}])", "tool_choice"},
                 Case{kChat, R"("tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"auto")",
                      "tool_choice"},
                 Case{kChat, R"("functions":[{"name":"f"}])", "functions"},
                 Case{kChat, R"("guided_whitespace_pattern":" ")", "guided_whitespace_pattern"},
                 Case{kChat, R"("logit_bias":{"50256":-100})", "logit_bias"},
                 Case{kText, R"("best_of":2)", "best_of"}, Case{kText, R"("echo":true)", "echo"},
                 Case{kText, R"("suffix":"end")", "suffix"},
                 Case{kChat, R"("audio":{"voice":"alloy"})", "audio"},
                 Case{kChat, R"("modalities":["text","audio"])", "modalities"}}) {
    ApiError err = reject(c.e, c.e == kChat ? chat(c.extra) : text(c.extra));
    EXPECT_EQ(err.status, 400) << c.extra;
    EXPECT_EQ(err.param, c.param) << c.extra;
    EXPECT_EQ(err.code, "unsupported_parameter") << c.extra;
    EXPECT_TRUE(contains(err.message, "not supported")) << err.message;
  }
  // Their harmless values pass; wrong types are type errors.
  accept(kChat, chat(R"("tools":[],"functions":[],"tool_choice":"none","logit_bias":{},)"
                     R"("modalities":["text"],"response_format":{"type":"text"})"));
  accept(kText, text(R"("best_of":1,"echo":false,"suffix":"")"));
  EXPECT_REJECTS(kText, text(R"("best_of":0)"), "best_of");
  EXPECT_REJECTS(kText, text(R"("echo":"no")"), "echo");
  EXPECT_REJECTS(kText, text(R"("suffix":1)"), "suffix");
  EXPECT_REJECTS(kChat, chat(R"("logit_bias":[1])"), "logit_bias");
  EXPECT_REJECTS(kChat, chat(R"("response_format":"text")"), "response_format");
  EXPECT_REJECTS(kChat, chat(R"("response_format":{})"), "response_format.type");
}

TEST(ApiRequest, NullMeansAbsentAndUnknownFieldsAreIgnored) {
  CompletionRequest r = accept(kChat, chat(R"("max_tokens":null,"max_completion_tokens":null,
      "temperature":null,"top_p":null,"seed":null,"stop":null,"n":null,"logprobs":null,
      "top_logprobs":null,"presence_penalty":null,"frequency_penalty":null,"user":null,
      "stream":null,"stream_options":null,"tools":null,"tool_choice":null,
      "response_format":null,"logit_bias":null,"audio":null,"modalities":null,
      "some_future_field":{"deep":[1,2,{"x":null}]},"store":true,"service_tier":"auto")"));
  EXPECT_EQ(r.max_tokens, -1);
  EXPECT_EQ(r.temperature, 1.0f);
  EXPECT_FALSE(r.seed.has_value());
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.stream);
}

TEST(ApiRequest, DuplicateKeysTakeTheLast) {
  CompletionRequest r = accept(kChat, chat(R"("n":2,"n":3)"));
  EXPECT_EQ(r.n, 3);
}

// Random mutations of valid bodies: parse_request never throws or crashes, and whatever it
// accepts satisfies the limits.
TEST(ApiRequest, HostileMutationsNeverThrow) {
  const std::vector<std::string> seeds = {
      chat(R"("max_tokens":5,"stop":["a"],"logprobs":true,"top_logprobs":2,"stream":true,)"
           R"("stream_options":{"include_usage":true},"seed":-1)"),
      text(R"("prompt":[1,2,3],"logprobs":2,"n":2,"temperature":0.7)"),
      R"({"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"x"}]}]})"};
  const std::string alphabet = "{}[]\":,0123456789-.eE\\u nulltruefalse\xC3\xA9\xFF";
  std::mt19937 rng(12345);
  ApiLimits limits;
  int accepted = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string b = seeds[rng() % seeds.size()];
    const int edits = 1 + int(rng() % 4);
    for (int k = 0; k < edits && !b.empty(); ++k) {
      const size_t pos = rng() % b.size();
      switch (rng() % 3) {
        case 0: b[pos] = alphabet[rng() % alphabet.size()]; break;
        case 1: b.erase(pos, 1 + rng() % 3); break;
        default: b.insert(pos, 1, alphabet[rng() % alphabet.size()]); break;
      }
    }
    for (Endpoint e : {kChat, kText}) {
      std::variant<CompletionRequest, ApiError> r;
      ASSERT_NO_THROW(r = parse_request(e, b, limits)) << b;
      if (const auto* req = std::get_if<CompletionRequest>(&r)) {
        ++accepted;
        EXPECT_GE(req->n, 1);
        EXPECT_LE(req->n, limits.max_n);
        EXPECT_LE(req->stop.size(), size_t(limits.max_stop));
        EXPECT_TRUE(req->max_tokens == -1 ||
                    (req->max_tokens >= 1 && req->max_tokens <= limits.max_tokens_cap));
        EXPECT_TRUE(req->temperature >= 0.0f && req->temperature <= 2.0f);
        EXPECT_TRUE(req->top_p > 0.0f && req->top_p <= 1.0f);
        EXPECT_TRUE(e == kChat ? !req->messages.empty()
                               : (req->prompt_is_tokens ? !req->prompt_tokens.empty()
                                                        : !req->prompt.empty()));
      } else {
        const ApiError& err = std::get<ApiError>(r);
        EXPECT_TRUE(err.status == 400) << err.status << " " << err.message;
        EXPECT_FALSE(err.message.empty());
        // error_json always yields valid JSON.
        EXPECT_FALSE(json::parse(error_json(err), nullptr, false).is_discarded());
      }
    }
  }
  EXPECT_GT(accepted, 100);  // the mutations are not all fatal: accepted paths were exercised
}

// --- Responses ---------------------------------------------------------------------------------

json parse_back(const std::string& s) {
  EXPECT_TRUE(utf8::is_valid(s)) << s;
  json j = json::parse(s, nullptr, false);
  EXPECT_FALSE(j.is_discarded()) << s;
  return j;
}

TEST(ApiResponse, ErrorJson) {
  ApiError e;
  e.message = "Invalid 'n': bad \"quote\" \xFF";
  e.param = "n";
  e.code = "invalid_value";
  json j = parse_back(error_json(e));
  ASSERT_TRUE(j.contains("error"));
  EXPECT_EQ(j.size(), 1u);
  const json& err = j["error"];
  EXPECT_EQ(err["message"], "Invalid 'n': bad \"quote\" \xEF\xBF\xBD");
  EXPECT_EQ(err["type"], "invalid_request_error");
  EXPECT_EQ(err["param"], "n");
  EXPECT_EQ(err["code"], "invalid_value");
  ApiError bare;
  bare.status = 500;
  bare.type = "server_error";
  bare.message = "boom";
  j = parse_back(error_json(bare));
  EXPECT_TRUE(j["error"]["param"].is_null());
  EXPECT_TRUE(j["error"]["code"].is_null());
  EXPECT_EQ(j["error"]["type"], "server_error");
}

std::vector<uint8_t> bytes_of(std::string_view s) { return {s.begin(), s.end()}; }

// Two tokens: "Hi" and the first two bytes of U+4F60 (a partial character), with alternatives.
std::vector<TokenLogprob> sample_logprobs() {
  return {{"Hi", -0.1f, {{"Hi", -0.1f}, {"Hello", -2.5f}}},
          {"\xE4\xBD", -1.25f, {{"\xE4\xBD", -1.25f}, {"\xE5", -1.5f}, {"x", -INFINITY}}}};
}

void check_usage(const json& u, const Usage& want) {
  EXPECT_EQ(u["prompt_tokens"], want.prompt_tokens);
  EXPECT_EQ(u["completion_tokens"], want.completion_tokens);
  EXPECT_EQ(u["total_tokens"], want.prompt_tokens + want.completion_tokens);
  if (want.cached_tokens >= 0) {
    EXPECT_EQ(u["prompt_tokens_details"]["cached_tokens"], want.cached_tokens);
  } else {
    EXPECT_FALSE(u.contains("prompt_tokens_details"));
  }
}

TEST(ApiResponse, CompletionJsonTextWithLogprobs) {
  CompletionRequest r;
  r.endpoint = kText;
  r.model = "smollm2-135m";
  std::vector<Choice> choices(2);
  choices[0].index = 0;
  choices[0].text = "Hi\xE4\xBD\xA0";
  choices[0].finish_reason = "length";
  choices[0].logprobs = sample_logprobs();
  choices[0].has_logprobs = true;
  choices[1].index = 1;
  choices[1].text = "bad \xC3(";
  choices[1].finish_reason = "stop";
  const Usage usage{12, 2, 8};
  json j = parse_back(completion_json(r, "cmpl-1", 1700000000, choices, usage));
  EXPECT_EQ(j["id"], "cmpl-1");
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["created"], 1700000000);
  EXPECT_EQ(j["model"], "smollm2-135m");
  ASSERT_EQ(j["choices"].size(), 2u);
  const json& c0 = j["choices"][0];
  EXPECT_EQ(c0["index"], 0);
  EXPECT_EQ(c0["text"], "Hi\xE4\xBD\xA0");
  EXPECT_EQ(c0["finish_reason"], "length");
  EXPECT_FALSE(c0.contains("message"));
  const json& lp = c0["logprobs"];
  EXPECT_EQ(lp["tokens"], json({"Hi", "\xEF\xBF\xBD"}));
  EXPECT_EQ(lp["token_logprobs"], json({-0.1, -1.25}));  // shortest float digits
  ASSERT_EQ(lp["top_logprobs"].size(), 2u);
  EXPECT_EQ(lp["top_logprobs"][0], json({{"Hi", -0.1}, {"Hello", -2.5}}));
  // "\xE4\xBD" and "\xE5" both read U+FFFD: the likelier stays; -inf is written -9999.
  EXPECT_EQ(lp["top_logprobs"][1], json({{"\xEF\xBF\xBD", -1.25}, {"x", -9999.0}}));
  EXPECT_EQ(lp["text_offset"], json({0, 2}));
  const json& c1 = j["choices"][1];
  EXPECT_EQ(c1["index"], 1);
  EXPECT_EQ(c1["text"], "bad \xEF\xBF\xBD(");
  EXPECT_TRUE(c1["logprobs"].is_null());
  EXPECT_EQ(c1["finish_reason"], "stop");
  check_usage(j["usage"], usage);
}

TEST(ApiResponse, CompletionJsonChatWithLogprobs) {
  CompletionRequest r;
  r.endpoint = kChat;
  r.model = "m";
  std::vector<Choice> choices(1);
  choices[0].text = "Hi\xE4\xBD\xA0";
  choices[0].finish_reason = "stop";
  choices[0].logprobs = sample_logprobs();
  choices[0].has_logprobs = true;
  const Usage usage{3, 2, -1};
  json j = parse_back(completion_json(r, "chatcmpl-9", 5, choices, usage));
  EXPECT_EQ(j["id"], "chatcmpl-9");
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["created"], 5);
  EXPECT_EQ(j["model"], "m");
  ASSERT_EQ(j["choices"].size(), 1u);
  const json& c = j["choices"][0];
  EXPECT_EQ(c["index"], 0);
  EXPECT_EQ(c["message"], json({{"role", "assistant"}, {"content", "Hi\xE4\xBD\xA0"}}));
  EXPECT_FALSE(c.contains("text"));
  EXPECT_EQ(c["finish_reason"], "stop");
  const json& content = c["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  const std::vector<TokenLogprob> want = sample_logprobs();
  for (size_t i = 0; i < want.size(); ++i) {
    std::string valid;
    utf8::append_replacing_invalid(valid, want[i].token);
    EXPECT_EQ(content[i]["token"], valid);
    EXPECT_EQ(content[i]["logprob"].get<float>(), want[i].logprob);
    EXPECT_EQ(content[i]["bytes"].get<std::vector<uint8_t>>(), bytes_of(want[i].token));
    const json& top = content[i]["top_logprobs"];
    ASSERT_EQ(top.size(), want[i].top.size());
    for (size_t k = 0; k < top.size(); ++k) {
      std::string tv;
      utf8::append_replacing_invalid(tv, want[i].top[k].token);
      EXPECT_EQ(top[k]["token"], tv);
      EXPECT_EQ(top[k]["bytes"].get<std::vector<uint8_t>>(), bytes_of(want[i].top[k].token));
      const float lpv = want[i].top[k].logprob;
      EXPECT_EQ(top[k]["logprob"].get<float>(), std::isfinite(lpv) ? lpv : -9999.0f);
    }
  }
  // The concatenated bytes rebuild the text exactly, partial characters included.
  std::vector<uint8_t> all;
  for (const json& t : content) {
    for (uint8_t b : t["bytes"].get<std::vector<uint8_t>>()) all.push_back(b);
  }
  EXPECT_EQ(all, bytes_of("Hi\xE4\xBD"));
  check_usage(j["usage"], usage);
}

TEST(ApiResponse, NoLogprobsIsNull) {
  CompletionRequest r;
  r.endpoint = kChat;
  r.model = "m";
  Choice c;
  c.text = "x";
  std::vector<Choice> choices = {c};
  json j = parse_back(completion_json(r, "id", 0, choices, Usage{}));
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_TRUE(j["choices"][0]["finish_reason"].is_null());
  choices[0].has_logprobs = true;  // asked for, but no tokens: an empty list
  j = parse_back(completion_json(r, "id", 0, choices, Usage{}));
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"], json::array());
}

TEST(ApiResponse, ChatChunks) {
  Choice c;
  c.index = 2;
  c.text = "";
  json j = parse_back(chunk_json(kChat, "m", "chatcmpl-1", 77, c, /*first_chat_chunk=*/true));
  EXPECT_EQ(j["id"], "chatcmpl-1");
  EXPECT_EQ(j["object"], "chat.completion.chunk");
  EXPECT_EQ(j["created"], 77);
  EXPECT_EQ(j["model"], "m");
  ASSERT_EQ(j["choices"].size(), 1u);
  EXPECT_EQ(j["choices"][0]["index"], 2);
  EXPECT_EQ(j["choices"][0]["delta"], json({{"role", "assistant"}, {"content", ""}}));
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_TRUE(j["choices"][0]["finish_reason"].is_null());
  EXPECT_FALSE(j.contains("usage"));

  c.text = "lo";
  c.logprobs = {{"lo", -0.5f, {{"lo", -0.5f}}}};
  c.has_logprobs = true;
  j = parse_back(chunk_json(kChat, "m", "chatcmpl-1", 77, c, false));
  EXPECT_EQ(j["choices"][0]["delta"], json({{"content", "lo"}}));
  const json& t = j["choices"][0]["logprobs"]["content"][0];
  EXPECT_EQ(t["token"], "lo");
  EXPECT_EQ(t["logprob"], -0.5);
  EXPECT_EQ(t["bytes"], json({108, 111}));
  EXPECT_EQ(t["top_logprobs"][0],
            json({{"token", "lo"}, {"logprob", -0.5}, {"bytes", {108, 111}}}));

  Choice last;
  last.finish_reason = "length";
  j = parse_back(chunk_json(kChat, "m", "chatcmpl-1", 77, last, false));
  EXPECT_EQ(j["choices"][0]["delta"], json::object());
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
}

TEST(ApiResponse, TextChunksContinueTextOffsets) {
  Choice c;
  c.text = "\xC3\xA9t\xC3\xA9";
  c.logprobs = {{"\xC3\xA9", -1.0f, {}}, {"t", -2.0f, {}}, {"\xC3\xA9", -3.0f, {}}};
  c.has_logprobs = true;
  c.text_offset = 10;  // characters streamed before this chunk
  c.finish_reason = "stop";
  json j = parse_back(chunk_json(kText, "m", "cmpl-2", 1, c, /*first_chat_chunk=*/true));
  EXPECT_EQ(j["object"], "text_completion");
  const json& ch = j["choices"][0];
  EXPECT_EQ(ch["text"], "\xC3\xA9t\xC3\xA9");
  EXPECT_FALSE(ch.contains("delta"));  // first_chat_chunk means nothing here
  EXPECT_EQ(ch["finish_reason"], "stop");
  EXPECT_EQ(ch["logprobs"]["text_offset"], json({10, 11, 12}));  // characters, not bytes
  EXPECT_EQ(ch["logprobs"]["top_logprobs"], json({json::object(), json::object(), json::object()}));
}

TEST(ApiResponse, UsageChunk) {
  const Usage usage{100, 20, 64};
  for (Endpoint e : {kChat, kText}) {
    json j = parse_back(usage_chunk_json(e, "m", "id-1", 9, usage));
    EXPECT_EQ(j["object"], e == kChat ? "chat.completion.chunk" : "text_completion");
    EXPECT_EQ(j["id"], "id-1");
    EXPECT_EQ(j["created"], 9);
    EXPECT_EQ(j["model"], "m");
    EXPECT_EQ(j["choices"], json::array());
    check_usage(j["usage"], usage);
  }
}

TEST(ApiResponse, ModelsJson) {
  json j = parse_back(models_json({"smollm2-135m", "gemma3-270m"}, 42));
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 2u);
  EXPECT_EQ(j["data"][1], json({{"id", "gemma3-270m"},
                                {"object", "model"},
                                {"created", 42},
                                {"owned_by", "peregrine"}}));
  j = parse_back(models_json({}, 0));
  EXPECT_EQ(j["data"], json::array());
}

TEST(ApiResponse, InvalidUtf8NeverThrows) {
  CompletionRequest r;
  r.endpoint = kChat;
  r.model = "m\xFF";
  std::vector<Choice> choices(1);
  choices[0].text = std::string("\xFF\xFE\xC0\x80\xED\xA0\x80\0end", 11);
  choices[0].finish_reason = "st\xFFop";
  choices[0].logprobs = {{"\xF0\x9F", NAN, {{"\x80", INFINITY}}}};
  choices[0].has_logprobs = true;
  std::string out;
  ASSERT_NO_THROW(out = completion_json(r, "id\xC3", 0, choices, Usage{}));
  json j = parse_back(out);
  EXPECT_EQ(j["model"], "m\xEF\xBF\xBD");
  EXPECT_EQ(j["id"], "id\xEF\xBF\xBD");
  const std::string content = j["choices"][0]["message"]["content"];
  EXPECT_TRUE(utf8::is_valid(content));
  EXPECT_NE(content.find(std::string("\0end", 4)), std::string::npos);  // NUL kept (as \u0000)
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"][0]["logprob"], -9999.0);
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"][0]["bytes"], json({0xF0, 0x9F}));
  ASSERT_NO_THROW(out = chunk_json(kText, "\xFF", "\xFF", 0, choices[0], false));
  parse_back(out);
}

}  // namespace
}  // namespace peregrine::serve

namespace peregrine::serve {
namespace {

// Each constraint field becomes one ConstraintSpec; schemas keep the client's key order.
TEST(ApiConstraints, FieldsBecomeSpecs) {
  using K = constrain::ConstraintSpec::Kind;
  auto spec = [](const std::string& extra) {
    auto r = parse_request(Endpoint::ChatCompletions,
                           R"({"model":"m","messages":[{"role":"user","content":"x"}],)" + extra + "}", {});
    EXPECT_TRUE(std::holds_alternative<CompletionRequest>(r)) << extra;
    return std::get<CompletionRequest>(r);
  };
  CompletionRequest r = spec(R"("response_format":{"type":"json_schema","json_schema":{"name":"p","strict":true,
      "schema":{"type":"object","properties":{"zz":{"type":"integer"},"aa":{"type":"string"}}}}})");
  EXPECT_EQ(r.constraint.kind, K::JsonSchema);
  EXPECT_TRUE(r.constraint.json.strict);
  EXPECT_LT(r.constraint.text.find("zz"), r.constraint.text.find("aa")) << r.constraint.text;
  EXPECT_EQ(r.constraint_param, "response_format.json_schema.schema");
  EXPECT_EQ(spec(R"("response_format":{"type":"json_object"})").constraint.kind, K::JsonObject);
  EXPECT_EQ(spec(R"("response_format":{"type":"text"})").constraint.kind, K::None);
  EXPECT_EQ(spec(R"("guided_json":"{\"type\":\"integer\"}")").constraint.text, R"({"type":"integer"})");
  EXPECT_EQ(spec(R"("guided_regex":"a+")").constraint.kind, K::Regex);
  EXPECT_EQ(spec(R"("guided_grammar":"root ::= \"a\"")").constraint.kind, K::Gbnf);
  EXPECT_EQ(spec(R"("grammar":"root ::= \"a\"")").constraint_param, "grammar");
  EXPECT_EQ(spec(R"("json_schema":{"b":1,"a":2})").constraint.text, R"({"b":1,"a":2})");
  CompletionRequest c = spec(R"("guided_choice":["x","y z"])");
  EXPECT_EQ(c.constraint.kind, K::Choices);
  EXPECT_EQ(c.constraint.choices, (std::vector<std::string>{"x", "y z"}));
  CompletionRequest t = spec(R"("tools":[{"type":"function","function":{"name":"f","parameters":
      {"type":"object","properties":{"q":{"type":"string"},"a":{"type":"integer"}}}}},
      {"type":"function","function":{"name":"g"}}],"tool_choice":{"type":"function","function":{"name":"g"}})");
  EXPECT_TRUE(t.tool_call);
  EXPECT_EQ(t.tool_name, "g");
  ASSERT_EQ(t.tools.size(), 2u);
  EXPECT_LT(t.tools[0].parameters.find("\"q\""), t.tools[0].parameters.find("\"a\""));
  EXPECT_NE(tool_call_schema(t).find("\"const\":\"g\""), std::string::npos) << tool_call_schema(t);
  EXPECT_EQ(tool_call_schema(t).find("\"f\""), std::string::npos);
  auto call = parse_tool_call(R"({"name":"g","arguments":{"b":1,"a":2}})");
  ASSERT_TRUE(call.has_value());
  EXPECT_EQ(call->name, "g");
  EXPECT_EQ(call->arguments, R"({"b":1,"a":2})");
  EXPECT_FALSE(parse_tool_call(R"({"name":"g","argu)").has_value());
}

TEST(ApiConstraints, ConflictsAndBadValuesNameTheField) {
  struct Case {
    const char* extra;
    const char* param;
  };
  for (Case c : {Case{R"("guided_regex":"a","grammar":"root ::= \"a\"")", "grammar"},
                 Case{R"("response_format":{"type":"json_object"},"guided_json":{})", "guided_json"},
                 Case{R"("guided_choice":[])", "guided_choice"}, Case{R"("guided_choice":["a",1])", "guided_choice[1]"},
                 Case{R"("guided_regex":"")", "guided_regex"}, Case{R"("guided_json":5)", "guided_json"},
                 Case{R"("response_format":{"type":"json_schema"})", "response_format.json_schema"},
                 Case{R"("response_format":{"type":"json_schema","json_schema":{"name":"a b"}})",
                      "response_format.json_schema.name"},
                 Case{R"("response_format":{"type":"yaml"})", "response_format.type"},
                 Case{R"("tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":{"type":"function","function":{"name":"h"}})",
                      "tool_choice.function.name"},
                 Case{R"("tools":[{"type":"function","function":{"name":"f"}},{"type":"function","function":{"name":"f"}}],"tool_choice":"required")",
                      "tools[1].function.name"},
                 Case{R"("tools":[{"type":"retrieval"}],"tool_choice":"required")", "tools[0].type"},
                 Case{R"("tools":[],"tool_choice":"required")", "tool_choice"},
                 Case{R"("tools":[{"type":"function","function":{"name":"f"}}],"tool_choice":"required","guided_regex":"a")",
                      "guided_regex"}}) {
    auto r = parse_request(Endpoint::ChatCompletions,
                           std::string(R"({"model":"m","messages":[{"role":"user","content":"x"}],)") + c.extra + "}", {});
    ASSERT_TRUE(std::holds_alternative<ApiError>(r)) << c.extra;
    EXPECT_EQ(std::get<ApiError>(r).status, 400) << c.extra;
    EXPECT_EQ(std::get<ApiError>(r).param, c.param) << c.extra << ": " << std::get<ApiError>(r).message;
  }
}

}  // namespace
}  // namespace peregrine::serve
