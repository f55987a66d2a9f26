"""The ``evaluate`` step: compare every tagger trained on one dataset and pick the champion.

All taggers of a comparison share one dataset digest, hence the same held-out test set, so their metrics are
comparable. Inference time is measured in a child process pinned to one CPU core with every thread pool
(OpenMP, TensorFlow intra/inter-op, BLAS, ONNX Runtime) set to one thread: TensorFlow's pools are fixed at its
first use, which in ``main`` happened long before, with all cores.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wtag.dataset import PreparedDataset, load_prepared
from wtag.errors import WtagError
from wtag.runs import find_dataset, model_uri, read_test_scores, tagger_runs, train_config
from wtag.schema import Artifact, EntryPoint, Tag

# metric -> True when larger is better.
DEFAULT_METRIC = "test_r50"
CHAMPION_METRICS: dict[str, bool] = {"test_r50": True, "test_r30": True, "test_auc": True,
                                     "test_mass_sculpting": False}
TABLE_METRICS = ("test_auc", "test_r50", "test_r30", "test_mass_sculpting", "test_accuracy")
TIMING_MAX_JETS = 10_000
TIMING_REPEATS = 3
# MLflow's own files in a logged model directory: environment specs and examples, not the model.
_MLFLOW_MODEL_FILES = frozenset({"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt",
                                 "input_example.json", "serving_input_example.json", "registered_model_meta"})
# Thread-count knobs honoured by the libraries a tagger may use; read once at their start-up.
_ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
                   "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


@dataclasses.dataclass
class Candidate:
    """One tagger run in a comparison, with what the table reports about it."""

    run_id: str
    tagger: str
    family: str
    metrics: dict[str, float]
    params: dict[str, str]
    model_uri: str
    native_bytes: int = 0
    onnx_bytes: float = math.nan
    native_ms_per_1k: float = math.nan
    onnx_ms_per_1k: float = math.nan
    note: str = ""


# ---------------------------------------------------------------------------------------------------------
# Champion choice


def _sort_value(value: float, higher_is_better: bool) -> float:
    """A key where larger is better; NaN is the worst, +inf rejection (no background passes) the best."""
    if value is None or math.isnan(value):
        return -math.inf
    return value if higher_is_better else -value


def pick_champion(candidates: Sequence[Candidate], metric: str) -> tuple[Candidate, str]:
    """The best candidate by ``metric`` and a one-paragraph reason.

    Ties (equal metric values) go to the higher test_auc, then the faster native inference, then the tagger
    name, so the choice never depends on run order.
    """
    if metric not in CHAMPION_METRICS:
        raise WtagError(f"metric '{metric}' cannot choose a champion (use one of {', '.join(CHAMPION_METRICS)})")
    if not candidates:
        raise WtagError("no tagger runs to choose a champion from")
    higher = CHAMPION_METRICS[metric]

    def key(c: Candidate) -> tuple[float, float, float, str]:
        speed = c.native_ms_per_1k if not math.isnan(c.native_ms_per_1k) else math.inf
        return (-_sort_value(c.metrics.get(metric, math.nan), higher),
                -_sort_value(c.metrics.get("test_auc", math.nan), True), speed, c.tagger)

    ranked = sorted(candidates, key=key)
    best = ranked[0]
    value = best.metrics.get(metric, math.nan)
    if math.isnan(value):
        raise WtagError(f"no tagger run has a finite {metric}")
    direction = "highest" if higher else "lowest"
    reason = (f"champion: {best.tagger} (run {best.run_id}) with the {direction} {metric} = {value:.6g} "
              f"among {len(candidates)} taggers")
    if len(ranked) > 1:
        second = ranked[1]
        reason += f"; runner-up {second.tagger} with {second.metrics.get(metric, math.nan):.6g}"
        if second.metrics.get(metric) == value:
            reason += " (tie broken by test_auc, then inference time, then name)"
    return best, reason + "."


# ---------------------------------------------------------------------------------------------------------
# Tables


def _columns() -> list[str]:
    return ["tagger", "family", *TABLE_METRICS, "train_time_s", "native_bytes", "onnx_bytes", "native_ms_per_1k",
            "onnx_ms_per_1k", "run_id", "note"]


def _row(c: Candidate) -> dict[str, Any]:
    return {"tagger": c.tagger, "family": c.family, **{m: c.metrics.get(m, math.nan) for m in TABLE_METRICS},
            "train_time_s": c.metrics.get("train_time_s", math.nan), "native_bytes": c.native_bytes,
            "onnx_bytes": c.onnx_bytes, "native_ms_per_1k": c.native_ms_per_1k, "onnx_ms_per_1k": c.onnx_ms_per_1k,
            "run_id": c.run_id, "note": c.note}


def table_csv(candidates: Sequence[Candidate]) -> str:
    """The comparison as CSV, full precision (NaN where a figure could not be measured)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_columns(), lineterminator="\n")
    writer.writeheader()
    for c in candidates:
        writer.writerow(_row(c))
    return out.getvalue()


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return format(value, spec)


