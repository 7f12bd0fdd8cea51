// json_schema_to_grammar: ~60 schemas with hand-written instances checked through the naive
// matcher (grammar_oracle.h): valid ones must match, invalid ones must not, and valid ones our
// policy leaves out (member order, non-canonical escapes, whitespace) must not either. The
// instances of kCases were checked with Python's jsonschema (FormatChecker on) when written:
// every `valid` and `policy` instance is valid and every `invalid` one invalid. Also: the
// bounded whitespace policy, JSON mode, every unsupported keyword named with its location,
// strict-mode acceptance and refusal with reasons, hostile schemas (bounded time, clean
// errors), and every file of bench/schemas compiling, with sampled strings that parse as JSON.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "constrain/json_schema.h"
#include "json_exponents.h"
#include "grammar_oracle.h"

namespace peregrine::constrain {
namespace {

using ojson = nlohmann::ordered_json;

Grammar compile(std::string_view schema, const JsonSchemaOptions& opt = {}) {
  Result<Grammar> r = json_schema_text_to_grammar(schema, opt);
  if (!r.ok()) {
    ADD_FAILURE() << "compile failed: " << r.error().message << "\n" << schema;
    return {};
  }
  return std::move(r).value();
}

std::string compile_error(std::string_view schema, const JsonSchemaOptions& opt = {}) {
  Result<Grammar> r = json_schema_text_to_grammar(schema, opt);
  if (r.ok()) {
    ADD_FAILURE() << "compile accepted:\n" << schema;
    return {};
  }
  EXPECT_EQ(r.error().message.find('\n'), std::string::npos) << "not one line";
  return r.error().message;
}

bool matches(const Grammar& g, std::string_view s) {
  return !g.rules.empty() && grammar_matches(g, s);
}

struct SchemaCase {
  const char* name;
  const char* schema;
  std::vector<const char*> valid;    // valid instances in our form: must match
  std::vector<const char*> invalid;  // invalid instances: must not match
  std::vector<const char*> policy;   // valid instances outside our form: must not match
};

// Compact form (JsonWhitespace::Compact). Raw strings use the delimiter j so that the
// checking script (see the file comment) can find them.
const SchemaCase kCases[] = {
    {"string",
     R"j({"type":"string"})j",
     {R"j("")j", R"j("abc")j", R"j("a\"b\\c\/d")j", R"j("\u00e9\n\t\b\f\r")j", R"j("é😀")j",
      R"j("\uD7FF\uE000\uffff")j"},
     {R"j(abc)j", R"j("a)j", R"j("a\x")j", R"j("\u12")j", R"j(123)j", R"j(null)j"},
     {R"j("\ud83d\ude00")j"}},
    {"string_lengths",
     R"j({"type":"string","minLength":2,"maxLength":3})j",
     {R"j("ab")j", R"j("abc")j", R"j("é😀")j", R"j("\n\t")j", R"j("\u0041bc")j"},
     {R"j("a")j", R"j("abcd")j", R"j("")j", R"j("😀")j"},
     {}},
    {"integer",
     R"j({"type":"integer"})j",
     {R"j(0)j", R"j(42)j", R"j(-17)j", R"j(123456789012345678901234567890)j"},
     {R"j(01)j", R"j(+1)j", R"j(-)j", R"j("1")j", R"j(1.5)j"},
     {R"j(1.0)j", R"j(1e3)j"}},
    {"number",
     R"j({"type":"number"})j",
     {R"j(0)j", R"j(-1.5)j", R"j(1e10)j", R"j(2.5E-3)j", R"j(0.0)j", R"j(-0)j", R"j(1e007)j"},
     {R"j(.5)j", R"j(1.)j", R"j(01.5)j", R"j(1e)j", R"j(NaN)j", R"j(Infinity)j", R"j(- 1)j"},
     {}},
    {"boolean_null",
     R"j({"type":["boolean","null"]})j",
     {R"j(true)j", R"j(false)j", R"j(null)j"},
     {R"j(True)j", R"j(1)j", R"j("null")j", R"j(nil)j"},
     {}},
    {"string_or_null",
     R"j({"type":["string","null"]})j",
     {R"j("x")j", R"j(null)j"},
     {R"j(1)j", R"j([])j"},
     {}},
    {"integer_range",
     R"j({"type":"integer","minimum":-5,"maximum":130})j",
     {R"j(-5)j", R"j(-1)j", R"j(0)j", R"j(9)j", R"j(10)j", R"j(99)j", R"j(100)j", R"j(129)j",
      R"j(130)j"},
     {R"j(-6)j", R"j(131)j", R"j(200)j", R"j(1000)j", R"j(-10)j"},
     {R"j(-0)j"}},
    {"integer_exclusive",
     R"j({"type":"integer","exclusiveMinimum":0,"exclusiveMaximum":1000})j",
     {R"j(1)j", R"j(999)j", R"j(500)j", R"j(10)j"},
     {R"j(0)j", R"j(1000)j", R"j(-1)j", R"j(1001)j"},
     {}},
    {"integer_minimum",
     R"j({"type":"integer","minimum":18})j",
     {R"j(18)j", R"j(19)j", R"j(99)j", R"j(100)j", R"j(123456)j"},
     {R"j(17)j", R"j(0)j", R"j(-18)j", R"j(1)j", R"j(9)j"},
     {}},
    {"integer_maximum",
     R"j({"type":"integer","maximum":-10})j",
     {R"j(-10)j", R"j(-11)j", R"j(-100)j", R"j(-99999)j"},
     {R"j(-9)j", R"j(0)j", R"j(10)j", R"j(-1)j"},
     {}},
    {"integer_fractional_bounds",
     R"j({"type":"integer","minimum":0.5,"maximum":3.7})j",
     {R"j(1)j", R"j(2)j", R"j(3)j"},
     {R"j(0)j", R"j(4)j"},
     {}},
    {"integer_draft4_exclusive",
     R"j({"$schema":"http://json-schema.org/draft-04/schema#","type":"integer","minimum":0,"exclusiveMinimum":true,"maximum":3})j",
     {R"j(1)j", R"j(3)j"},
     {R"j(0)j", R"j(4)j"},
     {}},
    {"number_unit_interval",
     R"j({"type":"number","minimum":0,"maximum":1})j",
     {R"j(0)j", R"j(0.5)j", R"j(1)j", R"j(1.0)j", R"j(0.999)j", R"j(0.000)j"},
     {R"j(1.5)j", R"j(-0.1)j", R"j(2)j", R"j(1.0001)j"},
     {R"j(1e-1)j"}},
    {"number_exclusive",
     R"j({"type":"number","exclusiveMinimum":0,"exclusiveMaximum":10})j",
     {R"j(0.001)j", R"j(5)j", R"j(9.99)j", R"j(9)j"},
     {R"j(0)j", R"j(0.0)j", R"j(10)j", R"j(10.0)j", R"j(-1)j"},
     {}},
    {"number_negative",
     R"j({"type":"number","minimum":-10,"maximum":-2})j",
     {R"j(-10)j", R"j(-2)j", R"j(-2.0)j", R"j(-5.5)j", R"j(-9.999)j", R"j(-2.1)j"},
     {R"j(-1.99)j", R"j(-10.01)j", R"j(0)j", R"j(2)j"},
     {}},
    {"enum_mixed",
     R"j({"enum":["red","green",1,null,true,{"a":[1,2]},"a\"b"]})j",
     {R"j("red")j", R"j("green")j", R"j(1)j", R"j(null)j", R"j(true)j", R"j({"a":[1,2]})j",
      R"j("a\"b")j"},
     {R"j("blue")j", R"j(2)j", R"j(false)j", R"j({"a":[1]})j", R"j("re")j"},
     {R"j("gr\u0065en")j"}},
    {"const_string",
     R"j({"const":"x\"y\u0001"})j",
     {R"j("x\"y\u0001")j"},
     {R"j("x")j", R"j("x\"y")j"},
     {}},
    {"enum_type_filter",
     R"j({"type":"string","enum":["a","b",1]})j",
     {R"j("a")j", R"j("b")j"},
     {R"j(1)j", R"j("c")j"},
     {}},
    {"enum_bounds_filter",
     R"j({"enum":[1,5,10,"ab","abcd",[1],[1,2,3],{"a":1},{"b":1}],"minimum":2,"exclusiveMaximum":10,"maxLength":3,"minItems":2,"required":["a"]})j",
     {R"j(5)j", R"j("ab")j", R"j([1,2,3])j", R"j({"a":1})j"},
     {R"j(1)j", R"j(10)j", R"j("abcd")j", R"j([1])j", R"j({"b":1})j"},
     {}},
    {"object_required_optional",
     R"j({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"}},"required":["name"],"additionalProperties":false})j",
     {R"j({"name":"x"})j", R"j({"name":"x","age":3})j"},
     {R"j({})j", R"j({"age":3})j", R"j({"name":"x","extra":1})j", R"j({"name":1})j",
      R"j({"name":"x",})j"},
     {R"j({"age":3,"name":"x"})j", R"j({ "name":"x"})j"}},
    {"object_all_optional",
     R"j({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"},"c":{"type":"integer"}},"additionalProperties":false})j",
     {R"j({})j", R"j({"a":1})j", R"j({"b":2})j", R"j({"c":3})j", R"j({"a":1,"c":3})j",
      R"j({"b":2,"c":3})j", R"j({"a":1,"b":2,"c":3})j"},
     {R"j({"d":1})j", R"j({"a":"1"})j", R"j({"a":1,"b":2,"c":3,"d":4})j"},
     {R"j({"c":3,"a":1})j"}},
    {"object_additional_schema",
     R"j({"type":"object","properties":{"id":{"type":"integer"}},"required":["id"],"additionalProperties":{"type":"string"}})j",
     {R"j({"id":1})j", R"j({"id":1,"x":"y"})j", R"j({"id":1,"x":"y","z":""})j",
      R"j({"id":1,"ida":"s"})j", R"j({"id":1,"i":"s"})j", R"j({"id":1,"":"s"})j"},
     {R"j({"id":1,"x":2})j", R"j({"x":"y"})j", R"j({"id":"1"})j"},
     {R"j({"x":"y","id":1})j"}},
    {"object_additional_default",
     R"j({"type":"object","properties":{"a":{"type":"boolean"}}})j",
     {R"j({})j", R"j({"a":true})j", R"j({"a":true,"b":[1,{}]})j", R"j({"b":null})j",
      R"j({"a":false,"b":1,"c":"x"})j"},
     {R"j({"a":1})j", R"j([])j"},
     {R"j({"b":null,"a":true})j"}},
    {"object_required_unlisted",
     R"j({"type":"object","required":["k"],"additionalProperties":{"type":"integer"}})j",
     {R"j({"k":1})j", R"j({"k":1,"j":2})j"},
     {R"j({})j", R"j({"k":"x"})j", R"j({"j":2})j"},
     {}},
    {"object_odd_names",
     R"j({"type":"object","properties":{"":{"type":"integer"},"a b":{"type":"integer"},"é\"q":{"type":"integer"}},"required":["","a b","é\"q"],"additionalProperties":false})j",
     {R"j({"":1,"a b":2,"é\"q":3})j"},
     {R"j({"":1,"a b":2})j", R"j({"":1,"a b":2,"é\"q":3,"x":4})j"},
     {}},
    {"object_bool_subschemas",
     R"j({"type":"object","properties":{"a":true,"b":false}})j",
     {R"j({})j", R"j({"a":[1]})j", R"j({"a":null,"c":2})j"},
     {R"j({"b":1})j", R"j({"a":1,"b":1})j"},
     {}},
    {"object_untyped_inferred",
     R"j({"properties":{"a":{"type":"integer"}},"required":["a"]})j",
     {R"j({"a":1})j"},
     {R"j({"a":"x"})j", R"j({})j"},
     {R"j("str")j", R"j(5)j"}},
    {"array_items",
     R"j({"type":"array","items":{"type":"integer"}})j",
     {R"j([])j", R"j([1])j", R"j([1,2,3])j"},
     {R"j([1,])j", R"j([,1])j", R"j(["a"])j", R"j([1 2])j", R"j([)j"},
     {R"j([ 1])j"}},
    {"array_min_max",
     R"j({"type":"array","items":{"type":"string"},"minItems":1,"maxItems":3})j",
     {R"j(["a"])j", R"j(["a","b"])j", R"j(["a","b","c"])j"},
     {R"j([])j", R"j(["a","b","c","d"])j"},
     {}},
    {"array_prefix_closed",
     R"j({"type":"array","prefixItems":[{"type":"string"},{"type":"integer"}],"items":false})j",
     {R"j([])j", R"j(["a"])j", R"j(["a",1])j"},
     {R"j([1])j", R"j(["a",1,2])j", R"j(["a","b"])j"},
     {}},
    {"array_prefix_rest",
     R"j({"type":"array","prefixItems":[{"type":"string"},{"type":"integer"}],"items":{"type":"boolean"},"minItems":2,"maxItems":4})j",
     {R"j(["a",1])j", R"j(["a",1,true])j", R"j(["a",1,true,false])j"},
     {R"j(["a"])j", R"j(["a",1,2])j", R"j(["a",1,true,false,true])j"},
     {}},
    {"array_draft7_tuple",
     R"j({"$schema":"http://json-schema.org/draft-07/schema#","type":"array","items":[{"type":"null"}],"additionalItems":{"type":"integer"}})j",
     {R"j([])j", R"j([null])j", R"j([null,1,2])j"},
     {R"j([1])j", R"j([null,null])j"},
     {}},
    {"nested",
     R"j({"type":"object","properties":{"user":{"type":"object","properties":{"tags":{"type":"array","items":{"type":"string","enum":["a","b"]}}},"required":["tags"],"additionalProperties":false}},"required":["user"],"additionalProperties":false})j",
     {R"j({"user":{"tags":[]}})j", R"j({"user":{"tags":["a","b","a"]}})j"},
     {R"j({"user":{}})j", R"j({"user":{"tags":["c"]}})j", R"j({})j"},
     {}},
    {"any_of",
     R"j({"anyOf":[{"type":"string","maxLength":2},{"type":"integer","minimum":10}]})j",
     {R"j("ab")j", R"j(10)j", R"j(999)j", R"j("")j"},
     {R"j("abc")j", R"j(9)j", R"j(null)j"},
     {}},
    {"any_of_with_siblings",
     R"j({"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"additionalProperties":false,"anyOf":[{"required":["a"]},{"required":["b"]}]})j",
     {R"j({"a":1})j", R"j({"b":2})j", R"j({"a":1,"b":2})j"},
     {R"j({})j", R"j({"c":1})j"},
     {}},
    {"one_of_types",
     R"j({"oneOf":[{"type":"string"},{"type":"array","items":{"type":"integer"}}]})j",
     {R"j("x")j", R"j([1])j", R"j([])j"},
     {R"j(1)j", R"j(["x"])j"},
     {}},
    {"one_of_discriminated",
     R"j({"oneOf":[{"type":"object","properties":{"kind":{"const":"a"},"x":{"type":"integer"}},"required":["kind","x"],"additionalProperties":false},{"type":"object","properties":{"kind":{"const":"b"},"y":{"type":"string"}},"required":["kind","y"],"additionalProperties":false}]})j",
     {R"j({"kind":"a","x":1})j", R"j({"kind":"b","y":"s"})j"},
     {R"j({"kind":"a","y":"s"})j", R"j({"kind":"c","x":1})j", R"j({"kind":"a"})j"},
     {}},
    {"all_of_objects",
     R"j({"allOf":[{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]},{"properties":{"b":{"type":"string"}},"required":["b"]}]})j",
     {R"j({"a":1,"b":"x"})j", R"j({"a":1,"b":"x","c":null})j"},
     {R"j({"a":1})j", R"j({"b":"x"})j", R"j({"a":"1","b":"x"})j"},
     {}},
    {"all_of_closed",
     R"j({"allOf":[{"type":"object","properties":{"a":{"type":"integer"},"b":{}},"additionalProperties":false},{"properties":{"b":{"type":"string"}}}]})j",
     {R"j({})j", R"j({"a":1})j", R"j({"a":1,"b":"x"})j", R"j({"b":"x"})j"},
     {R"j({"b":1})j", R"j({"c":1})j", R"j({"a":1,"c":1})j"},
     {}},
    {"all_of_bounds",
     R"j({"allOf":[{"type":"integer","minimum":0},{"maximum":10},{"exclusiveMaximum":8}]})j",
     {R"j(0)j", R"j(7)j"},
     {R"j(8)j", R"j(-1)j", R"j(10)j"},
     {}},
    {"ref_defs",
     R"j({"$defs":{"pos":{"type":"integer","minimum":1}},"type":"object","properties":{"x":{"$ref":"#/$defs/pos"},"y":{"$ref":"#/$defs/pos"}},"required":["x","y"],"additionalProperties":false})j",
     {R"j({"x":1,"y":2})j"},
     {R"j({"x":0,"y":2})j", R"j({"x":1})j"},
     {}},
    {"ref_recursive_tree",
     R"j({"$defs":{"node":{"type":"object","properties":{"value":{"type":"integer"},"children":{"type":"array","items":{"$ref":"#/$defs/node"}}},"required":["value"],"additionalProperties":false}},"$ref":"#/$defs/node"})j",
     {R"j({"value":1})j", R"j({"value":1,"children":[{"value":2,"children":[]},{"value":3}]})j"},
     {R"j({"value":1,"children":[{}]})j", R"j({"children":[]})j"},
     {}},
    {"ref_root_recursion",
     R"j({"type":"object","properties":{"v":{"type":"string"},"next":{"anyOf":[{"$ref":"#"},{"type":"null"}]}},"required":["v","next"],"additionalProperties":false})j",
     {R"j({"v":"a","next":null})j", R"j({"v":"a","next":{"v":"b","next":null}})j"},
     {R"j({"v":"a","next":{}})j", R"j({"v":"a"})j"},
     {}},
    {"ref_definitions_escaped",
     R"j({"definitions":{"a/b":{"type":"boolean"},"c~d":{"type":"null"},"e f":{"type":"integer"}},"type":"array","prefixItems":[{"$ref":"#/definitions/a~1b"},{"$ref":"#/definitions/c~0d"},{"$ref":"#/definitions/e%20f"}],"items":false})j",
     {R"j([true,null])j", R"j([false])j", R"j([true,null,3])j"},
     {R"j([null])j", R"j([true,null,1,2])j"},
     {}},
    {"ref_with_siblings",
     R"j({"$defs":{"s":{"type":"string"}},"$ref":"#/$defs/s","maxLength":2})j",
     {R"j("ab")j", R"j("")j"},
     {R"j("abc")j", R"j(1)j"},
     {}},
    {"pattern_unanchored",
     R"j({"type":"string","pattern":"[0-9]{3}"})j",
     {R"j("123")j", R"j("ab1234cd")j", R"j("\n123")j"},
     {R"j("12")j", R"j("a1b2c3")j"},
     {}},
    {"pattern_anchored",
     R"j({"type":"string","pattern":"^[a-z]+-[0-9]{2}$"})j",
     {R"j("ab-12")j", R"j("x-00")j"},
     {R"j("ab-123")j", R"j("xab-12 ")j", R"j("AB-12")j", R"j(" ab-12")j"},
     {}},
    {"pattern_alternatives",
     R"j({"type":"string","pattern":"^ab|cd$"})j",
     {R"j("abx")j", R"j("xcd")j", R"j("ab")j", R"j("cd")j"},
     {R"j("xab")j", R"j("cdx")j"},
     {}},
    {"pattern_escapes",
     R"j({"type":"string","pattern":"^a\"b\\\\c\\n$"})j",
     {R"j("a\"b\\c\n")j"},
     {R"j("a\"bc\n")j", R"j("a\"b\\c")j"},
     {R"j("a\u0022b\\c\n")j"}},
    {"pattern_in_object",
     R"j({"type":"object","properties":{"code":{"type":"string","pattern":"^[A-Z]{3}$"}},"required":["code"],"additionalProperties":false})j",
     {R"j({"code":"ABC"})j"},
     {R"j({"code":"AB"})j", R"j({"code":"abc"})j"},
     {}},
    {"format_date",
     R"j({"type":"string","format":"date"})j",
     {R"j("2024-02-29")j", R"j("1999-12-31")j"},
     {R"j("2024-13-01")j", R"j("24-01-01")j", R"j("2024-1-01")j", R"j(20240101)j"},
     {}},
    {"format_time",
     R"j({"type":"string","format":"time"})j",
     {R"j("12:34:56Z")j", R"j("23:59:59.123+01:00")j", R"j("00:00:00-05:30")j"},
     {R"j("24:00:00Z")j", R"j("12:60:00Z")j", R"j("12:34Z")j"},
     {}},
    {"format_date_time",
     R"j({"type":"string","format":"date-time"})j",
     {R"j("2024-01-02T03:04:05.123Z")j", R"j("2024-01-02T03:04:05+00:00")j"},
     {R"j("2024-01-02")j", R"j("2024-01-02T03:04:05")j"},
     {}},
    {"format_uuid",
     R"j({"type":"string","format":"uuid"})j",
     {R"j("123e4567-e89b-12d3-a456-426614174000")j", R"j("ABCDEF00-0000-0000-0000-000000000000")j"},
     {R"j("123e4567e89b12d3a456426614174000")j", R"j("123e4567-e89b-12d3-a456-42661417400g")j"},
     {}},
    {"format_email",
     R"j({"type":"string","format":"email"})j",
     {R"j("a.b+c@example.com")j", R"j("x@localhost")j"},
     {R"j("ab")j", R"j("example.com")j"},
     {}},
    {"format_uri",
     R"j({"type":"string","format":"uri"})j",
     {R"j("https://example.com/a/b?x=1#f")j", R"j("urn:isbn:0451450523")j",
      R"j("http://[::1]:8080/")j", R"j("mailto:a@b.c")j", R"j("file:///etc/hosts")j",
      R"j("http://u:p@h:1/%20")j"},
     {R"j("example.com")j", R"j("http://exa mple.com")j", R"j("1http://x")j",
      R"j("http://a/%zz")j"},
     {}},
    {"format_ipv4",
     R"j({"type":"string","format":"ipv4"})j",
     {R"j("192.168.0.1")j", R"j("0.0.0.0")j", R"j("255.255.255.255")j"},
     {R"j("256.1.1.1")j", R"j("01.1.1.1")j", R"j("1.1.1")j"},
     {}},
    {"format_ipv6",
     R"j({"type":"string","format":"ipv6"})j",
     {R"j("::1")j", R"j("2001:db8::ff00:42:8329")j", R"j("::ffff:192.0.2.1")j",
      R"j("1:2:3:4:5:6:7:8")j", R"j("::")j", R"j("1::")j"},
     {R"j("1:2:3:4:5:6:7:8:9")j", R"j(":::")j", R"j("1::2::3")j", R"j("12345::")j"},
     {}},
    {"format_hostname",
     R"j({"type":"string","format":"hostname"})j",
     {R"j("example.com")j", R"j("a-b.c")j", R"j("localhost")j"},
     {R"j("-ab.com")j", R"j("a_b.com")j", R"j("ab-.com")j"},
     {}},
    {"format_duration",
     R"j({"type":"string","format":"duration"})j",
     {R"j("P3Y6M4DT12H30M5S")j", R"j("PT5M")j", R"j("P2W")j", R"j("P1D")j"},
     {R"j("P")j", R"j("PT")j", R"j("P1H")j", R"j("3D")j"},
     {}},
    {"empty_schema",
     R"j({})j",
     {R"j(1)j", R"j("x")j", R"j({"a":[null,true,{"b":-1.5e3}]})j", R"j([])j"},
     {R"j({)j", R"j([1,])j", R"j({"a"})j", R"j('x')j"},
     {R"j([1, 2])j"}},
    {"true_schema", R"j(true)j", {R"j(null)j", R"j([{}])j"}, {R"j(nul)j"}, {}},
    {"unicode_canonical",
     R"j({"type":"object","properties":{"ключ":{"const":"\u0001\t"}},"required":["ключ"],"additionalProperties":false})j",
     {R"j({"ключ":"\u0001\t"})j"},
     {R"j({"ключ":"\t"})j"},
     {R"j({"ключ":"\u0001\u0009"})j", R"j({"\u043a\u043b\u044e\u0447":"\u0001\t"})j"}},
};

TEST(JsonSchema, CasesMatchValidAndRejectInvalid) {
  // The table states JSON Schema's own meaning, so absent additionalProperties allows extras.
  JsonSchemaOptions spec_default;
  spec_default.extra_properties_by_default = true;
  for (const SchemaCase& c : kCases) {
    SCOPED_TRACE(c.name);
    const Grammar g = compile(c.schema, spec_default);
    if (g.rules.empty()) continue;
    for (const char* v : c.valid) EXPECT_TRUE(matches(g, v)) << c.name << ": should match " << v;
    for (const char* v : c.invalid)
      EXPECT_FALSE(matches(g, v)) << c.name << ": should not match " << v;
    for (const char* v : c.policy)
      EXPECT_FALSE(matches(g, v)) << c.name << ": outside the policy, should not match " << v;
  }
}

// Strings that raw string literals cannot hold.
TEST(JsonSchema, StringsRejectRawControlsSurrogatesAndBadUtf8) {
  const Grammar g = compile(R"({"type":"string"})");
  EXPECT_FALSE(matches(g, "\"a\x01\""));
  EXPECT_FALSE(matches(g, "\"a\n\""));
  EXPECT_FALSE(matches(g, "\"\xed\xa0\x80\""));  // a surrogate in UTF-8
  EXPECT_FALSE(matches(g, "\"\xff\""));
  EXPECT_TRUE(matches(g, "\"\x7f\""));  // DEL needs no escape in JSON
}

TEST(JsonSchema, PropertyOrderFollowsTheSchemaForOrderedInput) {
  const char* schema =
      R"({"type":"object","properties":{"z":{"type":"integer"},"a":{"type":"integer"}},"required":["z","a"],"additionalProperties":false})";
  const Grammar ordered = compile(schema);
  EXPECT_TRUE(matches(ordered, R"({"z":1,"a":2})"));
  EXPECT_FALSE(matches(ordered, R"({"a":2,"z":1})"));
  // nlohmann::json sorts keys, so its overload sees "a" first.
  Result<Grammar> sorted = json_schema_to_grammar(nlohmann::json::parse(schema));
  ASSERT_TRUE(sorted.ok()) << sorted.error().message;
  EXPECT_TRUE(matches(sorted.value(), R"({"a":2,"z":1})"));
}

TEST(JsonSchema, BoundedWhitespace) {
  JsonSchemaOptions opt;
  opt.whitespace = JsonWhitespace::Bounded;
  const Grammar g = compile(
      R"({"type":"object","properties":{"a":{"type":"array","items":{"type":"integer"}},"b":{"const":{"x":[1]}}},"additionalProperties":false})",
      opt);
  for (const std::string& v : std::vector<std::string>{
           R"({"a":[1,2]})", R"({ "a" : [ 1 , 2 ] })", "{\n  \"a\": [\n    1,\n    2\n  ]\n}",
           "{\"a\":[\n\t\t1]}", R"({ })", R"({"b": {"x": [1]}})", R"({"a":[],"b":{"x":[1]}})",
           "{\n" + std::string(20, ' ') + "\"a\":[]}"})
    EXPECT_TRUE(matches(g, v)) << v;
  for (const char* v : {R"( {"a":[1]})", R"({"a":[1]} )", R"({  "a":[1]})", "{\n\n\"a\":[1]}",
                        "{\r\n\"a\":[1]}", R"({"a":[1 2]})", R"({"a" :[1 ,2]} )"})
    EXPECT_FALSE(matches(g, v)) << v;
  EXPECT_FALSE(matches(g, "{\n" + std::string(21, ' ') + "\"a\":[]}"));
  // Compact refuses any whitespace.
  const Grammar c = compile(R"({"type":"array","items":{"type":"integer"}})");
  EXPECT_FALSE(matches(c, "[1, 2]"));
  EXPECT_TRUE(matches(c, "[1,2]"));
}

TEST(JsonSchema, JsonModeIsAnyObject) {
  for (JsonWhitespace ws : {JsonWhitespace::Compact, JsonWhitespace::Bounded}) {
    const Grammar g = json_object_grammar(ws);
    ASSERT_TRUE(g.validate().ok());
    for (const char* v : {R"({})", R"({"a":1})", R"({"a":{"b":[1,"x",null,true,-2.5e-3]},"c":{}})"})
      EXPECT_TRUE(matches(g, v)) << v;
    for (const char* v : {R"([])", R"(1)", R"("x")", R"(null)", R"({"a"})", R"({"a":1,})", R"({)"})
      EXPECT_FALSE(matches(g, v)) << v;
    EXPECT_EQ(matches(g, R"({ "a": 1 })"), ws == JsonWhitespace::Bounded);
  }
}

TEST(JsonSchema, NullableAndFalseAndNothing) {
  const Grammar g = compile(R"({"type":"string","nullable":true,"maxLength":1})");
  EXPECT_TRUE(matches(g, "null"));
  EXPECT_TRUE(matches(g, R"("a")"));
  EXPECT_FALSE(matches(g, R"("ab")"));
  EXPECT_NE(compile_error("false").find("no JSON value"), std::string::npos);
  EXPECT_NE(compile_error(R"({"type":"integer","minimum":5,"maximum":4})").find("no JSON value"),
            std::string::npos);
  EXPECT_NE(
      compile_error(R"({"allOf":[{"type":"string"},{"type":"integer"}]})").find("no JSON value"),
      std::string::npos);
  // An unsatisfiable optional property is left out; a required one empties the object.
  const Grammar o = compile(
      R"({"type":"object","properties":{"a":{"enum":[]},"b":{"type":"integer"}},"additionalProperties":false})");
  EXPECT_TRUE(matches(o, R"({"b":1})"));
  EXPECT_FALSE(matches(o, R"({"a":1})"));
  EXPECT_NE(compile_error(R"({"type":"object","properties":{"a":false},"required":["a"]})")
                .find("no JSON value"),
            std::string::npos);
}

TEST(JsonSchema, ManyOptionalPropertiesStayLinear) {
  ojson props = ojson::object();
  for (int i = 0; i < 300; ++i) props[fmt::format("p{}", i)] = {{"type", "integer"}};
  ojson schema = {{"type", "object"}, {"properties", props}, {"additionalProperties", false}};
  Result<Grammar> r = json_schema_to_grammar(schema);
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(matches(r.value(), "{}"));
  EXPECT_TRUE(matches(r.value(), R"({"p7":1,"p250":2,"p299":3})"));
  EXPECT_FALSE(matches(r.value(), R"({"p250":2,"p7":1})"));
  EXPECT_FALSE(matches(r.value(), R"({"p7":1,"p7":1})"));
}

TEST(JsonSchema, OneOfMustBeDisjoint) {
  const char* overlapping = R"({"oneOf":[{"type":"integer"},{"type":"number","minimum":0}]})";
  const std::string e = compile_error(overlapping);
  EXPECT_NE(e.find("oneOf"), std::string::npos) << e;
  EXPECT_NE(e.find("branches 0 and 1"), std::string::npos) << e;
  JsonSchemaOptions opt;
  opt.oneof_as_anyof = true;
  const Grammar g = compile(overlapping, opt);
  EXPECT_TRUE(matches(g, "-3"));
  EXPECT_TRUE(matches(g, "2.5"));
  // Disjoint by a required property that the other branch forbids.
  compile(
      R"({"oneOf":[{"type":"object","properties":{"a":{}},"required":["a"],"additionalProperties":false},{"type":"object","properties":{"b":{}},"required":["b"],"additionalProperties":false}]})");
  // By enum values.
  compile(R"({"oneOf":[{"enum":[1,2]},{"enum":[3,"x"]}]})");
}

TEST(JsonSchema, UnsupportedKeywordsAreNamedWithTheirLocation) {
  const std::vector<std::pair<const char*, const char*>> keywords = {
      {"patternProperties", R"({"^x":{}})"},
      {"if", R"({})"},
      {"then", R"({})"},
      {"else", R"({})"},
      {"not", R"({})"},
      {"dependentRequired", R"({})"},
      {"dependentSchemas", R"({})"},
      {"dependencies", R"({})"},
      {"uniqueItems", "true"},
      {"multipleOf", "2"},
      {"minProperties", "1"},
      {"maxProperties", "1"},
      {"contains", R"({})"},
      {"minContains", "1"},
      {"maxContains", "1"},
      {"unevaluatedProperties", "false"},
      {"unevaluatedItems", "false"},
      {"propertyNames", R"({})"},
      {"$anchor", R"("a")"},
      {"$dynamicRef", R"("#a")"},
      {"$dynamicAnchor", R"("a")"},
      {"$recursiveRef", R"("#")"},
      {"contentEncoding", R"("base64")"},
      {"contentMediaType", R"("text/plain")"},
      {"discriminator", R"({})"},
      {"x-extension", "1"}};
  for (const auto& [kw, value] : keywords) {
    const std::string schema =
        std::string(R"({"type":"object","properties":{"a b":{"type":"string",")") + kw +
        "\":" + value + "}}}";
    const std::string e = compile_error(schema);
    EXPECT_NE(e.find(std::string("'") + kw + "'"), std::string::npos) << e;
    EXPECT_NE(e.find("#/properties/a b"), std::string::npos) << e;
  }
  struct Refusal {
    std::string schema;
    const char* says;
  };
  for (const Refusal& r : std::vector<Refusal>{
           {R"({"type":"string","format":"credit-card"})", "format 'credit-card'"},
           {R"({"$ref":"https://example.com/s.json"})", "remote $ref"},
           {R"({"$ref":"other.json#/a"})", "remote $ref"},
           {R"({"$ref":"#anchor"})", "anchors are not supported"},
           {R"({"$ref":"#/$defs/missing"})", "points to nothing"},
           {R"({"type":"string","pattern":"a^b"})", "'^'"},
           {R"({"type":"string","pattern":"\\bword"})", "'\\b'"},
           {R"j({"type":"string","pattern":"(?=a)"})j", "pattern '(?=a)'"},
           {R"({"type":"string","pattern":"(a"})", "pattern '(a'"},
           {R"({"type":"number","minimum":0.5})", "'minimum' 0.5"},
           {R"({"type":"integer","maximum":1e30})", "outside the supported range"},
           {R"({"type":"string","enum":["a"],"pattern":"a"})", "'pattern' together with 'enum'"},
           {R"({"type":"string","pattern":"a","maxLength":3})", "'pattern' together with"},
           {R"({"type":"string","format":"date","minLength":3})", "'format' together with"},
           {R"({"type":"string","format":"date","pattern":"a"})",
            "'pattern' together with 'format'"},
           {R"({"type":"strin"})", "unknown type \"strin\""},
           {R"({"type":"string","maxLength":-1})", "'maxLength'"},
           {R"({"type":"array","maxItems":100000})", "above the limit"},
           {R"({"allOf":[{"type":"string","pattern":"a"},{"pattern":"b"}]})",
            "cannot merge two different 'pattern'"},
           {R"({"anyOf":[]})", "'anyOf' at # must be a non-empty array"},
           {R"({"properties":[]})", "'properties' at # must be an object"},
           {R"([])", "must be an object or a boolean"},
           {"{\"type\":", "not valid JSON"},
           // Echoed text is escaped and cut: messages stay one short line.
           {R"({"properties":{"a\nb":{"x\u2028y":1}}})", "'x\\u2028y' at #/properties/a\\u000ab"},
           {R"({"$ref":"#/)" + std::string(5000, 'x') + R"("})", "..."}}) {
    const std::string e = compile_error(r.schema);
    EXPECT_NE(e.find(r.says), std::string::npos) << r.schema << " -> " << e;
    EXPECT_LT(e.size(), 600u) << e;
  }
}

TEST(JsonSchema, StrictModeAcceptsOpenAiSubset) {
  JsonSchemaOptions strict;
  strict.strict = true;
  const char* schema = R"({
    "type": "object",
    "title": "Answer",
    "properties": {
      "steps": {"type": "array", "items": {"$ref": "#/$defs/step"}, "minItems": 1},
      "final": {"type": "string", "description": "the answer"},
      "confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
      "kind": {"enum": ["a", "b"]},
      "when": {"type": "string", "format": "date-time"},
      "code": {"type": "string", "pattern": "^[A-Z]{3}$"},
      "extra": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/step"}]}
    },
    "required": ["steps", "final", "confidence", "kind", "when", "code", "extra"],
    "additionalProperties": false,
    "$defs": {
      "step": {
        "type": "object",
        "properties": {"explanation": {"type": "string"}, "output": {"type": "string"}},
        "required": ["explanation", "output"],
        "additionalProperties": false
      }
    }
  })";
  const Grammar g = compile(schema, strict);
  EXPECT_TRUE(matches(
      g,
      R"({"steps":[{"explanation":"e","output":"o"}],"final":"f","confidence":null,"kind":"a","when":"2024-01-01T00:00:00Z","code":"ABC","extra":"x"})"));
  EXPECT_FALSE(matches(
      g,
      R"({"steps":[],"final":"f","confidence":null,"kind":"a","when":"2024-01-01T00:00:00Z","code":"ABC","extra":"x"})"));
}

TEST(JsonSchema, StrictModeRefusesWithTheReason) {
  JsonSchemaOptions strict;
  strict.strict = true;
  const char* ok_obj = R"("type":"object","additionalProperties":false)";
  struct Refusal {
    std::string schema;
    const char* says;
  };
  const std::vector<Refusal> refusals = {
      {R"({"type":"object","properties":{"a":{"type":"string"}},"required":["a"]})",
       "\"additionalProperties\": false"},
      {R"({"type":"object","properties":{},"additionalProperties":true})",
       "\"additionalProperties\": false"},
      {std::string("{") + ok_obj + R"(,"properties":{"a":{"type":"string"}}})",
       "not in 'required'"},
      {std::string("{") + ok_obj +
           R"(,"properties":{"a":{"type":"string","minLength":1}},"required":["a"]})",
       "'minLength'"},
      {std::string("{") + ok_obj +
           R"(,"properties":{"a":{"allOf":[{"type":"string"}]}},"required":["a"]})",
       "'allOf'"},
      {std::string("{") + ok_obj +
           R"(,"properties":{"a":{"oneOf":[{"type":"string"}]}},"required":["a"]})",
       "'oneOf'"},
      {std::string("{") + ok_obj +
           R"(,"properties":{"a":{"type":"string","format":"uri"}},"required":["a"]})",
       "format 'uri'"},
      {std::string("{") + ok_obj +
           R"(,"properties":{"a":{"description":"no type"}},"required":["a"]})",
       "has no 'type'"},
      {std::string("{") + ok_obj + R"(,"properties":{"a":true},"required":["a"]})",
       "boolean schema"},
      {std::string("{") + ok_obj +
           R"(,"properties":{"a":{"type":"array","prefixItems":[]}},"required":["a"]})",
       "'prefixItems'"},
      {std::string("{") + ok_obj +
           R"(,"properties":{"a":{"type":"string","nullable":true}},"required":["a"]})",
       "'nullable'"},
      {std::string("{") + ok_obj +
           R"(,"properties":{"a":{"$ref":"#/$defs/s","description":"x","type":"string"}},"required":["a"],"$defs":{"s":{"type":"string"}}})",
       "sibling keywords"},
      {std::string("{") + ok_obj +
           R"(,"properties":{},"$defs":{"unused":{"type":"string","minLength":1}}})",
       "'minLength'"},
      {R"({"anyOf":[{"type":"object","properties":{},"additionalProperties":false}]})",
       "root must be"},
      {R"({"type":"string"})", "root must be"},
      {R"({"type":["object","null"],"properties":{},"additionalProperties":false})",
       "root must be"},
  };
  for (const Refusal& r : refusals) {
    const std::string e = compile_error(r.schema, strict);
    EXPECT_NE(e.find(r.says), std::string::npos) << r.schema << " -> " << e;
    EXPECT_NE(e.find("strict"), std::string::npos) << e;
  }
  // Limits: object nesting, enum values, properties.
  ojson deep = {{"type", "string"}};
  for (int i = 0; i < 11; ++i)
    deep = {{"type", "object"},
            {"properties", {{"x", deep}}},
            {"required", {"x"}},
            {"additionalProperties", false}};
  Result<Grammar> r = json_schema_to_grammar(deep, strict);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("deeper than 10"), std::string::npos) << r.error().message;
  ojson values = ojson::array();
  for (int i = 0; i < 1001; ++i) values.push_back(i);
  ojson enums = {{"type", "object"},
                 {"properties", {{"e", {{"enum", values}}}}},
                 {"required", {"e"}},
                 {"additionalProperties", false}};
  r = json_schema_to_grammar(enums, strict);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("1000 enum values"), std::string::npos) << r.error().message;
  ojson props = ojson::object(), req = ojson::array();
  for (int i = 0; i < 5001; ++i) {
    props[fmt::format("p{}", i)] = {{"type", "null"}};
    req.push_back(fmt::format("p{}", i));
  }
  r = json_schema_to_grammar(ojson{{"type", "object"},
                                   {"properties", props},
                                   {"required", req},
                                   {"additionalProperties", false}},
                             strict);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("5000 properties"), std::string::npos) << r.error().message;
}

// Hostile schemas: each ends (a grammar or a clean error) quickly.
TEST(JsonSchema, HostileSchemasAreBounded) {
  auto timed = [](const std::string& schema) {
    const auto t0 = std::chrono::steady_clock::now();
    JsonSchemaOptions extras;  // the extra members' names are where long names cost
    extras.extra_properties_by_default = true;
    Result<Grammar> r = json_schema_text_to_grammar(schema, extras);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(s, 20.0) << schema.substr(0, 200);
    if (r.ok()) {
      EXPECT_TRUE(r.value().validate().ok());
    } else {
      EXPECT_EQ(r.error().message.find('\n'), std::string::npos);
    }
    return r;
  };
  auto nest = [](const std::string& open, const std::string& inner, const std::string& close,
                 int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += open;
    s += inner;
    for (int i = 0; i < n; ++i) s += close;
    return s;
  };
  // Deep schema nesting: an error past max_depth; deeper JSON than the document bound too.
  Result<Grammar> r = timed(nest(R"({"type":"array","items":)", "{}", "}", 100));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("deeper than 64"), std::string::npos) << r.error().message;
  EXPECT_TRUE(timed(nest(R"({"type":"array","items":)", "{}", "}", 40)).ok());
  r = timed(nest("[", "", "]", 100000));
  EXPECT_FALSE(r.ok());
  r = timed(R"({"enum":[)" + nest("[", "1", "]", 5000) + "]}");
  EXPECT_FALSE(r.ok());
  // Huge enum: too large once written out.
  std::string big = R"({"enum":[)";
  for (int i = 0; i < 200000; ++i) big += (i ? ",\"" : "\"") + std::to_string(i) + "xxxxxxxx\"";
  r = timed(big + "]}");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("more than"), std::string::npos) << r.error().message;
  // anyOf products through allOf.
  std::string product = R"({"allOf":[)";
  for (int i = 0; i < 8; ++i)
    product += fmt::format(
        R"({}{{"anyOf":[{{"type":"integer"}},{{"type":"string"}},{{"type":"null"}},{{"title":"{}"}}]}})",
        i ? "," : "", i);
  r = timed(product + "]}");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("branches"), std::string::npos) << r.error().message;
  // Exponential allOf through $defs: a_i = allOf[a_{i+1}, a_{i+1}].
  std::string defs = R"({"$defs":{)";
  for (int i = 0; i < 40; ++i)
    defs += fmt::format(R"("a{}":{{"allOf":[{{"$ref":"#/$defs/a{}"}},{{"$ref":"#/$defs/a{}"}}]}},)",
                        i, i + 1, i + 1);
  r = timed(defs + R"("a40":{"type":"integer"}},"$ref":"#/$defs/a0"})");
  EXPECT_FALSE(r.ok());
  // anyOf branches that merge their siblings with the root, again and again.
  r = timed(R"({"type":"object","anyOf":[{"$ref":"#"},{"$ref":"#"},{"$ref":"#"}]})");
  EXPECT_FALSE(r.ok());
  // $ref cycles: no value, or no progress.
  EXPECT_FALSE(timed(R"({"$ref":"#"})").ok());
  EXPECT_FALSE(
      timed(R"({"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},"$ref":"#/$defs/a"})")
          .ok());
  EXPECT_FALSE(timed(R"({"allOf":[{"$ref":"#"}]})").ok());
  EXPECT_FALSE(timed(R"({"anyOf":[{"$ref":"#"},{"type":"null"}]})").ok());
  // Recursion that consumes input is fine.
  EXPECT_TRUE(timed(R"({"anyOf":[{"type":"array","items":{"$ref":"#"}},{"type":"null"}]})").ok());
  // Big ranges and counts.
  EXPECT_TRUE(
      timed(R"({"type":"integer","minimum":-1000000000000000000,"maximum":1000000000000000000})")
          .ok());
  EXPECT_TRUE(timed(R"({"type":"string","minLength":10000,"maxLength":10000})").ok());
  EXPECT_FALSE(timed(R"({"type":"string","maxLength":10001})").ok());
  (void)timed(
      R"({"type":"array","items":{"type":"array","items":{"type":"array","items":{"type":"string","maxLength":100},"minItems":100},"minItems":100},"minItems":100})");
  // Long property names excluded from additional properties.
  EXPECT_TRUE(
      timed(R"({"type":"object","properties":{")" + std::string(1000, 'k') + R"(":{}}})").ok());
  EXPECT_FALSE(
      timed(R"({"type":"object","properties":{")" + std::string(5000, 'k') + R"(":{}}})").ok());
  // Many prefixItems (deep nesting of optional tails, hoisted into rules).
  std::string prefix = R"({"type":"array","prefixItems":[)";
  for (int i = 0; i < 2000; ++i) prefix += std::string(i ? "," : "") + R"({"type":"integer"})";
  r = timed(prefix + "]}");
  ASSERT_TRUE(r.ok()) << r.error().message;
  EXPECT_TRUE(matches(r.value(), "[1,2,3]"));
  // Pathological pattern.
  (void)timed(R"({"type":"string","pattern":"((a{1,100}){1,100}){1,100}"})");
}

std::filesystem::path schemas_dir() {
  if (const char* env = std::getenv("PEREGRINE_BENCH_SCHEMAS")) return env;
  return std::filesystem::path(__FILE__).parent_path().parent_path().parent_path() / "bench" /
         "schemas";
}


// Every file of the benchmark corpus compiles (files named openai_* also in strict mode), and
// strings sampled from each grammar are JSON.
TEST(JsonSchema, BenchCorpusCompiles) {
  const std::filesystem::path dir = schemas_dir();
  if (!std::filesystem::is_directory(dir)) GTEST_SKIP() << "no " << dir;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().extension() == ".json") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  EXPECT_GE(files.size(), 110u);
  std::mt19937_64 rng(7);
  for (const auto& f : files) {
    SCOPED_TRACE(f.filename().string());
    std::ifstream in(f);
    std::stringstream text;
    text << in.rdbuf();
    for (JsonWhitespace ws : {JsonWhitespace::Compact, JsonWhitespace::Bounded}) {
      JsonSchemaOptions opt;
      opt.whitespace = ws;
      opt.strict = f.filename().string().rfind("openai_", 0) == 0;
      Result<Grammar> r = json_schema_text_to_grammar(text.str(), opt);
      ASSERT_TRUE(r.ok()) << f << ": " << r.error().message;
      for (int i = 0; i < 5; ++i) {
        std::optional<std::string> s = grammar_sample(r.value(), rng, 400);
        if (!s) continue;
        // nlohmann refuses numbers beyond double range (1e999), which JSON allows.
        const std::string finite = small_exponents(*s);
        EXPECT_FALSE(nlohmann::json::parse(finite, nullptr, false).is_discarded()) << *s;
        EXPECT_TRUE(matches(r.value(), *s)) << *s;
      }
    }
  }
}

}  // namespace
}  // namespace peregrine::constrain

namespace peregrine::constrain {
namespace {

// By default no members beyond `properties` are generated where additionalProperties is absent
// (every output still validates); true or a schema asks for them.
TEST(JsonSchema, NoExtraMembersUnlessAsked) {
  const char* absent = R"({"type":"object","properties":{"a":{"type":"integer"}}})";
  const Grammar g = compile(absent);
  EXPECT_TRUE(matches(g, R"({"a":1})"));
  EXPECT_TRUE(matches(g, R"({})"));
  EXPECT_FALSE(matches(g, R"({"a":1,"b":2})"));
  const Grammar t = compile(R"({"type":"object","properties":{"a":{"type":"integer"}},"additionalProperties":true})");
  EXPECT_TRUE(matches(t, R"({"a":1,"b":2})"));
  const Grammar n = compile(R"({"type":"object","additionalProperties":{"type":"integer"}})");
  EXPECT_TRUE(matches(n, R"({"x":1,"y":2})"));
  EXPECT_FALSE(matches(n, R"({"x":"s"})"));
  // Without properties it is any object.
  EXPECT_TRUE(matches(compile(R"({"type":"object"})"), R"({"x":[1],"y":{}})"));
  // A required name outside `properties` is still generated (with any value).
  const Grammar r = compile(R"({"type":"object","required":["id"]})");
  EXPECT_TRUE(matches(r, R"({"id":[1]})"));
}

}  // namespace
}  // namespace peregrine::constrain
