"""Constrained decoding end to end: `run` with --json-schema / --grammar / --regex / --choices /
--json-object, and `serve` with response_format, tools and the vLLM / llama-server fields, driven
by the official openai client.

The oracles are independent of the engine: every JSON output is validated with the `jsonschema`
package against the schema it was asked for, regex outputs with Python's re.fullmatch, catalogue
outputs by membership, tool-call arguments against the function's parameter schema. A small model
writes poor JSON when free; under a constraint every output must be valid, whatever it says.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jsonschema
import openai
import pytest

from serve_fixture import start_server, threads_arg

KEY = "sk-peregrine-test"
MODEL = "smollm2-135m"

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
        "role": {"enum": ["admin", "user", "guest"]},
    },
    "required": ["name", "age", "role"],
    "additionalProperties": False,
}

TREE = {  # recursive through $defs
    "$defs": {"node": {"type": "object",
                       "properties": {"v": {"type": "integer"},
                                      "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
                       "required": ["v"], "additionalProperties": False}},
    "$ref": "#/$defs/node",
}


def gen(ok, model_path, *args, prompt="Answer:", n=80, chat=True, seed=None, temp=0):
    a = ["run", "-m", model_path, "-t", "2", "--temp", str(temp), "-n", str(n), "-p", prompt, *args]
    if chat:
        a.append("--chat")
    if seed is not None:
        a += ["--seed", str(seed)]
    return ok(*a)


# ---- CLI ---------------------------------------------------------------------------------------

def generated_tokens(r) -> int:
    return int(re.search(r"generation: (\d+) tokens", r.stderr).group(1))


@pytest.mark.parametrize("schema", [PERSON, TREE], ids=["person", "recursive"])
def test_run_json_schema_outputs_validate(ok, model_path, tmp_path, schema):
    f = tmp_path / "schema.json"
    f.write_text(json.dumps(schema))
    complete = 0
    for seed, temp in [(1, 0), (2, 0.9), (3, 1.2), (4, 1.0)]:
        r = gen(ok, model_path, "--json-schema", f, prompt="Write a JSON record.", n=300, seed=seed, temp=temp)
        assert "constraint: compiled in" in r.stderr
        if generated_tokens(r) == 300:  # cut off by -n (a recursive schema lets it nest on)
            continue
        jsonschema.validate(json.loads(r.stdout), schema)  # raises on invalid output
        complete += 1
    assert complete >= 1


def test_run_json_schema_greedy_is_deterministic(ok, model_path, tmp_path):
    f = tmp_path / "schema.json"
    f.write_text(json.dumps(PERSON))
    a = gen(ok, model_path, "--json-schema", f, prompt="A person.", n=120).stdout
    b = gen(ok, model_path, "--json-schema", f, prompt="A person.", n=120).stdout
    assert a == b


def test_run_json_object_mode(ok, model_path):
    complete = 0
    for seed in (1, 2, 3):
        r = gen(ok, model_path, "--json-object", "--json-whitespace", "bounded", prompt="Some JSON please.",
                n=200, seed=seed, temp=1.0)
        if generated_tokens(r) < 200:  # not cut off by -n
            assert isinstance(json.loads(r.stdout), dict)
            complete += 1
    assert complete >= 1


# Each pattern with a regex for the prefixes of its matches (what an output cut off by -n may be;
# written by hand: the standard library's re has no partial matching).
REGEX_PREFIXES = {
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}": r"[0-9]{0,4}|[0-9]{4}-[0-9]{0,2}|[0-9]{4}-[0-9]{2}-[0-9]{0,2}",
    r"(yes|no|maybe)!?": r"|y|ye|yes!?|n|no!?|m|ma|may|mayb|maybe!?",
    r"[A-Z][a-z]+ [A-Z]\.": r"([A-Z][a-z]*( ([A-Z]\.?)?)?)?",
    r"\d{3}-\d{4}": r"\d{0,3}|\d{3}-\d{0,4}",
    r"(ab|cd)+e": r"(ab|cd)*[ac]?|(ab|cd)+e",
}


@pytest.mark.parametrize("pattern", list(REGEX_PREFIXES))
def test_run_regex_outputs_match(ok, model_path, pattern):
    for seed in (1, 2):
        r = gen(ok, model_path, "--regex", pattern, prompt="Go.", n=40, seed=seed, temp=1.0)
        out = r.stdout.rstrip("\n")
        if generated_tokens(r) == 40:  # cut off by -n: a prefix of a match
            assert re.fullmatch(REGEX_PREFIXES[pattern], out), (pattern, out)
        else:
            assert re.fullmatch(pattern, out), (pattern, out)


def test_regex_prefix_table_is_right():
    """The hand-written prefix regexes accept every prefix of sample matches and reject non-prefixes."""
    samples = {r"[0-9]{4}-[0-9]{2}-[0-9]{2}": ["2024-01-31"], r"(yes|no|maybe)!?": ["yes!", "no", "maybe!"],
               r"[A-Z][a-z]+ [A-Z]\.": ["Karl M.", "Ab C."], r"\d{3}-\d{4}": ["555-1234"],
               r"(ab|cd)+e": ["abcdabe", "cde"]}
    for pattern, words in samples.items():
        for w in words:
            assert re.fullmatch(pattern, w)
            for i in range(len(w) + 1):
                assert re.fullmatch(REGEX_PREFIXES[pattern], w[:i]), (pattern, w[:i])
    for pattern, bad in [(r"[A-Z][a-z]+ [A-Z]\.", "ab"), (r"[A-Z][a-z]+ [A-Z]\.", "Ab C.x"),
                         (r"(ab|cd)+e", "ac"), (r"\d{3}-\d{4}", "12-"), (r"(yes|no|maybe)!?", "yes!!")]:
        assert not re.fullmatch(REGEX_PREFIXES[pattern], bad), (pattern, bad)


def test_run_choices_outputs_an_item(ok, model_path, tmp_path):
    items = ["red", "green", "blue", "light blue", "dark blue", "ultramarine", "blue-green", "grey"]
    f = tmp_path / "colors.txt"
    f.write_text("\n".join(items) + "\n")
    for seed in (1, 2, 3):
        out = gen(ok, model_path, "--choices", f, prompt="What colour is the sky?", n=20, seed=seed,
                  temp=1.0).stdout.rstrip("\n")
        assert out in items


def test_run_gbnf_grammar(ok, model_path, tmp_path):
    f = tmp_path / "arith.gbnf"
    f.write_text('root ::= expr\nexpr ::= term ("+" term)*\nterm ::= [0-9]+ | "(" expr ")"\n')
    out = gen(ok, model_path, "--grammar", f, prompt="An arithmetic sum:", n=30, chat=False).stdout.rstrip("\n")
    assert re.fullmatch(r"[0-9+()]+", out), out
    # A complete expression unless cut off at 30 tokens: balanced parentheses, no dangling '+'.
    if len(out) < 30:
        assert out.count("(") == out.count(")") and not out.endswith("+"), out


@pytest.fixture(scope="module")
def gemma_path():
    p = Path(os.environ.get("PEREGRINE_GEMMA_PATH", Path.home() / ".cache/peregrine/models/gemma-3-270m-q4_k_m.gguf"))
    if not p.is_file():
        pytest.skip(f"Gemma 3 not found at {p}")
    return p


def test_run_constraint_with_gemma_sentencepiece(ok, gemma_path, tmp_path):
    f = tmp_path / "schema.json"
    f.write_text(json.dumps(PERSON))
    out = ok("run", "-m", gemma_path, "-t", "2", "--temp", "0", "-n", "150", "--chat", "-p", "A person as JSON.",
             "--json-schema", f).stdout
    jsonschema.validate(json.loads(out), PERSON)
    out = ok("run", "-m", gemma_path, "-t", "2", "--temp", "0.8", "--seed", "4", "-n", "20", "-p", "Date:",
             "--regex", r"[0-9]{4}-[0-9]{2}-[0-9]{2}").stdout.rstrip("\n")
    assert re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", out), out


def test_print_grammar(ok, model_path, tmp_path):
    f = tmp_path / "schema.json"
    f.write_text(json.dumps(PERSON))
    out = ok("run", "-m", model_path, "-p", "x", "--json-schema", f, "--print-grammar").stdout
    assert out.startswith("root ::=") and "admin" in out


@pytest.mark.parametrize("args,needle", [
    (["--regex", "(ab"], "regex"),
    (["--regex", "a(?=b)"], "lookahead"),
    (["--grammar", "MISSING"], "cannot open"),
    (["--json-schema", "BAD_JSON"], "json"),
    (["--json-schema", "UNSUPPORTED"], "patternProperties"),
    (["--grammar", "NO_ROOT"], "root"),
    (["--grammar", "LEFT_REC"], "recurs"),
    (["--choices", "EMPTY"], "empty"),
    (["--regex", "a", "--json-object"], "excludes"),
])
def test_run_bad_constraints_fail_with_one_line(cli, model_path, tmp_path, args, needle):
    files = {
        "BAD_JSON": '{"type": "object", ',
        "UNSUPPORTED": json.dumps({"type": "object", "patternProperties": {"^a": {"type": "string"}}}),
        "NO_ROOT": 'start ::= "a"\n',
        "LEFT_REC": 'root ::= root "a" | "a"\n',
        "EMPTY": "\n\n",
    }
    real = []
    for a in args:
        if a in files:
            p = tmp_path / a
            p.write_text(files[a])
            real.append(str(p))
        elif a == "MISSING":
            real.append(str(tmp_path / "missing.gbnf"))
        else:
            real.append(a)
    r = cli("run", "-m", model_path, "-n", "4", "-p", "x", *real)
    assert r.returncode != 0
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr
    assert needle.lower() in lines[0].lower(), r.stderr


# ---- server ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(peregrine_bin, model_path):
    s = start_server(peregrine_bin, model_path, *threads_arg(), "--parallel", "8", "-c", "2048", "--api-key", KEY)
    yield s
    rc = s.stop()
    assert rc == 0, f"server exit code {rc}\n{s.stderr_tail()}"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)


def chat(client, content="Give me a record.", **kw):
    kw.setdefault("max_tokens", 200)
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}], **kw)


def test_response_format_json_schema(client):
    for temp, n in [(0, 1), (1.0, 3)]:
        r = chat(client, temperature=temp, n=n, seed=5,
                 response_format={"type": "json_schema",
                                  "json_schema": {"name": "person", "schema": PERSON, "strict": False}})
        assert len(r.choices) == n
        finished = [c for c in r.choices if c.finish_reason == "stop"]  # the rest: cut off by max_tokens
        assert finished and all(c.finish_reason in ("stop", "length") for c in r.choices)
        for c in finished:
            jsonschema.validate(json.loads(c.message.content), PERSON)


def test_response_format_keeps_property_order(client):
    small = {"type": "integer", "minimum": 0, "maximum": 99}
    schema = {"type": "object", "properties": {"zeta": small, "alpha": small},
              "required": ["zeta", "alpha"], "additionalProperties": False}
    r = chat(client, response_format={"type": "json_schema", "json_schema": {"name": "o", "schema": schema}})
    assert list(json.loads(r.choices[0].message.content)) == ["zeta", "alpha"]


def test_strict_schema_and_refusal(client):
    strict = {"type": "object", "properties": {"a": {"type": "string", "enum": ["x", "yz"]}, "b": {"type": ["boolean", "null"]}},
              "required": ["a", "b"], "additionalProperties": False}
    r = chat(client, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": strict, "strict": True}})
    jsonschema.validate(json.loads(r.choices[0].message.content), strict)
    loose = {"type": "object", "properties": {"a": {"type": "string"}}}  # not within the strict subset
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": loose, "strict": True}})
    assert e.value.body["param"] == "response_format.json_schema.schema"


def test_json_object_mode_streamed(client):
    stream = chat(client, stream=True, temperature=0, max_tokens=400, response_format={"type": "json_object"})
    chunks = [ch for ch in stream if ch.choices]
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop", text
    assert isinstance(json.loads(text), dict)


def test_logprobs_are_of_the_constrained_distribution(client):
    r = chat(client, logprobs=True, top_logprobs=5, max_tokens=12,
             extra_body={"guided_regex": "(yes|no)"})
    content = r.choices[0].message.content
    assert content in ("yes", "no")
    first = r.choices[0].logprobs.content[0]
    # Only tokens that can start "yes" or "no" have probability; the rest are -inf (-9999).
    for t in first.top_logprobs:
        if t.logprob > -9999:
            assert "yes".startswith(t.token) or "no".startswith(t.token), t.token
    total = sum(pow(2.718281828, t.logprob) for t in first.top_logprobs if t.logprob > -9999)
    assert total > 0.99


@pytest.mark.parametrize("field,value,check", [
    ("guided_json", PERSON, lambda s: jsonschema.validate(json.loads(s), PERSON)),
    ("guided_regex", r"\d{2}:\d{2}", lambda s: re.fullmatch(r"\d{2}:\d{2}", s) or pytest.fail(s)),
    ("guided_choice", ["alpha", "beta", "gamma delta"], lambda s: s in ["alpha", "beta", "gamma delta"] or pytest.fail(s)),
    ("guided_grammar", 'root ::= "ok" [0-9]{1,3}', lambda s: re.fullmatch(r"ok[0-9]{1,3}", s) or pytest.fail(s)),
    ("grammar", 'root ::= ("a" | "b")+ "."', lambda s: re.fullmatch(r"[ab]+\.", s) or pytest.fail(s)),
    ("json_schema", TREE, lambda s: jsonschema.validate(json.loads(s), TREE)),
])
def test_vllm_and_llama_server_fields(client, field, value, check):
    r = chat(client, temperature=0.7, seed=11, extra_body={field: value})
    check(r.choices[0].message.content)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string", "maxLength": 20}},
                                       "required": ["tz"], "additionalProperties": False}}}


def test_tools_required_and_named(client):
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    r = chat(client, content="What is the weather in Paris?", tools=[WEATHER, TIME], tool_choice="required")
    c = r.choices[0]
    assert c.finish_reason == "tool_calls" and c.message.content is None
    call = c.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name in by_name
    jsonschema.validate(json.loads(call.function.arguments), by_name[call.function.name])
    r = chat(client, content="What time is it?", tools=[WEATHER, TIME],
             tool_choice={"type": "function", "function": {"name": "get_time"}})
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), by_name["get_time"])
    # The conversation goes on with the call and its result.
    r2 = client.chat.completions.create(model=MODEL, max_tokens=20, temperature=0, messages=[
        {"role": "user", "content": "What time is it?"},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "12:00"}])
    assert r2.choices[0].message.content


def test_tools_streamed(client):
    stream = chat(client, content="Weather in Rome?", stream=True, tools=[WEATHER],
                  tool_choice={"type": "function", "function": {"name": "get_weather"}})
    calls, finish, finishes = {}, None, 0
    for ch in stream:
        if not ch.choices:
            continue
        finishes += ch.choices[0].finish_reason is not None
        d = ch.choices[0].delta
        for tc in d.tool_calls or []:
            e = calls.setdefault(tc.index, {"name": "", "arguments": ""})
            e["name"] += tc.function.name or ""
            e["arguments"] += tc.function.arguments or ""
        finish = ch.choices[0].finish_reason or finish
    assert finish == "tool_calls" and finishes == 1 and calls[0]["name"] == "get_weather"
    jsonschema.validate(json.loads(calls[0]["arguments"]), WEATHER["function"]["parameters"])


@pytest.mark.parametrize("kw,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object", "not": {}}}}},
     "response_format.json_schema.schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "response_format.json_schema.name"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"extra_body": {"guided_regex": "(unclosed"}}, "guided_regex"),
    ({"extra_body": {"guided_grammar": "root ::= root"}}, "guided_grammar"),
    ({"extra_body": {"guided_choice": []}}, "guided_choice"),
    ({"extra_body": {"guided_regex": "a", "grammar": "root ::= \"a\""}}, "grammar"),
    ({"tools": [WEATHER]}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": "auto"}, "tool_choice"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "response_format"),
    ({"extra_body": {"guided_regex": "(a|b{0,1000}){0,1000}"}}, "guided_regex"),
])
def test_bad_constraints_get_a_400_naming_the_field(client, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, max_tokens=8, **kw)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param, e.value.body


def test_server_still_serves_after_bad_constraints(client):
    r = chat(client, max_tokens=8, extra_body={"guided_choice": ["fine"]})
    assert r.choices[0].message.content == "fine"


def test_speculative_drafts_are_checked_against_the_constraint(ok, model_path, tmp_path):
    """Drafted tokens the constraint refuses are never accepted: greedy constrained text is the
    same with and without speculation (n-gram drafts from the prompt, which is JSON-like but
    not valid for the schema)."""
    f = tmp_path / "schema.json"
    f.write_text(json.dumps(PERSON))
    prompt = 'Repeat: {"name": "Ann", "age": "old", "role": "boss", "tags": [1, 2]}'
    plain = gen(ok, model_path, "--json-schema", f, prompt=prompt, n=120).stdout
    spec = gen(ok, model_path, "--json-schema", f, "--spec", "ngram", prompt=prompt, n=120)
    assert spec.stdout == plain
    assert "drafted" in spec.stderr
    jsonschema.validate(json.loads(plain), PERSON)


def test_chat_applies_the_constraint_to_every_reply(ok, model_path):
    r = ok("chat", "-m", model_path, "-t", "2", "--temp", "0", "-n", "20", "--regex", "(yes|no)[.!]",
           input="Is the sky blue?\nIs grass red?\n")
    replies = [l for l in r.stdout.splitlines() if l.strip()]
    assert len(replies) == 2, r.stdout
    assert all(re.fullmatch(r"(yes|no)[.!]", l) for l in replies), replies


def test_stop_strings_end_constrained_output(ok, model_path):
    # The grammar forces "ab" repeated then "c"; the stop string cuts it at the first "ba".
    out = gen(ok, model_path, "--regex", "(ab){3,5}c", "--stop", "ba", prompt="Go.", n=20).stdout.rstrip("\n")
    assert out == "a", out


@pytest.mark.parametrize("line,needle", [
    ('{"id":"x","regex":"a","traces":[["q"]]}', "traces"),
    ('{"id":"x","regex":5}', "type must be string"),
    ('{"id":"x"}', "none of"),
    ('[1,2]', "not a JSON object"),
])
def test_masks_bad_input_is_one_line(cli, model_path, line, needle):
    r = cli("masks", "-m", model_path, "--input", "-", input=line + "\n")
    assert r.returncode != 0
    err = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], r.stderr


def test_masks_reports_compile_errors_per_line(ok, model_path):
    r = ok("masks", "-m", model_path, "--input", "-",
           input='{"id":"bad","regex":"(a"}\n{"id":"good","regex":"a+","traces":[[]]}\n')
    lines = [json.loads(l) for l in r.stdout.splitlines()]
    assert lines[0]["n_vocab"] == 49152
    assert lines[1]["id"] == "bad" and "regex" in lines[1]["error"]
    assert lines[2]["id"] == "good" and lines[2]["error"] is None and len(lines[2]["traces"][0]["mask_us"]) == 1
