"""Speculative decoding inside the server: drafts verified in continuous batching give the text
the CLI gives without speculation, token for token (greedy, and seeded sampling with n-gram
drafts, whose tokens are checked by matching), alone and with concurrent requests; /metrics and
the request log report drafting, and the n-gram history drafts from earlier outputs.

Every comparison is against `peregrine run` with no --spec (a Session, contiguous KV, no drafts),
so a verification or KV cut-back that went wrong anywhere in the server path shows as a
different text. The prompts copy from themselves, so n-gram drafts are long; the tests check
that drafts were verified and accepted, else they would prove nothing.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import subprocess
from pathlib import Path

import openai
import pytest

from serve_fixture import start_server, threads_arg

GEMMA = Path(os.environ.get("PEREGRINE_GEMMA_PATH",
                            Path.home() / ".cache/peregrine/models/gemma-3-270m-q4_k_m.gguf"))

PASSAGE = ("The committee met on Tuesday to review the budget. It approved funds for the new library, "
           "delayed the decision on the park renovation, and asked the city engineer to report on the "
           "bridge repairs by March.")
PROMPTS = [
    f"Copy this text exactly: {PASSAGE}\nCopy:",
    f"{PASSAGE}\nThe same text in the past tense:",
    "def add(a, b):\n    return a + b\n\ndef sub(a, b):\n    return a - b\n\ndef mul(a, b):\n",
    "Count from one to twenty in words: one, two, three,",
]
N = 48
SAMPLED = ["--temp", "0.9", "--top-k", "0", "--top-p", "1", "--min-p", "0", "--seed", "31"]
GREEDY = ["--temp", "0", "--top-k", "0", "--top-p", "1", "--min-p", "0"]


def cli_text(ok, model, prompt, flags):
    r = ok("run", "-m", str(model), *threads_arg(), "-n", str(N), "-p", prompt, "--repeat-penalty", "1", *flags)
    return r.stdout[:-1]  # run ends the text with one newline


def api_text(client, model, prompt, **fields):
    body = {"temperature": 0, "top_p": 1, **fields}
    r = client.completions.create(model=str(model), prompt=prompt, max_tokens=N,
                                  extra_body={"top_k": 0, "min_p": 0, "repeat_penalty": 1}, **body)
    return r.choices[0].text


def spec_server(peregrine_bin, model, *spec):
    s = start_server(peregrine_bin, model, *threads_arg(), "--parallel", "4", "-c", "1024", *spec)
    client = openai.OpenAI(base_url=s.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
    return s, client


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def ngram_server(request, peregrine_bin, model_path):
    model = model_path if request.param == "smollm2" else GEMMA
    if not Path(model).is_file():
        pytest.skip(f"{model} not present")
    s, client = spec_server(peregrine_bin, model, "--spec", "ngram", "--spec-history", "4096")
    yield model, s, client
    assert s.stop() == 0, s.stderr_tail()


def test_greedy_with_ngram_drafts_is_the_cli_text(ngram_server, ok):
    model, server, client = ngram_server
    before = server.metrics()
    for p in PROMPTS:
        assert api_text(client, model, p) == cli_text(ok, model, p, GREEDY), p
    after = server.metrics()
    drafted = after["peregrine_spec_draft_tokens_total"] - before["peregrine_spec_draft_tokens_total"]
    accepted = after["peregrine_spec_accepted_tokens_total"] - before["peregrine_spec_accepted_tokens_total"]
    assert drafted > 0 and accepted > 0, (drafted, accepted)
    assert 0.0 < after["peregrine_spec_acceptance_rate"] <= 1.0
    assert after["peregrine_spec_mean_accepted_length"] > 1.0
    # The request log carries each request's acceptance.
    assert any(re.search(r" spec \d+/\d+ accepted \(\d+%\)", l) for l in server.stderr_lines), server.stderr_tail()


def test_concurrent_requests_with_drafts_are_the_cli_text(ngram_server, ok):
    model, _, client = ngram_server
    want = [cli_text(ok, model, p, GREEDY) for p in PROMPTS]
    with cf.ThreadPoolExecutor(len(PROMPTS)) as ex:
        got = list(ex.map(lambda p: api_text(client, model, p), PROMPTS))
    assert got == want


def test_seeded_sampling_with_ngram_drafts_is_the_cli_text(ngram_server, ok):
    # A deterministic draft is verified by matching samples: the same tokens as without drafts.
    model, _, client = ngram_server
    for p in PROMPTS[:2]:
        got = api_text(client, model, p, temperature=0.9, seed=31)
        assert got == cli_text(ok, model, p, SAMPLED), p
        assert got != cli_text(ok, model, p, GREEDY)  # the sampling options matter


def test_ngram_history_drafts_from_earlier_outputs(ngram_server):
    model, server, client = ngram_server

    def chat():
        r = client.chat.completions.create(model=str(model), temperature=0, max_tokens=N,
                                           messages=[{"role": "user", "content": "Write a short poem about the sea."}])
        return r.choices[0].message.content

    first = chat()
    assert first
    before = server.metrics()
    assert before["peregrine_spec_history_tokens"] > 0
    assert chat() == first
    after = server.metrics()
    assert after["peregrine_spec_history_drafts_total"] > before["peregrine_spec_history_drafts_total"]


def test_draft_model_in_the_server_is_the_cli_text(peregrine_bin, model_path, ok):
    # The release file as its own draft: same vocabulary, every draft should be accepted.
    s, client = spec_server(peregrine_bin, model_path, "--spec", "draft", "-md", str(model_path), "--draft-max", "4")
    try:
        with cf.ThreadPoolExecutor(2) as ex:
            got = list(ex.map(lambda p: api_text(client, model_path, p), PROMPTS[:2] + PROMPTS[3:]))
        want = [cli_text(ok, model_path, p, GREEDY) for p in PROMPTS[:2] + PROMPTS[3:]]
        assert got == want
        m = s.metrics()
        assert m["peregrine_spec_draft_tokens_total"] > 0
        assert m["peregrine_spec_acceptance_rate"] > 0.9
    finally:
        assert s.stop() == 0, s.stderr_tail()


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_layer_skip_drafts_in_the_server_are_the_cli_text(peregrine_bin, model_path, ok, which):
    # The draft runs the target's first layers on the server's own paged blocks and window rings;
    # fixed-length drafts make sure drafting happens whatever its acceptance.
    model = model_path if which == "smollm2" else GEMMA
    if not Path(model).is_file():
        pytest.skip(f"{model} not present")
    s, client = spec_server(peregrine_bin, model, "--spec", "layerskip", "--draft-policy", "fixed", "--draft-max", "3")
    try:
        prompts = [PROMPTS[0], PROMPTS[3]]
        with cf.ThreadPoolExecutor(2) as ex:
            got = list(ex.map(lambda p: api_text(client, model, p), prompts))
        assert got == [cli_text(ok, model, p, GREEDY) for p in prompts]
        assert s.metrics()["peregrine_spec_draft_tokens_total"] > 0
    finally:
        assert s.stop() == 0, s.stderr_tail()


@pytest.mark.parametrize("args, message", [
    (["--spec", "layerskip", "--draft-layers", "400"], "--draft-layers 400 is out of range"),
    (["--spec", "draft"], "needs a draft model"),
    (["--spec", "ngram", "-md", "x.gguf"], "only used with --spec draft"),
    (["--spec", "ngram", "--draft-max", "0"], "--draft-max"),
    (["--spec", "ngram", "--spec-history", "-5"], "--spec-history"),
    (["--spec", "draft", "-md", "/nonexistent/draft.gguf"], "draft.gguf"),
])
def test_bad_speculation_flags_are_one_line_errors(cli, model_path, args, message):
    r = cli("serve", "-m", str(model_path), "--port", "0", *threads_arg(), *args, timeout=60)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr


def test_draft_with_another_vocabulary_is_refused(cli, model_path):
    if not GEMMA.is_file():
        pytest.skip(f"{GEMMA} not present")
    r = cli("serve", "-m", str(model_path), "--port", "0", *threads_arg(), "--spec", "draft", "-md", str(GEMMA),
            timeout=60)
    assert r.returncode != 0 and "vocabulary" in r.stderr and r.stderr.startswith("error:"), r.stderr
