"""The XGBoost tagger: trains with weights and early stopping, logs as xgboost, converts to one-output ONNX."""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from wtag import metrics, schema
from wtag.dataset import Split, Standardization
from wtag.errors import WtagError
from wtag.taggers import TrainConfig, build_tagger
from wtag.taggers.bdt import BDTTagger

# Importing mlflow.pyfunc (MLflow 3.17) warns about its own ResponsesAgent type hints; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")

MSD = schema.HL_FEATURES.index("jet_msd_ak7")
TAU21 = schema.HL_FEATURES.index("jet_tau21_ak7")


def make_split(n: int, seed: int, weight: np.ndarray | None = None) -> Split:
    """W: msd ~ N(80, 10), tau21 ~ N(0.35, 0.1); QCD: msd ~ exponential, tau21 ~ N(0.6, 0.15); rest noise."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.4).astype(np.int32)
    hl = rng.normal(1.0, 0.3, size=(n, len(schema.HL_FEATURES))).astype(np.float32)
    hl[:, MSD] = np.where(label == 1, rng.normal(80, 10, n), rng.exponential(50, n))
    hl[:, TAU21] = np.clip(np.where(label == 1, rng.normal(0.35, 0.1, n), rng.normal(0.6, 0.15, n)), 0, 1)
    return Split(label=label, weight=np.ones(n, np.float32) if weight is None else weight.astype(np.float32),
                 msd=hl[:, MSD].astype(np.float64), pt=rng.uniform(200, 500, n), hl=hl)


def make_tagger(train: Split, **kwargs: object) -> BDTTagger:
    return BDTTagger(TrainConfig(seed=7), Standardization.fit(train), n_jobs=1, **kwargs)


@pytest.fixture(scope="module")
def data() -> dict[str, Split]:
    return {"train": make_split(3000, 1), "val": make_split(1000, 2), "test": make_split(2000, 3)}


@pytest.fixture(scope="module")
def trained(data: dict[str, Split]) -> tuple[BDTTagger, dict[str, list[float]], list[tuple[int, dict]]]:
    seen: list[tuple[int, dict]] = []
    tagger = make_tagger(data["train"], early_stopping_rounds=10)
    history = tagger.fit(data["train"], data["val"], on_epoch_end=lambda epoch, logs: seen.append((epoch, dict(logs))))
    return tagger, history, seen


@pytest.fixture
def mlflow_run(tracking_uri: str) -> Iterator[None]:
    """An active run on the session's real tracking server, in an experiment of its own."""
    import mlflow

    experiment = mlflow.create_experiment(f"test-bdt-{uuid.uuid4().hex[:12]}")
    with mlflow.start_run(experiment_id=experiment):
        yield


def test_registry_builds_it() -> None:
    tagger = build_tagger("bdt", TrainConfig(), Standardization())
    assert isinstance(tagger, BDTTagger)
    assert (tagger.name, tagger.family, tagger.inputs, tagger.flavor) == ("bdt", "tree", ("hl",), "xgboost")


def test_fit_predict(trained: tuple, data: dict[str, Split]) -> None:
    tagger, _, _ = trained
    test = data["test"]
    score = tagger.predict(test.inputs(("hl",)))
    assert score.shape == (len(test),) and score.dtype == np.float64
    assert score.min() >= 0.0 and score.max() <= 1.0
    assert metrics.roc_auc(test.label, score) > 0.8


def test_history_and_early_stopping(trained: tuple) -> None:
    tagger, history, seen = trained
    assert set(history) == {"loss", "val_loss", "val_auc"}
    rounds = len(history["loss"])
    assert len(history["val_loss"]) == len(history["val_auc"]) == rounds
    # Stopped early: 10 rounds of patience after the best validation loss, well before 500 rounds.
    assert tagger.best_iteration is not None and rounds == tagger.best_iteration + 11 < 500
    assert min(history["val_loss"]) == history["val_loss"][tagger.best_iteration]
    assert history["loss"][-1] < history["loss"][0]
    assert 0.8 < history["val_auc"][-1] <= 1.0
    assert tagger.booster.num_boosted_rounds() == tagger.best_iteration + 1
    # The callback saw every round, in order, with the same numbers.
    assert [epoch for epoch, _ in seen] == list(range(rounds))
    assert seen[3][1] == {k: v[3] for k, v in history.items()}


