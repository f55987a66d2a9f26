"""The ``train`` step: one parent MLflow run, one nested run per tagger, each with metrics, model and plots.

Every tagger run records what evaluation and export need to find it again: the tagger name, the dataset
digest and the test-set scores (``test_scores.npz``), under tags prefixed ``wtag.``.
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wtag.dataset import PreparedDataset
from wtag.errors import WtagError
from wtag.runs import candidate_label, log_dataset_input
from wtag.schema import DECORRELATION_NONE, Artifact, EntryPoint, Tag
from wtag.taggers import TAGGER_NAMES, Tagger, TrainConfig, build_tagger, tagger_class
from wtag.tracking import EpochLogger
from wtag.weighting import effective_size, weighted


ALL_TAGGERS = "all"


@dataclasses.dataclass
class TaggerResult:
    name: str
    run_id: str
    metrics: dict[str, float]
    scores: np.ndarray
    decorrelation: str = DECORRELATION_NONE

    @property
    def label(self) -> str:
        return candidate_label(self.name, self.decorrelation)


def resolve_models(model: str) -> list[str]:
    """``all`` or a comma-separated list of tagger names, validated."""
    names = list(TAGGER_NAMES) if model == ALL_TAGGERS else [m.strip() for m in model.split(",") if m.strip()]
    if not names:
        raise WtagError("model parameter is empty (use 'all' or tagger names)")
    for name in names:
        tagger_class(name)
    return names


def apply_params_from(config: TrainConfig, model: str) -> tuple[str, TrainConfig]:
    """``params_from``: the tune run's tagger and ``config`` with its best parameters (what the study did not
    search, e.g. epochs, stays as given). ``model`` must be that tagger or ``all``."""
    from wtag.runs import tuned_params

    if not config.params_from:
        return model, config
    tagger, params = tuned_params(config.params_from)
    if model not in (ALL_TAGGERS, tagger):
        raise WtagError(f"params_from {config.params_from}: the study tuned '{tagger}', but model is '{model}' "
                        f"(pass -P model={tagger} or leave it '{ALL_TAGGERS}')")
    return tagger, config.with_params(params)


def runnable(names: Sequence[str], ds: PreparedDataset) -> list[str]:
    """Taggers whose inputs the dataset has; each skipped one gets a one-line message."""
    have = set(ds.train.available())
    keep = []
    for name in names:
        need = tagger_class(name).inputs
        if set(need) <= have:
            keep.append(name)
        else:
            print(f"skipping {name}: source '{ds.source}' provides {', '.join(sorted(have))}, "
                  f"{name} needs {', '.join(need)}", file=sys.stderr)
    if not keep:
        raise WtagError(f"none of the requested taggers can train on source '{ds.source}'")
    return keep


def _run_name(name: str, ds: PreparedDataset, config: TrainConfig) -> str:
    label = name if config.disco_lambda <= 0 else f"{name}-{config.decorrelation}"
    return f"{label}-{ds.source}-{len(ds.train) + len(ds.val) + len(ds.test)}"


def parse_disco_lambdas(text: str) -> list[float]:
    """``-P disco_lambda=0,1,3,10``: one or more non-negative strengths, in order, duplicates dropped."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise WtagError(f"disco_lambda '{text}': expected a number or comma-separated numbers "
                        "(e.g. 0,1,3,10)") from None
    if not values or any(not np.isfinite(v) or v < 0 for v in values):
        raise WtagError(f"disco_lambda '{text}': need one or more finite values >= 0")
    return list(dict.fromkeys(values))


def scan_text(config: TrainConfig, disco_lambdas: Sequence[float] | None = None) -> str:
    """The ``disco_lambda`` parameter of a ``train`` run: the scanned strengths, comma-separated."""
    return ",".join(f"{v:g}" for v in (disco_lambdas or [config.disco_lambda]))


