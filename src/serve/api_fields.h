// Field checks for the API's request parsers (api.cpp, api_constraints.cpp): typed reads
// with range checks, and OpenAI-shaped errors whose `param` names the field.
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "serve/api.h"

namespace peregrine::serve::api_fields {

using json = nlohmann::json;
using Err = std::optional<ApiError>;  // an error, or nullopt for "fine"

// Propagates an Err from a field check.
#define API_TRY(expr)                       \
  do {                                      \
    if (Err api_e_ = (expr)) return api_e_; \
  } while (0)

inline Err invalid(std::string param, std::string message, std::string code = {}) {
  ApiError e;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

inline Err unsupported(std::string param, std::string message) {
  return invalid(std::move(param), std::move(message), "unsupported_parameter");
}

inline Err missing(const std::string& param) {
  return invalid(param, fmt::format("Missing required parameter: '{}'.", param),
                 "missing_required_parameter");
}

inline const char* type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    default: return "an unknown type";
  }
}

inline Err wrong_type(const std::string& param, std::string_view expected, const json& v) {
  return invalid(param,
                 fmt::format("Invalid type for '{}': expected {}, but got {} instead.", param,
                             expected, type_name(v)),
                 "invalid_type");
}

// A JSON value for a message: numbers exactly as parsed, strings cut short.
inline std::string show(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 64) s = s.substr(0, 60) + "...";
  return s;
}

// The field's value, or nullptr when it is absent or null (null means "not given").
inline const json* field(const json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// Whether arrays and objects nest deeper than `limit` (strings skipped). A plain scan that
// runs before the parser, so that no input can make it (or json's destructor) recurse deeply.
inline bool nesting_exceeds(std::string_view body, size_t limit) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') {
        ++i;  // skip the escaped character
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return true;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return false;
}

// --- Typed field readers -----------------------------------------------------------------------

template <typename T>
inline Err out_of_range(const std::string& param, std::string_view kind, T lo, T hi, const json& v) {
  return invalid(param,
                 fmt::format("Invalid value for '{}': expected {} from {} to {}, but got {} "
                             "instead.",
                             param, kind, lo, hi, show(v)),
                 "invalid_value");
}

inline Err read_bool(const json& v, const std::string& param, bool& out) {
  if (!v.is_boolean()) return wrong_type(param, "a boolean", v);
  out = v.get<bool>();
  return std::nullopt;
}

inline Err read_string(const json& v, const std::string& param, std::string& out) {
  if (!v.is_string()) return wrong_type(param, "a string", v);
  out = v.get_ref<const std::string&>();
  return std::nullopt;
}

inline Err read_number(const json& v, const std::string& param, double lo, double hi, double& out) {
  if (!v.is_number()) return wrong_type(param, "a number", v);
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi) return out_of_range(param, "a number", lo, hi, v);
  out = d;
  return std::nullopt;
}

inline Err read_float(const json& v, const std::string& param, double lo, double hi, float& out) {
  double d = 0.0;
  API_TRY(read_number(v, param, lo, hi, d));
  out = static_cast<float>(d);
  return std::nullopt;
}

// An integer: a JSON integer, or a number with no fraction (3.0), as JSON does not tell them
// apart and some clients write every number as a double.
inline Err read_integer(const json& v, const std::string& param, int64_t lo, int64_t hi, int64_t& out) {
  if (!v.is_number()) return wrong_type(param, "an integer", v);
  bool in_range = false;
  int64_t i = 0;
  if (v.is_number_unsigned()) {  // json reads every non-negative integer as unsigned
    const uint64_t u = v.get<uint64_t>();
    in_range = hi >= 0 && u <= static_cast<uint64_t>(hi);
    if (in_range) i = static_cast<int64_t>(u);
  } else if (v.is_number_integer()) {
    i = v.get<int64_t>();
    in_range = true;
  } else {
    const double d = v.get<double>();
    if (!std::isfinite(d) || d != std::trunc(d)) return wrong_type(param, "an integer", v);
    in_range = d >= -9223372036854775808.0 && d < 9223372036854775808.0;  // fits int64_t
    if (in_range) i = static_cast<int64_t>(d);
  }
  if (!in_range || i < lo || i > hi) return out_of_range(param, "an integer", lo, hi, v);
  out = i;
  return std::nullopt;
}

inline Err read_int32(const json& v, const std::string& param, int32_t lo, int32_t hi, int32_t& out) {
  int64_t i = 0;
  API_TRY(read_integer(v, param, lo, hi, i));
  out = static_cast<int32_t>(i);
  return std::nullopt;
}

// Any 64-bit integer, signed or unsigned; negative values wrap modulo 2^64.
inline Err read_seed(const json& v, const std::string& param, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
  } else if (v.is_number_integer()) {
    out = static_cast<uint64_t>(v.get<int64_t>());
  } else if (v.is_number_float()) {
    const double d = v.get<double>();
    if (!std::isfinite(d) || d != std::trunc(d)) return wrong_type(param, "an integer", v);
    if (d >= -9223372036854775808.0 && d < 0.0) {
      out = static_cast<uint64_t>(static_cast<int64_t>(d));
    } else if (d >= 0.0 && d < 18446744073709551616.0) {
      out = static_cast<uint64_t>(d);
    } else {
      return invalid(
          param, fmt::format("Invalid value for '{}': {} does not fit in 64 bits.", param, show(v)),
          "invalid_value");
    }
  } else {
    return wrong_type(param, "an integer", v);
  }
  return std::nullopt;
}

}  // namespace peregrine::serve::api_fields
