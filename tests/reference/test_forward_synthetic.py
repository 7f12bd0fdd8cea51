"""qwen2, qwen3, Llama-3-style RoPE scaling, phi3, smollm3, qwen3moe, olmoe and afmoe on synthetic GGUF
files: numpy reference, llama.cpp, engine.

No small real checkpoint of these architectures can be installed here, so synthetic_models.py writes
small random-weight models (4 layers -- smollm3 8 --, n_embd 256, 8 heads / 2 KV heads, MoE: 16
experts, 4 used) under exactly the tensor names and metadata keys llama.cpp's converter writes, F32
and Q8_0, into a temporary folder at test time (seeded). Three implementations then run the same
file on the same 48 tokens:

  - llama.cpp (the pinned 0c1e57098 from the llama-cpp-python 0.3.36 sdist), through our
    llama_cpp_logits.cpp (llama_cpp_oracle.py builds it once, cached: cold ~1.5 min on 2 idle cores,
    ~3 CPU-minutes, ~7 min wall when the cores are busy);
  - hf_decoder_ref.py, a numpy forward pass written from HF transformers' definitions;
  - the engine, `peregrine logits`.

(a) reference vs llama.cpp must pass now: it proves the oracle and the reference agree, i.e. that
    the files mean what we think and both readings of the architecture are right. And each
    deliberate mistake in the reference (hf_decoder_ref.ABLATIONS) must FAIL against llama.cpp,
    so the tolerance is known to catch the bugs an engine could make.
(b) engine vs llama.cpp and vs the reference: gated on ENGINE_SUPPORTS below (skipped while False).
(c) bad files (qwen3 without a k-norm, a qwen2 file with an unknown tensor, a rope_freqs of the
    wrong length, qwen3moe without a ffn_down_exps, with a ffn_gate_exps of 15 experts, with
    expert_used_count > expert_count) must make `peregrine run` / `logits` fail with one `error:`
    line naming the tensor (or key), and `peregrine info` say `cannot run: ...` naming it (gated like
    (b), on the gate of the model the file is made from); llama.cpp's own refusal of the same files,
    for the intended reason, is checked now.

Flipping a gate: set ENGINE_SUPPORTS["qwen2"] = True (etc.) once the engine runs that
architecture; PEREGRINE_SYNTHETIC_ALL=1 runs every gated test regardless (to try before flipping).
The gate of each synthetic model is synthetic_models.GATE (the three llama_rope_* models share
"llama_rope_scaled"; every other model has a gate of its own name).

Tolerances (measured figures in the comments of each constant):
  F32 weights: both engines run f32 matmuls and (llama.cpp with --kv f32, the engine with
    --kv-type f32) f32 K/V; differences are float rounding only.
  Q8_0 weights: llama.cpp and the engine quantize activations to 8-bit blocks, the reference does
    not: the same KL-based limits as test_forward.py.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from engine_logits import engine_flags, log_softmax
from engine_logits import engine_logits as _engine_logits

import synthetic_models as sm
from hf_decoder_ref import ABLATIONS, DecoderRef, default_inv_freq, hf_llama3_inv_freq

# ---- the gates: flip to True when the engine supports the architecture ------------------------------
ENGINE_SUPPORTS = {"llama_rope_scaled": True, "qwen2": True, "qwen3": True,
                   "phi3": True, "smollm3": True, "qwen3moe": True, "olmoe": True, "afmoe": True}
RUN_ALL = os.environ.get("PEREGRINE_SYNTHETIC_ALL") == "1"
assert set(sm.GATE) == set(sm.MODELS) and set(sm.GATE.values()) == set(ENGINE_SUPPORTS)

N_TOKENS = 48
WTYPES = ("F32", "Q8_0")
MODELS = list(sm.MODELS)

# F32 files: float rounding only. Measured (48 tokens, logits span about -17..18): numpy reference vs
# llama.cpp max |diff| <= 5.1e-5 (<= 3.2e-6 of max |logit|), KL <= 1e-10, argmax equal everywhere;
# the engine (first qwen2/qwen3/scaled-RoPE version) vs either <= 5.7e-5, KL <= 1.2e-10.
F32_MAX_ABS_REL = 1e-3  # max |diff| / max |expected logit|
F32_KL_MAX = 1e-5  # at every position
# (phi3, smollm3, qwen3moe, olmoe, afmoe, reference vs llama.cpp: max |diff| <= 9.8e-5 (<= 5.7e-6
# of max |logit|), KL <= 1.9e-10.)
# Q8_0 files (8-bit activations in llama.cpp and the engine, not in the reference): test_forward.py's
# limits. Measured, reference vs llama.cpp: max |diff| 0.031..0.086 of max |logit|, mean KL
# 0.0024..0.011, max KL 0.0067..0.115 (llama_rope_llama3), argmax 90-96% (the rest near ties);
# engine vs llama.cpp: mean KL <= 0.0072, max KL <= 0.076; engine vs reference: mean KL <= 0.0099.
# Every deliberate reference bug (ABLATIONS_OF) lands at mean KL >= 0.49 and >= 0.43 of max |logit|.
# phi3 / smollm3 / qwen3moe / olmoe / afmoe, reference vs llama.cpp: max |diff| 0.040..0.088 of max
# |logit|, mean KL 0.0027..0.015 (smollm3), max KL 0.0096..0.066, argmax 92-100%. Their ablations land
# at mean KL >= 0.19 and max KL >= 0.41, except the two subtler afmoe ones: no_expert_bias (mean KL
# 0.071, max 0.24) and rope_every_layer (one NoPE layer of four: mean 0.083, max 0.35).
Q8_MAX_ABS_REL = 0.15
Q8_KL_MEAN_MAX = 0.02
Q8_KL_POS_MAX = 0.15
TIE_GAP = 0.5  # argmax may differ only where the expected top two are this close
# ... per 4 layers in Q8_0 files: the 8-bit noise grows with depth. smollm3's 8 layers (mean KL
# 0.011-0.015 against the float reference, twice the 4-layer models') flip near-ties of 0.57-0.76
# whatever the seed (tried 0-3), in llama.cpp and the engine alike; F32 agrees to KL 1e-10.


# ---- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    if not sm.SMOLLM2_GGUF.is_file():
        pytest.skip(f"SmolLM2 GGUF (tokenizer source) not found at {sm.SMOLLM2_GGUF}")
    return tmp_path_factory.mktemp("synthetic-gguf")


_files: dict = {}


@pytest.fixture(scope="session")
def model_file(synth_dir):
    """model_file(name, wtype) -> path of the synthetic GGUF (written once per session)."""

    def get(name: str, wtype: str) -> Path:
        key = (name, wtype)
        if key not in _files:
            _files[key] = sm.write_model(name, synth_dir / f"{name}-{wtype}.gguf", wtype=wtype)
        return _files[key]

    return get


TOKENS = sm.sample_tokens(N_TOKENS)
_llama_cpp: dict = {}
_refs: dict = {}


@pytest.fixture(scope="session")
def llama_cpp_logits(oracle, model_file):
    def get(name: str, wtype: str) -> np.ndarray:
        key = (name, wtype)
        if key not in _llama_cpp:
            _llama_cpp[key] = oracle.llama_cpp_logits(model_file(name, wtype), TOKENS, threads=2)
        return _llama_cpp[key]

    return get


@pytest.fixture(scope="session")
def reference(model_file):
    """reference(name, wtype) -> DecoderRef of the file (weights dequantized once)."""

    def get(name: str, wtype: str) -> DecoderRef:
        key = (name, wtype)
        if key not in _refs:
            _refs[key] = DecoderRef.load(model_file(name, wtype))
        return _refs[key]

    return get


_ref_logits: dict = {}


def ref_logits(reference, name, wtype) -> np.ndarray:
    if (name, wtype) not in _ref_logits:
        _ref_logits[(name, wtype)] = reference(name, wtype).logits(TOKENS)
    return _ref_logits[(name, wtype)]


def gate(name: str) -> None:
    """Skip an engine test of model NAME while its ENGINE_SUPPORTS gate is off."""
    g = sm.GATE[name]
    if not (ENGINE_SUPPORTS[g] or RUN_ALL):
        pytest.skip(f"engine support not enabled: ENGINE_SUPPORTS[{g!r}] is False in {Path(__file__).name} "
                    f"(or set PEREGRINE_SYNTHETIC_ALL=1)")


# ---- comparison --------------------------------------------------------------------------------------


def compare(got: np.ndarray, want: np.ndarray, wtype: str, name: str = "") -> tuple[list[str], dict]:
    """Problems comparing logits [n_tok, n_vocab] (empty: within tolerance) and the measured figures."""
    n_layer = sm.MODELS[name].n_layer if name in sm.MODELS else 4
    tie_gap = TIE_GAP if wtype == "F32" else TIE_GAP * max(1.0, n_layer / 4)
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
    if wtype == "F32":
        rel_limit, kl_mean_limit, kl_pos_limit = F32_MAX_ABS_REL, F32_KL_MAX, F32_KL_MAX
    else:
        rel_limit, kl_mean_limit, kl_pos_limit = Q8_MAX_ABS_REL, Q8_KL_MEAN_MAX, Q8_KL_POS_MAX
    if figures["max_abs_rel"] > rel_limit:
        p, v = np.unravel_index(diff.argmax(), diff.shape)
        problems.append(f"max |diff| {diff.max():.4g} = {figures['max_abs_rel']:.3g} of max |logit| "
                        f"> {rel_limit} (position {p}, token {v})")
    if kl.mean() > kl_mean_limit:
        problems.append(f"mean KL {kl.mean():.3g} > {kl_mean_limit}")
    if kl.max() > kl_pos_limit:
        problems.append(f"KL {kl.max():.3g} > {kl_pos_limit} at position {kl.argmax()}")
    for p in np.flatnonzero(ga != wa):
        gap = w[p, wa[p]] - w[p, ga[p]]
        if gap > tie_gap:
            problems.append(f"position {p}: argmax {ga[p]} instead of {wa[p]} (expected gap {gap:.3f})")
    return problems, figures


def _fmt(figures: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in figures.items())


# ---- (a) the synthetic files, the reference and llama.cpp agree --------------------------------------


@pytest.mark.parametrize("wtype", WTYPES)
@pytest.mark.parametrize("name", MODELS)
def test_reference_matches_llama_cpp(name, wtype, llama_cpp_logits, reference):
    got = ref_logits(reference, name, wtype)
    want = llama_cpp_logits(name, wtype)
    problems, figures = compare(got, want, wtype, name)
    print(f"{name} {wtype}: {_fmt(figures)}")
    assert not problems, f"numpy reference vs llama.cpp, {name} {wtype}:\n  " + "\n  ".join(problems[:10])


# Which deliberate mistakes apply to which model (each must be caught against llama.cpp).
ABLATIONS_OF = {
    "qwen2": ("no_qkv_bias", "rope_adjacent"),
    "qwen3": ("no_qk_norm", "qk_norm_after_rope", "rope_adjacent"),
    "llama_rope_llama3": ("no_rope_scaling", "rope_freqs_multiply", "rope_adjacent"),
    "llama_rope_linear": ("no_rope_scaling", "rope_adjacent"),
    "llama_rope_linear_untyped": ("no_rope_scaling",),
    "llama_rope_yarn": ("no_rope_scaling", "no_yarn_mscale", "yarn_ramp_on_dims", "rope_adjacent"),
    "phi3": ("gate_up_swapped", "qkv_v_before_k", "rope_adjacent"),
    "smollm3": ("rope_every_layer", "rope_adjacent"),
    "qwen3moe": ("moe_renorm_inverted", "moe_top1", "no_qk_norm"),
    "olmoe": ("moe_renorm_inverted", "moe_top1", "qk_norm_per_head", "no_qk_norm"),
    "afmoe": ("moe_softmax", "no_expert_bias", "no_route_scale", "no_shared_expert", "no_attn_gate",
              "no_sandwich_norm", "no_embd_scale", "no_sliding_window", "rope_every_layer", "moe_top1",
              "moe_renorm_inverted"),
}
assert {a for v in ABLATIONS_OF.values() for a in v} == ABLATIONS


@pytest.mark.parametrize("name,bug", [(m, b) for m, bugs in ABLATIONS_OF.items() for b in bugs])
def test_tolerance_catches_reference_bugs(name, bug, llama_cpp_logits, reference):
    """A reference with a known mistake must fail against llama.cpp, F32 and Q8_0 alike."""
    for wtype in WTYPES:
        problems, figures = compare(reference(name, wtype).with_ablation(bug).logits(TOKENS),
                                    llama_cpp_logits(name, wtype), wtype)
        print(f"{name} {wtype} with {bug}: {_fmt(figures)}")
        assert problems, f"{name} {wtype}: the mistake {bug!r} passes the comparison ({_fmt(figures)})"


def test_llama3_rope_freqs_are_hf_llama3_scaling(model_file):
    """The file's rope_freqs.weight turns the default frequencies into HF's _compute_llama3_parameters."""
    import gguf

    spec = sm.MODELS["llama_rope_llama3"]
    rs = spec.rope_scaling
    r = gguf.GGUFReader(str(model_file("llama_rope_llama3", "F32")))
    (t,) = [t for t in r.tensors if t.name == "rope_freqs.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [spec.head_dim // 2]
    factors = np.asarray(t.data, dtype=np.float64)
    want = hf_llama3_inv_freq(spec.head_dim, spec.rope_base, rs["factor"], rs["low_freq_factor"],
                              rs["high_freq_factor"], rs["original_max_position_embeddings"])
    np.testing.assert_allclose(default_inv_freq(spec.head_dim, spec.rope_base) / factors, want, rtol=2e-6)
    # all three regimes occur: unscaled (1), fully scaled (factor) and smoothed in between
    assert factors.min() == 1.0 and factors.max() == rs["factor"]
    assert np.any((factors > 1.0) & (factors < rs["factor"]))
    # and no rope.scaling.* keys: llama.cpp would apply a linear factor on top
    assert not [k for k in r.fields if ".rope.scaling." in k]


def test_converter_tensor_names(model_file):
    """Tensor names are those of gguf-py's MODEL_TENSORS for the architecture (what the converter uses)."""
    import gguf
    from gguf.constants import MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES

    for name, spec in sm.MODELS.items():
        allowed = {TENSOR_NAMES[t] for t in MODEL_TENSORS[MODEL_ARCH[spec.arch.upper()]]}
        r = gguf.GGUFReader(str(model_file(name, "F32")))
        for t in r.tensors:
            base = t.name.rsplit(".", 1)[0]
            generic = base if not base.startswith("blk.") else "blk.{bid}." + base.split(".", 2)[2]
            assert generic in allowed, f"{name}: {t.name} is not a {spec.arch} tensor"
        assert r.fields["general.architecture"].contents() == spec.arch


