#!/usr/bin/env python3
"""Decode and prompt speed per weight type on a synthetic Llama model, peregrine vs llama.cpp on the same files.

The real models here (SmolLM2-135M: rows of 576, Gemma 3 270M: rows of 640) cannot hold K-quant or
ternary blocks (256 wide) in most matrices, so their TQ1_0 / TQ2_0 / Q2_K files are mostly Q4_0
fallbacks and say little about those kernels. This script measures the types on a random-weight
Llama whose widths are multiples of 256, so every layer matrix gets the mix's own type:

  1. the F16 base: a llama-architecture GGUF written with gguf-py (tests/reference's synthetic
     models show the layout), by default the widths of BitNet b1.58 "large" (n_embd 1536, n_ff 4096,
     16 heads of 96) with 12 layers and 4 KV heads, untied output, SmolLM2's tokenizer
     (tokenizer.ggml.*, vocab 49152, so both engines load and tokenize it); matrices F16 normal
     x 0.02, norms 1.0 (values do not matter for speed; none is NaN or inf). Written once into
     --work-dir (default ~/.cache/peregrine/models/synthetic-llama-1536.F16.gguf) and reused;
     another shape gets its own file name. Writing it needs gguf-py and numpy (.venv).
  2. each --types mix via `peregrine quantize BASE OUT TYPE --json` (byte-identical to llama-quantize;
     F16 is the base itself, measured as it is); the file's MiB, bits per weight (tensor bytes x 8 /
     weights) and the tensor types it holds come from that JSON (F16: from a --dry-run).
  3. pp512 and tg128 of `peregrine bench` and llama-bench on that one file, alternating per test
     (llama.cpp then peregrine, pp then tg) for --rounds rounds, each run one process doing --reps
     repetitions, with bench/compare.py's Cell / run_llama / run_peregrine: llama-bench with its
     default configuration, retried with --repack 0 if that dies (footnoted), as compare.py does.
     llama-bench is bench/llama_cpp_build.py's build (built on first use, CPU, -march=native).
  4. a markdown table to stdout (and --out): MiB, bpw, pp and tg tokens/s of both engines with the
     ratio peregrine / llama.cpp, and the tg "weight-read bandwidth" = file bytes x tg tokens/s in
     GB/s (1e9 B/s). That counts the whole file, token_embd included, of which a token reads one row:
     the footer gives token_embd's share so the streamed bytes can be worked out.
Every command is logged to stderr ("$ ..."). Quantized files are deleted after their row unless --keep.

    .venv/bin/python bench/synthetic_speed.py --out synthetic_speed.md --json-out synthetic_speed.json
    .venv/bin/python bench/synthetic_speed.py --types TQ1_0,TQ2_0,Q4_0 --rounds 2 --reps 2
    # a quick check of the pipeline (seconds):
    .venv/bin/python bench/synthetic_speed.py --n-embd 512 --n-ff 1024 --layers 2 \\
        --types TQ2_0,Q4_0 --reps 1 -n 16 -p 64 --work-dir /tmp/synth-speed

Time (2 threads of the shared 2-core AMD EPYC VM this was written on): the tiny check above takes
~7 s with the base written (~3 s when it is reused). The default run is an estimate, not measured
(it was written while another benchmark used the machine): the model has 448M weights (297M in the
12 layers, 75M each in token_embd and output), ~0.74 GFLOP per token, 2.8x SmolLM2-135M, which
measures here llama.cpp pp512 ~480 / tg128 ~160 t/s and peregrine ~1750-2450 / ~390-410 t/s
(README, Q4_1). Scaled by 2.8 a 4-8 bit row is a quantize of ~5-20 s plus four bench processes of
4 runs each (warm-up and --reps 3) of ~1-4 s, about 1 min; F16 (860 MiB, ~15-30 t/s tg) and slow
llama.cpp kernels (TQ1_0 prompt processing) 1.5-3 min. Writing the F16 base once: ~30 s. So the
default 7 types take roughly 10-20 min, up to twice that on a busy machine; --rounds multiplies the
bench part, --reps 1 halves it.
Only the standard library is used for the benchmark itself; gguf-py and numpy for writing the base.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

# bench/ is sys.path[0] when run as a script; also when imported from elsewhere
sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (FALLBACK, MODELS, REPO, BenchFailed, Cell, cpu_isa, cpu_name,  # noqa: E402
                     footnote_mark, git_describe, run_llama, run_peregrine)
from llama_cpp_build import LLAMA_CPP_PYTHON_VERSION, Failure, build_target, log  # noqa: E402

DEFAULT_TYPES = "TQ1_0,TQ2_0,Q2_K,Q4_0,Q4_K_M,Q8_0,F16"
TOKENIZER_SOURCE = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHT_STD = 0.02


# ---------------------------------------------------------------------------------------------
# The synthetic base model

@dataclass(frozen=True)
class Shape:
    n_embd: int = 1536
    n_ff: int = 4096
    n_layer: int = 12
    n_head: int = 16
    n_head_kv: int = 4
    context_length: int = 4096
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def file_name(self) -> str:
        """synthetic-llama-1536.F16.gguf when all but n_embd are the defaults; other shapes spell themselves out."""
        if replace(self, n_embd=Shape.n_embd) == Shape():
            return f"synthetic-llama-{self.n_embd}.F16.gguf"
        return (f"synthetic-llama-{self.n_embd}-ff{self.n_ff}-l{self.n_layer}-h{self.n_head}-kv{self.n_head_kv}"
                f"-c{self.context_length}-s{self.seed}.F16.gguf")

    def n_vocab_from(self, n_elements: int) -> int:
        """The vocabulary, from the weights' total count (quantize --json's n_elements): token_embd and
        output are the only tensors that depend on it."""
        fixed = sum(math.prod(s) for _, s in self.tensors(0))
        return (n_elements - fixed) // (2 * self.n_embd)

    def tensors(self, n_vocab: int) -> list[tuple[str, tuple[int, ...]]]:
        """(GGUF name, numpy shape [rows, cols]) in llama.cpp's file order; 1-D tensors are norms."""
        E, F, KV = self.n_embd, self.n_ff, self.head_dim * self.n_head_kv
        out = [("token_embd.weight", (n_vocab, E))]
        for i in range(self.n_layer):
            b = f"blk.{i}."
            out += [(b + "attn_norm.weight", (E,)), (b + "attn_q.weight", (E, E)), (b + "attn_k.weight", (KV, E)),
                    (b + "attn_v.weight", (KV, E)), (b + "attn_output.weight", (E, E)),
                    (b + "ffn_norm.weight", (E,)), (b + "ffn_gate.weight", (F, E)), (b + "ffn_up.weight", (F, E)),
                    (b + "ffn_down.weight", (E, F))]
        out += [("output_norm.weight", (E,)), ("output.weight", (n_vocab, E))]
        return out


