#!/usr/bin/env python3
"""Peregrine vs llama.cpp on the same models, threads and machine: pp/tg tokens/s as a markdown table.

llama.cpp's source comes from the PyPI sdist of llama-cpp-python (it vendors llama.cpp with its
CMake build); `llama-bench` is built once, CPU only, -march=native, into a cache folder outside the
repo (bench/llama_cpp_build.py, shared with bench/serve_load.py's llama-server). Each test (pp, tg) of each model is then its own process per engine, and the engines alternate
(llama.cpp, peregrine, llama.cpp, ...) through every round so that drift on a shared machine hits
both alike; the table has a row per model and test with mean ± sd over rounds and the ratio.
When llama-bench's default configuration dies on a test (on Xeons with AMX its AMX matmul segfaults
in prompt processing), that row is measured with `--repack 0` instead and footnoted; the table
names the configuration and the weight buffers llama.cpp used for every row.
Only the standard library is used. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from llama_cpp_build import CACHE, LLAMA_CPP_PYTHON_VERSION, Failure, build_target, log

REPO = Path(__file__).resolve().parent.parent
MODELS = Path(os.environ.get("PEREGRINE_MODELS", CACHE / "models"))
DEFAULT_MODEL = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------------------------------------
# Running the benches

class BenchFailed(Exception):
    """One bench invocation that died, timed out or printed no JSON; str() is the short reason."""


def run_json(cmd: list[str], timeout: float):
    """Run a bench command; return the JSON it printed (llama-bench: an array; peregrine: one object)."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchFailed(f"timed out after {timeout:.0f} s") from None
    if proc.returncode < 0:  # killed by a signal
        sig = -proc.returncode
        raise BenchFailed(signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}")
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchFailed(f"exit {proc.returncode}: {last}")
    out = proc.stdout.strip()
    start = min((i for i in (out.find("["), out.find("{")) if i >= 0), default=-1)
    try:
        return json.loads(out[start:]) if start >= 0 else json.loads(out)
    except json.JSONDecodeError:
        raise BenchFailed(f"no JSON on stdout ({out[:80]!r})") from None


