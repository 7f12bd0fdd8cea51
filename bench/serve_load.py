#!/usr/bin/env python3
"""Serving load: N concurrent streaming clients against `peregrine serve` and llama.cpp's llama-server.

Each server is started by this script on a free loopback port with the same model, threads,
parallel slots and per-sequence context, waited for on /health, warmed up with one request, then
hit by --clients concurrent streaming POST /v1/completions requests (the official `openai` async
client) with distinct prompts of about --prompt-tokens tokens, temperature 0, max_tokens=M and
ignore_eos, so every request generates exactly M tokens. Per request it records the time to the
first content chunk (TTFT) and the gaps between successive chunks (inter-token latency, ITL);
per batch the generated tokens over the batch's wall time (aggregate tok/s). With --rounds > 1
the servers alternate (peregrine, llama-server, peregrine, ...), each round a fresh server
process. Prints a markdown table with the ratio. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

try:
    import numpy as np
    import openai
except ImportError:  # run from the project's venv (scripts/venv.sh), which pins openai and numpy
    venv_python = REPO / ".venv" / "bin" / "python"
    if venv_python.is_file() and Path(sys.prefix).resolve() != (REPO / ".venv").resolve() \
            and not os.environ.get("PEREGRINE_SERVE_LOAD_REEXEC"):
        os.environ["PEREGRINE_SERVE_LOAD_REEXEC"] = "1"
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
    print("error: bench/serve_load.py needs the openai and numpy packages: run scripts/venv.sh "
          "(tests/requirements.txt pins them), then .venv/bin/python bench/serve_load.py", file=sys.stderr)
    sys.exit(1)

from compare import cpu_isa, cpu_name, footnote_mark, git_describe  # noqa: E402  (same folder)
from llama_cpp_build import CACHE, LLAMA_CPP_PYTHON_VERSION, Failure, build_target, log  # noqa: E402

MODELS = Path(os.environ.get("PEREGRINE_MODELS", CACHE / "models"))
DEFAULT_MODEL = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_TEXT = Path("/usr/share/common-licenses/GPL-3")
WARMUP_PREFIX = "Warm-up request. "  # no client prompt starts like this: no prefix shared with them
WARMUP_WORDS = 200
FALLBACK_TOKENS_PER_WORD = 1.35  # if the warm-up response carries no usage

# What llama-server retries with when its default configuration dies (as llama-bench's AMX matmul
# does on prompt processing on Xeons with AMX, see compare.py): no extra buffer types, so the
# weights stay in the plain CPU buffer and ggml-cpu's generic -march=native kernels run.
LLAMA_FALLBACK = ["--no-repack"]

LABELS = {"peregrine": "peregrine serve", "llama": "llama.cpp llama-server"}


# ---------------------------------------------------------------------------------------------
# Prompts

def load_words(text_path: Path) -> list[str]:
    try:
        words = text_path.read_text(errors="replace").split()
    except OSError as e:
        raise Failure(f"cannot read the prompt text {text_path}: {e.strerror}") from None
    if len(words) < 2 * WARMUP_WORDS:
        raise Failure(f"{text_path} has {len(words)} words; the prompts need at least {2 * WARMUP_WORDS}")
    return words


def passage(words: list[str], start: int, n: int) -> str:
    """N words from START, wrapping around the end of the text, single-spaced."""
    return " ".join(words[(start + k) % len(words)] for k in range(n))


def warmup_prompt(words: list[str]) -> str:
    return WARMUP_PREFIX + passage(words, len(words) // 3, WARMUP_WORDS)


def client_prompts(words: list[str], clients: int, prompt_tokens: int, tokens_per_word: float) -> list[str]:
    """One passage per client, each starting at a different word (distinct from the first token on,
    so no server's prefix cache can share work between them); consecutive and disjoint while the
    text is long enough, else overlapping with starts spread over the text."""
    n = max(1, round(prompt_tokens / tokens_per_word))
    step = n if clients * n <= len(words) else max(1, len(words) // clients)
    return [passage(words, i * step, n) for i in range(clients)]


# ---------------------------------------------------------------------------------------------
# Servers

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def exit_reason(rc: int) -> str:
    if rc < 0 and -rc in signal.valid_signals():
        return f"killed by {signal.Signals(-rc).name}"
    return f"exit status {rc}"


def cpu_seconds(pid: int | None) -> tuple[float, float, float] | None:
    """(all CPUs busy, of which stolen by the hypervisor, process PID incl. its threads) in seconds
    since boot, from /proc; None where /proc is not there. The difference of two readings, less
    the server's and the client's own share, is what other processes took during a batch."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = f
        proc = 0
        if pid is not None:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            proc = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the line)
        return (user + nice + system + irq + softirq + steal) / tick, steal / tick, proc / tick
    except (OSError, ValueError, IndexError):
        return None


