#!/usr/bin/env python3
"""What a KV cache configuration costs or saves in speed and memory, against llama.cpp's equivalent.

Configurations are given as in bench/kv_quality.py: `--configs "f16=--kv-type f16" "q8_0=--kv-type
q8_0" "h2o=--kv-evict h2o --kv-budget 2048"` (NAME=FLAGS, the flags added to every peregrine command;
the first configuration is the baseline of the "vs base" columns).

--tests bench (the default): for each configuration and depth D of --depths (default 0,4096,8192),
`peregrine bench -p P -n 0 -d D` (ppP) and `peregrine bench -p 0 -n N -d D` (tgN) with the
configuration's flags, --json: tokens/s and the KV cache size the engine reports (`kv_mib` for
`kv_positions` = D + P + N positions, the `kv cache: X MiB` line of the text output). Beside each,
llama-bench from bench/llama_cpp_build.py's no-AMX build on the same model file and threads:
`llama-bench -p P -n 0 -d D -ctk K -ctv V -fa on` (flash attention on in every llama.cpp row, since
its quantized V cache needs it; K and V from the configuration's --kv-type / --kv-type-k /
--kv-type-v; configurations with other flags, such as eviction, KIVI or sparse prefill, have no
llama.cpp row). Every test of every engine is its own process; rounds alternate the engines as
bench/arch_speed.py does (llama.cpp first in odd rounds, peregrine first in even ones). When
llama-bench's default configuration dies on a test it is retried with --repack 0 and footnoted
(compare.py's fallback). Both engines fill the cache untimed before timing at depth D. Commands run
while other processes took over 10% of the machine are footnoted as disturbed.

--tests serve (or --serve): for each configuration and each client count of --clients (default
16,64), bench/serve_load.py with the configuration's flags passed to `peregrine serve`
(--peregrine-args) and the llama.cpp equivalent to llama-server (--llama-args "-ctk K -ctv V -fa
on"; --only peregrine where there is none), --parallel equal to the clients (or --parallel), the
no-AMX llama-server, and the private copy of peregrine. Its JSON gives aggregate tok/s, TTFT and ITL
percentiles per server, pooled over --rounds rounds (each a serve_load.py --rounds 1 per configuration
and client count, the configurations in reverse order in even rounds). --serve-args passes more
serve_load.py flags (e.g. "--prompt-tokens 512").

    .venv/bin/python bench/kv_speed.py --configs "f16=--kv-type f16" "q8_0=--kv-type q8_0" "q4_0=--kv-type q4_0"
    .venv/bin/python bench/kv_speed.py --configs "f16=--kv-type f16" "f32=--kv-type f32" --depths 0,4096 --rounds 1
    .venv/bin/python bench/kv_speed.py --serve --configs "f16=--kv-type f16" "q8_0=--kv-type q8_0" --clients 16,64

Time on 2 threads with SmolLM2-135M: the untimed fills dominate (4096 positions: ~10-20 s per
process, 8192: ~40-90 s, llama.cpp's slower than peregrine's), so a configuration costs ~3 minutes
per round at depths 0,4096 and ~8 at 0,4096,8192 with both engines. A serve batch of 64 clients x
128 tokens takes ~30-60 s per server. As with the other benchmarks, quote ratios from one run.
Needs the repo's .venv (numpy, openai for serve_load.py, gguf for arch_speed.py's helpers).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
VENV_PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
if VENV_PYTHON.is_file() and Path(sys.prefix).resolve() != (REPO_ROOT / ".venv").resolve() \
        and __name__ == "__main__" and not os.environ.get("PEREGRINE_KV_BENCH_REEXEC"):
    os.environ["PEREGRINE_KV_BENCH_REEXEC"] = "1"
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])

sys.path.insert(0, str(HERE))
import numpy as np  # noqa: E402
from arch_speed import DISTURBED, execute, parse_json_out  # noqa: E402
from compare import FALLBACK, BenchFailed, cpu_isa, cpu_name, footnote_mark, git_describe  # noqa: E402
from kv_quality import (LLAMA_BENCH_KV_TYPES, MODELS, Config, parse_configs, private_peregrine,  # noqa: E402
                        resolve_model, shown_cmd)
from llama_cpp_build import LLAMA_CPP_PYTHON_VERSION, Failure, build_target, log  # noqa: E402


@dataclass
class Test:
    """One configuration, depth and test (pp or tg), measured by both engines over the rounds."""
    cfg: Config
    depth: int
    n_prompt: int
    n_gen: int
    ours: list[float] = field(default_factory=list)
    llama: list[float] = field(default_factory=list)
    kv_mib: float | None = None
    kv_positions: int | None = None
    others: list[float] = field(default_factory=list)  # others' share of the machine per command
    llama_flags: list[str] | None = None  # None: no llama.cpp equivalent
    llama_why: str = ""
    llama_default_failure: str | None = None
    ours_error: str | None = None
    llama_error: str | None = None

    @property
    def name(self) -> str:
        return (f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}") + f" @ d{self.depth}"

    def ours_cmd(self, peregrine: Path, model: Path, args) -> list[str]:
        return [str(peregrine), "bench", "-m", str(model), "-p", str(self.n_prompt), "-n", str(self.n_gen),
                "-d", str(self.depth), "-t", str(args.threads), "-r", str(args.reps), "--json", *self.cfg.flags]

    def llama_cmd(self, lb: Path, model: Path, args, fallback: bool) -> list[str]:
        return [str(lb), "-m", str(model), "-p", str(self.n_prompt), "-n", str(self.n_gen), "-d", str(self.depth),
                "-t", str(args.threads), "-r", str(args.reps), "-o", "json", *(self.llama_flags or []),
                *(FALLBACK if fallback else [])]

    def run_ours(self, peregrine: Path, model: Path, args, commands: list[str]) -> None:
        cmd = self.ours_cmd(peregrine, model, args)
        log("$ " + shlex.join(cmd))
        commands.append(shlex.join(cmd))
        proc, others = execute(cmd, args.timeout)
        pj = parse_json_out(proc.stdout)
        try:
            self.ours.append(float(pj["pp" if self.n_prompt else "tg"]["tps_mean"]))
            self.kv_mib, self.kv_positions = float(pj["kv_mib"]), int(pj["kv_positions"])
        except (KeyError, TypeError, ValueError):
            raise BenchFailed("peregrine bench JSON has no tps_mean / kv_mib") from None
        if others is not None:
            self.others.append(others)

    def run_llama(self, lb: Path, model: Path, args, commands: list[str]) -> None:
        def once(fallback: bool) -> float:
            cmd = self.llama_cmd(lb, model, args, fallback)
            log("$ " + shlex.join(cmd))
            commands.append(shlex.join(cmd))
            proc, others = execute(cmd, args.timeout)
            for r in parse_json_out(proc.stdout) or []:
                if (isinstance(r, dict) and r.get("n_prompt") == self.n_prompt and r.get("n_gen") == self.n_gen
                        and int(r.get("n_depth", 0)) == self.depth and "avg_ts" in r):
                    if others is not None:
                        self.others.append(others)
                    return float(r["avg_ts"])
            raise BenchFailed(f"llama-bench JSON has no test p={self.n_prompt} n={self.n_gen} d={self.depth}")
        if self.llama_default_failure is None:
            try:
                self.llama.append(once(False))
                return
            except BenchFailed as e:
                self.llama_default_failure = str(e)
                log(f"  llama-bench's default configuration died ({e}); retrying with {' '.join(FALLBACK)}")
        self.llama.append(once(True))


def measure(tests: list[Test], peregrine: Path, lb: Path | None, model: Path, args, commands: list[str]) -> None:
    for rnd in range(1, args.rounds + 1):
        for t in tests:
            for engine in (("llama", "ours") if rnd % 2 else ("ours", "llama")):
                try:
                    if engine == "ours" and t.ours_error is None:
                        t.run_ours(peregrine, model, args, commands)
                    elif engine == "llama" and lb and t.llama_flags and t.llama_error is None:
                        t.run_llama(lb, model, args, commands)
                except BenchFailed as e:
                    tool = "peregrine bench" if engine == "ours" else "llama-bench"
                    what = f"{tool} {t.cfg.name} {t.name} (round {rnd}): {e}"
                    setattr(t, f"{engine}_error", what)
                    log(f"  error: {what}; not measured from now on")
            got = lambda xs: f"{xs[-1]:.1f}" if len(xs) >= rnd else "—"  # noqa: E731
            log(f"  [{t.cfg.name}] {t.name} round {rnd}: peregrine {got(t.ours)}, llama.cpp {got(t.llama)} t/s")


def num(xs: list[float]) -> str:
    if not xs:
        return "—"
    m = statistics.mean(xs)
    d = 2 if m < 10 else 1
    return f"{m:.{d}f}" + (f" ± {statistics.stdev(xs):.{d}f}" if len(xs) > 1 else "")


def rel(xs: list[float], ys: list[float]) -> str:
    return f"{statistics.mean(xs) / statistics.mean(ys):.2f}" if xs and ys else "—"


def ratio(t: Test) -> str:
    n = min(len(t.ours), len(t.llama))
    if not n:
        return "—"
    text = f"{statistics.mean(t.ours[:n]) / statistics.mean(t.llama[:n]):.2f}"
    if n > 1:
        rs = [o / x for o, x in zip(t.ours[:n], t.llama[:n])]
        text += f" ({min(rs):.2f}–{max(rs):.2f})"
    return text


def bench_table(tests: list[Test], base: Config, notes: list[str]) -> list[str]:
    lines = ["| config | test | KV MiB (positions) | peregrine t/s | vs base | llama.cpp t/s | vs base | "
             "peregrine / llama |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    by_key = {(t.cfg.name, t.name): t for t in tests}
    for t in tests:
        b = by_key.get((base.name, t.name))
        om = lm = ""
        if t.ours_error:
            om += footnote_mark(notes, ("incomplete: " if t.ours else "not measured: ") + t.ours_error)
        if t.llama_flags is None:
            lm += footnote_mark(notes, f"{t.cfg.name}: no llama.cpp row ({t.llama_why})")
        if t.llama_error:
            lm += footnote_mark(notes, ("incomplete: " if t.llama else "not measured: ") + t.llama_error)
        if t.llama_default_failure and t.llama:
            lm += footnote_mark(notes, f"llama-bench's default configuration died on {t.cfg.name} {t.name} "
                                       f"({t.llama_default_failure}); measured with {' '.join(FALLBACK)}")
        if any(x > DISTURBED for x in t.others):
            mark = footnote_mark(notes, f"disturbed: other processes took more than {DISTURBED:.0%} of the machine "
                                        "during some commands of this test (others_share in the JSON); rerun on a "
                                        "quiet machine")
            om += mark
            lm += mark
        kv = f"{t.kv_mib:.1f} ({t.kv_positions})" if t.kv_mib is not None else "—"
        lines.append(f"| {t.cfg.name} | {t.name} | {kv} | {num(t.ours)}{om} | "
                     f"{'base' if t.cfg is base else rel(t.ours, b.ours if b else [])} | {num(t.llama)}{lm} | "
                     f"{'base' if t.cfg is base else rel(t.llama, b.llama if b else [])} | {ratio(t)} |")
    return lines


# ---------------------------------------------------------------------------------------------
# Serving load through bench/serve_load.py

@dataclass
class ServeRun:
    """One configuration and client count: serve_load.py's JSON of every round (one process each)."""
    cfg: Config
    clients: int
    results: list[dict] = field(default_factory=list)
    error: str | None = None
    commands: list[str] = field(default_factory=list)

    def server(self, kind: str) -> dict | None:
        """KIND's numbers pooled over the rounds: tok/s per batch, TTFT and ITL percentiles over every
        request, and the largest share of the machine other processes and steal took during a batch."""
        rounds = [r for res in self.results for r in res["servers"].get(kind, {}).get("rounds", [])]
        if not rounds:
            return None
        reqs = [q for r in rounds for q in r["requests"]]
        ttft = [q["ttft_s"] for q in reqs if q["ttft_s"] is not None]
        itl = [g for q in reqs for g in q["itl_s"]]
        cores = os.cpu_count() or 1
        shares = [((r["cpu_s"]["other_processes"] or 0) + (r["cpu_s"]["steal"] or 0)) / (r["wall_s"] * cores)
                  for r in rounds if r["wall_s"] > 0 and r["cpu_s"]["other_processes"] is not None]

        def pct(xs, q):
            return float(np.percentile(xs, q)) if xs else None
        return {"tps": [r["tps"] for r in rounds], "ttft_p50": pct(ttft, 50), "ttft_p99": pct(ttft, 99),
                "itl_p50": pct(itl, 50), "itl_p99": pct(itl, 99), "disturbed": max(shares, default=0.0)}


