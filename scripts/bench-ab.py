#!/usr/bin/env python3
"""Two dlrs binaries side by side: `dlrs bench` of each case, A and B interleaved over
several rounds (A B, then B A, ...), medians and the ratio B / A.

    scripts/bench-ab.py OLD_BINARY NEW_BINARY [--rounds 5] [--seconds 5]
        [--case rmc1:256:2] [--case rmc3:1:1] ...
    scripts/bench-ab.py OLD NEW --train OLD_TRAIN_BENCH NEW_TRAIN_BENCH   # also training

Default cases: rmc1, rmc2 and rmc3 at batch 256 / 2 threads and batch 1 / 1 thread. Prints
one line per case (samples/s and p50 latency medians of each side) and, with --json, one
JSON object. The host is noisy (a run alone can move by 2x within minutes): only the
interleaved medians mean anything, and the CPU line is printed with them.
"""

import argparse
import json
import statistics
import subprocess
import sys

DEFAULT_CASES = ["rmc1:256:2", "rmc2:256:2", "rmc3:256:2", "rmc1:1:1", "rmc2:1:1", "rmc3:1:1"]


def cpu_line():
    fields = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if ":" not in line:
                if fields:
                    break
                continue
            k, v = (x.strip() for x in line.split(":", 1))
            fields.setdefault(k, v)
    flags = set(fields.get("flags", "").split())
    isa = [x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni") if x in flags]
    return (f"{fields.get('model name', '?')}, family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}; {' '.join(isa)}")


def bench(binary, model, batch, threads, seconds):
    cmd = [binary, "bench", "--model", model, "--batch", str(batch), "--threads", str(threads),
           "--seconds", str(seconds), "--json"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def train_bench(binary, preset, batch, threads, seconds):
    cmd = [binary, preset, str(batch), str(threads), str(seconds)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a", help="the old dlrs binary")
    ap.add_argument("b", help="the new dlrs binary")
    ap.add_argument("--case", action="append", help="MODEL:BATCH:THREADS (repeatable)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--train", nargs=2, metavar=("OLD_TRAIN_BENCH", "NEW_TRAIN_BENCH"),
                    help="also train_bench examples: criteo-kaggle, batch 2048, 2 threads")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cases = [tuple(c.split(":")) for c in (args.case or DEFAULT_CASES)]
    runs = {}
    for r in range(args.rounds):
        order = [("a", args.a), ("b", args.b)]
        if r % 2 == 1:
            order.reverse()
        for model, batch, threads in cases:
            for side, binary in order:
                j = bench(binary, model, int(batch), int(threads), args.seconds)
                runs.setdefault((model, batch, threads), {}).setdefault(side, []).append(
                    (j["samples_per_s"], j["latency_ms"]["p50"]))
        if args.train:
            tb = dict(zip("ab", args.train))
            for side, _ in order:
                j = train_bench(tb[side], "criteo-kaggle", 2048, 2, args.seconds)
                runs.setdefault(("train criteo-kaggle", "2048", "2"), {}).setdefault(side, []).append(
                    (j["samples_per_s"], None))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    report = {"cpu": cpu_line(), "rounds": args.rounds, "cases": []}
    print(f"# {report['cpu']}; {args.rounds} interleaved rounds, medians")
    for (model, batch, threads), sides in runs.items():
        med = {s: statistics.median(v[0] for v in sides[s]) for s in "ab"}
        p50 = {s: (statistics.median(v[1] for v in sides[s]) if sides[s][0][1] is not None else None)
               for s in "ab"}
        ratio = med["b"] / med["a"]
        report["cases"].append({"model": model, "batch": int(batch), "threads": int(threads),
                                "a_samples_per_s": med["a"], "b_samples_per_s": med["b"],
                                "a_p50_ms": p50["a"], "b_p50_ms": p50["b"], "b_over_a": ratio,
                                "a_runs": [v[0] for v in sides["a"]], "b_runs": [v[0] for v in sides["b"]]})
        lat = f"  p50 {p50['a']:.3f} -> {p50['b']:.3f} ms" if p50["a"] is not None else ""
        print(f"{model:>20} b{batch:<5} t{threads}: {med['a']:>10.0f} -> {med['b']:>10.0f} samples/s "
              f"({ratio:.3f}x){lat}")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
