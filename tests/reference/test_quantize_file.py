"""`peregrine quantize` against llama.cpp's llama-quantize: the same input and mix give the same file, byte for byte.

The oracle is llama-quantize of the pinned llama.cpp (bench/llama_cpp_build.py, built with AMX compiled
out like llama_cpp_oracle.py's library). Both tools get the same input, mix and options (llama's
--tensor-type is our --keep-type, --output-tensor-type our --output-type); their files must have the same
sha256: the same metadata in the same order (general.quantization_version and general.file_type re-set
and so moved to the end, quantize.imatrix.* after them), the tensors in llama's order (by layer, then
name) with the same types, and every quantized byte the same (ggml's reference quantizers, or with
--imatrix its importance-weighted ones). On a mismatch the assertion names the first metadata keys and
tensors that differ (read with gguf-py) and where in a tensor the bytes part.

Inputs:
- synthetic llama-architecture GGUFs (written here with gguf-py; random weights with heavy tails,
  per-row and per-column scales, outlier columns, and a few degenerate rows: zeros, a constant, one
  spike, values below F16's normal range, half-zero super-blocks):
    gqa4   16 layers, n_embd 256, n_ff 768, 8 heads / 2 KV heads (n_gqa 4), untied output.weight, F16
    gqa1    8 layers, n_embd 256, n_ff 512, 8 heads / 8 KV heads (n_gqa 1), tied embeddings, F32
    odd     2 layers, n_embd 96, n_ff 80, 3 heads / 1 KV head, tied, BF16: rows of 96 and 80 fit no
            super-block (and 80 no 32-block), so every mix's shape fallbacks run (Q4_K -> Q5_0,
            Q6_K -> Q8_0, ... -> F16)
  The widths of gqa4 and gqa1 are whole super-blocks, so the K-quant rules show without fallbacks; 16
  and 8 layers give the per-layer rules (use_more_bits, n_layer/8, n_layer/16) different cut points.
  Their metadata holds every GGUF value type, arrays of strings, integers and floats, and has
  general.file_type first and general.quantization_version in the middle (odd: none, but
  general.alignment and a one-file split's split.* keys, which both tools drop). Each has "weights"
  whose trailing dimensions are 1 ([n, 1], [n, 1, 1]: vectors to ggml, kept as they are and written
  as [n]); odd also a matrix of rows of 1.
- every mix (all of llama-quantize's that we offer, Q2_K_S only with an importance matrix) on each;
  the short K names; --pure; --keep-type (several patterns, first match wins, an upper-case pattern as
  llama lower-cases them, one on a layer's attn_v that shifts the K_M mixes' per-layer counts, one
  that does not fit the rows and falls back); --output-type and --token-embedding-type;
- importance matrices written here in llama-imatrix's GGUF layout (general.type = imatrix,
  imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size, "<w>.in_sum2" F32 [n_cols, n_mat] and
  "<w>.counts" F32 [1, n_mat]; tools/imatrix/imatrix.cpp save_imatrix), with a matrix no token reached
  (count 0), zero columns, an entry for a tensor the model lacks, a token_embd entry of the wrong width
  (both tools skip it) or of the right one (a tied head's input: both use it), entries left out, a
  path and a first dataset name over 127 bytes (both tools keep 127 of them in quantize.imatrix.*),
  chunk_count 0, and the same matrix as a legacy .dat; gqa4 with Q2_K, Q3_K_M, Q4_K_M, Q4_0 (ffn_down
  gets Q4_1 in the first eighth of the layers), Q5_1, Q6_K, Q2_K_S; gqa1 with Q3_K_M, Q4_K_M, Q5_0;
- type choice alone (--dry-run, no data: sparse files) for what the small models cannot show: llama's
  70B rule (llama with 80 layers and grouped KV heads, qwen2 and olmo with 80, jais2 with 68; not
  LLaMA-1 65B), 8-expert MoE (Mixtral) and falcon;
- real models: SmolLM2-135M F16 (conftest's f16_model_path, 576-wide rows: fallbacks) to Q4_K_M and
  Q5_K_M; Gemma 3 270M Q4_K_M (PEREGRINE_GEMMA_PATH) to F16 (llama needs --allow-requantize).

Our files are also read back with gguf-py: the input's metadata, unchanged and in order, then the two
re-set keys; the input's tensors with their shapes (less trailing 1s), in llama's order, each of the
type the --json report says, vectors copied as they are. Bad input through the CLI: a one-line `error:` on stderr, a non-zero exit, no output file and no
temporary file left behind (an existing output file keeps its bytes); where llama-quantize refuses the
same input, that is checked too.

Environment: PEREGRINE_BIN, PEREGRINE_MODEL_PATH, PEREGRINE_GEMMA_PATH (conftest.py);
LLAMA_CPP_ORACLE_JOBS (default 2) for the oracle's build if it is not built yet.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import pytest


QT = gguf.GGMLQuantizationType
VT = gguf.GGUFValueType
THREADS = 2
FILE_TYPE = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 8, "Q5_1": 9, "TQ1_0": 36, "TQ2_0": 37, "Q2_K": 10, "Q2_K_S": 21,
             "Q3_K_S": 11, "Q3_K_M": 12, "Q3_K_L": 13, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_S": 16, "Q5_K_M": 17,
             "Q6_K": 18, "Q8_0": 7, "F16": 1, "BF16": 32, "F32": 0}  # llama_ftype
MIXES = tuple(FILE_TYPE)
PLAIN_MIXES = tuple(m for m in MIXES if m != "Q2_K_S")  # Q2_K_S needs an importance matrix
IMATRIX_MIXES = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q4_0", "Q5_1", "Q6_K", "Q2_K_S")
RESET_KEYS = ("general.quantization_version", "general.file_type")
SPLIT_KEYS = ("split.no", "split.count", "split.tensors.count")
IMATRIX_KEYS = ("quantize.imatrix.file", "quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                "quantize.imatrix.chunks_count")


# ---- synthetic models ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Synth:
    name: str
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_vocab: int
    tied: bool
    wtype: str  # F16, F32 or BF16: the matrices' type (norms stay F32)
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


SYNTH = {
    "gqa4": Synth("gqa4", 16, 256, 768, 8, 2, 1000, tied=False, wtype="F16", seed=1),
    "gqa1": Synth("gqa1", 8, 256, 512, 8, 8, 1000, tied=True, wtype="F32", seed=2),
    "odd": Synth("odd", 2, 96, 80, 3, 1, 300, tied=True, wtype="BF16", seed=3),
}


def _matrix(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """[rows, cols] float32 like a trained projection: Student-t(5) values, log-normal row and column
    scales, 1 in 64 columns 6x larger (outlier input channels), overall 1/sqrt(cols)."""
    w = rng.standard_t(5, size=(rows, cols)).astype(np.float32)
    w *= np.exp(rng.normal(0.0, 0.3, size=(rows, 1))).astype(np.float32)
    col = np.exp(rng.normal(0.0, 0.4, size=(1, cols))).astype(np.float32)
    col[0, rng.choice(cols, size=max(1, cols // 64), replace=False)] *= 6.0
    return (w * col * np.float32(0.5 / np.sqrt(cols))).astype(np.float32)


def _degenerate_rows(w: np.ndarray, rng: np.random.Generator) -> None:
    """Rows that take the quantizers' edge paths: zeros, a constant, one spike, values under F16's
    normal range, half the (super-)blocks zero, alternating +-max."""
    n = w.shape[1]
    w[0] = 0.0
    w[1] = 0.0123
    w[2] = 0.0
    w[2, n // 3] = 0.9
    w[3] = (rng.standard_normal(n) * 3e-6).astype(np.float32)
    w[4, : n // 2] = 0.0
    w[5] = np.where(np.arange(n) % 2 == 0, 0.05, -0.05)


def synth_weights(s: Synth) -> dict[str, np.ndarray]:
    """GGUF name -> float32 array (numpy order: [rows, cols], cols = ggml ne[0]), in file order."""
    rng = np.random.default_rng(s.seed)
    E, F, KV = s.n_embd, s.n_ff, s.head_dim * s.n_head_kv
    w = {"token_embd.weight": _matrix(rng, s.n_vocab, E) * np.float32(8.0)}
    _degenerate_rows(w["token_embd.weight"], rng)
    for i in range(s.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float32)
        w[b + "attn_q.weight"] = _matrix(rng, E, E)
        w[b + "attn_k.weight"] = _matrix(rng, KV, E)
        w[b + "attn_v.weight"] = _matrix(rng, KV, E)
        w[b + "attn_output.weight"] = _matrix(rng, E, E)
        w[b + "ffn_norm.weight"] = (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float32)
        w[b + "ffn_gate.weight"] = _matrix(rng, F, E)
        w[b + "ffn_up.weight"] = _matrix(rng, F, E)
        w[b + "ffn_down.weight"] = _matrix(rng, E, F)
    _degenerate_rows(w["blk.0.attn_q.weight"], rng)
    _degenerate_rows(w[f"blk.{s.n_layer - 1}.ffn_down.weight"], rng)
    # "weights" whose trailing dimensions are 1 (ggml_n_dims 1: llama keeps them as they are), as
    # gguf-py writes RWKV's time_mix_lerp_* [n_embd, 1, 1]
    w["blk.0.time_mix_lerp_x.weight"] = (0.5 + 0.1 * rng.standard_normal((1, 1, E))).astype(np.float32)
    w["blk.1.layer_scale.weight"] = (0.1 * rng.standard_normal((1, E))).astype(np.float32)
    if s.name == "odd":  # a matrix of rows of 1: no block fits, F16 in every quantized mix
        w["blk.1.column_proj.weight"] = rng.standard_normal((E, 1)).astype(np.float32)
    w["output_norm.weight"] = (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float32)
    if not s.tied:
        w["output.weight"] = _matrix(rng, s.n_vocab, E) * np.float32(3.0)
    return w


def _encode(a: np.ndarray, wtype: str) -> tuple[np.ndarray, QT | None]:
    if wtype == "F32":
        return np.ascontiguousarray(a, dtype=np.float32), None
    if wtype == "F16":
        return a.astype(np.float16), None
    return gguf.quants.quantize(np.ascontiguousarray(a, dtype=np.float32), QT[wtype]), QT[wtype]


def add_llama_metadata(w: gguf.GGUFWriter, s: Synth, file_type: int) -> None:
    """What the HF converter writes for a llama model, plus a key of every GGUF value type;
    general.file_type first and general.quantization_version in the middle, so that moving them to the
    end shows."""
    w.add_file_type(file_type)
    w.add_name(f"peregrine-quantize-{s.name}")
    w.add_block_count(s.n_layer)
    w.add_context_length(2048)
    w.add_embedding_length(s.n_embd)
    w.add_feed_forward_length(s.n_ff)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_rope_dimension_count(s.head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    if s.name == "odd":
        # no quantization_version (added at the end); an explicit general.alignment of 32 and the keys of
        # a one-file "split" model (split.*: both tools drop them)
        w.add_custom_alignment(32)
        w.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, 0)
        w.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 1)
        w.add_int32(gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, len(synth_weights(s)))
    else:
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(s.n_vocab)
    w.add_uint8("peregrine.test.u8", 200)
    w.add_int8("peregrine.test.i8", -100)
    w.add_uint16("peregrine.test.u16", 60000)
    w.add_int16("peregrine.test.i16", -30000)
    w.add_int32("peregrine.test.i32", -2_000_000_000)
    w.add_uint64("peregrine.test.u64", 2**63 + 5)
    w.add_int64("peregrine.test.i64", -(2**62))
    w.add_float64("peregrine.test.f64", 2.718281828459045)
    w.add_bool("peregrine.test.bool", True)
    w.add_string("peregrine.test.utf8", "Grüße, 世界")
    w.add_array("peregrine.test.floats", [0.5, -1.25, 3.0e-8])
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<tok{i}>" for i in range(s.n_vocab)])
    w.add_token_scores([-float(i) for i in range(s.n_vocab)])
    w.add_token_types([3 if i < 3 else 1 for i in range(s.n_vocab)])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)


def write_synth(s: Synth, path: Path, *, edit=None, raw: dict | None = None) -> Path:
    """Write S to PATH. edit(tensors) may change the float tensors first; raw: name -> (bytes array,
    type) added (or replacing) as they are."""
    tensors = synth_weights(s)
    if edit is not None:
        edit(tensors)
    w = gguf.GGUFWriter(str(path), "llama")
    add_llama_metadata(w, s, {"F32": 0, "F16": 1, "BF16": 32}[s.wtype])
    raw = raw or {}
    for name, a in tensors.items():
        if name in raw:
            continue
        if a.ndim >= 2:
            data, qtype = _encode(a, s.wtype)
            w.add_tensor(name, data, raw_dtype=qtype)
        else:
            w.add_tensor(name, a)
    for name, (data, qtype) in raw.items():
        w.add_tensor(name, data, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def matmul_inputs(s: Synth) -> dict[str, int]:
    """Every matrix llama-imatrix records for S -> its input width (a tied head: token_embd)."""
    out = {}
    for i in range(s.n_layer):
        for t in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"):
            out[f"blk.{i}.{t}.weight"] = s.n_embd
        out[f"blk.{i}.ffn_down.weight"] = s.n_ff
    out["token_embd.weight" if s.tied else "output.weight"] = s.n_embd
    return out


def imatrix_entries(s: Synth, seed: int) -> dict[str, tuple[np.ndarray, float]]:
    """name -> (in_sum2 [n_cols], count): sums of squared activations over `count` tokens, with
    log-normal channel scales, a few outlier channels and a few channels never active."""
    rng = np.random.default_rng(seed)
    entries = {}
    for name, n in matmul_inputs(s).items():
        count = 5120.0
        ms = np.exp(rng.normal(0.0, 1.0, n))
        ms[rng.choice(n, size=max(1, n // 50), replace=False)] *= 40.0
        ms[rng.choice(n, size=max(1, n // 100), replace=False)] = 0.0
        entries[name] = ((ms * count).astype(np.float32), count)
    return entries


def write_imatrix(path: Path, entries: dict[str, tuple[np.ndarray, float]], datasets: list[str],
                  chunk_count: int, chunk_size: int) -> Path:
    """llama-imatrix's GGUF (save_imatrix): no architecture, general.type, imatrix.* and per matrix
    "<name>.in_sum2" [n_cols] and "<name>.counts" [1] (ggml drops the trailing n_mat of 1), by name."""
    w = gguf.GGUFWriter(str(path), "llama")
    del w.kv_data[0][gguf.Keys.General.ARCHITECTURE]  # llama-imatrix writes none
    w.add_string("general.type", "imatrix")
    w.add_array("imatrix.datasets", datasets)
    w.add_uint32("imatrix.chunk_count", chunk_count)
    w.add_uint32("imatrix.chunk_size", chunk_size)
    for name in sorted(entries):
        sums, count = entries[name]
        w.add_tensor(name + ".in_sum2", np.asarray(sums, dtype=np.float32))
        w.add_tensor(name + ".counts", np.array([count], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_imatrix_dat(path: Path, entries: dict[str, tuple[np.ndarray, float]], dataset: str, chunks: int,
                      ncall: int) -> Path:
    """The same means as llama's legacy .dat: per entry (sums / count) * ncall, with ncall; an entry no
    token reached is left out, as llama-imatrix leaves it out."""
    entries = {k: v for k, v in entries.items() if v[1] > 0}
    out = [struct.pack("<i", len(entries))]
    for name in sorted(entries):
        sums, count = entries[name]
        vals = (sums.astype(np.float32) / np.float32(count) * np.float32(ncall)).astype("<f4")
        nb = name.encode()
        out += [struct.pack("<i", len(nb)), nb, struct.pack("<ii", ncall, len(vals)), vals.tobytes()]
    db = dataset.encode()
    out += [struct.pack("<ii", chunks, len(db)), db]
    path.write_bytes(b"".join(out))
    return path


# ---- sparse models: type choice only --------------------------------------------------------------


@dataclass(frozen=True)
class Sparse:
    name: str
    arch: str
    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0
    n_embd: int = 256
    n_ff: int = 512
    n_vocab: int = 512


SPARSE = {
    "llama80_gqa": Sparse("llama80_gqa", "llama", 80, 8, 1),  # LLM_TYPE_70B: attn_v gets Q5_K for Q3_K/Q4_K
    "llama80_mha": Sparse("llama80_mha", "llama", 80, 8, 8),  # LLaMA-1 65B: not 70B
    "qwen2_80": Sparse("qwen2_80", "qwen2", 80, 8, 1),  # Qwen2(.5)-72B: 70B
    "olmo_80": Sparse("olmo_80", "olmo", 80, 8, 8),  # 70B whatever the heads
    "jais2_68": Sparse("jais2_68", "jais2", 68, 8, 8),  # jais2's 70B has 68 layers
    "mixtral": Sparse("mixtral", "llama", 8, 8, 2, n_expert=8),  # 8 experts: Q8_0 attn_v/attn_k, MoE layers by name
    "falcon": Sparse("falcon", "falcon", 8, 8, 1),  # falcon: Q8_0 head, its own ffn_down and attn_output rules
}
DRY_RUN_MIXES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q4_0", "Q8_0")


def write_sparse(s: Sparse, path: Path) -> Path:
    """A model of S's shapes whose tensor data is a hole (zeros): enough for --dry-run, a few KiB on disk."""
    E, F, hd = s.n_embd, s.n_ff, s.n_embd // s.n_head
    shapes: dict[str, tuple[int, ...]] = {"token_embd.weight": (s.n_vocab, E)}
    for i in range(s.n_layer):
        b = f"blk.{i}."
        shapes[b + "attn_norm.weight"] = (E,)
        if s.arch == "falcon":
            shapes[b + "attn_qkv.weight"] = (E + 2 * hd * s.n_head_kv, E)
        else:
            shapes[b + "attn_q.weight"] = (E, E)
            shapes[b + "attn_k.weight"] = (hd * s.n_head_kv, E)
            shapes[b + "attn_v.weight"] = (hd * s.n_head_kv, E)
            shapes[b + "ffn_norm.weight"] = (E,)
        shapes[b + "attn_output.weight"] = (E, E)
        if s.n_expert:
            shapes[b + "ffn_gate_inp.weight"] = (s.n_expert, E)
            for t in ("ffn_gate_exps", "ffn_up_exps"):
                shapes[f"{b}{t}.weight"] = (s.n_expert, F, E)
            shapes[b + "ffn_down_exps.weight"] = (s.n_expert, E, F)
        else:
            if s.arch != "falcon":
                shapes[b + "ffn_gate.weight"] = (F, E)
            shapes[b + "ffn_up.weight"] = (F, E)
            shapes[b + "ffn_down.weight"] = (E, F)
    shapes["output_norm.weight"] = (E,)
    shapes["output.weight"] = (s.n_vocab, E)

    w = gguf.GGUFWriter(str(path), s.arch)
    w.add_file_type(1)
    w.add_name(f"peregrine-sparse-{s.name}")
    w.add_block_count(s.n_layer)
    w.add_context_length(2048)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(s.n_head)
    w.add_head_count_kv(s.n_head_kv)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_layer_norm_eps(1e-5)
    w.add_rope_dimension_count(hd)
    w.add_vocab_size(s.n_vocab)
    if s.n_expert:
        w.add_expert_count(s.n_expert)
        w.add_expert_used_count(2)
    total = 0
    for name, shape in shapes.items():
        dtype = np.float32 if len(shape) == 1 else np.float16
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        w.add_tensor_info(name, shape, np.dtype(dtype), nbytes)
        total += -(-nbytes // w.data_alignment) * w.data_alignment
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    with open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        f.truncate(-(-end // w.data_alignment) * w.data_alignment + total)
    return path


# ---- running both tools ---------------------------------------------------------------------------


@dataclass
class Pair:
    ours: Path
    theirs: Path
    report: dict


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def run_pair(peregrine_bin: Path, llama_quantize: Path, inp: Path, out_dir: Path, mix: str, *,
             ours_opts=(), llama_opts=(), tag: str = "", timeout: float = 300) -> Pair:
    """Both tools on INP for MIX at once (one core each, or two when there are two); fails on either's
    failure, with its stderr."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"{inp.stem}-{mix}{tag}"
    ours, theirs = out_dir / f"{stem}.ours.gguf", out_dir / f"{stem}.llama.gguf"
    llama_log = out_dir / f"{stem}.llama.log"
    ours_cmd = [str(peregrine_bin), "quantize", str(inp), str(ours), mix, "-t", str(THREADS), "--json", *ours_opts]
    llama_cmd = [str(llama_quantize), *llama_opts, str(inp), str(theirs), mix, str(THREADS)]
    with open(llama_log, "w") as log:
        pl = subprocess.Popen(llama_cmd, stdout=log, stderr=subprocess.STDOUT)
        po = subprocess.run(ours_cmd, capture_output=True, text=True, timeout=timeout)
        rc = pl.wait(timeout=timeout)
    if po.returncode != 0:
        pytest.fail(f"{' '.join(ours_cmd)} exited {po.returncode}:\n{po.stderr[-3000:]}")
    if rc != 0:
        pytest.fail(f"{' '.join(llama_cmd)} exited {rc}:\n{_tail(llama_log)}")
    return Pair(ours, theirs, json.loads(po.stdout))


def _raw_fields(r: gguf.GGUFReader) -> dict[str, bytes]:
    """key -> its bytes as stored (type and value): equal bytes, equal key."""
    return {f.name: b"".join(p.tobytes() for p in f.parts) for f in r.fields.values()
            if not f.name.startswith("GGUF.")}


def _value(r: gguf.GGUFReader, key: str) -> str:
    f = r.fields[key]
    try:
        v = f.contents()
    except Exception:  # noqa: BLE001  (a value gguf-py cannot show still has bytes)
        return f"<{len(f.data)} parts>"
    s = repr(v)
    return s if len(s) < 120 else s[:117] + "..."


def describe_difference(ours: Path, theirs: Path, limit: int = 8) -> str:
    """The metadata keys and tensors in which two GGUFs differ, for an assertion message."""
    a, b = gguf.GGUFReader(str(ours)), gguf.GGUFReader(str(theirs))
    lines = [f"sizes: ours {ours.stat().st_size}, llama {theirs.stat().st_size}"]
    fa, fb = _raw_fields(a), _raw_fields(b)
    if list(fa) != list(fb):
        lines.append(f"metadata keys differ: ours {list(fa)}\n  llama {list(fb)}")
    for k in fa.keys() & fb.keys():
        if fa[k] != fb[k]:
            lines.append(f"metadata {k}: ours {_value(a, k)}, llama {_value(b, k)}")
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    if list(ta) != list(tb):
        only = sorted(ta.keys() ^ tb.keys())
        lines.append(f"tensor order or names differ (only in one: {only[:limit]}); ours starts "
                     f"{list(ta)[:6]}, llama {list(tb)[:6]}")
    moved = False  # once a tensor's size differs, every later offset does: not worth a line each
    for name in tb:
        if name not in ta:
            continue
        x, y = ta[name], tb[name]
        if x.tensor_type != y.tensor_type or list(x.shape) != list(y.shape):
            lines.append(f"tensor {name}: ours {x.tensor_type.name} {[int(n) for n in x.shape]}, "
                         f"llama {y.tensor_type.name} {[int(n) for n in y.shape]}")
            moved = True
        else:
            da, db = np.asarray(x.data).view(np.uint8).ravel(), np.asarray(y.data).view(np.uint8).ravel()
            if da.tobytes() != db.tobytes():
                first = int(np.flatnonzero(da != db)[0])
                block_size, type_size = gguf.GGML_QUANT_SIZES[y.tensor_type]
                row_bytes = int(y.shape[0]) // block_size * type_size
                nd = int(np.count_nonzero(da != db))
                lines.append(f"tensor {name} ({y.tensor_type.name}): {nd} of {db.size} bytes differ, the first in "
                             f"row {first // row_bytes}, block {first % row_bytes // type_size}")
            elif x.data_offset != y.data_offset and not moved:
                lines.append(f"tensor {name}: data at offset {x.data_offset} (ours) vs {y.data_offset} (llama)")
                moved = True
        if len(lines) > limit + 2:
            lines.append("...")
            break
    return "\n  ".join(lines)


def assert_identical(pair: Pair, what: str) -> None:
    a, b = sha256(pair.ours), sha256(pair.theirs)
    if a != b:
        pytest.fail(f"{what}: our file differs from llama-quantize's\n  ours  {pair.ours} {a}\n  llama "
                    f"{pair.theirs} {b}\n  {describe_difference(pair.ours, pair.theirs)}")


def _unlink(*paths: Path) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def llama_order(names: list[str]) -> list[str]:
    def key(n: str):
        m = re.match(r"blk\.(\d+)\.", n)
        return (int(m.group(1)) if m else -1, n)

    return sorted(names, key=key)


def ggml_n_dims(shape) -> int:
    """ggml_n_dims: dimensions up to the last one above 1 (shape in ggml order)."""
    dims = [int(n) for n in shape]
    while len(dims) > 1 and dims[-1] <= 1:
        dims.pop()
    return len(dims)


def check_readback(inp_reader: gguf.GGUFReader, out: Path, report: dict, mix: str, *,
                   imatrix_keys: tuple[str, ...] = ()) -> None:
    """Our file, read with gguf-py: the input's metadata in order and unchanged but for the re-set
    keys (then the imatrix keys), its tensors with their shapes (less trailing 1s) in llama's order,
    each of the type the --json report gives it, vectors copied; the report's sizes are the file's."""
    r = gguf.GGUFReader(str(out))
    fin, fout = _raw_fields(inp_reader), _raw_fields(r)
    kept = [k for k in fin if k not in RESET_KEYS + SPLIT_KEYS]
    assert list(fout) == kept + list(RESET_KEYS) + list(imatrix_keys), "metadata keys or their order"
    for k in kept:
        assert fout[k] == fin[k], f"metadata {k} changed: {_value(inp_reader, k)} -> {_value(r, k)}"
    assert r.fields["general.file_type"].types == [VT.UINT32]
    assert r.fields["general.file_type"].contents() == FILE_TYPE[mix] == report["file_type"]
    assert r.fields["general.quantization_version"].types == [VT.UINT32]
    assert r.fields["general.quantization_version"].contents() == gguf.GGML_QUANT_VERSION

    tin = {t.name: t for t in inp_reader.tensors}
    tout = [t for t in r.tensors]
    assert [t.name for t in tout] == llama_order(list(tin)), "tensor order"
    rep = {t["name"]: t for t in report["tensors"]}
    assert [t["name"] for t in report["tensors"]] == [t.name for t in tout]
    for t in tout:
        src = tin[t.name]
        dims = [int(n) for n in src.shape][: ggml_n_dims(src.shape)]  # trailing 1s dropped, as ggml writes
        assert [int(n) for n in t.shape] == dims, t.name
        assert t.tensor_type.name == rep[t.name]["to"], f"{t.name}: {t.tensor_type.name} in the file"
        assert rep[t.name]["from"] == src.tensor_type.name, t.name
        assert rep[t.name]["bytes"] == t.n_bytes, t.name
        if ggml_n_dims(src.shape) < 2 or not t.name.endswith(".weight"):
            assert t.tensor_type == src.tensor_type and t.data.tobytes() == src.data.tobytes(), \
                f"{t.name} is not a matrix: copied as it is"
    assert report["tensor_bytes_out"] == sum(t.n_bytes for t in tout)
    assert report["file_bytes_out"] == out.stat().st_size
    assert sum(report["tensors_per_type"].values()) == len(tout)


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quantize")


@pytest.fixture(scope="module")
def synth(work) -> dict[str, Path]:
    return {name: write_synth(s, work / f"{name}.gguf") for name, s in SYNTH.items()}


@pytest.fixture(scope="module")
def synth_reader(synth):
    return functools.lru_cache(maxsize=None)(lambda name: gguf.GGUFReader(str(synth[name])))


@pytest.fixture(scope="module")
def imatrix(work) -> dict[str, Path]:
    """gqa4: every matrix, plus a token_embd entry of the wrong width (both tools skip it), one for a
    tensor the model lacks and one matrix no token reached, under a path longer than the 127 bytes
    llama keeps of it; its .dat twin. gqa1: the tied head's token_embd entry (used), two entries left
    out (those tensors are quantized without), chunk_count 0 (no quantize.imatrix.chunks_count)."""
    long_dir = work / ("imatrix-" + "x" * 100)
    long_dir.mkdir()
    a = imatrix_entries(SYNTH["gqa4"], seed=11)
    a["token_embd.weight"] = (np.full(SYNTH["gqa4"].n_vocab, 7.0, dtype=np.float32), 10.0)
    a["blk.99.attn_q.weight"] = (np.ones(256, dtype=np.float32), 3.0)
    a["blk.3.ffn_down.weight"] = (np.zeros(SYNTH["gqa4"].n_ff, dtype=np.float32), 0.0)
    b = imatrix_entries(SYNTH["gqa1"], seed=12)
    del b["blk.2.attn_v.weight"], b["blk.5.ffn_up.weight"]
    datasets = ["calibration/" + "wiki-" * 30 + "train.txt", "second.txt"]  # the first, cut at 127 bytes
    return {
        "gqa4": write_imatrix(long_dir / "gqa4.imatrix.gguf", a, datasets, chunk_count=10, chunk_size=512),
        "gqa4_dat": write_imatrix_dat(work / "gqa4.imatrix.dat", a, "calibration.txt", chunks=10, ncall=10),
        "gqa1": write_imatrix(work / "gqa1.imatrix.gguf", b, ["tiny.txt"], chunk_count=0, chunk_size=256),
    }


# ---- every mix, byte for byte ---------------------------------------------------------------------


@pytest.mark.parametrize("mix", PLAIN_MIXES)
@pytest.mark.parametrize("model", list(SYNTH))
def test_every_mix_identical(model, mix, synth, synth_reader, work, peregrine_bin, llama_quantize):
    pair = run_pair(peregrine_bin, llama_quantize, synth[model], work / "out", mix)
    assert_identical(pair, f"{model} {mix}")
    check_readback(synth_reader(model), pair.ours, pair.report, mix)
    assert pair.report["fallbacks"] == 0 or model == "odd"
    _unlink(pair.ours, pair.theirs)


def test_every_mix_is_tested(peregrine_bin):
    """The mixes `quantize --help` lists are the ones tested here (a new one must join MIXES)."""
    r = subprocess.run([str(peregrine_bin), "quantize", "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    listed = re.findall(r"^  (\S+) +\S", r.stdout.split("TYPE is one of:", 1)[1], re.M)
    assert sorted(listed) == sorted(MIXES)


def test_fallbacks_happen(synth, peregrine_bin):
    """The odd model's rows take the fallbacks (else test_every_mix_identical[odd-*] proves little)."""
    r = subprocess.run([str(peregrine_bin), "quantize", str(synth["odd"]), "-", "Q4_K_M", "--dry-run", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    to = {t["name"]: t["to"] for t in json.loads(r.stdout)["tensors"]}
    assert to["blk.0.attn_q.weight"] == "Q5_0"  # Q4_K on rows of 96
    assert to["blk.0.ffn_down.weight"] == "F16"  # rows of 80: no 32-block either
    assert to["token_embd.weight"] == "Q8_0"  # the tied head's Q6_K
    assert to["blk.1.column_proj.weight"] == "F16"  # rows of 1
    assert to["blk.0.time_mix_lerp_x.weight"] == to["blk.1.layer_scale.weight"] == "BF16"  # vectors: kept


@pytest.mark.parametrize("alias", ["Q3_K", "Q4_K", "Q5_K"])
def test_short_k_names(alias, synth, work, peregrine_bin, llama_quantize):
    pair = run_pair(peregrine_bin, llama_quantize, synth["odd"], work / "out", alias)
    assert_identical(pair, f"odd {alias}")
    assert pair.report["type"] == alias + "_M"
    _unlink(pair.ours, pair.theirs)


OPTION_CASES = {
    # name: (model, mix, our options, llama's options)
    "pure_Q4_K_M": ("gqa4", "Q4_K_M", ["--pure"], ["--pure"]),
    "pure_Q2_K": ("gqa1", "Q2_K", ["--pure"], ["--pure"]),
    # first match wins; upper case (llama lower-cases patterns); blk.0's attn_v overridden, so the
    # K_M rule counts one attn_v less and every later layer's choice shifts
    "keep_type_Q4_K_M": ("gqa4", "Q4_K_M",
                         ["--keep-type", r"blk\.0\.attn_v=q8_0", "--keep-type", "ATTN_Q=Q5_1",
                          "--keep-type", r"blk\.1[0-5]\.ffn_up=q3_k", "--keep-type", "ffn_up=Q5_K"],
                         ["--tensor-type", r"blk\.0\.attn_v=q8_0", "--tensor-type", "ATTN_Q=Q5_1",
                          "--tensor-type", r"blk\.1[0-5]\.ffn_up=q3_k", "--tensor-type", "ffn_up=Q5_K"]),
    # Q4_K on rows of 96 in a quantized mix: the fallback (Q5_0), as llama does
    "keep_type_fallback": ("odd", "Q8_0", ["--keep-type", "attn_q=Q4_K", "--keep-type", "ffn_down=Q6_K"],
                           ["--tensor-type", "attn_q=Q4_K", "--tensor-type", "ffn_down=Q6_K"]),
    "output_and_embedding_types": ("gqa4", "Q4_K_S", ["--output-type", "q8_0", "--token-embedding-type", "Q5_K"],
                                   ["--output-tensor-type", "q8_0", "--token-embedding-type", "q5_K"]),
}


@pytest.mark.parametrize("case", list(OPTION_CASES))
def test_options_identical(case, synth, synth_reader, work, peregrine_bin, llama_quantize):
    model, mix, ours_opts, llama_opts = OPTION_CASES[case]
    pair = run_pair(peregrine_bin, llama_quantize, synth[model], work / "out", mix, ours_opts=ours_opts,
                    llama_opts=llama_opts, tag=f"-{case}")
    assert_identical(pair, f"{model} {mix} {' '.join(ours_opts)}")
    check_readback(synth_reader(model), pair.ours, pair.report, mix)
    if case == "keep_type_Q4_K_M":
        to = {t["name"]: t["to"] for t in pair.report["tensors"]}
        assert to["blk.0.attn_v.weight"] == "Q8_0" and to["blk.3.attn_q.weight"] == "Q5_1"
        assert to["blk.12.ffn_up.weight"] == "Q3_K" and to["blk.2.ffn_up.weight"] == "Q5_K"
    _unlink(pair.ours, pair.theirs)


def test_options_before_positionals(synth, work, peregrine_bin):
    """llama-quantize's order: a repeatable option takes one value, then the positionals."""
    out = work / "out" / "before.gguf"
    r = subprocess.run([str(peregrine_bin), "quantize", "--keep-type", "attn_v=Q8_0", str(synth["odd"]), str(out),
                        "Q4_0", "-t", "1"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    _unlink(out)


# ---- with an importance matrix --------------------------------------------------------------------


@pytest.mark.parametrize("mix", IMATRIX_MIXES)
def test_imatrix_identical(mix, synth, synth_reader, imatrix, work, peregrine_bin, llama_quantize):
    path = str(imatrix["gqa4"])
    assert len(path) > 127  # quantize.imatrix.file keeps 127 bytes of it
    pair = run_pair(peregrine_bin, llama_quantize, synth["gqa4"], work / "out", mix, ours_opts=["--imatrix", path],
                    llama_opts=["--imatrix", path], tag="-imatrix")
    assert_identical(pair, f"gqa4 {mix} --imatrix")
    check_readback(synth_reader("gqa4"), pair.ours, pair.report, mix, imatrix_keys=IMATRIX_KEYS)
    r = gguf.GGUFReader(str(pair.ours))
    assert r.fields["quantize.imatrix.file"].contents() == path[:127]
    assert r.fields["quantize.imatrix.entries_count"].contents() == len(matmul_inputs(SYNTH["gqa4"])) + 2
    # every converted matrix but token_embd (its entry has the wrong width) used the matrix
    used = {t["name"] for t in pair.report["tensors"] if t["imatrix"]}
    assert "token_embd.weight" not in used and "blk.3.ffn_down.weight" in used
    if mix == "Q4_0":  # with an importance matrix, ffn_down of the first n_layer/8 layers gets Q4_1
        to = {t["name"]: t["to"] for t in pair.report["tensors"]}
        assert to["blk.1.ffn_down.weight"] == "Q4_1" and to["blk.2.ffn_down.weight"] == "Q4_0"
    _unlink(pair.ours, pair.theirs)


@pytest.mark.parametrize("mix", ["Q3_K_M", "Q4_K_M", "Q5_0"])
def test_imatrix_partial_tied(mix, synth, imatrix, work, peregrine_bin, llama_quantize):
    path = str(imatrix["gqa1"])
    pair = run_pair(peregrine_bin, llama_quantize, synth["gqa1"], work / "out", mix, ours_opts=["--imatrix", path],
                    llama_opts=["--imatrix", path], tag="-imatrix")
    assert_identical(pair, f"gqa1 {mix} --imatrix (partial)")
    used = {t["name"] for t in pair.report["tensors"] if t["imatrix"]}
    assert "token_embd.weight" in used  # the tied head's input
    assert "blk.2.attn_v.weight" not in used and "blk.5.ffn_up.weight" not in used
    _unlink(pair.ours, pair.theirs)


def test_imatrix_legacy_dat(synth, imatrix, work, peregrine_bin, llama_quantize):
    path = str(imatrix["gqa4_dat"])
    pair = run_pair(peregrine_bin, llama_quantize, synth["gqa4"], work / "out", "Q4_K_M",
                    ours_opts=["--imatrix", path], llama_opts=["--imatrix", path], tag="-dat")
    assert_identical(pair, "gqa4 Q4_K_M --imatrix (.dat)")
    _unlink(pair.ours, pair.theirs)


# ---- type choice alone: models the small ones cannot be ---------------------------------------------


def parse_llama_dry_run(log: str) -> dict[str, str]:
    """tensor -> its type in llama-quantize --dry-run's log ("(q4_K)" when converted, else its own)."""
    out = {}
    for m in re.finditer(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\S+), size =[^\n(]*(?:\((\S+)\))?$",
                         log, re.M):
        out[m.group(1)] = (m.group(3) or m.group(2)).upper()
    return out


@pytest.fixture(scope="module")
def sparse(work) -> dict[str, Path]:
    return {name: write_sparse(s, work / f"sparse-{name}.gguf") for name, s in SPARSE.items()}


@pytest.mark.parametrize("model", list(SPARSE))
def test_dry_run_types(model, sparse, peregrine_bin, llama_quantize):
    """Every tensor's type, ours (--dry-run --json) against llama's (--dry-run log), for each K mix."""
    bad = []
    for mix in DRY_RUN_MIXES:
        pl = subprocess.Popen([str(llama_quantize), "--dry-run", str(sparse[model]), mix, "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        po = subprocess.run([str(peregrine_bin), "quantize", str(sparse[model]), "unused.gguf", mix, "--dry-run",
                             "--json", "-t", "1"], capture_output=True, text=True, timeout=120)
        log, _ = pl.communicate(timeout=120)
        assert pl.returncode == 0, log[-3000:]
        assert po.returncode == 0, po.stderr
        theirs = parse_llama_dry_run(log)
        ours = {t["name"]: t["to"] for t in json.loads(po.stdout)["tensors"]}
        assert len(theirs) == len(ours), f"{mix}: parsed {len(theirs)} of llama's {len(ours)} tensors"
        diff = sorted(n for n in ours if ours[n] != theirs.get(n))
        if diff:
            bad.append(f"{mix}: " + ", ".join(f"{n} ours {ours[n]} llama {theirs.get(n)}" for n in diff[:6]))
    assert not bad, f"{model}: types differ\n" + "\n".join(bad)


def test_dry_run_70b_rule_shows(sparse, peregrine_bin):
    """llama80_gqa and qwen2_80 get the 70B attn_v bump, llama80_mha (65B) does not."""
    def attn_v(model):
        r = subprocess.run([str(peregrine_bin), "quantize", str(sparse[model]), "x.gguf", "Q3_K_S", "--dry-run",
                            "--json"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return {t["name"]: t["to"] for t in json.loads(r.stdout)["tensors"]}["blk.40.attn_v.weight"]

    assert attn_v("llama80_gqa") == attn_v("qwen2_80") == attn_v("olmo_80") == attn_v("jais2_68") == "Q5_K"
    assert attn_v("llama80_mha") == "Q3_K"


# ---- real models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mix", ["Q4_K_M", "Q5_K_M"])
def test_smollm2_identical(mix, f16_model_path, work, peregrine_bin, llama_quantize):
    pair = run_pair(peregrine_bin, llama_quantize, f16_model_path, work / "real", mix)
    assert_identical(pair, f"{f16_model_path.name} {mix}")
    assert pair.report["fallbacks"] > 0  # rows of 576: Q4_K/Q5_K/Q6_K fall back to 32-blocks
    _unlink(pair.ours, pair.theirs)


def test_gemma_requantized_to_f16_identical(gemma_path, work, peregrine_bin, llama_quantize):
    pair = run_pair(peregrine_bin, llama_quantize, gemma_path, work / "real", "F16",
                    llama_opts=["--allow-requantize"])
    try:
        assert_identical(pair, f"{gemma_path.name} F16")
    finally:
        _unlink(pair.ours, pair.theirs)


# ---- bad input ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(work, synth) -> dict[str, Path]:
    d = work / "bad"
    d.mkdir()
    odd = SYNTH["odd"]
    text = d / "notes.txt"
    text.write_text("this is not a model\n")
    empty = d / "empty.gguf"
    empty.write_bytes(b"")
    data = synth["gqa1"].read_bytes()
    trunc = d / "truncated.gguf"
    trunc.write_bytes(data[: len(data) // 2])
    header_only = d / "header.gguf"
    header_only.write_bytes(data[:20])

    s256 = Synth("iq", 1, 256, 256, 4, 4, 64, tied=False, wtype="F16", seed=4)

    def iq2_256(rows: int) -> np.ndarray:
        rng = np.random.default_rng(5)
        b = rng.integers(0, 256, size=(rows, 66), dtype=np.uint8)
        b[:, 0:2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
        return b

    iq_convert = write_synth(s256, d / "iq2_attn_q.gguf", raw={"blk.0.attn_q.weight": (iq2_256(256), QT.IQ2_XXS)})
    iq_copy = write_synth(s256, d / "iq2_router.gguf", raw={"blk.0.ffn_gate_inp.weight": (iq2_256(8), QT.IQ2_XXS)})

    def put_nan(t):
        t["blk.1.ffn_up.weight"][7, 3] = np.nan

    nan = write_synth(odd, d / "nan.gguf", edit=put_nan)
    wrong = imatrix_entries(SYNTH["gqa4"], seed=13)
    wrong["blk.4.attn_k.weight"] = (np.ones(128, dtype=np.float32), 1.0)
    partial = imatrix_entries(SYNTH["gqa4"], seed=14)
    del partial["blk.6.attn_output.weight"]
    return {
        "text": text, "empty": empty, "truncated": trunc, "header_only": header_only,
        "iq_convert": iq_convert, "iq_copy": iq_copy, "nan": nan,
        "imatrix_wrong_size": write_imatrix(d / "wrong.imatrix.gguf", wrong, ["x.txt"], 1, 512),
        "imatrix_partial": write_imatrix(d / "partial.imatrix.gguf", partial, ["x.txt"], 1, 512),
    }


# name: (input, mix, extra options, words the error line must hold ("{input}": the input's file name),
# llama's options or None when llama is not asked). Inputs: a SYNTH name or a bad_inputs name;
# "{imatrix:NAME}" in options is that bad_inputs file, "{model:NAME}" that SYNTH file.
BAD = {
    "unknown_type": ("gqa1", "Q4_K_X", [], "unknown type", []),
    "keep_type_rows_do_not_fit": ("odd", "F16", ["--keep-type", "attn_q=Q4_K"], "not a whole number", None),
    "keep_type_no_equals": ("odd", "Q4_0", ["--keep-type", "attn_v"], "PATTERN=TYPE", None),
    "keep_type_no_type": ("odd", "Q4_0", ["--keep-type", "attn_v="], "PATTERN=TYPE", None),
    "keep_type_no_pattern": ("odd", "Q4_0", ["--keep-type", "=Q8_0"], "PATTERN=TYPE", None),
    "keep_type_unknown_type": ("odd", "Q4_0", ["--keep-type", "attn_v=Q9_0"], "unknown", None),
    "keep_type_unquantizable_type": ("odd", "Q4_0", ["--keep-type", "attn_v=IQ2_XXS"], "unquantizable", None),
    "keep_type_bad_regex": ("odd", "Q4_0", ["--keep-type", "blk.(0=Q8_0"], "bad pattern", None),
    "output_type_unknown": ("odd", "Q4_0", ["--output-type", "Q7_K"], "unknown", None),
    "not_gguf": ("text", "Q4_0", [], "not a GGUF", []),
    "empty_file": ("empty", "Q4_0", [], "{input}", []),
    "truncated": ("truncated", "Q4_0", [], "{input}", []),
    "header_only": ("header_only", "Q4_0", [], "{input}", []),
    "missing_input": ("missing", "Q4_0", [], "{input}", []),
    "iq2_xxs_needs_converting": ("iq_convert", "Q4_0", [], "cannot be decoded", None),
    "nan_in_weights": ("nan", "Q8_0", [], "NaN", None),
    "imatrix_wrong_size": ("gqa4", "Q4_K_M", ["--imatrix", "{imatrix:imatrix_wrong_size}"], "imatrix entry",
                           ["--imatrix", "{imatrix:imatrix_wrong_size}"]),
    "imatrix_not_an_imatrix": ("gqa4", "Q4_K_M", ["--imatrix", "{model:odd}"], "odd.gguf", None),
    "imatrix_missing": ("gqa4", "Q4_K_M", ["--imatrix", "{missing}"], "no-such-file.gguf", None),
    "q2_k_s_without_imatrix": ("gqa4", "Q2_K_S", [], "importance matrix", []),
    "q2_k_s_imatrix_lacks_a_tensor": ("gqa4", "Q2_K_S", ["--imatrix", "{imatrix:imatrix_partial}"],
                                      "importance matrix", ["--imatrix", "{imatrix:imatrix_partial}"]),
}


def _expand(arg: str, synth, bad_inputs, d: Path) -> str:
    if arg.startswith("{imatrix:"):
        return str(bad_inputs[arg[9:-1]])
    if arg.startswith("{model:"):
        return str(synth[arg[7:-1]])
    if arg == "{missing}":
        return str(d / "no-such-file.gguf")
    return arg


def _check_error_line(r: subprocess.CompletedProcess, words: str, what: str) -> None:
    assert r.returncode != 0, f"{what}: exited 0\nstdout: {r.stdout[-500:]}"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{what}: stderr is not one error line:\n{r.stderr}"
    assert words.lower() in lines[0].lower(), f"{what}: {lines[0]!r} does not say {words!r}"


@pytest.mark.parametrize("existing", [False, True], ids=["new_output", "existing_output"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(case, existing, synth, bad_inputs, work, peregrine_bin, llama_quantize):
    src, mix, opts, words, llama_opts = BAD[case]
    d = work / f"bad-{case}-{existing}"
    d.mkdir()
    inp = synth[src] if src in synth else bad_inputs[src] if src in bad_inputs else d / "missing.gguf"
    opts = [_expand(a, synth, bad_inputs, d) for a in opts]
    out = d / "out.gguf"
    if existing:
        out.write_bytes(b"an older file that must survive\n")
    before = sorted(p.name for p in d.iterdir())
    r = subprocess.run([str(peregrine_bin), "quantize", str(inp), str(out), mix, "-t", str(THREADS), *opts],
                       capture_output=True, text=True, timeout=120)
    _check_error_line(r, inp.name if words == "{input}" else words, case)
    assert sorted(p.name for p in d.iterdir()) == before, f"{case}: files left behind"
    if existing:
        assert out.read_bytes() == b"an older file that must survive\n", f"{case}: the existing output changed"
    if llama_opts is not None and not existing:  # llama-quantize refuses it too
        lo = [_expand(a, synth, bad_inputs, d) for a in llama_opts]
        lr = subprocess.run([str(llama_quantize), *lo, str(inp), str(d / "llama.gguf"), mix, "1"],
                            capture_output=True, text=True, timeout=120)
        assert lr.returncode != 0, f"{case}: llama-quantize accepted it"


def test_bad_output_paths(synth, work, peregrine_bin, llama_quantize):
    """No folder for the output; the output is the input (same path, another spelling, a hard link):
    refused before anything is written, the input unchanged."""
    d = work / "paths"
    d.mkdir()
    inp = d / "model.gguf"
    inp.write_bytes(synth["odd"].read_bytes())
    digest = sha256(inp)
    os.link(inp, d / "hardlink.gguf")
    cases = {
        "no_folder": (d / "no" / "such" / "out.gguf", "no such file"),
        "same_path": (inp, "overwrite the input"),
        "other_spelling": (d / ".." / d.name / "." / "model.gguf", "overwrite the input"),
        "hard_link": (d / "hardlink.gguf", "overwrite the input"),
    }
    for name, (out, words) in cases.items():
        r = subprocess.run([str(peregrine_bin), "quantize", str(inp), str(out), "Q4_0"], capture_output=True,
                           text=True, timeout=60)
        _check_error_line(r, words, name)
        assert sha256(inp) == digest, f"{name}: the input changed"
        assert sorted(p.name for p in d.iterdir()) == ["hardlink.gguf", "model.gguf"], f"{name}: files left behind"
    assert not (d / "no").exists()
    lr = subprocess.run([str(llama_quantize), str(inp), str(inp), "Q4_0", "1"], capture_output=True, text=True,
                        timeout=60)
    assert lr.returncode != 0 and sha256(inp) == digest  # llama refuses the same file too


def test_undecodable_tensor_copied(bad_inputs, work, peregrine_bin, llama_quantize):
    """An IQ2_XXS tensor the mix keeps (a router) is copied as it is, as llama does: no decoding needed."""
    pair = run_pair(peregrine_bin, llama_quantize, bad_inputs["iq_copy"], work / "out", "Q4_K_M", tag="-iq2")
    assert_identical(pair, "IQ2_XXS router, Q4_K_M")
    to = {t["name"]: (t["from"], t["to"]) for t in pair.report["tensors"]}
    assert to["blk.0.ffn_gate_inp.weight"] == ("IQ2_XXS", "IQ2_XXS")
    _unlink(pair.ours, pair.theirs)
