// The constrained-output fields of a request: OpenAI's response_format and tools/tool_choice,
// and, so that clients of those servers work unchanged, vLLM's guided_json / guided_regex /
// guided_choice / guided_grammar and llama-server's grammar / json_schema. At most one
// constraint per request; a tool call may not be combined with another constraint.
//
// Schemas keep the client's key order (properties are generated in that order), so they are
// read from the body text again with an order-preserving parser.
#pragma once

#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "serve/api.h"

namespace peregrine::serve {

// Fills r.constraint / constraint_param and r.tools / tool_call / tool_name.
std::optional<ApiError> parse_constraint_fields(const nlohmann::json& body, std::string_view body_text,
                                                CompletionRequest& r);

// The JSON Schema a tool-call answer follows: {"name": one of the allowed functions,
// "arguments": that function's parameters}, as a schema text.
std::string tool_call_schema(const CompletionRequest& r);
// The system text that presents the tools and the answer format to the model.
std::string tool_system_text(const CompletionRequest& r);
// The call in a generated answer (which followed tool_call_schema), with a fresh id; nullopt
// when the text is not one (cut short by max_tokens).
std::optional<ToolCall> parse_tool_call(std::string_view text);

}  // namespace peregrine::serve
