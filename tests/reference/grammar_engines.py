"""xgrammar and llguidance, built on a GGUF file's vocabulary, as independent constraint engines.

Both are the oracles (and the competitors in bench/mask_bench.py) of the engine's constrained
decoding: same tokenizer, same constraint, same token sequence, and the allowed-token bitmask of
each step compared. Neither is told anything about the vocabulary but what the GGUF says:

  - each token's bytes, decoded on their own: byte-level BPE (tokenizer.ggml.model "gpt2") maps
    each character back through GPT-2's byte-to-unicode table; SentencePiece ("llama") reads "▁"
    as a space and <0xHH> as one byte; control and user-defined tokens of a BPE vocabulary hold
    their literal text (the engine's src/tokenizer does the same);
  - `eog`, the end-of-generation tokens: allowed only where the constraint is complete;
  - `never`, tokens that never appear in constrained text (control, unknown and unused tokens and
    tokens with no bytes), given to xgrammar as empty strings (which it never allows) and to
    llguidance as special tokens (their bytes behind its 0xFF marker, which no grammar matches).

The defaults for `eog` and `never` follow the engine's rules (src/tokenizer/tokenizer.cpp,
src/constrain/token_vocab.cpp: eos, eot (or the first of <|im_end|>, <|eot_id|>, <end_of_turn>),
and <|im_end|> when it is a control token); the tests pass the engine's own lists, from the first
line of `peregrine masks`, so that the comparison is of the constraint engines alone.

Bitmasks are numpy uint32 arrays, [ceil(n_vocab / 32)]: bit t % 32 of word t / 32 set = token t
allowed (xgrammar's layout, and the engine's). Imports of xgrammar and llguidance happen on first
use: the main test venv reads vocabularies (gguf, numpy) without them; .venv-grammar
(scripts/venv_grammar.sh) has both.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"


# ---------------------------------------------------------------------------------------------
# Vocabulary


@lru_cache(maxsize=1)
def gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's bytes_to_unicode, inverted: each of the 256 characters of byte-level spelling to its byte."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    chars = kept[:]
    n = 0
    for b in range(256):
        if b not in kept:
            kept.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(kept, chars)}


def decode_token(text: str, ty: int, model: str) -> bytes:
    """The bytes one token stands for, from its GGUF text and type alone."""
    if model == "gpt2":
        if ty in (CONTROL, USER_DEFINED):
            return text.encode()
        dec = gpt2_byte_decoder()
        try:
            return bytes(dec[c] for c in text)
        except KeyError:  # not byte-level spelling: taken literally (no such token in our models)
            return text.encode()
    if model == "llama":
        if ty == BYTE:
            return bytes([int(text[3:5], 16)])
        if ty in (CONTROL, UNKNOWN):
            return text.encode()
        return text.replace(SPACE, " ").encode()
    raise ValueError(f"tokenizer.ggml.model {model!r}: only 'gpt2' and 'llama' are supported")


@dataclass
class Vocab:
    """A GGUF vocabulary as the constraint engines see it."""

    path: Path
    model: str                     # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    texts: list[str]               # [n_vocab] the GGUF's token texts
    types: list[int]               # [n_vocab] the GGUF's token types
    token_bytes: list[bytes]       # [n_vocab] what each token stands for (its literal text for special ones)
    eog: list[int]                 # end-of-generation tokens
    never: list[int]               # tokens never allowed in constrained text (disjoint from eog)
    lens: np.ndarray = field(repr=False, default=None)  # [n_vocab] int32 byte length, 0 for eog/never
    reader: object = field(repr=False, default=None)    # the gguf.GGUFReader (parsing it takes seconds)
    default_eog: list[int] = field(repr=False, default_factory=list)    # the engine's rules, from the GGUF
    default_never: list[int] = field(repr=False, default_factory=list)

    @property
    def n_vocab(self) -> int:
        return len(self.texts)

    @property
    def n_words(self) -> int:
        return (self.n_vocab + 31) // 32

    @property
    def name(self) -> str:
        return self.path.stem

    def text_bytes(self, token: int) -> bytes:
        """The bytes a token adds to constrained text (b"" for eog and never tokens)."""
        return b"" if self.lens[token] == 0 else self.token_bytes[token]

    def decode(self, tokens) -> bytes:
        return b"".join(self.text_bytes(t) for t in tokens)

    def with_special(self, eog: list[int], never: list[int]) -> "Vocab":
        """The vocabulary with these end-of-generation and never-allowed tokens (never minus eog)."""
        eog = [int(t) for t in eog]
        never = sorted(set(int(t) for t in never) - set(eog))
        lens = np.array([len(b) for b in self.token_bytes], dtype=np.int32)
        lens[eog] = 0
        lens[never] = 0
        v = Vocab(self.path, self.model, self.texts, self.types, self.token_bytes, eog, never, lens, self.reader)
        v.default_eog, v.default_never = self.default_eog, self.default_never
        return v

    def show(self, token: int) -> str:
        """A token for a message: id, bytes and what it is."""
        kind = " eog" if token in self.eog else " never" if self.lens[token] == 0 else ""
        return f"{token} {self.token_bytes[token]!r}{kind}"


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def default_eog(texts: list[str], types: list[int], reader) -> list[int]:
    """The engine's end-of-generation tokens (src/tokenizer/tokenizer.cpp init_special_tokens)."""
    n = len(texts)
    index = {t: i for i, t in enumerate(texts)}

    def tid(key):
        v = _field(reader, key)
        return int(v) if v is not None and 0 <= int(v) < n else -1

    eos, eot = tid("tokenizer.ggml.eos_token_id"), tid("tokenizer.ggml.eot_token_id")
    if eot < 0:
        for name in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>"):
            if name in index:
                eot = index[name]
                break
    im_end = index.get("<|im_end|>", -1)
    chatml = im_end >= 0 and types[im_end] == CONTROL
    out: list[int] = []
    for t in (eos, eot, im_end if chatml else -1):
        if t >= 0 and t not in out:
            out.append(t)
    return out


