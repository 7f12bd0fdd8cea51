#!/usr/bin/env bash
# Sets up like run.sh, then runs every test: C++ unit tests (ctest), Python
# reference and end-to-end tests (pytest), sanitizer and fuzz runs.
set -euo pipefail
cd "$(dirname "$0")"
export PEREGRINE_BIN="$PWD/build/bin/peregrine"

scripts/deps.sh
scripts/venv.sh
scripts/build.sh
build/bin/peregrine pull smollm2-135m >/dev/null
export PEREGRINE_MODEL_PATH
PEREGRINE_MODEL_PATH=$(build/bin/peregrine pull smollm2-135m)

echo "== unit tests (ctest)"
ctest --test-dir build --output-on-failure -j"$(nproc)"

echo "== reference and end-to-end tests (pytest)"
.venv/bin/python -m pytest -q tests/reference tests/e2e

echo "== sanitizers (ASan + UBSan)"
scripts/test_sanitizers.sh

echo "== fuzzing"
scripts/test_fuzz.sh

echo "== all tests passed"
