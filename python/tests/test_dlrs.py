"""Tests of the dlrs Python package: parity with a reference-style PyTorch DLRM, inputs
read in place, the GIL released, clear errors, and Trainer against `dlrs train`.

Run by scripts/test-python.sh (which sets DLRS_BIN to the dlrs binary it built).
"""

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.numpy import load_file

import dlrs

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "parity"


# A module with the reference DLRM_Net's semantics and state-dict keys (emb_l.{t}.weight,
# bot_l.{2i}.weight/bias, top_l.{2i}.weight/bias): embedding bags pooled by sum; ReLU after
# every bottom layer and every top layer but the last, sigmoid after that; "cat" concatenates
# x and the pooled embeddings, "dot" appends to x the pairwise dot products of [x, e_1..e_k]
# below the diagonal (on it too with arch_interaction_itself). Written for these tests.
class RefDlrm(nn.Module):
    def __init__(self, bot, top, rows, dim, op, itself=False):
        super().__init__()
        self.op, self.itself = op, itself
        self.emb_l = nn.ModuleList(nn.EmbeddingBag(n, dim, mode="sum") for n in rows)
        f = len(rows) + 1
        if op == "dot":
            k = 1 if itself else 0
            self.pairs = [(i, j) for i in range(f) for j in range(i + k)]
            width = bot[-1] + len(self.pairs)
        else:
            width = bot[-1] + len(rows) * dim
        self.bot_l = self._mlp(bot, sigmoid_last=False)
        self.top_l = self._mlp([width] + top, sigmoid_last=True)

    @staticmethod
    def _mlp(ws, sigmoid_last):
        layers = []
        for i in range(len(ws) - 1):
            layers.append(nn.Linear(ws[i], ws[i + 1]))
            last = i == len(ws) - 2
            layers.append(nn.Sigmoid() if sigmoid_last and last else nn.ReLU())
        return nn.Sequential(*layers)

    def forward(self, dense, ids, offsets):
        x = self.bot_l(dense)
        ly = [e(ids[t], offsets[t]) for t, e in enumerate(self.emb_l)]
        if self.op == "dot":
            t = torch.stack([x] + ly, dim=1)  # [B, F, D]
            z = torch.bmm(t, t.transpose(1, 2))
            r = torch.cat([x] + [z[:, i, j : j + 1] for i, j in self.pairs], dim=1)
        else:
            r = torch.cat([x] + ly, dim=1)
        return self.top_l(r).reshape(-1)


def random_inputs(rng, b, n_dense, rows, max_bag=4, dtype=np.int64):
    """Dense [B, n_dense] float32 and, per table, (ids, offsets of B + 1)."""
    dense = rng.standard_normal((b, n_dense)).astype(np.float32)
    sparse = []
    for n in rows:
        lengths = rng.integers(0, max_bag + 1, size=b)
        ids = rng.integers(0, n, size=int(lengths.sum())).astype(dtype)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(dtype)
        sparse.append((ids, offsets))
    return dense, sparse


@pytest.fixture(scope="module")
def cat_model():
    return dlrs.Model.load(FIXTURES / "cat-odd", threads=2)


def fixture_inputs(d):
    lines = [json.loads(l) for l in open(d / "inputs.jsonl")]
    dense = np.array([l["dense"] for l in lines], dtype=np.float32)
    sparse = []
    for t in range(len(lines[0]["sparse"])):
        bags = [l["sparse"][t] for l in lines]
        ids = np.array([i for b in bags for i in b], dtype=np.int64)
        offsets = np.cumsum([0] + [len(b) for b in bags]).astype(np.int64)
        sparse.append((ids, offsets))
    return dense, sparse, np.loadtxt(d / "expected.txt", dtype=np.float32)


