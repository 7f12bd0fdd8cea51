// The OpenAI-compatible API's JSON: parsing and validating /v1/completions and
// /v1/chat/completions request bodies, and building the response, streaming chunk, error and
// model-list bodies. No HTTP and no model here: the server feeds bodies in and sends strings out.
//
// Requests follow OpenAI's semantics (https://platform.openai.com/docs/api-reference): known
// fields are type- and range-checked, null means "not given", unknown fields are ignored, and
// fields we cannot honour but that would change the output (tools, response_format json,
// logit_bias, best_of, echo, suffix, audio) are refused rather than silently dropped. Every error
// is an ApiError whose `param` names the field, as OpenAI's do. Nothing here throws.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "constrain/constraint_spec.h"
#include "tokenizer/chat_template.h"

namespace peregrine::serve {

enum class Endpoint { Completions, ChatCompletions };

struct ApiError {
  int status = 400;  // HTTP status
  std::string type = "invalid_request_error";
  std::string message;
  std::string param;  // the offending field, e.g. "messages[1].content"; empty: none
  std::string code;   // e.g. "model_not_found"; empty: none
};

struct ApiLimits {
  size_t max_body_bytes = 4 << 20;
  int32_t max_n = 16;
  int32_t max_stop = 4;         // stop strings per request
  size_t max_stop_bytes = 256;  // per stop string
  size_t max_messages = 1024;
  int32_t max_top_logprobs = 20;        // chat: top_logprobs
  int32_t max_completion_logprobs = 5;  // completions: logprobs
  int64_t max_tokens_cap = 1 << 20;
  size_t max_depth = 64;                 // JSON nesting
  std::vector<std::string> model_names;  // accepted "model" values; empty: accept any
};

// A function the client offers (tools[].function): its parameters as JSON Schema text in the
// client's key order ("" when it takes none).
struct Tool {
  std::string name, description, parameters;
};
struct ToolCall {
  std::string id, name, arguments;  // arguments: JSON text
};

struct CompletionRequest {
  Endpoint endpoint = Endpoint::Completions;
  std::string model;
  std::vector<ChatMessage> messages;   // chat; roles "system", "user", "assistant"
  std::string prompt;                  // completions, text form
  std::vector<int32_t> prompt_tokens;  // completions, when "prompt" is an array of token ids
  bool prompt_is_tokens = false;
  int64_t max_tokens = -1;   // -1: not given (the server decides: until the context fills);
                             // completions default to 16, as OpenAI's do
  float temperature = 1.0f;  // 0..2; 0 = greedy
  float top_p = 1.0f;        // (0, 1]; a request's 0 becomes kMinTopP (keeps only the top token)
  std::optional<uint64_t> seed;   // negative seeds are taken modulo 2^64
  std::vector<std::string> stop;  // non-empty strings
  int32_t n = 1;
  bool logprobs = false;
  int32_t top_logprobs = 0;  // completions: "logprobs": k gives logprobs = true, top_logprobs = k
  float presence_penalty = 0.0f, frequency_penalty = 0.0f;  // -2..2
  // Extensions (as llama-server's), off by default: the CLI's sampling chain over the API.
  int32_t top_k = 0;            // 0 = off
  float min_p = 0.0f;           // 0 = off
  float repeat_penalty = 1.0f;  // 1 = off
  int32_t repeat_last_n = 64;
  std::string user;
  bool stream = false, include_usage = false;
  // Extension (as llama-server's): keep generating past end-of-generation tokens, so a
  // benchmark gets exactly max_tokens tokens.
  bool ignore_eos = false;
  // Constrained output (api_constraints.h): response_format json_object / json_schema, vLLM's
  // guided_json / guided_regex / guided_choice / guided_grammar, llama-server's grammar /
  // json_schema; constraint_param names the field it came from.
  constrain::ConstraintSpec constraint;
  std::string constraint_param;
  // Tools: with tool_choice "required" or a named function the answer is a tool call
  // (tool_call), generated under the schema of {"name", "arguments"} for the allowed tools.
  std::vector<Tool> tools;
  bool tool_call = false;
  std::string tool_name;  // the function tool_choice names; empty: any of tools
};

inline constexpr float kMinTopP = 1e-6f;

// Parses and validates a request body. Statuses: 413 (body over max_body_bytes, code
// "request_too_large"), 404 (model not in limits.model_names, code "model_not_found"),
// 400 (everything else); 500 "server_error" only if memory runs out.
std::variant<CompletionRequest, ApiError> parse_request(Endpoint e, std::string_view body,
                                                        const ApiLimits& limits);

// --- Responses ---------------------------------------------------------------------------------

struct TopLogprob {
  std::string token;  // raw bytes; may be part of a UTF-8 character
  float logprob = 0.0f;
};
struct TokenLogprob {
  std::string token;  // raw bytes; may be part of a UTF-8 character
  float logprob = 0.0f;
  std::vector<TopLogprob> top;  // most likely first
};
struct Choice {
  int32_t index = 0;
  std::string text;           // the completion, or this chunk's part of it
  std::string finish_reason;  // "stop", "length", or "" (null: not finished yet)
  std::vector<TokenLogprob> logprobs;
  bool has_logprobs = false;  // false: "logprobs": null
  // Completions' text_offset of the first token: characters of the text streamed before this
  // chunk (0 for a whole response).
  int64_t text_offset = 0;
  std::vector<ToolCall> tool_calls;  // chat: the message's tool_calls (content null), finish "tool_calls"
};
struct Usage {
  int64_t prompt_tokens = 0, completion_tokens = 0;  // total_tokens is their sum
  int64_t cached_tokens = -1;  // >= 0: usage.prompt_tokens_details.cached_tokens
};

// Output strings are valid UTF-8 whatever the input: invalid sequences in text and token
// strings become U+FFFD (chat logprobs keep the exact bytes in "bytes"). Non-finite logprobs
// are written as -9999.0, as OpenAI does for tokens of zero probability.

// {"error": {"message", "type", "param", "code"}}, param and code null when empty.
std::string error_json(const ApiError& e);
// A whole response: object "text_completion" (choices[].text) or "chat.completion"
// (choices[].message = {"role": "assistant", "content"}); model and endpoint from r.
std::string completion_json(const CompletionRequest& r, std::string_view id, int64_t created,
                            const std::vector<Choice>& choices, const Usage& usage);
// One server-sent event's data for stream = true: "chat.completion.chunk" with
// choices[0].delta = {"content"} (plus "role": "assistant" when first_chat_chunk), or
// "text_completion" with choices[0].text. finish_reason is null until the last chunk.
std::string chunk_json(Endpoint e, std::string_view model, std::string_view id, int64_t created,
                       const Choice& delta_choice, bool first_chat_chunk);
// The final chunk of stream_options.include_usage: "choices": [] and "usage".
std::string usage_chunk_json(Endpoint e, std::string_view model, std::string_view id,
                             int64_t created, const Usage& usage);
// GET /v1/models: {"object": "list", "data": [{"id", "object": "model", "created",
// "owned_by": "peregrine"}]}.
std::string models_json(const std::vector<std::string>& names, int64_t created);

}  // namespace peregrine::serve
