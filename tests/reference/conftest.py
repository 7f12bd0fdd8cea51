"""Shared fixtures for the Python reference tests (tests/reference).

Environment:
  PEREGRINE_BIN         engine binary (default <repo>/build/bin/peregrine)
  PEREGRINE_MODEL_PATH  GGUF model (default ~/.cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf)
  PEREGRINE_GEMMA_PATH  Gemma 3 GGUF (default ~/.cache/peregrine/models/gemma-3-270m-q4_k_m.gguf)
  LLAMA_CPP_ORACLE_JOBS build jobs for the llama.cpp tools below when not built yet (default 2)
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
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import llama_cpp_build  # noqa: E402  (bench/: the pinned llama.cpp, built once into the cache)


def _llama_tool(target: str) -> Path:
    """A llama.cpp tool of the pinned source, AMX compiled out (as the logits oracle), built on first use."""
    try:
        binary, _ = llama_cpp_build.build_target(target, int(os.environ.get("LLAMA_CPP_ORACLE_JOBS", "2")),
                                                 no_amx=True)
    except llama_cpp_build.Failure as e:
        pytest.fail(f"{target} build failed: {e}")
    return binary


@pytest.fixture(scope="session")
def llama_quantize() -> Path:
    return _llama_tool("llama-quantize")


@pytest.fixture(scope="session")
def llama_imatrix() -> Path:
    return _llama_tool("llama-imatrix")


@pytest.fixture(scope="session")
def llama_perplexity() -> Path:
    return _llama_tool("llama-perplexity")


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


@pytest.fixture(scope="session")
def oracle():
    """llama_cpp_oracle (llama_cpp_logits(path, tokens), ...) with the oracle built, or the build's failure
    as a test failure: the synthetic-architecture tests' logits oracle."""
    import llama_cpp_oracle as lco

    try:
        lco.build()
    except lco.Failure as e:
        pytest.fail(f"llama.cpp oracle build failed: {e}")
    return lco
