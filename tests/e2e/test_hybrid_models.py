"""Recurrent (state-space) and hybrid models through the CLI and the server, end to end.

The models are the synthetic files of tests/reference (random weights, SmolLM2's first 1024
tokens): `mamba2` (four Mamba-2 blocks: only recurrent state, no K/V), `nemotron_h_moe` (Mamba-2,
MoE, Mamba-2, attention, MoE, Mamba-2: state and K/V) and the attention + MoE `qwen3moe`. Written
here in a few seconds; every run takes a fraction of a second.

A recurrent state can only go forward. What must hold anyway:
  - speculative decoding (n-gram, layer skip, a draft model, recurrent or not) gives the text
    greedy decoding gives without it, byte for byte: the state is checkpointed before a step
    with drafts, and after a rejection it goes back there and the verified tokens are fed again;
  - a second chat turn (the cache rewound to the common prefix) gives the same replies;
  - in the server, concurrent requests give what each gives alone (batch invariance), the
    choices of n > 1 fork the state, a preempted sequence restarts from a zeroed state, and the
    prefix cache stays off (a shared K/V block does not carry the state at its end) whatever the
    cache salt;
  - `info` reports the state's bytes per sequence.
Drafting counts are checked where the point is that drafts were rejected and cut back (else the
comparison proves nothing).

Environment: PEREGRINE_BIN, PEREGRINE_MODEL_PATH (SmolLM2: the tokenizer the files take).
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import openai
import pytest

from serve_fixture import start_server, threads_arg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reference"))

T = threads_arg()
GREEDY = ("--temp", "0")
SPEC_LINE = re.compile(r"\| spec (\S+): (\d+) drafted, (\d+) accepted")
# A ChatML template, so `chat` runs (the synthetic files carry none).
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# Prompts on which each model's greedy text repeats itself in part: n-gram drafts get both
# accepted and rejected.
PROMPT = {"mamba2": "one two three one two three one two", "nemotron_h_moe": "ab ab ab ab ab ab"}


@pytest.fixture(scope="module")
def models(tmp_path_factory, model_path) -> dict:
    import synthetic_models
    import synthetic_ssm

    d = tmp_path_factory.mktemp("hybrid")
    plain_tokenizer = synthetic_ssm.add_tokenizer

    def with_template(gw, tok):
        plain_tokenizer(gw, tok)
        gw.add_chat_template(TEMPLATE)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic_ssm, "add_tokenizer", with_template)
        mp.setattr(synthetic_models, "add_tokenizer", with_template)
        out = {name: synthetic_ssm.write_model(name, d / f"{name}.gguf") for name in ("mamba2", "nemotron_h_moe")}
        out["mamba2_q8"] = synthetic_ssm.write_model("mamba2", d / "mamba2_q8.gguf", wtype="Q8_0")
        out["qwen3moe"] = synthetic_models.write_model("qwen3moe", d / "qwen3moe.gguf")
    return out


@pytest.fixture(scope="module")
def memo(ok):
    cache: dict = {}

    def run(*args, input: str | None = None):
        key = (tuple(map(str, args)), input)
        if key not in cache:
            cache[key] = ok(*args, input=input)
        return cache[key]

    return run


def resolve(spec: tuple, models: dict) -> list[str]:
    return [str(models[a]) if a in models else a for a in spec]


def spec_counts(r) -> tuple[int, int]:
    m = SPEC_LINE.search(r.stderr)
    assert m, "no '| spec NAME: ...' in the timing line\n" + r.stderr
    return int(m[2]), int(m[3])


def assert_same(base, r, describe):
    assert r.stdout == base.stdout, "speculation changed the text" + describe(r)


# ---- the CLI: speculative decoding ----------------------------------------------------------------

NGRAM = ("--spec", "ngram", "--draft-max", "4", "--draft-policy", "fixed")
# (model, spec, what the counts must show): "rejected" some drafts accepted and some rejected
# (the state went back to its checkpoint); "all" every draft accepted; "drafted" drafts verified.
CLI_SPECS = [
    ("mamba2", NGRAM, "rejected"),
    ("mamba2", ("--spec", "ngram"), "drafted"),
    ("mamba2", ("--spec", "layerskip", "--draft-max", "3", "--draft-policy", "fixed"), "rejected"),
    ("mamba2", ("--spec", "layerskip", "--draft-layers", "1", "--draft-max", "5", "--draft-policy", "fixed"),
     "rejected"),
    ("mamba2", ("--spec", "draft", "-md", "mamba2", "--draft-max", "8", "--draft-policy", "fixed"), "all"),
    ("mamba2_q8", NGRAM, "rejected"),
    ("mamba2_q8", ("--spec", "draft", "-md", "mamba2", "--draft-max", "4", "--draft-policy", "fixed"), "rejected"),
    ("nemotron_h_moe", NGRAM, "rejected"),
    ("nemotron_h_moe", ("--spec", "layerskip", "--draft-max", "3", "--draft-policy", "fixed"), "rejected"),
    ("nemotron_h_moe", ("--spec", "layerskip", "--draft-layers", "4", "--draft-max", "2", "--draft-policy", "fixed"),
     "drafted"),
    ("nemotron_h_moe", ("--spec", "draft", "-md", "nemotron_h_moe", "--draft-max", "4", "--draft-policy", "fixed"),
     "all"),
    # A recurrent draft model for a hybrid target (same vocabulary, other weights).
    ("nemotron_h_moe", ("--spec", "draft", "-md", "mamba2", "--draft-max", "3", "--draft-policy", "fixed"),
     "drafted"),
]


@pytest.mark.parametrize("model,spec,want", CLI_SPECS,
                         ids=[f"{m}-{' '.join(s[1:])}" for m, s, _ in CLI_SPECS])
def test_greedy_text_is_identical_with_drafts(models, memo, ok, describe, model, spec, want):
    prompt = PROMPT[model.removesuffix("_q8")]
    args = ("run", "-m", models[model], *T, *GREEDY, "-n", "64", "-p", prompt)
    base = memo(*args)
    r = ok(*args, *resolve(spec, models))
    assert_same(base, r, describe)
    drafted, accepted = spec_counts(r)
    assert drafted > 0, "nothing was drafted: the comparison proves nothing" + describe(r)
    if want == "rejected":
        assert 0 < accepted < drafted, "expected drafts both accepted and rejected" + describe(r)
    if want == "all":
        assert accepted >= drafted - 8, describe(r)


@pytest.mark.parametrize("model", ["mamba2", "nemotron_h_moe"])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_max_tokens_inside_a_draft(models, memo, ok, describe, model, n):
    args = ("run", "-m", models[model], *T, *GREEDY, "-n", str(n), "-p", PROMPT[model])
    r = ok(*args, "--spec", "draft", "-md", models[model], "--draft-max", "8", "--draft-policy", "fixed")
    assert_same(memo(*args), r, describe)
    assert f"generation: {n} tokens" in r.stderr, describe(r)


def test_context_limit_with_drafts(models, memo, ok, describe):
    # nemotron_h_moe has an attention layer: the context bounds it (mamba2 alone has no limit).
    args = ("run", "-m", models["nemotron_h_moe"], *T, *GREEDY, "-c", "24", "-p", PROMPT["nemotron_h_moe"])
    base = memo(*args)
    assert "stopped at the context limit" in base.stderr, describe(base)
    r = ok(*args, "--spec", "layerskip", "--draft-max", "4", "--draft-policy", "fixed")
    assert_same(base, r, describe)
    assert "stopped at the context limit" in r.stderr, describe(r)


TURNS = "one two three one two three\nab ab ab ab ab\nmore of the same\n/reset\nhello hello hello\n"
CHAT_SPECS = [NGRAM, ("--spec", "layerskip", "--draft-max", "3", "--draft-policy", "fixed"),
              ("--spec", "draft", "-md", "mamba2", "--draft-max", "4", "--draft-policy", "fixed")]


@pytest.mark.parametrize("model", ["mamba2", "nemotron_h_moe"])
@pytest.mark.parametrize("spec", CHAT_SPECS, ids=["ngram", "layerskip", "draft"])
def test_chat_turns_reuse_the_state(models, memo, ok, describe, model, spec):
    """Later turns keep the earlier turns' state (rewound to the common prefix, which may restore
    a checkpoint): the same replies with drafts as without."""
    args = ("chat", "-m", models[model], *T, *GREEDY, "-n", "40")
    base = memo(*args, input=TURNS)
    assert base.stdout.count("\n") >= 4, describe(base)
    assert_same(base, ok(*args, *resolve(spec, models), input=TURNS), describe)


def test_seeded_sampling_with_ngram_drafts_is_identical(models, memo, ok, describe):
    args = ("run", "-m", models["mamba2"], *T, "--temp", "0.7", "--seed", "5", "-n", "64", "-p", PROMPT["mamba2"])
    r = ok(*args, *NGRAM)
    assert_same(memo(*args), r, describe)
    assert spec_counts(r)[0] > 0, describe(r)


def test_bench_and_perplexity_start_over_from_an_empty_state(models, ok, tmp_path):
    """Both evaluate from position 0 again after a Session::reset(), which empties the state."""
    r = ok("bench", "-m", models["nemotron_h_moe"], *T, "-p", "16", "-n", "8", "-r", "2", "--spec", "ngram")
    assert "pp16" in r.stdout and "tg8" in r.stdout and "sg8" in r.stdout, r.stdout
    text = tmp_path / "text.txt"
    text.write_text(" ".join(["the quick brown fox jumps over the lazy dog"] * 30))
    r = ok("perplexity", "-m", models["mamba2"], *T, "-f", text, "-c", "64")
    assert "PPL = " in r.stdout and "[2]" in r.stdout, r.stdout


def test_bench_reports_the_expert_bytes_a_token_reads(models, ok):
    """A decode step reads exactly its n_used experts per MoE layer: the bytes bench reports equal
    n_used / n_expert of every expert stack, counted from the file with gguf-py (F32: unpacked rows)."""
    import gguf
    import json
    r = ok("bench", "-m", models["qwen3moe"], *T, "-p", "0", "-n", "4", "-r", "1", "--json")
    got = json.loads(r.stdout)["tg"]["moe_bytes_per_token"]
    rd = gguf.GGUFReader(str(models["qwen3moe"]))
    n_expert = int(rd.fields["qwen3moe.expert_count"].contents())
    n_used = int(rd.fields["qwen3moe.expert_used_count"].contents())
    stacks = sum(int(t.n_bytes) for t in rd.tensors if t.name.endswith("_exps.weight"))
    routers = sum(int(t.n_bytes) for t in rd.tensors if t.name.endswith("ffn_gate_inp.weight"))
    assert got["experts"] == stacks * n_used / n_expert, (got, stacks, n_used, n_expert)
    assert got["router_and_shared"] == routers, (got, routers)


# ---- info ---------------------------------------------------------------------------------------

def test_info_reports_the_state_per_sequence(models, ok):
    out = ok("info", models["mamba2"]).stdout
    assert re.search(r"kv cache: +no K/V \(no attention layers\) \+ 548\.00 KiB of recurrent state per sequence",
                     out), out
    assert "layers:      4 x Mamba-2 (137.00 KiB state)" in out, out
    out = ok("info", models["nemotron_h_moe"]).stdout
    # One attention layer of 2 KV heads x 64 (f16, K and V): 512 bytes per token; three Mamba-2 layers.
    assert re.search(r"kv cache: +512\.00 B per token .*\+ 411\.00 KiB of recurrent state per sequence", out), out
    assert "1 x attention (8 heads, 2 KV, dim 64), 1 x MoE 128" in out, out
    out = ok("info", models["qwen3moe"]).stdout
    assert "recurrent state" not in out and "x attention (8 heads, 2 KV, dim 64) + MoE" in out, out


# ---- the server -----------------------------------------------------------------------------------

N = 24
SERVER_PROMPTS = ["one two three one two three one two", "ab ab ab ab ab ab", "hello world", "The cat sat",
                  "1 2 3 4 5 6"]


def complete(client, model, prompt, max_tokens=N, **kw):
    return client.completions.create(model=str(model), prompt=prompt, max_tokens=max_tokens,
                                     extra_body={"ignore_eos": True, "top_k": 0, "min_p": 0, "repeat_penalty": 1},
                                     **{"temperature": 0, "top_p": 1, **kw})


def together(server, model, prompts, max_tokens=N, **kw) -> list[str]:
    async def run():
        ac = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="x", max_retries=0, timeout=120)
        rs = await asyncio.gather(*[ac.completions.create(
            model=str(model), prompt=p, max_tokens=max_tokens, temperature=0, top_p=1,
            extra_body={"ignore_eos": True, "top_k": 0, "min_p": 0, "repeat_penalty": 1}, **kw) for p in prompts])
        return [r.choices[0].text for r in rs]
    return asyncio.run(run())


def cli_text(ok, model, prompt, n) -> str:
    """`run`'s greedy text, to compare with the server's (read as text: universal newlines turn
    a "\r" into "\n", so the server's text is compared in the same form, see same_text)."""
    return ok("run", "-m", model, *T, *GREEDY, "--ignore-eos", "-n", str(n), "-p", prompt).stdout[:-1]


def same_text(server_text: str) -> str:
    return server_text.replace("\r\n", "\n").replace("\r", "\n")


def blocks_return(server) -> bool:
    """The scheduler publishes its gauges after the step that ended the last request: wait for it."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        m = server.metrics()
        if m["peregrine_kv_blocks_used"] == 0 and m["peregrine_running_sequences"] == 0:
            return True
        time.sleep(0.05)
    return False


def serve(peregrine_bin, model, *extra, ctx: int = 256):
    s = start_server(peregrine_bin, model, *T, "--parallel", "4", "-c", str(ctx), *extra)
    return s, openai.OpenAI(base_url=s.base_url + "/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module", params=["mamba2", "nemotron_h_moe", "qwen3moe"])
def plain_server(request, peregrine_bin, models):
    model = models[request.param]
    s, client = serve(peregrine_bin, model, "--cache-scope", "user")
    yield request.param, model, s, client
    assert s.stop() == 0, s.stderr_tail()


def test_server_batch_invariance(plain_server, ok):
    _, model, server, client = plain_server
    alone = [complete(client, model, p).choices[0].text for p in SERVER_PROMPTS]
    assert len(set(alone)) == len(alone), alone
    assert together(server, model, SERVER_PROMPTS) == alone
    # The scheduler's text is the CLI's (a Session on a contiguous cache).
    assert cli_text(ok, model, SERVER_PROMPTS[0], N) == same_text(alone[0])


def test_server_choices_fork_the_state(plain_server):
    _, model, server, client = plain_server
    alone = complete(client, model, SERVER_PROMPTS[1]).choices[0].text
    assert [c.text for c in complete(client, model, SERVER_PROMPTS[1], n=3).choices] == [alone] * 3
    # Sampled: choice i draws with seed + i, each from the state forked after the prompt.
    sampled = complete(client, model, SERVER_PROMPTS[1], n=2, temperature=0.9, seed=11)
    one = [complete(client, model, SERVER_PROMPTS[1], temperature=0.9, seed=s).choices[0].text for s in (11, 12)]
    assert [c.text for c in sorted(sampled.choices, key=lambda c: c.index)] == one
    assert one[0] != one[1]


def test_server_prefix_cache_is_off_for_recurrent_state(plain_server):
    name, model, server, client = plain_server
    prompt = " ".join(f"word{i}" for i in range(60))  # several whole blocks of 16
    before = server.metrics()
    rs = [complete(client, model, prompt, max_tokens=8, user=u) for u in ("", "", "alice", "alice")]
    after = server.metrics()
    assert len({r.choices[0].text for r in rs}) == 1
    hits = after["peregrine_prefix_cache_hit_tokens_total"] - before["peregrine_prefix_cache_hit_tokens_total"]
    cached = [r.usage.prompt_tokens_details.cached_tokens for r in rs]
    if name == "qwen3moe":  # attention only: the prefix cache works as for any dense model
        assert hits > 0 and cached[1] > 0 and cached[2] == 0 and cached[3] > 0, cached  # salted by user
    else:
        assert hits == 0 and cached == [0, 0, 0, 0], cached
    assert blocks_return(server)


@pytest.mark.parametrize("model,spec", [
    ("mamba2", ("--spec", "ngram", "--draft-max", "4", "--draft-policy", "fixed")),
    ("nemotron_h_moe", ("--spec", "layerskip", "--draft-max", "3", "--draft-policy", "fixed")),
    ("nemotron_h_moe", ("--spec", "draft", "-md", "mamba2", "--draft-max", "3", "--draft-policy", "fixed")),
], ids=["mamba2-ngram", "nemotron-layerskip", "nemotron-draft-mamba2"])
def test_server_drafts_and_preemption_give_the_cli_text(peregrine_bin, models, ok, model, spec):
    """Drafts verified in continuous batching, with the pool too small for every sequence at once
    (4 x 64 positions in 8 blocks of 16, one 128-position context: sequences are preempted and
    recomputed from a zeroed state): each text is the CLI's without drafts."""
    s, client = serve(peregrine_bin, models[model], "--kv-blocks", "8", *resolve(spec, models), ctx=128)
    try:
        prompts = SERVER_PROMPTS[:4]
        got = together(s, models[model], prompts, max_tokens=56)
        assert [same_text(t) for t in got] == [cli_text(ok, models[model], p, 56) for p in prompts]
        m = s.metrics()
        assert m["peregrine_preemptions_total"] > 0
        assert m["peregrine_spec_draft_tokens_total"] > 0
        assert blocks_return(s)
    finally:
        assert s.stop() == 0, s.stderr_tail()
