"""Finding and reading MLflow runs: what every step needs to locate tagger runs, datasets, models and scores.

The steps (prepare, train, evaluate, export) are peers that never import each other; they share this layer.
Tag keys, entry-point names and artifact names come from ``wtag.schema``.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wtag import schema
from wtag.dataset import PreparedDataset, load_prepared
from wtag.errors import WtagError
from wtag.schema import Artifact, EntryPoint, Tag


def _client() -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def finished_runs(experiment_id: str, entry_point: str, max_results: int = 1000) -> list[Any]:
    """FINISHED runs of one entry point, newest first."""
    return list(_client().search_runs(
        [experiment_id], filter_string=f"tags.`{Tag.ENTRY_POINT}` = '{entry_point}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=max_results))


def decorrelation_of(run: Any) -> str:
    """A tagger run's decorrelation setting (``Tag.DECORRELATION``); ``none`` for runs from before the tag."""
    return str(run.data.tags.get(Tag.DECORRELATION) or schema.DECORRELATION_NONE)


def candidate_label(tagger: str, decorrelation: str) -> str:
    """How tables and plots name a candidate: ``dnn``, or ``dnn-disco3`` for a decorrelated training (also a
    valid MLflow metric-name prefix)."""
    return tagger if decorrelation == schema.DECORRELATION_NONE else f"{tagger}-{decorrelation}"


def tagger_runs(experiment_id: str, dataset_digest: str | None = None) -> list[Any]:
    """The newest FINISHED tagger run per (tagger, decorrelation setting) trained on ``dataset_digest`` (default:
    the newest run's): ``dnn`` and ``dnn`` with DisCo lambda = 3 are different candidates.

    Raises WtagError when there is none, naming the experiment and digest.
    """
    runs = finished_runs(experiment_id, EntryPoint.TRAIN_TAGGER)
    if not runs:
        raise WtagError(f"experiment {experiment_id} has no finished tagger runs (run the train step first)")
    digest = dataset_digest or runs[0].data.params.get("dataset_digest")
    newest: dict[tuple[str, str], Any] = {}
    for run in runs:
        name = run.data.tags.get(Tag.TAGGER)
        key = (name, decorrelation_of(run))
        if run.data.params.get("dataset_digest") == digest and name and key not in newest:
            newest[key] = run
    if not newest:
        raise WtagError(f"experiment {experiment_id} has no finished tagger runs on dataset {digest}")
    return list(newest.values())


def find_dataset(experiment_id: str, dataset_digest: str) -> PreparedDataset:
    """The prepared dataset with ``dataset_digest``, found through the prepare run that logged it."""
    runs = finished_runs(experiment_id, EntryPoint.PREPARE)
    paths = [r.data.params["dataset_path"] for r in runs
             if r.data.params.get("dataset_digest") == dataset_digest and r.data.params.get("dataset_path")]
    if not paths:
        raise WtagError(f"no finished prepare run in experiment {experiment_id} logged dataset {dataset_digest}")
    for path in paths:
        if (Path(path) / Artifact.MANIFEST).is_file():
            ds = load_prepared(path)
            if ds.digest == dataset_digest:
                return ds
    raise WtagError(f"prepared dataset {dataset_digest[:12]} is gone from {', '.join(dict.fromkeys(paths))} "
                    "(re-run the prepare step with the same parameters)")


def model_uri(run_id: str, name: str = Artifact.MODEL) -> str:
    """URI of the model logged as ``name`` in a run.

    MLflow 3 stores models as LoggedModels (``models:/m-<id>``) outside the run's artifacts; the run lists
    them among its outputs. ``runs:/<id>/<name>`` still resolves, and is the fallback for older runs.
    """
    client = _client()
    run = client.get_run(run_id)
    outputs = getattr(run, "outputs", None)
    for output in getattr(outputs, "model_outputs", None) or []:
        logged = client.get_logged_model(output.model_id)
        if logged.name == name:
            return str(logged.model_uri)
    return f"runs:/{run_id}/{name}"