def default_never(token_bytes: list[bytes], types: list[int], eog: list[int]) -> list[int]:
    """The engine's never-allowed tokens (src/constrain/token_vocab.cpp): control, unknown and
    unused tokens and tokens with no bytes, end-of-generation tokens excepted."""
    eog_set = set(eog)
    return [i for i, (b, ty) in enumerate(zip(token_bytes, types))
            if i not in eog_set and (not b or ty in (CONTROL, UNKNOWN, UNUSED))]


def load_vocab(path, eog: list[int] | None = None, never: list[int] | None = None) -> Vocab:
    """The vocabulary of a GGUF file; eog / never default to the engine's rules (see the module doc)."""
    import gguf

    path = Path(path)
    reader = gguf.GGUFReader(str(path))
    model = _field(reader, "tokenizer.ggml.model")
    texts = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type") or [NORMAL] * len(texts)
    types = [int(t) for t in types]
    token_bytes = [decode_token(t, ty, model) for t, ty in zip(texts, types)]
    v = Vocab(path, model, texts, types, token_bytes, [], [], None, reader)
    v.default_eog = default_eog(texts, types, reader)
    v.default_never = default_never(token_bytes, types, v.default_eog)
    return v.with_special(v.default_eog if eog is None else eog, v.default_never if never is None else never)


def canonical_encoder(vocab: Vocab):
    """encode(text) -> token ids: the model's own tokenization, from independent libraries
    (tests/reference/gguf_hf_tokenizer.py: HF `tokenizers` for byte-level BPE;
    gguf_spm_model.py: `sentencepiece` for SentencePiece). Special-token text is not parsed."""
    if vocab.model == "gpt2":
        from gguf_hf_tokenizer import build_tokenizer

        tok = build_tokenizer(vocab.reader)
        return lambda text: tok.encode(text, add_special_tokens=False).ids
    from gguf_spm_model import build_processor

    sp = build_processor(vocab.reader, control_as_user_defined=False)
    return lambda text: sp.encode(text)


# ---------------------------------------------------------------------------------------------
# Bitmasks


def mask_to_ids(mask: np.ndarray, n_vocab: int) -> np.ndarray:
    """Allowed token ids of a bitmask (bits past n_vocab ignored)."""
    bits = np.unpackbits(np.ascontiguousarray(mask, dtype="<u4").view(np.uint8), bitorder="little")
    return np.flatnonzero(bits[:n_vocab])


def clear_tail(mask: np.ndarray, n_vocab: int) -> np.ndarray:
    """The mask with the bits of ids >= n_vocab (padding of the last word) cleared."""
    m = mask.astype(np.uint32, copy=True)
    if n_vocab % 32:
        m[-1] &= np.uint32((1 << (n_vocab % 32)) - 1)
    return m


