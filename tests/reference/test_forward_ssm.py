"""mamba2, nemotron_h_moe (Mamba-2 / attention / MoE) and nemotron_h (Mamba-2 / attention / MLP) on synthetic
GGUF files: reference, llama.cpp, engine.

synthetic_ssm.py writes small random-weight models (n_embd 256, Mamba-2 mixer of 8 heads x 64 with
d_state 64 and 2 groups; nemotron_h_moe adds NoPE attention 8/2 heads and a 16-expert top-4 sigmoid
MoE with a shared expert) under the llama.cpp converter's names and keys, F32 and Q8_0, into a
temporary folder at test time (seeded). Three implementations run the same file on the same 48 tokens:

  - llama.cpp (the pinned llama-cpp-python 0.3.36 sdist) through llama_cpp_logits.cpp, unchanged:
    it loads recurrent and hybrid models as they are (one sequence, one batch, logits everywhere);
  - ssm_ref.py, a numpy forward pass written from the definitions (the Mamba-2 recurrence, with
    the chunked SSD form checked against it);
  - the engine, `peregrine logits` / `peregrine run`.

(a) reference vs llama.cpp must pass now, and each deliberate mistake (ssm_ref.ABLATIONS) must FAIL
    the same comparison, F32 and Q8_0 alike. The state-carry mistakes (state reset between forward
    calls) are run with the prompt split in calls of 7 tokens against llama.cpp's single call.
(b) engine vs llama.cpp, vs the reference, with the prompt in calls of 7 and of 1 token (the state
    must carry across forward calls), and greedy `peregrine run` vs llama.cpp's argmax continuation:
    gated on ENGINE_SUPPORTS below (skipped while False; PEREGRINE_SYNTHETIC_ALL=1 runs them anyway).
(c) bad files (a missing ssm_a, a conv kernel of the wrong size, heads that do not divide the inner
    size, per-layer arrays that contradict the tensors or the layer count): llama.cpp refuses each
    now; the engine must too, with one `error:` line naming the tensor or key (gated like (b)).

Q8_0 and the reference. ggml rounds every activation that enters a Q8_0 matmul to Q8_0 blocks (the
engine does the same, with f32 instead of f16 block scales). In nemotron_h_moe that noise moves the
router's selection scores by ~0.01-0.03, more than the gap between the 4th and the 5th expert at
some positions, so a reference with float activations can pick another expert there and the logits
jump (measured with weights' seed 0: KL 0.55 at one position). The Q8_0 comparisons of (a)
therefore use the reference with `act_q8` (the same Q8_0 rounding of those activations: numerics,
not architecture), and the weights' seed of nemotron_h_moe is one whose smallest top-4/top-5 score
gap over the test sequence is >= ROUTER_GAP_MIN in both files (a test checks it), so that the
engine, whose rounding differs from ggml's in the block scales' precision (that alone moves the
scores by up to ~5e-3), routes like llama.cpp. The plain float-activation reference is compared on
the Q8_0 files as well, with test_forward_synthetic's loose limits. An engine Q8_0 nemotron_h_moe
failure that starts at one position with a KL jump while F32 passes is a routing near-tie first.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from engine_logits import engine_flags, log_softmax
from engine_logits import engine_logits as _engine_logits

import synthetic_ssm as ss
from ssm_ref import ABLATIONS, SSMRef

# ---- the gates: flip to True when the engine supports the architecture ------------------------------
ENGINE_SUPPORTS = {"mamba2": True, "nemotron_h_moe": True, "nemotron_h": True}
RUN_ALL = os.environ.get("PEREGRINE_SYNTHETIC_ALL") == "1"

N_TOKENS = 48
WTYPES = ("F32", "Q8_0")
MODELS = list(ss.MODELS)
TOKENS = ss.sample_tokens(N_TOKENS)
CALLS_OF_7 = [7] * (N_TOKENS // 7) + ([N_TOKENS % 7] if N_TOKENS % 7 else [])
STATE_ABLATIONS = ("reset_state_between_calls", "no_conv_state_carry")  # only differ across calls


@dataclass(frozen=True)
class Limits:
    max_abs_rel: float  # max |diff| / max |expected logit|
    kl_mean: float
    kl_pos: float  # at every position
    tie_gap: float = 0.5  # argmax may differ only where the expected top two are this close


# Measured figures: mamba2 / nemotron_h_moe, 48 tokens, logits about -19..18 / -12..13.
# F32: float rounding only. Reference vs llama.cpp: max |diff| 1.3e-5 / 7.9e-6 (6.8e-7 / 6.2e-7 of
# max |logit|), KL <= 1.3e-11 / 3.1e-12, argmax equal everywhere.
F32 = Limits(1e-3, 1e-5, 1e-5)
# Q8_0, reference with act_q8 vs llama.cpp: the same roundings, until a float difference moves one
# activation across a rounding boundary; the recurrence carries that on. mamba2: equal to 1e-6 up to
# position 40, then max |diff| 0.205 (0.011 of max |logit|), mean KL 1.4e-4, max KL 1.6e-3;
# nemotron_h_moe: no such flip, max |diff| 1.1e-6, KL 7e-14.
Q8_ACT = Limits(0.05, 0.002, 0.01)
# Q8_0 engine (its own activation rounding, f16 K/V) and the float-activation reference: the limits
# of test_forward_synthetic.py. Measured, plain reference vs llama.cpp (mamba2 / nemotron_h_moe):
# 0.036 / 0.117 of max |logit|, mean KL 0.0061 / 0.0054, max KL 0.018 / 0.045, argmax 94% / 96%.
# A stand-in for the engine (act_q8 with f32 block scales) vs llama.cpp, nemotron_h_moe: 0.023 of
# max |logit|, mean KL 0.0020, max KL 0.0087, argmax 92% (near ties only).
Q8 = Limits(0.15, 0.02, 0.15)
# Every ablation, F32 and Q8_0, lands at mean KL >= 0.30 and >= 0.31 of max |logit| (the closest:
# bias_in_weights 0.31 / 0.39, mamba2 no_conv_bias 0.73 / 0.32, attn_rope 0.39 / 0.44).

# The smallest gap between the 4th and 5th expert's selection score (sigmoid + exp_probs_b) over the
# test sequence and both MoE layers, F32 file and Q8_0 file (act_q8). Random routers have gaps of
# 1e-5..1e-3 somewhere in these 96 decisions; synthetic_ssm's nemotron_h_moe seed was picked for
# this (measured: 3.2e-3 F32, 3.6e-3 Q8_0).
ROUTER_GAP_MIN = 2e-3


# ---- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ssm_dir(tmp_path_factory) -> Path:
    if not ss.SMOLLM2_GGUF.is_file():
        pytest.skip(f"SmolLM2 GGUF (tokenizer source) not found at {ss.SMOLLM2_GGUF}")
    return tmp_path_factory.mktemp("synthetic-ssm")


_files: dict = {}


@pytest.fixture(scope="session")
def model_file(ssm_dir):
    def get(name: str, wtype: str) -> Path:
        if (name, wtype) not in _files:
            _files[(name, wtype)] = ss.write_model(name, ssm_dir / f"{name}-{wtype}.gguf", wtype=wtype)
        return _files[(name, wtype)]

    return get


_llama_cpp: dict = {}


@pytest.fixture(scope="session")
def llama_cpp_logits(oracle, model_file):
    def get(name: str, wtype: str) -> np.ndarray:
        if (name, wtype) not in _llama_cpp:
            _llama_cpp[(name, wtype)] = oracle.llama_cpp_logits(model_file(name, wtype), TOKENS, threads=2)
        return _llama_cpp[(name, wtype)]

    return get


_refs: dict = {}


@pytest.fixture(scope="session")
def reference(model_file):
    """reference(name, wtype) -> SSMRef of the file; Q8_0 files get act_q8 (see the module docstring)."""

    def get(name: str, wtype: str) -> SSMRef:
        if (name, wtype) not in _refs:
            _refs[(name, wtype)] = SSMRef.load(model_file(name, wtype)).with_q8_activations(wtype == "Q8_0")
        return _refs[(name, wtype)]

    return get


_ref_logits: dict = {}


def ref_logits(reference, name: str, wtype: str) -> np.ndarray:
    if (name, wtype) not in _ref_logits:
        _ref_logits[(name, wtype)] = reference(name, wtype).logits(TOKENS)
    return _ref_logits[(name, wtype)]


def gate(name: str) -> None:
    if not (ENGINE_SUPPORTS[name] or RUN_ALL):
        pytest.skip(f"engine support not enabled: ENGINE_SUPPORTS[{name!r}] is False in {Path(__file__).name} "
                    f"(or set PEREGRINE_SYNTHETIC_ALL=1)")


# ---- comparison --------------------------------------------------------------------------------------


def compare(got: np.ndarray, want: np.ndarray, lim: Limits) -> tuple[list[str], dict]:
    """Problems comparing logits [n_tok, n_vocab] (empty: within LIM) and the measured figures."""
    if got.shape != want.shape:
        return [f"shape {got.shape} != {want.shape}"], {}
    g, w = got.astype(np.float64), want.astype(np.float64)
    if not np.all(np.isfinite(g)):
        return [f"{np.count_nonzero(~np.isfinite(g))} non-finite logits"], {}
    diff = np.abs(g - w)
    lw, lg = log_softmax(w), log_softmax(g)
    kl = (np.exp(lw) * (lw - lg)).sum(axis=-1)
    ga, wa = g.argmax(axis=-1), w.argmax(axis=-1)
    figures = {"max_abs": float(diff.max()), "max_abs_rel": float(diff.max() / np.abs(w).max()),
               "kl_mean": float(kl.mean()), "kl_max": float(kl.max()), "argmax_agree": float(np.mean(ga == wa))}
    problems = []
    if figures["max_abs_rel"] > lim.max_abs_rel:
        p, v = np.unravel_index(diff.argmax(), diff.shape)
        problems.append(f"max |diff| {diff.max():.4g} = {figures['max_abs_rel']:.3g} of max |logit| "
                        f"> {lim.max_abs_rel} (position {p}, token {v})")
    if kl.mean() > lim.kl_mean:
        problems.append(f"mean KL {kl.mean():.3g} > {lim.kl_mean}")
    if kl.max() > lim.kl_pos:
        problems.append(f"KL {kl.max():.3g} > {lim.kl_pos} at position {kl.argmax()} "
                        f"(first position over: {int(np.flatnonzero(kl > lim.kl_pos)[0])})")
    for p in np.flatnonzero(ga != wa):
        gap = w[p, wa[p]] - w[p, ga[p]]
        if gap > lim.tie_gap:
            problems.append(f"position {p}: argmax {ga[p]} instead of {wa[p]} (expected gap {gap:.3f})")
    return problems, figures


def _fmt(figures: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in figures.items())


def _limits(wtype: str) -> Limits:
    return F32 if wtype == "F32" else Q8_ACT


# ---- (a) the files, the reference and llama.cpp agree ------------------------------------------------


def test_converter_tensor_names_shapes_and_types(model_file):
    """Every tensor is one of gguf-py's MODEL_TENSORS for the arch, with llama.cpp's shape, and Q8_0
    exactly where llama-quantize would put it."""
    import gguf
    from gguf.constants import MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES

    arch_of = {"mamba2": MODEL_ARCH.MAMBA2, "nemotron_h_moe": MODEL_ARCH.NEMOTRON_H_MOE,
               "nemotron_h": MODEL_ARCH.NEMOTRON_H}
    for name, spec in ss.MODELS.items():
        allowed = {TENSOR_NAMES[t] for t in MODEL_TENSORS[arch_of[spec.arch]]}
        E, H = spec.n_embd, spec.ssm_n_head
        # ggml dims (ne[0] first) as llama.cpp's load_arch_tensors asks for them
        want_dims = {"attn_norm.weight": (E,), "ssm_in.weight": (E, spec.d_in_proj),
                     "ssm_conv1d.weight": (spec.d_conv, spec.conv_dim), "ssm_conv1d.bias": (spec.conv_dim,),
                     "ssm_dt.bias": (H,), "ssm_a": (1, H), "ssm_d": (1, H),
                     "ssm_norm.weight": (spec.d_inner // spec.n_group, spec.n_group),
                     "ssm_out.weight": (spec.d_inner, E),
                     "attn_q.weight": (E, spec.n_head * spec.head_dim),
                     "attn_k.weight": (E, spec.n_head_kv * spec.head_dim),
                     "attn_v.weight": (E, spec.n_head_kv * spec.head_dim),
                     "attn_output.weight": (spec.n_head * spec.head_dim, E),
                     "ffn_gate_inp.weight": (E, spec.n_expert), "exp_probs_b.bias": (spec.n_expert,),
                     "ffn_up_exps.weight": (E, spec.n_ff_exp, spec.n_expert),
                     "ffn_down_exps.weight": (spec.n_ff_exp, E, spec.n_expert),
                     "ffn_up_shexp.weight": (E, spec.n_ff_shexp), "ffn_down_shexp.weight": (spec.n_ff_shexp, E),
                     "ffn_up.weight": (E, spec.n_ff_mlp), "ffn_down.weight": (spec.n_ff_mlp, E)}
        for wtype in WTYPES:
            r = gguf.GGUFReader(str(model_file(name, wtype)))
            assert r.fields["general.architecture"].contents() == spec.arch
            for t in r.tensors:
                base = t.name.rsplit(".", 1)[0] if t.name.endswith((".weight", ".bias")) else t.name
                generic = base if not base.startswith("blk.") else "blk.{bid}." + base.split(".", 2)[2]
                assert generic in allowed, f"{name}: {t.name} is not a {spec.arch} tensor"
                if t.name.startswith("blk."):
                    short = t.name.split(".", 2)[2]
                    assert tuple(int(d) for d in t.shape) == want_dims[short], f"{name}: {t.name} dims {list(t.shape)}"
                q8 = t.tensor_type == gguf.GGMLQuantizationType.Q8_0
                a = np.zeros(tuple(reversed([int(d) for d in t.shape])), np.float32)
                want_q8 = wtype == "Q8_0" and ss.is_quantized(t.name, a)
                assert q8 == want_q8, f"{name} {wtype}: {t.name} is {t.tensor_type.name}"


def test_layer_kinds_follow_llama_cpp_rule(reference):
    """M iff head_count_kv[i] == 0 and feed_forward_length[i] == 0; * iff only feed_forward_length is 0."""
    for name, spec in ss.MODELS.items():
        assert reference(name, "F32").cfg.kinds == spec.pattern


@pytest.mark.parametrize("wtype", WTYPES)
@pytest.mark.parametrize("name", MODELS)
def test_reference_matches_llama_cpp(name, wtype, llama_cpp_logits, reference):
    problems, figures = compare(ref_logits(reference, name, wtype), llama_cpp_logits(name, wtype), _limits(wtype))
    print(f"{name} {wtype}: {_fmt(figures)}")
    assert not problems, f"numpy reference vs llama.cpp, {name} {wtype}:\n  " + "\n  ".join(problems[:10])


@pytest.mark.parametrize("name", MODELS)
def test_float_activation_reference_on_q8_0(name, llama_cpp_logits, model_file):
    """Without act_q8 the Q8_0 files stay within test_forward_synthetic's Q8_0 limits (what an engine
    with its own activation rounding is held to); for nemotron_h_moe thanks to its seed's clear
    router margins (module docstring)."""
    got = SSMRef.load(model_file(name, "Q8_0")).logits(TOKENS)
    problems, figures = compare(got, llama_cpp_logits(name, "Q8_0"), Q8)
    print(f"{name} Q8_0, float activations: {_fmt(figures)}")
    assert not problems, "\n  ".join(problems[:10])


@pytest.mark.parametrize("name", MODELS)
def test_chunked_ssd_scan_equals_recurrence(name, reference):
    """The SSD chunked form (what a fast prompt scan computes) gives the recurrence's logits, for
    chunks that divide the calls and chunks that do not."""
    ref = reference(name, "F32")
    for chunk, batches in ((16, None), (5, None), (4, CALLS_OF_7), (64, CALLS_OF_7)):
        d = ref.check_scans_agree(TOKENS, chunk=chunk, batches=batches)
        print(f"{name}: chunk {chunk}, calls {batches or 'one'}: max |diff| {d:.2g}")


@pytest.mark.parametrize("name", MODELS)
def test_reference_state_carries_across_calls(name, reference):
    """The prompt in calls of 7 tokens or of 1 token gives the logits of one call (to float64 rounding)."""
    ref = reference(name, "F32")
    one = ref.logits64(TOKENS)
    for batches in (CALLS_OF_7, [1] * N_TOKENS):
        np.testing.assert_allclose(ref.logits64(TOKENS, batches=batches), one, rtol=0, atol=1e-9)


def test_router_margins_are_clear(reference):
    """The premise of the Q8_0 MoE comparisons: no near-tie between the 4th and 5th expert anywhere."""
    for wtype in WTYPES:
        trace: dict = {}
        reference("nemotron_h_moe", wtype).logits(TOKENS, trace=trace)
        gaps = np.stack(trace["router_gap"])  # [n_moe_layers, n_tok]
        layer, pos = np.unravel_index(gaps.argmin(), gaps.shape)
        print(f"nemotron_h_moe {wtype}: smallest top-k gap {gaps.min():.4g} (MoE layer {layer}, position {pos})")
        assert gaps.min() >= ROUTER_GAP_MIN, (
            f"{wtype}: selection-score gap {gaps.min():.3g} < {ROUTER_GAP_MIN} at MoE layer {layer}, position {pos}: "
            f"pick another seed in synthetic_ssm.py")


# Which deliberate mistakes apply to which model (each must be caught against llama.cpp).
_MAMBA = ("no_d_skip", "dt_no_softplus", "no_z_gate", "gate_after_norm", "ungrouped_norm", "conv_window_reversed",
          "no_conv_bias", "a_exp_again", "groups_interleaved", "z_x_swapped", *STATE_ABLATIONS)
ABLATIONS_OF = {
    "mamba2": _MAMBA,
    "nemotron_h_moe": (*_MAMBA, "routing_softmax", "no_expert_bias", "bias_in_weights", "no_weights_norm",
                       "no_weights_scale", "relu_not_squared", "no_shared_expert", "attn_rope"),
    # the dense MLP and NoPE attention; the Mamba-2 mixer is the same code as above
    "nemotron_h": ("relu_not_squared", "attn_rope", "no_d_skip"),
}
assert {a for v in ABLATIONS_OF.values() for a in v} == ABLATIONS


@pytest.mark.parametrize("name,bug", [(m, b) for m, bugs in ABLATIONS_OF.items() for b in bugs])
def test_tolerance_catches_reference_bugs(name, bug, llama_cpp_logits, reference):
    """A reference with a known mistake must fail against llama.cpp, F32 and Q8_0 alike."""
    batches = CALLS_OF_7 if bug in STATE_ABLATIONS else None
    for wtype in WTYPES:
        with np.errstate(all="ignore"):  # dt_no_softplus lets the state grow without bound
            got = reference(name, wtype).with_ablation(bug).logits(TOKENS, batches=batches)
        problems, figures = compare(got, llama_cpp_logits(name, wtype), _limits(wtype))
        print(f"{name} {wtype} with {bug}: {_fmt(figures)}")
        assert problems, f"{name} {wtype}: the mistake {bug!r} passes the comparison ({_fmt(figures)})"


# ---- (b) the engine ---------------------------------------------------------------------------------


def engine_logits(peregrine_bin, path: Path, out: Path, *flags) -> np.ndarray:
    return _engine_logits(peregrine_bin, path, out, TOKENS, *flags)


@pytest.mark.parametrize("wtype", WTYPES)
@pytest.mark.parametrize("name", MODELS)
def test_engine_matches_llama_cpp(name, wtype, peregrine_bin, model_file, llama_cpp_logits, tmp_path):
    gate(name)
    got = engine_logits(peregrine_bin, model_file(name, wtype), tmp_path / "l.f32", *engine_flags(wtype))
    problems, figures = compare(got, llama_cpp_logits(name, wtype), F32 if wtype == "F32" else Q8)
    print(f"{name} {wtype}: {_fmt(figures)}")
    assert not problems, f"engine vs llama.cpp, {name} {wtype}:\n  " + "\n  ".join(problems[:10])


@pytest.mark.parametrize("wtype", WTYPES)
@pytest.mark.parametrize("name", MODELS)
def test_engine_matches_reference(name, wtype, peregrine_bin, model_file, reference, tmp_path):
    gate(name)
    got = engine_logits(peregrine_bin, model_file(name, wtype), tmp_path / "l.f32", *engine_flags(wtype))
    problems, figures = compare(got, ref_logits(reference, name, wtype), F32 if wtype == "F32" else Q8)
    print(f"{name} {wtype}: {_fmt(figures)}")
    assert not problems, f"engine vs numpy reference, {name} {wtype}:\n  " + "\n  ".join(problems[:10])


@pytest.mark.parametrize("batch", [7, 1])
@pytest.mark.parametrize("name", MODELS)
def test_engine_chunked_prompt(name, batch, peregrine_bin, model_file, llama_cpp_logits, tmp_path):
    """-b 7 / -b 1: the prompt runs as several forward calls; the conv and SSM states (and the
    attention K/V) must carry from one call to the next to give llama.cpp's one-call logits."""
    gate(name)
    got = engine_logits(peregrine_bin, model_file(name, "F32"), tmp_path / "l.f32", "--kv-type", "f32",
                        "-b", str(batch))
    problems, figures = compare(got, llama_cpp_logits(name, "F32"), F32)
    print(f"{name} -b {batch}: {_fmt(figures)}")
    assert not problems, f"engine -b {batch} vs llama.cpp, {name}:\n  " + "\n  ".join(problems[:10])


