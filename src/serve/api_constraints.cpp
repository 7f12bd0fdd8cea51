#include "serve/api_constraints.h"

#include <random>

#include "serve/api_fields.h"

namespace peregrine::serve {

using namespace api_fields;  // NOLINT: the field checks
using ordered = nlohmann::ordered_json;
using constrain::ConstraintSpec;

namespace {

constexpr size_t kMaxTools = 128;
constexpr size_t kMaxChoices = 1 << 16;  // guided_choice strings per request

// The body in the client's key order, parsed once and only when a schema asks for it (the
// body parsed already, so this parse cannot fail).
class OrderedBody {
 public:
  explicit OrderedBody(std::string_view text) : text_(text) {}
  // Mutable on purpose: indexing a key that duplicate keys made disagree with the first parse
  // adds a null instead of reading past the object.
  ordered& root() {
    if (!doc_) doc_ = ordered::parse(text_.begin(), text_.end(), nullptr, false);
    return *doc_;
  }

 private:
  std::string_view text_;
  std::optional<ordered> doc_;
};

// A schema field: an object (or, for vLLM's guided_json, a string holding one); an object is
// taken from `subtree` (the same field of the ordered body) so its keys keep their order.
template <typename Subtree>
std::optional<ApiError> read_schema(const json& v, const std::string& param, bool string_ok, std::string& out,
                                    Subtree subtree) {
  if (v.is_object()) {
    out = subtree().dump();
    return std::nullopt;
  }
  if (v.is_boolean()) {
    out = v.dump();
    return std::nullopt;
  }
  if (string_ok && v.is_string()) {
    out = v.get<std::string>();
    return std::nullopt;
  }
  return wrong_type(param, string_ok ? "an object or a string" : "an object", v);
}

}  // namespace

std::optional<ApiError> parse_constraint_fields(const json& body, std::string_view body_text, CompletionRequest& r) {
  OrderedBody ob(body_text);
  auto set = [&](ConstraintSpec::Kind k, std::string param) -> Err {
    if (!r.constraint.empty())
      return invalid(param, fmt::format("'{}' and '{}' both constrain the output: give only one.", r.constraint_param, param),
                     "invalid_value");
    r.constraint.kind = k;
    r.constraint_param = std::move(param);
    return std::nullopt;
  };
  if (const json* v = field(body, "response_format")) {
    if (!v->is_object()) return wrong_type("response_format", "an object", *v);
    const json* t = field(*v, "type");
    if (t == nullptr) return missing("response_format.type");
    if (!t->is_string()) return wrong_type("response_format.type", "a string", *t);
    const std::string& type = t->get_ref<const std::string&>();
    if (type == "json_object") {
      API_TRY(set(ConstraintSpec::Kind::JsonObject, "response_format"));
    } else if (type == "json_schema") {
      const json* js = field(*v, "json_schema");
      if (js == nullptr) return missing("response_format.json_schema");
      if (!js->is_object()) return wrong_type("response_format.json_schema", "an object", *js);
      const json* name = field(*js, "name");
      if (name == nullptr) return missing("response_format.json_schema.name");
      std::string n;
      API_TRY(read_string(*name, "response_format.json_schema.name", n));
      if (n.empty() || n.size() > 64 ||
          n.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != std::string::npos)
        return invalid("response_format.json_schema.name",
                       "Invalid 'response_format.json_schema.name': it must be 1 to 64 letters, digits, "
                       "underscores or dashes.",
                       "invalid_value");
      if (const json* st = field(*js, "strict")) API_TRY(read_bool(*st, "response_format.json_schema.strict", r.constraint.json.strict));
      API_TRY(set(ConstraintSpec::Kind::JsonSchema, "response_format.json_schema.schema"));
      if (const json* schema = field(*js, "schema"))
        API_TRY(read_schema(*schema, "response_format.json_schema.schema", false, r.constraint.text,
                            [&]() -> const ordered& { return ob.root()["response_format"]["json_schema"]["schema"]; }));
      else
        r.constraint.text = "{}";  // no schema: any JSON value
    } else if (type != "text") {
      return invalid("response_format.type",
                     fmt::format("Invalid value for 'response_format.type': {}. Supported values are: 'text', "
                                 "'json_object' and 'json_schema'.",
                                 show(*t)),
                     "invalid_value");
    }
  }
  // vLLM's and llama-server's fields.
  if (const json* v = field(body, "guided_json")) {
    API_TRY(set(ConstraintSpec::Kind::JsonSchema, "guided_json"));
    API_TRY(read_schema(*v, "guided_json", true, r.constraint.text,
                        [&]() -> const ordered& { return ob.root()["guided_json"]; }));
  }
  if (const json* v = field(body, "json_schema")) {
    API_TRY(set(ConstraintSpec::Kind::JsonSchema, "json_schema"));
    API_TRY(read_schema(*v, "json_schema", false, r.constraint.text,
                        [&]() -> const ordered& { return ob.root()["json_schema"]; }));
  }
  for (const char* name : {"guided_regex", "guided_grammar", "grammar"}) {
    if (const json* v = field(body, name)) {
      std::string text;
      API_TRY(read_string(*v, name, text));
      if (text.empty()) return invalid(name, fmt::format("Invalid '{}': empty string.", name), "invalid_value");
      API_TRY(set(std::string_view(name) == "guided_regex" ? ConstraintSpec::Kind::Regex : ConstraintSpec::Kind::Gbnf,
                  name));
      r.constraint.text = std::move(text);
    }
  }
  if (const json* v = field(body, "guided_choice")) {
    if (!v->is_array()) return wrong_type("guided_choice", "an array of strings", *v);
    if (v->empty()) return invalid("guided_choice", "Invalid 'guided_choice': empty array.", "empty_array");
    if (v->size() > kMaxChoices)
      return invalid("guided_choice", fmt::format("Invalid 'guided_choice': more than {} strings.", kMaxChoices),
                     "array_above_max_length");
    API_TRY(set(ConstraintSpec::Kind::Choices, "guided_choice"));
    for (size_t i = 0; i < v->size(); ++i) {
      std::string c;
      API_TRY(read_string((*v)[i], fmt::format("guided_choice[{}]", i), c));
      r.constraint.choices.push_back(std::move(c));
    }
  }
  if (field(body, "guided_whitespace_pattern") != nullptr)
    return unsupported("guided_whitespace_pattern",
                       "'guided_whitespace_pattern' is not supported: JSON output has no whitespace between tokens.");

  // Tools.
  const json* tools = field(body, "tools");
  const json* choice = field(body, "tool_choice");
  if (tools != nullptr) {
    if (!tools->is_array()) return wrong_type("tools", "an array", *tools);
    if (tools->size() > kMaxTools)
      return invalid("tools", fmt::format("Invalid 'tools': more than {} tools.", kMaxTools), "array_above_max_length");
    for (size_t i = 0; i < tools->size(); ++i) {
      const std::string tp = fmt::format("tools[{}]", i);
      const json& t = (*tools)[i];
      if (!t.is_object()) return wrong_type(tp, "an object", t);
      const json* type = field(t, "type");
      if (type == nullptr) return missing(tp + ".type");
      if (!(type->is_string() && type->get_ref<const std::string&>() == "function"))
        return invalid(tp + ".type", fmt::format("Invalid value for '{}.type': {}. Supported values are: 'function'.", tp, show(*type)),
                       "invalid_value");
      const json* fn = field(t, "function");
      if (fn == nullptr) return missing(tp + ".function");
      if (!fn->is_object()) return wrong_type(tp + ".function", "an object", *fn);
      Tool tool;
      const json* name = field(*fn, "name");
      if (name == nullptr) return missing(tp + ".function.name");
      API_TRY(read_string(*name, tp + ".function.name", tool.name));
      if (tool.name.empty() || tool.name.size() > 64 ||
          tool.name.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != std::string::npos)
        return invalid(tp + ".function.name",
                       fmt::format("Invalid '{}.function.name': it must be 1 to 64 letters, digits, underscores or dashes.", tp),
                       "invalid_value");
      for (const Tool& other : r.tools)
        if (other.name == tool.name)
          return invalid(tp + ".function.name", fmt::format("Invalid 'tools': two functions are named '{}'.", tool.name),
                         "invalid_value");
      if (const json* d = field(*fn, "description")) API_TRY(read_string(*d, tp + ".function.description", tool.description));
      if (const json* p = field(*fn, "parameters")) {
        if (!p->is_object()) return wrong_type(tp + ".function.parameters", "an object", *p);
        tool.parameters = ob.root()["tools"][i]["function"]["parameters"].dump();
      }
      r.tools.push_back(std::move(tool));
    }
  }
  if (choice != nullptr) {
    if (choice->is_string()) {
      const std::string& c = choice->get_ref<const std::string&>();
      if (c == "required") {
        r.tool_call = true;
      } else if (c == "auto") {
        if (!r.tools.empty())
          return unsupported("tool_choice",
                             "'tool_choice' \"auto\" is not supported: the answer is either text or a tool call only "
                             "when the client says which (\"none\", \"required\" or a named function).");
      } else if (c != "none") {
        return invalid("tool_choice",
                       fmt::format("Invalid value for 'tool_choice': {}. Supported values are: 'none', 'auto', "
                                   "'required' or a named function.",
                                   show(*choice)),
                       "invalid_value");
      }
    } else if (choice->is_object()) {
      const json* fn = field(*choice, "function");
      const json* name = fn != nullptr && fn->is_object() ? field(*fn, "name") : nullptr;
      if (name == nullptr) return missing("tool_choice.function.name");
      API_TRY(read_string(*name, "tool_choice.function.name", r.tool_name));
      bool known = false;
      for (const Tool& t : r.tools) known = known || t.name == r.tool_name;
      if (!known)
        return invalid("tool_choice.function.name",
                       fmt::format("Invalid 'tool_choice': no function named '{}' among the tools.", r.tool_name),
                       "invalid_value");
      r.tool_call = true;
    } else {
      return wrong_type("tool_choice", "a string or an object", *choice);
    }
  } else if (!r.tools.empty()) {
    return unsupported("tool_choice",
                       "'tools' without 'tool_choice' means \"auto\", which is not supported: set 'tool_choice' to "
                       "\"required\", a named function, or \"none\".");
  }
  if (r.tool_call) {
    if (r.tools.empty()) return invalid("tool_choice", "'tool_choice' asks for a tool call but 'tools' is empty.", "invalid_value");
    if (!r.constraint.empty())
      return invalid(r.constraint_param,
                     fmt::format("'{}' and a tool call both constrain the output: give only one.", r.constraint_param),
                     "invalid_value");
    if (r.endpoint != Endpoint::ChatCompletions) return unsupported("tools", "'tools' is only supported on /v1/chat/completions.");
  }
  return std::nullopt;
}

std::string tool_call_schema(const CompletionRequest& r) {
  ordered any = ordered::array();
  for (const Tool& t : r.tools) {
    if (!r.tool_name.empty() && t.name != r.tool_name) continue;
    ordered params = t.parameters.empty() ? ordered{{"type", "object"}, {"properties", ordered::object()},
                                                    {"additionalProperties", false}}
                                          : ordered::parse(t.parameters, nullptr, false);
    any.push_back(ordered{{"type", "object"},
                          {"properties", {{"name", {{"const", t.name}}}, {"arguments", std::move(params)}}},
                          {"required", {"name", "arguments"}},
                          {"additionalProperties", false}});
  }
  if (any.size() == 1) return any[0].dump();
  return ordered{{"anyOf", std::move(any)}}.dump();
}

std::string tool_system_text(const CompletionRequest& r) {
  std::string s =
      "You can call functions. Answer with only a JSON object {\"name\": <function name>, \"arguments\": <its "
      "arguments>} calling ";
  s += r.tool_name.empty() ? "one of these functions:\n" : "this function:\n";
  for (const Tool& t : r.tools) {
    if (!r.tool_name.empty() && t.name != r.tool_name) continue;
    ordered f{{"name", t.name}};
    if (!t.description.empty()) f["description"] = t.description;
    if (!t.parameters.empty()) f["parameters"] = ordered::parse(t.parameters, nullptr, false);
    s += f.dump();
    s += "\n";
  }
  return s;
}

std::optional<ToolCall> parse_tool_call(std::string_view text) {
  const ordered j = ordered::parse(text.begin(), text.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("name") || !j["name"].is_string() || !j.contains("arguments"))
    return std::nullopt;
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  ToolCall c;
  c.id = fmt::format("call_{:016x}", rng());
  c.name = j["name"].get<std::string>();
  c.arguments = j["arguments"].dump();
  return c;
}

}  // namespace peregrine::serve