def table_markdown(candidates: Sequence[Candidate], champion: Candidate | None = None) -> str:
    """The comparison as a Markdown table (the champion in bold)."""
    head = ("| tagger | family | test_auc | test_r50 | test_r30 | test_mass_sculpting | model size [kB] "
            "| ONNX size [kB] | ms / 1k jets (native, 1 thread) | ms / 1k jets (ONNX, 1 thread) |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for c in candidates:
        name = f"**{c.tagger}**" if champion is not None and c.run_id == champion.run_id else c.tagger
        m = c.metrics
        rows.append(f"| {name} | {c.family} | {_fmt(m.get('test_auc', math.nan), '.4f')} "
                    f"| {_fmt(m.get('test_r50', math.nan), '.1f')} | {_fmt(m.get('test_r30', math.nan), '.1f')} "
                    f"| {_fmt(m.get('test_mass_sculpting', math.nan), '.3f')} | {c.native_bytes / 1e3:.1f} "
                    f"| {_fmt(c.onnx_bytes / 1e3, '.1f')} | {_fmt(c.native_ms_per_1k, '.2f')} "
                    f"| {_fmt(c.onnx_ms_per_1k, '.2f')} |\n")
    return head + "".join(rows)


# ---------------------------------------------------------------------------------------------------------
# Measurements


def _model_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*")
               if p.is_file() and p.relative_to(directory).parts[0] not in _MLFLOW_MODEL_FILES)


def _download(uri: str, dst: Path) -> Path:
    import mlflow

    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))