GREEDY_PROMPT = "The quick brown fox"  # llama.cpp's 8 greedy tokens are plain ASCII on both models
GREEDY_STEPS = 8


def _gpt2_byte_of() -> dict[str, int]:
    """GPT-2's byte-level alphabet: the character standing for each byte in token strings."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), 256)]
    chars, n = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + n)] = b
            n += 1
    return chars


def llama_cpp_greedy(oracle, path: Path, prompt_ids: list[int], n: int, control: set[int]):
    """llama.cpp's argmax continuation (one full call per step); stops before a control token.
    Returns the generated ids and each step's top-1/top-2 margin."""
    ids, out, margins = list(prompt_ids), [], []
    for _ in range(n):
        last = oracle.llama_cpp_logits(path, ids, threads=2)[-1].astype(np.float64)
        top2 = np.sort(last)[-2:]
        nxt = int(np.argmax(last))
        if nxt in control:
            break
        out.append(nxt)
        margins.append(round(float(top2[1] - top2[0]), 3))
        ids.append(nxt)
    return out, margins


@pytest.mark.parametrize("name", MODELS)
def test_engine_greedy_run_matches_llama_cpp(name, peregrine_bin, model_file, oracle):
    """`peregrine run --temp 0` prints llama.cpp's greedy continuation (F32 file, f32 K/V): prompt
    processing, then one-token decode steps that read and write the recurrent state. Compared as
    bytes, over the longest prefix of the continuation that is whole UTF-8 (a lone byte token could
    be printed or held back)."""
    gate(name)
    import gguf
    from gguf_hf_tokenizer import build_tokenizer, encode

    path = model_file(name, "F32")
    reader = gguf.GGUFReader(str(path))
    pieces = reader.fields["tokenizer.ggml.tokens"].contents()
    control = {i for i, t in enumerate(reader.fields["tokenizer.ggml.token_type"].contents()) if t == 3}
    prompt_ids = encode(build_tokenizer(reader), GREEDY_PROMPT)
    gen, margins = llama_cpp_greedy(oracle, path, prompt_ids, GREEDY_STEPS, control)
    byte_of = _gpt2_byte_of()

    def text(ids):
        return bytes(byte_of[ch] for i in ids for ch in pieces[i])

    while gen:
        try:
            text(gen).decode("utf-8")
            break
        except UnicodeDecodeError:
            gen = gen[:-1]
    if not gen:
        pytest.fail(f"{name}: llama.cpp's greedy continuation of {GREEDY_PROMPT!r} starts with a control or partial "
                    f"UTF-8 token: choose another GREEDY_PROMPT")
    cmd = [str(peregrine_bin), "run", "-m", str(path), "-p", GREEDY_PROMPT, "-n", str(len(gen)), "--temp", "0",
           "-t", "2", "--kv-type", "f32"]
    r = subprocess.run(cmd, capture_output=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-3000:].decode(errors='replace')}"
    out = r.stdout[:-1] if r.stdout.endswith(b"\n") else r.stdout
    assert out == text(gen), (f"{name}: engine greedy {out!r} != llama.cpp greedy {text(gen)!r} (ids {gen}, "
                              f"top-1/top-2 margins {margins})")