def llama_weight_buffers(llama_bench: Path, model: Path, extra: list[str], threads: int) -> str:
    """Where llama.cpp puts the weights with these options, e.g. 'AMX 95.3 MiB, CPU_Mapped 92.1 MiB'.

    Read from a separate one-token verbose run (the load log's "model buffer size" lines), so the
    timed runs stay exactly the plain command. With --repack 1 (the default) ggml-cpu moves the
    weights it has kernels for into an "extra" buffer type (AMX on CPUs with AMX, else CPU_REPACK).
    """
    cmd = [str(llama_bench), "-m", str(model), "-p", "0", "-n", "1", "-r", "1", "-t", str(threads),
           "--no-warmup", "-o", "json", "-v", *extra]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "?"
    found = re.findall(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB", proc.stderr)
    return ", ".join(f"{name} {float(mib):.1f} MiB" for name, mib in found) or "?"


@dataclass
class Cell:
    """One table row: a model and a test, with each engine's per-round tokens/s."""
    model: Path
    test: str  # "pp512" / "tg128"
    kind: str  # "pp" / "tg": also the key of peregrine bench's JSON
    n_prompt: int
    n_gen: int
    llama: list[float] = field(default_factory=list)
    llama_configs: list[str] = field(default_factory=list)  # per round: "default" / "--repack 0"
    llama_settings: list[dict] = field(default_factory=list)  # per round: what llama-bench's JSON says it ran
    ours: list[float] = field(default_factory=list)
    isa: set[str] = field(default_factory=set)
    default_failure: str | None = None  # why llama-bench's default configuration died here
    error: str | None = None  # why the row stopped early: "peregrine bench in round 2: SIGSEGV"
    error_engine: str | None = None  # "llama.cpp" / "peregrine": whose column the error's footnote marks

    def llama_cmd(self, llama_bench: Path, threads: int, reps: int, fallback: bool) -> list[str]:
        return [str(llama_bench), "-m", str(self.model), "-p", str(self.n_prompt), "-n", str(self.n_gen),
                "-t", str(threads), "-r", str(reps), "-o", "json", *(FALLBACK if fallback else [])]

    def peregrine_cmd(self, peregrine: Path, threads: int, reps: int) -> list[str]:
        return [str(peregrine), "bench", "-m", str(self.model), "-p", str(self.n_prompt), "-n", str(self.n_gen),
                "-t", str(threads), "-r", str(reps), "--json"]


# What to retry with when llama-bench's default configuration dies: no extra buffer types (AMX,
# CPU_REPACK), so the weights stay in the plain CPU buffer and ggml-cpu's generic kernels run.
# Seen here: ggml_backend_amx_mul_mat segfaults on prompt processing (SmolLM2 Q4_1, 2 threads,
# Xeon with AMX); generation works with AMX.
FALLBACK = ["--repack", "0"]
# Fields of llama-bench's JSON result kept per round in --json output: how that number was made.
LLAMA_SETTINGS = ("build_commit", "backends", "n_threads", "n_batch", "n_ubatch", "type_k", "type_v",
                  "flash_attn", "load_mode", "no_host", "repack", "avg_ts", "stddev_ts")


def run_llama(cell: Cell, llama_bench: Path, threads: int, reps: int, timeout: float) -> tuple[dict, str]:
    """One llama-bench run of CELL's test, as (its JSON result, configuration): the default
    configuration unless that already died on this cell (then straight to --repack 0, so a crash
    costs one attempt and the later rounds of the row use one configuration)."""
    if cell.default_failure is None:
        try:
            results = run_json(cell.llama_cmd(llama_bench, threads, reps, False), timeout)
            return llama_result(results, cell), "default"
        except BenchFailed as e:
            cell.default_failure = str(e)
            log(f"  llama-bench default configuration died on {cell.model.name} {cell.test} ({e}); "
                f"retrying with {' '.join(FALLBACK)}")
    try:
        results = run_json(cell.llama_cmd(llama_bench, threads, reps, True), timeout)
    except BenchFailed as e:
        raise BenchFailed(f"llama-bench died with the default configuration ({cell.default_failure}) "
                          f"and with {' '.join(FALLBACK)} ({e})") from None
    return llama_result(results, cell), " ".join(FALLBACK)


def llama_result(results, cell: Cell) -> dict:
    """The llama-bench result with exactly the cell's n_prompt/n_gen (its avg_ts is the t/s)."""
    for r in results if isinstance(results, list) else []:
        if r.get("n_prompt") == cell.n_prompt and r.get("n_gen") == cell.n_gen and "avg_ts" in r:
            return r
    raise BenchFailed(f"llama-bench JSON has no test with n_prompt={cell.n_prompt} n_gen={cell.n_gen}")


def run_peregrine(cell: Cell, peregrine: Path, threads: int, reps: int, timeout: float) -> float:
    pj = run_json(cell.peregrine_cmd(peregrine, threads, reps), timeout)
    cell.isa.add(str(pj.get("isa", "?")))
    try:
        return float(pj[cell.kind]["tps_mean"])  # "pp" / "tg"
    except (KeyError, TypeError, ValueError):
        raise BenchFailed(f"peregrine bench JSON has no {cell.kind}.tps_mean") from None


# ---------------------------------------------------------------------------------------------
# Machine and report

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The widest x86 vector extension and AMX, from /proc/cpuinfo flags: 'AVX512, AMX', 'AVX2', ''."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    found = [label for flag, label in (("avx512f", "AVX512"), ("avx2", "AVX2"), ("avx", "AVX")) if flag in flags][:1]
    if "amx_tile" in flags:
        found.append("AMX")
    return ", ".join(found)


def git_describe() -> str:
    """HEAD of this checkout, '+dirty' when the tree has changes (the binary may hold them or not)."""
    try:
        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def mean_sd(xs: list[float]) -> str:
    if not xs:
        return "—"
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.1f} ± {sd:.1f}"


def ratio_text(cell: Cell) -> str:
    n = min(len(cell.ours), len(cell.llama))
    if n == 0:
        return "—"
    ratios = [o / l for o, l in zip(cell.ours[:n], cell.llama[:n])]
    text = f"{statistics.mean(cell.ours[:n]) / statistics.mean(cell.llama[:n]):.2f}"
    if n > 1:
        text += f" ({min(ratios):.2f}–{max(ratios):.2f})"
    return text


SUPERSCRIPTS = "¹²³⁴⁵⁶⁷⁸⁹"


def footnote_mark(notes: list[str], text: str) -> str:
    """The mark of TEXT among NOTES (appended if new): ¹, ², ... then [10], [11], ..."""
    if text not in notes:
        notes.append(text)
    i = notes.index(text)
    return SUPERSCRIPTS[i] if i < len(SUPERSCRIPTS) else f"[{i + 1}]"


