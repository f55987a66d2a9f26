"""ONNX export against a real tracking server: contract, parity for every tagger, registry alias handling.

Every tagger in the REGISTRY is exported from the session's shared `mlflow run . -e train` (conftest.trained_all);
the small ``LinearTagger`` below (and its deliberately broken variants) lets the alias tests run without Keras.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from synthetic import (
    SPLIT_SIZES,
    LinearTagger,
    UnsupportedLayerTagger,
    log_prepare_run,
    new_experiment,
    synthetic_dataset,
)

from wtag import metrics, schema
from wtag.errors import WtagError
from wtag.taggers import REGISTRY, TAGGER_NAMES, TrainConfig

pytestmark = pytest.mark.filterwarnings(
    # MLflow's own hints while logging the tiny models and datasets; nothing wtag can change.
    "ignore:Hint. Inferred schema contains integer column:UserWarning",
    "ignore:The specified dataset source can be interpreted in multiple ways:UserWarning",
    # Keras saving calls np.array() on TF variables, whose __array__ lacks NumPy 2's copy keyword
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    # emitted once, when mlflow.pyfunc is first imported (mlflow.types.responses builds a schema at import time)
    "ignore:.*Any type hint is inferred as AnyType:UserWarning",
)

CONFIG = TrainConfig(epochs=1, batch_size=64, learning_rate=1e-3, patience=1, seed=1)
TEST_TAGGERS = {"linear": "LinearTagger", "unsupported": "UnsupportedLayerTagger", "drifting": "DriftingTagger",
                "label_output": "LabelOutputTagger"}


@pytest.fixture(scope="module")
def test_taggers() -> Iterator[None]:
    """Register the test taggers under their names (the training and export steps look classes up there)."""
    with pytest.MonkeyPatch.context() as mp:
        for name, cls in TEST_TAGGERS.items():
            mp.setitem(REGISTRY, name, f"{LinearTagger.__module__}:{cls}")
        yield


def tagger_run_ids(experiment_id: str) -> dict[str, str]:
    from mlflow.tracking import MlflowClient

    runs = MlflowClient().search_runs([experiment_id], "tags.`wtag.entry_point` = 'train_tagger'")
    return {r.data.tags["wtag.tagger"]: r.info.run_id for r in runs}


@pytest.fixture(scope="module")
def trained(main_twice) -> dict[str, Any]:
    """Every REGISTRY tagger as the session's `mlflow run . -e train` trained it (one epoch, a tiny simulated
    sample), after `main` evaluated them and exported its champion: no second training for these tests."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from conftest import runs_of
    from wtag.dataset import load_prepared

    uri, experiment, *_ = main_twice
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    prepare = runs_of(client, experiment, "prepare")[0]
    experiment_id = prepare.info.experiment_id
    return {"experiment_id": experiment_id, "ds": load_prepared(prepare.data.params["dataset_path"]),
            "runs": tagger_run_ids(experiment_id)}


def load_onnx_model(run_id: str) -> tuple[Any, Path]:
    """The ONNX model an export run logged, and its downloaded directory."""
    import mlflow
    import onnx

    from wtag.runs import model_uri

    directory = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri(run_id)))
    return onnx.load(str(directory / "model.onnx")), directory


# ---------------------------------------------------------------------------------------------------------
# Export and parity for every tagger


