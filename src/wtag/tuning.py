"""The ``tune`` step: an Optuna study over one tagger's search space, each trial a Dask task and a nested MLflow run.

- The space is the tagger's ``search_space``, declared once in its own module. ``space`` overrides it per name
  (JSON or YAML, inline or a ``.json``/``.yaml`` file): a list of choices or ``{low, high[, log][, step]}``
  replaces a range, a single value fixes the parameter for every trial, ``null`` leaves it at the tagger's default.
- The objective is measured on the validation split, never the test split, with its bootstrap error; the pruner
  watches the per-epoch validation AUC of the Keras taggers.
- The study lives where every worker reaches it: a journal file under ``<data_dir>/tune`` (a shared filesystem)
  by default, or an Optuna RDB URL. Its name derives from the tagger, the dataset digest and every parameter that
  changes what a trial measures, so the same command resumes it; ``n_trials`` is the total to reach.
- A trial whose worker dies is marked failed (its run FAILED) and replaced; the study ends with ``n_trials``
  finished (complete or pruned) trials.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from wtag import metrics
from wtag.dataset import PreparedDataset, load_prepared
from wtag.errors import WtagError
from wtag.execution import ExecutionConfig, dask_client, worker_state
from wtag.runs import log_dataset_input
from wtag.schema import Artifact, EntryPoint, Tag
from wtag.taggers import TAGGER_NAMES, TrainConfig, build_tagger, tagger_class
from wtag.tracking import EpochLogger, tracked_run
from wtag.weighting import weighted

OBJECTIVES = ("val_auc", "val_pauc")
PAUC_MAX_EPS_B = 0.1  # val_pauc: the ROC area up to this background efficiency (McClish-standardized)
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving", "none")
# The median pruner waits for this many finished trials, and prunes from this epoch on.
PRUNER_STARTUP_TRIALS = 5
PRUNER_WARMUP_EPOCHS = 2
JOURNAL_DIR = "tune"  # under data_dir
RANGE_KEYS = frozenset({"low", "high", "log", "step"})
# Trial user attributes: every parameter the trial trains with (fixed ones too), its run, the objective's error.
PARAMS_ATTR = "wtag.params"
RUN_ATTR = "wtag.run_id"
ERR_ATTR = "wtag.objective_err"
TASK_KEY = "wtag-trial"


@dataclasses.dataclass(frozen=True)
class TuneConfig:
    """What ``tune`` searches and how. ``parallel``: trials at once (0: one per Dask worker)."""

    model: str = "dnn"
    n_trials: int = 20
    space: str = ""
    objective: str = "val_auc"
    sampler: str = "tpe"
    sampler_seed: int = 0
    pruner: str = "median"
    storage: str = ""
    parallel: int = 0

    def __post_init__(self) -> None:
        problems = [f"{key}={value!r} ({need})" for key, value, ok, need in (
            ("n_trials", self.n_trials, self.n_trials >= 1, ">= 1"),
            ("objective", self.objective, self.objective in OBJECTIVES, " or ".join(OBJECTIVES)),
            ("sampler", self.sampler, self.sampler in SAMPLERS, " or ".join(SAMPLERS)),
            ("pruner", self.pruner, self.pruner in PRUNERS, " or ".join(PRUNERS)),
            ("parallel", self.parallel, self.parallel >= 0, ">= 0"),
        ) if not ok]
        if problems:
            raise WtagError(f"tune parameters out of range: {', '.join(problems)}")
        if "," in self.model or self.model == "all":
            raise WtagError(f"model '{self.model}': tune searches one tagger at a time (e.g. -P model=dnn)")
        if not tagger_class(self.model).search_space:
            tunable = [n for n in TAGGER_NAMES if tagger_class(n).search_space]
            raise WtagError(f"model '{self.model}' has no hyperparameters to tune (tunable: {', '.join(tunable)})")


@dataclasses.dataclass(frozen=True)
class TrialTask:
    """Everything a worker needs to run one trial; it reads the dataset and the study from shared storage."""

    study: str
    storage: str
    pruner: str
    trial_id: int
    number: int
    params: dict[str, Any]
    tagger: str
    train_config: TrainConfig
    dataset_root: str
    objective: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
    number: int
    state: str  # one of schema.TRIAL_STATES
    value: float | None = None
    error: str = ""


# ------------------------------------------------------------------------------------------------ the space


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_override(text: str) -> dict[str, Any]:
    """The ``space`` parameter: JSON or YAML text, or the path of a .json/.yaml/.yml file holding it."""
    text = text.strip()
    if not text:
        return {}
    source = "space"
    if text.endswith((".json", ".yaml", ".yml")) and not text.startswith(("{", "[")):
        path = Path(text)
        if not path.is_file():
            raise WtagError(f"space file {text}: no such file")
        text, source = path.read_text(), f"space file {text}"
    try:
        value = json.loads(text)
    except ValueError:
        import yaml

        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise WtagError(f"{source}: neither JSON nor YAML ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(value, dict):
        raise WtagError(f"{source}: expected a mapping of parameter names to ranges, choices or values, "
                        f"got {type(value).__name__} {str(value)[:80]!r}")
    return value


def _number(name: str, key: str, value: Any) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise WtagError(f"space '{name}': {key}={value!r} is not a number")
    if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise WtagError(f"space '{name}': {key}={value!r} is not a number") from None
    return value


def distribution(name: str, spec: Any) -> Any:
    """The Optuna distribution of one space entry; None for a fixed value. WtagError naming the entry."""
    from optuna import distributions as dist

    if isinstance(spec, list):
        if not spec or not all(isinstance(c, str | int | float | bool) for c in spec):
            raise WtagError(f"space '{name}': choices must be a non-empty list of numbers or strings, got {spec!r}")
        return dist.CategoricalDistribution(spec)
    if isinstance(spec, dict):
        if set(spec) - RANGE_KEYS or not {"low", "high"} <= set(spec):
            raise WtagError(f"space '{name}': a range has keys low, high and optionally log, step; got "
                            f"{', '.join(map(str, spec)) or 'none'}")
        low, high = _number(name, "low", spec["low"]), _number(name, "high", spec["high"])
        log, step = bool(spec.get("log", False)), spec.get("step")
        if step is not None:
            step = _number(name, "step", step)
        if not low < high:
            raise WtagError(f"space '{name}': need low < high, got low={low}, high={high}")
        if log and (low <= 0 or step is not None):
            raise WtagError(f"space '{name}': a log range needs low > 0 and no step")
        if step is not None and step <= 0:
            raise WtagError(f"space '{name}': step={step} must be positive")
        if all(isinstance(v, int) for v in (low, high, step if step is not None else 1)):
            return dist.IntDistribution(int(low), int(high), log=log, step=int(step or 1))
        return dist.FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(step))
    if isinstance(spec, str | int | float | bool):
        return None
    raise WtagError(f"space '{name}': {spec!r} is neither choices, a range nor a value")


def search_space(model: str, override: str = "") -> dict[str, Any]:
    """The tagger's declared space with the ``space`` override applied, every entry checked."""
    declared = dict(tagger_class(model).search_space)
    space = dict(declared)
    for name, spec in parse_override(override).items():
        if name not in declared:
            raise WtagError(f"space: '{name}' is not a tunable parameter of tagger '{model}' "
                            f"(tunable: {', '.join(sorted(declared))})")
        if spec is None:
            space.pop(name)
        else:
            space[name] = spec
    for name, spec in space.items():
        distribution(name, spec)
        if isinstance(spec, dict):  # numbers as numbers, whatever YAML made of them
            space[name] = {k: v if k == "log" else _number(name, k, v) for k, v in spec.items()}
    return space


