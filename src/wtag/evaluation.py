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
from wtag.metrics import spread_of_difference
from wtag.runs import (
    candidate_label,
    decorrelation_of,
    find_dataset,
    model_uri,
    read_test_arrays,
    tagger_runs,
    train_config,
)
from wtag.schema import DECORRELATION_NONE, Artifact, EntryPoint, Tag
from wtag.taggers.base import TrainConfig

# metric -> True when larger is better.
DEFAULT_METRIC = "test_r50"
CHAMPION_METRICS: dict[str, bool] = {"test_r50": True, "test_r30": True, "test_auc": True,
                                     "test_mass_sculpting": False}
TABLE_METRICS = ("test_auc", "test_r50", "test_r30", "test_mass_sculpting", "test_inv_jsd", "test_accuracy",
                 "test_mass_dcorr", "test_mass_sculpting_floor")
# Metrics with a bootstrap error (``{metric}_err``), as wtag.metrics.BOOTSTRAP_METRICS with the test_ prefix.
ERROR_METRICS = ("test_auc", "test_r50", "test_r30", "test_mass_sculpting", "test_inv_jsd")
DEFAULT_MAX_SCULPTING = 0.05
"""``max_sculpting``: the largest test_mass_sculpting (JSD) a candidate may have to be the ``decorrelated`` one."""
DEFAULT_N_BOOTSTRAP = TrainConfig.n_bootstrap
"""Resamples for the paired champion margin, errors missing from older runs and the ROC bands."""
BOOTSTRAP_SEED = 20111
SIGNIFICANT_SIGMA = 2.0
"""A champion margin of at least this many standard deviations counts as significant."""
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
    decorrelation: str = DECORRELATION_NONE
    native_bytes: int = 0
    onnx_bytes: float = math.nan
    native_ms_per_1k: float = math.nan
    onnx_ms_per_1k: float = math.nan
    note: str = ""

    @property
    def label(self) -> str:
        """The candidate's name in tables and plots: the tagger, plus its decorrelation setting if any."""
        return candidate_label(self.tagger, self.decorrelation)


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

    ranked = rank(candidates, metric)
    best = ranked[0]
    value = best.metrics.get(metric, math.nan)
    if math.isnan(value):
        raise WtagError(f"no tagger run has a finite {metric}")
    direction = "highest" if higher else "lowest"
    reason = (f"champion: {best.label} (run {best.run_id}) with the {direction} {metric} = {value:.6g} "
              f"among {len(candidates)} taggers")
    if len(ranked) > 1:
        second = ranked[1]
        reason += f"; runner-up {second.label} with {second.metrics.get(metric, math.nan):.6g}"
        if second.metrics.get(metric) == value:
            reason += " (tie broken by test_auc, then inference time, then name)"
    return best, reason + "."


def rank(candidates: Sequence[Candidate], metric: str) -> list[Candidate]:
    """Best first by ``metric``; ties to the higher test_auc, the faster native inference, then the name."""
    higher = CHAMPION_METRICS[metric]

    def key(c: Candidate) -> tuple[float, float, float, str]:
        speed = c.native_ms_per_1k if not math.isnan(c.native_ms_per_1k) else math.inf
        return (-_sort_value(c.metrics.get(metric, math.nan), higher),
                -_sort_value(c.metrics.get("test_auc", math.nan), True), speed, c.label)

    return sorted(candidates, key=key)


