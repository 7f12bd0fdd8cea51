"""One generation loop: `peregrine run` and `peregrine serve` give the same text for every
sampling option, on both models.

The CLI drives a Session (one sequence, contiguous KV cache) and the server a Scheduler (paged
KV, continuous batching); both hand their logits to the same per-sequence state (sampler, stop
strings, penalties, end of generation). Before that state existed the CLI ignored presence and
frequency penalties and had no stop strings, so these comparisons failed; each case below states
options that change the text (checked: the case differs from plain greedy), so a path that
dropped one of them would not match the other.
"""

from __future__ import annotations

import os
from pathlib import Path

import openai
import pytest

from serve_fixture import start_server, threads_arg

GEMMA = Path(os.environ.get("PEREGRINE_GEMMA_PATH",
                            Path.home() / ".cache/peregrine/models/gemma-3-270m-q4_k_m.gguf"))

PROMPT = "Here is a list of fruits and their colors: apple is red, banana is"

# (name, CLI flags, API fields). Every case fixes all sampling fields on both sides, since the
# CLI's defaults (temp 0.8, top-k 40, top-p 0.95, min-p 0.05) are not the API's.
BASE_CLI = ["--temp", "0", "--top-k", "0", "--top-p", "1", "--min-p", "0", "--repeat-penalty", "1"]
CASES = [
    ("greedy", [], {}),
    ("presence", ["--presence-penalty", "1.5"], {"presence_penalty": 1.5}),
    ("frequency", ["--frequency-penalty", "1.2"], {"frequency_penalty": 1.2}),
    ("repeat", ["--repeat-penalty", "1.3", "--repeat-last-n", "32"], {"repeat_penalty": 1.3, "repeat_last_n": 32}),
    ("seeded", ["--temp", "0.9", "--seed", "1234"], {"temperature": 0.9, "seed": 1234}),
    ("seeded-other", ["--temp", "0.9", "--seed", "99"], {"temperature": 0.9, "seed": 99}),
    ("top-k", ["--temp", "1.2", "--top-k", "5", "--seed", "7"], {"temperature": 1.2, "top_k": 5, "seed": 7}),
    ("top-p", ["--temp", "1.1", "--top-p", "0.8", "--seed", "8"], {"temperature": 1.1, "top_p": 0.8, "seed": 8}),
    ("min-p", ["--temp", "1.3", "--min-p", "0.1", "--seed", "9"], {"temperature": 1.3, "min_p": 0.1, "seed": 9}),
    ("all", ["--temp", "0.7", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.02", "--presence-penalty", "0.5",
             "--frequency-penalty", "0.3", "--seed", "5"],
     {"temperature": 0.7, "top_k": 20, "top_p": 0.9, "min_p": 0.02, "presence_penalty": 0.5,
      "frequency_penalty": 0.3, "seed": 5}),
]
N = 40


def cli_text(ok, model, flags, n=N, stop=None):
    merged = dict(zip(BASE_CLI[::2], BASE_CLI[1::2]))
    merged.update(zip(flags[::2], flags[1::2]))  # a case's value replaces the base one
    args = ["run", "-m", str(model), *threads_arg(), "-n", str(n), "-p", PROMPT]
    for k, v in merged.items():
        args += [k, v]
    for s in stop or []:
        args += ["--stop", s]
    return ok(*args).stdout[:-1]  # run ends the text with one newline


def api_text(target, fields, n=N, stop=None):
    model, client = target
    body = {"temperature": 0, "top_p": 1, **fields}
    extra = {k: body.pop(k) for k in ("top_k", "min_p", "repeat_penalty", "repeat_last_n") if k in body}
    r = client.completions.create(model=str(model), prompt=PROMPT, max_tokens=n, stop=stop, extra_body=extra, **body)
    return r.choices[0].text, r.choices[0].finish_reason


def server_for(peregrine_bin, model):
    return start_server(peregrine_bin, model, *threads_arg(), "--parallel", "2", "-c", "512")


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def target(request, peregrine_bin, model_path):
    model = model_path if request.param == "smollm2" else GEMMA
    if not Path(model).is_file():
        pytest.skip(f"{model} not present")
    s = server_for(peregrine_bin, model)
    client = openai.OpenAI(base_url=s.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
    yield model, client
    assert s.stop() == 0, s.stderr_tail()


def test_every_sampling_option_gives_the_same_text(target, ok):
    model, client = target
    greedy = None
    for name, flags, fields in CASES:
        want = cli_text(ok, model, flags)
        got, _ = api_text(target, fields)
        assert got == want, f"{name}: server {got!r} != run {want!r}"
        if name == "greedy":
            greedy = want
        elif name != "seeded-other":
            # The option must matter here, or the comparison proves nothing about it.
            assert want != greedy, f"{name}: the option did not change the text; pick stronger settings"


def test_stop_strings_and_length(target, ok):
    model, client = target
    full = cli_text(ok, model, [])
    words = full.split()
    assert len(words) > 4, full
    stop = " " + words[3]
    want = cli_text(ok, model, [], stop=[stop])
    got, reason = api_text(target, {}, stop=[stop])
    assert got == want == full[:full.index(stop)]
    assert reason == "stop"
    short_cli = cli_text(ok, model, [], n=5)
    short_api, reason = api_text(target, {}, n=5)
    assert short_api == short_cli and reason == "length"
