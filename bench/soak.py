#!/usr/bin/env python3
"""Soak test: many clients of mixed normal and hostile traffic against `peregrine serve` for a while.

Starts a server (or uses --url), runs each distinct temperature-0 request alone to get its
reference answer, then for --duration seconds keeps --clients threads busy with a random mix:

  chat / completion, plain or streamed, temperature 0, prompts from a fixed list  (checked against
  the reference: tokens (from logprobs), text, finish reason and token count must be identical)
  cancel      a stream closed after its first events
  disconnect  a plain request whose client leaves before the answer
  oversized   a body over --max-body                      (413 expected)
  malformed   a quick attack from tests/e2e/http_attacks.py (its spec check must pass)

Records requests served, errors by kind, p50/p99 latency of the normal requests, and the server's
RSS after the warm-up and at the end (from /proc/PID/status when this script started the server,
or --pid). Exit 1 if a check fails: an error kind other than the expected answers above, a
temperature-0 answer that differs from its reference, RSS growth over --rss-growth percent after
the warm-up, sequences or KV blocks still held once the load stops, or the server died.

  .venv/bin/python bench/soak.py                          # 64 clients, 600 s, own server
  .venv/bin/python bench/soak.py --duration 20 --clients 8  # bounded mode, well under a minute
  .venv/bin/python bench/soak.py --url http://127.0.0.1:8080 --api-key KEY --pid PID

Flags:
  --clients N        concurrent client threads (default 64)
  --duration S       seconds of load after the references (default 600)
  --warmup S         seconds of load before the first RSS sample (default: a fifth of --duration, at most 60)
  --url URL          a running server instead of starting one (its --max-body must match --max-body)
  --pid PID          that server's process id, for RSS (with --url)
  --api-key KEY      sent as Authorization: Bearer KEY (the started server gets it; default sk-soak)
  --bin PATH         peregrine binary (default build/bin/peregrine or $PEREGRINE_BIN)
  --model PATH       GGUF (default $PEREGRINE_MODEL_PATH or the SmolLM2-135M Q4_1 in the cache)
  --threads/-t N     server threads (default 1); --parallel N slots (default 4); --ctx N (default 512)
  --max-body BYTES   the server's --max-body (default 65536)
  --server-arg ARG   extra argument for the started server (repeatable), e.g. --server-arg=--read-timeout=5
  --rss-growth PCT   allowed RSS growth after the warm-up (default 5)
  --seed N           random mix seed (default 1)
  --json PATH        write the results as JSON too
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import http_attacks as ha  # noqa: E402  (the shared attack library)
import serve_fixture  # noqa: E402  (starting a server, shared with the e2e tests)

MODEL_ID = "smollm2-135m"
PROMPTS = [
    "The capital of France is",
    "Write a haiku about the sea.",
    "List three prime numbers.",
    "Once upon a time, in a small village,",
    "Explain what a compiler does in one sentence.",
    "The three primary colors are",
    "What is 12 times 12?",
    "Translate 'good morning' into Spanish.",
]
MAX_TOKENS = 24
# Weights of the mix; the kinds besides the four normal ones are the hostile or rude clients.
MIX = {"chat": 25, "chat-stream": 15, "completion": 20, "completion-stream": 10,
       "cancel": 8, "disconnect": 6, "oversized": 8, "malformed": 8}
# Quick attacks with a single connection and a prompt answer (no holding, no 200 MB bodies).
MALFORMED = [a for a in ha.ATTACKS if a.group in ("limits", "encoding", "framing", "smuggling", "auth")
             and a.name not in ("body-chunked-200mb", "gzip-bomb", "body-declared-1gb")]


@dataclass
class Results:
    served: Counter = field(default_factory=Counter)  # kind -> requests that went as expected
    errors: Counter = field(default_factory=Counter)  # "kind: what" -> count
    examples: dict = field(default_factory=dict)  # error key -> first detail
    latencies: list = field(default_factory=list)  # seconds, normal requests
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ok(self, kind: str, seconds: float | None = None) -> None:
        with self.lock:
            self.served[kind] += 1
            if seconds is not None:
                self.latencies.append(seconds)

    def fail(self, kind: str, what: str, detail: str = "") -> None:
        key = f"{kind}: {what}"
        with self.lock:
            self.errors[key] += 1
            self.examples.setdefault(key, detail[:300])


class Client:
    """Normal requests over one keep-alive connection (reopened when the server closed it)."""

    def __init__(self, host: str, port: int, key: str | None, timeout: float = 120):
        self.host, self.port, self.key, self.timeout = host, port, key, timeout
        self.conn: http.client.HTTPConnection | None = None

    def _headers(self) -> dict:
        h = {"Content-Type": "application/json"}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        return h

    def post(self, path: str, body: dict) -> http.client.HTTPResponse:
        """Send on the kept connection; a connection the server closed while idle is reopened once."""
        for attempt in (0, 1):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self.conn.request("POST", path, body=json.dumps(body), headers=self._headers())
                return self.conn.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.drop()
                if not reused or attempt:
                    raise
        raise AssertionError("unreachable")

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def request_body(kind: str, prompt: str, stream: bool) -> tuple[str, dict]:
    """A greedy request that also returns its tokens (logprobs), so answers compare token by token."""
    if kind.startswith("chat"):
        return "/v1/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": prompt}],
                                        "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream, "logprobs": True}
    return "/v1/completions", {"model": MODEL_ID, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
                               "stream": stream, "logprobs": 0}


@dataclass
class Answer:
    text: str
    finish: str | None
    tokens: list  # per token: its bytes (chat) or its text (completions); empty if the server sent none
    completion_tokens: int | None  # usage; None for streams (no include_usage)

    def differs(self, alone: "Answer") -> bool:
        return (self.text != alone.text or self.finish != alone.finish or self.tokens != alone.tokens
                or (self.completion_tokens is not None and self.completion_tokens != alone.completion_tokens))


def choice_tokens(c: dict) -> list:
    lp = c.get("logprobs") or {}
    if "content" in lp:  # chat
        return [tuple(t["bytes"]) if t.get("bytes") is not None else t["token"] for t in lp["content"] or []]
    return list(lp.get("tokens") or [])


def answer_of(resp: http.client.HTTPResponse, stream: bool) -> Answer:
    """The answer of a 200 response, plain or streamed."""
    if not stream:
        body = json.loads(resp.read())
        c = body["choices"][0]
        text = c["message"]["content"] if "message" in c else c["text"]
        return Answer(text, c["finish_reason"], choice_tokens(c), body["usage"]["completion_tokens"])
    text, finish, tokens = "", None, []
    for data in ha.sse_data(resp):
        if data == "[DONE]":
            resp.read()  # the end of the chunked body, so the connection can carry the next request
            return Answer(text, finish, tokens, None)
        ev = json.loads(data)
        if "error" in ev:
            raise RuntimeError(f"error event: {ev['error'].get('message')}")
        for c in ev.get("choices", []):
            text += (c.get("delta", {}).get("content") or "") if "delta" in c else c.get("text", "")
            tokens += choice_tokens(c)
            finish = c.get("finish_reason") or finish
    raise RuntimeError("stream ended without [DONE]")


def references(host: str, port: int, key: str | None) -> dict:
    """(endpoint kind, prompt) -> Answer, each request run alone; and
    "attack" -> the text of http_attacks' reference completion (what its checks compare with)."""
    ref = {}
    c = Client(host, port, key)
    for kind in ("chat", "completion"):
        for p in PROMPTS:
            path, body = request_body(kind, p, False)
            r = c.post(path, body)
            if r.status != 200:
                raise SystemExit(f"error: reference request {kind} {p!r}: status {r.status} {r.read()[:200]!r}")
            ref[(kind, p)] = answer_of(r, False)
    c.drop()
    ref["attack"] = ha.normal_completion(host, port, ha.Opts(api_key=key, model=MODEL_ID))
    return ref


