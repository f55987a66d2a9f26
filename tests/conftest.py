"""Shared fixtures: a real MLflow tracking server process and the real CMS files beside the checkout."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ports import free_port
from wtag.tracking_server import ServerPaths, start_server, stop_server

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Keep TensorFlow quiet and small on the 2-core CI machine; set before any test imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# MLflow's usage telemetry cannot reach anything here, and its client thread sets and pops an environment
# variable that a concurrent request reads (a KeyError '_MLFLOW_TELEMETRY_SESSION_ID' failed a test once).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


@pytest.fixture(scope="session")
def tracking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a real ``mlflow server`` (SQLite backend, local artifact destination) on a free port."""
    paths = ServerPaths(tmp_path_factory.mktemp("mlflow-server"))
    uri = start_server(paths, port=free_port())
    try:
        yield uri
    finally:
        stop_server(paths)


@pytest.fixture
def tracking_uri(tracking_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point MLflow (and subprocesses) at the session's server for one test."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)
    mlflow.set_tracking_uri(tracking_server)
    return tracking_server


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CMS Open Data files in ../shared/data; tests using them skip cleanly where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CMS data folder {SHARED_DATA} is absent")
    return SHARED_DATA


TINY_TRAIN = {"n_jets": "150", "epochs": "1", "batch_size": "64", "pileup": "3"}
TRAIN_EXPERIMENT = "wtag-test-train"


def mlflow_run(entry_point: str, params: dict[str, str], uri: str, experiment: str) -> subprocess.CompletedProcess:
    """`mlflow run . -e ENTRY --env-manager local`, as a user types it, against the test server."""
    args = [sys.executable, "-m", "mlflow", "run", str(REPO), "-e", entry_point, "--env-manager", "local",
            "--experiment-name", experiment]
    for k, v in params.items():
        args += ["-P", f"{k}={v}"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    env.update(MLFLOW_TRACKING_URI=uri, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)


@pytest.fixture(scope="session")
def trained_all(tracking_server: str, tmp_path_factory: pytest.TempPathFactory):
    """One `mlflow run . -e train` of every tagger on a tiny simulated sample (one epoch).

    Returns (tracking URI, experiment, data dir, parameters, completed process).
    """
    data_dir = tmp_path_factory.mktemp("train-data")
    params = {**TINY_TRAIN, "data_dir": str(data_dir), "experiment": TRAIN_EXPERIMENT}
    proc = mlflow_run("train", params, tracking_server, TRAIN_EXPERIMENT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return tracking_server, TRAIN_EXPERIMENT, data_dir, params, proc


def runs_of(client, experiment: str, entry_point: str) -> list:
    """The runs of one wtag entry point in an experiment, newest first."""
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`wtag.entry_point` = '{entry_point}'")


@pytest.fixture(scope="session")
def main_twice(trained_all):
    """`mlflow run . -e main` twice with the parameters of the finished `train` run.

    Returns (tracking URI, experiment, run counts per entry point before, after the first, after the second)."""
    from mlflow.tracking import MlflowClient

    uri, experiment, _, params, _ = trained_all
    client = MlflowClient(uri)
    entry_points = ("prepare", "train", "train_tagger", "evaluate", "export")
    before = {ep: len(runs_of(client, experiment, ep)) for ep in entry_points}
    first = mlflow_run("main", params, uri, experiment)
    assert first.returncode == 0, first.stderr[-4000:]
    after_first = {ep: len(runs_of(client, experiment, ep)) for ep in entry_points}
    second = mlflow_run("main", params, uri, experiment)
    assert second.returncode == 0, second.stderr[-4000:]
    after_second = {ep: len(runs_of(client, experiment, ep)) for ep in entry_points}
    return uri, experiment, before, after_first, after_second


@pytest.fixture
def mlflow_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A throwaway SQLite tracking store with artifacts under tmp_path."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow.create_experiment("keras-tests", artifact_location=(tmp_path / "artifacts").as_uri())
    finally:
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="session")
def keras_trained():
    """``keras_trained(name)``: (tagger, validation split, history) of a Keras tagger fitted on synthetic jets as
    FIT_SPECS says, trained once per session and shared by the common and the per-family tests."""
    from keras_helpers import fit_spec, fitted

    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            spec = fit_spec(name)
            cache[name] = fitted(name, n_train=spec.n_train, n_val=spec.n_val, epochs=spec.epochs)
        return cache[name]

    return get


# ------------------------------------------------------------------------------------------------ servers
# One real ``python -m serving`` process per test session for each of these, shared by the test_serving_*
# modules (started on first use).

@pytest.fixture(scope="session")
def hl_server(tmp_path_factory: pytest.TempPathFactory):
    """hl model; a long queue delay and small max batch so batching and chunking are visible; no token."""
    import onnx
    from onnx_models import physical_hl_model, serve
    from serving.settings import TOKEN_ENV

    root = tmp_path_factory.mktemp("hl-server")
    onnx.save(physical_hl_model(), str(root / "hl.onnx"))
    with serve(root / "hl.onnx", root / "server.log", "--max-queue-delay-ms", "100", "--max-batch-size", "64",
               env={TOKEN_ENV: None}) as server:
        yield server


@pytest.fixture(scope="session")
def guarded_server(tmp_path_factory: pytest.TempPathFactory):
    """Two-input model behind a bearer token, with a 200 kB body limit and a 2 s request timeout."""
    import onnx
    from onnx_models import TOKEN, hl_particles_model, serve
    from serving.settings import TOKEN_ENV

    root = tmp_path_factory.mktemp("guarded-server")
    onnx.save(hl_particles_model(seed=11), str(root / "pfn.onnx"))
    with serve(root / "pfn.onnx", root / "server.log", "--max-body-bytes", "200000", "--request-timeout-s", "2",
               env={TOKEN_ENV: TOKEN}) as server:
        yield server


@pytest.fixture(scope="session")
def grpc_server(tmp_path_factory: pytest.TempPathFactory):
    """hl model over HTTP and gRPC behind a bearer token: (server, gRPC port)."""
    import onnx
    from onnx_models import TOKEN, physical_hl_model, serve
    from serving.settings import TOKEN_ENV

    root = tmp_path_factory.mktemp("grpc-server")
    onnx.save(physical_hl_model(), str(root / "hl.onnx"))
    grpc_port = free_port()
    with serve(root / "hl.onnx", root / "server.log", "--grpc-port", str(grpc_port), "--max-batch-size", "512",
               "--max-jets-per-request", "100000", env={TOKEN_ENV: TOKEN}) as server:
        yield server, grpc_port
def _stop(proc: subprocess.Popen) -> None:
    """Stop a process this fixture started (its own session: the nanny and its worker go together)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="session")
def dask_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Address of a real ``dask scheduler`` process with two ``dask worker`` processes (one thread each) on
    127.0.0.1, as a user starts them by hand; they see this checkout's ``wtag`` through PYTHONPATH.

    The scheduler picks its own port and writes its address to a scheduler file (no port race with the
    other processes of a shared machine)."""
    import json

    from distributed import Client

    logs = tmp_path_factory.mktemp("dask-logs")
    scheduler_file = logs / "scheduler.json"
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}

    def start(name: str, args: list[str]) -> subprocess.Popen:
        with open(logs / f"{name}.log", "w") as log:
            return subprocess.Popen([sys.executable, "-m", "dask", *args], env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)

    def failed(what: str) -> str:
        tails = {p.name: p.read_text()[-1500:] for p in sorted(logs.glob("*.log"))}
        return f"{what}; logs: {tails}"

    procs = [start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                                 "127.0.0.1:0", "--scheduler-file", str(scheduler_file)])]
    try:
        deadline = time.monotonic() + 120
        while not scheduler_file.is_file():
            assert procs[0].poll() is None and time.monotonic() < deadline, failed("dask scheduler did not start")
            time.sleep(0.2)
        time.sleep(0.2)  # the file is written in one go, but let it land
        address = json.loads(scheduler_file.read_text())["address"]
        for i in range(2):
            procs.append(start(f"worker{i}", ["worker", address, "--nthreads", "1", "--nworkers", "1",
                                              "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"]))
        with Client(address, timeout=30) as client:
            try:
                client.wait_for_workers(2, timeout=max(1.0, deadline - time.monotonic()))
            except TimeoutError:
                pytest.fail(failed("dask workers did not join"))
        yield address
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.fixture
def run_killing_a_worker(dask_scheduler: str):
    """Runs ``job()`` in a thread while SIGKILLing the first ``dask worker`` seen running a task whose key holds
    ``key_part``; returns (the job's result, the killed pid). The nanny restarts the worker, and the fixture
    waits for both workers again, since later tests share the cluster."""
    import threading

    from distributed import Client

    def run(job, key_part: str):
        outcome: dict[str, object] = {}

        def target() -> None:
            try:
                outcome["result"] = job()
            except BaseException as exc:  # handed to the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=target)
        killed = None
        with Client(dask_scheduler, timeout=10) as watcher:
            thread.start()
            deadline = time.monotonic() + 120
            while killed is None and time.monotonic() < deadline and thread.is_alive():
                busy = [w for w, keys in watcher.processing().items() if any(key_part in str(k) for k in keys)]
                if busy:
                    killed = watcher.run(os.getpid, workers=busy[:1])[busy[0]]
                    os.kill(killed, signal.SIGKILL)
                time.sleep(0.02)
            thread.join(timeout=300)
            watcher.wait_for_workers(2, timeout=120)
        assert killed is not None, f"no '{key_part}' task was seen running"
        assert "error" not in outcome, outcome.get("error")
        return outcome["result"], killed

    return run


