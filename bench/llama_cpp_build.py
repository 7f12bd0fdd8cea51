"""llama.cpp from the pinned llama-cpp-python sdist, built once per target into a cache folder.

Shared by bench/compare.py (llama-bench) and bench/serve_load.py (llama-server): both targets come
from the same source tree and the same CMake build folder, so they run the same ggml kernels.
The source is the PyPI source distribution of llama-cpp-python, which vendors llama.cpp with its
CMake build; it is fetched with pip and extracted once. The build is CPU only, -march=native,
static, with nothing that reaches the network (no HTTPS model download, no prebuilt web UI).
Only the standard library is used.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# Pinned: llama-cpp-python 0.3.36 vendors ggml-org/llama.cpp@0c1e57098 (its CHANGELOG says so).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"

CACHE = Path(os.environ.get("PEREGRINE_CACHE", Path.home() / ".cache" / "peregrine"))
BUILD_DIR = CACHE / f"llama.cpp-build-{LLAMA_CPP_PYTHON_VERSION}"

# CPU only, tuned for this machine like a user's plain `cmake` build; nothing that needs the network.
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=OFF",  # self-contained binaries in the cache
    "-DLLAMA_OPENSSL=OFF",  # HTTPS model download; LLAMA_CURL is deprecated and ignored in this version
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",  # tools/llama-bench and tools/server live here
    "-DLLAMA_BUILD_SERVER=ON",  # adds the llama-server target; only targets asked for are compiled
    "-DLLAMA_BUILD_UI=OFF",  # the server's web UI would need npm ...
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # ... or a download from a Hugging Face bucket: embed no UI
    "-DLLAMA_BUILD_APP=OFF",
]


# The no-AMX variant (tests/reference's logits oracle): the same source and options in its own build
# folder, with AMX compiled out. On Xeons with AMX this version's AMX matmul segfaults (see
# compare.py); the benchmarks fall back at run time, an oracle must not depend on that. The GGML_AMX_*
# options alone do nothing here: with GGML_NATIVE=ON ggml passes -march=native, which turns AMX on
# wherever the CPU has it. GCC and Clang let an explicit -mno-X win over -march in either order, so
# the flags below keep every other native extension (AVX-512 included) and drop only AMX.
NO_AMX_BUILD_DIR = CACHE / f"llama.cpp-build-{LLAMA_CPP_PYTHON_VERSION}-noamx"
_NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
# No ccache either (ggml uses it when found): ccache 4.7 hashes -march=native as written, so a cache
# shared between machines could hand out objects built for another CPU.
NO_AMX_OPTIONS = ["-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF", "-DGGML_CCACHE=OFF"]
if platform.machine().lower() in ("x86_64", "amd64", "i686", "i386"):
    NO_AMX_OPTIONS += [f"-DCMAKE_C_FLAGS={_NO_AMX_FLAGS}", f"-DCMAKE_CXX_FLAGS={_NO_AMX_FLAGS}"]

# Targets under llama.cpp's examples/ (bench/speculative.py): CMake defines them only with
# LLAMA_BUILD_EXAMPLES=ON, so configuring for one of them switches that on. Flipping it in an existing
# folder changes no compile command, so the objects other targets already built are kept.
EXAMPLE_TARGETS = {"llama-lookup", "llama-speculative"}

# Targets that are libraries, not binaries in bin/: where each one's file lands in the build folder.
LIBRARY_ARTIFACTS = {
    "llama": "src/libllama.a",  # builds ggml, ggml-base and ggml-cpu (ggml/src/*.a) with it
}


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


def build_target(target: str, jobs: int, *, no_amx: bool = False) -> tuple[Path, str]:
    """Fetch the source if needed, configure and build only TARGET (once); return (binary, commit).

    TARGET is a CMake target that is also the binary's name: "llama-bench", "llama-server", one of
    EXAMPLE_TARGETS ("llama-lookup", "llama-speculative"), or a library of LIBRARY_ARTIFACTS
    ("llama"), whose file is returned instead. no_amx: build in NO_AMX_BUILD_DIR with AMX compiled
    out (NO_AMX_OPTIONS) instead of BUILD_DIR.
    A stamp per target marks a finished build, so an interrupted build is resumed, not trusted.
    Configuring again with today's options is harmless for a target built earlier: ninja keeps
    whatever objects' commands did not change.
    """
    sdist = fetch_source()
    commit = vendored_commit(sdist)
    build_dir = NO_AMX_BUILD_DIR if no_amx else BUILD_DIR
    options = [*CMAKE_OPTIONS, *NO_AMX_OPTIONS] if no_amx else list(CMAKE_OPTIONS)
    if target in EXAMPLE_TARGETS:
        options.append("-DLLAMA_BUILD_EXAMPLES=ON")  # after the OFF above: the last -D wins
    binary = build_dir / LIBRARY_ARTIFACTS.get(target, f"bin/{target}")
    stamp = build_dir / f".peregrine-built-{target}"
    legacy = build_dir / ".peregrine-built"  # compare.py's stamp before the server target existed
    if binary.is_file() and (stamp.is_file() or (target == "llama-bench" and legacy.is_file())):
        return binary, commit
    if shutil.which("cmake") is None:
        raise Failure("cmake not found (apt-get install cmake ninja-build g++)")
    build_dir.mkdir(parents=True, exist_ok=True)
    build_log = build_dir / f"build-{target}.log"
    generator = []
    if not (build_dir / "CMakeCache.txt").is_file() and shutil.which("ninja"):
        generator = ["-G", "Ninja"]  # an existing folder keeps the generator it was made with
    configure = ["cmake", "-S", str(sdist / "vendor" / "llama.cpp"), "-B", str(build_dir), *generator,
                 *options, f"-DLLAMA_BUILD_COMMIT={commit}", "-DLLAMA_BUILD_NUMBER=0"]
    compile_ = ["cmake", "--build", str(build_dir), "--target", target, "-j", str(jobs)]
    log(f"building {target} (llama.cpp@{commit}) in {build_dir}, -j{jobs}; log: {build_log}")
    start = time.monotonic()
    with open(build_log, "w") as out:
        for cmd in (configure, compile_):
            out.write("$ " + shlex.join(cmd) + "\n")
            out.flush()
            if subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT) != 0:
                raise Failure(f"llama.cpp build failed: {shlex.join(cmd[:3])} ... (see {build_log})")
    if not binary.is_file():
        raise Failure(f"llama.cpp build finished but {binary} is missing (see {build_log})")
    seconds = time.monotonic() - start
    stamp.write_text(f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}, llama.cpp@{commit}, "
                     f"built in {seconds:.0f} s with -j{jobs}\n")
    log(f"built {target} in {seconds:.0f} s")
    return binary, commit


if __name__ == "__main__":  # python3 bench/llama_cpp_build.py [TARGET ...] [-j N]: build and print paths
    import argparse

    ap = argparse.ArgumentParser(description="Build llama.cpp targets from the pinned sdist.")
    ap.add_argument("targets", nargs="*", default=["llama-bench", "llama-server"])
    ap.add_argument("-j", "--jobs", type=int, default=2)
    ap.add_argument("--no-amx", action="store_true", help="AMX compiled out, in its own build folder")
    args = ap.parse_args()
    try:
        for t in args.targets:
            print(build_target(t, args.jobs, no_amx=args.no_amx)[0])
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
