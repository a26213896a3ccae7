#!/usr/bin/env python3
"""Latency-bounded throughput of `dlrs serve`'s settings, compared on a noisy host.

A search for the highest rate under a p99 target (`dlrs twin --target-p99-ms`) moves by
whole steps, so one noisy step sends it elsewhere: two searches of the same settings on a
2-vCPU VM differed by 4x within minutes. This script measures instead every setting at every
rate of a fixed ladder, interleaved (rate by rate, the settings in turn, round after round),
and takes the median p99 of each (setting, rate) over the rounds. A setting's latency-bounded
throughput is the highest rate whose median p99 is at or under the target and whose queries
all succeeded in at least half the rounds. Every measurement is one `dlrs twin` process (the
model loaded into RAM, --warmup seconds at the rate, then --duration seconds measured); the
scheduler's settings run under `--target-p99-ms T --max-steps 1` (one step at the rate).

    scripts/scheduler-compare.py --model DIR --target-p99-ms 10 --rates 50,100,150,200 \\
        --rounds 3 -- --ids-per-table 80

Settings compared (names in the output): `default` (the flags' defaults: one instance per
thread, max batch 256, delay 500 us), the grid given by --grid (instances x max batch x
delay), and `scheduler` (`--target-p99-ms` with nothing pinned). Prints a Markdown table and
writes every measurement to --out as JSON.
"""

import argparse
import itertools
import json
import statistics
import subprocess
import sys


def run(dlrs, model, rate, args, extra, duration, warmup):
    cmd = [dlrs, "twin", "--model", model, "--qps", str(rate), "--duration", str(duration),
           "--warmup", str(warmup), "--json"] + args + extra
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    d = json.loads(out)
    p = d["points"][0] if "points" in d else d
    return {
        "p99_ms": p["latency_ms"]["p99"],
        "p50_ms": p["latency_ms"]["p50"],
        "errors": p["errors"]["total"],
        "achieved_qps": p["achieved_qps"],
        "scheduler": p.get("scheduler"),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dlrs", default="target/release/dlrs")
    ap.add_argument("--model", required=True)
    ap.add_argument("--target-p99-ms", type=float, required=True)
    ap.add_argument("--rates", required=True, help="comma-separated QPS ladder")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--grid", default="1,2x256,512x0,500",
                    help="instances x max batches x delays (us), each comma-separated")
    ap.add_argument("--setting", action="append", default=[], metavar="NAME=FLAGS",
                    help="one more fixed setting, e.g. 'spin=--idle-spin-us 20000' (repeatable)")
    ap.add_argument("--out", default="scheduler-compare.json")
    ap.add_argument("extra", nargs="*", help="more `dlrs twin` flags, after --")
    a = ap.parse_args()
    t = a.target_p99_ms
    # the fixed settings run as one search step too, so that every process does the same
    static = ["--target-p99-ms", str(t), "--max-steps", "1", "--static-settings"]
    settings = {"default": static}
    inst, batches, delays = (s.split(",") for s in a.grid.split("x"))
    for i, b, d in itertools.product(inst, batches, delays):
        settings[f"i{i}-b{b}-d{d}"] = static + ["--instances", i, "--max-batch", b,
                                               "--max-queue-delay-us", d]
    for extra in a.setting:
        name, _, flags = extra.partition("=")
        settings[name] = static + flags.split()
    settings["scheduler"] = ["--target-p99-ms", str(t), "--max-steps", "1"]
    rates = [float(r) for r in a.rates.split(",")]
    results = {name: {r: [] for r in rates} for name in settings}
    for rnd in range(a.rounds):
        for rate in rates:
            for name, args in settings.items():
                m = run(a.dlrs, a.model, rate, args, a.extra, a.duration, a.warmup)
                results[name][rate].append(m)
                print(f"round {rnd + 1} {rate:g} QPS {name}: p99 {m['p99_ms']:.2f} ms, "
                      f"{m['errors']} errors" + (f", {m['scheduler']}" if m["scheduler"] else ""),
                      file=sys.stderr, flush=True)
    rows = []
    for name in settings:
        best, met = 0.0, True
        cells = []
        for rate in sorted(rates):
            ms = results[name][rate]
            p99 = statistics.median(m["p99_ms"] for m in ms)
            clean = sum(m["errors"] == 0 for m in ms) * 2 >= len(ms)
            cells.append(f"{p99:.1f}" + ("" if clean else "*"))
            # the highest rate that meets the target with every lower rate meeting it too
            met = met and p99 <= t and clean
            if met:
                best = rate
        rows.append((name, best, cells))
    print(f"| settings | latency-bounded QPS (p99 <= {t:g} ms) | "
          + " | ".join(f"p99 at {r:g}" for r in sorted(rates)) + " |")
    print("|---|---|" + "---|" * len(rates))
    for name, best, cells in rows:
        print(f"| {name} | {best:g} | " + " | ".join(cells) + " |")
    print(f"\nmedian p99 (ms) of {a.rounds} rounds; * = failed queries in more than half of them")
    with open(a.out, "w") as f:
        json.dump({"target_p99_ms": t, "rates": rates, "extra": a.extra,
                   "results": {n: {str(r): v for r, v in rs.items()} for n, rs in results.items()}},
                  f, indent=1)


if __name__ == "__main__":
    main()
