"""Synthetic data and the contract checks every Keras tagger passes; imported by the Keras test modules."""
from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

from wtag import schema
from wtag.dataset import Split, Standardization
from wtag.errors import WtagError
from wtag.schema import expected_shape
from wtag.taggers import TAGGER_NAMES, build_tagger, tagger_class
from wtag.taggers.base import TrainConfig
from wtag.taggers.keras_common import KerasTagger, set_threads

# Unavoidable third-party warnings while logging a Keras model to a SQLite tracking store.
MLFLOW_WARNINGS = pytest.mark.filterwarnings(
    # Keras saving calls np.array() on TF variables, whose __array__ lacks NumPy 2's copy keyword
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    # SQLAlchemy 2.1 deprecates a loader option MLflow's SQL store still uses
    "ignore:The ``noload`` loader strategy is deprecated:DeprecationWarning",
    # emitted once, when mlflow.pyfunc is first imported (mlflow.types.responses builds a schema at import time)
    "ignore:.*Any type hint is inferred as AnyType:UserWarning",
)

# One thread per pool: the suite shares small CI machines; must run before TensorFlow's first op.
set_threads(1, 1)


def synthetic_split(n: int, seed: int, separation: float = 1.0) -> Split:
    """Balanced jets with all three raw inputs at realistic scales; signal differs by ``separation``.

    Particle lists are pT-ordered and zero-padded with random multiplicities (1..MAX_PARTICLES).
    """
    rng = np.random.default_rng(seed)
    label = (np.arange(n) % 2).astype(np.int64)
    sig = label[:, None].astype(np.float64)
    n_hl = len(schema.HL_FEATURES)
    hl_scale = np.linspace(0.5, 150.0, n_hl)
    hl = (rng.normal(size=(n, n_hl)) + separation * sig * (np.arange(n_hl) % 3 == 0)) * hl_scale + 2 * hl_scale

    images = rng.exponential(0.5, size=(n, 30, 30)) * (rng.random((n, 30, 30)) < 0.05)
    images[:, 14:16, 14:16] += rng.uniform(50.0, 150.0, size=(n, 1, 1))
    images[:, 19:21, 14:16] += separation * sig[:, :, None] * rng.uniform(20.0, 60.0, size=(n, 1, 1))

    n_feat = len(schema.PARTICLE_FEATURES)
    particles = np.zeros((n, schema.MAX_PARTICLES, n_feat))
    multiplicity = rng.integers(1, schema.MAX_PARTICLES + 1, size=n)
    for i, m in enumerate(multiplicity):
        pt = np.sort(rng.exponential(15.0, size=m) + 0.5)[::-1]
        deta = rng.normal(0.0, 0.2, size=m) + separation * 0.3 * label[i]
        dphi = rng.normal(0.0, 0.2, size=m)
        kind = rng.integers(0, 5, size=m)
        particles[i, :m, 0] = pt
        particles[i, :m, 1] = deta
        particles[i, :m, 2] = dphi
        particles[i, :m, 3] = np.log(pt / pt.sum())
        particles[i, :m, 4] = np.hypot(deta, dphi)
        particles[i, :m, 5] = np.where(kind == 0, rng.choice([-1.0, 1.0], size=m), 0.0)
        particles[i, :m, 6 + kind] = 1.0
    return Split(label=label, weight=rng.uniform(0.5, 1.5, n).astype(np.float32),
                 msd=rng.uniform(0.0, 200.0, n), pt=rng.uniform(200.0, 500.0, n),
                 hl=hl.astype(np.float32), images=images[..., None].astype(np.float32),
                 particles=particles.astype(np.float32))


def tiny_config(**overrides: object) -> TrainConfig:
    return TrainConfig(**{"epochs": 2, "batch_size": 32, "learning_rate": 3e-3, "patience": 5, "seed": 7,
                          **overrides})


def fitted(name: str, n_train: int = 160, n_val: int = 96, **config: object) -> tuple[KerasTagger, Split, dict]:
    train, val = synthetic_split(n_train, seed=1), synthetic_split(n_val, seed=2)
    tagger = build_tagger(name, tiny_config(**config), Standardization.fit(train))
    history = tagger.fit(train, val)
    return tagger, val, history


def check_scores(tagger: KerasTagger, split: Split) -> np.ndarray:
    scores = tagger.predict(split.inputs(tagger.inputs))
    assert scores.shape == (len(split),)
    assert scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    assert np.std(scores) > 0, "constant scores: the network ignores its input"
    return scores


