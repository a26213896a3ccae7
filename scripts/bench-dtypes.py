#!/usr/bin/env python3
"""dlrs against itself across row formats, in one run: samples/s of fp32, fp16, int8 and int4
tables (batch 256, 2 threads, uniform ids by default), the ratio to fp32, bytes and cache lines
per row, embedding memory and peak RSS. Prints a markdown table.

  scripts/bench-dtypes.py [--models rmc1,rmc2] [--batch 256] [--threads 2] [--seconds 5] [--dist uniform]
"""
import argparse
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DLRS = os.path.join(ROOT, "target", "release", "dlrs")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="rmc1,rmc2")
    ap.add_argument("--batch", default="256")
    ap.add_argument("--threads", default="2")
    ap.add_argument("--seconds", default="5")
    ap.add_argument("--dist", default="uniform")
    a = ap.parse_args()
    print("| model | dtype | samples/s | vs fp32 | emb. M rows/s | bytes/row | stride | cache lines/row | embeddings GB | peak RSS GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for model in a.models.split(","):
        base = None
        for dtype in ["fp32", "fp16", "int8", "int4"]:
            out = subprocess.run([DLRS, "bench", "--model", model, "--batch", a.batch, "--threads", a.threads,
                                  "--seconds", a.seconds, "--dist", a.dist, "--dtype", dtype, "--json"],
                                 capture_output=True, text=True, check=True)
            v = json.loads(out.stdout)
            base = base or v["samples_per_s"]
            print(f"| {model} | {dtype} | {v['samples_per_s']:.0f} | {v['samples_per_s'] / base:.2f}x "
                  f"| {v['embedding_rows_per_s'] / 1e6:.0f} | {v['row_bytes']:.0f} | {v.get('row_stride', '-')} "
                  f"| {v['cache_lines_per_row']:.2f} | {v['embedding_bytes'] / 1e9:.2f} | {v['rss_bytes'] / 1e9:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
