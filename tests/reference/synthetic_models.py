"""Small random-weight GGUF models of architectures no small real checkpoint exists here for.

Written with gguf-py under exactly the tensor names and metadata keys that llama.cpp's HF->GGUF
converter (the pinned llama.cpp 0c1e57098: convert_hf_to_gguf.py, conversion/{base,llama,qwen,phi,
olmo,afmoe}.py)
writes for the architecture, so that llama.cpp itself loads them and serves as the logits oracle:

  name                 general.architecture  what it exercises
  qwen2                qwen2   q/k/v projection biases (attn_{q,k,v}.bias), NEOX RoPE, tied output
  qwen3                qwen3   per-head RMSNorm of q and k (attn_{q,k}_norm, [head_dim]) before RoPE,
                               head_dim 64 != n_embd / n_head (attention.key_length), untied output
  llama_rope_llama3    llama   Llama-3 RoPE scaling: rope_freqs.weight [head_dim/2], no rope.scaling.* keys
  llama_rope_linear    llama   rope.scaling.type = linear, rope.scaling.factor
  llama_rope_linear_untyped  llama   rope.scaling.factor only (llama.cpp's default type: linear)
  llama_rope_yarn      llama   rope.scaling.type = yarn, .factor, .original_context_length
  phi3                 phi3    fused attn_qkv (rows q, k, v) and fused ffn_up (rows gate, then up)
  smollm3              smollm3 llama-like (permuted q/k, NORM RoPE), no RoPE where (il + 1) % 4 == 0; 8 layers
  qwen3moe             qwen3moe qwen3 attention + MoE FFN: softmax router, top-k, renormalised weights
  olmoe                olmoe   q/k RMSNorm over the whole q / k row, MoE with softmax top-k NOT renormalised
  afmoe                afmoe   Arcee Trinity: gated attention, sandwich norms, sliding-window layers, NoPE
                               global layers, muP embedding scale, sigmoid router with expert bias, route
                               norm + scale, a shared expert, a dense first layer

Every model: 4 layers (smollm3 8), n_embd 256, 8 query heads, 2 KV heads (GQA 4:1; olmoe 8, which its
full-width k-norm of [n_embd] requires), SwiGLU FFN of 640 (MoE: 16 experts of 128, 4 used), RMSNorm,
and the SmolLM2 byte-level BPE tokenizer (tokenizer.ggml.*, pre 'smollm') cut to its first
VOCAB_SIZE tokens with the merges among them (a valid BPE vocabulary both engines load; the full
49152 is available with n_vocab=None). Weights F32, or Q8_0 for every matrix (norms, biases and
rope_freqs stay F32, as llama.cpp's quantizer leaves 1-D tensors; so does the MoE router
ffn_gate_inp, which llama.cpp's quantizer never quantizes), via gguf.quants.quantize -- the 3-D expert
tensors row by row like every matrix.

Conventions the files follow (and an engine must implement):
  - qwen2 / qwen3 / qwen3moe / phi3 / olmoe / afmoe: llama.cpp uses LLAMA_ROPE_TYPE_NEOX (rotate-half:
    dim j pairs with j + head_dim/2) and the converter does NOT permute attn_q / attn_k rows: GGUF rows
    are HF rows (afmoe's converter subclasses LlamaModel but routes q/k around its permute).
  - llama / smollm3: LLAMA_ROPE_TYPE_NORM (adjacent pairs 2j, 2j+1) on rows the converter permuted per
    head (w.reshape(n_head, 2, head_dim/2, n_in).swapaxes(1, 2)); equivalent to HF's rotate-half on HF
    rows. Our llama / smollm3 files are written from "HF" weights through that same permutation.
  - attention scale 1/sqrt(head_dim) everywhere (llama: unless {arch}.attention.scale is set).
  - Shapes here are numpy order ([rows, columns]; ggml's ne is the reverse). phi3: attn_qkv
    [q + k + v, n_embd] with rows q (n_head*D), then k, then v (n_head_kv*D each); ffn_up [2 n_ff,
    n_embd], rows 0..n_ff-1 the gate (silu), then the up half; no ffn_gate.
  - MoE: ffn_gate_inp [n_expert, n_embd] (F32), ffn_{gate,up}_exps [n_expert, n_ff_exp, n_embd],
    ffn_down_exps [n_expert, n_embd, n_ff_exp]; expert e's FFN is down_e(silu(gate_e x) * up_e x).
    The routing per architecture is in hf_decoder_ref.py's docstring.

Use:
    from synthetic_models import MODELS, write_model
    path = write_model("qwen3", tmp_path / "qwen3.gguf", wtype="Q8_0")
    python tests/reference/synthetic_models.py OUT_DIR        # writes every model, F32 and Q8_0
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

SMOLLM2_GGUF = Path(os.environ.get("PEREGRINE_MODEL_PATH",
                                   Path.home() / ".cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
VOCAB_SIZE = 1024  # SmolLM2's first 1024 tokens: 17 special, 256 byte tokens, 751 merged tokens
N_SPECIAL = 17  # ids 0..16 are control tokens (<|endoftext|>, <|im_start|>, <|im_end|>, ...)
# Weight scales: logits span about -17..18, and 8-bit activations (Q8_0 in llama.cpp) move them by
# KL <= 0.011 mean / 0.12 max per position against the float reference, inside test_forward.py's
# limits. Sharper settings (embeddings 0.5, q/k gain 2, output gain 6) gave logits of -33..48 and
# Q8_0 noise past those limits (mean KL 0.04), a chaotic model rather than a stricter test.
EMBD_STD, QK_GAIN, OUT_GAIN = 0.25, 1.5, 3.0
LLAMA_PERMUTED = ("llama", "smollm3")  # archs whose converter permutes q/k rows (NORM RoPE)


@dataclass(frozen=True)
class Spec:
    name: str
    arch: str  # general.architecture
    n_layer: int = 4
    n_embd: int = 256
    n_head: int = 8
    n_head_kv: int = 2
    head_dim: int = 32
    n_ff: int = 640
    rms_eps: float = 1e-6
    rope_base: float = 10000.0
    context_length: int = 4096
    qkv_bias: bool = False  # qwen2: attn_{q,k,v}.bias
    # attn_{q,k}_norm.weight: "head" = [head_dim], per head (qwen3); "full" = [n_head*head_dim] and
    # [n_head_kv*head_dim], one RMSNorm over the whole q / k row (olmoe)
    qk_norm: str = ""
    tied: bool = True  # no output.weight: the LM head is token_embd
    # HF config.rope_scaling as the converter reads it (rope_type: llama3 | linear | yarn), or None
    rope_scaling: dict = field(default_factory=dict)
    embd_std: float = EMBD_STD
    fused_qkv: bool = False  # phi3: attn_qkv.weight [q+k+v, n_embd] (numpy order), rows q, then k, then v
    fused_gate_up: bool = False  # phi3: ffn_up.weight [2 n_ff, n_embd], rows gate, then up
    sliding_window: int = 0  # {arch}.attention.sliding_window (0: not written)
    # MoE FFN (n_expert 0: dense everywhere). n_dense_lead: the first layers stay dense (afmoe).
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_expert_shared: int = 0  # afmoe: ffn_{gate,up,down}_shexp of width n_ff_exp * n_expert_shared
    n_dense_lead: int = 0
    router_gain: float = 1.0  # std of the router logits (rows of ffn_gate_inp . unit-RMS input)
    # expert e's matrices = sqrt(1 - s^2) * common + s * own (s = expert_spread): how much a change of
    # the chosen experts moves the output (see MODELS for why it is below 1)
    expert_spread: float = 1.0
    expert_bias_std: float = 0.0  # afmoe: exp_probs_b.bias (selection-only bias), 0 = none written
    route_norm: bool = False  # afmoe: expert_weights_norm
    route_scale: float = 0.0  # afmoe: expert_weights_scale (0: not written)
    attn_gate: bool = False  # afmoe: attn_gate.weight [n_head*head_dim, n_embd], o *= sigmoid(x Wg^T)
    sandwich_norm: bool = False  # afmoe: post_attention_norm / post_ffw_norm on each block's output
    weight_seed: int = 0  # added to write_model's seed (a model whose default draw routes a near-tie)


MODELS: dict[str, Spec] = {
    # Qwen2.5-0.5B-like: biases on q/k/v, tied embeddings, rope_theta 1e6
    "qwen2": Spec("qwen2", "qwen2", qkv_bias=True, tied=True, rope_base=1_000_000.0, context_length=32768),
    # Qwen3-like: QK-norm, head_dim 64 with 8 heads (q is 512 wide, n_embd 256), untied head
    "qwen3": Spec("qwen3", "qwen3", qk_norm="head", head_dim=64, tied=False, rope_base=1_000_000.0,
                  context_length=40960),
    # Llama-3.x-like scaling, with an original context of 64 (Llama 3.1 has 8192) so that the
    # scaled wavelengths fall inside a 64-token test sequence: the scaling visibly moves the logits.
    "llama_rope_llama3": Spec("llama_rope_llama3", "llama", rope_base=500000.0, context_length=512, tied=True,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
    "llama_rope_linear": Spec("llama_rope_linear", "llama", context_length=1024, tied=False,
                              rope_scaling={"rope_type": "linear", "factor": 4.0}),
    # Older conversions state only the factor: llama.cpp then takes the type as linear.
    "llama_rope_linear_untyped": Spec("llama_rope_linear_untyped", "llama", context_length=1024, tied=False,
                                      rope_scaling={"rope_type": "linear", "factor": 4.0, "omit_type": True}),
    "llama_rope_yarn": Spec("llama_rope_yarn", "llama", context_length=256, tied=False,
                            rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}),
    # Phi-3-mini-4k-like: fused q|k|v and gate|up, untied head, rms eps 1e-5; GQA as in Phi-3-medium
    # (so q, k, v widths differ: 256 | 64 | 64). sliding_window 2047 is written as the converter does;
    # llama.cpp turns Phi SWA off (with a warning) and the 48 test tokens never reach it anyway.
    "phi3": Spec("phi3", "phi3", fused_qkv=True, fused_gate_up=True, tied=False, rms_eps=1e-5,
                 sliding_window=2047),
    # SmolLM3-3B-like: layers 3 and 7 ((il + 1) % 4 == 0) have no RoPE (llama.cpp: a fixed step of 4)
    "smollm3": Spec("smollm3", "smollm3", n_layer=8, rope_base=5_000_000.0, context_length=65536, tied=True),
    # MoE models. Routing is a discrete choice: wherever the 4th and 5th expert score nearly tie (48
    # tokens x 3-4 layers give about 20 pairs within 1% of each other), llama.cpp's 8-bit activations
    # may pick the other expert, legitimately. With independent experts (expert_spread 1) one such
    # flip cost qwen3moe Q8_0 a position at KL 0.33 and afmoe Q8_0 mean KL 0.12 (max 0.77). Experts
    # that share 95% of their weights (spread 0.3) bring that to max KL 0.031 / 0.053 while every
    # routing mistake still lands far outside (top-1 routing: mean KL 0.42..1.0); F32 files, where
    # nothing flips, catch any expert-choice error at KL 1e-5 anyway. Router logits have std 2:
    # neither flat (renormalising or not must show) nor one-hot (the 4 used experts all count).
    # Qwen3-30B-A3B-like (feed_forward_length 640 is written but unused: every layer is MoE)
    "qwen3moe": Spec("qwen3moe", "qwen3moe", qk_norm="head", head_dim=64, tied=False, rope_base=1_000_000.0,
                     context_length=40960, n_expert=16, n_expert_used=4, n_ff_exp=128, router_gain=2.0,
                     expert_spread=0.3),
    # OLMoE-1B-7B-like: no GQA, experts of feed_forward_length (no expert_feed_forward_length key),
    # output.weight required by llama.cpp
    "olmoe": Spec("olmoe", "olmoe", n_head_kv=8, qk_norm="full", n_ff=128, tied=False, rms_eps=1e-5,
                  n_expert=16, n_expert_used=4, n_ff_exp=128, router_gain=2.0, expert_spread=0.3),
    # Arcee Trinity-like. Layers 0-2 slide (window 16 < the 48 test tokens) with RoPE, layer 3 is global
    # and NoPE; layer 0 dense, 1-3 MoE + shared expert. Embeddings are drawn 16x smaller since the muP
    # scale sqrt(n_embd) = 16 multiplies them back. Untied: a tied head would read those small rows.
    # weight_seed 1: seed 0 has a 4th/5th expert near-tie (0.7639 vs 0.7626, layer 1, position 21)
    # that the engine's f16 KV cache tips the other way on the Q8_0 file (llama.cpp's does not);
    # seeds 1, 2, 3 and 5 have none (F32 agrees to KL 1e-11 on seeds 0-5).
    "afmoe": Spec("afmoe", "afmoe", head_dim=64, qk_norm="head", tied=False, rms_eps=1e-5, context_length=4096,
                  embd_std=EMBD_STD / 16, attn_gate=True, sandwich_norm=True, sliding_window=16,
                  n_expert=16, n_expert_used=4, n_ff_exp=128, n_expert_shared=1, n_dense_lead=1,
                  router_gain=2.0, expert_spread=0.3, expert_bias_std=0.1, route_norm=True, route_scale=2.826, weight_seed=1),
}

# The engine gate each model belongs to (test_forward_synthetic.ENGINE_SUPPORTS).
GATE = {"qwen2": "qwen2", "qwen3": "qwen3", "llama_rope_llama3": "llama_rope_scaled",
        "llama_rope_linear": "llama_rope_scaled", "llama_rope_linear_untyped": "llama_rope_scaled",
        "llama_rope_yarn": "llama_rope_scaled", "phi3": "phi3", "smollm3": "smollm3", "qwen3moe": "qwen3moe",
        "olmoe": "olmoe", "afmoe": "afmoe"}


# ---- tokenizer ----------------------------------------------------------------------------------

_TOKENIZER_CACHE: dict = {}


def add_tokenizer(gw, tok: dict) -> None:
    """The tokenizer keys llama.cpp's converter writes for a GPT-2-style vocabulary (_set_vocab_gpt2 +
    SpecialVocab), from smollm2_tokenizer()'s dict, onto a gguf.GGUFWriter."""
    gw.add_tokenizer_model(tok["model"])
    gw.add_tokenizer_pre(tok["pre"])
    gw.add_token_list(tok["tokens"])
    gw.add_token_types(tok["token_type"])
    gw.add_token_merges(tok["merges"])
    gw.add_bos_token_id(tok["bos"])
    gw.add_eos_token_id(tok["eos"])
    gw.add_unk_token_id(tok["unk"])
    gw.add_pad_token_id(tok["pad"])
    gw.add_add_bos_token(False)


