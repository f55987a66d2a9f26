from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import runs_of as _runs
from wtag.dataset import load_prepared
from wtag.runs import find_dataset, load_tagger
from wtag.schema import Tag
from wtag.taggers import TAGGER_NAMES


@pytest.mark.slow
def test_main_reuses_finished_steps(main_twice):
    uri, experiment, before, after_first, after_second = main_twice
    # the first main reuses prepare and train from the earlier `train` run, and adds evaluate + export (a second
    # export when a different candidate than the champion qualifies as `decorrelated`)
    reused = ("prepare", "train", "train_tagger")
    assert {k: after_first[k] for k in reused} == {k: before[k] for k in reused}
    main = _runs(MlflowClient(uri), experiment, "main")[-1]  # the first main run (search is newest first)
    tags = main.data.tags
    second_export = bool(tags.get("wtag.step.decorrelated")) and tags["wtag.step.decorrelated"] != tags[
        "wtag.step.champion"]
    assert after_first["evaluate"] - before["evaluate"] == 1
    assert after_first["export"] - before["export"] == 1 + second_export
    # the second reuses every step: no new runs but its own main run
    assert after_second == after_first


@pytest.mark.slow
def test_champion_alias_serves_an_onnx_model_equal_to_the_native_one(main_twice):
    uri, experiment, *_ = main_twice
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    version = client.get_model_version_by_alias("wtag", "champion")
    main = _runs(client, experiment, "main")[0]
    assert main.data.tags["wtag.step.model_version"] == version.version
    model = mlflow.pyfunc.load_model("models:/wtag@champion")
    assert model.metadata.flavors.keys() >= {"onnx", "python_function"}
    champion = client.get_run(main.data.tags["wtag.step.champion"])
    tagger = champion.data.tags["wtag.tagger"]
    prep = _runs(client, experiment, "prepare")[0]
    ds = load_prepared(prep.data.params["dataset_path"])
    inputs = ds.test.inputs(model.metadata.get_input_schema().input_names())
    out = model.predict(inputs if len(inputs) > 1 else next(iter(inputs.values())))
    assert set(out) == {"score"}  # MLflow's ONNX flavour answers a dict of named outputs
    scores = np.asarray(out["score"]).reshape(-1)
    logged = np.load(mlflow.artifacts.download_artifacts(run_id=champion.info.run_id, artifact_path="test_scores.npz"))
    tolerance = 1e-4
    frac = np.mean(np.abs(scores - logged["score"]) > tolerance)
    assert frac < (0.01 if tagger == "bdt" else 1e-9), (tagger, frac)
    # and equal to the native model reloaded from its run, as the export step loads it
    native = load_tagger(champion, find_dataset(champion.info.experiment_id, ds.digest)).predict(inputs)
    assert native.shape == scores.shape
    assert np.mean(np.abs(scores - native) > tolerance) < 0.01
    assert np.max(np.abs(scores - native)) < 1e-2
    export = client.get_run(version.tags.get(Tag.EXPORT_RUN_ID) or version.run_id)
    assert export.data.params["source_run_id"] == champion.info.run_id


@pytest.mark.slow
def test_main_run_shows_the_champion_and_the_decorrelated_choice(main_twice):
    uri, experiment, *_ = main_twice
    client = MlflowClient(uri)
    mlflow.set_tracking_uri(uri)
    main = _runs(client, experiment, "main")[0]
    champion = client.get_run(main.data.tags["wtag.step.champion"])
    assert main.data.tags["wtag.best_run_id"] == champion.info.run_id
    for key in ("test_auc", "test_r50", "test_r50_err", "test_mass_sculpting", "test_inv_jsd"):
        if np.isfinite(champion.data.metrics.get(key, np.nan)):  # NaN (no QCD jet passes) is not copied
            assert main.data.metrics[key] == champion.data.metrics[key], key
    assert "test_r50_err" in main.data.metrics
    assert {i.dataset.name for i in main.inputs.dataset_inputs} >= {"wtag-pythia-train", "wtag-pythia-test"}
    assert main.data.params["max_sculpting"] == "0.05"
    evaluation = client.get_run(main.data.tags["wtag.step.evaluate"])
    assert evaluation.data.tags["wtag.champion_run_id"] == champion.info.run_id
    table = mlflow.artifacts.load_text(f"runs:/{evaluation.info.run_id}/comparison.csv").splitlines()
    assert len(table) == 1 + len(TAGGER_NAMES)
    # every tagger type was loaded and timed in the single-thread child process
    for name in TAGGER_NAMES:
        assert evaluation.data.metrics[f"{name}.ms_per_1k"] > 0, name
        assert evaluation.data.metrics[f"{name}.onnx_bytes"] > 0, name
    chosen = evaluation.data.tags.get("wtag.decorrelated_run_id")
    if chosen:  # a candidate sculpted little enough: main registered it under the second alias
        assert main.data.tags["wtag.step.decorrelated"] == chosen
        version = client.get_model_version_by_alias("wtag", "decorrelated")
        assert version.version == main.data.tags["wtag.step.decorrelated_model_version"]
        assert client.get_run(chosen).data.metrics["test_mass_sculpting"] <= 0.05
    else:
        assert "wtag.step.decorrelated" not in main.data.tags
