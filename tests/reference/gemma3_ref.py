"""Independent numpy forward pass of a GGUF `gemma3` (Gemma 3 text) model: the test oracle.

Written from the published definition (Hugging Face transformers `models/gemma3/modeling_gemma3.py`,
`configuration_gemma3.py`, `masking_utils.py`) and llama.cpp's GGUF conventions for gemma3
(`convert_hf_to_gguf.py` class Gemma3Model, gguf-py `tensor_mapping.py`), not from the engine's C++:

    h = tok_embd[tokens] * sqrt(n_embd)                              # [n_tok, n_embd]
    per block l (local = sliding window, global = full causal):
        a = rmsnorm(h) * attn_norm
        q, k, v = a Wq^T, a Wk^T, a Wv^T                             # [n_tok, n_head|n_head_kv, head_dim]
        q, k = rmsnorm_per_head(q) * attn_q_norm, rmsnorm_per_head(k) * attn_k_norm
        q, k = rope_neox(q, base_l), rope_neox(k, base_l)           # rotate_half: dim j with j + D/2
        o = softmax(q k^T / sqrt(query_pre_attn_scalar) + mask_l) v  # query head h reads KV head h // group
        h = h + rmsnorm(o Wo^T) * post_attention_norm
        f = rmsnorm(h) * ffn_norm
        h = h + rmsnorm((gelu_tanh(f Wgate^T) * (f Wup^T)) Wdown^T) * post_ffw_norm
    logits = (rmsnorm(h) * output_norm) tok_embd^T                  # tied output (no output.weight)

Details, each with its source:
  - RMSNorm. HF Gemma3RMSNorm computes x / sqrt(mean(x^2) + eps) * (1 + w) in float32. llama.cpp's
    converter writes `w + 1` into the GGUF (Gemma3Model.norm_shift = 1.0, applied to every tensor
    whose name ends in "norm.weight": the four block norms, q_norm/k_norm and the final norm).
    Checked on gemma-3-270m: all 55,936 values of its 109 norm tensors, minus 1, are exactly
    representable in bfloat16 (the checkpoint's type) while only 75% of the stored values are, and
    attn_norm/ffn_norm/output_norm are never negative (min 0.0 = raw -1). So the stored weight is
    the whole multiplier: no "+1" here (ablation "norm_plus_one" adds it a second time).
  - Embedding scale. HF Gemma3TextScaledWordEmbedding multiplies by hidden_size**0.5 cast to the
    weight dtype; in float32 that is sqrt(640) = 25.2982 (llama.cpp: ggml_scale by sqrtf(n_embd)).
    A bfloat16 HF run rounds it to 25.25 (HF's own comment: sqrt(3072) = 55.4256 becomes 55.5);
    we use the exact value ("embed_scale_bf16" ablation: the bf16 value, a tiny change).
  - Layer pattern. HF Gemma3TextConfig: layer_types[i] = "sliding_attention" if (i + 1) %
    sliding_window_pattern else "full_attention", sliding_window_pattern default 6 (5 local then 1
    global; layers 5, 11, 17 are global in an 18-layer model). llama.cpp: set_swa_pattern(6). A
    GGUF key `gemma3.attention.sliding_window_pattern` (bool per layer) overrides it if present.
  - RoPE. Local layers base `rope_local_base_freq` = 10000 (HF default; llama.cpp hard-codes
    rope_freq_base_train_swa = 10000; GGUF key gemma3.rope.freq_base_swa overrides it), global
    layers `gemma3.rope.freq_base` (1e6). inv_freq_j = base^(-2j/D) over the whole head_dim D;
    HF rotate_half pairs dim j with dim j + D/2 (llama.cpp: LLAMA_ROPE_TYPE_NEOX). The converter
    does NOT permute gemma3's attn_q/attn_k rows (unlike llama), so rotate_half applies to the GGUF
    rows as stored (ablation "rope_adjacent" uses llama's GGUF pairing instead). Linear RoPE scaling
    (gemma3.rope.scaling.type = linear, factor F: positions / F) applies to global layers only, as
    HF's rope_scaling and llama.cpp do; gemma-3-270m has none.
  - q_norm/k_norm: applied per head over head_dim, before RoPE (HF Gemma3Attention.forward).
  - Attention scale: query_pre_attn_scalar ** -0.5 (HF). The GGUF does not store it; HF's default
    and the 270m/1b/4b/12b configs have query_pre_attn_scalar = head_dim = 256 (attention.key_length);
    Gemma 3 27B (62 layers) uses n_embd / n_head = 168 (llama.cpp's rule, from gemma_pytorch's
    config). A `gemma3.attention.scale` key, if present, is used as the scale itself.
  - Sliding window: HF masking_utils.sliding_window_overlay keeps kv_idx > q_idx - W, with the
    causal kv_idx <= q_idx: query p sees keys p-W+1 .. p (W keys, itself included). llama.cpp's
    is_masked_swa (LLAMA_SWA_TYPE_STANDARD) masks p_q - p_k >= W: the same set.
  - GQA: HF repeat_kv repeats each KV head n_rep times consecutively: query head h reads KV head
    h // (n_head / n_head_kv). (gemma-3-270m has one KV head, so this cannot be tested there.)
  - Post-norms: HF Gemma3DecoderLayer applies post_attention_layernorm to the attention output and
    post_feedforward_layernorm to the MLP output, each before its residual add. GGUF names (gguf-py
    tensor_mapping): input_layernorm -> attn_norm, post_attention_layernorm -> post_attention_norm,
    pre_feedforward_layernorm -> ffn_norm, post_feedforward_layernorm -> post_ffw_norm,
    q_norm -> attn_q_norm, k_norm -> attn_k_norm, embed_tokens -> token_embd; the LM head is tied.
  - MLP: down(gelu_pytorch_tanh(gate(x)) * up(x)) (HF hidden_activation "gelu_pytorch_tanh":
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))).
  - Soft-capping: Gemma 3 has none (attn_logit_softcapping and final_logit_softcapping are None);
    `gemma3.attn_logit_softcapping` / `gemma3.final_logit_softcapping` keys are honoured if present.

Numerics: weights are dequantized once with gguf-py (`gguf.quants.dequantize`) to float32 (exact);
matmuls run in float32, norms, RoPE, attention and softmax in float64. `engine_like=True` instead
rounds every matmul input to 8-bit blocks (Q8_0, 32 values, for Q4_0..Q8_0 weights; Q8_K-like,
256 values, for K-quant weights) and K/V to float16, the way the engine computes -- the tests use
it to size their tolerances, never as the oracle.

Validation without the engine (gemma-3-270m Q4_K_M): perplexity 12.94 on the first 512 tokens of
GPL-3 (14.29 on 700); every plausible mistake in the ablation list is far worse (first 400
tokens: 12.57 correct; local layers on the global RoPE base 52.6, llama's RoPE pairing 240,
no q/k norm 1.9e4, norm +1 twice 7.3e7). Greedy after "The capital of France is": " the capital
of the country of France." (" Paris" is third, p = 0.08); "... is the city of" -> " Paris".

Standalone use (token ids from the `sentencepiece` library, built from the GGUF by gguf_spm_model):
    python tests/reference/gemma3_ref.py MODEL.gguf --prompt "The capital of France is" -n 8
    python tests/reference/gemma3_ref.py MODEL.gguf --prompt-ids 2,818,5279,529,7001,563
    python tests/reference/gemma3_ref.py MODEL.gguf --ppl-file /usr/share/common-licenses/GPL-3
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import gguf
import numpy as np

# Deliberate deviations the reference can be told to make. The tests show that the tolerances catch
# the real bugs among them, and that embed_scale_bf16 / gelu_erf (both defensible) stay within noise;
# window_plus_one is below the engine's noise in logits and is pinned by a mask unit test instead.
ABLATIONS = frozenset(
    {
        "no_sliding_window",  # local layers attend to the whole causal prefix
        "window_plus_one",  # local layers see W + 1 keys (p-W .. p): the off-by-one
        "local_rope_global_base",  # local layers use the global RoPE base (1e6) instead of 10000
        "rope_adjacent",  # llama's GGUF pairing (2j, 2j+1) instead of rotate_half
        "norm_plus_one",  # add Gemma's +1 to norm weights that already contain it
        "no_qk_norm",  # skip attn_q_norm / attn_k_norm
        "no_post_norms",  # skip post_attention_norm / post_ffw_norm
        "no_embed_scale",  # skip the sqrt(n_embd) embedding scale
        "embed_scale_bf16",  # sqrt(n_embd) rounded to bfloat16, as an HF bf16 run does
        "gelu_erf",  # exact erf GELU instead of the tanh approximation
    }
)

SWA_PATTERN_DEFAULT = 6  # HF Gemma3TextConfig sliding_window_pattern; llama.cpp set_swa_pattern(6)
ROPE_LOCAL_BASE_DEFAULT = 10000.0  # HF rope_local_base_freq; llama.cpp rope_freq_base_train_swa


@dataclass(frozen=True)
class Hparams:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int  # attention.key_length (q and k)
    head_dim_v: int  # attention.value_length
    n_ff: int
    n_vocab: int
    rms_eps: float
    rope_base_global: float
    rope_base_local: float
    rope_scale_global: float  # linear RoPE scaling factor of the global layers (1 = none)
    sliding_window: int
    is_local: tuple[bool, ...]  # per layer: sliding-window (local) attention
    attn_scale: float  # multiplies q k^T
    attn_softcap: float  # 0 = none
    final_softcap: float  # 0 = none


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError(f"GGUF metadata key {key!r} missing")
        return default
    return f.contents()


def read_hparams(reader: gguf.GGUFReader) -> Hparams:
    arch = _field(reader, "general.architecture")
    if arch != "gemma3":
        raise ValueError(f"gemma3_ref handles general.architecture 'gemma3', got {arch!r}")
    p = "gemma3."
    n_layer = int(_field(reader, p + "block_count"))
    n_embd = int(_field(reader, p + "embedding_length"))
    n_head = int(_field(reader, p + "attention.head_count"))
    head_dim = int(_field(reader, p + "attention.key_length", n_embd // n_head))
    n_vocab = int(_field(reader, p + "vocab_size", -1))
    if n_vocab == -1:
        n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)

    pattern = reader.fields.get(p + "attention.sliding_window_pattern")
    if pattern is not None:
        is_local = tuple(bool(x) for x in pattern.contents())
        if len(is_local) != n_layer:
            raise ValueError(f"{p}attention.sliding_window_pattern has {len(is_local)} entries, {n_layer} layers")
    else:
        is_local = tuple(bool((i + 1) % SWA_PATTERN_DEFAULT) for i in range(n_layer))

    scaling = _field(reader, p + "rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ValueError(f"rope scaling {scaling!r} not handled (Gemma 3 uses linear on global layers)")
    rope_scale = float(_field(reader, p + "rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0

    if p + "attention.scale" in reader.fields:
        attn_scale = float(_field(reader, p + "attention.scale"))
    else:
        # HF: query_pre_attn_scalar ** -0.5. = head_dim for every Gemma 3 size but 27B (62 layers),
        # whose config has n_embd / n_head (llama.cpp applies the same rule).
        qpas = n_embd // n_head if n_layer == 62 else head_dim
        attn_scale = qpas ** -0.5

    return Hparams(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(_field(reader, p + "attention.head_count_kv", n_head)),
        head_dim=head_dim,
        head_dim_v=int(_field(reader, p + "attention.value_length", head_dim)),
        n_ff=int(_field(reader, p + "feed_forward_length")),
        n_vocab=n_vocab,
        rms_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
        rope_base_global=float(_field(reader, p + "rope.freq_base", 1_000_000.0)),
        rope_base_local=float(_field(reader, p + "rope.freq_base_swa", ROPE_LOCAL_BASE_DEFAULT)),
        rope_scale_global=rope_scale,
        sliding_window=int(_field(reader, p + "attention.sliding_window")),
        is_local=is_local,
        attn_scale=attn_scale,
        attn_softcap=float(_field(reader, p + "attn_logit_softcapping", 0.0)),
        final_softcap=float(_field(reader, p + "final_logit_softcapping", 0.0)),
    )


def tensor_to_f32(t: gguf.ReaderTensor) -> np.ndarray:
    """Dequantize a GGUF tensor with gguf-py; result in numpy order (ggml dims reversed)."""
    shape = tuple(int(d) for d in reversed(t.shape))  # ggml dims[0] is the fastest axis
    if t.tensor_type == gguf.GGMLQuantizationType.F32:
        out = np.asarray(t.data, dtype=np.float32)
    else:
        out = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)


_K_TYPES = {gguf.GGMLQuantizationType[n] for n in ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K")}


@dataclass
class Mat:
    """A dequantized weight matrix [out, in] and the block size the engine quantizes its input to."""

    w: np.ndarray  # [n_out, n_in] float32
    act_block: int  # 256 for K-quant weights (Q8_K activations), 32 otherwise (Q8_0)


@dataclass
class Layer:
    attn_norm: np.ndarray  # [n_embd]
    wq: Mat  # [n_head*head_dim, n_embd]
    wk: Mat  # [n_head_kv*head_dim, n_embd]
    wv: Mat  # [n_head_kv*head_dim_v, n_embd]
    q_norm: np.ndarray  # [head_dim]
    k_norm: np.ndarray  # [head_dim]
    wo: Mat  # [n_embd, n_head*head_dim_v]
    post_attn_norm: np.ndarray  # [n_embd]
    ffn_norm: np.ndarray  # [n_embd]
    w_gate: Mat  # [n_ff, n_embd]
    w_up: Mat  # [n_ff, n_embd]
    w_down: Mat  # [n_embd, n_ff]
    post_ffn_norm: np.ndarray  # [n_embd]


def _quantize_rows_q8(x: np.ndarray, block: int) -> np.ndarray:
    """Round each row of x [n, k] to symmetric 8-bit blocks of `block` values (scale = amax / 127)."""
    n, k = x.shape
    xb = x.astype(np.float32).reshape(n, k // block, block)
    amax = np.abs(xb).max(axis=-1, keepdims=True)
    d = amax / 127.0
    if block == 32:  # Q8_0 stores its scale as float16
        d = d.astype(np.float16).astype(np.float32)
    inv = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    q = np.clip(np.rint(xb * inv), -127, 127)
    return (q * d).reshape(n, k).astype(np.float32)


_LOADED: dict[tuple, "Gemma3Ref"] = {}


@dataclass
class Gemma3Ref:
    hp: Hparams
    tok_embd: np.ndarray  # [n_vocab, n_embd] float32; also the (tied) output matrix
    tok_embd_act_block: int
    layers: list[Layer]
    output_norm: np.ndarray  # [n_embd]
    ablate: frozenset[str] = field(default_factory=frozenset)
    engine_like: bool = False

    @classmethod
    def load(cls, source: str | Path | gguf.GGUFReader) -> "Gemma3Ref":
        """Dequantize every weight of a GGUF file (a path or an open reader); cached per process."""
        reader = source if isinstance(source, gguf.GGUFReader) else None
        path = Path(reader.data.filename if reader is not None else source).resolve()
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key in _LOADED:
            return _LOADED[key]
        if reader is None:
            reader = gguf.GGUFReader(str(path))
        hp = read_hparams(reader)
        by_name = {t.name: t for t in reader.tensors}

        def w(name: str, shape: tuple[int, ...]) -> np.ndarray:
            if name not in by_name:
                raise KeyError(f"{path}: tensor {name!r} missing")
            a = tensor_to_f32(by_name[name])
            if a.shape != shape:
                raise ValueError(f"{path}: tensor {name!r} has shape {a.shape}, expected {shape}")
            return a

        def m(name: str, shape: tuple[int, int]) -> Mat:
            a = w(name, shape)
            return Mat(a, 256 if by_name[name].tensor_type in _K_TYPES else 32)

        E, F, D, Dv = hp.n_embd, hp.n_ff, hp.head_dim, hp.head_dim_v
        layers = []
        for i in range(hp.n_layer):
            b = f"blk.{i}."
            layers.append(
                Layer(
                    attn_norm=w(b + "attn_norm.weight", (E,)),
                    wq=m(b + "attn_q.weight", (hp.n_head * D, E)),
                    wk=m(b + "attn_k.weight", (hp.n_head_kv * D, E)),
                    wv=m(b + "attn_v.weight", (hp.n_head_kv * Dv, E)),
                    q_norm=w(b + "attn_q_norm.weight", (D,)),
                    k_norm=w(b + "attn_k_norm.weight", (D,)),
                    wo=m(b + "attn_output.weight", (E, hp.n_head * Dv)),
                    post_attn_norm=w(b + "post_attention_norm.weight", (E,)),
                    ffn_norm=w(b + "ffn_norm.weight", (E,)),
                    w_gate=m(b + "ffn_gate.weight", (F, E)),
                    w_up=m(b + "ffn_up.weight", (F, E)),
                    w_down=m(b + "ffn_down.weight", (E, F)),
                    post_ffn_norm=w(b + "post_ffw_norm.weight", (E,)),
                )
            )
        if "output.weight" in by_name:
            raise ValueError(f"{path}: has output.weight; Gemma 3 ties the LM head to token_embd")
        emb = m("token_embd.weight", (hp.n_vocab, E))
        ref = cls(hp, emb.w, emb.act_block, layers, w("output_norm.weight", (E,)))
        _LOADED[key] = ref
        return ref

    def with_ablation(self, *names: str) -> "Gemma3Ref":
        unknown = set(names) - ABLATIONS
        if unknown:
            raise ValueError(f"unknown ablation(s) {sorted(unknown)}; known: {sorted(ABLATIONS)}")
        return replace(self, ablate=frozenset(names))

    def with_engine_numerics(self) -> "Gemma3Ref":
        """The same model with 8-bit matmul inputs and float16 K/V (what the engine does)."""
        return replace(self, engine_like=True)

    # ---- blocks -------------------------------------------------------------------------------

    def mm(self, x: np.ndarray, m: Mat) -> np.ndarray:
        """x [n, in] @ W^T -> [n, out] float64; float32 product (input rounded to 8 bits if engine_like)."""
        x32 = x.astype(np.float32)
        if self.engine_like:
            x32 = _quantize_rows_q8(x32, m.act_block)
        return (x32 @ m.w.T).astype(np.float64)

    def rmsnorm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        """Over the last axis; `weight` already holds Gemma's 1 + w (see the module docstring)."""
        x = x.astype(np.float64)
        if "norm_plus_one" in self.ablate:
            weight = weight + 1.0
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.hp.rms_eps) * weight

    def rope(self, x: np.ndarray, pos: np.ndarray, local: bool) -> np.ndarray:
        """x: [n_tok, n_heads, head_dim] float64 (GGUF rows = HF rows); pos: [n_tok]."""
        hp = self.hp
        if local and "local_rope_global_base" not in self.ablate:
            base, scale = hp.rope_base_local, 1.0
        else:
            base, scale = hp.rope_base_global, hp.rope_scale_global
        p = pos.astype(np.float64) / scale
        if "rope_adjacent" in self.ablate:
            return rope_adjacent(x, p, base)
        return rope_neox(x, p, base)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: np.ndarray, local: bool) -> np.ndarray:
        """q: [n_tok, n_head, D], k: [n_tok, n_head_kv, D], v: [n_tok, n_head_kv, Dv] -> [n_tok, n_head*Dv]."""
        hp = self.hp
        n = q.shape[0]
        kv_of = np.arange(hp.n_head) // (hp.n_head // hp.n_head_kv)  # HF repeat_kv
        qh = q.transpose(1, 0, 2)  # [n_head, n_tok, D]
        kh = k[:, kv_of, :].transpose(1, 0, 2)  # [n_head, n_tok, D]
        vh = v[:, kv_of, :].transpose(1, 0, 2)  # [n_head, n_tok, Dv]
        scores = qh @ kh.transpose(0, 2, 1) * hp.attn_scale  # [n_head, n_tok(q), n_tok(k)]
        if hp.attn_softcap > 0:
            scores = np.tanh(scores / hp.attn_softcap) * hp.attn_softcap
        dist = pos[:, None] - pos[None, :]  # query position - key position
        visible = dist >= 0  # causal
        if local and "no_sliding_window" not in self.ablate:
            w = hp.sliding_window + (1 if "window_plus_one" in self.ablate else 0)
            visible &= dist < w  # keys p-W+1 .. p (HF: kv_idx > q_idx - W)
        scores = np.where(visible, scores, -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        pr = np.exp(scores)
        pr /= pr.sum(axis=-1, keepdims=True)
        out = pr @ vh  # [n_head, n_tok, Dv]
        return out.transpose(1, 0, 2).reshape(n, hp.n_head * hp.head_dim_v)

    def block(self, il: int, L: Layer, h: np.ndarray, pos: np.ndarray) -> np.ndarray:
        hp = self.hp
        n = h.shape[0]
        local = hp.is_local[il]
        a = self.rmsnorm(h, L.attn_norm)  # [n_tok, n_embd]
        q = self.mm(a, L.wq).reshape(n, hp.n_head, hp.head_dim)
        k = self.mm(a, L.wk).reshape(n, hp.n_head_kv, hp.head_dim)
        v = self.mm(a, L.wv).reshape(n, hp.n_head_kv, hp.head_dim_v)
        if "no_qk_norm" not in self.ablate:
            q, k = self.rmsnorm(q, L.q_norm), self.rmsnorm(k, L.k_norm)  # per head, over head_dim
        q, k = self.rope(q, pos, local), self.rope(k, pos, local)
        if self.engine_like:  # float16 KV cache
            k, v = k.astype(np.float16).astype(np.float64), v.astype(np.float16).astype(np.float64)
        o = self.mm(self.attention(q, k, v, pos, local), L.wo)  # [n_tok, n_embd]
        h = h + (o if "no_post_norms" in self.ablate else self.rmsnorm(o, L.post_attn_norm))

        f = self.rmsnorm(h, L.ffn_norm)  # [n_tok, n_embd]
        g, u = self.mm(f, L.w_gate), self.mm(f, L.w_up)  # [n_tok, n_ff]
        d = self.mm(self.gelu(g) * u, L.w_down)  # [n_tok, n_embd]
        return h + (d if "no_post_norms" in self.ablate else self.rmsnorm(d, L.post_ffn_norm))

    def gelu(self, x: np.ndarray) -> np.ndarray:
        if "gelu_erf" in self.ablate:
            return 0.5 * x * (1.0 + np.vectorize(math.erf, otypes=[np.float64])(x / math.sqrt(2.0)))
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))

    @property
    def embed_scale(self) -> float:
        if "no_embed_scale" in self.ablate:
            return 1.0
        s = math.sqrt(self.hp.n_embd)
        if "embed_scale_bf16" in self.ablate:
            s = float(_round_bf16(np.float32(s)))
        return s

    # ---- whole model ---------------------------------------------------------------------------

    def hidden(self, tokens: list[int] | np.ndarray) -> np.ndarray:
        """Final normed hidden states [n_tok, n_embd] (float32) of one sequence from position 0."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError("tokens must be a non-empty 1-D sequence")
        if tokens.min() < 0 or tokens.max() >= self.hp.n_vocab:
            raise ValueError(f"token id out of range [0, {self.hp.n_vocab})")
        pos = np.arange(tokens.size)
        h = self.tok_embd[tokens].astype(np.float64) * self.embed_scale  # [n_tok, n_embd]
        for il, L in enumerate(self.layers):
            h = self.block(il, L, h, pos)
        return self.rmsnorm(h, self.output_norm).astype(np.float32)

    def head(self, hidden: np.ndarray) -> np.ndarray:
        """LM head: normed hidden [n, n_embd] -> logits [n, n_vocab] float32 (tied to tok_embd)."""
        x = hidden.astype(np.float32)
        if self.engine_like:
            x = _quantize_rows_q8(x, self.tok_embd_act_block)
        lg = x @ self.tok_embd.T
        if self.hp.final_softcap > 0:
            lg = (np.tanh(lg / self.hp.final_softcap) * self.hp.final_softcap).astype(np.float32)
        return lg

    def logits(self, tokens: list[int] | np.ndarray, positions=None) -> np.ndarray:
        """Logits [n_tok, n_vocab] (float32), or only at `positions` (indices into tokens)."""
        h = self.hidden(tokens)
        return self.head(h if positions is None else h[np.asarray(positions)])

    def nll(self, tokens: list[int] | np.ndarray, chunk: int = 128) -> np.ndarray:
        """Negative log-likelihood of tokens[1:] given their prefixes, float64 [n_tok - 1]."""
        tokens = np.asarray(tokens, dtype=np.int64)
        h = self.hidden(tokens[:-1])
        out = np.empty(tokens.size - 1)
        for s in range(0, h.shape[0], chunk):
            lg = self.head(h[s : s + chunk]).astype(np.float64)
            out[s : s + chunk] = log_softmax_nll(lg, tokens[s + 1 : s + 1 + chunk])
        return out


def log_softmax_nll(lg: np.ndarray, targets: np.ndarray) -> np.ndarray:
    m = lg.max(axis=-1, keepdims=True)
    logz = (m + np.log(np.exp(lg - m).sum(axis=-1, keepdims=True)))[:, 0]
    return logz - lg[np.arange(lg.shape[0]), targets]


def _round_bf16(x: np.float32) -> np.float32:
    """Round-to-nearest-even to bfloat16, returned as float32."""
    b = np.array([x], dtype=np.float32).view(np.uint32)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.view(np.float32)[0]


# ---- RoPE formulations ----------------------------------------------------------------------------


def _angles(pos: np.ndarray, d: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)  # [d/2]
    ang = pos.astype(np.float64)[:, None] * inv_freq[None, :]  # [n_tok, d/2]
    return np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]  # broadcast over heads


def rope_neox(x: np.ndarray, pos: np.ndarray, base: float) -> np.ndarray:
    """HF rotate_half: rotate pairs (x[j], x[j + d/2]) by pos * base^(-2j/d), over the whole head."""
    d = x.shape[-1]
    cos, sin = _angles(pos, d, base)
    x0, x1 = x[..., : d // 2], x[..., d // 2 :]
    return np.concatenate([x0 * cos - x1 * sin, x0 * sin + x1 * cos], axis=-1)


def rope_adjacent(x: np.ndarray, pos: np.ndarray, base: float) -> np.ndarray:
    """llama's GGUF pairing (x[2j], x[2j+1]): the wrong convention for gemma3 (an ablation)."""
    d = x.shape[-1]
    cos, sin = _angles(pos, d, base)
    out = x.copy()
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


