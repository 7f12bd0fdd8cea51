"""`peregrine logits` on Gemma 3 (gemma-3-270m) versus the independent numpy forward pass (gemma3_ref.py).

Token ids come from the `sentencepiece` library, fed a model built from the GGUF vocabulary
(gguf_spm_model.py, shown identical to the engine's tokenizer by test_tokenizer_spm.py), not from
the engine, so a tokenizer bug cannot cancel out a forward-pass bug and the reference checks run
without the binary. Every sequence starts with <bos> (tokenizer.ggml.add_bos_token is true).

The long sequence is the first LONG_N = 700 tokens of GPL-3: from position W = 512 (the sliding
window) on, the local layers must stop seeing the oldest tokens; dropping the window moves those
positions' logits by up to 24 (mean KL 1.2), and the engine's default batch (512) splits the
prompt across the boundary. An off-by-one window (W + 1 keys) is invisible in logits (mean KL
2e-5, below the engine's noise): test_sliding_window_boundary pins it in the reference, and the
engine needs its own masked-attention unit test for it.

Tolerances. The engine rounds matmul inputs to 8-bit blocks and keeps K/V in float16; the
reference does not. Simulating just that in the reference (Gemma3Ref.with_engine_numerics) gives,
on these prompts and the long sequence: max |logit diff| 1.2 to 4.1 (3-8% of the largest
|logit|), mean KL(ref || sim) 0.004 to 0.009 per sequence, 0.14 at worst at one position, argmax
flips only where the reference's top two are within 0.43, and +0.55% perplexity on the long
sequence. The limits:
  - max |logit difference| <= MAX_ABS_REL (20%) of the largest |reference logit| of the sequence;
  - KL(ref || engine) <= KL_MEAN_MAX = 0.03 averaged over positions, <= KL_POS_MAX = 0.3 at any;
  - argmax equal at every position, except where the reference's own top two are within
    TIE_GAP = 0.75 (a bug big enough to flip a wider gap breaks the KL limits anyway).
Measured on the engine (first gemma3 version): max |diff| 0.24 to 2.8, mean KL <= 0.0037 per
sequence (long sequence 0.0024, 0.0021 past W, against 2.0 for the reference without the window),
max KL 0.044 at a position, argmax flips only at gaps <= 0.45.
Real bugs, made on purpose in the reference (Gemma3Ref.with_ablation), are far outside; on the
54-token code prompt: RoPE base 1e6 on the local layers mean KL 0.29 (max |diff| 16.5), llama's
adjacent RoPE pairing KL 2.3, norm weights +1 a second time 13, no q/k norm 7.5, no embedding
scale 10, no post-norms 350. test_tolerances_catch_known_bugs keeps that checked. Two harmless
variants stay far inside (KL ~1e-6): sqrt(640) rounded to bfloat16 (25.25, what an HF bf16 run
uses) and the erf GELU instead of the tanh one.

Environment: PEREGRINE_GEMMA_PATH (default ~/.cache/peregrine/models/gemma-3-270m-q4_k_m.gguf),
PEREGRINE_BIN. Without the model everything is skipped; while the engine lacks gemma3
(`unsupported architecture`) the engine comparisons are skipped and the reference checks run.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gemma3_ref import Gemma3Ref, rope_neox
from gguf_spm_model import SPACE, build_processor

MAX_ABS_REL = 0.20
KL_MEAN_MAX = 0.03
KL_POS_MAX = 0.3
TIE_GAP = 0.75
GPL3 = Path("/usr/share/common-licenses/GPL-3")
LONG_N = 700  # tokens of GPL-3 (with <bos>): 188 positions past the 512-token window
CHUNK = 100  # positions per logits block when comparing (a block of logits is 105 MB)
BUGS = ("local_rope_global_base", "rope_adjacent", "norm_plus_one", "no_qk_norm", "no_embed_scale", "no_post_norms")
HARMLESS = ("embed_scale_bf16", "gelu_erf")  # within noise: either choice is correct

CHAT = "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
PROMPTS = {
    "bos": "",  # <bos> alone: one position
    "france": "The capital of France is",  # 6 tokens with <bos>
    "chat": CHAT,  # 16 tokens: Gemma's turn markers are control tokens
    "code": "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n\n"
    "print(fibonacci(10))  # 55\n",  # indentation runs, digits
    "prose": "In July 1969, Neil Armstrong and Buzz Aldrin became the first people to walk on the Moon, while "
    "Michael Collins stayed in orbit aboard the command module Columbia. The mission, Apollo 11, returned "
    "safely to Earth eight days after launch.",
}


# ---- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ref(gemma_reader) -> Gemma3Ref:
    return Gemma3Ref.load(gemma_reader)  # ~3-6 s: dequantizes every weight once per process


@pytest.fixture(scope="module")
def encode(gemma_reader):
    sp = build_processor(gemma_reader, control_as_user_defined=True)
    bos = int(gemma_reader.fields["tokenizer.ggml.bos_token_id"].contents())

    def enc(text: str) -> list[int]:
        return [bos] + sp.encode(text)

    enc.piece = lambda i: sp.id_to_piece(int(i)).replace(SPACE, " ")
    enc.decode = sp.decode
    return enc


@pytest.fixture(scope="module")
def long_ids(encode) -> list[int]:
    if not GPL3.is_file():
        pytest.skip(f"{GPL3} not present")
    ids = encode(GPL3.read_text(encoding="utf-8"))[:LONG_N]
    assert len(ids) == LONG_N
    return ids


@pytest.fixture(scope="module")
def long_hidden(ref, long_ids) -> np.ndarray:
    """Final normed hidden states of the long sequence [LONG_N, n_embd], computed once (~5 s)."""
    return ref.hidden(long_ids)


@pytest.fixture(scope="module")
def long_logits(ref, long_hidden) -> np.ndarray:
    """Reference logits of the long sequence [LONG_N, n_vocab] float32 (734 MB), computed once."""
    return ref.head(long_hidden)


@pytest.fixture(scope="module")
def long_hidden_no_window(ref, long_ids) -> np.ndarray:
    return ref.with_ablation("no_sliding_window").hidden(long_ids)


@pytest.fixture(scope="module")
def engine(peregrine_bin, gemma_path, ref):
    """engine(ids, out_path, *flags) -> logits [n_tok, n_vocab] (a read-only memmap of the file)."""
    probe = subprocess.run([str(peregrine_bin), "logits", "-m", str(gemma_path), "--tokens", "2,3", "-o", "/dev/null"],
                           capture_output=True, text=True, timeout=300)
    if probe.returncode != 0:
        if "unsupported architecture" in probe.stderr:
            pytest.skip(f"the engine does not run gemma3 yet: {probe.stderr.strip()[-300:]}")
        pytest.fail(f"peregrine logits on {gemma_path} exited {probe.returncode}:\n{probe.stderr[-4000:]}")

    def run(ids, out_path: Path, *flags) -> np.ndarray:
        cmd = [str(peregrine_bin), "logits", "-m", str(gemma_path), "--tokens", ",".join(map(str, ids)),
               "-o", str(out_path), *map(str, flags)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.fail(f"{' '.join(cmd[:4])} ... exited {r.returncode}\nstderr:\n{r.stderr[-4000:]}")
        n_floats = out_path.stat().st_size // 4
        n_want = len(ids) * ref.hp.n_vocab
        assert n_floats == n_want, f"engine wrote {n_floats} floats, expected {len(ids)} x {ref.hp.n_vocab}"
        return np.memmap(out_path, dtype="<f4", mode="r", shape=(len(ids), ref.hp.n_vocab))

    return run


# ---- comparison -------------------------------------------------------------------------------------


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(x))) over the last axis, float64 [n]; the exponentials in float32 (~1e-7 relative)."""
    m = x.max(axis=-1, keepdims=True)
    return m[:, 0].astype(np.float64) + np.log(np.exp(x - m).sum(axis=-1, dtype=np.float64))


