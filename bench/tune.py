"""Tuning benchmark: does a study move the test rejection by more than the seed spread, and how well do trials
spread over Dask workers? Markdown tables on stdout.

    python bench/tune.py compare --model dnn --n-trials 20 [--sample benchmark] [--seeds 3]
    python bench/tune.py efficiency --model dnn --n-trials 6 [--sample default]

Both run the real commands (``wtag tune``, ``wtag train``) against ``MLFLOW_TRACKING_URI`` (start one with
``make tracking``) and read the runs back. ``compare`` tunes (or resumes the study), then trains the tagger with
and without the best parameters for each seed; training reuse makes a rerun cheap. ``efficiency`` runs the same
random-sampled trials (same sampler seed, no pruning, each study in its own journal) on a standing ``dask
scheduler`` with one and with two single-threaded ``dask worker`` processes, compares the trials per hour the
``tune`` runs log, and reads the scheduler's CPU time.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import psutil

from wtag.errors import WtagError, exit_status
from wtag.schema import Tag

EXPERIMENT = "wtag-bench-tune"


def wtag(*args: str) -> None:
    """Run one ``wtag`` command; its progress goes to this terminal, a failure stops the benchmark."""
    command = [str(Path(sys.executable).with_name("wtag")), *args, "--experiment", EXPERIMENT]
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    done = subprocess.run(command, stdout=sys.stderr)  # stdout carries only the tables
    if done.returncode != 0:
        raise WtagError(f"{' '.join(command[1:3])} failed with exit status {done.returncode}")


def newest_run(client, entry_point: str, tagger: str, **params: str):
    """The newest run of ``entry_point`` for ``tagger`` whose logged params equal ``params`` (an absent param
    counts as ""): a reused training makes no new run, so "newest" alone could name another seed's run."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id], f"tags.`{Tag.ENTRY_POINT}` = '{entry_point}' and "
                                                   f"tags.`{Tag.TAGGER}` = '{tagger}'",
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        if all(run.data.params.get(k, "") == v for k, v in params.items()):
            return run
    raise WtagError(f"no {entry_point} run of {tagger} with {params} in experiment {EXPERIMENT}")


def _pm(values: list[float]) -> str:
    return f"{np.mean(values):.1f} +- {np.std(values, ddof=1) if len(values) > 1 else 0.0:.1f}"


def compare(args: argparse.Namespace, client) -> None:
    data = ["--sample", args.sample, "--data-dir", str(args.data_dir)]
    start = time.monotonic()
    wtag("tune", "--model", args.model, "--n-trials", str(args.n_trials), *data, *args.tune_args)
    tune_seconds = time.monotonic() - start
    tune_run = newest_run(client, "tune", args.model)
    rows: dict[str, list] = {"untuned": [], "tuned": []}
    for seed in args.seeds:
        for label, source in (("untuned", ""), ("tuned", tune_run.info.run_id)):
            extra = ["--params-from", source] if source else []
            wtag("train", "--model", args.model, "--train-seed", str(seed), *data, *extra, *args.train_args)
            rows[label].append(newest_run(client, "train_tagger", args.model, train_seed=str(seed),
                                          params_from=source))
    best = {k[len("best_"):]: v for k, v in tune_run.data.params.items() if k.startswith("best_")}
    m = tune_run.data.metrics
    print(f"\n{args.model} on the {args.sample} sample: study {tune_run.data.params.get('study')} (run "
          f"{tune_run.info.run_id[:8]}), {int(m.get('n_complete', 0))} complete, {int(m.get('n_pruned', 0))} "
          f"pruned, {int(m.get('n_failed', 0))} failed trials in {tune_seconds / 60:.1f} min (this command); "
          f"best val objective {m.get('best_objective', float('nan')):.4f} +- "
          f"{m.get('best_objective_err', float('nan')):.4f}; load average {os.getloadavg()[0]:.1f}")
    print("best parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(best.items())) + "\n")
    print("| training | seeds | test_r50 per seed (+- bootstrap) | test_r50 mean +- seed std | "
          "test_auc mean +- seed std | train time [s] |")
    print("|---|---|---|---:|---:|---:|")
    means = {}
    for label, runs in rows.items():
        r50 = [r.data.metrics["test_r50"] for r in runs]
        auc = [r.data.metrics["test_auc"] for r in runs]
        per = ", ".join(f"{r.data.metrics['test_r50']:.1f} +- {r.data.metrics.get('test_r50_err', 0):.1f}"
                        for r in runs)
        seconds = np.mean([r.data.metrics.get("train_time_s", np.nan) for r in runs])
        means[label] = (np.mean(r50), np.std(r50, ddof=1) if len(r50) > 1 else 0.0, len(r50))
        print(f"| {label} | {', '.join(map(str, args.seeds))} | {per} | {_pm(r50)} | "
              f"{np.mean(auc):.4f} +- {np.std(auc, ddof=1) if len(auc) > 1 else 0.0:.4f} | {seconds:.0f} |")
    (mt, st, n), (mu, su, _) = means["tuned"], means["untuned"]
    spread = np.hypot(st, su) / np.sqrt(n) if n > 1 else float("nan")
    print(f"\ntuned - untuned: {mt - mu:+.1f} in test_r50 = {(mt - mu) / spread:+.1f} sigma of the seed spread "
          f"(sqrt(s_t^2 + s_u^2) / sqrt({n}) = {spread:.1f}); the seed std itself is {st:.1f} tuned, {su:.1f} untuned")


@contextlib.contextmanager
def standing_cluster(n_workers: int, logs: Path) -> Iterator[tuple[str, psutil.Process, list[psutil.Process]]]:
    """A ``dask scheduler`` and ``n_workers`` single-threaded ``dask worker`` processes on 127.0.0.1, started
    before the command as on a real cluster (their start-up is not the study's). Yields the address and the
    scheduler's and workers' processes, whose CPU time the benchmark reads."""
    from distributed import Client

    scheduler_file = logs / "scheduler.json"
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        with open(logs / f"{name}.log", "w") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))
        return procs[-1]

    try:
        scheduler = start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address",
                                        "127.0.0.1:0", "--scheduler-file", str(scheduler_file)])
        deadline = time.monotonic() + 120
        while not scheduler_file.is_file():
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise WtagError(f"dask scheduler did not start; see {logs / 'scheduler.log'}")
            time.sleep(0.2)
        time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [start(f"worker{i}", ["worker", address, "--nthreads", "1", "--nworkers", "1", "--host",
                                        "127.0.0.1", "--no-dashboard", "--name", f"w{i}"]) for i in range(n_workers)]
        with Client(address, timeout=30) as client:
            client.wait_for_workers(n_workers, timeout=120)
        # --nworkers 1 runs the worker in a child of a nanny: count the whole tree
        yield address, psutil.Process(scheduler.pid), [psutil.Process(w.pid) for w in workers]
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


