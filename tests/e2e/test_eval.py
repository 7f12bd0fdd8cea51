"""`peregrine eval` (what a model lost against its base) and `perplexity --llama-windows`, checked
against statistics recomputed here in numpy from `peregrine logits` of both models on the same
windows, cut here as llama-perplexity cuts them (tools/perplexity/perplexity.cpp): the text's
tokens (BOS first when the model adds BOS), windows of c tokens with BOS in the first slot, and
positions c/2 .. c-2 scored. The numpy side evaluates each window whole in one batch; eval runs the
first half without logits, so both the windowing and the arithmetic are checked independently.

The pair is the default SmolLM2 Q4_1 file against its F16 copy (bench/make_variants.py: the same
weights, dequantized), so the differences come from the Q4_1 matmul path alone (8-bit activations).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest

from gguf import GGUFReader

T = ("-t", "2")  # the suite shares a small machine: every model command runs on 2 threads
GPL3 = Path("/usr/share/common-licenses/GPL-3")
GEMMA = Path(os.environ.get("PEREGRINE_GEMMA_PATH",
                            Path.home() / ".cache/peregrine/models/gemma-3-270m-q4_k_m.gguf"))
C, CHUNKS = 128, 3


@pytest.fixture(scope="module")
def text_file(tmp_path_factory) -> Path:
    if not GPL3.is_file():
        pytest.skip(f"{GPL3} not present")
    p = tmp_path_factory.mktemp("eval") / "gpl3-head.txt"
    p.write_bytes(GPL3.read_bytes()[:4000])  # ~800 tokens: 6 windows of 128
    return p


def bos_policy(path: Path) -> tuple[bool, int]:
    """(add_bos, bos id) as gguf-py reads them from the file."""
    f = GGUFReader(path).fields
    add = bool(f["tokenizer.ggml.add_bos_token"].contents()) if "tokenizer.ggml.add_bos_token" in f else False
    return add, int(f["tokenizer.ggml.bos_token_id"].contents())


def llama_windows(text_ids: list[int], c: int, chunks: int, add_bos: bool, bos: int) -> list[list[int]]:
    """llama-perplexity's windows: tokens = [BOS] + text; window w = tokens[w*c:(w+1)*c], slot 0 = BOS."""
    tokens = ([bos] if add_bos else []) + text_ids
    n = min(len(tokens) // c, chunks)
    assert n == chunks, f"the text has {len(tokens)} tokens, fewer than {chunks} windows of {c}"
    wins = []
    for w in range(n):
        win = tokens[w * c:(w + 1) * c]
        if add_bos:
            win[0] = bos
        wins.append(win)
    return wins


@pytest.fixture(scope="module")
def logits_of(ok, tmp_path_factory):
    out = tmp_path_factory.mktemp("evlogits") / "logits.f32"

    def run(model: Path, ids: list[int]) -> np.ndarray:
        ok("logits", "-m", model, *T, "--tokens", ",".join(map(str, ids)), "-o", out)
        a = np.fromfile(out, dtype=np.float32)
        out.unlink()
        return a.reshape(len(ids), a.size // len(ids)).astype(np.float64)
    return run


def log_softmax(l: np.ndarray) -> np.ndarray:
    m = l.max(axis=1, keepdims=True)
    return l - m - np.log(np.exp(l - m).sum(axis=1, keepdims=True))


def reference_stats(logits_of, model: Path, base: Path, wins: list[list[int]]) -> dict:
    """The statistics eval reports, from raw logits, in float64."""
    nll_m, nll_b, kld, same, dp = [], [], [], [], []
    for win in wins:
        c = len(win)
        rows = np.arange(c // 2, c - 1)
        target = np.array(win)[rows + 1]
        lb = log_softmax(logits_of(base, win)[rows])
        lm = log_softmax(logits_of(model, win)[rows])
        nb, nm = -lb[np.arange(len(rows)), target], -lm[np.arange(len(rows)), target]
        nll_b += list(nb)
        nll_m += list(nm)
        kld += list((np.exp(lb) * (lb - lm)).sum(axis=1))
        same += list(lb.argmax(axis=1) == lm.argmax(axis=1))
        dp += list(np.exp(-nm) - np.exp(-nb))
    nll_m, nll_b, kld, dp = map(np.array, (nll_m, nll_b, kld, dp))
    n = len(kld)
    return {
        "scored_tokens": n,
        "ppl_model": math.exp(nll_m.mean()), "ppl_base": math.exp(nll_b.mean()),
        "ppl_model_err": math.exp(nll_m.mean()) * nll_m.std() / math.sqrt(n - 1),
        "ln_ppl_ratio": nll_m.mean() - nll_b.mean(),
        "kld_mean": kld.mean(), "kld_mean_err": kld.std() / math.sqrt(n - 1), "kld_max": kld.max(),
        "kld_p99_9": np.percentile(kld, 99.9), "kld_p99": np.percentile(kld, 99),
        "kld_p90": np.percentile(kld, 90), "kld_median": np.median(kld),
        "n_same_top": int(np.sum(same)),
        "dp_mean": dp.mean(), "dp_abs_mean": np.abs(dp).mean(), "dp_rms": math.sqrt((dp * dp).mean()),
    }


def eval_json(ok, model: Path, base: Path, text: Path, c: int, chunks: int, describe) -> dict:
    r = ok("eval", "-m", model, "--base", base, "-f", text, *T, "-c", c, "--chunks", chunks, "--json")
    try:
        return json.loads(r.stdout)
    except json.JSONDecodeError:
        pytest.fail("eval --json did not print one JSON object" + describe(r))


def test_eval_matches_numpy_from_logits(ok, model_path, f16_model_path, text_file, tokenize, logits_of, describe):
    got = eval_json(ok, model_path, f16_model_path, text_file, C, CHUNKS, describe)
    add_bos, bos = bos_policy(model_path)
    wins = llama_windows(tokenize(text_file.read_text(), "--no-special"), C, CHUNKS, add_bos, bos)
    ref = reference_stats(logits_of, model_path, f16_model_path, wins)

    assert (got["n_ctx"], got["windows"]) == (C, CHUNKS)
    assert got["scored_tokens"] == ref["scored_tokens"] == CHUNKS * (C - 1 - C // 2)
    for k in ("ppl_model", "ppl_base", "ppl_model_err", "kld_mean", "kld_mean_err", "kld_max", "kld_p99_9",
              "kld_p99", "kld_p90", "kld_median", "dp_rms", "dp_abs_mean"):
        assert got[k] == pytest.approx(ref[k], rel=1e-4), f"{k}: eval {got[k]}, numpy {ref[k]}"
    # Differences of nearly equal numbers: compared on the scale of the numbers they come from.
    assert got["ln_ppl_ratio"] == pytest.approx(ref["ln_ppl_ratio"], abs=1e-5)
    assert got["dp_mean"] == pytest.approx(ref["dp_mean"], abs=1e-6)
    # An argmax can flip only on a near tie between two tokens: allow one.
    n_same = round(got["top1_agreement"] * got["scored_tokens"])
    assert abs(n_same - ref["n_same_top"]) <= 1, f"top-1 agreement: eval {n_same}, numpy {ref['n_same_top']}"
    # Sanity: the Q4_1 path loses little against its own dequantized weights, but not nothing.
    assert 0 < got["kld_mean"] < 0.1 and got["top1_agreement"] > 0.8
    assert got["kld_median"] <= got["kld_p90"] <= got["kld_p99"] <= got["kld_p99_9"] <= got["kld_max"]


def test_eval_model_against_itself(ok, model_path, text_file, describe):
    r = ok("eval", "-m", model_path, "--base", model_path, "-f", text_file, *T, "-c", 64, "--chunks", 2, "--json")
    j = json.loads(r.stdout)
    assert j["scored_tokens"] == 2 * 31
    for k in ("kld_mean", "kld_max", "kld_p99", "kld_median", "ln_ppl_ratio", "dp_mean", "dp_abs_mean", "dp_rms"):
        assert j[k] == 0, f"{k} = {j[k]} for a model against itself" + describe(r)
    assert j["top1_agreement"] == 1 and j["ppl_model"] == j["ppl_base"] > 1, describe(r)

    # The table carries the same numbers.
    t = ok("eval", "-m", model_path, "--base", model_path, "-f", text_file, *T, "-c", 64, "--chunks", 2)
    m = re.search(r"^PPL\(base\)\s+([0-9.]+) ± ", t.stdout, re.M)
    assert m and float(m.group(1)) == pytest.approx(j["ppl_base"], abs=1e-6), describe(t)
    assert re.search(r"^KLD mean\s+0\.000000 ± ", t.stdout, re.M), describe(t)
    assert re.search(r"^top-1 agreement\s+100\.000 %", t.stdout, re.M), describe(t)


def test_perplexity_llama_windows_is_evals_base_ppl(ok, model_path, f16_model_path, text_file, describe):
    got = eval_json(ok, model_path, f16_model_path, text_file, C, CHUNKS, describe)
    for path, key in ((f16_model_path, "ppl_base"), (model_path, "ppl_model")):
        r = ok("perplexity", "--llama-windows", "-m", path, *T, "-f", text_file, "-c", C, "--chunks", CHUNKS)
        lines = r.stdout.strip().splitlines()
        m = re.fullmatch(r"PPL = ([0-9.]+)", lines[-1])
        assert m and len(lines) == CHUNKS + 1, describe(r)
        assert float(m.group(1)) == pytest.approx(got[key], rel=1e-5), describe(r)
        assert re.search(r"estimate: PPL = [0-9.]+ \+/- [0-9.]+", r.stderr), describe(r)


def test_llama_windows_put_bos_first(ok, text_file, logits_of, describe):
    """Gemma adds BOS: every window's first slot is BOS (the text's own token there is dropped)."""
    if not GEMMA.is_file():
        pytest.skip(f"Gemma not found at {GEMMA} (set PEREGRINE_GEMMA_PATH)")
    add_bos, bos = bos_policy(GEMMA)
    assert add_bos
    c, chunks = 32, 2
    r = ok("tokenize", "-m", GEMMA, "-p", text_file.read_text(), "--no-special")
    wins = llama_windows([int(x) for x in r.stdout.split()], c, chunks, add_bos, bos)
    assert wins[1][0] == bos
    nll = []
    for win in wins:
        l = log_softmax(logits_of(GEMMA, win))
        nll += [-l[i, win[i + 1]] for i in range(c // 2, c - 1)]
    ref = math.exp(float(np.mean(nll)))
    r = ok("perplexity", "--llama-windows", "-m", GEMMA, *T, "-f", text_file, "-c", c, "--chunks", chunks)
    ppl = float(re.fullmatch(r"PPL = ([0-9.]+)", r.stdout.strip().splitlines()[-1]).group(1))
    assert ppl == pytest.approx(ref, rel=1e-4), describe(r)


# --- bad input ------------------------------------------------------------------------------

def assert_one_error(r, describe, *contains: str):
    assert 0 < r.returncode < 128, describe(r)
    lines = r.stderr.splitlines()
    assert lines and lines[-1].startswith("error: "), describe(r)
    assert sum(l.startswith("error:") for l in lines) == 1, describe(r)
    for c in contains:
        assert c in lines[-1], f"the error should mention {c!r}" + describe(r)


def test_eval_refuses_a_different_vocabulary(cli, model_path, text_file, describe):
    if not GEMMA.is_file():
        pytest.skip(f"Gemma not found at {GEMMA} (set PEREGRINE_GEMMA_PATH)")
    r = cli("eval", "-m", GEMMA, "--base", model_path, "-f", text_file, *T, "-c", 64, "--chunks", 1)
    assert_one_error(r, describe, "tokenizer", str(GEMMA), str(model_path))
    assert r.stdout == "", describe(r)


def test_eval_bad_input(cli, model_path, tmp_path, describe):
    short = tmp_path / "short.txt"
    short.write_text("Too short for a window.")
    missing = tmp_path / "missing.txt"
    base = ("--base", model_path)
    cases = [
        ((*base, "-c", 64, "-f", missing), (str(missing), "cannot open")),
        ((*base, "-c", 64, "-f", tmp_path), (str(tmp_path),)),  # a folder
        ((*base, "-c", 64, "-f", short), (str(short), "fewer than one window")),
        ((*base, "-c", 3, "-f", short), ("-c", "4")),
        (("--base", tmp_path / "nope.gguf", "-c", 64, "-f", short), ("nope.gguf",)),
    ]
    for args, contains in cases:
        r = cli("eval", "-m", model_path, *T, *args)
        assert_one_error(r, describe, *contains)
        assert r.stdout == "", describe(r)
    r = cli("perplexity", "--llama-windows", "-m", model_path, *T, "-f", short, "-c", 64)
    assert_one_error(r, describe, str(short), "fewer than one window")
    r = cli("perplexity", "--llama-windows", "--stream", "-m", model_path, *T, "-f", short)
    assert_one_error(r, describe, "--stream")
