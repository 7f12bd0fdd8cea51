"""Driving `peregrine tokenize --jsonl` from the tokenizer comparisons, and reporting differences."""

from __future__ import annotations

import json
import subprocess


def run_jsonl(peregrine_bin, model, lines, *flags) -> list[list[int]]:
    """Ids of every line from one `peregrine tokenize --jsonl` process."""
    stdin = "".join(json.dumps(s) + "\n" for s in lines)
    r = subprocess.run([str(peregrine_bin), "tokenize", "-m", str(model), "--jsonl", *flags],
                       input=stdin, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"peregrine tokenize failed:\n{r.stderr[-3000:]}"
    out = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(out) == len(lines), f"{len(out)} output lines for {len(lines)} input lines"
    return out


def compare(lines, ours, theirs, label, oracle="HF tokenizers"):
    """Fails, showing the first differing lines, unless every line's ids are equal."""
    bad = [(s, a, b) for s, a, b in zip(lines, ours, theirs) if a != b]
    report = "\n".join(f"  {s[:120]!r}\n    ours   {a[:30]}\n    theirs {b[:30]}" for s, a, b in bad[:8])
    assert not bad, f"{label}: {len(bad)} of {len(lines)} lines differ from {oracle}:\n{report}"
