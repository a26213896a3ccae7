#!/usr/bin/env python3
"""dlrs's int8 row-wise embedding-bag stage against FBGEMM's int8 TBE (table-batched embedding)
on CPU, on the same tables, in one run (issue 3).

  scripts/fbgemm-setup.sh                   # .venv-fbgemm: torch + fbgemm-gpu-cpu (PyPI)
  dlrs init --preset rmc1 --dtype int8 --out DIR
  scripts/bench-fbgemm.py --model DIR [--batch 256] [--threads 2,1] [--ids-per-table 80]
                          [--seconds 3] [--pool N] [--dlrs PATH]

What it does:

1. Checks which instruction set FBGEMM's CPU kernels picked (fbgemm::fbgemmInstructionSet(),
   called through ctypes) in a fresh process; if that is `anyarch` (no AVX2: the cpuinfo
   symbols of fbgemm.so bind to another library's copy, see scripts/fbgemm-setup.sh), every
   FBGEMM measurement runs with LD_PRELOAD=<torch>/lib/libtorch.so, and one extra point is
   timed without it to show what the fallback costs.
2. Maps the model directory's int8 tables (model.safetensors through the `safetensors`
   package, framework "pt": zero-copy views of one file mapping) and copies them into
   IntNBitTableBatchedEmbeddingBagsCodegen(SparseType.INT8, EmbeddingLocation.HOST, SUM,
   FP32 output). FBGEMM's TBE int8 row is [f16 scale, f16 bias, D x u8] (qparams first, half
   precision), padded to `row_alignment` (1 on CPU by default); a dlrs int8 row is [D x u8, f32
   scale, f32 bias] padded to its stride (docs/storage.md). The D code bytes are copied as they
   are (checked byte for byte over the whole tables); scale and bias are rounded to f16, the
   only form this TBE reads. Timed with FBGEMM's CPU default row_alignment 1 (36-byte rows for
   D 32) and with row_alignment 64 (one cache line per row, as dlrs pads them).
   It also times FBGEMM's EmbeddingSpMDM kernel on dlrs's exact row bytes (D x u8, f32 scale,
   f32 bias, unpadded: torch.ops.quantized.embedding_bag_byte_rowwise_offsets, one call per
   table, torch's bundled FBGEMM), the only FBGEMM entry point here that reads f32 qparams.
3. Correctness on a small batch: each FBGEMM output against a float64 numpy dequantization
   (`scale * q + bias`, summed per bag) of the bytes it was given (asserted <= 1e-4 of the
   largest |value|); the TBE output against dlrs's f32-qparam reference too (asserted within
   the exact bound the f16 rounding of scale and bias allows, and reported).
4. Speed: the embedding stage alone, `--batch` samples, `--ids-per-table` uniform ids per table
   per sample (80 = the RMC1 preset's), a pool of `--pool` distinct batches cycled (by default
   the count `dlrs bench` picks: rows spanning >= 256 MB), torch.set_num_threads(T) for each T
   in --threads; "cores busy" is the process CPU time over the wall time (torch's OpenMP
   workers spin-wait between parallel regions, so with T = 2 it reads ~2 even around a kernel
   that runs on one thread, as the TBE's does: compare the samples/s). For T = 2 the TBE is also
   timed split over 2 Python threads (half a batch each, joined per batch; the op releases the
   GIL), which is how dlrs uses 2 threads. Then `dlrs bench --model DIR --batch B --threads T
   --ids-per-table L --pool P --json`, whose `breakdown_ms.embedding` is the embedding stage of a
   batch (dlrs bench times whole forward passes and reports each stage; it has no
   embedding-only mode). dlrs draws its own uniform ids (it takes no id file): same tables, same
   shape and distribution of ids, not the same id sequence.

Prints progress on stderr, a markdown table, and one JSON object (the last line of stdout)
with every figure and the versions. The machine should be idle: figures on a shared machine
are only indicative.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PY = os.path.join(ROOT, ".venv-fbgemm", "bin", "python")
COLD_POOL_BYTES = 256 << 20  # as crates/cli/src/bench.rs
ISA_NAMES = ["anyarch", "avx2", "avx512", "avx512_ymm", "avx512_vnni", "avx512_vnni_ymm", "sve"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- worker (runs in .venv-fbgemm)


def probe_isa():
    """FBGEMM's own view of the CPU, from the fbgemm.so that fbgemm_gpu loaded."""
    import ctypes

    import fbgemm_gpu
    import fbgemm_gpu.split_table_batched_embeddings_ops_inference  # noqa: F401  (loads the ops)
    import torch

    lib = ctypes.CDLL(os.path.join(os.path.dirname(fbgemm_gpu.__file__), "fbgemm.so"))
    out = {}
    for key, sym, ty in [("isa", "_ZN6fbgemm20fbgemmInstructionSetEv", ctypes.c_int),
                         ("avx2", "_ZN6fbgemm20fbgemmHasAvx2SupportEv", ctypes.c_bool),
                         ("avx512", "_ZN6fbgemm22fbgemmHasAvx512SupportEv", ctypes.c_bool)]:
        f = getattr(lib, sym)
        f.restype = ty
        out[key] = f()  # fbgemmInstructionSet first: it initialises cpuinfo
    out["isa_name"] = ISA_NAMES[out["isa"]] if 0 <= out["isa"] < len(ISA_NAMES) else str(out["isa"])
    out["libtorch"] = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch.so")
    out["ld_preload"] = os.environ.get("LD_PRELOAD", "")
    return out