def fill_kv(host: str, port: int, key: str | None, parallel: int, ctx: int) -> None:
    """Touch every KV block once before the first RSS sample: the pool is allocated lazily (calloc),
    so otherwise RSS grows for as long as the load reaches blocks it never used, which is not a
    leak. PARALLEL prompts of random token ids (nothing shared for the prefix cache), each filling
    its context but for a few positions, prefilled at once."""
    rng = random.Random(7)
    errors: list[str] = []

    def one(i: int) -> None:
        c = Client(host, port, key)
        try:
            prompt = [rng.randrange(1000, 30000) for _ in range(ctx - 8)]  # token ids
            r = c.post("/v1/completions", {"model": MODEL_ID, "prompt": prompt, "max_tokens": 1, "temperature": 0})
            if r.status != 200:
                errors.append(f"status {r.status}: {r.read()[:200]!r}")
            r.read()
        except (OSError, http.client.HTTPException) as e:
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            c.drop()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"error: the KV fill request failed: {errors[0]}")


def normal(c: Client, kind: str, rng: random.Random, ref: dict, res: Results) -> None:
    stream = kind.endswith("-stream")
    base = kind.split("-")[0]
    prompt = rng.choice(PROMPTS)
    path, body = request_body(base, prompt, stream)
    t0 = time.monotonic()
    try:
        r = c.post(path, body)
        if r.status != 200:
            res.fail(kind, f"status {r.status}", r.read().decode("utf-8", "replace"))
            return
        got = answer_of(r, stream)
    except (OSError, http.client.HTTPException, RuntimeError, ValueError, KeyError) as e:
        c.drop()
        res.fail(kind, type(e).__name__, str(e))
        return
    alone = ref[(base, prompt)]
    if got.differs(alone):
        res.fail(kind, "mismatch", f"{prompt!r}: got {got}, alone {alone}")
        return
    res.ok(kind, time.monotonic() - t0)


