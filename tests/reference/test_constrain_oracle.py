"""The engine's token masks for GBNF grammars, regexes and choices against xgrammar's, step by step.

xgrammar (a PyPI wheel, in .venv-grammar: scripts/venv_grammar.sh) is the independent oracle. For
each constraint below and each tokenizer (SmolLM2's byte-level BPE, Gemma 3's SentencePiece),
xgrammar_walks.py makes random walks with xgrammar and records its bitmask before every token and
after the last; `peregrine masks --dump-masks` computes ours along the same tokens; the two sets
of allowed tokens must be equal at every step. Both engines see the same special tokens: the
`eog` and `never` lists of the engine's first output line are passed to xgrammar (and checked
against the ones derived from the GGUF by grammar_engines.py).

JSON schemas are not compared mask for mask (the whitespace policies differ by design): the
compact xgrammar walks through a few schemas that validate with `jsonschema` must be accepted by
the engine to the end, complete; those that are not JSON must be refused.

Grammars are GBNF text both engines read: llama.cpp's grammars/*.gbnf (from the pinned llama.cpp
source, PEREGRINE_LLAMA_CPP_SRC) and the grammars written here; regexes go to both as they are.
Choices differ by design: the engine's catalogue allows each item's canonical tokenization only
(src/constrain/catalogue.h, as in STATIC), xgrammar any tokenization of an item's text (a GBNF
alternation, grammar_engines.choices_gbnf). So the walks through choices are the items' canonical
tokenizations (HF `tokenizers` / `sentencepiece`, in xgrammar_walks.py), the engine's masks must
equal the token trie's of those sequences, and be within xgrammar's. What xgrammar 0.2.9 does
not read, verified with it: an empty alternative (`ws ::= | " "`, in json.gbnf and json_arr.gbnf:
those two are given to both engines with the empty alternative written `""`, the same language)
and `.` for any character (no grammar here uses it).

Skipped with a message without .venv-grammar, a model, or build/bin/peregrine. Bounded (BUDGET):
3 walks of at most 40 tokens per constraint with SmolLM2, 2 of at most 20 with Gemma, whose
262,144-token masks cost xgrammar up to ~100 ms each in the broad grammars; most of the run is
reading Gemma's vocabulary with gguf-py (~15 s).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from grammar_engines import clear_tail, load_vocab, mask_from_b64, mask_to_ids
from xgrammar_walks import unpack_masks

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
GRAMMAR_PYTHON = REPO / ".venv-grammar/bin/python"
LLAMA_CPP_GRAMMARS = Path(os.environ.get(
    "PEREGRINE_LLAMA_CPP_SRC",
    Path.home() / ".cache/peregrine/llama.cpp-src/llama_cpp_python-0.3.36/vendor/llama.cpp")) / "grammars"

# ---------------------------------------------------------------------------------------------
# Constraints

GRAMMARS = {
    # character classes
    "identifier": r'root ::= [a-zA-Z_] [a-zA-Z0-9_]{0,11}',
    "negated-class": r'root ::= "\"" [^"\\\n]* "\""',
    "class-escapes": r'root ::= [\]\[\-^]+ "."',
    "hex-escapes": r'root ::= "\x41" "\u00e9" "\U0001F600" [\x00-\x1F]? "."',
    "control-bytes": r'root ::= [\x01-\x1F\x7F]{1,4} "|"',
    # UTF-8: two-, three- and four-byte ranges, ranges across encoding lengths, negated
    # multi-byte classes (partial UTF-8 tokens are allowed only where a character can complete)
    "utf8-latin": r'root ::= [À-ÿ]{1,4} "."',
    "utf8-cjk": r'root ::= [一-鿿ぁ-ゟ]+ ("。" | "!")',
    "utf8-emoji": r'root ::= [😀-🙏]{1,3} | "x"',
    "utf8-across-lengths": r'root ::= [\u007F-\u0800]+ ";"',
    "utf8-astral-edge": r'root ::= [\uFFF0-\U00010010]{1,2} "#"',
    "utf8-negated": r'root ::= [^a-zé]{1,5} "|"',
    "utf8-literals": r'root ::= ("naïve" | "日本語" | "🦀rust") ("," ("naïve" | "日本語" | "🦀rust"))*',
    # repetitions
    "date": r'root ::= [0-9]{4} "-" [0-9]{2} "-" [0-9]{2}',
    "at-least": r'root ::= "a"{2,} "b"',
    "up-to": r'root ::= ("ab" | "c"){0,3} "."',
    "nested-repeats": r'root ::= ([a-c]+ [0-9]?){1,3} "!"',
    # nullable rules
    "nullable": 'root ::= a b c "!"\na ::= "x"?\nb ::= ("y" | "")\nc ::= ("z" a)*',
    "all-optional": r'root ::= "x"? "y"? "z"?',
    # recursion
    "balanced": 'root ::= expr\nexpr ::= ("(" expr ")" | "[" expr "]")*',
    "nested-list": 'root ::= item ("," item)*\nitem ::= [a-z]+ | "[" root "]"',
    "expression": ('root ::= expr\nexpr ::= term (("+" | "-") term)*\n'
                   'term ::= factor (("*" | "/") factor)*\nfactor ::= [0-9]+ | "(" expr ")" | "-" factor'),
    # alternation, shared prefixes, literals that cross token boundaries
    "shared-prefixes": r'root ::= "hello" | "help" | "helicopter" | "hello world" | "h"',
    "key-value": r'root ::= "{" "\"" "key" "\"" ":" " "? [0-9]+ "}"',
    "whitespace": r'root ::= "a" [ \t\n]* "b" [ \t\n]* "c"',
    "sentence": r'root ::= "The quick brown fox jumps over the lazy dog" ("." | "!")',
    "yes-no": 'root ::= answer "\\n"\nanswer ::= "yes" | "no" | "maybe"  # comment\n# a comment line\n',
    # the text of special tokens: spelled by text tokens only, never by the special token
    "special-text": r'root ::= "<|im_end|>" | "<end_of_turn>" | "<eos>" | "ok"',
}

REGEXES = {
    "re-phone": r"[0-9]{3}-[0-9]{4}",
    "re-star": r"(a|b)*c",
    "re-number": r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?",
    "re-words": r"[A-Z][a-z]+( [A-Z][a-z]+)*",
    "re-repeat-group": r"(ab|cd){2,4}",
    "re-line": r"[^\n]{0,20}\n",
    "re-quoted": r'"([^"\\]|\\["\\nt])*"',
    "re-literals": r"(true|false|null)",
    "re-uuid": r"[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}",
    "re-utf8": r"é+|ü{2}|[α-ω]+",
    "re-nullable": r"x?y?z?",
}

CHOICES = {
    "choices-fruit": ["apple", "apricot", "banana", "band", "b"],
    "choices-utf8": ["日本", "日本語", "naïve", "🦀"],
}

SCHEMAS = {
    "schema-person": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0},
        "email": {"type": "string", "format": "email"}}, "required": ["name", "age"],
        "additionalProperties": False},
    "schema-enum-array": {"type": "array", "items": {"enum": ["red", "green", "blue", 7, None]},
                          "minItems": 1, "maxItems": 4},
    "schema-nested": {"type": "object", "properties": {
        "id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "point": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}},
                  "required": ["x", "y"], "additionalProperties": False}},
        "required": ["id", "point"], "additionalProperties": False},
    "schema-anyof": {"anyOf": [{"type": "integer"}, {"type": "boolean"},
                               {"type": "object", "properties": {"k": {"const": "v"}}, "required": ["k"],
                                "additionalProperties": False}]},
    "schema-recursive": {"$defs": {"node": {"type": "object", "properties": {
        "v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
        "required": ["v"], "additionalProperties": False}}, "$ref": "#/$defs/node"},
}


def llama_cpp_grammars() -> dict[str, str]:
    """llama.cpp's example grammars, the empty alternative rewritten as "" (see the module doc)."""
    out = {}
    if LLAMA_CPP_GRAMMARS.is_dir():
        for f in sorted(LLAMA_CPP_GRAMMARS.glob("*.gbnf")):
            text = f.read_text()
            out[f"llama.cpp-{f.name}"] = text.replace("::= |", '::= "" |')
    return out