# ---- (b) the engine ---------------------------------------------------------------------------------


def engine_logits(peregrine_bin, path: Path, out: Path, *flags) -> np.ndarray:
    return _engine_logits(peregrine_bin, path, out, TOKENS, *flags)


@pytest.mark.parametrize("wtype", WTYPES)
@pytest.mark.parametrize("name", MODELS)
def test_engine_matches_llama_cpp(name, wtype, peregrine_bin, model_file, llama_cpp_logits, tmp_path):
    gate(name)
    got = engine_logits(peregrine_bin, model_file(name, wtype), tmp_path / "l.f32", *engine_flags(wtype))
    problems, figures = compare(got, llama_cpp_logits(name, wtype), wtype, name)
    print(f"{name} {wtype}: {_fmt(figures)}")
    assert not problems, f"engine vs llama.cpp, {name} {wtype}:\n  " + "\n  ".join(problems[:10])


@pytest.mark.parametrize("wtype", WTYPES)
@pytest.mark.parametrize("name", MODELS)
def test_engine_matches_reference(name, wtype, peregrine_bin, model_file, reference, tmp_path):
    gate(name)
    got = engine_logits(peregrine_bin, model_file(name, wtype), tmp_path / "l.f32", *engine_flags(wtype))
    problems, figures = compare(got, ref_logits(reference, name, wtype), wtype, name)
    print(f"{name} {wtype}: {_fmt(figures)}")
    assert not problems, f"engine vs numpy reference, {name} {wtype}:\n  " + "\n  ".join(problems[:10])


