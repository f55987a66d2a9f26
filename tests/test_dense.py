"""The dense tagger on synthetic high-level features: training, scores, weights, MLflow, ONNX parity."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from keras_helpers import synthetic_split, tiny_config

from wtag import schema
from wtag.dataset import Standardization
from wtag.taggers import build_tagger
from wtag.taggers.dense import DenseTagger
# on the pytest-xdist worker that fits the dnn for test_keras_common too (conftest groups by tagger)
pytestmark = pytest.mark.xdist_group("keras-dnn")


@pytest.fixture
def trained(keras_trained) -> tuple:
    return keras_trained("dnn")


def test_identity_and_architecture() -> None:
    assert (DenseTagger.name, DenseTagger.family, DenseTagger.inputs, DenseTagger.flavor) == (
        "dnn", "dense", ("hl",), "keras")
    tagger = build_tagger("dnn", tiny_config(), Standardization.fit(synthetic_split(16, seed=1)))
    train_model, score_model = tagger._build()
    dense = [layer for layer in train_model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [64, 64, 64, 1]
    assert dense[-1].activation.__name__ == "sigmoid"
    assert isinstance(train_model.layers[1], keras.layers.Rescaling)
    assert score_model.output.shape == (None,)
    assert tagger.hyperparameters()["features"] == ",".join(schema.HL_FEATURES)


@pytest.mark.slow
def test_learns_the_synthetic_signal(trained: tuple) -> None:
    tagger, val, history = trained
    assert history["val_auc"][-1] > 0.8  # the Bayes limit of this synthetic set is ~0.92
    assert history["loss"][-1] < history["loss"][0]


@pytest.mark.slow
def test_baked_standardization_sees_raw_units(trained: tuple) -> None:
    """Shifting the raw inputs by the training mean changes the scores: the graph standardizes by itself."""
    tagger, val, _ = trained
    hl = val.hl[:50]
    shifted = hl - np.asarray(tagger.standardization.hl_mean, dtype=np.float32)
    assert np.max(np.abs(tagger.predict({"hl": hl}) - tagger.predict({"hl": shifted}))) > 1e-3


