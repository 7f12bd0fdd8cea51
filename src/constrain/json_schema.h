// JSON Schema → Grammar (grammar.h): the constraint behind `response_format` json_schema,
// tool-call arguments, `--json-schema FILE`, and JSON mode (json_object_grammar()).
//
// The compiler builds Expr trees directly (json_schema.cpp: the schema nodes; the internal
// json_schema_compiler.h declares the Compiler that json_schema_rules.cpp (shared JSON rules,
// digit ranges), json_schema_merge.cpp ($ref, allOf), json_schema_formats.cpp (format,
// pattern) and json_schema_util.cpp (strings, pointers, keywords, types) complete). Named
// rules: "root", one per $ref target (recursion is a reference, never an expansion), the
// shared JSON pieces ("value", "object", "array", "string", "char", "number", "ws", formats,
// patterns), and parts hoisted out of deep or repeated expressions so that validate()'s depth
// and expanded-size bounds hold.
//
// What the grammar accepts is a subset of the schema's instances (never a superset):
//   - Whitespace (JsonWhitespace): Compact, no whitespace at all: {"a":1,"b":[true,null]}.
//     Bounded: in every gap between two tokens inside a value, at most one chunk of
//     `" " | "\n" [ \t]{0,20}` (llama.cpp's bound); none before or after the root value. A model
//     cannot loop on whitespace under either policy.
//   - Objects: the properties of `properties` in that order (nlohmann::json sorts keys; pass
//     ordered_json or text to keep the schema's order), optional ones may be left out; then
//     `required` names not in `properties`; then, where additionalProperties is true or a
//     schema, any number of other members whose names differ from all of those (absent: none
//     when `properties` lists some, unless extra_properties_by_default, although the spec
//     allows them; strict mode requires false). Those other members may repeat a name among themselves (a grammar cannot
//     remember every name it has seen).
//   - Strings: any JSON escape, but no \u escape of a surrogate (a character outside the BMP is
//     written as itself), so minLength/maxLength count code points exactly. Values from enum,
//     const, property names, pattern and format are written in canonical form: only `"`, `\`
//     and control characters escaped (\b \f \n \r \t, else \u00xx).
//   - Numbers: JSON syntax (digits unbounded). integer: no fraction or exponent. Bounds
//     (minimum, maximum, exclusive*) become exact digit-range expressions; a bounded number
//     has no exponent, and its bounds must be whole numbers (an error names the keyword
//     otherwise); integer bounds may be fractional (rounded inward), within ±1e18.
//   - pattern: ECMAScript patterns are unanchored, so `p` compiles as `.*(p).*` minus the side
//     anchored by a leading ^ / trailing $ (each top-level alternative on its own); anchors or
//     \b elsewhere are an error. The pattern itself is read by regex_parser.h (Python's `re`
//     meaning where ECMAScript differs, e.g. `.` excludes only \n), so a match is what Python's
//     jsonschema (re.search) accepts.
//   - format: date, time, date-time (RFC 3339: years 0001-9999, the days of each month, 02-29
//     in leap years only; seconds 00-59, no leap second; fraction up to 9 digits; T/t; Z/z or
//     ±hh:mm offset: what Python's jsonschema accepts), duration (RFC 3339 appendix A),
//     uuid (8-4-4-4-12 hex digits), email (dot-atom local part @ hostname), hostname (RFC 1123
//     labels of 1-63 characters; total length unchecked), ipv4 (dotted decimal without
//     leading zeros), ipv6 (RFC 3986), uri (RFC 3986 URI without IPvFuture). Together with
//     pattern or minLength/maxLength: an error. Like every string keyword, format has no
//     effect on values of other types (OpenAPI's {"type": "integer", "format": "int64"}).
//   - Without `type`, a schema whose keywords belong to some kinds (object: properties,
//     required, additionalProperties; array: items, prefixItems, minItems, maxItems; string:
//     minLength, maxLength, pattern, format; number: minimum, maximum, exclusive*) is taken
//     to be of those kinds, as llama.cpp does; with none of them, any JSON value.
//   - enum/const: the values as canonical text (under the whitespace policy), narrowed by
//     `type` and by bounds on numbers, lengths, item counts and `required`; any other keyword
//     beside them is an error.
//   - $ref: JSON pointers resolved against the whole document ($id does not change the base);
//     a cycle that consumes no input ({"$ref": "#"}) is an error.
//   - oneOf compiles as anyOf only where the branches are provably disjoint (different
//     types, different const/enum values, or a required property that is disjoint or
//     forbidden in the other branch); otherwise an error, unless oneof_as_anyof.
//   - allOf (and $ref with sibling keywords, and anyOf/oneOf with sibling keywords) is merged
//     into one schema: types intersect, properties/additionalProperties and
//     prefixItems/items combine per name/position, required unions, bounds tighten, enums
//     intersect, two anyOf multiply out (up to 256 branches); other keywords must agree.
//     What cannot be merged is an error naming the keyword.
//
// Supported keywords: type (string or array; null, boolean, object, array, number, integer,
// string), nullable (OpenAPI 3.0), properties, required, additionalProperties (bool/schema),
// items (schema; an array as draft 4-7 tuples), prefixItems, additionalItems, minItems,
// maxItems, enum, const, anyOf, oneOf, allOf, $ref ("#" and "#/json/pointer" only), $defs,
// definitions, minLength, maxLength, pattern, format, minimum, maximum, exclusiveMinimum,
// exclusiveMaximum (number or draft 4 boolean). Boolean schemas true/false; {} is any value.
// Ignored annotations: title, description, default, examples, $schema, $id, $comment,
// deprecated, readOnly, writeOnly. Every other keyword (patternProperties, not, if/then/else,
// dependentRequired, dependentSchemas, uniqueItems, multipleOf, minProperties,
// maxProperties, contains, propertyNames, unevaluated*, $anchor, $dynamicRef, ...) is an error
// naming the keyword and its JSON pointer, e.g.
//   json schema: unsupported keyword 'uniqueItems' at #/properties/tags
//
// Strict (OpenAI structured outputs' "strict": true): the schema must lie within OpenAI's
// supported subset, else an error with the reason: the root is an object (not anyOf); every
// object has additionalProperties: false and lists all its properties in required; only type,
// properties, required, additionalProperties, items, enum, const, anyOf, $ref, $defs,
// definitions, pattern, format (date-time, time, date, duration, email, hostname, ipv4, ipv6,
// uuid), minimum, maximum, exclusiveMinimum, exclusiveMaximum, minItems, maxItems and the
// annotations; every schema has a type, enum, const, anyOf or $ref; at most 10 levels of
// object nesting, 5000 properties and 1000 enum values in all. All $defs are checked.
//
// Hostile input: the schema's JSON nesting, schema nesting (max_depth), repeat counts
// (max_repeat), the work of merging allOf/$ref, and the grammar's expanded size
// (kMaxExpandedSize) are bounded; exceeding any is an error, never a hang or a crash.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "constrain/grammar.h"
#include "core/status.h"

