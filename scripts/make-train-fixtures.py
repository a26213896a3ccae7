#!/usr/bin/env python3
"""Training parity fixtures for dlrs-train: small random DLRMs trained for a few steps with the
reference PyTorch module (../shared/peer/torch_dlrm.py), BCELoss and torch.optim.

Run with the project's venv (scripts/peer-setup.sh makes it):
    .venv/bin/python scripts/make-train-fixtures.py [--out tests/fixtures/train]

Each case directory holds:
  config.json, model.safetensors   the initial model (reference state-dict keys)
  samples.jsonl                    labelled samples {"dense":[..],"sparse":[[..],..],"label":0|1}
  expected.safetensors             the state dict after `steps` optimizer steps
  expected.json                    {"lr", "batch", "steps", "optimizer", "dense_optimizer",
                                    "losses": [mean BCE of each step's batch, before its update]}

Samples are consumed in file order, `batch` at a time. The embedding bags use dense gradients
(sparse=False): for SGD and Adagrad this gives exactly the sparse update on the rows of the batch
(a row with zero gradient is unchanged), which is what dlrs implements.
"""
import argparse
import importlib.util
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = os.path.join(HERE, "..", "..", "shared", "peer", "torch_dlrm.py")


def load_peer():
    spec = importlib.util.spec_from_file_location("torch_dlrm", PEER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CASES = [
    # name, model, samples, batch, steps, lr, table optimizer, dense optimizer
    dict(name="dot_sgd", bot="5-8-4", top="8-1", rows=[20, 7, 1, 13], dim=4, op="dot", itself=False,
         samples=16, batch=16, steps=1, lr=0.5, opt="sgd", dense_opt="sgd", seed=1),
    dict(name="cat_sgd", bot="6-8-3", top="5-4-1", rows=[11, 3, 9], dim=3, op="cat", itself=False,
         samples=12, batch=12, steps=1, lr=0.5, opt="sgd", dense_opt="sgd", seed=2),
    dict(name="dot_itself_sgd_3steps", bot="4-6-5", top="7-1", rows=[9, 17, 4], dim=5, op="dot", itself=True,
         samples=24, batch=8, steps=3, lr=0.05, opt="sgd", dense_opt="sgd", seed=3),
    dict(name="dot_adagrad_adam", bot="5-8-4", top="6-1", rows=[15, 6, 10], dim=4, op="dot", itself=False,
         samples=24, batch=8, steps=3, lr=0.03, opt="adagrad", dense_opt="adam", seed=4),
    dict(name="cat_adagrad_adagrad", bot="3-4", top="6-1", rows=[8, 8], dim=4, op="cat", itself=False,
         samples=20, batch=10, steps=2, lr=0.05, opt="adagrad", dense_opt="adagrad", seed=5),
]


def make_optimizer(name, params, lr):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(name)


def tensors(samples, ntables):
    dense = torch.tensor([s["dense"] for s in samples], dtype=torch.float32)
    idx, offs = [], []
    for t in range(ntables):
        bags = [s["sparse"][t] for s in samples]
        idx.append(torch.tensor([i for b in bags for i in b], dtype=torch.int64))
        offs.append(torch.tensor(np.cumsum([0] + [len(b) for b in bags])[:-1], dtype=torch.int64))
    labels = torch.tensor([[float(s["label"])] for s in samples], dtype=torch.float32)
    return dense, idx, offs, labels


def make_case(peer, c, out):
    torch.manual_seed(c["seed"])
    rng = np.random.default_rng(c["seed"])
    cfg = dict(bot=c["bot"], top=c["top"], rows=c["rows"], dim=c["dim"], op=c["op"], itself=c["itself"])
    m = peer.build(cfg).train()
    d = os.path.join(out, c["name"])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"arch_mlp_bot": c["bot"], "arch_mlp_top": c["top"],
                   "arch_embedding_size": "-".join(map(str, c["rows"])),
                   "arch_sparse_feature_size": c["dim"], "arch_interaction_op": c["op"],
                   "arch_interaction_itself": c["itself"]}, f, indent=1)
        f.write("\n")
    save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, os.path.join(d, "model.safetensors"))
    nd = int(c["bot"].split("-")[0])
    samples = []
    for i in range(c["samples"]):
        dense = rng.standard_normal(nd).astype(np.float32)
        sparse = []
        for n in c["rows"]:
            k = int(rng.integers(0, 4))  # 0..3 ids: empty bags and duplicates (small tables)
            sparse.append([int(v) for v in rng.integers(0, n, size=k)])
        samples.append({"dense": [float(v) for v in dense], "sparse": sparse, "label": int(rng.integers(0, 2))})
    with open(os.path.join(d, "samples.jsonl"), "w") as f:
        for s in samples:
            f.write(json.dumps(s) + "\n")

    emb = [p for n, p in m.named_parameters() if n.startswith("emb_l.")]
    mlp = [p for n, p in m.named_parameters() if not n.startswith("emb_l.")]
    opts = [make_optimizer(c["opt"], emb, c["lr"]), make_optimizer(c["dense_opt"], mlp, c["lr"])]
    loss_fn = torch.nn.BCELoss()
    losses = []
    for s in range(c["steps"]):
        chunk = samples[s * c["batch"]:(s + 1) * c["batch"]]
        dense, idx, offs, labels = tensors(chunk, len(c["rows"]))
        for o in opts:
            o.zero_grad()
        p = m(dense, idx, offs)
        loss = loss_fn(p, labels)
        loss.backward()
        for o in opts:
            o.step()
        losses.append(float(loss.item()))
    save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, os.path.join(d, "expected.safetensors"))
    with open(os.path.join(d, "expected.json"), "w") as f:
        json.dump({"lr": c["lr"], "batch": c["batch"], "steps": c["steps"], "optimizer": c["opt"],
                   "dense_optimizer": c["dense_opt"], "losses": losses, "torch": torch.__version__}, f, indent=1)
        f.write("\n")
    print(f"{d}: losses {losses}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(HERE, "..", "tests", "fixtures", "train"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    peer = load_peer()
    for c in CASES:
        make_case(peer, c, a.out)


if __name__ == "__main__":
    main()
