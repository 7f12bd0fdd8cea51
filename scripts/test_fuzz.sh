#!/usr/bin/env bash
# Bounded libFuzzer run of every tests/fuzz/fuzz_*.cpp target (clang, ASan + UBSan).
#
# Each target gets a fresh corpus in a temp dir, seeded by `tests/fuzz/make_seeds.py NAME DIR`
# (targets it does not know get no generated seeds) plus any files in tests/fuzz/seeds/NAME/;
# tests/fuzz/fuzz_NAME.dict is passed as -dict when present. Crash inputs are kept in
# BUILD_DIR/fuzz-artifacts/ and the script exits non-zero.
#
# usage: scripts/test_fuzz.sh [BUILD_DIR]   (default build-fuzz, relative to the repo root)
# env:   FUZZ_SECONDS per target (default 20), PEREGRINE_JOBS build jobs (default 2),
#        PEREGRINE_MODEL_PATH (fuzz_tokenizer: SmolLM2) and PEREGRINE_GEMMA_PATH
#        (fuzz_tokenizer_spm: Gemma 3), read by the targets from the environment, override the
#        models in ~/.cache/peregrine/models; a target whose model is missing runs unchecked, and
#        the summary says so.
# A longer run by hand: BUILD_DIR/bin/fuzz_gguf -max_total_time=3600 SOME_CORPUS_DIR
set -euo pipefail
# ccache leaves the build dir out of its hash, so a fresh build dir still hits the cache.
export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}

start=$SECONDS
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-build-fuzz}
case $build in /*) ;; *) build=$root/$build ;; esac
seconds=${FUZZ_SECONDS:-20}
jobs=${PEREGRINE_JOBS:-2}

fail() {
  echo "fuzz: FAILED: $*" >&2
  exit 1
}

command -v clang++ >/dev/null || fail "clang++ not found (libFuzzer needs clang)"
targets=()
for src in "$root"/tests/fuzz/fuzz_*.cpp; do
  [[ -e $src ]] && targets+=("$(basename "$src" .cpp)")
done
((${#targets[@]} > 0)) || fail "no tests/fuzz/fuzz_*.cpp targets"

cmake -S "$root" -B "$build" -G Ninja -DPEREGRINE_FUZZ=ON -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" >/dev/null ||
  fail "cmake configure of $build"
ninja -C "$build" -j "$jobs" "${targets[@]}" >"$build/fuzz-build.log" 2>&1 || {
  tail -n 40 "$build/fuzz-build.log" >&2
  fail "build (log: $build/fuzz-build.log)"
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
ulimit -c 0
artifacts=$build/fuzz-artifacts
mkdir -p "$artifacts"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

summary=()
for t in "${targets[@]}"; do
  short=${t#fuzz_}
  corpus=$tmp/$short
  mkdir -p "$corpus"
  python3 "$root/tests/fuzz/make_seeds.py" "$short" "$corpus" || fail "make_seeds.py $short"
  if [[ -d $root/tests/fuzz/seeds/$short ]]; then cp -r "$root/tests/fuzz/seeds/$short/." "$corpus/"; fi
  n_seeds=$(find "$corpus" -type f | wc -l)
  args=(-max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1
        -artifact_prefix="$artifacts/$t-")
  dict=$root/tests/fuzz/$t.dict
  [[ -f $dict ]] && args+=(-dict="$dict")
  log=$build/$t.log
  echo "fuzz: $t for ${seconds}s from $n_seeds seeds"
  rc=0
  "$build/bin/$t" "${args[@]}" "$corpus" >"$log" 2>&1 || rc=$?
  if ((rc != 0)) || grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:|==ERROR: libFuzzer' "$log"; then
    tail -n 50 "$log" >&2
    fail "$t exited $rc; log $log, crash input(s): $(ls "$artifacts"/"$t"-* 2>/dev/null | tr '\n' ' ')"
  fi
  runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)
  [[ ${runs:-0} -gt 0 ]] || { tail -n 20 "$log" >&2; fail "$t ran no inputs (log $log)"; }
  note=""
  grep -q '(nothing is checked)' "$log" && note=" UNCHECKED: no model"
  summary+=("$t ${runs} runs$note")
done

echo "fuzz: OK: $(IFS=,; echo "${summary[*]}" | sed 's/,/, /g') (${seconds}s each, $((SECONDS - start))s total, $build)"
