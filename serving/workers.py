"""Worker processes: ``--workers N`` servers share the HTTP and gRPC ports (SO_REUSEPORT: the kernel spreads
connections over them), each with its own ONNX Runtime session, batcher and decode processes, so parsing and
features use every core. On a GPU they share the device, each with its own CUDA context and memory arena.

The parent supervises: it starts the workers (spawned, never forked from a process with threads), waits until
each has loaded its models (a worker that fails to start stops them all, with its one-line error), restarts a
worker that dies later, and on SIGTERM or Ctrl-C asks every worker to drain (in-flight requests finish, new
connections go to no one) and waits for them. /metrics, answered by any worker, aggregates all of them through
prometheus_client's multiprocess mode (one folder of value files, made and removed here)."""
from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from serving.settings import ServerSettings
from serving.telemetry import MULTIPROC_ENV
from wtag.errors import WtagError

# serving.app.serve_process: (models, host, port, settings, grpc_port, *, sock, ready) -> None
ServeProcess = Callable[..., Any]

log = logging.getLogger("wtag.serving")
START_TIMEOUT_S = 600.0
# A drain may take the HTTP grace, then the gRPC grace, then stopping the decode processes.
DRAIN_TIMEOUT_S = 30.0


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with SO_REUSEPORT, so every worker can bind the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise WtagError(f"cannot listen on {host}:{port} ({exc.strerror})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(serve_process: ServeProcess, model: Any, host: str, port: int, settings: ServerSettings,
            grpc_port: int, slot: int, events: mp.Queue) -> None:
    """One worker process: its own socket on the shared port, then ``serve_process`` (``serving.app``'s)."""
    try:
        sock = listening_socket(host, port)
        serve_process(model, host, port, settings, grpc_port, sock=sock,
                      ready=lambda: events.put(("ready", slot, os.getpid(), "")))
    except WtagError as exc:
        events.put(("failed", slot, os.getpid(), str(exc)))
        raise SystemExit(2) from None


class Supervisor:
    def __init__(self, serve_process: ServeProcess, model: Any, host: str, port: int, settings: ServerSettings,
                 grpc_port: int, workers: int) -> None:
        self.args = (serve_process, model, host, port, settings, grpc_port)
        self.workers = workers
        self.context = mp.get_context("spawn")
        self.events: mp.Queue = self.context.Queue()
        self.procs: dict[int, BaseProcess] = {}
        self.stopping = False

    def start(self, slot: int) -> None:
        proc = self.context.Process(target=_worker, args=(*self.args, slot, self.events), name=f"wtag-worker-{slot}")
        proc.start()
        self.procs[slot] = proc

    def wait_ready(self) -> None:
        ready: set[int] = set()
        deadline = time.monotonic() + START_TIMEOUT_S
        while len(ready) < self.workers:
            try:
                kind, slot, pid, message = self.events.get(timeout=1.0)
            except Exception:  # noqa: BLE001  (queue.Empty)
                dead = [s for s, p in self.procs.items() if p.exitcode is not None]
                if dead:
                    raise WtagError(f"worker {dead[0]} exited with status {self.procs[dead[0]].exitcode} while "
                                    "starting") from None
                if time.monotonic() > deadline:
                    raise WtagError(f"workers not ready after {START_TIMEOUT_S:.0f} s") from None
                continue
            if kind == "failed":
                raise WtagError(message)
            ready.add(slot)
            log.info("worker %d ready (pid %d)", slot, pid)

    def watch(self) -> None:
        """Restart workers that die, until asked to stop."""
        while not self.stopping:
            time.sleep(0.5)
            for slot, proc in list(self.procs.items()):
                if proc.exitcode is not None and not self.stopping:
                    log.error("worker %d (pid %s) exited with status %s; starting another", slot, proc.pid,
                              proc.exitcode)
                    _mark_dead(proc.pid)
                    self.start(slot)

    def stop(self) -> None:
        """Ask every worker to drain, wait for them, then make sure none is left."""
        self.stopping = True
        for proc in self.procs.values():
            if proc.exitcode is None and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for proc in self.procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.exitcode is None:
                proc.kill()
                proc.join()


def _mark_dead(pid: int | None) -> None:
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def supervise(serve_process: ServeProcess, model: Any, host: str, port: int, settings: ServerSettings,
              grpc_port: int, workers: int) -> None:
    """Run ``workers`` processes of ``serve_process`` on the shared ports until SIGTERM or Ctrl-C, then drain
    them. The caller passes the server function, so this module never imports the app."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    listening_socket(host, port).close()  # a busy port is one clear error here, not N worker failures
    metrics_dir = tempfile.mkdtemp(prefix="wtag-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by the workers, which import prometheus_client afresh
    supervisor = Supervisor(serve_process, model, host, port, settings, grpc_port, workers)

    def on_signal(signum: int, frame: object) -> None:
        supervisor.stopping = True

    handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for slot in range(workers):
            supervisor.start(slot)
        supervisor.wait_ready()
        log.info("%d workers serving http://%s:%d%s", workers, host, port,
                 f" and gRPC on port {grpc_port}" if grpc_port else "")
        supervisor.watch()
        log.info("draining %d workers", workers)
    finally:
        supervisor.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(metrics_dir, ignore_errors=True)
