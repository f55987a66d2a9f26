"""The MLproject steps as functions, and ``main``, which chains them and reuses finished steps.

A step is reused when a FINISHED run of the same entry point has the same parameters, code commit and (for
steps after ``prepare``) dataset digest: the pattern of MLflow's multistep_workflow example, in-process so
that TensorFlow is imported once.
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from wtag import plots, schema
from wtag.dataset import SPLITS, PreparedDataset, load_prepared
from wtag.errors import WtagError
from wtag.prepare import PrepareConfig, prepare, prepared_key
from wtag.runs import candidate_label, decorrelation_of, find_dataset, log_dataset_input
from wtag.schema import Artifact, EntryPoint, Tag
from wtag.taggers import TrainConfig
from wtag.tracking import find_finished_run, tracked_run
from wtag.tuning import TuneConfig


def _say(msg: str) -> None:
    print(msg, file=sys.stderr)


def log_prepared(ds: PreparedDataset) -> None:
    """Log the dataset (``mlflow.log_input`` per split), its manifest and input plots to the active run."""
    import mlflow

    for split_name in SPLITS:
        log_dataset_input(ds, split_name)
    mlflow.log_params({"dataset_digest": ds.digest, "dataset_path": str(ds.root),
                       **{f"n_{s}": len(ds.split(s)) for s in SPLITS}})
    mlflow.set_tag(Tag.DATASET_DIGEST, ds.digest)
    mlflow.log_artifact(str(ds.root / Artifact.MANIFEST))
    mlflow.log_artifact(str(ds.root / Artifact.STANDARDIZATION))
    train = ds.train
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        table: dict[str, np.ndarray] = {"jet pT [GeV]": train.pt, "soft-drop mass [GeV]": train.msd}
        if train.hl is not None:
            for col in ("jet_mass_ak7", "jet_tau21_ak7", "jet_tau32_ak7", "jet_ncand_ak7"):
                table[col] = train.hl[:, schema.HL_FEATURES.index(col)]
        plots.plot_feature_distributions(table, train.label, tmp_path / "features.png")
        plots.plot_feature_distributions(table, train.label, tmp_path / "features_weighted.png", weight=train.weight)
        if train.images is not None:
            plots.plot_average_images(train.images, train.label, tmp_path / "average_images.png")
        mlflow.log_artifacts(tmp, artifact_path="plots")


def prepare_step(config: PrepareConfig, data_dir: Path, experiment_id: str, workers: int | None = None,
                 run_id: str | None = None, progress: bool = True,
                 scheduler: str = "") -> tuple[str, PreparedDataset]:
    """Run ``prepare`` in its own MLflow run, or reuse a finished one whose dataset is still on disk."""
    # The key holds the inputs' content digests and the data code's version: a run on an edited input file at
    # the same path, or made by other feature code, is never reused.
    params = {**config.params(), "prepared_key": prepared_key(config, data_dir)}
    if run_id is None:
        previous = find_finished_run(experiment_id, EntryPoint.PREPARE, params)
        if previous is not None:
            root = Path(previous.data.params.get("dataset_path", ""))
            if (root / Artifact.MANIFEST).is_file():
                ds = load_prepared(root)
                _say(f"prepare: reusing run {previous.info.run_id} (dataset {ds.digest[:8]})")
                return str(previous.info.run_id), ds
    description = f"prepare {config.source} jets ({config.sample_size()}, seed={config.seed})"
    with tracked_run(EntryPoint.PREPARE, f"prepare-{config.source}-{config.sample_size()}", description, params,
                     run_id=run_id) as run:
        ds = prepare(config, data_dir, workers=workers, progress=progress, scheduler=scheduler)
        log_prepared(ds)
        counts = ds.manifest["counts"]
        _say(f"prepare: dataset {ds.digest[:8]} at {ds.root}: " +
             ", ".join(f"{k} {v['jets']} ({v['signal']} W)" for k, v in counts.items()))
        return str(run.info.run_id), ds


def train_step(config: PrepareConfig, data_dir: Path, experiment_id: str, model: str, train_config: TrainConfig,
               workers: int | None = None, run_id: str | None = None, reuse: bool = False,
               scheduler: str = "", disco_lambdas: Sequence[float] | None = None) -> str:
    """Prepare (reusing) then train; with ``reuse`` a finished identical train run is returned instead.

    ``disco_lambdas``: a DisCo scan (every Keras tagger once per strength), default ``train_config``'s alone.
    """
    from wtag.training import apply_params_from, resolve_models, scan_text, train

    model, train_config = apply_params_from(train_config, model)
    resolve_models(model)  # a bad tagger name fails before any data is generated
    prep_run_id, ds = prepare_step(config, data_dir, experiment_id, workers=workers, scheduler=scheduler)
    if reuse:
        params = {"model": model, "dataset_digest": ds.digest, **train_config.params(),
                  "disco_lambda": scan_text(train_config, disco_lambdas)}
        previous = find_finished_run(experiment_id, EntryPoint.TRAIN, params)
        if previous is not None:
            _say(f"train: reusing run {previous.info.run_id}")
            return str(previous.info.run_id)
    return train(ds, model, train_config, prepare_run_id=prep_run_id, run_id=run_id, disco_lambdas=disco_lambdas)


def tune_step(config: PrepareConfig, data_dir: Path, experiment_id: str, tune_config: TuneConfig,
              train_config: TrainConfig, workers: int | None = None, run_id: str | None = None,
              scheduler: str = "") -> str:
    """Prepare (reusing) then run or resume the study; return the ``tune`` run id."""
    from wtag.execution import ExecutionConfig
    from wtag.tuning import search_space, tune

    search_space(tune_config.model, tune_config.space)  # a bad space fails before any data is generated
    prep_run_id, ds = prepare_step(config, data_dir, experiment_id, workers=workers, scheduler=scheduler)
    return tune(ds, tune_config, train_config, data_dir, ExecutionConfig(scheduler, workers or 0),
                prepare_run_id=prep_run_id, run_id=run_id)


def main_pipeline(config: PrepareConfig, data_dir: Path, experiment_id: str, model: str,
                  train_config: TrainConfig, metric: str, workers: int | None = None,
                  run_id: str | None = None, scheduler: str = "", max_sculpting: float | None = None,
                  disco_lambdas: Sequence[float] | None = None, tune_trials: int = 0) -> dict[str, str]:
    """[tune ->] prepare -> train -> evaluate -> export, each its own run, each reused when already done.

    ``tune_trials`` > 0 first tunes the one tagger ``model`` names (resuming its study) and trains it with the
    best parameters (``params_from``).

    Export moves two aliases: ``champion`` to the evaluation's champion, and ``decorrelated`` to its best
    candidate with test_mass_sculpting <= ``max_sculpting`` when one qualifies. The ``main`` run shows the
    champion's test metrics with their errors and logs the dataset.
    """
    from wtag.evaluation import DEFAULT_MAX_SCULPTING, evaluate_step
    from wtag.onnx_export import export_step
    from wtag.training import scan_text

    max_sculpting = DEFAULT_MAX_SCULPTING if max_sculpting is None else max_sculpting
    tune_config = None
    if tune_trials > 0:
        if train_config.params_from:
            raise WtagError("tune_trials and params_from both choose the parameters: pass one of them")
        tune_config = TuneConfig(model=model, n_trials=tune_trials)
    params = {**config.params(), "model": model, "metric": metric, **train_config.params(),
              "disco_lambda": scan_text(train_config, disco_lambdas), "max_sculpting": max_sculpting,
              **({"tune_trials": tune_trials} if tune_trials else {})}
    description = (f"pipeline: prepare {config.source}, train {model}, evaluate by {metric}, export champion "
                   f"and the best candidate with mass sculpting <= {max_sculpting:g}")
    run_name = f"main-{config.source}-{config.sample_size()}"
    with tracked_run(EntryPoint.MAIN, run_name, description, params, run_id=run_id):
        import mlflow

        tune_run = None
        if tune_config is not None:
            tune_run = tune_step(config, data_dir, experiment_id, tune_config, train_config, workers=workers,
                                 scheduler=scheduler)
            train_config = dataclasses.replace(train_config, params_from=tune_run)
        train_run = train_step(config, data_dir, experiment_id, model, train_config, workers=workers, reuse=True,
                               scheduler=scheduler, disco_lambdas=disco_lambdas)
        ds_digest = mlflow.get_run(train_run).data.params["dataset_digest"]
        eval_run, champion_run = evaluate_step(experiment_id, ds_digest, metric, train_run_id=train_run,
                                               max_sculpting=max_sculpting, n_bootstrap=train_config.n_bootstrap)
        export_run, version = export_step(experiment_id, champion_run)
        steps = {**({"tune": tune_run} if tune_run else {}), "train": train_run, "evaluate": eval_run,
                 "export": export_run, "champion": champion_run, "model_version": version}
        decorrelated_run = mlflow.get_run(eval_run).data.tags.get(Tag.DECORRELATED_RUN_ID)
        if decorrelated_run:
            export_decorrelated, decorrelated_version = export_step(experiment_id, decorrelated_run,
                                                                    alias=schema.DECORRELATED_ALIAS)
            steps.update(decorrelated=decorrelated_run, export_decorrelated=export_decorrelated,
                         decorrelated_model_version=decorrelated_version)
        else:
            _say(f"main: no candidate with test_mass_sculpting <= {max_sculpting:g}; alias "
                 f"'{schema.DECORRELATED_ALIAS}' not moved")
        champion = mlflow.get_run(champion_run)
        mlflow.log_metrics({k: v for k, v in champion.data.metrics.items() if k.startswith("test_")
                            and np.isfinite(v)})
        mlflow.set_tags({Tag.BEST_RUN_ID: champion_run,
                         Tag.BEST_CANDIDATE: candidate_label(champion.data.tags.get(Tag.TAGGER, ""),
                                                             decorrelation_of(champion))})
        ds = find_dataset(experiment_id, ds_digest)
        for split_name in ("train", "test"):
            log_dataset_input(ds, split_name)
        mlflow.set_tags({f"{Tag.STEP_PREFIX}{k}": v for k, v in steps.items()})
        _say("main: " + ", ".join(f"{k}={v}" for k, v in steps.items()))
        return steps
