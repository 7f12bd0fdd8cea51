"""Independent numpy forward pass of a GGUF `llama`-architecture model (the test oracle).

Written from the architecture's definition (Llama 2 / SmolLM2), not from the engine's C++:

    h = tok_embd[tokens]                                   # [n_tok, n_embd]
    per block:
        a = rmsnorm(h) * attn_norm
        q, k, v = a @ Wq.T, a @ Wk.T, a @ Wv.T             # [n_tok, n_head|n_head_kv, head_dim]
        q, k = rope(q), rope(k)
        o = causal_softmax(q k^T / sqrt(head_dim)) v       # query head h reads KV head h // group
        h = h + o @ Wo.T
        f = rmsnorm(h) * ffn_norm
        h = h + (silu(f @ Wgate.T) * (f @ Wup.T)) @ Wdown.T
    logits = (rmsnorm(h) * output_norm) @ W_out.T          # W_out = output.weight, else tok_embd

Attention span (`with_span(sinks, window)`, for `perplexity --stream --attn-sinks S --attn-window W`):
position p attends to the last W positions, p-W+1..p, and to the first S ("attention sinks",
StreamingLLM, Xiao et al. 2023). Keys sit at their positions in the cache, not in the text: the
window keys keep their true positions (their distances to the query are already in-cache ones),
and once positions between the sinks and the window have been dropped, sink j is rotated as if at
position j + (p - W + 1 - S), just before the window, so no query-key distance exceeds S + W - 1.

Weights are dequantized once with gguf-py (`gguf.quants.dequantize`) to float32; matmuls run in
float32 (the dequantized weights are exact in f32, and f32 accumulation is ~1e-6 relative -- far
below the engine's 8-bit activation error), while norms, RoPE, attention and softmax run in
float64 so that the oracle itself contributes no visible error.

RoPE convention. HF Llama applies `rotate_half`, pairing dim j with dim j + head_dim/2. llama.cpp's
HF->GGUF converter permutes the rows of attn_q / attn_k inside each head
(reshape(n_head, 2, head_dim/2, n_embd).swapaxes(1, 2)), so GGUF row 2j is HF row j and GGUF row
2j+1 is HF row j + head_dim/2. Applying rotate_half to HF rows is therefore exactly the same as
rotating ADJACENT pairs (x[2j], x[2j+1]) of the GGUF rows with angle pos * base^(-2j/rope_dim).
We use the GGUF weights as stored with the adjacent-pair rotation: it needs no re-layout of the
weights, and `rope_via_hf_layout` below is the other formulation (un-permute, rotate_half,
re-permute); a test checks the two agree, which pins the convention down independently.

Standalone use:
    python tests/reference/llama_ref.py MODEL.gguf --prompt-ids 1,2,3      # argmax per position
    python tests/reference/llama_ref.py MODEL.gguf --prompt "The capital of France is" -n 5
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import gguf
import numpy as np

# Deliberate bugs the reference can be told to make. The tests use them to show that the logit
# tolerance is tight enough to catch real mistakes (a test that cannot fail proves nothing).
ABLATIONS = frozenset(
    {
        "no_rope",  # skip RoPE on q and k
        "rope_halves",  # rotate_half pairing (j, j + d/2) on GGUF weights: the wrong convention
        "no_final_norm",  # skip output_norm before the LM head
        "kv_head_modulo",  # query head h reads KV head h % n_head_kv instead of h // group
        "no_causal_mask",  # let positions attend to the future
    }
)


@dataclass(frozen=True)
class Hparams:
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    rope_dim: int
    rope_base: float
    rms_eps: float


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError(f"GGUF metadata key {key!r} missing")
        return default
    return f.contents()


def read_hparams(reader: gguf.GGUFReader) -> Hparams:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"llama_ref handles general.architecture 'llama', got {arch!r}")
    p = f"{arch}."
    n_embd = int(_field(reader, p + "embedding_length"))
    n_head = int(_field(reader, p + "attention.head_count"))
    n_head_kv = int(_field(reader, p + "attention.head_count_kv", n_head))
    head_dim = n_embd // n_head
    n_vocab = _field(reader, p + "vocab_size", -1)
    if n_vocab == -1:  # older files: take it from the token list
        n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    return Hparams(
        n_layer=int(_field(reader, p + "block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=head_dim,
        n_ff=int(_field(reader, p + "feed_forward_length")),
        n_vocab=int(n_vocab),
        rope_dim=int(_field(reader, p + "rope.dimension_count", head_dim)),
        rope_base=float(_field(reader, p + "rope.freq_base", 10000.0)),
        rms_eps=float(_field(reader, p + "attention.layer_norm_rms_epsilon")),
    )


def tensor_to_f32(t: gguf.ReaderTensor) -> np.ndarray:
    """Dequantize a GGUF tensor with gguf-py; result in numpy order (ggml dims reversed)."""
    shape = tuple(int(d) for d in reversed(t.shape))  # ggml dims[0] is the fastest axis
    if t.tensor_type == gguf.GGMLQuantizationType.F32:
        out = np.asarray(t.data, dtype=np.float32)
    else:
        out = gguf.quants.dequantize(t.data, t.tensor_type)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)


@dataclass
class Layer:
    attn_norm: np.ndarray  # [n_embd]
    wq: np.ndarray  # [n_head*head_dim, n_embd]   (out, in)
    wk: np.ndarray  # [n_head_kv*head_dim, n_embd]
    wv: np.ndarray  # [n_head_kv*head_dim, n_embd]
    wo: np.ndarray  # [n_embd, n_head*head_dim]
    ffn_norm: np.ndarray  # [n_embd]
    w_gate: np.ndarray  # [n_ff, n_embd]
    w_up: np.ndarray  # [n_ff, n_embd]
    w_down: np.ndarray  # [n_embd, n_ff]


@dataclass
class LlamaRef:
    hp: Hparams
    tok_embd: np.ndarray  # [n_vocab, n_embd]
    layers: list[Layer]
    output_norm: np.ndarray  # [n_embd]
    output: np.ndarray  # [n_vocab, n_embd]; the same array as tok_embd when tied
    ablate: frozenset[str] = field(default_factory=frozenset)
    sinks: int = 0  # with window: the first `sinks` positions stay visible to every query
    window: int = 0  # > 0: each query also sees only the last `window` positions; 0: all
    shift_sinks: bool = True  # False: sinks keep their text positions (a deliberate bug)

    @classmethod
    def load(cls, source: str | Path | gguf.GGUFReader) -> "LlamaRef":
        """Dequantize every weight of a GGUF file (a path, or an already open gguf-py reader)."""
        reader = source if isinstance(source, gguf.GGUFReader) else gguf.GGUFReader(str(source))
        path = getattr(reader.data, "filename", "<gguf>") if reader is source else source
        hp = read_hparams(reader)
        by_name = {t.name: t for t in reader.tensors}

        def w(name: str, shape: tuple[int, ...]) -> np.ndarray:
            if name not in by_name:
                raise KeyError(f"{path}: tensor {name!r} missing")
            a = tensor_to_f32(by_name[name])
            if a.shape != shape:
                raise ValueError(f"{path}: tensor {name!r} has shape {a.shape}, expected {shape}")
            return a

        E, F, D = hp.n_embd, hp.n_ff, hp.head_dim
        layers = []
        for i in range(hp.n_layer):
            b = f"blk.{i}."
            layers.append(
                Layer(
                    attn_norm=w(b + "attn_norm.weight", (E,)),
                    wq=w(b + "attn_q.weight", (hp.n_head * D, E)),
                    wk=w(b + "attn_k.weight", (hp.n_head_kv * D, E)),
                    wv=w(b + "attn_v.weight", (hp.n_head_kv * D, E)),
                    wo=w(b + "attn_output.weight", (E, hp.n_head * D)),
                    ffn_norm=w(b + "ffn_norm.weight", (E,)),
                    w_gate=w(b + "ffn_gate.weight", (F, E)),
                    w_up=w(b + "ffn_up.weight", (F, E)),
                    w_down=w(b + "ffn_down.weight", (E, F)),
                )
            )
        tok_embd = w("token_embd.weight", (hp.n_vocab, E))
        output = w("output.weight", (hp.n_vocab, E)) if "output.weight" in by_name else tok_embd
        return cls(hp, tok_embd, layers, w("output_norm.weight", (E,)), output)

    def with_ablation(self, *names: str) -> "LlamaRef":
        unknown = set(names) - ABLATIONS
        if unknown:
            raise ValueError(f"unknown ablation(s) {sorted(unknown)}; known: {sorted(ABLATIONS)}")
        return replace(self, ablate=frozenset(names))

    def with_span(self, sinks: int, window: int, shift_sinks: bool = True) -> "LlamaRef":
        """The same weights with a sinks + window attention span (see the module docstring)."""
        if window <= 0 or sinks < 0:
            raise ValueError(f"need window > 0 and sinks >= 0, got window {window}, sinks {sinks}")
        return replace(self, sinks=sinks, window=window, shift_sinks=shift_sinks)

    # ---- blocks -------------------------------------------------------------------------------

    def rmsnorm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        x = x.astype(np.float64)  # [n_tok, n_embd]
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.hp.rms_eps) * weight

    def rope(self, x: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """x: [n_tok, n_heads, head_dim] float64 in GGUF row layout; pos: [n_tok]."""
        if "no_rope" in self.ablate:
            return x
        if "rope_halves" in self.ablate:
            return rope_rotate_half(x, pos, self.hp.rope_dim, self.hp.rope_base)
        return rope_adjacent(x, pos, self.hp.rope_dim, self.hp.rope_base)

    def attention(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, k_raw: np.ndarray | None = None) -> np.ndarray:
        """q: [n_tok, n_head, D], k/v: [n_tok, n_head_kv, D] (float64) -> [n_tok, n_head*D].
        Token i is at position i; k_raw (k before RoPE) is needed for an attention span with sinks."""
        hp = self.hp
        n = q.shape[0]
        group = hp.n_head // hp.n_head_kv
        if "kv_head_modulo" in self.ablate:
            kv_of = np.arange(hp.n_head) % hp.n_head_kv
        else:
            kv_of = np.arange(hp.n_head) // group  # heads [g*group, (g+1)*group) share KV head g
        kh = k[:, kv_of, :].transpose(1, 0, 2)  # [n_head, n_tok, D]
        vh = v[:, kv_of, :].transpose(1, 0, 2)  # [n_head, n_tok, D]
        qh = q.transpose(1, 0, 2)  # [n_head, n_tok, D]
        scores = qh @ kh.transpose(0, 2, 1) / np.sqrt(hp.head_dim)  # [n_head, n_tok(q), n_tok(k)]
        if "no_causal_mask" not in self.ablate:
            future = np.triu(np.ones((n, n), dtype=bool), k=1)  # key j > query i
            scores = np.where(future, -np.inf, scores)
        if self.window > 0:
            i, j = np.arange(n)[:, None], np.arange(n)[None, :]
            first = np.maximum(self.sinks, i - self.window + 1)  # [n, 1] first window position
            scores = np.where((j >= first) | (j < self.sinks), scores, -np.inf)
            S = min(self.sinks, n)
            shift = first[:, 0] - self.sinks  # [n] positions dropped between sinks and window
            if self.shift_sinks and S > 0 and shift.max() > 0:
                # Sink j as if at position j + shift[i], seen by query i: [n, S, n_head_kv, D].
                at = (np.arange(S)[None, :] + shift[:, None]).reshape(-1)
                ks = self.rope(np.repeat(k_raw[None, :S], n, axis=0).reshape(n * S, *k_raw.shape[1:]), at)
                ks = ks.reshape(n, S, hp.n_head_kv, hp.head_dim)[:, :, kv_of, :]  # [n, S, n_head, D]
                sink_scores = np.einsum("hid,ijhd->hij", qh, ks) / np.sqrt(hp.head_dim)
                causal = np.arange(S)[None, :] <= np.arange(n)[:, None]  # [n, S]
                scores[:, :, :S] = np.where(causal, sink_scores, -np.inf)
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        out = p @ vh  # [n_head, n_tok, D]
        return out.transpose(1, 0, 2).reshape(n, hp.n_head * hp.head_dim)

    def block(self, L: Layer, h: np.ndarray, pos: np.ndarray) -> np.ndarray:
        hp = self.hp
        n = h.shape[0]
        a = self.rmsnorm(h, L.attn_norm).astype(np.float32)  # [n_tok, n_embd]
        q = (a @ L.wq.T).astype(np.float64).reshape(n, hp.n_head, hp.head_dim)
        k = (a @ L.wk.T).astype(np.float64).reshape(n, hp.n_head_kv, hp.head_dim)
        v = (a @ L.wv.T).astype(np.float64).reshape(n, hp.n_head_kv, hp.head_dim)
        q, k_raw = self.rope(q, pos), k
        k = self.rope(k_raw, pos)
        o = self.attention(q, k, v, k_raw).astype(np.float32)  # [n_tok, n_head*D]
        h = h + (o @ L.wo.T).astype(np.float64)

        f = self.rmsnorm(h, L.ffn_norm).astype(np.float32)  # [n_tok, n_embd]
        g = (f @ L.w_gate.T).astype(np.float64)  # [n_tok, n_ff]
        u = (f @ L.w_up.T).astype(np.float64)
        act = (g / (1.0 + np.exp(-g)) * u).astype(np.float32)  # silu(gate) * up
        return h + (act @ L.w_down.T).astype(np.float64)

    # ---- whole model ---------------------------------------------------------------------------

    def hidden(self, tokens: list[int] | np.ndarray) -> np.ndarray:
        """Final normed hidden states [n_tok, n_embd] (float32) for one prompt from an empty cache."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0:
            raise ValueError("tokens must be a non-empty 1-D sequence")
        if tokens.min() < 0 or tokens.max() >= self.hp.n_vocab:
            raise ValueError(f"token id out of range [0, {self.hp.n_vocab})")
        pos = np.arange(tokens.size)
        h = self.tok_embd[tokens].astype(np.float64)  # [n_tok, n_embd]
        for L in self.layers:
            h = self.block(L, h, pos)
        if "no_final_norm" not in self.ablate:
            h = self.rmsnorm(h, self.output_norm)
        return h.astype(np.float32)

    def logits(self, tokens: list[int] | np.ndarray) -> np.ndarray:
        """Logits [n_tok, n_vocab] (float32) at every position."""
        return self.hidden(tokens) @ self.output.T

    def window_nll(self, tokens: list[int] | np.ndarray) -> np.ndarray:
        """Negative log-likelihood of tokens[1:] given their prefixes, float64 [n_tok - 1]."""
        tokens = np.asarray(tokens, dtype=np.int64)
        lg = self.logits(tokens[:-1]).astype(np.float64)  # [n-1, n_vocab]
        m = lg.max(axis=-1, keepdims=True)
        logz = (m + np.log(np.exp(lg - m).sum(axis=-1, keepdims=True)))[:, 0]
        return logz - lg[np.arange(tokens.size - 1), tokens[1:]]


