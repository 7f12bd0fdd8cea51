#!/usr/bin/env python3
"""Speed of the new architectures (qwen3moe, mamba2, nemotron_h_moe) against llama.cpp on the same files.

Three measurements on synthetic random-weight models written by the test suite's writers
(tests/reference/synthetic_models.py and synthetic_ssm.py, SmolLM2's full 49152-token vocabulary),
at realistic widths scaled to a 2-core machine:

  key        architecture    shape (full mode)
  qwen3moe   qwen3moe        Qwen3-30B-A3B halved: n_embd 1024, 16 layers, 16 q / 2 KV heads of 128,
                             QK-norm, 64 experts of 512, 8 used, untied head (~1.8B weights, ~0.33B active)
  mamba2     mamba2          mamba2-130m: n_embd 768, 24 layers, d_inner 1536 (24 heads of 64),
                             d_state 128, 1 group, d_conv 4, tied head (~128M weights)
  dense      llama           the attention model of mamba2's size: n_embd 768, 14 layers, 12 q / 4 KV
                             heads of 64, SwiGLU 2048, tied head, trained context 32768 (~126M weights)
  nemotron_h nemotron_h_moe  Nemotron-3-Nano-shaped hybrid: n_embd 1024, 12 layers MEMEM*EMEM*E
                             (5 Mamba-2: d_inner 1536, d_state 128, 4 groups; 2 attention: 16 q / 2 KV
                             heads of 128; 5 MoE: 64 ReLU^2 experts of 768, 6 used, shared expert of
                             1536), untied head (~0.66B weights)

  1. pp512 and tg128 (2 threads) of `peregrine bench` and llama-bench (`-p 512 -n 0` / `-p 0 -n 128`) on
     each model file and weight type (--types: Q8_0 as the writers write it, the others made from it by
     `peregrine quantize`, which writes what llama-quantize writes), in --rounds rounds that alternate
     the engines: llama.cpp first in odd rounds, peregrine first in even ones, every test its own process.
  2. long-context decode: tg128 at depth 512, 4096 and 16384 (--depths) for mamba2 and dense (the
     --long-type file): llama-bench `-p 0 -n 128 -d DEPTH` and `peregrine bench -p 0 -n 128 -d DEPTH`
     (both fill the cache untimed, then time the generation; `peregrine run` with a DEPTH-token prompt
     " the" x DEPTH is the fallback when bench fails, its generation tok/s x 127/128 for 127 forward passes and
     128 samplings). The columns "vs first depth" show how flat each model's cost stays.
  3. the MoE decode roofline: active bytes per token, read off each file's tensor table = attention +
     router + shared expert + n_used/n_expert of every expert stack + the output head (token_embd whole
     when tied, else one row of it and output.weight) + Mamba-2 layers' weights and their recurrent state
     (conv + SSM state in F32, read and written: 2x), KV cache ignored (tg128 reaches 128 positions);
     roofline tok/s = measured read bandwidth / active bytes; the tg columns "% roof" = tg / roofline.
     Bandwidth: the repo's micro-benchmark (bench/kernels_bench.cpp, BM_mem_read/1GiB/*/pool:T: the
     best of its start-up roofline and the read loops), built once into
     ~/.cache/peregrine/kernels-bench-build when missing (--bandwidth auto, the default outside --quick),
     else numpy (a 1 GiB float32 array summed by T threads, best of 4 passes), which the header then says.

A test that `peregrine bench` fails is measured with `peregrine run` instead (pp: a PROMPT of -p tokens
with -n 0 -b P, the prompt tok/s; tg: prompt " the", -n N, as above) and footnoted. 

llama-bench is bench/llama_cpp_build.py's no-AMX build (built on first use, seconds on top of the
oracle's libllama), with its defaults (flash attention auto, n_batch 2048, n_ubatch 512, repack on);
if that configuration dies on a test it is retried with --repack 0 and footnoted, as compare.py does.
Models are written once into --model-dir (default ~/.cache/peregrine/bench-models; a .spec.json beside
each Q8_0 file records the shape: a file whose shape differs is written again) and reused; quantized
types are kept there too. Writing qwen3moe needs ~10 GB of RAM for a minute or two (the writers hold
the F32 weights of the whole model and the Q8_0 copy: ~5.5 bytes per weight; the script warns when
MemAvailable is short).

    .venv/bin/python bench/arch_speed.py --out arch_speed.md --json-out arch_speed.json   # full run
    .venv/bin/python bench/arch_speed.py --quick          # pipeline check: tiny models, -p 64 -n 16, one round
    .venv/bin/python bench/arch_speed.py --models mamba2,dense --tests depth --depths 512,4096

Time (2 threads), an estimate: the machine this was written on was loaded 3-4x over (others' builds and
tests), so nothing was timed in full mode. Once-only work: writing the models ~3-4 min (qwen3moe
1.8B weights ~1.5-2 min, nemotron_h 0.66B ~40 s, mamba2 and dense ~10 s each; measured here at 45 s per
1B weights for a 2-layer slice under load), quantizing them to Q4_0 ~1 min, building
peregrine_kernels_bench (6 s here with ccache warm, a few minutes cold). Each run: bandwidth ~15 s;
pp/tg 64 processes (4 models x 2 types x 2 tests x 2 engines x 2 rounds) of ~3-15 s, ~6-8 min; depth
12 processes, dominated by the 16384-token fills of dense (attention, quadratic: ~1 min ours, 2-4 min
llama.cpp's) and mamba2 (~15-30 s each), ~6-10 min. So ~15-20 min with the files cached, ~20-25 min
the first time; --tests speed or --tests depth runs one part. --quick: ~1.5 min (under that load).
On a busy machine llama.cpp slows far more than peregrine (its threads spin); commands run while other
processes took over 10% of the machine are footnoted per test as disturbed.
Needs gguf-py and numpy (the repo's .venv; started with another Python the script re-runs itself there).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
try:
    import gguf  # noqa: F401
    import numpy as np
except ImportError:  # the writers need gguf-py and numpy: the project's venv has them
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    if venv_python.is_file() and Path(sys.prefix).resolve() != (REPO_ROOT / ".venv").resolve():
        os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])
    print("error: bench/arch_speed.py needs gguf-py and numpy: run scripts/venv.sh, then "
          ".venv/bin/python bench/arch_speed.py", file=sys.stderr)
    sys.exit(1)

sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO_ROOT / "tests" / "reference"))
from compare import (FALLBACK, REPO, BenchFailed, cpu_isa, cpu_name, footnote_mark,  # noqa: E402
                     git_describe)
from llama_cpp_build import (CACHE, LLAMA_CPP_PYTHON_VERSION, NO_AMX_BUILD_DIR, Failure,  # noqa: E402
                             build_target, log)
import synthetic_models as sm  # noqa: E402
import synthetic_ssm as ss  # noqa: E402

MODEL_DIR = CACHE / "bench-models"
KERNELS_BENCH_DIR = CACHE / "kernels-bench-build"
THE = " the"  # one token (id 260) in SmolLM2's vocabulary, also after itself: N copies = N tokens
DISTURBED = 0.10  # others' share of the machine above which a command counts as disturbed
ARG_MAX_CHARS = 120_000
# Peak RSS of the writers per weight: F32 weights of the whole model + the Q8_0 copy + temporaries
# (measured: 1.70 GB for a 312M-weight 2-layer slice of the full qwen3moe)
WRITE_BYTES_PER_WEIGHT = 5.5  # one argv string may hold 128 KiB on Linux (MAX_ARG_STRLEN)


# ---------------------------------------------------------------------------------------------
# The models

@dataclass(frozen=True)
class BenchModel:
    key: str  # --models name
    label: str  # in the tables
    writer: str  # "models" (synthetic_models.py) or "ssm" (synthetic_ssm.py)
    spec: object  # that writer's Spec
    note: str  # one line on the shape, under the table

    def approx_params(self, n_vocab: int = 49152) -> int:
        """Weights the writer makes (for the memory check before writing)."""
        s = self.spec
        E = s.n_embd
        total = n_vocab * E * (1 if s.tied else 2)
        if self.writer == "models":
            Q, KV = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
            for i in range(s.n_layer):
                total += 2 * Q * E + 2 * KV * E
                if s.n_expert and i >= s.n_dense_lead:
                    total += s.n_expert * (3 * s.n_ff_exp * E + E) + 3 * s.n_ff_exp * s.n_expert_shared * E
                else:
                    total += 3 * s.n_ff * E
            return total
        for kind in s.pattern:
            if kind == "M":
                total += s.d_in_proj * E + s.conv_dim * (s.d_conv + 1) + s.d_inner * E + s.d_inner
            elif kind == "*":
                total += 2 * s.n_head * s.head_dim * E + 2 * s.n_head_kv * s.head_dim * E
            elif kind == "E":
                total += s.n_expert * (2 * s.n_ff_exp * E + E) + 2 * s.n_ff_shexp * E
        return total

    def write(self, path: Path) -> None:
        mod = sm if self.writer == "models" else ss
        mod.write_model(self.spec, path, wtype="Q8_0", n_vocab=None)

    def spec_json(self) -> dict:
        return {"writer": self.writer, "spec": dataclasses.asdict(self.spec), "n_vocab": "full", "wtype": "Q8_0"}


def bench_models(quick: bool) -> dict[str, BenchModel]:
    """The four models, full size or (--quick) tiny versions of the same layouts."""
    if quick:
        q3 = dataclasses.replace(sm.MODELS["qwen3moe"], name="quick-qwen3moe", n_layer=2, expert_spread=1.0)
        m2 = dataclasses.replace(ss.MODELS["mamba2"], name="quick-mamba2", pattern="MMMM", n_group=1)
        dn = sm.Spec("quick-dense", "llama", n_layer=4, rms_eps=1e-5, context_length=32768, tied=True)
        nh = dataclasses.replace(ss.MODELS["nemotron_h_moe"], name="quick-nemotron-h", n_expert_used=6,
                                 expert_spread=1.0, seed=0)
    else:
        q3 = dataclasses.replace(sm.MODELS["qwen3moe"], name="bench-qwen3moe", n_layer=16, n_embd=1024, n_head=16,
                                 n_head_kv=2, head_dim=128, n_ff=3072, n_expert=64, n_expert_used=8, n_ff_exp=512,
                                 expert_spread=1.0)
        m2 = dataclasses.replace(ss.MODELS["mamba2"], name="bench-mamba2", pattern="M" * 24, n_embd=768, d_inner=1536,
                                 ssm_n_head=24, d_state=128, n_group=1, d_conv=4, tied=True)
        dn = sm.Spec("bench-dense", "llama", n_layer=14, n_embd=768, n_head=12, n_head_kv=4, head_dim=64, n_ff=2048,
                     rms_eps=1e-5, context_length=32768, tied=True)
        nh = dataclasses.replace(ss.MODELS["nemotron_h_moe"], name="bench-nemotron-h", pattern="MEMEM*EMEM*E",
                                 n_embd=1024, d_inner=1536, ssm_n_head=24, d_state=128, n_group=4, d_conv=4,
                                 n_head=16, n_head_kv=2, head_dim=128, n_expert=64, n_expert_used=6, n_ff_exp=768,
                                 n_ff_shexp=1536, expert_spread=1.0, seed=0, tied=False)

    def moe_note(s) -> str:
        return (f"n_embd {s.n_embd}, {s.n_layer} layers, {s.n_head} q / {s.n_head_kv} KV heads of {s.head_dim} "
                f"(QK-norm), {s.n_expert} experts of {s.n_ff_exp}, {s.n_expert_used} used, "
                f"{'tied' if s.tied else 'untied'} head")

    def ssm_note(s) -> str:
        return (f"n_embd {s.n_embd}, {s.n_layer} layers {s.pattern if len(set(s.pattern)) > 1 else ''}"
                f"{'' if len(set(s.pattern)) > 1 else '(all Mamba-2)'}; Mamba-2 d_inner {s.d_inner} "
                f"({s.ssm_n_head} heads of {s.d_inner // s.ssm_n_head}), d_state {s.d_state}, {s.n_group} "
                f"group{'s' if s.n_group > 1 else ''}, d_conv {s.d_conv}"
                + (f"; attention {s.n_head} q / {s.n_head_kv} KV heads of {s.head_dim}, no RoPE; "
                   f"{s.n_expert} ReLU² experts of {s.n_ff_exp}, {s.n_expert_used} used, shared expert of "
                   f"{s.n_ff_shexp}" if s.arch == "nemotron_h_moe" else "")
                + f"; {'tied' if s.tied else 'untied'} head")

    return {
        "qwen3moe": BenchModel("qwen3moe", "qwen3moe", "models", q3, moe_note(q3)),
        "mamba2": BenchModel("mamba2", "mamba2", "ssm", m2, ssm_note(m2)),
        "dense": BenchModel("dense", "dense (llama)", "models", dn,
                            f"llama: n_embd {dn.n_embd}, {dn.n_layer} layers, {dn.n_head} q / {dn.n_head_kv} KV "
                            f"heads of {dn.head_dim}, SwiGLU {dn.n_ff}, RoPE, trained context "
                            f"{dn.context_length}, {'tied' if dn.tied else 'untied'} head"),
        "nemotron_h": BenchModel("nemotron_h", "nemotron_h_moe", "ssm", nh, ssm_note(nh)),
    }


def meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def ensure_q8(bm: BenchModel, model_dir: Path) -> Path:
    """The model's Q8_0 file, written by the writer if missing or of another shape."""
    path = model_dir / f"{bm.spec.name}.Q8_0.gguf"
    side = model_dir / f"{bm.spec.name}.spec.json"
    want = bm.spec_json()
    try:
        have = json.loads(side.read_text()) if side.is_file() else None
    except (OSError, json.JSONDecodeError):
        have = None
    if path.is_file() and have == want:
        log(f"reusing {path} ({path.stat().st_size / 2**20:.0f} MiB)")
        return path
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    avail = meminfo_available()
    need = WRITE_BYTES_PER_WEIGHT * bm.approx_params()
    log(f"writing {path} ({bm.note}): ~{bm.approx_params() / 1e6:.0f}M weights; the writer holds them all in F32 "
        f"and the Q8_0 copy: ~{need / 2**30:.1f} GiB of RAM" + (f", {avail / 2**30:.1f} GiB available now" if avail else ""))
    if avail is not None and avail < 1.1 * need:
        log(f"warning: {avail / 2**30:.1f} GiB available may not be enough to write {path.name} "
            f"(~{need / 2**30:.1f} GiB): close other work or expect swapping / the OOM killer")
    t0 = time.monotonic()
    try:
        bm.write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    side.write_text(json.dumps(want, indent=1) + "\n")
    for old in model_dir.glob(f"{bm.spec.name}.*.gguf"):  # quantized from an older shape
        if old != path and old.stat().st_mtime < path.stat().st_mtime:
            old.unlink()
    log(f"  wrote {path.stat().st_size / 2**20:.0f} MiB in {time.monotonic() - t0:.0f} s")
    return path


