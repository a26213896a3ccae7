#!/usr/bin/env bash
# The test suite: rustfmt and clippy (warnings are errors), the doc examples, a stock
# tritonclient against `dlrs serve` (installs tritonclient[http] from PyPI into
# .venv-tritonclient on first use), the Python package's pytest suite (installs maturin,
# numpy, pytest, safetensors and torch into .venv-python on first use), then every crate's
# unit, property and integration tests (nextest), the report's page among them in headless
# Chromium (Debian's chromium, installed by scripts/install-chromium.sh when
# /usr/bin/chromium is missing), the Redis tier's against Redis Clusters the tests start on
# loopback ports (Debian's redis-server, installed by scripts/install-redis.sh when
# missing). The parity fixtures are committed: no PyTorch needed for the Rust tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# style and lints first: a formatting slip or a clippy warning fails the suite
cargo fmt --all --check
cargo clippy --workspace --release --all-targets -- -D warnings
cargo test --workspace --release --doc
scripts/test-tritonclient.sh
scripts/test-python.sh
scripts/install-chromium.sh
scripts/install-redis.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --release --no-fail-fast
else
  cargo test --workspace --release --no-fail-fast --lib --bins --tests
fi
