"""`peregrine serve` driven by the official `openai` client, as users drive it.

The expected texts are not copied from the server: greedy (temperature 0) answers are compared
with `peregrine run`, a separate code path (one sequence, contiguous KV cache, no scheduler), and
with the same prompts run alone against run among many; token counts are checked against the
tokenizer and the streams against the non-streamed answers.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import threading
import time

import openai

try:  # the HTTP client the pinned openai release is built on
    import httpx2 as httpx
except ImportError:  # older openai releases
    import httpx
import pytest

from serve_fixture import start_server, threads_arg

KEY = "sk-peregrine-test"
MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def server(peregrine_bin, model_path):
    s = start_server(peregrine_bin, model_path, *threads_arg(), "--parallel", "16", "-c", "1024",
                     "--api-key", KEY, "--max-queue", "96")
    yield s
    rc = s.stop()
    assert rc == 0, f"server exit code {rc}\n{s.stderr_tail()}"


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def aclient_factory(server):
    def make():
        return openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key=KEY, max_retries=0, timeout=300)
    return make


def run_cli(ok, model_path, prompt, n, chat=False):
    args = ["run", "-m", model_path, "-t", "2", "--temp", "0", "-n", str(n), "-p", prompt]
    if chat:
        args.append("--chat")
    return ok(*args).stdout.rstrip("\n")


# ---- API surface -------------------------------------------------------------------------------

def test_health_and_models(server, client):
    r = httpx.get(server.base_url + "/health", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "ok"
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_chat_greedy_matches_the_cli(client, ok, model_path):
    q = "What is the capital of France?"
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": q}],
                                       max_tokens=24, temperature=0)
    assert r.object == "chat.completion"
    c = r.choices[0]
    assert c.message.role == "assistant"
    assert c.message.content == run_cli(ok, model_path, q, 24, chat=True)
    assert c.finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_completion_greedy_matches_the_cli_and_counts(client, ok, model_path, tokenize):
    p = "The three primary colors are"
    r = client.completions.create(model=MODEL, prompt=p, max_tokens=20, temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text == run_cli(ok, model_path, p, 20)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 20
    assert r.usage.prompt_tokens == len(tokenize(p))


def test_completions_default_to_16_tokens(client):
    r = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 16 and r.choices[0].finish_reason == "length"


def test_stop_strings(client):
    p = "1, 2, 3, 4, 5,"
    full = client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0).choices[0].text
    assert " 8" in full, full
    r = client.completions.create(model=MODEL, prompt=p, max_tokens=12, temperature=0, stop=[" 8", "zzz"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].text == full[:full.index(" 8")]


def test_stream_equals_the_whole_answer(client):
    msgs = [{"role": "user", "content": "Name three fruits."}]
    whole = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=30, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=30, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_n_choices(client):
    p = "My favourite animal is"
    greedy = client.completions.create(model=MODEL, prompt=p, max_tokens=10, temperature=0).choices[0].text
    r = client.completions.create(model=MODEL, prompt=p, max_tokens=10, temperature=0, n=3)
    assert sorted(c.index for c in r.choices) == [0, 1, 2]
    assert all(c.text == greedy for c in r.choices)
    assert r.usage.completion_tokens <= 30
    s1 = client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=1.0, n=4, seed=7,
                                   extra_body={"ignore_eos": True})
    s2 = client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=1.0, n=4, seed=7,
                                   extra_body={"ignore_eos": True})
    assert [c.text for c in s1.choices] == [c.text for c in s2.choices], "same seed, same answers"
    assert len({c.text for c in s1.choices}) > 1, "choices should differ when sampling"
    assert s1.usage.completion_tokens == 64


def test_n_choices_stream(client):
    chunks = list(client.completions.create(model=MODEL, prompt="Hello", max_tokens=5, temperature=0.8, n=2,
                                            seed=3, stream=True, extra_body={"ignore_eos": True}))
    by_choice = {0: "", 1: ""}
    ends = {}
    for c in chunks:
        for ch in c.choices:
            by_choice[ch.index] += ch.text
            if ch.finish_reason:
                ends[ch.index] = ch.finish_reason
    assert ends == {0: "length", 1: "length"}
    assert all(by_choice.values())


def test_chat_logprobs(client):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hi."}],
                                       max_tokens=8, temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert len(t.top_logprobs) == 3
        tops = [x.logprob for x in t.top_logprobs]
        assert tops == sorted(tops, reverse=True) and tops[0] <= 0
        # Greedy: the chosen token is the most likely one.
        assert t.token == t.top_logprobs[0].token and math.isclose(t.logprob, tops[0], abs_tol=1e-6)
        assert sum(math.exp(x) for x in tops) <= 1.0 + 1e-4
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token


def test_completion_logprobs(client):
    r = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 2 and math.isclose(max(top.values()), l, abs_tol=1e-6) and top[tok] == l


def test_penalties_break_a_repetition(client):
    def tokens(**kw):
        r = client.completions.create(model=MODEL, prompt="1 1 1 1 1 1 1 1", max_tokens=16, temperature=0,
                                      logprobs=0, **kw)
        return r.choices[0].logprobs.tokens

    def most_repeated(toks):
        return max(toks.count(t) for t in toks)

    plain = tokens()
    assert most_repeated(plain) >= 6, plain  # greedy keeps counting "1 1 1 ..."
    for kw in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        assert most_repeated(tokens(**kw)) < most_repeated(plain), kw
    assert tokens(frequency_penalty=-2.0) == plain or most_repeated(tokens(frequency_penalty=-2.0)) >= 6


# ---- errors ------------------------------------------------------------------------------------

def test_errors_map_to_client_exceptions(server, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
    assert "no-such-model" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=1, temperature=7)
    assert "temperature" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="x", max_tokens=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="word " * 1500, max_tokens=4)
    assert e.value.code == "context_length_exceeded"
    bad = openai.OpenAI(base_url=server.base_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=MODEL, prompt="x", max_tokens=1)


def test_malformed_and_oversized_requests(server):
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    url = server.base_url + "/v1/chat/completions"
    cases = [
        b"{not json",
        b"[1, 2, 3]",
        b'{"model": "smollm2-135m"}',
        b'{"model": "smollm2-135m", "messages": "hi"}',
        b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": 5}]}',
        b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "n": "two"}',
        b'{"model": "smollm2-135m", "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}',
        b'{"model": 3, "messages": [{"role": "user", "content": "x"}]}',
        b"[" * 100000,
    ]
    for body in cases:
        r = httpx.post(url, content=body, headers=h, timeout=30)
        assert r.status_code == 400, (body[:80], r.status_code, r.text[:200])
        err = r.json()["error"]
        assert err["message"] and err["type"] == "invalid_request_error"
    r = httpx.post(url, content=b'{"x": "' + b"a" * (5 << 20) + b'"}', headers=h, timeout=60)
    assert r.status_code == 413
    r = httpx.get(server.base_url + "/v1/nothing", headers=h, timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200


# ---- batching ----------------------------------------------------------------------------------

PROMPTS = [("Tell me about " + " ".join(["the sea"] * k)) for k in range(1, 17)]


def test_batch_invariance(client, aclient_factory):
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0,
                                       extra_body={"ignore_eos": True}).choices[0].text for p in PROMPTS]

    async def together():
        ac = aclient_factory()
        rs = await asyncio.gather(*[ac.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0,
                                                          extra_body={"ignore_eos": True}) for p in PROMPTS])
        return [r.choices[0].text for r in rs]

    assert asyncio.run(together()) == alone


def test_64_concurrent_streams(server, aclient_factory):
    before = server.metrics(KEY)

    async def one(ac, i):
        stream = await ac.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=20 + i % 7,
            temperature=0.7, seed=i, stream=True, stream_options={"include_usage": True})
        text, finishes, usage, n_chunks = "", [], None, 0
        async for c in stream:
            if c.usage:
                usage = c.usage
            for ch in c.choices:
                n_chunks += 1
                text += ch.delta.content or ""
                if ch.finish_reason:
                    finishes.append(ch.finish_reason)
        return text, finishes, usage

    async def all_():
        ac = aclient_factory()
        return await asyncio.wait_for(asyncio.gather(*[one(ac, i) for i in range(64)]), timeout=600)

    results = asyncio.run(all_())
    total = 0
    for i, (text, finishes, usage) in enumerate(results):
        assert len(finishes) == 1 and finishes[0] in ("stop", "length"), (i, finishes)
        assert usage is not None and 0 < usage.completion_tokens <= 20 + i % 7
        total += usage.completion_tokens
    after = server.metrics(KEY)
    key = "peregrine_generation_tokens_total"
    assert after[key] - before[key] == total
    assert after['peregrine_requests_total{status="200"}'] - before.get('peregrine_requests_total{status="200"}', 0) >= 64
    assert after["peregrine_running_sequences"] == 0 and after["peregrine_kv_blocks_used"] == 0


def test_prefix_cache_hits_and_identical_answers(server, client):
    system = "You are a careful assistant. " + " ".join(f"Rule {i}: answer briefly and politely." for i in range(60))
    msgs = lambda q: [{"role": "system", "content": system}, {"role": "user", "content": q}]  # noqa: E731
    before = server.metrics(KEY)
    first = client.chat.completions.create(model=MODEL, messages=msgs("What is 2+2?"), max_tokens=12, temperature=0)
    again = client.chat.completions.create(model=MODEL, messages=msgs("What is 2+2?"), max_tokens=12, temperature=0)
    other = client.chat.completions.create(model=MODEL, messages=msgs("Name a colour."), max_tokens=12, temperature=0)
    after = server.metrics(KEY)
    assert first.usage.prompt_tokens > 500
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 16
    assert other.usage.prompt_tokens_details.cached_tokens >= 500
    hits = after["peregrine_prefix_cache_hit_tokens_total"] - before["peregrine_prefix_cache_hit_tokens_total"]
    assert hits >= 1000
    assert after["peregrine_prefix_cache_hit_rate"] > 0
    # Without the cache: a server with --no-prefix-cache gives the same answer (checked in
    # test_no_prefix_cache_same_answers below).


def test_multi_turn_history_comes_from_the_cache(client):
    """The second turn's prompt repeats the first turn and the generated answer: the blocks written
    while generating that answer serve it (the template re-renders the reply to the same tokens)."""
    msgs = [{"role": "user", "content": "Tell me a short story about a fox and a crow, in about eighty words."}]
    r1 = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=100, temperature=0)
    msgs += [{"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "user", "content": "Now give it a title."}]
    r2 = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
    covered = r1.usage.prompt_tokens + r1.usage.completion_tokens
    assert r2.usage.prompt_tokens > covered
    assert r2.usage.prompt_tokens_details.cached_tokens >= covered - 2 * 16, (r1.usage, r2.usage)


def test_one_log_line_per_request(server, client):
    def lines(prefix):
        return [x for x in list(server.stderr_lines) if x.startswith(prefix)]
    ok_before = len(lines("POST /v1/completions 200 "))
    bad_before = len(lines("POST /v1/completions 404 "))
    client.completions.create(model=MODEL, prompt="Hello", max_tokens=3, temperature=0, extra_body={"ignore_eos": True})
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="evil\nPOST /v1/completions 200 forged", prompt="x", max_tokens=1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (len(lines("POST /v1/completions 404 ")) == bad_before or
                                           len(lines("POST /v1/completions 200 ")) == ok_before):
        time.sleep(0.05)
    new_ok = lines("POST /v1/completions 200 ")[ok_before:]
    assert len(new_ok) == 1 and "completion 3 " in new_ok[0], new_ok
    assert len(lines("POST /v1/completions 404 ")) == bad_before + 1
    assert not any(x.startswith("POST /v1/completions 200 forged") for x in server.stderr_lines)


# ---- faults ------------------------------------------------------------------------------------

def test_disconnect_mid_stream_frees_blocks(server):
    h = {"Authorization": f"Bearer {KEY}"}
    body = {"model": MODEL, "prompt": "Write a very long story about a dragon.", "max_tokens": 900,
            "stream": True, "extra": 1, "ignore_eos": True}
    with httpx.stream("POST", server.base_url + "/v1/completions", json=body, headers=h, timeout=60) as r:
        assert r.status_code == 200
        n = 0
        for line in r.iter_lines():
            if line.startswith("data: "):
                n += 1
            if n >= 5:
                break
        during = server.metrics(KEY)
        assert during["peregrine_kv_blocks_used"] > 0
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        m = server.metrics(KEY)
        if m["peregrine_running_sequences"] == 0 and m["peregrine_kv_blocks_used"] == 0:
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"blocks not returned after the client left: {m}")
    assert m['peregrine_requests_total{status="disconnected"}'] >= 1


def test_memory_stays_flat(server, aclient_factory):
    async def burst(n):
        ac = aclient_factory()
        sem = asyncio.Semaphore(16)

        async def one(i):
            async with sem:
                await ac.completions.create(model=MODEL, prompt=f"Item {i}:", max_tokens=2, temperature=0)
        await asyncio.gather(*[one(i) for i in range(n)])

    asyncio.run(burst(300))
    rss0 = server.rss_kib()
    asyncio.run(burst(1500))
    rss1 = server.rss_kib()
    print(f"RSS {rss0} KiB -> {rss1} KiB over 1500 requests")
    assert rss1 - rss0 < 24 * 1024, f"RSS grew {rss1 - rss0} KiB over 1500 requests"


def test_no_prefix_cache_same_answers(peregrine_bin, model_path, client):
    system = "You are terse. " * 80
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": "Hi!"}]
    cached = [client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0)
              for _ in range(2)]
    s = start_server(peregrine_bin, model_path, *threads_arg(), "--parallel", "2", "-c", "1024", "--no-prefix-cache")
    try:
        c = openai.OpenAI(base_url=s.base_url + "/v1", api_key="none", max_retries=0, timeout=120)
        plain = c.chat.completions.create(model=MODEL, messages=msgs, max_tokens=10, temperature=0)
        assert plain.usage.prompt_tokens_details.cached_tokens == 0
    finally:
        assert s.stop() == 0
    assert cached[1].usage.prompt_tokens_details.cached_tokens > 0
    assert all(x.choices[0].message.content == plain.choices[0].message.content for x in cached)


def test_kv_exhaustion_preempts_and_outputs_stay_correct(peregrine_bin, model_path):
    # 32 blocks of 16 = one 512-position context for 4 sequences that each want ~330.
    s = start_server(peregrine_bin, model_path, *threads_arg(), "--parallel", "4", "-c", "512",
                     "--kv-blocks", "32", "--no-prefix-cache")
    try:
        c = openai.OpenAI(base_url=s.base_url + "/v1", api_key="none", max_retries=0, timeout=300)
        prompts = [f"Story number {i}: once upon a time" for i in range(4)]
        alone = [c.completions.create(model=MODEL, prompt=p, max_tokens=320, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].text for p in prompts]

        async def together():
            ac = openai.AsyncOpenAI(base_url=s.base_url + "/v1", api_key="none", max_retries=0, timeout=600)
            rs = await asyncio.gather(*[ac.completions.create(model=MODEL, prompt=p, max_tokens=320, temperature=0,
                                                              extra_body={"ignore_eos": True}) for p in prompts])
            return [r.choices[0].text for r in rs]

        assert asyncio.run(together()) == alone
        m = s.metrics()
        assert m["peregrine_preemptions_total"] > 0
        assert m["peregrine_kv_blocks_used"] == 0
    finally:
        assert s.stop() == 0


def test_sigterm_during_load_finishes_in_flight_and_exits_0(peregrine_bin, model_path):
    s = start_server(peregrine_bin, model_path, *threads_arg(), "--parallel", "4", "-c", "512", "--grace", "60")
    results = {}

    def client_thread(i):
        c = openai.OpenAI(base_url=s.base_url + "/v1", api_key="none", max_retries=0, timeout=120)
        try:
            chunks = list(c.completions.create(model=MODEL, prompt=f"Tale {i}:", max_tokens=60, temperature=0,
                                               stream=True, extra_body={"ignore_eos": True}))
            results[i] = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
        except Exception as e:  # noqa: BLE001
            results[i] = e

    threads = [threading.Thread(target=client_thread, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    s.proc.send_signal(signal.SIGTERM)
    # New requests are refused while in-flight ones finish.
    try:
        r = httpx.post(s.base_url + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 1}, timeout=10)
        assert r.status_code == 503
    except httpx.TransportError:
        pass  # already closed
    for t in threads:
        t.join(120)
    rc = s.proc.wait(timeout=90)
    assert rc == 0, s.stderr_tail()
    assert results and all(v == ["length"] for v in results.values()), results


def test_refuses_to_bind_a_used_port(cli, model_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    port = sock.getsockname()[1]
    try:
        r = cli("serve", "-m", model_path, "--port", str(port), "-t", "1", timeout=60)
    finally:
        sock.close()
    assert r.returncode != 0
    assert r.stderr.strip().splitlines()[-1].startswith("error: cannot bind")


def test_gemma_window_layers_match_the_cli(peregrine_bin, ok):
    """Gemma 3: window layers keep per-slot rings next to the paged global layers; a prompt past the
    512-position window, n = 2 (ring copy on fork) and a short prompt, all at once, answer as
    `peregrine run` does alone."""
    import os
    from pathlib import Path
    gemma = Path(os.environ.get("PEREGRINE_GEMMA_PATH",
                                Path.home() / ".cache/peregrine/models/gemma-3-270m-q4_k_m.gguf"))
    if not gemma.is_file():
        pytest.skip(f"{gemma} not present (run `peregrine pull gemma3-270m`)")
    long_text = Path("/usr/share/common-licenses/GPL-3").read_text()[:3000]
    prompts = ["Once upon a time", long_text + "\nIn short, this license", "The capital of Italy is"]
    alone = [ok("run", "-m", gemma, "-t", "2", "--temp", "0", "-n", "12", "-p", p).stdout.rstrip("\n")
             for p in prompts]
    s = start_server(peregrine_bin, gemma, *threads_arg(), "--parallel", "6", "-c", "2048", "-b", "256")
    try:
        async def together():
            ac = openai.AsyncOpenAI(base_url=s.base_url + "/v1", api_key="none", max_retries=0, timeout=300)
            rs = await asyncio.gather(*[ac.completions.create(model="gemma3-270m", prompt=p, max_tokens=12,
                                                              temperature=0, n=2) for p in prompts])
            return [[c.text for c in sorted(r.choices, key=lambda c: c.index)] for r in rs]

        got = asyncio.run(together())
        for p, want, texts in zip(prompts, alone, got):
            assert texts == [want, want], p[:40]
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("args, message", [
    (["--parallel", "256", "-c", "65536"], "KV cache would take"),
    (["--kv-block-size", "24"], "multiple of 16"),
    (["--kv-blocks", "4", "-c", "1024"], "cannot hold one"),
    (["--parallel", "0"], "parallel"),
])
def test_bad_server_flags_are_one_line_errors(cli, model_path, args, message):
    r = cli("serve", "-m", model_path, "--port", "0", "-t", "1", *args, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr


def test_a_second_server_cannot_share_the_port(server, cli, model_path):
    r = cli("serve", "-m", model_path, "--port", str(server.port), "-t", "1", timeout=60)
    assert r.returncode != 0 and r.stderr.strip().splitlines()[-1].startswith("error: cannot bind")
