"""Small random-weight GGUF models of the state-space architectures `mamba2`, `nemotron_h_moe`, `nemotron_h`.

A sibling of synthetic_models.py (whose tokenizer helpers it imports): written with gguf-py under
exactly the tensor names, shapes and metadata keys that the pinned llama.cpp's HF->GGUF converter
(conversion/mamba.py Mamba2Model; conversion/nemotron.py NemotronHModel on top of
conversion/granite.py GraniteHybridModel) writes, so llama.cpp itself loads them and serves as the
logits oracle (tests/reference/test_forward_ssm.py; the numpy reference is ssm_ref.py).

  name            general.architecture  layers (Nemotron's hybrid_override_pattern letters)
  mamba2          mamba2          MMMM: 4 Mamba-2 blocks, tied output (no output.weight)
  nemotron_h_moe  nemotron_h_moe  MEM*EM: Mamba-2, MoE, Mamba-2, attention, MoE, Mamba-2;
                                  a Nemotron-3-Nano-shaped hybrid, untied output
  nemotron_h      nemotron_h      M-M*-M: Mamba-2, MLP, Mamba-2, attention, MLP, Mamba-2 (squared-ReLU
                                  MLP of 384, no experts: Nemotron-H 8B style), untied output

Shapes (both): n_embd 256; Mamba-2 mixer d_inner 512 = 8 heads x head_dim 64 (ssm.time_step_rank =
8 heads), d_state 64, n_group 2 (4 heads per B/C group), d_conv 4. nemotron_h_moe also: attention
8 query heads / 2 KV heads of head_dim 64 (attention.key_length, != n_embd / n_head), no RoPE; MoE of
16 experts, top-4, ReLU^2 non-gated experts of 128, one shared ReLU^2 expert of 256, sigmoid router
with selection bias (exp_probs_b), expert_weights_norm true, expert_weights_scale 2.5, one expert
group (Nano's n_group = topk_group = 1). Tokenizer: SmolLM2's first 1024 tokens (synthetic_models).

What the converter does to HF tensors (and these files therefore hold), in numpy order ([out, in]):
  blk.i.ssm_in.weight        [2*d_inner + 2*n_group*d_state + n_head, n_embd]   rows: z | xBC | dt
  blk.i.ssm_conv1d.weight    [d_inner + 2*n_group*d_state, d_conv]  (HF conv1d [C, 1, K] squeezed)
  blk.i.ssm_conv1d.bias      [d_inner + 2*n_group*d_state]
  blk.i.ssm_dt.bias          [n_head]        (HF dt_bias)
  blk.i.ssm_a                [n_head, 1]     A = -exp(A_log): the file stores A itself, negative
  blk.i.ssm_d                [n_head, 1]
  blk.i.ssm_norm.weight      [n_group, d_inner / n_group]
  blk.i.ssm_out.weight       [n_embd, d_inner]
  blk.i.attn_q/k.weight      rows permuted per head by LlamaModel.permute (GraniteHybridModel has
                             undo_permute = True); harmless without RoPE: q.k per head is unchanged
  blk.i.ffn_up_exps.weight   [n_expert, n_ff_exp, n_embd]; ffn_down_exps [n_expert, n_embd, n_ff_exp]
  blk.i.ffn_gate_inp.weight  [n_expert, n_embd];  blk.i.exp_probs_b.bias [n_expert]
  blk.i.ffn_up_shexp.weight  [n_ff_shexp, n_embd]; ffn_down_shexp [n_embd, n_ff_shexp]

Q8_0 files quantize what llama-quantize would (llama-quant.cpp tensor_allows_quantization): 2-D and
3-D tensors whose name ends in "weight", except *_norm.weight, ssm_conv1d and ffn_gate_inp (the
router stays F32). ssm_a / ssm_d have no ".weight" suffix and stay F32, as do all biases.

Use:
    from synthetic_ssm import MODELS, write_model
    path = write_model("mamba2", tmp_path / "mamba2.gguf", wtype="Q8_0")
    python tests/reference/synthetic_ssm.py OUT_DIR        # writes both models, F32 and Q8_0
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from synthetic_models import (SMOLLM2_GGUF, VOCAB_SIZE, add_tokenizer, permute_qk, sample_tokens, write_tensors,  # noqa: F401
                              smollm2_tokenizer)

# Scales (measured figures in test_forward_ssm.py): logits span about -19..18 (mamba2, tied head)
# and -12..13 (nemotron_h_moe), every ablation of ssm_ref.ABLATIONS lands far outside the
# tolerances (mean KL >= 0.3), and Q8_0 noise stays inside them.
EMBD_STD = 0.25
QK_GAIN = 1.5
OUT_GAIN = 3.0  # untied output (nemotron_h_moe)
# MoE router: logits of about +-2 (sigmoid scores 0.1..0.9), selection bias of 0.3 (it reorders the
# scores' neighbours without deciding alone).
ROUTER_GAIN = 2.0
BIAS_STD = 0.3


@dataclass(frozen=True)
class Spec:
    name: str
    arch: str  # general.architecture
    # per-layer kinds, Nemotron's hybrid_override_pattern letters: M Mamba-2, * attention, E MoE,
    # - dense MLP (squared ReLU, nemotron_h)
    pattern: str
    n_embd: int = 256
    # Mamba-2 mixer
    d_inner: int = 512
    ssm_n_head: int = 8  # ssm.time_step_rank; head_dim = d_inner / ssm_n_head
    d_state: int = 64
    n_group: int = 2
    d_conv: int = 4
    rms_eps: float = 1e-5
    # attention (nemotron_h_moe)
    n_head: int = 8
    n_head_kv: int = 2
    head_dim: int = 64
    rope_base: float = 10000.0  # written (HF rope_theta) but unused: Nemotron-H attention has no RoPE
    # MoE (nemotron_h_moe)
    n_expert: int = 16
    n_expert_used: int = 4
    n_ff_exp: int = 128
    n_ff_shexp: int = 256
    expert_weights_norm: bool = True
    expert_weights_scale: float = 2.5
    n_ff_mlp: int = 384  # dense MLP layers (nemotron_h)
    tied: bool = True  # no output.weight: the LM head is token_embd
    seed: int = 0  # of the random weights
    # expert e's matrices = sqrt(1 - s^2) * common + s * own (s = expert_spread), as synthetic_models
    # does for its MoE files: a routing near-tie that 8-bit activations flip then costs little.
    expert_spread: float = 1.0

    @property
    def n_layer(self) -> int:
        return len(self.pattern)

    @property
    def conv_dim(self) -> int:  # channels of the causal conv: x, B, C
        return self.d_inner + 2 * self.n_group * self.d_state

    @property
    def d_in_proj(self) -> int:  # z, xBC, dt
        return self.d_inner + self.conv_dim + self.ssm_n_head


MODELS: dict[str, Spec] = {
    "mamba2": Spec("mamba2", "mamba2", "MMMM", tied=True),
    # seed 21: of seeds 0..29 (with expert_spread 0.3), the one whose smallest gap between the 4th and
    # 5th expert's selection score over test_forward_ssm's 48 tokens (2 MoE layers, F32 and Q8_0
    # files) is largest: 3.1e-3. Q8_0 activation rounding moves those scores by ~1e-2 and a rounding
    # that differs from ggml's only in the block scales' precision by ~5e-3, so a small gap lets two
    # correct implementations choose different experts (test_forward_ssm.py docstring).
    "nemotron_h_moe": Spec("nemotron_h_moe", "nemotron_h_moe", "MEM*EM", tied=False, seed=21, expert_spread=0.3),
    # Nemotron-H without experts (Nemotron-H 8B style): Mamba-2, attention and squared-ReLU MLP layers.
    "nemotron_h": Spec("nemotron_h", "nemotron_h", "M-M*-M", tied=False),
}


# ---- weights ---------------------------------------------------------------------------------------


def gguf_weights(spec: Spec, n_vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights under GGUF names, numpy order, after the converter's transformations.

    Scales keep activations O(1): the block input is RMS-normalised, in_proj has unit gain, the conv
    mixes 4 taps of about unit size, the gated group RMSNorm renormalises y before out_proj.
    Mamba-2 decay: A in -[0.05, 1.5] (log-uniform) and dt = softplus(raw + dt_bias) with dt_bias in
    [-3, -0.5], so some heads forget within a few tokens and some carry state across the whole test
    sequence (a dropped or misplaced state shows). D in [1, 3] so that the skip term is not buried.
    Norm weights are 1 +- noise so a skipped or misplaced norm shows.
    """
    rng = np.random.default_rng(seed)
    E = spec.n_embd
    H, G, N = spec.ssm_n_head, spec.n_group, spec.d_state

    def mat(out_dim, in_dim, gain=1.0):
        return (rng.standard_normal((out_dim, in_dim)) * gain / math.sqrt(in_dim)).astype(np.float32)

    def norm(*shape, spread=0.2):
        return (1.0 + spread * rng.standard_normal(shape)).astype(np.float32)

    w: dict[str, np.ndarray] = {"token_embd.weight": (EMBD_STD * rng.standard_normal((n_vocab, E))).astype(np.float32)}
    for i, kind in enumerate(spec.pattern):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(E)  # HF backbone.layers.i.norm: every block is pre-norm
        if kind == "M":
            w[b + "ssm_in.weight"] = mat(spec.d_in_proj, E)
            w[b + "ssm_conv1d.weight"] = (0.5 * rng.standard_normal((spec.conv_dim, spec.d_conv))).astype(np.float32)
            w[b + "ssm_conv1d.bias"] = (0.1 * rng.standard_normal(spec.conv_dim)).astype(np.float32)
            w[b + "ssm_dt.bias"] = rng.uniform(-3.0, -0.5, H).astype(np.float32)
            a_log = rng.uniform(math.log(0.05), math.log(1.5), H)
            w[b + "ssm_a"] = (-np.exp(a_log)).astype(np.float32).reshape(H, 1)  # the converter: A = -exp(A_log)
            w[b + "ssm_d"] = rng.uniform(1.0, 3.0, H).astype(np.float32).reshape(H, 1)
            w[b + "ssm_norm.weight"] = norm(G, spec.d_inner // G)
            w[b + "ssm_out.weight"] = mat(E, spec.d_inner)
        elif kind == "*":
            D = spec.head_dim
            wq = mat(spec.n_head * D, E, QK_GAIN)
            wk = mat(spec.n_head_kv * D, E, QK_GAIN)
            # LlamaModel.permute as the converter applies it (n_head for q, n_head_kv for k)
            w[b + "attn_q.weight"] = permute_qk(wq, spec.n_head)
            w[b + "attn_k.weight"] = permute_qk(wk, spec.n_head_kv)
            w[b + "attn_v.weight"] = mat(spec.n_head_kv * D, E)
            w[b + "attn_output.weight"] = mat(E, spec.n_head * D)
        elif kind == "E":
            X, F, FS = spec.n_expert, spec.n_ff_exp, spec.n_ff_shexp
            w[b + "ffn_gate_inp.weight"] = mat(X, E, ROUTER_GAIN)
            w[b + "exp_probs_b.bias"] = (BIAS_STD * rng.standard_normal(X)).astype(np.float32)
            sp = spec.expert_spread
            up_c, down_c = mat(F, E), mat(E, F, 0.5)
            mix = lambda c, own: (math.sqrt(1.0 - sp * sp) * c + sp * own).astype(np.float32)  # noqa: E731
            w[b + "ffn_up_exps.weight"] = np.stack([mix(up_c, mat(F, E)) for _ in range(X)])
            w[b + "ffn_down_exps.weight"] = np.stack([mix(down_c, mat(E, F, 0.5)) for _ in range(X)])
            w[b + "ffn_up_shexp.weight"] = mat(FS, E)
            w[b + "ffn_down_shexp.weight"] = mat(E, FS, 0.5)
        elif kind == "-":
            w[b + "ffn_up.weight"] = mat(spec.n_ff_mlp, E)
            w[b + "ffn_down.weight"] = mat(E, spec.n_ff_mlp, 0.5)
        else:
            raise ValueError(f"{spec.name}: unknown layer kind {kind!r} in pattern {spec.pattern!r}")
    w["output_norm.weight"] = norm(E)
    if not spec.tied:
        w["output.weight"] = mat(n_vocab, E, OUT_GAIN)
    return w


def is_quantized(name: str, a: np.ndarray) -> bool:
    """llama-quantize's rule (tensor_allows_quantization) for the tensors these files have."""
    if a.ndim < 2 or not name.endswith("weight"):
        return False
    return not any(s in name for s in ("_norm.weight", "ssm_conv1d", "ffn_gate_inp.weight"))


# ---- metadata as the converter writes it ---------------------------------------------------------------


def _mamba2_keys(gw: gguf.GGUFWriter, spec: Spec) -> None:
    """Mamba2Model.set_gguf_parameters (it does not call TextModel's)."""
    gw.add_context_length(2**20)  # "arbitrary value"
    gw.add_embedding_length(spec.n_embd)
    gw.add_feed_forward_length(0)  # "unused, but seemingly required when loading"
    gw.add_head_count(0)
    gw.add_block_count(spec.n_layer)
    gw.add_ssm_conv_kernel(spec.d_conv)
    gw.add_ssm_inner_size(spec.d_inner)
    gw.add_ssm_state_size(spec.d_state)
    gw.add_ssm_time_step_rank(spec.ssm_n_head)  # d_inner // head_dim: the number of heads
    gw.add_ssm_group_count(spec.n_group)
    gw.add_layer_norm_rms_eps(spec.rms_eps)


def _nemotron_h_moe_keys(gw: gguf.GGUFWriter, spec: Spec, n_vocab: int) -> None:
    """What NemotronHModel -> GraniteHybridModel -> GraniteMoeModel -> GraniteModel -> LlamaModel ->
    TextModel .set_gguf_parameters leave for a Nemotron-3-Nano-style config (final values of keys the
    chain writes twice: context_length, feed_forward_length, head_count_kv)."""
    attn = [i for i, k in enumerate(spec.pattern) if k == "*"]
    moe = [i for i, k in enumerate(spec.pattern) if k == "E"]
    mlp = [i for i, k in enumerate(spec.pattern) if k == "-"]
    # TextModel
    gw.add_block_count(spec.n_layer)
    gw.add_embedding_length(spec.n_embd)
    gw.add_head_count(spec.n_head)  # scalar: every layer, attention or not
    gw.add_rope_freq_base(spec.rope_base)
    gw.add_layer_norm_rms_eps(spec.rms_eps)  # HF norm_eps
    gw.add_layer_norm_eps(spec.rms_eps)  # HF layer_norm_epsilon; llama.cpp requires the key
    if moe:
        gw.add_expert_count(spec.n_expert)
        gw.add_expert_used_count(spec.n_expert_used)
        gw.add_expert_group_count(1)  # HF n_group
        gw.add_expert_group_used_count(1)  # HF topk_group
    # LlamaModel (GraniteModel popped head_dim first, so the RoPE size is n_embd / n_head; unused)
    gw.add_vocab_size(n_vocab)
    gw.add_rope_dimension_count(spec.n_embd // spec.n_head)
    # GraniteHybridModel
    gw.add_ssm_conv_kernel(spec.d_conv)
    gw.add_ssm_state_size(spec.d_state)
    gw.add_ssm_group_count(spec.n_group)
    gw.add_ssm_inner_size(spec.d_inner)  # mamba_num_heads * mamba_head_dim
    gw.add_ssm_time_step_rank(spec.ssm_n_head)  # mamba_num_heads
    gw.add_head_count_kv([spec.n_head_kv if i in attn else 0 for i in range(spec.n_layer)])
    gw.add_rope_scaling_finetuned(False)  # use_rope: False for a hybrid that is not Bamba
    gw.add_context_length(2**20)  # no RoPE: the converter overrides max_position_embeddings
    # NemotronHModel (is_moe)
    gw.add_key_length(spec.head_dim)
    gw.add_value_length(spec.head_dim)
    gw.add_feed_forward_length([spec.n_ff_exp if i in moe else spec.n_ff_mlp if i in mlp else 0
                                for i in range(spec.n_layer)])
    if not moe:
        return
    gw.add_expert_feed_forward_length(spec.n_ff_exp)
    gw.add_expert_shared_feed_forward_length(spec.n_ff_shexp)
    gw.add_expert_shared_count(1)
    gw.add_expert_weights_norm(spec.expert_weights_norm)
    gw.add_expert_weights_scale(spec.expert_weights_scale)


def write_model(model: str | Spec, path: str | Path, *, wtype: str = "F32", seed: int | None = None,
                n_vocab: int | None = VOCAB_SIZE, omit: tuple[str, ...] = (),
                extra: dict[str, np.ndarray] | None = None, keys: dict | None = None) -> Path:
    """Write MODEL (a name of MODELS or a Spec) to PATH as a GGUF; return PATH.

    wtype: "F32" or "Q8_0". omit: tensor names to leave out; extra: tensors to add or replace (name ->
    float32 array, numpy order); keys: metadata to override after the converter's keys ("{arch}."
    prefixed name or a bare name -> value; lists become arrays) -- for bad-input tests.
    seed: of the weights (default: the Spec's).
    """
    spec = MODELS[model] if isinstance(model, str) else model
    if wtype not in ("F32", "Q8_0"):
        raise ValueError(f"wtype must be F32 or Q8_0, not {wtype!r}")
    tok = smollm2_tokenizer(n_vocab)
    nv = len(tok["tokens"])
    path = Path(path)
    tensors = gguf_weights(spec, nv, spec.seed if seed is None else seed)
    for name in omit:
        if name not in tensors:
            raise KeyError(f"cannot omit {name!r}: the model has no such tensor")
        del tensors[name]
    tensors.update(extra or {})

    gw = gguf.GGUFWriter(str(path), spec.arch)
    gw.add_name(f"peregrine-synthetic-{spec.name}")
    gw.add_type(gguf.GGUFType.MODEL)
    if spec.arch == "mamba2":
        _mamba2_keys(gw, spec)
    elif spec.arch in ("nemotron_h_moe", "nemotron_h"):
        _nemotron_h_moe_keys(gw, spec, nv)
    else:
        raise ValueError(f"unknown arch {spec.arch!r}")
    gw.add_file_type(gguf.LlamaFileType.ALL_F32 if wtype == "F32" else gguf.LlamaFileType.MOSTLY_Q8_0)
    gw.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(gw, tok)
    for key, value in (keys or {}).items():
        full = key if key.startswith((spec.arch + ".", "general.", "tokenizer.")) else f"{spec.arch}.{key}"
        gw.kv_data[0].pop(full, None)
        if isinstance(value, bool):
            gw.add_bool(full, value)
        elif isinstance(value, int):
            gw.add_uint32(full, value)
        elif isinstance(value, float):
            gw.add_float32(full, value)
        else:
            gw.add_array(full, list(value))

    return write_tensors(gw, path, tensors, wtype, is_quantized)


def with_spec(model: str, **changes) -> Spec:
    """MODELS[model] with some fields changed (bad-input tests: e.g. ssm_n_head=6)."""
    return dataclasses.replace(MODELS[model], **changes)


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Write the synthetic state-space GGUF models (F32 and Q8_0).")
    ap.add_argument("out_dir")
    args = ap.parse_args()
    for name in MODELS:
        for wt in ("F32", "Q8_0"):
            print(write_model(name, Path(args.out_dir) / f"{name}-{wt}.gguf", wtype=wt))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
