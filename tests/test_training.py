from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from wtag.errors import WtagError
from wtag.taggers import TAGGER_NAMES
from wtag.training import TaggerResult, resolve_models, results_table

TEST_METRICS = {"test_auc", "test_r50", "test_r30", "test_accuracy", "test_mass_sculpting"}


def test_resolve_models():
    assert resolve_models("all") == list(TAGGER_NAMES)
    assert resolve_models(" cut, bdt ") == ["cut", "bdt"]
    with pytest.raises(WtagError, match="unknown tagger 'xgb'"):
        resolve_models("cut,xgb")
    with pytest.raises(WtagError, match="empty"):
        resolve_models(" , ")


def test_results_table_is_markdown():
    r = TaggerResult("cut", "r1", {"test_auc": 0.81234, "test_r50": 12.3, "test_r30": 40.0,
                                   "test_mass_sculpting": 0.2, "train_time_s": 1.0}, np.zeros(3))
    lines = results_table([r]).splitlines()
    assert lines[0].startswith("| tagger | test_auc") and lines[2] == "| cut | 0.8123 | 12.3 | 40.0 | 0.200 | 1 |"


@pytest.mark.slow
def test_mlflow_run_train_logs_parent_and_nested_runs(trained_all):
    uri, experiment, _, _, proc = trained_all
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("wtag.entry_point") == "train"]
    children = [r for r in runs if r.data.tags.get("wtag.entry_point") == "train_tagger"]
    prepares = [r for r in runs if r.data.tags.get("wtag.entry_point") == "prepare"]
    assert len(parents) == 1 and len(prepares) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["mlflow.project.entryPoint"] == "train"  # the run `mlflow run` created
    assert {c.data.tags["wtag.tagger"] for c in children} == set(TAGGER_NAMES)
    digest = prepares[0].data.params["dataset_digest"]
    for child in children:
        name = child.data.tags["wtag.tagger"]
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["dataset_digest"] == digest
        assert child.data.tags["wtag.git_commit"]
        assert TEST_METRICS <= set(child.data.metrics), name
        assert 0.0 <= child.data.metrics["test_auc"] <= 1.0
        assert child.info.run_name.startswith(f"{name}-pythia-")
        assert child.data.tags["mlflow.note.content"]
        if name not in ("cut",):
            for key in ("loss", "val_loss", "val_auc"):
                assert client.get_metric_history(child.info.run_id, key), (name, key)
        plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
        assert {"plots/roc.png", "plots/scores.png", "plots/mass_sculpting.png"} <= plots, name
        if name == "bdt":
            assert "plots/feature_importance.png" in plots
        assert child.inputs.dataset_inputs, name
    assert "results.md" in {a.path for a in client.list_artifacts(parent.info.run_id)}


@pytest.mark.slow
@pytest.mark.parametrize("tagger", ["cut", "bdt", "dnn"])
def test_logged_model_loads_and_scores(trained_all, tagger):
    uri, experiment, _, _, _ = trained_all
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    # Other tests export and evaluate in this experiment too; their runs carry the tagger tag as well.
    (run,) = client.search_runs([exp.experiment_id],
                                f"tags.`wtag.entry_point` = 'train_tagger' and tags.`wtag.tagger` = '{tagger}'")
    mlflow.set_tracking_uri(uri)
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id],
                                         filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list")
    assert len(models) == 1
    model = mlflow.pyfunc.load_model(models[0].model_uri)
    from wtag.dataset import load_prepared

    prep = client.search_runs([exp.experiment_id], "tags.`wtag.entry_point` = 'prepare'")[0]
    ds = load_prepared(prep.data.params["dataset_path"])
    scores = np.asarray(model.predict(ds.test.hl)).reshape(-1)
    logged = np.load(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="test_scores.npz"))
    assert scores.shape == (len(ds.test),)
    assert np.all((scores >= 0) & (scores <= 1))
    np.testing.assert_allclose(scores, logged["score"], atol=1e-5)
