#!/usr/bin/env python3
"""Training throughput of dlrs against the PyTorch peer, side by side in one run: for each
batch size, ROUNDS alternations of `train_bench` (dlrs) and scripts/torch-train-bench.py
(PyTorch CPU, the reference module with sparse embedding gradients, SGD, BCE), each for
--seconds; prints every run and the median of each side with their ratio (medians because
this shared machine's figures drift by 10-20% from one minute to the next).

  cargo build --release -p dlrs-train --example train_bench
  scripts/train-vs-peer.py [--model criteo-kaggle] [--batches 128,2048] [--threads 2] [--rounds 3] [--seconds 8]
"""
import argparse
import json
import os
import statistics
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["samples_per_s"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="criteo-kaggle")
    ap.add_argument("--batches", default="128,2048")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", default="8")
    ap.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    a = ap.parse_args()
    bench = os.path.join(ROOT, "target", "release", "examples", "train_bench")
    rows = []
    for batch in a.batches.split(","):
        ours, peer = [], []
        for r in range(a.rounds):
            ours.append(run([bench, a.model, batch, a.threads, a.seconds]))
            peer.append(run([a.python, os.path.join(ROOT, "scripts", "torch-train-bench.py"), "--model", a.model,
                             "--batch", batch, "--threads", a.threads, "--seconds", a.seconds]))
            print(f"batch {batch} round {r + 1}: dlrs {ours[-1]:.0f} samples/s, PyTorch {peer[-1]:.0f} "
                  f"({ours[-1] / peer[-1]:.2f}x)", flush=True)
        mo, mp = statistics.median(ours), statistics.median(peer)
        rows.append((batch, mo, mp))
    print("\n| batch | dlrs samples/s (median) | PyTorch samples/s (median) | ratio |")
    print("|---|---|---|---|")
    for batch, mo, mp in rows:
        print(f"| {batch} | {mo / 1e3:.1f}k | {mp / 1e3:.1f}k | {mo / mp:.2f}x |")


if __name__ == "__main__":
    main()
