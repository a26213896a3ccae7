#!/usr/bin/env python3
"""A stock tritonclient[http] (PyPI) against `dlrs serve`, unchanged: health, metadata, and
inference with JSON, with binary tensor data and through system shared memory
(tritonclient.utils.shared_memory), checked against the reference PyTorch outputs of a parity
fixture. Run by scripts/test-tritonclient.sh (which installs the client).

  python test_dlrs_serve.py PATH/TO/dlrs
"""
import json
import os
import re
import subprocess
import sys
import time
import traceback

import numpy as np
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "parity", "criteo-kaggle-cap1000")
NAME = "ck"


def load_fixture():
    samples = [json.loads(l) for l in open(os.path.join(FIXTURE, "inputs.jsonl"))]
    expected = np.array([float(l) for l in open(os.path.join(FIXTURE, "expected.txt"))], dtype=np.float32)
    dense = np.array([s["dense"] for s in samples], dtype=np.float32)
    lengths = np.array([[len(bag) for bag in s["sparse"]] for s in samples], dtype=np.int32)
    indices = np.array([i for s in samples for bag in s["sparse"] for i in bag], dtype=np.int64)
    return dense, lengths, indices, expected


def start_server(dlrs):
    p = subprocess.Popen([dlrs, "serve", "--model", FIXTURE, "--name", NAME, "--addr", "127.0.0.1:0",
                          "--max-queue-delay-us", "200", "--allow-client-shm"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        line = p.stderr.readline()
        if not line:
            break
        m = re.search(r"http://(127\.0\.0\.1:\d+)", line)
        if m:
            return p, m.group(1)
    p.kill()
    raise RuntimeError("dlrs serve did not start")


def infer(client, dense, lengths, indices, binary):
    inputs = [httpclient.InferInput("dense", list(dense.shape), "FP32"),
              httpclient.InferInput("lengths", list(lengths.shape), "INT32"),
              httpclient.InferInput("indices", list(indices.shape), "INT64")]
    for x, v in zip(inputs, [dense, lengths, indices]):
        x.set_data_from_numpy(v, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("score", binary_data=binary)]
    r = client.infer(NAME, inputs, outputs=outputs, request_id="req-1")
    return r.as_numpy("score")


def test_health_and_metadata(client, data):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(NAME)
    md = client.get_model_metadata(NAME)
    names = {i["name"]: i for i in md["inputs"]}
    assert set(names) == {"dense", "lengths", "indices"}, md
    assert names["dense"]["datatype"] == "FP32" and names["dense"]["shape"] == [-1, 13], md
    assert names["lengths"]["shape"] == [-1, 26], md
    assert md["outputs"][0]["name"] == "score"
    # dlrs's own parameters (what a client needs to build requests) pass through the client
    params = md.get("parameters", {})
    assert params.get("n_dense") == 13, md
    config = json.load(open(os.path.join(FIXTURE, "config.json")))
    assert params.get("table_rows") == config["arch_embedding_size"], md


def check_scores(score, expected):
    assert score.shape == (len(expected), 1), score.shape
    diff = np.abs(score[:, 0] - expected).max()
    assert diff <= 1e-5, f"max |dlrs - reference| = {diff}"


def test_infer_json(client, data):
    dense, lengths, indices, expected = data
    check_scores(infer(client, dense, lengths, indices, binary=False), expected)


def test_infer_binary(client, data):
    dense, lengths, indices, expected = data
    check_scores(infer(client, dense, lengths, indices, binary=True), expected)


def test_infer_system_shared_memory(client, data):
    """Inputs from and the output to a system shared memory region, as Triton's
    simple_http_shm_client does: the same scores as the request with the tensors in its body."""
    dense, lengths, indices, expected = data
    plain = infer(client, dense, lengths, indices, binary=True)
    tensors = [dense, lengths, indices]
    offsets = np.cumsum([0] + [t.nbytes for t in tensors]).tolist()
    out_offset, out_size = offsets[-1], len(expected) * 4
    byte_size = out_offset + out_size
    key = f"/dlrs-tritonclient-{os.getpid()}"
    handle = shm.create_shared_memory_region("dlrs_io", key, byte_size)
    try:
        client.unregister_system_shared_memory()
        shm.set_shared_memory_region(handle, tensors)
        client.register_system_shared_memory("dlrs_io", key, byte_size)
        status = client.get_system_shared_memory_status()
        assert status == [{"name": "dlrs_io", "key": key, "offset": 0, "byte_size": byte_size}], status
        inputs = [httpclient.InferInput("dense", list(dense.shape), "FP32"),
                  httpclient.InferInput("lengths", list(lengths.shape), "INT32"),
                  httpclient.InferInput("indices", list(indices.shape), "INT64")]
        for x, t, off in zip(inputs, tensors, offsets):
            x.set_shared_memory("dlrs_io", t.nbytes, offset=off)
        out = httpclient.InferRequestedOutput("score", binary_data=True)
        out.set_shared_memory("dlrs_io", out_size, offset=out_offset)
        r = client.infer(NAME, inputs, outputs=[out], request_id="shm-1")
        o = r.get_output("score")
        assert o["parameters"]["shared_memory_region"] == "dlrs_io", o
        assert "data" not in o, o
        score = shm.get_contents_as_numpy(handle, np.float32, o["shape"], offset=out_offset)
        check_scores(score, expected)
        assert np.array_equal(score, plain), (score[:4], plain[:4])

        # the output back in the answer, the inputs still from shared memory
        r = client.infer(NAME, inputs, outputs=[httpclient.InferRequestedOutput("score", binary_data=False)])
        assert np.array_equal(r.as_numpy("score"), plain)

        # a region that is not registered is a clear 4xx naming it
        inputs[0].set_shared_memory("nope", dense.nbytes)
        try:
            client.infer(NAME, inputs)
            raise AssertionError("an unregistered region was accepted")
        except httpclient.InferenceServerException as e:
            assert "nope" in str(e) and "shared_memory_region" in str(e), str(e)
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)
    assert client.get_system_shared_memory_status() == []


def test_bad_input_is_a_clear_4xx(client, data):
    dense, lengths, indices, _ = data
    bad = indices.copy()
    bad[0] = 10_000_000  # table 0 has 1000 rows
    try:
        infer(client, dense, lengths, bad, binary=True)
    except httpclient.InferenceServerException as e:
        msg = str(e)
        assert "out of range" in msg, msg
        return
    raise AssertionError("an out-of-range id was accepted")


def main():
    dlrs = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "dlrs")
    proc, url = start_server(dlrs)
    passed = failed = 0
    try:
        client = httpclient.InferenceServerClient(url=url)
        data = load_fixture()
        for name, fn in sorted((n, f) for n, f in globals().items() if n.startswith("test_")):
            try:
                fn(client, data)
                passed += 1
                print(f"PASS {name}")
            except Exception:
                failed += 1
                print(f"FAIL {name}")
                traceback.print_exc()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print(f"tritonclient: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
