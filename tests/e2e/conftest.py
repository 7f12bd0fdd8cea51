"""Shared fixtures for the end-to-end CLI tests (tests/e2e): the CLI driven as a user drives it.

Environment:
  PEREGRINE_BIN         engine binary (default <repo>/build/bin/peregrine)
  PEREGRINE_MODEL_PATH  GGUF model (default ~/.cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf)
Tests that need a missing one are skipped with a message saying which.

Every command runs with a timeout, so a hang fails the test instead of stalling the suite, and
with core dumps switched off, so a crash shows as a negative return code and leaves no core file.
"""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest

TIMEOUT = 120.0


def _no_core_dumps() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


@pytest.fixture(scope="session")
def cli(peregrine_bin):
    """cli(*args, input=None, env=None, timeout=TIMEOUT) -> CompletedProcess (text, never raises on rc).

    `env` entries are added to (not substituted for) the current environment; a value of None
    removes that variable.
    """

    def run(*args, input: str | None = None, env: dict | None = None, timeout: float = TIMEOUT,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
        full_env = dict(os.environ)
        for k, v in (env or {}).items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = str(v)
        cmd = [str(peregrine_bin), *map(str, args)]
        try:
            return subprocess.run(cmd, input=input, capture_output=True, text=True, errors="replace",
                                  timeout=timeout, env=full_env, cwd=cwd, preexec_fn=_no_core_dumps,
                                  stdin=None if input is not None else subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"{' '.join(cmd)} did not finish within {timeout} s (hang?)\n"
                        f"stderr so far:\n{(e.stderr or b'')[-2000:]!r}")

    return run


def _describe(r: subprocess.CompletedProcess) -> str:
    return (f"\n$ {' '.join(r.args)}\nexit {r.returncode}\n"
            f"--- stdout ---\n{r.stdout[-3000:]}\n--- stderr ---\n{r.stderr[-3000:]}")


@pytest.fixture(scope="session")
def describe():
    """describe(completed_process) -> the command, its exit code and both streams, for messages."""
    return _describe


@pytest.fixture(scope="session")
def ok(cli):
    """ok(*args, **kw) -> CompletedProcess; fails the test, showing both streams, unless exit 0."""

    def run(*args, **kw) -> subprocess.CompletedProcess:
        r = cli(*args, **kw)
        assert r.returncode == 0, _describe(r)
        return r

    return run


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 byte-level BPE's byte -> printable character table (openai/gpt-2 encoder.py)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
          + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@pytest.fixture(scope="session")
def byte_to_char() -> dict[int, str]:
    """GPT-2 byte-level table: each byte is written as one printable character in token strings."""
    return _bytes_to_unicode()


@pytest.fixture(scope="session")
def tokenize(ok, model_path):
    def run(text: str, *extra) -> list[int]:
        r = ok("tokenize", "-m", model_path, "-p", text, *extra)
        return [int(x) for x in r.stdout.split()]
    return run
