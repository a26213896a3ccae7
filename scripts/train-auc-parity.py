#!/usr/bin/env python3
"""Eval-AUC parity of dlrs training with PyTorch after one pass over synthetic data.

    .venv/bin/python scripts/train-auc-parity.py --dlrs target/release/dlrs [--rows 300000]

1. builds a random criteo-kaggle-shaped DLRM (tables capped at --rows-cap) with the reference
   module (../shared/peer/torch_dlrm.py) and writes it as a model directory (the initial model);
2. `dlrs synth --model INIT --teacher 7` writes --rows training samples and --eval-rows eval
   samples (zipf ids) from a random teacher of that shape (saved with --save-teacher; the eval
   samples are drawn from the saved teacher with --use-weights and another seed);
3. `dlrs train --model INIT --train train.jsonl --eval eval.jsonl` with SGD (file order,
   --batch, --lr) and reads the final eval AUC;
4. trains the same initial module in PyTorch on the same samples in the same order (SGD, BCELoss,
   embedding bags with dense gradients: the same update as sparse SGD) and computes its eval AUC;
5. prints both, the difference, and exits 1 when it exceeds --tolerance (0.002).

`--dlrs` is any binary with the train/synth subcommands (the `dlrs` binary, or
`target/release/examples/cli` of `cargo build --release -p dlrs-train --examples`).
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "..", "..", "shared", "peer", "torch_dlrm.py")


def auc(scores, labels):
    order = np.argsort(scores, kind="mergesort")
    s, l = scores[order], labels[order]
    ranks = np.empty(len(s))
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[i:j + 1] = (i + j) / 2 + 1
        i = j + 1
    pos = l > 0.5
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return (ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def read(path, ntables):
    dense, bags, labels = [], [[] for _ in range(ntables)], []
    with open(path) as f:
        for line in f:
            s = json.loads(line)
            dense.append(s["dense"])
            for t in range(ntables):
                bags[t].append(s["sparse"][t])
            labels.append(float(s["label"]))
    return np.array(dense, dtype=np.float32), bags, np.array(labels, dtype=np.float32)


def batch_tensors(dense, bags, labels, lo, hi):
    idx, offs = [], []
    for b in bags:
        chunk = b[lo:hi]
        idx.append(torch.tensor([i for x in chunk for i in x], dtype=torch.int64))
        offs.append(torch.tensor(np.cumsum([0] + [len(x) for x in chunk])[:-1], dtype=torch.int64))
    return torch.from_numpy(dense[lo:hi]), idx, offs, torch.from_numpy(labels[lo:hi]).reshape(-1, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dlrs", required=True)
    ap.add_argument("--rows", type=int, default=300_000)
    ap.add_argument("--eval-rows", type=int, default=50_000)
    ap.add_argument("--rows-cap", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=0.002)
    ap.add_argument("--dir", default=None, help="work directory (default: a temp dir)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    spec = importlib.util.spec_from_file_location("torch_dlrm", PEER)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    work = a.dir or tempfile.mkdtemp(prefix="dlrs-auc-parity-")
    os.makedirs(work, exist_ok=True)
    cfg = dict(peer.PRESETS["criteo-kaggle"])
    cfg["rows"] = [min(r, a.rows_cap) for r in cfg["rows"]]
    torch.manual_seed(0)
    m = peer.build(cfg).train()
    init = os.path.join(work, "init")
    os.makedirs(init, exist_ok=True)
    with open(os.path.join(init, "config.json"), "w") as f:
        json.dump({"arch_mlp_bot": cfg["bot"], "arch_mlp_top": cfg["top"],
                   "arch_embedding_size": "-".join(map(str, cfg["rows"])),
                   "arch_sparse_feature_size": cfg["dim"], "arch_interaction_op": cfg["op"],
                   "arch_interaction_itself": False}, f)
    save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, os.path.join(init, "model.safetensors"))

    run = lambda *args: subprocess.run([a.dlrs, *map(str, args)], check=True, capture_output=True, text=True).stdout
    train, ev, teacher = (os.path.join(work, n) for n in ("train.jsonl", "eval.jsonl", "teacher"))
    run("synth", "--model", init, "--teacher", 7, "--rows", a.rows, "--out", train, "--dist", "zipf:1.05",
        "--save-teacher", teacher, "--threads", a.threads)
    run("synth", "--model", teacher, "--use-weights", "--teacher", 8, "--rows", a.eval_rows, "--out", ev,
        "--dist", "zipf:1.05", "--threads", a.threads)
    t0 = time.time()
    out = run("train", "--model", init, "--train", train, "--eval", ev, "--out", os.path.join(work, "dlrs-out"),
              "--batch", a.batch, "--lr", a.lr, "--threads", a.threads, "--json")
    dlrs_s = time.time() - t0
    final = json.loads(out.strip().splitlines()[-1])
    dlrs_auc = final["eval"]["auc"]

    nt = len(cfg["rows"])
    dense, bags, labels = read(train, nt)
    opt = torch.optim.SGD(m.parameters(), lr=a.lr)
    loss_fn = torch.nn.BCELoss()
    t0 = time.time()
    for lo in range(0, len(labels), a.batch):
        x, idx, offs, y = batch_tensors(dense, bags, labels, lo, min(lo + a.batch, len(labels)))
        opt.zero_grad()
        loss_fn(m(x, idx, offs), y).backward()
        opt.step()
    torch_s = time.time() - t0
    edense, ebags, elabels = read(ev, nt)
    with torch.no_grad():
        scores = np.concatenate([m(*batch_tensors(edense, ebags, elabels, lo, min(lo + 4096, len(elabels)))[:3]).numpy().reshape(-1)
                                 for lo in range(0, len(elabels), 4096)])
    torch_auc = float(auc(scores, elabels))
    diff = abs(dlrs_auc - torch_auc)
    print(json.dumps({"rows": a.rows, "eval_rows": a.eval_rows, "batch": a.batch, "lr": a.lr,
                      "dlrs_auc": dlrs_auc, "torch_auc": torch_auc, "diff": diff,
                      "dlrs_train_s": round(dlrs_s, 1), "torch_train_s": round(torch_s, 1), "work": work}))
    sys.exit(0 if diff <= a.tolerance else 1)


if __name__ == "__main__":
    main()
