"""Independent numpy forward pass of GGUF `mamba2`, `nemotron_h_moe` (Mamba-2 / attention / MoE hybrid)
and `nemotron_h` (Mamba-2 / attention / squared-ReLU MLP).

Written from the definitions (the Mamba-2 paper's SSD recurrence, HF transformers' Mamba2Mixer /
NemotronH blocks, DeepSeek-V3-style sigmoid routing), on the tensors as the llama.cpp converter
stores them (see synthetic_ssm.py); not from llama.cpp's or the engine's C++. float64 throughout.

    h = tok_embd[tokens]
    per block i (every block: h = h + mixer(rmsnorm(h) * attn_norm)), the mixer by the layer's kind:
      M  Mamba-2:
         zxbcdt = a @ ssm_in.T                      split in this order: z [d_inner] | xBC [conv_dim] | dt [n_head]
         xBC = silu(causal_conv(xBC) + conv_bias)   depthwise, window = the d_conv-1 previous xBC rows
                                                    (the conv state, oldest first) then this row;
                                                    out[t, c] = sum_k window[k, c] * ssm_conv1d[c, k]
         x, B, C = xBC split [d_inner | n_group*d_state | n_group*d_state]; x as [n_head, head_dim],
                   B, C as [n_group, d_state]; head h reads group h // (n_head / n_group)
         dt = softplus(dt + ssm_dt.bias)            [n_head]
         A = ssm_a                                  stored negative (-exp(A_log)): used as is
         per token, per head:  S = exp(dt*A) * S + dt * outer(x, B)      S [head_dim, d_state]
                               y = S @ C + D * x
         y = y * silu(z)                            the gate, BEFORE the norm (norm_before_gate=False)
         y = rmsnorm over each of n_group contiguous slices of d_inner (eps = rms eps) * ssm_norm
         out = y @ ssm_out.T
      *  attention: q, k, v = a @ W.T; NO RoPE; causal softmax(q k^T / sqrt(head_dim)) v with GQA
         (query head h reads KV head h // (n_head / n_head_kv)); out = o @ attn_output.T
      E  MoE: s = sigmoid(a @ ffn_gate_inp.T)      [n_expert]
         chosen = top-k of (s + exp_probs_b)        the bias only CHOOSES the experts
         w = s[chosen]; w /= sum(w) (expert_weights_norm; sum clamped >= 6.1e-5); w *= expert_weights_scale
         out = sum_j w_j * down_j(relu(up_j a)^2) + down_sh(relu(up_sh a)^2)   (non-gated ReLU^2)
    logits = (rmsnorm(h) * output_norm) @ output.T  (output = token_embd when the file has no output.weight)

Layer kinds (llama.cpp's rule, llama_model_nemotron_h::load_arch_hparams): layer i is Mamba-2 iff
head_count_kv[i] == 0 and feed_forward_length[i] == 0; attention iff feed_forward_length[i] == 0 and
head_count_kv[i] > 0; otherwise an FFN layer (MoE when expert_count > 0). mamba2: every layer is M.

State across forward calls (`logits(tokens, batches=[...])`): per Mamba-2 layer the conv state
[d_conv-1, conv_dim] (the last xBC rows before the conv) and the SSM state [n_head, head_dim,
d_state]; per attention layer the K/V of all earlier positions. Running a prompt in several calls
must give the logits of one call.

Scan: `scan="sequential"` is the recurrence above, token by token (the definition). `scan="chunked"`
is the SSD chunked form (the Mamba-2 paper's state-space duality): within a chunk of L tokens with
cumulative log-decay c_t = sum_{s<=t} dt_s A,
    y_t = exp(c_t) * (S_0 @ C_t)  +  sum_{s<=t} exp(c_t - c_s) (C_t . B_s) dt_s x_s  +  D x_t
    S_L = exp(c_L) S_0  +  sum_s exp(c_L - c_s) dt_s outer(x_s, B_s)
which `check_scans_agree` proves equal to the recurrence (the oracle for a chunked prompt scan).

Q8_0 files: weights are dequantized once with gguf-py; with `act_q8` (with_q8_activations()) every
activation entering a Q8_0 matmul is first rounded to Q8_0 blocks as ggml's CPU backend does, which
makes the reference follow llama.cpp's expert choices where routing scores are close (see
test_forward_ssm.py); without it activations stay float64.

Standalone:
    python tests/reference/ssm_ref.py MODEL.gguf --prompt-ids 1,2,3   # argmax per position
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

import gguf
import numpy as np

from hf_decoder_ref import _get, tensor_to_f32

ARCHS = ("mamba2", "nemotron_h_moe", "nemotron_h")
MOE_WEIGHTS_SUM_MIN = 6.103515625e-5  # llama.cpp clamps the selected weights' sum (smallest F16 normal)

# Deliberate mistakes (each must fail against llama.cpp: test_forward_ssm.py).
ABLATIONS = frozenset({
    # Mamba-2 mixer
    "no_d_skip",  # y = S @ C without D * x
    "dt_no_softplus",  # dt = dt + dt_bias, no softplus
    "no_z_gate",  # y not multiplied by silu(z)
    "gate_after_norm",  # rmsnorm(y) * w, then * silu(z) (norm_before_gate=True)
    "ungrouped_norm",  # one RMSNorm over all of d_inner instead of n_group slices
    "conv_window_reversed",  # conv taps applied newest-first (a flipped kernel)
    "no_conv_bias",
    "a_exp_again",  # A = -exp(ssm_a), as if the file held A_log
    "groups_interleaved",  # head h reads B/C group h % n_group instead of h // (n_head / n_group)
    "z_x_swapped",  # in_proj split as x.. | z.. (z taken from the xBC rows and x from z's)
    # state across forward calls (only differ when the prompt runs in several calls)
    "reset_state_between_calls",  # conv and SSM state start from zero in every call
    "no_conv_state_carry",  # the SSM state carries over, the conv window does not
    # nemotron_h_moe
    "routing_softmax",  # softmax over the router logits instead of sigmoid
    "no_expert_bias",  # experts chosen by the sigmoid scores alone
    "bias_in_weights",  # exp_probs_b added to the mixing weights too
    "no_weights_norm",  # chosen weights not renormalised to sum 1
    "no_weights_scale",  # expert_weights_scale not applied
    "relu_not_squared",  # ReLU instead of ReLU^2 (routed and shared experts)
    "no_shared_expert",
    "attn_rope",  # NEOX RoPE (base 10000) on q and k: Nemotron-H attention has none
})


@dataclass(frozen=True)
class Config:
    arch: str
    kinds: str  # per layer: M Mamba-2, * attention, E MoE, - dense MLP
    n_embd: int
    n_vocab: int
    rms_eps: float
    d_inner: int
    d_state: int
    n_group: int
    ssm_n_head: int
    d_conv: int
    n_head: tuple[int, ...] = ()  # attention heads per layer (the converter writes one value for all)
    n_head_kv: tuple[int, ...] = ()
    head_dim: int = 0
    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_ff_shexp: int = 0
    weights_norm: bool = False
    weights_scale: float = 1.0
    n_ff: tuple[int, ...] = ()  # feed_forward_length per layer (the dense MLPs' widths)

    @property
    def n_layer(self) -> int:
        return len(self.kinds)

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_group * self.d_state

    @property
    def ssm_head_dim(self) -> int:
        return self.d_inner // self.ssm_n_head


def _per_layer(v, n: int, key: str) -> tuple[int, ...]:
    vals = [int(x) for x in v] if isinstance(v, (list, tuple)) else [int(v)] * n
    if len(vals) != n:
        raise ValueError(f"{key} has {len(vals)} entries for {n} layers")
    return tuple(vals)


def read_config(reader: gguf.GGUFReader) -> Config:
    arch = _get(reader, "general.architecture")
    if arch not in ARCHS:
        raise ValueError(f"ssm_ref handles {ARCHS}, not general.architecture {arch!r}")
    p = arch + "."
    n_layer = int(_get(reader, p + "block_count"))
    d_inner, n_group = int(_get(reader, p + "ssm.inner_size")), int(_get(reader, p + "ssm.group_count"))
    ssm_n_head = int(_get(reader, p + "ssm.time_step_rank"))
    if d_inner % ssm_n_head or d_inner % n_group or ssm_n_head % n_group:
        raise ValueError(f"ssm.inner_size {d_inner}, time_step_rank {ssm_n_head}, group_count {n_group}: "
                         f"heads and groups must divide evenly")
    common = dict(arch=arch, n_embd=int(_get(reader, p + "embedding_length")),
                  n_vocab=len(reader.fields["tokenizer.ggml.tokens"].data),
                  rms_eps=float(_get(reader, p + "attention.layer_norm_rms_epsilon")),
                  d_inner=d_inner, d_state=int(_get(reader, p + "ssm.state_size")), n_group=n_group,
                  ssm_n_head=ssm_n_head, d_conv=int(_get(reader, p + "ssm.conv_kernel")))
    if arch == "mamba2":
        return Config(kinds="M" * n_layer, **common)
    kv = _per_layer(_get(reader, p + "attention.head_count_kv"), n_layer, "head_count_kv")
    ff = _per_layer(_get(reader, p + "feed_forward_length"), n_layer, "feed_forward_length")
    n_expert = int(_get(reader, p + "expert_count", 0))
    # FFN layers: routed experts when the file has experts, else dense squared-ReLU MLPs ("-").
    kinds = "".join("M" if k == 0 and f == 0 else "*" if f == 0 else "E" if n_expert else "-" for k, f in zip(kv, ff))
    n_head = _per_layer(_get(reader, p + "attention.head_count"), n_layer, "head_count")
    return Config(kinds=kinds, n_head=n_head, n_head_kv=kv, n_ff=tuple(ff),
                  head_dim=int(_get(reader, p + "attention.key_length", common["n_embd"] // max(max(n_head), 1))),
                  n_expert=n_expert, n_expert_used=int(_get(reader, p + "expert_used_count", 0)),
                  n_ff_exp=int(_get(reader, p + "expert_feed_forward_length", 0)),
                  n_ff_shexp=int(_get(reader, p + "expert_shared_feed_forward_length", 0)),
                  weights_norm=bool(_get(reader, p + "expert_weights_norm", False)),
                  weights_scale=float(_get(reader, p + "expert_weights_scale", 0.0)) or 1.0, **common)


@dataclass
class Layer:
    kind: str
    attn_norm: np.ndarray
    w: dict[str, np.ndarray]  # the mixer's tensors, short names (ssm_in, ssm_a, wq, up_exps, ...)
    q8: frozenset[str] = frozenset()  # which of them the file holds as Q8_0


@dataclass
class State:
    """What one sequence carries from one forward call to the next."""
    conv: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> [d_conv-1, conv_dim], oldest row first
    ssm: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> [n_head, head_dim, d_state]
    k: dict[int, np.ndarray] = field(default_factory=dict)  # layer -> [n_past, n_head_kv, head_dim]
    v: dict[int, np.ndarray] = field(default_factory=dict)
    n_past: int = 0


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softplus(x: np.ndarray) -> np.ndarray:
    return np.where(x > 20.0, x, np.log1p(np.exp(np.minimum(x, 20.0))))


@dataclass
class SSMRef:
    cfg: Config
    tok_embd: np.ndarray
    layers: list[Layer]
    output_norm: np.ndarray
    output: np.ndarray
    output_q8: bool = False  # output.weight (or the tied token_embd) is Q8_0
    ablate: frozenset[str] = field(default_factory=frozenset)
    # Round each activation that enters a Q8_0 matmul to Q8_0 blocks first, as ggml's CPU backend
    # does (its vec_dot_type for Q8_0 weights): numerics of the oracle, not of the architecture.
    act_q8: bool = False

    @classmethod
    def load(cls, source) -> "SSMRef":
        reader = source if isinstance(source, gguf.GGUFReader) else gguf.GGUFReader(str(source))
        c = read_config(reader)
        by_name = {t.name: t for t in reader.tensors}
        q8_names = {n for n, t in by_name.items() if t.tensor_type == gguf.GGMLQuantizationType.Q8_0}

        def w(name, shape, required=True):
            if name not in by_name:
                if required:
                    raise KeyError(f"tensor {name!r} missing")
                return None
            a = tensor_to_f32(by_name[name]).astype(np.float64)
            if a.shape != shape:
                raise ValueError(f"tensor {name!r} has shape {a.shape}, expected {shape}")
            return a

        E, H, G = c.n_embd, c.ssm_n_head, c.n_group
        layers = []
        for i, kind in enumerate(c.kinds):
            b = f"blk.{i}."
            if kind == "M":
                t = {"ssm_in": w(b + "ssm_in.weight", (c.d_inner + c.conv_dim + H, E)),
                     "conv": w(b + "ssm_conv1d.weight", (c.conv_dim, c.d_conv)),
                     "conv_b": w(b + "ssm_conv1d.bias", (c.conv_dim,)),
                     "dt_b": w(b + "ssm_dt.bias", (H,)),
                     "A": w(b + "ssm_a", (H, 1))[:, 0], "D": w(b + "ssm_d", (H, 1))[:, 0],
                     "norm": w(b + "ssm_norm.weight", (G, c.d_inner // G)),
                     "ssm_out": w(b + "ssm_out.weight", (E, c.d_inner))}
            elif kind == "*":
                D, q, kv = c.head_dim, c.n_head[i], c.n_head_kv[i]
                t = {"wq": w(b + "attn_q.weight", (q * D, E)), "wk": w(b + "attn_k.weight", (kv * D, E)),
                     "wv": w(b + "attn_v.weight", (kv * D, E)), "wo": w(b + "attn_output.weight", (E, q * D))}
            elif kind == "-":
                F = c.n_ff[i]
                t = {"up": w(b + "ffn_up.weight", (F, E)), "down": w(b + "ffn_down.weight", (E, F))}
            else:
                X, F, FS = c.n_expert, c.n_ff_exp, c.n_ff_shexp
                t = {"router": w(b + "ffn_gate_inp.weight", (X, E)), "bias": w(b + "exp_probs_b.bias", (X,)),
                     "up_exps": w(b + "ffn_up_exps.weight", (X, F, E)),
                     "down_exps": w(b + "ffn_down_exps.weight", (X, E, F)),
                     "up_sh": w(b + "ffn_up_shexp.weight", (FS, E)), "down_sh": w(b + "ffn_down_shexp.weight", (E, FS))}
            file_names = {"ssm_in": "ssm_in.weight", "ssm_out": "ssm_out.weight", "wq": "attn_q.weight",
                          "wk": "attn_k.weight", "wv": "attn_v.weight", "wo": "attn_output.weight",
                          "up_exps": "ffn_up_exps.weight", "down_exps": "ffn_down_exps.weight",
                          "up_sh": "ffn_up_shexp.weight", "down_sh": "ffn_down_shexp.weight",
                          "router": "ffn_gate_inp.weight", "up": "ffn_up.weight", "down": "ffn_down.weight"}
            q8 = frozenset(k for k, f in file_names.items() if k in t and b + f in q8_names)
            layers.append(Layer(kind, w(b + "attn_norm.weight", (E,)), t, q8))
        tok = w("token_embd.weight", (c.n_vocab, E))
        out = w("output.weight", (c.n_vocab, E), required=False)
        out_q8 = ("output.weight" if out is not None else "token_embd.weight") in q8_names
        return cls(c, tok, layers, w("output_norm.weight", (E,)), tok if out is None else out, out_q8)

    def with_ablation(self, *names: str) -> "SSMRef":
        unknown = set(names) - ABLATIONS
        if unknown:
            raise ValueError(f"unknown ablation(s) {sorted(unknown)}; known: {sorted(ABLATIONS)}")
        return dataclasses.replace(self, ablate=frozenset(names))

    def with_q8_activations(self, on: bool = True) -> "SSMRef":
        return dataclasses.replace(self, act_q8=on)

    def mm(self, x: np.ndarray, w: np.ndarray, q8: bool) -> np.ndarray:
        """x [n, in] @ w[out, in].T, x first rounded to Q8_0 blocks when act_q8 and w is Q8_0."""
        if self.act_q8 and q8:
            x32 = np.ascontiguousarray(x, dtype=np.float32)
            x = gguf.quants.dequantize(gguf.quants.quantize(x32, gguf.GGMLQuantizationType.Q8_0),
                                       gguf.GGMLQuantizationType.Q8_0).reshape(x.shape).astype(np.float64)
        return x @ w.T

    def rmsnorm(self, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.cfg.rms_eps) * weight

    # ---- Mamba-2 ------------------------------------------------------------------------------------

    def mamba2(self, i: int, L: Layer, a: np.ndarray, st: State, scan: str, chunk: int) -> np.ndarray:
        c, ab = self.cfg, self.ablate
        n = a.shape[0]
        H, P, N, G = c.ssm_n_head, c.ssm_head_dim, c.d_state, c.n_group
        t = L.w
        zxbcdt = self.mm(a, t["ssm_in"], "ssm_in" in L.q8)  # [n, d_inner + conv_dim + n_head]
        z, xBC, dt = (zxbcdt[:, :c.d_inner], zxbcdt[:, c.d_inner:c.d_inner + c.conv_dim],
                      zxbcdt[:, c.d_inner + c.conv_dim:])
        if "z_x_swapped" in ab:
            z, xBC = xBC[:, :c.d_inner], np.concatenate([z, xBC[:, c.d_inner:]], axis=1)

        # causal depthwise conv over [conv state; this call's rows]
        prev = st.conv.get(i, np.zeros((c.d_conv - 1, c.conv_dim)))
        window = np.concatenate([prev, xBC], axis=0)  # [d_conv-1 + n, conv_dim]
        st.conv[i] = window[n:]  # the last d_conv-1 rows: the next call's state
        w = t["conv"][:, ::-1] if "conv_window_reversed" in ab else t["conv"]  # [conv_dim, d_conv]
        conv = sum(window[k:k + n] * w[:, k] for k in range(c.d_conv))
        if "no_conv_bias" not in ab:
            conv = conv + t["conv_b"]
        xBC = silu(conv)
        x = xBC[:, :c.d_inner].reshape(n, H, P)
        B = xBC[:, c.d_inner:c.d_inner + G * N].reshape(n, G, N)
        C = xBC[:, c.d_inner + G * N:].reshape(n, G, N)
        group = np.arange(H) % G if "groups_interleaved" in ab else np.arange(H) // (H // G)
        Bh, Ch = B[:, group], C[:, group]  # [n, H, N]

        dt = dt + t["dt_b"]
        dt = dt if "dt_no_softplus" in ab else softplus(dt)  # [n, H]
        A = -np.exp(t["A"]) if "a_exp_again" in ab else t["A"]  # [H], negative
        S0 = st.ssm.get(i, np.zeros((H, P, N)))
        if scan == "sequential":
            y, S = self.scan_sequential(x, dt, A, Bh, Ch, S0)
        elif scan == "chunked":
            y, S = self.scan_chunked(x, dt, A, Bh, Ch, S0, chunk)
        else:
            raise ValueError(f"scan must be sequential or chunked, not {scan!r}")
        st.ssm[i] = S
        if "no_d_skip" not in ab:
            y = y + t["D"][:, None] * x
        y = y.reshape(n, c.d_inner)

        gate = np.ones_like(z) if "no_z_gate" in ab else silu(z)
        if "gate_after_norm" not in ab:
            y = y * gate
        if "ungrouped_norm" in ab:
            y = self.rmsnorm(y, t["norm"].reshape(-1))
        else:
            y = self.rmsnorm(y.reshape(n, G, c.d_inner // G), t["norm"]).reshape(n, c.d_inner)
        if "gate_after_norm" in ab:
            y = y * gate
        return self.mm(y, t["ssm_out"], "ssm_out" in L.q8)

    @staticmethod
    def scan_sequential(x, dt, A, B, C, S):
        """The recurrence, token by token. x [n, H, P], dt [n, H], A [H], B, C [n, H, N], S [H, P, N]."""
        y = np.empty_like(x)
        for s in range(x.shape[0]):
            S = np.exp(dt[s] * A)[:, None, None] * S + (dt[s][:, None] * x[s])[:, :, None] * B[s][:, None, :]
            y[s] = np.einsum("hpn,hn->hp", S, C[s])
        return y, S

    @staticmethod
    def scan_chunked(x, dt, A, B, C, S, chunk: int):
        """SSD: quadratic (attention-like) within chunks of `chunk` tokens, the state between them."""
        n = x.shape[0]
        y = np.empty_like(x)
        for c0 in range(0, n, chunk):
            sl = slice(c0, min(c0 + chunk, n))
            xs, dts, Bs, Cs = x[sl], dt[sl], B[sl], C[sl]
            L = xs.shape[0]
            cs = np.cumsum(dts * A, axis=0)  # [L, H]: log decay from the chunk start through token t
            seg = cs[:, None, :] - cs[None, :, :]  # [t, s, H]: log decay from after s through t
            causal = np.tril(np.ones((L, L), dtype=bool))[:, :, None]
            decay = np.exp(np.where(causal, seg, -np.inf))  # 0 above the diagonal
            cb = np.einsum("thn,shn->tsh", Cs, Bs)  # C_t . B_s per head
            y_in = np.einsum("tsh,sh,shp->thp", decay * cb, dts, xs)
            y_st = np.exp(cs)[:, :, None] * np.einsum("hpn,thn->thp", S, Cs)
            y[sl] = y_in + y_st
            to_end = np.exp(cs[-1][None, :] - cs)  # [s, H]: decay from after s to the chunk end
            S = np.exp(cs[-1])[:, None, None] * S + np.einsum("sh,sh,shp,shn->hpn", to_end, dts, xs, Bs)
        return y, S

    # ---- attention ----------------------------------------------------------------------------------

    def attention(self, i: int, L: Layer, a: np.ndarray, st: State) -> np.ndarray:
        c, t = self.cfg, L.w
        n, D, H, KV = a.shape[0], c.head_dim, c.n_head[i], c.n_head_kv[i]
        q = self.mm(a, t["wq"], "wq" in L.q8).reshape(n, H, D)
        k = self.mm(a, t["wk"], "wk" in L.q8).reshape(n, KV, D)
        v = self.mm(a, t["wv"], "wv" in L.q8).reshape(n, KV, D)
        pos = st.n_past + np.arange(n)
        if "attn_rope" in self.ablate:
            inv = 10000.0 ** (-np.arange(0, D, 2) / D)
            ang = pos[:, None] * inv[None, :]
            cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

            def rope(u):
                u1, u2 = u[..., :D // 2], u[..., D // 2:]
                return np.concatenate([u1 * cos - u2 * sin, u2 * cos + u1 * sin], axis=-1)

            q, k = rope(q), rope(k)
        K = np.concatenate([st.k[i], k]) if i in st.k else k  # [n_past + n, KV, D]
        V = np.concatenate([st.v[i], v]) if i in st.v else v
        st.k[i], st.v[i] = K, V
        kv_of = np.arange(H) // (H // KV)
        scores = np.einsum("thd,shd->hts", q, K[:, kv_of]) / math.sqrt(D)
        mask = np.arange(K.shape[0])[None, :] > pos[:, None]  # [n, n_past + n]
        scores = np.where(mask[None], -np.inf, scores)
        scores -= scores.max(axis=-1, keepdims=True)
        p = np.exp(scores)
        p /= p.sum(axis=-1, keepdims=True)
        o = np.einsum("hts,shd->thd", p, V[:, kv_of]).reshape(n, H * D)
        return self.mm(o, t["wo"], "wo" in L.q8)

    # ---- MoE ----------------------------------------------------------------------------------------

    def moe(self, L: Layer, a: np.ndarray, trace: dict | None) -> np.ndarray:
        c, ab, t = self.cfg, self.ablate, L.w
        logits = self.mm(a, t["router"], "router" in L.q8)  # [n, n_expert]
        if "routing_softmax" in ab:
            e = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs = e / e.sum(axis=-1, keepdims=True)
        else:
            probs = 1.0 / (1.0 + np.exp(-logits))
        sel = probs if "no_expert_bias" in ab else probs + t["bias"]
        order = np.argsort(-sel, axis=-1, kind="stable")
        chosen = order[:, :c.n_expert_used]  # [n, k]
        if trace is not None:  # how far the k-th choice is from the first one left out
            rows = np.arange(a.shape[0])
            trace.setdefault("router_gap", []).append(
                sel[rows, order[:, c.n_expert_used - 1]] - sel[rows, order[:, c.n_expert_used]])
        wsrc = probs + t["bias"] if "bias_in_weights" in ab else probs
        wts = np.take_along_axis(wsrc, chosen, axis=-1)  # [n, k]
        if c.weights_norm and "no_weights_norm" not in ab:
            wts = wts / np.maximum(wts.sum(axis=-1, keepdims=True), MOE_WEIGHTS_SUM_MIN)
        if "no_weights_scale" not in ab:
            wts = wts * c.weights_scale

        def act(u):
            r = np.maximum(u, 0.0)
            return r if "relu_not_squared" in ab else r * r

        out = np.zeros_like(a)
        for j in range(c.n_expert_used):
            for e in np.unique(chosen[:, j]):
                rows = np.flatnonzero(chosen[:, j] == e)
                h = self.mm(act(self.mm(a[rows], t["up_exps"][e], "up_exps" in L.q8)), t["down_exps"][e],
                            "down_exps" in L.q8)
                out[rows] += wts[rows, j, None] * h
        if "no_shared_expert" not in ab:
            out += self.mm(act(self.mm(a, t["up_sh"], "up_sh" in L.q8)), t["down_sh"], "down_sh" in L.q8)
        return out

    def mlp(self, L: Layer, a: np.ndarray) -> np.ndarray:
        """Nemotron-H's dense MLP: down(relu(up a)^2), no gate."""
        r = np.maximum(self.mm(a, L.w["up"], "up" in L.q8), 0.0)
        return self.mm(r if "relu_not_squared" in self.ablate else r * r, L.w["down"], "down" in L.q8)

    # ---- the model ----------------------------------------------------------------------------------

    def forward(self, tokens, st: State, scan: str = "sequential", chunk: int = 16,
                trace: dict | None = None) -> np.ndarray:
        """One forward call of TOKENS after the state ST (updated in place): logits [n, n_vocab] float64."""
        h = self.tok_embd[tokens]
        for i, L in enumerate(self.layers):
            a = self.rmsnorm(h, L.attn_norm)
            if L.kind == "M":
                h = h + self.mamba2(i, L, a, st, scan, chunk)
            elif L.kind == "*":
                h = h + self.attention(i, L, a, st)
            elif L.kind == "-":
                h = h + self.mlp(L, a)
            else:
                h = h + self.moe(L, a, trace)
        st.n_past += len(tokens)
        return self.mm(self.rmsnorm(h, self.output_norm), self.output, self.output_q8)

    def logits(self, tokens, *, batches=None, scan: str = "sequential", chunk: int = 16,
               trace: dict | None = None) -> np.ndarray:
        """float32 [n_tok, n_vocab] for one sequence from an empty state.

        batches: sizes of consecutive forward calls (default: one call); the state carries between
        them (or not, with the reset_state_between_calls / no_conv_state_carry ablations).
        scan: "sequential" (the recurrence) or "chunked" (SSD with `chunk`-token chunks).
        trace: a dict that collects "router_gap" (per MoE layer, [n_tok]: the 4th minus the 5th
        selection score, i.e. k-th minus (k+1)-th) when given.
        """
        return self.logits64(tokens, batches=batches, scan=scan, chunk=chunk, trace=trace).astype(np.float32)

    def logits64(self, tokens, *, batches=None, scan: str = "sequential", chunk: int = 16,
                 trace: dict | None = None) -> np.ndarray:
        """logits() in float64."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 1 or tokens.size == 0 or tokens.min() < 0 or tokens.max() >= self.cfg.n_vocab:
            raise ValueError(f"tokens must be a non-empty list of ids in [0, {self.cfg.n_vocab})")
        batches = list(batches or [tokens.size])
        if sum(batches) != tokens.size or min(batches) < 1:
            raise ValueError(f"batches {batches} do not split {tokens.size} tokens")
        st, out, p = State(), [], 0
        for nb in batches:
            if p and "reset_state_between_calls" in self.ablate:
                st.conv.clear()
                st.ssm.clear()
            if p and "no_conv_state_carry" in self.ablate:
                st.conv.clear()
            out.append(self.forward(tokens[p:p + nb], st, scan, chunk, trace))
            p += nb
        return np.concatenate(out)

    def check_scans_agree(self, tokens, chunk: int = 16, batches=None, rtol: float = 1e-9) -> float:
        """The chunked SSD scan gives the recurrence's logits; returns the max |diff| (raises if not)."""
        a = self.logits64(tokens, batches=batches, scan="sequential")
        b = self.logits64(tokens, batches=batches, scan="chunked", chunk=chunk)
        d = float(np.abs(a - b).max())
        if d > rtol * max(1.0, float(np.abs(a).max())):
            raise AssertionError(f"chunked SSD scan (chunk {chunk}) differs from the recurrence by {d:.3g}")
        return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    ap.add_argument("--scan", choices=("sequential", "chunked"), default="sequential")
    args = ap.parse_args(argv)
    ref = SSMRef.load(args.model)
    lg = ref.logits([int(s) for s in args.prompt_ids.split(",") if s.strip()], scan=args.scan)
    print(ref.cfg)
    print("argmax per position:", " ".join(str(int(i)) for i in lg.argmax(axis=-1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
