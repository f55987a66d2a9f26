"""Evaluation against a real tracking server: tagger runs with known metrics, champion choice, table artifacts.

The runs use the small linear test tagger of tests/synthetic.py (registered under several names), so these tests
need no Keras; the evaluation of every REGISTRY tagger runs in test_onnx_export, before exporting the champion.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import uuid
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic import LinearTagger, log_prepare_run, new_experiment, synthetic_dataset

from wtag.dataset import PreparedDataset
from wtag.errors import WtagError
from wtag.evaluation import Candidate, pick_champion, table_csv, table_markdown
from wtag.runs import train_config
from wtag.taggers import REGISTRY, TrainConfig

pytestmark = pytest.mark.filterwarnings(
    # emitted once, when mlflow.pyfunc is first imported (mlflow.types.responses builds a schema at import time)
    "ignore:.*Any type hint is inferred as AnyType:UserWarning",
)

NAMES = ("lin_a", "lin_b", "lin_c")
# Known metrics: lin_b has the best rejection, lin_c the least mass sculpting, lin_a the best AUC.
KNOWN = {
    "lin_a": {"test_auc": 0.95, "test_r50": 10.0, "test_r30": 40.0, "test_mass_sculpting": 0.30},
    "lin_b": {"test_auc": 0.90, "test_r50": 30.0, "test_r30": 20.0, "test_mass_sculpting": 0.20},
    "lin_c": {"test_auc": 0.80, "test_r50": 20.0, "test_r30": 60.0, "test_mass_sculpting": 0.10},
}


@pytest.fixture(scope="module")
def linear_names() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        for name in NAMES:
            mp.setitem(REGISTRY, name, f"{LinearTagger.__module__}:LinearTagger")
        yield


def fake_tagger_run(ds: PreparedDataset, name: str, metrics: Mapping[str, float],
                    config: TrainConfig = TrainConfig(epochs=1, seed=3), decorrelation: str = "none") -> str:
    """A tagger run as train_one logs it, but with chosen metrics (the model and test scores are real)."""
    import mlflow

    from wtag.tracking import tracked_run

    tagger = LinearTagger(config, ds.standardization)
    # each candidate fits on its own two thirds of the training jets: different (real) test scores per candidate
    rng = np.random.default_rng(sum(map(ord, name + decorrelation)))
    tagger.fit(ds.train.subset(np.sort(rng.choice(len(ds.train), 2 * len(ds.train) // 3, replace=False))), ds.val)
    params = {**dataclasses.asdict(config), "tagger": name, "dataset_digest": ds.digest, "source": ds.source}
    tags = {"wtag.tagger": name, "wtag.family": "dense", "wtag.dataset_digest": ds.digest, "wtag.source": ds.source,
            "wtag.decorrelation": decorrelation}
    with tracked_run("train_tagger", f"{name}-fake", f"{name} with known metrics", params, tags=tags) as run:
        mlflow.log_metrics({**metrics, "test_accuracy": 0.5, "train_time_s": 1.0})
        tagger.log_model("model", {"hl": ds.test.hl[:5]})
        scores = tagger.predict(ds.test.inputs(("hl",)))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "test_scores.npz"
            np.savez(path, score=scores, label=ds.test.label, msd=ds.test.msd)
            mlflow.log_artifact(str(path))
        return str(run.info.run_id)


@pytest.fixture(scope="module")
def known_runs(tracking_server: str, tmp_path_factory: pytest.TempPathFactory,
               linear_names: None) -> dict[str, Any]:
    import mlflow

    mlflow.set_tracking_uri(tracking_server)
    experiment_id = new_experiment("evaluate")
    other = synthetic_dataset(tmp_path_factory.mktemp("prepared") / "other", seed=21)
    log_prepare_run(other)
    # a better-looking run on another dataset must not take part
    stranger = fake_tagger_run(other, "lin_a", {**KNOWN["lin_a"], "test_r50": 1000.0})
    ds = synthetic_dataset(tmp_path_factory.mktemp("prepared") / "known", seed=13)
    log_prepare_run(ds)
    # an older lin_b run with a better metric: only the newest run per tagger counts
    stale = fake_tagger_run(ds, "lin_b", {**KNOWN["lin_b"], "test_r50": 500.0})
    runs = {name: fake_tagger_run(ds, name, KNOWN[name]) for name in NAMES}
    return {"experiment_id": experiment_id, "ds": ds, "runs": runs, "stale": stale, "stranger": stranger,
            "other": other}


def artifact_text(run_id: str, path: str) -> str:
    import mlflow

    return mlflow.artifacts.load_text(f"runs:/{run_id}/{path}")


@pytest.mark.slow
def test_evaluate_picks_champion_and_writes_table(known_runs: dict[str, Any]) -> None:
    import mlflow

    from wtag.evaluation import evaluate_step

    ds = known_runs["ds"]
    eval_run_id, champion = evaluate_step(known_runs["experiment_id"], ds.digest, "test_r50")
    assert champion == known_runs["runs"]["lin_b"]
    run = mlflow.get_run(eval_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["wtag.entry_point"] == "evaluate"
    assert run.data.tags["wtag.champion_tagger"] == "lin_b"
    assert run.data.tags["wtag.champion_metric"] == "test_r50"
    assert run.data.metrics["champion_test_r50"] == 30.0
    assert run.data.params["dataset_digest"] == ds.digest
    assert run.data.params["candidate_runs"] == ",".join(sorted(known_runs["runs"].values()))

    rows = list(csv.DictReader(io.StringIO(artifact_text(eval_run_id, "comparison.csv"))))
    assert [r["tagger"] for r in rows] == list(NAMES)
    assert {r["run_id"] for r in rows} == set(known_runs["runs"].values())
    for row in rows:
        assert float(row["test_r50"]) == KNOWN[row["tagger"]]["test_r50"]
        assert float(row["test_mass_sculpting"]) == KNOWN[row["tagger"]]["test_mass_sculpting"]
        assert int(row["native_bytes"]) > 100  # weights.json with ten weights
        assert 0 < float(row["native_ms_per_1k"]) < 1e4
        assert 0 < float(row["onnx_ms_per_1k"]) < 1e4
        assert float(row["onnx_bytes"]) > 0
        assert row["note"] == ""
        # errors the fake runs did not log come from the evaluation's bootstrap of their real test scores
        assert float(row["test_r50_err"]) >= 0 and float(row["test_auc_err"]) >= 0, row
        assert float(row["test_inv_jsd"]) == pytest.approx(1.0 / KNOWN[row["tagger"]]["test_mass_sculpting"])
        assert row["decorrelation"] == "none" and row["candidate"] == row["tagger"]
    assert any(float(row["test_r50_err"]) > 0 for row in rows)
    markdown = artifact_text(eval_run_id, "comparison.md")
    assert "| **lin_b** | dense | 0.9000 +- 0.0" in markdown
    assert "| 0.200 +- 0." in markdown and "| 5.0 +- " in markdown  # sculpting and 1/JSD with errors
    assert markdown.count("\n") == 2 + len(NAMES)
    reason = artifact_text(eval_run_id, "champion.txt")
    assert reason.startswith(f"champion: lin_b (run {champion}) with the highest test_r50 = 30 among 3 taggers; "
                             "runner-up lin_c with 20")
    # the margin in words and as a tag: 10 units of r50 between two different linear taggers of the same jets
    margin = float(run.data.tags["wtag.champion_margin_sigma"])
    assert margin > 0 and run.data.metrics["champion_margin_sigma"] == pytest.approx(margin, rel=1e-2)
    assert f"= {margin:.2f} standard deviations of the paired bootstrap difference" in reason
    assert run.data.tags["wtag.champion_significant"] == str(margin >= 2.0).lower()
    assert ("(significant;" in reason) == (margin >= 2.0)
    assert run.data.metrics["champion_test_auc"] == 0.90 and run.data.metrics["champion_test_r50_err"] > 0
    # the comparison as an MLflow table, and the decorrelation front
    table = json.loads(artifact_text(eval_run_id, "comparison_table.json"))
    assert table["columns"][:3] == ["tagger", "decorrelation", "candidate"] and len(table["data"]) == len(NAMES)
    front = list(csv.DictReader(io.StringIO(artifact_text(eval_run_id, "decorrelation_front.csv"))))
    # r50 / 1/JSD: lin_a 10 / 3.3, lin_b 30 / 5, lin_c 20 / 10: lin_a is dominated by both others
    assert {r["candidate"]: r["on_front"] for r in front} == {"lin_a": "False", "lin_b": "True", "lin_c": "True"}
    assert run.data.metrics["front_size"] == 2
    for name in ("decorrelation_front.png", "decorrelation_front_mass.png"):
        png = Path(mlflow.artifacts.download_artifacts(run_id=eval_run_id, artifact_path=name))
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    # no candidate sculpts less than the default max_sculpting = 0.05
    assert "wtag.decorrelated_run_id" not in run.data.tags
    assert "decorrelated: none of 3 candidates has test_mass_sculpting <= 0.05 (the lowest is 0.1)" in reason
    png = Path(mlflow.artifacts.download_artifacts(run_id=eval_run_id, artifact_path="roc_all.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


@pytest.mark.slow
@pytest.mark.parametrize(("metric", "winner"), [("test_mass_sculpting", "lin_c"), ("test_auc", "lin_a"),
                                                ("test_r30", "lin_c")])
def test_champion_follows_the_metric(known_runs: dict[str, Any], metric: str, winner: str) -> None:
    import mlflow

    from wtag.evaluation import evaluate_step

    eval_run_id, champion = evaluate_step(known_runs["experiment_id"], known_runs["ds"].digest, metric,
                                          timing=False)
    assert champion == known_runs["runs"][winner]
    run = mlflow.get_run(eval_run_id)
    assert run.data.metrics[f"champion_{metric}"] == KNOWN[winner][metric]
    rows = list(csv.DictReader(io.StringIO(artifact_text(eval_run_id, "comparison.csv"))))
    assert all(r["native_ms_per_1k"] == "nan" for r in rows)


def test_default_digest_is_the_newest_tagger_runs(known_runs: dict[str, Any]) -> None:
    from wtag.runs import tagger_runs

    runs = tagger_runs(known_runs["experiment_id"])
    assert {r.info.run_id for r in runs} == set(known_runs["runs"].values())
    other = tagger_runs(known_runs["experiment_id"], known_runs["other"].digest)
    assert [r.info.run_id for r in other] == [known_runs["stranger"]]


def test_reuse_and_invalidation(known_runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Same parameters and commit: the evaluation is reused; a new tagger run on the dataset forces a new one."""
    import mlflow

    from wtag import tracking
    from wtag.evaluation import evaluate_step

    monkeypatch.setattr(tracking, "git_commit", lambda repo=None: "test-commit-evaluate")
    experiment_id, digest = known_runs["experiment_id"], known_runs["ds"].digest
    first, champion = evaluate_step(experiment_id, digest, "test_r50", train_run_id="abc", timing=False)
    again, champion_again = evaluate_step(experiment_id, digest, "test_r50", train_run_id="abc", timing=False)
    assert (again, champion_again) == (first, champion)
    other_train_run, _ = evaluate_step(experiment_id, digest, "test_r50", train_run_id="def", timing=False)
    assert other_train_run != first

    newer = fake_tagger_run(known_runs["ds"], "lin_a", {**KNOWN["lin_a"], "test_r50": 99.0})
    try:
        fresh, new_champion = evaluate_step(experiment_id, digest, "test_r50", train_run_id="abc", timing=False)
        assert fresh != first and new_champion == newer
    finally:
        mlflow.tracking.MlflowClient().delete_run(newer)


