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
from ports import free_port


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
    # `mlflow run` logs MLproject numbers as typed: "1" and 1.0 are one value, a digest-like text is not a number
    assert find_finished_run(exp_id, "prepare", {"a": 1.0, "b": "x"}).info.run_id == run.info.run_id
    assert find_finished_run(exp_id, "prepare", {"a": "1e0"}).info.run_id == run.info.run_id
    assert find_finished_run(exp_id, "prepare", {"b": "x "}) is None


def test_same_param_compares_numbers_by_value_and_text_exactly():
    from wtag.tracking import same_param

    assert same_param("0", "0.0") and same_param("0.001", "1e-3") and same_param("30", "30")
    assert not same_param("0", "0.1") and not same_param(None, "0") and not same_param("flat", "flat ")
    assert not same_param("123e4567", "124e4567")  # overflow to inf: compared as text, different
    assert same_param("nan", "nan") and not same_param("nan", "NaN")
    assert same_param("true", "True") and same_param("False", "false") and not same_param("true", "False")


def test_environment_tags_name_versions():
    tags = environment_tags()
    assert tags["wtag.version.mlflow"] == mlflow.__version__
    assert tags["wtag.python"].startswith("3.11")


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_git_commit_counts_untracked_files_but_not_ignored_ones(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("data/\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "one")
    sha = _git(tmp_path, "rev-parse", "HEAD")
    assert git_commit(tmp_path) == sha
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.root").write_bytes(b"ignored")
    assert git_commit(tmp_path) == sha  # ignored files do not count
    (tmp_path / "new_module.py").write_text("y = 2\n")
    with_new = git_commit(tmp_path)
    assert with_new.startswith(f"{sha}-dirty-")
    (tmp_path / "new_module.py").write_text("y = 3\n")
    edited = git_commit(tmp_path)
    assert edited.startswith(f"{sha}-dirty-") and edited != with_new  # the content counts, not only the name
    (tmp_path / "new_module.py").write_text("y = 2\n")
    assert git_commit(tmp_path) == with_new


@pytest.fixture
def own_server(tmp_path, monkeypatch):
    """A tracking server of this test alone (it gets killed), with the bounded retry settings restored after."""
    from wtag.tracking import HTTP_RETRY_ENV
    from wtag.tracking_server import ServerPaths, start_server, stop_server

    for key, value in HTTP_RETRY_ENV.items():
        monkeypatch.setenv(key, value)
    paths = ServerPaths(tmp_path / "server")
    uri = start_server(paths, port=free_port())
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    try:
        yield uri, paths
    finally:
        stop_server(paths)


@pytest.mark.slow
def test_a_lost_server_fails_the_step_within_30_s_with_one_line_naming_it(own_server):
    from wtag.tracking_server import stop_server

    uri, paths = own_server
    configure(uri, "wtag-test-lost")
    start = time.monotonic()
    with pytest.raises(WtagError) as info:
        with tracked_run("prepare", "lost", "the server dies under it", {"a": 1}):
            stop_server(paths)
            mlflow.log_metric("x", 1.0)
    assert time.monotonic() - start < 30
    message = str(info.value)
    assert f"MLflow tracking server at {uri} stopped answering during prepare" in message and "\n" not in message
    assert mlflow.active_run() is None


@pytest.mark.slow
def test_runs_left_running_by_a_dead_process_are_marked_failed_by_the_next_step(tracking_uri):
    from mlflow.tracking import MlflowClient

    from wtag.tracking import fail_abandoned_runs

    script = ("import os, sys\n"
              "from wtag.tracking import configure, tracked_run\n"
              "configure(os.environ['MLFLOW_TRACKING_URI'], 'wtag-test-abandoned')\n"
              "with tracked_run('prepare', 'killed', 'killed mid-step', {}) as run:\n"
              "    print(run.info.run_id, flush=True)\n"
              "    os.kill(os.getpid(), 9)\n")
    proc = subprocess.run([sys.executable, "-c", script], env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    dead = proc.stdout.split()[0]
    client = MlflowClient()
    assert client.get_run(dead).info.status == "RUNNING"
    assert client.get_run(dead).data.tags["wtag.pid"].isdigit()
    exp_id = configure(tracking_uri, "wtag-test-abandoned")  # the next step
    assert client.get_run(dead).info.status == "FAILED"
    with tracked_run("prepare", "alive", "this process is alive", {}) as run:
        assert fail_abandoned_runs(exp_id) == []  # a live owner's run is left alone
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
