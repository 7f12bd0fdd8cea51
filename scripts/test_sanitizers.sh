#!/usr/bin/env bash
# Bad-input suite under AddressSanitizer + UBSan:
#   1. build peregrine_tests and peregrine with -DPEREGRINE_SANITIZE=ON (Ninja, ccache if present);
#   2. run the unit tests of outside input and serving state (gtest filter
#      $PEREGRINE_SANITIZE_FILTER, default: GGUF, API parsing, stop strings, block manager,
#      scheduler, logprobs, metrics);
#   3. run `peregrine info` on corrupted files: each must exit non-zero with exactly one stderr line
#      starting with "error:", no sanitizer report and no crash (skipped if `info` is not there yet);
#   4. with the real model: `info`, and the server's bad-input and fault tests (tests/e2e/test_serve.py)
#      against the sanitized `peregrine serve`.
#
# usage: scripts/test_sanitizers.sh [BUILD_DIR]   (default build-asan, relative to the repo root)
# env:   CXX (default clang++, else g++), PEREGRINE_JOBS (default 2), PEREGRINE_MODEL_PATH
set -euo pipefail
# ccache leaves the build dir out of its hash, so a fresh build dir still hits the cache.
export CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}

start=$SECONDS
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-build-asan}
case $build in /*) ;; *) build=$root/$build ;; esac
filter=${PEREGRINE_SANITIZE_FILTER:-Gguf*:ImatrixFile*:Api*:Grammar*:Gbnf*:Regex*:JsonSchema*:Catalogue*:ConstraintCompiler*:Http*:TokenizerChat*:StopMatcher*:BlockManager*:Scheduler*:Logprobs*:Metrics*:Sequence.*:Gemma3Load*:KvShape*:KvValidity*:*Rewind*:*Fork*:PrefixSharing*:RingSizing*:KvState*:Moe*:Mamba2*:MatmulGrouped*:Kernels.SsmScan*:Phi3*:SmolLM3*:KvCompressed*:KvEvict*:*CompressedAttention*:*SparsePrefill*:KvQuant*}
jobs=${PEREGRINE_JOBS:-2}

fail() {
  echo "sanitizers: FAILED: $*" >&2
  exit 1
}

cxx=${CXX:-}
if [[ -z $cxx ]]; then
  if command -v clang++ >/dev/null; then cxx=clang++; else cxx=g++; fi
fi

# -O1: fast to compile, fast enough to run, and keeps stack traces readable.
cmake -S "$root" -B "$build" -G Ninja -DPEREGRINE_SANITIZE=ON -DCMAKE_CXX_COMPILER="$cxx" \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" >/dev/null ||
  fail "cmake configure of $build"
ninja -C "$build" -j "$jobs" peregrine_tests peregrine >"$build/sanitize-build.log" 2>&1 || {
  tail -n 40 "$build/sanitize-build.log" >&2
  fail "build (log: $build/sanitize-build.log)"
}

# Any report is fatal; leaks count too.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
ulimit -c 0  # a crash must show as a failure here, not leave a core file behind

# ---- unit tests
log=$build/sanitize-unit.log
"$build/bin/peregrine_tests" --gtest_filter="$filter" --gtest_brief=1 >"$log" 2>&1 || {
  tail -n 60 "$log" >&2
  fail "unit tests '$filter' (log: $log)"
}
grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:' "$log" && fail "sanitizer report in $log"
n_tests=$(sed -nE 's/^\[==========\] ([0-9]+) tests? from .* ran\..*/\1/p' "$log" | tail -n 1)
[[ ${n_tests:-0} -gt 0 ]] || fail "no test matched '$filter'"

# ---- CLI on corrupted files
exe=$build/bin/peregrine
if ! "$exe" info --help >/dev/null 2>&1; then
  echo "sanitizers: note: 'peregrine info --help' does not work yet; CLI bad-input check skipped"
  echo "sanitizers: OK: $n_tests unit tests '$filter', CLI check skipped ($((SECONDS - start))s, $build)"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$root/tests/fuzz" "$tmp" <<'EOF'
# Corrupt variants of a valid tiny GGUF, one per failure class of the reader.
import os, struct, sys
sys.path.insert(0, sys.argv[1])
import make_seeds as ms
out = sys.argv[2]
good = ms.gguf([("general.architecture", ms.STRING, "llama"), ("n", ms.U32, 1)],
               [("a", [8], "F32"), ("b", [32, 2], "Q4_0")])
