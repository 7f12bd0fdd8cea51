"""`peregrine logits` / `peregrine perplexity` versus the independent numpy forward pass.

Token ids come from an HF `tokenizers` BPE built from the GGUF vocabulary (gguf_hf_tokenizer.py),
not from the engine, so a tokenizer bug cannot cancel out a forward-pass bug.

Tolerances. The engine quantizes activations to 8-bit blocks for its integer dot products (and
may keep K/V in f16); the reference does not. Simulating just that in the reference (Q8_0 on every
matmul input, f16 K/V) moves the logits of these prompts by up to 1.9 (logits span about -35..45),
gives mean KL(ref || q8) <= 6e-3 and max 3.4e-2 per position, and moves the GPL-3 perplexity by
0.3%. Measured on the engine (first version): max |diff| 3.18 (chat prompt, at the <|im_end|>
position, on a token with logit -4.4 -- the simulation moves the same logit the same way by 1.8),
mean KL <= 5.8e-3, max KL 4.5e-2, perplexity -0.05%.
Real bugs, made on purpose in the reference (`LlamaRef.with_ablation`), are far outside: on the
5-token prompt the wrong RoPE pairing changes logits by 6.4 and KL by up to 0.88; skipping RoPE,
the causal mask or the final norm, or a wrong GQA head mapping, by 12 to 3800 and KL 0.95 to 14.
`test_tolerances_catch_known_bugs` keeps that claim checked. The limits:
  - max |logit difference| <= 15% of the largest |reference logit| of that prompt (3.3 to 6.6 here);
  - KL(ref || engine) <= 0.02 averaged over positions and <= 0.15 at any position;
  - argmax equal at every position, except where the reference's own top two are within
    TIE_GAP = 0.5 of each other (then either is accepted: 8-bit noise moves single logits by
    up to ~3, and the engine has flipped near ties of 0.05 to 0.15; a bug big enough to flip a
    wider gap would break the KL limits anyway);
  - perplexity within 0.5%.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from gguf_hf_tokenizer import build_tokenizer, encode
from llama_ref import ABLATIONS, LlamaRef, rope_adjacent, rope_via_hf_layout, hf_rows_to_gguf, rope_rotate_half

MAX_ABS_REL = 0.15
KL_MEAN_MAX = 0.02
KL_POS_MAX = 0.15
TIE_GAP = 0.5
PPL_REL_TOL = 0.005
GPL3 = Path("/usr/share/common-licenses/GPL-3")
PPL_CTX, PPL_WINDOWS = 512, 4

CHAT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
)
PROMPTS = {
    "france": "The capital of France is",  # 5 tokens
    "chat": CHAT,  # 37 tokens, control tokens <|im_start|>/<|im_end|>
    "code": "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "print(fibonacci(10))  # 55\n",  # 51 tokens: indentation runs, digits split one by one
    "prose": "In July 1969, Neil Armstrong and Buzz Aldrin became the first people to walk on the Moon, while "
    "Michael Collins stayed in orbit aboard the command module Columbia. The mission, Apollo 11, returned "
    "safely to Earth eight days after launch.",  # 53 tokens
}


@pytest.fixture(scope="module")
def ref(model_reader) -> LlamaRef:
    return LlamaRef.load(model_reader)  # ~10 s: dequantizes every weight once for the module


@pytest.fixture(scope="module")
def tok(model_reader):
    return build_tokenizer(model_reader)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def compare_logits(got: np.ndarray, want: np.ndarray, tie_gap: float = TIE_GAP) -> tuple[list[str], dict]:
    """Problems found comparing logits [n_tok, n_vocab], and the measured figures."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    problems = []
    if not np.all(np.isfinite(got64)):
        return [f"{np.count_nonzero(~np.isfinite(got64))} non-finite logits"], {}
    diff = np.abs(got64 - want64)
    limit = MAX_ABS_REL * np.abs(want64).max()
    lp, lq = _log_softmax(want64), _log_softmax(got64)
    kl = (np.exp(lp) * (lp - lq)).sum(axis=-1)  # [n_tok]
    figures = {"max_abs": diff.max(), "limit": limit, "kl_mean": kl.mean(), "kl_max": kl.max()}
    if diff.max() > limit:
        p, v = np.unravel_index(diff.argmax(), diff.shape)
        problems.append(f"max |diff| {diff.max():.3f} > {limit:.3f} at position {p}, token {v}")
    if kl.mean() > KL_MEAN_MAX:
        problems.append(f"mean KL {kl.mean():.3g} > {KL_MEAN_MAX}")
    if kl.max() > KL_POS_MAX:
        problems.append(f"KL {kl.max():.3g} > {KL_POS_MAX} at position {kl.argmax()}")
    g_arg, w_arg = got64.argmax(axis=-1), want64.argmax(axis=-1)
    figures["tie_gaps"] = []
    for p in np.flatnonzero(g_arg != w_arg):
        gap = want64[p, w_arg[p]] - want64[p, g_arg[p]]
        figures["tie_gaps"].append(round(float(gap), 4))
        if gap > tie_gap:
            problems.append(f"position {p}: engine argmax {g_arg[p]}, reference {w_arg[p]} (reference gap {gap:.3f})")
    figures["argmax_agree"] = float(np.mean(g_arg == w_arg))
    return problems, figures


