#!/usr/bin/env bash
# Runs python/tests (pytest) against the dlrs Python package built from ./python. Creates
# .venv-python on first use with maturin, numpy, pytest, safetensors and torch from PyPI
# (torch for the in-process parity checks against a reference-style PyTorch DLRM; the one
# large download, reused while the venv can import it), then builds and installs ./python
# into it and builds the dlrs binary (the Trainer is checked against `dlrs train`).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-python
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import maturin, numpy, pytest, safetensors, torch' 2>/dev/null; then
  "$venv/bin/pip" install --quiet maturin numpy pytest safetensors torch
fi
# no build isolation: maturin is in the venv already (no download per run)
PATH="$PWD/$venv/bin:$PATH" "$venv/bin/pip" install --quiet --no-build-isolation --force-reinstall --no-deps ./python
cargo build --release -p dlrs-cli
DLRS_BIN="$PWD/target/release/dlrs" "$venv/bin/pytest" -q python/tests