def smollm2_tokenizer(source: Path) -> dict:
    """SmolLM2's whole tokenizer.ggml.* (tests/reference/synthetic_models.py reads it)."""
    sys.path.insert(0, str(REPO / "tests" / "reference"))
    from synthetic_models import smollm2_tokenizer as read  # gguf-py + numpy
    return read(None, source)


def add_tokenizer(w, tok: dict) -> None:
    """The converter's tokenizer keys (tests/reference/synthetic_models.py writes them)."""
    sys.path.insert(0, str(REPO / "tests" / "reference"))
    from synthetic_models import add_tokenizer as add
    add(w, tok)


def write_base(shape: Shape, path: Path, tokenizer_source: Path) -> None:
    """Write the F16 base to PATH (via a temporary file beside it, renamed when complete).

    Tensors are streamed one at a time (add_tensor_info, then write_tensor_data), so memory stays
    at about one tensor in float32 however large the model."""
    try:
        import gguf
        import numpy as np
    except ImportError as e:
        raise Failure(f"writing the base needs gguf-py and numpy ({e}); run with .venv/bin/python") from None
    if not tokenizer_source.is_file():
        raise Failure(f"{tokenizer_source} not found (build/bin/peregrine pull smollm2-135m fetches it)")
    for name, value, mult in (("n_embd", shape.n_embd, 256), ("n_ff", shape.n_ff, 256)):
        if value % mult:
            log(f"warning: {name} {value} is not a multiple of {mult}: K-quant and ternary types will fall back")
    if shape.n_embd % shape.n_head or shape.n_head % shape.n_head_kv or shape.head_dim % 2:
        raise Failure("n_embd must divide into n_head heads of even size, n_head into n_head_kv groups")
    t0 = time.monotonic()
    tok = smollm2_tokenizer(tokenizer_source)
    n_vocab = len(tok["tokens"])
    log(f"writing the F16 base {path} (n_embd {shape.n_embd}, n_ff {shape.n_ff}, {shape.n_layer} layers, "
        f"{shape.n_head}/{shape.n_head_kv} heads, vocab {n_vocab}, untied output)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    w = gguf.GGUFWriter(str(tmp), "llama")
    try:
        w.add_name("peregrine-synthetic-llama")
        w.add_type(gguf.GGUFType.MODEL)
        w.add_block_count(shape.n_layer)
        w.add_context_length(shape.context_length)
        w.add_embedding_length(shape.n_embd)
        w.add_feed_forward_length(shape.n_ff)
        w.add_head_count(shape.n_head)
        w.add_head_count_kv(shape.n_head_kv)
        w.add_rope_freq_base(10000.0)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
        w.add_vocab_size(n_vocab)
        w.add_rope_dimension_count(shape.head_dim)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        add_tokenizer(w, tok)
        tensors = shape.tensors(n_vocab)
        for name, shp in tensors:
            dtype = np.float32 if len(shp) == 1 else np.float16
            n = 1
            for d in shp:
                n *= d
            w.add_tensor_info(name, shp, np.dtype(dtype), n * np.dtype(dtype).itemsize)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        rng = np.random.default_rng(shape.seed)
        for name, shp in tensors:
            if len(shp) == 1:
                w.write_tensor_data(np.ones(shp, dtype=np.float32))
            else:
                a = rng.standard_normal(shp, dtype=np.float32)
                a *= np.float32(WEIGHT_STD)
                w.write_tensor_data(a.astype(np.float16))
        w.close()
        tmp.replace(path)
    finally:
        w.close()
        tmp.unlink(missing_ok=True)
    log(f"  wrote {path.stat().st_size / 2**20:.1f} MiB in {time.monotonic() - t0:.0f} s")


# ---------------------------------------------------------------------------------------------
# Rows

@dataclass
class Row:
    qtype: str
    file: Path | None = None
    file_bytes: int | None = None
    bpw: float | None = None
    n_elements: int | None = None
    per_type: dict = field(default_factory=dict)  # tensor type -> count
    embd: str = ""  # token_embd's type
    embd_bytes: int = 0
    fallbacks: int = 0
    quantize_s: float | None = None
    pp: Cell | None = None
    tg: Cell | None = None
    errors: list[str] = field(default_factory=list)


def logged_run(cmd: list[str], timeout: float, commands: list[str]) -> subprocess.CompletedProcess:
    log("$ " + shlex.join(cmd))
    commands.append(shlex.join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchFailed(f"timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines()) if ln.strip()]
        raise BenchFailed(f"exit {proc.returncode}: {(lines or ['(no output)'])[-1].strip()}")
    return proc


def quantize(row: Row, base: Path, work: Path, peregrine: Path, threads: int, timeout: float,
             commands: list[str]) -> None:
    """Quantize BASE to ROW.qtype into WORK (F16: a --dry-run for the stats, the base is the file)."""
    if row.qtype == "F16":
        out, extra = work / "dry-run.gguf", ["--dry-run"]
    else:
        out, extra = work / f"{base.name.removesuffix('.F16.gguf')}.{row.qtype}.gguf", []
    t0 = time.monotonic()
    proc = logged_run([str(peregrine), "quantize", str(base), str(out), row.qtype, *extra, "-t", str(threads),
                       "--json"], timeout, commands)
    if not extra:
        row.quantize_s = time.monotonic() - t0
    start = proc.stdout.find("{")
    try:
        q = json.loads(proc.stdout[start:])
        row.n_elements = int(q["n_elements"])
        row.bpw = q["tensor_bytes_in" if extra else "tensor_bytes_out"] * 8 / row.n_elements
        row.per_type = dict(sorted(q["tensors_per_type"].items(), key=lambda kv: -kv[1]))
        row.fallbacks = int(q.get("fallbacks", 0))
        for t in q.get("tensors", []):
            if t.get("name") == "token_embd.weight":
                row.embd, row.embd_bytes = t.get("to", "?"), int(t.get("bytes", 0))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        raise BenchFailed(f"unreadable quantize --json ({e!r})") from None
    row.file = base if extra else out
    row.file_bytes = row.file.stat().st_size


def measure(row: Row, llama_bench: Path, peregrine: Path, args, rnd: int, commands: list[str]) -> None:
    """One round of ROW: pp then tg, each llama-bench then peregrine bench (one process each)."""
    for cell in (row.pp, row.tg):
        if cell is None or cell.error:
            continue
        engine = "llama.cpp"
        try:
            cmd = cell.llama_cmd(llama_bench, args.threads, args.reps, cell.default_failure is not None)
            log("$ " + shlex.join(cmd))
            commands.append(shlex.join(cmd))
            result, config = run_llama(cell, llama_bench, args.threads, args.reps, args.timeout)
            cell.llama.append(float(result["avg_ts"]))
            cell.llama_configs.append(config)
            engine = "peregrine"
            cmd = cell.peregrine_cmd(peregrine, args.threads, args.reps)
            log("$ " + shlex.join(cmd))
            commands.append(shlex.join(cmd))
            cell.ours.append(run_peregrine(cell, peregrine, args.threads, args.reps, args.timeout))
        except (BenchFailed, KeyError, ValueError) as e:
            cell.error, cell.error_engine = f"{engine} {cell.test} in round {rnd}: {e}", engine
            log(f"  {row.qtype} {cell.error}; skipping this test from now on")
            continue
        log(f"  {row.qtype} {cell.test} round {rnd}: llama.cpp ({config}) {cell.llama[-1]:.2f}, "
            f"peregrine {cell.ours[-1]:.2f} t/s")


# ---------------------------------------------------------------------------------------------
# Report

def mean_sd(xs: list[float]) -> str:
    if not xs:
        return "—"
    digits = 2 if statistics.mean(xs) < 10 else 1
    text = f"{statistics.mean(xs):.{digits}f}"
    return text + (f" ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else "")


def ratio(cell: Cell | None) -> str:
    if cell is None:
        return "—"
    n = min(len(cell.ours), len(cell.llama))
    return f"{statistics.mean(cell.ours[:n]) / statistics.mean(cell.llama[:n]):.2f}" if n else "—"


def gbps(row: Row, xs: list[float]) -> str:
    return f"{row.file_bytes * statistics.mean(xs) / 1e9:.1f}" if xs and row.file_bytes else "—"


def table(rows: list[Row], shape: Shape, base: Path, n_vocab: int, info: dict) -> tuple[str, dict]:
    notes: list[str] = []
    isas = sorted({i for r in rows for c in (r.pp, r.tg) if c for i in c.isa}) or ["?"]
    machine = f"{cpu_name()} ({os.cpu_count()} cores" + (f"; {cpu_isa()})" if cpu_isa() else ")")
    pp_label = info["pp_label"]
    tg_label = info["tg_label"]
    lines = [f"**CPU:** {machine} · **peregrine ISA:** {', '.join(isas)} · **llama.cpp:** {info['llama_commit']}, "
             f"-march=native · **threads:** {info['threads']}", "",
             f"| type | MiB | bpw | {pp_label} llama.cpp | {pp_label} peregrine | ours / llama | "
             f"{tg_label} llama.cpp | {tg_label} peregrine | ours / llama | {tg_label} GB/s llama.cpp | "
             f"{tg_label} GB/s peregrine |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    out_rows = []
    for r in rows:
        cells_txt = []
        for cell in (r.pp, r.tg):
            if cell is None:
                cells_txt.append(("—", "—", "—"))
                continue
            llama_txt, ours_txt = mean_sd(cell.llama), mean_sd(cell.ours)
            if cell.default_failure is not None and cell.llama:
                llama_txt += footnote_mark(notes, f"llama.cpp's default configuration died on this test "
                                                  f"({cell.default_failure}); measured with {' '.join(FALLBACK)}")
            if cell.error:
                mark = footnote_mark(notes, f"{'incomplete' if (cell.llama if cell.error_engine == 'llama.cpp' else cell.ours) else 'not measured'}: {cell.error}")
                if cell.error_engine == "llama.cpp":
                    llama_txt += mark
                else:
                    ours_txt += mark
            cells_txt.append((llama_txt, ours_txt, ratio(cell)))
        label = r.qtype
        for e in r.errors:
            label += footnote_mark(notes, e)
        mib = f"{r.file_bytes / 2**20:.1f}" if r.file_bytes else "—"
        bpw = f"{r.bpw:.2f}" if r.bpw else "—"
        tg_l = r.tg.llama if r.tg else []
        tg_o = r.tg.ours if r.tg else []
        lines.append(f"| {label} | {mib} | {bpw} | {' | '.join(cells_txt[0])} | {' | '.join(cells_txt[1])} | "
                     f"{gbps(r, tg_l)} | {gbps(r, tg_o)} |")
        out_rows.append({
            "type": r.qtype, "file": str(r.file) if r.file else None, "file_bytes": r.file_bytes, "bpw": r.bpw,
            "tensors_per_type": r.per_type, "token_embd": {"type": r.embd, "bytes": r.embd_bytes},
            "fallbacks": r.fallbacks, "quantize_s": r.quantize_s, "errors": r.errors,
            **{c.test: {"llama_tps": c.llama, "llama_configuration": c.llama_configs, "peregrine_tps": c.ours,
                        "peregrine_isa": sorted(c.isa), "llama_default_failure": c.default_failure,
                        "error": c.error} for c in (r.pp, r.tg) if c},
        })
    lines.append("")
    lines += [f"{footnote_mark(notes, n)} {n}" for n in list(notes)]
    if notes:
        lines.append("")
    n_params = sum(math.prod(s) for _, s in shape.tensors(n_vocab) if len(s) == 2)
    layer_params = n_params - 2 * n_vocab * shape.n_embd
    lines.append(
        f"Synthetic Llama (random F16 weights, normal × {WEIGHT_STD}): n_embd {shape.n_embd}, n_ff {shape.n_ff}, "
        f"{shape.n_layer} layers, {shape.n_head} heads / {shape.n_head_kv} KV heads (head_dim {shape.head_dim}), "
        f"vocab {n_vocab} (SmolLM2's tokenizer), untied output: {n_params / 1e6:.0f}M weights, of which "
        f"{layer_params / 1e6:.0f}M in the layers and {n_vocab * shape.n_embd / 1e6:.0f}M each in token_embd and "
        f"output. Base `{base}`; every other row is `peregrine quantize BASE OUT TYPE` (byte-identical to "
        "llama-quantize), measured on that one file by both engines. "
        f"Rounds: {info['rounds']}, each running per row and test llama-bench then peregrine bench, each a separate "
        f"process of {info['reps']} repetition{'s' if info['reps'] != 1 else ''}; t/s is the mean (± sd over rounds when there are several); the "
        "ratio is of the means. GB/s = file bytes × tg tokens/s / 1e9: the whole file, token_embd included, "
        "though a token reads one row of it (its type and MiB per row below). bpw: tensor bytes × 8 / weights. "
        f"1-minute load average {info['load_before']:.2f} before, {info['load_after']:.2f} after.")
    lines.append("")
    for r in rows:
        if r.per_type:
            mix = ", ".join(f"{t} {n}" for t, n in r.per_type.items())
            fb = f"; {r.fallbacks} fell back" if r.fallbacks else ""
            embd = f"; token_embd {r.embd} {r.embd_bytes / 2**20:.1f} MiB" if r.embd else ""
            q = f"; quantized in {r.quantize_s:.0f} s" if r.quantize_s is not None else ""
            lines.append(f"- {r.qtype}: tensors {mix}{fb}{embd}{q}")
    lines.append(f"- command: `{info['invocation']}`")
    lines.append(f"- llama.cpp@{info['llama_commit']} (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist): "
                 f"`{info['llama_template']}` (pp: `-n 0`, tg: `-p 0`)")
    lines.append(f"- peregrine {info['peregrine_git']}: `{info['peregrine_template']}` (pp: `-n 0`, tg: `-p 0`)")
    result = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "isa": cpu_isa()},
              "shape": {**shape.__dict__, "n_vocab": n_vocab, "n_params": n_params}, "base": str(base),
              "peregrine_isa": isas, **info, "rows": out_rows, "footnotes": notes}
    return "\n".join(lines), result


# ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default=DEFAULT_TYPES, help=f"comma-separated quantize types (default: {DEFAULT_TYPES})")
    ap.add_argument("--n-embd", type=int, default=Shape.n_embd, help="model width (default: 1536)")
    ap.add_argument("--n-ff", type=int, default=Shape.n_ff, help="FFN width (default: 4096)")
    ap.add_argument("--layers", type=int, default=Shape.n_layer, help="layers (default: 12)")
    ap.add_argument("--heads", type=int, default=Shape.n_head, help="attention heads (default: 16)")
    ap.add_argument("--kv-heads", type=int, default=Shape.n_head_kv, help="KV heads (default: 4)")
    ap.add_argument("--seed", type=int, default=Shape.seed, help="weights' seed (default: 0)")
    ap.add_argument("--work-dir", type=Path, default=MODELS,
                    help=f"where the F16 base is kept and the quantized files are written (default: {MODELS})")
    ap.add_argument("--tokenizer-from", type=Path, default=TOKENIZER_SOURCE,
                    help=f"GGUF whose tokenizer.ggml.* the base gets (default: {TOKENIZER_SOURCE})")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1, help="threads for both (default: nproc)")
    ap.add_argument("-r", "--reps", type=int, default=3, help="repetitions inside each bench process (default: 3)")
    ap.add_argument("--rounds", type=int, default=1, help="alternating rounds per row (default: 1)")
    ap.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (default: 512; 0 skips pp)")
    ap.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (default: 128; 0 skips tg)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="parallel jobs if llama-bench must be built (default: 2)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before one command counts as dead (default: 1800)")
    ap.add_argument("--keep", action="store_true", help="keep the quantized files in --work-dir")
    ap.add_argument("--out", type=Path, help="also write the markdown table to this file")
    ap.add_argument("--json-out", type=Path, help="also write the results and every command as JSON")
    args = ap.parse_args()

    types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    shape = Shape(args.n_embd, args.n_ff, args.layers, args.heads, args.kv_heads, seed=args.seed)
    commands: list[str] = []
    try:
        for name in ("threads", "reps", "rounds", "jobs", "n_embd", "n_ff", "layers", "heads", "kv_heads"):
            if getattr(args, name) < 1:
                raise Failure(f"--{name.replace('_', '-')} must be at least 1")
        if not types:
            raise Failure("--types is empty")
        if args.n_prompt < 0 or args.n_gen < 0 or args.n_prompt + args.n_gen == 0:
            raise Failure("-p and -n must be >= 0 and not both 0")
        built = Path(os.environ.get("PEREGRINE_BIN", REPO / "build" / "bin" / "peregrine"))
        if not os.access(built, os.X_OK):
            raise Failure(f"{built} not found; build it (scripts/build.sh peregrine) or set PEREGRINE_BIN")
        llama_bench, commit = build_target("llama-bench", args.jobs)
        work = args.work_dir.expanduser()
        base = work / shape.file_name()
        if base.is_file():
            log(f"reusing the F16 base {base} ({base.stat().st_size / 2**20:.1f} MiB)")
        else:
            write_base(shape, base, args.tokenizer_from.expanduser())
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    rows = [Row(t) for t in dict.fromkeys(types)]
    with tempfile.TemporaryDirectory(prefix="peregrine-synthetic-speed-") as tmp:
        peregrine = Path(tmp) / "peregrine"  # a private copy: others may rebuild build/bin/peregrine meanwhile
        shutil.copy2(built, peregrine)
        load_before = os.getloadavg()[0]
        if load_before >= 0.5 * (os.cpu_count() or 1):
            log(f"warning: 1-minute load average {load_before:.2f} on {os.cpu_count()} cores: other work shares the "
                "CPUs; llama.cpp's spinning threads slow down far more than peregrine's when oversubscribed "
                "(tg 4 vs 1000+ t/s on the tiny check), so the ratios will not mean much")
        for row in rows:
            log(f"== {row.qtype}")
            try:
                quantize(row, base, work, peregrine, args.threads, args.timeout, commands)
            except (BenchFailed, OSError) as e:
                row.errors.append(f"peregrine quantize {row.qtype}: {e}")
                log(f"  {row.errors[-1]}")
                continue
            if args.n_prompt:
                row.pp = Cell(row.file, f"pp{args.n_prompt}", "pp", args.n_prompt, 0)
            if args.n_gen:
                row.tg = Cell(row.file, f"tg{args.n_gen}", "tg", 0, args.n_gen)
            for rnd in range(1, args.rounds + 1):
                measure(row, llama_bench, peregrine, args, rnd, commands)
            if row.file != base and not args.keep:
                row.file.unlink(missing_ok=True)
        load_after = os.getloadavg()[0]

    common = f"-p N_PROMPT -n N_GEN -t {args.threads} -r {args.reps}"
    info = {
        "llama_commit": commit, "llama_bench": str(llama_bench), "peregrine_bin": str(built),
        "peregrine_git": git_describe(), "threads": args.threads, "reps": args.reps, "rounds": args.rounds,
        "load_before": load_before, "load_after": load_after,
        "pp_label": f"pp{args.n_prompt}", "tg_label": f"tg{args.n_gen}",
        "invocation": "bench/synthetic_speed.py " + shlex.join(sys.argv[1:]),
        "llama_template": f"llama-bench -m FILE {common} -o json",
        "peregrine_template": f"peregrine bench -m FILE {common} --json",
    }
    n_vocab = next((shape.n_vocab_from(r.n_elements) for r in rows if r.n_elements), 0)
    markdown, result = table(rows, shape, base, n_vocab, info)
    print(markdown)
    if args.out:
        args.out.write_text(markdown + "\n")
        log(f"wrote {args.out}")
    if args.json_out:
        result["commands"] = commands
        args.json_out.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json_out}")
    failed = [e for r in rows for e in r.errors] + [c.error for r in rows for c in (r.pp, r.tg) if c and c.error]
    for e in failed:
        print(f"error: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