def ensure_type(q8: Path, qtype: str, peregrine: Path, threads: int, timeout: float, commands: list[str]) -> Path:
    """QTYPE's file made from the Q8_0 one by `peregrine quantize` (kept; remade when older than the Q8_0)."""
    if qtype == "Q8_0":
        return q8
    out = q8.with_name(q8.name.replace(".Q8_0.gguf", f".{qtype}.gguf"))
    if out.is_file() and out.stat().st_mtime >= q8.stat().st_mtime:
        log(f"reusing {out} ({out.stat().st_size / 2**20:.0f} MiB)")
        return out
    cmd = [str(peregrine), "quantize", str(q8), str(out), qtype, "-t", str(threads), "--json"]
    log("$ " + shlex.join(cmd))
    commands.append(shlex.join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchFailed(f"peregrine quantize {qtype} timed out after {timeout:.0f} s") from None
    if proc.returncode != 0 or not out.is_file():
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise BenchFailed(f"peregrine quantize {qtype}: exit {proc.returncode}: {last}")
    return out


# ---------------------------------------------------------------------------------------------
# Bytes a token reads

@dataclass
class FileStats:
    arch: str
    file_bytes: int
    n_params: int  # weights in the file (every tensor's elements)
    types: dict  # tensor type -> count
    active: dict  # part -> bytes one decoded token reads (and writes, for the recurrent state)
    n_expert: int = 0
    n_expert_used: int = 0

    @property
    def active_bytes(self) -> int:
        return sum(self.active.values())


def file_stats(path: Path) -> FileStats:
    r = gguf.GGUFReader(str(path))

    def meta(key, default=None):
        f = r.fields.get(key)
        if f is None:
            return default
        v = f.contents()
        return v

    arch = meta("general.architecture")
    n_expert = int(meta(f"{arch}.expert_count", 0) or 0)
    n_used = int(meta(f"{arch}.expert_used_count", 0) or 0)
    names = {t.name for t in r.tensors}
    tied = "output.weight" not in names
    active = {"attention": 0, "ffn (dense)": 0, "router": 0, "shared expert": 0, "experts (used)": 0,
              "mamba-2": 0, "recurrent state r+w": 0, "output head": 0, "token_embd row": 0, "norms": 0}
    types: dict[str, int] = {}
    n_params = 0
    mamba_layers = set()
    for t in r.tensors:
        n = int(t.n_bytes)
        n_params += int(t.n_elements)
        tname = t.tensor_type.name
        types[tname] = types.get(tname, 0) + 1
        name = t.name
        if name == "token_embd.weight":
            n_vocab = int(t.shape[-1])  # ggml order: [n_embd, n_vocab]
            if tied:
                active["output head"] += n
            else:
                active["token_embd row"] += n // max(n_vocab, 1)
        elif name == "output.weight":
            active["output head"] += n
        elif "_exps." in name:
            active["experts (used)"] += n * n_used // max(n_expert, 1)
        elif "ffn_gate_inp" in name or "exp_probs_b" in name:
            active["router"] += n
        elif "_shexp." in name:
            active["shared expert"] += n
        elif ".ssm_" in name:
            active["mamba-2"] += n
            mamba_layers.add(name.split(".")[1])
        elif ".attn_" in name and "norm" not in name:
            active["attention"] += n
        elif re.search(r"\.ffn_(gate|up|down)\.", name):
            active["ffn (dense)"] += n
        else:
            active["norms"] += n
    if mamba_layers:
        d_inner = int(meta(f"{arch}.ssm.inner_size", 0))
        d_state = int(meta(f"{arch}.ssm.state_size", 0))
        d_conv = int(meta(f"{arch}.ssm.conv_kernel", 0))
        n_group = int(meta(f"{arch}.ssm.group_count", 1) or 1)
        per_layer = 4 * (d_inner * d_state + (d_conv - 1) * (d_inner + 2 * n_group * d_state))
        active["recurrent state r+w"] = 2 * per_layer * len(mamba_layers)
    return FileStats(arch, path.stat().st_size, n_params, types, {k: v for k, v in active.items() if v},
                     n_expert, n_used)


# ---------------------------------------------------------------------------------------------
# Read bandwidth

def kernels_bench_binary(explicit: Path | None) -> Path | None:
    for p in ([explicit] if explicit else []) + [REPO / "build" / "bin" / "peregrine_kernels_bench",
                                                  KERNELS_BENCH_DIR / "bin" / "peregrine_kernels_bench"]:
        if p is not None and os.access(p, os.X_OK):
            return p
    return None


def build_kernels_bench(jobs: int) -> Path:
    """bench/KERNELS.md's build of peregrine_kernels_bench, into the cache (once)."""
    if shutil.which("cmake") is None or shutil.which("ninja") is None:
        raise Failure("cmake and ninja are needed to build peregrine_kernels_bench")
    KERNELS_BENCH_DIR.mkdir(parents=True, exist_ok=True)
    blog = KERNELS_BENCH_DIR / "build.log"
    log(f"building peregrine_kernels_bench in {KERNELS_BENCH_DIR} (-j{jobs}, log: {blog}); a few minutes, once")
    t0 = time.monotonic()
    with open(blog, "w") as out:
        for cmd in (["cmake", "-S", str(REPO), "-B", str(KERNELS_BENCH_DIR), "-G", "Ninja",
                     "-DCMAKE_BUILD_TYPE=Release", "-DPEREGRINE_BENCH=ON", "-DPEREGRINE_TESTS=OFF"],
                    ["ninja", "-C", str(KERNELS_BENCH_DIR), "-j", str(jobs), "peregrine_kernels_bench"]):
            out.write("$ " + shlex.join(cmd) + "\n")
            out.flush()
            if subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT) != 0:
                raise Failure(f"building peregrine_kernels_bench failed (see {blog})")
    log(f"  built in {time.monotonic() - t0:.0f} s")
    return KERNELS_BENCH_DIR / "bin" / "peregrine_kernels_bench"