def load_tables(model_dir):
    """The int8 tables of a dlrs model directory as zero-copy uint8 [rows, stride] views."""
    from safetensors import safe_open

    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    rows = [int(r) for r in str(cfg["arch_embedding_size"]).split("-")]
    dim = int(cfg["arch_sparse_feature_size"])
    fmt = cfg.get("dlrs_embedding_dtype", "fp32")
    fmts = fmt if isinstance(fmt, list) else [fmt] * len(rows)
    if any(f != "int8" for f in fmts):
        sys.exit(f"{model_dir}: tables are {fmt}, not int8 (dlrs init --dtype int8, or dlrs quantize --dtype int8)")
    f = safe_open(os.path.join(model_dir, "model.safetensors"), framework="pt")
    tables = []
    for t, r in enumerate(rows):
        w = f.get_tensor(f"emb_l.{t}.weight")  # a view of the file mapping, not a copy
        if w.dtype.itemsize != 1 or w.dim() != 2 or w.shape[0] != r or w.shape[1] < dim + 8:
            sys.exit(f"emb_l.{t}.weight: {w.dtype} {tuple(w.shape)}, expected U8 [{r}, >= {dim + 8}]")
        tables.append(w)
    return tables, rows, dim


def build_tbe(tables, rows, dim, row_alignment):
    import torch
    from fbgemm_gpu.split_embedding_configs import SparseType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import BoundsCheckMode, EmbeddingLocation, PoolingMode
    from fbgemm_gpu.split_table_batched_embeddings_ops_inference import IntNBitTableBatchedEmbeddingBagsCodegen

    tbe = IntNBitTableBatchedEmbeddingBagsCodegen(
        [(f"t{t}", r, dim, SparseType.INT8, EmbeddingLocation.HOST) for t, r in enumerate(rows)],
        device="cpu", pooling_mode=PoolingMode.SUM, output_dtype=SparseType.FP32,
        row_alignment=row_alignment,
        # ids are in range by construction; no extra pass over them (FBGEMM's default is WARNING)
        bounds_check_mode=BoundsCheckMode.NONE)
    tbe.initialize_weights()
    # [rows, padded row bytes] views into tbe.weights_host: [f16 scale, f16 bias, D codes, pad]
    views = [w for w, _ in tbe.split_embedding_weights(split_scale_shifts=False)]
    chunk = 1 << 20
    for src, w in zip(tables, views):
        assert w.shape[0] == src.shape[0] and w.shape[1] >= dim + 4, (tuple(w.shape), dim)
        for r0 in range(0, src.shape[0], chunk):
            s = src[r0:r0 + chunk]
            w[r0:r0 + chunk, 4:4 + dim].copy_(s[:, :dim])
            qp = s[:, dim:dim + 8].contiguous().view(torch.float32)  # [n, 2]: f32 scale, f32 bias
            w[r0:r0 + chunk, 0:4].copy_(qp.to(torch.float16).view(torch.uint8))
        if not torch.equal(w[:, 4:4 + dim], src[:, :dim]):
            sys.exit("TBE weights: the code bytes differ from the model's")
    return tbe, views


def tbe_inputs(ids, b0, b1):
    """FBGEMM's TBE layout for samples b0..b1: indices table-major then sample-major."""
    import torch

    n_tables, _, ids_per = ids.shape
    idx = torch.from_numpy(ids[:, b0:b1, :].reshape(-1).copy())
    offs = torch.arange(0, n_tables * (b1 - b0) * ids_per + 1, ids_per, dtype=torch.int32)
    return idx, offs


