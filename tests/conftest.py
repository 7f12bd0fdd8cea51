"""Fixtures shared by tests/reference and tests/e2e: where the engine and the model are."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = Path.home() / ".cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def peregrine_bin() -> Path:
    p = Path(os.environ.get("PEREGRINE_BIN", REPO_ROOT / "build/bin/peregrine"))
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.skip(f"engine binary not found at {p} (build it, or set PEREGRINE_BIN)")
    return p


@pytest.fixture(scope="session")
def model_path() -> Path:
    p = Path(os.environ.get("PEREGRINE_MODEL_PATH", DEFAULT_MODEL))
    if not p.is_file():
        pytest.skip(f"model not found at {p} "
                    "(run `peregrine pull smollm2-135m`, or set PEREGRINE_MODEL_PATH)")
    return p


@pytest.fixture(scope="session")
def f16_model_path(model_path) -> Path:
    """The model's F16 copy next to it (bench/make_variants.py: the same weights, dequantized),
    written on first use like bench/speculative.py does. A base for `eval` to compare with."""
    import subprocess
    import sys

    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from make_variants import variant_path  # noqa: E402  (needs gguf-py, as the tests do)

    p = variant_path(model_path, "F16")  # SmolLM2-135M-Instruct.Q4_1.gguf -> ....F16.gguf
    if not p.is_file():
        cmd = [sys.executable, str(REPO_ROOT / "bench/make_variants.py"), "--source", str(model_path),
               "--types", "F16", "--no-verify"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0 or not p.is_file():
            pytest.fail(f"{' '.join(cmd)} did not write {p}:\n{r.stderr[-3000:]}")
    return p