class Server:
    """One server process: started on a free port, logging to a file, stopped with SIGTERM then SIGKILL."""

    def __init__(self, kind: str, cmd: list[str], port: int, log_path: Path):
        self.kind, self.cmd, self.port, self.log_path = kind, cmd, port, log_path
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float) -> None:
        with open(self.log_path, "w") as out:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerDied(f"{LABELS[self.kind]} {exit_reason(self.proc.returncode)} while starting")
            try:
                if http_get(self.base + "/health", 2)[0] == 200:
                    return
            except (OSError, urllib.error.URLError):
                pass  # not listening yet
            time.sleep(0.2)
        raise ServerDied(f"{LABELS[self.kind]} did not answer GET /health with 200 within {timeout:.0f} s")

    def model_id(self, fallback: str) -> str:
        """The first id of GET /v1/models (what the `model` field should say), else FALLBACK."""
        try:
            status, body = http_get(self.base + "/v1/models", 10)
            if status == 200:
                return str(json.loads(body)["data"][0]["id"])
        except (OSError, ValueError, KeyError, IndexError, TypeError, urllib.error.URLError):
            pass
        return fallback

    def dead(self) -> str | None:
        """Why the process ended, or None while it runs."""
        if self.proc is None or self.proc.poll() is None:
            return None
        return exit_reason(self.proc.returncode)

    def stop(self, grace: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            log(f"  {LABELS[self.kind]} still running {grace:.0f} s after SIGTERM; killing it")
            self.proc.kill()
            self.proc.wait(timeout=30)


class ServerDied(Exception):
    """The server process ended or never became healthy; str() is the one-line reason."""


# ---------------------------------------------------------------------------------------------
# Load

@dataclass
class Request:
    ttft: float | None = None  # seconds from sending to the first non-empty content chunk
    gaps: list[float] = field(default_factory=list)  # seconds between successive content chunks
    chunks: int = 0  # non-empty content chunks received
    completion_tokens: int | None = None  # usage.completion_tokens, when the server sent usage
    prompt_tokens: int | None = None
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else self.chunks


TEMPERATURE = 0.0  # --temperature; each server samples with its own defaults for the other fields


async def one_request(client, model: str, prompt: str, max_tokens: int) -> Request:
    r = Request()
    t0 = last = time.perf_counter()
    try:
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=max_tokens, temperature=TEMPERATURE, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        async for chunk in stream:
            now = time.perf_counter()
            if chunk.choices and chunk.choices[0].text:
                if r.ttft is None:
                    r.ttft = now - t0
                else:
                    r.gaps.append(now - last)
                last = now
                r.chunks += 1
            if chunk.usage is not None:
                r.completion_tokens = chunk.usage.completion_tokens
                r.prompt_tokens = chunk.usage.prompt_tokens
    except Exception as e:  # openai.APIError, httpx transport errors, malformed events: all one line
        r.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
    return r


@dataclass
class Usage:
    """CPU seconds during one batch: this client, the server, everything else, and the hypervisor's steal."""
    client: float
    server: float | None = None
    others: float | None = None
    steal: float | None = None


async def run_batch(base: str, model: str, prompts: list[str], max_tokens: int, timeout: float,
                    server_pid: int | None = None):
    """All PROMPTS at once; returns (requests, wall seconds, Usage)."""
    client = openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=timeout)
    try:
        sys0, cpu0, t0 = cpu_seconds(server_pid), time.process_time(), time.perf_counter()
        tasks = [asyncio.create_task(one_request(client, model, p, max_tokens)) for p in prompts]
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        wall, sys1 = time.perf_counter() - t0, cpu_seconds(server_pid)
        cpu = Usage(time.process_time() - cpu0)
        if sys0 and sys1:
            cpu.server = sys1[2] - sys0[2]
            cpu.steal = sys1[1] - sys0[1]
            cpu.others = max(0.0, sys1[0] - sys0[0] - cpu.steal - cpu.server - cpu.client)
        for t in pending:
            t.cancel()
        results = []
        for t in tasks:
            if t in done:
                results.append(t.result())
            else:
                results.append(Request(error=f"no answer within --timeout {timeout:.0f} s"))
        return results, wall, cpu
    finally:
        await client.close()


