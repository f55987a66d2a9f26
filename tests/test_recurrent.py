"""The LSTM and BiLSTM taggers: masking from raw pT, the contract (training, scores, weights, MLflow round
trip) and ONNX parity on a batch mixing every multiplicity from 1 to MAX_PARTICLES."""
from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
from keras_helpers import check_onnx_parity, synthetic_split, tiny_config

from wtag import schema
from wtag.dataset import Standardization
from wtag.taggers import build_tagger
from wtag.taggers.recurrent import BiLSTMTagger, LSTMTagger

NAMES = ("lstm", "bilstm")


@pytest.fixture(params=NAMES)
def trained(request: pytest.FixtureRequest, keras_trained) -> tuple:
    return keras_trained(request.param)


def test_identity_and_architecture() -> None:
    for cls in (LSTMTagger, BiLSTMTagger):
        assert (cls.family, cls.inputs, cls.flavor) == ("recurrent", ("particles",), "keras")
    assert (LSTMTagger.name, BiLSTMTagger.name) == NAMES
    standardization = Standardization.fit(synthetic_split(16, seed=1))
    lstm_layers = build_tagger("lstm", tiny_config(), standardization)._build()[0].layers
    bilstm_layers = build_tagger("bilstm", tiny_config(), standardization)._build()[0].layers
    assert any(isinstance(layer, keras.layers.LSTM) and layer.units == 50 for layer in lstm_layers)
    assert any(isinstance(layer, keras.layers.Bidirectional) for layer in bilstm_layers)
    assert not any(isinstance(layer, keras.layers.Bidirectional) for layer in lstm_layers)



@pytest.mark.slow
def test_particle_order_matters(trained: tuple) -> None:
    """A recurrent network reads a sequence: reversing the real particles changes the score."""
    tagger, val, _ = trained
    particles = val.particles[:64].copy()
    flipped = particles.copy()
    for i, n in enumerate((particles[..., 0] > 0).sum(axis=1)):
        flipped[i, :n] = particles[i, :n][::-1]
    assert np.max(np.abs(tagger.predict({"particles": flipped}) - tagger.predict({"particles": particles}))) > 1e-4


@pytest.mark.slow
def test_onnx_parity_with_every_multiplicity(trained: tuple) -> None:
    """Masking survives the export: one batch holds jets with 1, 2, ..., MAX_PARTICLES real particles."""
    tagger, val, _ = trained
    particles = val.particles.copy()
    for i in range(schema.MAX_PARTICLES):
        particles[i, i + 1:] = 0.0
        particles[i, : i + 1, 0] = np.maximum(particles[i, : i + 1, 0], 1.0)
    multiplicities = (particles[..., 0] > 0).sum(axis=1)
    assert set(range(1, schema.MAX_PARTICLES + 1)) <= set(multiplicities[:257].tolist())
    assert check_onnx_parity(tagger, dataclasses.replace(val, particles=particles)) <= 1e-4
