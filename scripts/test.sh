#!/usr/bin/env bash
# The test suite: the doc examples, then every crate's unit, property and integration
# tests (nextest). Needs only the Rust toolchain: the parity fixtures are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --release --doc
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --release --no-fail-fast
else
  cargo test --workspace --release --no-fail-fast --lib --bins --tests
fi