@dataclass
class Round:
    kind: str  # "peregrine" / "llama"
    number: int
    config: str  # "default" / "--no-repack"
    requests: list[Request]
    wall: float
    cpu: Usage

    @property
    def tokens(self) -> int:
        return sum(r.tokens for r in self.requests)

    @property
    def tps(self) -> float:
        return self.tokens / self.wall if self.wall > 0 else 0.0


def pct(xs: list[float], q: float) -> float | None:
    return float(np.percentile(np.asarray(xs), q)) if xs else None


def secs(x: float | None) -> str:
    return "?" if x is None else f"{x:.2f}"


def ms(x: float | None) -> str:
    if x is None:
        return "—"
    v = x * 1000
    return f"{v:.0f} ms" if v >= 100 else f"{v:.1f} ms"


# ---------------------------------------------------------------------------------------------
# Driver

@dataclass
class Plan:
    args: argparse.Namespace
    model: Path
    ctx: int
    peregrine: Path | None
    llama_server: Path | None
    words: list[str]
    logs: Path  # server logs, kept when the run fails
    peregrine_src: Path | None = None  # what the user named; `peregrine` is the private copy
    llama_commit: str = "?"
    invocation: str = ""
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after the rounds
    prompts: list[str] | None = None
    tokens_per_word: float | None = None
    calibrated_on: str | None = None
    llama_fallback: str | None = None  # why llama-server's default configuration was given up
    llama_buffers: dict = field(default_factory=dict)  # configuration -> weight buffers
    templates: dict = field(default_factory=dict)  # kind -> command with PORT

    def command(self, kind: str, port: int, fallback: bool | None = None) -> list[str]:
        """KIND's server command on PORT; for llama-server with LLAMA_FALLBACK once the default died
        (or as FALLBACK says)."""
        a = self.args
        if fallback is None:
            fallback = self.llama_fallback is not None
        if kind == "peregrine":
            cmd = [str(self.peregrine), "serve", "-m", str(self.model), "--host", "127.0.0.1", "--port", str(port),
                   "--parallel", str(a.parallel), "-t", str(a.threads), "-c", str(self.ctx),
                   *shlex.split(a.peregrine_args)]
        else:  # llama-server splits -c among its slots (no unified KV when -np is given)
            cmd = [str(self.llama_server), "-m", str(self.model), "--host", "127.0.0.1", "--port", str(port),
                   "-np", str(a.parallel), "-t", str(a.threads), "-c", str(self.ctx * a.parallel), "--no-webui",
                   *(LLAMA_FALLBACK if fallback else []), *shlex.split(a.llama_args)]
        return cmd