def mask_from_b64(s: str) -> np.ndarray:
    """A mask as `peregrine masks --dump-masks` writes it: base64 of little-endian uint32 words."""
    return np.frombuffer(base64.b64decode(s), dtype="<u4").copy()


# ---------------------------------------------------------------------------------------------
# Constraints: {"json_schema": {...}} | {"grammar": GBNF} | {"regex": RE} | {"choices": [...]} |
# {"json_object": true}, the input lines of `peregrine masks` without id and traces.


def constraint_kind(c: dict) -> str:
    kinds = [k for k in ("json_schema", "grammar", "regex", "choices", "json_object") if k in c]
    if len(kinds) != 1:
        raise ValueError("a constraint has exactly one of json_schema, grammar, regex, choices, "
                         f"json_object: {sorted(c)}")
    return kinds[0]


def _gbnf_string(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def choices_gbnf(choices: list[str]) -> str:
    """GBNF for 'exactly one of these strings'."""
    return "root ::= " + " | ".join(_gbnf_string(c) for c in choices) + "\n"


# ---------------------------------------------------------------------------------------------
# Engines. Each: compile(constraint) -> compiled (raises on an error); matcher(compiled) -> m in
# the start state, with a preallocated mask: m.fill() -> the mask (uint32 words, the matcher's own
# buffer, bits past n_vocab not cleared), m.fill_raw() (the same, nothing returned: the timed call),
# m.allows(token) (in the last mask), m.accept(token) -> bool, m.rollback(n), m.is_complete().


class XGrammarEngine:
    """xgrammar on a Vocab: RAW vocabulary of decoded bytes, eog as stop tokens, never tokens empty."""

    name = "xgrammar"

    def __init__(self, vocab: Vocab, *, json_separators: tuple[str, str] | None = None,
                 any_whitespace: bool = True, max_threads: int = 1):
        # tvm_ffi (xgrammar's binding layer) otherwise tries, and with Debian's CPU torch fails, to
        # JIT-compile a torch DLPack extension on every import; transformers (imported by
        # xgrammar for type names only) warns that Debian's torch 1.13 is too old for its models.
        os.environ.setdefault("TVM_FFI_DISABLE_TORCH_C_DLPACK", "1")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        import xgrammar as xgr

        self.xgr = xgr
        self.vocab = vocab
        encoded = [vocab.text_bytes(t) for t in range(vocab.n_vocab)]
        self.info = xgr.TokenizerInfo(encoded, xgr.VocabType.RAW, vocab_size=vocab.n_vocab,
                                      stop_token_ids=list(vocab.eog), add_prefix_space=False)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=max_threads, cache_enabled=False)
        self.json_separators = json_separators
        self.any_whitespace = any_whitespace

    def compile(self, c: dict):
        kind = constraint_kind(c)
        if kind == "grammar":
            return self.compiler.compile_grammar(c["grammar"], root_rule_name="root")
        if kind == "regex":
            return self.compiler.compile_regex(c["regex"])
        if kind == "choices":
            return self.compiler.compile_grammar(choices_gbnf(c["choices"]), root_rule_name="root")
        if kind == "json_object":
            return self.compiler.compile_json_schema('{"type": "object"}', any_whitespace=self.any_whitespace,
                                                     separators=self.json_separators, strict_mode=False)
        schema = c["json_schema"]
        return self.compiler.compile_json_schema(schema if isinstance(schema, str) else json.dumps(schema),
                                                 any_whitespace=self.any_whitespace,
                                                 separators=self.json_separators, strict_mode=False)

    def matcher(self, compiled) -> "XGrammarMatcher":
        return XGrammarMatcher(self, compiled)

    def decoding_mismatches(self) -> list[tuple[int, str, bytes, bytes]]:
        """Tokens (normal, byte, user-defined) whose bytes here differ from xgrammar's own decoding
        of the GGUF texts (VocabType.BYTE_LEVEL for byte-level BPE, BYTE_FALLBACK for
        SentencePiece): (id, GGUF text, ours, xgrammar's)."""
        xgr, v = self.xgr, self.vocab
        kind = xgr.VocabType.BYTE_LEVEL if v.model == "gpt2" else xgr.VocabType.BYTE_FALLBACK
        theirs = xgr.TokenizerInfo(v.texts, kind, vocab_size=v.n_vocab, stop_token_ids=list(v.eog)).decoded_vocab
        return [(t, v.texts[t], v.token_bytes[t], theirs[t]) for t in range(v.n_vocab)
                if v.types[t] in (NORMAL, BYTE, USER_DEFINED) and theirs[t] != v.token_bytes[t]]

    def with_json(self, *, separators: tuple[str, str] | None, any_whitespace: bool) -> "XGrammarEngine":
        """The same engine (tokenizer info and compiler shared) with other JSON Schema options."""
        import copy

        e = copy.copy(self)
        e.json_separators, e.any_whitespace = separators, any_whitespace
        return e