def test_weights_change_the_model(data: dict[str, Split]) -> None:
    train, val = data["train"], data["val"]
    rng = np.random.default_rng(4)
    skewed = np.where(train.label == 1, rng.uniform(5.0, 20.0, len(train)), 0.2)
    plain = make_tagger(train, n_estimators=20)
    weighted = make_tagger(train, n_estimators=20)
    h_plain = plain.fit(train, val)
    h_weighted = weighted.fit(make_split(3000, 1, weight=skewed), val)
    assert abs(h_plain["loss"][0] - h_weighted["loss"][0]) > 1e-3
    x = {"hl": data["test"].hl}
    # Up-weighting W jets pushes every score up.
    assert weighted.predict(x).mean() > plain.predict(x).mean() + 0.05


def test_seeded_fit_is_reproducible(data: dict[str, Split]) -> None:
    a, b = make_tagger(data["train"], n_estimators=15), make_tagger(data["train"], n_estimators=15)
    a.fit(data["train"], data["val"])
    b.fit(data["train"], data["val"])
    x = {"hl": data["test"].hl}
    np.testing.assert_array_equal(a.predict(x), b.predict(x))


def test_feature_importance(trained: tuple) -> None:
    tagger, _, _ = trained
    importance = tagger.feature_importance()
    assert list(importance) == list(schema.HL_FEATURES)
    assert sum(importance.values()) == pytest.approx(1.0)
    top_two = sorted(importance, key=importance.get, reverse=True)[:2]
    assert set(top_two) == {"jet_msd_ak7", "jet_tau21_ak7"}


def test_hyperparameters_and_bad_settings() -> None:
    tagger = BDTTagger(TrainConfig(), Standardization(), n_jobs=3)
    params = tagger.hyperparameters()
    assert params["n_estimators"] == 500 and params["max_depth"] == 6 and params["eta"] == 0.1
    assert not set(params) & set(TrainConfig().params())
    assert params["subsample"] == 0.8 and params["colsample_bytree"] == 0.8 and params["n_jobs"] == 3
    with pytest.raises(WtagError, match="learning_rate"):
        BDTTagger(TrainConfig(), Standardization(), learning_rate=0.0)
    with pytest.raises(WtagError, match="n_jobs"):
        BDTTagger(TrainConfig(), Standardization(), n_jobs=0)


def test_bad_inputs(trained: tuple, data: dict[str, Split]) -> None:
    tagger, _, _ = trained
    with pytest.raises(WtagError, match=r"input 'hl' has shape \(4, 11\), expected \(N, 10\)"):
        tagger.predict({"hl": np.zeros((4, 11), np.float32)})
    with pytest.raises(WtagError, match="needs input 'hl'"):
        tagger.predict({})
    with pytest.raises(WtagError, match="not fitted"):
        make_tagger(data["train"]).predict({"hl": np.zeros((4, 10), np.float32)})
    no_hl = Split(label=data["train"].label, weight=data["train"].weight, msd=data["train"].msd,
                  pt=data["train"].pt)
    with pytest.raises(WtagError, match="no 'hl' input"):
        make_tagger(data["train"]).fit(no_hl, data["val"])


@pytest.mark.slow
def test_log_model_and_load_back(trained: tuple, data: dict[str, Split], mlflow_run: None) -> None:
    import mlflow
    import pandas as pd

    tagger, _, _ = trained
    test = data["test"]
    native = tagger.predict({"hl": test.hl})
    info = tagger.log_model("model", {"hl": test.hl[:5]})
    assert info.signature is not None and info.saved_input_example_info is not None
    assert "xgboost" in info.flavors
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    np.testing.assert_allclose(pyfunc.predict(test.hl), native, atol=1e-7)
    frame = pd.DataFrame(test.hl, columns=list(schema.HL_FEATURES))
    np.testing.assert_allclose(pyfunc.predict(frame), native, atol=1e-7)
    loaded = BDTTagger.load_logged(info.model_uri, TrainConfig(), Standardization())
    np.testing.assert_array_equal(loaded.predict({"hl": test.hl}), native)
    assert loaded.feature_importance() == pytest.approx(tagger.feature_importance())


def test_onnx_parity(trained: tuple, data: dict[str, Split]) -> None:
    import onnx
    import onnxruntime as ort

    tagger, _, _ = trained
    model = tagger.to_onnx()
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["hl"]
    assert [o.name for o in model.graph.output] == ["score"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(op.version <= 15 for op in model.opset_import if op.domain in ("", "ai.onnx"))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hl = data["test"].hl
    for batch in (hl[:1], hl[:1000]):
        (score,) = session.run(["score"], {"hl": batch})
        assert score.dtype == np.float32 and score.shape == (len(batch),)
        diff = np.abs(score - tagger.predict({"hl": batch}))
        assert np.mean(diff > 1e-4) < 0.01
