#!/usr/bin/env bash
# The multi-threaded code under ThreadSanitizer:
#   1. build peregrine_tests with -DPEREGRINE_TSAN=ON (Ninja, clang++ if present, ccache if present);
#   2. run the tests that drive a ThreadPool with more than one thread (gtest filter
#      $PEREGRINE_TSAN_FILTER): the pool itself, matmul on 1/2/3 threads, attention on
#      3 threads, and the whole model on 2 threads (when the model file is present).
# Any "WARNING: ThreadSanitizer" report fails the run, as does a filter that matches nothing.
#
# usage: scripts/test_tsan.sh [BUILD_DIR]   (default build-tsan, relative to the repo root)
# env:   CXX (default clang++, else g++), PEREGRINE_JOBS (default 2), PEREGRINE_MODEL_PATH,
#        PEREGRINE_TSAN_TIMEOUT (seconds for the test run, default 300)
set -euo pipefail
# ccache leaves the build dir out of its hash, so a fresh build dir still hits the cache.
export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}

start=$SECONDS
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-build-tsan}
case $build in /*) ;; *) build=$root/$build ;; esac
filter=${PEREGRINE_TSAN_FILTER:-ThreadPool.*:GrammarConstraint.Concurrent*:*/ThreadedOps.*:*/Attention.*:ModelTest.*:Scheduler.*:Metrics*:Http*:Moe*:Mamba2*:KvEvict*:*CompressedAttention*:*SparsePrefill*}
jobs=${PEREGRINE_JOBS:-2}
limit=${PEREGRINE_TSAN_TIMEOUT:-300}

fail() {
  echo "tsan: FAILED: $*" >&2
  exit 1
}

cxx=${CXX:-}
if [[ -z $cxx ]]; then
  if command -v clang++ >/dev/null; then cxx=clang++; else cxx=g++; fi
fi

# -O1: fast to compile, fast enough to run under TSan's 5-15x slowdown.
cmake -S "$root" -B "$build" -G Ninja -DPEREGRINE_TSAN=ON -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" >/dev/null ||
  fail "cmake configure of $build"
built=$SECONDS
ninja -C "$build" -j "$jobs" peregrine_tests >"$build/tsan-build.log" 2>&1 || {
  tail -n 40 "$build/tsan-build.log" >&2
  fail "build (log: $build/tsan-build.log)"
}
built=$((SECONDS - built))

# halt_on_error: the first race ends the run with its report at the end of the log.
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
ulimit -c 0

log=$build/tsan-unit.log
rc=0
timeout "$limit" "$build/bin/peregrine_tests" --gtest_filter="$filter" --gtest_brief=1 >"$log" 2>&1 ||
  rc=$?
if grep -q 'WARNING: ThreadSanitizer' "$log"; then
  sed -n '/WARNING: ThreadSanitizer/,/^SUMMARY: ThreadSanitizer/p' "$log" | head -n 80 >&2
  fail "ThreadSanitizer report (log: $log)"
fi
((rc != 124)) || fail "tests '$filter' still running after ${limit}s (log: $log)"
((rc == 0)) || {
  tail -n 60 "$log" >&2
  fail "tests '$filter' exited with $rc (log: $log)"
}
n_tests=$(sed -nE 's/^\[==========\] ([0-9]+) tests? from .* ran\..*/\1/p' "$log" | tail -n 1)
[[ ${n_tests:-0} -gt 0 ]] || fail "no test matched '$filter'"
n_skipped=$(sed -nE 's/^\[  SKIPPED \] ([0-9]+) tests?.*/\1/p' "$log" | tail -n 1)
skipped=""
[[ ${n_skipped:-0} -gt 0 ]] && skipped=" ($n_skipped skipped: model file absent?)"

echo "tsan: OK: $n_tests tests '$filter'$skipped, no race reported (build ${built}s, total $((SECONDS - start))s, $build)"