def _best_seconds(fn: Callable[[], Any], repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _time_one(job: Mapping[str, Any], ds: PreparedDataset, onnx_too: bool, repeats: int,
              max_jets: int) -> dict[str, Any]:
    """Load one tagger from its local model directory; time native predict (and ONNX Runtime) on the test set."""
    import importlib

    module, cls_name = job["class_path"].split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    tagger = cls.load_logged(job["model_dir"], train_config(job["params"]), ds.standardization)
    inputs = {k: v[:max_jets] for k, v in ds.test.inputs(tagger.inputs).items()}
    n = len(next(iter(inputs.values())))
    warm = {k: v[:64] for k, v in inputs.items()}
    tagger.predict(warm)
    result: dict[str, Any] = {"native_ms_per_1k": _best_seconds(lambda: tagger.predict(inputs), repeats) / n * 1e6}
    if onnx_too:
        try:
            from wtag.inference import create_session

            blob = tagger.to_onnx().SerializeToString()
            session = create_session(blob, device="cpu", intra_op_threads=1)
            session.run(None, warm)
            result["onnx_bytes"] = len(blob)
            result["onnx_ms_per_1k"] = _best_seconds(lambda: session.run(None, inputs), repeats) / n * 1e6
        except Exception as exc:  # noqa: BLE001 - a table cell; the export step reports conversion errors
            result["note"] = f"ONNX: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    return result


def timing_worker(job_path: str, result_path: str) -> None:
    """Child-process side of :func:`measure_inference`: one core, one thread everywhere, then time each tagger."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    job = json.loads(Path(job_path).read_text())
    if job["tensorflow"]:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    ds = load_prepared(job["dataset"])
    results = {}
    for item in job["taggers"]:
        try:
            results[item["run_id"]] = _time_one(item, ds, job["onnx"], job["repeats"], job["max_jets"])
        except Exception as exc:  # noqa: BLE001 - reported per tagger in the table
            results[item["run_id"]] = {"note": f"timing failed: {type(exc).__name__}: {exc}"[:200]}
    Path(result_path).write_text(json.dumps(results))


def measure_inference(candidates: Sequence[Candidate], model_dirs: Mapping[str, Path], ds: PreparedDataset,
                      onnx_too: bool = True, repeats: int = TIMING_REPEATS, max_jets: int = TIMING_MAX_JETS,
                      timeout: float = 1800.0) -> None:
    """Fill in single-thread inference times (and ONNX sizes) per 1,000 test jets, in one child process."""
    from wtag.taggers import REGISTRY, tagger_class

    if not candidates:
        return
    uses_tf = any(tagger_class(c.tagger).flavor == "keras" for c in candidates)
    job = {"dataset": str(ds.root), "onnx": onnx_too, "repeats": repeats, "max_jets": max_jets,
           "tensorflow": uses_tf,
           "taggers": [{"run_id": c.run_id, "class_path": REGISTRY[c.tagger], "model_dir": str(model_dirs[c.run_id]),
                        "params": c.params} for c in candidates]}
    env = {**os.environ, **_ONE_THREAD_ENV, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with tempfile.TemporaryDirectory() as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        code = f"from wtag.evaluation import timing_worker; timing_worker({str(job_path)!r}, {str(result_path)!r})"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not result_path.is_file():
            tail = "\n".join(proc.stderr.splitlines()[-5:])
            for c in candidates:
                c.note = f"timing process failed (exit {proc.returncode})"
            print(f"evaluate: inference timing failed (exit {proc.returncode}):\n{tail}", file=sys.stderr)
            return
        results = json.loads(result_path.read_text())
    for c in candidates:
        r = results.get(c.run_id, {})
        c.native_ms_per_1k = float(r.get("native_ms_per_1k", math.nan))
        c.onnx_ms_per_1k = float(r.get("onnx_ms_per_1k", math.nan))
        c.onnx_bytes = float(r.get("onnx_bytes", math.nan))
        c.note = r.get("note", "")


def _candidate(run: Any) -> Candidate:
    return Candidate(run_id=run.info.run_id, tagger=run.data.tags[Tag.TAGGER],
                     family=run.data.tags.get(Tag.FAMILY, ""), metrics=dict(run.data.metrics),
                     params=dict(run.data.params), model_uri=model_uri(run.info.run_id))


# ---------------------------------------------------------------------------------------------------------
# The step


def compare(experiment_id: str, runs: Sequence[Any], timing: bool = True,
            onnx_too: bool = True) -> tuple[list[Candidate], PreparedDataset, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Candidates (``runs``: tagger runs on one dataset) with sizes and timings, the dataset, and test scores."""
    digest = runs[0].data.params["dataset_digest"]
    ds = find_dataset(experiment_id, digest)
    candidates = sorted((_candidate(r) for r in runs), key=lambda c: c.tagger)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dirs = {}
        for c in candidates:
            model_dirs[c.run_id] = _download(c.model_uri, Path(tmp) / c.run_id)
            c.native_bytes = _model_bytes(model_dirs[c.run_id])
            curves[c.tagger] = read_test_scores(c.run_id, Path(tmp) / c.run_id / "scores")
        if timing:
            measure_inference(candidates, model_dirs, ds, onnx_too=onnx_too)
    return candidates, ds, curves


def _eval_params(metric: str, digest: str, train_run_id: str | None, candidates: Sequence[str]) -> dict[str, str]:
    return {"metric": metric, "dataset_digest": digest, "train_run_id": train_run_id or "",
            "candidate_runs": ",".join(sorted(candidates))}


def evaluate_step(experiment_id: str, dataset_digest: str | None, metric: str = DEFAULT_METRIC,
                  train_run_id: str | None = None, run_id: str | None = None, timing: bool = True,
                  onnx_too: bool = True) -> tuple[str, str]:
    """Compare the taggers of one dataset, log an ``evaluate`` run, and return (its run id, champion run id).

    A FINISHED evaluation with the same metric, dataset, train run, candidate runs and code commit is reused
    (unless ``run_id``, a run created by ``mlflow run``, is given). ``timing`` measures single-thread inference
    per 1,000 jets in a child process; ``onnx_too`` also converts each tagger to ONNX there for its size and
    ONNX Runtime time.
    """
    import mlflow

    from wtag import plots
    from wtag.tracking import find_finished_run, tracked_run

    if metric not in CHAMPION_METRICS:
        raise WtagError(f"metric '{metric}' cannot choose a champion (use one of {', '.join(CHAMPION_METRICS)})")
    runs = tagger_runs(experiment_id, dataset_digest)
    digest = runs[0].data.params["dataset_digest"]
    params = _eval_params(metric, digest, train_run_id, [r.info.run_id for r in runs])
    if run_id is None:
        previous = find_finished_run(experiment_id, EntryPoint.EVALUATE, params)
        if previous is not None and previous.data.tags.get(Tag.CHAMPION_RUN_ID):
            champion_id = previous.data.tags[Tag.CHAMPION_RUN_ID]
            print(f"evaluate: reusing run {previous.info.run_id} (champion {champion_id})", file=sys.stderr)
            return str(previous.info.run_id), str(champion_id)

    description = f"compare {len(runs)} taggers on dataset {digest[:8]} by {metric}"
    with tracked_run(EntryPoint.EVALUATE, f"evaluate-{digest[:8]}-{metric}", description, params,
                     nested=mlflow.active_run() is not None and run_id is None,
                     tags={Tag.DATASET_DIGEST: digest}, run_id=run_id) as run:
        candidates, ds, curves = compare(experiment_id, runs, timing=timing, onnx_too=onnx_too)
        champion, reason = pick_champion(candidates, metric)
        value = champion.metrics[metric]
        markdown = table_markdown(candidates, champion)
        mlflow.log_text(table_csv(candidates), Artifact.COMPARISON_CSV)
        mlflow.log_text(markdown, Artifact.COMPARISON_MD)
        timing_note = (f"Inference time: best of {TIMING_REPEATS} passes over the test set (at most "
                       f"{TIMING_MAX_JETS:,} jets) in a fresh process on one CPU core, one thread in every pool; "
                       "native Keras times include model.predict's fixed per-call overhead." if timing
                       else "Inference not timed.")
        mlflow.log_text(f"{reason}\n\nDataset {digest} ({ds.source}, {len(ds.test)} test jets). {timing_note}\n\n"
                        f"{markdown}", Artifact.CHAMPION_TXT)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "roc_all.png"
            plots.plot_roc(curves, path, baseline="cut" if "cut" in curves else None)
            mlflow.log_artifact(str(path))
        mlflow.set_tags({Tag.CHAMPION_RUN_ID: champion.run_id, Tag.CHAMPION_TAGGER: champion.tagger,
                         Tag.CHAMPION_METRIC: metric, Tag.CHAMPION_VALUE: f"{value:.6g}"})
        per_tagger = {}
        for c in candidates:
            for key, figure in (("ms_per_1k", c.native_ms_per_1k), ("onnx_ms_per_1k", c.onnx_ms_per_1k),
                                ("native_bytes", float(c.native_bytes)), ("onnx_bytes", c.onnx_bytes)):
                if math.isfinite(figure):
                    per_tagger[f"{c.tagger}.{key}"] = figure
        mlflow.log_metrics({**per_tagger, **({f"champion_{metric}": value} if math.isfinite(value) else {})})
        print(f"evaluate: {reason}\n{markdown}", file=sys.stderr)
        return str(run.info.run_id), champion.run_id