def constraints() -> list[dict]:
    out = [{"id": k, "grammar": g} for k, g in {**llama_cpp_grammars(), **GRAMMARS}.items()]
    out += [{"id": k, "regex": r} for k, r in REGEXES.items()]
    out += [{"id": k, "choices": c} for k, c in CHOICES.items()]
    out += [{"id": k, "json_schema": s} for k, s in SCHEMAS.items()]
    return out


def describe(c: dict) -> str:
    for k in ("grammar", "regex", "choices", "json_schema"):
        if k in c:
            text = c[k] if isinstance(c[k], str) else json.dumps(c[k])
            return f"{k} {text[:300]!r}"
    return "?"


# Walk budget per tokenizer: Gemma's masks cost xgrammar 10-100x more than SmolLM2's.
BUDGET = {"smollm2": {"walks": 3, "max_steps": 40}, "gemma3": {"walks": 2, "max_steps": 20}}

# ---------------------------------------------------------------------------------------------
# One run of both engines per tokenizer


@pytest.fixture(scope="module")
def grammar_python() -> Path:
    if not GRAMMAR_PYTHON.is_file():
        pytest.skip(f"{GRAMMAR_PYTHON} not found (run scripts/venv_grammar.sh): xgrammar is the oracle")
    return GRAMMAR_PYTHON


