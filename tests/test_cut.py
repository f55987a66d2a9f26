"""The cut tagger: the grid search finds the best window, the score encodes the cut, pyfunc and ONNX agree."""
from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from wtag import metrics, schema
from wtag.dataset import Split, Standardization
from wtag.errors import WtagError
from wtag.taggers import TrainConfig, build_tagger
from wtag.taggers.cut import MSD_INDEX, TAU21_INDEX, CutParams, CutTagger, cut_scores, optimize_cut

# Importing mlflow.pyfunc (MLflow 3.17) warns about its own ResponsesAgent type hints; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")


def make_split(n: int, seed: int, weight: np.ndarray | None = None) -> Split:
    """W: msd ~ N(80, 10), tau21 ~ N(0.35, 0.1); QCD: msd ~ exponential, tau21 ~ N(0.6, 0.15); rest noise."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.4).astype(np.int32)
    hl = rng.normal(1.0, 0.3, size=(n, len(schema.HL_FEATURES))).astype(np.float32)
    hl[:, MSD_INDEX] = np.where(label == 1, rng.normal(80, 10, n), rng.exponential(50, n))
    hl[:, TAU21_INDEX] = np.clip(np.where(label == 1, rng.normal(0.35, 0.1, n), rng.normal(0.6, 0.15, n)), 0, 1)
    pt = rng.uniform(200, 500, n)
    return Split(label=label, weight=np.ones(n, np.float32) if weight is None else weight.astype(np.float32),
                 msd=hl[:, MSD_INDEX].astype(np.float64), pt=pt, hl=hl)


@pytest.fixture(scope="module")
def data() -> dict[str, Split]:
    return {"train": make_split(4000, 1), "val": make_split(500, 2), "test": make_split(4000, 3)}


@pytest.fixture(scope="module")
def fitted(data: dict[str, Split]) -> CutTagger:
    tagger = build_tagger("cut", TrainConfig(), Standardization.fit(data["train"]))
    assert isinstance(tagger, CutTagger)
    assert tagger.fit(data["train"], data["val"]) == {}
    return tagger


@pytest.fixture
def mlflow_run(tracking_uri: str) -> Iterator[None]:
    """An active run on the session's real tracking server, in an experiment of its own."""
    import mlflow

    experiment = mlflow.create_experiment(f"test-cut-{uuid.uuid4().hex[:12]}")
    with mlflow.start_run(experiment_id=experiment):
        yield


def test_fit_finds_the_w_window(fitted: CutTagger, data: dict[str, Split]) -> None:
    p = fitted.params
    assert p is not None
    assert 55 <= p.m_lo < 80 < p.m_hi <= 105
    assert 0.3 < p.tau21_cut < 0.5
    # Edges and cut survive the trip through float32 (ONNX compares in float32).
    assert all(float(np.float32(v)) == v for v in (p.m_lo, p.m_hi, p.tau21_cut))
    # The working point (score >= 0.5) keeps 50% of the training W jets, up to one jet.
    train = data["train"]
    score = fitted.predict({"hl": train.hl})
    kept = np.mean(score[train.label == 1] >= 0.5)
    assert 0.5 <= kept <= 0.5 + 1.0 / (train.label == 1).sum()
    assert fitted.train_background_efficiency == pytest.approx(np.mean(score[train.label == 0] >= 0.5))


def test_predict_scores_and_beats_random(fitted: CutTagger, data: dict[str, Split]) -> None:
    test = data["test"]
    score = fitted.predict(test.inputs(("hl",)))
    assert score.shape == (len(test),)
    assert score.min() >= 0.0 and score.max() <= 1.0
    assert metrics.roc_auc(test.label, score) > 0.8
    # Held-out rejection at 50% close to what the grid search promised on the training set.
    assert metrics.background_rejection(test.label, score, 0.5) > 0.5 / fitted.train_background_efficiency


def test_optimizer_matches_brute_force() -> None:
    split = make_split(3000, 4)
    msd, tau21 = split.hl[:, MSD_INDEX].astype(float), split.hl[:, TAU21_INDEX].astype(float)
    edges = np.arange(40.0, 130.0 + 1e-9, 10.0)
    params, eps_b = optimize_cut(msd, tau21, split.label, mass_edges=edges, tau21_bins=400)
    sig, bkg = split.label == 1, split.label == 0
    n_sig = sig.sum()
    best = np.inf
    for i, lo in enumerate(edges):
        for hi in edges[i + 1:]:
            inside = (msd >= lo) & (msd < hi)
            t = np.sort(tau21[sig & inside])
            need = int(np.ceil(0.5 * n_sig))
            if len(t) >= need:
                best = min(best, np.mean(inside[bkg] & (tau21[bkg] <= t[need - 1])))
    assert eps_b == pytest.approx(np.mean(cut_scores(split.hl, params)[bkg] >= 0.5))
    assert best <= eps_b <= best + 3.0 / bkg.sum()


