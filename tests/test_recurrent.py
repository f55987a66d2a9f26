"""The LSTM and BiLSTM taggers: masking from raw pT, the contract (training, scores, weights, MLflow round
trip) and ONNX parity on a batch mixing every multiplicity from 1 to MAX_PARTICLES."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from test_keras_common import (  # noqa: F401 - mlflow_experiment is a fixture
    MLFLOW_WARNINGS,
    check_history,
    check_mlflow_roundtrip,
    check_onnx_parity,
    check_rejects_misshaped,
    check_scores,
    check_weights_change_loss,
    fitted,
    mlflow_experiment,
    synthetic_split,
    tiny_config,
)

from wtag import schema
from wtag.dataset import Standardization
from wtag.taggers import build_tagger
from wtag.taggers.recurrent import BiLSTMTagger, LSTMTagger

EPOCHS = 2
NAMES = ("lstm", "bilstm")


@pytest.fixture(scope="module", params=NAMES)
def trained(request: pytest.FixtureRequest) -> tuple:
    return fitted(request.param, n_train=160, n_val=300, epochs=EPOCHS)


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
def test_trains_and_scores(trained: tuple) -> None:
    tagger, val, history = trained
    check_history(history, EPOCHS)
    check_scores(tagger, val)


@pytest.mark.slow
def test_padded_rows_are_ignored(trained: tuple) -> None:
    """Whatever sits in rows with pt == 0, and however many of them there are, the score is the same."""
    tagger, val, _ = trained
    particles = val.particles[:64].copy()
    real = particles[..., 0] > 0
    junk = particles.copy()
    junk[~real] = np.random.default_rng(0).normal(size=(int((~real).sum()), len(schema.PARTICLE_FEATURES)))
    junk[~real, 0] = 0.0
    np.testing.assert_allclose(tagger.predict({"particles": junk}), tagger.predict({"particles": particles}),
                               atol=1e-6)


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
@pytest.mark.parametrize("name", NAMES)
def test_weights_change_the_loss(name: str) -> None:
    check_weights_change_loss(name)


@pytest.mark.slow
def test_rejects_misshaped_input(trained: tuple) -> None:
    check_rejects_misshaped(trained[0])


@pytest.mark.slow
@MLFLOW_WARNINGS
def test_mlflow_log_pyfunc_and_load_logged(trained: tuple, mlflow_experiment: str) -> None:  # noqa: F811
    tagger, val, _ = trained
    check_mlflow_roundtrip(tagger, val, mlflow_experiment)


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
    val.particles = particles
    assert check_onnx_parity(tagger, val) <= 1e-4