# ---- RoPE formulations ----------------------------------------------------------------------------


def _angles(pos: np.ndarray, rope_dim: int, base: float) -> tuple[np.ndarray, np.ndarray]:
    inv_freq = base ** (-np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)  # [rope_dim/2]
    ang = pos.astype(np.float64)[:, None] * inv_freq[None, :]  # [n_tok, rope_dim/2]
    return np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]  # broadcast over heads


def rope_adjacent(x: np.ndarray, pos: np.ndarray, rope_dim: int, base: float) -> np.ndarray:
    """Rotate pairs (x[2j], x[2j+1]) by pos * base^(-2j/rope_dim); dims >= rope_dim untouched."""
    cos, sin = _angles(pos, rope_dim, base)
    out = x.copy()
    x0, x1 = x[..., 0:rope_dim:2], x[..., 1:rope_dim:2]
    out[..., 0:rope_dim:2] = x0 * cos - x1 * sin
    out[..., 1:rope_dim:2] = x0 * sin + x1 * cos
    return out


def rope_rotate_half(x: np.ndarray, pos: np.ndarray, rope_dim: int, base: float) -> np.ndarray:
    """HF's rotate_half: rotate pairs (x[j], x[j + rope_dim/2]) by pos * base^(-2j/rope_dim)."""
    cos, sin = _angles(pos, rope_dim, base)
    half = rope_dim // 2
    out = x.copy()
    x0, x1 = x[..., :half], x[..., half:rope_dim]
    out[..., :half] = x0 * cos - x1 * sin
    out[..., half:rope_dim] = x0 * sin + x1 * cos
    return out


