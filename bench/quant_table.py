#!/usr/bin/env python3
"""The compression table: every llama-quantize mix of a model, quantized and measured by peregrine and by llama.cpp.

For each model (SmolLM2-135M-Instruct, Gemma 3 270M) and each row type (F16 base, BF16, Q8_0, ...,
TQ1_0, and K-quant mixes with an importance matrix) the script quantizes the model's F16 base with
`peregrine quantize` and with llama-quantize (same input, type, imatrix and thread count; the two
files must be byte-identical, which is checked with cmp and footnoted if not), then measures on the
one file:
  - file size (MiB) and bits per weight (tensor bytes * 8 / elements, from `quantize --json`);
  - perplexity on GPL-3 in llama-perplexity's windows (-c 512): ours from `peregrine eval` (its
    ppl_model; the F16 row from `peregrine perplexity --llama-windows`, the same scoring), and
    llama-perplexity's on the same file as a cross-check;
  - KL divergence from the base (mean, 99th percentile) and top-1 agreement, `peregrine eval`;
  - pp512 / tg128 tokens/s of `peregrine bench` and llama-bench, alternating per file (llama.cpp
    then peregrine, for pp then tg, --reps rounds of one repetition each) so drift on a shared
    machine hits both alike; the peregrine cell also shows the ratio of the means;
  - quantize wall-clock seconds (process start to exit) of both tools.
The imatrix rows use `peregrine imatrix` on GPL-2 (-c 512, all of it): calibration and evaluation
texts differ. Bases: SmolLM2's F16 is bench/make_variants.py's dequantization of the Q4_1 release,
Gemma's is `peregrine quantize gemma-3-270m-q4_k_m.gguf gemma-3-270m.F16.gguf F16` (made once into
the model cache); quality is thus measured against those F16 files, not the original checkpoints.

llama.cpp (llama-quantize, llama-perplexity, llama-bench) comes from bench/llama_cpp_build.py's
default build, the one bench/compare.py uses for llama-bench (CPU, -march=native, AMX not compiled
out; llama-bench with its default --repack 1, retried with --repack 0 if that dies, as in compare.py).
The first run builds llama-quantize and llama-perplexity there if missing (seconds once llama-bench is built).

A cell whose command fails shows "—" and its one-line error is listed under the table; nothing
aborts the run except a missing base or binary. Every command is logged to stderr as it runs
("$ ...") and the first of each kind is quoted under the table (all of them in --json-out).
Quantized files go to --work-dir (default ~/.cache/peregrine/quant-table) and each is deleted after
its row unless --keep.

    python3 bench/quant_table.py --out quant_table.md --json-out quant_table.json
    python3 bench/quant_table.py --models smollm2 --types Q4_K_M,Q8_0 --chunks 2 --reps 1

Time (2 threads of a shared, busy 2-core AMD EPYC): with --chunks 2 --reps 1 a SmolLM2 row took
10-20 s (quantize 1-3 s each tool, eval 2.5-6 s, llama-perplexity 1.5-9 s, the four benches ~8 s),
with --chunks 1 a Gemma 3 row ~35 s (eval 5 s, llama-perplexity 6.5 s, benches ~15 s: its 262k
vocabulary makes it 2-3x slower). Extrapolated to all of GPL-3 (14 windows of 512) and --reps 2:
about 1 min per SmolLM2 row and 2-3 min per Gemma row, so the full table (23 rows per model, plus an
imatrix per model) takes roughly 1.5 hours, 1-2 h depending on load; --skip-speed saves about a
third. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import (  # noqa: E402  (compare.py: stdlib only, no side effects)
    DEFAULT_MODEL, FALLBACK, MODELS, REPO, BenchFailed, Cell, cpu_isa, cpu_name, git_describe,
    run_llama, run_peregrine)
from llama_cpp_build import BUILD_DIR, LLAMA_CPP_PYTHON_VERSION, Failure, build_target, log  # noqa: E402

CALIBRATION_TEXT = Path("/usr/share/common-licenses/GPL-2")
EVAL_TEXT = Path("/usr/share/common-licenses/GPL-3")
CTX = 512

# The table's rows in order: (label, llama-quantize type, with imatrix).
ROWS = [(t, t, False) for t in (
    "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_1", "Q5_0", "Q4_K_M", "Q4_K_S", "Q4_1", "Q4_0",
    "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q2_K", "TQ2_0", "TQ1_0")] + [
    (f"{t} + imatrix", t, True) for t in ("Q4_K_M", "Q3_K_M", "Q3_K_S", "Q2_K", "Q2_K_S")]
BASE_TYPE = "F16"  # the row that is the base file itself


@dataclass
class ModelSpec:
    key: str  # --models name
    name: str  # shown in the table
    source: Path  # the released file the base is derived from
    base: Path  # the F16 base every row is quantized from and compared with
    how: str  # how the base was made, for the caption


MODEL_SPECS = {
    "smollm2": ModelSpec("smollm2", "SmolLM2-135M-Instruct", DEFAULT_MODEL,
                         MODELS / "SmolLM2-135M-Instruct.F16.gguf",
                         f"bench/make_variants.py's F16 dequantization of {DEFAULT_MODEL.name}"),
    "gemma3": ModelSpec("gemma3", "Gemma 3 270M", MODELS / "gemma-3-270m-q4_k_m.gguf",
                        MODELS / "gemma-3-270m.F16.gguf",
                        "`peregrine quantize gemma-3-270m-q4_k_m.gguf gemma-3-270m.F16.gguf F16`"),
}

# Table columns: (key, header). A failed step marks every column it feeds.
COLUMNS = [
    ("mib", "MiB"), ("bpw", "bpw"), ("ppl", "PPL"), ("llama_ppl", "PPL llama-perplexity"),
    ("kld", "KLD mean"), ("kld_p99", "KLD p99"), ("top1", "top-1 %"),
    ("pp_ours", "pp512 t/s ours"), ("pp_llama", "pp512 t/s llama.cpp"),
    ("tg_ours", "tg128 t/s ours"), ("tg_llama", "tg128 t/s llama.cpp"),
    ("q_ours", "quantize s ours"), ("q_llama", "quantize s llama-quantize"),
]


class StepFailed(Exception):
    """One command that died, timed out or printed nothing usable; str() is a one-line reason."""


@dataclass
class Row:
    label: str
    qtype: str
    imatrix: bool
    file: Path | None = None  # the file measured (the base for the F16 row)
    values: dict = field(default_factory=dict)  # column key -> number (or str)
    errors: dict = field(default_factory=dict)  # column key -> one-line reason
    raw: dict = field(default_factory=dict)  # everything for --json-out
    notes: list = field(default_factory=list)  # footnotes that are not failures
    seconds: float = 0.0  # wall time of the whole row

    def fail(self, columns, step: str, err) -> None:
        msg = f"{step}: {one_line(str(err))}"
        for c in columns:
            self.errors.setdefault(c, msg)
        log(f"  {self.label}: {msg}")


def one_line(text: str, limit: int = 240) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


class Runner:
    """Runs commands, logging each one and keeping them all (kind, argv, seconds, rc) for the report."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.commands: list[dict] = []

    def record(self, kind: str, cmd: list[str]) -> dict:
        log("$ " + shlex.join(cmd))
        entry = {"kind": kind, "cmd": shlex.join(cmd)}
        self.commands.append(entry)
        return entry

    def run(self, kind: str, cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
        entry = self.record(kind, cmd)
        start = time.monotonic()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            entry["rc"] = "timeout"
            raise StepFailed(f"timed out after {self.timeout:.0f} s") from None
        seconds = time.monotonic() - start
        entry.update(rc=proc.returncode, seconds=round(seconds, 3))
        if proc.returncode != 0:
            why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
            lines = [ln for ln in (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines())
                     if ln.strip()]
            errs = [ln for ln in lines if "error" in ln.lower()]
            raise StepFailed(f"{why}: {(errs or lines or ['(no output)'])[-1].strip()}")
        return proc, seconds


def parse_json_object(text: str) -> dict:
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else json.loads(text)
    except json.JSONDecodeError:
        raise StepFailed(f"no JSON on stdout ({text.strip()[:80]!r})") from None


def parse_ppl(text: str) -> tuple[float, float | None]:
    """The last 'PPL = X [+/- Y]' in TEXT (peregrine perplexity and llama-perplexity's final estimate)."""
    found = re.findall(r"PPL = ([0-9.]+(?:e[+-]?\d+)?|nan|inf)(?: \+/- ([0-9.]+(?:e[+-]?\d+)?))?", text)
    if not found:
        raise StepFailed("no 'PPL = ...' in the output")
    ppl, err = found[-1]
    return float(ppl), (float(err) if err else None)


# ---------------------------------------------------------------------------------------------
# Steps

@dataclass
class Tools:
    peregrine: Path
    llama_quantize: Path | None
    llama_perplexity: Path | None
    llama_bench: Path | None


@dataclass
class Settings:
    threads: int
    chunks: int  # 0 = all windows
    reps: int
    skip_speed: bool
    skip_llama: bool
    keep: bool


def chunk_args(s: Settings) -> list[str]:
    return ["--chunks", str(s.chunks)] if s.chunks else []


def ensure_base(spec: ModelSpec, tools: Tools, s: Settings, runner: Runner) -> None:
    """Make the model's F16 base if it is not in the model cache yet (once)."""
    if spec.base.is_file():
        return
    if not spec.source.is_file():
        raise Failure(f"{spec.source} not found (the release {spec.name}'s base is made from)")
    if spec.key == "smollm2":
        venv = REPO / ".venv" / "bin" / "python"
        py = str(venv) if venv.is_file() else sys.executable
        proc, _ = runner.run("make base", [py, str(REPO / "bench" / "make_variants.py"), "--types", "F16"])
    else:
        tmp = spec.base.with_name(spec.base.name + ".part")
        runner.run("make base", [str(tools.peregrine), "quantize", str(spec.source), str(tmp), "F16",
                                 "-t", str(s.threads), "--json"])
        tmp.rename(spec.base)
    if not spec.base.is_file():
        raise Failure(f"making {spec.base} finished but the file is not there")


def make_imatrix(spec: ModelSpec, work: Path, tools: Tools, s: Settings, runner: Runner) -> Path:
    out = work / f"{spec.base.stem}.imatrix-GPL-2.gguf"
    runner.run("imatrix", [str(tools.peregrine), "imatrix", "-m", str(spec.base), "-f", str(CALIBRATION_TEXT),
                           "-o", str(out), "-c", str(CTX), "-t", str(s.threads)])
    if not out.is_file():
        raise StepFailed(f"{out} was not written")
    return out


def quantize_row(row: Row, spec: ModelSpec, work: Path, imatrix: Path | None, tools: Tools, s: Settings,
                 runner: Runner) -> None:
    """Our quantize then llama-quantize into separate files; ROW.file is ours (or llama's if ours failed)."""
    stem = f"{spec.base.stem.removesuffix('.F16')}.{row.qtype}{'-imatrix' if row.imatrix else ''}"
    ours, theirs = work / f"{stem}.gguf", work / f"{stem}.llama-quantize.gguf"
    imat_ours = ["--imatrix", str(imatrix)] if imatrix else []
    try:
        proc, secs = runner.run("quantize", [str(tools.peregrine), "quantize", str(spec.base), str(ours), row.qtype,
                                             *imat_ours, "-t", str(s.threads), "--json"])
        q = parse_json_object(proc.stdout)
        q.pop("tensors", None)  # per-tensor list: too long for the report
        row.raw["quantize"] = {**q, "wall_s": secs}
        row.values["q_ours"] = secs
        row.values["mib"] = ours.stat().st_size / 2**20
        row.values["bpw"] = q["tensor_bytes_out"] * 8 / q["n_elements"]
        if q.get("fallbacks"):
            row.raw["fallbacks"] = q["fallbacks"]
        row.file = ours
    except (StepFailed, KeyError, TypeError, ZeroDivisionError, OSError) as e:
        row.fail(["q_ours", "bpw", "mib"], "peregrine quantize", e)
    if s.skip_llama:
        return
    imat_llama = ["--imatrix", str(imatrix)] if imatrix else []
    try:
        _, secs = runner.run("llama-quantize", [str(tools.llama_quantize), *imat_llama, str(spec.base), str(theirs),
                                                row.qtype, str(s.threads)])
        row.values["q_llama"] = secs
        row.raw["llama_quantize"] = {"wall_s": secs, "file_bytes": theirs.stat().st_size}
        if row.file is None:  # measure llama-quantize's file instead (it should be the same bytes)
            row.file = theirs
            row.values["mib"] = theirs.stat().st_size / 2**20
            row.errors.pop("mib", None)
            row.notes.append("our quantize failed: the row measures llama-quantize's file")
            return
        same = filecmp.cmp(ours, theirs, shallow=False)
        row.raw["identical_to_llama_quantize"] = same
        if not same:
            row.notes.append("llama-quantize's file differs from ours (cmp); the row measures ours")
            log(f"  {row.label}: files differ: {ours} {theirs}")
    except (StepFailed, OSError) as e:
        row.fail(["q_llama"], "llama-quantize", e)
    finally:
        if theirs.exists() and row.file != theirs and not s.keep:
            theirs.unlink()


def base_stats(row: Row, spec: ModelSpec, work: Path, tools: Tools, s: Settings, runner: Runner) -> None:
    """The F16 row: the base file itself; its bpw from a dry run of quantize (nothing written)."""
    row.file = spec.base
    row.values["mib"] = spec.base.stat().st_size / 2**20
    row.values["q_ours"] = row.values["q_llama"] = "base"
    try:
        proc, _ = runner.run("quantize --dry-run", [str(tools.peregrine), "quantize", str(spec.base),
                                                    str(work / "dry-run.gguf"), BASE_TYPE, "--dry-run", "--json"])
        q = parse_json_object(proc.stdout)
        row.values["bpw"] = q["tensor_bytes_in"] * 8 / q["n_elements"]
    except (StepFailed, KeyError, TypeError, ZeroDivisionError) as e:
        row.fail(["bpw"], "peregrine quantize --dry-run", e)


def quality(row: Row, spec: ModelSpec, tools: Tools, s: Settings, runner: Runner) -> None:
    """PPL (ours and llama-perplexity's), KLD and top-1 agreement of ROW.file."""
    is_base = row.file == spec.base
    if is_base:  # KLD against itself is 0 by definition: only the perplexity
        row.values.update(kld="base", kld_p99="base", top1="base")
        try:
            proc, _ = runner.run("perplexity", [str(tools.peregrine), "perplexity", "--llama-windows", "-m",
                                                str(row.file), "-f", str(EVAL_TEXT), "-c", str(CTX),
                                                *chunk_args(s), "-t", str(s.threads)])
            ppl, err = parse_ppl(proc.stdout + "\n" + proc.stderr)
            row.values["ppl"] = ppl
            row.raw["perplexity"] = {"ppl": ppl, "ppl_err": err}
        except StepFailed as e:
            row.fail(["ppl"], "peregrine perplexity", e)
    else:
        try:
            proc, _ = runner.run("eval", [str(tools.peregrine), "eval", "-m", str(row.file), "--base", str(spec.base),
                                          "-f", str(EVAL_TEXT), "-c", str(CTX), *chunk_args(s),
                                          "-t", str(s.threads), "--json"])
            ev = parse_json_object(proc.stdout)
            row.raw["eval"] = ev
            row.values.update(ppl=float(ev["ppl_model"]), kld=float(ev["kld_mean"]),
                              kld_p99=float(ev["kld_p99"]), top1=100.0 * float(ev["top1_agreement"]))
        except (StepFailed, KeyError, TypeError, ValueError) as e:
            row.fail(["kld", "kld_p99", "top1"], "peregrine eval", e)
            try:  # the PPL column alone, from the tool that scores the same windows
                proc, _ = runner.run("perplexity", [str(tools.peregrine), "perplexity", "--llama-windows", "-m",
                                                    str(row.file), "-f", str(EVAL_TEXT), "-c", str(CTX),
                                                    *chunk_args(s), "-t", str(s.threads)])
                ppl, err = parse_ppl(proc.stdout + "\n" + proc.stderr)
                row.values["ppl"] = ppl
                row.raw["perplexity"] = {"ppl": ppl, "ppl_err": err}
                row.notes.append("PPL from `peregrine perplexity --llama-windows` (eval failed)")
            except StepFailed as e2:
                row.fail(["ppl"], "peregrine perplexity", e2)
    if s.skip_llama:
        return
    try:
        proc, _ = runner.run("llama-perplexity", [str(tools.llama_perplexity), "-m", str(row.file),
                                                  "-f", str(EVAL_TEXT), "-c", str(CTX), *chunk_args(s),
                                                  "-t", str(s.threads)])
        text = proc.stdout + "\n" + proc.stderr
        final = [ln for ln in text.splitlines() if "Final estimate" in ln]
        ppl, err = parse_ppl(final[-1] if final else "")
        chunks = re.findall(r"calculating perplexity over (\d+) chunks", text)
        row.values["llama_ppl"] = ppl
        row.raw["llama_perplexity"] = {"ppl": ppl, "ppl_err": err, "chunks": int(chunks[-1]) if chunks else None}
    except StepFailed as e:
        row.fail(["llama_ppl"], "llama-perplexity", e)


def speed(row: Row, tools: Tools, s: Settings, runner: Runner, timeout: float) -> None:
    """pp512 and tg128 of ROW.file: REPS rounds, each llama-bench then peregrine bench per test."""
    cells = {"pp": Cell(row.file, "pp512", "pp", 512, 0), "tg": Cell(row.file, "tg128", "tg", 0, 128)}
    dead: dict[str, str] = {}  # column key -> reason; a dead engine is not retried in later rounds
    for rnd in range(s.reps):
        for kind, cell in cells.items():
            if not s.skip_llama and f"{kind}_llama" not in dead:
                try:
                    entry = runner.record("llama-bench", cell.llama_cmd(tools.llama_bench, s.threads, 1,
                                                                        cell.default_failure is not None))
                    t0 = time.monotonic()
                    result, config = run_llama(cell, tools.llama_bench, s.threads, 1, timeout)
                    entry.update(seconds=round(time.monotonic() - t0, 3), configuration=config)
                    cell.llama.append(float(result["avg_ts"]))
                    cell.llama_configs.append(config)
                except (BenchFailed, KeyError, ValueError) as e:
                    dead[f"{kind}_llama"] = f"llama-bench {cell.test} (round {rnd + 1}): {e}"
            if f"{kind}_ours" not in dead:
                try:
                    entry = runner.record("bench", cell.peregrine_cmd(tools.peregrine, s.threads, 1))
                    t0 = time.monotonic()
                    cell.ours.append(run_peregrine(cell, tools.peregrine, s.threads, 1, timeout))
                    entry["seconds"] = round(time.monotonic() - t0, 3)
                except BenchFailed as e:
                    dead[f"{kind}_ours"] = f"peregrine bench {cell.test} (round {rnd + 1}): {e}"
            log(f"  {row.label} {cell.test} round {rnd + 1}: llama.cpp "
                f"{f'{cell.llama[-1]:.1f}' if len(cell.llama) > rnd else '—'}, peregrine "
                f"{f'{cell.ours[-1]:.1f}' if len(cell.ours) > rnd else '—'} t/s")
    for col, why in dead.items():
        step, _, err = why.partition(": ")
        row.fail([col], step, err)
    for kind, cell in cells.items():
        if cell.ours and f"{kind}_ours" not in dead:
            row.values[f"{kind}_ours"] = statistics.mean(cell.ours)
        if cell.llama and f"{kind}_llama" not in dead:
            row.values[f"{kind}_llama"] = statistics.mean(cell.llama)
        if cell.default_failure:
            row.notes.append(f"llama-bench {cell.test}: the default configuration died ({cell.default_failure}); "
                             f"measured with {' '.join(FALLBACK)}")
        row.raw[cell.test] = {"peregrine_tps": cell.ours, "llama_tps": cell.llama,
                              "llama_configuration": cell.llama_configs, "peregrine_isa": sorted(cell.isa),
                              "llama_default_failure": cell.default_failure}


# ---------------------------------------------------------------------------------------------
# Report

def fmt(row: Row, key: str, ratio_of: str | None = None) -> str:
    v = row.values.get(key)
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    if key == "mib":
        text = f"{v:.1f}"
    elif key == "bpw":
        text = f"{v:.2f}"
    elif key in ("ppl", "llama_ppl"):
        text = f"{v:.3f}"
    elif key in ("kld", "kld_p99"):
        text = f"{v:.5f}" if v < 1 else f"{v:.3f}"
    elif key == "top1":
        text = f"{v:.2f}"
    elif key.startswith(("pp_", "tg_")):
        text = f"{v:.1f}"
    else:  # seconds
        text = f"{v:.2f}"
    other = row.values.get(ratio_of) if ratio_of else None
    if isinstance(other, float) and other > 0:
        text += f" ({v / other:.2f}×)"
    return text


def table(spec: ModelSpec, rows: list[Row], s: Settings, windows: str) -> list[str]:
    cols = [(k, h) for k, h in COLUMNS
            if not (s.skip_llama and k in ("llama_ppl", "pp_llama", "tg_llama", "q_llama"))
            and not (s.skip_speed and k.startswith(("pp_", "tg_")))]
    lines = [f"**{spec.name}** — base: `{spec.base.name}` ({spec.how}); {windows}", "",
             "| type | " + " | ".join(h for _, h in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    notes: list[str] = []
    for r in rows:
        cells = []
        for k, _ in cols:
            ratio_of = {"pp_ours": "pp_llama", "tg_ours": "tg_llama", "q_ours": "q_llama"}.get(k)
            cells.append(fmt(r, k, None if s.skip_llama else ratio_of))
        mark = ""
        for n in r.notes:
            notes.append(n if n.startswith(r.label) else f"{r.label}: {n}")
            mark = " †"
        lines.append(f"| {r.label}{mark} | " + " | ".join(cells) + " |")
    errors = []
    for r in rows:
        by_msg: dict[str, list[str]] = {}
        for k, msg in r.errors.items():
            by_msg.setdefault(msg, []).append(dict(COLUMNS)[k])
        for msg, heads in by_msg.items():
            errors.append(f"- {r.label} — {', '.join(heads)}: {msg}")
    if notes:
        lines += [""] + [f"† {n}" for n in notes]
    if errors:
        lines += ["", "Cells marked — (one line per failed step):"] + errors
    return lines


def shorten(cmd: str, tools: Tools, work: Path) -> str:
    """A logged command as the README quotes it: binaries by name, the work folder as WORK, ~ for home."""
    for binary in (tools.peregrine, tools.llama_quantize, tools.llama_perplexity, tools.llama_bench):
        if binary is not None:
            cmd = cmd.replace(shlex.quote(str(binary)), binary.name)
    cmd = cmd.replace(str(work.resolve()) + "/", "WORK/").replace(str(work) + "/", "WORK/")
    return cmd.replace(str(Path.home()) + "/", "~/")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,gemma3",
                    help=f"comma list of {', '.join(MODEL_SPECS)} (default: both)")
    ap.add_argument("--types", default=None,
                    help="comma list of rows, e.g. F16,Q4_K_M,Q2_K_S+imatrix (default: all: "
                         + ",".join(label.replace(" ", "") for label, _, _ in ROWS) + ")")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads for every command (default: 2)")
    ap.add_argument("--chunks", type=int, default=0,
                    help=f"windows of {CTX} tokens of GPL-3 to score (default: 0 = all)")
    ap.add_argument("--reps", type=int, default=2,
                    help="rounds of llama-bench then peregrine bench per file and test, one repetition each (default: 2)")
    ap.add_argument("--skip-speed", action="store_true", help="no pp512/tg128 columns")
    ap.add_argument("--skip-llama", action="store_true",
                    help="no llama.cpp columns (llama-quantize, llama-perplexity, llama-bench; nothing is built)")
    ap.add_argument("--keep", action="store_true", help="keep the quantized files and the imatrix in --work-dir")
    ap.add_argument("--work-dir", type=Path, default=MODELS.parent / "quant-table",
                    help="where quantized files go (default: %(default)s)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before one command counts as dead (default: 3600)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="parallel jobs for building llama.cpp (default: 2)")
    ap.add_argument("--out", type=Path, help="also write the markdown to this file")
    ap.add_argument("--json-out", type=Path, help="write the raw results and every command as JSON")
    args = ap.parse_args()

    try:
        for name in ("threads", "reps", "jobs"):
            if getattr(args, name) < 1:
                raise Failure(f"--{name.replace('_', '-')} must be at least 1")
        if args.chunks < 0:
            raise Failure("--chunks must be >= 0")
        keys = [k.strip().lower() for k in args.models.split(",") if k.strip()]
        for k in keys:
            if k not in MODEL_SPECS:
                raise Failure(f"unknown model {k!r} (known: {', '.join(MODEL_SPECS)})")
        specs = [MODEL_SPECS[k] for k in dict.fromkeys(keys)]
        by_name = {label.replace(" ", "").upper(): (label, t, im) for label, t, im in ROWS}
        if args.types:
            wanted = set()
            for t in args.types.split(","):
                norm = t.replace(" ", "").upper()
                if norm.endswith("+IMAT"):
                    norm += "RIX"
                if norm and norm not in by_name:
                    raise Failure(f"unknown type {t!r} (known: {', '.join(by_name)})")
                wanted.add(norm)
            rows_wanted = [r for r in ROWS if r[0].replace(" ", "").upper() in wanted]
        else:
            rows_wanted = list(ROWS)
        for text in (CALIBRATION_TEXT, EVAL_TEXT):
            if not text.is_file():
                raise Failure(f"{text} not found (the base-files package has it)")
        built = Path(os.environ.get("PEREGRINE_BIN", REPO / "build" / "bin" / "peregrine"))
        if not os.access(built, os.X_OK):
            raise Failure(f"{built} not found; build it (ninja -C build peregrine) or set PEREGRINE_BIN")
        s = Settings(args.threads, args.chunks, args.reps, args.skip_speed, args.skip_llama, args.keep)
        llama = {"llama-quantize": None, "llama-perplexity": None, "llama-bench": None}
        commit = "—"
        if not args.skip_llama:
            for target in llama:
                if target == "llama-bench" and args.skip_speed:
                    continue
                llama[target], commit = build_target(target, args.jobs)  # compare.py's build (no_amx=False)
        args.work_dir.mkdir(parents=True, exist_ok=True)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    runner = Runner(args.timeout)
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    results = []  # (spec, rows, windows text)
    with tempfile.TemporaryDirectory(prefix="bin-", dir=args.work_dir) as tmp:
        peregrine = Path(tmp) / "peregrine"  # a private copy: others may rebuild build/bin/peregrine meanwhile
        shutil.copy2(built, peregrine)
        tools = Tools(peregrine, llama["llama-quantize"], llama["llama-perplexity"], llama["llama-bench"])
        for spec in specs:
            try:
                ensure_base(spec, tools, s, runner)
            except (Failure, StepFailed, OSError) as e:
                print(f"error: {spec.name}: base {spec.base}: {e}", file=sys.stderr)
                return 1
            log(f"== {spec.name}: {spec.base}")
            imatrix, imatrix_error = None, None
            if any(im for _, _, im in rows_wanted):
                try:
                    imatrix = make_imatrix(spec, args.work_dir, tools, s, runner)
                except StepFailed as e:
                    imatrix_error = e
            rows = []
            try:
                for label, qtype, with_imatrix in rows_wanted:
                    row = Row(label, qtype, with_imatrix)
                    rows.append(row)
                    t0 = time.monotonic()
                    log(f"-- {spec.name} {label}")
                    if qtype == BASE_TYPE and not with_imatrix:
                        base_stats(row, spec, args.work_dir, tools, s, runner)
                    elif with_imatrix and imatrix is None:
                        row.fail([k for k, _ in COLUMNS], "peregrine imatrix", imatrix_error)
                        continue
                    else:
                        quantize_row(row, spec, args.work_dir, imatrix if with_imatrix else None, tools, s, runner)
                    try:
                        if row.file is None:
                            for k, _ in COLUMNS:
                                row.errors.setdefault(k, row.errors.get("q_ours", "no file"))
                            continue
                        quality(row, spec, tools, s, runner)
                        if not s.skip_speed:
                            speed(row, tools, s, runner, args.timeout)
                    finally:
                        if row.file is not None and row.file != spec.base and row.file.exists() and not s.keep:
                            row.file.unlink()
                        row.seconds = time.monotonic() - t0
                        log(f"   {label}: {row.seconds:.0f} s")
            finally:
                if imatrix is not None and imatrix.exists() and not s.keep:
                    imatrix.unlink()
            ev = next((r.raw["eval"] for r in rows if "eval" in r.raw), None)
            windows = (f"{ev['windows']} window{'s' if ev['windows'] != 1 else ''} of {ev['n_ctx']} tokens of GPL-3, "
                       f"{ev['scored_tokens']} tokens scored"
                       if ev else f"GPL-3 in windows of {CTX} tokens" + (f" (at most {s.chunks})" if s.chunks else ""))
            base_row = next((r for r in rows if r.file == spec.base and "ppl" in r.values), None)
            if base_row is not None:  # eval's base PPL must be the F16 row's: same file, windows and scoring
                for r in rows:
                    if "eval" in r.raw and abs(r.raw["eval"]["ppl_base"] - base_row.values["ppl"]) > \
                            1e-4 * base_row.values["ppl"]:
                        r.notes.append(f"eval's PPL of the base {r.raw['eval']['ppl_base']:.4f} differs from "
                                       f"the F16 row's {base_row.values['ppl']:.4f}")
            results.append((spec, rows, windows))
    load_after = os.getloadavg()[0]
    total = time.monotonic() - started

    machine = f"{cpu_name()} ({os.cpu_count()} cores" + (f"; {cpu_isa()})" if cpu_isa() else ")")
    isas = sorted({i for _, rows, _ in results for r in rows for t in ("pp512", "tg128")
                   for i in r.raw.get(t, {}).get("peregrine_isa", [])})
    out = [f"**CPU:** {machine} · **threads:** {s.threads} (every command) · **peregrine:** {git_describe()}"
           + (f", ISA {', '.join(isas)}" if isas else "")
           + ("" if s.skip_llama else
              f" · **llama.cpp:** {commit} (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist), "
              f"bench/llama_cpp_build.py's default build as in bench/compare.py: CPU, -march=native, AMX not "
              f"compiled out{' (this CPU has none)' if 'AMX' not in cpu_isa() else ''}"), ""]
    caption = (f"PPL: GPL-3 (/usr/share/common-licenses/GPL-3) scored in llama-perplexity's windows (-c {CTX}, "
               "second half of each window); ours is `peregrine eval`'s ppl_model (the F16 row: "
               "`peregrine perplexity --llama-windows`, the same scoring)"
               + ("" if s.skip_llama else ", the next column llama-perplexity's on the same file") +
               ". KLD (nats) and top-1 agreement: every scored position against the F16 base. "
               "Imatrix rows: `peregrine imatrix` on a different text, GPL-2 (-c 512, all chunks). "
               "bpw: tensor bytes × 8 / weights (metadata excluded); MiB: the whole file.")
    if not s.skip_speed:
        caption += (f" pp512/tg128: mean of {s.reps} round(s) of one repetition each, per file llama-bench then "
                    "peregrine bench for pp then tg; in parentheses peregrine / llama.cpp.")
    if not s.skip_llama:
        caption += (" Quantize: wall-clock seconds of the whole process, ours then llama-quantize, same input, type, "
                    "imatrix and threads; in parentheses ours / llama-quantize. The two files are compared with cmp "
                    "(identical unless a † note says otherwise).")
    out += [caption, ""]
    for spec, rows, windows in results:
        out += [shorten(line, tools, args.work_dir) for line in table(spec, rows, s, windows)] + [""]
    first: dict[str, str] = {}
    for c in runner.commands:
        first.setdefault(c["kind"], c["cmd"])
    out.append(f"Commands (the first of each kind as run; {len(runner.commands)} in all"
               + (f", listed in {args.json_out}" if args.json_out else "") + "):")
    out += [f"- {kind}: `{shorten(cmd, tools, args.work_dir)}`" for kind, cmd in first.items()]
    out.append(f"- where: peregrine = {built} (a copy taken at the start)"
               + ("" if s.skip_llama else f"; llama-* = {BUILD_DIR}/bin") + f"; WORK = {args.work_dir}"
               .replace(str(Path.home()) + "/", "~/"))
    out.append(f"- this table: `python3 bench/quant_table.py {shlex.join(sys.argv[1:])}`; {total / 60:.1f} min, "
               f"1-minute load average {load_before:.2f} before, {load_after:.2f} after")
    markdown = "\n".join(out)
    print(markdown)
    if args.out:
        args.out.write_text(markdown + "\n")
        log(f"wrote {args.out}")
    if args.json_out:
        data = {
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "isa": cpu_isa()},
            "peregrine_git": git_describe(), "peregrine_bin": str(built), "llama_cpp_commit": commit,
            "llama_cpp_build": None if s.skip_llama else str(BUILD_DIR),
            "settings": vars(s), "ctx": CTX, "eval_text": str(EVAL_TEXT), "calibration_text": str(CALIBRATION_TEXT),
            "seconds": total, "load_before": load_before, "load_after": load_after,
            "models": [{"name": spec.name, "base": str(spec.base), "base_made_by": spec.how, "windows": windows,
                        "rows": [{"label": r.label, "type": r.qtype, "imatrix": r.imatrix, "values": r.values,
                                  "errors": r.errors, "notes": r.notes, "seconds": r.seconds, **r.raw}
                                 for r in rows]}
                       for spec, rows, windows in results],
            "commands": runner.commands,
        }
        args.json_out.write_text(json.dumps(data, indent=2) + "\n")
        log(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