# ---- standalone ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?", default=os.environ.get(
        "PEREGRINE_GEMMA_PATH", str(Path.home() / ".cache/peregrine/models/gemma-3-270m-q4_k_m.gguf")))
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt-ids", help="comma-separated token ids (given as is: include <bos> = 2)")
    src.add_argument("--prompt", help="text; tokenized by sentencepiece, <bos> prepended")
    src.add_argument("--ppl-file", help="perplexity of the first --ppl-tokens tokens of this text file")
    ap.add_argument("--ppl-tokens", type=int, default=512)
    ap.add_argument("-n", "--n-predict", type=int, default=0, help="greedy-decode this many tokens")
    args = ap.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gguf_spm_model import build_processor

    t0 = time.time()
    reader = gguf.GGUFReader(args.model)
    ref = Gemma3Ref.load(reader)
    sp = build_processor(reader, control_as_user_defined=True)
    bos = int(_field(reader, "tokenizer.ggml.bos_token_id"))
    print(f"loaded in {time.time() - t0:.1f} s; {ref.hp}")

    if args.ppl_file:
        ids = [bos] + sp.encode(Path(args.ppl_file).read_text(encoding="utf-8"))[: args.ppl_tokens - 1]
        t0 = time.time()
        nll = ref.nll(ids)
        print(f"perplexity over {len(ids) - 1} predicted tokens: {math.exp(nll.mean()):.4f} ({time.time() - t0:.1f} s)")
        return 0
    ids = [bos] + sp.encode(args.prompt) if args.prompt is not None else [int(s) for s in args.prompt_ids.split(",")]
    lg = ref.logits(ids)
    print("prompt ids:", " ".join(map(str, ids)))
    print("argmax per position:", " ".join(str(int(i)) for i in lg.argmax(axis=-1)))
    out = list(ids)
    for _ in range(args.n_predict):
        out.append(int(ref.logits(out, positions=[len(out) - 1])[0].argmax()))
    if args.n_predict:
        gen = out[len(ids) :]
        print("greedy continuation ids:", " ".join(map(str, gen)))
        print("greedy continuation text:", repr(sp.decode(gen)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