def split_space(space: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Optuna distributions of the searched names, values of the fixed ones)."""
    searched, fixed = {}, {}
    for name, spec in space.items():
        d = distribution(name, spec)
        if d is None:
            fixed[name] = spec
        else:
            searched[name] = d
    return searched, fixed


# ------------------------------------------------------------------------------------------------ the study


def study_name(config: TuneConfig, train_config: TrainConfig, space: Mapping[str, Any], dataset_digest: str) -> str:
    """``wtag-<tagger>-<dataset>-<hash>``: the same command on the same data names the same study (n_trials and
    parallel do not count, so a rerun with more trials extends it)."""
    key = {"space": space, "objective": config.objective, "sampler": config.sampler,
           "sampler_seed": config.sampler_seed, "pruner": config.pruner, "train": train_config.params()}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"wtag-{config.model}-{dataset_digest[:12]}-{digest}"


def storage_spec(config: TuneConfig, data_dir: Path, name: str) -> str:
    """An Optuna RDB URL as given, else the study's journal file (absolute: workers open it too)."""
    if config.storage:
        return config.storage
    return str((Path(data_dir) / JOURNAL_DIR / f"{name}.journal").resolve())


def open_storage(spec: str) -> Any:
    import optuna

    if "://" in spec:
        return optuna.storages.RDBStorage(spec)
    Path(spec).parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(spec))