def report(cells: list[Cell], buffers: dict, info: dict) -> tuple[str, dict]:
    """The markdown table with its header and footer, and the same results as a JSON object."""
    isas = sorted({i for c in cells for i in c.isa}) or ["?"]
    machine = f"{cpu_name()} ({os.cpu_count()} cores" + (f"; {cpu_isa()})" if cpu_isa() else ")")
    notes: list[str] = []
    lines = [f"**CPU:** {machine} · **peregrine ISA:** {', '.join(isas)} · "
             f"**llama.cpp:** {info['llama_commit']}, -march=native · **threads:** {info['threads']}", "",
             "| model | test | llama.cpp t/s | peregrine t/s | peregrine / llama.cpp | llama.cpp configuration (weight buffers) |",
             "|---|---|---|---|---|---|"]
    rows = []
    for c in cells:
        configs = sorted(set(c.llama_configs), key=c.llama_configs.index)
        llama_txt, ours_txt = mean_sd(c.llama), mean_sd(c.ours)
        if c.default_failure is not None and c.llama:
            default_bufs = buffers.get((c.model, "default"), "?")
            extra = ", ".join(b.split()[0] for b in default_bufs.split(", ") if not b.startswith("CPU"))
            then = ("measured with" if "default" not in configs
                    else "it had worked in earlier rounds; the rounds from then on used")
            llama_txt += footnote_mark(notes, (
                f"llama.cpp's default configuration (--repack 1{', weights in ' + extra if extra else ''}) "
                f"died on this test ({c.default_failure}); {then} {' '.join(FALLBACK)}"))
        if c.error:
            samples = c.llama if c.error_engine == "llama.cpp" else c.ours
            mark = footnote_mark(notes, f"{'incomplete' if samples else 'not measured'}: {c.error}")
            if c.error_engine == "llama.cpp":
                llama_txt += mark
            else:
                ours_txt += mark
        config_txt = "; ".join(f"{cfg} ({buffers.get((c.model, cfg), '?')})" for cfg in configs) or "—"
        lines.append(f"| {c.model.name} | {c.test} | {llama_txt} | {ours_txt} | {ratio_text(c)} | {config_txt} |")
        rows.append({
            "model": str(c.model), "test": c.test, "n_prompt": c.n_prompt, "n_gen": c.n_gen,
            "llama_cpp": {"tps": c.llama, "configuration": c.llama_configs, "settings": c.llama_settings,
                          "weight_buffers": {cfg: buffers.get((c.model, cfg)) for cfg in configs},
                          "default_failure": c.default_failure},
            "peregrine": {"tps": c.ours, "isa": sorted(c.isa)},
            "ratio_of_means": (statistics.mean(c.ours) / statistics.mean(c.llama[:len(c.ours)])
                               if c.ours else None),
            "error": c.error,
        })
    lines.append("")
    lines += [f"{footnote_mark(notes, n)} {n}" for n in list(notes)]
    if notes:
        lines.append("")
    lines.append(
        f"llama.cpp@{info['llama_commit']} (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist); peregrine "
        f"{info['peregrine_git']} ({info['peregrine_bin']}, copied before the first round). Rounds: {info['rounds']}; "
        "in each, every model and test runs llama.cpp then peregrine, each a separate process doing "
        f"{info['repetitions']} repetitions. t/s is mean ± sd over rounds; the ratio is of the means, in "
        "parentheses the range of the per-round ratios. 1-minute load average "
        f"{info['load_before']:.2f} before, {info['load_after']:.2f} after (the benches themselves add about "
        f"{info['threads']}).")
    lines.append(f"- command: `{info['invocation']}`")
    lines.append(f"- llama.cpp: `{info['llama_template']}` (pp: `-n 0`, tg: `-p 0`); if the default dies, "
                 f"the same with `{' '.join(FALLBACK)}` for every round of that row")
    lines.append(f"- peregrine: `{info['peregrine_template']}` (pp: `-n 0`, tg: `-p 0`)")
    for m in dict.fromkeys(c.model for c in cells):
        lines.append(f"- {m.name}: {m} ({m.stat().st_size / 2**20:.1f} MiB)")
    result = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "isa": cpu_isa()},
              "peregrine_isa": isas, **info, "rows": rows, "footnotes": notes}
    return "\n".join(lines), result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", type=Path, action="append", dest="models", metavar="MODEL",
                    help=f"GGUF file; repeat for several (default: {DEFAULT_MODEL})")
    ap.add_argument("--models", type=Path, nargs="+", dest="model_list", metavar="MODEL",
                    help="several GGUF files at once (added after any -m)")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1, help="threads for both (default: nproc)")
    ap.add_argument("-r", "--repetitions", type=int, default=3, help="repetitions inside each bench run (default: 3)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of llama.cpp then peregrine (default: 3)")
    ap.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (default: 512)")
    ap.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (default: 128)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="parallel jobs for the llama.cpp build (default: 2)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds before one bench run counts as dead (default: 900)")
    ap.add_argument("--json", type=Path, metavar="PATH", help="also write the results, per round, as JSON")
    ap.add_argument("--build-only", action="store_true", help="fetch and build llama-bench, then stop")
    args = ap.parse_args()

    try:
        for name in ("threads", "repetitions", "rounds", "jobs"):
            if getattr(args, name) < 1:
                raise Failure(f"--{name} must be at least 1")
        if args.n_prompt < 0 or args.n_gen < 0 or args.n_prompt + args.n_gen == 0:
            raise Failure("-p and -n must be >= 0 and not both 0")
        llama_bench, commit = build_target("llama-bench", args.jobs)
        if args.build_only:
            print(llama_bench)
            return 0

        built = Path(os.environ.get("PEREGRINE_BIN", REPO / "build" / "bin" / "peregrine"))
        if not os.access(built, os.X_OK):
            raise Failure(f"{built} not found; build it (scripts/build.sh peregrine) or set PEREGRINE_BIN")
        models = [m.expanduser() for m in (args.models or []) + (args.model_list or [])] or [DEFAULT_MODEL]
        models = list(dict.fromkeys(models))
        for m in models:
            if not m.is_file():
                raise Failure(f"model {m} not found (build/bin/peregrine pull smollm2-135m fetches the default; "
                              "bench/make_variants.py writes its F16 and Q8_0 variants)")
        tests = []  # (label, kind, n_prompt, n_gen): one process per test, like llama-bench's rows
        if args.n_prompt:
            tests.append((f"pp{args.n_prompt}", "pp", args.n_prompt, 0))
        if args.n_gen:
            tests.append((f"tg{args.n_gen}", "tg", 0, args.n_gen))
        cells = [Cell(m, label, kind, p, n) for m in models for label, kind, p, n in tests]
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="peregrine-compare-") as tmp:
        # A private copy: others may rebuild build/bin/peregrine while the rounds run.
        peregrine = Path(tmp) / "peregrine"
        shutil.copy2(built, peregrine)
        load_before = os.getloadavg()[0]
        for rnd in range(1, args.rounds + 1):
            for cell in cells:
                if cell.error:
                    continue
                where = f"round {rnd}/{args.rounds} {cell.model.name} {cell.test}"
                engine = "llama.cpp"
                try:
                    log(f"{where}: llama-bench")
                    result, config = run_llama(cell, llama_bench, args.threads, args.repetitions, args.timeout)
                    cell.llama.append(float(result["avg_ts"]))
                    cell.llama_configs.append(config)
                    cell.llama_settings.append({k: result[k] for k in LLAMA_SETTINGS if k in result})
                    engine = "peregrine"
                    log(f"{where}: peregrine bench")
                    cell.ours.append(run_peregrine(cell, peregrine, args.threads, args.repetitions, args.timeout))
                except BenchFailed as e:
                    cell.error, cell.error_engine = f"{engine} in round {rnd}: {e}", engine
                    log(f"  {cell.error}; skipping this row from now on")
                    continue
                log(f"  llama.cpp ({config}) {cell.llama[-1]:.1f}, peregrine {cell.ours[-1]:.1f} t/s")
        load_after = os.getloadavg()[0]
    buffers: dict[tuple[Path, str], str] = {}  # (model, "default" / "--repack 0") -> weight buffers
    for cell in cells:  # after the timed rounds, so the probes disturb nothing
        for config in set(cell.llama_configs):
            if (cell.model, config) not in buffers:
                extra = FALLBACK if config != "default" else []
                buffers[(cell.model, config)] = llama_weight_buffers(llama_bench, cell.model, extra, args.threads)
        if cell.default_failure and (cell.model, "default") not in buffers:
            buffers[(cell.model, "default")] = llama_weight_buffers(llama_bench, cell.model, [], args.threads)

    common = f"-p N_PROMPT -n N_GEN -t {args.threads} -r {args.repetitions}"
    info = {
        "llama_commit": commit, "llama_bench": str(llama_bench), "peregrine_bin": str(built),
        "peregrine_git": git_describe(), "threads": args.threads, "repetitions": args.repetitions,
        "rounds": args.rounds, "load_before": load_before, "load_after": load_after,
        "invocation": "bench/compare.sh " + shlex.join(sys.argv[1:]) if len(sys.argv) > 1 else "bench/compare.sh",
        "llama_template": f"llama-bench -m MODEL {common} -o json",
        "peregrine_template": f"peregrine bench -m MODEL {common} --json",
    }
    markdown, result = report(cells, buffers, info)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")
    print(markdown)
    failed = [c for c in cells if c.error]
    for c in failed:
        print(f"error: {c.model.name} {c.test}: {c.error}", file=sys.stderr)  # the table has it too
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
