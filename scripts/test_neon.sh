#!/usr/bin/env bash
# The NEON kernel table (src/kernels/arm/) against the scalar reference, on an x86-64
# machine: cross-compiles tests/arm/test_kernels_neon.cpp with the kernel and quant
# layers (they need only core headers and header-only fmt) for AArch64, statically, and
# runs it under qemu-aarch64. Two builds:
#   armv8-a           plain NEON, run on a Cortex-A53 model (no SDOT: proves the baseline)
#   armv8.2-a+dotprod the SDOT path, run on qemu's "max" CPU
# plus the dispatcher's PEREGRINE_ISA handling. On an AArch64 machine the same builds run
# natively. Installs g++-aarch64-linux-gnu and qemu-user when missing (as scripts/deps.sh
# does); when that is not possible it prints one line saying so and exits 0.
#
# usage: scripts/test_neon.sh [BUILD_DIR]   (default build-neon, relative to the repo root)
# env:   PEREGRINE_NEON_INSTALL=0 to never install packages
set -euo pipefail
export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}

start=$SECONDS
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-build-neon}
case $build in /*) ;; *) build=$root/$build ;; esac

fail() {
  echo "neon: FAILED: $*" >&2
  exit 1
}
skip() {
  echo "neon: skipped: $*"
  exit 0
}

native=0
[[ $(uname -m) == aarch64 || $(uname -m) == arm64 ]] && native=1
if ((native)); then
  cxx=${CXX:-c++}
  run() { shift 2; "$@"; }  # drop the "-cpu NAME" meant for qemu
else
  cxx=aarch64-linux-gnu-g++
  if ! command -v "$cxx" >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
    packages=(g++-aarch64-linux-gnu qemu-user)
    sudo=""
    [[ $(id -u) -eq 0 ]] || sudo=sudo
    if [[ ${PEREGRINE_NEON_INSTALL:-1} == 0 ]] || { [[ -n $sudo ]] && ! command -v sudo >/dev/null; } ||
      ! command -v apt-get >/dev/null; then
      skip "no $cxx or qemu-aarch64, and cannot install ${packages[*]}"
    fi
    echo "installing Debian packages: ${packages[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    { $sudo apt-get update -q && $sudo apt-get install -y -q --no-install-recommends "${packages[@]}"; } \
      >/dev/null 2>&1 || skip "could not install ${packages[*]}"
    if ! command -v "$cxx" >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
      skip "installed ${packages[*]} but $cxx or qemu-aarch64 is still missing"
    fi
  fi
  run() { qemu-aarch64 "$@"; }
fi
launcher=()
command -v ccache >/dev/null && launcher=(ccache)

# fmt (used by core/status.h) in header-only mode from the host's headers, which are the
# same for every architecture; a private include dir keeps the rest of /usr/include out.
mkdir -p "$build/include"
[[ -d /usr/include/fmt ]] ||
  skip "no fmt headers (/usr/include/fmt; scripts/deps.sh installs libfmt-dev)"
ln -sfn /usr/include/fmt "$build/include/fmt"

# -ffp-contract=off as in CMakeLists.txt: the bit-exact kernels rely on it.
flags=(-std=c++20 -O2 -ffp-contract=off -Wall -Wextra -DFMT_HEADER_ONLY
  -I"$root/src" -I"$build/include")
# The kernel and quant layers: every unit of the kernel table and what it links against.
# The quant layer's file-level units (whole-model quantization, imatrix files) also need the
# GGUF reader/writer and the thread pool, which the kernel test does not: left out.
common=("$root"/src/kernels/scalar/*.cpp)
for f in "$root"/src/quant/*.cpp; do
  case $(basename "$f") in quantize_model.cpp|imatrix_file.cpp) ;; *) common+=("$f") ;; esac
done
for f in "$root"/src/kernels/*.cpp; do [[ $(basename "$f") == dispatch.cpp ]] || common+=("$f"); done
per_arch=("$root"/src/kernels/dispatch.cpp "$root"/src/kernels/arm/*_neon.cpp
  "$root/tests/arm/test_kernels_neon.cpp")

# compile OUT_DIR MARCH FILES...: one object per file, quietly unless it fails.
compile() {
  local out=$1 march=$2
  shift 2
  mkdir -p "$out"
  local f
  for f in "$@"; do
    local obj
    obj=$out/$(basename "${f%.cpp}").o
    "${launcher[@]}" "$cxx" "${flags[@]}" -march="$march" -c "$f" -o "$obj" >>"$build/build.log" 2>&1 || {
      tail -n 30 "$build/build.log" >&2
      fail "compiling $f for $march (log: $build/build.log)"
    }
  done
}

: >"$build/build.log"
rm -rf "$build/common" "$build"/armv8*  # no stale objects of removed sources (ccache keeps it quick)
compile "$build/common" armv8-a "${common[@]}"
results=()
for variant in armv8-a armv8.2-a+dotprod; do
  dir=$build/${variant//[+.]/_}
  if [[ $variant == *dotprod* ]]; then
    if ! echo 'int main() {}' | "$cxx" -x c++ -march="$variant" -c -o /dev/null - 2>/dev/null; then
      results+=("$variant: compiler lacks it, skipped")
      continue
    fi
    if ((native)) && ! grep -qw asimddp /proc/cpuinfo 2>/dev/null; then
      results+=("$variant: this CPU lacks SDOT, skipped")
      continue
    fi
  fi
  compile "$dir" "$variant" "${per_arch[@]}"
  "$cxx" -static -o "$dir/test_kernels_neon" "$build"/common/*.o "$dir"/*.o >>"$build/build.log" 2>&1 ||
    fail "linking $dir/test_kernels_neon (log: $build/build.log)"
  cpu=max
  [[ $variant == armv8-a ]] && cpu=cortex-a53
  out=$(run -cpu "$cpu" "$dir/test_kernels_neon" 2>&1) || {
    echo "$out" >&2
    fail "$variant kernels differ from the scalar reference (binary: $dir/test_kernels_neon)"
  }
  results+=("$out")
done

# Dispatch: NEON by default, PEREGRINE_ISA=scalar honoured, x86 names refused.
bin=$build/armv8-a/test_kernels_neon
[[ $(PEREGRINE_ISA='' run -cpu max "$bin" --isa) == neon ]] ||
  fail "kernels() does not default to neon on AArch64"
[[ $(PEREGRINE_ISA=scalar run -cpu max "$bin" --isa) == scalar ]] ||
  fail "PEREGRINE_ISA=scalar not honoured"
for isa in avx2 nonsense; do
  rc=0
  err=$(PEREGRINE_ISA=$isa run -cpu max "$bin" --isa 2>&1 >/dev/null) || rc=$?
  [[ $rc -eq 2 && $err == error:* ]] || fail "PEREGRINE_ISA=$isa: want exit 2 and an error line, got $rc: $err"
done
# A +dotprod build on a core without SDOT falls back to the scalar table.
if [[ -x $build/armv8_2-a_dotprod/test_kernels_neon ]] && ((!native)); then
  got=$(PEREGRINE_ISA='' run -cpu cortex-a53 "$build/armv8_2-a_dotprod/test_kernels_neon" --isa 2>&1) ||
    true
  [[ $got == scalar ]] || fail "+dotprod build on a core without SDOT picked '$got', want scalar"
fi

where="qemu-aarch64"
((native)) && where="natively"
echo "neon: OK ($where, $((SECONDS - start))s): $(IFS=';'; echo "${results[*]}")"
