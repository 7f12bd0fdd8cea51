"""The engine's logits for a token sequence (`peregrine logits`), as the synthetic-model tests read them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np


def engine_logits(peregrine_bin, path: Path, out: Path, tokens, *flags) -> np.ndarray:
    """float32 logits [len(tokens), n_vocab] of TOKENS run through `peregrine logits` (2 threads)."""
    cmd = [str(peregrine_bin), "logits", "-m", str(path), "--tokens", ",".join(map(str, tokens)), "-o", str(out),
           "-t", "2", *flags]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:]}"
    raw = np.fromfile(out, dtype="<f4")
    assert raw.size % len(tokens) == 0, f"engine wrote {raw.size} floats for {len(tokens)} tokens"
    return raw.reshape(len(tokens), -1)


def engine_flags(wtype: str) -> tuple[str, ...]:
    """F32 files run with an f32 KV cache (float rounding only); Q8_0 with the default f16 cache."""
    return ("--kv-type", "f32") if wtype == "F32" else ()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
