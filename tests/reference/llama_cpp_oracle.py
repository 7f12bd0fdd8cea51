"""llama.cpp as a logits oracle: build llama_cpp_logits.cpp once against the pinned llama.cpp, run it.

The library comes from bench/llama_cpp_build.py (the llama-cpp-python==0.3.36 sdist, which vendors
llama.cpp 0c1e57098): only its `llama` target (libllama.a + ggml, ggml-base, ggml-cpu static
libraries), built in its own folder with AMX compiled out (`no_amx=True`; this version's AMX matmul
crashes on the Xeons these tests run on). Our program is then compiled and linked against those
libraries into CACHE/llama-cpp-logits/, under a name keyed by a hash of its source, the llama.cpp
version and the compile command, so an edit rebuilds it and nothing else does.

    from llama_cpp_oracle import llama_cpp_logits
    lg = llama_cpp_logits("model.gguf", [1, 2, 3])        # float32 [3, n_vocab]

Standalone:
    python tests/reference/llama_cpp_oracle.py --build               # build (if needed), print the path
    python tests/reference/llama_cpp_oracle.py MODEL.gguf 1,2,3      # argmax per position

Environment: PEREGRINE_CACHE (default ~/.cache/peregrine) is where everything is cached;
LLAMA_CPP_ORACLE_JOBS (default 2) the build's parallelism.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SOURCE = HERE / "llama_cpp_logits.cpp"

sys.path.insert(0, str(REPO / "bench"))
import llama_cpp_build as lcb  # noqa: E402

OUT_DIR = lcb.CACHE / "llama-cpp-logits"
Failure = lcb.Failure


@contextmanager
def _lock(path: Path):
    """An exclusive file lock: two test processes never build at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _compile_command(libllama: Path, sdist_llama: Path, out: Path) -> list[str]:
    build = libllama.parents[1]  # <build>/src/libllama.a -> <build>
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or "c++"
    libs = [libllama, build / "ggml/src/libggml.a", build / "ggml/src/libggml-cpu.a", build / "ggml/src/libggml-base.a"]
    return [cxx, "-std=c++17", "-O2", "-I", str(sdist_llama / "include"), "-I", str(sdist_llama / "ggml/include"),
            str(SOURCE), "-o", str(out), "-Wl,--start-group", *map(str, libs), "-Wl,--end-group",
            "-fopenmp", "-lpthread", "-ldl", "-lm"]


def build(jobs: int | None = None) -> Path:
    """The oracle binary, built if needed (llama.cpp's library first; cold: ~1.5 min on 2 idle cores)."""
    jobs = jobs or int(os.environ.get("LLAMA_CPP_ORACLE_JOBS", "2"))
    with _lock(lcb.CACHE / ".llama-cpp-oracle.lock"):
        libllama, commit = lcb.build_target("llama", jobs, no_amx=True)
        sdist_llama = lcb.fetch_source() / "vendor" / "llama.cpp"
        probe = _compile_command(libllama, sdist_llama, Path("OUT"))
        key = hashlib.sha256()
        key.update(SOURCE.read_bytes())
        key.update(f"{lcb.LLAMA_CPP_PYTHON_VERSION} {commit} {lcb.NO_AMX_OPTIONS} {shlex.join(probe)}".encode())
        binary = OUT_DIR / f"llama_cpp_logits-{key.hexdigest()[:16]}"
        if binary.is_file():
            return binary
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        tmp = binary.with_suffix(".tmp")
        cmd = _compile_command(libllama, sdist_llama, tmp)
        start = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0 or not tmp.is_file():
            raise Failure(f"compiling {SOURCE.name} failed: {shlex.join(cmd[:3])} ...\n{r.stderr[-3000:]}")
        tmp.rename(binary)  # atomic: a half-written binary is never picked up
        lcb.log(f"built {binary} in {time.monotonic() - start:.0f} s")
        return binary


def llama_cpp_logits(model: str | Path, tokens, *, threads: int = 1, kv: str = "f32", ctx: int = 0,
                     timeout: float = 600) -> np.ndarray:
    """llama.cpp's float32 logits [n_tokens, n_vocab] for TOKENS run as one batch from an empty cache."""
    binary = build()
    tokens = [int(t) for t in tokens]
    with tempfile.TemporaryDirectory(prefix="llama-cpp-logits-") as tmp:
        out = Path(tmp) / "logits.f32"
        cmd = [str(binary), str(model), ",".join(map(str, tokens)), str(out), "-t", str(threads), "--kv", kv]
        if ctx:
            cmd += ["-c", str(ctx)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise Failure(f"llama.cpp on {model} exited {r.returncode}:\n{r.stderr[-4000:]}")
        raw = np.fromfile(out, dtype="<f4")
    if raw.size % len(tokens):
        raise Failure(f"llama.cpp wrote {raw.size} floats, not a multiple of {len(tokens)} tokens")
    return raw.reshape(len(tokens), raw.size // len(tokens))


def llama_cpp_run(model: str | Path, tokens=(1,), timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the oracle and return the finished process whatever its status (for load-failure tests)."""
    binary = build()
    with tempfile.TemporaryDirectory(prefix="llama-cpp-logits-") as tmp:
        return subprocess.run([str(binary), str(model), ",".join(map(str, tokens)), str(Path(tmp) / "l.f32")],
                              capture_output=True, text=True, timeout=timeout)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("tokens", nargs="?", help="comma-separated token ids")
    ap.add_argument("--build", action="store_true", help="only build; print the binary's path")
    ap.add_argument("-t", "--threads", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        if args.build or not args.model:
            print(build())
            return 0
        lg = llama_cpp_logits(args.model, [int(t) for t in args.tokens.split(",")], threads=args.threads)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("argmax per position:", " ".join(str(int(i)) for i in lg.argmax(axis=-1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
