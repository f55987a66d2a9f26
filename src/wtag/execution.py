"""The execution layer: where fanned-out work (generator chunks, imported file groups, scored files) runs.

Dask ``distributed`` is the backend. By default a command starts a ``LocalCluster`` of single-threaded worker
*processes* (Pythia and FastJet want processes, not threads), one per core this process may use, and stops it
when done. Given a scheduler address (``--scheduler``, ``DASK_SCHEDULER_ADDRESS`` or Dask's own config key
``scheduler-address``) it connects to an existing cluster instead: ``dask scheduler`` + ``dask worker`` by
hand, dask-jobqueue, or an analysis facility. Workers write their outputs themselves, so every worker and the
client must see the same filesystem (docs/scale-out.md).

Tasks carry everything that decides their output (seeds, paths, parameters), so results do not depend on the
scheduler, the worker count or on which worker ran what; a task rerun after its worker died gives the same file.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from wtag.errors import WtagError

# Unset in local workers (docs/scale-out.md: set it the same way for workers started by hand).
LOCAL_WORKER_ENV = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
LOCAL_WORKER_ENV_VALUE = None
# Seconds to wait for a remote scheduler to answer before giving up with a message naming it.
CONNECT_TIMEOUT_S = 30


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    """Where tasks run. ``scheduler`` empty: Dask's configured address if any, else a local cluster of
    ``workers`` processes (0: one per usable core)."""

    scheduler: str = ""
    workers: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise WtagError(f"workers must be an integer >= 0 (0: one per core), got {self.workers!r}")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def scheduler_address(scheduler: str = "") -> str:
    """The scheduler to connect to: the argument, else Dask's ``scheduler-address`` config (which Dask fills
    from ``DASK_SCHEDULER_ADDRESS``), else "" for a local cluster."""
    if scheduler:
        return scheduler
    import dask

    return str(dask.config.get("scheduler-address", None) or "")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextlib.contextmanager
def dask_client(config: ExecutionConfig | None = None, max_workers: int | None = None,
                quiet: bool = False, connect_timeout: float = CONNECT_TIMEOUT_S) -> Iterator[Any]:
    """A ``distributed.Client`` for the duration of the block, on a remote scheduler or a local cluster.

    The local cluster has ``config.workers`` (0: available cores) single-threaded worker processes, capped at
    ``max_workers`` (no point starting more workers than tasks); it is stopped when the block ends, so an
    interrupted command leaves no worker behind. The dashboard link is printed to stderr.
    """
    import logging

    from distributed import Client, LocalCluster

    config = config or ExecutionConfig()
    address = scheduler_address(config.scheduler)
    if address:
        try:
            client = Client(address, timeout=connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise WtagError(f"Dask scheduler at {address} is not reachable within {connect_timeout:g} s "
                            f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
        with client:
            if not quiet:
                n = len(client.scheduler_info(n_workers=-1)["workers"])
                _say(f"dask: scheduler {address}, {n} worker(s), dashboard {client.dashboard_link}")
            yield client
        return
    n_workers = config.workers or available_cores()
    if max_workers is not None:
        n_workers = max(1, min(n_workers, max_workers))
    # Port 0: never collide with another command's dashboard (the link says where it is). Worker logs are
    # silenced: task errors reach the client with their exception, and a worker's heartbeat racing the
    # cluster's shutdown otherwise prints a traceback at the end of a successful command. Workers keep glibc's
    # own malloc trimming: Dask's MALLOC_TRIM_THRESHOLD_=65536 made feature building in a worker 20-40% slower
    # (many large short-lived numpy arrays) for no gain here (tasks hold no data between them).
    import dask

    with dask.config.set({LOCAL_WORKER_ENV: LOCAL_WORKER_ENV_VALUE}), \
            LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0",
                         host="127.0.0.1", silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
        if not quiet:
            _say(f"dask: local cluster of {n_workers} worker process(es), dashboard {client.dashboard_link}")
        yield client


def worker_state() -> dict[str, Any]:
    """A dict that lives as long as the current Dask worker (one per worker process), for things built once
    per worker such as an ONNX Runtime session; outside a worker, a fresh dict each call."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return {}
    state = getattr(worker, "_wtag_state", None)
    if state is None:
        state = {}
        worker._wtag_state = state
    return state


def run_tasks(client: Any, fn: Callable[..., Any], tasks: Iterable[tuple[Any, ...]], *,
              on_result: Callable[[int, Any], None] | None = None,
              on_error: Callable[[int, BaseException], None] | None = None, key_prefix: str = "wtag",
              retries: int = 0) -> list[Any]:
    """Submit ``fn(*args)`` for each task, wait for all, and return the results in task order.

    ``on_result(i, result)`` is called as each task finishes (completion order, e.g. to move a progress
    bar). A task that raises: with ``on_error`` the error is handed to it and the task's result is None;
    without, the first error cancels the rest and is raised. ``retries`` reruns a task that raised; a task
    lost with its worker is rescheduled by Dask itself (up to ``distributed.scheduler.allowed-failures``).
    """
    from distributed import as_completed

    tasks = list(tasks)
    futures = [client.submit(fn, *args, key=f"{key_prefix}-{i}-{_token(args)}", pure=False, retries=retries)
               for i, args in enumerate(tasks)]
    index = {f.key: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    try:
        for future in as_completed(futures):
            i = index[future.key]
            if future.status == "error":
                exc = future.exception()
                if on_error is None:
                    raise exc
                on_error(i, exc)
                continue
            results[i] = future.result()
            if on_result is not None:
                on_result(i, results[i])
    finally:
        client.cancel([f for f in futures if not f.done()])
    return results


def _token(args: tuple[Any, ...]) -> str:
    from dask.base import tokenize

    return tokenize(*args)[:12]