class Stats:
    """Differences between two logit matrices [n_tok, n_vocab], accumulated block by block."""

    def __init__(self):
        self.max_abs, self.max_ref, self.kl, self.flips, self.where = 0.0, 0.0, [], [], None

    def add(self, got: np.ndarray, want: np.ndarray, first_pos: int) -> None:
        got, want = np.asarray(got, dtype=np.float32), np.asarray(want, dtype=np.float32)
        if not np.all(np.isfinite(got)):
            raise AssertionError(f"{np.count_nonzero(~np.isfinite(got))} non-finite logits from position {first_pos}")
        d = got - want  # [n, n_vocab]
        ad = np.abs(d)
        if ad.max() > self.max_abs:
            p, v = np.unravel_index(ad.argmax(), ad.shape)
            self.max_abs, self.where = float(ad.max()), (first_pos + int(p), int(v))
        self.max_ref = max(self.max_ref, float(np.abs(want).max()))
        # KL(p_want || p_got) = sum p (log p - log q) = lse(got) - lse(want) - sum p (got - want)
        lse_w, lse_g = _logsumexp(want), _logsumexp(got)
        p_w = np.exp(want - lse_w[:, None].astype(np.float32))
        self.kl.append(np.maximum(lse_g - lse_w - (p_w * d).sum(axis=-1, dtype=np.float64), 0.0))
        g_arg, w_arg = got.argmax(axis=-1), want.argmax(axis=-1)
        for p in np.flatnonzero(g_arg != w_arg):
            gap = float(want[p, w_arg[p]]) - float(want[p, g_arg[p]])
            self.flips.append((first_pos + int(p), int(g_arg[p]), int(w_arg[p]), gap))

    @property
    def kl_all(self) -> np.ndarray:
        return np.concatenate(self.kl)

    def problems(self) -> list[str]:
        out, kl = [], self.kl_all
        limit = MAX_ABS_REL * self.max_ref
        if self.max_abs > limit:
            out.append(f"max |diff| {self.max_abs:.3f} > {limit:.3f} at (position, token) {self.where}")
        if kl.mean() > KL_MEAN_MAX:
            out.append(f"mean KL {kl.mean():.3g} > {KL_MEAN_MAX}")
        if kl.max() > KL_POS_MAX:
            out.append(f"KL {kl.max():.3g} > {KL_POS_MAX} at position {int(kl.argmax())}")
        for p, g, w, gap in self.flips:
            if gap > TIE_GAP:
                out.append(f"position {p}: engine argmax {g}, reference {w} (reference gap {gap:.3f})")
        return out

    def summary(self) -> str:
        kl = self.kl_all
        return (f"max_abs {self.max_abs:.3f} (limit {MAX_ABS_REL * self.max_ref:.2f}), kl_mean {kl.mean():.4g}, "
                f"kl_max {kl.max():.4g}, argmax agree {1 - len(self.flips) / kl.size:.4f}, "
                f"flip gaps {[round(f[3], 3) for f in self.flips]}")


