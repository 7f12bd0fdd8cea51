#!/usr/bin/env python3
"""Peregrine vs llama.cpp on the same model, threads and machine: pp/tg tokens/s as a markdown table.

llama.cpp's source comes from the PyPI sdist of llama-cpp-python (it vendors llama.cpp with its
CMake build); `llama-bench` is built once, CPU only, -march=native, into a cache folder outside the
repo. The two benches then run alternately (llama.cpp, peregrine, llama.cpp, ...) so that drift on a
shared machine hits both alike; the table reports mean ± sd over rounds and the ratio.
Only the standard library is used. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# Pinned: llama-cpp-python 0.3.36 vendors ggml-org/llama.cpp@0c1e57098 (its CHANGELOG says so).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("PEREGRINE_CACHE", Path.home() / ".cache" / "peregrine"))
MODELS = Path(os.environ.get("PEREGRINE_MODELS", CACHE / "models"))
DEFAULT_MODEL = MODELS / "SmolLM2-135M-Instruct.Q4_1.gguf"

# CPU only, tuned for this machine like a user's plain `cmake` build; nothing that needs the network.
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=OFF",  # one self-contained binary in the cache
    "-DLLAMA_OPENSSL=OFF",  # HTTPS model download; LLAMA_CURL is deprecated and ignored in this version
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",  # tools/llama-bench lives here
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
]


class Failure(Exception):
    """A one-line reason to stop; printed as `error: ...`."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fetch_source() -> Path:
    """Extract the sdist into CACHE/llama.cpp-src/llama_cpp_python-VERSION (once); return its root."""
    src_root = CACHE / "llama.cpp-src"
    dest = src_root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    if (dest / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
        return dest
    src_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=src_root, prefix=".fetch-") as tmp:
        pip_log = src_root / "pip-download.log"
        log(f"fetching llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} sdist with pip (log: {pip_log})")
        with open(pip_log, "w") as out:
            rc = subprocess.call(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", tmp],
                stdout=out, stderr=subprocess.STDOUT)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if rc != 0 or not archives:
            raise Failure(f"pip could not fetch the llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} "
                          f"source distribution (see {pip_log})")
        unpack = Path(tmp) / "unpack"
        with tarfile.open(archives[0]) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(unpack, filter="data")
            else:  # Python < 3.11.4: no filter; the archive comes from PyPI over HTTPS
                tar.extractall(unpack)
        top = unpack / dest.name
        if not (top / "vendor" / "llama.cpp" / "CMakeLists.txt").is_file():
            raise Failure(f"{archives[0].name} has no vendor/llama.cpp/CMakeLists.txt")
        shutil.rmtree(dest, ignore_errors=True)
        top.rename(dest)  # the archive itself goes with the temporary folder
    return dest


def vendored_commit(sdist: Path) -> str:
    """The llama.cpp commit this release vendors, from the first 'llama.cpp@HASH' under its heading."""
    try:
        text = (sdist / "CHANGELOG.md").read_text(errors="replace")
    except OSError:
        return "unknown"
    section = text.split(f"## [{LLAMA_CPP_PYTHON_VERSION}]", 1)
    if len(section) < 2:
        return "unknown"
    body = section[1].split("\n## [", 1)[0]
    marker = "llama.cpp@"
    at = body.find(marker)
    if at < 0:
        return "unknown"
    commit = body[at + len(marker):].split()[0].strip("`).,")
    return commit if all(c in "0123456789abcdef" for c in commit) else "unknown"


def build_llama_bench(sdist: Path, commit: str, jobs: int) -> Path:
    """Configure and build only the llama-bench target (once); return the binary."""
    build = CACHE / f"llama.cpp-build-{LLAMA_CPP_PYTHON_VERSION}"
    binary = build / "bin" / "llama-bench"
    stamp = build / ".peregrine-built"
    if binary.is_file() and stamp.is_file():
        return binary
    if shutil.which("cmake") is None:
        raise Failure("cmake not found (apt-get install cmake ninja-build g++)")
    build.mkdir(parents=True, exist_ok=True)
    build_log = build / "build.log"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(sdist / "vendor" / "llama.cpp"), "-B", str(build), *generator,
                 *CMAKE_OPTIONS, f"-DLLAMA_BUILD_COMMIT={commit}", "-DLLAMA_BUILD_NUMBER=0"]
    compile_ = ["cmake", "--build", str(build), "--target", "llama-bench", "-j", str(jobs)]
    log(f"building llama-bench (llama.cpp@{commit}) in {build}, -j{jobs}; log: {build_log}")
    start = time.monotonic()
    with open(build_log, "w") as out:
        for cmd in (configure, compile_):
            out.write("$ " + shlex.join(cmd) + "\n")
            out.flush()
            if subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT) != 0:
                raise Failure(f"llama.cpp build failed: {shlex.join(cmd[:2])} ... (see {build_log})")
    if not binary.is_file():
        raise Failure(f"llama.cpp build finished but {binary} is missing (see {build_log})")
    stamp.write_text(f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}, llama.cpp@{commit}\n")
    log(f"built llama-bench in {time.monotonic() - start:.0f} s")
    return binary


