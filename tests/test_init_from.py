"""``init_from``: a Keras tagger starts from a parent model's weights (tagger run id, runs:/ or models:/ URI), the
run records the parent in a tag and the lineage in its description, and a mismatched parent is refused."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from keras_helpers import synthetic_split, tiny_config

from wtag.dataset import PreparedDataset, Standardization, load_prepared, save_prepared
from wtag.errors import WtagError
from wtag.runs import init_from_run, model_uri
from wtag.schema import EntryPoint, Tag
from wtag.taggers import build_tagger
from wtag.training import train

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        # MLflow's own hints while logging the tiny datasets and models; nothing wtag can change.
        "ignore:Hint. Inferred schema contains integer column:UserWarning",
        "ignore:The specified dataset source can be interpreted in multiple ways:UserWarning",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
        "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning",
        "ignore:.*Any type hint is inferred as AnyType:UserWarning",
    ),
]


def _dataset(root: Path, seed: int, source: str) -> PreparedDataset:
    splits = {name: synthetic_split(n, seed=seed + i) for i, (name, n) in enumerate(
        (("train", 400), ("val", 160), ("test", 160)))}
    save_prepared(root, {"source": source, "inputs": list(splits["train"].available())}, splits,
                  Standardization.fit(splits["train"]))
    return load_prepared(root)


def _tagger_run(client, experiment_id: str, train_run_id: str):
    (run,) = client.search_runs([experiment_id], filter_string=(
        f"tags.`{Tag.ENTRY_POINT}` = '{EntryPoint.TRAIN_TAGGER}' and tags.`mlflow.parentRunId` = '{train_run_id}'"))
    return run


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple]:
    """A dnn trained for 3 epochs on one dataset (the "simulation"), and a second dataset to fine-tune on.

    Yields (client, experiment id, parent tagger run, fine-tuning dataset, pretraining dataset)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("init-from")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        try:
            experiment_id = mlflow.create_experiment("init-from", artifact_location=(tmp / "artifacts").as_uri())
            mlflow.set_experiment(experiment_id=experiment_id)
            client = MlflowClient()
            pretrain = _dataset(tmp / "pretrain", seed=10, source="pythia")
            train_run = train(pretrain, "dnn", tiny_config(epochs=3))
            yield (client, experiment_id, _tagger_run(client, experiment_id, train_run),
                   _dataset(tmp / "finetune", seed=20, source="cms-ntuple"), pretrain)
        finally:
            mlflow.set_tracking_uri(None)


def _first_epoch_loss(client, run) -> float:
    history = client.get_metric_history(run.info.run_id, "loss")
    return next(m.value for m in history if m.step == 0)


def test_training_starts_from_the_parent_and_records_it(parent: tuple) -> None:
    client, experiment_id, parent_run, ds, _ = parent
    parent_id = parent_run.info.run_id
    scratch = _tagger_run(client, experiment_id, train(ds, "dnn", tiny_config(epochs=1)))
    tuned = _tagger_run(client, experiment_id, train(ds, "dnn", tiny_config(epochs=1, init_from=parent_id)))
    assert tuned.data.tags[Tag.INIT_FROM] == parent_id
    assert Tag.INIT_FROM not in scratch.data.tags
    assert tuned.data.params["init_from"] == parent_id
    description = tuned.data.tags["mlflow.note.content"]
    assert f"starting from the weights of run {parent_id}" in description
    assert f"lineage: dnn run {parent_id} (pythia, 400 training jets" in description
    # Same seed, same data, same batches: only the starting weights differ. The pretrained start is already
    # a good classifier on this (similar) data, so its first-epoch loss is well below the random start's.
    assert _first_epoch_loss(client, tuned) < _first_epoch_loss(client, scratch) - 0.05