def compare(got_of, want_of, positions) -> Stats:
    """got_of(idx), want_of(idx) -> logits [len(idx), n_vocab] at those positions (block by block)."""
    idx = np.asarray(positions)
    st = Stats()
    for s in range(0, idx.size, CHUNK):
        sel = idx[s : s + CHUNK]
        st.add(got_of(sel), want_of(sel), int(sel[0]))
    return st


# ---- the reference checks itself -------------------------------------------------------------------


def test_hparams_of_gemma3_270m(ref):
    hp = ref.hp
    assert (hp.n_layer, hp.n_embd, hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_ff) == (18, 640, 4, 1, 256, 2048)
    assert [i for i, loc in enumerate(hp.is_local) if not loc] == [5, 11, 17]  # 5 local, then 1 global
    assert (hp.rope_base_local, hp.rope_base_global, hp.sliding_window) == (10000.0, 1e6, 512)
    assert hp.attn_scale == 1 / 16  # query_pre_attn_scalar = head_dim = 256
    assert hp.attn_softcap == 0 and hp.final_softcap == 0


def test_norm_weights_already_hold_plus_one(gemma_reader):
    """llama.cpp's converter stores Gemma's (1 + w): w is bfloat16 in the checkpoint, so every
    stored value minus 1 is exact in bfloat16, while the stored values themselves often are not."""

    def bf16_exact(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32).view(np.uint32) & 0xFFFF) == 0

    norms = [t for t in gemma_reader.tensors if t.name.endswith("norm.weight")]
    assert len(norms) == 6 * 18 + 1
    x = np.concatenate([np.asarray(t.data, dtype=np.float32) for t in norms])
    assert bf16_exact(x - np.float32(1)).all()
    assert bf16_exact(x).mean() < 0.9  # 0.75 on gemma-3-270m