@pytest.mark.parametrize("name", MODELS)
def test_engine_chunked_prompt(name, peregrine_bin, model_file, llama_cpp_logits, tmp_path):
    """-b 7: the sequence runs as 7 batches through the KV cache (positions > 0 in later batches)."""
    gate(name)
    got = engine_logits(peregrine_bin, model_file(name, "F32"), tmp_path / "l.f32", "--kv-type", "f32", "-b", "7")
    problems, figures = compare(got, llama_cpp_logits(name, "F32"), "F32")
    assert not problems, f"engine -b 7 vs llama.cpp, {name}:\n  " + "\n  ".join(problems[:10])


# ---- (c) bad files ------------------------------------------------------------------------------------

class Bad(NamedTuple):
    model: str  # the synthetic model it is made from (and whose engine gate it waits for)
    names: str  # what the engine's error must name: the tensor, or the metadata key
    omit: tuple = ()  # tensors left out
    extra: dict = {}  # tensors added (after omit: a replaced tensor is omitted and added)
    spec: dict = {}  # Spec fields changed (metadata)
    llama_cpp_says: str = ""  # what llama.cpp's refusal must contain (default: `names`)


_qwen3moe = sm.MODELS["qwen3moe"]
BAD_FILES = {
    "qwen3_missing_k_norm": Bad("qwen3", "blk.1.attn_k_norm.weight", omit=("blk.1.attn_k_norm.weight",)),
    "qwen2_unknown_tensor": Bad("qwen2", "blk.2.attn_bogus.weight",
                                extra={"blk.2.attn_bogus.weight": np.ones(256, np.float32)},
                                llama_cpp_says="wrong number of tensors"),
    "llama_rope_freqs_wrong_shape": Bad("llama_rope_llama3", "rope_freqs.weight", omit=("rope_freqs.weight",),
                                        extra={"rope_freqs.weight": np.ones(8, np.float32)}),
    "qwen3moe_missing_down_exps": Bad("qwen3moe", "blk.1.ffn_down_exps.weight",
                                      omit=("blk.1.ffn_down_exps.weight",)),
    # 15 experts where expert_count says 16
    "qwen3moe_gate_exps_wrong_expert_count": Bad(
        "qwen3moe", "blk.2.ffn_gate_exps.weight", omit=("blk.2.ffn_gate_exps.weight",),
        extra={"blk.2.ffn_gate_exps.weight": np.zeros((15, _qwen3moe.n_ff_exp, _qwen3moe.n_embd), np.float32)}),
    # top-17 of 16 experts (llama.cpp: a failed GGML_ASSERT, i.e. abort)
    "qwen3moe_expert_used_over_count": Bad("qwen3moe", "qwen3moe.expert_used_count",
                                           spec={"n_expert_used": _qwen3moe.n_expert + 1},
                                           llama_cpp_says="GGML_ASSERT(n_expert_used_max <= hparams.n_expert)"),
}


