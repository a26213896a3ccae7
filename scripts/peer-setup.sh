#!/usr/bin/env bash
# Sets up the PyTorch peer (../shared/peer/torch_dlrm.py) from PyPI:
#   scripts/peer-setup.sh             .venv: torch, numpy, safetensors (eager and inductor)
#   scripts/peer-setup.sh --zentorch  .venv-zentorch: torch 2.14 with AMD's zentorch 2.14.0.1
# Used to regenerate parity fixtures and for side-by-side benchmarks (scripts/bench-vs-peer.py);
# the Rust tests need none of it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--zentorch" ]; then
  [ -x .venv-zentorch/bin/python ] || python3 -m venv .venv-zentorch
  .venv-zentorch/bin/python -c 'import torch, zentorch, numpy, safetensors' 2>/dev/null && exit 0
  .venv-zentorch/bin/pip install --quiet "torch==2.14.*" zentorch==2.14.0.1 safetensors numpy
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -c 'import torch, numpy, safetensors' 2>/dev/null && exit 0
.venv/bin/pip install --quiet torch safetensors numpy