def llama_weight_buffers(plan: Plan, fallback: bool) -> str:
    """Where llama-server puts the weights in one configuration, e.g. 'AMX 95.3 MiB, CPU_Mapped 92.1 MiB'.

    Read from a separate start with -lv 4 (the load log's "model buffer size" lines are debug output),
    after the timed rounds so that they run exactly the plain command; the probe is stopped as soon
    as the server is healthy or has died (the default configuration may die right after loading)."""
    port = free_port()
    log_path = plan.logs / f"llama-probe-{'no-repack' if fallback else 'default'}.log"
    server = Server("llama", [*plan.command("llama", port, fallback), "-lv", "4"], port, log_path)
    try:
        server.start(60)
    except ServerDied:
        pass  # what it logged before dying is all we need
    finally:
        server.stop()
    found = re.findall(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB", tail(log_path, 10**6))
    return ", ".join(f"{name} {float(mib):.1f} MiB" for name, mib in found) or "?"


def run_round(plan: Plan, kind: str, number: int) -> Round:
    a = plan.args
    port = free_port()
    config = " ".join(LLAMA_FALLBACK) if kind == "llama" and plan.llama_fallback else "default"
    log_path = plan.logs / f"{kind}-round{number}-{config.strip('-')}.log"
    cmd = plan.command(kind, port)
    plan.templates[kind] = shlex.join(cmd).replace(f"--port {port}", "--port PORT")  # for the report
    server = Server(kind, cmd, port, log_path)
    where = f"round {number}/{a.rounds} {LABELS[kind]}" + (f" ({config})" if config != "default" else "")
    log(f"{where}: starting on port {port} (log: {log_path})")
    try:
        server.start(a.start_timeout)
        model = server.model_id(plan.model.name)
        warm, _, _ = asyncio.run(run_batch(server.base, model, [warmup_prompt(plan.words)],
                                           min(16, a.max_tokens), a.timeout))
        if warm[0].error:
            raise ServerDied(f"warm-up request failed: {warm[0].error}"
                             + (f"; the server {server.dead()}" if server.dead() else ""))
        if plan.prompts is None:  # once per run, so every server gets the very same prompts
            if warm[0].prompt_tokens:
                plan.tokens_per_word = warm[0].prompt_tokens / (WARMUP_WORDS + len(WARMUP_PREFIX.split()))
                plan.calibrated_on = LABELS[kind]
            else:
                plan.tokens_per_word, plan.calibrated_on = FALLBACK_TOKENS_PER_WORD, "a fixed guess (no usage sent)"
            plan.prompts = client_prompts(plan.words, a.clients, a.prompt_tokens, plan.tokens_per_word)
        log(f"{where}: {a.clients} concurrent requests x {a.max_tokens} tokens")
        reqs, wall, cpu = asyncio.run(run_batch(server.base, model, plan.prompts, a.max_tokens, a.timeout,
                                                server.proc.pid))
        died = server.dead()
        failed = [r for r in reqs if r.error]
        if died:
            raise ServerDied(f"the server {died} during the batch ({len(failed)} of {len(reqs)} requests failed)")
        if failed:
            raise Failure(f"{where}: {len(failed)} of {len(reqs)} requests failed, first: {failed[0].error} "
                          f"(server log: {log_path})")
    except ServerDied as e:
        log(f"  {where}: {e}; last lines of {log_path}:\n" + tail(log_path))
        crashed = server.proc is not None and server.proc.poll() is not None and server.proc.returncode < 0
        server.stop()
        if kind == "llama" and crashed and not plan.llama_fallback:  # killed by a signal, as the AMX path is
            plan.llama_fallback = str(e)
            log(f"  llama-server's default configuration died; retrying with {' '.join(LLAMA_FALLBACK)} "
                "for this and every later round")
            return run_round(plan, kind, number)
        raise Failure(f"{where}: {e} (log: {log_path})") from None
    finally:
        server.stop()
    rnd = Round(kind, number, config, reqs, wall, cpu)
    ttfts = [r.ttft for r in reqs if r.ttft is not None]
    gaps = [g for r in reqs for g in r.gaps]
    log(f"  {rnd.tokens} tokens in {wall:.2f} s: {rnd.tps:.1f} tok/s; TTFT p50 {ms(pct(ttfts, 50))} "
        f"p99 {ms(pct(ttfts, 99))}; ITL p50 {ms(pct(gaps, 50))} p99 {ms(pct(gaps, 99))}; CPU s: "
        f"server {secs(cpu.server)}, client {cpu.client:.2f}, other processes {secs(cpu.others)}, "
        f"steal {secs(cpu.steal)}")
    return rnd


def summarize(plan: Plan, rounds: list[Round]) -> tuple[str, dict]:
    a = plan.args
    notes: list[str] = []
    kinds = [k for k in ("peregrine", "llama") if any(r.kind == k for r in rounds)]
    lines = [f"**CPU:** {cpu_name()} ({os.cpu_count()} cores" + (f"; {cpu_isa()})" if cpu_isa() else ")")
             + f" · **model:** {plan.model.name} · **threads:** {a.threads} · **parallel slots:** {a.parallel}"
             + f" · **context per sequence:** {plan.ctx}", "",
             "| server | clients x tokens | agg tok/s | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 |",
             "|---|---|---|---|---|---|---|"]
    stats: dict[str, dict] = {}
    for k in kinds:
        rs = [r for r in rounds if r.kind == k]
        reqs = [q for r in rs for q in r.requests]
        ttfts = [q.ttft for q in reqs if q.ttft is not None]
        gaps = [g for q in reqs for g in q.gaps]
        tps = [r.tps for r in rs]
        s = stats[k] = {
            "rounds": [{"round": r.number, "configuration": r.config, "wall_s": r.wall, "tokens": r.tokens,
                        "tps": r.tps, "cpu_s": {"client": r.cpu.client, "server": r.cpu.server,
                                                 "other_processes": r.cpu.others, "steal": r.cpu.steal},
                        "requests": [{"ttft_s": q.ttft, "chunks": q.chunks, "completion_tokens": q.completion_tokens,
                                      "prompt_tokens": q.prompt_tokens, "itl_s": q.gaps} for q in r.requests]}
                       for r in rs],
            "tps_mean": statistics.mean(tps), "tps_sd": statistics.stdev(tps) if len(tps) > 1 else 0.0,
            "ttft_p50_s": pct(ttfts, 50), "ttft_p99_s": pct(ttfts, 99),
            "itl_p50_s": pct(gaps, 50), "itl_p99_s": pct(gaps, 99),
        }
        label = LABELS[k]
        if k == "llama" and plan.llama_fallback:
            default_bufs = plan.llama_buffers.get("default")
            fallback = " ".join(LLAMA_FALLBACK)
            label += footnote_mark(notes, (
                "llama-server's default configuration (weight repacking on"
                + (f", weights in {default_bufs}" if default_bufs else "")
                + f") died ({plan.llama_fallback}); measured with {fallback} "
                f"(weights in {plan.llama_buffers.get(fallback, '?')})"))
        short = [q for q in reqs if q.tokens != a.max_tokens]
        if short:
            label += footnote_mark(notes, (
                f"{len(short)} of {len(reqs)} requests generated other than {a.max_tokens} tokens "
                f"(e.g. {short[0].tokens}): ignore_eos not honoured?"))
        per_chunk = [q for q in reqs if q.completion_tokens is not None and q.chunks != q.completion_tokens]
        if per_chunk:
            label += footnote_mark(notes, (
                f"{len(per_chunk)} of {len(reqs)} requests streamed a different number of chunks than "
                f"usage.completion_tokens (e.g. {per_chunk[0].chunks} vs {per_chunk[0].completion_tokens}); "
                "ITL is per chunk"))
        disturbed = [r for r in rs if disturbance(r) > DISTURBED]
        if disturbed:
            shares = ", ".join(f"{disturbance(r):.0%} in round {r.number}" for r in disturbed)
            label += footnote_mark(notes, (
                f"disturbed: other processes or the hypervisor took this share of the machine's "
                f"{os.cpu_count()} cores during the batch: {shares}; rerun on a quiet machine"))
        if all(q.completion_tokens is None for q in reqs):
            label += footnote_mark(notes, "no usage in the stream (stream_options.include_usage): "
                                          "tokens counted as chunks")
        tps_txt = f"{s['tps_mean']:.1f}" + (f" ± {s['tps_sd']:.1f}" if len(tps) > 1 else "")
        lines.append(f"| {label} | {a.clients} x {a.max_tokens} | {tps_txt} | {ms(s['ttft_p50_s'])} | "
                     f"{ms(s['ttft_p99_s'])} | {ms(s['itl_p50_s'])} | {ms(s['itl_p99_s'])} |")
    lines.append("")
    ratio = None
    if len(kinds) == 2:
        p, l = stats["peregrine"], stats["llama"]
        ratio = {"tps": p["tps_mean"] / l["tps_mean"] if l["tps_mean"] else None,
                 "ttft_p99": p["ttft_p99_s"] / l["ttft_p99_s"] if p["ttft_p99_s"] and l["ttft_p99_s"] else None,
                 "itl_p50": p["itl_p50_s"] / l["itl_p50_s"] if p["itl_p50_s"] and l["itl_p50_s"] else None}
        per_round = [pr.tps / lr.tps for pr, lr in zip([r for r in rounds if r.kind == "peregrine"],
                                                       [r for r in rounds if r.kind == "llama"]) if lr.tps]
        rng = f"; per round {min(per_round):.2f}–{max(per_round):.2f}" if len(per_round) > 1 else ""
        f = lambda x: f"{x:.2f}x" if x is not None else "—"  # noqa: E731
        lines += [f"**peregrine / llama-server:** aggregate tok/s {f(ratio['tps'])} (higher is better{rng}); "
                  f"TTFT p99 {f(ratio['ttft_p99'])}, ITL p50 {f(ratio['itl_p50'])} (lower is better)", ""]
    lines += [f"{footnote_mark(notes, n)} {n}" for n in list(notes)]
    if notes:
        lines.append("")
    prompt_counts = sorted({q.prompt_tokens for r in rounds for q in r.requests if q.prompt_tokens})
    counts_txt = (f"{prompt_counts[0]}–{prompt_counts[-1]} tokens as the servers counted them"
                  if prompt_counts else "token counts not reported")
    cpu = sum(r.cpu.client for r in rounds)
    wall = sum(r.wall for r in rounds)
    others = [disturbance(r) for r in rounds]
    lines += [
        f"Rounds: {a.rounds}, servers alternating, a fresh server process each. Each round: one warm-up "
        f"request, then {a.clients} concurrent streaming POST /v1/completions (openai {openai.__version__} "
        f"AsyncOpenAI), temperature {TEMPERATURE:g}, max_tokens {a.max_tokens}, ignore_eos. agg tok/s = generated tokens of "
        "the batch / its wall time (mean ± sd over rounds); TTFT = send to first content chunk; ITL = gap "
        "between successive content chunks; percentiles pooled over all requests of all rounds. "
        f"Prompts: {a.clients} distinct passages of {plan.args.text.name} "
        f"({len(plan.prompts[0].split()) if plan.prompts else '?'} words, {counts_txt}; "
        f"{plan.tokens_per_word or 0:.2f} tokens/word calibrated on {plan.calibrated_on}'s warm-up), "
        "so prefix caching shares nothing between requests; both servers' prompt caches are left at their "
        f"defaults. The client ran on the same machine and used {cpu:.1f} s CPU in {wall:.1f} s of batches; "
        f"other processes and steal took {min(others):.0%}–{max(others):.0%} of the machine per batch (from "
        f"/proc/stat). 1-minute load average {plan.load[0]:.2f} before, {plan.load[1]:.2f} after.",
        f"- command: `{plan.invocation}`"]
    for k in kinds:
        lines.append(f"- {LABELS[k]}: `{plan.templates[k]}`")
    if "llama" in kinds:
        lines.append(f"- llama-server: llama.cpp@{plan.llama_commit} from the llama-cpp-python "
                     f"{LLAMA_CPP_PYTHON_VERSION} sdist (bench/llama_cpp_build.py); weights in "
                     + "; ".join(f"{v} ({c})" for c, v in plan.llama_buffers.items()))
    if "peregrine" in kinds:
        lines.append(f"- peregrine: {git_describe()} ({plan.peregrine_src}, copied before the first round)")
    lines.append(f"- {plan.model.name}: {plan.model} ({plan.model.stat().st_size / 2**20:.1f} MiB)")
    result = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "isa": cpu_isa()},
              "model": str(plan.model), "clients": a.clients, "max_tokens": a.max_tokens,
              "prompt_tokens_target": a.prompt_tokens, "prompt_tokens_seen": prompt_counts,
              "threads": a.threads, "parallel": a.parallel, "ctx_per_sequence": plan.ctx, "rounds": a.rounds,
              "commands": plan.templates, "invocation": plan.invocation, "llama_fallback": plan.llama_fallback,
              "llama_weight_buffers": plan.llama_buffers, "servers": stats, "ratio": ratio, "footnotes": notes,
              "load_before": plan.load[0], "load_after": plan.load[1], "openai": openai.__version__}
    return "\n".join(lines), result


