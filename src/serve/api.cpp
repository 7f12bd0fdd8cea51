#include "serve/api.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "serve/api_constraints.h"
#include "serve/api_fields.h"
#include "tokenizer/unicode_utf8.h"

namespace peregrine::serve {

namespace {

using namespace api_fields;  // NOLINT: the field checks are this file's vocabulary

// --- Request parts -----------------------------------------------------------------------------

Err parse_content(const json& v, const std::string& param, std::string& out) {
  if (v.is_string()) {
    out = v.get_ref<const std::string&>();
    return std::nullopt;
  }
  if (!v.is_array()) return wrong_type(param, "a string or an array of content parts", v);
  out.clear();
  for (size_t j = 0; j < v.size(); ++j) {
    const json& part = v[j];
    const std::string pp = fmt::format("{}[{}]", param, j);
    if (!part.is_object()) return wrong_type(pp, "an object", part);
    const json* type = field(part, "type");
    if (type == nullptr) return missing(pp + ".type");
    if (!type->is_string()) return wrong_type(pp + ".type", "a string", *type);
    const std::string& t = type->get_ref<const std::string&>();
    if (t == "text") {
      const json* text = field(part, "text");
      if (text == nullptr) return missing(pp + ".text");
      if (!text->is_string()) return wrong_type(pp + ".text", "a string", *text);
      out += text->get_ref<const std::string&>();
    } else if (t == "image_url" || t == "input_image" || t == "input_audio" || t == "file" ||
               t == "image" || t == "audio") {
      return unsupported(pp + ".type",
                         fmt::format("Content parts of type '{}' are not supported: this server "
                                     "handles text only.",
                                     t));
    } else {
      return invalid(pp + ".type",
                     fmt::format("Invalid value for '{}.type': {}. Supported values are: "
                                 "'text'.",
                                 pp, show(*type)),
                     "invalid_value");
    }
  }
  return std::nullopt;
}

Err parse_messages(const json& body, const ApiLimits& limits, std::vector<ChatMessage>& out) {
  const json* msgs = field(body, "messages");
  if (msgs == nullptr) return missing("messages");
  if (!msgs->is_array()) return wrong_type("messages", "an array", *msgs);
  if (msgs->empty()) {
    return invalid("messages", "Invalid 'messages': empty array. Expected at least one message.",
                   "empty_array");
  }
  if (msgs->size() > limits.max_messages) {
    return invalid("messages",
                   fmt::format("Invalid 'messages': {} messages, more than the limit of {}.",
                               msgs->size(), limits.max_messages),
                   "array_above_max_length");
  }
  out.clear();
  out.reserve(msgs->size());
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string mp = fmt::format("messages[{}]", i);
    if (!m.is_object()) return wrong_type(mp, "an object", m);
    const json* role = field(m, "role");
    if (role == nullptr) return missing(mp + ".role");
    if (!role->is_string()) return wrong_type(mp + ".role", "a string", *role);
    std::string r = role->get_ref<const std::string&>();
    if (r == "developer") r = "system";  // OpenAI's newer name for the system role
    if (r == "function") {
      return unsupported(mp + ".role", "Messages with role 'function' are not supported: use 'tool'.");
    }
    if (r != "system" && r != "user" && r != "assistant" && r != "tool") {
      return invalid(mp + ".role",
                     fmt::format("Invalid value for '{}.role': {}. Supported values are: "
                                 "'system', 'developer', 'user', 'assistant' and 'tool'.",
                                 mp, show(*role)),
                     "invalid_value");
    }
    if (r == "assistant") {
      const json* fc = field(m, "function_call");
      if (fc != nullptr) return unsupported(mp + ".function_call", "'function_call' is not supported: use 'tool_calls'.");
    }
    ChatMessage cm;
    cm.role = std::move(r);
    const json* content = field(m, "content");
    if (content == nullptr) {
      // Only an assistant turn may be empty (OpenAI allows it beside tool calls).
      if (cm.role != "assistant") return missing(mp + ".content");
    } else {
      API_TRY(parse_content(*content, mp + ".content", cm.content));
    }
    // Tool turns in the model's own terms: an assistant's calls as the JSON it answers with
    // (as tool_system_text asks), a tool's result as a user turn that says what it is (chat
    // templates know no "tool" role).
    if (const json* calls = cm.role == "assistant" ? field(m, "tool_calls") : nullptr) {
      if (!calls->is_array()) return wrong_type(mp + ".tool_calls", "an array", *calls);
      for (size_t k = 0; k < calls->size(); ++k) {
        const json& c = (*calls)[k];
        const std::string cp = fmt::format("{}.tool_calls[{}]", mp, k);
        const json* fn = c.is_object() ? field(c, "function") : nullptr;
        if (fn == nullptr || !fn->is_object()) return missing(cp + ".function");
        std::string name, args;
        const json* n = field(*fn, "name");
        if (n == nullptr) return missing(cp + ".function.name");
        API_TRY(read_string(*n, cp + ".function.name", name));
        if (const json* a = field(*fn, "arguments")) API_TRY(read_string(*a, cp + ".function.arguments", args));
        if (!cm.content.empty()) cm.content += "\n";
        cm.content += json{{"name", name}, {"arguments", json::parse(args.empty() ? "{}" : args, nullptr, false)}}.dump();
      }
    }
    if (cm.role == "tool") {
      std::string id;
      if (const json* t = field(m, "tool_call_id")) API_TRY(read_string(*t, mp + ".tool_call_id", id));
      cm.role = "user";
      cm.content = "Result of the function call" + (id.empty() ? std::string() : " " + id) + ":\n" + cm.content;
    }
    out.push_back(std::move(cm));
  }
  return std::nullopt;
}

Err parse_token_ids(const json& arr, const std::string& param, std::vector<int32_t>& out) {
  out.clear();
  out.reserve(arr.size());
  for (size_t i = 0; i < arr.size(); ++i) {
    int32_t id = 0;
    API_TRY(read_int32(arr[i], fmt::format("{}[{}]", param, i), 0,
                       std::numeric_limits<int32_t>::max(), id));
    out.push_back(id);
  }
  return std::nullopt;
}

Err parse_prompt(const json& body, CompletionRequest& r) {
  const json* p = field(body, "prompt");
  if (p == nullptr) return missing("prompt");
  auto empty = [] {
    return invalid("prompt", "Invalid 'prompt': the prompt must not be empty.", "empty_prompt");
  };
  if (p->is_string()) {
    r.prompt = p->get_ref<const std::string&>();
    if (r.prompt.empty()) return empty();
    return std::nullopt;
  }
  if (!p->is_array()) return wrong_type("prompt", "a string or an array of token ids", *p);
  if (p->empty()) return empty();
  const json& first = (*p)[0];
  if (first.is_string() || first.is_array()) {
    // ["text"] or [[ids]]: OpenAI's batch forms, accepted with one prompt.
    if (p->size() != 1) {
      return unsupported("prompt",
                         fmt::format("Batched prompts ({} prompts in one request) are not "
                                     "supported: send one request per prompt.",
                                     p->size()));
    }
    if (first.is_string()) {
      r.prompt = first.get_ref<const std::string&>();
      if (r.prompt.empty()) return empty();
      return std::nullopt;
    }
    if (first.empty()) return empty();
    API_TRY(parse_token_ids(first, "prompt[0]", r.prompt_tokens));
  } else {
    API_TRY(parse_token_ids(*p, "prompt", r.prompt_tokens));
  }
  r.prompt_is_tokens = true;
  return std::nullopt;
}

Err parse_stop(const json& body, const ApiLimits& limits, std::vector<std::string>& out) {
  const json* s = field(body, "stop");
  if (s == nullptr) return std::nullopt;
  auto check = [&](const json& v, const std::string& param) -> Err {
    if (!v.is_string()) return wrong_type(param, "a string", v);
    const std::string& str = v.get_ref<const std::string&>();
    if (str.empty()) {
      return invalid(param, fmt::format("Invalid '{}': stop strings must not be empty.", param),
                     "invalid_value");
    }
    if (str.size() > limits.max_stop_bytes) {
      return invalid(param,
                     fmt::format("Invalid '{}': a stop string of {} bytes, longer than the limit "
                                 "of {}.",
                                 param, str.size(), limits.max_stop_bytes),
                     "string_above_max_length");
    }
    out.push_back(str);
    return std::nullopt;
  };
  if (s->is_string()) return check(*s, "stop");
  if (!s->is_array()) return wrong_type("stop", "a string or an array of strings", *s);
  if (s->size() > static_cast<size_t>(std::max(limits.max_stop, 0))) {
    return invalid("stop",
                   fmt::format("Invalid 'stop': {} stop strings, more than the limit of {}.",
                               s->size(), limits.max_stop),
                   "array_above_max_length");
  }
  for (size_t i = 0; i < s->size(); ++i) API_TRY(check((*s)[i], fmt::format("stop[{}]", i)));
  return std::nullopt;
}

// Fields that would change the output in ways we cannot produce: refused, never ignored.
Err refuse_unsupported(const json& body) {
  auto not_supported = [](const std::string& param, std::string_view why) {
    return unsupported(param, fmt::format("'{}' is not supported: {}.", param, why));
  };
  if (const json* v = field(body, "functions"); v != nullptr && !(v->is_array() && v->empty()))
    return not_supported("functions", "use 'tools' (the deprecated 'functions' is not read)");
  if (const json* v = field(body, "function_call"); v != nullptr && !(v->is_string() && v->get_ref<const std::string&>() == "none"))
    return not_supported("function_call", "use 'tool_choice' (the deprecated 'function_call' is not read)");
  if (const json* v = field(body, "logit_bias")) {
    if (!v->is_object()) return wrong_type("logit_bias", "an object", *v);
    if (!v->empty()) return not_supported("logit_bias", "logits cannot be biased here");
  }
  if (const json* v = field(body, "best_of")) {
    int64_t best_of = 0;
    API_TRY(read_integer(*v, "best_of", 1, std::numeric_limits<int32_t>::max(), best_of));
    if (best_of > 1) return not_supported("best_of", "use n for several completions");
  }
  if (const json* v = field(body, "echo")) {
    bool echo = false;
    API_TRY(read_bool(*v, "echo", echo));
    if (echo) return not_supported("echo", "the prompt is not echoed");
  }
  if (const json* v = field(body, "suffix")) {
    std::string suffix;
    API_TRY(read_string(*v, "suffix", suffix));
    if (!suffix.empty()) return not_supported("suffix", "insertion is not supported");
  }
  if (field(body, "audio") != nullptr) return not_supported("audio", "output is text only");
  if (const json* v = field(body, "modalities")) {
    const bool text_only = v->is_array() && std::all_of(v->begin(), v->end(), [](const json& m) {
                             return m.is_string() && m.get_ref<const std::string&>() == "text";
                           });
    if (!text_only) return not_supported("modalities", "output is text only");
  }
  return std::nullopt;
}

Err parse_fields(Endpoint e, const json& body, std::string_view body_text, const ApiLimits& limits,
                 CompletionRequest& r) {
  const bool chat = e == Endpoint::ChatCompletions;
  r.endpoint = e;

  const json* model = field(body, "model");
  if (model == nullptr) {
    return invalid("model", "You must provide a model parameter.", "missing_required_parameter");
  }
  API_TRY(read_string(*model, "model", r.model));
  if (r.model.empty()) {
    return invalid("model", "You must provide a model parameter.", "missing_required_parameter");
  }
  if (!limits.model_names.empty() && std::find(limits.model_names.begin(), limits.model_names.end(),
                                               r.model) == limits.model_names.end()) {
    ApiError err;
    err.status = 404;
    // Only the advertised name: the others are file names and paths, not for clients to see.
    err.message = fmt::format("The model '{}' does not exist. Available: {}.", r.model.substr(0, 256),
                              limits.model_names.front());
    err.param = "model";
    err.code = "model_not_found";
    return err;
  }

  if (chat) {
    API_TRY(parse_messages(body, limits, r.messages));
  } else {
    API_TRY(parse_prompt(body, r));
  }
  API_TRY(refuse_unsupported(body));
  API_TRY(parse_constraint_fields(body, body_text, r));

  r.max_tokens = chat ? -1 : 16;  // OpenAI's defaults
  if (const json* v = field(body, "max_tokens")) {
    API_TRY(read_integer(*v, "max_tokens", 1, limits.max_tokens_cap, r.max_tokens));
  }
  if (const json* v = chat ? field(body, "max_completion_tokens") : nullptr) {
    API_TRY(read_integer(*v, "max_completion_tokens", 1, limits.max_tokens_cap, r.max_tokens));
  }
  if (const json* v = field(body, "temperature")) {
    API_TRY(read_float(*v, "temperature", 0.0, 2.0, r.temperature));
  }
  if (const json* v = field(body, "top_p")) {
    API_TRY(read_float(*v, "top_p", 0.0, 1.0, r.top_p));
    r.top_p = std::max(r.top_p, kMinTopP);  // OpenAI accepts 0: keep just the likeliest token
  }
  if (const json* v = field(body, "seed")) {
    uint64_t seed = 0;
    API_TRY(read_seed(*v, "seed", seed));
    r.seed = seed;
  }
  API_TRY(parse_stop(body, limits, r.stop));
  if (const json* v = field(body, "n")) API_TRY(read_int32(*v, "n", 1, limits.max_n, r.n));

  if (chat) {
    if (const json* v = field(body, "logprobs")) API_TRY(read_bool(*v, "logprobs", r.logprobs));
    if (const json* v = field(body, "top_logprobs")) {
      API_TRY(read_int32(*v, "top_logprobs", 0, limits.max_top_logprobs, r.top_logprobs));
      if (!r.logprobs) {
        return invalid("top_logprobs",
                       "Invalid 'top_logprobs': 'logprobs' must be true when 'top_logprobs' "
                       "is given.",
                       "invalid_value");
      }
    }
  } else if (const json* v = field(body, "logprobs")) {
    API_TRY(read_int32(*v, "logprobs", 0, limits.max_completion_logprobs, r.top_logprobs));
    r.logprobs = true;
  }

  if (const json* v = field(body, "presence_penalty")) {
    API_TRY(read_float(*v, "presence_penalty", -2.0, 2.0, r.presence_penalty));
  }
  if (const json* v = field(body, "frequency_penalty")) {
    API_TRY(read_float(*v, "frequency_penalty", -2.0, 2.0, r.frequency_penalty));
  }
  if (const json* v = field(body, "top_k")) API_TRY(read_int32(*v, "top_k", 0, 1 << 24, r.top_k));
  if (const json* v = field(body, "min_p")) API_TRY(read_float(*v, "min_p", 0.0, 1.0, r.min_p));
  if (const json* v = field(body, "repeat_penalty")) {
    API_TRY(read_float(*v, "repeat_penalty", 1e-3, 100.0, r.repeat_penalty));
  }
  if (const json* v = field(body, "repeat_last_n")) {
    API_TRY(read_int32(*v, "repeat_last_n", 0, 1 << 20, r.repeat_last_n));
  }
  if (const json* v = field(body, "user")) API_TRY(read_string(*v, "user", r.user));
  if (const json* v = field(body, "stream")) API_TRY(read_bool(*v, "stream", r.stream));
  if (const json* v = field(body, "ignore_eos")) API_TRY(read_bool(*v, "ignore_eos", r.ignore_eos));
  if (const json* v = field(body, "stream_options")) {
    if (!v->is_object()) return wrong_type("stream_options", "an object", *v);
    if (!r.stream) {
      return invalid("stream_options",
                     "Invalid 'stream_options': only allowed when 'stream' is true.",
                     "invalid_value");
    }
    if (const json* u = field(*v, "include_usage")) {
      API_TRY(read_bool(*u, "stream_options.include_usage", r.include_usage));
    }
  }
  return std::nullopt;
}

// --- Response helpers --------------------------------------------------------------------------

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

// Valid UTF-8 for a JSON string: each invalid or cut-off sequence becomes U+FFFD.
std::string valid_utf8(std::string_view s) {
  if (utf8::is_valid(s)) return std::string(s);
  std::string out;
  utf8::append_replacing_invalid(out, s);
  return out;
}

// A logprob as JSON: the float's shortest decimal (so -0.1f reads back as -0.1, not
// -0.10000000149011612); -9999.0 for -inf, as OpenAI writes tokens of zero probability.
json logprob_value(float lp) {
  if (!std::isfinite(lp)) return -9999.0;
  const std::string s = fmt::format("{}", lp);
  double d = lp;
  std::from_chars(s.data(), s.data() + s.size(), d);
  return d;
}

json finish_reason(const std::string& reason) {
  return reason.empty() ? json(nullptr) : json(valid_utf8(reason));
}

json bytes_array(std::string_view token) {
  json b = json::array();
  for (char c : token) b.push_back(static_cast<uint8_t>(c));
  return b;
}

// chat: {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
// "bytes"}]}]}
json chat_logprobs(const Choice& c) {
  if (!c.has_logprobs) return nullptr;
  json content = json::array();
  for (const TokenLogprob& t : c.logprobs) {
    json top = json::array();
    for (const TopLogprob& tl : t.top) {
      top.push_back({{"token", valid_utf8(tl.token)},
                     {"logprob", logprob_value(tl.logprob)},
                     {"bytes", bytes_array(tl.token)}});
    }
    content.push_back({{"token", valid_utf8(t.token)},
                       {"logprob", logprob_value(t.logprob)},
                       {"bytes", bytes_array(t.token)},
                       {"top_logprobs", std::move(top)}});
  }
  return {{"content", std::move(content)}};
}

// completions: {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}.
// Offsets count characters (code points, as a Python str index) from the start of the
// completion: every byte that is not a UTF-8 continuation byte starts one.
json completion_logprobs(const Choice& c) {
  if (!c.has_logprobs) return nullptr;
  json tokens = json::array(), token_logprobs = json::array(), top = json::array(),
       offsets = json::array();
  int64_t offset = c.text_offset;
  for (const TokenLogprob& t : c.logprobs) {
    tokens.push_back(valid_utf8(t.token));
    token_logprobs.push_back(logprob_value(t.logprob));
    json alternatives = json::object();
    // Keys can repeat once invalid bytes become U+FFFD: the likelier entry (first) stays.
    for (const TopLogprob& tl : t.top) {
      alternatives.emplace(valid_utf8(tl.token), logprob_value(tl.logprob));
    }
    top.push_back(std::move(alternatives));
    offsets.push_back(offset);
    for (char ch : t.token) offset += (static_cast<uint8_t>(ch) & 0xC0) != 0x80 ? 1 : 0;
  }
  return {{"tokens", std::move(tokens)},
          {"token_logprobs", std::move(token_logprobs)},
          {"top_logprobs", std::move(top)},
          {"text_offset", std::move(offsets)}};
}

json usage_value(const Usage& u) {
  json j = {{"prompt_tokens", u.prompt_tokens},
            {"completion_tokens", u.completion_tokens},
            {"total_tokens", u.prompt_tokens + u.completion_tokens}};
  if (u.cached_tokens >= 0) j["prompt_tokens_details"] = {{"cached_tokens", u.cached_tokens}};
  return j;
}

json header(std::string_view object, std::string_view model, std::string_view id, int64_t created) {
  return {{"id", valid_utf8(id)},
          {"object", object},
          {"created", created},
          {"model", valid_utf8(model)}};
}

const char* chunk_object(Endpoint e) {
  return e == Endpoint::ChatCompletions ? "chat.completion.chunk" : "text_completion";
}

}  // namespace

