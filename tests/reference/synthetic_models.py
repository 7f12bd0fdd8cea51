"""Small random-weight GGUF models of architectures no small real checkpoint exists here for.

Written with gguf-py under exactly the tensor names and metadata keys that llama.cpp's HF->GGUF
converter (the pinned llama.cpp 0c1e57098: convert_hf_to_gguf.py, conversion/{base,llama,qwen}.py)
writes for the architecture, so that llama.cpp itself loads them and serves as the logits oracle:

  name                 general.architecture  what it exercises
  qwen2                qwen2   q/k/v projection biases (attn_{q,k,v}.bias), NEOX RoPE, tied output
  qwen3                qwen3   per-head RMSNorm of q and k (attn_{q,k}_norm, [head_dim]) before RoPE,
                               head_dim 64 != n_embd / n_head (attention.key_length), untied output
  llama_rope_llama3    llama   Llama-3 RoPE scaling: rope_freqs.weight [head_dim/2], no rope.scaling.* keys
  llama_rope_linear    llama   rope.scaling.type = linear, rope.scaling.factor
  llama_rope_linear_untyped  llama   rope.scaling.factor only (llama.cpp's default type: linear)
  llama_rope_yarn      llama   rope.scaling.type = yarn, .factor, .original_context_length

Every model: 4 layers, n_embd 256, 8 query heads, 2 KV heads (GQA 4:1), SwiGLU FFN of 640, RMSNorm,
and the SmolLM2 byte-level BPE tokenizer (tokenizer.ggml.*, pre 'smollm') cut to its first
VOCAB_SIZE tokens with the merges among them (a valid BPE vocabulary both engines load; the full
49152 is available with n_vocab=None). Weights F32, or Q8_0 for every matrix (norms, biases and
rope_freqs stay F32, as llama.cpp's quantizer leaves 1-D tensors), via gguf.quants.quantize.

Conventions the files follow (and an engine must implement):
  - qwen2 / qwen3: llama.cpp uses LLAMA_ROPE_TYPE_NEOX (rotate-half: dim j pairs with j + head_dim/2)
    and the converter does NOT permute attn_q / attn_k rows: GGUF rows are HF rows.
  - llama: LLAMA_ROPE_TYPE_NORM (adjacent pairs 2j, 2j+1) on rows the converter permuted per head
    (w.reshape(n_head, 2, head_dim/2, n_in).swapaxes(1, 2)); equivalent to HF's rotate-half on HF rows.
    Our llama files are written from "HF" weights through that same permutation.
  - attention scale 1/sqrt(head_dim) in all three (llama: unless {arch}.attention.scale is set).

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
    qk_norm: bool = False  # qwen3: attn_{q,k}_norm.weight
    tied: bool = True  # no output.weight: the LM head is token_embd
    # HF config.rope_scaling as the converter reads it (rope_type: llama3 | linear | yarn), or None
    rope_scaling: dict = field(default_factory=dict)


MODELS: dict[str, Spec] = {
    # Qwen2.5-0.5B-like: biases on q/k/v, tied embeddings, rope_theta 1e6
    "qwen2": Spec("qwen2", "qwen2", qkv_bias=True, tied=True, rope_base=1_000_000.0, context_length=32768),
    # Qwen3-like: QK-norm, head_dim 64 with 8 heads (q is 512 wide, n_embd 256), untied head
    "qwen3": Spec("qwen3", "qwen3", qk_norm=True, head_dim=64, tied=False, rope_base=1_000_000.0,
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
}

# The engine gate each model belongs to (test_forward_synthetic.ENGINE_SUPPORTS).
GATE = {"qwen2": "qwen2", "qwen3": "qwen3", "llama_rope_llama3": "llama_rope_scaled",
        "llama_rope_linear": "llama_rope_scaled", "llama_rope_linear_untyped": "llama_rope_scaled",
        "llama_rope_yarn": "llama_rope_scaled"}


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
    that they change the attention pattern noticeably.
    """
    rng = np.random.default_rng(seed)
    E, F, D = spec.n_embd, spec.n_ff, spec.head_dim
    Q, KV = spec.n_head * D, spec.n_head_kv * D

    def mat(out_dim, in_dim, gain=1.0):
        return (rng.standard_normal((out_dim, in_dim)) * gain / math.sqrt(in_dim)).astype(np.float32)

    def norm(n, spread=0.2):
        return (1.0 + spread * rng.standard_normal(n)).astype(np.float32)

    w: dict[str, np.ndarray] = {"token_embd.weight": (EMBD_STD * rng.standard_normal((n_vocab, E))).astype(np.float32)}
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
            w[b + "attn_q_norm.weight"] = norm(D, 0.5)
            w[b + "attn_k_norm.weight"] = norm(D, 0.5)
        w[b + "attn_output.weight"] = mat(E, Q)
        w[b + "ffn_norm.weight"] = norm(E)
        w[b + "ffn_gate.weight"] = mat(F, E)
        w[b + "ffn_up.weight"] = mat(F, E)
        w[b + "ffn_down.weight"] = mat(E, F)
    w["output_norm.weight"] = norm(E)
    if not spec.tied:
        w["output.weight"] = mat(n_vocab, E, OUT_GAIN)
    return w


def _is_quantized(name: str, a: np.ndarray) -> bool:
    return a.ndim == 2 and name.endswith(".weight")  # matrices; norms, biases, rope_freqs stay F32


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
    w = hf_weights(spec, nv, seed)

    rs = spec.rope_scaling
    rope_type = rs.get("rope_type")
    if arch == "llama":  # the converter permutes q/k rows for adjacent-pair RoPE
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
    gw.add_name(f"peregrine-synthetic-{spec.name}")
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
    if spec.head_dim != spec.n_embd // spec.n_head:  # config.head_dim (Qwen3 always has one)
        gw.add_key_length(spec.head_dim)
        gw.add_value_length(spec.head_dim)
    gw.add_file_type(gguf.LlamaFileType.ALL_F32 if wtype == "F32" else gguf.LlamaFileType.MOSTLY_Q8_0)
    if arch == "llama":  # LlamaModel.set_gguf_parameters
        gw.add_vocab_size(nv)
        gw.add_rope_dimension_count(spec.head_dim)
    gw.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(gw, tok)

    for name, a in tensors.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        if wtype == "Q8_0" and _is_quantized(name, a):
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