def _shown_storage(spec: str) -> str:
    """The storage without a password, for logging."""
    if "://" not in spec:
        return spec
    parts = urlsplit(spec)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=host))


def make_pruner(name: str) -> Any:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS, n_warmup_steps=PRUNER_WARMUP_EPOCHS)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(name: str, storage: str, config: TuneConfig) -> Any:
    """Create the study or load it to resume; trials left RUNNING by an interrupted ``tune`` are marked failed."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = (optuna.samplers.RandomSampler(seed=config.sampler_seed) if config.sampler == "random"
               else optuna.samplers.TPESampler(seed=config.sampler_seed))
    study = optuna.create_study(study_name=name, storage=open_storage(storage), sampler=sampler,
                                pruner=make_pruner(config.pruner), direction="maximize", load_if_exists=True)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        _fail_trial(study, trial.number, "left running by an interrupted tune")
    return study


def _fail_trial(study: Any, number: int, why: str) -> None:
    """Mark a still-running trial failed, and its attempt's run FAILED."""
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    trial = study.get_trials(deepcopy=False)[number]
    if trial.state == TrialState.RUNNING:
        study.tell(number, state=TrialState.FAIL)
    run_id = trial.user_attrs.get(RUN_ATTR)
    if run_id:
        client = MlflowClient()
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="FAILED")
        client.set_tag(run_id, Tag.TRIAL_STATE, "failed")
    _say(f"tune: trial {number} failed: {why}")


# ------------------------------------------------------------------------------------------------ one trial


def objective_value(objective: str, label: np.ndarray, score: np.ndarray, n_bootstrap: int,
                    seed: int) -> tuple[float, float]:
    """(value, bootstrap error) of the objective on the validation jets, unweighted as the test metrics are."""
    def statistic(y: np.ndarray, s: np.ndarray, weight: np.ndarray | None) -> float:
        if objective == "val_pauc":
            return metrics.partial_auc(y, s, PAUC_MAX_EPS_B, weight=weight)
        return metrics.roc_auc(y, s, weight=weight)

    return statistic(label, score, None), metrics.bootstrap_error(statistic, label, score, n_bootstrap, seed)


def _dataset(root: str) -> PreparedDataset:
    """The prepared dataset, loaded once per worker process."""
    cache = worker_state().setdefault("tune_datasets", {})
    if root not in cache:
        cache[root] = load_prepared(root)
    return cache[root]


def _limit_threads(tagger: Any, keras_tagger: bool) -> None:
    """TensorFlow or XGBoost get the worker's threads, not every core of the machine (workers share it)."""
    try:
        from distributed import get_worker

        threads = max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return
    if keras_tagger:
        from wtag.taggers.keras_common import set_threads

        set_threads(threads, threads)
    elif hasattr(tagger, "n_jobs"):
        tagger.n_jobs = threads


