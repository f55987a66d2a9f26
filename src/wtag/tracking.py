"""MLflow plumbing: the tracking-server process, reachability checks, run provenance and reuse of finished runs.

All steps log to the server at ``MLFLOW_TRACKING_URI``; this module only takes URIs and paths as arguments
(the CLI and entry points read the environment).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wtag.errors import WtagError

DEFAULT_EXPERIMENT = "wtag"
REGISTERED_MODEL = "wtag"
CHAMPION_ALIAS = "champion"


@dataclass(frozen=True)
class ServerPaths:
    """Where a tracking server keeps its state: SQLite backend store, artifact root, pid file and log."""

    root: Path

    @property
    def db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def pidfile(self) -> Path:
        return self.root / "server.pid"

    @property
    def log(self) -> Path:
        return self.root / "server.log"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def is_healthy(uri: str, timeout: float = 2.0) -> bool:
    """True when an MLflow server answers ``/health`` at ``uri``."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def start_server(paths: ServerPaths, host: str = "127.0.0.1", port: int = 5000, timeout: float = 120.0) -> str:
    """Start ``mlflow server`` in its own process group (SQLite store, local artifact destination).

    Job execution is disabled: otherwise the server forks seven job workers (~2 GB) we never use. Returns the
    server URI once ``/health`` answers; raises WtagError (with the log's tail) if it does not.
    """
    uri = f"http://{host}:{port}"
    if is_healthy(uri):
        return uri
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.artifacts.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", host, "--port", str(port),
        "--backend-store-uri", f"sqlite:///{paths.db.resolve()}",
        "--artifacts-destination", str(paths.artifacts.resolve()),
        "--workers", "1",
    ]
    # posix_spawn, not Popen: the server outlives this function, and a dropped Popen warns on deletion.
    with open(paths.log, "ab") as log:
        pid = os.posix_spawn(sys.executable, cmd, env, setsid=True,
                             file_actions=[(os.POSIX_SPAWN_DUP2, log.fileno(), 1),
                                           (os.POSIX_SPAWN_DUP2, log.fileno(), 2),
                                           (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)])
    paths.pidfile.write_text(f"{pid}\n")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            paths.pidfile.unlink(missing_ok=True)
            raise WtagError(f"mlflow server exited with code {os.waitstatus_to_exitcode(status)}; "
                            f"log {paths.log}:\n{_tail(paths.log)}")
        if is_healthy(uri, timeout=1.0):
            return uri
        time.sleep(0.25)
    stop_server(paths)
    raise WtagError(f"mlflow server at {uri} did not become healthy within {timeout:.0f} s; log {paths.log}")


def stop_server(paths: ServerPaths, timeout: float = 20.0) -> bool:
    """Stop the server's whole process group (gunicorn/uvicorn workers included). False if none was running."""
    if not paths.pidfile.is_file():
        return False
    try:
        pid = int(paths.pidfile.read_text().strip())
    except ValueError:
        paths.pidfile.unlink(missing_ok=True)
        return False
    stopped = _kill_group(pid, timeout)
    paths.pidfile.unlink(missing_ok=True)
    return stopped


def _kill_group(pid: int, timeout: float) -> bool:
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return False
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def require_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (well within 10 s) with a message naming the URI when the tracking server does not answer.

    Local stores (sqlite:, file:, plain paths) need no server.
    """
    if not uri.startswith(("http://", "https://")):
        return
    if not is_healthy(uri, timeout=timeout):
        raise WtagError(f"MLflow tracking server at {uri} is not reachable (start it with `make tracking` "
                        "or set MLFLOW_TRACKING_URI)")


def configure(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at ``uri`` and ``experiment`` after checking the server answers; return the experiment id.

    Short HTTP retries so that a server that dies mid-run fails the run quickly instead of hanging.
    """
    import mlflow

    require_server(uri)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    mlflow.set_tracking_uri(uri)
    exp = mlflow.set_experiment(experiment)
    return str(exp.experiment_id)


def git_commit(repo: Path | None = None) -> str:
    """The code commit, or ``unknown`` outside git.

    With uncommitted changes to tracked files it is ``<sha>-dirty-<hash of the diff>``, so the same edits
    reuse each other's runs but never a clean commit's, and vice versa.
    """
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=repo, capture_output=True, check=True,
                              timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty-{hashlib.sha256(diff).hexdigest()[:12]}" if diff else sha


def environment_tags() -> dict[str, str]:
    """What a run needs to be reproduced: code commit, Python and key package versions, platform."""
    from importlib import metadata

    tags = {"wtag.git_commit": git_commit(), "wtag.python": platform.python_version(),
            "wtag.platform": platform.platform()}
    for pkg in ("mlflow", "numpy", "awkward", "uproot", "fastjet", "pythia8mc", "xgboost", "tensorflow", "keras",
                "onnx", "onnxruntime-gpu", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"wtag.version.{pkg}"] = metadata.version(pkg)
    return tags


def _as_param(value: Any) -> str:
    return str(value)


def find_finished_run(experiment_id: str, entry_point: str, params: Mapping[str, Any],
                      commit: str | None = None) -> Any | None:
    """The newest FINISHED run of ``entry_point`` with the same parameters and code commit, or None.

    This is the reuse rule of MLflow's multistep_workflow example; outside git nothing is reused.
    """
    from mlflow.tracking import MlflowClient

    commit = commit if commit is not None else git_commit()
    if commit == "unknown":
        return None
    client = MlflowClient()
    runs = client.search_runs(
        [experiment_id],
        filter_string=(f"tags.`wtag.entry_point` = '{entry_point}' and attributes.status = 'FINISHED' "
                       f"and tags.`wtag.git_commit` = '{commit}'"),
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    wanted = {k: _as_param(v) for k, v in params.items()}
    for run in runs:
        if all(run.data.params.get(k) == v for k, v in wanted.items()):
            return run
    return None


@contextlib.contextmanager
def tracked_run(entry_point: str, run_name: str, description: str, params: Mapping[str, Any],
                nested: bool = False, tags: Mapping[str, str] | None = None,
                run_id: str | None = None) -> Iterator[Any]:
    """Start (or, with ``run_id``, resume) a run tagged with the entry point, provenance and a one-line
    description; log params.

    On an exception the run is ended FAILED, so nothing half-logged ever shows as FINISHED.
    """
    import mlflow

    all_tags = {**environment_tags(), "wtag.entry_point": entry_point, **(tags or {})}
    nested = nested or mlflow.active_run() is not None  # a step inside `main` becomes its child run
    with mlflow.start_run(run_id=run_id, run_name=run_name, nested=nested, tags=all_tags,
                          description=description) as run:
        try:
            # A run resumed from `mlflow run` already holds the MLproject parameters as typed by the user.
            existing = mlflow.get_run(run.info.run_id).data.params if run_id else {}
            mlflow.log_params({k: _as_param(v) for k, v in params.items() if k not in existing})
            yield run
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise
