"""MLflow plumbing: reachability checks, run provenance and reuse of finished runs.

The tracking-server process itself lives in ``wtag.tracking_server``.

All steps log to the server at ``MLFLOW_TRACKING_URI``; this module only takes URIs and paths as arguments
(the CLI and entry points read the environment).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from wtag.errors import WtagError
from wtag.schema import Tag
from wtag.tracking_server import DEFAULT_HOST, DEFAULT_PORT, is_healthy

DEFAULT_EXPERIMENT = "wtag"
DEFAULT_TRACKING_URI = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"


def tracking_uri_from_env() -> str:
    """``MLFLOW_TRACKING_URI``, or the local server ``make tracking`` starts. Called at the edges only."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def require_server(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (well within 10 s) with a message naming the URI when the tracking server does not answer.

    Local stores (sqlite:, file:, plain paths) need no server.
    """
    if not uri.startswith(("http://", "https://")):
        return
    if not is_healthy(uri, timeout=timeout):
        raise WtagError(f"MLflow tracking server at {uri} is not reachable (start it with `make tracking` "
                        "or set MLFLOW_TRACKING_URI)")


# MLflow's HTTP client: one retry after 1 s, 10 s per attempt. MLflow's defaults (7 retries, backoff factor 2,
# 120 s timeout) kept a step whose server died retrying for minutes; with these a lost server fails the step
# within seconds (see ``tracked_run``).
HTTP_RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def configure(uri: str, experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at ``uri`` and ``experiment`` after checking the server answers; return the experiment id.

    Bounded HTTP retries (:data:`HTTP_RETRY_ENV`, unless the environment sets them) so that a server that dies
    mid-run fails the run quickly instead of hanging; runs of this experiment left RUNNING by a process of this
    host that is gone are marked FAILED (:func:`fail_abandoned_runs`).
    """
    import mlflow

    require_server(uri)
    for key, value in HTTP_RETRY_ENV.items():
        os.environ.setdefault(key, value)
    mlflow.set_tracking_uri(uri)
    exp = mlflow.set_experiment(experiment)
    fail_abandoned_runs(str(exp.experiment_id))
    return str(exp.experiment_id)


def _process_start(pid: int) -> float | None:
    """Start time (epoch seconds) of a live process, None when there is no such process."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def owner_tags() -> dict[str, str]:
    """Host, pid and process start time of this process: who owns the runs it starts."""
    pid = os.getpid()
    return {Tag.HOST: platform.node(), Tag.PID: str(pid), Tag.PID_START: f"{_process_start(pid) or 0.0:.2f}"}


def fail_abandoned_runs(experiment_id: str) -> list[str]:
    """Mark FAILED the experiment's RUNNING runs owned by a process of this host that no longer runs (a killed
    step, or one whose tracking server died under it); returns their ids. Other hosts' runs are left alone:
    only their own host can tell whether their process lives."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs = client.search_runs([experiment_id], filter_string=(f"attributes.status = 'RUNNING' and "
                                                              f"tags.`{Tag.HOST}` = '{platform.node()}'"),
                              max_results=1000)
    failed = []
    for run in runs:
        tags = run.data.tags
        try:
            pid, started = int(tags[Tag.PID]), float(tags.get(Tag.PID_START, "0"))
        except (KeyError, ValueError):
            continue
        alive = _process_start(pid)
        if alive is not None and abs(alive - started) < 1.0:
            continue
        client.set_terminated(run.info.run_id, status="FAILED")
        failed.append(run.info.run_id)
        print(f"note: run {run.info.run_id} was left RUNNING by process {pid}, which is gone: marked FAILED",
              file=sys.stderr)
    return failed


