#!/usr/bin/env python3
"""Write a small seed corpus for a fuzz target: make_seeds.py TARGET OUTDIR.

TARGET is a fuzz target name with or without the fuzz_ prefix. Targets this script does not know
get no seeds (exit 0), so scripts/test_fuzz.sh can call it for every target. Only the standard
library is used: seeds are generated at test time, never committed as binaries.

gguf: a few tiny valid GGUF files (v2 and v3, every value type, nested arrays, tensors of several
types, a custom alignment), each under 1 KB so that mutations reach every field quickly.

tokenizer_spm: short texts for the Gemma 3 SentencePiece tokenizer: control and user-defined
tokens (also cut short and run together), runs of spaces/newlines/tabs, the character U+2581,
characters no piece spells (byte fallback), invalid and truncated UTF-8, literal <0xXX> text.

api_request: OpenAI request bodies behind the target's selector byte (bit 0: chat, bit 1: small
limits with the model list ["m"]): valid chat and completions requests using every field, and
near misses (wrong types, out-of-range values, refused features, malformed and deep JSON).

http_request: what a client sends on one connection, behind a byte that seeds how the target cuts
it into reads: pipelined requests with Content-Length and chunked bodies, 100-continue, HTTP/1.0,
and the framing attacks the reader refuses (conflicting lengths, unknown codings, both framings,
bare LF, compressed bodies, oversized headers and bodies).

gbnf: GBNF grammars using every syntax element (comments, CRLF, newlines in groups and after |,
every quantifier and escape, classes, token references and other refused syntax, left recursion,
deep nesting, large repeat counts).

regex: patterns using every supported construct and the refused ones (backreferences,
lookaround, flags, possessive quantifiers, anchors in the middle, odd classes).

json_schema: JSON Schemas behind the target's option byte (bit 0 strict, bit 1 bounded
whitespace, bit 2 oneOf as anyOf): objects with required/optional and additional properties,
arrays with prefixItems and counts, enums and consts, integer and number bounds, formats,
patterns, $ref recursion, allOf/anyOf/oneOf, a strict OpenAI-style schema, and near misses
(unsupported keywords, remote and cyclic $refs, deep nesting).
"""
import json
import os
import struct
import sys

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
              BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}
# ggml type id -> (values per block, bytes per block), from the GGUF spec.
GGML = {"F32": (0, 1, 4), "F16": (1, 1, 2), "Q4_0": (2, 32, 18), "Q4_1": (3, 32, 20),
        "Q8_0": (8, 32, 34), "Q4_K": (12, 256, 144), "Q6_K": (14, 256, 210), "I32": (26, 1, 4)}


def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def value(vtype, v):
    """Bytes of a value (without its type tag); arrays are (elem_type, [items])."""
    if vtype == STRING:
        return gstr(v)
    if vtype == ARRAY:
        elem, items = v
        return struct.pack("<IQ", elem, len(items)) + b"".join(value(elem, x) for x in items)
    return struct.pack(SCALAR_FMT[vtype], v)


