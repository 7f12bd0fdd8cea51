#!/usr/bin/env python3
"""Random walks through constraints with xgrammar, and xgrammar's bitmask at every step.

Runs with .venv-grammar's python (scripts/venv_grammar.sh); the main test venv cannot import
xgrammar. test_constrain_oracle.py feeds the walks to `peregrine masks --dump-masks` and compares.

  .venv-grammar/bin/python tests/reference/xgrammar_walks.py -m MODEL.gguf \
      --input constraints.jsonl -o walks.json [--walks 3] [--max-steps 48] [--seed 0] \
      [--special HEADER.json]

Input: one constraint a line, as `peregrine masks` reads them: {"id": str, and one of
"grammar": GBNF | "regex": RE | "choices": [str] | "json_schema": {...} | "json_object": true},
optionally "walks" and "max_steps" for that line. JSON schemas are walked with compact
separators (",", ":") and no other whitespace, text every whitespace policy accepts. Choices
are not walked at random: their walks are the items' canonical tokenizations (see walk_choices),
each with the token trie's masks as "expected" beside xgrammar's.

--special: a JSON object with "eog" and "never" token lists (the first line of `peregrine masks`
is one), so that xgrammar sees the same special tokens as the engine; without it, the defaults of
grammar_engines.load_vocab, derived from the GGUF (written as "defaults" either way).

Output (JSON): {"model", "xgrammar", "n_vocab", "eog", "never", "defaults": {"eog", "never"},
"decoding_mismatches" (tokens whose bytes, decoded here, differ from xgrammar's own decoding of
the GGUF texts: [id, text, ours hex, xgrammar's hex], at most 20), "constraints": [{"id",
"error": null or str, "compile_us", "walks": [{"tokens", "complete", "text" (base64 of the walk's
bytes), "ends" (byte offset after each token), "masks" (base64 of zlib of the len(tokens) + 1
masks, each ceil(n_vocab / 32) little-endian uint32 words), "mask_us"}]}]}.
"""

from __future__ import annotations

import argparse
import base64
import importlib.metadata
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from grammar_engines import (Walker, XGrammarEngine, canonical_encoder, load_vocab, masks_along,  # noqa: E402
                             token_trie_masks)


def walk_seed(seed: int, cid: str, k: int) -> int:
    return zlib.crc32(f"{seed}:{cid}:{k}".encode())


def pack_masks(masks: list[np.ndarray]) -> str:
    raw = b"".join(np.ascontiguousarray(m, dtype="<u4").tobytes() for m in masks)
    return base64.b64encode(zlib.compress(raw, 1)).decode()


def unpack_masks(s: str, n_words: int) -> np.ndarray:
    """[n_masks, n_words] uint32 from the "masks" field of a walk."""
    return np.frombuffer(zlib.decompress(base64.b64decode(s)), dtype="<u4").reshape(-1, n_words)


def walk_choices(rec: dict, choices: list[str], vocab, eng, compiled, encode) -> None:
    """Choices are a catalogue of token sequences (each item's canonical tokenization, one path per
    item), not of texts: the walks are those sequences, with xgrammar's masks (any tokenization of
    an item) and, as "expected", the masks of the token trie of the items."""
    items, seen = [], set()
    for text in choices:
        seq = list(encode(text))
        if vocab.decode(seq) == text.encode() and tuple(seq) not in seen:
            items.append(seq)
            seen.add(tuple(seq))
    for seq in items:
        masks, rejected = masks_along(eng.matcher(compiled), seq, vocab.n_vocab)
        assert rejected < 0, f"xgrammar refuses the tokens {seq} of a choice of {choices}"
        ends = np.cumsum([len(vocab.text_bytes(t)) for t in seq]).tolist()
        rec["walks"].append({
            "tokens": seq, "complete": True, "text": base64.b64encode(vocab.decode(seq)).decode(),
            "ends": ends, "masks": pack_masks(masks),
            "expected": pack_masks(token_trie_masks(items, seq, vocab.eog, vocab.n_vocab)), "mask_us": []})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", required=True, type=Path)
    ap.add_argument("--input", required=True, type=Path, help="JSONL of constraints")
    ap.add_argument("-o", "--output", required=True, type=Path)
    ap.add_argument("--walks", type=int, default=3, help="walks per constraint (default 3)")
    ap.add_argument("--max-steps", type=int, default=48, help="tokens per walk at most (default 48)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--special", type=Path, help="JSON with the eog and never token lists")
    args = ap.parse_args()

    eog = never = None
    if args.special:
        sp = json.loads(args.special.read_text())
        eog, never = sp["eog"], sp["never"]
    vocab = load_vocab(args.model, eog=eog, never=never)
    eng = XGrammarEngine(vocab, json_separators=(",", ":"), any_whitespace=False)
    walker = Walker(vocab, max_steps=args.max_steps)
    encode = None  # the canonical tokenizer, built when a choices constraint needs it

    out = {"model": str(args.model), "xgrammar": importlib.metadata.version("xgrammar"),
           "n_vocab": vocab.n_vocab, "eog": vocab.eog, "never": vocab.never,
           "defaults": {"eog": vocab.default_eog, "never": vocab.default_never},
           "decoding_mismatches": [[t, text, ours.hex(), theirs.hex()]
                                   for t, text, ours, theirs in eng.decoding_mismatches()[:20]],
           "constraints": []}
    for line in args.input.read_text().splitlines():
        if not line.strip():
            continue
        c = json.loads(line)
        cid = str(c["id"])
        rec = {"id": cid, "error": None, "compile_us": None, "walks": []}
        out["constraints"].append(rec)
        t0 = time.perf_counter()
        try:
            compiled = eng.compile(c)
        except Exception as e:  # xgrammar's parse errors are RuntimeError / ValueError
            rec["error"] = f"{type(e).__name__}: {str(e).strip()}"
            continue
        rec["compile_us"] = (time.perf_counter() - t0) * 1e6
        if "choices" in c:
            encode = encode or canonical_encoder(vocab)
            walk_choices(rec, c["choices"], vocab, eng, compiled, encode)
            continue
        for k in range(int(c.get("walks", args.walks))):
            w = walker.walk(eng.matcher(compiled), walk_seed(args.seed, cid, k),
                            int(c.get("max_steps", args.max_steps)))
            ends = np.cumsum([len(vocab.text_bytes(t)) for t in w.tokens]).tolist() if w.tokens else []
            rec["walks"].append({
                "tokens": w.tokens, "complete": w.complete,
                "text": base64.b64encode(vocab.decode(w.tokens)).decode(), "ends": ends,
                "masks": pack_masks(w.masks), "mask_us": [round(x, 2) for x in w.mask_us]})
    args.output.write_text(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
