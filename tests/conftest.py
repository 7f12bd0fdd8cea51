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