def gguf(kvs, tensors=(), version=3, alignment=32):
    """kvs: [(key, type, value)]; tensors: [(name, dims, type name)], data is a byte pattern."""
    out = struct.pack("<IIQQ", 0x46554747, version, len(tensors), len(kvs))
    for key, vtype, v in kvs:
        out += gstr(key) + struct.pack("<I", vtype) + value(vtype, v)
    data, offsets = b"", []
    for name, dims, tname in tensors:
        tid, be, bb = GGML[tname]
        n = 1
        for d in dims:
            n *= d
        data += b"\0" * (-len(data) % alignment)
        offsets.append(len(data))
        data += bytes((k * 7 + 1) & 0xFF for k in range(n // be * bb))
    for (name, dims, tname), off in zip(tensors, offsets):
        out += gstr(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
        out += struct.pack("<IQ", GGML[tname][0], off)
    if tensors:
        out += b"\0" * (-len(out) % alignment) + data
    return out


def gguf_seeds():
    every_scalar = [("u8", U8, 200), ("i8", I8, -3), ("u16", U16, 60000), ("i16", I16, -300),
                    ("u32", U32, 4000000000), ("i32", I32, -7), ("f32", F32, 1.5),
                    ("bool", BOOL, 1), ("str", STRING, "hello"), ("u64", U64, 2**63),
                    ("i64", I64, -(2**40)), ("f64", F64, 0.25)]
    arrays = [("tokenizer.ggml.tokens", ARRAY, (STRING, ["<s>", "a", "bc", ""])),
              ("tokenizer.ggml.token_type", ARRAY, (I32, [3, 1, 1, 1])),
              ("tokenizer.ggml.scores", ARRAY, (F32, [0.0, -1.0, -2.5, 0.5])),
              ("nested", ARRAY, (ARRAY, [(U8, [1, 2]), (U8, []), (U8, [3])])),
              ("bools", ARRAY, (BOOL, [0, 1]))]
    llama = [("general.architecture", STRING, "llama"), ("llama.block_count", U32, 1),
             ("llama.embedding_length", U32, 32), ("llama.context_length", U32, 64)]
    return {
        "empty.gguf": gguf([]),
        "scalars_v3.gguf": gguf(every_scalar),
        "scalars_v2.gguf": gguf(every_scalar, version=2),
        "arrays.gguf": gguf(arrays),
        "tensors.gguf": gguf([], [("a", [8], "F32"), ("b", [32, 2], "Q4_0"), ("c", [3, 1, 2], "F16"),
                                  ("d", [2, 2, 1, 1], "I32")]),
        "align64.gguf": gguf([("general.alignment", U32, 64)],
                             [("x", [4], "F32"), ("y", [32], "Q8_0")], alignment=64),
        "llama_tiny.gguf": gguf(llama + arrays[:3],
                                [("token_embd.weight", [32, 4], "Q4_1"), ("output_norm.weight", [32], "F32"),
                                 ("blk.0.ffn_down.weight", [256, 1], "Q4_K")]),
        **model_seeds(),
    }


def model_seeds():
    """Whole tiny models of the routed-expert, state-space and hybrid architectures that load
    (fuzz_gguf then runs a forward pass), so mutations reach their hyperparameter and shape checks:
    expert counts and top-k, 3-D expert stacks, ssm.* sizes, per-layer kind arrays with zeros."""
    E, V = 8, 4

    def common(arch, n_layer, extra):
        return [("general.architecture", STRING, arch), (f"{arch}.block_count", U32, n_layer),
                (f"{arch}.embedding_length", U32, E), (f"{arch}.context_length", U32, 64),
                (f"{arch}.attention.layer_norm_rms_epsilon", F32, 1e-5)] + extra

    head = [("token_embd.weight", [E, V], "F32"), ("output_norm.weight", [E], "F32")]
    moe = [(f"qwen3moe.{k}", U32, v) for k, v in (("feed_forward_length", 16), ("attention.head_count", 2),
                                                  ("attention.head_count_kv", 1), ("attention.key_length", 4),
                                                  ("expert_count", 4), ("expert_used_count", 2),
                                                  ("expert_feed_forward_length", 8))]
    moe_t = head + [("blk.0.attn_norm.weight", [E], "F32"), ("blk.0.attn_q.weight", [E, 8], "F32"),
                    ("blk.0.attn_k.weight", [E, 4], "F32"), ("blk.0.attn_v.weight", [E, 4], "F32"),
                    ("blk.0.attn_q_norm.weight", [4], "F32"), ("blk.0.attn_k_norm.weight", [4], "F32"),
                    ("blk.0.attn_output.weight", [8, E], "F32"), ("blk.0.ffn_norm.weight", [E], "F32"),
                    ("blk.0.ffn_gate_inp.weight", [E, 4], "F32"), ("blk.0.ffn_gate_exps.weight", [E, 8, 4], "F32"),
                    ("blk.0.ffn_up_exps.weight", [E, 8, 4], "F32"), ("blk.0.ffn_down_exps.weight", [8, E, 4], "F32")]
    # Mamba-2: d_inner 8, d_state 4, 2 heads, 1 group, conv 4 -> conv channels 16, in_proj 26.
    def ssm_keys(arch):
        return [(f"{arch}.ssm.{k}", U32, v) for k, v in (("conv_kernel", 4), ("inner_size", 8), ("state_size", 4),
                                                         ("time_step_rank", 2), ("group_count", 1))]

    def ssm_t(il):
        b = f"blk.{il}."
        return [(b + "attn_norm.weight", [E], "F32"), (b + "ssm_in.weight", [E, 26], "F32"),
                (b + "ssm_conv1d.weight", [4, 16], "F32"), (b + "ssm_conv1d.bias", [16], "F32"),
                (b + "ssm_dt.bias", [2], "F32"), (b + "ssm_a", [1, 2], "F32"), (b + "ssm_d", [1, 2], "F32"),
                (b + "ssm_norm.weight", [8, 1], "F32"), (b + "ssm_out.weight", [8, E], "F32")]

    mamba = common("mamba2", 1, [("mamba2.feed_forward_length", U32, 0), ("mamba2.attention.head_count", U32, 0)]
                   + ssm_keys("mamba2"))
    # Nemotron-H MoE: layer 0 Mamba-2, layer 1 attention (no RoPE), layer 2 experts (squared ReLU).
    nh = "nemotron_h_moe"
    nemo = common(nh, 3, [(f"{nh}.attention.head_count", U32, 2),
                          (f"{nh}.attention.head_count_kv", ARRAY, (I32, [0, 1, 0])),
                          (f"{nh}.feed_forward_length", ARRAY, (I32, [0, 0, 8])),
                          (f"{nh}.attention.key_length", U32, 4), (f"{nh}.expert_count", U32, 4),
                          (f"{nh}.expert_used_count", U32, 2), (f"{nh}.expert_feed_forward_length", U32, 8),
                          (f"{nh}.expert_shared_feed_forward_length", U32, 8),
                          (f"{nh}.expert_weights_norm", BOOL, 1), (f"{nh}.expert_weights_scale", F32, 2.5)]
            + ssm_keys(nh))
    nemo_t = head + ssm_t(0) + [
        ("blk.1.attn_norm.weight", [E], "F32"), ("blk.1.attn_q.weight", [E, 8], "F32"),
        ("blk.1.attn_k.weight", [E, 4], "F32"), ("blk.1.attn_v.weight", [E, 4], "F32"),
        ("blk.1.attn_output.weight", [8, E], "F32"), ("blk.2.attn_norm.weight", [E], "F32"),
        ("blk.2.ffn_gate_inp.weight", [E, 4], "F32"), ("blk.2.exp_probs_b.bias", [4], "F32"),
        ("blk.2.ffn_up_exps.weight", [E, 8, 4], "F32"), ("blk.2.ffn_down_exps.weight", [8, E, 4], "F32"),
        ("blk.2.ffn_up_shexp.weight", [E, 8], "F32"), ("blk.2.ffn_down_shexp.weight", [8, E], "F32")]
    return {"qwen3moe_tiny.gguf": gguf(common("qwen3moe", 1, moe), moe_t),
            "mamba2_tiny.gguf": gguf(mamba, head + ssm_t(0)),
            "nemotron_h_moe_tiny.gguf": gguf(nemo, nemo_t)}


def tokenizer_spm_seeds():
    sp = "\u2581"
    texts = [
        b"Hello world, this is  a test.",
        b"<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
        b"<bos><eos><pad><unk><mask>[multimodal]<start_of_image><end_of_image><unused0>",
        b"<start_of_tur<end_of_turn<table><tr><td>1</td></tr></table><s></s>",
        b"   leading and trailing   \n\n\n\t\t x  \t\n  ",
        (sp + "word " + sp + sp + " " + sp).encode(),
        "\u4f60\u597d\uff0c\u4e16\u754c \U0001d518 \U0001f468\u200d\U0001f469".encode(),
        "caf\u00e9 na\u0131ve \u00a0nbsp\u3000ideographic space".encode(),
        b"\x00\x01\x7f\xff\xfe not UTF-8 \xc3 \xe2\x96 \xed\xa0\x80 \xf4\x90\x80\x80",
        b"truncated at the end \xf0\x9f\x98",
        b"<0x41><0xFF> <0x0A>",
        b"def f(x):\n\treturn x  *  2\n",
    ]
    return {f"text{i}.txt": t for i, t in enumerate(texts)}


def api_request_seeds():
    text, chat = b"\x00", b"\x01"  # selector bytes; | 2 for the small limits
    chat_full = (b'{"model":"m","messages":[{"role":"developer","content":"Be brief."},'
                 b'{"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"\\u00e9"}]},'
                 b'{"role":"assistant","content":null}],"max_completion_tokens":8,"temperature":0.7,'
                 b'"top_p":0.9,"seed":-1,"stop":["\\n\\n","END"],"n":2,"logprobs":true,"top_logprobs":2,'
                 b'"presence_penalty":0.5,"frequency_penalty":-0.5,"user":"u","stream":true,'
                 b'"stream_options":{"include_usage":true},"tools":[],"tool_choice":"none",'
                 b'"response_format":{"type":"text"},"logit_bias":{}}')
    text_full = (b'{"model":"m","prompt":"Once upon a time","max_tokens":16,"temperature":0,'
                 b'"top_p":1,"seed":42,"stop":"\\n","n":1,"logprobs":2,"echo":false,"suffix":"",'
                 b'"best_of":1,"stream":false,"user":"x"}')
    bodies = {
        "chat_min": chat + b'{"model":"m","messages":[{"role":"user","content":"hi"}]}',
        "chat_full": chat + chat_full,
        "chat_full_small": bytes([3]) + chat_full,
        "text_min": text + b'{"model":"m","prompt":"Hello"}',
        "text_full": text + text_full,
        "text_full_small": bytes([2]) + text_full,
        "text_tokens": text + b'{"model":"m","prompt":[1,504,3458,2.0],"max_tokens":null}',
        "text_token_batch": text + b'{"model":"m","prompt":[[1,2,3]],"logprobs":0}',
        "bad_types": chat + b'{"model":7,"messages":"hi","temperature":"1","n":1.5,"stop":[1]}',
        "bad_ranges": text + b'{"model":"m","prompt":"","max_tokens":0,"top_p":2,"n":99,"logprobs":9}',
        "refused": chat + (b'{"model":"m","messages":[{"role":"tool","content":"x"},{"role":"user",'
                           b'"content":[{"type":"image_url","image_url":{"url":"x"}}]}],'
                           b'"tools":[{"type":"function"}],"response_format":{"type":"json_object"}}'),
        "unknown_model": bytes([3]) + b'{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]}',
        "stream_options_alone": chat + b'{"model":"m","messages":[{"role":"user","content":"x"}],'
                                       b'"stream_options":{"include_usage":true}}',
        "malformed": chat + b'{"model":"m","messages":[{"role":"user","content":"x\xff"}],}',
        "deep": chat + b'{"model":"m","x":' + b"[" * 70 + b"]" * 70 + b"}",
        "numbers": text + b'{"model":"m","prompt":[1e2,-0,18446744073709551615,1e400],"seed":1e19}',
    }
    return {f"{k}.json": v for k, v in bodies.items()}


def http_request_seeds():
    get = b"GET /v1/models HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k\r\n\r\n"
    post = b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 13\r\n\r\n{\"prompt\":1}\n"
    chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nTrailer: x\r\n\r\n")
    streams = {
        "pipelined": get + post + chunked + get,
        "continue": b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        "http10": b"POST /x HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nokGET / HTTP/1.0\r\n\r\n",
        "cl_conflict": b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        "cl_same": b"POST /x HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\nab" + get,
        "cl_sign": b"POST /x HTTP/1.1\r\nContent-Length: +2\r\n\r\nab",
        "te_cl": b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        "te_gzip": b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        "te_last": b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        "ce_br": b"POST /x HTTP/1.1\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx",
        "bare_lf": b"GET / HTTP/1.1\nHost: a\n\n",
        "big_header": b"GET / HTTP/1.1\r\nX: " + b"a" * 600 + b"\r\n\r\n",
        "many_fields": b"GET / HTTP/1.1\r\n" + b"".join(b"F%d: v\r\n" % i for i in range(12)) + b"\r\n",
        "big_chunks": b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"80\r\n" + b"z" * 128 + b"\r\n" + b"80\r\n" + b"z" * 128 + b"\r\n0\r\n\r\n",
        "chunk_overflow": b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
        "fold": b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",
    }
    return {f"{k}.http": bytes([i * 37 % 256]) + v for i, (k, v) in enumerate(streams.items())}


def gbnf_seeds():
    grammars = {
        "chess": b'root ::= (\n  "1. " move " " move "\\n"\n  ([1-9] [0-9]? ". " move " " move "\\n")+\n)\n'
                 b'move ::= (pawn | nonpawn | castle) [+#]?\npawn ::= [a-h] [1-8]\n'
                 b'nonpawn ::= [NBKQR] [a-h] [1-8]\ncastle ::= "O-O" "-O"?\n',
        "json": b'root ::= value\nvalue ::= object | array | string | number | ("true" | "false" | "null") ws\n'
                b'object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws\n'
                b'array ::= "[" ws ( value ("," ws value)* )? "]" ws\n'
                b'string ::= "\\"" ( [^"\\\\\\x7F\\x00-\\x1F] | "\\\\" (["\\\\bfnrt] | "u" [0-9a-fA-F]{4}) )* "\\"" ws\n'
                b'number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9]+)? ws\n'
                b'ws ::= | " " | "\\n" [ \\t]{0,20}\n',
        "escapes": b'# every escape\r\nroot ::= "\\n\\r\\t\\\\\\"\\[\\]\\-\\x41\\u00e9\\U0001F600" [\\]\\[a-z\\-^] [^\\n] .\r\n',
        "quantifiers": b'root ::= "a"* "b"+ "c"? "d"{2} "e"{1,} "f"{0,3} "g"{,4} ("h" "i")?* x\nx ::= "y" |\n  "z"\n',
        "unicode": "root ::= [\u3041-\u309f]+ \"caf\u00e9\" [^\u00e9-\u00eb]\n".encode(),
        "tokens": b'root ::= <think> thinking </think> .*\nthinking ::= !<[1001]>*\n',
        "left_recursion": b'root ::= a "x"\na ::= b? root\nb ::= "q"\n',
        "undefined": b'root ::= missing\n',
        "deep": b'root ::= ' + b'(' * 300 + b'"a"' + b')' * 300 + b'\n',
        "counts": b'root ::= ("ab"{1000}){1000} "c"{99999}\n',
        "errors": b'root = "a\nb ::= [z-a] [] "\\q" {3,2} )\n',
    }
    return {f"{k}.gbnf": v for k, v in grammars.items()}


def regex_seeds():
    patterns = {
        "date": rb"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$",
        "email": rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
        "uuid": rb"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}",
        "classes": rb"[\w\s-]+[^\d\]\\][\x41-\x5A\u00e9]\S\W.",
        "groups": rb"(?<year>\d+)(?P<m>a|b|)(?:c*?d+?e??){1,3}?",
        "unicode": "caf\u00e9|[\u3041-\u309f]+|\\uD83D\\uDE00".encode(),
        "refused": rb"(a)\1(?=b)(?i)\bx*+\p{L}",
        "anchors": rb"a^b$c",
        "deep": b"(" * 300 + b"a" + b")" * 300,
        "counts": rb"((ab){1000}){1000}a{99999}",
        "odd_classes": rb"[]a][^][\d-z][[:alpha:]]",
    }
    return {f"{k}.re": v for k, v in patterns.items()}


def json_schema_seeds():
    obj = lambda props, req=(), extra=None: dict(
        {"type": "object", "properties": props, "required": list(req)},
        **({} if extra is None else {"additionalProperties": extra}))
    schemas = {
        "object": obj({"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
                      ["name"], False),
        "open_object": obj({"id": {"type": "integer"}}, ["id"], {"type": "string"}),
        "array": {"type": "array", "prefixItems": [{"type": "string"}, {"type": "boolean"}],
                  "items": {"type": "number"}, "minItems": 1, "maxItems": 4},
        "enum": {"enum": ["a", 1, None, True, [1, {"k": "v"}], "q\"\u0001"]},
        "bounds": {"type": "object", "properties": {
            "i": {"type": "integer", "minimum": -17, "exclusiveMaximum": 1234},
            "n": {"type": "number", "minimum": 0, "maximum": 1}}},
        "formats": {"type": "array", "items": {"anyOf": [
            {"type": "string", "format": f} for f in
            ("date", "time", "date-time", "uuid", "email", "uri", "ipv4", "ipv6", "duration")]}},
        "pattern": {"type": "string", "pattern": "^[a-z]+(-[0-9]{2})?$|x"},
        "recursive": {"$defs": {"n": obj({"v": {"type": "integer"},
                                          "kids": {"type": "array", "items": {"$ref": "#/$defs/n"}}},
                                         ["v"], False)}, "$ref": "#/$defs/n"},
        "combinators": {"allOf": [obj({"a": {"type": "integer"}}, ["a"]),
                                  {"properties": {"b": {"type": "string"}}}],
                        "anyOf": [{"required": ["a"]}, {"required": ["b"]}],
                        "oneOf": [{"type": "object"}]},
        "strict": obj({"x": {"type": ["string", "null"]}, "y": {"anyOf": [
            {"$ref": "#/$defs/p"}, {"type": "null"}]}}, ["x", "y"], False) | {
            "$defs": {"p": obj({"q": {"type": "boolean"}}, ["q"], False)}},
        "unsupported": {"type": "object", "patternProperties": {"^x": {}}, "not": {}},
        "bad_refs": {"anyOf": [{"$ref": "#"}, {"$ref": "http://x/y.json"}, {"$ref": "#/nope"}]},
    }
    options = {"strict": 1, "object": 2, "combinators": 4, "formats": 2}
    seeds = {f"{k}.json": bytes([options.get(k, 0)]) + json.dumps(v).encode()
             for k, v in schemas.items()}
    seeds["deep.json"] = b"\x00" + b'{"items":' * 80 + b"{}" + b"}" * 80
    return seeds


def imatrix_seeds():
    """Both formats of quant/imatrix_file.h: llama-imatrix's GGUF and its legacy .dat."""
    def f32s(*v):
        return struct.pack(f"<{len(v)}f", *v)

    def dat_entry(name, ncall, values):
        b = name.encode()
        return struct.pack("<i", len(b)) + b + struct.pack("<ii", ncall, len(values)) + f32s(*values)

    entries = dat_entry("blk.0.attn_q.weight", 3, [1.5, 0.0, 9.0]) + dat_entry("output.weight", 0, [2.0])
    meta = [("general.type", STRING, "imatrix"), ("imatrix.datasets", ARRAY, (STRING, ["calib.txt"])),
            ("imatrix.chunk_count", U32, 2), ("imatrix.chunk_size", U32, 4)]
    # gguf()'s data pattern reads as positive finite floats for a tensor's first 4 values: all load.
    tensors = [("blk.0.attn_q.weight.counts", [1], "F32"), ("blk.0.attn_q.weight.in_sum2", [4], "F32"),
               ("exps.counts", [1, 2], "F32"), ("exps.in_sum2", [2, 2], "F32")]
    return {
        "full.dat": struct.pack("<i", 2) + entries + struct.pack("<ii", 2, 9) + b"calib.txt",
        "no_trailer.dat": struct.pack("<i", 2) + entries,
        "imatrix.gguf": gguf(meta, tensors),
        "bare.gguf": gguf([], tensors[:2]),
    }


SEEDS = {"gguf": gguf_seeds, "tokenizer_spm": tokenizer_spm_seeds, "api_request": api_request_seeds,
         "http_request": http_request_seeds, "gbnf": gbnf_seeds, "regex": regex_seeds,
         "json_schema": json_schema_seeds, "imatrix": imatrix_seeds}


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: make_seeds.py TARGET OUTDIR")
    target = sys.argv[1].removeprefix("fuzz_")
    make = SEEDS.get(target)
    if make is None:
        return
    os.makedirs(sys.argv[2], exist_ok=True)
    for name, data in make().items():
        with open(os.path.join(sys.argv[2], name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