def reference(tables, ids, dim, qparams):
    """float64 [B, T*D]: the sum over each bag of `scale * q + bias`, where `qparams(t, flat)`
    gives the (scale, bias) float64 arrays of rows `flat` of table t and q are the codes."""
    import numpy as np
    import torch

    n_tables, batch, ids_per = ids.shape
    out = np.zeros((batch, n_tables * dim))
    for t in range(n_tables):
        flat = torch.from_numpy(ids[t].reshape(-1).astype(np.int64))
        codes = tables[t][flat][:, :dim].numpy().astype(np.float64)
        s, b = qparams(t, flat)
        out[:, t * dim:(t + 1) * dim] = (codes * s[:, None] + b[:, None]).reshape(batch, ids_per, dim).sum(1)
    return out


def qparam_bound(tables, ids, dim, qp_a, qp_b):
    """Per output value, the most that sum(scale * q + bias) can change between two sets of
    qparams for the same codes: sum over the bag of q*|ds| + |db|."""
    import numpy as np
    import torch

    n_tables, batch, ids_per = ids.shape
    out = np.zeros((batch, n_tables * dim))
    for t in range(n_tables):
        flat = torch.from_numpy(ids[t].reshape(-1).astype(np.int64))
        codes = tables[t][flat][:, :dim].numpy().astype(np.float64)
        (sa, ba), (sb, bb) = qp_a(t, flat), qp_b(t, flat)
        d = codes * np.abs(sa - sb)[:, None] + np.abs(ba - bb)[:, None]
        out[:, t * dim:(t + 1) * dim] = d.reshape(batch, ids_per, dim).sum(1)
    return out


