"""Shared fixtures for the Python reference tests (tests/reference).

Environment:
  PEREGRINE_BIN         engine binary (default <repo>/build/bin/peregrine)
  PEREGRINE_MODEL_PATH  GGUF model (default ~/.cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf)
  PEREGRINE_GEMMA_PATH  Gemma 3 GGUF (default ~/.cache/peregrine/models/gemma-3-270m-q4_k_m.gguf)
Tests that need a missing one are skipped with a message saying which.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


# Let test modules import the helpers that live beside them (llama_ref, gguf_hf_tokenizer, ...).
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def model_reader(model_path):
    """One gguf-py reader of the model for the whole session (parsing its 49k-token vocabulary takes seconds)."""
    import gguf

    return gguf.GGUFReader(str(model_path))


GEMMA_DEFAULT = Path.home() / ".cache/peregrine/models/gemma-3-270m-q4_k_m.gguf"


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    p = Path(os.environ.get("PEREGRINE_GEMMA_PATH", GEMMA_DEFAULT))
    if not p.is_file():
        pytest.skip(f"Gemma 3 GGUF not found at {p} (run `peregrine pull gemma3-270m`, or set PEREGRINE_GEMMA_PATH)")
    return p


@pytest.fixture(scope="session")
def gemma_reader(gemma_path):
    """One gguf-py reader of the Gemma 3 model per session (its 262k-token vocabulary takes ~9 s to parse)."""
    import gguf

    return gguf.GGUFReader(str(gemma_path))


@pytest.fixture(scope="session")
def run_peregrine(peregrine_bin):
    """run_peregrine(*args, timeout=...) -> CompletedProcess; fails the test, with stderr, on non-zero exit."""

    def run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [str(peregrine_bin), *map(str, args)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {r.returncode}\nstderr:\n{r.stderr[-4000:]}")
        return r

    return run
