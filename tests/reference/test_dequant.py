"""`peregrine dequant` versus gguf-py's dequantization.

A small GGUF is written at test time (gguf-py's GGUFWriter) holding real weights taken from the
model -- attention/FFN matrices, an embedding slice, a norm vector, odd shapes -- re-encoded as
F32, F16, BF16, Q8_0, Q4_0 and Q4_1 with gguf-py's own numpy quantizers (gguf-py 0.19 implements
all six; F16 is numpy's IEEE half cast). The model's original Q4_1 / Q8_0 / F32 tensors are also
checked straight from the model file.

Expectations: float formats are converted exactly, so the engine's floats must be bit-identical
to gguf-py's. Block formats compute d*q (+ m) in f32; the engine may fuse that into an FMA, so
allow a few ulps: |got - want| <= 1e-6*|want| + 1e-6 * max|want in that 32-block|.

K-quants (Q2_K .. Q6_K): gguf-py 0.19 can dequantize them but not quantize them, so their tensors
are random bytes -- every quant bit and packed sub-block scale/min is random -- with the fp16
super-block scales d (and dmin) overwritten by sane values, plus a few edge rows (zero, negative,
f16-subnormal and large d). They are written as raw typed tensors (uint8 byte rows with
raw_dtype=Q4_K etc.). The engine must match gguf-py bit for bit: both compute, in f32 and in the
same order, (d * scale) * q - (dmin * min), and the build disables FMA contraction
(-ffp-contract=off), so no step can round differently. A 1-ulp slack would be needed only on a
build that fused the multiply-subtract of Q2_K/Q4_K/Q5_K into an FMA.
"""

from __future__ import annotations

import numpy as np
import gguf
import pytest

from llama_ref import tensor_to_f32

QT = gguf.GGMLQuantizationType
FLOAT_TYPES = ("F32", "F16", "BF16")
BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1", "Q5_0")

# Source arrays (numpy order) cut from the model; shapes chosen to hit awkward cases.
SOURCES = {
    "attn_q": "blk.0.attn_q.weight, 576 x 576",
    "ffn_down": "blk.0.ffn_down.weight, 576 rows of 1536 (a long row: 48 blocks)",
    "embd_slice": "token_embd.weight rows 1000..1299 (300 rows)",
    "norm": "blk.0.attn_norm.weight, 1-D",
    "odd_rows": "37 rows of attn_q, with an all-zero row and a row scaled by 1e-4 (f16-subnormal block scales)",
    "cube": "3-D [64, 48, 3] in ggml order, from ffn_down",
    "odd_cols": "37 x 45: row length not a multiple of 32 (float types only)",
    "edge_values": "zeros, signed zero, subnormals, extremes, inf, nan (float types only)",
}
FLOAT_ONLY = {"odd_cols", "edge_values"}
CASES = [(s, t) for s in SOURCES for t in FLOAT_TYPES + BLOCK_TYPES if t in FLOAT_TYPES or s not in FLOAT_ONLY]
MODEL_TENSORS = [
    "blk.0.attn_q.weight",  # Q4_1
    "blk.29.ffn_down.weight",  # Q4_1, last layer, 1536-long rows
    "token_embd.weight",  # Q8_0, 49152 x 576
    "blk.0.attn_norm.weight",  # F32
    "output_norm.weight",  # F32
]


