#!/usr/bin/env python3
"""The Python call's overhead, measured against `dlrs bench` in the same run (a benchmark,
not a test).

    python python/bench.py [--dir DIR | --rows-cap N] [--seconds 5] [--dlrs target/release/dlrs]

Writes RMC1 with `dlrs init --preset rmc1` (full-size 4 GB tables unless --rows-cap) into
a temporary directory (or uses --dir), then for batch 256 and batch 1 on 2 threads runs
`dlrs bench --model DIR --tables ram --ids-per-table 80 --json` and the same from Python:
`dlrs.Model.load(DIR, tables="ram", threads=2).predict(...)` over a pool of uniform random
batches whose rows span >= 256 MB (as dlrs bench's pool does), ids as int64 (narrowed, one
checked copy) and as int32 (read in place). Prints one JSON object per point and the
Python/Rust ratios: samples/s at batch 256, p50 latency added at batch 1.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time

import numpy as np

import dlrs

IDS = 80  # RMC1's ids per table per sample


def pool_of(model, batch, dtype, rng):
    rows = model.table_rows
    row_bytes = 4 * model.config["arch_sparse_feature_size"]
    per_batch = batch * IDS * len(rows) * row_bytes
    n = max(8, -(-(256 << 20) // per_batch))
    pool = []
    for _ in range(n):
        dense = rng.standard_normal((batch, model.n_dense)).astype(np.float32)
        offsets = np.arange(0, batch * IDS + 1, IDS, dtype=dtype)
        sparse = [(rng.integers(0, r, size=batch * IDS).astype(dtype), offsets) for r in rows]
        pool.append((dense, sparse))
    return pool


def py_bench(model, batch, dtype, seconds, rng):
    pool = pool_of(model, batch, dtype, rng)
    predict = model.predict
    for dense, sparse in pool[:3]:
        predict(dense, sparse)
    lat = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end or len(lat) < 10:
        dense, sparse = pool[i % len(pool)]
        t0 = time.perf_counter()
        predict(dense, sparse)
        lat.append(time.perf_counter() - t0)
        i += 1
    lat = np.array(lat)
    return {
        "samples_per_s": batch * len(lat) / float(lat.sum()),
        "p50_us": float(np.percentile(lat, 50) * 1e6),
        "p99_us": float(np.percentile(lat, 99) * 1e6),
        "batches": len(lat),
    }


def rust_bench(exe, d, batch, threads, seconds):
    out = subprocess.run(
        [exe, "bench", "--model", d, "--tables", "ram", "--batch", str(batch), "--threads", str(threads),
         "--ids-per-table", str(IDS), "--seconds", str(seconds), "--json", "--skip-limits"],
        check=True, capture_output=True, text=True,
    ).stdout
    r = json.loads(out)
    return {"samples_per_s": r["samples_per_s"], "p50_us": r["latency_ms"]["p50"] * 1e3,
            "p99_us": r["latency_ms"]["p99"] * 1e3}


def rust_preset(exe, batch, threads, seconds):
    """`dlrs bench --model rmc1` as the README runs it (tables built in memory)."""
    out = subprocess.run(
        [exe, "bench", "--model", "rmc1", "--batch", str(batch), "--threads", str(threads),
         "--seconds", str(seconds), "--json", "--skip-limits"],
        check=True, capture_output=True, text=True,
    ).stdout
    r = json.loads(out)
    return {"samples_per_s": r["samples_per_s"], "p50_us": r["latency_ms"]["p50"] * 1e3}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", help="an RMC1 model directory (default: written by dlrs init)")
    ap.add_argument("--rows-cap", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dlrs", default="target/release/dlrs")
    a = ap.parse_args()
    tmp = None
    d = a.dir
    if d is None:
        tmp = tempfile.TemporaryDirectory(prefix="dlrs-bench-")
        d = tmp.name + "/rmc1"
        cmd = [a.dlrs, "init", "--preset", "rmc1", "--out", d]
        if a.rows_cap:
            cmd += ["--rows-cap", str(a.rows_cap)]
        subprocess.run(cmd, check=True, capture_output=True)
    model = dlrs.Model.load(d, tables="ram", threads=a.threads)
    rng = np.random.default_rng(1)
    for batch in (256, 1):
        rust = rust_bench(a.dlrs, d, batch, a.threads, a.seconds)
        p64 = py_bench(model, batch, np.int64, a.seconds, rng)
        p32 = py_bench(model, batch, np.int32, a.seconds, rng)
        rust2 = rust_bench(a.dlrs, d, batch, a.threads, a.seconds)  # before and after
        r = {k: (rust[k] + rust2[k]) / 2 for k in rust}
        preset = None if a.rows_cap or batch != 256 else rust_preset(a.dlrs, batch, a.threads, a.seconds)
        print(json.dumps({
            "model": "rmc1", "rows_cap": a.rows_cap or None, "batch": batch, "threads": a.threads,
            "dlrs_bench": r, "dlrs_bench_runs": [rust, rust2], "dlrs_bench_preset": preset,
            "python_int64": p64, "python_int32": p32,
            "ratio_samples_per_s_int64": p64["samples_per_s"] / r["samples_per_s"],
            "ratio_samples_per_s_int32": p32["samples_per_s"] / r["samples_per_s"],
            "p50_added_us_int64": p64["p50_us"] - r["p50_us"],
            "p50_added_us_int32": p32["p50_us"] - r["p50_us"],
        }), flush=True)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