@pytest.mark.slow
@pytest.mark.parametrize("name", TAGGER_NAMES)
def test_every_tagger_exports_with_parity(trained: dict[str, Any], name: str) -> None:
    import mlflow
    import onnxruntime as ort

    from wtag.runs import find_dataset, load_tagger
    from wtag.onnx_export import export_step

    source_run = trained["runs"][name]
    export_run_id, version = export_step(trained["experiment_id"], source_run, register=False)
    assert version == ""
    run = mlflow.get_run(export_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["source_run_id"] == source_run
    assert run.data.params["tagger"] == name
    figures = run.data.metrics
    assert figures["onnx_parity_jets"] == len(trained["ds"].test)
    family = run.data.tags["wtag.family"]
    if family == "tree":
        assert figures["onnx_frac_diff"] < 0.01
    else:
        assert figures["onnx_max_abs_diff"] <= 1e-4
    assert figures["onnx_model_bytes"] > 0
    print(f"parity {name}: max |diff| {figures['onnx_max_abs_diff']:.3g}, frac {figures['onnx_frac_diff']:.4f}")

    model, directory = load_onnx_model(export_run_id)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["wtag.tagger"] == name
    assert props["wtag.run_id"] == source_run
    assert props["wtag.dataset_digest"] == trained["ds"].digest
    assert props["wtag.preprocessing"] == "baked"
    assert json.loads(props["wtag.hl_features"]) == list(schema.HL_FEATURES)
    assert json.loads(props["wtag.particle_features"]) == list(schema.PARTICLE_FEATURES)
    assert props["wtag.max_particles"] == str(schema.MAX_PARTICLES)
    inputs = json.loads(props["wtag.inputs"])
    assert [i.name for i in model.graph.input] == inputs
    assert all(i.type.tensor_type.shape.dim[0].dim_param == "N" for i in model.graph.input)
    assert [o.name for o in model.graph.output] == [schema.OUTPUT_SCORE]
    preprocess = json.loads((directory / "preprocess.json").read_text())
    assert preprocess["tagger"] == name and sorted(preprocess["inputs"]) == sorted(inputs)

    # Independent check: ONNX Runtime on the file vs the native model on the whole test set, batch 1 too.
    ds = find_dataset(trained["experiment_id"], trained["ds"].digest)
    tagger = load_tagger(mlflow.get_run(source_run), ds)
    test = ds.test.inputs(inputs)
    native = tagger.predict(test)
    session = ort.InferenceSession(str(directory / "model.onnx"), providers=["CPUExecutionProvider"])
    scores = session.run(["score"], test)[0]
    assert scores.shape == (len(trained["ds"].test),) and scores.dtype == np.float32
    one = session.run(["score"], {k: v[:1] for k, v in test.items()})[0]
    assert one.shape == (1,) and abs(float(one[0]) - float(scores[0])) < 1e-5
    diff = np.abs(scores.astype(np.float64) - np.asarray(native, np.float64))
    if family == "tree":
        assert np.mean(diff > 1e-4) < 0.01
    else:
        assert diff.max() <= 1e-4


# ---------------------------------------------------------------------------------------------------------
# Registry behaviour (fast: the linear test tagger)


def alias_version(model_name: str, alias: str = "champion") -> str | None:
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        return str(MlflowClient().get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def version_count(model_name: str) -> int:
    from mlflow.tracking import MlflowClient

    return len(MlflowClient().search_model_versions(f"name = '{model_name}'"))


@pytest.fixture(scope="module")
def linear_runs(tracking_server: str, tmp_path_factory: pytest.TempPathFactory,
                test_taggers: None) -> dict[str, Any]:
    """Only the test taggers on a fresh dataset: the registry tests need no Keras."""
    import mlflow

    from wtag.training import train

    mlflow.set_tracking_uri(tracking_server)
    experiment_id = new_experiment("export-linear")
    ds = synthetic_dataset(tmp_path_factory.mktemp("prepared") / "linear", seed=11)
    log_prepare_run(ds)
    train(ds, ",".join(TEST_TAGGERS), CONFIG)
    train(ds, "linear", TrainConfig(epochs=1, seed=2))  # a second linear run: a different source run
    runs = mlflow.search_runs([experiment_id], "tags.`wtag.entry_point` = 'train_tagger' and tags.`wtag.tagger` = "
                              "'linear'", order_by=["attributes.start_time ASC"], output_format="list")
    return {"experiment_id": experiment_id, "ds": ds, "runs": tagger_run_ids(experiment_id),
            "linear_runs": [r.info.run_id for r in runs]}


def test_export_registers_and_moves_alias_with_history(linear_runs: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    from wtag.onnx_export import export_step

    model_name = f"wtag-test-{uuid.uuid4().hex[:6]}"
    first, second = linear_runs["linear_runs"]
    _, v1 = export_step(linear_runs["experiment_id"], first, model_name=model_name)
    assert alias_version(model_name) == v1
    _, v2 = export_step(linear_runs["experiment_id"], second, model_name=model_name)
    assert v2 != v1 and alias_version(model_name) == v2
    client = MlflowClient()
    old, new = client.get_model_version(model_name, v1), client.get_model_version(model_name, v2)
    assert old.tags["wtag.alias.champion.replaced_by"] == v2
    assert "wtag.alias.champion.until" in old.tags and "wtag.alias.champion.since" in new.tags
    assert new.tags["wtag.source_run_id"] == second
    history = json.loads(client.get_registered_model(model_name).tags["wtag.alias_history.champion"])
    assert [h["version"] for h in history] == [v1, v2]
    assert history[1]["previous"] == v1 and history[1]["source_run_id"] == second
    assert version_count(model_name) == 2


def test_double_export_creates_no_new_version(linear_runs: dict[str, Any]) -> None:
    from wtag.onnx_export import export_step

    model_name = f"wtag-test-{uuid.uuid4().hex[:6]}"
    first, second = linear_runs["linear_runs"]
    run_a, v1 = export_step(linear_runs["experiment_id"], first, model_name=model_name)
    export_step(linear_runs["experiment_id"], second, model_name=model_name)
    run_b, again = export_step(linear_runs["experiment_id"], first, model_name=model_name)
    assert again == v1 and run_b == run_a
    assert version_count(model_name) == 2
    assert alias_version(model_name) == v1  # re-exporting re-points the alias

    # as `mlflow run -e export` calls it: the run it created says why it stays empty
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    adopted = client.create_run(linear_runs["experiment_id"]).info.run_id
    _, via_mlflow_run = export_step(linear_runs["experiment_id"], second, export_run_id=adopted,
                                    model_name=model_name)
    assert via_mlflow_run != v1 and alias_version(model_name) == via_mlflow_run
    assert version_count(model_name) == 2
    assert client.get_run(adopted).data.tags["wtag.reused_run"] != adopted


def test_reuses_finished_export_run(linear_runs: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished export with the same parameters and commit is reused: registered, not recomputed."""
    import mlflow

    from wtag import tracking
    from wtag.onnx_export import export_step

    monkeypatch.setattr(tracking, "git_commit", lambda repo=None: "test-commit-export")
    model_name = f"wtag-test-{uuid.uuid4().hex[:6]}"
    source = linear_runs["linear_runs"][0]
    run_a, version = export_step(linear_runs["experiment_id"], source, register=False)
    run_b, version_b = export_step(linear_runs["experiment_id"], source, model_name=model_name)
    assert run_b == run_a and version == "" and version_b == "1"
    assert mlflow.get_run(run_a).data.tags["wtag.model_uri"].startswith("models:/")
    assert alias_version(model_name) == "1"


@pytest.mark.parametrize(("name", "message"), [
    ("unsupported", "ONNX conversion failed: NotImplementedError: no ONNX conversion for layer 'FancyAttention'"),
    ("drifting", "max |diff|"),
    ("label_output", "ONNX outputs are ['probabilities'], the contract needs exactly ['score']"),
])
def test_failed_export_leaves_alias(linear_runs: dict[str, Any], name: str, message: str) -> None:
    import mlflow

    from wtag.onnx_export import export_step

    model_name = f"wtag-test-{uuid.uuid4().hex[:6]}"
    experiment_id = linear_runs["experiment_id"]
    _, good = export_step(experiment_id, linear_runs["runs"]["linear"], model_name=model_name)
    with pytest.raises(WtagError) as err:
        export_step(experiment_id, linear_runs["runs"][name], model_name=model_name)
    assert message in str(err.value)
    assert alias_version(model_name) == good
    assert version_count(model_name) == 1
    failed = mlflow.search_runs([experiment_id], f"tags.`wtag.entry_point` = 'export' and params.source_run_id = "
                                f"'{linear_runs['runs'][name]}'", output_format="list")
    assert failed and all(r.info.status == "FAILED" for r in failed)


def test_drifting_parity_figures_are_logged_before_failing(linear_runs: dict[str, Any]) -> None:
    import mlflow

    from wtag.onnx_export import export_step

    source = linear_runs["runs"]["drifting"]
    with pytest.raises(WtagError):
        export_step(linear_runs["experiment_id"], source, register=False)
    (run,) = mlflow.search_runs([linear_runs["experiment_id"]], f"params.source_run_id = '{source}'",
                                order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
    # a bias shift of 0.05 in the logit moves scores by up to 0.05 * p(1-p) <= 0.0125
    assert 1e-3 < run.data.metrics["onnx_max_abs_diff"] <= 0.0125 + 1e-6
    assert run.data.metrics["onnx_frac_diff"] > 0.5


def test_export_of_several_runs_registers_their_mean(linear_runs: dict[str, Any], tmp_path: Path) -> None:
    """`-P run_id=A,B`: one graph scoring the mean of the members' logged test scores, registered as tagger
    `ensemble` under the alias, with its own test metrics and its paired gain over the best member."""
    import mlflow
    import onnxruntime as ort
    from mlflow.tracking import MlflowClient

    from wtag.onnx_export import export_step
    from wtag.runs import read_test_scores

    model_name = f"wtag-test-{uuid.uuid4().hex[:6]}"
    first, second = linear_runs["linear_runs"]
    run_id, version = export_step(linear_runs["experiment_id"], f" {first}, {second} ", alias="seeds",
                                  model_name=model_name)
    assert alias_version(model_name, "seeds") == version
    tags = MlflowClient().get_model_version(model_name, version).tags
    assert tags["wtag.tagger"] == "ensemble" and tags["wtag.source_run_id"] == f"{first},{second}"
    assert tags["wtag.family"] == "ensemble"
    run = mlflow.get_run(run_id)
    assert run.data.params["source_run_id"] == f"{first},{second}" and run.data.tags["wtag.family"] == "ensemble"
    figures = run.data.metrics
    assert figures["onnx_max_abs_diff"] < 1e-6 and figures["onnx_parity_jets"] == SPLIT_SIZES["test"]
    for key in ("test_auc", "test_r50", "test_r50_err", "test_r50_gain_vs_best_member",
                "test_r50_gain_vs_best_member_err", "test_auc_gain_vs_best_member"):
        assert np.isfinite(figures[key]), key
    assert figures["test_r50_gain_vs_best_member_err"] >= 0  # 0 when r50 is capped on the tiny test set

    model, directory = load_onnx_model(run_id)
    ds = linear_runs["ds"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (score,) = session.run(["score"], {"hl": ds.test.hl.astype(np.float32)})
    members = [read_test_scores(r, tmp_path / r)[1] for r in (first, second)]
    np.testing.assert_allclose(score, np.mean(members, axis=0), atol=1e-6)
    assert figures["test_auc"] == pytest.approx(metrics.roc_auc(ds.test.label, score), abs=1e-6)
    preprocess = json.loads((directory / "preprocess.json").read_text())
    assert preprocess["tagger"] == "ensemble" and [m["run_id"] for m in preprocess["members"]] == [first, second]
    # the same members again: no second version, the alias re-pointed
    assert export_step(linear_runs["experiment_id"], f"{first},{second}", alias="again",
                       model_name=model_name)[1] == version
    assert version_count(model_name) == 1


def test_export_refuses_bad_member_lists(linear_runs: dict[str, Any], tmp_path: Path) -> None:
    import mlflow

    from wtag.onnx_export import export_step
    from wtag.training import train

    experiment_id = linear_runs["experiment_id"]
    first, second = linear_runs["linear_runs"]
    with pytest.raises(WtagError, match=f"run_id: {first} listed twice"):
        export_step(experiment_id, f"{first},{second},{first}", register=False)
    with pytest.raises(WtagError, match="run_id: no run id given"):
        export_step(experiment_id, " , ", register=False)
    other_experiment = new_experiment("export-other-dataset")
    ds = synthetic_dataset(tmp_path / "other", seed=12)
    log_prepare_run(ds)
    train(ds, "linear", CONFIG)
    (other,) = mlflow.search_runs([other_experiment], "tags.`wtag.entry_point` = 'train_tagger'", output_format="list")
    with pytest.raises(WtagError, match="an ensemble's members must share one dataset"):
        export_step(experiment_id, f"{first},{other.info.run_id}", register=False)


@pytest.mark.slow
def test_hybrid_of_keras_taggers_exports_and_scores_the_mean(trained: dict[str, Any], tmp_path: Path) -> None:
    """dnn (hl) + pfn (particles): a two-input graph whose ONNX scores are the mean of the members' logged ones."""
    import mlflow
    import onnxruntime as ort

    from wtag.onnx_export import export_step
    from wtag.runs import read_test_scores

    members = [trained["runs"]["dnn"], trained["runs"]["pfn"]]
    run_id, version = export_step(trained["experiment_id"], ",".join(members), register=False)
    run = mlflow.get_run(run_id)
    assert version == "" and run.data.tags["wtag.family"] == "hybrid"
    assert run.data.metrics["onnx_max_abs_diff"] <= 1e-4
    model, _ = load_onnx_model(run_id)
    assert [i.name for i in model.graph.input] == ["hl", "particles"]
    ds = trained["ds"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (score,) = session.run(["score"], {k: v.astype(np.float32) for k, v in ds.test.inputs(("hl", "particles")).items()})
    expected = np.mean([read_test_scores(r, tmp_path / r)[1] for r in members], axis=0)
    np.testing.assert_allclose(score, expected, atol=1e-4)


def test_export_without_evaluation_names_the_problem(tracking_server: str) -> None:
    import mlflow

    from wtag.onnx_export import export_step

    mlflow.set_tracking_uri(tracking_server)
    experiment_id = new_experiment("export-empty")
    with pytest.raises(WtagError, match="has no finished evaluation run"):
        export_step(experiment_id)


def test_export_rejects_a_run_that_is_not_a_tagger_run(linear_runs: dict[str, Any]) -> None:
    import mlflow

    from wtag.onnx_export import export_step

    (prepare,) = mlflow.search_runs([linear_runs["experiment_id"]], "tags.`wtag.entry_point` = 'prepare'",
                                    output_format="list")
    with pytest.raises(WtagError, match="not a tagger training run"):
        export_step(linear_runs["experiment_id"], prepare.info.run_id)
    with pytest.raises(WtagError, match="no such run"):
        export_step(linear_runs["experiment_id"], "0" * 32)


def test_export_fails_clearly_when_the_dataset_is_gone(linear_runs: dict[str, Any],
                                                       tmp_path: Path) -> None:
    """The prepared directory moved away: the export names the digest and the missing path."""
    import mlflow

    from wtag.onnx_export import export_step
    from wtag.training import train

    experiment_id = new_experiment("export-gone")
    ds = synthetic_dataset(tmp_path / "gone", seed=5)
    log_prepare_run(ds)
    train(ds, "linear", CONFIG)
    (run,) = mlflow.search_runs([experiment_id], "tags.`wtag.entry_point` = 'train_tagger'", output_format="list")
    (ds.root / "manifest.json").unlink()
    with pytest.raises(WtagError, match=f"prepared dataset {ds.digest[:12]} is gone"):
        export_step(experiment_id, run.info.run_id, register=False)


# ---------------------------------------------------------------------------------------------------------
# Pure functions


def test_contract_check_rejects_wrong_shapes(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    from wtag.onnx_export import check_contract

    def model(in_shape: list[Any], out_shape: list[Any], dtype: int = TensorProto.FLOAT) -> Any:
        graph = helper.make_graph([helper.make_node("ReduceMean", ["hl"], ["score"], keepdims=0, axes=[1])], "g",
                                  [helper.make_tensor_value_info("hl", dtype, in_shape)],
                                  [helper.make_tensor_value_info("score", TensorProto.FLOAT, out_shape)])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])

    check_contract(model(["N", 10], ["N"]), ("hl",), "ok")
    with pytest.raises(WtagError, match=r"input 'hl' has shape \[5, 10\]"):
        check_contract(model([5, 10], ["N"]), ("hl",), "fixed batch")
    with pytest.raises(WtagError, match=r"input 'hl' has shape \['N', 9\]"):
        check_contract(model(["N", 9], ["N"]), ("hl",), "wrong width")
    with pytest.raises(WtagError, match="input 'hl' is not float32"):
        check_contract(model(["N", 10], ["N"], TensorProto.DOUBLE), ("hl",), "double")
    with pytest.raises(WtagError, match=r"output 'score' has shape \['N', 1\]"):
        check_contract(model(["N", 10], ["N", 1]), ("hl",), "2-D output")
    with pytest.raises(WtagError, match=r"ONNX inputs are \['hl'\], the contract needs \['particles'\]"):
        check_contract(model(["N", 10], ["N"]), ("particles",), "wrong input")


def test_parity_figures_and_thresholds() -> None:
    from wtag.onnx_export import check_parity, parity_figures

    native = np.linspace(0.0, 1.0, 1000)
    onnx_scores = native.copy()
    onnx_scores[:5] += 2e-4  # five jets flip: 0.5 %
    figures = parity_figures(native, onnx_scores)
    assert figures["onnx_frac_diff"] == pytest.approx(0.005)
    assert figures["onnx_max_abs_diff"] == pytest.approx(2e-4)

    class Tree:
        name, family = "bdt", "tree"

    class Net:
        name, family = "dnn", "dense"

    check_parity(Tree(), figures)
    with pytest.raises(WtagError, match=r"max \|diff\| 0.0002 exceeds 0.0001"):
        check_parity(Net(), figures)
    onnx_scores[:20] += 2e-4  # 2 % of jets
    with pytest.raises(WtagError, match="2.00% of jets differ"):
        check_parity(Tree(), parity_figures(native, onnx_scores))
    onnx_scores[:] = native
    onnx_scores[3] = np.nan
    assert parity_figures(native, onnx_scores)["onnx_max_abs_diff"] == np.inf


def test_metadata_batch_axis_and_chunked_parity(tmp_path: Path) -> None:
    """Without a server: the linear tagger's graph gets the contract metadata, ``N`` as batch axis, and the
    chunked ONNX Runtime scores equal the one-shot ones."""
    from wtag.onnx_export import parity, scores_both, to_onnx_with_metadata

    ds = synthetic_dataset(tmp_path / "ds", seed=3)
    tagger = LinearTagger(CONFIG, ds.standardization)
    tagger.fit(ds.train, ds.val)
    model = to_onnx_with_metadata(tagger, "run-x", ds.digest)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["wtag.run_id"] == "run-x" and props["wtag.tagger"] == "linear"
    assert json.loads(props["wtag.inputs"]) == ["hl"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "N"
    inputs = ds.test.inputs(("hl",))
    native, whole = scores_both(tagger, model, inputs)
    _, chunked = scores_both(tagger, model, inputs, chunk=7)
    np.testing.assert_array_equal(chunked, whole)
    figures = parity(tagger, model, inputs)
    assert figures["onnx_max_abs_diff"] < 1e-6 and figures["onnx_parity_jets"] == SPLIT_SIZES["test"]
    with pytest.raises(WtagError, match=r"tagger 'linear' \(run run-y\): ONNX conversion failed"):
        to_onnx_with_metadata(UnsupportedLayerTagger(CONFIG, ds.standardization), "run-y", ds.digest)


def test_ensemble_graph_scores_the_mean_of_its_members() -> None:
    """A hybrid of a one-input and a two-input graph on different opsets: shared inputs, the mean of the members'
    ONNX Runtime scores, the members named in the metadata; bad member sets are refused with their reason."""
    import onnx
    from onnx import version_converter
    from onnx_models import N_HL, N_PART, hl_model, hl_particles_model

    from wtag.onnx_export import MEMBERS_META, create_session, ensemble_graph

    def member(model: onnx.ModelProto, run_id: str, digest: str = "d1", cost: str = "100") -> onnx.ModelProto:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                            schema.Meta.RUN_ID: run_id, schema.Meta.DATASET_DIGEST: digest,
                                            schema.Meta.BYTES_PER_JET: cost})
        return model

    a = member(version_converter.convert_version(hl_model(seed=5), 15), "run-a")
    b, c = member(hl_particles_model(seed=6), "run-b", cost="250"), member(hl_model(seed=7), "run-c")
    ensemble = ensemble_graph([a, b, c])
    rng = np.random.default_rng(0)
    feed = {schema.INPUT_HL: rng.normal(size=(33, N_HL)).astype(np.float32),
            schema.INPUT_PARTICLES: rng.normal(size=(33, schema.MAX_PARTICLES, N_PART)).astype(np.float32)}

    def score(model: onnx.ModelProto) -> np.ndarray:
        names = json.loads({p.key: p.value for p in model.metadata_props}[schema.Meta.INPUTS])
        return create_session(model.SerializeToString(), device="cpu").run(
            [schema.OUTPUT_SCORE], {k: feed[k] for k in names})[0]

    expected = np.mean([score(a), score(b), score(c)], axis=0)
    np.testing.assert_allclose(score(ensemble), expected, atol=1e-6)
    props = {p.key: p.value for p in ensemble.metadata_props}
    assert json.loads(props[schema.Meta.INPUTS]) == [schema.INPUT_HL, schema.INPUT_PARTICLES]
    assert props[schema.Meta.TAGGER] == "ensemble" and props[schema.Meta.FAMILY] == "hybrid"
    assert [m["run_id"] for m in json.loads(props[MEMBERS_META])] == ["run-a", "run-b", "run-c"]
    assert props[schema.Meta.RUN_ID] == "run-a,run-b,run-c" and props[schema.Meta.BYTES_PER_JET] == "450"
    assert max(e.version for e in ensemble.opset_import if e.domain == "") == 15
    seeds = ensemble_graph([member(hl_model(seed=1), "s1"), member(hl_model(seed=2), "s2")])
    assert {p.key: p.value for p in seeds.metadata_props}[schema.Meta.FAMILY] == "ensemble"
    with pytest.raises(WtagError, match="at least two member graphs, got 1"):
        ensemble_graph([a])
    with pytest.raises(WtagError, match="trained on different datasets"):
        ensemble_graph([a, member(hl_model(seed=8), "run-d", digest="d2")])
    with pytest.raises(WtagError, match="disagree on input 'hl'"):
        ensemble_graph([a, member(hl_model(seed=9, input_type=onnx.TensorProto.DOUBLE), "run-e")])
