"""The Particle Flow Network: permutation invariance, masking from raw pT, the contract (training, scores,
weights, MLflow round trip) and ONNX parity."""
from __future__ import annotations

import keras
import pytest
from keras_helpers import synthetic_split, tiny_config

from wtag.dataset import Standardization
from wtag.taggers import build_tagger
from wtag.taggers.particle import PFNTagger

# on the pytest-xdist worker that fits the pfn for test_keras_common too (conftest groups by tagger)
pytestmark = pytest.mark.xdist_group("keras-pfn")


@pytest.fixture
def trained(keras_trained) -> tuple:
    return keras_trained("pfn")


def test_identity_and_architecture() -> None:
    assert (PFNTagger.name, PFNTagger.family, PFNTagger.inputs, PFNTagger.flavor) == (
        "pfn", "particle", ("particles",), "keras")
    tagger = build_tagger("pfn", tiny_config(), Standardization.fit(synthetic_split(16, seed=1)))
    dense = [layer for layer in tagger._build()[0].layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [64, 64, 64, 64, 64, 1]


@pytest.mark.slow
def test_learns_the_synthetic_signal(trained: tuple) -> None:
    _, _, history = trained
    assert history["val_auc"][-1] > 0.8