class XGrammarMatcher:
    def __init__(self, eng: XGrammarEngine, compiled):
        import tvm_ffi

        self.m = eng.xgr.GrammarMatcher(compiled, terminate_without_stop_token=False)
        # xgrammar writes into a torch int32 tensor; numpy shares its memory. Converted once to
        # tvm_ffi's tensor (xgrammar's binding layer), a call skips the DLPack conversion of a
        # torch tensor (~0.8 us a call).
        self.t = eng.xgr.allocate_token_bitmask(1, eng.vocab.n_vocab)
        self.view = self.t.numpy().view(np.uint32)[0]
        self._ffi_mask = tvm_ffi.from_dlpack(self.t)
        self._fill = self.m._handle.fill_next_token_bitmask

    def fill(self) -> np.ndarray:
        self.fill_raw()
        return self.view

    def fill_raw(self) -> None:
        """The mask into the matcher's own buffer (self.view): the call the benchmark times."""
        self._fill(self._ffi_mask, 0, False)

    def allows(self, token: int) -> bool:
        return bool(self.view[token >> 5] >> (token & 31) & 1)

    def accept(self, token: int) -> bool:
        return self.m.accept_token(int(token))

    def rollback(self, n: int = 1) -> None:
        self.m.rollback(n)

    def is_complete(self) -> bool:
        return self.m.is_completed()


class _LLTokenizerSource:
    """What llguidance's TokenizerWrapper reads: token bytes, special ids, eos, and a tokenize callable.

    llguidance takes the tokenizer it is given as canonical: where the grammar forces bytes, its
    mask allows only the tokens of their canonical tokenization (a trace that spells forced text
    with other tokens is refused). So it gets the model's own tokenization (canonical_encoder) when
    the caller has one, else a greedy longest match over the token bytes.
    """

    def __init__(self, vocab: Vocab, encode=None):
        self.vocab = vocab
        self.eos_token_id = vocab.eog[0] if vocab.eog else vocab.never[0]
        self.bos_token_id = None
        self.tokens = [vocab.token_bytes[t] or b"<empty%d>" % t for t in range(vocab.n_vocab)]
        self.special_token_ids = sorted(set(vocab.never) | set(vocab.eog))
        self._encode = encode
        self._index = {}
        for t in range(vocab.n_vocab):
            b = vocab.text_bytes(t)
            if b and b not in self._index:
                self._index[b] = t
        self._maxlen = int(vocab.lens.max())

    def __call__(self, s) -> list[int]:
        if self._encode is not None:
            return list(self._encode(s.decode("utf-8", errors="replace") if isinstance(s, bytes) else s))
        b = s if isinstance(s, bytes) else s.encode()
        out, i = [], 0
        while i < len(b):
            for n in range(min(self._maxlen, len(b) - i), 0, -1):
                t = self._index.get(b[i:i + n])
                if t is not None:
                    out.append(t)
                    i += n
                    break
            else:
                i += 1  # a byte no token spells: skipped (never reached with byte-complete vocabularies)
        return out


