#!/usr/bin/env python3
"""The Python call's overhead, measured against `dlrs bench` in the same run (a benchmark,
not a test).

    python scripts/bench-python.py [--dir DIR | --rows-cap N] [--seconds 3] [--rounds 5] [--dlrs target/release/dlrs]

Writes RMC1 with `dlrs init --preset rmc1` (full-size 4 GB tables unless --rows-cap) into
a temporary directory (or uses --dir), then for batch 256 and batch 1 on 2 threads runs
`dlrs bench --model DIR --tables ram --ids-per-table 80 --json` and the same from Python:
`dlrs.Model.load(DIR, tables="ram", threads=2).predict(...)` over a pool of uniform random
batches whose rows span >= 256 MB (as dlrs bench's pool does), ids as int64 (narrowed, one
checked copy) and as int32 (read in place). Prints one JSON object per point and the
Python/Rust ratios of the medians over interleaved rounds: samples/s at batch 256, p50
latency added at batch 1. Then, in one process, `predict` against the forward pass alone
(timed in Rust on the same batches, calls alternating), which cancels a shared host's load
drift between processes.
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


def py_bench(model, pool, batch, seconds):
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


def interleaved(model, pool, batch, seconds):
    """Python's `predict` (timed in Python) and the forward pass alone (timed in Rust,
    `Model._time_forward`) in turn over the same pool, in one process: the call's overhead
    with the host's load drift cancelled."""
    predict, forward = model.predict, model._time_forward
    for dense, sparse in pool[:4]:
        predict(dense, sparse)
    py, rs = [], []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end or len(py) < 10:
        dense, sparse = pool[i % len(pool)]
        if i % 2 == 0:
            t0 = time.perf_counter()
            predict(dense, sparse)
            py.append(time.perf_counter() - t0)
        else:
            rs.append(forward(dense, sparse))
        i += 1
    py, rs = np.array(py), np.array(rs)
    return {
        "python_samples_per_s": batch * len(py) / float(py.sum()),
        "forward_samples_per_s": batch * len(rs) / float(rs.sum()),
        "ratio_samples_per_s": float(rs.mean() / py.mean()),
        "python_p50_us": float(np.percentile(py, 50) * 1e6),
        "forward_p50_us": float(np.percentile(rs, 50) * 1e6),
        "p50_added_us": float((np.percentile(py, 50) - np.percentile(rs, 50)) * 1e6),
        "calls": len(py) + len(rs),
    }


def median(runs):
    return {k: float(np.median([r[k] for r in runs])) for k in ("samples_per_s", "p50_us")}


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
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=5)
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
        pools = {t: pool_of(model, batch, t, rng) for t in (np.int64, np.int32)}
        runs = {"dlrs_bench": [], "python_int64": [], "python_int32": []}
        # rounds interleaved, medians reported: a shared host's load drifts between runs
        for _ in range(a.rounds):
            runs["dlrs_bench"].append(rust_bench(a.dlrs, d, batch, a.threads, a.seconds))
            runs["python_int64"].append(py_bench(model, pools[np.int64], batch, a.seconds))
            runs["python_int32"].append(py_bench(model, pools[np.int32], batch, a.seconds))
        preset = None if a.rows_cap or batch != 256 else rust_preset(a.dlrs, batch, a.threads, a.seconds)
        inproc = {t.__name__: interleaved(model, pools[t], batch, 2 * a.seconds) for t in (np.int64, np.int32)}
        m = {k: median(v) for k, v in runs.items()}
        r = m["dlrs_bench"]
        print(json.dumps({
            "model": "rmc1", "rows_cap": a.rows_cap or None, "batch": batch, "threads": a.threads,
            "rounds": a.rounds, "median": m, "runs": runs, "dlrs_bench_preset": preset,
            "in_process": inproc,
            "ratio_samples_per_s_int64": m["python_int64"]["samples_per_s"] / r["samples_per_s"],
            "ratio_samples_per_s_int32": m["python_int32"]["samples_per_s"] / r["samples_per_s"],
            "p50_added_us_int64": m["python_int64"]["p50_us"] - r["p50_us"],
            "p50_added_us_int32": m["python_int32"]["p50_us"] - r["p50_us"],
        }), flush=True)
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
