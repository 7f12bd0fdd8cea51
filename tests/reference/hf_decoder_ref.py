"""Independent numpy forward pass of GGUF `qwen2`, `qwen3`, `llama` (with RoPE scaling), `phi3`,
`smollm3`, `qwen3moe`, `olmoe` and `afmoe` models.

Written from Hugging Face transformers' definitions (modeling_qwen2.py, modeling_qwen3.py,
modeling_llama.py, modeling_rope_utils.py, modeling_phi3.py, modeling_smollm3.py,
modeling_qwen3_moe.py, modeling_olmoe.py, modeling_afmoe.py), not from llama.cpp's or the engine's
C++; a sibling of llama_ref.py (which stays the reference of the plain llama path and is not
changed). Everything runs in HF's layout and conventions:

    h = tok_embd[tokens] (* sqrt(n_embd): afmoe's muP scale)
    per block il:
        a = rmsnorm(h) * attn_norm
        q = a @ Wq.T + bq,  k = a @ Wk.T + bk,  v = a @ Wv.T + bv      # biases: qwen2 only
                                                                           # phi3: [Wq; Wk; Wv] = attn_qkv rows
        q, k = rmsnorm(q) * q_norm, rmsnorm(k) * k_norm                    # olmoe: over the whole q / k row
        q, k = rmsnorm_head(q) * q_norm, rmsnorm_head(k) * k_norm         # qwen3, qwen3moe, afmoe: per head
        q, k = q*cos + rotate_half(q)*sin, ...                             # rotate_half: (x[j], x[j + D/2]) pairs
                                                                           # smollm3, afmoe: not when (il+1) % 4 == 0
        o = causal_softmax(q k^T / sqrt(head_dim)) v                       # query head h reads KV head h // (H / H_kv)
                                                                           # afmoe sliding layers: q - k < window
        o = o * sigmoid(a @ Wgate_attn.T)                                  # afmoe only
        h = h + post_attn_norm(o @ Wo.T)                                   # post norm: afmoe only
        f = rmsnorm(h) * ffn_norm
        h = h + post_ffn_norm(ffn(f))
    logits = (rmsnorm(h) * output_norm) @ W_out.T                          # W_out = output.weight, else tok_embd

    ffn(f) = swiglu(f) = (silu(f @ Wgate.T) * (f @ Wup.T)) @ Wdown.T      # phi3: [Wgate; Wup] = ffn_up rows
    MoE layers (qwen3moe, olmoe, afmoe from leading_dense_block_count on), per token:
        s = softmax(f @ Wrouter.T)  (afmoe: sigmoid)
        experts = top_k(s + exp_probs_b)   (bias only for selection: afmoe)
        w = s[experts];  w /= sum(w) (qwen3moe; afmoe: expert_weights_norm; olmoe: never);  w *= route scale (afmoe)
        ffn(f) = sum_e w_e * swiglu_e(f)  (+ swiglu_shared(f): afmoe)

GGUF -> HF layout. qwen2/qwen3/qwen3moe/phi3/olmoe/afmoe GGUF rows ARE HF rows (the converter does
not permute them). llama / smollm3 GGUF q/k rows were permuted per head by the converter
(LlamaModel.permute); `unpermute_rows` undoes that, so rotate_half applies to them exactly as to Qwen
(llama_ref.py takes the other road: the adjacent-pair rotation on GGUF rows; the two are proven equal
there).

Where llama.cpp fixes what HF configures (the oracle's reading is the one GGUF files mean):
  - qwen3moe always renormalises the top-k weights (HF: config.norm_topk_prob, true in Qwen3-MoE);
    olmoe never does (HF: norm_topk_prob, false in OLMoE).
  - smollm3 / afmoe: no RoPE on layer il when (il + 1) % 4 == 0 (HF: config.no_rope_layers /
    layer_types, whose defaults are this rule); afmoe's sliding layers are il % 4 < 3 (layer_types
    with global_attn_every_n_layers 4), window {arch}.attention.sliding_window; its muP embedding
    scale is unconditional (HF: config.mup_enabled, true in Trinity).
  - phi3's {arch}.attention.sliding_window is ignored (llama.cpp disables Phi SWA).

RoPE frequencies (modeling_rope_utils.py), from the GGUF metadata:
    default  inv_freq_j = base^(-2j/D)
    linear   inv_freq / factor                                         ({arch}.rope.scaling.type = linear)
    llama3   inv_freq / rope_freqs.weight[j]  (the file stores the converter's factors, see
             `hf_llama3_inv_freq` for HF's _compute_llama3_parameters, which a test compares)
    yarn     _compute_yarn_parameters: blend of inv_freq (extrapolation) and inv_freq / factor
             (interpolation) with a linear ramp between the correction dims of beta_fast = 32 and
             beta_slow = 1 (HF's defaults, and all llama.cpp uses for these archs) at
             original_context_length; cos and sin are multiplied by attention_factor =
             0.1 ln(factor) + 1.
    ({arch}.rope.scaling.attn_factor, when present, multiplies cos and sin as well: llama.cpp's
    rope_attn_factor.)

Matmuls run in float32 on float32 weights (dequantized once with gguf-py); norms, RoPE, attention
and softmax in float64.

Standalone:
    python tests/reference/hf_decoder_ref.py MODEL.gguf --prompt-ids 1,2,3   # argmax per position
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

import gguf
import numpy as np

ARCHS = ("llama", "qwen2", "qwen3", "phi3", "smollm3", "qwen3moe", "olmoe", "afmoe")
ROW_PERMUTED = ("llama", "smollm3")  # q/k rows permuted by the converter (llama.cpp: NORM RoPE)
NOPE_STEP = {"smollm3": 4, "afmoe": 4}  # layer il has no RoPE when (il + 1) % step == 0
SWA_PATTERN = {"afmoe": 4}  # with a sliding window: layer il slides when il % pattern < pattern - 1
QK_NORM = {"qwen3": "head", "qwen3moe": "head", "afmoe": "head", "olmoe": "full"}

# Deliberate mistakes (to show the comparison tolerances catch each of them).
ABLATIONS = frozenset({
    "no_rope_scaling",  # RoPE as if the file had no scaling (no rope_freqs, factor, yarn ramp/mscale)
    "no_yarn_mscale",  # yarn frequencies but cos/sin not multiplied by attention_factor
    "yarn_ramp_on_dims",  # yarn ramp evaluated at dimension 2j instead of pair j
    "rope_freqs_multiply",  # llama3: inv_freq * rope_freqs instead of / (the factors' inverse)
    "rope_adjacent",  # adjacent-pair rotation on HF rows (qwen: wrong style; llama: forgetting the un-permute)
    "no_qkv_bias",  # qwen2: drop the q/k/v biases
    "no_qk_norm",  # qwen3: skip the per-head q/k RMSNorm
    "qk_norm_after_rope",  # qwen3: the norm after RoPE instead of before
    "qk_norm_per_head",  # olmoe: RMSNorm per head (the [n_head*D] weight cut into heads), not over the row
    "gate_up_swapped",  # silu on the up half, gate half linear (phi3: fused ffn_up halves read up, gate)
    "qkv_v_before_k",  # phi3: the fused attn_qkv rows read as q, v, k
    "rope_every_layer",  # smollm3 / afmoe: RoPE on the NoPE layers too
    "moe_renorm_inverted",  # renormalise the top-k weights where the arch does not, or not where it does
    "moe_top1",  # route each token to its top expert only (weights computed as usual)
    "moe_softmax",  # afmoe: softmax router scores instead of sigmoid
    "no_expert_bias",  # afmoe: select experts without exp_probs_b
    "no_route_scale",  # afmoe: weights not multiplied by expert_weights_scale
    "no_shared_expert",  # afmoe: drop the shared expert
    "no_attn_gate",  # afmoe: attention output not gated
    "no_sandwich_norm",  # afmoe: skip post_attention_norm / post_ffw_norm
    "no_embd_scale",  # afmoe: embeddings not multiplied by sqrt(n_embd)
    "no_sliding_window",  # afmoe: full causal attention on the sliding layers
})


@dataclass(frozen=True)
class Config:
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    rms_eps: float
    rope_base: float
    context_length: int
    rope_scaling_type: str  # none | linear | yarn | llama3 (rope_freqs.weight present)
    rope_factor: float  # linear / yarn factor (1.0 when none)
    rope_orig_ctx: int  # yarn's original_context_length
    rope_attn_factor: float  # {arch}.rope.scaling.attn_factor (1.0 when absent)
    qk_norm: str = ""  # "" | "head" (per head, [D]) | "full" (over the q / k row, [H*D] / [H_kv*D])
    n_expert: int = 0  # {arch}.expert_count (0: dense FFN)
    n_expert_used: int = 0  # {arch}.expert_used_count (top-k)
    n_ff_exp: int = 0  # expert width: {arch}.expert_feed_forward_length (olmoe: feed_forward_length)
    n_expert_shared: int = 0  # {arch}.expert_shared_count (afmoe): one shared FFN n_ff_exp * this wide
    n_dense_lead: int = 0  # {arch}.leading_dense_block_count (afmoe): the first layers are dense
    gating: str = "softmax"  # router score: softmax | sigmoid ({arch}.expert_gating_func 1 | 2)
    norm_topk: bool = False  # renormalise the top-k weights to sum 1
    route_scale: float = 1.0  # {arch}.expert_weights_scale (afmoe)
    n_swa: int = 0  # sliding window of the sliding layers (afmoe: {arch}.attention.sliding_window)
    embd_scale: float = 1.0  # afmoe: sqrt(n_embd)


def _get(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError(f"GGUF metadata key {key!r} missing")
        return default
    return f.contents()


def read_config(reader: gguf.GGUFReader) -> Config:
    arch = _get(reader, "general.architecture")
    if arch not in ARCHS:
        raise ValueError(f"hf_decoder_ref handles {ARCHS}, not general.architecture {arch!r}")
    p = arch + "."
    n_embd = int(_get(reader, p + "embedding_length"))
    n_head = int(_get(reader, p + "attention.head_count"))
    head_dim = int(_get(reader, p + "attention.key_length", n_embd // n_head))
    if int(_get(reader, p + "attention.value_length", head_dim)) != head_dim:
        raise ValueError("value_length != key_length is not handled")
    if int(_get(reader, p + "rope.dimension_count", head_dim)) != head_dim:
        raise ValueError("partial RoPE (rope.dimension_count < head_dim) is not handled")
    n_ctx = int(_get(reader, p + "context_length"))
    has_freqs = any(t.name == "rope_freqs.weight" for t in reader.tensors)
    stype = str(_get(reader, p + "rope.scaling.type", "none"))
    factor = float(_get(reader, p + "rope.scaling.factor", 0.0)) or 1.0
    if has_freqs:
        if stype not in ("none",):
            raise ValueError(f"rope_freqs.weight together with rope.scaling.type {stype!r}")
        stype = "llama3"
    if stype not in ("none", "linear", "yarn", "llama3"):
        raise ValueError(f"rope.scaling.type {stype!r} not handled")
    if stype == "none" and factor != 1.0:
        stype = "linear"  # llama.cpp's default type when only a factor is given
    n_ff = int(_get(reader, p + "feed_forward_length"))
    n_expert = int(_get(reader, p + "expert_count", 0)) if arch in ("qwen3moe", "olmoe", "afmoe") else 0
    n_used = int(_get(reader, p + "expert_used_count", 0)) if n_expert else 0
    if n_expert and not 0 < n_used <= n_expert:
        raise ValueError(f"expert_used_count {n_used} with expert_count {n_expert}")
    if arch == "olmoe":
        n_ff_exp = n_ff
    elif arch == "qwen3moe":  # llama.cpp's fallback when the key is absent
        n_ff_exp = int(_get(reader, p + "expert_feed_forward_length", 0)) or n_ff // n_used
    else:
        n_ff_exp = int(_get(reader, p + "expert_feed_forward_length")) if n_expert else 0
    afmoe = arch == "afmoe"
    gating = {1: "softmax", 2: "sigmoid"}[int(_get(reader, p + "expert_gating_func", 2))] if afmoe else "softmax"
    if afmoe and p + "attention.sliding_window_pattern" in reader.fields:
        raise ValueError("afmoe with attention.sliding_window_pattern is not handled (the default 4 is)")
    return Config(
        arch=arch,
        n_layer=int(_get(reader, p + "block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(_get(reader, p + "attention.head_count_kv", n_head)),
        head_dim=head_dim,
        n_ff=n_ff,
        n_vocab=len(reader.fields["tokenizer.ggml.tokens"].data),
        rms_eps=float(_get(reader, p + "attention.layer_norm_rms_epsilon")),
        rope_base=float(_get(reader, p + "rope.freq_base", 10000.0)),
        context_length=n_ctx,
        rope_scaling_type=stype,
        rope_factor=factor,
        rope_orig_ctx=int(_get(reader, p + "rope.scaling.original_context_length", n_ctx)),
        rope_attn_factor=float(_get(reader, p + "rope.scaling.attn_factor", 1.0)),
        qk_norm=QK_NORM.get(arch, ""),
        n_expert=n_expert,
        n_expert_used=n_used,
        n_ff_exp=n_ff_exp,
        n_expert_shared=int(_get(reader, p + "expert_shared_count", 0)) if afmoe else 0,
        n_dense_lead=int(_get(reader, p + "leading_dense_block_count", 0)) if afmoe else 0,
        gating=gating,
        # HF AfmoeTokenChoiceRouter normalises only sigmoid scores (llama.cpp would normalise softmax too)
        norm_topk=arch == "qwen3moe" or (afmoe and bool(_get(reader, p + "expert_weights_norm", False))
                                         and gating == "sigmoid"),
        route_scale=(float(_get(reader, p + "expert_weights_scale", 0.0)) or 1.0) if afmoe else 1.0,
        n_swa=int(_get(reader, p + "attention.sliding_window", 0)) if afmoe else 0,
        embd_scale=math.sqrt(n_embd) if afmoe else 1.0,
    )


def tensor_to_f32(t: gguf.ReaderTensor) -> np.ndarray:
    """Dequantize a GGUF tensor with gguf-py; numpy order (ggml's dims reversed)."""
    shape = tuple(int(d) for d in reversed(t.shape))
    if t.tensor_type == gguf.GGMLQuantizationType.F32:
        out = np.asarray(t.data, dtype=np.float32)
    else:
        out = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)