def pick_decorrelated(candidates: Sequence[Candidate], metric: str, max_sculpting: float
                      ) -> tuple[Candidate | None, str]:
    """The best candidate by ``metric`` among those with test_mass_sculpting <= ``max_sculpting`` (None when no
    candidate qualifies), and a sentence saying so."""
    qualified = [c for c in candidates if c.metrics.get("test_mass_sculpting", math.nan) <= max_sculpting]
    if not qualified:
        best_jsd = min((c.metrics.get("test_mass_sculpting", math.nan) for c in candidates
                        if not math.isnan(c.metrics.get("test_mass_sculpting", math.nan))), default=math.nan)
        return None, (f"decorrelated: none of {len(candidates)} candidates has test_mass_sculpting <= "
                      f"{max_sculpting:g} (the lowest is {best_jsd:.3g}).")
    try:
        best, _ = pick_champion(qualified, metric)
    except WtagError:
        return None, f"decorrelated: no candidate with test_mass_sculpting <= {max_sculpting:g} has a finite {metric}."
    return best, (f"decorrelated: {best.label} (run {best.run_id}), the best {metric} = "
                  f"{_pm(best.metrics, metric, '.4g')} among the {len(qualified)} candidates with test_mass_sculpting "
                  f"<= {max_sculpting:g} (its sculpting {_pm(best.metrics, 'test_mass_sculpting', '.3f')}).")


def champion_margin(ranked: Sequence[Candidate], metric: str, samples: Mapping[str, Mapping[str, np.ndarray]]
                    ) -> tuple[float, str]:
    """The champion's margin over the runner-up in standard deviations, and the sentence for champion.txt.

    The standard deviation is that of the DIFFERENCE of the two metrics over the same bootstrap resamples of
    the test jets (paired: both taggers scored the same jets, so their fluctuations are correlated and the
    difference is known better than the two errors in quadrature suggest). NaN without a runner-up, +inf
    when the difference never fluctuates (e.g. both rejections capped).
    """
    if len(ranked) < 2:
        return math.nan, "There is no runner-up to compare with."
    best, second = ranked[0], ranked[1]
    key = metric.removeprefix("test_")
    diff = abs(best.metrics.get(metric, math.nan) - second.metrics.get(metric, math.nan))
    if best.label not in samples or second.label not in samples:
        return math.nan, "The margin's uncertainty is unknown (no bootstrap samples)."
    sigma = spread_of_difference(samples[best.label][key], samples[second.label][key])
    if math.isnan(diff) or math.isnan(sigma):
        return math.nan, "The margin's significance could not be computed."
    margin = math.inf if sigma == 0 else diff / sigma
    words = "significant" if margin >= SIGNIFICANT_SIGMA else "NOT significant: test-set noise could reorder them"
    return margin, (f"Margin over the runner-up: {best.label} {_pm(best.metrics, metric, '.4g')} vs {second.label} "
                    f"{_pm(second.metrics, metric, '.4g')}, a difference of {diff:.4g} = {margin:.2f} standard "
                    f"deviations of the paired bootstrap difference ({words}; threshold {SIGNIFICANT_SIGMA:g} sigma).")


def _pm(values: Mapping[str, float], key: str, spec: str) -> str:
    """``value +- err`` (the bootstrap error when known), ``n/a`` for NaN."""
    value, err = values.get(key, math.nan), values.get(f"{key}_err", math.nan)
    text = _fmt(float(value), spec)
    return text if math.isnan(err) or text == "n/a" else f"{text} +- {_fmt(float(err), spec)}"


# ---------------------------------------------------------------------------------------------------------
# Tables


def _columns() -> list[str]:
    metric_columns = [col for m in TABLE_METRICS for col in ((m, f"{m}_err") if m in ERROR_METRICS else (m,))]
    return ["tagger", "decorrelation", "candidate", "family", *metric_columns, "train_time_s", "native_bytes",
            "onnx_bytes", "native_ms_per_1k", "onnx_ms_per_1k", "run_id", "note"]