def train_config(params: Mapping[str, str]) -> Any:
    """The TrainConfig a tagger run was trained with, rebuilt from its logged parameters."""
    from wtag.taggers import TrainConfig

    def parse(text: str, kind: type) -> Any:
        if kind is bool:
            return text == "True"
        if kind is int:
            return int(float(text))  # MLproject passes integers as floats ("30.0")
        return kind(text)

    return TrainConfig(**{f.name: parse(params[f.name], type(f.default)) for f in dataclasses.fields(TrainConfig)
                          if f.name in params})


def load_tagger(run: Any, ds: PreparedDataset, uri: str | None = None) -> Any:
    """Rebuild the native tagger of a tagger run (its class from the tagger tag)."""
    from wtag.taggers import tagger_class

    name = run.data.tags.get(Tag.TAGGER, "")
    cls = tagger_class(name)
    return cls.load_logged(uri or model_uri(run.info.run_id), train_config(run.data.params), ds.standardization)


def read_test_scores(run_id: str, dst: Path) -> tuple[np.ndarray, np.ndarray]:
    """(label, score) of a tagger run's held-out test jets, from its ``test_scores.npz`` artifact."""
    label, score, _ = read_test_arrays(run_id, dst)
    return label, score


def read_test_arrays(run_id: str, dst: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label, score, msd) of a tagger run's held-out test jets, from its ``test_scores.npz`` artifact."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=Artifact.TEST_SCORES, dst_path=str(dst))
    except MlflowException:
        raise WtagError(f"tagger run {run_id} has no {Artifact.TEST_SCORES} artifact "
                        "(not logged by the train step)") from None
    with np.load(path, allow_pickle=False) as data:
        return data["label"], data["score"], data["msd"]


def champion_of_newest_evaluation(experiment_id: str) -> str:
    """The champion tagger run chosen by the newest finished ``evaluate`` run."""
    for run in finished_runs(experiment_id, EntryPoint.EVALUATE, max_results=50):
        if run.data.tags.get(Tag.CHAMPION_RUN_ID):
            return str(run.data.tags[Tag.CHAMPION_RUN_ID])
    raise WtagError(f"experiment {experiment_id} has no finished evaluation run: run the evaluate step or pass "
                    "-P run_id=<tagger run>")


def decorrelated_of_newest_evaluation(experiment_id: str) -> str:
    """The run the newest finished ``evaluate`` run chose as the best with small enough mass sculpting."""
    for run in finished_runs(experiment_id, EntryPoint.EVALUATE, max_results=50):
        if run.data.tags.get(Tag.CHAMPION_RUN_ID):
            chosen = run.data.tags.get(Tag.DECORRELATED_RUN_ID)
            if not chosen:
                raise WtagError(f"the newest evaluation ({run.info.run_id}) found no candidate with "
                                f"test_mass_sculpting <= max_sculpting = {run.data.params.get('max_sculpting', '?')}: "
                                "train a decorrelated tagger (ddt, -P disco_lambda=...) or raise max_sculpting")
            return str(chosen)
    raise WtagError(f"experiment {experiment_id} has no finished evaluation run: run the evaluate step or pass "
                    "-P run_id=<tagger run>")


def tagger_run(run_id: str) -> Any:
    """A FINISHED tagger training run by id; WtagError naming the run for anything else."""
    from mlflow.exceptions import MlflowException

    try:
        run = _client().get_run(run_id)
    except MlflowException:
        raise WtagError(f"run_id {run_id}: no such run on the tracking server") from None
    if run.data.tags.get(Tag.ENTRY_POINT) != EntryPoint.TRAIN_TAGGER or not run.data.tags.get(Tag.TAGGER):
        raise WtagError(f"run_id {run_id}: not a tagger training run (tag {Tag.ENTRY_POINT} = "
                        f"'{run.data.tags.get(Tag.ENTRY_POINT, '')}')")
    if run.info.status != "FINISHED":
        raise WtagError(f"run_id {run_id}: tagger run is {run.info.status}, not FINISHED")
    return run


