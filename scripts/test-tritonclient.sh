#!/usr/bin/env bash
# Runs tests/tritonclient/test_dlrs_serve.py: a stock tritonclient[http] from PyPI against
# `dlrs serve`. Installs the client into .venv-tritonclient on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-tritonclient/bin/python ] || ! .venv-tritonclient/bin/python -c 'import tritonclient.http, numpy' 2>/dev/null; then
  python3 -m venv .venv-tritonclient
  .venv-tritonclient/bin/pip install --quiet "tritonclient[http]" numpy
fi
cargo build --release -p dlrs-cli
.venv-tritonclient/bin/python tests/tritonclient/test_dlrs_serve.py target/release/dlrs