def training_plan(names: Sequence[str], config: TrainConfig, disco_lambdas: Sequence[float] | None = None,
                  ) -> list[tuple[str, TrainConfig]]:
    """(tagger, config) per tagger run: every DisCo strength for the taggers that support it (Keras), one run
    without the penalty for the others (a message says so when the scan asked for more); the auxiliary
    regression likewise only where it applies."""
    lambdas = list(disco_lambdas) if disco_lambdas else [config.disco_lambda]
    plan = []
    for name in names:
        if config.aux_weight > 0 and not tagger_class(name).supports_aux():
            print(f"{name}: no auxiliary regression for this tagger (it reads the jet features, or is not a Keras "
                  "network); trained without it", file=sys.stderr)
            config_of_name = dataclasses.replace(config, aux_weight=0.0)
        else:
            config_of_name = config
        if tagger_class(name).supports_disco:
            plan += [(name, dataclasses.replace(config_of_name, disco_lambda=float(v))) for v in lambdas]
        else:
            if any(v > 0 for v in lambdas):
                print(f"{name}: no DisCo penalty for this tagger family; trained once without it", file=sys.stderr)
            plan.append((name, dataclasses.replace(config_of_name, disco_lambda=0.0)))
    return plan


def init_parent(config: TrainConfig, names: Sequence[str]) -> Any | None:
    """The tagger run ``config.init_from`` names (None without one), checked against the requested taggers:
    only Keras taggers start from a parent, and only from a model of the same tagger."""
    if not config.init_from:
        return None
    from wtag.runs import init_from_run
    from wtag.taggers.keras_common import KerasTagger

    parent = init_from_run(config.init_from)
    parent_tagger = parent.data.tags[Tag.TAGGER]
    for name in names:
        if not issubclass(tagger_class(name), KerasTagger):
            raise WtagError(f"init_from: tagger '{name}' cannot start from a parent model (only Keras taggers can)")
        if name != parent_tagger:
            raise WtagError(f"init_from '{config.init_from}': run {parent.info.run_id} holds a '{parent_tagger}' "
                            f"model, which cannot initialise tagger '{name}' (pass -P model={parent_tagger})")
    return parent


def _lineage_text(parent: Any) -> str:
    from wtag.runs import lineage

    def step(r: Any) -> str:
        tags = r.data.tags
        return (f"{tags.get(Tag.TAGGER, '?')} run {r.info.run_id} ({tags.get(Tag.SOURCE, '?')}, "
                f"{r.data.params.get('n_train', '?')} training jets, dataset {tags.get(Tag.DATASET_DIGEST, '?')[:8]})")

    steps = [step(r) for r in lineage(parent)]
    return "; lineage: " + " -> ".join([*steps, "this run"])