class Run:
    """Both engines over every constraint with one tokenizer."""

    def __init__(self, name: str, model: Path, peregrine: Path, python: Path, tmp: Path):
        self.name, self.model = name, model
        empty = tmp / "empty.jsonl"
        empty.write_text("")
        r = _run([peregrine, "masks", "-m", model, "--input", empty], 120)
        self.header = json.loads(r.stdout.splitlines()[0])
        (tmp / "header.json").write_text(json.dumps(self.header))

        cs = constraints()
        self.constraints = {c["id"]: c for c in cs}
        (tmp / "constraints.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cs))
        b = BUDGET[name]
        _run([python, HERE / "xgrammar_walks.py", "-m", model, "--input", tmp / "constraints.jsonl",
              "-o", tmp / "walks.json", "--special", tmp / "header.json", "--walks", b["walks"],
              "--max-steps", b["max_steps"]], 600)
        self.walks = json.loads((tmp / "walks.json").read_text())
        self.x = {c["id"]: c for c in self.walks["constraints"]}

        lines = []
        for c in cs:
            xc = self.x[c["id"]]
            if xc["error"] is None:
                lines.append(json.dumps({**c, "traces": [w["tokens"] for w in xc["walks"]]}) + "\n")
        (tmp / "input.jsonl").write_text("".join(lines))
        r = _run([peregrine, "masks", "-m", model, "--input", tmp / "input.jsonl", "--dump-masks"], 600)
        out = r.stdout.splitlines()
        assert json.loads(out[0]) == self.header, "the first line of `peregrine masks` changed between runs"
        self.ours = {}
        for line in out[1:]:
            rec = json.loads(line)
            self.ours[rec["id"]] = rec
        self._vocab = None

    def vocab(self):
        """The vocabulary, for messages only (parsing Gemma's takes ~15 s)."""
        if self._vocab is None:
            self._vocab = load_vocab(self.model, eog=self.header["eog"], never=self.header["never"])
        return self._vocab


def _run(cmd, timeout: float) -> subprocess.CompletedProcess:
    cmd = [str(c) for c in cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {r.returncode}\nstderr:\n{r.stderr[-4000:]}")
    return r


_RUNS: dict[str, Run | str] = {}  # a Run, or why making it failed (not retried for every test)


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def run(request, grammar_python, peregrine_bin, tmp_path_factory) -> Run:
    name = request.param
    model = request.getfixturevalue("model_path" if name == "smollm2" else "gemma_path")
    if name not in _RUNS:
        try:
            _RUNS[name] = Run(name, model, peregrine_bin, grammar_python, tmp_path_factory.mktemp(name))
        except (pytest.fail.Exception, AssertionError, subprocess.TimeoutExpired, json.JSONDecodeError,
                KeyError, IndexError) as e:
            _RUNS[name] = f"{type(e).__name__}: {e}"
    if isinstance(_RUNS[name], str):
        pytest.fail(f"{name}: running the engines failed: {_RUNS[name]}", pytrace=False)
    return _RUNS[name]


# ---------------------------------------------------------------------------------------------
# Tests


def test_special_tokens_match_gguf(run):
    """The engine's eog / never lists equal the ones derived from the GGUF here."""
    d = run.walks["defaults"]
    assert run.header["n_vocab"] == run.walks["n_vocab"], (run.header["n_vocab"], run.walks["n_vocab"])
    assert run.header["eog"] == d["eog"], f"{run.name}: eog {run.header['eog']} vs GGUF-derived {d['eog']}"
    ours, theirs = set(run.header["never"]), set(d["never"])
    assert ours == theirs, (f"{run.name}: never differs: only the engine's {sorted(ours - theirs)[:10]}, "
                            f"only the GGUF-derived {sorted(theirs - ours)[:10]}")


def test_token_bytes_match_xgrammar_decoding(run):
    """grammar_engines' bytes of each token equal xgrammar's own decoding of the GGUF texts
    (GPT-2 byte-to-unicode / SentencePiece "▁" and <0xHH>)."""
    bad = run.walks["decoding_mismatches"]
    assert not bad, f"{run.name}: tokens decoded differently (id, text, ours, xgrammar's): {bad[:5]}"


MASKED = [c["id"] for c in constraints() if "json_schema" not in c]
SCHEMA_IDS = [c["id"] for c in constraints() if "json_schema" in c]


@pytest.mark.parametrize("cid", MASKED)
def test_masks_equal_xgrammar(run, cid):
    c, x = run.constraints[cid], run.x[cid]
    if x["error"] is not None:
        pytest.fail(f"xgrammar does not read {cid} ({describe(c)}): {x['error']} "
                    "(take it out of the list, or rewrite it in text both read)")
    ours = run.ours.get(cid)
    assert ours is not None, f"{run.name}: `peregrine masks` printed no line for {cid}"
    assert ours["error"] is None, f"{run.name}: {cid} ({describe(c)}): the engine says {ours['error']}"
    assert len(ours["traces"]) == len(x["walks"]), (len(ours["traces"]), len(x["walks"]))
    n_vocab, n_words = run.walks["n_vocab"], (run.walks["n_vocab"] + 31) // 32
    for k, (w, t) in enumerate(zip(x["walks"], ours["traces"])):
        xm = unpack_masks(w["masks"], n_words)
        om = [clear_tail(mask_from_b64(s), n_vocab) for s in t["masks"]]
        text = base64.b64decode(w["text"])
        if "expected" in w:
            # choices: the token trie of the items' canonical tokenizations, which allows a subset
            # of what xgrammar allows (any tokenization of an item's text)
            em = unpack_masks(w["expected"], n_words)
            for step in range(min(len(em), len(om))):
                if not np.array_equal(em[step], om[step]):
                    pytest.fail(_mismatch(run, cid, c, k, step, w, text, om[step], em[step], "the token trie"))
                if np.any(om[step] & ~xm[step]):
                    pytest.fail(_mismatch(run, cid, c, k, step, w, text, om[step], xm[step]))
            xm = em
        for step in range(min(len(xm), len(om))):
            if not np.array_equal(xm[step], om[step]):
                pytest.fail(_mismatch(run, cid, c, k, step, w, text, om[step], xm[step]))
        tokens = w["tokens"]
        assert len(om) == len(xm) and t["rejected_at"] == -1 and t["accepted"] == len(tokens), (
            f"{run.name}: {cid} walk {k}: the engine accepted {t['accepted']} of {len(tokens)} tokens "
            f"(rejected_at {t['rejected_at']}, {len(om)} masks) though its masks allowed each; "
            f"walk text {text!r}")
        assert t["complete"] == w["complete"], (
            f"{run.name}: {cid} walk {k}: complete {t['complete']}, xgrammar {w['complete']}, after {text!r}")


def _mismatch(run, cid, c, k, step, w, text, ours, theirs, oracle="xgrammar") -> str:
    v = run.vocab()
    o, x = set(mask_to_ids(ours, v.n_vocab).tolist()), set(mask_to_ids(theirs, v.n_vocab).tolist())
    prefix = text[:w["ends"][step - 1]] if step else b""
    only_o, only_x = sorted(o - x), sorted(x - o)
    return (f"{run.name}: {cid} ({describe(c)}), walk {k}, step {step}: after {prefix!r} "
            f"the engine allows {len(o)} tokens, {oracle} {len(x)}; "
            f"only the engine: {len(only_o)} {[v.show(t) for t in only_o[:6]]}; "
            f"only {oracle}: {len(only_x)} {[v.show(t) for t in only_x[:6]]}; "
            f"walk tokens {w['tokens'][:step + 1]}")


@pytest.mark.parametrize("cid", SCHEMA_IDS)
def test_schema_walks_valid_and_accepted(run, cid):
    """xgrammar's compact walks that are valid JSON under the schema: accepted to the end, complete
    where xgrammar's are. Walks that are not JSON (xgrammar 0.2.9 lets raw control characters into
    strings): refused. Walks that are JSON but fail the schema (a format xgrammar reads more
    loosely than `jsonschema`, say) prove nothing either way and are passed over."""
    import jsonschema

    c, x = run.constraints[cid], run.x[cid]
    assert x["error"] is None, f"xgrammar cannot compile {cid}: {x['error']}"
    ours = run.ours.get(cid)
    assert ours is not None, f"{run.name}: `peregrine masks` printed no line for {cid}"
    assert ours["error"] is None, f"{run.name}: {cid}: the engine says {ours['error']}"
    assert len(ours["traces"]) == len(x["walks"]), (len(ours["traces"]), len(x["walks"]))
    schema = c["json_schema"]
    validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
    for k, (w, t) in enumerate(zip(x["walks"], ours["traces"])):
        text = base64.b64decode(w["text"])
        if w["complete"]:
            try:
                value = json.loads(text)
            except ValueError:
                assert t["rejected_at"] >= 0 or not t["complete"], (
                    f"{run.name}: {cid} walk {k}: the engine accepts {text!r}, which is not JSON")
                continue
            if not validator.is_valid(value):
                continue
        assert t["rejected_at"] == -1, (
            f"{run.name}: {cid} walk {k}: the engine refused token {t['rejected_at']} of compact "
            f"JSON {text!r} ({describe(c)})")
        assert t["complete"] == w["complete"], (
            f"{run.name}: {cid} walk {k}: complete {t['complete']}, xgrammar {w['complete']}, after {text!r}")