# ---- RoPE parameters as transformers computes them ---------------------------------------------------


def default_inv_freq(head_dim: int, base: float) -> np.ndarray:
    return 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))


def hf_llama3_inv_freq(head_dim: int, base: float, factor: float, low_freq_factor: float,
                       high_freq_factor: float, original_max_position_embeddings: int) -> np.ndarray:
    """transformers' _compute_llama3_parameters (float64 here)."""
    inv_freq = default_inv_freq(head_dim, base)
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * inv_freq_llama / factor + smooth * inv_freq_llama
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, inv_freq_llama)


def hf_yarn_inv_freq(head_dim: int, base: float, factor: float, original_max_position_embeddings: int,
                     beta_fast: float = 32.0, beta_slow: float = 1.0,
                     ramp_on_dims: bool = False) -> tuple[np.ndarray, float]:
    """transformers' _compute_yarn_parameters (truncate=True, no mscale keys): (inv_freq, attention_factor).

    ramp_on_dims: a deliberate mistake (the ramp read at dimension 2j instead of pair j)."""
    def get_mscale(scale, mscale=1.0):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = get_mscale(factor)
    pos_freqs = base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    inv_freq_extrapolation = 1.0 / pos_freqs
    inv_freq_interpolation = 1.0 / (factor * pos_freqs)

    def find_correction_dim(num_rotations):
        return (head_dim * math.log(original_max_position_embeddings / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low = max(math.floor(find_correction_dim(beta_fast)), 0)
    high = min(math.ceil(find_correction_dim(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001  # prevent singularity
    j = np.arange(head_dim // 2, dtype=np.float64) * (2 if ramp_on_dims else 1)
    ramp = np.clip((j - low) / (high - low), 0, 1)
    extrapolation_factor = 1 - ramp
    inv_freq = inv_freq_interpolation * (1 - extrapolation_factor) + inv_freq_extrapolation * extrapolation_factor
    return inv_freq, attention_factor


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def unpermute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo the converter's LlamaModel.permute on the rows (first axis) of a llama q/k weight or bias."""
    rows = w.shape[0]
    d = rows // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---- the model ---------------------------------------------------------------------------------------


@dataclass
class Layer:
    attn_norm: np.ndarray
    wq: np.ndarray  # [n_head*D, n_embd], HF row order
    wk: np.ndarray
    wv: np.ndarray
    wo: np.ndarray  # [n_embd, n_head*D]
    bq: np.ndarray | None
    bk: np.ndarray | None
    bv: np.ndarray | None
    q_norm: np.ndarray | None  # [D] per head, or [n_head*D] over the row (Config.qk_norm)
    k_norm: np.ndarray | None
    ffn_norm: np.ndarray
    w_gate: np.ndarray | None  # dense FFN [n_ff, n_embd] (None in a MoE layer)
    w_up: np.ndarray | None
    w_down: np.ndarray | None  # [n_embd, n_ff]
    attn_gate: np.ndarray | None = None  # afmoe [n_head*D, n_embd]
    attn_post_norm: np.ndarray | None = None  # afmoe [n_embd]
    ffn_post_norm: np.ndarray | None = None
    router: np.ndarray | None = None  # MoE [n_expert, n_embd]
    exp_bias: np.ndarray | None = None  # afmoe [n_expert], added to the scores for selection only
    gate_exps: np.ndarray | None = None  # [n_expert, n_ff_exp, n_embd]
    up_exps: np.ndarray | None = None
    down_exps: np.ndarray | None = None  # [n_expert, n_embd, n_ff_exp]
    shared: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # afmoe (gate, up, down) of the shared expert


@dataclass
class DecoderRef:
    cfg: Config
    tok_embd: np.ndarray
    layers: list[Layer]
    output_norm: np.ndarray
    output: np.ndarray
    rope_freqs: np.ndarray | None  # llama3 factors from the file
    ablate: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def load(cls, source) -> "DecoderRef":
        reader = source if isinstance(source, gguf.GGUFReader) else gguf.GGUFReader(str(source))
        cfg = read_config(reader)
        by_name = {t.name: t for t in reader.tensors}
        E, F, D = cfg.n_embd, cfg.n_ff, cfg.head_dim
        Q, KV = cfg.n_head * D, cfg.n_head_kv * D
        X, FX = cfg.n_expert, cfg.n_ff_exp

        def w(name, shape, required=True):
            if name not in by_name:
                if required:
                    raise KeyError(f"tensor {name!r} missing")
                return None
            a = tensor_to_f32(by_name[name])
            if a.shape != shape:
                raise ValueError(f"tensor {name!r} has shape {a.shape}, expected {shape}")
            return a

        permuted, afmoe = cfg.arch in ROW_PERMUTED, cfg.arch == "afmoe"
        full_norm = cfg.qk_norm == "full"
        layers = []
        for i in range(cfg.n_layer):
            b = f"blk.{i}."
            if cfg.arch == "phi3":  # qkv_proj: q rows, then k, then v
                wq, wk, wv = np.split(w(b + "attn_qkv.weight", (Q + 2 * KV, E)), [Q, Q + KV])
            else:
                wq, wk, wv = w(b + "attn_q.weight", (Q, E)), w(b + "attn_k.weight", (KV, E)), w(b + "attn_v.weight", (KV, E))
            bq = w(b + "attn_q.bias", (Q,), required=False)  # qwen2's biases are optional, as in llama.cpp
            bk = w(b + "attn_k.bias", (KV,), required=False)
            if permuted:  # back to HF row order (biases, if any, were permuted the same way)
                wq, wk = unpermute_rows(wq, cfg.n_head), unpermute_rows(wk, cfg.n_head_kv)
                bq = None if bq is None else unpermute_rows(bq, cfg.n_head)
                bk = None if bk is None else unpermute_rows(bk, cfg.n_head_kv)
            qk = bool(cfg.qk_norm)
            L = Layer(
                attn_norm=w(b + "attn_norm.weight", (E,)),
                wq=wq, wk=wk, wv=wv, wo=w(b + "attn_output.weight", (E, Q)),
                bq=bq, bk=bk, bv=w(b + "attn_v.bias", (KV,), required=False),
                q_norm=w(b + "attn_q_norm.weight", (Q if full_norm else D,)) if qk else None,
                k_norm=w(b + "attn_k_norm.weight", (KV if full_norm else D,)) if qk else None,
                ffn_norm=w(b + "ffn_norm.weight", (E,)),
                w_gate=None, w_up=None, w_down=None,
            )
            if X and i >= cfg.n_dense_lead:
                L.router = w(b + "ffn_gate_inp.weight", (X, E))
                L.gate_exps, L.up_exps = w(b + "ffn_gate_exps.weight", (X, FX, E)), w(b + "ffn_up_exps.weight", (X, FX, E))
                L.down_exps = w(b + "ffn_down_exps.weight", (X, E, FX))
                if afmoe:
                    L.exp_bias = w(b + "exp_probs_b.bias", (X,))
                if cfg.n_expert_shared:
                    FS = FX * cfg.n_expert_shared
                    L.shared = (w(b + "ffn_gate_shexp.weight", (FS, E)), w(b + "ffn_up_shexp.weight", (FS, E)),
                                w(b + "ffn_down_shexp.weight", (E, FS)))
            elif cfg.arch == "phi3":  # gate_up_proj: gate rows, then up (chunk(2) in Phi3MLP)
                L.w_gate, L.w_up = np.split(w(b + "ffn_up.weight", (2 * F, E)), 2)
                L.w_down = w(b + "ffn_down.weight", (E, F))
            else:
                L.w_gate, L.w_up = w(b + "ffn_gate.weight", (F, E)), w(b + "ffn_up.weight", (F, E))
                L.w_down = w(b + "ffn_down.weight", (E, F))
            if afmoe:
                L.attn_gate = w(b + "attn_gate.weight", (Q, E))
                L.attn_post_norm = w(b + "post_attention_norm.weight", (E,))
                L.ffn_post_norm = w(b + "post_ffw_norm.weight", (E,))
            layers.append(L)
        tok = w("token_embd.weight", (cfg.n_vocab, E))
        out = w("output.weight", (cfg.n_vocab, E), required=cfg.arch == "olmoe")  # llama.cpp's olmoe needs one
        freqs = w("rope_freqs.weight", (D // 2,), required=False)
        return cls(cfg, tok, layers, w("output_norm.weight", (E,)), tok if out is None else out, freqs)

    def with_ablation(self, *names: str) -> "DecoderRef":
        unknown = set(names) - ABLATIONS
        if unknown:
            raise ValueError(f"unknown ablation(s) {sorted(unknown)}; known: {sorted(ABLATIONS)}")
        return DecoderRef(self.cfg, self.tok_embd, self.layers, self.output_norm, self.output, self.rope_freqs,
                          frozenset(names))

    # ---- RoPE ------------------------------------------------------------------------------------

    def inv_freq_and_scale(self) -> tuple[np.ndarray, float]:
        c = self.cfg
        inv = default_inv_freq(c.head_dim, c.rope_base)
        if "no_rope_scaling" in self.ablate:
            return inv, 1.0
        scale = c.rope_attn_factor
        if c.rope_scaling_type == "linear":
            inv = inv / c.rope_factor
        elif c.rope_scaling_type == "llama3":
            if "rope_freqs_multiply" in self.ablate:
                inv = inv * self.rope_freqs.astype(np.float64)
            else:
                inv = inv / self.rope_freqs.astype(np.float64)
        elif c.rope_scaling_type == "yarn":
            inv, attention_factor = hf_yarn_inv_freq(c.head_dim, c.rope_base, c.rope_factor, c.rope_orig_ctx,
                                                     ramp_on_dims="yarn_ramp_on_dims" in self.ablate)
            if "no_yarn_mscale" not in self.ablate:
                scale *= attention_factor
        return inv, scale

    def rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """x: [n_tok, heads, D] in HF row order."""
        inv, scale = self.inv_freq_and_scale()
        ang = pos.astype(np.float64)[:, None] * inv[None, :]  # [n_tok, D/2]
        if "rope_adjacent" in self.ablate:
            cos, sin = (np.cos(ang) * scale)[:, None, :], (np.sin(ang) * scale)[:, None, :]
            out = np.empty_like(x)
            x0, x1 = x[..., 0::2], x[..., 1::2]
            out[..., 0::2] = x0 * cos - x1 * sin
            out[..., 1::2] = x0 * sin + x1 * cos
            return out
        emb = np.concatenate([ang, ang], axis=-1)  # HF: emb = cat(freqs, freqs)
        cos, sin = (np.cos(emb) * scale)[:, None, :], (np.sin(emb) * scale)[:, None, :]
        return x * cos + rotate_half(x) * sin

    # ---- blocks ----------------------------------------------------------------------------------

    def rmsnorm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.cfg.rms_eps) * weight

    def uses_rope(self, il: int) -> bool:
        step = NOPE_STEP.get(self.cfg.arch, 0)
        return not step or (il + 1) % step != 0 or "rope_every_layer" in self.ablate

    def window(self, il: int) -> int:
        """The sliding window of layer IL (0: full causal attention)."""
        pattern = SWA_PATTERN.get(self.cfg.arch, 0)
        if not (self.cfg.n_swa and pattern) or "no_sliding_window" in self.ablate:
            return 0
        return self.cfg.n_swa if il % pattern < pattern - 1 else 0

    def attention(self, q, k, v, window: int = 0) -> np.ndarray:
        c = self.cfg
        n = q.shape[0]
        kv_of = np.arange(c.n_head) // (c.n_head // c.n_head_kv)  # HF repeat_kv
        qh, kh, vh = q.transpose(1, 0, 2), k[:, kv_of].transpose(1, 0, 2), v[:, kv_of].transpose(1, 0, 2)
        scores = qh @ kh.transpose(0, 2, 1) / math.sqrt(c.head_dim)
        masked = np.triu(np.ones((n, n), dtype=bool), k=1)
        if window:  # HF sliding_window: key j visible to query i when i - j < window
            masked |= np.tril(np.ones((n, n), dtype=bool), k=-window)
        scores = np.where(masked, -np.inf, scores)
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        return (p @ vh).transpose(1, 0, 2).reshape(n, c.n_head * c.head_dim)

    def swiglu(self, f: np.ndarray, w_gate, w_up, w_down) -> np.ndarray:
        """float32 f [n, n_embd] -> float64 [n, n_embd]."""
        g, u = (f @ w_gate.T).astype(np.float64), (f @ w_up.T).astype(np.float64)
        if "gate_up_swapped" in self.ablate:
            g, u = u, g
        act = (g / (1.0 + np.exp(-g)) * u).astype(np.float32)
        return (act @ w_down.T).astype(np.float64)

    def moe(self, L: Layer, f: np.ndarray) -> np.ndarray:
        """The routed experts (+ the shared one) on float32 f [n, n_embd] -> float64 [n, n_embd]."""
        c, ab = self.cfg, self.ablate
        logits = (f @ L.router.T).astype(np.float64)  # [n, n_expert]
        if c.gating == "sigmoid" and "moe_softmax" not in ab:
            scores = 1.0 / (1.0 + np.exp(-logits))
        else:
            e = np.exp(logits - logits.max(axis=-1, keepdims=True))
            scores = e / e.sum(axis=-1, keepdims=True)
        select = scores if L.exp_bias is None or "no_expert_bias" in ab else scores + L.exp_bias
        k = 1 if "moe_top1" in ab else c.n_expert_used
        chosen = np.argsort(-select, axis=-1, kind="stable")[:, :k]  # [n, k]
        weights = np.take_along_axis(scores, chosen, axis=-1)
        if c.norm_topk != ("moe_renorm_inverted" in ab):
            weights = weights / weights.sum(axis=-1, keepdims=True)
        if "no_route_scale" not in ab:
            weights = weights * c.route_scale
        out = np.zeros((f.shape[0], c.n_embd))
        for e in np.unique(chosen):
            rows, slot = np.nonzero(chosen == e)
            out[rows] += weights[rows, slot][:, None] * self.swiglu(f[rows], L.gate_exps[e], L.up_exps[e], L.down_exps[e])
        if L.shared is not None and "no_shared_expert" not in ab:
            out += self.swiglu(f, *L.shared)
        return out

    def qk_norm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """olmoe's row-wide norm of x [n, heads, D] (weight [heads*D]), or its per-head ablation."""
        n, heads, d = x.shape
        if "qk_norm_per_head" in self.ablate:
            return self.rmsnorm(x, weight.reshape(heads, d))
        return self.rmsnorm(x.reshape(n, heads * d), weight).reshape(n, heads, d)

    def block(self, L: Layer, h: np.ndarray, pos: np.ndarray, il: int = 0) -> np.ndarray:
        c, ab = self.cfg, self.ablate
        n = h.shape[0]
        a = self.rmsnorm(h, L.attn_norm).astype(np.float32)
        wk, wv = (L.wv, L.wk) if "qkv_v_before_k" in ab else (L.wk, L.wv)
        q, k, v = (a @ L.wq.T).astype(np.float64), (a @ wk.T).astype(np.float64), (a @ wv.T).astype(np.float64)
        if "no_qkv_bias" not in ab:
            q = q if L.bq is None else q + L.bq
            k = k if L.bk is None else k + L.bk
            v = v if L.bv is None else v + L.bv
        q = q.reshape(n, c.n_head, c.head_dim)
        k = k.reshape(n, c.n_head_kv, c.head_dim)
        v = v.reshape(n, c.n_head_kv, c.head_dim)
        qk_norm = L.q_norm is not None and "no_qk_norm" not in ab
        late_norm = "qk_norm_after_rope" in ab
        if qk_norm and c.qk_norm == "full":
            q, k = self.qk_norm(q, L.q_norm), self.qk_norm(k, L.k_norm)
        elif qk_norm and not late_norm:
            q, k = self.rmsnorm(q, L.q_norm), self.rmsnorm(k, L.k_norm)
        if self.uses_rope(il):
            q, k = self.rope(q, pos), self.rope(k, pos)
        if qk_norm and late_norm:
            q, k = self.rmsnorm(q, L.q_norm), self.rmsnorm(k, L.k_norm)
        o = self.attention(q, k, v, self.window(il))
        if L.attn_gate is not None and "no_attn_gate" not in ab:
            o = o / (1.0 + np.exp(-(a @ L.attn_gate.T).astype(np.float64)))
        o = (o.astype(np.float32) @ L.wo.T).astype(np.float64)
        post = L.attn_post_norm is not None and "no_sandwich_norm" not in ab
        h = h + (self.rmsnorm(o, L.attn_post_norm) if post else o)
        f = self.rmsnorm(h, L.ffn_norm).astype(np.float32)
        y = self.moe(L, f) if L.router is not None else self.swiglu(f, L.w_gate, L.w_up, L.w_down)
        return h + (self.rmsnorm(y, L.ffn_post_norm) if post else y)

    def logits(self, tokens) -> np.ndarray:
        """float32 [n_tok, n_vocab] for one sequence from an empty cache."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0 or tokens.min() < 0 or tokens.max() >= self.cfg.n_vocab:
            raise ValueError(f"tokens must be a non-empty list of ids in [0, {self.cfg.n_vocab})")
        pos = np.arange(tokens.size)
        h = self.tok_embd[tokens].astype(np.float64)
        if "no_embd_scale" not in self.ablate:
            h = h * self.cfg.embd_scale
        for il, L in enumerate(self.layers):
            h = self.block(L, h, pos, il)
        return self.rmsnorm(h, self.output_norm).astype(np.float32) @ self.output.T


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    args = ap.parse_args(argv)
    ref = DecoderRef.load(args.model)
    lg = ref.logits([int(s) for s in args.prompt_ids.split(",") if s.strip()])
    print(ref.cfg)
    print("argmax per position:", " ".join(str(int(i)) for i in lg.argmax(axis=-1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
