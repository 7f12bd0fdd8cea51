#!/usr/bin/env python3
"""Every attack of tests/e2e/http_attacks.py against `peregrine serve` and llama.cpp's llama-server.

Both servers are started by this script on free loopback ports with the same GGUF, threads,
parallel slots, per-sequence context and API key (llama-server built from the pinned
llama-cpp-python source by bench/llama_cpp_build.py, AMX compiled out, as bench/speculative.py
does; --no-build uses only a binary already in the cache). Each attack runs with the normal client
probing around it (http_attacks.run_attack): GET /health latency during and after the attack and
a temperature-0 completion compared with the same request's answer before any attack. A server
that dies is restarted for the next attack.

Prints a markdown table: per attack and server, whether the server survived (alive, /health
answered, the normal client got its reference answer), whether it answered as the hardened
server's spec says (tests/e2e/http_attacks.py's module doc), and the slowest /health latency
during the attack against the 100 ms target. The differences (llama-server's read timeout is
--timeout, its idle keep-alive is cpp-httplib's 5 s, it has no --max-body, --max-connections or
model-name check) are footnoted rather than hidden.

  .venv/bin/python bench/attacks.py                     # both servers (builds llama-server once)
  .venv/bin/python bench/attacks.py --only peregrine    # one server
  .venv/bin/python bench/attacks.py --attack slowloris-partial-head --attack gzip-bomb
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
try:  # serve_load (server start and stop, shared with the load benchmark) needs the project's venv
    import numpy  # noqa: F401
    import openai  # noqa: F401
except ImportError:
    venv_python = REPO / ".venv" / "bin" / "python"
    if venv_python.is_file() and not os.environ.get("PEREGRINE_ATTACKS_REEXEC"):
        os.environ["PEREGRINE_ATTACKS_REEXEC"] = "1"
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
    print("error: run bench/attacks.py with the project's venv (scripts/venv.sh): .venv/bin/python bench/attacks.py",
          file=sys.stderr)
    sys.exit(1)
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import http_attacks as ha  # noqa: E402
from llama_cpp_build import BUILD_DIR, NO_AMX_BUILD_DIR, Failure, build_target, log  # noqa: E402
from compare import git_describe  # noqa: E402  (same folder)
from serve_load import LABELS, Server, ServerDied, free_port  # noqa: E402

KEY = "sk-attacks"
HEALTH_TARGET_S = 0.1
LLAMA_IDLE_S = 5.0  # cpp-httplib's keep-alive timeout, which llama-server does not expose


@dataclass
class Target:
    """One server under attack: how to start it and what the attacks should assume of it."""
    kind: str  # "peregrine" / "llama"
    cmd: list[str]  # without the port
    opts: ha.Opts
    notes: list[str] = field(default_factory=list)
    server: Server | None = None
    log_dir: Path | None = None
    starts: int = 0
    hardened: bool = False  # peregrine with --read-timeout and friends

    def start(self, timeout: float) -> None:
        port = free_port()
        self.starts += 1
        log_path = self.log_dir / f"{self.kind}-{self.starts}.log"
        self.server = Server(self.kind, [*self.cmd, "--port", str(port)], port, log_path)
        self.server.start(timeout)
        self.opts.server_pid = self.server.proc.pid
        self.opts.reference = ha.normal_completion("127.0.0.1", port, self.opts)

    @property
    def port(self) -> int:
        return self.server.port

    def alive(self) -> bool:
        return self.server is not None and self.server.dead() is None

    def stop(self) -> None:
        if self.server:
            self.server.stop()


def metric_reader(target: Target, name: str):
    """A callable reading one Prometheus sample from the target's /metrics (0 when absent)."""
    def read() -> float:
        req = urllib.request.Request(f"http://127.0.0.1:{target.port}/metrics",
                                     headers={"Authorization": f"Bearer {KEY}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0
    return read


def peregrine_target(binary: Path, args, extra: list[str] | None = None) -> Target:
    help_text = subprocess.run([str(binary), "serve", "--help"], capture_output=True, text=True, timeout=60).stdout
    hardened = "--read-timeout" in help_text
    cmd = [str(binary), "serve", "-m", str(args.model), "--host", "127.0.0.1", "-t", str(args.threads),
           "--parallel", str(args.parallel), "-c", str(args.ctx), "--api-key", KEY, "--max-body", str(args.max_body),
           "-q", *(extra or [])]
    notes = []
    if hardened:
        cmd += ["--read-timeout", "2", "--idle-timeout", "3"]
    else:
        notes.append("this peregrine has no --read-timeout/--idle-timeout (the cpp-httplib server: 30 s read "
                     "timeout, 5 s keep-alive); the slow-client attacks assume 2 s and 3 s")
    opts = ha.Opts(api_key=KEY, max_body=args.max_body, ctx=args.ctx, max_n=args.parallel, read_timeout=2.0,
                   idle_timeout=3.0, slow_connections=args.slow_connections, io_timeout=args.io_timeout,
                   model_path=str(args.model), model="smollm2-135m")
    t = Target("peregrine", cmd, opts, notes, hardened=hardened)
    t.opts.busy = metric_reader(t, "peregrine_running_sequences")
    t.opts.generated = metric_reader(t, "peregrine_generation_tokens_total")
    return t


def llama_target(binary: Path, args) -> Target:
    # llama-server splits -c among its slots; --timeout is its read/write timeout (default 600 s).
    cmd = [str(binary), "-m", str(args.model), "--host", "127.0.0.1", "-t", str(args.threads),
           "-np", str(args.parallel), "-c", str(args.ctx * args.parallel), "--api-key", KEY, "--metrics",
           "--no-webui", "--timeout", "2"]
    opts = ha.Opts(api_key=KEY, max_body=args.max_body, ctx=args.ctx, max_n=1, read_timeout=2.0,
                   idle_timeout=LLAMA_IDLE_S, slow_connections=args.slow_connections, io_timeout=args.io_timeout,
                   model_path=str(args.model), model="smollm2-135m")
    notes = [f"llama-server: --timeout 2 (its read/write timeout), idle keep-alive assumed {LLAMA_IDLE_S:g} s "
             "(cpp-httplib's default); no --max-body (the body limits are peregrine's, applied to both), "
             "n is limited to 1"]
    t = Target("llama", cmd, opts, notes)
    t.opts.busy = metric_reader(t, "llamacpp:requests_processing")
    t.opts.generated = metric_reader(t, "llamacpp:tokens_predicted_total")
    return t


@dataclass
class Cell:
    survived: bool | None = None
    correct: bool | None = None
    health_s: float | None = None
    detail: str = ""
    skipped: str | None = None

    died: bool = False

    def render(self) -> str:
        if self.skipped:
            return f"n/a ({self.skipped})"
        s = "**died**" if self.died else "survived" if self.survived else "**others starved**"
        c = "per spec" if self.correct else "**not per spec**"
        if self.health_s is None:
            h = "/health **failed**"
        else:
            ms = self.health_s * 1000
            h = f"/health {ms:.0f} ms" if ms >= 10 else f"/health {ms:.1f} ms"
            if self.health_s > HEALTH_TARGET_S:
                h = f"**{h}**"
        return f"{s} · {c} · {h}"


def attack_one(target: Target, attack: ha.Attack, args) -> Cell:
    if not target.alive():
        target.start(args.start_timeout)
    rep = ha.run_attack(attack, "127.0.0.1", target.port, target.opts)
    if rep.skipped:
        return Cell(skipped=rep.skipped)
    died = target.server.dead()
    problems = rep.problems()  # the verdict, then /health over the tests' 1 s bound, the normal client's failure
    survived = died is None and problems == [x for x in [rep.verdict] if x]
    detail = "; ".join([*problems, *([f"server {died}"] if died else [])])
    cell = Cell(survived, rep.verdict is None, rep.worst_health_s, detail, died=died is not None)
    if died:
        target.stop()
    return cell


def run_max_connections(make: Callable[[list[str]], Target], attack: ha.Attack, args, log_dir: Path) -> Cell:
    """over-max-connections needs a server of its own (8 connections); only peregrine has the flag."""
    t = make(["--max-connections", "8"])
    t.log_dir = log_dir
    t.opts.max_connections = 8
    try:
        t.start(args.start_timeout)
        return attack_one(t, attack, args)
    except ServerDied as e:
        return Cell(skipped=f"did not start: {e}")
    finally:
        t.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description="HTTP attacks against peregrine serve and llama-server")
    default_model = Path.home() / ".cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf"
    ap.add_argument("-m", "--model", type=Path, default=Path(os.environ.get("PEREGRINE_MODEL_PATH", default_model)))
    ap.add_argument("--peregrine", type=Path, help="peregrine binary (default: $PEREGRINE_BIN or build/bin/peregrine)")
    ap.add_argument("--llama-server", help="llama-server binary (default: build it, AMX compiled out)")
    ap.add_argument("--no-build", action="store_true", help="never build llama-server; skip it when not in the cache")
    ap.add_argument("--only", choices=("peregrine", "llama"))
    ap.add_argument("--attack", action="append", help="run only these attacks (repeatable; default: all)")
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("-c", "--ctx", type=int, default=512, help="context per sequence (default 512)")
    ap.add_argument("--max-body", type=int, default=8 << 20,
                    help="peregrine's --max-body, and the limit the body attacks test (default 8 MiB, so the "
                         "4 MiB prompt fits)")
    ap.add_argument("--slow-connections", type=int, default=300)
    ap.add_argument("--io-timeout", type=float, default=10.0)
    ap.add_argument("--start-timeout", type=float, default=120)
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--json", help="also write the results as JSON here")
    args = ap.parse_args()
    attacks = [a for a in ha.ATTACKS if not args.attack or a.name in args.attack]
    if args.attack and len(attacks) != len(args.attack):
        unknown = set(args.attack) - {a.name for a in attacks}
        print(f"error: unknown attack(s) {', '.join(sorted(unknown))}; known: {', '.join(ha.BY_NAME)}", file=sys.stderr)
        return 1

    log_dir = Path(tempfile.mkdtemp(prefix="peregrine-attacks-"))
    targets: list[Target] = []
    skipped_servers: dict[str, str] = {}
    llama_commit = None
    try:
        if args.only != "llama":
            src = (args.peregrine or Path(os.environ.get("PEREGRINE_BIN", REPO / "build/bin/peregrine"))).expanduser()
            if not os.access(src, os.X_OK):
                raise Failure(f"{src} not found (pass --peregrine or --only llama)")
            binary = log_dir / "peregrine"  # a private copy: the build folder may be rebuilt meanwhile
            shutil.copy2(src, binary)
            targets.append(peregrine_target(binary, args))
        if args.only != "peregrine":
            if args.llama_server:
                llama = Path(args.llama_server).expanduser()
            elif args.no_build:
                found = [d / "bin/llama-server" for d in (NO_AMX_BUILD_DIR, BUILD_DIR)
                         if (d / "bin/llama-server").is_file()]
                llama = found[0] if found else None
                if llama is None:
                    skipped_servers["llama"] = (f"not built (no bin/llama-server under {NO_AMX_BUILD_DIR} "
                                                f"or {BUILD_DIR})")
            else:
                llama, llama_commit = build_target("llama-server", args.jobs, no_amx=True)
            if llama is not None:
                targets.append(llama_target(llama, args))
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    results: dict[str, dict[str, Cell]] = {a.name: {} for a in attacks}
    try:
        for t in targets:
            t.log_dir = log_dir
            log(f"{LABELS[t.kind]}: {' '.join(t.cmd)}")
            for a in attacks:
                t0 = time.monotonic()
                if "max_connections" in a.needs:
                    if t.hardened:
                        cell = run_max_connections(lambda extra: peregrine_target(Path(t.cmd[0]), args, extra),
                                                   a, args, log_dir)
                    else:
                        cell = Cell(skipped="no --max-connections")
                else:
                    try:
                        cell = attack_one(t, a, args)
                    except ServerDied as e:
                        cell = Cell(False, False, None, f"could not (re)start: {e}")
                results[a.name][t.kind] = cell
                detail = f" — {cell.detail}" if cell.detail else ""
                log(f"  {a.name}: {cell.render()} ({time.monotonic() - t0:.1f} s){detail}")
            t.stop()
    except KeyboardInterrupt:
        print(f"error: interrupted (server logs in {log_dir})", file=sys.stderr)
        return 130
    finally:
        for t in targets:
            t.stop()

    kinds = [t.kind for t in targets]
    lines = ["| attack | " + " | ".join(LABELS[k] for k in kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for a in attacks:
        lines.append(f"| {a.name} | " + " | ".join(results[a.name][k].render() for k in kinds) + " |")
    lines.append("")
    for k in kinds:
        cells = [results[a.name][k] for a in attacks if not results[a.name][k].skipped]
        slow = sum(c.health_s is None or c.health_s > HEALTH_TARGET_S for c in cells)
        lines.append(f"**{LABELS[k]}:** survived {sum(bool(c.survived) for c in cells)}/{len(cells)}, "
                     f"per spec {sum(bool(c.correct) for c in cells)}/{len(cells)}, /health over "
                     f"{HEALTH_TARGET_S * 1000:.0f} ms in {slow}")
    lines.append("")
    for t in targets:
        lines += [f"- {n}" for n in t.notes]
    for k, why in skipped_servers.items():
        lines.append(f"- {LABELS[k]} skipped: {why} (run without --no-build to build it)")
    lines += [f"- survived: the process is alive, GET /health answered within {ha.HEALTH_BOUND_S:g} s and a "
              "temperature-0 completion on another connection gave its pre-attack answer (others starved: one of "
              "those failed); per spec: the checks of tests/e2e/http_attacks.py; /health: the slowest probe during "
              f"and after the attack (target {HEALTH_TARGET_S * 1000:.0f} ms)",
              f"- model {args.model.name}, -t {args.threads}, {args.parallel} slots, context {args.ctx} per sequence, "
              f"--max-body {args.max_body}, {args.slow_connections} slow connections; "
              f"peregrine checkout {git_describe()}" + (f", llama.cpp@{llama_commit}" if llama_commit else ""), ""]
    details = [f"- {a.name}, {LABELS[k]}: {results[a.name][k].detail}" for a in attacks for k in kinds
               if results[a.name][k].detail]
    if details:
        lines += ["Details:", "", *details, ""]
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({a: {k: c.__dict__ for k, c in v.items()} for a, v in results.items()},
                                              indent=2))
    shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
