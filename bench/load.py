"""Load benchmark: the wtag server under many concurrent clients, mixed routes and sizes, and small requests
under big ones, as Markdown tables.

    python bench/load.py [--model PATH_OR_URI] [--workers N] [--clients 16] [--duration 60] [--output FILE]
    python bench/load.py --scenario head-of-line [--duration 10]

Scenarios (default: both):
- ``mix``: ``--clients`` client processes for ``--duration`` seconds, each sending pre-encoded requests of a
  random route (npy, MLflow JSON, v2 JSON, v2 binary, gRPC, raw jets) and a random size (1 to 10,000 jets,
  raw jets 1 to 1,000); requests/s, jets/s, p50/p99 per route, answers by status, and the server's resident
  memory (all its processes) at the start, its peak, and 5 s after the end.
- ``head-of-line``: p99 of single-jet npy requests alone, then while ``--big-clients`` clients post
  100,000-jet npy requests back to back.

The load generator is separate client processes (Python ``http.client`` on keep-alive connections and the stock
``tritonclient.grpc``), not threads of one process, so the client is not one GIL; on a small machine the
clients still share the cores with the server, and the table says how much CPU they used.
"""
from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import (Request, free_port, process, requests_for, tutorial_dnn)  # noqa: E402  (bench/serve.py)

from wtag import schema  # noqa: E402
from wtag.errors import exit_status  # noqa: E402

SIZES = (1, 10, 100, 1_000, 10_000)
JET_SIZES = (1, 10, 100, 1_000)
ROUTES = ("npy", "json", "v2-json", "v2-binary", "grpc", "jets")
BIG_JETS = 100_000


def jets_request(n: int, seed: int) -> Request:
    rng = np.random.default_rng(seed)
    jets = []
    for _ in range(n):
        k = int(rng.integers(5, 60))
        jets.append({"pt": (rng.exponential(15.0, k) + 1.0).round(3).tolist(),
                     "eta": (0.3 + rng.normal(0, 0.15, k)).round(4).tolist(),
                     "phi": (1.0 + rng.normal(0, 0.15, k)).round(4).tolist()})
    return Request("/v1/score-jets", json.dumps({"jets": jets}).encode(), {"Content-Type": "application/json"})


def hl_inputs(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {schema.INPUT_HL: rng.uniform(0.0, 1.0, (n, len(schema.HL_FEATURES))).astype(np.float32)}


def build_requests(routes: Sequence[str]) -> dict[tuple[str, int], object]:
    """Pre-encoded bodies (or gRPC inputs) per (route, size): encoding is the client's cost, not the server's."""
    out: dict[tuple[str, int], object] = {}
    for route in routes:
        for n in (JET_SIZES if route == "jets" else SIZES):
            if route == "jets":
                out[(route, n)] = jets_request(n, n)
            elif route == "grpc":
                out[(route, n)] = hl_inputs(n, n)
            else:
                out[(route, n)] = requests_for(route, hl_inputs(n, n))
    return out


def grpc_client(port: int):  # noqa: ANN201
    import tritonclient.grpc as triton

    return triton, triton.InferenceServerClient(f"127.0.0.1:{port}")


def client_process(slot: int, port: int, grpc_port: int, routes: Sequence[str], duration: float, start_at: float,
                   token: str | None, results: mp.Queue) -> None:
    """One client: random (route, size) requests back to back until the deadline; (route, jets, status, s)."""
    rng = random.Random(slot)
    requests = build_requests(routes)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    triton = client = None
    if "grpc" in routes:
        triton, client = grpc_client(grpc_port)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    records = []
    while time.time() < start_at:
        time.sleep(0.001)
    deadline = start_at + duration
    cpu0 = time.process_time()
    while time.time() < deadline:
        route = rng.choice(list(routes))
        n = rng.choice(JET_SIZES if route == "jets" else SIZES)
        t0 = time.perf_counter()
        if route == "grpc":
            inputs = requests[(route, n)]
            tensor = triton.InferInput(schema.INPUT_HL, list(inputs[schema.INPUT_HL].shape), "FP32")
            tensor.set_data_from_numpy(inputs[schema.INPUT_HL])
            try:
                client.infer(schema.REGISTERED_MODEL, [tensor], headers=auth)
                status = 200
            except Exception as exc:  # noqa: BLE001  (tritonclient raises its own type; the code is recorded)
                status = {"StatusCode.RESOURCE_EXHAUSTED": 429, "StatusCode.UNAVAILABLE": 503}.get(
                    str(getattr(exc, "status", lambda: "")()), 500)
        else:
            request = requests[(route, n)]
            try:
                conn.request("POST", request.path, body=request.body, headers={**request.headers, **auth})
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                status = 0
        records.append((route, n, status, time.perf_counter() - t0))
    results.put((slot, records, time.process_time() - cpu0))


def rss_by_process(pid: int) -> dict[int, int]:
    """Resident memory of ``pid`` and each of its descendants (workers, decode processes), by pid."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            out[p] = int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo += [int(c) for c in children]
        except (OSError, StopIteration, ValueError):
            continue
    return out


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants (a pre-fork server's workers included)."""
    return sum(rss_by_process(pid).values())


class MemorySampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.1)