def run_serve(run: ServeRun, args, peregrine: Path, model: Path, llama_server: Path | None, tmp: Path) -> None:
    """One more round of RUN: serve_load.py --rounds 1 (peregrine serve, then llama-server)."""
    cfg, clients = run.cfg, run.clients
    out = tmp / f"serve-{len(list(tmp.glob('serve-*.json')))}.json"
    lflags, _why = cfg.llama_kv()
    cmd = [sys.executable, str(HERE / "serve_load.py"), "-m", str(model), "--clients", str(clients),
           "--parallel", str(args.parallel or clients), "-t", str(args.threads), "--rounds", "1",
           "--peregrine", str(peregrine), f"--peregrine-args={shlex.join(cfg.flags)}", "--json", str(out),
           *shlex.split(args.serve_args)]
    if lflags is None or llama_server is None or args.no_llama:
        cmd += ["--only", "peregrine"]
    else:
        cmd += ["--llama-server", str(llama_server), f"--llama-args={shlex.join(lflags)}"]
    run.commands.append(shlex.join(cmd))
    log(f"[{cfg.name}] {clients} clients: $ {shlex.join(cmd)}")
    try:
        proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, timeout=args.timeout * 4)
    except subprocess.TimeoutExpired:
        run.error = f"serve_load.py {cfg.name} {clients} clients timed out after {args.timeout * 4:.0f} s"
        return
    if proc.returncode != 0 or not out.is_file():
        run.error = f"serve_load.py {cfg.name} {clients} clients: exit {proc.returncode} (its stderr is above)"
        return
    run.results.append(json.loads(out.read_text()))


