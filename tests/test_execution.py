"""The Dask execution layer: local cluster by default, a real scheduler by address, errors and task order."""
from __future__ import annotations

import os
import time

import dask
import pytest

from wtag.errors import WtagError
from wtag.execution import ExecutionConfig, dask_client, run_tasks, scheduler_address, worker_state


def test_scheduler_address_comes_from_the_argument_then_dask_config() -> None:
    with dask.config.set({"scheduler-address": None}):
        assert scheduler_address("") == ""
        assert scheduler_address("tcp://10.0.0.1:8786") == "tcp://10.0.0.1:8786"
    with dask.config.set({"scheduler-address": "tcp://10.0.0.2:8786"}):  # what DASK_SCHEDULER_ADDRESS sets
        assert scheduler_address("") == "tcp://10.0.0.2:8786"
        assert scheduler_address("tcp://10.0.0.1:8786") == "tcp://10.0.0.1:8786"


@pytest.mark.parametrize("workers", [-1, 1.5, True])
def test_bad_worker_counts_are_refused(workers: object) -> None:
    with pytest.raises(WtagError, match="workers"):
        ExecutionConfig(workers=workers)  # type: ignore[arg-type]


def test_unreachable_scheduler_is_a_one_line_error_naming_it() -> None:
    start = time.monotonic()
    with pytest.raises(WtagError, match=r"Dask scheduler at tcp://127\.0\.0\.1:9 is not reachable") as info:
        with dask_client(ExecutionConfig("tcp://127.0.0.1:9"), connect_timeout=2, quiet=True):
            pass
    assert "\n" not in str(info.value)
    assert time.monotonic() - start < 20


def test_worker_state_outside_a_worker_is_a_fresh_dict() -> None:
    state = worker_state()
    state["x"] = 1
    assert worker_state() == {}


@pytest.mark.slow
def test_local_cluster_runs_single_threaded_worker_processes_and_stops(capfd: pytest.CaptureFixture[str]) -> None:
    with dask_client(ExecutionConfig(workers=2)) as client:
        info = client.scheduler_info(n_workers=-1)["workers"]
        assert len(info) == 2 and all(w["nthreads"] == 1 for w in info.values())
        pids = set(client.run(os.getpid).values())
        assert len(pids) == 2 and os.getpid() not in pids
        cluster = client.cluster
    assert "dashboard http://127.0.0.1:" in capfd.readouterr().err
    assert cluster.status.name == "closed"


@pytest.mark.slow
def test_run_tasks_on_a_real_scheduler_keeps_task_order_and_reports_errors(dask_scheduler: str) -> None:
    with dask_client(ExecutionConfig(dask_scheduler), quiet=True) as client:
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
        seen: list[int] = []
        results = run_tasks(client, int, [("3",), ("10",), ("-4",)], on_result=lambda i, r: seen.append(i))
        assert results == [3, 10, -4] and sorted(seen) == [0, 1, 2]
        errors: dict[int, BaseException] = {}
        results = run_tasks(client, int, [("1",), ("x",), ("2",)], on_error=lambda i, e: errors.setdefault(i, e))
        assert results == [1, None, 2]
        assert list(errors) == [1] and isinstance(errors[1], ValueError)
        with pytest.raises(ValueError, match="invalid literal"):
            run_tasks(client, int, [("y",)])


@pytest.mark.parametrize("entry_point", ["prepare", "train", "main", "score"])
def test_mlproject_entry_points_pass_the_scheduler_to_the_cli(entry_point: str) -> None:
    import shlex

    from mlflow.projects._project_spec import load_project

    from conftest import REPO
    from wtag.cli import build_parser

    spec = load_project(str(REPO)).get_entry_point(entry_point)
    extra = {"input": "a.npy"} if entry_point == "score" else {}
    for scheduler in ("", "tcp://10.1.2.3:8786"):
        argv = shlex.split(spec.compute_command({**extra, "scheduler": scheduler}, storage_dir="/tmp"))
        script = next(i for i, arg in enumerate(argv) if arg.startswith("entry_points/"))
        args = build_parser().parse_args([entry_point, *argv[script + 1:]])
        assert args.scheduler == scheduler
