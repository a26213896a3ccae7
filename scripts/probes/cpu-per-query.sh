#!/bin/bash
# CPU time per query, by thread group, of a load at a fixed rate: over HTTP against a running
# `dlrs serve` (its threads and the load generator's), or in process (`dlrs twin`'s threads).
# From /proc ticks over the middle of the run (its first 3 s and last 2 s are left out).
#
#   scripts/probes/cpu-per-query.sh http QPS SECONDS [extra dlrs loadgen flags...]
#   scripts/probes/cpu-per-query.sh twin QPS SECONDS MODEL_DIR [extra dlrs twin flags...]
#
# http expects one `dlrs serve` on 127.0.0.1:8129 serving model "m" with --allow-client-shm
# (as scripts/serve-checks.py starts it). The load is RMC1's: 80 ids per table, normal(165,16)
# samples a query; over HTTP the tensors are in system shared memory. Prints ms of CPU per
# query for compute (dlrs-batcher-*), dlrs-http and the other server threads, the client or
# the twin's dispatcher (dlrs-loadgen-di). Run nothing else meanwhile.
set -euo pipefail
MODE=$1; QPS=$2; SECS=$3; shift 3
[ "$SECS" -ge 8 ] || { echo "SECONDS must be at least 8" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DLRS=${DLRS:-$ROOT/target/release/dlrs}
LOAD=(--ids-per-table 80 --query-size normal:165,16 --pool 256 --json --qps "$QPS" --duration "$SECS" --warmup 0)
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
ticks() {  # "thread-name ticks" per name over process $1's threads (compute threads summed)
  for t in /proc/$1/task/*; do echo "$(cat "$t/comm") $(awk '{print $14+$15}' "$t/stat")"; done |
    sed -E 's/^dlrs-batcher-[0-9]+/dlrs-batcher/' | awk '{a[$1]+=$2} END {for (k in a) print k, a[k]}' | sort
}
case $MODE in
  http)
    SERVER=$(pgrep -f "dlrs serve" | head -1) || { echo "no dlrs serve running" >&2; exit 2; }
    "$DLRS" loadgen --url http://127.0.0.1:8129 --model m --binary --shared-memory system \
      "${LOAD[@]}" "$@" > "$OUT/load.json" 2> "$OUT/load.err" &
    CLIENT=$!
    ;;
  twin)
    MODEL=$1; shift
    "$DLRS" twin --model "$MODEL" "${LOAD[@]}" "$@" > "$OUT/load.json" 2> "$OUT/load.err" &
    CLIENT=$!; SERVER=$CLIENT
    # the load starts once the model is loaded and the queries generated
    until grep -q "^generated" "$OUT/load.err"; do
      kill -0 $CLIENT 2>/dev/null || { cat "$OUT/load.err" >&2; exit 1; }
      sleep 0.2
    done
    ;;
  *) echo "mode: http or twin" >&2; exit 2 ;;
esac
sleep 3
ticks "$SERVER" > "$OUT/s0"; C0=$(awk '{print $14+$15}' /proc/$CLIENT/stat); T0=$(date +%s.%N)
sleep $((SECS - 5))
ticks "$SERVER" > "$OUT/s1"; C1=$(awk '{print $14+$15}' /proc/$CLIENT/stat); T1=$(date +%s.%N)
wait $CLIENT
python3 - "$OUT" "$MODE" "$QPS" "$T0" "$T1" "$C0" "$C1" "$(getconf CLK_TCK)" <<'PY'
import json, sys
out, mode = sys.argv[1], sys.argv[2]
qps, t0, t1 = map(float, sys.argv[3:6])
c0, c1, hz = map(int, sys.argv[6:9])
n = qps * (t1 - t0)
read = lambda f: {k: int(v) for k, v in (l.split() for l in open(f"{out}/{f}"))}
s0, s1 = read("s0"), read("s1")
total = 0.0
for k in sorted(s1):
    d = (s1[k] - s0.get(k, 0)) / hz / n * 1e3
    total += d
    if d:
        print(f"{mode:6s} {k:16s} {d:.3f} ms/query")
if mode == "http":
    d = (c1 - c0) / hz / n * 1e3
    total += d
    print(f"client {'':16s} {d:.3f} ms/query")
print(f"total  {'':16s} {total:.3f} ms/query")
r = json.load(open(f"{out}/load.json"))
print(f"achieved {r['achieved_qps']:.0f} QPS, p99 {r['latency_ms']['p99']:.2f} ms, errors {r['errors']['total']}")
PY