def test_score_encodes_window_and_cut() -> None:
    # Values exactly representable in float32, as fitted parameters are.
    p = CutParams(m_lo=65.0, m_hi=95.0, tau21_cut=0.375)
    hl = np.ones((6, len(schema.HL_FEATURES)), np.float32)
    hl[:, MSD_INDEX] = [80, 80, 80, 80, 30, 95]
    hl[:, TAU21_INDEX] = [0.0, 0.25, 0.375, 0.6875, 0.25, 1.3]
    expected = [1.0, 1 - 0.5 * 0.25 / 0.375, 0.5, 0.5 - 0.25 * 0.3125 / 0.625, 0.25 * 0.75, 0.0]
    np.testing.assert_allclose(cut_scores(hl, p), expected, atol=1e-7)
    assert list(cut_scores(hl, p) >= 0.5) == [True, True, True, False, False, False]


def test_weights_change_the_cut(data: dict[str, Split]) -> None:
    train = data["train"]
    heavy = np.where((train.label == 1) & (train.msd > 85), 30.0, 1.0)
    tagger = CutTagger(TrainConfig(), Standardization.fit(train))
    tagger.fit(make_split(4000, 1, weight=heavy), data["val"])
    plain = CutTagger(TrainConfig(), Standardization.fit(train))
    plain.fit(train, data["val"])
    assert tagger.params is not None and plain.params is not None
    assert tagger.params.m_lo > plain.params.m_lo
    assert tagger.params != plain.params


def test_bad_inputs(fitted: CutTagger) -> None:
    with pytest.raises(WtagError, match=r"input 'hl' has shape \(5, 9\), expected \(N, 10\)"):
        fitted.predict({"hl": np.zeros((5, 9), np.float32)})
    with pytest.raises(WtagError, match="needs input 'hl'"):
        fitted.predict({"images": np.zeros((5, 30, 30, 1), np.float32)})
    unfitted = CutTagger(TrainConfig(), Standardization())
    with pytest.raises(WtagError, match="not fitted"):
        unfitted.predict({"hl": np.zeros((5, 10), np.float32)})
    with pytest.raises(WtagError, match="signal_efficiency"):
        CutTagger(TrainConfig(), Standardization(), signal_efficiency=1.5)
    one_class = make_split(100, 5)
    one_class.label[:] = 0
    with pytest.raises(WtagError, match="both W"):
        unfitted.fit(one_class, one_class)


def test_hyperparameters(fitted: CutTagger) -> None:
    assert fitted.hyperparameters() == {"signal_efficiency": 0.5, "mass_min": 0.0, "mass_max": 300.0,
                                        "mass_step": 2.5, "tau21_bins": 200}
    assert not set(fitted.hyperparameters()) & set(TrainConfig().params())


@pytest.mark.slow
def test_log_model_and_load_back(fitted: CutTagger, data: dict[str, Split], mlflow_run: None) -> None:
    import mlflow
    import pandas as pd

    test = data["test"]
    native = fitted.predict({"hl": test.hl})
    info = fitted.log_model("model", {"hl": test.hl[:5]})
    assert info.signature is not None and info.saved_input_example_info is not None
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    np.testing.assert_allclose(pyfunc.predict(test.hl), native, atol=1e-7)
    frame = pd.DataFrame(test.hl, columns=list(schema.HL_FEATURES))
    np.testing.assert_allclose(pyfunc.predict(frame), native, atol=1e-7)
    loaded = CutTagger.load_logged(info.model_uri, TrainConfig(), Standardization())
    assert loaded.params == fitted.params
    np.testing.assert_array_equal(loaded.predict({"hl": test.hl}), native)


def test_onnx_parity(fitted: CutTagger, data: dict[str, Split]) -> None:
    import onnx
    import onnxruntime as ort

    model = fitted.to_onnx()
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["hl"]
    assert [o.name for o in model.graph.output] == ["score"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert len(model.graph.output[0].type.tensor_type.shape.dim) == 1
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    hl = data["test"].hl
    for batch in (hl[:1], hl[:1000]):
        (score,) = session.run(["score"], {"hl": batch})
        assert score.dtype == np.float32 and score.shape == (len(batch),)
        assert np.abs(score - fitted.predict({"hl": batch})).max() <= 1e-6
    # Jets exactly on the window edges and the cut fall on the same side in both.
    edge = np.ones((4, len(schema.HL_FEATURES)), np.float32)
    p = fitted.params
    assert p is not None
    edge[:, MSD_INDEX] = [p.m_lo, p.m_hi, p.m_lo, p.m_hi]
    edge[:, TAU21_INDEX] = [p.tau21_cut, p.tau21_cut, 0.9, 0.1]
    (score,) = session.run(["score"], {"hl": edge})
    np.testing.assert_allclose(score, fitted.predict({"hl": edge}), atol=1e-6)
    assert list(score >= 0.5) == [True, False, False, False]
