#!/usr/bin/env bash
# Accuracy of quantized tables and bf16 MLP weights on a trained model (AUC drop <= 0.001
# for int8 tables and for bf16 MLPs, <= 0.003 for int4 tables; fp16 tables and int8 tables
# with bf16 MLPs are reported).
#
# One random teacher (criteo-kaggle shape, tables capped at ROWS_CAP rows, sharpened with
# --logit-scale 8 so a student learns a clear signal in one pass) gives a train set (--seed 1)
# and a held-out eval set (--seed 2). `dlrs train` fits a fresh student (row-wise Adagrad
# tables, Adam MLPs); `dlrs quantize` converts all its tables to fp16, int8 and int4, its MLP
# weights to bf16, and both (int8 tables, bf16 MLPs); `dlrs compare` scores the eval set with
# the trained fp32 model and each converted one. Prints dtype, AUC, AUC drop, max/mean |score
# diff|; exits 1 when a bounded variant misses its bound.
#
#   scripts/quant-auc.sh                      # build first: cargo build --release -p dlrs-cli
#   DLRS=path/to/dlrs WORK=/tmp/q TRAIN_ROWS=300000 scripts/quant-auc.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DLRS=${DLRS:-${CARGO_TARGET_DIR:-target}/release/dlrs}
THREADS=${THREADS:-2}
TRAIN_ROWS=${TRAIN_ROWS:-600000}
EVAL_ROWS=${EVAL_ROWS:-100000}
ROWS_CAP=${ROWS_CAP:-100}
TEACHER=${TEACHER:-7}
EPOCHS=${EPOCHS:-1}
if [[ -z ${WORK:-} ]]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"

shape=(--preset criteo-kaggle --rows-cap "$ROWS_CAP")
teacher=("${shape[@]}" --teacher "$TEACHER" --dist zipf:1.05 --logit-scale 8)
"$DLRS" synth "${teacher[@]}" --seed 1 --rows "$TRAIN_ROWS" --out "$WORK/train.jsonl" \
  --threads "$THREADS" >&2
"$DLRS" synth "${teacher[@]}" --seed 2 --rows "$EVAL_ROWS" --out "$WORK/eval.jsonl" \
  --save-teacher "$WORK/teacher" --threads "$THREADS" >&2
rm -rf "$WORK/trained"
"$DLRS" train "${shape[@]}" --seed 0 --train "$WORK/train.jsonl" --out "$WORK/trained" \
  --epochs "$EPOCHS" --batch 128 --optimizer rowwise-adagrad --sparse-lr 0.1 \
  --dense-optimizer adam --dense-lr 0.001 --threads "$THREADS" >&2
echo "teacher (the ceiling): $("$DLRS" eval --model "$WORK/teacher" --data "$WORK/eval.jsonl")" >&2

for dt in fp16 int8 int4 bf16-mlp int8+bf16-mlp; do
  case $dt in
    bf16-mlp) args=(--mlp-dtype bf16) ;;
    int8+bf16-mlp) args=(--dtype int8 --mlp-dtype bf16) ;;
    *) args=(--dtype "$dt") ;;
  esac
  rm -rf "$WORK/$dt"
  "$DLRS" quantize --model "$WORK/trained" "${args[@]}" --out "$WORK/$dt" >/dev/null
  "$DLRS" compare --model "$WORK/trained" --model "$WORK/$dt" --input "$WORK/eval.jsonl" \
    --threads "$THREADS" --json | sed "s/^/$dt /"
done | python3 -c '
import json, sys
bound = {"fp16": None, "int8": 0.001, "int4": 0.003, "bf16-mlp": 0.001, "int8+bf16-mlp": None}
rows, ok = [], True
for line in sys.stdin:
    dt, js = line.split(" ", 1)
    v = json.loads(js)
    if not rows:
        rows.append(("fp32", v["auc_a"], 0.0, 0.0, 0.0, ""))
    drop = v["auc_a"] - v["auc_b"]
    verdict = ""
    if bound[dt] is not None:
        verdict = "ok" if drop <= bound[dt] else "FAIL"
        verdict += f" (<= {bound[dt]})"
        ok &= drop <= bound[dt]
    rows.append((dt, v["auc_b"], drop, v["max_abs_diff"], v["mean_abs_diff"], verdict))
n = v["samples"]
print(f"eval samples: {n}")
print("| dtype | AUC | AUC drop | max abs score diff | mean abs score diff | bound |")
print("|---|---|---|---|---|---|")
for dt, auc, drop, mx, mean, verdict in rows:
    print(f"| {dt} | {auc:.6f} | {drop:+.6f} | {mx:.3e} | {mean:.3e} | {verdict} |")
sys.exit(0 if ok else 1)
'
