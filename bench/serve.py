"""Serving benchmark: end-to-end HTTP jets/s and latency of the wtag server, ``mlflow models serve`` and bare
``session.run`` on the same ONNX model, as a Markdown table.

    python bench/serve.py [--model PATH_OR_URI] [--quick] [--output bench-serve.md]

Without ``--model`` it builds the tutorial-style DNN (hl inputs, 3 x 64 ReLU, standardization baked in) with
random weights. Everything runs on 127.0.0.1 with bounded loops; the servers it starts are stopped at the end.
Each cell sends one untimed warm-up request, then pre-encoded bodies from ``concurrency`` client threads
(keep-alive connections) for about ``--duration`` seconds (at least one request per thread). Client and
servers share this machine's cores, so the load average is printed with the table.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from serving.settings import ServerSettings
from wtag import schema
from wtag.errors import exit_status
from wtag.inference import DEVICES, create_session

SIZES = (1, 100, 1_000, 10_000, 100_000)
CONCURRENCY = (1, 4, 16)
QUICK_SIZES = (1, 100, 1_000, 10_000)
QUICK_CONCURRENCY = (1, 4)
PROTOCOLS = ("npy", "v2-binary", "json", "v2-json")
# Slow JSON cells are capped so the run stays bounded: (jets per request) x concurrency above this is skipped.
MAX_JSON_JETS_IN_FLIGHT = 400_000


def tutorial_dnn(seed: int = 7) -> onnx.ModelProto:
    """The HATS tutorial's dense net shape on the 10 hl features, standardization baked in, random weights."""
    rng = np.random.default_rng(seed)
    n_in = len(schema.HL_FEATURES)
    mean = np.array([80, 90, 0.3, 0.15, 0.1, 0.5, 0.7, 40, 300, 0], dtype=np.float32)
    std = np.array([40, 40, 0.2, 0.1, 0.08, 0.2, 0.2, 20, 80, 1], dtype=np.float32)
    inits = [numpy_helper.from_array(mean, "mean"), numpy_helper.from_array(std, "std"),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "flat")]
    nodes = [helper.make_node("Sub", [schema.INPUT_HL, "mean"], ["centred"]), helper.make_node("Div", ["centred", "std"], ["x0"])]
    width, prev = 64, "x0"
    for layer, (fan_in, fan_out) in enumerate([(n_in, width), (width, width), (width, width), (width, 1)]):
        w = rng.normal(0, np.sqrt(2.0 / fan_in), (fan_in, fan_out)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{layer}"),
                  numpy_helper.from_array(np.zeros(fan_out, np.float32), f"b{layer}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{layer}", f"b{layer}"], [f"z{layer}"]))
        act = "Relu" if fan_out == width else "Sigmoid"
        nodes.append(helper.make_node(act, [f"z{layer}"], [f"a{layer}"]))
        prev = f"a{layer}"
    nodes.append(helper.make_node("Reshape", [prev, "flat"], [schema.OUTPUT_SCORE]))
    graph = helper.make_graph(
        nodes, "tutorial_dnn",
        [helper.make_tensor_value_info(schema.INPUT_HL, TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info(schema.OUTPUT_SCORE, TensorProto.FLOAT, ["N"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in {schema.Meta.TAGGER: "dnn", schema.Meta.INPUTS: json.dumps([schema.INPUT_HL]),
                       schema.Meta.HL_FEATURES: json.dumps(list(schema.HL_FEATURES)),
                       schema.Meta.PREPROCESSING: "baked",
                       schema.Meta.MAX_PARTICLES: str(schema.MAX_PARTICLES)}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1.0) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout} s")


@contextlib.contextmanager
def process(cmd: Sequence[str], ready_url: str, log: Path, env: dict[str, str] | None = None,
            timeout: float = 180.0) -> Iterator[int]:
    """Start a server in its own process group (yields its pid); stop the whole group afterwards, whatever
    happens."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_ready(ready_url, proc, timeout)
        yield proc.pid
    except RuntimeError:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Request:
    path: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Cell:
    target: str
    protocol: str
    jets: int
    concurrency: int
    requests: int
    seconds: float
    latencies: np.ndarray

    @property
    def jets_per_s(self) -> float:
        return self.requests * self.jets / self.seconds

    def row(self) -> str:
        p50, p99 = np.percentile(self.latencies, [50, 99]) * 1e3
        return (f"| {self.target} | {self.protocol} | {self.jets:,} | {self.concurrency} | {self.requests:,} | "
                f"{self.jets_per_s:,.0f} | {p50:.2f} | {p99:.2f} |")


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def requests_for(protocol: str, inputs: dict[str, np.ndarray]) -> Request:
    """A pre-encoded request body for one protocol (encoding is the client's cost, not the server's)."""
    names = list(inputs)
    if protocol == "json":  # MLflow scoring format, as both servers accept it
        payload = {"inputs": inputs[names[0]].tolist()} if len(names) == 1 else \
            {"inputs": {k: v.tolist() for k, v in inputs.items()}}
        return Request("/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"})
    if protocol == "v2-json":
        payload = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "FP32", "data": v.ravel().tolist()}
                              for k, v in inputs.items()]}
        return Request(f"/v2/models/{schema.REGISTERED_MODEL}/infer", json.dumps(payload).encode(), {"Content-Type": "application/json"})
    if protocol == "v2-binary":
        header = {"inputs": [{"name": k, "shape": list(v.shape), "datatype": "FP32",
                              "parameters": {"binary_data_size": v.nbytes}} for k, v in inputs.items()],
                  "outputs": [{"name": schema.OUTPUT_SCORE, "parameters": {"binary_data": True}}]}
        head = json.dumps(header).encode()
        return Request(f"/v2/models/{schema.REGISTERED_MODEL}/infer", head + b"".join(v.tobytes() for v in inputs.values()),
                       {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))})
    if protocol == "npy":
        if len(names) == 1:
            return Request("/v1/score-npy", npy_bytes(inputs[names[0]]), {"Content-Type": "application/x-npy"})
        buffer = io.BytesIO()
        np.savez(buffer, **inputs)
        return Request("/v1/score-npy", buffer.getvalue(), {"Content-Type": "application/x-npz"})
    raise ValueError(protocol)


def http_cell(target: str, protocol: str, port: int, request: Request, jets: int, concurrency: int,
              duration: float) -> Cell:
    """Send ``request`` from ``concurrency`` threads until ``duration`` has passed; every answer must be 200."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    start_gate = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(slot: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        start_gate.wait()
        try:
            while True:
                t0 = time.perf_counter()
                conn.request("POST", request.path, body=request.body, headers=request.headers)
                resp = conn.getresponse()
                data = resp.read()
                latencies[slot].append(time.perf_counter() - t0)
                if resp.status != 200:
                    errors.append(f"{resp.status}: {data[:200]!r}")
                    return
                if time.perf_counter() >= deadline[0]:
                    return
        finally:
            conn.close()

    warm = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    warm.request("POST", request.path, body=request.body, headers=request.headers)
    warm.getresponse().read()
    warm.close()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    deadline[0] = t_start + duration
    start_gate.wait()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t_start
    if errors:
        raise RuntimeError(f"{target} {protocol} {jets} jets: {errors[0]}")
    lat = np.array([x for per in latencies for x in per])
    return Cell(target, protocol, jets, concurrency, len(lat), seconds, lat)


def bare_cell(session: ort.InferenceSession, label: str, inputs: dict[str, np.ndarray], jets: int,
              concurrency: int, duration: float) -> Cell:
    """``session.run`` in-process from ``concurrency`` threads: the ceiling without HTTP."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    deadline = [0.0]
    gate = threading.Barrier(concurrency + 1)

    def worker(slot: int) -> None:
        gate.wait()
        while True:
            t0 = time.perf_counter()
            session.run([schema.OUTPUT_SCORE], inputs)
            latencies[slot].append(time.perf_counter() - t0)
            if time.perf_counter() >= deadline[0]:
                return

    session.run([schema.OUTPUT_SCORE], inputs)
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    t_start = time.perf_counter()
    deadline[0] = t_start + duration
    gate.wait()
    for t in threads:
        t.join()
    lat = np.array([x for per in latencies for x in per])
    return Cell("session.run", f"in-process, {label}", jets, concurrency, len(lat), time.perf_counter() - t_start,
                lat)


def model_batch(session: ort.InferenceSession, jets: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random positive inputs shaped like the model's inputs (timing does not depend on the values)."""
    return {i.name: rng.uniform(0.0, 1.0, (jets, *(d if isinstance(d, int) else 1 for d in i.shape[1:])))
            .astype(np.float32) for i in session.get_inputs()}


def log_to_mlflow(model_path: Path, root: Path) -> tuple[str, dict[str, str]]:
    """Log the ONNX model to a throwaway SQLite tracking store; the runs:/ URI and env for ``mlflow models serve``."""
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("bench-serve", artifact_location=(root / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.onnx.log_model(onnx.load(str(model_path)), name="model")
    # mlflow models serve runs `uvicorn` through a shell: the interpreter's own bin folder must be on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": path}
    return f"runs:/{run.info.run_id}/model", env


def resolve_model(model: str | None, root: Path) -> Path:
    if model is None:
        path = root / "tutorial_dnn.onnx"
        onnx.save(tutorial_dnn(), str(path))
        return path
    from wtag.inference import load_model_bytes

    data, _ = load_model_bytes(model)
    path = root / "model.onnx"
    path.write_bytes(data)
    return path


def run_cells(cells: list[Cell], label: str, fn: Callable[[], Cell]) -> None:
    cell = fn()
    cells.append(cell)
    print(f"  {label}: {cell.jets_per_s:,.0f} jets/s, p99 {np.percentile(cell.latencies, 99) * 1e3:.2f} ms",
          file=sys.stderr, flush=True)


def summary(cells: list[Cell]) -> list[str]:
    """The issue's three targets, checked against the measured cells."""
    def best(target: str, protocol: str, jets: int, concurrency: int | None = None) -> Cell | None:
        found = [c for c in cells if c.target == target and c.protocol.startswith(protocol) and c.jets == jets
                 and (concurrency is None or c.concurrency == concurrency)]
        return max(found, key=lambda c: c.jets_per_s) if found else None

    lines = ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    def best_binary(jets: int) -> Cell | None:
        found = [c for c in (best("wtag serve", p, jets) for p in ("npy", "v2-binary")) if c is not None]
        return max(found, key=lambda c: c.jets_per_s) if found else None

    ours = best_binary(1_000)
    theirs = best("mlflow models serve", "json", 1_000)
    if ours and theirs:
        ratio = ours.jets_per_s / theirs.jets_per_s
        lines.append(f"| binary route ({ours.protocol}, x{ours.concurrency}) vs `mlflow models serve` "
                     f"(x{theirs.concurrency}), 1,000-jet requests | {ratio:.1f}x | >= 20x | "
                     f"{'yes' if ratio >= 20 else 'no'} |")
    ours = best_binary(10_000)
    bare = best("session.run", "in-process", 10_000)
    if ours and bare:
        share = ours.jets_per_s / bare.jets_per_s
        lines.append(f"| binary route ({ours.protocol}, x{ours.concurrency}) vs the best bare `session.run` "
                     f"({bare.protocol.removeprefix('in-process, ')}, x{bare.concurrency}), 10,000-jet requests | "
                     f"{share:.0%} | >= 50% | "
                     f"{'yes' if share >= 0.5 else 'no'} |")
    for protocol in ("npy", "v2-binary", "json", "v2-json"):
        single = best("wtag serve", protocol, 1, 1)
        if single:
            p99 = float(np.percentile(single.latencies, 99) * 1e3)
            lines.append(f"| single-jet p99 at concurrency 1 ({protocol}) | {p99:.2f} ms | <= 5 ms | "
                         f"{'yes' if p99 <= 5 else 'no'} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="ONNX file, MLflow model dir or URI (default: a tutorial-shaped DNN)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and concurrencies, shorter cells")
    parser.add_argument("--duration", type=float, help="seconds per cell (default 2, quick 0.7)")
    parser.add_argument("--skip-mlflow", action="store_true", help="do not start mlflow models serve")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="execution provider for the server and the bare runs (default cpu)")
    parser.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads for the server and bare runs")
    parser.add_argument("--sizes", type=int, nargs="+", help="jets per request (overrides the defaults)")
    parser.add_argument("--concurrency", type=int, nargs="+", help="client threads (overrides the defaults)")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                        help="protocols to measure on this server")
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    sizes = tuple(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    concurrencies = tuple(args.concurrency or (QUICK_CONCURRENCY if args.quick else CONCURRENCY))
    duration = args.duration or (0.7 if args.quick else 2.0)
    rng = np.random.default_rng(1)
    cells: list[Cell] = []
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="wtag-bench-") as tmp:
        root = Path(tmp)
        model_path = resolve_model(args.model, root)
        server_threads = ServerSettings(intra_op_threads=args.intra_op_threads).ort_threads()
        sessions = {"ORT default threads": create_session(model_path, args.device)}
        sessions[f"{server_threads} thread{'s' if server_threads > 1 else ''}, as the server"] = \
            create_session(model_path, args.device, server_threads)
        provider = sessions["ORT default threads"].get_providers()[0]
        batches = {n: model_batch(sessions["ORT default threads"], n, rng) for n in sizes}
        print(f"model {args.model or 'tutorial DNN (random weights)'}; {os.cpu_count()} CPUs", file=sys.stderr)

        for label, session in sessions.items():
            for n in sizes:
                for c in concurrencies:
                    run_cells(cells, f"session.run ({label}) {n} x{c}",
                              lambda: bare_cell(session, label, batches[n], n, c, duration))

        port = free_port()
        cmd = [sys.executable, "-m", "serving", "--model", str(model_path), "--port", str(port),
               "--device", args.device]
        if args.intra_op_threads:
            cmd += ["--intra-op-threads", str(args.intra_op_threads)]
        with process(cmd, f"http://127.0.0.1:{port}/v2/health/ready", root / "wtag-serve.log"):
            for protocol in args.protocols:
                for n in sizes:
                    request = requests_for(protocol, batches[n])
                    for c in concurrencies:
                        if protocol.endswith("json") and n * c > MAX_JSON_JETS_IN_FLIGHT:
                            continue
                        run_cells(cells, f"wtag {protocol} {n} x{c}",
                                  lambda: http_cell("wtag serve", protocol, port, request, n, c, duration))

        if not args.skip_mlflow:
            uri, env = log_to_mlflow(model_path, root)
            port = free_port()
            cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                   "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
            try:
                with process(cmd, f"http://127.0.0.1:{port}/ping", root / "mlflow-serve.log", env=env):
                    for n in sizes:
                        request = requests_for("json", batches[n])
                        for c in concurrencies:
                            if n * c > MAX_JSON_JETS_IN_FLIGHT // 4:
                                continue
                            run_cells(cells, f"mlflow json {n} x{c}",
                                      lambda: http_cell("mlflow models serve", "json", port, request, n, c, duration))
            except RuntimeError as exc:
                print(f"mlflow models serve failed, its cells are missing: {exc}", file=sys.stderr)

    load_end = os.getloadavg()[0]
    lines = [f"Model: {args.model or 'tutorial-shaped DNN (hl, 3 x 64 ReLU, random weights)'}; "
             f"{os.cpu_count()} CPUs; ONNX Runtime {ort.__version__}, {provider}; 1-minute load average "
             f"{load_start:.1f} at the start, {load_end:.1f} at the end; {duration:g} s per cell.", "",
             "| server | protocol | jets/request | concurrency | requests | jets/s | p50 ms | p99 ms |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [cell.row() for cell in cells]
    lines += summary(cells)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "bench/serve.py"))