def test_rope_neox_is_complex_rotation():
    """rotate_half RoPE == multiplying z_j = x_j + i x_{j+D/2} by exp(i pos base^(-2j/D)); scores
    then depend on the position difference only."""
    rng = np.random.default_rng(0)
    d, base, pos = 16, 10000.0, np.array([0, 3, 511, 512, 700])
    x = rng.standard_normal((pos.size, 2, d))
    z = x[..., : d // 2] + 1j * x[..., d // 2 :]
    z = z * np.exp(1j * pos[:, None, None] * base ** (-np.arange(0, d, 2) / d))
    np.testing.assert_allclose(rope_neox(x, pos, base), np.concatenate([z.real, z.imag], -1), atol=1e-12)
    q, k = rng.standard_normal((1, 1, d)), rng.standard_normal((1, 1, d))
    s = [float((rope_neox(q, np.array([p + 7]), base) * rope_neox(k, np.array([p]), base)).sum())
         for p in (0, 100, 900)]
    np.testing.assert_allclose(s, s[0], rtol=1e-10)


def test_sliding_window_boundary(ref):
    """A local layer's query at position p sees exactly keys p-W+1 .. p (HF: kv_idx > q_idx - W)."""
    n, W = 12, 4
    tiny = replace(ref, hp=replace(ref.hp, n_head=1, n_head_kv=1, head_dim_v=n, sliding_window=W))
    q = k = np.zeros((n, 1, 8))  # equal scores: each query averages the values it can see
    v = np.eye(n)[:, None, :]  # value of key j = one-hot j
    pos = np.arange(n)
    seen = tiny.attention(q, k, v, pos, local=True) > 0  # [query, key]
    assert all(list(np.flatnonzero(seen[p])) == list(range(max(0, p - W + 1), p + 1)) for p in range(n))
    seen = tiny.attention(q, k, v, pos, local=False) > 0
    assert all(list(np.flatnonzero(seen[p])) == list(range(p + 1)) for p in range(n))


def test_reference_knows_paris(ref, encode):
    """gemma-3-270m (Q4_K_M) is a small base model: after "The capital of France is" it prefers
    " the" (p 0.19) and " a" over " Paris" (p 0.08, third); it completes the less open prompts."""
    def top(text: str, k: int) -> list[str]:
        ids = encode(text)
        return [encode.piece(t) for t in np.argsort(-ref.logits(ids, positions=[len(ids) - 1])[0])[:k]]

    assert top("The capital of France is the city of", 1) == [" Paris"]
    assert top("Paris is the capital of", 1) == [" France"]
    assert " Paris" in top("The capital of France is", 3)
    ids = encode("The capital of France is")
    for _ in range(8):
        ids.append(int(ref.logits(ids, positions=[len(ids) - 1])[0].argmax()))
    print("greedy continuation:", repr(encode.decode(ids[6:])))


def test_reference_prefix_consistent(ref, encode):
    """Causality: the logits of a prefix do not depend on the tokens after it."""
    ids = encode(PROMPTS["code"])
    np.testing.assert_allclose(ref.logits(ids, positions=range(9)), ref.logits(ids[:9]), rtol=0, atol=1e-3)


def test_reference_perplexity(long_ids, long_logits):
    """The reference predicts real text well: perplexity of GPL-3's first LONG_N tokens (14.3;
    a RoPE base of 1e6 on the local layers gives 53 on the first 400, llama's RoPE pairing 240)."""
    lg, targets = long_logits[:-1], np.asarray(long_ids[1:])  # position p predicts token p + 1
    nll = np.concatenate([_logsumexp(lg[s : s + CHUNK]) - lg[s : s + CHUNK][np.arange(len(t)), t]
                          for s in range(0, LONG_N - 1, CHUNK) if len(t := targets[s : s + CHUNK])])
    ppl = math.exp(nll.mean())
    print(f"reference perplexity over {nll.size} tokens of GPL-3: {ppl:.3f} "
          f"(first 511: {math.exp(nll[:511].mean()):.3f}, past the window: {math.exp(nll[511:].mean()):.3f})")
    assert ppl < 20


def test_sliding_window_matters(ref, long_hidden, long_logits, long_hidden_no_window):
    """Without the window the long sequence's logits move (from position W on only): the long test
    exercises the window."""
    W = ref.hp.sliding_window
    np.testing.assert_allclose(long_hidden_no_window[:W], long_hidden[:W], rtol=0, atol=1e-4)
    st = compare(lambda sel: ref.head(long_hidden_no_window[sel]), lambda sel: long_logits[sel], np.arange(W, LONG_N))
    print("no window vs reference, positions >= W:", st.summary())
    assert st.kl_all.mean() > 3 * KL_MEAN_MAX and st.problems()


def test_tolerances_catch_known_bugs(ref, encode):
    """Each deliberate bug must fail the limits, and the engine's own rounding (simulated) and the
    harmless variants must pass them (else the limits are too loose or too tight)."""
    ids = encode(PROMPTS["code"])  # 54 tokens: long enough for the local layers' RoPE base to matter
    want = ref.logits(ids)

    def stats(model: Gemma3Ref) -> Stats:
        got = model.logits(ids)
        return compare(lambda sel: got[sel], lambda sel: want[sel], np.arange(len(ids)))

    st = stats(ref.with_engine_numerics())
    print("engine-like numerics:", st.summary())
    assert not st.problems(), st.problems()
    for bug in BUGS:
        st = stats(ref.with_ablation(bug))
        print(f"{bug}: {st.summary()[:100]}")
        assert st.problems(), f"ablation {bug!r} passes the logit comparison: {st.summary()}"
    short = encode(PROMPTS["france"])
    for variant in HARMLESS:
        got, want_s = ref.with_ablation(variant).logits(short), ref.logits(short)
        st = compare(lambda sel: got[sel], lambda sel: want_s[sel], np.arange(len(short)))
        assert st.kl_all.max() < 1e-3 and not st.problems(), f"{variant}: {st.summary()}"


# ---- engine versus reference ----------------------------------------------------------------------


@pytest.mark.parametrize("name", PROMPTS)
def test_logits_match_reference(ref, encode, engine, tmp_path, name):
    ids = encode(PROMPTS[name])
    got = engine(ids, tmp_path / "logits.f32")
    st = compare(lambda sel: got[sel], lambda sel: ref.logits(ids, positions=sel), np.arange(len(ids)))
    print(f"{name}: {len(ids)} tokens, {st.summary()}")
    assert not (p := st.problems()), f"{name} ({len(ids)} tokens):\n  " + "\n  ".join(p[:10])


@pytest.mark.parametrize("flags", [(), ("-b", "97")], ids=["b512", "b97"])
def test_logits_long_sequence(ref, long_ids, long_logits, long_hidden_no_window, engine, tmp_path, flags):
    """700 tokens: positions from W = 512 on need the window; -b 97 splits the prompt into 8
    batches (the engine keeps a local layer's K/V in a ring of W + n_batch - 1 slots, which then
    wraps several times)."""
    got = engine(long_ids, tmp_path / "logits.f32", *flags)
    st = compare(lambda sel: got[sel], lambda sel: long_logits[sel], np.arange(LONG_N))
    W = ref.hp.sliding_window
    kl = st.kl_all
    print(f"long ({LONG_N} tokens, {' '.join(flags) or 'default batch'}): {st.summary()}; "
          f"kl_mean before W {kl[:W].mean():.4g}, past W {kl[W:].mean():.4g}")
    assert not (p := st.problems()), "\n  ".join(p[:10])
    # and past W the engine is much nearer the windowed model than the unwindowed one
    st_nw = compare(lambda sel: got[sel], lambda sel: ref.head(long_hidden_no_window[sel]), np.arange(W, LONG_N))
    print(f"engine vs the unwindowed reference past W: kl_mean {st_nw.kl_all.mean():.4g}")
    assert kl[W:].mean() < 0.25 * st_nw.kl_all.mean()