def check_history(history: dict[str, list[float]], epochs: int) -> None:
    assert set(history) == {"loss", "val_loss", "val_auc"}
    for key, values in history.items():
        assert len(values) == epochs, key
        assert all(np.isfinite(values)), key
    assert all(0.0 <= v <= 1.0 for v in history["val_auc"])


def check_weights_change_loss(name: str) -> list[KerasTagger]:
    """Two one-epoch fits from the same seed that differ only in the sample weights differ in loss; returns the
    two fitted taggers."""
    train, val = synthetic_split(96, seed=3), synthetic_split(48, seed=4)
    standardization = Standardization.fit(train)
    losses, taggers = [], []
    for weight in (np.ones(len(train), np.float32), np.where(train.label == 1, 3.0, 0.2).astype(np.float32)):
        train.weight = weight
        taggers.append(build_tagger(name, tiny_config(epochs=1), standardization))
        losses.append(taggers[-1].fit(train, val)["loss"][0])
    assert abs(losses[0] - losses[1]) > 1e-3, losses
    return taggers


def check_rejects_misshaped(tagger: KerasTagger) -> None:
    name = tagger.inputs[0]
    want = expected_shape(name)
    bad = np.zeros((4, *want[:-1], want[-1] + 1), dtype=np.float32)
    with pytest.raises(WtagError, match=f"input '{name}' has shape"):
        tagger.predict({name: bad})
    with pytest.raises(WtagError, match=f"needs input '{name}'"):
        tagger.predict({"wrong": np.zeros((4, *want), dtype=np.float32)})


def check_mlflow_roundtrip(tagger: KerasTagger, split: Split, experiment_id: str) -> None:
    """Native keras flavor: pyfunc scores equal predict; load_logged rebuilds an equivalent tagger."""
    import mlflow

    inputs = split.inputs(tagger.inputs)
    with mlflow.start_run(experiment_id=experiment_id):
        info = tagger.log_model("model", inputs)
    assert info.flavors.keys() >= {"keras", "python_function"}
    assert sorted(info.signature.inputs.input_names()) == sorted(tagger.inputs)
    assert info.saved_input_example_info is not None
    expected = tagger.predict(inputs)
    pyfunc_scores = np.asarray(mlflow.pyfunc.load_model(info.model_uri).predict(dict(inputs)))
    np.testing.assert_allclose(pyfunc_scores.reshape(-1), expected, atol=1e-6)
    loaded = type(tagger).load_logged(info.model_uri, tagger.config, tagger.standardization)
    np.testing.assert_allclose(loaded.predict(inputs), expected, atol=1e-6)
    # export starts from the logged model, so the reloaded graph must convert too
    session = ort.InferenceSession(loaded.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    (onnx_scores,) = session.run(None, {name: inputs[name][:16] for name in tagger.inputs})
    np.testing.assert_allclose(onnx_scores, expected[:16], atol=1e-4)


def check_onnx_parity(tagger: KerasTagger, split: Split) -> float:
    """ONNX Runtime (CPU) vs Keras at batch sizes 1 and 257; returns the max |diff|."""
    proto = tagger.to_onnx()
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == list(tagger.inputs)
    assert [o.name for o in session.get_outputs()] == [schema.OUTPUT_SCORE]
    x = split.inputs(tagger.inputs)
    assert len(split) >= 257
    worst = 0.0
    for n in (1, 257):
        batch = {name: array[:n] for name, array in x.items()}
        (onnx_scores,) = session.run(None, batch)
        assert onnx_scores.shape == (n,)
        assert onnx_scores.dtype == np.float32
        worst = max(worst, float(np.max(np.abs(onnx_scores - tagger.predict(batch)))))
    assert worst <= 1e-4
    return worst


KERAS_TAGGERS = tuple(name for name in TAGGER_NAMES if tagger_class(name).flavor == "keras")


@dataclasses.dataclass(frozen=True)
class FitSpec:
    """How much each tagger trains in the tests: enough to learn the synthetic signal, small for 2 CI cores."""

    n_train: int = 160
    n_val: int = 300
    epochs: int = 2


FIT_SPECS = {"dnn": FitSpec(400, 300, 3), "pfn": FitSpec(400, 300, 3), "pfn_hl": FitSpec(400, 300, 3),
             "cnn": FitSpec(192),
             "cnn_tutorial": FitSpec(192),
             "lstm": FitSpec(160), "bilstm": FitSpec(160), "particlenet": FitSpec(400, 300, 3),
             "part": FitSpec(400, 300, 3)}


def fit_spec(name: str) -> FitSpec:
    return FIT_SPECS.get(name, FitSpec())
