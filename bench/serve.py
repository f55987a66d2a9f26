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
import multiprocessing as mp
import os
import platform
import shlex
import signal
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

from serving.settings import ServerSettings, default_workers
from wtag import schema
from wtag.errors import exit_status
from wtag.inference import DEVICES, create_session
from wtag.tracking_server import free_port

SIZES = (1, 100, 1_000, 10_000, 100_000)
CONCURRENCY = (1, 4, 16)
QUICK_SIZES = (1, 100, 1_000, 10_000)
QUICK_CONCURRENCY = (1, 4)
PROTOCOLS = ("npy", "v2-binary", "grpc", "json", "v2-json")
WTAG = "wtag serve"
MLSERVER = "MLServer"
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
    client_cpu: float = 0.0  # CPU seconds the client processes used (they share the machine with the server)

    @property
    def jets_per_s(self) -> float:
        return self.requests * self.jets / self.seconds

    def row(self) -> str:
        p50, p99 = np.percentile(self.latencies, [50, 99]) * 1e3
        return (f"| {self.target} | {self.protocol} | {self.jets:,} | {self.concurrency} | {self.requests:,} | "
                f"{self.jets_per_s:,.0f} | {p50:.2f} | {p99:.2f} | {self.client_cpu / self.seconds:.2f} |")


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


def _client(slot: int, port: int, request: Request | dict[str, np.ndarray], grpc_model: str | None,
            start_at: float, duration: float, results: mp.Queue) -> None:
    """One client process: a keep-alive connection (or a tritonclient.grpc client) sending ``request`` back to
    back from ``start_at`` for ``duration`` seconds; puts (slot, latencies, first error, CPU seconds)."""
    latencies: list[float] = []
    error = ""
    if grpc_model is not None:
        import tritonclient.grpc as triton

        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        assert isinstance(request, dict)
        tensors = []
        for name, value in request.items():
            tensor = triton.InferInput(name, list(value.shape), "FP32")
            tensor.set_data_from_numpy(value)
            tensors.append(tensor)

        def send() -> str:
            client.infer(grpc_model, tensors)
            return ""
    else:
        assert isinstance(request, Request)
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=600)]

        def send() -> str:
            for attempt in (1, 2):  # a keep-alive connection the server closed while idle is opened again
                try:
                    conns[0].request("POST", request.path, body=request.body, headers=request.headers)
                    resp = conns[0].getresponse()
                    data = resp.read()
                    return "" if resp.status == 200 else f"{resp.status}: {data[:200]!r}"
                except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
                    conns[0].close()
                    conns[0] = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
                    if attempt == 2:
                        raise
            return ""
    try:
        send()  # warm-up, untimed
        while time.time() < start_at:
            time.sleep(0.0005)
        cpu = time.process_time()
        deadline = start_at + duration
        while not error:
            t0 = time.perf_counter()
            error = send()
            latencies.append(time.perf_counter() - t0)
            if time.time() >= deadline:
                break
        cpu = time.process_time() - cpu
    except Exception as exc:  # noqa: BLE001  (reported with the cell)
        error, cpu = f"{type(exc).__name__}: {exc}", 0.0
    results.put((slot, latencies, error, cpu))


def http_cell(target: str, protocol: str, port: int, request: Request | dict[str, np.ndarray], jets: int,
              concurrency: int, duration: float, grpc_model: str | None = None) -> Cell:
    """``request`` from ``concurrency`` client processes (not threads: the load generator is not one GIL)
    for ``duration`` seconds; every answer must succeed. Forked (they start at once and only send requests)."""
    context = mp.get_context("fork")
    results: mp.Queue = context.Queue()
    start_at = time.time() + 1.0 + 0.05 * concurrency
    procs = [context.Process(target=_client, args=(i, port, request, grpc_model, start_at, duration, results))
             for i in range(concurrency)]
    for p in procs:
        p.start()
    collected = [results.get(timeout=duration + 600) for _ in procs]
    for p in procs:
        p.join()
    errors = [e for _, _, e, _ in collected if e]
    if errors:
        raise RuntimeError(f"{target} {protocol} {jets} jets: {errors[0]}")
    lat = np.array([x for _, per, _, _ in collected for x in per])
    seconds = max(duration, max(sum(per) for _, per, _, _ in collected))
    return Cell(target, protocol, jets, concurrency, len(lat), seconds, lat,
                client_cpu=sum(c for _, _, _, c in collected))


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


