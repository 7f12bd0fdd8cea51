#!/usr/bin/env bash
# Sets up Peregrine on a fresh Debian machine (packages, build, default model) and
# runs `peregrine ARGS`. With no arguments: a short demo generation.
set -euo pipefail
cd "$(dirname "$0")"
# ccache: hash paths relative to the checkout, so a fresh clone reuses earlier builds.
export CCACHE_BASEDIR="$PWD" CCACHE_NOHASHDIR=1
scripts/deps.sh
scripts/build.sh peregrine
if [ $# -eq 0 ]; then
  set -- run --chat -p "Write one sentence about the sea." -n 48 --temp 0
fi
exec build/bin/peregrine "$@"
