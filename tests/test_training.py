from __future__ import annotations

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from wtag.errors import WtagError
from wtag.taggers import TAGGER_NAMES, tagger_class
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
        assert {f"{k}_err" for k in ("test_auc", "test_r50", "test_r30")} <= set(child.data.metrics), name
        assert child.data.tags["wtag.decorrelation"] == "none"
        n_train = int(child.data.params["n_train"])
        assert 0 < child.data.metrics["n_eff_train_signal"] + child.data.metrics["n_eff_train_background"] <= n_train
        assert "weighting" not in child.data.params  # the default (flat) is not logged, so older runs are reused
        if tagger_class(name).flavor == "keras":  # a one-epoch fit of a few hundred jets does not repay XLA
            assert child.data.metrics["trained_with_xla"] == 0.0, name
        if name not in ("cut", "ddt"):  # the cut-based taggers have no epochs
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


def test_disco_scan_plan_and_parsing():
    from wtag.taggers import TrainConfig
    from wtag.training import parse_disco_lambdas, scan_text, training_plan

    assert parse_disco_lambdas("0,1, 3,10,3") == [0.0, 1.0, 3.0, 10.0]
    for bad in ("", "a,1", "-1", "1,nan"):
        with pytest.raises(WtagError, match="disco_lambda"):
            parse_disco_lambdas(bad)
    plan = training_plan(["cut", "dnn", "ddt", "pfn"], TrainConfig(), [0.0, 3.0])
    assert [(n, c.disco_lambda) for n, c in plan] == [("cut", 0.0), ("dnn", 0.0), ("dnn", 3.0), ("ddt", 0.0),
                                                      ("pfn", 0.0), ("pfn", 3.0)]
    assert [c.decorrelation for _, c in plan] == ["none", "none", "disco3", "none", "none", "disco3"]
    assert scan_text(TrainConfig(), [0.0, 3.0]) == "0,3" and scan_text(TrainConfig(disco_lambda=2.5)) == "2.5"


@pytest.mark.slow
def test_train_scan_logs_one_candidate_per_setting_with_errors(tracking_server, tmp_path):
    """In-process train(): cut, ddt and dnn with disco_lambda 0 and 2 on the synthetic dataset."""
    from synthetic import log_prepare_run, new_experiment, synthetic_dataset

    from wtag.taggers import TrainConfig
    from wtag.training import train

    mlflow.set_tracking_uri(tracking_server)
    experiment_id = new_experiment("train-scan")
    ds = synthetic_dataset(tmp_path / "ds", seed=5)
    log_prepare_run(ds)
    parent_id = train(ds, "cut,ddt,dnn", TrainConfig(epochs=1, batch_size=64, n_bootstrap=30), disco_lambdas=[0, 2])
    client = MlflowClient(tracking_server)
    parent = client.get_run(parent_id)
    assert parent.data.params["disco_lambda"] == "0,2" and parent.data.params["n_bootstrap"] == "30"
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")
    settings = sorted((c.data.tags["wtag.tagger"], c.data.tags["wtag.decorrelation"]) for c in children)
    assert settings == [("cut", "none"), ("ddt", "none"), ("dnn", "disco2"), ("dnn", "none")]
    for child in children:
        m = child.data.metrics
        for key in ("test_auc", "test_r50", "test_r30", "test_mass_sculpting", "test_inv_jsd"):
            assert key in m and f"{key}_err" in m, (child.info.run_name, key)
        assert "test_mass_dcorr" in m
        name, setting = child.data.tags["wtag.tagger"], child.data.tags["wtag.decorrelation"]
        assert child.info.run_name.startswith(name if setting == "none" else f"{name}-{setting}-")
        assert child.data.params["disco_lambda"] == ("2.0" if setting == "disco2" else "0.0")
        if name == "ddt":
            assert {"ddt_slope", "ddt_slope_err", "ddt_intercept"} <= set(m)
            assert "plots/ddt_fit.png" in {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
    # the parent shows the best candidate's test metrics with errors, and the dataset
    best = client.get_run(parent.data.tags["wtag.best_run_id"])
    assert parent.data.metrics["test_r50"] == best.data.metrics["test_r50"]
    assert parent.data.metrics["test_r50_err"] == best.data.metrics["test_r50_err"]
    assert {i.dataset.name for i in parent.inputs.dataset_inputs} == {"wtag-pythia-train", "wtag-pythia-test"}
    results = mlflow.artifacts.load_text(f"runs:/{parent_id}/results.md")
    assert "| dnn-disco2 |" in results and " +- " in results


@pytest.mark.slow
def test_w_spectrum_weighting_is_logged_and_keeps_every_w_jet(tracking_server, tmp_path):
    """With weighting=w_spectrum the W jets train unweighted (their effective number is their count) and the QCD
    jets carry the weights that match the W pT spectrum; the default keeps the prepared weights (here all 1)."""
    from synthetic import log_prepare_run, new_experiment, synthetic_dataset

    from wtag.taggers import TrainConfig
    from wtag.training import train
    from wtag.weighting import effective_size, w_spectrum_weights

    mlflow.set_tracking_uri(tracking_server)
    experiment_id = new_experiment("train-weighting")
    ds = synthetic_dataset(tmp_path / "ds", seed=6)
    log_prepare_run(ds)
    n_w = int((ds.train.label == 1).sum())
    runs = {}
    for weighting in ("flat", "w_spectrum"):
        parent_id = train(ds, "bdt", TrainConfig(n_bootstrap=30, weighting=weighting))
        runs[weighting] = MlflowClient(tracking_server).search_runs(
            [experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'")[0]
    n_qcd = len(ds.train) - n_w
    assert runs["w_spectrum"].data.params["weighting"] == "w_spectrum"
    assert "weighting" not in runs["flat"].data.params
    qcd = effective_size(w_spectrum_weights(ds.train.pt, ds.train.label)[ds.train.label == 0])
    assert qcd < n_qcd
    assert runs["w_spectrum"].data.metrics["n_eff_train_signal"] == pytest.approx(n_w)
    assert runs["w_spectrum"].data.metrics["n_eff_train_background"] == pytest.approx(qcd)
    assert runs["flat"].data.metrics["n_eff_train_background"] == pytest.approx(n_qcd)
