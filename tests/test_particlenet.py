"""ParticleNet: the k-NN graph (nearest real neighbours, padding never a neighbour), permutation invariance,
masking from raw pT, the tagger contract (training, scores, MLflow round trip) and ONNX parity."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from keras_helpers import synthetic_split, tiny_config

from wtag import schema
from wtag.dataset import Standardization
from wtag.taggers import build_tagger
from wtag.taggers.particlenet import ParticleNetTagger, gather_neighbours, knn

P = schema.MAX_PARTICLES


def test_identity_and_architecture() -> None:
    assert (ParticleNetTagger.name, ParticleNetTagger.family, ParticleNetTagger.inputs, ParticleNetTagger.flavor) == (
        "particlenet", "particle", ("particles",), "keras")
    tagger = build_tagger("particlenet", tiny_config(), Standardization.fit(synthetic_split(16, seed=1)))
    dense = {layer.name: layer.units for layer in tagger._build()[0].layers if isinstance(layer, keras.layers.Dense)}
    # ParticleNet-Lite: two EdgeConv blocks (32, 32, 32) and (64, 64, 64), fusion 128, head 128
    assert [dense[f"edgeconv0_edge{i}"] for i in range(3)] == [32, 32, 32]
    assert [dense[f"edgeconv1_edge{i}"] for i in range(3)] == [64, 64, 64]
    assert (dense["fusion"], dense["head"], dense["output"]) == (128, 128, 1)
    assert ParticleNetTagger.k == 7
    assert tagger.hyperparameters()["edge_conv_channels"] == "32,32,32;64,64,64"


def _knn_model(k: int) -> keras.Model:
    points = keras.Input((P, 2))
    mask = keras.Input((P,))
    features = keras.Input((P, 3))
    index, valid = knn(points, mask, k)
    return keras.Model([points, mask, features], [index, valid, gather_neighbours(features, index)])


def test_knn_picks_the_nearest_real_particles_and_never_padding() -> None:
    rng = np.random.default_rng(0)
    n_real = (10, 3, 1)  # the second and third jets have fewer than k + 1 = 5 real particles
    points = np.zeros((len(n_real), P, 2), np.float32)
    mask = np.zeros((len(n_real), P), np.float32)
    for b, m in enumerate(n_real):
        points[b, :m] = rng.normal(size=(m, 2))
        mask[b, :m] = 1.0
    points[:, 20:] = 0.01  # padding sitting right next to the real particles must still not be chosen
    features = rng.normal(size=(len(n_real), P, 3)).astype(np.float32)
    index, valid, gathered = _knn_model(4).predict([points, mask, features], verbose=0)
    for b, m in enumerate(n_real):
        for i in range(m):
            dist = np.sum((points[b, :m] - points[b, i]) ** 2, axis=1)
            dist[i] = np.inf
            want = np.argsort(dist)[:min(4, m - 1)]
            n_valid = int(valid[b, i].sum())
            assert n_valid == min(4, m - 1)
            assert set(index[b, i, :n_valid].tolist()) == set(want.tolist())
            assert valid[b, i, n_valid:].sum() == 0
            # the gather reads the neighbours' rows of the same jet
            np.testing.assert_allclose(gathered[b, i], features[b, index[b, i]], atol=1e-6)


@pytest.mark.parametrize("n_jets", [1, 7, P, 65])
def test_gather_reads_each_jets_own_rows(n_jets: int) -> None:
    """Also at batch sizes equal to k and to P, where Keras' bias-add shortcut for ``+`` would add the batch
    offset along the wrong axis (see keras_common.broadcast_add)."""
    rng = np.random.default_rng(n_jets)
    features = rng.normal(size=(n_jets, P, 3)).astype(np.float32)
    index = rng.integers(0, P, size=(n_jets, P, 7))
    feat_in, index_in = keras.Input((P, 3)), keras.Input((P, 7), dtype="int32")
    model = keras.Model([feat_in, index_in], gather_neighbours(feat_in, index_in))
    got = model.predict([features, index.astype(np.int32)], batch_size=n_jets, verbose=0)
    want = np.take_along_axis(features[:, None, :, :], index[..., None], axis=2)
    np.testing.assert_allclose(got, want, atol=0)
