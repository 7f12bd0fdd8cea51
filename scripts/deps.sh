#!/usr/bin/env bash
# Installs the Debian packages Peregrine builds and tests with, if any is missing.
# usage: scripts/deps.sh [--tests]   (--tests: also what only the test oracles need)
set -euo pipefail

packages=(
  build-essential cmake ninja-build ccache pkg-config git
  clang libclang-rt-dev          # fuzz targets (libFuzzer) and sanitizer runtimes
  libgtest-dev libbenchmark-dev
  nlohmann-json3-dev libboost1.81-dev libcli11-dev libfmt-dev libpcre2-dev libssl-dev
  python3 python3-pip python3-venv
)
if [ "${1:-}" = "--tests" ]; then
  packages+=(python3-torch)  # .venv-grammar (scripts/venv_grammar.sh): xgrammar's torch, CPU-only
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing Debian packages: ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "error: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q >/dev/null
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