def time_calls(fn, n_pool, seconds, min_calls=10):
    """Wall time per call over `seconds` after 3 warm-up calls, and process CPU time over wall
    time (about the number of cores the calls kept busy)."""
    lat = []
    for i in range(3):
        fn(i % n_pool)
    c0, w0 = time.process_time(), time.perf_counter()
    end = w0 + seconds
    i = 0
    while time.perf_counter() < end or len(lat) < min_calls:
        s = time.perf_counter()
        fn(i % n_pool)
        lat.append(time.perf_counter() - s)
        i += 1
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    lat.sort()
    return {"calls": len(lat), "mean_ms": sum(lat) / len(lat) * 1e3, "p50_ms": lat[len(lat) // 2] * 1e3,
            "cpu_per_wall": cpu / wall}


class Bench:
    """The worker's state: the mapped tables, the correctness batch and the timed pool."""

    def __init__(self, a):
        import numpy as np

        self.a = a
        self.tables, self.rows, self.dim = load_tables(a.model)
        rng = np.random.default_rng(1)

        def draw(b):
            return np.stack([rng.integers(0, r, size=(b, a.ids_per_table), dtype=np.int32) for r in self.rows])

        self.pool = [draw(a.batch) for _ in range(a.pool)]
        self.ids_c = draw(a.check_batch)
        self.ids_c[:, 0, 0] = 0  # the first and the last row of every table
        self.ids_c[:, 0, 1] = np.array(self.rows) - 1
        self.threads = [int(t) for t in a.threads.split(",")]
        self.ref32 = reference(self.tables, self.ids_c, self.dim, self.qp32)
        self.max_out = float(np.abs(self.ref32).max())
        self.tol = 1e-4 * self.max_out  # "equal": within 1e-4 of the largest |pooled value|
        self.checks = {"check_batch": a.check_batch, "max_abs_output": self.max_out, "tolerance": self.tol}
        self.timings = {}

    def qp32(self, t, flat):
        import numpy as np
        import torch

        d = self.dim
        sb = self.tables[t][flat][:, d:d + 8].contiguous().view(torch.float32).numpy().astype(np.float64)
        return sb[:, 0], sb[:, 1]

    def time(self, key, fn, threads, torch_threads):
        import torch

        torch.set_num_threads(torch_threads)
        r = time_calls(fn, len(self.pool), self.a.seconds)
        r["samples_per_s"] = self.a.batch / (r["mean_ms"] / 1e3)
        r["threads"] = threads
        self.timings[key] = r
        log(f"  {key}: {r['samples_per_s']:.0f} samples/s, p50 {r['p50_ms']:.3f} ms, "
            f"{r['cpu_per_wall']:.2f} cores busy")

    def tbe(self, ra):
        import concurrent.futures

        import numpy as np
        import torch

        a, dim, batch = self.a, self.dim, self.a.batch
        t0 = time.time()
        tbe, views = build_tbe(self.tables, self.rows, dim, ra)
        name = f"tbe_row_alignment_{ra}"
        row_bytes = int(views[0].shape[1])
        log(f"  {name}: {row_bytes}-byte rows, {tbe.weights_host.numel() / 1e9:.2f} GB, "
            f"built (codes checked) in {time.time() - t0:.1f} s")

        def qp16(t, flat):
            sb = views[t][flat][:, 0:4].contiguous().view(torch.float16).numpy().astype(np.float64)
            return sb[:, 0], sb[:, 1]

        out = tbe(*tbe_inputs(self.ids_c, 0, a.check_batch)).numpy().astype(np.float64)
        ref16 = reference(self.tables, self.ids_c, dim, qp16)
        bound = qparam_bound(self.tables, self.ids_c, dim, self.qp32, qp16)
        d16 = float(np.abs(out - ref16).max())
        d32 = float(np.abs(out - self.ref32).max())
        within = bool((np.abs(out - self.ref32) <= bound + self.tol).all())
        self.checks[name] = {"row_bytes": row_bytes,
                             "max_abs_diff_vs_own_bytes": d16, "rel_vs_own_bytes": d16 / self.max_out,
                             "max_abs_diff_vs_dlrs": d32, "rel_vs_dlrs": d32 / self.max_out,
                             "f16_qparam_bound_max": float(bound.max()), "within_f16_qparam_bound": within}
        log(f"  {name}: max |FBGEMM - numpy of its bytes| = {d16:.3g} ({d16 / self.max_out:.2g} of max |out|); "
            f"max |FBGEMM - dlrs reference (f32 qparams)| = {d32:.3g} ({d32 / self.max_out:.2g}), "
            f"f16-qparam bound up to {bound.max():.3g}")
        assert d16 <= self.tol, f"{name}: FBGEMM differs from the numpy dequantization of its own bytes by {d16}"
        assert within, f"{name}: FBGEMM differs from dlrs's reference by more than f16 qparams allow"

        inputs = [tbe_inputs(ids, 0, batch) for ids in self.pool]
        for th in self.threads:
            self.time(f"{name}_threads_{th}", lambda i: tbe(*inputs[i]), th, th)
        if 2 in self.threads and not a.quick:
            halves = [(tbe_inputs(ids, 0, batch // 2), tbe_inputs(ids, batch // 2, batch)) for ids in self.pool]
            with concurrent.futures.ThreadPoolExecutor(1) as ex:
                def split2(i):
                    fut = ex.submit(tbe, *halves[i][1])
                    tbe(*halves[i][0])
                    return fut.result()

                self.time(f"{name}_2_python_threads", split2, 2, 1)

    def embedding_bag_byte(self):
        import numpy as np
        import torch

        dim, ids_per = self.dim, self.a.ids_per_table
        t0 = time.time()
        # dlrs's row bytes without the padding: [D codes, f32 scale, f32 bias], contiguous
        packed = [t[:, :dim + 8].contiguous() for t in self.tables]
        name = "embedding_bag_byte"
        log(f"  {name}: {dim + 8}-byte rows, {sum(p.numel() for p in packed) / 1e9:.2f} GB, "
            f"built in {time.time() - t0:.1f} s")

        def inputs_of(ids):
            return [(torch.from_numpy(ids[t].reshape(-1).astype(np.int64)),
                     torch.arange(0, ids.shape[1] * ids_per, ids_per, dtype=torch.int64)) for t in range(len(packed))]

        def run(idx_offs):
            return torch.cat([torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
                w, idx, offs, False, 0, False, None, None, False) for w, (idx, offs) in zip(packed, idx_offs)], 1)

        out = run(inputs_of(self.ids_c)).numpy().astype(np.float64)
        d32 = float(np.abs(out - self.ref32).max())
        self.checks[name] = {"row_bytes": dim + 8, "max_abs_diff_vs_dlrs": d32, "rel_vs_dlrs": d32 / self.max_out}
        log(f"  {name}: max |FBGEMM - dlrs reference (same bytes)| = {d32:.3g} ({d32 / self.max_out:.2g} of max |out|)")
        assert d32 <= self.tol, f"{name}: differs from dlrs's reference by {d32}"
        inputs = [inputs_of(ids) for ids in self.pool]
        for th in self.threads:
            self.time(f"{name}_threads_{th}", lambda i: run(inputs[i]), th, th)


def worker(a):
    import numpy as np
    import torch

    b = Bench(a)
    res = {"isa": probe_isa(), "batch": a.batch, "ids_per_table": a.ids_per_table, "tables": len(b.rows),
           "dim": b.dim, "rows": b.rows, "pool": a.pool, "dlrs_row_stride": int(b.tables[0].shape[1])}
    for ra in a.row_alignments:
        b.tbe(ra)
    if not a.quick:
        b.embedding_bag_byte()
    res.update(checks=b.checks, timings=b.timings,
               versions={"torch": torch.__version__, "fbgemm_gpu": __import__("fbgemm_gpu").__version__,
                         "numpy": np.__version__, "safetensors": __import__("safetensors").__version__,
                         "python": platform.python_version()})
    print(json.dumps(res))


# ---------------------------------------------------------------- driver


def run_worker(args, env_extra):
    env = dict(os.environ)
    env.update(env_extra)
    # the worker's progress goes straight to stderr; its last stdout line is its JSON
    out = subprocess.run([VENV_PY, os.path.abspath(__file__), *args], stdout=subprocess.PIPE, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"worker failed ({' '.join(args)})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a dlrs model directory with int8 tables")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", default="2,1")
    ap.add_argument("--ids-per-table", type=int, default=80, help="ids per table per sample (RMC1 preset: 80)")
    ap.add_argument("--seconds", type=float, default=3.0, help="timed seconds per point")
    ap.add_argument("--pool", type=int, help="distinct batches cycled (default: as dlrs bench, >= 256 MB of rows)")
    ap.add_argument("--row-alignments", default="1,64", help="FBGEMM TBE row_alignment values to time")
    ap.add_argument("--check-batch", type=int, default=64, help="samples in the correctness batch")
    ap.add_argument("--dlrs", default=os.path.join(ROOT, "target", "release", "dlrs"))
    ap.add_argument("--no-fallback-point", action="store_true",
                    help="when LD_PRELOAD is needed, skip timing FBGEMM without it")
    ap.add_argument("--probe", action="store_true", help="only report FBGEMM's instruction set, without and with LD_PRELOAD")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.probe_worker:
        print(json.dumps(probe_isa()))
        return
    a.row_alignments = [int(x) for x in a.row_alignments.split(",") if x]
    if a.worker:
        worker(a)
        return
    if not os.path.exists(VENV_PY):
        sys.exit(f"{VENV_PY} missing: run scripts/fbgemm-setup.sh")

    # 1. does FBGEMM see AVX2 / AVX-512 as installed, or only with libtorch.so preloaded?
    plain = run_worker(["--probe-worker"], {"LD_PRELOAD": ""})
    preload_env = {"LD_PRELOAD": ""}
    if plain["isa"] == 0:
        preload_env = {"LD_PRELOAD": plain["libtorch"]}
        pre = run_worker(["--probe-worker"], preload_env)
        log(f"FBGEMM without LD_PRELOAD: {plain['isa_name']} (avx2 {plain['avx2']}); "
            f"with LD_PRELOAD={plain['libtorch']}: {pre['isa_name']} (avx2 {pre['avx2']}, avx512 {pre['avx512']})")
        if pre["isa"] == 0:
            log("warning: FBGEMM reports no AVX2 even with the preload; its figures are the scalar fallback's")
    else:
        pre = None
        log(f"FBGEMM: {plain['isa_name']} (avx2 {plain['avx2']}, avx512 {plain['avx512']}), no LD_PRELOAD needed")
    if a.probe:
        print(json.dumps({"without_preload": plain, "with_preload": pre}))
        return
    if not a.model:
        sys.exit("--model DIR is required")
    if not os.path.exists(a.dlrs):
        sys.exit(f"{a.dlrs} missing: cargo build --release -p dlrs-cli (or pass --dlrs)")
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    n_tables = len(str(cfg["arch_embedding_size"]).split("-"))
    batch_bytes = a.batch * a.ids_per_table * n_tables * int(cfg["arch_sparse_feature_size"]) * 4
    if a.pool is None:
        a.pool = min(max(-(-COLD_POOL_BYTES // batch_bytes), 8), 4096)
    load0 = os.getloadavg()

    # 2.-3. FBGEMM (correctness, then speed)
    common = ["--model", a.model, "--batch", str(a.batch), "--threads", a.threads, "--ids-per-table",
              str(a.ids_per_table), "--seconds", str(a.seconds), "--pool", str(a.pool),
              "--check-batch", str(a.check_batch)]
    log(f"FBGEMM ({'LD_PRELOAD=' + preload_env['LD_PRELOAD'] if preload_env['LD_PRELOAD'] else 'no LD_PRELOAD'}):")
    fb = run_worker(["--worker", *common, "--row-alignments", ",".join(map(str, a.row_alignments))], preload_env)
    fallback = None
    if preload_env["LD_PRELOAD"] and not a.no_fallback_point:
        log("FBGEMM without LD_PRELOAD (its scalar fallback), TBE row_alignment 1, 1 thread:")
        fc = list(common)
        fc[fc.index("--threads") + 1] = "1"
        fc[fc.index("--seconds") + 1] = str(min(a.seconds, 2.0))
        fallback = run_worker(["--worker", *fc, "--row-alignments", "1", "--quick"], {"LD_PRELOAD": ""})

    # 4. dlrs
    dlrs = {}
    for th in [int(t) for t in a.threads.split(",")]:
        out = subprocess.run([a.dlrs, "bench", "--model", a.model, "--batch", str(a.batch), "--threads", str(th),
                              "--ids-per-table", str(a.ids_per_table), "--pool", str(a.pool),
                              "--seconds", str(a.seconds), "--json"], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"dlrs bench failed:\n{out.stderr}")
        v = json.loads(out.stdout)
        emb_ms = v["breakdown_ms"]["embedding"]
        dlrs[th] = {"embedding_ms": emb_ms, "embedding_samples_per_s": a.batch / (emb_ms / 1e3),
                    "embedding_rows_per_s": v["embedding_rows_per_s"], "model_samples_per_s": v["samples_per_s"],
                    "isa": v["isa"], "row_stride": v["row_stride"], "tables": v["tables"], "batches": v["batches"]}
        log(f"dlrs {th} thread(s): embedding stage {emb_ms:.3f} ms per batch = "
            f"{dlrs[th]['embedding_samples_per_s']:.0f} samples/s ({v['embedding_rows_per_s'] / 1e6:.0f} M rows/s); "
            f"whole model {v['samples_per_s']:.0f} samples/s")
    load1 = os.getloadavg()

    # report: against the TBE called once per batch (the comparison), and against the
    # fastest FBGEMM way measured within the same thread budget (1-thread runs count for 2)
    t = fb["timings"]
    print("| threads | dlrs embedding stage samples/s | FBGEMM TBE samples/s (one call per batch) | ratio "
          "| fastest FBGEMM within the threads | samples/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    ratios = {}
    for th, d in dlrs.items():
        ds = d["embedding_samples_per_s"]
        key = f"tbe_row_alignment_{a.row_alignments[0]}_threads_{th}" if a.row_alignments else None
        best = max((k for k, v in t.items() if v["threads"] <= th), key=lambda k: t[k]["samples_per_s"])
        ratios[th] = {"vs_tbe": ds / t[key]["samples_per_s"] if key in t else None, "tbe_key": key,
                      "vs_fastest": ds / t[best]["samples_per_s"], "fastest_key": best}
        tbe_cells = f"{t[key]['samples_per_s']:.0f} | {ratios[th]['vs_tbe']:.2f}x" if key in t else "- | -"
        print(f"| {th} | {ds:.0f} | {tbe_cells} | {best} | {t[best]['samples_per_s']:.0f} "
              f"| {ratios[th]['vs_fastest']:.2f}x |")
    head_th = max(dlrs)
    summary = {
        "what": "embedding stage only: int8 row-wise embedding bags, SUM pooling, fp32 output",
        "model": os.path.abspath(a.model), "batch": a.batch, "ids_per_table": a.ids_per_table,
        "pool": a.pool, "seconds": a.seconds,
        "headline": {"threads": head_th, "dlrs_embedding_samples_per_s": dlrs[head_th]["embedding_samples_per_s"],
                     **ratios[head_th], "target": "dlrs >= 3x FBGEMM"},
        "dlrs": dlrs, "fbgemm": fb, "fbgemm_without_preload": fallback, "ratios": ratios,
        "ld_preload_used": preload_env["LD_PRELOAD"] or None,
        "fbgemm_isa": {"without_preload": plain["isa_name"], "with_preload": pre["isa_name"] if pre else None},
        "versions": {**fb["versions"], "dlrs_git": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                                                  capture_output=True, text=True).stdout.strip()},
        "cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_before": load0, "loadavg_after": load1,
        "thp": open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip()
        if os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled") else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
