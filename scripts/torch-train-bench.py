#!/usr/bin/env python3
"""PyTorch training throughput, the peer of `cargo run --release -p dlrs-train --example train_bench`.

    .venv/bin/python scripts/torch-train-bench.py --model criteo-kaggle --batch 128 --threads 2 [--seconds 10]

What it runs: the reference DLRM module of ../shared/peer/torch_dlrm.py (same presets, same
init), its embedding bags switched to sparse gradients (`EmbeddingBag.sparse = True`, as the
reference dlrm_s_pytorch.py trains), torch.optim.SGD(lr=0.01) over all parameters (sparse
updates for the tables), BCELoss (mean). Each step: zero_grad, forward, loss, backward, step.
Batches cycle through a pool of 16 synthetic batches (standard-normal dense features, uniform
ids, Bernoulli(0.25) labels), made before timing. Prints one JSON object.
"""
import argparse
import importlib.util
import json
import os
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "..", "..", "shared", "peer", "torch_dlrm.py")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="criteo-kaggle")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--dist", default="uniform")
    ap.add_argument("--lr", type=float, default=0.01)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = importlib.util.spec_from_file_location("torch_dlrm", PEER)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    cfg = peer.PRESETS[a.model]
    t0 = time.perf_counter()
    m = peer.build(cfg).train()
    for e in m.emb_l:
        e.sparse = True
    built = time.perf_counter() - t0
    opt = torch.optim.SGD(m.parameters(), lr=a.lr)
    loss_fn = torch.nn.BCELoss()
    rng = np.random.default_rng(1)
    pool = []
    for _ in range(16):
        dense, idx, offs = peer.batch(rng, cfg, a.batch, a.dist, cfg["lookups"])
        labels = torch.from_numpy((rng.random((a.batch, 1)) < 0.25).astype(np.float32))
        pool.append((dense, idx, offs, labels))

    def step(b):
        dense, idx, offs, labels = b
        opt.zero_grad()
        loss = loss_fn(m(dense, idx, offs), labels)
        loss.backward()
        opt.step()
        return loss

    for i in range(3):
        step(pool[i])
    steps, t = 0, time.perf_counter()
    while time.perf_counter() - t < a.seconds or steps < 5:
        step(pool[steps % len(pool)])
        steps += 1
    secs = time.perf_counter() - t
    print(json.dumps({
        "peer": "pytorch", "torch": torch.__version__, "model": a.model, "batch": a.batch,
        "threads": a.threads, "dist": a.dist, "build_s": round(built, 3), "steps": steps,
        "samples_per_s": steps * a.batch / secs, "ms_per_step": secs * 1e3 / steps,
    }))


if __name__ == "__main__":
    main()
