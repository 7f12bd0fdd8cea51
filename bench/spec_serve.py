#!/usr/bin/env python3
"""Speculative decoding in the server: aggregate generated tokens/s with and without --spec, at
several numbers of concurrent clients, on one of bench/spec_prompts' sets.

For each client count the two servers (plain `peregrine serve` and the same with the --spec
flags given) run in turn, each a fresh process with the same model, threads and slots, for
--rounds alternating rounds. A round sends every prompt of the set through the official `openai`
client (chat completions, temperature 0, --max-tokens each) from `clients` threads at once and
measures the completion tokens over the wall time. The texts of the two servers must be identical
(greedy: speculation never changes the output); the script says so per row. The speculating
server's /metrics gives the acceptance.

  .venv/bin/python bench/spec_serve.py --set grounded --clients 1,4,16 --spec "--spec ngram"
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import openai

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import serve_fixture  # noqa: E402  (starting a server and reading /metrics, shared with the e2e tests)

MODELS = Path(os.environ.get("PEREGRINE_MODELS", Path.home() / ".cache/peregrine/models"))


def one_round(port: int, model: Path, prompts: list[str], clients: int, max_tokens: int) -> tuple[float, list[str]]:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=600)

    def ask(p: str):
        r = client.chat.completions.create(model=str(model), messages=[{"role": "user", "content": p}],
                                           temperature=0, max_tokens=max_tokens)
        return r.usage.completion_tokens, r.choices[0].message.content

    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(clients) as ex:
        results = list(ex.map(ask, prompts))
    wall = time.monotonic() - t0
    return sum(n for n, _ in results) / wall, [t for _, t in results]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", type=Path, default=MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--set", default="grounded", help="bench/spec_prompts/SET.jsonl (default: grounded)")
    ap.add_argument("--clients", default="1,4,16", help="comma-separated client counts (default: 1,4,16)")
    ap.add_argument("--spec", default="--spec ngram", help="the speculating server's flags (default: %(default)r)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=16)
    ap.add_argument("-c", "--ctx", type=int, default=1024)
    ap.add_argument("--peregrine", type=Path, default=Path(os.environ.get("PEREGRINE_BIN", REPO / "build/bin/peregrine")))
    a = ap.parse_args()
    prompts = [json.loads(l)["prompt"] for l in (REPO / "bench/spec_prompts" / f"{a.set}.jsonl").read_text().splitlines() if l.strip()]
    base = ["-t", str(a.threads), "--parallel", str(a.parallel), "-c", str(a.ctx)]
    spec = shlex.split(a.spec)
    print(f"model {a.model.name}, set {a.set} ({len(prompts)} prompts), {a.max_tokens} tokens each, "
          f"{a.threads} threads, {a.parallel} slots, {a.rounds} rounds; speculating server: {a.spec}")
    print(f"command: {shlex.join([sys.argv[0], *sys.argv[1:]])}\n")
    print("| clients | plain tok/s | spec tok/s | speedup | acceptance | tokens/step | same text |")
    print("|---|---|---|---|---|---|---|")
    for clients in [int(c) for c in a.clients.split(",")]:
        # Each round sends the set once per client slot's worth, so every client stays busy.
        work = prompts * max(1, clients // len(prompts) + (clients % len(prompts) > 0))
        rates: dict[str, list[float]] = {"plain": [], "spec": []}
        texts: dict[str, list[str]] = {}
        acc = ""
        for _ in range(a.rounds):
            for mode in ("plain", "spec"):
                server = serve_fixture.start_server(a.peregrine, a.model, "-q", *base, *(spec if mode == "spec" else []),
                                                    start_timeout=120)
                port = server.port
                try:
                    one_round(port, a.model, work[:clients], clients, 8)  # warm-up
                    before = server.metrics()
                    rate, out = one_round(port, a.model, work, clients, a.max_tokens)
                    rates[mode].append(rate)
                    texts[mode] = out
                    if mode == "spec":
                        m = server.metrics()
                        d = m["peregrine_spec_draft_tokens_total"] - before["peregrine_spec_draft_tokens_total"]
                        ok = m["peregrine_spec_accepted_tokens_total"] - before["peregrine_spec_accepted_tokens_total"]
                        steps = m["peregrine_spec_decode_steps_total"] - before["peregrine_spec_decode_steps_total"]
                        acc = (f"{100 * ok / d:.0f}% of {int(d)}" if d else "none drafted",
                               f"{m['peregrine_spec_mean_accepted_length']:.2f}")
                finally:
                    server.stop()
        p, s = statistics.mean(rates["plain"]), statistics.mean(rates["spec"])
        same = "yes" if texts["plain"] == texts["spec"] else "NO"
        print(f"| {clients} | {p:.1f} | {s:.1f} | {s / p:.2f}x | {acc[0]} | {acc[1]} | {same} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