def run_trial(task: TrialTask) -> TrialOutcome:
    """Train and measure one trial on a worker; the trial's state goes to the study, its record to a run.

    A rerun of a trial whose first attempt had started (Dask reruns the tasks of a dead worker) marks it failed
    instead: the client then asks a replacement."""
    import mlflow
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    mlflow.set_tracking_uri(task.tracking_uri)
    storage = open_storage(task.storage)
    study = optuna.load_study(study_name=task.study, storage=storage, pruner=make_pruner(task.pruner),
                              sampler=optuna.samplers.RandomSampler())
    frozen = storage.get_trial(task.trial_id)
    if frozen.state.is_finished():
        return TrialOutcome(task.number, _state_word(frozen.state), frozen.value)
    if frozen.user_attrs.get(RUN_ATTR):
        _fail_trial(study, task.number, "its worker was lost")
        return TrialOutcome(task.number, "failed", error="worker lost")
    mlflow.set_experiment(experiment_id=task.experiment_id)
    _fail_orphan_runs(task)
    holder: dict[str, str] = {}
    try:
        state, value = _train_trial(task, study, storage, holder)
    except Exception as exc:
        error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        _fail_trial(study, task.number, error)
        return TrialOutcome(task.number, "failed", error=error)
    from mlflow.tracking import MlflowClient

    if state == "pruned":
        MlflowClient().set_terminated(holder["run_id"], status="KILLED")
        study.tell(task.number, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(task.number, value)
    return TrialOutcome(task.number, state, value)


def _fail_orphan_runs(task: TrialTask) -> None:
    """A worker lost between starting a trial's run and recording it on the trial leaves that run RUNNING; the
    retry marks it FAILED."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for run in client.search_runs([task.experiment_id], f"tags.`{Tag.STUDY}` = '{task.study}' and "
                                  f"tags.`{Tag.TRIAL_NUMBER}` = '{task.number}' and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, status="FAILED")
        client.set_tag(run.info.run_id, Tag.TRIAL_STATE, "failed")


def _state_word(state: Any) -> str:
    return {"COMPLETE": "complete", "PRUNED": "pruned"}.get(state.name, "failed")


def _train_trial(task: TrialTask, study: Any, storage: Any, holder: dict[str, str]) -> tuple[str, float | None]:
    import mlflow
    import optuna

    ds = _dataset(task.dataset_root)
    config = task.train_config.with_params(task.params)
    tagger = build_tagger(task.tagger, config, ds.standardization)
    keras_tagger = tagger.flavor == "keras"  # per-epoch validation AUC to prune on; XGBoost reports after the fit
    _limit_threads(tagger, keras_tagger)
    trial = optuna.trial.Trial(study, task.trial_id)
    val = ds.val
    params = {**config.params(), **tagger.hyperparameters(), **task.params, "tagger": task.tagger,
              "objective": task.objective, "study": task.study, "dataset_digest": ds.digest, "n_train": len(ds.train),
              "n_val_signal": int((val.label == 1).sum()), "n_val_background": int((val.label == 0).sum())}
    tags = {Tag.TAGGER: task.tagger, Tag.FAMILY: tagger.family, Tag.DATASET_DIGEST: ds.digest, Tag.SOURCE: ds.source,
            Tag.STUDY: task.study, Tag.TRIAL_NUMBER: str(task.number), "mlflow.parentRunId": task.parent_run_id}
    description = (f"trial {task.number} of study {task.study}: {task.tagger} with "
                   + ", ".join(f"{k}={v}" for k, v in sorted(task.params.items())))
    with tracked_run(EntryPoint.TUNE_TRIAL, f"trial-{task.number}-{task.tagger}", description, params,
                     tags=tags) as run:
        holder["run_id"] = run.info.run_id
        storage.set_trial_user_attr(task.trial_id, RUN_ATTR, run.info.run_id)
        epoch_logger = EpochLogger(run.info.run_id)

        def on_epoch_end(epoch: int, logs: Mapping[str, float]) -> None:
            epoch_logger(epoch, logs)
            if keras_tagger and np.isfinite(logs.get("val_auc", np.nan)):
                trial.report(float(logs["val_auc"]), epoch + 1)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"val_auc {logs['val_auc']:.4f} after epoch {epoch + 1}")

        start = time.perf_counter()
        state, value = "complete", None
        try:
            tagger.fit(weighted(ds.train, config.weighting), weighted(val, config.weighting),
                       on_epoch_end=on_epoch_end)
        except optuna.TrialPruned:
            state = "pruned"
        epoch_logger.flush()
        mlflow.log_metric("train_time_s", time.perf_counter() - start)
        if state == "complete":
            score = np.asarray(tagger.predict(val.inputs(tagger.inputs)), dtype=np.float64)
            value, err = objective_value(task.objective, val.label, score, config.n_bootstrap, config.seed)
            storage.set_trial_user_attr(task.trial_id, ERR_ATTR, err)
            mlflow.log_metrics({"objective": value, "objective_err": err})
        mlflow.set_tag(Tag.TRIAL_STATE, state)
    return state, value


# ------------------------------------------------------------------------------------------------ the search


def _run_trials(client: Any, study: Any, config: TuneConfig, space: Mapping[str, Any],
                make_task: Callable[[int, int, dict[str, Any]], TrialTask]) -> None:
    """Keep ``parallel`` trials running until ``n_trials`` have finished; failed ones are replaced, up to
    ``n_trials`` failures in this command."""
    from distributed import as_completed
    from optuna.trial import TrialState
    from tqdm import tqdm

    searched, fixed = split_space(space)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))
    parallel = config.parallel or max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    pending: dict[str, tuple[Any, int]] = {}
    queue = as_completed(loop=client.loop)
    failures = 0
    with tqdm(total=config.n_trials, initial=min(done, config.n_trials), desc=f"tune {config.model}",
              unit="trial", file=sys.stderr) as bar:
        try:
            while done < config.n_trials:
                while len(pending) < parallel and done + len(pending) < config.n_trials:
                    trial = study.ask(searched)
                    params = {**fixed, **trial.params}
                    trial.set_user_attr(PARAMS_ATTR, params)
                    future = client.submit(run_trial, make_task(trial.number, trial._trial_id, params),
                                           key=f"{TASK_KEY}-{study.study_name}-{trial.number}", pure=False)
                    pending[future.key] = (future, trial.number)
                    queue.add(future)
                future = next(queue)
                number = pending.pop(future.key)[1]
                if future.status == "finished":
                    outcome = future.result()
                else:  # the task itself failed (e.g. Dask gave up on it after losing workers)
                    outcome = TrialOutcome(number, "failed", error=repr(future.exception())[:300])
                    _fail_trial(study, number, outcome.error)
                if outcome.state == "failed":
                    failures += 1
                    if failures >= config.n_trials:
                        raise WtagError(f"tune: {failures} trials failed in this run, the last: {outcome.error}")
                    continue
                done += 1
                bar.update(1)
        finally:
            client.cancel([f for f, _ in pending.values()])


def _state_counts(trials: list[Any]) -> dict[str, int]:
    counts = {"n_complete": 0, "n_pruned": 0, "n_failed": 0}
    for t in trials:
        word = _state_word(t.state)
        counts[f"n_{word}"] += t.state.is_finished()
    return counts


def _trials_table(trials: list[Any]) -> Any:
    """Every finished trial as a DataFrame for ``mlflow.log_table``; text columns as plain ``object`` columns, as
    ``evaluation.comparison_frame`` does (MLflow scans them for images, and pandas 3 warns on its ``str`` dtype)."""
    import pandas as pd

    rows = []
    for t in trials:
        if not t.state.is_finished():
            continue
        rows.append({"number": t.number, "state": _state_word(t.state),
                     "objective": t.value if t.state.name == "COMPLETE" else None,
                     "objective_err": t.user_attrs.get(ERR_ATTR), "run_id": t.user_attrs.get(RUN_ATTR, ""),
                     "duration_s": t.duration.total_seconds() if t.duration else None,
                     **{f"param_{k}": v for k, v in t.user_attrs.get(PARAMS_ATTR, t.params).items()}})
    frame = pd.DataFrame(rows)
    for column in frame.columns:
        if pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].astype(object)
    return frame


def _study_plots(study: Any, directory: Path) -> list[str]:
    """Optuna's matplotlib figures; those the study cannot support yet (e.g. importances of one trial) are left
    out, with a note."""
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis

    made = []
    for name, plot in (("optimization_history", vis.plot_optimization_history),
                       ("param_importances", vis.plot_param_importances),
                       ("parallel_coordinate", vis.plot_parallel_coordinate)):
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib backend experimental
                warnings.simplefilter("ignore")
                ax = plot(study)
        except Exception as exc:  # a figure the study cannot support yet must not fail the search
            _say(f"tune: no {name} plot ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})")
            continue
        figure = ax.figure if hasattr(ax, "figure") else np.ravel(ax)[0].figure
        figure.savefig(directory / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        made.append(name)
    return made


def _log_study(study: Any, config: TuneConfig, seconds: float, finished_before: int) -> dict[str, Any]:
    """On the parent run: the best trial (params, objective, run), the history as metrics, the figures and the
    table of all trials. Returns the best parameters."""
    import mlflow
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = _state_counts(trials)
    if not counts["n_complete"]:
        raise WtagError(f"study {study.study_name}: no trial completed ({counts['n_pruned']} pruned, "
                        f"{counts['n_failed']} failed); widen the space or use -P pruner=none")
    best = study.best_trial
    best_params = dict(best.user_attrs.get(PARAMS_ATTR, best.params))
    best_err = best.user_attrs.get(ERR_ATTR, float("nan"))
    best_run = best.user_attrs.get(RUN_ATTR, "")
    mlflow.log_params({f"best_{k}": v for k, v in best_params.items()})
    mlflow.log_dict({"tagger": config.model, "params": best_params, "objective": config.objective,
                     "value": best.value, "value_err": best_err, "trial": best.number, "run_id": best_run,
                     "study": study.study_name}, Artifact.BEST_PARAMS)
    mlflow.set_tags({Tag.BEST_CANDIDATE: config.model, **({Tag.BEST_RUN_ID: best_run} if best_run else {})})
    new = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) - finished_before
    mlflow.log_metrics({"best_objective": float(best.value), "best_objective_err": float(best_err), **counts,
                        "trials_per_hour": 3600.0 * new / max(seconds, 1e-9)})
    running_best = -np.inf
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE:
            running_best = max(running_best, float(t.value))
            mlflow.log_metrics({"trial_objective": float(t.value), "best_so_far": running_best}, step=t.number)
    mlflow.log_table(_trials_table(trials), Artifact.TRIALS_TABLE)
    with tempfile.TemporaryDirectory() as tmp:
        _study_plots(study, Path(tmp))
        mlflow.log_artifacts(tmp, artifact_path="plots")
    _say(f"tune: best trial {best.number}: {config.objective} = {best.value:.4f} +- {best_err:.4f} "
         f"(run {best_run}) with " + ", ".join(f"{k}={v}" for k, v in sorted(best_params.items())))
    return best_params


def tune(ds: PreparedDataset, config: TuneConfig, train_config: TrainConfig, data_dir: Path,
         execution: ExecutionConfig | None = None, prepare_run_id: str | None = None,
         run_id: str | None = None) -> str:
    """Run (or resume) the study under one ``tune`` run; return its id. ``train_config`` holds what the space
    does not set (epochs, patience, seeds, and the defaults of names the override leaves out)."""
    import mlflow
    from optuna.trial import TrialState

    space = search_space(config.model, config.space)
    need = tagger_class(config.model).inputs
    if not set(need) <= set(ds.train.available()):
        raise WtagError(f"tagger '{config.model}' needs {', '.join(need)}; source '{ds.source}' provides "
                        f"{', '.join(ds.train.available())}")
    name = study_name(config, train_config, space, ds.digest)
    storage = storage_spec(config, data_dir, name)
    study = open_study(name, storage, config)
    finished_before = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))
    params = {"model": config.model, "n_trials": config.n_trials, "objective": config.objective,
              "sampler": config.sampler, "sampler_seed": config.sampler_seed, "pruner": config.pruner,
              "parallel": config.parallel, "space": json.dumps(space, sort_keys=True), "study": name,
              "storage": _shown_storage(storage), "source": ds.source, "dataset_digest": ds.digest,
              "n_train": len(ds.train), "n_val": len(ds.val), **train_config.params()}
    tags = {Tag.DATASET_DIGEST: ds.digest, Tag.SOURCE: ds.source, Tag.TAGGER: config.model, Tag.STUDY: name,
            **({Tag.PREPARE_RUN_ID: prepare_run_id} if prepare_run_id else {})}
    description = (f"tune {config.model} on {len(ds.train)} {ds.source} jets (dataset {ds.digest[:8]}): "
                   f"{config.n_trials} trials of study {name}, {config.objective} on {len(ds.val)} validation jets")
    with tracked_run(EntryPoint.TUNE, f"tune-{config.model}-{ds.source}-{len(ds.train)}", description, params,
                     tags=tags, run_id=run_id) as parent:
        for split_name in ("train", "val"):
            log_dataset_input(ds, split_name)
        make_task = functools.partial(_task, config, name, storage, train_config, str(ds.root.resolve()),
                                      mlflow.get_tracking_uri(), parent.info.experiment_id, parent.info.run_id)
        start = time.monotonic()
        if finished_before < config.n_trials:
            with dask_client(execution, max_workers=config.parallel or config.n_trials - finished_before) as client:
                _run_trials(client, study, config, space, make_task)
        else:
            _say(f"tune: study {name} already has {finished_before} finished trials (n_trials={config.n_trials})")
        _log_study(study, config, time.monotonic() - start, finished_before)
        return str(parent.info.run_id)


def _task(config: TuneConfig, study: str, storage: str, train_config: TrainConfig, dataset_root: str,
          tracking_uri: str, experiment_id: str, parent_run_id: str, number: int, trial_id: int,
          params: dict[str, Any]) -> TrialTask:
    return TrialTask(study=study, storage=storage, pruner=config.pruner, trial_id=trial_id, number=number,
                     params=params, tagger=config.model, train_config=train_config, dataset_root=dataset_root,
                     objective=config.objective, tracking_uri=tracking_uri, experiment_id=experiment_id,
                     parent_run_id=parent_run_id)
