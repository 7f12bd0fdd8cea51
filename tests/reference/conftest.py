"""Shared fixtures for the Python reference tests (tests/reference).

Environment:
  PEREGRINE_BIN         engine binary (default <repo>/build/bin/peregrine)
  PEREGRINE_MODEL_PATH  GGUF model (default ~/.cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf)
Tests that need a missing one are skipped with a message saying which.
"""

from __future__ import annotations

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