def _cpu_seconds(procs: Sequence[psutil.Process]) -> float:
    """User + system CPU seconds of processes and their children."""
    total = 0.0
    for proc in procs:
        for p in (proc, *proc.children(recursive=True)):
            try:
                t = p.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
    return total


def efficiency(args: argparse.Namespace, client) -> None:
    data = ["--sample", args.sample, "--data-dir", str(args.data_dir)]
    wtag("prepare", *data)
    rows = []
    with tempfile.TemporaryDirectory(prefix="wtag-bench-tune-") as tmp:
        for workers in (1, 2):
            logs = Path(tmp) / f"cluster{workers}"
            logs.mkdir()
            with standing_cluster(workers, logs) as (address, scheduler, worker_procs):
                load_before = os.getloadavg()[0]
                cpu_scheduler, cpu_workers = _cpu_seconds([scheduler]), _cpu_seconds(worker_procs)
                start = time.monotonic()
                wtag("tune", "--model", args.model, "--n-trials", str(args.n_trials), *data, "--scheduler", address,
                     "--parallel", str(workers), "--sampler", "random", "--sampler-seed", "7", "--pruner", "none",
                     "--storage", str(Path(tmp) / f"workers{workers}.journal"), *args.tune_args)
                wall = time.monotonic() - start
                cpu_scheduler = _cpu_seconds([scheduler]) - cpu_scheduler
                cpu_workers = _cpu_seconds(worker_procs) - cpu_workers
            run = newest_run(client, "tune", args.model)
            trials = client.search_runs([run.info.experiment_id],
                                        f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
            busy = sum(t.data.metrics.get("train_time_s", 0.0) for t in trials)
            spans = sum((t.info.end_time - t.info.start_time) / 1000.0 for t in trials if t.info.end_time)
            rows.append((workers, run.data.metrics["trials_per_hour"], wall, busy, spans, len(trials), cpu_scheduler,
                         cpu_workers, load_before, os.getloadavg()[0]))
    base = rows[0][1]
    print(f"\n{args.model} on the {args.sample} sample, {args.n_trials} trials (random sampler, seed 7, no pruning), "
          f"on a standing `dask scheduler` with single-threaded `dask worker` processes, {os.cpu_count()} cores\n")
    print("| workers | trials/hour | parallel efficiency | command wall [s] | trial runs' wall [s] | trial training [s] | "
          "workers' time in trial runs | workers' CPU [s] | scheduler CPU [s] (share of wall) | load avg before, after |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for workers, tph, wall, busy, spans, n, cpu_s, cpu_w, before, after in rows:
        print(f"| {workers} | {tph:.1f} | {tph / (workers * base):.0%} | {wall:.0f} | {spans:.0f} ({n} runs) | "
              f"{busy:.0f} | {spans / (workers * wall):.0%} | {cpu_w:.0f} | {cpu_s:.1f} ({cpu_s / wall:.1%}) | "
              f"{before:.1f}, {after:.1f} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/tune.py", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("compare", "efficiency"))
    parser.add_argument("--model", default="dnn")
    parser.add_argument("--n-trials", type=int, default=20)
    parser.add_argument("--sample", default="benchmark", choices=("default", "benchmark"))
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="train seeds (compare)")
    parser.add_argument("--tune-args", type=shlex.split, default=[],
                        help="further wtag tune options in one string, e.g. --tune-args='--epochs 20'")
    parser.add_argument("--train-args", type=shlex.split, default=[], help="further wtag train options, likewise")
    args = parser.parse_args(argv)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        parser.error("set MLFLOW_TRACKING_URI (make tracking starts a server on http://127.0.0.1:5000)")

    def run() -> int:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        (compare if args.mode == "compare" else efficiency)(args, client)
        return 0

    return exit_status(run, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