def engine_logits(run_peregrine, model_path, ids, out_path, n_vocab, *extra) -> np.ndarray:
    """Run `peregrine logits`; return its [n_tok, n_vocab] float32 output."""
    run_peregrine("logits", "-m", model_path, "--tokens", ",".join(map(str, ids)), "-o", out_path, *extra)
    raw = np.fromfile(out_path, dtype="<f4")
    assert raw.size == len(ids) * n_vocab, f"engine wrote {raw.size} floats, expected {len(ids)} x {n_vocab}"
    return raw.reshape(len(ids), n_vocab)


# ---- the reference checks itself -------------------------------------------------------------------


def test_gguf_rope_equals_hf_rope():
    """Adjacent-pair RoPE on converter-permuted rows == HF rotate_half on HF rows, then permuted."""
    rng = np.random.default_rng(0)
    d, pos = 64, np.arange(7) * 13
    x_hf = rng.standard_normal((7, 3, d))  # [n_tok, n_head, head_dim] in HF row order
    # llama.cpp's converter: w.reshape(n_head, 2, d//2, n_in).swapaxes(1, 2), applied per head
    want = hf_rows_to_gguf(rope_rotate_half(x_hf, pos, d, 100000.0), d)
    got = rope_adjacent(hf_rows_to_gguf(x_hf, d), pos, d, 100000.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rope_via_hf_layout(hf_rows_to_gguf(x_hf, d), pos, 100000.0), want, atol=1e-12)
    # and the two formulations are not trivially the same thing
    assert np.abs(rope_rotate_half(x_hf, pos, d, 1e5) - rope_adjacent(x_hf, pos, d, 1e5)).max() > 0.1


def test_reference_says_paris(ref, tok):
    ids = encode(tok, "The capital of France is")
    assert tok.decode([int(ref.logits(ids)[-1].argmax())]) == " Paris"


def test_reference_prefix_consistent(ref, tok):
    """Causality: the logits of a prefix do not depend on the tokens after it."""
    ids = encode(tok, PROMPTS["code"])
    full, prefix = ref.logits(ids), ref.logits(ids[:9])
    np.testing.assert_allclose(full[:9], prefix, rtol=0, atol=1e-3)


def test_tolerances_catch_known_bugs(ref, tok):
    """Each deliberate bug in the reference must fail compare_logits (else the limits are too loose)."""
    ids = encode(tok, PROMPTS["france"])  # the shortest prompt is the hardest case for RoPE bugs
    want = ref.logits(ids)
    assert compare_logits(want, want)[0] == []
    for bug in sorted(ABLATIONS):
        problems, figures = compare_logits(ref.with_ablation(bug).logits(ids), want)
        assert problems, f"ablation {bug!r} passes the logit comparison: {figures}"