def test_start_from_copies_every_weight(parent: tuple) -> None:
    """With a vanishing learning rate, a model started from the parent scores exactly like the parent (given
    the parent's standardization constants, which belong to the graph, not to the copied weights)."""
    import mlflow

    _, _, parent_run, ds, pretrain = parent
    uri = model_uri(parent_run.info.run_id)
    reference = np.asarray(mlflow.pyfunc.load_model(uri).predict({"hl": ds.test.hl})).ravel()
    tagger = build_tagger("dnn", tiny_config(epochs=1, learning_rate=1e-12), pretrain.standardization)
    tagger.start_from(uri)
    tagger.fit(ds.train, ds.val)
    np.testing.assert_allclose(tagger.predict({"hl": ds.test.hl}), reference, atol=1e-5)
    scratch = build_tagger("dnn", tiny_config(epochs=1, learning_rate=1e-12), pretrain.standardization)
    scratch.fit(ds.train, ds.val)
    assert np.max(np.abs(scratch.predict({"hl": ds.test.hl}) - reference)) > 0.05


def test_uris_resolve_to_the_parent_run(parent: tuple) -> None:
    client, _, parent_run, _, _ = parent
    parent_id = parent_run.info.run_id
    logged = model_uri(parent_id)
    assert logged.startswith("models:/m-")
    for spec in (parent_id, f"runs:/{parent_id}/model", logged):
        assert init_from_run(spec).info.run_id == parent_id
    client.create_registered_model("wtag-init-test")
    version = client.create_model_version("wtag-init-test", logged, run_id=parent_id,
                                          tags={Tag.SOURCE_RUN_ID: parent_id})
    client.set_registered_model_alias("wtag-init-test", "base", version.version)
    for spec in (f"models:/wtag-init-test/{version.version}", "models:/wtag-init-test@base"):
        assert init_from_run(spec).info.run_id == parent_id


def test_mismatched_parents_are_refused(parent: tuple) -> None:
    _, _, parent_run, ds, _ = parent
    parent_id = parent_run.info.run_id
    with pytest.raises(WtagError, match=f"run {parent_id} holds a 'dnn' model, which cannot initialise tagger 'pfn'"):
        train(ds, "pfn", tiny_config(epochs=1, init_from=parent_id))
    with pytest.raises(WtagError, match="tagger 'bdt' cannot start from a parent model"):
        train(ds, "bdt", tiny_config(epochs=1, init_from=parent_id))
    with pytest.raises(WtagError, match="init_from 'nonexistent0000': run_id nonexistent0000: no such run"):
        train(ds, "dnn", tiny_config(epochs=1, init_from="nonexistent0000"))
    with pytest.raises(WtagError, match="init_from 'models:/no-such-model@x': no such model"):
        train(ds, "dnn", tiny_config(epochs=1, init_from="models:/no-such-model@x"))


def test_freeze_conv_keeps_the_pretrained_convolutions_and_trains_the_head(parent: tuple) -> None:
    """``freeze=conv``: after fine-tuning, every convolution kernel is the parent's and the dense layers moved;
    freezing needs a parent, and a tagger without convolutions says so."""
    import mlflow

    client, experiment_id, dnn_run, ds, pretrain = parent
    cnn_run = _tagger_run(client, experiment_id, train(pretrain, "cnn_tutorial", tiny_config(epochs=1)))
    uri = model_uri(cnn_run.info.run_id)
    parent_model = mlflow.keras.load_model(uri)
    tagger = build_tagger("cnn_tutorial", tiny_config(epochs=2, freeze="conv"), ds.standardization)
    tagger.start_from(uri)
    tagger.fit(ds.train, ds.val)
    for name in ("conv0", "conv1", "conv2", "dense0"):
        moved = [np.max(np.abs(a - b)) for a, b in zip(tagger.model.get_layer(name).get_weights(),
                                                        parent_model.get_layer(name).get_weights())]
        assert (max(moved) == 0.0) == name.startswith("conv"), (name, moved)
    with pytest.raises(WtagError, match="freeze=conv keeps pretrained layers fixed: it needs init_from"):
        build_tagger("cnn_tutorial", tiny_config(epochs=1, freeze="conv"), ds.standardization).fit(ds.train, ds.val)
    dnn = build_tagger("dnn", tiny_config(epochs=1, freeze="conv"), ds.standardization)
    dnn.start_from(model_uri(dnn_run.info.run_id))
    with pytest.raises(WtagError, match="tagger 'dnn' has no convolutional layers to freeze"):
        dnn.fit(ds.train, ds.val)