def lost_server_error(entry_point: str) -> WtagError | None:
    """A one-line error naming the tracking URI when the HTTP tracking server no longer answers, else None."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    if not uri.startswith(("http://", "https://")) or is_healthy(uri, timeout=3.0):
        return None
    return WtagError(f"MLflow tracking server at {uri} stopped answering during {entry_point}; the run stays "
                     "RUNNING until the next step marks it FAILED (restart the server and rerun: finished steps "
                     "are reused)")


def git_commit(repo: Path | None = None) -> str:
    """The code commit, or ``unknown`` outside git.

    With uncommitted changes to tracked files, or untracked files git does not ignore (a new module), it is
    ``<sha>-dirty-<hash of the diff and of the untracked files' names and contents>``, so the same edits
    reuse each other's runs but never a clean commit's, and vice versa.
    """
    repo = repo or Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        diff = subprocess.run(["git", "diff", "--binary", "HEAD"], cwd=repo, capture_output=True, check=True,
                              timeout=30).stdout
        untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "-z"], cwd=repo,
                                   capture_output=True, check=True, timeout=30).stdout.split(b"\0")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    digest = hashlib.sha256(diff)
    names = sorted(name for name in untracked if name)
    for name in names:
        digest.update(b"\0untracked\0" + name + b"\0")
        with contextlib.suppress(OSError):  # removed meanwhile, or a socket: the name still counts
            digest.update((repo / os.fsdecode(name)).read_bytes())
    return f"{sha}-dirty-{digest.hexdigest()[:12]}" if diff or names else sha


def environment_tags() -> dict[str, str]:
    """What a run needs to be reproduced: code commit, Python and key package versions, platform."""
    from importlib import metadata

    tags = {Tag.GIT_COMMIT: git_commit(), Tag.PYTHON: platform.python_version(),
            Tag.PLATFORM: platform.platform()}
    for pkg in ("mlflow", "numpy", "awkward", "uproot", "fastjet", "pythia8mc", "xgboost", "tensorflow", "keras",
                "onnx", "onnxruntime-gpu", "scikit-learn", "optuna"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            tags[f"{Tag.VERSION_PREFIX}{pkg}"] = metadata.version(pkg)
    return tags


class EpochLogger:
    """Per-epoch metrics to the active run, batched: live for slow Keras epochs, one request per second at
    most for the hundreds of boosting rounds XGBoost reports at once."""

    def __init__(self, run_id: str, interval_s: float = 1.0) -> None:
        self.run_id = run_id
        self.interval_s = interval_s
        self.pending: list = []
        self.last_flush = time.monotonic()

    def __call__(self, epoch: int, logs: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now_ms = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now_ms, epoch) for k, v in logs.items() if math.isfinite(v)]
        if time.monotonic() - self.last_flush >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        from mlflow.tracking import MlflowClient

        if not self.pending:
            return
        client = MlflowClient()
        for start in range(0, len(self.pending), 1000):  # the server's batch limit
            client.log_batch(self.run_id, metrics=self.pending[start:start + 1000], synchronous=True)
        self.pending = []
        self.last_flush = time.monotonic()


def _as_param(value: Any) -> str:
    return str(value)


def same_param(logged: str | None, wanted: str) -> bool:
    """A logged parameter equals a wanted one: the same text, the same finite number or the same truth value in
    other spellings. ``mlflow run`` logs MLproject parameters as typed (``0``, ``1e-3``, ``true``), a step
    started in-process as Python prints them (``0.0``, ``0.001``, ``True``); both must find the same run."""
    if logged == wanted:
        return True
    if logged is None:
        return False
    truth = {"true", "false"}
    if logged.lower() in truth and wanted.lower() in truth:
        return logged.lower() == wanted.lower()
    try:
        a, b = float(logged), float(wanted)
    except ValueError:
        return False
    return math.isfinite(a) and math.isfinite(b) and a == b


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
        filter_string=(f"tags.`{Tag.ENTRY_POINT}` = '{entry_point}' and attributes.status = 'FINISHED' "
                       f"and tags.`{Tag.GIT_COMMIT}` = '{commit}'"),
        order_by=["attributes.start_time DESC"],
        max_results=50,
    )
    wanted = {k: _as_param(v) for k, v in params.items()}
    for run in runs:
        if all(same_param(run.data.params.get(k), v) for k, v in wanted.items()):
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

    all_tags = {**environment_tags(), **owner_tags(), Tag.ENTRY_POINT: entry_point, **(tags or {})}
    nested = nested or mlflow.active_run() is not None  # a step inside `main` becomes its child run
    with mlflow.start_run(run_id=run_id, run_name=run_name, nested=nested, tags=all_tags,
                          description=description) as run:
        try:
            # A run resumed from `mlflow run` already holds the MLproject parameters as typed by the user.
            existing = mlflow.get_run(run.info.run_id).data.params if run_id else {}
            mlflow.log_params({k: _as_param(v) for k, v in params.items() if k not in existing})
            yield run
        except BaseException as exc:
            lost = lost_server_error(entry_point) if not isinstance(exc, KeyboardInterrupt) else None
            if lost is not None:
                # end_run leaves the run locally before it asks the (dead) server, which fails fast now.
                with contextlib.suppress(Exception):
                    mlflow.end_run(status="FAILED")
                raise lost from None
            mlflow.end_run(status="FAILED")
            raise