def cancel(host: str, port: int, key: str | None, rng: random.Random, res: Results) -> None:
    """A stream closed after its first one to three events."""
    c = Client(host, port, key, timeout=60)
    path, body = request_body(rng.choice(["chat", "completion"]), rng.choice(PROMPTS), True)
    body["max_tokens"] = 200
    try:
        r = c.post(path, body)
        if r.status != 200:
            res.fail("cancel", f"status {r.status}", r.read().decode("utf-8", "replace"))
            return
        want = rng.randint(1, 3)
        for raw in r:
            if raw.startswith(b"data:"):
                want -= 1
                if want == 0:
                    break
        res.ok("cancel")
    except (OSError, http.client.HTTPException) as e:
        res.fail("cancel", type(e).__name__, str(e))
    finally:
        c.drop()


def disconnect(host: str, port: int, key: str | None, rng: random.Random, res: Results) -> None:
    """A plain request whose client leaves 0-0.5 s after sending it."""
    opts = ha.Opts(api_key=key, model=MODEL_ID)
    try:
        conn = ha.Conn(host, port, 10)
        conn.send(ha.completion(opts, prompt=rng.choice(PROMPTS), max_tokens=200,
                                headers=[("Accept-Encoding", "gzip, deflate")]))
        time.sleep(rng.uniform(0, 0.5))
        conn.close()
        res.ok("disconnect")
    except OSError as e:
        res.fail("disconnect", type(e).__name__, str(e))


def oversized(host: str, port: int, key: str | None, max_body: int, rng: random.Random, res: Results) -> None:
    opts = ha.Opts(api_key=key, model=MODEL_ID, max_body=max_body, io_timeout=30)
    body = b'{"model": "smollm2-135m", "prompt": "' + b"a" * (max_body + rng.randint(1, 4096)) + b'"}'
    o = ha.exchange(host, port, ha.request("POST", "/v1/completions", [*opts.auth()], body), opts, linger=0.5)
    why = ha.wants(413)(o, opts)
    if why:
        res.fail("oversized", why.split(" (")[0], o.summary())
    else:
        res.ok("oversized")


