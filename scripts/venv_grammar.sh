#!/usr/bin/env bash
# Creates .venv-grammar, once: xgrammar and llguidance, the independent constraint engines of
# tests/reference/test_constrain_oracle.py and bench/mask_bench.py.
#
# xgrammar imports torch (its bitmasks are torch tensors) and transformers at import time, and
# declares torch, triton and transformers as dependencies; PyPI's torch brings gigabytes of CUDA
# libraries. So the venv is made from Debian's python3 with its system site-packages, where
# Debian's CPU-only python3-torch (and the python3-numpy it is built against, which is why numpy
# is not pinned here) are installed by scripts/deps.sh --tests, and every package is installed with
# --no-deps from the exact list below: what xgrammar, llguidance, gguf, tokenizers, sentencepiece
# and jsonschema import, without triton, PyPI's torch, or the command-line extras of
# transformers / huggingface_hub (kernels, typer, click) that importing them does not need.
set -euo pipefail
cd "$(dirname "$0")/.."

pins=(
  xgrammar==0.2.9 apache-tvm-ffi==0.1.15.post2 llguidance==1.9.1
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing_extensions==4.16.0
  transformers==5.25.0 huggingface_hub==2.4.0 hf-xet==1.8.0 httpx2==2.17.0 httpcore2==2.17.0
  h11==0.16.0 anyio==4.16.0 idna==3.20 truststore==0.10.5 tokenizers==0.23.3 safetensors==0.8.0
  regex==2026.12.2 packaging==26.4 filelock==4.3.2 fsspec==2026.9.0 tqdm==4.70.1 pyyaml==6.0.3
  requests==2.32.5 urllib3==2.5.0 charset-normalizer==3.4.4 certifi==2025.10.5
  gguf==0.19.0 sentencepiece==0.2.3 protobuf==7.36.2
  jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
  attrs==25.4.0
)

stamp=.venv-grammar/.peregrine-requirements
want=$(printf '%s\n' "${pins[@]}")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi
if ! /usr/bin/python3 -c 'import torch' 2>/dev/null; then
  echo "error: Debian's python3-torch is not installed (scripts/deps.sh --tests installs it)" >&2
  exit 1
fi
rm -rf .venv-grammar
/usr/bin/python3 -m venv --system-site-packages .venv-grammar
.venv-grammar/bin/python -m pip install -q --disable-pip-version-check --no-deps "${pins[@]}"
printf '%s\n' "$want" >"$stamp"