DISTURBED = 0.10  # share of the machine taken by others above which a round is footnoted


def disturbance(r: Round) -> float:
    """The share of all cores that other processes and the hypervisor took during R's batch."""
    if r.cpu.others is None or r.wall <= 0:
        return 0.0
    return (r.cpu.others + (r.cpu.steal or 0.0)) / (r.wall * (os.cpu_count() or 1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL, help=f"GGUF file (default: {DEFAULT_MODEL})")
    ap.add_argument("--clients", type=int, default=16, help="concurrent requests (default: 16)")
    ap.add_argument("--prompt-tokens", type=int, default=128, help="about this many prompt tokens each (default: 128)")
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens generated per request (default: 128)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads of each server (default: 2)")
    ap.add_argument("--parallel", type=int, default=16, help="parallel slots of each server (default: 16)")
    ap.add_argument("-c", "--ctx", type=int, default=0,
                    help="context per sequence (default: prompt + max tokens with margin, a multiple of 256)")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="sampling temperature of every request (default: 0, greedy)")
    ap.add_argument("--rounds", type=int, default=1, help="rounds, the servers alternating (default: 1)")
    ap.add_argument("--peregrine", type=Path, help="peregrine binary (default: $PEREGRINE_BIN or build/bin/peregrine)")
    ap.add_argument("--llama-server", default="auto",
                    help="llama-server binary, or 'auto' to build it from the pinned sdist (default: auto)")
    ap.add_argument("--only", choices=("peregrine", "llama"), help="run one server only")
    ap.add_argument("--peregrine-args", default="", metavar="FLAGS",
                    help="extra flags for peregrine serve, one shell-quoted string (e.g. '--kv-type q8_0'; "
                         "write --peregrine-args=--no-prefix-cache for a single flag)")
    ap.add_argument("--llama-args", default="", metavar="FLAGS",
                    help="extra flags for llama-server, one shell-quoted string (e.g. '-ctk q8_0 -ctv q8_0 -fa on')")
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT, help=f"prompt source text (default: {DEFAULT_TEXT})")
    ap.add_argument("--timeout", type=float, default=600, help="seconds for one batch of requests (default: 600)")
    ap.add_argument("--start-timeout", type=float, default=180, help="seconds for a server to become healthy (default: 180)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="parallel jobs if llama-server must be built (default: 2)")
    ap.add_argument("--json", nargs="?", const="-", metavar="PATH",
                    help="write the results as JSON to PATH; without PATH print JSON instead of the table")
    args = ap.parse_args()
    global TEMPERATURE
    TEMPERATURE = args.temperature

    try:
        for name in ("clients", "prompt_tokens", "max_tokens", "threads", "parallel", "rounds", "jobs"):
            if getattr(args, name) < 1:
                raise Failure(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("peregrine_args", "llama_args"):
            try:
                shlex.split(getattr(args, name))
            except ValueError as e:
                raise Failure(f"--{name.replace('_', '-')}: {e}") from None
        model = args.model.expanduser()
        if not model.is_file():
            raise Failure(f"model {model} not found (build/bin/peregrine pull smollm2-135m fetches the default)")
        ctx = args.ctx or -(-(int(args.prompt_tokens * 1.25) + args.max_tokens + 32) // 256) * 256
        words = load_words(args.text)
        kinds = [args.only] if args.only else ["peregrine", "llama"]
        peregrine_src = llama_server = None
        llama_commit = "?"
        if "peregrine" in kinds:
            peregrine_src = (args.peregrine or Path(os.environ.get("PEREGRINE_BIN", REPO / "build" / "bin" / "peregrine"))).expanduser()
            if not os.access(peregrine_src, os.X_OK):
                raise Failure(f"{peregrine_src} not found; build it (scripts/build.sh peregrine), pass --peregrine, "
                              "or use --only llama")
            try:
                probe = subprocess.run([str(peregrine_src), "serve", "--help"], capture_output=True, text=True,
                                       timeout=60)
            except subprocess.TimeoutExpired:
                raise Failure(f"{peregrine_src} serve --help did not finish within 60 s") from None
            if probe.returncode != 0:
                raise Failure(f"{peregrine_src} serve --help failed ({(probe.stderr.strip().splitlines() or ['?'])[-1]}); "
                              "this binary has no working serve command")
        if "llama" in kinds:
            if args.llama_server == "auto":
                llama_server, llama_commit = build_target("llama-server", args.jobs)
            else:
                llama_server = Path(args.llama_server).expanduser()
                if not os.access(llama_server, os.X_OK):
                    raise Failure(f"--llama-server {llama_server}: not an executable file")
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    logs = Path(tempfile.mkdtemp(prefix="peregrine-serve-load-"))  # removed after a successful run
    if peregrine_src:  # a private copy: others may rebuild build/bin/peregrine while the rounds run
        shutil.copy2(peregrine_src, logs / "peregrine")
    plan = Plan(args, model, ctx, logs / "peregrine" if peregrine_src else None, llama_server, words, logs,
                peregrine_src=peregrine_src, llama_commit=llama_commit,
                invocation="bench/serve_load.py " + shlex.join(sys.argv[1:]))
    load_before = os.getloadavg()[0]
    rounds: list[Round] = []
    try:
        for number in range(1, args.rounds + 1):
            for kind in kinds:
                rounds.append(run_round(plan, kind, number))
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)  # names the server log, which is kept
        return 1
    except KeyboardInterrupt:
        print(f"error: interrupted (server logs kept in {logs})", file=sys.stderr)
        return 130
    plan.load = (load_before, os.getloadavg()[0])
    if "llama" in kinds:  # after the timed rounds, so the probes disturb nothing
        for fallback in ([False, True] if plan.llama_fallback else [False]):
            plan.llama_buffers[" ".join(LLAMA_FALLBACK) if fallback else "default"] = \
                llama_weight_buffers(plan, fallback)
    markdown, result = summarize(plan, rounds)
    shutil.rmtree(logs, ignore_errors=True)
    if args.json and args.json != "-":
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        log(f"wrote {args.json}")
    print(json.dumps(result, indent=2) if args.json == "-" else markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
