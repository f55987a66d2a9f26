"""The local MLflow tracking-server process: start it in its own session, check its health, stop its process group.

``make tracking`` and the test fixtures use it; everything else only needs a tracking URI (see ``wtag.tracking``).
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from wtag.errors import WtagError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_DIR = Path("data") / "mlflow"


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


def free_port(host: str = DEFAULT_HOST) -> int:
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


def start_server(paths: ServerPaths, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = 120.0) -> str:
    """Start ``mlflow server`` in its own process group (SQLite store, local artifact destination).

    Job execution is disabled: otherwise the server forks seven job workers (~2 GB) we never use. Returns the
    server URI once ``/health`` answers; raises WtagError (with the log's tail) if it does not.
    """
    if not 0 < port < 65536:
        raise WtagError(f"port {port} is not a TCP port (1-65535)")
    if paths.root.exists() and not paths.root.is_dir():
        raise WtagError(f"{paths.root}: exists and is not a directory (the server keeps its store there)")
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
    if not is_mlflow_server(pid):
        # A stale pid file: that pid is gone or now belongs to another program, whose group we must not signal.
        paths.pidfile.unlink(missing_ok=True)
        return False
    stopped = _kill_group(pid, timeout)
    paths.pidfile.unlink(missing_ok=True)
    return stopped


def is_mlflow_server(pid: int) -> bool:
    """True when ``pid`` is alive and its command line is an ``mlflow server`` (read from /proc)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [a.decode(errors="replace") for a in argv if a]
    return "server" in words and any(w == "mlflow" or w.endswith("/mlflow") for w in words)


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