def init_from_run(spec: str) -> Any:
    """The FINISHED tagger run behind an ``init_from`` value: a tagger run id, ``runs:/<run id>/...``,
    ``models:/m-<id>`` (a logged model), or ``models:/<name>/<version>`` / ``models:/<name>@<alias>`` (a
    registered version: the exported ONNX model's source tagger run, tag ``wtag.source_run_id``)."""
    from mlflow.exceptions import MlflowException

    spec = spec.strip()
    what = f"init_from '{spec}'"
    if spec.startswith("runs:/"):
        run_id = spec[len("runs:/"):].split("/")[0]
    elif spec.startswith("models:/"):
        ref = spec[len("models:/"):].strip("/")
        client = _client()
        try:
            if ref.startswith("m-"):
                run_id = client.get_logged_model(ref.split("/")[0]).source_run_id or ""
            else:
                if "@" in ref:
                    name, alias = ref.split("@", 1)
                    version = client.get_model_version_by_alias(name, alias)
                elif "/" in ref:
                    name, number = ref.split("/", 1)
                    version = client.get_model_version(name, number)
                else:
                    raise WtagError(f"{what}: name a version or an alias (models:/NAME/VERSION, models:/NAME@ALIAS)")
                run_id = version.tags.get(Tag.SOURCE_RUN_ID) or version.run_id or ""
        except MlflowException as exc:
            raise WtagError(f"{what}: no such model on the tracking server ({str(exc).splitlines()[0]})") from None
    else:
        run_id = spec
    if not run_id:
        raise WtagError(f"{what}: cannot tell which training run produced that model")
    try:
        return tagger_run(run_id)
    except WtagError as exc:
        raise WtagError(f"{what}: {exc}") from None


def lineage(run: Any, max_depth: int = 20) -> list[Any]:
    """``run`` and its ancestors through ``wtag.init_from`` tags, oldest first."""
    chain = [run]
    while len(chain) < max_depth and chain[0].data.tags.get(Tag.INIT_FROM):
        try:
            chain.insert(0, _client().get_run(chain[0].data.tags[Tag.INIT_FROM]))
        except Exception:  # an ancestor deleted from the server ends the chain, it does not fail training
            break
    return chain


def mlflow_dataset(ds: PreparedDataset, split_name: str):
    """The split as an MLflow dataset (the high-level table, or the images for the images-only source),
    named and digested by the prepared dataset's content digest."""
    import mlflow
    import pandas as pd
    from mlflow.data.dataset_source_registry import get_registered_sources

    # The local-artifact source is registered twice in MLflow 3.17, so resolving a path warns; build it.
    local_source = next(s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource")
    source = local_source(str(ds.root.resolve()))
    name = f"wtag-{ds.source}-{split_name}"  # MLflow keeps one context per (name, digest)
    split = ds.split(split_name)
    if split.hl is not None:
        frame = pd.DataFrame(split.hl, columns=list(schema.HL_FEATURES))
        frame["label"] = split.label.astype(np.float64)  # integer columns make MLflow warn about NaN
        frame["weight"] = split.weight
        return mlflow.data.from_pandas(frame, source=source, targets="label", name=name, digest=ds.digest[:16])
    return mlflow.data.from_numpy(split.images, targets=split.label, source=source, name=name,
                                  digest=ds.digest[:16])


def log_dataset_input(ds: PreparedDataset, split_name: str) -> None:
    """Record the split as an input of the active run (``mlflow.log_input``)."""
    import mlflow

    mlflow.log_input(mlflow_dataset(ds, split_name), context=split_name)


def tuned_params(run_id: str) -> tuple[str, dict[str, Any]]:
    """(tagger, best parameters) of a FINISHED ``tune`` run, from its ``best_params.json``; WtagError naming the
    run for anything else."""
    import json

    import mlflow
    from mlflow.exceptions import MlflowException

    what = f"params_from {run_id}"
    try:
        run = _client().get_run(run_id)
    except MlflowException:
        raise WtagError(f"{what}: no such run on the tracking server") from None
    if run.data.tags.get(Tag.ENTRY_POINT) != EntryPoint.TUNE:
        raise WtagError(f"{what}: not a tune run (tag {Tag.ENTRY_POINT} = '{run.data.tags.get(Tag.ENTRY_POINT, '')}')")
    if run.info.status != "FINISHED":
        raise WtagError(f"{what}: tune run is {run.info.status}, not FINISHED")
    try:
        best = json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{Artifact.BEST_PARAMS}"))
    except MlflowException:
        raise WtagError(f"{what}: the tune run has no {Artifact.BEST_PARAMS}") from None
    return str(best["tagger"]), dict(best["params"])