# ---- parity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op,itself", [("cat", False), ("dot", False), ("dot", True)], ids=["cat", "dot", "dot-itself"]
)
def test_from_torch_matches_the_module(tmp_path, op, itself):
    torch.manual_seed(0)
    rows = [7, 1, 50, 13]
    ref = RefDlrm([5, 8, 4], [6, 1], rows, 4, op, itself).eval()
    flags = {"arch_interaction_op": op, "arch_interaction_itself": itself}
    out = dlrs.from_torch(ref, flags, tmp_path / "m")
    assert dlrs.verify(out)["manifest"] is True
    model = dlrs.Model.load(out, threads=2)
    assert model.config["arch_embedding_size"] == "7-1-50-13"
    assert model.config["arch_interaction_op"] == op
    rng = np.random.default_rng(1)
    dense, sparse = random_inputs(rng, 37, 5, rows)
    with torch.no_grad():
        want = ref(
            torch.from_numpy(dense),
            [torch.from_numpy(i) for i, _ in sparse],
            [torch.from_numpy(o[:-1]) for _, o in sparse],
        ).numpy()
    got = model.predict(dense, sparse)
    assert got.dtype == np.float32 and got.shape == (37,)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # the same through torch tensors, int32 ids and offsets
    t32 = [(torch.from_numpy(i.astype(np.int32)), torch.from_numpy(o.astype(np.int32))) for i, o in sparse]
    np.testing.assert_allclose(model.predict(torch.from_numpy(dense), t32), want, rtol=0, atol=1e-5)


def test_from_torch_infers_the_interaction_and_names_bad_tensors(tmp_path):
    torch.manual_seed(0)
    ref = RefDlrm([3, 4], [5, 1], [9, 9], 4, "dot").eval()
    assert dlrs.Model.load(dlrs.from_torch(ref, None, tmp_path / "a")).config["arch_interaction_op"] == "dot"
    with pytest.raises(dlrs.ModelError, match=r"bot_l\.0\.weight|arch_mlp_bot"):
        dlrs.from_torch(ref, {"arch_interaction_op": "dot", "arch_mlp_bot": "3-5"}, tmp_path / "b")


def test_committed_fixture_parity(cat_model):
    dense, sparse, want = fixture_inputs(FIXTURES / "cat-odd")
    np.testing.assert_allclose(cat_model.predict(dense, sparse), want, rtol=0, atol=1e-5)


# ---- sparse input forms ---------------------------------------------------------------


def test_offsets_lengths_and_keyed_jagged_forms_agree(cat_model):
    dense, sparse, want = fixture_inputs(FIXTURES / "cat-odd")
    b = len(dense)
    # offsets of B entries, as torch.nn.EmbeddingBag takes them
    short = [(i, o[:-1]) for i, o in sparse]
    np.testing.assert_allclose(cat_model.predict(dense, short), want, atol=1e-5)
    lengths = [(i, np.diff(o)) for i, o in sparse]
    np.testing.assert_allclose(cat_model.predict(dense, lengths, bags="lengths"), want, atol=1e-5)

    class Kjt:  # TorchRec's KeyedJaggedTensor surface
        def __init__(self, keys, values, lengths):
            self._k, self._v, self._l = keys, values, lengths

        def keys(self):
            return self._k

        def values(self):
            return self._v

        def lengths(self):
            return self._l

        def weights_or_none(self):
            return None

    values = torch.from_numpy(np.concatenate([i for i, _ in sparse]))
    lens = torch.from_numpy(np.concatenate([np.diff(o) for _, o in sparse]))
    kjt = Kjt([f"t{t}" for t in range(len(sparse))], values, lens)
    np.testing.assert_allclose(cat_model.predict(dense, kjt), want, atol=1e-5)
    assert lens.shape[0] == len(sparse) * b


def test_torchrec_keyed_jagged_tensor(cat_model):
    try:
        import torchrec.sparse.jagged_tensor as jt
    except Exception as e:  # not installed, or its fbgemm_gpu does not load with this torch
        pytest.skip(f"torchrec unavailable: {e}")
    dense, sparse, want = fixture_inputs(FIXTURES / "cat-odd")
    kjt = jt.KeyedJaggedTensor.from_lengths_sync(
        keys=[f"t{t}" for t in range(len(sparse))],
        values=torch.from_numpy(np.concatenate([i for i, _ in sparse])),
        lengths=torch.from_numpy(np.concatenate([np.diff(o) for _, o in sparse])),
    )
    np.testing.assert_allclose(cat_model.predict(dense, kjt), want, atol=1e-5)