@pytest.fixture(scope="session")
def bad_file(synth_dir):
    made: dict = {}

    def get(case: str) -> Path:
        if case not in made:
            b = BAD_FILES[case]
            spec = dataclasses.replace(sm.MODELS[b.model], **b.spec)
            made[case] = sm.write_model(spec, synth_dir / f"bad-{case}.gguf", omit=b.omit, extra=b.extra)
        return made[case]

    return get


@pytest.mark.parametrize("case", BAD_FILES)
def test_llama_cpp_refuses_bad_file(case, bad_file, oracle):
    """The bad files are bad by llama.cpp's standard too (so the engine is asked nothing stricter)."""
    r = oracle.llama_cpp_run(bad_file(case))
    assert r.returncode != 0, f"llama.cpp loaded {case}"
    said = [l for l in r.stderr.splitlines() if "error" in l.lower() or "GGML_ASSERT" in l]
    print(f"{case}: llama.cpp says {said[-3:]}")
    why = BAD_FILES[case].llama_cpp_says or BAD_FILES[case].names
    assert any(why in l for l in said), f"llama.cpp refused {case} for another reason than {why!r}:\n{said[-5:]}"


@pytest.mark.parametrize("command", ["run", "logits"])
@pytest.mark.parametrize("case", BAD_FILES)
def test_engine_refuses_bad_file(case, command, bad_file, peregrine_bin, tmp_path):
    """run / logits: exit non-zero with exactly one `error:` line on stderr that names the tensor (or key)."""
    model, tensor = BAD_FILES[case].model, BAD_FILES[case].names
    gate(model)
    path = bad_file(case)
    cmd = [str(peregrine_bin), command, "-m", str(path), "-t", "1",
           *(("-p", "hi", "-n", "1") if command == "run" else ("--tokens", "1,2", "-o", str(tmp_path / "l.f32")))]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, f"{' '.join(cmd)} succeeded on {case}"
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), f"want one 'error:' line, got:\n{r.stderr[-2000:]}"
    assert tensor in lines[0], f"the error does not name {tensor}: {lines[0]}"


@pytest.mark.parametrize("case", BAD_FILES)
def test_engine_info_says_why_bad_file_cannot_run(case, bad_file, peregrine_bin):
    """info inspects any GGUF (tests/e2e/test_cli_errors.py): it describes the file, exit 0, and its
    `model:` line says `cannot run: ...` naming the tensor or key (a one-line `error:` naming it is accepted too)."""
    model, tensor = BAD_FILES[case].model, BAD_FILES[case].names
    gate(model)
    r = subprocess.run([str(peregrine_bin), "info", str(bad_file(case))], capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and tensor in lines[0], r.stderr[-2000:]
        return
    why = [l for l in r.stdout.splitlines() if "cannot run" in l]
    assert why, f"info shows no 'cannot run' line for {case}:\n{r.stdout[:2000]}"
    assert tensor in why[0], f"info's reason does not name {tensor}: {why[0]}"