def malformed(host: str, port: int, key: str | None, max_body: int, ref: dict, rng: random.Random,
              res: Results) -> None:
    attack = rng.choice(MALFORMED)
    opts = ha.Opts(api_key=key, model=MODEL_ID, max_body=max_body, io_timeout=10,
                   reference=ref["attack"])
    if ha.applicable(attack, opts):
        attack = ha.BY_NAME["head-over-16k"]
    o = attack.run(host, port, opts)
    why = attack.check(o, opts)
    if why:
        res.fail("malformed", attack.name, why)
    else:
        res.ok("malformed")


def client_loop(i: int, host: str, port: int, args, ref: dict, res: Results, stop_at: float) -> None:
    rng = random.Random(args.seed * 1000 + i)
    kinds, weights = list(MIX), list(MIX.values())
    c = Client(host, port, args.api_key)
    while time.monotonic() < stop_at:
        kind = rng.choices(kinds, weights)[0]
        if kind in ("chat", "chat-stream", "completion", "completion-stream"):
            normal(c, kind, rng, ref, res)
        elif kind == "cancel":
            cancel(host, port, args.api_key, rng, res)
        elif kind == "disconnect":
            disconnect(host, port, args.api_key, rng, res)
        elif kind == "oversized":
            oversized(host, port, args.api_key, args.max_body, rng, res)
        else:
            malformed(host, port, args.api_key, args.max_body, ref, rng, res)
    c.drop()


# ---- server ----------------------------------------------------------------------------------------

def start_server(args) -> tuple[subprocess.Popen, int, list[str]]:
    extra = ["-t", str(args.threads), "--parallel", str(args.parallel), "-c", str(args.ctx), "--max-body",
             str(args.max_body), "-q", *args.server_arg]
    if args.api_key:
        extra += ["--api-key", args.api_key]
    try:
        s = serve_fixture.start_server(Path(args.bin), Path(args.model), *extra)
    except AssertionError as e:  # the fixture's way of saying the server did not come up
        raise SystemExit(f"error: {e}") from None
    return s.proc, s.port, s.stderr_lines


