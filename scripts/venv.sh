#!/usr/bin/env bash
# Creates .venv with the Python test tools (PyPI, pinned), once.
set -euo pipefail
cd "$(dirname "$0")/.."
stamp=.venv/.peregrine-requirements
if [ -f "$stamp" ] && cmp -s "$stamp" tests/requirements.txt; then exit 0; fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r tests/requirements.txt
cp tests/requirements.txt "$stamp"