def smollm2_tokenizer(n_vocab: int | None = VOCAB_SIZE, source: Path = SMOLLM2_GGUF) -> dict:
    """tokenizer.ggml.* of SmolLM2 (a gguf-py reader of it takes seconds: cached), cut to N tokens."""
    if not source.is_file():
        raise FileNotFoundError(f"SmolLM2 GGUF not found at {source} (run `peregrine pull smollm2-135m`)")
    key = (str(source), n_vocab)
    if key in _TOKENIZER_CACHE:
        return _TOKENIZER_CACHE[key]
    r = gguf.GGUFReader(str(source))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    types = r.fields["tokenizer.ggml.token_type"].contents()
    merges = r.fields["tokenizer.ggml.merges"].contents()
    if n_vocab is not None:
        tokens, types = tokens[:n_vocab], types[:n_vocab]
        keep = set(tokens)
        merges = [m for m in merges if (lambda a, b: a in keep and b in keep and a + b in keep)(*m.split(" ", 1))]
    tok = {
        "model": r.fields["tokenizer.ggml.model"].contents(),  # gpt2
        "pre": r.fields["tokenizer.ggml.pre"].contents(),  # smollm
        "tokens": tokens,
        "token_type": types,
        "merges": merges,
        "bos": int(r.fields["tokenizer.ggml.bos_token_id"].contents()),
        "eos": int(r.fields["tokenizer.ggml.eos_token_id"].contents()),
        "unk": int(r.fields["tokenizer.ggml.unknown_token_id"].contents()),
        "pad": int(r.fields["tokenizer.ggml.padding_token_id"].contents()),
    }
    _TOKENIZER_CACHE[key] = tok
    return tok