def _source_arrays(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    t = {x.name: x for x in reader.tensors}
    q = tensor_to_f32(t["blk.0.attn_q.weight"])
    down = tensor_to_f32(t["blk.0.ffn_down.weight"])
    emb = tensor_to_f32(t["token_embd.weight"])[1000:1300].copy()
    odd = q[:37].copy()
    odd[5] = 0.0
    odd[7] *= 1e-4
    with np.errstate(over="ignore"):
        edge = np.array(
            [0.0, -0.0, 1.0, -1.0, 0.5, 65504.0, -65504.0, 70000.0, 5.96e-8, -1e-5, 6.1e-5, 1e-30,
             -3.0e38, 3.3895e38, np.inf, -np.inf, np.nan, 1.0 / 3.0, 2.0 ** -126, 2.0 ** -140],
            dtype=np.float32,
        )
    return {
        "attn_q": q,
        "ffn_down": down,
        "embd_slice": emb,
        "norm": tensor_to_f32(t["blk.0.attn_norm.weight"]),
        "odd_rows": odd,
        "cube": down[:6].reshape(3, 48, 64).copy(),
        "odd_cols": emb[:37, :45].copy(),
        "edge_values": edge,
    }


def _encode(a: np.ndarray, type_name: str) -> np.ndarray:
    qtype = QT[type_name]
    with np.errstate(over="ignore"):  # 70000 and 3e38 overflow to inf in F16, on purpose
        return gguf.quants.quantize(a, qtype)


@pytest.fixture(scope="module")
def small_gguf(model_reader, tmp_path_factory):
    """Write the test GGUF; return (path, {tensor name: gguf-py dequantized array, numpy order})."""
    path = tmp_path_factory.mktemp("dequant") / "tensors.gguf"
    src = _source_arrays(model_reader)
    w = gguf.GGUFWriter(str(path), arch="llama")
    for s, tname in CASES:
        data = _encode(src[s], tname)
        raw = QT[tname] if data.dtype == np.uint8 else None  # F32/F16 carry their dtype
        w.add_tensor(f"{s}.{tname}", data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # The expected values come from reading the file back with gguf-py, i.e. from the bytes the
    # engine will see, not from the arrays we meant to write.
    reader = gguf.GGUFReader(str(path))
    want = {t.name: (t, tensor_to_f32(t)) for t in reader.tensors}
    for s, tname in CASES:
        t, a = want[f"{s}.{tname}"]
        assert t.tensor_type == QT[tname] and a.shape == src[s].shape, f"fixture writer problem for {s}.{tname}"
    return path, want


def _engine_dequant(run_peregrine, gguf_path, name, out_path) -> np.ndarray:
    run_peregrine("dequant", "-m", gguf_path, "--tensor", name, "-o", out_path, timeout=120)
    return np.fromfile(out_path, dtype="<f4")


def _check(got: np.ndarray, t: gguf.ReaderTensor, want: np.ndarray, label: str) -> None:
    want = want.reshape(-1)  # numpy C order of reversed ggml dims == ggml's natural order
    n = int(t.n_elements)
    assert got.size == n, f"{label}: engine wrote {got.size} floats, tensor has {n} elements"
    if t.tensor_type in (QT.F32, QT.F16, QT.BF16):
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan), f"{label}: NaN positions differ"
        bad = np.flatnonzero(got[~nan].view(np.uint32) != want[~nan].view(np.uint32))
        assert bad.size == 0, (
            f"{label}: {bad.size} of {n} values not bit-identical; first at flat index "
            f"{np.flatnonzero(~nan)[bad[0]]}: got {got[~nan][bad[0]]!r}, want {want[~nan][bad[0]]!r}"
        )
        return
    blk = gguf.GGML_QUANT_SIZES[t.tensor_type][0]
    block_max = np.abs(want.reshape(-1, blk)).max(axis=1)
    tol = 1e-6 * np.abs(want) + 1e-6 * np.repeat(block_max, blk)
    err = np.abs(got.astype(np.float64) - want)
    bad = np.flatnonzero(~(err <= tol))  # also catches NaN in got
    assert bad.size == 0, (
        f"{label}: {bad.size} of {n} values off; first at flat index {bad[0]} (block {bad[0] // blk}): "
        f"got {got[bad[0]]!r}, want {want[bad[0]]!r}; max abs err {np.nanmax(err):.3g}"
    )


@pytest.mark.parametrize("source,type_name", CASES, ids=[f"{s}-{t}" for s, t in CASES])
def test_dequant_matches_gguf_py(small_gguf, run_peregrine, tmp_path, source, type_name):
    path, want = small_gguf
    name = f"{source}.{type_name}"
    t, w = want[name]
    got = _engine_dequant(run_peregrine, path, name, tmp_path / "out.f32")
    _check(got, t, w, name)


@pytest.mark.parametrize("name", MODEL_TENSORS)
def test_dequant_model_tensor(model_path, model_reader, run_peregrine, tmp_path, name):
    t = next(x for x in model_reader.tensors if x.name == name)
    got = _engine_dequant(run_peregrine, model_path, name, tmp_path / "out.f32")
    _check(got, t, tensor_to_f32(t), f"{model_path.name}:{name} ({t.tensor_type.name})")


# ---- K-quants: random super-blocks ---------------------------------------------------------------

# The ternary super-block formats ride along: random bytes are valid TQ1_0 (every byte decodes
# to trits 0..2) and give TQ2_0 the code 3 (+2 d) that no quantizer writes but decoders accept.
K_TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "TQ1_0", "TQ2_0")
# Byte offsets of the fp16 super-block scale d and (for formats with mins) dmin, from the block
# layouts: Q2_K = scales[16] qs[64] d dmin; Q3_K = hmask[32] qs[64] scales[12] d;
# Q4_K = d dmin scales[12] qs[128]; Q5_K = d dmin scales[12] qh[32] qs[128]; Q6_K = ql[128] qh[64] scales[16] d;
# TQ1_0 = qs[48] qh[4] d; TQ2_0 = qs[64] d.
K_SCALE_OFFSETS = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
                   "TQ1_0": (52,), "TQ2_0": (64,)}
