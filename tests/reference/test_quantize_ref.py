"""The engine's reference quantizers (`peregrine quantize-row`) versus ggml's and gguf-py's, byte for byte.

Every type the engine quantizes -- F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K,
Q6_K, the ternary TQ1_0 and TQ2_0 and the activation type Q8_K -- must give exactly the bytes of two
independent implementations:

  ggml itself: ggml_quantize_chunk() with no importance matrix (quantize_row_*_ref), compiled from the
      pinned llama-cpp-python sdist by ggml_quant_oracle.py the way ggml's CMake compiles it. The sdist
      is fetched with pip and the oracle built on first use (~30 s cold, cached in ~/.cache/peregrine);
      if that fails the tests fail -- they are never skipped for a missing oracle.
  gguf-py 0.19 (gguf.quants.quantize): the numpy quantizers it has -- BF16, Q4_0, Q4_1, Q5_0, Q5_1,
      Q8_0, TQ1_0, TQ2_0 (written to match ggml) -- and numpy's own float16 cast for F16. It has none
      for the K-quants, which is why ggml is built at all.

The rows (make_rows) mix distributions that reach the quantizers' branches: normal, uniform, heavy
tails (Student t with 2 degrees of freedom, Cauchy), constant rows of either sign, all zeros, rows with
zeroed sub-blocks (a K-quant sub-block whose scale quantizes to 0 keeps its search codes), sparse
rows, ties of magnitude (+-1), small integers, a single outlier, values so small that the fp16 block
scales are subnormal or flush to 0, and values so large that they overflow fp16 (scale = inf) or
square to inf in the K-quant searches. Each type is tested on several row lengths, all concatenated
into one file per call: every quantizer here works block by block, so a row boundary changes nothing.
Float types also get NaN and +-inf (against ggml only: NaN payload rules are not gguf-py's business).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

import ggml_quant_oracle

QT = gguf.GGMLQuantizationType
# name -> (values per block, bytes per block)
TYPES = {
    "F32": (1, 4), "F16": (1, 2), "BF16": (1, 2),
    "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
    "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
    "Q8_K": (256, 292), "TQ1_0": (256, 54), "TQ2_0": (256, 66),
}
GGUF_PY_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "TQ1_0", "TQ2_0")
ROW_BLOCKS = (1, 2, 3, 8)  # row lengths in blocks of 256 (the 32-block types also get 32 * (1, 3, 5))


def _distributions(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    normal = rng.standard_normal(n)
    zero_subblocks = normal.copy()
    for s in range(0, n, 16):
        if rng.uniform() < 0.3:
            zero_subblocks[s:s + 16] = 0.0
    outlier = rng.standard_normal(n) * 0.01
    outlier[rng.integers(n)] = rng.choice([-1, 1]) * 50.0
    return {
        "normal": normal,
        "uniform": rng.uniform(-1.0, 1.0, n),
        "uniform_positive": rng.uniform(0.5, 2.0, n),
        "student_t2": rng.standard_t(2, n),
        "cauchy": rng.standard_cauchy(n),
        "constant": np.full(n, 0.37),
        "constant_negative": np.full(n, -1.25),
        "zeros": np.zeros(n),
        "zero_subblocks": zero_subblocks,
        "sparse": normal * (rng.uniform(size=n) < 0.1),
        "plus_minus_one": rng.choice([-1.0, 1.0], n),
        "small_integers": rng.integers(-4, 5, n).astype(np.float64),
        "one_outlier": outlier,
        "scaled_1e-6": normal * 1e-6,  # fp16 scales subnormal
        "scaled_1e-9": normal * 1e-9,  # fp16 scales flush to 0
        "scaled_1e-30": normal * 1e-30,
        "scaled_1e5": normal * 1e5,  # fp16 scales overflow to inf
        "scaled_1e20": normal * 1e20,  # squares overflow f32 in the K-quant searches
        "mixed_scales": normal * np.repeat(10.0 ** rng.uniform(-4, 4, n // 16 + 1), 16)[:n],
    }


def make_rows(type_name: str, seed: int, special: bool = True) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """All test rows of a type, concatenated: (values f32, [(start, length, description)]).
    special: for float types, end with a row of NaN, infinities and extremes."""
    rng = np.random.default_rng(seed)
    block = TYPES[type_name][0]
    lengths = [256 * b for b in ROW_BLOCKS]
    if block == 32:
        lengths += [32, 96, 160]
    if block == 1:
        lengths += [1, 7, 45]
    parts, where, start = [], [], 0
    for n in lengths:
        for rep in range(3):
            for name, row in _distributions(rng, n).items():
                parts.append(row.astype(np.float32))
                where.append((start, n, f"{name} row of {n} (rep {rep})"))
                start += n
    if block == 1 and special:
        values = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 65504.0, 65520.0, 1e-8, 6e-8,
                           3.4e38, -1e-45], dtype=np.float32)
        parts.append(values)
        where.append((start, values.size, "NaN, infinities, signed zero, fp16 and f32 extremes"))
    return np.concatenate(parts), where


def _first_difference(a: bytes, b: bytes, type_name: str, where) -> str:
    if len(a) != len(b):
        return f"lengths differ: {len(a)} vs {len(b)} bytes"
    block, size = TYPES[type_name]
    diff = np.flatnonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8))
    byte = int(diff[0])
    value = byte // size * block
    row = next(w for w in where if w[0] <= value < w[0] + w[1])
    blk = byte // size
    return (f"{diff.size} bytes differ; first in block {blk} (values {value}..{value + block - 1}, "
            f"{row[2]}, {value - row[0]} into the row)\n"
            f"  engine: {a[blk * size:(blk + 1) * size].hex()}\n  oracle: {b[blk * size:(blk + 1) * size].hex()}")


@pytest.fixture(scope="session")
def oracle() -> Path:
    try:
        return ggml_quant_oracle.build()
    except ggml_quant_oracle.OracleError as e:
        pytest.fail(f"could not build ggml's quantizers from the pinned sdist: {e}")


@pytest.fixture(scope="session")
def engine_quantize(peregrine_bin, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quantize_ref")

    def run(type_name: str, x: np.ndarray) -> bytes:
        src, dst = tmp / f"{type_name}.f32", tmp / f"{type_name}.engine"
        x.astype(np.float32).tofile(src)
        r = subprocess.run([str(peregrine_bin), "quantize-row", "--type", type_name, "-i", str(src), "-o", str(dst)],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"peregrine quantize-row --type {type_name} failed:\n{r.stderr}"
        return dst.read_bytes()

    return run


@pytest.mark.parametrize("type_name", list(TYPES))
def test_matches_ggml(type_name, oracle, engine_quantize, tmp_path):
    x, where = make_rows(type_name, seed=1000 + list(TYPES).index(type_name))
    got = engine_quantize(type_name, x)
    src, dst = tmp_path / "in.f32", tmp_path / "ggml.bin"
    x.tofile(src)
    r = subprocess.run([str(oracle), type_name, str(src), str(dst)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"ggml oracle failed on {type_name}:\n{r.stderr}"
    want = dst.read_bytes()
    assert len(got) == x.size // TYPES[type_name][0] * TYPES[type_name][1]
    assert got == want, f"{type_name} differs from ggml: " + _first_difference(got, want, type_name, where)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # fp16 scales of the 1e20 rows
@pytest.mark.parametrize("type_name", GGUF_PY_TYPES)
def test_matches_gguf_py(type_name, engine_quantize):
    x, where = make_rows(type_name, seed=2000 + list(TYPES).index(type_name), special=False)
    # -0.0 -> +0.0: gguf-py and ggml disagree on the sign of a zero scale or min. For an all-zero
    # block ggml's strict comparisons keep their +0 start values (Q4_0: d = +0 / -8 = -0), while
    # gguf-py takes the block's first element or np.min, which may be -0. test_matches_ggml covers
    # signed zeros against ggml itself.
    x = x + np.float32(0.0)
    got = engine_quantize(type_name, x)
    if type_name == "F16":
        want = x.astype(np.float16).tobytes()
    else:
        want = np.asarray(gguf.quants.quantize(x, QT[type_name])).tobytes()
    assert got == want, f"{type_name} differs from gguf-py: " + _first_difference(got, want, type_name, where)


def test_rejects_partial_blocks(peregrine_bin, tmp_path):
    src = tmp_path / "in.f32"
    np.zeros(300, np.float32).tofile(src)
    r = subprocess.run([str(peregrine_bin), "quantize-row", "--type", "Q4_K", "-i", str(src), "-o",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode != 0
    assert "300 values is not a whole number of 256-value Q4_K blocks" in r.stderr
    r = subprocess.run([str(peregrine_bin), "quantize-row", "--type", "IQ2_XS", "-i", str(src), "-o",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode != 0 and "no reference quantizer" in r.stderr