class LLGuidanceEngine:
    """llguidance on a Vocab: eog as its eos tokens, eog and never tokens special."""

    name = "llguidance"

    def __init__(self, vocab: Vocab, *, encode=None, json_options: dict | None = None):
        import llguidance as llg

        self.llg = llg
        self.vocab = vocab
        wrapper = llg.TokenizerWrapper(_LLTokenizerSource(vocab, encode))
        self.tok = llg.LLTokenizer(wrapper, n_vocab=vocab.n_vocab, eos_token=list(vocab.eog) or None)
        self.json_options = json_options

    def grammar_text(self, c: dict) -> str:
        llg = self.llg
        kind = constraint_kind(c)
        if kind == "grammar":
            return llg.grammar_from("gbnf", c["grammar"])
        if kind == "regex":
            return llg.LLMatcher.grammar_from_regex(c["regex"])
        if kind == "choices":
            return llg.LLMatcher.grammar_from_lark("start: " + " | ".join(json.dumps(x) for x in c["choices"]))
        schema = {"type": "object"} if kind == "json_object" else c["json_schema"]
        return llg.LLMatcher.grammar_from_json_schema(schema if isinstance(schema, str) else json.dumps(schema),
                                                      overrides=self.json_options)

    def with_json(self, options: dict | None) -> "LLGuidanceEngine":
        """The same engine (tokenizer shared) with other JSON Schema options (llguidance's
        JsonCompileOptions: whitespace_flexible, item_separator, key_separator, ...)."""
        import copy

        e = copy.copy(self)
        e.json_options = options
        return e

    def compile(self, c: dict):
        """An LLMatcher in its start state (llguidance compiles the grammar when one is made; the
        lexer's states are built lazily, as masks need them); matchers are copies of it."""
        m = self.llg.LLMatcher(self.tok, self.grammar_text(c), log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def matcher(self, compiled) -> "LLGuidanceMatcher":
        return LLGuidanceMatcher(self, compiled.deep_copy())


class LLGuidanceMatcher:
    def __init__(self, eng: LLGuidanceEngine, m):
        self.m = m
        self.buf = np.zeros(eng.vocab.n_words, dtype=np.uint32)
        self.ptr = self.buf.ctypes.data
        self.nbytes = self.buf.nbytes

    def fill(self) -> np.ndarray:
        self.fill_raw()
        if self.m.is_error():
            raise ValueError(self.m.get_error())
        return self.buf

    def fill_raw(self) -> None:
        """The mask into the matcher's own buffer (self.buf): the call the benchmark times."""
        self.m.unsafe_compute_mask_ptr(self.ptr, self.nbytes)

    def allows(self, token: int) -> bool:
        return bool(self.buf[token >> 5] >> (token & 31) & 1)

    def accept(self, token: int) -> bool:
        return self.m.consume_token(int(token))

    def rollback(self, n: int = 1) -> None:
        if not self.m.rollback(n):
            raise ValueError(self.m.get_error())

    def is_complete(self) -> bool:
        return self.m.is_accepting()


# ---------------------------------------------------------------------------------------------
# Random walks


# Bytes that close structure, then bytes that separate it, are preferred as a walk grows, and bytes
# that open structure avoided, so that walks end.
CLOSERS = frozenset(b'}])"\'>')
SEPARATORS = frozenset(b',;')
OPENERS = frozenset(b'{[(<')


@dataclass
class Walk:
    tokens: list[int]
    masks: list[np.ndarray]        # [len(tokens) + 1] the mask before each token and after the last
    complete: bool                 # an end-of-generation token is allowed after the last token
    mask_us: list[float] = field(default_factory=list)  # time of each fill, microseconds


class Walker:
    """Random walks through a constraint: at each step a random allowed token, biased so walks end.

    A walk draws a length target in [1, target_max or max_steps]. Before it, a token is drawn with
    weight 1 / its byte length (short tokens keep a walk in small steps through the grammar), and
    the walk ends with probability p_stop at each step where an end-of-generation token is allowed.
    From the target on, it ends as soon as one is allowed, and otherwise looks one token ahead
    among the allowed single bytes (all closers and separators, and up to `lookahead` others) and
    takes, in this order of preference: one after which an end-of-generation token is allowed;
    one it has not taken 3 times in its last 8 steps (a quote inside a string is no way out);
    one after which the allowed set changes (a way out of a loop: ':' after a URI's scheme letters);
    a closer (CLOSERS), a separator, anything but an opener (OPENERS), an opener; the one leaving
    the fewest tokens allowed. max_steps caps every walk (it then ends incomplete).
    """

    def __init__(self, vocab: Vocab, *, max_steps: int = 64, p_stop: float = 0.05, lookahead: int = 6,
                 target_max: int | None = None):
        self.vocab = vocab
        self.max_steps = max_steps
        self.target_max = target_max
        self.p_stop = p_stop
        self.lookahead = lookahead
        self.is_eog = np.zeros(vocab.n_vocab, dtype=bool)
        self.is_eog[vocab.eog] = True
        self.single = vocab.lens == 1
        first = np.array([b[0] if b else 0 for b in vocab.token_bytes], dtype=np.uint8)
        # 0 closer, 1 separator, 2 anything else, 3 opener
        self.tier = np.full(vocab.n_vocab, 2, dtype=np.int8)
        self.tier[self.single & np.isin(first, np.frombuffer(bytes(sorted(OPENERS)), dtype=np.uint8))] = 3
        self.tier[self.single & np.isin(first, np.frombuffer(bytes(sorted(SEPARATORS)), dtype=np.uint8))] = 1
        self.tier[self.single & np.isin(first, np.frombuffer(bytes(sorted(CLOSERS)), dtype=np.uint8))] = 0

    def choose_to_end(self, matcher, tokens: list[int], mask: np.ndarray, text_ids: np.ndarray,
                      rng: np.random.Generator) -> int:
        single = text_ids[self.single[text_ids]]
        if len(single) == 0:
            return int(_draw(text_ids, 1.0 / self.vocab.lens[text_ids].astype(np.float64) ** 2, rng))
        structural = single[self.tier[single] != 2]
        others = single[self.tier[single] == 2]
        if len(others) > self.lookahead:
            others = rng.choice(others, self.lookahead, replace=False)
        recent = tokens[-8:]
        best, best_score = None, None
        for tok in np.concatenate([structural, others]).tolist():
            if not matcher.accept(tok):
                raise AssertionError(f"matcher refused token {self.vocab.show(tok)} that its own mask allowed")
            after_mask = clear_tail(matcher.fill(), self.vocab.n_vocab)
            matcher.rollback(1)
            after = mask_to_ids(after_mask, self.vocab.n_vocab)
            score = (not self.is_eog[after].any(), recent.count(tok) >= 3, bool(np.array_equal(after_mask, mask)),
                     self.tier[tok], len(after), rng.random())
            if best_score is None or score < best_score:
                best, best_score = tok, score
        return int(best)

    def walk(self, matcher, seed: int, max_steps: int | None = None) -> Walk:
        v = self.vocab
        rng = np.random.default_rng(seed)
        max_steps = self.max_steps if max_steps is None else max_steps
        target = int(rng.integers(1, min(max_steps, self.target_max or max_steps) + 1))
        tokens: list[int] = []
        masks: list[np.ndarray] = []
        times: list[float] = []
        while True:
            t0 = time.perf_counter()
            m = matcher.fill()
            times.append((time.perf_counter() - t0) * 1e6)
            m = clear_tail(m, v.n_vocab)
            masks.append(m)
            ids = mask_to_ids(m, v.n_vocab)
            eog = self.is_eog[ids]
            text_ids = ids[~eog]
            can_end = bool(eog.any())
            if len(tokens) >= max_steps or len(text_ids) == 0:
                return Walk(tokens, masks, can_end, times)
            if can_end and (len(tokens) >= target or rng.random() < self.p_stop):
                return Walk(tokens, masks, True, times)
            if len(tokens) >= target:
                tok = self.choose_to_end(matcher, tokens, m, text_ids, rng)
            else:
                tok = int(_draw(text_ids, 1.0 / v.lens[text_ids].astype(np.float64), rng))
            if not matcher.accept(tok):
                raise AssertionError(f"matcher refused token {v.show(tok)} that its own mask allowed, "
                                     f"after {v.decode(tokens)!r}")
            tokens.append(tok)


def _draw(ids: np.ndarray, w: np.ndarray, rng: np.random.Generator) -> int:
    c = np.cumsum(w)
    return ids[min(int(np.searchsorted(c, rng.random() * c[-1], side="right")), len(ids) - 1)]


def masks_along(matcher, tokens: list[int], n_vocab: int) -> tuple[list[np.ndarray], int]:
    """The masks before each token and after the last, advancing by each token in turn: (masks,
    index of the first token the matcher refuses, whose mask is the last, or -1)."""
    masks = []
    for i, t in enumerate(tokens):
        masks.append(clear_tail(matcher.fill(), n_vocab))
        if not matcher.accept(t):
            return masks, i
    masks.append(clear_tail(matcher.fill(), n_vocab))
    return masks, -1


def token_trie_masks(items: list[list[int]], trace: list[int], eog: list[int], n_vocab: int) -> list[np.ndarray]:
    """The masks of a catalogue of token sequences along a trace (the engine's --choices: one
    path per item, its canonical tokenization): before step i, the i-th token of every item
    that starts with trace[:i], and the eog tokens where trace[:i] is a whole item."""
    out = []
    for i in range(len(trace) + 1):
        bits = np.zeros(((n_vocab + 31) // 32) * 32, dtype=np.uint8)
        prefix = trace[:i]
        for seq in items:
            if seq[:i] == prefix:
                if len(seq) > i:
                    bits[seq[i]] = 1
                else:
                    bits[eog] = 1
        out.append(np.packbits(bits, bitorder="little").view("<u4").copy())
    return out