# ---- RoPE scaling as the converter writes it --------------------------------------------------------


def llama3_rope_factors(head_dim: int, base: float, factor: float, low_freq_factor: float,
                        high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
    """rope_freqs.weight [head_dim/2] exactly as conversion/llama.py generate_extra_tensors computes
    it (torch float32 freqs, float32 per-element arithmetic): theta_j = pos * inv_freq_j / factors_j."""
    f32 = np.float32
    freqs = (f32(1.0) / (f32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / f32(head_dim)))).astype(np.float32)
    old = original_max_position_embeddings
    low_freq_wavelen = old / low_freq_factor
    high_freq_wavelen = old / high_freq_factor
    out = []
    for freq in freqs:
        wavelen = f32(2 * math.pi) / freq  # a float32 0-d tensor in the converter
        if wavelen < high_freq_wavelen:
            out.append(1.0)
        elif wavelen > low_freq_wavelen:
            out.append(factor)
        else:
            smooth = (f32(old) / wavelen - f32(low_freq_factor)) / f32(high_freq_factor - low_freq_factor)
            out.append(f32(1) / ((f32(1) - smooth) / f32(factor) + smooth))
    return np.asarray(out, dtype=np.float32)


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """The converter's LlamaModel.permute on a [n_head*head_dim, n_in] weight (or bias) of HF layout."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---- weights ---------------------------------------------------------------------------------------


def hf_weights(spec: Spec, n_vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights in HF layout under GGUF names ([out, in] matrices, numpy order).

    Scales keep activations O(1) through the 4 layers and give logits a spread of a few units, so
    neither attention nor the final softmax is flat or one-hot; norm weights are 1 +- noise so a
    skipped or misplaced norm shows; q/k biases (qwen2) and q/k norm weights (qwen3) are sized so
    that they change the attention pattern noticeably. (New features draw after the old ones in each
    layer, so the older models' weights stay what they were.)
    """
    rng = np.random.default_rng(seed)
    E, F, D = spec.n_embd, spec.n_ff, spec.head_dim
    Q, KV = spec.n_head * D, spec.n_head_kv * D
    X, FX = spec.n_expert, spec.n_ff_exp

    def mat(out_dim, in_dim, gain=1.0, lead=()):
        return (rng.standard_normal((*lead, out_dim, in_dim)) * gain / math.sqrt(in_dim)).astype(np.float32)

    def norm(n, spread=0.2):
        return (1.0 + spread * rng.standard_normal(n)).astype(np.float32)

    w: dict[str, np.ndarray] = {"token_embd.weight": (spec.embd_std * rng.standard_normal((n_vocab, E))).astype(np.float32)}
    for i in range(spec.n_layer):
        b = f"blk.{i}."
        w[b + "attn_norm.weight"] = norm(E)
        w[b + "attn_q.weight"] = mat(Q, E, QK_GAIN)
        w[b + "attn_k.weight"] = mat(KV, E, QK_GAIN)
        w[b + "attn_v.weight"] = mat(KV, E)
        if spec.qkv_bias:
            w[b + "attn_q.bias"] = (0.5 * rng.standard_normal(Q)).astype(np.float32)
            w[b + "attn_k.bias"] = (1.0 * rng.standard_normal(KV)).astype(np.float32)
            w[b + "attn_v.bias"] = (0.2 * rng.standard_normal(KV)).astype(np.float32)
        if spec.qk_norm:
            full = spec.qk_norm == "full"
            w[b + "attn_q_norm.weight"] = norm(Q if full else D, 0.5)
            w[b + "attn_k_norm.weight"] = norm(KV if full else D, 0.5)
        w[b + "attn_output.weight"] = mat(E, Q)
        w[b + "ffn_norm.weight"] = norm(E)
        if X and i >= spec.n_dense_lead:
            w[b + "ffn_gate_inp.weight"] = mat(X, E, spec.router_gain)
            sp = spec.expert_spread
            for t, (o, n) in (("gate", (FX, E)), ("up", (FX, E)), ("down", (E, FX))):
                own = mat(o, n, lead=(X,))
                w[b + f"ffn_{t}_exps.weight"] = own if sp == 1 else (math.sqrt(1 - sp * sp) * mat(o, n) + sp * own)
            if spec.expert_bias_std:
                w[b + "exp_probs_b.bias"] = (spec.expert_bias_std * rng.standard_normal(X)).astype(np.float32)
            if spec.n_expert_shared:
                FS = FX * spec.n_expert_shared
                w[b + "ffn_gate_shexp.weight"] = mat(FS, E)
                w[b + "ffn_up_shexp.weight"] = mat(FS, E)
                w[b + "ffn_down_shexp.weight"] = mat(E, FS)
        else:
            w[b + "ffn_gate.weight"] = mat(F, E)
            w[b + "ffn_up.weight"] = mat(F, E)
            w[b + "ffn_down.weight"] = mat(E, F)
        if spec.attn_gate:
            w[b + "attn_gate.weight"] = mat(Q, E)
        if spec.sandwich_norm:
            w[b + "post_attention_norm.weight"] = norm(E)
            w[b + "post_ffw_norm.weight"] = norm(E)
        if spec.fused_qkv:  # HF qkv_proj: q rows, then k, then v
            w[b + "attn_qkv.weight"] = np.concatenate([w.pop(b + f"attn_{t}.weight") for t in "qkv"])
        if spec.fused_gate_up:  # HF gate_up_proj, chunk(2) -> (gate, up)
            w[b + "ffn_up.weight"] = np.concatenate([w.pop(b + "ffn_gate.weight"), w.pop(b + "ffn_up.weight")])
    w["output_norm.weight"] = norm(E)
    if not spec.tied:
        w["output.weight"] = mat(n_vocab, E, OUT_GAIN)
    return w


