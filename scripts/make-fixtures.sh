#!/usr/bin/env bash
# Regenerates the parity fixtures in tests/fixtures/parity with the reference PyTorch DLRM
# (../shared/peer/torch_dlrm.py export). Each fixture is a model directory (config.json +
# model.safetensors) plus inputs.jsonl and expected.txt (the reference's probabilities).
# The Rust tests read the committed files and need no Python.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/peer-setup.sh
PEER=${PEER:-../shared/peer/torch_dlrm.py}
OUT=tests/fixtures/parity
PY=.venv/bin/python
rm -rf "$OUT"; mkdir -p "$OUT"

cfg() { # name bot top tables dim op itself
  mkdir -p "$OUT/$1"
  printf '{"arch_mlp_bot": "%s", "arch_mlp_top": "%s", "arch_embedding_size": "%s", "arch_sparse_feature_size": %s, "arch_interaction_op": "%s", "arch_interaction_itself": %s}\n' \
    "$2" "$3" "$4" "$5" "$6" "$7" > "$OUT/$1.config.json"
  "$PY" "$PEER" export --out "$OUT/$1" --config "$OUT/$1.config.json" --samples 64 --seed "${SEED:-7}"
  rm "$OUT/$1.config.json"
}

cfg dot-odd          13-32-8     16-1      100-1000-50-7  8 dot false
cfg dot-itself-odd   5-7-3       11-4-1    1-9-300        3 dot true
cfg dot-one-row      1-4         3-1       1              4 dot false
cfg cat-odd          3-6-5       9-1       1-2-17-40      5 cat false
cfg cat-one-layer    4-2         1         1              2 cat false
cfg dot-wide         16-64-33    40-20-1   1000-1-77      33 dot true
"$PY" "$PEER" export --out "$OUT/criteo-kaggle-cap1000" --preset criteo-kaggle --rows-cap 1000 --samples 64 --seed 3
"$PY" "$PEER" export --out "$OUT/rmc1-cap500" --preset rmc1 --rows-cap 500 --samples 32 --seed 4
"$PY" "$PEER" export --out "$OUT/rmc3-cap200" --preset rmc3 --rows-cap 200 --samples 16 --seed 5
du -sh "$OUT"