def mix(port: int, grpc_port: int, pid: int, clients: int, duration: float, routes: Sequence[str],
        token: str | None) -> list[str]:
    start_each = rss_by_process(pid)
    start_rss = sum(start_each.values())
    sampler = MemorySampler(pid)
    sampler.start()
    results: mp.Queue = mp.Queue()
    start_at = time.time() + 3.0 + 0.3 * clients  # time for every client to encode its bodies
    procs = [mp.Process(target=client_process, args=(i, port, grpc_port, routes, duration, start_at, token,
                                                     results)) for i in range(clients)]
    for p in procs:
        p.start()
    collected = [results.get(timeout=duration + 300) for _ in procs]
    for p in procs:
        p.join()
    sampler.running = False
    sampler.join()
    time.sleep(5.0)
    end_each = rss_by_process(pid)
    end_rss = sum(end_each.values())
    records = [r for _, per, _ in collected for r in per]
    client_cpu = sum(cpu for _, _, cpu in collected)
    lines = [f"{clients} client processes for {duration:g} s, routes {', '.join(routes)}, sizes 1 to 10,000 jets "
             f"(raw jets 1 to 1,000); client CPU {client_cpu:.0f} s of {duration * os.cpu_count():.0f} core-s.", "",
             "| route | requests | req/s | jets/s | p50 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|---|"]
    for route in (*routes, "all"):
        mine = [r for r in records if route in ("all", r[0])]
        if not mine:
            continue
        ok = [r for r in mine if r[2] == 200]
        lat = np.array([r[3] for r in ok]) * 1e3 if ok else np.array([np.nan])
        errors = {}
        for r in mine:
            if r[2] != 200:
                errors[r[2]] = errors.get(r[2], 0) + 1
        p50, p99 = np.percentile(lat, [50, 99])
        lines.append(f"| {route} | {len(mine):,} | {len(ok) / duration:,.0f} | {sum(r[1] for r in ok) / duration:,.0f} "
                     f"| {p50:.1f} | {p99:.1f} | {', '.join(f'{k}: {v}' for k, v in sorted(errors.items())) or '0'} |")
    mib = 1 / 2**20
    lines += ["", f"Server resident memory (all processes): start {start_rss * mib:,.0f} MiB, peak "
                  f"{sampler.peak * mib:,.0f} MiB, 5 s after the end {end_rss * mib:,.0f} MiB "
                  f"({(end_rss - start_rss) / start_rss:+.1%}); by process (MiB, start -> end): "
                  + ", ".join(f"{start_each[p] * mib:.0f} -> {end_each.get(p, 0) * mib:.0f}" for p in start_each) + "."]
    return lines


def small_latencies(port: int, duration: float, token: str | None) -> np.ndarray:
    request = requests_for("npy", hl_inputs(1, 1))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    headers = {**request.headers, **({"Authorization": f"Bearer {token}"} if token else {})}
    lat = []
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        conn.request("POST", request.path, body=request.body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"single-jet request answered {resp.status}")
        lat.append(time.perf_counter() - t0)
        time.sleep(0.002)
    return np.array(lat)


def big_client(port: int, stop_at: float, token: str | None, done: mp.Queue) -> None:
    request = requests_for("npy", hl_inputs(BIG_JETS, 7))
    headers = {**request.headers, **({"Authorization": f"Bearer {token}"} if token else {})}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    count = 0
    while time.time() < stop_at:
        conn.request("POST", request.path, body=request.body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        count += resp.status == 200
    done.put(count)


def head_of_line(port: int, duration: float, big_clients: int, token: str | None) -> list[str]:
    alone = small_latencies(port, duration, token)
    done: mp.Queue = mp.Queue()
    stop_at = time.time() + duration + 3.0
    procs = [mp.Process(target=big_client, args=(port, stop_at, token, done)) for _ in range(big_clients)]
    for p in procs:
        p.start()
    time.sleep(2.0)
    loaded = small_latencies(port, duration, token)
    big = sum(done.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
    rows = ["| single-jet npy requests | requests | p50 ms | p99 ms |", "|---|---:|---:|---:|"]
    for label, lat in (("alone", alone), (f"while {big_clients} clients post {BIG_JETS:,}-jet requests ({big} "
                                          "answered)", loaded)):
        p50, p99 = np.percentile(lat * 1e3, [50, 99])
        rows.append(f"| {label} | {len(lat):,} | {p50:.2f} | {p99:.2f} |")
    ratio = np.percentile(loaded, 99) / np.percentile(alone, 99)
    rows.append(f"\np99 under load / alone: {ratio:.1f}x (goal <= 3x)")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="ONNX file (default: the tutorial-shaped DNN with random weights)")
    parser.add_argument("--scenario", choices=("mix", "head-of-line", "both"), default="both")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--big-clients", type=int, default=2)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the mix (head-of-line: / 6)")
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    parser.add_argument("--server-args", default="", help="extra arguments for python -m serving")
    parser.add_argument("--output", type=Path, help="also write the Markdown here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wtag-load-") as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else root / "tutorial_dnn.onnx"
        if not args.model:
            onnx.save(tutorial_dnn(), str(model))
        port, grpc_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "serving", "--model", str(model), "--port", str(port), "--device", "cpu",
               *args.server_args.split()]
        if "grpc" in args.routes:
            cmd += ["--grpc-port", str(grpc_port)]
        if args.workers != 1:
            cmd += ["--workers", str(args.workers)]
        token = os.environ.get("WTAG_SERVE_TOKEN") or None
        shown = [a for a in cmd[1:] if not a.startswith(tmp)]
        lines = [f"Machine: {os.cpu_count()} CPUs ({os.uname().machine}), 1-minute load average "
                 f"{os.getloadavg()[0]:.1f} before the run; server: python {' '.join(shown)}; "
                 f"model {args.model or 'tutorial-shaped DNN (hl, 3 x 64 ReLU)'}.", ""]
        with process(cmd, f"http://127.0.0.1:{port}/v2/health/ready", root / "server.log") as pid:
            if args.scenario in ("head-of-line", "both"):
                lines += head_of_line(port, max(args.duration / 6, 3.0), args.big_clients, token) + [""]
            if args.scenario in ("mix", "both"):
                lines += mix(port, grpc_port, pid, args.clients, args.duration, args.routes, token)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "bench/load.py"))
