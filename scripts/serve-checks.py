#!/usr/bin/env python3
"""The serving checks of issue 5, in one run against one `dlrs serve` (python3 stdlib only).

1. latency-bounded throughput over HTTP (KServe v2, binary tensors, or with --shared-memory
   system the tensors in a system shared memory region) and in process (`dlrs
   twin`, the same queue and compute instances, no HTTP) at the same p99 target, a step of
   each in turn (`dlrs twin --versus-url`): the ratio;
2. overload: 3x the sustainable HTTP rate for --overload-s seconds; the queue depth
   (/metrics, sampled every 0.25 s) stays <= --max-queue (--max-queue-burst if larger),
   503s come back fast, accepted
   requests keep p99 <= target + max-queue-delay, server RSS stays bounded;
3. recovery: right after the overload, --recovery-s seconds at the sustainable rate: p99
   under target, no errors;
4. reload under load: --reload-s seconds at half the sustainable rate while the model is
   reloaded (POST /v2/repository/models/{name}/load) every --reload-every-s seconds: zero
   failed requests.

Each check starts after --settle-s seconds of quiet: the steps before it allocate and free
gigabytes (the server's tables, the twin's copy of the model, the load generator's query
pool), and on VMs that hand freed memory back to the host, the host's work on it stalls the
vCPUs for a while after.

Prints the figures for people and, with --json FILE, writes them all.

  scripts/serve-checks.py --model /work/models/rmc1 --ids-per-table 80 --target-p99-ms 10
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    return json.loads(p.stdout)


def get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def post(url, timeout=120.0):
    req = urllib.request.Request(url, data=b"{}", method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


def queue_depth(url):
    _, text = get(url + "/metrics")
    for line in text.splitlines():
        if line.startswith("dlrs_queue_depth_samples"):
            return float(line.split()[-1])
    return None


class Sampler(threading.Thread):
    """Samples server RSS and queue depth every `period` seconds until stopped."""

    def __init__(self, pid, url, period=0.25):
        super().__init__(daemon=True)
        self.pid, self.url, self.period = pid, url, period
        self.rss, self.depth = [], []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                self.rss.append(rss_mb(self.pid))
                self.depth.append(queue_depth(self.url))
            except Exception:  # a scrape that timed out under overload is just a gap
                pass
            self.stop.wait(self.period)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory")
    ap.add_argument("--dlrs", default=os.path.join(ROOT, "target/release/dlrs"))
    ap.add_argument("--addr", default="127.0.0.1:8129")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--instances", type=int, default=None)
    ap.add_argument("--http-threads", type=int, default=None, help="serve's --http-threads (its default if not given)")
    ap.add_argument("--max-batch", type=int, default=256)
    ap.add_argument("--max-queue-delay-us", type=int, default=500)
    ap.add_argument("--max-queue", type=int, default=4096)
    ap.add_argument("--max-queue-wait-ms", type=int, default=0)
    ap.add_argument("--keep-reload-memory", action="store_true",
                    help="serve's --keep-reload-memory (memory for a second copy of the tables from the start)")
    ap.add_argument("--max-queue-burst", type=int, default=0,
                    help="serve's and the twin's --max-queue-burst (0: off)")
    ap.add_argument("--burst-cooldown-ms", type=int, default=100)
    ap.add_argument("--compute-nice", type=int, default=0,
                    help="serve's --compute-nice (the compute threads' nice value; the HTTP threads preempt them)")
    ap.add_argument("--http-slice-us", type=int, default=0,
                    help="serve's --http-slice-us and loadgen's --slice-us (0: the kernel's default slice)")
    ap.add_argument("--ids-per-table", type=int, default=80)
    ap.add_argument("--query-size", default="normal:165,16")
    ap.add_argument("--target-p99-ms", type=float, default=10.0)
    ap.add_argument("--start-qps", type=float, default=500.0)
    ap.add_argument("--step-s", type=float, default=4.0)
    ap.add_argument("--max-steps", type=int, default=8)
    ap.add_argument("--max-error-rate", type=float, default=0.0,
                    help="share of a search step's queries that may fail (both searches), default 0")
    ap.add_argument("--pool", type=int, default=256)
    ap.add_argument("--overload-s", type=float, default=60.0)
    ap.add_argument("--recovery-s", type=float, default=10.0)
    ap.add_argument("--reload-s", type=float, default=95.0)
    ap.add_argument("--reload-every-s", type=float, default=30.0)
    ap.add_argument("--shared-memory", choices=["none", "system"], default="none",
                    help="loadgen's --shared-memory: system puts the tensors in a system shared memory region "
                         "(the server then runs with --allow-client-shm)")
    ap.add_argument("--settle-s", type=float, default=15.0,
                    help="quiet seconds before each check (after the server starts, the twin exits, ...)")
    ap.add_argument("--skip", default="", help="comma list of checks to skip: twin,overload,reload")
    ap.add_argument("--json", help="write all figures to this file")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    url = f"http://{a.addr}"
    name = "m"
    layout = ["--threads", str(a.threads)] + (["--instances", str(a.instances)] if a.instances else [])
    http_only = ["--http-threads", str(a.http_threads)] if a.http_threads else []
    if a.shared_memory == "system":
        http_only += ["--allow-client-shm"]
    if a.compute_nice:
        http_only += ["--compute-nice", str(a.compute_nice)]
    if a.keep_reload_memory:
        http_only += ["--keep-reload-memory"]
    if a.http_slice_us:
        http_only += ["--http-slice-us", str(a.http_slice_us)]
    batching = ["--max-batch", str(a.max_batch), "--max-queue-delay-us", str(a.max_queue_delay_us),
                "--max-queue", str(a.max_queue), "--max-queue-wait-ms", str(a.max_queue_wait_ms),
                "--max-queue-burst", str(a.max_queue_burst), "--burst-cooldown-ms", str(a.burst_cooldown_ms)]
    load = ["--ids-per-table", str(a.ids_per_table), "--query-size", a.query_size, "--pool", str(a.pool), "--json",
            "--slice-us", str(a.http_slice_us)]
    out = {"settings": vars(a)}

    server = subprocess.Popen([a.dlrs, "serve", "--model", a.model, "--name", name, "--addr", a.addr,
                               "--tables", "ram", "--watch-interval-ms", "0"] + layout + http_only + batching,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            try:
                if get(url + "/v2/health/ready")[0] == 200:
                    break
            except Exception:
                pass
            if server.poll() is not None:
                sys.exit("the server exited: " + server.stderr.read())
            time.sleep(0.2)
        print(f"server up: {' '.join(layout + http_only + batching)}; RSS {rss_mb(server.pid):.0f} MB", flush=True)
        loadgen = [a.dlrs, "loadgen", "--url", url, "--model", name, "--binary",
                   "--shared-memory", a.shared_memory] + load

        # 1. latency-bounded throughput over HTTP and in process, a step of each in turn
        #    (`dlrs twin --versus-url`), so that the minutes when this machine runs slower
        #    fall on both searches, not on whichever ran then
        time.sleep(a.settle_s)
        search = ["--target-p99-ms", str(a.target_p99_ms), "--qps", str(a.start_qps), "--duration", str(a.step_s),
                  "--max-steps", str(a.max_steps), "--warmup", "3", "--max-error-rate", str(a.max_error_rate)]
        if "twin" in skip:
            http = run_json(loadgen + search)
        else:
            versus = ["--versus-url", url, "--versus-model", name, "--versus-binary",
                      "--versus-shared-memory", a.shared_memory]
            both = run_json([a.dlrs, "twin", "--model", a.model] + layout + batching + load + search + versus)
            http = both["http"]
            out["twin"] = both["twin"]
        out["http"] = http
        best = http.get("latency_bounded")
        if not best:
            sys.exit("no HTTP rate met the target")
        print(f"HTTP: {best['achieved_qps']:.0f} QPS, {best['samples_per_s']:.0f} samples/s at p99 "
              f"{best['p99_ms']:.2f} ms", flush=True)
        tb = out.get("twin", {}).get("latency_bounded")
        if tb:
            out["http_over_twin"] = best["samples_per_s"] / tb["samples_per_s"]
            print(f"twin: {tb['achieved_qps']:.0f} QPS, {tb['samples_per_s']:.0f} samples/s at p99 "
                  f"{tb['p99_ms']:.2f} ms; HTTP / twin = {out['http_over_twin']:.2f}", flush=True)
        qps = best["offered_qps"]

        # 2. overload at 3x, then 3. recovery
        if "overload" not in skip:
            time.sleep(a.settle_s)
            sampler = Sampler(server.pid, url)
            sampler.start()
            rss0 = rss_mb(server.pid)
            over = run_json(loadgen + ["--qps", str(3 * qps), "--duration", str(a.overload_s), "--warmup", "0"])
            sampler.stop.set()
            sampler.join()
            rec = run_json(loadgen + ["--qps", str(qps), "--duration", str(a.recovery_s), "--warmup", "0"])
            depth = [d for d in sampler.depth if d is not None]
            e503 = over.get("error_latency_ms", {}).get("503", {})
            out["overload"] = {
                "offered_qps": 3 * qps, "report": over, "recovery": rec,
                "rss_mb_before": rss0, "rss_mb_max": max(sampler.rss), "rss_mb_after": rss_mb(server.pid),
                "queue_depth_max": max(depth) if depth else None, "queue_samples": len(depth),
            }
            lat = over["latency_ms"]
            print(f"overload {3 * qps:.0f} QPS for {a.overload_s:.0f} s: {over['ok']} ok, errors "
                  f"{over['errors']['by_status']} (+{over['errors']['timeout']} timeouts); accepted p99 {lat['p99']} ms "
                  f"(limit {a.target_p99_ms + a.max_queue_delay_us / 1000} ms); 503 p50/p99/max "
                  f"{e503.get('p50')}/{e503.get('p99')}/{e503.get('max')} ms; queue depth max "
                  f"{out['overload']['queue_depth_max']} (bound {max(a.max_queue, a.max_queue_burst)}); RSS {rss0:.0f} -> max "
                  f"{max(sampler.rss):.0f} MB", flush=True)
            print(f"recovery {qps:.0f} QPS for {a.recovery_s:.0f} s right after: p99 {rec['latency_ms']['p99']} ms, "
                  f"errors {rec['errors']['total']}", flush=True)

        # 4. reload under load
        if "reload" not in skip:
            time.sleep(a.settle_s)
            reloads = []
            stop = threading.Event()

            started = time.time()

            def reloader():
                while not stop.wait(a.reload_every_s):
                    t0 = time.time()
                    status, body = post(f"{url}/v2/repository/models/{name}/load")
                    reloads.append({"status": status, "seconds": time.time() - t0, "body": body[:200],
                                    "started_s": t0 - started})

            t = threading.Thread(target=reloader, daemon=True)
            t.start()
            rl = run_json(loadgen + ["--qps", str(qps / 2), "--duration", str(a.reload_s), "--warmup", "0"])
            stop.set()
            t.join()
            out["reload"] = {"offered_qps": qps / 2, "report": rl, "reloads": reloads}
            print(f"reload every {a.reload_every_s:.0f} s under {qps / 2:.0f} QPS for {a.reload_s:.0f} s: "
                  f"{len(reloads)} reloads (status {[r['status'] for r in reloads]}, "
                  f"{[round(r['seconds'], 1) for r in reloads]} s); {rl['ok']} ok, {rl['errors']['total']} failed; "
                  f"p99 {rl['latency_ms']['p99']} ms", flush=True)
            # when: reloads from the load generator's start (its clock starts after it built its queries)
            print(f"  reloads began at {[round(r['started_s'], 1) for r in reloads]} s; failures by second "
                  f"{rl.get('failures_by_second')}; slowest answer due at {rl.get('slowest_at_s')} s, "
                  f"{rl['latency_ms']['max']} ms", flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