# ---- (c) bad files ------------------------------------------------------------------------------------

_M2 = ss.MODELS["mamba2"]
BAD_FILES = {
    # name: (model or Spec, write_model arguments, the gate, what the error must name (any one of))
    "mamba2_missing_ssm_a": ("mamba2", {"omit": ("blk.1.ssm_a",)}, "mamba2", ("blk.1.ssm_a",)),
    "mamba2_conv_kernel_3": ("mamba2", {"extra": {"blk.2.ssm_conv1d.weight": np.ones((_M2.conv_dim, 3), np.float32)}},
                             "mamba2", ("blk.2.ssm_conv1d.weight",)),
    # 512 / 6 heads: the file is self-consistent, the head size is not an integer (llama.cpp: GGML_ASSERT)
    "mamba2_heads_do_not_divide_inner": (ss.with_spec("mamba2", ssm_n_head=6), {}, "mamba2",
                                         ("ssm.inner_size", "ssm.time_step_rank")),
    # layer 3 (attention tensors) also declared an FFN layer: llama.cpp then wants its MoE tensors
    "nemotron_layer_kind_contradicts_tensors": ("nemotron_h_moe",
                                                {"keys": {"feed_forward_length": [0, 128, 0, 128, 128, 0]}},
                                                "nemotron_h_moe", ("blk.3", "layer 3")),
    "nemotron_head_count_kv_short": ("nemotron_h_moe", {"keys": {"attention.head_count_kv": [0, 0, 0, 2, 0]}},
                                     "nemotron_h_moe", ("head_count_kv",)),
}


