"""ggml's own quantizers, built once from the pinned llama.cpp source: the oracle of test_quantize_ref.py.

build() fetches the llama-cpp-python sdist with bench/llama_cpp_build.fetch_source() (pip, cached in
~/.cache/peregrine/llama.cpp-src), then compiles ggml_quant_oracle.c against ggml.c, ggml-quants.c and
ggml-threading.cpp from it with plain gcc/g++ into ~/.cache/peregrine/ggml-quant-oracle-<version>-<key>/.
The key hashes the oracle's source and the compile flags, so an edit rebuilds it. Cold: about 20 s to
fetch the sdist plus about 10 s to compile; warm: nothing.

The flags are those ggml's CMake gives ggml-quants.c in its default build (GGML_NATIVE=ON): -O3 -DNDEBUG
-std=gnu11 and no -march, because GGML_NATIVE adds -march=native to the ggml-cpu library only, never to
ggml-base, which holds the reference quantizers. On x86-64 that baseline has no FMA, so even with GCC's
default -ffp-contract=fast for GNU C nothing is fused, and the engine (built with -ffp-contract=off)
must match bit for bit. Compiled with -march=native the same source fuses multiply-adds and its K-quant
output changes (checked by hand: Q2_K, Q4_K, Q5_K and Q6_K blocks differ); that is not how ggml ships.
On other architectures (AArch64 has FMA in its baseline) ggml's own build would contract, so the oracle
adds -ffp-contract=off there: it then reproduces the x86-64 ggml, which is what the engine follows.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
ORACLE_C = HERE / "ggml_quant_oracle.c"

sys.path.insert(0, str(REPO / "bench"))
import llama_cpp_build  # noqa: E402  (bench/, for fetch_source and the pinned version)

# ggml-base's definitions and flags in the pinned CMake (Release, GCC): see the module docstring.
DEFINES = ["-DGGML_SCHED_MAX_COPIES=4", "-D_GNU_SOURCE", "-D_XOPEN_SOURCE=600", "-DNDEBUG"]
C_FLAGS = ["-O3", "-std=gnu11", *DEFINES]
CXX_FLAGS = ["-O3", "-std=gnu++17", *DEFINES]
if platform.machine().lower() not in ("x86_64", "amd64"):
    C_FLAGS.append("-ffp-contract=off")


class OracleError(Exception):
    pass


def _key() -> str:
    h = hashlib.sha256()
    h.update(ORACLE_C.read_bytes())
    h.update(" ".join(C_FLAGS + CXX_FLAGS).encode())
    return h.hexdigest()[:12]


def build() -> Path:
    """The oracle binary, built on first use (network: pip fetches the sdist if not cached)."""
    version = llama_cpp_build.LLAMA_CPP_PYTHON_VERSION
    out_dir = llama_cpp_build.CACHE / f"ggml-quant-oracle-{version}-{_key()}"
    binary = out_dir / "ggml_quant_oracle"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary
    for tool in ("gcc", "g++"):
        if shutil.which(tool) is None:
            raise OracleError(f"{tool} not found: needed to build ggml's quantizers (apt-get install g++)")
    try:
        sdist = llama_cpp_build.fetch_source()
    except llama_cpp_build.Failure as e:
        raise OracleError(str(e)) from e
    ggml = sdist / "vendor" / "llama.cpp" / "ggml"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "ggml-version.h").write_text(  # configure_file() output that ggml.c includes
        f'#pragma once\n#define GGML_VERSION "{version}"\n#define GGML_COMMIT "pinned-sdist"\n')
    includes = [f"-I{ggml / 'include'}", f"-I{ggml / 'src'}", f"-I{out_dir}"]
    units = [("gcc", C_FLAGS, ggml / "src" / "ggml.c"), ("gcc", C_FLAGS, ggml / "src" / "ggml-quants.c"),
             ("g++", CXX_FLAGS, ggml / "src" / "ggml-threading.cpp"), ("gcc", C_FLAGS, ORACLE_C)]

    def compile_unit(unit) -> Path:
        cc, flags, src = unit
        obj = out_dir / (src.name + ".o")
        r = subprocess.run([cc, *flags, *includes, "-c", str(src), "-o", str(obj)], capture_output=True, text=True)
        if r.returncode != 0:
            raise OracleError(f"compiling {src} failed:\n{r.stderr[-3000:]}")
        return obj

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        objects = list(pool.map(compile_unit, units))
    tmp = binary.with_suffix(".tmp")
    r = subprocess.run(["g++", *map(str, objects), "-lm", "-lpthread", "-o", str(tmp)], capture_output=True, text=True)
    if r.returncode != 0:
        raise OracleError(f"linking the oracle failed:\n{r.stderr[-3000:]}")
    tmp.replace(binary)  # appears only once complete
    return binary


if __name__ == "__main__":  # python3 tests/reference/ggml_quant_oracle.py  -> prints the binary's path
    try:
        print(build())
    except OracleError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
