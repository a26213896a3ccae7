#!/usr/bin/env python3
"""Side-by-side benchmark: dlrs against the PyTorch peer (../shared/peer/torch_dlrm.py bench),
same model, batch, threads and id distribution, in one run. Prints a markdown table with the
ratio of samples/s (and of p50 latency) and writes every raw JSON point to bench-out/.

  scripts/bench-vs-peer.py [--models rmc1,rmc2,rmc3] [--seconds 5] [--points 256x2,256x1,1x1]
                           [--dist uniform] [--no-thp-peer]

Needs `cargo build --release` and the peer's venv (scripts/peer-setup.sh). Absolute times
drift on shared machines; the ratios measured in one run are the figures to quote.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DLRS = os.path.join(ROOT, "target", "release", "dlrs")
PEER = os.environ.get("PEER", os.path.join(ROOT, "..", "shared", "peer", "torch_dlrm.py"))
PY = os.path.join(ROOT, ".venv", "bin", "python")


def run_json(cmd, env=None):
    e = dict(os.environ)
    e.update(env or {})
    out = subprocess.run(cmd, capture_output=True, text=True, env=e)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="rmc1,rmc2,rmc3")
    ap.add_argument("--points", default="256x2,256x1,1x1", help="BATCHxTHREADS list")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--dist", default="uniform")
    ap.add_argument("--no-thp-peer", action="store_true", help="skip the THP_MEM_ALLOC_ENABLE=1 peer run")
    a = ap.parse_args()
    os.makedirs(os.path.join(ROOT, "bench-out"), exist_ok=True)
    raw = open(os.path.join(ROOT, "bench-out", f"points-{int(time.time())}.jsonl"), "w")
    rows = []
    for model in a.models.split(","):
        for point in a.points.split(","):
            b, t = (int(x) for x in point.split("x"))
            common = ["--model", model, "--batch", str(b), "--threads", str(t), "--dist", a.dist,
                      "--seconds", str(a.seconds)]
            d = run_json([DLRS, "bench", *common, "--pool", "8", "--json"])
            dc = run_json([DLRS, "bench", *common, "--json"])
            p = run_json([PY, PEER, "bench", *common])
            pt = None if a.no_thp_peer else run_json([PY, PEER, "bench", *common], {"THP_MEM_ALLOC_ENABLE": "1"})
            for name, v in [("dlrs", d), ("dlrs-cold-pool", dc), ("pytorch", p), ("pytorch-thp", pt)]:
                if v is not None:
                    raw.write(json.dumps({"who": name, **v}) + "\n")
            raw.flush()
            rows.append((model, b, t, d, dc, p, pt))
            r = rows[-1]
            print(f"{model} b{b} t{t}: dlrs {d['samples_per_s']:.0f}/s vs pytorch {p['samples_per_s']:.0f}/s "
                  f"= {d['samples_per_s'] / p['samples_per_s']:.2f}x", file=sys.stderr)
    print(f"| model | batch | threads | dlrs samples/s | PyTorch samples/s | ratio | PyTorch+THP samples/s | ratio vs THP "
          f"| dlrs p50 ms | PyTorch p50 ms | p50 ratio | dlrs cold-pool samples/s | dlrs emb. M rows/s | dlrs MLP GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model, b, t, d, dc, p, pt in rows:
        ds, ps = d["samples_per_s"], p["samples_per_s"]
        pts = f"{pt['samples_per_s']:.0f}" if pt else "-"
        ptr = f"{ds / pt['samples_per_s']:.2f}x" if pt else "-"
        print(f"| {model} | {b} | {t} | {ds:.0f} | {ps:.0f} | {ds / ps:.2f}x | {pts} | {ptr} "
              f"| {d['latency_ms']['p50']:.3f} | {p['latency_ms']['p50']:.3f} "
              f"| {p['latency_ms']['p50'] / d['latency_ms']['p50']:.1f}x faster "
              f"| {dc['samples_per_s']:.0f} | {d['embedding_rows_per_s'] / 1e6:.0f} | {d['mlp_gflop_per_s']:.0f} |")


if __name__ == "__main__":
    main()
