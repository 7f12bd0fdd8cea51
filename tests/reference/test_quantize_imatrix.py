"""The engine's importance-matrix quantizers (`peregrine quantize-row --imatrix`) versus ggml's, byte for byte.

With an importance matrix (imatrix: one weight per column, what `llama-quantize --imatrix` feeds it),
ggml_quantize_chunk() quantizes Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K with different
searches than its reference quantizers (quantize_row_*_impl in ggml-quants.c). src/quant/quantize_imatrix.cpp
re-implements them; here every type must give exactly the bytes of ggml itself, compiled from the pinned
llama-cpp-python sdist by ggml_quant_oracle.py (as for test_quantize_ref.py; never skipped for a missing
oracle). gguf-py has no imatrix quantizers, so ggml is the only oracle.

These quantizers take statistics over the whole row (the 32-value types' sigma2 is the row's mean square),
so both sides get the same matrix of rows of one length, N_PER_ROW, and quantize it row by row with one
importance vector. Each call is one (type, row length, importance kind): the rows are every distribution of
test_quantize_ref.make_rows' generator (normal, heavy tails, constants, zeros, zeroed sub-blocks, sparse,
ties, an outlier, scales from 1e-30 to 1e20), twice with different draws, and the row lengths are 256, 512
and 2048 (and 160 for the 32-value types). The importance vectors:

  lognormal     positive, spread over six orders of magnitude from column to column
  activations   mean squares of simulated activations with a few outlier channels (what an imatrix holds)
  some_zeros    lognormal with a fifth of the columns 0, and one whole 32-column span 0
  mostly_zeros  nine in ten columns 0
  all_equal     one constant (the weights then depend on x alone)
  all_zero      every column 0 (a tensor whose inputs were never seen)

A second test checks the point of the exercise on ordinary data: quantizing with the imatrix lowers the
importance-weighted squared error against the reference quantizer, on average over rows (a sanity check
of the engine, not an oracle).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

from test_quantize_ref import TYPES, _distributions, oracle  # noqa: F401  (oracle: the session fixture)

IMATRIX_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
ROW_LENGTHS = (256, 512, 2048)
SHORT_ROW = 160  # 5 blocks of 32, for the 32-value types
IMPORTANCE_KINDS = ("lognormal", "activations", "some_zeros", "mostly_zeros", "all_equal", "all_zero")


def make_importance(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "lognormal":
        imp = 10.0 ** rng.uniform(-3, 3, n)
    elif kind == "activations":
        scale = np.exp(rng.normal(0.0, 1.0, n))
        scale[rng.choice(n, size=max(1, n // 64), replace=False)] *= 50.0  # outlier channels
        acts = rng.standard_normal((64, n)) * scale
        imp = np.mean(acts * acts, axis=0)
    elif kind == "some_zeros":
        imp = 10.0 ** rng.uniform(-3, 3, n)
        imp[rng.uniform(size=n) < 0.2] = 0.0
        start = 32 * int(rng.integers(n // 32))
        imp[start:start + 32] = 0.0
    elif kind == "mostly_zeros":
        imp = 10.0 ** rng.uniform(-2, 2, n) * (rng.uniform(size=n) < 0.1)
    elif kind == "all_equal":
        imp = np.full(n, 0.73)
    elif kind == "all_zero":
        imp = np.zeros(n)
    else:
        raise ValueError(kind)
    return imp.astype(np.float32)


def make_matrix(n: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Rows of n values, [rows, n] f32, and a description per row."""
    rows, names = [], []
    for rep in range(2):
        for name, row in _distributions(rng, n).items():
            rows.append(row.astype(np.float32))
            names.append(f"{name} (rep {rep})")
    return np.stack(rows), names


def _first_difference(a: bytes, b: bytes, type_name: str, n_per_row: int, names: list[str]) -> str:
    if len(a) != len(b):
        return f"lengths differ: {len(a)} vs {len(b)} bytes"
    block, size = TYPES[type_name]
    diff = np.flatnonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8))
    blk = int(diff[0]) // size
    per_row = n_per_row // block
    row, in_row = divmod(blk, per_row)
    return (f"{diff.size} bytes differ; first in row {row} ({names[row]}), block {in_row} "
            f"(values {in_row * block}..{(in_row + 1) * block - 1} of the row)\n"
            f"  engine: {a[blk * size:(blk + 1) * size].hex()}\n  oracle: {b[blk * size:(blk + 1) * size].hex()}")


