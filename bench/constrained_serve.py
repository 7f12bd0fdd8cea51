#!/usr/bin/env python3
"""What constrained decoding costs a server: aggregate generated tokens/s of free generation vs
generation under a JSON Schema, at 1 and at N concurrent streaming clients, same server process,
same prompts, rounds alternating (free, constrained, free, ...) so drift hits both alike.

Every request generates exactly --max-tokens tokens: free requests use ignore_eos; constrained
ones follow a schema whose shortest output is longer than that (an array of --max-tokens integers),
so they end by length too. Constrained outputs are checked to be a prefix of valid JSON of that
shape. Prints a markdown table (tok/s per mode and the constrained/free ratio).

  bench/constrained_serve.py -m MODEL [--clients 1,16] [--max-tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import serve_fixture  # noqa: E402

import openai  # noqa: E402

DEFAULT_MODEL = Path.home() / ".cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf"
TOPICS = ["rivers", "bridges", "owls", "volcanoes", "chess", "bread", "comets", "glaciers", "violins", "deserts",
          "lighthouses", "bees", "tides", "maps", "clocks", "ferns"]


def schema(n: int) -> dict:
    return {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 999}, "minItems": n, "maxItems": n}


async def one(client, model, i, max_tokens, constrained):
    kw = {"extra_body": {"ignore_eos": True}}
    if constrained:
        kw = {"response_format": {"type": "json_schema",
                                  "json_schema": {"name": "numbers", "schema": schema(max_tokens)}}}
    msgs = [{"role": "user", "content": f"List numbers about {TOPICS[i % len(TOPICS)]}, request {i}."}]
    stream = await client.chat.completions.create(model=model, messages=msgs, max_tokens=max_tokens, temperature=0,
                                                  stream=True, stream_options={"include_usage": True}, **kw)
    text, usage = "", None
    async for ch in stream:
        if ch.choices:
            text += ch.choices[0].delta.content or ""
        if ch.usage:
            usage = ch.usage
    if constrained and not re.fullmatch(r"\[(\d{1,3}(,\d{1,3})*,?)?\d{0,3}", text):
        raise SystemExit(f"constrained output is not a prefix of the schema's JSON: {text[:200]!r}")
    return usage.completion_tokens


async def batch(base_url, model, clients, max_tokens, constrained):
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="x", max_retries=0, timeout=600)
    t0 = time.perf_counter()
    tokens = await asyncio.gather(*(one(client, model, i, max_tokens, constrained) for i in range(clients)))
    dt = time.perf_counter() - t0
    await client.close()
    if any(t != max_tokens for t in tokens):
        raise SystemExit(f"a request generated {tokens} tokens, not {max_tokens} each")
    return sum(tokens) / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--clients", default="1,16", help="comma-separated client counts (default: 1,16)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--peregrine", type=Path, default=Path(os.environ.get("PEREGRINE_BIN", REPO / "build/bin/peregrine")))
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = ap.parse_args()
    counts = [int(c) for c in a.clients.split(",")]
    server = serve_fixture.start_server(a.peregrine, a.model, "-q", "-t", str(a.threads), "--parallel",
                                        str(max(counts)), "-c", str(max(counts) * (a.max_tokens + 128)))
    try:
        with urllib_models(server.base_url) as names:
            model = names[0]
        results = {}
        for n in counts:
            asyncio.run(batch(server.base_url, model, n, a.max_tokens, True))  # compile + warm up
            free, cons = [], []
            for _ in range(a.rounds):
                free.append(asyncio.run(batch(server.base_url, model, n, a.max_tokens, False)))
                cons.append(asyncio.run(batch(server.base_url, model, n, a.max_tokens, True)))
            results[n] = {"free_tok_s": statistics.median(free), "constrained_tok_s": statistics.median(cons),
                          "ratio": statistics.median(c / f for c, f in zip(cons, free))}
    finally:
        server.stop()
    if a.json:
        print(json.dumps({"model": a.model.name, "max_tokens": a.max_tokens, "rounds": a.rounds,
                          "clients": results}))
        return
    print(f"| clients | free tok/s | JSON Schema tok/s | constrained / free |\n|---|---|---|---|")
    for n, r in results.items():
        print(f"| {n} | {r['free_tok_s']:.1f} | {r['constrained_tok_s']:.1f} | {r['ratio']:.3f} |")


class urllib_models:
    """The server's first model id (GET /v1/models)."""

    def __init__(self, base_url):
        self.base_url = base_url

    def __enter__(self):
        import urllib.request
        with urllib.request.urlopen(self.base_url + "/v1/models", timeout=10) as r:
            return [m["id"] for m in json.load(r)["data"]]

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