std::variant<CompletionRequest, ApiError> parse_request(Endpoint e, std::string_view body,
                                                        const ApiLimits& limits) {
  try {
    if (body.size() > limits.max_body_bytes) {
      ApiError err;
      err.status = 413;
      err.message = fmt::format("Request body of {} bytes is larger than the limit of {} bytes.",
                                body.size(), limits.max_body_bytes);
      err.code = "request_too_large";
      return err;
    }
    if (nesting_exceeds(body, limits.max_depth)) {
      return *invalid("",
                      fmt::format("The JSON body nests arrays and objects deeper than {} "
                                  "levels.",
                                  limits.max_depth),
                      "invalid_json");
    }
    json j;
    try {
      j = json::parse(body.begin(), body.end());
    } catch (const json::exception& pe) {  // parse_error, or out_of_range for 1e400
      // pe.what(): "[json.exception.parse_error.101] parse error at line 1, column 2: ..."
      std::string_view what = pe.what();
      if (auto pos = what.find("] "); pos != std::string_view::npos) what.remove_prefix(pos + 2);
      if (what.size() > 200) what = what.substr(0, 200);  // "last read" can quote a long token
      return *invalid("", fmt::format("We could not parse the JSON body of your request: {}", what),
                      "invalid_json");
    }
    if (!j.is_object()) {
      return *invalid("",
                      fmt::format("The request body must be a JSON object, not {}.", type_name(j)),
                      "invalid_json");
    }
    CompletionRequest r;
    if (Err err = parse_fields(e, j, body, limits, r)) return *std::move(err);
    return r;
  } catch (const std::exception& ex) {  // bad_alloc; anything else would be a bug here
    ApiError err;
    err.status = 500;
    err.type = "server_error";
    err.message = fmt::format("Internal error while reading the request: {}", ex.what());
    return err;
  }
}