def bandwidth_kernels_bench(binary: Path, threads: int, timeout: float, commands: list[str]) -> tuple[float, str]:
    # names end in /pool:T/min_time:0.500/real_time (each read loop runs for 0.5 s at least)
    cmd = [str(binary), f"--benchmark_filter=^BM_mem_read/1GiB/.*/pool:{threads}/", "--benchmark_format=json"]
    log("$ " + shlex.join(cmd))
    commands.append(shlex.join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchFailed(f"timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise BenchFailed(f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    try:
        data = json.loads(proc.stdout[proc.stdout.find("{"):])
    except json.JSONDecodeError:
        raise BenchFailed("no JSON from peregrine_kernels_bench") from None
    best, how = 0.0, ""
    m = re.search(rf"([\d.]+) GB/s \({threads} threads?, ([^)]+)\)", str(data.get("context", {}).get("measured_read_bw", "")))
    if m:
        best, how = float(m[1]) * 1e9, f"start-up roofline, {m[2]}"
    for b in data.get("benchmarks", []):
        if float(b.get("bw", 0)) > best:
            best, how = float(b["bw"]), str(b.get("name", "?")).split("/min_time")[0]
    if best <= 0:
        raise BenchFailed("peregrine_kernels_bench reported no read bandwidth")
    return best, f"peregrine_kernels_bench BM_mem_read, {threads} thread{'s' if threads > 1 else ''}, best: {how}"


def bandwidth_numpy(threads: int, gib: float) -> tuple[float, str]:
    from concurrent.futures import ThreadPoolExecutor
    a = np.ones(int(gib * 2**30) // 4, dtype=np.float32)
    parts = np.array_split(a, threads)
    best = 0.0
    with ThreadPoolExecutor(threads) as ex:
        for _ in range(4):  # the first pass also warms the pool
            t0 = time.perf_counter()
            sum(ex.map(np.sum, parts))
            best = max(best, a.nbytes / (time.perf_counter() - t0))
    del a, parts
    return best, (f"numpy fallback: {gib:g} GiB float32 summed by {threads} thread{'s' if threads > 1 else ''}, "
                  "best of 4 passes (np.sum, not the engine's read loops: treat the roofline as approximate)")


def measure_bandwidth(args, commands: list[str]) -> tuple[float, str, list[str]]:
    """(bytes/s, how it was measured, notes)."""
    notes: list[str] = []
    if args.bandwidth != "numpy":
        if args.threads not in (1, 2):
            notes.append(f"peregrine_kernels_bench measures pools of 1 and 2 threads only; -t {args.threads}: numpy")
        else:
            binary = kernels_bench_binary(args.kernels_bench)
            try:
                if binary is None and (args.bandwidth == "kernels-bench" or not args.quick):
                    binary = build_kernels_bench(args.jobs)
                if binary is not None:
                    bw, how = bandwidth_kernels_bench(binary, args.threads, args.timeout, commands)
                    return bw, how, notes
                notes.append("--quick without a built peregrine_kernels_bench: numpy")
            except (Failure, BenchFailed, OSError) as e:
                if args.bandwidth == "kernels-bench":
                    raise Failure(f"peregrine_kernels_bench: {e}") from None
                notes.append(f"peregrine_kernels_bench unavailable ({e}): numpy")
    bw, how = bandwidth_numpy(args.threads, 0.25 if args.quick else 1.0)
    return bw, how, notes


# ---------------------------------------------------------------------------------------------
# Running one test of both engines

def busy_seconds() -> float | None:
    """CPU seconds all processes have used (steal included), from /proc/stat's first line."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = f
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def execute(cmd: list[str], timeout: float) -> tuple[subprocess.CompletedProcess, float | None]:
    """Run CMD; return it and the share of the machine (0..1) other processes used meanwhile."""
    busy0, own0, t0 = busy_seconds(), children_seconds(), time.monotonic()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchFailed(f"timed out after {timeout:.0f} s") from None
    busy1, own1, wall = busy_seconds(), children_seconds(), time.monotonic() - t0
    others = None
    if busy0 is not None and busy1 is not None and wall > 0:
        others = min(max((busy1 - busy0 - (own1 - own0)) / (wall * (os.cpu_count() or 1)), 0.0), 1.0)
    if proc.returncode != 0:
        what = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        lines = [ln for ln in (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines()) if ln.strip()]
        raise BenchFailed(f"{what}: {(lines or ['(no output)'])[-1].strip()[:240]}")
    return proc, others


def parse_json_out(text: str):
    out = text.strip()
    start = min((i for i in (out.find("["), out.find("{")) if i >= 0), default=-1)
    try:
        return json.loads(out[start:]) if start >= 0 else json.loads(out)
    except json.JSONDecodeError:
        raise BenchFailed(f"no JSON on stdout ({out[:80]!r})") from None


RUN_TIMING = re.compile(r"prompt: (\d+) tokens, ([\d.]+) tok/s \| generation: (\d+) tokens, ([\d.]+) tok/s")
LLAMA_KEEP = ("build_commit", "n_threads", "n_batch", "n_ubatch", "type_k", "type_v", "flash_attn", "repack",
              "n_depth", "avg_ts", "stddev_ts")


@dataclass
class Test:
    """One model file and test, measured by both engines over the rounds."""
    model: BenchModel
    qtype: str
    file: Path
    n_prompt: int
    n_gen: int
    depth: int = 0
    llama: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    llama_settings: list[dict] = field(default_factory=list)
    ours_extra: list[dict] = field(default_factory=list)  # per run: isa, prefill rate at depth, ...
    others: list[float] = field(default_factory=list)  # others' machine share per command
    llama_default_failure: str | None = None  # why llama-bench's default configuration died
    ours_via: str = "bench"  # "bench" or "run"
    bench_failure: str | None = None  # why peregrine bench failed (then: run)
    llama_error: str | None = None
    ours_error: str | None = None

    @property
    def name(self) -> str:
        base = f"pp{self.n_prompt}" if self.n_prompt else f"tg{self.n_gen}"
        return base + (f" @ d{self.depth}" if self.depth else "")

    # ---- llama-bench
    def llama_cmd(self, lb: Path, threads: int, reps: int, fallback: bool) -> list[str]:
        return [str(lb), "-m", str(self.file), "-p", str(self.n_prompt), "-n", str(self.n_gen),
                *(["-d", str(self.depth)] if self.depth else []), "-t", str(threads), "-r", str(reps), "-o", "json",
                *(FALLBACK if fallback else [])]

    def run_llama(self, lb: Path, threads: int, reps: int, timeout: float, commands: list[str]) -> None:
        def once(fallback: bool) -> float:
            cmd = self.llama_cmd(lb, threads, reps, fallback)
            log("$ " + shlex.join(cmd))
            commands.append(shlex.join(cmd))
            proc, others = execute(cmd, timeout)
            results = parse_json_out(proc.stdout)
            for r in results if isinstance(results, list) else []:
                if (isinstance(r, dict) and r.get("n_prompt") == self.n_prompt and r.get("n_gen") == self.n_gen
                        and int(r.get("n_depth", 0)) == self.depth and "avg_ts" in r):
                    self.llama_settings.append({k: r.get(k) for k in LLAMA_KEEP})
                    if others is not None:
                        self.others.append(others)
                    return float(r["avg_ts"])
            raise BenchFailed(f"llama-bench JSON has no test p={self.n_prompt} n={self.n_gen} d={self.depth}")
        if self.llama_default_failure is None:
            try:
                self.llama.append(once(False))
                return
            except BenchFailed as e:
                self.llama_default_failure = str(e)
                log(f"  llama-bench's default configuration died ({e}); retrying with {' '.join(FALLBACK)}")
        self.llama.append(once(True))

    # ---- peregrine
    def prompt_text(self, n: int) -> str:
        return THE * n

    def run_cmd(self, peregrine: Path, threads: int) -> tuple[list[str], str]:
        """`peregrine run` for this test, and the same command as a shell line (prompt as $(python3 ...))."""
        if self.n_prompt:  # pp: the prompt alone, one batch
            n_tok, n_gen, ctx, batch = self.n_prompt, 0, self.n_prompt + 8, ["-b", str(max(self.n_prompt, 1))]
        else:  # tg after DEPTH positions (a 1-token prompt without depth)
            n_tok, n_gen, ctx, batch = max(self.depth, 1), self.n_gen, max(self.depth, 1) + self.n_gen + 8, []
        text = self.prompt_text(n_tok)
        tail = ["-n", str(n_gen), *(["--temp", "0", "--ignore-eos"] if n_gen else []), "-t", str(threads),
                "-c", str(ctx), *batch]
        cmd = [str(peregrine), "run", "-m", str(self.file), "-p", text, *tail]
        shown = (f"{shlex.quote(str(peregrine))} run -m {shlex.quote(str(self.file))} "
                 f"-p \"$(python3 -c 'print(\" the\" * {n_tok}, end=\"\")')\" {shlex.join(tail)}")
        return cmd, shown

    def run_ours(self, peregrine: Path, threads: int, reps: int, timeout: float, commands: list[str]) -> None:
        if self.ours_via == "bench":
            cmd = [str(peregrine), "bench", "-m", str(self.file), "-p", str(self.n_prompt), "-n", str(self.n_gen),
                   *(["-d", str(self.depth)] if self.depth else []), "-t", str(threads), "-r", str(reps), "--json"]
            log("$ " + shlex.join(cmd))
            commands.append(shlex.join(cmd))
            try:
                proc, others = execute(cmd, timeout)
                pj = parse_json_out(proc.stdout)
                kind = "pp" if self.n_prompt else "tg"
                self.ours.append(float(pj[kind]["tps_mean"]))
                self.ours_extra.append({"via": "bench", "isa": pj.get("isa"), "kv_mib": pj.get("kv_mib")})
                if others is not None:
                    self.others.append(others)
                return
            except (BenchFailed, KeyError, TypeError, ValueError) as e:
                self.bench_failure = str(e) or type(e).__name__
                self.ours_via = "run"
                log(f"  peregrine bench failed ({self.bench_failure}); measuring with peregrine run")
        rates, extra = [], {"via": "run"}
        for _ in range(reps):
            cmd, shown = self.run_cmd(peregrine, threads)
            log("$ " + (shown if len(shown) < 400 else shown[:400] + " ..."))
            commands.append(shown)
            proc, others = execute(cmd, timeout)
            lines = proc.stderr.strip().splitlines()
            m = RUN_TIMING.search(lines[-1] if lines else "")
            if not m:
                raise BenchFailed(f"no timing line from peregrine run (last: {(lines or [''])[-1][:120]!r})")
            n_p, pp_tps, n_g, tg_tps = int(m[1]), float(m[2]), int(m[3]), float(m[4])
            want_p = self.n_prompt or max(self.depth, 1)
            if n_p != want_p:
                raise BenchFailed(f"peregrine run read {n_p} prompt tokens, not {want_p}")
            if self.n_prompt:
                rates.append(pp_tps)
            else:
                if n_g != self.n_gen or n_g < 2:
                    raise BenchFailed(f"peregrine run generated {n_g} tokens, not {self.n_gen}")
                rates.append(tg_tps * (n_g - 1) / n_g)  # n samplings, n - 1 forward passes
                extra["prefill_tps"] = pp_tps
            if others is not None:
                self.others.append(others)
        self.ours.append(statistics.mean(rates))
        self.ours_extra.append(extra)


def measure(tests: list[Test], lb: Path, peregrine: Path, args, rounds: int, commands: list[str]) -> None:
    for rnd in range(1, rounds + 1):
        for t in tests:
            order = ("llama", "ours") if rnd % 2 else ("ours", "llama")
            for engine in order:
                if engine == "llama" and t.llama_error is None:
                    try:
                        t.run_llama(lb, args.threads, args.reps, args.timeout, commands)
                    except BenchFailed as e:
                        t.llama_error = f"llama-bench {t.name} (round {rnd}): {e}"
                        log(f"  {t.model.key} {t.qtype} {t.llama_error}; not measured from now on")
                elif engine == "ours" and t.ours_error is None:
                    try:
                        t.run_ours(peregrine, args.threads, args.reps, args.timeout, commands)
                    except BenchFailed as e:
                        t.ours_error = f"peregrine {t.ours_via} {t.name} (round {rnd}): {e}"
                        log(f"  {t.model.key} {t.qtype} {t.ours_error}; not measured from now on")
            got = lambda xs: f"{xs[-1]:.1f}" if len(xs) >= rnd else "—"  # noqa: E731
            log(f"  {t.model.key} {t.qtype} {t.name} round {rnd}: llama.cpp {got(t.llama)}, "
                f"peregrine {got(t.ours)} t/s")


# ---------------------------------------------------------------------------------------------
# Report

def num(xs: list[float]) -> str:
    if not xs:
        return "—"
    m = statistics.mean(xs)
    digits = 2 if m < 10 else 1
    return f"{m:.{digits}f}" + (f" ± {statistics.stdev(xs):.{digits}f}" if len(xs) > 1 else "")


def ratio(t: Test) -> str:
    n = min(len(t.ours), len(t.llama))
    if not n:
        return "—"
    text = f"{statistics.mean(t.ours[:n]) / statistics.mean(t.llama[:n]):.2f}"
    if n > 1:
        rs = [o / ll for o, ll in zip(t.ours[:n], t.llama[:n])]
        text += f" ({min(rs):.2f}–{max(rs):.2f})"
    return text


def cell_marks(t: Test | None, notes: list[str]) -> tuple[str, str]:
    """Footnote marks for the ours and llama.cpp cells of T."""
    if t is None:
        return "", ""
    ours = llama = ""
    if t.bench_failure:
        ours += footnote_mark(notes, f"`peregrine bench` failed on {t.model.label} ({t.bench_failure}); measured "
                                     "with `peregrine run` (pp: the prompt's tok/s; tg: generation tok/s × (n−1)/n)")
    if t.ours_error:
        ours += footnote_mark(notes, ("incomplete: " if t.ours else "not measured: ") + t.ours_error)
    if t.llama_default_failure and t.llama:
        llama += footnote_mark(notes, f"llama-bench's default configuration died on {t.model.label} {t.name} "
                                      f"({t.llama_default_failure}); measured with {' '.join(FALLBACK)}")
    if t.llama_error:
        llama += footnote_mark(notes, ("incomplete: " if t.llama else "not measured: ") + t.llama_error)
    disturbed = [x for x in t.others if x > DISTURBED]
    if disturbed:
        mark = footnote_mark(notes, f"disturbed: other processes took more than {DISTURBED:.0%} of the machine during "
                                    "some commands of this test (each command's share: others_share in the JSON); "
                                    "rerun on a quiet machine")
        ours += mark
        llama += mark
    return ours, llama


def mib(n: float) -> str:
    return f"{n / 2**20:.0f}" if n >= 100 * 2**20 else f"{n / 2**20:.1f}"


def speed_table(rows: list[dict], bw: float, notes: list[str], pp_label: str, tg_label: str) -> list[str]:
    lines = [f"| model | type | MiB | weights | {pp_label} ours | {pp_label} llama.cpp | ours / llama | "
             f"{tg_label} ours | {tg_label} llama.cpp | ours / llama | active MiB / token | roofline t/s | "
             f"{tg_label} ours % roof | {tg_label} llama % roof |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        bm, qtype, st, pp, tg = row["model"], row["qtype"], row["stats"], row["pp"], row["tg"]
        label = bm.label + (" (MoE)" if st and st.n_expert else "")
        for e in row["errors"]:
            label += footnote_mark(notes, e)
        cells = []
        for t in (pp, tg):
            if t is None:
                cells += ["—", "—", "—"]
                continue
            om, lm = cell_marks(t, notes)
            cells += [num(t.ours) + om, num(t.llama) + lm, ratio(t)]
        if st:
            roof = bw / st.active_bytes if bw else 0.0
            pct = lambda xs: f"{100 * statistics.mean(xs) / roof:.0f}%" if xs and roof else "—"  # noqa: E731
            ours_pct = pct(tg.ours if tg else [])
            if st.n_expert and tg and tg.ours and roof:
                ours_pct += " ✓" if statistics.mean(tg.ours) >= 0.8 * roof else " ✗"
            extra = [mib(st.active_bytes), f"{roof:.0f}" if roof else "—", ours_pct, pct(tg.llama if tg else [])]
            size = [mib(st.file_bytes), f"{st.n_params / 1e6:.0f}M"]
        else:
            extra, size = ["—"] * 4, ["—", "—"]
        lines.append(f"| {label} | {qtype} | {' | '.join(size)} | {' | '.join(cells)} | {' | '.join(extra)} |")
    return lines


def depth_table(tests: list[Test], notes: list[str], tg_label: str) -> list[str]:
    lines = [f"| model | type | depth | {tg_label} ours | {tg_label} llama.cpp | ours / llama | ours vs first depth | "
             "llama vs first depth | ours prefill t/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    first: dict[str, Test] = {}
    for t in tests:
        f = first.setdefault(t.model.key, t)
        om, lm = cell_marks(t, notes)

        def rel(xs, ys):
            return f"{statistics.mean(xs) / statistics.mean(ys):.2f}" if xs and ys else "—"
        prefill = [e["prefill_tps"] for e in t.ours_extra if "prefill_tps" in e]
        lines.append(f"| {t.model.label} | {t.qtype} | {t.depth} | {num(t.ours)}{om} | {num(t.llama)}{lm} | {ratio(t)} | "
                     f"{rel(t.ours, f.ours)} | {rel(t.llama, f.llama)} | {num(prefill)} |")
    return lines


def command_kind(cmd: str) -> str:
    """What the footer groups commands by: the program, its subcommand, pp / tg / depth."""
    words = cmd.split()
    prog = Path(words[0].strip("'")).name
    sub = words[1] if prog == "peregrine" and len(words) > 1 else ""
    if prog == "peregrine" and sub == "quantize":
        return "peregrine quantize"
    if prog in ("peregrine", "llama-bench"):
        n_idx = words.index("-n") if "-n" in words else -1
        gen = n_idx >= 0 and n_idx + 1 < len(words) and words[n_idx + 1] != "0"
        m = re.search(r"\* (\d+)", cmd)  # peregrine run's prompt length
        deep = " -d " in cmd or (gen and m is not None and int(m[1]) > 1)
        return f"{prog} {sub} {'tg' if gen else 'pp'}{' @ depth' if deep else ''}".replace("  ", " ")
    return prog


def shorten(cmd: str, repl: dict[str, str]) -> str:
    for a, b in repl.items():
        cmd = cmd.replace(a, b)
    return cmd.replace(str(Path.home()) + "/", "~/")


# ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="pipeline check: tiny models, -p 64 -n 16, depths 64,256, one round, numpy bandwidth "
                         "unless peregrine_kernels_bench is already built")
    ap.add_argument("--models", default="qwen3moe,mamba2,dense,nemotron_h",
                    help="comma list of qwen3moe, mamba2, dense, nemotron_h (default: all)")
    ap.add_argument("--types", default="Q8_0,Q4_0",
                    help="weight types of the pp/tg table (default: Q8_0,Q4_0; Q8_0 is written, the others "
                         "quantized from it, e.g. Q4_K_M)")
    ap.add_argument("--tests", default="speed,depth",
                    help="speed (pp/tg + roofline), depth (long-context decode) or both (default)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads for every command (default: 2)")
    ap.add_argument("-p", "--n-prompt", type=int, help="prompt tokens of pp (default: 512; --quick 64)")
    ap.add_argument("-n", "--n-gen", type=int, help="generated tokens of tg and the depth test (default: 128; --quick 16)")
    ap.add_argument("--depths", help="depths of the long-context test (default: 512,4096,16384; --quick 64,256)")
    ap.add_argument("--long-models", default="mamba2,dense", help="models of the depth test (default: mamba2,dense)")
    ap.add_argument("--long-type", default="Q8_0", help="weight type of the depth test (default: Q8_0)")
    ap.add_argument("--rounds", type=int, help="alternating rounds of pp/tg (default: 2; --quick 1)")
    ap.add_argument("--depth-rounds", type=int, default=1, help="alternating rounds of the depth test (default: 1)")
    ap.add_argument("-r", "--reps", type=int, default=1, help="repetitions inside each bench process (default: 1)")
    ap.add_argument("--model-dir", type=Path, default=MODEL_DIR, help=f"where the models are kept (default: {MODEL_DIR})")
    ap.add_argument("--bandwidth", choices=("auto", "kernels-bench", "numpy"), default="auto",
                    help="read bandwidth from peregrine_kernels_bench (auto: found or built, else numpy; --quick: "
                         "only if already built) or numpy")
    ap.add_argument("--kernels-bench", type=Path, help="a built peregrine_kernels_bench to use")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="parallel jobs for builds (default: 2)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds before one command counts as dead")
    ap.add_argument("--out", type=Path, help="also write the markdown to this file")
    ap.add_argument("--json-out", type=Path, help="also write every number and command as JSON")
    args = ap.parse_args()

    q = args.quick
    args.n_prompt = args.n_prompt if args.n_prompt is not None else (64 if q else 512)
    args.n_gen = args.n_gen if args.n_gen is not None else (16 if q else 128)
    args.rounds = args.rounds if args.rounds is not None else (1 if q else 2)
    depths_text = args.depths or ("64,256" if q else "512,4096,16384")
    started = time.monotonic()
    commands: list[str] = []
    try:
        for name in ("threads", "rounds", "depth_rounds", "reps", "jobs"):
            if getattr(args, name) < 1:
                raise Failure(f"--{name.replace('_', '-')} must be at least 1")
        if args.n_prompt < 1 or args.n_gen < 2:
            raise Failure("-p must be at least 1 and -n at least 2")
        try:
            depths = [int(d) for d in depths_text.split(",") if d.strip()]
        except ValueError:
            raise Failure(f"--depths {depths_text!r}: a comma list of numbers") from None
        if any(d < 1 or len(THE) * d > ARG_MAX_CHARS for d in depths):
            raise Failure(f"depths must be 1..{ARG_MAX_CHARS // len(THE)} (peregrine run takes the prompt as one argument)")
        tests_wanted = {x.strip() for x in args.tests.split(",") if x.strip()}
        if not tests_wanted or tests_wanted - {"speed", "depth"}:
            raise Failure("--tests: speed, depth or both")
        catalogue = bench_models(q)
        keys = [k.strip() for k in args.models.split(",") if k.strip()]
        long_keys = [k.strip() for k in args.long_models.split(",") if k.strip()] if "depth" in tests_wanted else []
        for k in keys + long_keys:
            if k not in catalogue:
                raise Failure(f"unknown model {k!r} (known: {', '.join(catalogue)})")
        types = [t.strip().upper() for t in args.types.split(",") if t.strip()] if "speed" in tests_wanted else []
        long_type = args.long_type.strip().upper()
        built = Path(os.environ.get("PEREGRINE_BIN", REPO / "build" / "bin" / "peregrine"))
        if not os.access(built, os.X_OK):
            raise Failure(f"{built} not found; build it (scripts/build.sh peregrine) or set PEREGRINE_BIN")
        if not sm.SMOLLM2_GGUF.is_file():
            raise Failure(f"{sm.SMOLLM2_GGUF} not found (the tokenizer source): build/bin/peregrine pull smollm2-135m")
        lb, commit = build_target("llama-bench", args.jobs, no_amx=True)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    errors: list[str] = []
    speed_rows: list[dict] = []
    depth_tests: list[Test] = []
    with tempfile.TemporaryDirectory(prefix="peregrine-arch-speed-") as tmp:
        peregrine = Path(tmp) / "peregrine"  # a private copy: others may rebuild build/bin/peregrine meanwhile
        shutil.copy2(built, peregrine)
        # the files (written / quantized once, kept in --model-dir)
        files: dict[tuple[str, str], Path] = {}
        file_errors: dict[tuple[str, str], str] = {}
        q8s: dict[str, Path] = {}
        wanted = [(k, t) for k in keys for t in types] + [(k, long_type) for k in long_keys]
        for k, t in dict.fromkeys(wanted):
            bm = catalogue[k]
            try:
                if k not in q8s:
                    q8s[k] = ensure_q8(bm, args.model_dir.expanduser())
                files[(k, t)] = ensure_type(q8s[k], t, peregrine, args.threads, args.timeout, commands)
            except (BenchFailed, OSError, ValueError, KeyError, MemoryError) as e:
                file_errors[(k, t)] = f"{bm.label} {t}: {e}"
                errors.append(file_errors[(k, t)])
                log(f"error: {file_errors[(k, t)]}")
        stats = {}
        for kt, path in files.items():
            try:
                stats[kt] = file_stats(path)
            except Exception as e:  # noqa: BLE001 - a table cell, not the run
                errors.append(f"{catalogue[kt[0]].label} {kt[1]}: reading the tensor table: {e!r}")

        load_before = os.getloadavg()[0]
        if load_before >= 0.5 * (os.cpu_count() or 1):
            log(f"warning: 1-minute load average {load_before:.2f} on {os.cpu_count()} cores: other work shares the "
                "CPUs; llama.cpp's spinning threads suffer far more than peregrine's, so ratios will be skewed")
        bw, bw_how, bw_notes = 0.0, "not measured", []
        if "speed" in tests_wanted:
            try:
                bw, bw_how, bw_notes = measure_bandwidth(args, commands)
                log(f"read bandwidth: {bw / 1e9:.1f} GB/s ({bw_how})")
            except Failure as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            speed_tests: list[Test] = []
            for k in keys:
                for t in types:
                    row = {"model": catalogue[k], "qtype": t, "stats": stats.get((k, t)), "pp": None, "tg": None,
                           "errors": [file_errors[(k, t)]] if (k, t) in file_errors else []}
                    if (k, t) in files:
                        row["pp"] = Test(catalogue[k], t, files[(k, t)], args.n_prompt, 0)
                        row["tg"] = Test(catalogue[k], t, files[(k, t)], 0, args.n_gen)
                        speed_tests += [row["pp"], row["tg"]]
                    speed_rows.append(row)
            log(f"== pp{args.n_prompt} / tg{args.n_gen}: {len(speed_tests)} tests x {args.rounds} rounds")
            measure(speed_tests, lb, peregrine, args, args.rounds, commands)
        if long_keys:
            for k in long_keys:
                if (k, long_type) in files:
                    depth_tests += [Test(catalogue[k], long_type, files[(k, long_type)], 0, args.n_gen, d)
                                    for d in depths]
            log(f"== tg{args.n_gen} at depths {depths_text}: {len(depth_tests)} tests x {args.depth_rounds} rounds")
            measure(depth_tests, lb, peregrine, args, args.depth_rounds, commands)
        bw_after = None
        if "speed" in tests_wanted and bw_how.startswith("numpy"):
            bw_after = bandwidth_numpy(args.threads, 0.25 if q else 1.0)[0]
        load_after = os.getloadavg()[0]

    # ---- the report
    total = time.monotonic() - started
    notes: list[str] = []
    isas = sorted({str(e.get("isa")) for t in [x for r in speed_rows for x in (r["pp"], r["tg"]) if x]
                   for e in t.ours_extra if e.get("isa")}) or ["?"]
    machine = f"{cpu_name()} ({os.cpu_count()} cores" + (f"; {cpu_isa()})" if cpu_isa() else ")")
    out = [f"**CPU:** {machine} · **threads:** {args.threads} · **peregrine:** {git_describe()}, ISA "
           f"{', '.join(isas)} · **llama.cpp:** {commit} (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist, "
           "no-AMX build, -march=native, llama-bench defaults)" + (" · **--quick** (tiny models)" if q else ""), ""]
    pp_label, tg_label = f"pp{args.n_prompt}", f"tg{args.n_gen}"
    if speed_rows:
        out.append(f"**Read bandwidth:** {bw / 1e9:.1f} GB/s ({bw_how})"
                   + (f"; {bw_after / 1e9:.1f} GB/s again after the benches" if bw_after else "")
                   + "".join(f"; {n}" for n in bw_notes))
        out.append("")
        out += speed_table(speed_rows, bw, notes, pp_label, tg_label)
        out.append("")
        out.append(f"t/s: mean (± sd over {args.rounds} round{'s' if args.rounds > 1 else ''}, engines alternating, "
                   "llama.cpp first in odd rounds; each test its own process of "
                   f"{args.reps} repetition{'s' if args.reps > 1 else ''}); ratio of the means (range of the per-round "
                   "ratios). Active MiB / token: the bytes one decoded token reads — attention, router, shared expert, "
                   "n_used / n_expert of each expert stack, the output head (token_embd whole when tied), Mamba-2 "
                   "weights and their F32 conv + SSM state read and written; KV cache not counted. Roofline t/s = "
                   "read bandwidth / active bytes; % roof = tg / roofline (✓: a MoE row at 80% or more).")
        out.append("")
    if depth_tests:
        out.append(f"**Long-context decode** ({tg_label} after DEPTH positions, {long_type}):")
        out.append("")
        out += depth_table(depth_tests, notes, tg_label)
        out.append("")
        out.append(f"llama.cpp: `llama-bench -p 0 -n {args.n_gen} -d DEPTH`, peregrine: `peregrine bench -p 0 -n "
                   f"{args.n_gen} -d DEPTH` (both fill the cache untimed, then time tg). "
                   "\"vs first depth\": t/s at DEPTH / t/s at the first depth of the same engine and model.")
        out.append("")
    if notes:
        out += [f"{footnote_mark(notes, n)} {n}" for n in list(notes)] + [""]
    if errors:
        out += ["Errors:"] + [f"- {e}" for e in errors] + [""]
    out.append("Models (random weights, SmolLM2's 49152-token vocabulary; Q8_0 written by the test writers, other "
               "types by `peregrine quantize` from it):")
    shown = set()
    for k in keys + long_keys:
        if k in shown:
            continue
        shown.add(k)
        bm = catalogue[k]
        st_t = next(((t, s) for (kk, t), s in stats.items() if kk == k), None)
        parts = ", ".join(f"{n} {mib(b)} MiB" for n, b in st_t[1].active.items()) if st_t else ""
        out.append(f"- {bm.label} (`{bm.spec.name}`): {bm.note}"
                   + (f"; {st_t[1].n_params / 1e6:.0f}M weights; read per token ({st_t[0]}): {parts}" if parts else ""))
    repl = {str(peregrine): "peregrine", str(lb): "llama-bench", str(args.model_dir.expanduser()) + "/": "MODELS/"}
    first: dict[str, str] = {}
    for c in commands:
        first.setdefault(command_kind(c), c)
    out.append("")
    out.append(f"Commands (the first of each kind; {len(commands)} in all"
               + (f", every one in {args.json_out}" if args.json_out else "") + "):")
    out += [f"- `{shorten(c, repl)}`" for c in first.values()]
    out.append(f"- where: peregrine = {built} (a copy taken at the start); llama-bench = {lb}; MODELS = "
               f"{args.model_dir}".replace(str(Path.home()) + "/", "~/"))
    out.append(f"- this table: `.venv/bin/python bench/arch_speed.py {shlex.join(sys.argv[1:])}`; {total / 60:.1f} min, "
               f"1-minute load average {load_before:.2f} before, {load_after:.2f} after")
    markdown = "\n".join(out)
    print(markdown)
    if args.out:
        args.out.write_text(markdown + "\n")
        log(f"wrote {args.out}")

    def test_json(t: Test | None) -> dict | None:
        if t is None:
            return None
        return {"test": t.name, "file": str(t.file), "peregrine_tps": t.ours, "llama_tps": t.llama,
                "peregrine_via": t.ours_via, "peregrine_bench_failure": t.bench_failure,
                "peregrine_runs": t.ours_extra, "llama_settings": t.llama_settings,
                "llama_default_failure": t.llama_default_failure, "others_share": t.others,
                "errors": [e for e in (t.ours_error, t.llama_error) if e]}

    if args.json_out:
        data = {
            "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "isa": cpu_isa()},
            "peregrine_git": git_describe(), "peregrine_bin": str(built), "llama_cpp_commit": commit,
            "llama_bench": str(lb), "llama_cpp_build": str(NO_AMX_BUILD_DIR), "quick": q, "threads": args.threads,
            "rounds": args.rounds, "depth_rounds": args.depth_rounds, "reps": args.reps,
            "n_prompt": args.n_prompt, "n_gen": args.n_gen, "depths": depths,
            "bandwidth": {"bytes_per_s": bw, "how": bw_how, "after": bw_after, "notes": bw_notes},
            "models": {k: {"spec": catalogue[k].spec_json(), "note": catalogue[k].note} for k in shown},
            "speed": [{"model": r["model"].key, "type": r["qtype"], "errors": r["errors"],
                       "file_bytes": r["stats"].file_bytes if r["stats"] else None,
                       "n_params": r["stats"].n_params if r["stats"] else None,
                       "tensor_types": r["stats"].types if r["stats"] else None,
                       "active_bytes": r["stats"].active if r["stats"] else None,
                       "roofline_tps": bw / r["stats"].active_bytes if r["stats"] and bw else None,
                       "pp": test_json(r["pp"]), "tg": test_json(r["tg"])} for r in speed_rows],
            "depth": [{"model": t.model.key, "type": t.qtype, "depth": t.depth, **test_json(t)} for t in depth_tests],
            "footnotes": notes, "errors": errors, "seconds": total, "load_before": load_before, "load_after": load_after,
            "commands": commands,
        }
        args.json_out.write_text(json.dumps(data, indent=2) + "\n")
        log(f"wrote {args.json_out}")
    failed = errors + [e for t in [x for r in speed_rows for x in (r["pp"], r["tg"]) if x] + depth_tests
                       for e in (t.ours_error, t.llama_error) if e]
    for e in failed:
        print(f"error: {e}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