# Shapes in numpy order (the last axis is the ggml row); the row length is a multiple of 256.
K_SHAPES = {
    "k_rows": (8, 512),
    "k_long": (3, 2048),
    "k_cube": (2, 3, 256),
    "k_edges": (5, 256),
}
K_CASES = [(s, t) for s in K_SHAPES for t in K_TYPES]
# Edge rows of k_edges, one super-block each: d (and dmin) set to these.
K_EDGE_SCALES = (0.0, -0.03, 6.0e-8, 1024.0, 0.01)


def _random_kquant(shape: tuple[int, ...], type_name: str, rng: np.random.Generator, edges: bool) -> np.ndarray:
    """Random super-blocks of a K type as uint8 rows [..., row_bytes] with sane fp16 scales."""
    blk, size = gguf.GGML_QUANT_SIZES[QT[type_name]]
    n_blocks = int(np.prod(shape)) // blk
    blocks = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in K_SCALE_OFFSETS[type_name]:
        mag = rng.uniform(1e-3, 5e-2, size=n_blocks)
        scale = np.where(rng.random(n_blocks) < 0.25, -mag, mag).astype(np.float16)
        if edges:
            scale = np.resize(np.array(K_EDGE_SCALES, dtype=np.float16), n_blocks)
        blocks[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(*shape[:-1], shape[-1] // blk * size)


@pytest.fixture(scope="module")
def kquant_gguf(tmp_path_factory):
    """A GGUF of random K-quant tensors; return (path, {name: (ReaderTensor, gguf-py dequantized)})."""
    path = tmp_path_factory.mktemp("dequant_k") / "kquants.gguf"
    rng = np.random.default_rng(20240)
    w = gguf.GGUFWriter(str(path), arch="llama")
    for s, tname in K_CASES:
        w.add_tensor(f"{s}.{tname}", _random_kquant(K_SHAPES[s], tname, rng, s == "k_edges"), raw_dtype=QT[tname])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    reader = gguf.GGUFReader(str(path))
    want = {t.name: (t, tensor_to_f32(t)) for t in reader.tensors}
    for s, tname in K_CASES:
        t, a = want[f"{s}.{tname}"]
        assert t.tensor_type == QT[tname] and a.shape == K_SHAPES[s], f"fixture writer problem for {s}.{tname}"
        assert np.all(np.isfinite(a)), f"fixture {s}.{tname}: gguf-py decodes non-finite values"
    return path, want


def _check_bit_exact(got: np.ndarray, t: gguf.ReaderTensor, want: np.ndarray, label: str) -> None:
    want = want.reshape(-1)
    n = int(t.n_elements)
    assert got.size == n, f"{label}: engine wrote {got.size} floats, tensor has {n} elements"
    bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
    if bad.size:
        i = int(bad[0])
        row_len = int(t.shape[0])
        raise AssertionError(
            f"{label}: {bad.size} of {n} values not bit-identical to gguf-py; first at flat index {i} "
            f"(row {i // row_len}, super-block {i % row_len // 256}, value {i % 256}, sub-block of 16: "
            f"{i % 256 // 16}, of 32: {i % 256 // 32}): got {got[i]!r}, want {want[i]!r}"
        )


@pytest.mark.parametrize("source,type_name", K_CASES, ids=[f"{s}-{t}" for s, t in K_CASES])
def test_dequant_kquant_matches_gguf_py(kquant_gguf, run_peregrine, tmp_path, source, type_name):
    path, want = kquant_gguf
    name = f"{source}.{type_name}"
    t, w = want[name]
    got = _engine_dequant(run_peregrine, path, name, tmp_path / "out.f32")
    _check_bit_exact(got, t, w, name)


def test_dequant_unknown_tensor_is_an_error(small_gguf, peregrine_bin, tmp_path):
    import subprocess

    path, _ = small_gguf
    r = subprocess.run(
        [str(peregrine_bin), "dequant", "-m", str(path), "--tensor", "no.such.tensor", "-o", str(tmp_path / "x")],
        capture_output=True, text=True, timeout=60,
    )
    assert r.returncode != 0, "dequant of a missing tensor should fail"
    assert r.stderr.startswith("error:") and "no.such.tensor" in r.stderr, f"stderr was: {r.stderr!r}"