# ---- engine versus reference ----------------------------------------------------------------------


@pytest.mark.parametrize("name", PROMPTS)
def test_logits_match_reference(ref, tok, run_peregrine, model_path, tmp_path, name):
    ids = encode(tok, PROMPTS[name])
    assert 5 <= len(ids) <= 60
    got = engine_logits(run_peregrine, model_path, ids, tmp_path / "logits.f32", ref.hp.n_vocab)
    problems, figures = compare_logits(got, ref.logits(ids))
    print(f"{name}: {len(ids)} tokens, " + ", ".join(f"{k} {v:.4g}" if np.isscalar(v) else f"{k} {v}" for k, v in figures.items()))
    assert not problems, f"{name} ({len(ids)} tokens):\n  " + "\n  ".join(problems[:10])


@pytest.mark.parametrize("flags", [("-t", "1"), ("-t", "3"), ("-b", "7"), ("--kv-type", "f32")],
                         ids=["t1", "t3", "b7", "kv_f32"])
def test_logits_engine_options(ref, tok, run_peregrine, model_path, tmp_path, flags):
    """Thread count, prompt chunking (-b 7: the prompt runs as 6 batches through the
    KV cache) and the f32 KV cache (the default is f16)."""
    ids = encode(tok, PROMPTS["chat"])
    got = engine_logits(run_peregrine, model_path, ids, tmp_path / "logits.f32", ref.hp.n_vocab, *flags)
    problems, figures = compare_logits(got, ref.logits(ids))
    assert not problems, f"{' '.join(flags)}:\n  " + "\n  ".join(problems[:10])


def test_logits_single_token(ref, run_peregrine, model_path, tmp_path):
    ids = [1]  # <|im_start|>
    got = engine_logits(run_peregrine, model_path, ids, tmp_path / "logits.f32", ref.hp.n_vocab)
    problems, figures = compare_logits(got, ref.logits(ids))
    assert not problems, "\n".join(problems)