def _row(c: Candidate) -> dict[str, Any]:
    values = {col: c.metrics.get(col, math.nan) for col in _columns() if col.startswith("test_")}
    return {"tagger": c.tagger, "decorrelation": c.decorrelation, "candidate": c.label, "family": c.family,
            **values, "train_time_s": c.metrics.get("train_time_s", math.nan), "native_bytes": c.native_bytes,
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


def comparison_frame(candidates: Sequence[Candidate]) -> Any:
    """The comparison as a DataFrame for ``mlflow.log_table`` (the UI shows it without downloading files).

    Text columns are plain ``object`` columns: MLflow 3.17 scans object columns for images, and pandas 3 warns
    when that scan meets its ``str`` dtype.
    """
    import pandas as pd

    frame = pd.DataFrame([_row(c) for c in candidates], columns=_columns())
    for col in ("tagger", "decorrelation", "candidate", "family", "run_id", "note"):
        frame[col] = frame[col].astype(object)
    return frame


def _fmt(value: Any, spec: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return format(value, spec)


def table_markdown(candidates: Sequence[Candidate], champion: Candidate | None = None) -> str:
    """The comparison as a Markdown table, value +- bootstrap error (the champion in bold)."""
    head = ("| tagger | family | test_auc | test_r50 | test_r30 | test_mass_sculpting | 1/JSD | model size [kB] "
            "| ONNX size [kB] | ms / 1k jets (native, 1 thread) | ms / 1k jets (ONNX, 1 thread) |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for c in candidates:
        name = f"**{c.label}**" if champion is not None and c.run_id == champion.run_id else c.label
        m = c.metrics
        rows.append(f"| {name} | {c.family} | {_pm(m, 'test_auc', '.4f')} "
                    f"| {_pm(m, 'test_r50', '.1f')} | {_pm(m, 'test_r30', '.1f')} "
                    f"| {_pm(m, 'test_mass_sculpting', '.3f')} | {_pm(m, 'test_inv_jsd', '.1f')} "
                    f"| {c.native_bytes / 1e3:.1f} "
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
            from wtag.inference import OnnxTagger
            from wtag.taggers.keras_common import PREDICT_BATCH_SIZE

            blob = tagger.to_onnx().SerializeToString()
            # In batches as native predict runs: ParT's pair features take ~2.6 MB per jet, so one run over
            # 10,000 jets needed ~20 GB and the kernel killed the timing process.
            onnx = OnnxTagger(blob, device="cpu", max_batch=PREDICT_BATCH_SIZE, intra_op_threads=1)
            onnx.run(warm)
            result["onnx_bytes"] = len(blob)
            result["onnx_ms_per_1k"] = _best_seconds(lambda: onnx.run(inputs), repeats) / n * 1e6
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
                     params=dict(run.data.params), model_uri=model_uri(run.info.run_id),
                     decorrelation=decorrelation_of(run))


def fill_uncertainties(candidates: Sequence[Candidate], samples: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Errors (and 1/JSD) a run did not log (runs from before the bootstrap) from the evaluation's resamples."""
    from wtag.metrics import inverse, spread

    for c in candidates:
        if "test_inv_jsd" not in c.metrics and "test_mass_sculpting" in c.metrics:
            c.metrics["test_inv_jsd"] = inverse(c.metrics["test_mass_sculpting"])
        for m in ERROR_METRICS:
            if f"{m}_err" not in c.metrics and c.label in samples:
                c.metrics[f"{m}_err"] = spread(samples[c.label][m.removeprefix("test_")])


# ---------------------------------------------------------------------------------------------------------
# The step


def compare(experiment_id: str, runs: Sequence[Any], timing: bool = True,
            onnx_too: bool = True) -> tuple[list[Candidate], PreparedDataset, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Candidates (``runs``: tagger runs on one dataset) with sizes and timings, the dataset, and test scores
    (label, score) keyed by candidate label."""
    digest = runs[0].data.params["dataset_digest"]
    ds = find_dataset(experiment_id, digest)
    candidates = sorted((_candidate(r) for r in runs), key=lambda c: (c.tagger, c.label))
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        model_dirs = {}
        for c in candidates:
            model_dirs[c.run_id] = _download(c.model_uri, Path(tmp) / c.run_id)
            c.native_bytes = _model_bytes(model_dirs[c.run_id])
            label, score, _ = read_test_arrays(c.run_id, Path(tmp) / c.run_id / "scores")
            if len(label) != len(ds.test) or not np.array_equal(label, ds.test.label):
                raise WtagError(f"tagger run {c.run_id}: its test scores do not match the test split of dataset "
                                f"{digest[:12]} ({len(label)} vs {len(ds.test)} jets)")
            curves[c.label] = (label, score)
        if timing:
            measure_inference(candidates, model_dirs, ds, onnx_too=onnx_too)
    return candidates, ds, curves


def _eval_params(metric: str, digest: str, train_run_id: str | None, candidates: Sequence[str],
                 max_sculpting: float = DEFAULT_MAX_SCULPTING,
                 n_bootstrap: int = DEFAULT_N_BOOTSTRAP) -> dict[str, str]:
    return {"metric": metric, "dataset_digest": digest, "train_run_id": train_run_id or "",
            "candidate_runs": ",".join(sorted(candidates)), "max_sculpting": f"{max_sculpting:g}",
            "n_bootstrap": str(n_bootstrap)}


def front_table(candidates: Sequence[Candidate], front: Sequence[int]) -> str:
    """CSV of every candidate's r50 and 1/JSD with errors, and whether it is on the Pareto front."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["candidate", "run_id", "test_r50", "test_r50_err", "test_inv_jsd", "test_inv_jsd_err",
                     "test_mass_sculpting", "test_mass_sculpting_err", "test_mass_sculpting_floor", "on_front"])
    for i, c in enumerate(candidates):
        m = c.metrics
        writer.writerow([c.label, c.run_id, *(m.get(k, math.nan) for k in (
            "test_r50", "test_r50_err", "test_inv_jsd", "test_inv_jsd_err", "test_mass_sculpting",
            "test_mass_sculpting_err", "test_mass_sculpting_floor")), i in front])
    return out.getvalue()


def log_front(candidates: Sequence[Candidate], ds: PreparedDataset,
              curves: Mapping[str, tuple[np.ndarray, np.ndarray]], tmp: Path,
              max_sculpting: float | None = None) -> list[Candidate]:
    """Log the rejection-vs-1/JSD figure, the QCD mass of the front's members and the front table; return the
    front's members."""
    import mlflow

    from wtag import plots

    m = [c.metrics for c in candidates]
    r50 = [x.get("test_r50", math.nan) for x in m]
    inv = [x.get("test_inv_jsd", math.nan) for x in m]
    front = plots.pareto_front(list(zip(r50, inv, strict=True)))
    plots.plot_decorrelation_front([c.label for c in candidates], r50, [x.get("test_r50_err", 0.0) for x in m],
                                   inv, [x.get("test_inv_jsd_err", 0.0) for x in m], tmp / Artifact.FRONT_PNG,
                                   max_sculpting=max_sculpting)
    members = [candidates[i] for i in front]
    if members:
        plots.plot_mass_after_cut(ds.test.msd, ds.test.label, {c.label: curves[c.label][1] for c in members},
                                  tmp / Artifact.FRONT_MASS_PNG)
        mlflow.log_artifact(str(tmp / Artifact.FRONT_MASS_PNG))
    mlflow.log_artifact(str(tmp / Artifact.FRONT_PNG))
    mlflow.log_text(front_table(candidates, front), Artifact.FRONT_CSV)
    return members


def evaluate_step(experiment_id: str, dataset_digest: str | None, metric: str = DEFAULT_METRIC,
                  train_run_id: str | None = None, run_id: str | None = None, timing: bool = True,
                  onnx_too: bool = True, max_sculpting: float = DEFAULT_MAX_SCULPTING,
                  n_bootstrap: int = DEFAULT_N_BOOTSTRAP) -> tuple[str, str]:
    """Compare the taggers of one dataset, log an ``evaluate`` run, and return (its run id, champion run id).

    Candidates are the newest run per (tagger, decorrelation setting). The champion is the best by ``metric``
    (deterministic ties); its margin over the runner-up, in standard deviations of a paired bootstrap, is
    tagged (``Tag.CHAMPION_MARGIN_SIGMA``) and put in words in champion.txt. The best candidate by ``metric``
    with test_mass_sculpting <= ``max_sculpting`` is tagged ``Tag.DECORRELATED_RUN_ID`` (export it with alias
    ``decorrelated``). Also logged: the comparison as CSV, Markdown and an MLflow table, ROC curves with
    bootstrap bands, and the rejection-vs-1/JSD front with the QCD mass of its members.

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
    if not max_sculpting >= 0 or n_bootstrap < 1:
        raise WtagError(f"max_sculpting={max_sculpting} must be >= 0 and n_bootstrap={n_bootstrap} >= 1")
    runs = tagger_runs(experiment_id, dataset_digest)
    digest = runs[0].data.params["dataset_digest"]
    params = _eval_params(metric, digest, train_run_id, [r.info.run_id for r in runs], max_sculpting, n_bootstrap)
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
        from wtag.metrics import bootstrap

        candidates, ds, curves = compare(experiment_id, runs, timing=timing, onnx_too=onnx_too)
        samples = bootstrap(ds.test.label, ds.test.msd, {k: v[1] for k, v in curves.items()}, n_bootstrap,
                            BOOTSTRAP_SEED)
        fill_uncertainties(candidates, samples)
        champion, reason = pick_champion(candidates, metric)
        margin, margin_text = champion_margin(rank(candidates, metric), metric, samples)
        decorrelated, decorrelated_text = pick_decorrelated(candidates, metric, max_sculpting)
        reason = f"{reason} {margin_text}\n\n{decorrelated_text}"
        value = champion.metrics[metric]
        markdown = table_markdown(candidates, champion)
        mlflow.log_text(table_csv(candidates), Artifact.COMPARISON_CSV)
        mlflow.log_text(markdown, Artifact.COMPARISON_MD)
        mlflow.log_table(comparison_frame(candidates), Artifact.COMPARISON_TABLE)
        timing_note = (f"Inference time: best of {TIMING_REPEATS} passes over the test set (at most "
                       f"{TIMING_MAX_JETS:,} jets) in a fresh process on one CPU core, one thread in every pool; "
                       "native Keras times include model.predict's fixed per-call overhead." if timing
                       else "Inference not timed.")
        mlflow.log_text(f"{reason}\n\nDataset {digest} ({ds.source}, {len(ds.test)} test jets). {timing_note}\n\n"
                        f"{markdown}", Artifact.CHAMPION_TXT)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "roc_all.png"
            plots.plot_roc(curves, path, baseline="cut" if "cut" in curves else None, n_bootstrap=n_bootstrap,
                           seed=BOOTSTRAP_SEED)
            mlflow.log_artifact(str(path))
            front = log_front(candidates, ds, curves, Path(tmp), max_sculpting)
        mlflow.set_tags({Tag.CHAMPION_RUN_ID: champion.run_id, Tag.CHAMPION_TAGGER: champion.tagger,
                         Tag.CHAMPION_METRIC: metric, Tag.CHAMPION_VALUE: f"{value:.6g}",
                         Tag.CHAMPION_MARGIN_SIGMA: f"{margin:.3g}",
                         Tag.CHAMPION_SIGNIFICANT: str(bool(margin >= SIGNIFICANT_SIGMA)).lower(),
                         **({Tag.DECORRELATED_RUN_ID: decorrelated.run_id,
                             Tag.DECORRELATED_CANDIDATE: decorrelated.label} if decorrelated else {})})
        per_tagger = {}
        for c in candidates:
            for key, figure in (("ms_per_1k", c.native_ms_per_1k), ("onnx_ms_per_1k", c.onnx_ms_per_1k),
                                ("native_bytes", float(c.native_bytes)), ("onnx_bytes", c.onnx_bytes)):
                if math.isfinite(figure):
                    per_tagger[f"{c.label}.{key}"] = figure
        champion_metrics = {f"champion_{m}": v for m, v in champion.metrics.items()
                            if m.startswith("test_") and math.isfinite(v)}
        mlflow.log_metrics({**per_tagger, **champion_metrics,
                            **({"champion_margin_sigma": margin} if math.isfinite(margin) else {}),
                            "front_size": float(len(front))})
        print(f"evaluate: {reason}\n{markdown}", file=sys.stderr)
        return str(run.info.run_id), champion.run_id