def _names_any(line: str, path: Path, names) -> bool:
    """LINE names one of NAMES outside the file's path (the case names in the paths contain some)."""
    line = line.replace(str(path), "")
    return any(n in line for n in names)


@pytest.fixture(scope="session")
def bad_file(ssm_dir):
    made: dict = {}

    def get(case: str) -> Path:
        if case not in made:
            model, kwargs, _, _ = BAD_FILES[case]
            made[case] = ss.write_model(model, ssm_dir / f"bad-{case}.gguf", **kwargs)
        return made[case]

    return get


@pytest.mark.parametrize("case", BAD_FILES)
def test_llama_cpp_refuses_bad_file(case, bad_file, oracle):
    """The bad files are bad by llama.cpp's standard too (it asserts on the head split, exit by signal)."""
    r = oracle.llama_cpp_run(bad_file(case))
    assert r.returncode != 0, f"llama.cpp loaded {case}"
    print(f"{case}: llama.cpp says {[l for l in r.stderr.splitlines() if 'error' in l.lower() or 'ASSERT' in l][-2:]}")


@pytest.mark.parametrize("command", ["run", "logits"])
@pytest.mark.parametrize("case", BAD_FILES)
def test_engine_refuses_bad_file(case, command, bad_file, peregrine_bin, tmp_path):
    """run / logits: exit non-zero with exactly one `error:` line on stderr naming the tensor or key."""
    _, _, model, names = BAD_FILES[case]
    gate(model)
    path = bad_file(case)
    cmd = [str(peregrine_bin), command, "-m", str(path), "-t", "1",
           *(("-p", "hi", "-n", "1") if command == "run" else ("--tokens", "1,2", "-o", str(tmp_path / "l.f32")))]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, f"{' '.join(cmd)} succeeded on {case}"
    assert r.returncode > 0, f"{' '.join(cmd)} died by signal {-r.returncode} on {case}:\n{r.stderr[-2000:]}"
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), f"want one 'error:' line, got:\n{r.stderr[-2000:]}"
    assert _names_any(lines[0], path, names), f"the error names none of {names}: {lines[0]}"


@pytest.mark.parametrize("case", BAD_FILES)
def test_engine_info_says_why_bad_file_cannot_run(case, bad_file, peregrine_bin):
    """info describes the file (exit 0) with a `cannot run: ...` line naming the tensor or key (or one
    `error:` line naming it)."""
    _, _, model, names = BAD_FILES[case]
    gate(model)
    path = bad_file(case)
    r = subprocess.run([str(peregrine_bin), "info", str(path)], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and _names_any(lines[0], path, names), r.stderr[-2000:]
        return
    why = [l for l in r.stdout.splitlines() if "cannot run" in l]
    assert why, f"info shows no 'cannot run' line for {case}:\n{r.stdout[:2000]}"
    assert _names_any(why[0], path, names), f"info's reason names none of {names}: {why[0]}"