# ---- perplexity -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ppl_text(tok) -> tuple[str, list[int]]:
    """A prefix of GPL-3 holding PPL_WINDOWS full windows plus half a window of tail (dropped)."""
    if not GPL3.is_file():
        pytest.skip(f"{GPL3} not present")
    text = GPL3.read_text(encoding="utf-8")
    enc = tok.encode(text, add_special_tokens=False)
    cut = enc.offsets[PPL_WINDOWS * PPL_CTX + PPL_CTX // 2][0]
    text = text[:cut]
    ids = encode(tok, text)
    assert PPL_WINDOWS * PPL_CTX <= len(ids) < (PPL_WINDOWS + 1) * PPL_CTX
    return text, ids


def test_perplexity_matches_reference(ref, ppl_text, run_peregrine, model_path, tmp_path):
    text, ids = ppl_text
    nll = [ref.window_nll(ids[w * PPL_CTX : (w + 1) * PPL_CTX]) for w in range(PPL_WINDOWS)]
    want = float(np.exp(np.concatenate(nll).mean()))
    print(f"reference PPL {want:.4f}; per window " + ", ".join(f"{np.exp(n.mean()):.3f}" for n in nll))

    path = tmp_path / "gpl3-prefix.txt"
    path.write_bytes(text.encode("utf-8"))
    r = run_peregrine("perplexity", "-m", model_path, "-f", path, "-c", PPL_CTX, timeout=600)
    lines = r.stdout.strip().splitlines()
    m = re.fullmatch(r"PPL = ([0-9.eE+-]+)", lines[-1].strip()) if lines else None
    assert m, f"last stdout line should be 'PPL = <value>', stdout ends with: {lines[-3:]!r}"
    got = float(m.group(1))
    print(f"engine PPL {got:.4f} (relative difference {got / want - 1:+.4%})")
    assert abs(got / want - 1) <= PPL_REL_TOL, f"engine PPL {got:.4f} vs reference {want:.4f}"


# ---- a stream past -c: attention sinks + window ----------------------------------------------------

# 400 tokens through -c 64 with 4 sinks and a window of 60, in batches of 16: the window ring wraps
# about five times, batches straddle the wrap, and from position 64 on every query sees re-rotated
# sinks. The reference computes the same span directly (llama_ref.py, with_span).
STREAM = {"tokens": 400, "sinks": 4, "window": 60, "batch": 16, "ctx": 64}
# Perplexity of 399 scored tokens moves with the 8-bit and f16 rounding more than over the 2048 of
# the dense windows: the engine's stream PPL lies 0.9% below to 0.9% above the reference across
# -b 1/16/64 and f16/f32 K/V (measured), while the logits agree within the dense limits. The
# logits comparison is the tight check; the PPL must be within 2%.
STREAM_PPL_REL_TOL = 0.02


def test_stream_matches_reference(ref, ppl_text, run_peregrine, model_path, tmp_path):
    """Sinks + window past -c: `peregrine logits` with the span against the numpy reference under
    the same limits as the dense prompts; `perplexity --stream` equal to the PPL of those logits
    (the same batches) and within STREAM_PPL_REL_TOL of the reference's. The wrong spans --
    sinks left at their text positions (max KL 0.39), a plain window of the same 64 positions,
    dense attention -- fail the logits limits, checked here on the reference itself."""
    text, ids = ppl_text
    ids = ids[: STREAM["tokens"]]
    S, W = STREAM["sinks"], STREAM["window"]
    want = ref.with_span(S, W).logits(ids)
    for name, wrong in {"sinks not re-rotated": ref.with_span(S, W, shift_sinks=False),
                        "window only": ref.with_span(0, S + W), "dense": ref}.items():
        problems, figures = compare_logits(wrong.logits(ids), want)
        assert problems, f"the reference with {name} passes the logit comparison: {figures}"

    span = ("-t", "2", "-b", STREAM["batch"], "-c", STREAM["ctx"], "--attn-sinks", S, "--attn-window", W)
    got = engine_logits(run_peregrine, model_path, ids, tmp_path / "logits.f32", ref.hp.n_vocab, *span)
    # Position 278 of this stream is a near tie of 0.555 in the reference, and the engine's
    # choice there flips with the ISA and the batch size (measured: AVX-512 -b 16 and scalar
    # -b 32 pick the other token; the kernels agree with each other within 8e-6 per output, the
    # 8-bit activations amplify that to single logits moving by up to 4 here).
    problems, figures = compare_logits(got, want, tie_gap=0.6)
    print("stream logits: " + ", ".join(f"{k} {v:.4g}" if np.isscalar(v) else f"{k} {v}" for k, v in figures.items()))
    assert not problems, "stream with sinks + window:\n  " + "\n  ".join(problems[:10])

    def ppl(logits):
        lp = _log_softmax(logits[:-1])
        return float(np.exp(-lp[np.arange(len(ids) - 1), ids[1:]].mean()))

    path = tmp_path / "gpl3-prefix.txt"
    path.write_bytes(text.encode("utf-8"))
    # The engine scores tokens 1..N of the stream (no BOS for this model): N = len(ids) - 1.
    r = run_peregrine("perplexity", "-m", model_path, "-f", path, "--stream", "--max-tokens",
                      len(ids) - 1, *span, timeout=600)
    assert f"[{len(ids) - 1} tokens]" in r.stdout, r.stdout
    m = re.fullmatch(r"PPL = ([0-9.eE+-]+)", r.stdout.strip().splitlines()[-1].strip())
    assert m, r.stdout
    stream, own, reference = float(m.group(1)), ppl(got), ppl(want)
    print(f"stream PPL {stream:.4f}, from its logits {own:.4f}, reference {reference:.4f} "
          f"({stream / reference - 1:+.3%})")
    assert abs(stream / own - 1) < 1e-4, f"perplexity --stream {stream:.4f} but its logits give {own:.4f}"
    assert abs(stream / reference - 1) <= STREAM_PPL_REL_TOL, f"stream PPL {stream:.4f} vs reference {reference:.4f}"