# ---- zero copy -----------------------------------------------------------------------


def test_inputs_are_read_in_place(cat_model):
    dense, sparse, _ = fixture_inputs(FIXTURES / "cat-odd")
    s32 = [(i.astype(np.int32), o.astype(np.int32)) for i, o in sparse]
    a = cat_model._input_addresses(dense, s32)
    assert a["dense"] == dense.ctypes.data
    # (an empty table's ids have no memory to share)
    assert [x for x, (i, _) in zip(a["ids"], s32) if len(i)] == [i.ctypes.data for i, _ in s32 if len(i)]
    assert a["offsets"] == [o.ctypes.data for _, o in s32]
    # torch tensors: the same memory (DLPack view, no copy)
    td = torch.from_numpy(dense.copy())
    tids = [(torch.from_numpy(i.copy()), torch.from_numpy(o.copy())) for i, o in s32]
    a = cat_model._input_addresses(td, tids)
    assert a["dense"] == td.data_ptr()
    assert [x for x, (i, _) in zip(a["ids"], tids) if len(i)] == [i.data_ptr() for i, _ in tids if len(i)]
    assert a["offsets"] == [o.data_ptr() for _, o in tids]
    # int64 ids are narrowed to u32 (a checked copy); the dense features are still shared
    a = cat_model._input_addresses(dense, sparse)
    assert a["dense"] == dense.ctypes.data
    assert all(x != i.ctypes.data for x, (i, _) in zip(a["ids"], sparse) if len(i))


def test_big_input_does_not_grow_memory():
    # 64 MB of dense features and 32 MB of int32 ids: predict must not duplicate them
    m = dlrs.Model.load(FIXTURES / "cat-odd", threads=1)
    rng = np.random.default_rng(0)
    b = 1 << 20
    dense = rng.standard_normal((b, 3)).astype(np.float32)
    sparse = [(np.zeros(b, dtype=np.int32), np.arange(b + 1, dtype=np.int32)) for _ in range(4)]

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    m.predict(dense[:1024], [(i[:1024], o[:1025]) for i, o in sparse])
    before = rss()
    a = m._input_addresses(dense, sparse)
    assert a["dense"] == dense.ctypes.data
    # the batch over them: copies of the 12 + 16 + 16 bytes/sample inputs would add 44 MB
    grew = rss() - before
    assert grew < 1 << 20, grew


# ---- threads -------------------------------------------------------------------------