def put(name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
def patch(data, at, fmt, v):
    return data[:at] + struct.pack(fmt, v) + data[at + struct.calcsize(fmt):]
key0 = 24                       # first kv
val0 = key0 + 8 + 20 + 4        # value of general.architecture (a string)
ti = good.index(b"\x01\x00\x00\x00\x00\x00\x00\x00a")  # tensor info 'a': name length 1, 'a'
put("empty.gguf", b"")
put("tiny.gguf", b"GGU")
put("bad_magic.gguf", b"GGML" + good[4:])
put("version4.gguf", patch(good, 4, "<I", 4))
put("version1.gguf", patch(good, 4, "<I", 1))
put("kv_count_huge.gguf", patch(good, 16, "<Q", 2**63))
put("tensor_count_huge.gguf", patch(good, 8, "<Q", 2**62))
put("string_len_huge.gguf", patch(good, val0, "<Q", 2**64 - 1))
put("key_len_huge.gguf", patch(good, key0, "<Q", 2**40))
put("value_type_bad.gguf", patch(good, val0 - 4, "<I", 99))
put("dims_zero.gguf", patch(good, ti + 9, "<I", 0))
put("dim_zero.gguf", patch(good, ti + 13, "<Q", 0))
put("tensor_type_bad.gguf", patch(good, ti + 21, "<I", 77))
put("offset_unaligned.gguf", patch(good, ti + 25, "<Q", 4))
put("offset_huge.gguf", patch(good, ti + 25, "<Q", 2**64 - 32))
for cut in (8, 23, 40, len(good) // 2, len(good) - 1):
    put(f"truncated_{cut}.gguf", good[:cut])
EOF
mkdir "$tmp/a_directory.gguf"
n_cli=0
for f in "$tmp"/*.gguf "$tmp/does_not_exist.gguf"; do
  name=$(basename "$f")
  rc=0
  (cd "$tmp" && exec "$exe" info "$f") >"$tmp/out" 2>"$tmp/err" || rc=$?
  if grep -qE 'Sanitizer|runtime error:' "$tmp/err"; then
    cat "$tmp/err" >&2
    fail "sanitizer report from 'peregrine info $name'"
  fi
  ((rc != 0)) || fail "'peregrine info $name' exited 0 on a bad file"
  ((rc < 128)) || fail "'peregrine info $name' died by signal $((rc - 128))"
  lines=$(wc -l <"$tmp/err")
  if [[ $lines -ne 1 ]] || ! head -n 1 "$tmp/err" | grep -q '^error: '; then
    sed 's/^/  | /' "$tmp/err" >&2
    fail "'peregrine info $name' must print exactly one 'error: ...' line on stderr (got $lines lines)"
  fi
  compgen -G "$tmp/core*" >/dev/null && fail "core dump from 'peregrine info $name'"
  n_cli=$((n_cli + 1))
done

# The real model must still work under the sanitizers.
model=${PEREGRINE_MODEL_PATH:-$HOME/.cache/peregrine/models/SmolLM2-135M-Instruct.Q4_1.gguf}
real="real model absent"
if [[ -f $model ]]; then
  "$exe" info "$model" >"$tmp/out" 2>"$tmp/err" || {
    cat "$tmp/err" >&2
    fail "'peregrine info $model' failed"
  }
  real="real model ok"
  # The server's hostile-input and fault tests against the sanitized binary: a sanitizer report
  # aborts the server, which then fails the test on its exit code.
  if [[ -x $root/.venv/bin/python ]]; then
    PEREGRINE_BIN=$exe PEREGRINE_MODEL_PATH=$model timeout 900 "$root/.venv/bin/python" -m pytest -q \
      -p no:cacheprovider "$root/tests/e2e/test_serve.py" "$root/tests/e2e/test_serve_hardening.py" \
      -k "malformed or errors or disconnect or stream_equals or n_choices or logprobs or attack or slow_client or max_connections or shutdown or sigterm" \
      >"$tmp/serve.log" 2>&1 || {
      tail -40 "$tmp/serve.log" >&2
      fail "server tests under the sanitizers"
    }
    real="$real, server tests ($(grep -oE '[0-9]+ passed' "$tmp/serve.log"))"
    # The state-space, hybrid and MoE models end to end (speculative recompute from checkpoints,
    # forks, preemption, concurrent requests) and their bad files.
    PEREGRINE_BIN=$exe PEREGRINE_MODEL_PATH=$model timeout 900 "$root/.venv/bin/python" -m pytest -q \
      -p no:cacheprovider "$root/tests/e2e/test_hybrid_models.py" "$root/tests/reference/test_forward_ssm.py" \
      -k "not reference and not ablation and not tolerance" >"$tmp/hybrid.log" 2>&1 || {
      tail -40 "$tmp/hybrid.log" >&2
      fail "hybrid-model tests under the sanitizers"
    }
    real="$real, hybrid-model tests ($(grep -oE '[0-9]+ passed' "$tmp/hybrid.log"))"
    # Compressed and evicting KV caches end to end: every type generating, eviction past its
    # budget, the servers with q8_0 and KIVI caches.
    PEREGRINE_BIN=$exe PEREGRINE_MODEL_PATH=$model timeout 900 "$root/.venv/bin/python" -m pytest -q \
      -p no:cacheprovider "$root/tests/e2e/test_kv_compression.py" \
      -k "run_with_each or budget_64 or serve or within_budget" >"$tmp/kv.log" 2>&1 || {
      tail -40 "$tmp/kv.log" >&2
      fail "compressed-KV tests under the sanitizers"
    }
    real="$real, compressed-KV tests ($(grep -oE '[0-9]+ passed' "$tmp/kv.log"))"
  fi
fi

echo "sanitizers: OK: $n_tests unit tests '$filter', $n_cli corrupted files via 'peregrine info', $real ($((SECONDS - start))s, $build)"