def metrics(host: str, port: int, key: str | None) -> dict[str, float]:
    c = http.client.HTTPConnection(host, port, timeout=10)
    try:
        c.request("GET", "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {})
        r = c.getresponse()
        text = r.read().decode()
        if r.status != 200:
            return {}
    finally:
        c.close()
    return serve_fixture.parse_metrics(text)


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=600)
    ap.add_argument("--warmup", type=float, default=None)
    ap.add_argument("--url")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--api-key")
    ap.add_argument("--bin", default=os.environ.get("PEREGRINE_BIN", str(REPO / "build/bin/peregrine")))
    ap.add_argument("--model", default=os.environ.get(
        "PEREGRINE_MODEL_PATH", str(Path.home() / ".cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf")))
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--max-body", type=int, default=65536)
    ap.add_argument("--server-arg", action="append", default=[])
    ap.add_argument("--rss-growth", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 5)
    if not args.url and args.api_key is None:
        args.api_key = "sk-soak"  # a key, so the auth and smuggling attacks are in the mix

    proc, lines = None, []
    if args.url:
        m = re.match(r"https?://([^:/]+):(\d+)", args.url)
        if not m:
            ap.error(f"--url {args.url}: want http://HOST:PORT")
        host, port, pid = m.group(1), int(m.group(2)), args.pid
    else:
        proc, port, lines = start_server(args)
        host, pid = "127.0.0.1", proc.pid
    failures: list[str] = []
    res = Results()
    try:
        t0 = time.monotonic()
        ref = references(host, port, args.api_key)
        print(f"references: {len(ref)} requests alone in {time.monotonic() - t0:.1f} s", flush=True)
        rss: dict[str, int | None] = {"start": ha.rss_kib(pid) if pid else None}
        if not args.url:  # the pool's size is known only for a server started here
            t1 = time.monotonic()
            fill_kv(host, port, args.api_key, args.parallel, args.ctx)
            print(f"KV pool touched: {args.parallel} x {args.ctx - 8}-token prompts in {time.monotonic() - t1:.1f} s",
                  flush=True)
        start = time.monotonic()
        stop_at = start + args.duration
        threads = [threading.Thread(target=client_loop, args=(i, host, port, args, ref, res, stop_at), daemon=True)
                   for i in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(min(warmup, args.duration))
        rss["after_warmup"] = ha.rss_kib(pid) if pid else None
        peak = rss["after_warmup"] or 0
        while time.monotonic() < stop_at:
            time.sleep(1)
            if proc is not None and proc.poll() is not None:
                break
            peak = max(peak, (ha.rss_kib(pid) if pid else 0) or 0)
        for t in threads:
            t.join(150)
        if any(t.is_alive() for t in threads):
            failures.append("clients still waiting 150 s after the end (a request hangs)")
        rss["end"] = ha.rss_kib(pid) if pid else None
        rss["peak"] = peak or None
        wall = time.monotonic() - start

        if proc is not None and proc.poll() is not None:
            failures.append(f"the server died: exit {proc.returncode}\n{''.join(lines[-20:])}")
        else:
            deadline = time.monotonic() + 15
            m = {}
            while time.monotonic() < deadline:
                m = metrics(host, port, args.api_key)
                if m.get("peregrine_running_sequences", 0) == 0 and m.get("peregrine_kv_blocks_used", 0) == 0:
                    break
                time.sleep(0.2)
            else:
                failures.append(f"15 s after the load: {m.get('peregrine_running_sequences')} sequences running, "
                                f"{m.get('peregrine_kv_blocks_used')} KV blocks used")
            if ha.health_latency(host, port) is None:
                failures.append("/health does not answer after the load")
        if res.errors:
            failures.append(f"{sum(res.errors.values())} unexpected outcomes")
        if rss["after_warmup"] and rss["end"]:
            growth = 100.0 * (rss["end"] - rss["after_warmup"]) / rss["after_warmup"]
            rss["growth_pct"] = round(growth, 2)
            if growth > args.rss_growth:
                failures.append(f"RSS grew {growth:.1f}% after the warm-up (allowed {args.rss_growth:g}%)")
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                failures.append("the server did not exit within 30 s of SIGTERM")

    total = sum(res.served.values()) + sum(res.errors.values())
    p50, p99 = pct(res.latencies, 50), pct(res.latencies, 99)
    print(f"\n{args.clients} clients, {wall:.0f} s ({warmup:.0f} s warm-up): {total} requests, "
          f"{sum(res.served.values())} as expected ({total / wall:.1f}/s)")
    print("served: " + ", ".join(f"{k} {v}" for k, v in sorted(res.served.items())))
    lat = "—" if p50 is None else f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    print(f"normal request latency (send to last byte): {lat}")
    kib = lambda v: "?" if not v else f"{v / 1024:.1f} MiB"  # noqa: E731
    print(f"server RSS: start {kib(rss['start'])}, after warm-up {kib(rss['after_warmup'])}, "
          f"peak {kib(rss['peak'])}, end {kib(rss['end'])}"
          + (f" ({rss['growth_pct']:+.2f}% after warm-up, allowed {args.rss_growth:g}%)"
             if "growth_pct" in rss else ""))
    if res.errors:
        print("unexpected outcomes:")
        for k, v in res.errors.most_common():
            print(f"  {v:5d}  {k}  e.g. {res.examples[k]}")
    for f in failures:
        print(f"FAIL: {f}")
    print("PASS" if not failures else "FAILED")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "clients": args.clients, "duration_s": wall, "served": dict(res.served), "errors": dict(res.errors),
            "examples": res.examples, "latency_p50_s": p50, "latency_p99_s": p99, "rss_kib": rss,
            "failures": failures}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
