from __future__ import annotations

import os
import subprocess
import sys
import time

import mlflow
import pytest

from wtag.errors import WtagError
from wtag.tracking import (
    configure,
    environment_tags,
    find_finished_run,
    git_commit,
    require_server,
    tracked_run,
)
from wtag.tracking_server import free_port


def test_unreachable_server_fails_fast_naming_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(WtagError, match=uri.replace(".", r"\.")):
        require_server(uri)
    assert time.monotonic() - start < 10


def test_train_cli_fails_fast_when_server_is_unreachable(tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "wtag.cli", "train", "--model", "cut", "--data-dir", str(tmp_path)],
                          env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True,
                          timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 2
    assert uri in proc.stderr and "not reachable" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 30  # interpreter start-up included; the check itself is bounded at 5 s
    assert not any(tmp_path.iterdir())


def test_tracked_run_records_provenance_and_fails_cleanly(tracking_uri):
    exp_id = configure(tracking_uri, "wtag-test-tracking")
    with tracked_run("prepare", "ok-run", "a test run", {"a": 1, "b": "x"}) as run:
        pass
    finished = mlflow.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    assert finished.data.tags["wtag.entry_point"] == "prepare"
    assert finished.data.tags["mlflow.note.content"] == "a test run"
    assert finished.data.tags["wtag.git_commit"] == git_commit()
    assert finished.data.params == {"a": "1", "b": "x"}
    with pytest.raises(RuntimeError):
        with tracked_run("prepare", "bad-run", "fails", {"a": 2}) as bad:
            raise RuntimeError("boom")
    assert mlflow.get_run(bad.info.run_id).info.status == "FAILED"
    assert find_finished_run(exp_id, "prepare", {"a": 1}).info.run_id == run.info.run_id
    assert find_finished_run(exp_id, "prepare", {"a": 2}) is None  # failed runs are never reused
    assert find_finished_run(exp_id, "train", {"a": 1}) is None
    assert find_finished_run(exp_id, "prepare", {"a": 1}, commit="0" * 40) is None


def test_environment_tags_name_versions():
    tags = environment_tags()
    assert tags["wtag.version.mlflow"] == mlflow.__version__
    assert tags["wtag.python"].startswith("3.11")