# ------------------------------------------------------------------------------------------------ pytest-xdist
@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which turns the markers into the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` (``make test``), the tests sharing one expensive fixture run on one worker, so
    it is built once: the `mlflow run . -e train` + `main` chain, each Keras tagger's fit (by the tagger a test
    is parametrized with, or the group its module names), and otherwise each module (its module-scoped servers,
    studies and datasets). Session fixtures that only start a server (tracking, Dask) are started per worker."""
    from wtag.taggers import TAGGER_NAMES

    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        names = item.fixturenames
        group = item.module.__name__
        if "trained_all" in names:
            group = "mlflow-train"
        elif "keras_trained" in names:
            params = item.callspec.params.values() if hasattr(item, "callspec") else ()
            tagger = next((v for v in params if isinstance(v, str) and v in TAGGER_NAMES), None)
            group = f"keras-{tagger}" if tagger else group
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail loudly if pytest-xdist did not turn the groups into node ids (pytest 9.2 made ``nodeid`` ignore the
    ``_nodeid`` that xdist 3.8 sets): every grouped fixture would then be built on both workers."""
    if not session.config.getoption("loadgroup", default=False):
        return
    lost = [item.nodeid for item in session.items
            if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"--dist loadgroup: pytest-xdist did not group {len(lost)} tests (e.g. {lost[0]}); "
                                "is the installed pytest one that pytest-xdist supports?")
