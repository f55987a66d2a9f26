from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from ports import free_port
from wtag.tracking_server import ServerPaths, is_healthy, is_mlflow_server, start_server, stop_server


def test_session_server_is_a_real_mlflow_server(tracking_server):
    assert is_healthy(tracking_server)
    client = MlflowClient(tracking_server)
    assert client.search_experiments()  # the SQL store answers


@pytest.mark.slow
def test_start_and_stop_kill_the_whole_process_group(tmp_path):
    paths = ServerPaths(tmp_path / "srv")
    uri = start_server(paths, port=free_port())
    pid = int(paths.pidfile.read_text())
    pgid = os.getpgid(pid)
    assert is_healthy(uri)
    assert start_server(paths, port=int(uri.rsplit(":", 1)[1])) == uri  # idempotent while healthy
    assert paths.db.is_file()
    assert stop_server(paths)
    assert not paths.pidfile.exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
    assert not is_healthy(uri)
    assert not stop_server(paths)


def test_stop_with_a_stale_pid_file_signals_nobody(tmp_path):
    """A pid file left behind whose pid now belongs to another program: stop must not signal that group."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        paths = ServerPaths(tmp_path / "srv")
        paths.root.mkdir()
        paths.pidfile.write_text(f"{other.pid}\n")
        assert not is_mlflow_server(other.pid)
        assert not stop_server(paths)
        assert not paths.pidfile.exists()
        assert other.poll() is None  # still alive: never signalled
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()


def test_stop_with_a_pid_file_of_a_dead_process(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    paths = ServerPaths(tmp_path / "srv")
    paths.root.mkdir()
    paths.pidfile.write_text(f"{dead.pid}\n")
    assert not stop_server(paths)
    assert not paths.pidfile.exists()
