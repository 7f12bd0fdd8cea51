#!/usr/bin/env bash
# Peregrine vs llama.cpp (llama-bench) on the same model, threads and machine; see bench/README.md.
# Options: -m MODEL (repeatable) -t THREADS -r REPETITIONS --rounds N -p N_PROMPT -n N_GEN --json PATH (--help for all).
set -euo pipefail
exec python3 "$(dirname "$0")/compare.py" "$@"