def test_evaluate_nests_under_an_active_run_or_fills_a_given_one(known_runs: dict[str, Any]) -> None:
    """Inside ``main`` the evaluation is a child run; under ``mlflow run -e evaluate`` it fills that run."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from wtag.evaluation import evaluate_step

    experiment_id, digest = known_runs["experiment_id"], known_runs["ds"].digest
    with mlflow.start_run(experiment_id=experiment_id, run_name="parent") as parent:
        child, _ = evaluate_step(experiment_id, digest, "test_auc", train_run_id="nested", timing=False)
    assert mlflow.get_run(child).data.tags["mlflow.parentRunId"] == parent.info.run_id
    created = MlflowClient().create_run(experiment_id).info.run_id
    filled, champion = evaluate_step(experiment_id, digest, "test_auc", run_id=created, timing=False)
    run = mlflow.get_run(filled)
    assert filled == created and run.info.status == "FINISHED"
    assert run.data.tags["wtag.champion_run_id"] == champion == known_runs["runs"]["lin_a"]


def test_evaluate_errors_name_the_problem(known_runs: dict[str, Any], tracking_server: str) -> None:
    from wtag.evaluation import evaluate_step
    from wtag.runs import find_dataset

    with pytest.raises(WtagError, match="metric 'test_accuracy' cannot choose a champion"):
        evaluate_step(known_runs["experiment_id"], None, "test_accuracy")
    with pytest.raises(WtagError, match="no finished tagger runs on dataset deadbeef"):
        evaluate_step(known_runs["experiment_id"], "deadbeef")
    empty = new_experiment("evaluate-empty")
    with pytest.raises(WtagError, match=f"experiment {empty} has no finished tagger runs"):
        evaluate_step(empty, None)
    with pytest.raises(WtagError, match="no finished prepare run in experiment .* logged dataset cafe"):
        find_dataset(known_runs["experiment_id"], "cafe")


def test_missing_dataset_directory_fails_clearly(tmp_path: Path, tracking_server: str,
                                                 linear_names: None) -> None:
    import mlflow

    from wtag.evaluation import evaluate_step

    mlflow.set_tracking_uri(tracking_server)
    experiment_id = new_experiment("evaluate-gone")
    ds = synthetic_dataset(tmp_path / "gone", seed=17)
    log_prepare_run(ds)
    fake_tagger_run(ds, "lin_a", KNOWN["lin_a"])
    (ds.root / "manifest.json").unlink()
    with pytest.raises(WtagError, match=f"prepared dataset {ds.digest[:12]} is gone from {ds.root}"):
        evaluate_step(experiment_id, None, timing=False)


# ---------------------------------------------------------------------------------------------------------
# Pure functions


def candidate(name: str, **metrics: float) -> Candidate:
    return Candidate(run_id=f"run-{name}", tagger=name, family="dense", metrics=dict(metrics), params={},
                     model_uri="")


def test_pick_champion_directions_nan_inf_and_ties() -> None:
    a = candidate("a", test_r50=10.0, test_auc=0.9, test_mass_sculpting=0.2)
    b = candidate("b", test_r50=math.inf, test_auc=0.8, test_mass_sculpting=math.nan)
    c = candidate("c", test_r50=math.nan, test_auc=0.99, test_mass_sculpting=0.1)
    assert pick_champion([a, b, c], "test_r50")[0] is b  # +inf rejection: no background passes, the best
    assert pick_champion([a, b, c], "test_auc")[0] is c
    assert pick_champion([a, b, c], "test_mass_sculpting")[0] is c  # lower is better; NaN is never chosen
    assert pick_champion([a, c], "test_r50")[0] is a

    tie_a = candidate("tie_a", test_r50=20.0, test_auc=0.90)
    tie_b = candidate("tie_b", test_r50=20.0, test_auc=0.95)
    best, reason = pick_champion([tie_a, tie_b], "test_r50")
    assert best is tie_b and "tie broken by test_auc" in reason
    same_a = candidate("same_a", test_r50=20.0, test_auc=0.9)
    same_b = candidate("same_b", test_r50=20.0, test_auc=0.9)
    same_a.native_ms_per_1k, same_b.native_ms_per_1k = 5.0, 2.0
    assert pick_champion([same_a, same_b], "test_r50")[0] is same_b  # then the faster one
    assert pick_champion([same_b, same_a], "test_r50")[0] is same_b  # whatever the order

    with pytest.raises(WtagError, match="no tagger run has a finite test_r50"):
        pick_champion([candidate("x", test_r50=math.nan)], "test_r50")
    with pytest.raises(WtagError, match="metric 'loss' cannot choose a champion"):
        pick_champion([a], "loss")
    with pytest.raises(WtagError, match="no tagger runs"):
        pick_champion([], "test_r50")


def test_tables_show_missing_figures() -> None:
    a = candidate("a", test_auc=0.91234, test_r50=12.34, test_r30=50.0, test_mass_sculpting=0.1234)
    a.native_bytes, a.native_ms_per_1k = 2048, 3.25
    text = table_markdown([a], champion=a)
    assert "| **a** | dense | 0.9123 | 12.3 | 50.0 | 0.123 | n/a | 2.0 | n/a | 3.25 | n/a |" in text
    a.metrics.update(test_r50_err=1.234, test_inv_jsd=8.1, test_inv_jsd_err=0.5)
    assert "| 12.3 +- 1.2 | 50.0 | 0.123 | 8.1 +- 0.5 |" in table_markdown([a])
    rows = list(csv.DictReader(io.StringIO(table_csv([a]))))
    assert rows[0]["test_auc"] == "0.91234" and rows[0]["onnx_bytes"] == "nan" and rows[0]["test_accuracy"] == "nan"


def test_train_config_from_logged_params() -> None:
    config = TrainConfig(epochs=7, batch_size=32, learning_rate=3e-4, patience=2, seed=9, verbose=True)
    logged = {k: str(v) for k, v in dataclasses.asdict(config).items()}
    assert train_config(logged) == config
    assert train_config({"epochs": "30.0", "unrelated": "x"}) == TrainConfig(epochs=30)


# ---------------------------------------------------------------------------------------------------------
# Decorrelated candidates: one per (tagger, decorrelation setting), max_sculpting, the second alias

DECORRELATED = {
    ("lin_a", "none"): {"test_auc": 0.95, "test_r50": 40.0, "test_r30": 90.0, "test_mass_sculpting": 0.30},
    ("lin_a", "disco3"): {"test_auc": 0.85, "test_r50": 12.0, "test_r30": 30.0, "test_mass_sculpting": 0.04},
    ("lin_b", "none"): {"test_auc": 0.80, "test_r50": 5.0, "test_r30": 12.0, "test_mass_sculpting": 0.02},
    ("lin_c", "disco10"): {"test_auc": 0.75, "test_r50": 8.0, "test_r30": 20.0, "test_mass_sculpting": 0.01},
}


@pytest.fixture(scope="module")
def decorrelation_runs(tracking_server: str, tmp_path_factory: pytest.TempPathFactory,
                       linear_names: None) -> dict[str, Any]:
    import mlflow

    mlflow.set_tracking_uri(tracking_server)
    experiment_id = new_experiment("evaluate-decorrelated")
    ds = synthetic_dataset(tmp_path_factory.mktemp("prepared") / "decorrelated", seed=31)
    log_prepare_run(ds)
    # an older disco3 run of lin_a: the newest per (tagger, setting) counts, and settings do not shadow each other
    fake_tagger_run(ds, "lin_a", {**DECORRELATED[("lin_a", "disco3")], "test_r50": 99.0}, decorrelation="disco3")
    runs = {key: fake_tagger_run(ds, key[0], metrics, decorrelation=key[1]) for key, metrics in DECORRELATED.items()}
    return {"experiment_id": experiment_id, "ds": ds, "runs": runs}


def test_candidates_per_tagger_and_decorrelation(decorrelation_runs: dict[str, Any]) -> None:
    from wtag.runs import tagger_runs

    runs = tagger_runs(decorrelation_runs["experiment_id"])
    assert {r.info.run_id for r in runs} == set(decorrelation_runs["runs"].values())


@pytest.mark.slow
def test_max_sculpting_picks_the_decorrelated_candidate_and_export_registers_it(
        decorrelation_runs: dict[str, Any]) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    from wtag.evaluation import evaluate_step
    from wtag.onnx_export import export_step

    experiment_id, digest, runs = (decorrelation_runs[k] for k in ("experiment_id", "ds", "runs"))
    digest = digest.digest
    eval_run, champion = evaluate_step(experiment_id, digest, "test_r50", timing=False, n_bootstrap=50)
    assert champion == runs[("lin_a", "none")]
    run = mlflow.get_run(eval_run)
    # among sculpting <= 0.05: lin_a-disco3 (r50 12) beats lin_c-disco10 (8) and lin_b (5)
    assert run.data.tags["wtag.decorrelated_run_id"] == runs[("lin_a", "disco3")]
    assert run.data.tags["wtag.decorrelated_candidate"] == "lin_a-disco3"
    assert run.data.params["max_sculpting"] == "0.05"
    rows = list(csv.DictReader(io.StringIO(artifact_text(eval_run, "comparison.csv"))))
    assert sorted(r["candidate"] for r in rows) == ["lin_a", "lin_a-disco3", "lin_b", "lin_c-disco10"]
    reason = artifact_text(eval_run, "champion.txt")
    assert "decorrelated: lin_a-disco3 (run " in reason
    assert "among the 3 candidates with test_mass_sculpting <= 0.05" in reason

    tighter, _ = evaluate_step(experiment_id, digest, "test_r50", timing=False, max_sculpting=0.015, n_bootstrap=50)
    assert mlflow.get_run(tighter).data.tags["wtag.decorrelated_run_id"] == runs[("lin_c", "disco10")]

    # export -P alias=decorrelated, no run id: the newest evaluation's decorrelated choice (lin_c-disco10)
    model_name = f"wtag-test-{uuid.uuid4().hex[:6]}"
    _, version = export_step(experiment_id, alias="decorrelated", model_name=model_name)
    client = MlflowClient()
    assert client.get_model_version_by_alias(model_name, "decorrelated").version == version
    assert client.get_model_version(model_name, version).tags["wtag.source_run_id"] == runs[("lin_c", "disco10")]
    _, champion_version = export_step(experiment_id, model_name=model_name)  # the champion alias is separate
    assert client.get_model_version_by_alias(model_name, "champion").version == champion_version != version

    none, _ = evaluate_step(experiment_id, digest, "test_r50", timing=False, max_sculpting=0.001, n_bootstrap=50)
    assert "wtag.decorrelated_run_id" not in mlflow.get_run(none).data.tags
    with pytest.raises(WtagError, match="found no candidate with test_mass_sculpting <= max_sculpting = 0.001"):
        export_step(experiment_id, alias="decorrelated", model_name=model_name)
    with pytest.raises(WtagError, match="max_sculpting=-1"):
        evaluate_step(experiment_id, digest, max_sculpting=-1.0)


def test_champion_margin_is_paired() -> None:
    """Two taggers that differ by a constant on every resample: the paired difference has no spread."""
    from wtag.evaluation import champion_margin, rank

    a = candidate("a", test_r50=30.0, test_r50_err=3.0, test_auc=0.9)
    b = candidate("b", test_r50=20.0, test_r50_err=3.0, test_auc=0.9)
    rng = np.random.default_rng(1)
    base = rng.normal(20.0, 3.0, 500)
    noise = rng.normal(0.0, 1.0, 500)
    samples = {"a": {"r50": base + 10.0 + noise}, "b": {"r50": base}}
    margin, text = champion_margin(rank([b, a], "test_r50"), "test_r50", samples)
    # correlated errors: sigma of the difference is ~1, not sqrt(3^2 + 3^2) = 4.2
    assert margin == pytest.approx(10.0, rel=0.1)
    assert "(significant;" in text and "a 30 +- 3 vs b 20 +- 3" in text
    close = {"a": {"r50": base + 10.0 + 8 * noise}, "b": {"r50": base}}
    margin, text = champion_margin(rank([a, b], "test_r50"), "test_r50", close)
    assert margin < 2 and "NOT significant" in text
    assert math.isnan(champion_margin([a], "test_r50", samples)[0])