namespace peregrine::constrain {

enum class JsonWhitespace : uint8_t {
  Compact,  // no whitespace: {"a":[1,2]}
  Bounded,  // at most one `" " | "\n" [ \t]{0,20}` in each gap between tokens
};

struct JsonSchemaOptions {
  bool strict = false;  // OpenAI's strict subset, exactly
  JsonWhitespace whitespace = JsonWhitespace::Compact;
  bool oneof_as_anyof = false;            // accept oneOf whose branches may overlap (as anyOf)
  // Members beyond `properties` where additionalProperties is absent: the spec allows them, but
  // a model left free to add keys adds junk, so by default none are generated beside listed
  // properties (as llama.cpp does); additionalProperties true or a schema, or an object schema
  // without properties, still gets them.
  bool extra_properties_by_default = false;
  uint32_t max_depth = 64;                // schema nesting (properties, items, anyOf, ... levels)
  uint32_t max_repeat = kMaxRepeatCount;  // largest min/maxLength, min/maxItems (and at most
                                          // kMaxRepeatCount, which validate() holds)
};

// The grammar whose root matches (per the policy above) JSON texts valid under `schema`.
// The ordered_json overload keeps the order of `properties`; nlohmann::json has sorted keys.
Result<Grammar> json_schema_to_grammar(const nlohmann::ordered_json& schema,
                                       const JsonSchemaOptions& opt = {});
Result<Grammar> json_schema_to_grammar(const nlohmann::json& schema,
                                       const JsonSchemaOptions& opt = {});
// The schema as JSON text (parsed in order; a parse error is an error, not an exception).
Result<Grammar> json_schema_text_to_grammar(std::string_view schema_text,
                                            const JsonSchemaOptions& opt = {});

// JSON mode (`response_format: {"type": "json_object"}`): any JSON object.
Grammar json_object_grammar(JsonWhitespace ws = JsonWhitespace::Compact);

}  // namespace peregrine::constrain
