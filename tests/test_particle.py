"""The Particle Flow Network: permutation invariance, masking from raw pT, the contract (training, scores,
weights, MLflow round trip) and ONNX parity."""
from __future__ import annotations

import keras
import pytest
from keras_helpers import synthetic_split, tiny_config

from wtag.dataset import Standardization
from wtag.errors import WtagError
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


def test_hybrid_identity_and_architecture() -> None:
    from wtag.taggers.particle import PFNHLTagger

    assert (PFNHLTagger.name, PFNHLTagger.family, PFNHLTagger.inputs) == ("pfn_hl", "hybrid", ("particles", "hl"))
    tagger = build_tagger("pfn_hl", tiny_config(), Standardization.fit(synthetic_split(16, seed=1)))
    model = tagger._build()[1]
    assert sorted(t.name for t in model.inputs) == ["hl", "particles"]
    dense = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in dense] == [64, 64, 64, 64, 64, 1]
    assert dense[3].kernel.shape == (64 + 10, 64)  # F reads the particle sum and the ten jet features
    split = synthetic_split(8, seed=2)
    with pytest.raises(WtagError, match=r"inputs have different numbers of jets \(particles 8, hl 5\)"):
        tagger.predict({"particles": split.particles, "hl": split.hl[:5]})


@pytest.mark.slow
@pytest.mark.xdist_group("keras-pfn_hl")
def test_hybrid_reads_the_jet_features_and_serves_the_real_2011a_jets(keras_trained, shared_data, tmp_path) -> None:
    """pfn_hl's score moves with ``hl`` alone; its exported graph, served, scores real 2011A collision jets from
    raw PF candidates exactly as the Keras model scores the features computed offline."""
    import httpx
    import numpy as np
    import onnx
    from onnx_models import serve

    from wtag.features import model_inputs
    from wtag.onnx_export import to_onnx_with_metadata
    from wtag.sources.cms_ntuple import read_cms_ntuple

    tagger, val, _ = keras_trained("pfn_hl")
    inputs = val.inputs(tagger.inputs)
    shifted = {**inputs, "hl": inputs["hl"] * np.float32(1.5)}
    assert np.max(np.abs(tagger.predict(shifted) - tagger.predict(inputs))) > 1e-3

    path = shared_data / "cms2011a_jet_pfcands_params1.npy"
    jets = read_cms_ntuple([path])
    onnx.save(to_onnx_with_metadata(tagger, "0" * 32, "test"), str(tmp_path / "pfn_hl.onnx"))
    with serve(tmp_path / "pfn_hl.onnx", tmp_path / "server.log") as server:
        resp = httpx.post(f"{server.url}/v1/score-file", content=path.read_bytes(), timeout=120)
    assert resp.status_code == 200, resp.text
    assert resp.json()["n_jets"] == len(jets) > 100
    offline = tagger.predict(model_inputs(jets, list(tagger.inputs)))
    np.testing.assert_allclose(resp.json()["scores"], offline, atol=1e-5)
