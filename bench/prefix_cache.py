#!/usr/bin/env python3
"""Prefix caching: time to first token of chat requests that share a long system prompt.

Starts `peregrine serve` twice on the same model (prefix caching on, then --no-prefix-cache), and
against each sends --requests chat completions one after another, all with the same system prompt
of about --system-words words (a passage of GPL-3) and a different short question, streaming,
temperature 0. Reports the first request's TTFT (nothing cached yet), the median TTFT of the
others, the prompt tokens and usage.prompt_tokens_details.cached_tokens, the server's
peregrine_prefix_cache_hit_rate, and whether both servers gave identical answers.

usage: .venv/bin/python bench/prefix_cache.py [-m MODEL] [--requests 8] [--system-words 800] [-t 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import DEFAULT_MODEL, DEFAULT_TEXT, Server, free_port, http_get, load_words, passage  # noqa: E402

import openai  # noqa: E402  (serve_load re-executes under .venv when openai is missing)

REPO = Path(__file__).resolve().parent.parent
QUESTIONS = ["What is this text about?", "Who may copy it?", "Summarise it in one line.",
             "Name one obligation.", "Is it permissive?", "What does 'convey' mean here?",
             "Can I sell copies?", "What about patents?", "Who wrote it?", "Is there a warranty?"]


def ttft_and_answer(client, model: str, system: str, question: str) -> tuple[float, str, int, int]:
    t0 = time.perf_counter()
    ttft, text, usage = None, "", None
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": system}, {"role": "user", "content": question}],
        max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if ttft is None:
                ttft = time.perf_counter() - t0
            text += chunk.choices[0].delta.content
        if chunk.usage is not None:
            usage = chunk.usage
    details = getattr(usage, "prompt_tokens_details", None)
    return ttft or float("nan"), text, usage.prompt_tokens, (details.cached_tokens if details else 0)


def hit_rate(base: str) -> float:
    _, body = http_get(base + "/metrics", 10)
    for line in body.decode().splitlines():
        if line.startswith("peregrine_prefix_cache_hit_rate "):
            return float(line.split()[1])
    return float("nan")


def run(binary: Path, model: Path, threads: int, extra: list[str], system: str, n: int, tmp: Path):
    port = free_port()
    cmd = [str(binary), "serve", "-m", str(model), "--port", str(port), "-t", str(threads), "-c", "4096", *extra]
    server = Server("peregrine", cmd, port, tmp / f"serve{len(extra)}.log")
    server.start(180)
    try:
        client = openai.OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0, timeout=300)
        model_id = server.model_id("smollm2-135m")
        rows = [ttft_and_answer(client, model_id, system, QUESTIONS[i % len(QUESTIONS)]) for i in range(n)]
        return rows, hit_rate(server.base)
    finally:
        server.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--system-words", type=int, default=800)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--peregrine", type=Path, default=REPO / "build/bin/peregrine")
    args = ap.parse_args()
    system = passage(load_words(DEFAULT_TEXT), 0, args.system_words)
    with tempfile.TemporaryDirectory(prefix="peregrine-prefix-") as tmp:
        cached, rate = run(args.peregrine, args.model, args.threads, [], system, args.requests, Path(tmp))
        plain, rate_off = run(args.peregrine, args.model, args.threads, ["--no-prefix-cache"], system,
                              args.requests, Path(tmp))
    ms = lambda x: f"{x * 1000:.0f} ms"  # noqa: E731
    print(f"{args.requests} chat requests in a row, one system prompt of {args.system_words} words "
          f"({cached[0][2]} prompt tokens with the question), 16 tokens each, temperature 0, "
          f"{args.threads} threads, model {args.model.name}\n")
    print("| prefix cache | first request TTFT | later requests TTFT (median) | cached tokens (later, median) | hit rate |")
    print("|---|---|---|---|---|")
    for name, rows, r in (("on", cached, rate), ("off (`--no-prefix-cache`)", plain, rate_off)):
        later = rows[1:]
        print(f"| {name} | {ms(rows[0][0])} | {ms(statistics.median(x[0] for x in later))} | "
              f"{statistics.median(x[3] for x in later):.0f} | {r:.2f} |")
    same = [a[1] == b[1] for a, b in zip(cached, plain)]
    print(f"\nanswers identical with and without the cache: {sum(same)}/{len(same)}")
    print(f"command: bench/prefix_cache.py --requests {args.requests} --system-words {args.system_words} -t {args.threads}")
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