def quantize_both(peregrine_bin: Path, oracle: Path | None, tmp: Path, type_name: str, x: np.ndarray | None,
                  importance: np.ndarray | None, ggml: bool = True) -> tuple[bytes, bytes | None]:
    """(engine bytes, ggml bytes) for the matrix x [rows, n]; importance None: the reference quantizer."""
    n = x.shape[1]
    src, imp = tmp / "in.f32", tmp / "imatrix.f32"
    x.astype(np.float32).tofile(src)
    extra_engine, extra_oracle = [], []
    if importance is not None:
        importance.astype(np.float32).tofile(imp)
        extra_engine = ["--imatrix", str(imp), "--n-per-row", str(n)]
        extra_oracle = [str(n), str(imp)]
    r = subprocess.run([str(peregrine_bin), "quantize-row", "--type", type_name, "-i", str(src), "-o",
                        str(tmp / "engine.bin"), *extra_engine], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"peregrine quantize-row --type {type_name} {' '.join(extra_engine)} failed:\n{r.stderr}"
    got = (tmp / "engine.bin").read_bytes()
    if not ggml:
        return got, None
    r = subprocess.run([str(oracle), type_name, str(src), str(tmp / "ggml.bin"), *extra_oracle],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"ggml oracle failed on {type_name}:\n{r.stderr}"
    return got, (tmp / "ggml.bin").read_bytes()


@pytest.mark.parametrize("type_name", IMATRIX_TYPES)
def test_matches_ggml(type_name, peregrine_bin, oracle, tmp_path):
    rng = np.random.default_rng(3000 + IMATRIX_TYPES.index(type_name))
    block, size = TYPES[type_name]
    lengths = ROW_LENGTHS + ((SHORT_ROW,) if block == 32 else ())
    failures = []
    for n in lengths:
        x, names = make_matrix(n, rng)
        for kind in IMPORTANCE_KINDS:
            got, want = quantize_both(peregrine_bin, oracle, tmp_path, type_name, x, make_importance(kind, n, rng))
            assert len(got) == x.size // block * size
            if got != want:
                failures.append(f"rows of {n}, {kind} importance: "
                                f"{_first_difference(got, want, type_name, n, names)}")
    assert not failures, f"{type_name} with an imatrix differs from ggml:\n" + "\n".join(failures)


@pytest.mark.parametrize("type_name", IMATRIX_TYPES)
def test_imatrix_lowers_weighted_error(type_name, peregrine_bin, tmp_path):
    rng = np.random.default_rng(4000 + IMATRIX_TYPES.index(type_name))
    n, rows = 1024, 32
    x = (rng.standard_normal((rows, n)) * np.exp(rng.normal(0.0, 0.5, (rows, 1)))).astype(np.float32)
    importance = make_importance("activations", n, rng)
    qt = gguf.GGMLQuantizationType[type_name]

    def weighted_error(blocks: bytes) -> np.ndarray:  # per row: sum_i importance_i (x_i - x'_i)^2
        y = gguf.quants.dequantize(np.frombuffer(blocks, np.uint8), qt).reshape(rows, n)
        return np.sum(importance * (x.astype(np.float64) - y) ** 2, axis=1)

    with_imatrix, _ = quantize_both(peregrine_bin, None, tmp_path, type_name, x, importance, ggml=False)
    plain, _ = quantize_both(peregrine_bin, None, tmp_path, type_name, x, None, ggml=False)
    err_imatrix, err_plain = weighted_error(with_imatrix), weighted_error(plain)
    ratio = float(np.mean(err_imatrix) / np.mean(err_plain))
    assert ratio < 0.95, f"{type_name}: the imatrix quantizer's weighted error is {ratio:.3f} of the reference's"
    assert np.mean(err_imatrix < err_plain) > 0.75, (
        f"{type_name}: the imatrix quantizer is better on only {np.mean(err_imatrix < err_plain):.0%} of the rows")


def test_rejects_bad_imatrix_arguments(peregrine_bin, tmp_path):
    src, imp = tmp_path / "in.f32", tmp_path / "imatrix.f32"
    np.zeros(512, np.float32).tofile(src)
    np.ones(256, np.float32).tofile(imp)

    def run(*args):
        return subprocess.run([str(peregrine_bin), "quantize-row", "-i", str(src), "-o", str(tmp_path / "out"), *args],
                              capture_output=True, text=True)

    r = run("--type", "Q8_0", "--imatrix", str(imp), "--n-per-row", "256")
    assert r.returncode != 0 and "no importance-matrix quantizer" in r.stderr
    r = run("--type", "Q4_K", "--imatrix", str(imp), "--n-per-row", "512")
    assert r.returncode != 0 and "256 values, but --n-per-row is 512" in r.stderr
    r = run("--type", "Q4_K", "--imatrix", str(imp), "--n-per-row", "160")
    assert r.returncode != 0 and "not a positive multiple" in r.stderr
    r = run("--type", "Q4_K", "--imatrix", str(imp))
    assert r.returncode != 0  # --imatrix needs --n-per-row
    r = run("--type", "Q4_K", "--imatrix", str(imp), "--n-per-row", "256")
    assert r.returncode == 0 and (tmp_path / "out").stat().st_size == 2 * 144