def test_two_python_threads_predict_at_once():
    m = dlrs.Model.load(FIXTURES / "rmc1-cap500", threads=1)
    rng = np.random.default_rng(0)
    dense, sparse = random_inputs(rng, 2048, m.n_dense, m.table_rows, max_bag=20)
    m.predict(dense, sparse)
    spans = {0: [], 1: []}

    def work(k):
        for _ in range(6):
            t0 = time.perf_counter()
            m.predict(dense, sparse)
            spans[k].append((t0, time.perf_counter()))

    ths = [threading.Thread(target=work, args=(k,)) for k in (0, 1)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    assert len(spans[0]) == 6 and len(spans[1]) == 6
    # with the GIL held through a call, no call of one thread could overlap one of the other
    overlap = sum(
        max(0.0, min(a1, b1) - max(a0, b0)) for a0, a1 in spans[0] for b0, b1 in spans[1]
    )
    total = sum(e - s for s, e in spans[0])
    assert overlap > 0.2 * total, (overlap, total)


# ---- errors --------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors(cat_model):
    m = cat_model
    dense, sparse, _ = fixture_inputs(FIXTURES / "cat-odd")

    def raises(exc, pattern, d=dense, s=sparse, **kw):
        with pytest.raises(exc, match=pattern):
            m.predict(d, s, **kw)

    raises(ValueError, r"field `dense`: dtype float64, expected float32", d=dense.astype(np.float64))
    raises(ValueError, r"field `dense`: shape \[64, 2\], expected \(batch, 3\)", d=dense[:, :2].copy())
    raises(ValueError, r"field `dense`: not C-contiguous", d=np.asfortranarray(dense))
    raises(ValueError, r"field `dense\[0\]\[1\]`: not a finite number", d=np.where(np.arange(3) == 1, np.nan, dense).astype(np.float32))
    bad = list(sparse)
    bad[2] = (sparse[2][0].astype(np.float32), sparse[2][1])
    raises(ValueError, r"field `sparse\[2\] values`: dtype float32, expected int64 or int32", s=bad)
    bad = list(sparse)
    ids = sparse[3][0].copy()
    ids[5] = 40
    bad[3] = (ids, sparse[3][1])
    raises(ValueError, r"field `sparse\[3\] of sample \d+`: id 40 out of range for table 3 with 40 rows", s=bad)
    bad[3] = (np.where(np.arange(len(ids)) == 5, -1, ids).astype(np.int32), sparse[3][1].astype(np.int32))
    raises(ValueError, r"id -1 out of range for table 3", s=bad)
    bad = list(sparse)
    bad[2] = (np.repeat(sparse[2][0], 2)[::2], sparse[2][1])
    raises(ValueError, r"field `sparse\[2\] values`: not C-contiguous", s=bad)
    bad = list(sparse)
    bad[1] = (sparse[1][0], sparse[1][1][:10])
    raises(ValueError, r"field `offsets\[1\]`: 10 offsets for a batch of 64", s=bad)
    bad[1] = (sparse[1][0], sparse[1][1][::-1].copy())
    raises(ValueError, r"field `offsets\[1\]`", s=bad)
    raises(ValueError, r"field `sparse`: 3 tables, the model has 4", s=sparse[:3])
    raises(ValueError, r"field `lengths\[0\]\[0\]`: -1 is negative", s=[(i, np.full(64, -1)) for i, _ in sparse], bags="lengths")
    raises(ValueError, r"bags: `csr`", bags="csr")
    raises(TypeError, r"field `dense`: expected a NumPy array or a torch CPU tensor, got list", d=dense.tolist())


def test_model_errors_name_the_file_field_or_tensor(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing-here/config.json"):
        dlrs.Model.load(tmp_path / "nothing-here")
    with pytest.raises(ValueError, match=r"tables: `disk`"):
        dlrs.Model.load(FIXTURES / "cat-odd", tables="disk")
    d = tmp_path / "m"
    shutil.copytree(FIXTURES / "cat-odd", d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["arch_sparse_feature_size"] = 6
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(dlrs.ModelError, match=r"tensor `emb_l\.0\.weight`|arch_"):
        dlrs.Model.load(d)
    cfg["arch_sparse_feature_size"] = 5
    cfg["arch_mlp_botom"] = "3-6-5"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(dlrs.ModelError, match=r"arch_mlp_botom"):
        dlrs.Model.load(d)


def test_quantize_and_verify(tmp_path, cat_model):
    q = dlrs.quantize(FIXTURES / "cat-odd", tmp_path / "q", "int8", mlp_dtype="bf16")
    assert [r["table"] for r in q["tables"]] == [0, 1, 2, 3]
    assert all(r["dtype"] == "int8" and r["max_abs_error"] < 0.05 for r in q["tables"])
    assert q["mlp"]["dtype"] == "bf16"
    v = dlrs.verify(tmp_path / "q", require_manifest=True)
    assert v == {"manifest": True, "tables": 4, "bytes": v["bytes"]} and v["bytes"] > 0
    dense, sparse, want = fixture_inputs(FIXTURES / "cat-odd")
    got = dlrs.Model.load(tmp_path / "q").predict(dense, sparse)
    assert np.abs(got - want).max() < 0.02
    assert dlrs.verify(FIXTURES / "cat-odd") == {"manifest": False, "tensors": 12}
    with pytest.raises(dlrs.ModelError, match="no manifest"):
        dlrs.verify(FIXTURES / "cat-odd", require_manifest=True)
    with pytest.raises(ValueError, match="field `out`: must differ"):
        dlrs.quantize(tmp_path / "q", tmp_path / "q", "int4")


# ---- training ------------------------------------------------------------------------


def dlrs_bin():
    b = os.environ.get("DLRS_BIN") or str(REPO / "target" / "release" / "dlrs")
    if not os.path.exists(b):
        pytest.skip("no dlrs binary (scripts/test-python.sh builds one)")
    return b


@pytest.mark.parametrize(
    "opt,dense_opt", [("sgd", "sgd"), ("rowwise-adagrad", "adam"), ("adagrad", "adagrad")]
)
def test_trainer_steps_match_dlrs_train(tmp_path, opt, dense_opt):
    src = FIXTURES / "dot-odd"
    init = tmp_path / "init"
    init.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(src / f, init / f)
    cfg = json.loads((init / "config.json").read_text())
    rows = [int(r) for r in cfg["arch_embedding_size"].split("-")]
    n_dense = int(cfg["arch_mlp_bot"].split("-")[0])
    rng = np.random.default_rng(3)
    samples = []
    for _ in range(40):  # 5 batches of 8
        samples.append(
            {
                "dense": [float(np.float32(v)) for v in rng.standard_normal(n_dense)],
                "sparse": [[int(i) for i in rng.integers(0, n, size=rng.integers(0, 4))] for n in rows],
                "label": int(rng.random() < 0.3),
            }
        )
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(s) + "\n" for s in samples))
    flags = ["--batch", "8", "--lr", "0.05", "--optimizer", opt, "--dense-optimizer", dense_opt]
    subprocess.run(
        [dlrs_bin(), "train", "--model", str(init), "--train", str(data), "--out", str(tmp_path / "cli")] + flags,
        check=True,
        capture_output=True,
    )
    tr = dlrs.Trainer(init, optimizer=opt, dense_optimizer=dense_opt, lr=0.05)
    for k in range(0, 40, 8):
        chunk = samples[k : k + 8]
        dense = np.array([s["dense"] for s in chunk], dtype=np.float32)
        sparse = []
        for t in range(len(rows)):
            bags = [s["sparse"][t] for s in chunk]
            sparse.append(
                (
                    np.array([i for b in bags for i in b], dtype=np.int64),
                    np.cumsum([0] + [len(b) for b in bags]).astype(np.int64),
                )
            )
        loss = tr.step(dense, sparse, np.array([s["label"] for s in chunk], dtype=np.float32))
        assert np.isfinite(loss)
    assert tr.steps == 5
    tr.save(tmp_path / "py")
    a = load_file(tmp_path / "cli" / "model.safetensors")
    b = load_file(tmp_path / "py" / "model.safetensors")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    before = load_file(init / "model.safetensors")
    assert not np.array_equal(before["top_l.0.weight"], b["top_l.0.weight"])


def test_trainer_refuses_bad_settings_and_labels(tmp_path):
    with pytest.raises(ValueError, match="optimizer: `lamb`"):
        dlrs.Trainer(FIXTURES / "cat-odd", optimizer="lamb")
    with pytest.raises(ValueError, match="lr"):
        dlrs.Trainer(FIXTURES / "cat-odd", lr=-1.0)
    tr = dlrs.Trainer(FIXTURES / "cat-odd")
    dense, sparse, _ = fixture_inputs(FIXTURES / "cat-odd")
    with pytest.raises(ValueError, match=r"field `labels\[0\]`: 2 is not a label"):
        tr.step(dense, sparse, np.full(64, 2.0, dtype=np.float32))
    with pytest.raises(ValueError, match=r"field `labels`: shape \[3\], expected \(64,\)"):
        tr.step(dense, sparse, np.zeros(3, dtype=np.float32))