std::string error_json(const ApiError& e) {
  json err = {{"message", valid_utf8(e.message)},
              {"type", valid_utf8(e.type)},
              {"param", e.param.empty() ? json(nullptr) : json(valid_utf8(e.param))},
              {"code", e.code.empty() ? json(nullptr) : json(valid_utf8(e.code))}};
  return dump({{"error", std::move(err)}});
}

namespace {

// message.tool_calls (or, streamed, delta.tool_calls, whose entries carry their index).
json tool_calls_value(const std::vector<ToolCall>& calls, bool streamed) {
  json out = json::array();
  for (size_t i = 0; i < calls.size(); ++i) {
    json c = {{"id", calls[i].id},
              {"type", "function"},
              {"function", {{"name", valid_utf8(calls[i].name)}, {"arguments", valid_utf8(calls[i].arguments)}}}};
    if (streamed) c["index"] = i;
    out.push_back(std::move(c));
  }
  return out;
}

}  // namespace

std::string completion_json(const CompletionRequest& r, std::string_view id, int64_t created,
                            const std::vector<Choice>& choices, const Usage& usage) {
  const bool chat = r.endpoint == Endpoint::ChatCompletions;
  json j = header(chat ? "chat.completion" : "text_completion", r.model, id, created);
  json out = json::array();
  for (const Choice& c : choices) {
    json choice = {{"index", c.index}};
    if (chat) {
      choice["message"] = {{"role", "assistant"}, {"content", valid_utf8(c.text)}};
      if (!c.tool_calls.empty()) {
        choice["message"]["content"] = nullptr;
        choice["message"]["tool_calls"] = tool_calls_value(c.tool_calls, false);
      }
      choice["logprobs"] = chat_logprobs(c);
    } else {
      choice["text"] = valid_utf8(c.text);
      choice["logprobs"] = completion_logprobs(c);
    }
    choice["finish_reason"] = finish_reason(c.finish_reason);
    out.push_back(std::move(choice));
  }
  j["choices"] = std::move(out);
  j["usage"] = usage_value(usage);
  return dump(j);
}