def serve_table(runs: list[ServeRun], base: Config, notes: list[str]) -> list[str]:
    def ms(x):
        return "—" if x is None else (f"{x * 1e3:.0f}" if x >= 0.1 else f"{x * 1e3:.1f}")

    def lat(srv):
        return (f"{ms(srv['ttft_p50'])} / {ms(srv['ttft_p99'])} | {ms(srv['itl_p50'])} / {ms(srv['itl_p99'])}"
                if srv else "— | —")
    lines = ["| config | clients | peregrine tok/s | vs base | llama.cpp tok/s | vs base | peregrine / llama | "
             "peregrine TTFT p50 / p99 ms | peregrine ITL p50 / p99 ms | llama.cpp TTFT p50 / p99 ms | "
             "llama.cpp ITL p50 / p99 ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_key = {(r.cfg.name, r.clients): r for r in runs}
    for r in runs:
        b = by_key.get((base.name, r.clients))
        cells = []
        for kind in ("peregrine", "llama"):
            srv, bsrv = r.server(kind), b.server(kind) if b else None
            mark = ""
            if srv and srv["disturbed"] > DISTURBED:
                mark = footnote_mark(notes, f"disturbed: other processes and steal took up to {srv['disturbed']:.0%} "
                                            "of the machine during a batch of this server; rerun on a quiet machine")
            if kind == "llama" and srv is None and r.cfg.llama_kv()[0] is None:
                mark = footnote_mark(notes, f"{r.cfg.name}: no llama.cpp row ({r.cfg.llama_kv()[1]})")
            cells += [(num(srv["tps"]) if srv else "—") + mark,
                      "base" if r.cfg is base and srv else rel(srv["tps"] if srv else [], bsrv["tps"] if bsrv else [])]
        p, ll = r.server("peregrine"), r.server("llama")
        label = r.cfg.name + (footnote_mark(notes, r.error) if r.error else "")
        own = dict.fromkeys(f for res in r.results for f in res.get("footnotes", []) if not f.startswith("disturbed"))
        label += "".join(footnote_mark(notes, f) for f in own)  # serve_load.py's (fallbacks, short answers)
        lines.append(f"| {label} | {r.clients} | {' | '.join(cells)} | "
                     f"{rel(p['tps'], ll['tps']) if p and ll else '—'} | {lat(p)} | {lat(ll)} |")
    return lines


# ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["f16=--kv-type f16"], metavar="NAME=FLAGS",
                    help="KV configurations, NAME=FLAGS or FLAGS; the first is the baseline (default: f16)")
    ap.add_argument("-m", "--model", default="smollm2", help="GGUF path or smollm2 / gemma3 (default: smollm2)")
    ap.add_argument("--tests", default="bench", help="bench, serve or both (default: bench)")
    ap.add_argument("--serve", action="store_true", help="the same as --tests serve")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads of every command (default: 2)")
    ap.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens of pp (default: 512)")
    ap.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens of tg (default: 128)")
    ap.add_argument("--depths", default="0,4096,8192", help="depths -d of both tests (default: 0,4096,8192)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternating rounds (default: 2); --serve: rounds over the configurations, in reverse "
                         "order in even rounds, each serve_load.py --rounds 1")
    ap.add_argument("-r", "--reps", type=int, default=1, help="repetitions inside each bench process (default: 1)")
    ap.add_argument("--no-llama", action="store_true", help="peregrine only")
    ap.add_argument("--clients", default="16,64", help="--serve: concurrent clients (default: 16,64)")
    ap.add_argument("--parallel", type=int, help="--serve: server slots (default: the clients)")
    ap.add_argument("--serve-args", default="", metavar="FLAGS",
                    help="--serve: more serve_load.py flags, one string (e.g. '--prompt-tokens 512 --max-tokens 64')")
    ap.add_argument("--peregrine", type=Path, help="peregrine binary (default: $PEREGRINE_BIN or build/bin/peregrine)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before one command counts as dead")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="parallel jobs if llama.cpp must be built")
    ap.add_argument("--out", type=Path, help="also write the markdown here")
    ap.add_argument("--json-out", type=Path, help="also write every number and command as JSON")
    args = ap.parse_args()

    started = time.monotonic()
    commands: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="peregrine-kv-speed-"))
    try:
        configs = parse_configs(args.configs)
        model = resolve_model(args.model)
        tests_wanted = {"serve"} if args.serve else {x.strip() for x in args.tests.split(",") if x.strip()}
        if not tests_wanted or tests_wanted - {"bench", "serve"}:
            raise Failure("--tests: bench, serve or both")
        try:
            depths = [int(x) for x in args.depths.split(",") if x.strip()]
            clients = [int(x) for x in args.clients.split(",") if x.strip()]
        except ValueError:
            raise Failure("--depths and --clients are comma lists of integers") from None
        if min(args.threads, args.rounds, args.reps, *clients) < 1 or min(depths) < 0:
            raise Failure("-t, --rounds, -r and --clients must be at least 1, depths at least 0")
        src, peregrine = private_peregrine(args.peregrine, tmp)
        checkout = git_describe()  # when the binary was copied: others may commit meanwhile
        lb = llama_server = None
        commit = "?"
        if not args.no_llama and "bench" in tests_wanted:
            lb, commit = build_target("llama-bench", args.jobs, no_amx=True)
        if not args.no_llama and "serve" in tests_wanted:
            llama_server, commit = build_target("llama-server", args.jobs, no_amx=True)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
        return 1

    load_before = os.getloadavg()[0]
    tests: list[Test] = []
    runs: list[ServeRun] = []
    try:
        if "bench" in tests_wanted:
            for cfg in configs:
                lflags, why = cfg.llama_kv(LLAMA_BENCH_KV_TYPES)
                for d in depths:
                    for p, n in ((args.n_prompt, 0), (0, args.n_gen)):
                        tests.append(Test(cfg, d, p, n, llama_flags=lflags, llama_why=why))
            log(f"== {len(tests)} tests x {args.rounds} rounds")
            measure(tests, peregrine, lb, model, args, commands)
        if "serve" in tests_wanted:
            runs = [ServeRun(cfg, c) for cfg in configs for c in clients]
            for rnd in range(1, args.rounds + 1):
                for run in (runs if rnd % 2 else runs[::-1]):  # drift hits the first and last configurations alike
                    if run.error is None:
                        run_serve(run, args, peregrine, model, llama_server, tmp)
                        commands.append(run.commands[-1])
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    load_after = os.getloadavg()[0]

    notes: list[str] = []
    base = configs[0]
    repl = {str(peregrine): "peregrine", str(MODELS) + "/": "MODELS/", str(REPO_ROOT) + "/": "",
            sys.executable: "python", str(tmp) + "/": "TMP/"}
    for binary, name in ((lb, "llama-bench"), (llama_server, "llama-server")):
        if binary:
            repl[str(binary)] = name
    out = [f"**CPU:** {cpu_name()} ({os.cpu_count()} cores" + (f"; {cpu_isa()})" if cpu_isa() else ")")
           + f" · **model:** {model.name} · **threads:** {args.threads} · **peregrine:** {checkout} (at the start)"
           + ("" if args.no_llama else f" · **llama.cpp:** {commit} (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}, "
                                       "no-AMX build, -fa on)") + f" · **baseline:** {base.name}", ""]
    if tests:
        out += bench_table(tests, base, notes)
        out += ["", f"t/s: mean (± sd over {args.rounds} alternating round{'s' if args.rounds > 1 else ''}, each test "
                f"its own process of {args.reps} repetition{'s' if args.reps > 1 else ''}); vs base: t/s / the "
                f"{base.name} row's of the same engine and test; peregrine / llama: ratio of the means (range of the "
                "per-round ratios). KV MiB: the cache peregrine bench allocated for the test's positions "
                "(depth + prompt + generated).", ""]
    if runs:
        out += serve_table(runs, base, notes)
        out += ["", f"bench/serve_load.py per configuration, client count and round ({args.rounds}, the configurations "
                "in reverse order in even rounds; a fresh server each time, peregrine then llama-server); tok/s = "
                "generated tokens / batch wall time (mean ± sd over rounds); TTFT and ITL percentiles pooled over "
                "all requests of all rounds. serve_load.py's own reports, with the prompts, are in the JSON "
                "(serve[].serve_load_results).", ""]
    if notes:
        out += [f"{footnote_mark(notes, n)} {n}" for n in list(notes)] + [""]
    out.append("Configurations: " + "; ".join(f"{c.name} = `{c.shown}`" for c in configs))
    kinds: dict[str, str] = {}
    for c in commands:
        words = shlex.split(c)
        kinds.setdefault(Path(words[0]).name + (" serve_load" if "serve_load.py" in c else ""), c)
    out.append(f"Commands (the first of each kind, {len(commands)} in all):")
    out += [f"- `{shown_cmd(shlex.split(c), repl)}`" for c in kinds.values()]
    out.append(f"- peregrine = {src} (copied at the start)".replace(str(Path.home()) + "/", "~/"))
    out.append(f"- this report: `.venv/bin/python bench/kv_speed.py {shlex.join(sys.argv[1:])}`; "
               f"{(time.monotonic() - started) / 60:.1f} min, 1-minute load average {load_before:.2f} before, "
               f"{load_after:.2f} after")
    markdown = "\n".join(out)
    print(markdown)
    if args.out:
        args.out.write_text(markdown + "\n")
        log(f"wrote {args.out}")
    errors = [e for t in tests for e in (t.ours_error, t.llama_error) if e] + [r.error for r in runs if r.error]
    if args.json_out:
        data = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "isa": cpu_isa()},
                "peregrine_git": checkout, "peregrine_bin": str(src), "model": str(model),
                "llama_cpp_commit": commit, "threads": args.threads, "rounds": args.rounds, "reps": args.reps,
                "configs": [{"name": c.name, "flags": list(c.flags)} for c in configs],
                "bench": [{"config": t.cfg.name, "test": t.name, "depth": t.depth, "n_prompt": t.n_prompt,
                           "n_gen": t.n_gen, "peregrine_tps": t.ours, "llama_tps": t.llama, "kv_mib": t.kv_mib,
                           "kv_positions": t.kv_positions, "llama_flags": t.llama_flags,
                           "llama_default_failure": t.llama_default_failure, "others_share": t.others,
                           "errors": [e for e in (t.ours_error, t.llama_error) if e]} for t in tests],
                "serve": [{"config": r.cfg.name, "clients": r.clients, "error": r.error,
                           "peregrine": r.server("peregrine"), "llama": r.server("llama"), "commands": r.commands,
                           "serve_load_results": r.results} for r in runs],
                "commands": commands, "footnotes": notes, "errors": errors,
                "seconds": time.monotonic() - started, "load_before": load_before, "load_after": load_after}
        args.json_out.write_text(json.dumps(data, indent=1) + "\n")
        log(f"wrote {args.json_out}")
    shutil.rmtree(tmp, ignore_errors=True)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