def gguf_rows_to_hf(x: np.ndarray, head_dim: int) -> np.ndarray:
    """Undo the converter's Q/K permutation on the last axis: GGUF (j0, j0', j1, j1', ...) -> HF (j0..., j0'...)."""
    lead = x.shape[:-1]
    return x.reshape(*lead, head_dim // 2, 2).swapaxes(-1, -2).reshape(*lead, head_dim)


def hf_rows_to_gguf(x: np.ndarray, head_dim: int) -> np.ndarray:
    lead = x.shape[:-1]
    return x.reshape(*lead, 2, head_dim // 2).swapaxes(-1, -2).reshape(*lead, head_dim)


def rope_via_hf_layout(x: np.ndarray, pos: np.ndarray, base: float) -> np.ndarray:
    """RoPE the way HF Llama does it, on GGUF-layout input (full head_dim rotated)."""
    d = x.shape[-1]
    return hf_rows_to_gguf(rope_rotate_half(gguf_rows_to_hf(x, d), pos, d, base), d)


# ---- standalone ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="GGUF file (llama architecture)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt-ids", help="comma-separated token ids")
    src.add_argument("--prompt", help="text, tokenized with an HF tokenizer built from the GGUF")
    ap.add_argument("-n", "--n-predict", type=int, default=0, help="greedy-decode this many tokens after the prompt")
    args = ap.parse_args(argv)

    ref = LlamaRef.load(args.model)
    tok = None
    if args.prompt is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from gguf_hf_tokenizer import build_tokenizer, encode

        tok = build_tokenizer(gguf.GGUFReader(args.model))
        ids = encode(tok, args.prompt)
    else:
        ids = [int(s) for s in args.prompt_ids.split(",") if s.strip()]

    lg = ref.logits(ids)
    print("prompt ids:", " ".join(map(str, ids)))
    print("argmax per position:", " ".join(str(int(i)) for i in lg.argmax(axis=-1)))
    out = list(ids)
    for _ in range(args.n_predict):
        out.append(int(ref.logits(out)[-1].argmax()))
    if args.n_predict:
        gen = out[len(ids) :]
        print("greedy continuation ids:", " ".join(map(str, gen)))
        if tok is not None:
            print("greedy continuation text:", repr(tok.decode(gen)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