MLSERVER_VERSION = "1.7.1"
MLSERVER_PACKAGES = (f"mlserver=={MLSERVER_VERSION}", f"mlserver-mlflow=={MLSERVER_VERSION}", "onnxruntime")
DEFAULT_MLSERVER_ENV = Path("data/bench/mlserver-venv")


def mlserver_env(path: Path, python: str) -> Path:
    """A separate virtual environment with MLServer and its MLflow runtime (made once, then reused): their pins
    (fastapi < 0.116, their own mlflow) cannot live beside wtag's. Returns its bin folder."""
    bin_dir = path / "bin"
    if (bin_dir / "mlserver").exists():
        return bin_dir
    print(f"installing MLServer {MLSERVER_VERSION} into {path} (once)", file=sys.stderr, flush=True)
    subprocess.run([python, "-m", "venv", str(path)], check=True)
    done = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", *MLSERVER_PACKAGES],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not install {' '.join(MLSERVER_PACKAGES)}: {done.stderr.strip()[-800:]}")
    return bin_dir


def mlserver_repository(model_dir: Path, root: Path, http_port: int, grpc_port: int,
                        inputs: dict[str, list[int]]) -> Path:
    """An MLServer model repository serving the logged MLflow ONNX model as ``wtag`` with adaptive batching on.

    ``parallel_workers: 0``: MLServer 1.7.1's parallel inference pool fails to start with the current uvloop
    ("There is no current event loop"), so the model runs in the server process itself."""
    repo = root / "mlserver"
    (repo / "wtag").mkdir(parents=True, exist_ok=True)
    (repo / "settings.json").write_text(json.dumps({
        "parallel_workers": 0, "http_port": http_port, "grpc_port": grpc_port, "metrics_port": free_port(),
        "host": "127.0.0.1", "debug": False}))
    (repo / "wtag" / "model-settings.json").write_text(json.dumps({
        "name": schema.REGISTERED_MODEL, "implementation": "mlserver_mlflow.MLflowRuntime",
        "max_batch_size": 16384, "max_batch_time": 0.002,
        # requests decode to {input name: numpy array}, what the ONNX pyfunc takes (the same bodies wtag gets)
        "inputs": [{"name": name, "datatype": "FP32", "shape": shape, "parameters": {"content_type": "np"}}
                   for name, shape in inputs.items()],
        "parameters": {"uri": str(model_dir), "content_type": "dict"}}))
    return repo


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


def _goal(lines: list[str], what: str, text: str, goal: str, met: bool) -> None:
    lines.append(f"| {what} | {text} | {goal} | {'yes' if met else 'no'} |")


def summary(cells: list[Cell]) -> list[str]:
    """The issues' targets, checked against the measured cells (cells not measured are left out)."""
    def best(target: str, protocols: Sequence[str], jets: int, concurrency: int | None = None) -> Cell | None:
        found = [c for c in cells if c.target == target and c.protocol in protocols and c.jets == jets
                 and (concurrency is None or c.concurrency == concurrency)]
        return max(found, key=lambda c: c.jets_per_s) if found else None

    def p99(cell: Cell) -> float:
        return float(np.percentile(cell.latencies, 99) * 1e3)

    lines = ["", "| target | measured | goal | met |", "|---|---|---|---|"]
    fast = ("npy", "v2-binary", "grpc")
    ours, theirs = best(WTAG, fast, 1_000), best("mlflow models serve", ("json",), 1_000)
    if ours and theirs:
        ratio = ours.jets_per_s / theirs.jets_per_s
        _goal(lines, f"wtag {ours.protocol} (x{ours.concurrency}) vs `mlflow models serve` (x{theirs.concurrency}), "
                     "1,000-jet requests", f"{ratio:.1f}x", ">= 20x", ratio >= 20)
    ours, theirs = best(WTAG, ("v2-json",), 1_000), best(MLSERVER, ("v2-json",), 1_000)
    if ours and theirs:
        ratio = ours.jets_per_s / theirs.jets_per_s
        _goal(lines, "wtag vs MLServer on the same protocol (v2 JSON), 1,000-jet requests", f"{ratio:.1f}x",
              ">= 3x", ratio >= 3)
    ours, theirs = best(WTAG, fast, 1_000), best(MLSERVER, ("v2-json", "grpc"), 1_000)
    if ours and theirs:
        ratio = ours.jets_per_s / theirs.jets_per_s
        _goal(lines, f"wtag's fastest ({ours.protocol}) vs MLServer's fastest ({theirs.protocol}), 1,000-jet "
                     "requests", f"{ratio:.1f}x", ">= 5x", ratio >= 5)
    for protocol in ("v2-json", "grpc"):
        ours, theirs = best(WTAG, (protocol,), 1, 16), best(MLSERVER, (protocol,), 1, 16)
        if ours and theirs:
            _goal(lines, f"single-jet p99 at concurrency 16 ({protocol}): wtag vs MLServer",
                  f"{p99(ours):.1f} vs {p99(theirs):.1f} ms", "below MLServer's", p99(ours) < p99(theirs))
    ours, bare = best(WTAG, fast, 10_000), best("session.run", tuple(c.protocol for c in cells), 10_000)
    if ours and bare:
        share = ours.jets_per_s / bare.jets_per_s
        _goal(lines, f"wtag {ours.protocol} (x{ours.concurrency}) vs the best bare `session.run` "
                     f"({bare.protocol.removeprefix('in-process, ')}, x{bare.concurrency}), 10,000-jet requests",
              f"{share:.0%}", ">= 50%", share >= 0.5)
    for protocol in PROTOCOLS:
        single = best(WTAG, (protocol,), 1, 1)
        if single:
            _goal(lines, f"single-jet p99 at concurrency 1 ({protocol})", f"{p99(single):.2f} ms",
                  "<= 5 ms", p99(single) <= 5)
    return lines


