#!/usr/bin/env bash
# Configures and builds the Release tree in build/ (ccache keeps rebuilds quick).
# Arguments are ninja targets (default: everything).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >build/configure.log 2>&1 ||
    { cat build/configure.log; exit 1; }
fi
[ -t 2 ] && echo "building ${*:-all}..." >&2 || true
if ! ninja -C build "$@" >build/ninja.log 2>&1; then
  grep -E "error|FAILED" -A3 build/ninja.log | head -60
  echo "error: build failed (full log: build/ninja.log)" >&2
  exit 1
fi