std::string chunk_json(Endpoint e, std::string_view model, std::string_view id, int64_t created,
                       const Choice& c, bool first_chat_chunk) {
  json j = header(chunk_object(e), model, id, created);
  json choice = {{"index", c.index}};
  if (e == Endpoint::ChatCompletions) {
    json delta = json::object();
    if (first_chat_chunk) delta["role"] = "assistant";
    if (first_chat_chunk || !c.text.empty()) delta["content"] = valid_utf8(c.text);
    if (!c.tool_calls.empty()) {
      delta["content"] = nullptr;
      delta["tool_calls"] = tool_calls_value(c.tool_calls, true);
    }
    choice["delta"] = std::move(delta);
    choice["logprobs"] = chat_logprobs(c);
  } else {
    choice["text"] = valid_utf8(c.text);
    choice["logprobs"] = completion_logprobs(c);
  }
  choice["finish_reason"] = finish_reason(c.finish_reason);
  j["choices"] = json::array({std::move(choice)});
  return dump(j);
}

std::string usage_chunk_json(Endpoint e, std::string_view model, std::string_view id,
                             int64_t created, const Usage& usage) {
  json j = header(chunk_object(e), model, id, created);
  j["choices"] = json::array();
  j["usage"] = usage_value(usage);
  return dump(j);
}

std::string models_json(const std::vector<std::string>& names, int64_t created) {
  json data = json::array();
  for (const std::string& n : names) {
    data.push_back({{"id", valid_utf8(n)},
                    {"object", "model"},
                    {"created", created},
                    {"owned_by", "peregrine"}});
  }
  return dump({{"object", "list"}, {"data", std::move(data)}});
}

}  // namespace peregrine::serve