def _is_quantized(name: str, a: np.ndarray) -> bool:
    # matrices and expert stacks; norms, biases, rope_freqs and (as llama.cpp's quantizer does) the router stay F32
    return a.ndim in (2, 3) and name.endswith(".weight") and not name.endswith("ffn_gate_inp.weight")


def write_model(model: str | Spec, path: str | Path, *, wtype: str = "F32", seed: int = 0,
                n_vocab: int | None = VOCAB_SIZE, omit: tuple[str, ...] = (),
                extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write MODEL (a name of MODELS or a Spec) to PATH as a GGUF; return PATH.

    wtype: "F32" or "Q8_0" (every matrix; token_embd included). omit: tensor names to leave out;
    extra: more tensors (name -> float32 array) -- both for bad-input tests.
    """
    spec = MODELS[model] if isinstance(model, str) else model
    if wtype not in ("F32", "Q8_0"):
        raise ValueError(f"wtype must be F32 or Q8_0, not {wtype!r}")
    tok = smollm2_tokenizer(n_vocab)
    nv = len(tok["tokens"])
    path = Path(path)
    arch = spec.arch
    w = hf_weights(spec, nv, seed + spec.weight_seed)

    rs = spec.rope_scaling
    rope_type = rs.get("rope_type")
    if arch in LLAMA_PERMUTED:  # the converter permutes q/k rows for adjacent-pair RoPE
        for i in range(spec.n_layer):
            for t, nh in (("attn_q", spec.n_head), ("attn_k", spec.n_head_kv)):
                for suffix in (".weight", ".bias"):
                    if f"blk.{i}.{t}{suffix}" in w:
                        w[f"blk.{i}.{t}{suffix}"] = permute_qk(w[f"blk.{i}.{t}{suffix}"], nh)
    tensors: dict[str, np.ndarray] = {"token_embd.weight": w.pop("token_embd.weight")}
    if rope_type == "llama3":
        tensors["rope_freqs.weight"] = llama3_rope_factors(
            spec.head_dim, spec.rope_base, rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"],
            rs["original_max_position_embeddings"])
    tensors.update(w)
    for name in omit:
        if name not in tensors:
            raise KeyError(f"cannot omit {name!r}: the model has no such tensor")
        del tensors[name]
    tensors.update(extra or {})

    gw = gguf.GGUFWriter(str(path), arch)  # writes general.architecture
    # llama.cpp sets Phi-3 token attributes when general.name contains "phi3" or "phi-3", looking up '</s>',
    # which our SmolLM2 vocabulary lacks: spell it "phi_3"
    gw.add_name(f"peregrine-synthetic-{spec.name}".replace("phi3", "phi_3"))
    gw.add_type(gguf.GGUFType.MODEL)
    # TextModel.set_gguf_parameters
    gw.add_block_count(spec.n_layer)
    gw.add_context_length(spec.context_length)
    gw.add_embedding_length(spec.n_embd)
    gw.add_feed_forward_length(spec.n_ff)
    gw.add_head_count(spec.n_head)
    gw.add_head_count_kv(spec.n_head_kv)
    if rope_type == "linear":
        if not rs.get("omit_type"):
            gw.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        gw.add_rope_scaling_factor(rs["factor"])
    elif rope_type == "yarn":
        gw.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        gw.add_rope_scaling_factor(rs["factor"])
        gw.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
    elif rope_type not in (None, "llama3"):  # llama3: only rope_freqs.weight, no metadata
        raise ValueError(f"unknown rope_type {rope_type!r}")
    gw.add_rope_freq_base(spec.rope_base)
    gw.add_layer_norm_rms_eps(spec.rms_eps)
    if spec.n_expert:  # TextModel: num_experts, num_experts_per_tok
        gw.add_expert_count(spec.n_expert)
        gw.add_expert_used_count(spec.n_expert_used)
    if arch == "afmoe":  # score_func "sigmoid"
        gw.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
    if spec.head_dim != spec.n_embd // spec.n_head:  # config.head_dim (Qwen3 always has one)
        gw.add_key_length(spec.head_dim)
        gw.add_value_length(spec.head_dim)
    gw.add_file_type(gguf.LlamaFileType.ALL_F32 if wtype == "F32" else gguf.LlamaFileType.MOSTLY_Q8_0)
    if arch in LLAMA_PERMUTED or arch == "afmoe":  # LlamaModel.set_gguf_parameters
        gw.add_vocab_size(nv)
        gw.add_rope_dimension_count(spec.head_dim)
    if arch == "phi3":  # Phi3MiniModel.set_gguf_parameters (no rope factors: a 4k model)
        gw.add_rope_scaling_orig_ctx_len(spec.context_length)
        gw.add_rope_dimension_count(spec.head_dim)
    if arch in ("qwen3moe", "afmoe"):  # moe_intermediate_size (olmoe's experts are intermediate_size wide)
        gw.add_expert_feed_forward_length(spec.n_ff_exp)
    if arch == "afmoe":  # AfmoeModel.set_gguf_parameters
        gw.add_expert_shared_count(spec.n_expert_shared)
        gw.add_leading_dense_block_count(spec.n_dense_lead)
        gw.add_expert_weights_norm(spec.route_norm)
        gw.add_expert_weights_scale(spec.route_scale)
    if spec.sliding_window:
        gw.add_sliding_window(spec.sliding_window)
    gw.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(gw, tok)

    return write_tensors(gw, path, tensors, wtype, _is_quantized)


def write_tensors(gw, path: Path, tensors: dict, wtype: str, is_quantized) -> Path:
    """Adds TENSORS (name -> float32 array) to the gguf.GGUFWriter, Q8_0 where wtype says so and
    is_quantized(name, array) agrees, and writes the file to PATH."""
    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        if wtype == "Q8_0" and is_quantized(name, a):
            gw.add_tensor(name, gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                          raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            gw.add_tensor(name, a)
    path.parent.mkdir(parents=True, exist_ok=True)
    gw.write_header_to_file()
    gw.write_kv_data_to_file()
    gw.write_tensors_to_file()
    gw.close()
    return path


def sample_tokens(n: int, seed: int = 0, n_vocab: int = VOCAB_SIZE) -> list[int]:
    """A test sequence: <|im_start|> (id 1), then ordinary (non-control) token ids, seeded."""
    rng = np.random.default_rng(1000 + seed)
    return [1] + [int(t) for t in rng.integers(N_SPECIAL, n_vocab, size=n - 1)]


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Write the synthetic GGUF models (F32 and Q8_0).")
    ap.add_argument("out_dir")
    ap.add_argument("--full-vocab", action="store_true", help="all 49152 SmolLM2 tokens")
    args = ap.parse_args()
    for name in MODELS:
        for wt in ("F32", "Q8_0"):
            p = write_model(name, Path(args.out_dir) / f"{name}-{wt}.gguf", wtype=wt,
                            n_vocab=None if args.full_vocab else VOCAB_SIZE)
            print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
