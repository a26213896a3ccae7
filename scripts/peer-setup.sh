#!/usr/bin/env bash
# Sets up the PyTorch peer (../shared/peer) in .venv: torch, numpy, safetensors from PyPI.
# Used to regenerate parity fixtures and for side-by-side benchmarks; the Rust tests need none of it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -c 'import torch, numpy, safetensors' 2>/dev/null && exit 0
.venv/bin/pip install --quiet torch safetensors numpy