def measure_mlserver(cells: list[Cell], args: argparse.Namespace, model_path: Path, root: Path,
                     batches: dict[int, dict[str, np.ndarray]], sizes: Sequence[int], concurrencies: Sequence[int],
                     duration: float) -> str:
    """MLServer (mlserver-mlflow runtime, adaptive batching) on the same MLflow ONNX model: v2 JSON over HTTP and
    v2 over gRPC. Returns a note for the table (how it ran, or why it did not)."""
    import mlflow.onnx

    try:
        bin_dir = mlserver_env(args.mlserver_env, args.mlserver_python)
    except (RuntimeError, subprocess.CalledProcessError, OSError) as exc:
        return f"MLServer not measured: {exc}"
    model_dir = root / "mlflow-model"
    mlflow.onnx.save_model(onnx.load(str(model_path)), str(model_dir))
    http_port, grpc_port = free_port(), free_port()
    shapes = {name: [-1, *v.shape[1:]] for name, v in next(iter(batches.values())).items()}
    repo = mlserver_repository(model_dir, root, http_port, grpc_port, shapes)
    version = subprocess.run([str(bin_dir / "python"), "-c", "import mlserver; print(mlserver.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    try:
        with process([str(bin_dir / "mlserver"), "start", str(repo)],
                     f"http://127.0.0.1:{http_port}/v2/models/{schema.REGISTERED_MODEL}/ready", root / "mlserver.log"):
            for protocol in ("v2-json", "grpc"):
                for n in sizes:
                    for c in concurrencies:
                        if protocol == "v2-json" and n * c > MAX_JSON_JETS_IN_FLIGHT // 4:
                            continue
                        request = batches[n] if protocol == "grpc" else requests_for(protocol, batches[n])
                        port = grpc_port if protocol == "grpc" else http_port
                        run_cells(cells, f"mlserver {protocol} {n} x{c}", lambda: http_cell(
                            MLSERVER, protocol, port, request, n, c, duration,
                            grpc_model=schema.REGISTERED_MODEL if protocol == "grpc" else None))
    except RuntimeError as exc:
        return f"MLServer {version} failed, its remaining cells are missing: {str(exc)[:300]}"
    return (f"MLServer {version} with mlserver-mlflow, adaptive batching (max_batch_size 16384, max_batch_time "
            "2 ms), `parallel_workers: 0` (its parallel inference pool does not start with the current uvloop), "
            f"in its own environment {args.mlserver_env}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="ONNX file, MLflow model dir or URI (default: a tutorial-shaped DNN)")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and concurrencies, shorter cells")
    parser.add_argument("--duration", type=float, help="seconds per cell (default 2, quick 0.7)")
    parser.add_argument("--skip-mlflow", action="store_true", help="do not start mlflow models serve")
    parser.add_argument("--skip-mlserver", action="store_true", help="do not install or start MLServer")
    parser.add_argument("--skip-bare", action="store_true", help="do not time bare session.run")
    parser.add_argument("--mlserver-env", type=Path, default=DEFAULT_MLSERVER_ENV,
                        help=f"virtual environment for MLServer, made on first use (default {DEFAULT_MLSERVER_ENV})")
    parser.add_argument("--mlserver-python", default=sys.executable,
                        help="interpreter the MLServer environment is made with (default this one)")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="execution provider for the server and the bare runs (default cpu)")
    parser.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads for the server and bare runs")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help=f"wtag server worker processes (default: the server's, here {default_workers()})")
    parser.add_argument("--serve-args", default="",
                        help="more `wtag serve` flags for the wtag server, one string (e.g. '--offload-bytes 1000000')")
    parser.add_argument("--sizes", type=int, nargs="+", help="jets per request (overrides the defaults)")
    parser.add_argument("--concurrency", type=int, nargs="+", help="client processes (overrides the defaults)")
    parser.add_argument("--protocols", nargs="+", choices=PROTOCOLS, default=list(PROTOCOLS),
                        help="protocols to measure on this server")
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    sizes = tuple(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    concurrencies = tuple(args.concurrency or (QUICK_CONCURRENCY if args.quick else CONCURRENCY))
    duration = args.duration or (0.7 if args.quick else 2.0)
    rng = np.random.default_rng(1)
    cells: list[Cell] = []
    notes: list[str] = []
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="wtag-bench-") as tmp:
        root = Path(tmp)
        model_path = resolve_model(args.model, root)
        server_threads = ServerSettings(intra_op_threads=args.intra_op_threads, workers=args.workers).ort_threads()
        sessions = {"ORT default threads": create_session(model_path, args.device)}
        sessions[f"{server_threads} thread{'s' if server_threads > 1 else ''}, as the server"] = \
            create_session(model_path, args.device, server_threads)
        provider = sessions["ORT default threads"].get_providers()[0]
        batches = {n: model_batch(sessions["ORT default threads"], n, rng) for n in sizes}
        print(f"model {args.model or 'tutorial DNN (random weights)'}; {os.cpu_count()} CPUs", file=sys.stderr)

        for label, session in ([] if args.skip_bare else sessions.items()):
            for n in sizes:
                for c in concurrencies:
                    run_cells(cells, f"session.run ({label}) {n} x{c}",
                              lambda: bare_cell(session, label, batches[n], n, c, duration))
        del sessions

        port, grpc_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "serving", "--model", str(model_path), "--port", str(port),
               "--grpc-port", str(grpc_port), "--device", args.device, "--workers", str(args.workers)]
        if args.intra_op_threads:
            cmd += ["--intra-op-threads", str(args.intra_op_threads)]
        cmd += shlex.split(args.serve_args)
        with process(cmd, f"http://127.0.0.1:{port}/v2/health/ready", root / "wtag-serve.log"):
            for protocol in args.protocols:
                for n in sizes:
                    request = batches[n] if protocol == "grpc" else requests_for(protocol, batches[n])
                    for c in concurrencies:
                        if protocol.endswith("json") and n * c > MAX_JSON_JETS_IN_FLIGHT:
                            continue
                        target_port = grpc_port if protocol == "grpc" else port
                        run_cells(cells, f"wtag {protocol} {n} x{c}", lambda: http_cell(
                            WTAG, protocol, target_port, request, n, c, duration,
                            grpc_model=schema.REGISTERED_MODEL if protocol == "grpc" else None))

        if not args.skip_mlserver:
            notes.append(measure_mlserver(cells, args, model_path, root, batches, sizes, concurrencies, duration))

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
             f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); ONNX Runtime {ort.__version__}, "
             f"{provider}; wtag with {args.workers} worker process{'es' if args.workers > 1 else ''}"
             f"{' ' + args.serve_args if args.serve_args else ''}; clients are "
             "separate processes on the same machine (their CPU use, in cores, is the last column); 1-minute load "
             f"average {load_start:.1f} at the start, {load_end:.1f} at the end; {duration:g} s per cell.",
             *[f"{note}." for note in notes], "",
             "| server | protocol | jets/request | concurrency | requests | jets/s | p50 ms | p99 ms | client cores |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [cell.row() for cell in cells]
    lines += summary(cells)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "bench/serve.py"))
