#!/usr/bin/env python3
"""dlrs against every PyTorch backend of the peer (../shared/peer/torch_dlrm.py bench), side
by side: for each model and BATCHxTHREADS point, dlrs and each peer run in turn, over
several rounds (the order rotates each round), and the medians are compared. These hosts are
noisy (one engine alone can move by 2x within minutes): only interleaved medians mean
anything, and the host's CPU line is printed with them.

  scripts/bench-vs-peer.py [--models rmc1,rmc2,rmc3] [--points 256x2,1x1] [--rounds 3]
                           [--seconds 5] [--peers eager,eager-thp,inductor,zentorch]
                           [--peer-bf16] [--dlrs NAME=ARGS ...] [--json]

Peers (each is `torch_dlrm.py bench --backend B`, with the same model, batch, threads, id
distribution and the 8-batch input pool, `--pool 8` on the dlrs side):
  eager       PyTorch eager                      (.venv, scripts/peer-setup.sh)
  eager-thp   eager with THP_MEM_ALLOC_ENABLE=1  (.venv)
  inductor    torch.compile, inductor            (.venv)
  zentorch    torch.compile, AMD's zentorch      (.venv-zentorch, scripts/peer-setup.sh --zentorch)
--peer-bf16 also runs every peer under bf16 autocast (PyTorch's own reduced precision), as
extra peers named `<backend>+bf16`. A peer whose venv is missing is skipped with a note.

--dlrs NAME=ARGS (repeatable) runs several dlrs configurations against the same peer runs,
e.g. --dlrs fp32= --dlrs bf16="--mlp-dtype bf16" --dlrs int8-bf16="--dtype int8 --mlp-dtype
bf16" (default: one, fp32).

Prints one table per dlrs configuration: per point, its median samples/s, each peer's, the
best peer, and dlrs / best (and the p50 latencies at batch 1). Raw points go to bench-out/.
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DLRS = os.path.join(ROOT, "target", "release", "dlrs")
PEER = os.environ.get("PEER", os.path.join(ROOT, "..", "shared", "peer", "torch_dlrm.py"))
VENVS = {"default": os.path.join(ROOT, ".venv", "bin", "python"),
         "zentorch": os.path.join(ROOT, ".venv-zentorch", "bin", "python")}
PEERS = {
    "eager": ("default", "eager", {}),
    "eager-thp": ("default", "eager", {"THP_MEM_ALLOC_ENABLE": "1"}),
    "inductor": ("default", "inductor", {}),
    "zentorch": ("zentorch", "zentorch", {}),
}


def cpu_line():
    fields = {}
    with open("/proc/cpuinfo") as f:
        for line in f:
            if not line.strip():
                break
            if ":" in line:
                k, v = (x.strip() for x in line.split(":", 1))
                fields.setdefault(k, v)
    flags = set(fields.get("flags", "").split())
    isa = [x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if x in flags]
    return (f"{fields.get('model name', '?')}, family {fields.get('cpu family', '?')}, "
            f"model {fields.get('model', '?')}; {' '.join(isa)}; {os.cpu_count()} CPUs")


def run_json(cmd, env=None):
    e = dict(os.environ)
    e.update(env or {})
    out = subprocess.run(cmd, capture_output=True, text=True, env=e)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="rmc1,rmc2,rmc3")
    ap.add_argument("--points", default="256x2,1x1", help="BATCHxTHREADS list")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--dist", default="uniform")
    ap.add_argument("--peers", default="eager,eager-thp,inductor,zentorch")
    ap.add_argument("--peer-bf16", action="store_true", help="also each peer under bf16 autocast")
    ap.add_argument("--dlrs", action="append", metavar="NAME=ARGS",
                    help="a dlrs configuration: its name and extra bench flags (repeatable)")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object too")
    a = ap.parse_args()

    variants = [v.split("=", 1) for v in (a.dlrs or ["fp32="])]
    peers = []
    for name in a.peers.split(","):
        venv, backend, env = PEERS[name]
        if not os.path.exists(VENVS[venv]):
            print(f"note: skipping {name}: {VENVS[venv]} is missing (scripts/peer-setup.sh"
                  f"{' --zentorch' if venv == 'zentorch' else ''})", file=sys.stderr)
            continue
        peers.append((name, VENVS[venv], backend, env, False))
        if a.peer_bf16:
            peers.append((name + "+bf16", VENVS[venv], backend, env, True))

    os.makedirs(os.path.join(ROOT, "bench-out"), exist_ok=True)
    raw = open(os.path.join(ROOT, "bench-out", f"vs-peer-{int(time.time())}.jsonl"), "w")
    results = {}  # (model, b, t) -> who -> [point]
    for r in range(a.rounds):
        for model in a.models.split(","):
            for point in a.points.split(","):
                b, t = (int(x) for x in point.split("x"))
                common = ["--model", model, "--batch", str(b), "--threads", str(t), "--dist", a.dist,
                          "--seconds", str(a.seconds)]
                runs = [(f"dlrs {name}", lambda extra=extra: run_json(
                    [DLRS, "bench", *common, "--pool", "8", "--json", *shlex.split(extra)]))
                        for name, extra in variants]
                for name, py, backend, env, bf16 in peers:
                    cmd = [py, PEER, "bench", *common, "--backend", backend] + (["--bf16"] if bf16 else [])
                    runs.append((name, lambda cmd=cmd, env=env: run_json(cmd, env)))
                k = r % len(runs)
                for who, run in runs[k:] + runs[:k]:
                    v = run()
                    raw.write(json.dumps({"who": who, "round": r, **v}) + "\n")
                    raw.flush()
                    results.setdefault((model, b, t), {}).setdefault(who, []).append(v)
                print(f"round {r + 1}/{a.rounds}: {model} b{b} t{t} done", file=sys.stderr)

    host = cpu_line()
    names = [p[0] for p in peers]
    summary = {"host": host, "rounds": a.rounds, "points": []}
    for vname, extra in variants:
        me = f"dlrs {vname}"
        print(f"\n{host}; {a.rounds} interleaved rounds, medians; dlrs {vname} ({extra or 'defaults'})\n")
        print("| model | batch / threads | dlrs | " + " | ".join(names) + " | best peer | dlrs / best |")
        print("|---|---|---|" + "---|" * len(names) + "---|---|")
        for (model, b, t), who in results.items():
            med = {w: statistics.median(v["samples_per_s"] for v in pts) for w, pts in who.items()}
            p50 = {w: statistics.median(v["latency_ms"]["p50"] for v in pts) for w, pts in who.items()}
            best = max(names, key=lambda n: med[n]) if names else None
            cells = " | ".join(f"{med[n]:.0f}" for n in names)
            ratio = med[me] / med[best] if best else float("nan")
            extra_cell = ""
            if b == 1 and best:
                fastest = min(names, key=lambda n: p50[n])
                extra_cell = (f" (p50 {p50[me]:.3f} ms vs {p50[fastest]:.3f} ms {fastest}: "
                              f"{p50[me] / p50[fastest]:.2f})")
            print(f"| {model} | {b} / {t} | {med[me]:.0f} | {cells} | {best} {med[best]:.0f} "
                  f"| **{ratio:.2f}x**{extra_cell} |")
            summary["points"].append({"dlrs": vname, "model": model, "batch": b, "threads": t,
                                      "samples_per_s": med, "p50_ms": p50, "best_peer": best,
                                      "dlrs_over_best": ratio})
    if a.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