def train_one(name: str, ds: PreparedDataset, config: TrainConfig,
              baseline: TaggerResult | None, parent: Any | None = None) -> TaggerResult:
    """Train, test and log one tagger in a nested run of the active parent run; with ``parent`` (a tagger run
    of the same tagger, see ``init_parent``) training starts from that run's model."""
    import mlflow

    from wtag import metrics, plots
    from wtag.runs import model_uri
    from wtag.tracking import tracked_run

    tagger: Tagger = build_tagger(name, config, ds.standardization)
    if config.disco_lambda > 0 and not tagger.supports_disco:
        raise WtagError(f"tagger '{name}' cannot train with disco_lambda={config.disco_lambda:g} (Keras taggers only)")
    if config.aux_weight > 0 and not tagger.supports_aux():
        raise WtagError(f"tagger '{name}' cannot train with aux_weight={config.aux_weight:g} (Keras taggers without "
                        "the jet-feature input only)")
    params = {**config.params(), **tagger.hyperparameters(), "tagger": name, "source": ds.source,
              "dataset_digest": ds.digest, "n_train": len(ds.train), "n_val": len(ds.val), "n_test": len(ds.test)}
    description = (f"{name} ({tagger.family}) trained on {len(ds.train)} {ds.source} jets, "
                   f"inputs {', '.join(tagger.inputs)}"
                   + (f", DisCo mass decorrelation lambda={config.disco_lambda:g}" if config.disco_lambda > 0 else ""))
    tags = {Tag.TAGGER: name, Tag.FAMILY: tagger.family, Tag.DATASET_DIGEST: ds.digest, Tag.SOURCE: ds.source,
            Tag.DECORRELATION: config.decorrelation}
    if config.params_from:
        tags[Tag.PARAMS_FROM] = config.params_from
        description += f", with the best parameters of tune run {config.params_from}"
    if parent is not None:
        tagger.start_from(model_uri(parent.info.run_id))
        description += f", starting from the weights of run {parent.info.run_id}" + _lineage_text(parent)
        tags[Tag.INIT_FROM] = parent.info.run_id
    label = candidate_label(name, config.decorrelation)
    with tracked_run(EntryPoint.TRAIN_TAGGER, _run_name(name, ds, config), description, params, nested=True,
                     tags=tags) as run:
        log_dataset_input(ds, "test")
        start = time.perf_counter()
        epoch_logger = EpochLogger(run.info.run_id)
        train_split, val_split = weighted(ds.train, config.weighting), weighted(ds.val, config.weighting)
        mlflow.log_metrics({f"n_eff_train_{kind}": effective_size(train_split.weight[train_split.label == cls])
                            for kind, cls in (("signal", 1), ("background", 0))})
        history = tagger.fit(train_split, val_split, on_epoch_end=epoch_logger)
        epoch_logger.flush()
        train_time = time.perf_counter() - start
        test_inputs = ds.test.inputs(tagger.inputs)
        start = time.perf_counter()
        scores = np.asarray(tagger.predict(test_inputs), dtype=np.float64)
        predict_time = time.perf_counter() - start
        result = metrics.summary(ds.test.label, scores, ds.test.msd, n_bootstrap=config.n_bootstrap,
                                 seed=config.seed)
        mlflow.log_metrics({**result, **tagger.fit_metrics(), "train_time_s": train_time,
                            "test_predict_ms_per_1k": 1000.0 * predict_time / max(len(scores), 1) * 1000.0,
                            "epochs_trained": float(len(history.get("loss", [])))})
        example = {k: v[:5] for k, v in test_inputs.items()}
        tagger.log_model(Artifact.MODEL, example)
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            with open(tmp_path / Artifact.TEST_SCORES, "wb") as fh:
                np.savez(fh, score=scores.astype(np.float32), label=ds.test.label, msd=ds.test.msd)
            mlflow.log_artifact(str(tmp_path / Artifact.TEST_SCORES))
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            curves = {label: (ds.test.label, scores)}
            if baseline is not None and baseline.name != name:
                curves[baseline.name] = (ds.test.label, baseline.scores)
            plots.plot_roc(curves, tmp_path / "roc.png", baseline=baseline.name if baseline else None,
                           n_bootstrap=config.n_bootstrap, seed=config.seed)
            plots.plot_scores(ds.test.label, scores, tmp_path / "scores.png", label)
            plots.plot_mass_sculpting(ds.test.msd, ds.test.label, scores, tmp_path / "mass_sculpting.png", label)
            tagger.diagnostic_plots(tmp_path, ds.train)
            if history.get("loss"):
                plots.plot_training_curves(history, tmp_path / "training_curves.png", name)
            importance = getattr(tagger, "feature_importance", None)
            if callable(importance):
                imp = importance()
                plots.plot_feature_importance(list(imp), list(imp.values()), tmp_path / "feature_importance.png")
            mlflow.log_artifacts(tmp, artifact_path="plots")
        print(f"{label:>13}: test_auc={_pm(result, 'test_auc', '.4f')} r50={_pm(result, 'test_r50', '.1f')} "
              f"r30={_pm(result, 'test_r30', '.1f')} sculpting={_pm(result, 'test_mass_sculpting', '.3f')} "
              f"({train_time:.0f} s)", file=sys.stderr)
        return TaggerResult(name=name, run_id=run.info.run_id, metrics={**result, "train_time_s": train_time},
                            scores=scores, decorrelation=config.decorrelation)