def run_json(cmd: list[str], what: str):
    """Run a bench command; return the JSON it printed (llama-bench: an array; peregrine: one object)."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise Failure(f"{what} exited with {proc.returncode}: {last}")
    out = proc.stdout.strip()
    start = min((i for i in (out.find("["), out.find("{")) if i >= 0), default=-1)
    try:
        return json.loads(out[start:]) if start >= 0 else json.loads(out)
    except json.JSONDecodeError as e:
        raise Failure(f"{what} printed no JSON we can read ({e}): {out[:120]!r}") from None


def llama_tps(results: list[dict], n_prompt: int, n_gen: int) -> float:
    """avg_ts of the llama-bench test with exactly these n_prompt/n_gen (pp: n_gen 0; tg: n_prompt 0)."""
    for r in results:
        if r.get("n_prompt") == n_prompt and r.get("n_gen") == n_gen:
            return float(r["avg_ts"])
    raise Failure(f"llama-bench JSON has no test with n_prompt={n_prompt} n_gen={n_gen}")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    for isa in ("avx512f", "avx2", "avx"):
        if isa in flags:
            return isa.upper().replace("F", "")
    return ""


def mean_sd(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.1f} ± {sd:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", type=Path, default=DEFAULT_MODEL, help="GGUF file (default: %(default)s)")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1, help="threads for both (default: nproc)")
    ap.add_argument("-r", "--repetitions", type=int, default=3, help="repetitions inside each bench run (default: 3)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of llama.cpp then peregrine (default: 3)")
    ap.add_argument("-p", "--n-prompt", type=int, default=512, help="prompt tokens (default: 512)")
    ap.add_argument("-n", "--n-gen", type=int, default=128, help="generated tokens (default: 128)")
    ap.add_argument("-j", "--jobs", type=int, default=2, help="parallel jobs for the llama.cpp build (default: 2)")
    ap.add_argument("--build-only", action="store_true", help="fetch and build llama-bench, then stop")
    args = ap.parse_args()

    try:
        for name in ("threads", "repetitions", "rounds", "jobs"):
            if getattr(args, name) < 1:
                raise Failure(f"--{name} must be at least 1")
        if args.n_prompt < 0 or args.n_gen < 0 or args.n_prompt + args.n_gen == 0:
            raise Failure("-p and -n must be >= 0 and not both 0")
        sdist = fetch_source()
        commit = vendored_commit(sdist)
        llama_bench = build_llama_bench(sdist, commit, args.jobs)
        if args.build_only:
            print(llama_bench)
            return 0

        peregrine = Path(os.environ.get("PEREGRINE_BIN", REPO / "build" / "bin" / "peregrine"))
        if not os.access(peregrine, os.X_OK):
            raise Failure(f"{peregrine} not found; build it (scripts/build.sh peregrine) or set PEREGRINE_BIN")
        model = args.model.expanduser()
        if not model.is_file():
            raise Failure(f"model {model} not found (build/bin/peregrine pull smollm2-135m fetches the default)")

        common = ["-m", str(model), "-p", str(args.n_prompt), "-n", str(args.n_gen),
                  "-t", str(args.threads), "-r", str(args.repetitions)]
        llama_cmd = [str(llama_bench), *common, "-o", "json"]
        peregrine_cmd = [str(peregrine), "bench", *common, "--json"]

        tests = []  # (label, llama-bench n_prompt, n_gen, peregrine JSON key)
        if args.n_prompt:
            tests.append((f"pp{args.n_prompt}", args.n_prompt, 0, "pp"))
        if args.n_gen:
            tests.append((f"tg{args.n_gen}", 0, args.n_gen, "tg"))
        llama = {t[0]: [] for t in tests}
        ours = {t[0]: [] for t in tests}
        isa = "?"
        load_before = os.getloadavg()[0]
        for rnd in range(1, args.rounds + 1):
            log(f"round {rnd}/{args.rounds}: llama-bench")
            lj = run_json(llama_cmd, "llama-bench")
            log(f"round {rnd}/{args.rounds}: peregrine bench")
            pj = run_json(peregrine_cmd, "peregrine bench")
            isa = pj.get("isa", isa)
            for label, n_prompt, n_gen, key in tests:
                llama[label].append(llama_tps(lj, n_prompt, n_gen))
                try:
                    ours[label].append(float(pj[key]["tps_mean"]))
                except (KeyError, TypeError, ValueError):
                    raise Failure(f"peregrine bench JSON has no {key}.tps_mean") from None
            log("  " + ", ".join(f"{t[0]}: llama.cpp {llama[t[0]][-1]:.1f}, peregrine {ours[t[0]][-1]:.1f}"
                                 for t in tests))
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    if cpu_isa():
        machine += f", {cpu_isa()}"
    invocation = "bench/compare.sh " + shlex.join(sys.argv[1:]) if len(sys.argv) > 1 else "bench/compare.sh"
    print("| machine | model | threads | test | llama.cpp t/s | peregrine t/s | peregrine / llama.cpp | command |")
    print("|---|---|---|---|---|---|---|---|")
    for label, *_ in tests:
        ratios = [o / l for o, l in zip(ours[label], llama[label])]
        ratio = f"{statistics.mean(ours[label]) / statistics.mean(llama[label]):.2f}"
        if len(ratios) > 1:
            ratio += f" ({min(ratios):.2f}–{max(ratios):.2f})"
        print(f"| {machine} | {model.name} | {args.threads} | {label} | {mean_sd(llama[label])} "
              f"| {mean_sd(ours[label])} | {ratio} | `{invocation}` |")
    print()
    print(f"llama.cpp@{commit} (llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist), peregrine isa {isa}; "
          f"{args.rounds} alternating rounds, each {args.repetitions} repetitions; "
          "t/s is mean ± sd over rounds, the ratio in parentheses spans the per-round ratios; "
          f"1-minute load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after "
          f"(the benches themselves add about {args.threads}).")
    print(f"- llama.cpp: `{shlex.join(llama_cmd)}`")
    print(f"- peregrine: `{shlex.join(peregrine_cmd)}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