def _pm(values: Mapping[str, float], key: str, spec: str) -> str:
    """``value +- err`` (the bootstrap error when present)."""
    value, err = values.get(key, float("nan")), values.get(f"{key}_err")
    return format(value, spec) + ("" if err is None else f" +- {format(err, spec)}")


def results_table(results: Sequence[TaggerResult]) -> str:
    """A Markdown table of the taggers' test metrics (value +- bootstrap error) and training time."""
    head = ("| tagger | test_auc | test_r50 | test_r30 | test_mass_sculpting | train time [s] |\n"
            "|---|---|---|---|---|---|\n")
    rows = "".join(
        f"| {r.label} | {_pm(r.metrics, 'test_auc', '.4f')} | {_pm(r.metrics, 'test_r50', '.1f')} "
        f"| {_pm(r.metrics, 'test_r30', '.1f')} | {_pm(r.metrics, 'test_mass_sculpting', '.3f')} "
        f"| {r.metrics['train_time_s']:.0f} |\n" for r in results)
    return head + rows


BEST_METRIC = "test_r50"
"""The metric by which the ``train`` parent run shows its best tagger (as ``evaluate``'s default)."""


def best_result(results: Sequence[TaggerResult], metric: str = BEST_METRIC) -> TaggerResult:
    """Highest ``metric`` (then AUC, then label): deterministic whatever the training order."""
    def larger_better(value: float) -> float:
        return -np.inf if np.isnan(value) else value

    def key(r: TaggerResult) -> tuple[float, float, str]:
        return (-larger_better(r.metrics.get(metric, np.nan)), -larger_better(r.metrics.get("test_auc", np.nan)),
                r.label)

    return sorted(results, key=key)[0]


def train(ds: PreparedDataset, model: str, config: TrainConfig, prepare_run_id: str | None = None,
          run_id: str | None = None, disco_lambdas: Sequence[float] | None = None) -> str:
    """Train the requested taggers under one parent run; return the parent run id.

    The cut tagger is trained first whenever it is requested, so every other tagger's ROC plot carries it as
    the baseline. ``disco_lambdas`` (a scan, e.g. 0, 1, 3, 10) trains every Keras tagger once per value, each
    its own tagger run and evaluation candidate; default: ``config.disco_lambda`` alone. The parent run shows
    the best tagger's test metrics (by ``test_r50``, with errors) and logs the train and test datasets.
    """
    import mlflow

    from wtag.tracking import tracked_run

    names = runnable(resolve_models(model), ds)
    if "cut" in names:
        names = ["cut"] + [n for n in names if n != "cut"]
    init_run = init_parent(config, names)
    plan = training_plan(names, config, disco_lambdas)
    params = {"model": model, "source": ds.source, "dataset_digest": ds.digest, **config.params(),
              "disco_lambda": scan_text(config, disco_lambdas)}
    description = f"train {', '.join(names)} on {len(ds.train)} {ds.source} jets (dataset {ds.digest[:8]})"
    tags = {Tag.DATASET_DIGEST: ds.digest, Tag.SOURCE: ds.source,
            **({Tag.PREPARE_RUN_ID: prepare_run_id} if prepare_run_id else {}),
            **({Tag.PARAMS_FROM: config.params_from} if config.params_from else {})}
    with tracked_run(EntryPoint.TRAIN, f"train-{model}-{ds.source}-{len(ds.train)}", description, params, tags=tags,
                     run_id=run_id) as parent:
        results: list[TaggerResult] = []
        baseline: TaggerResult | None = None
        for split_name in ("train", "test"):
            log_dataset_input(ds, split_name)
        for name, tagger_config in plan:
            result = train_one(name, ds, tagger_config, baseline, init_run)
            if name == "cut":
                baseline = result
            results.append(result)
        table = results_table(results)
        mlflow.log_text(table, "results.md")
        best = best_result(results)
        mlflow.set_tags({Tag.BEST_RUN_ID: best.run_id, Tag.BEST_CANDIDATE: best.label})
        mlflow.log_metrics({k: v for k, v in best.metrics.items() if k.startswith("test_") and np.isfinite(v)})
        print(table, file=sys.stderr)
        return str(parent.info.run_id)
