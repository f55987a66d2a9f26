"""Particle Transformer: the pairwise interaction features against an independent four-vector computation,
permutation invariance, masking from raw pT, the tagger contract (training, scores, MLflow round trip) and
ONNX parity."""
from __future__ import annotations

import keras
import numpy as np
from keras_helpers import synthetic_split, tiny_config

from wtag import schema
from wtag.dataset import Standardization
from wtag.taggers import build_tagger
from wtag.taggers.part import ParticleTransformerTagger, pair_features

P = schema.MAX_PARTICLES
F = len(schema.PARTICLE_FEATURES)


def test_identity_and_architecture() -> None:
    assert (ParticleTransformerTagger.name, ParticleTransformerTagger.family, ParticleTransformerTagger.inputs,
            ParticleTransformerTagger.flavor) == ("part", "particle", ("particles",), "keras")
    tagger = build_tagger("part", tiny_config(), Standardization.fit(synthetic_split(16, seed=1)))
    names = {layer.name for layer in tagger._build()[0].layers}
    assert {"particle_block0_query", "particle_block1_query", "class_block0_query", "class_token",
            "pair_heads"} <= names
    assert "particle_block2_query" not in names and "class_block1_query" not in names
    params = tagger.hyperparameters()
    assert (params["embed_dim"], params["heads"], params["particle_blocks"], params["class_blocks"]) == (64, 4, 2, 1)


def _four_vectors(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """(E, px, py, pz) of massless particles, float64."""
    return np.stack([pt * np.cosh(eta), pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)], axis=-1)


def test_pair_features_match_four_vectors() -> None:
    """ln Delta R, ln kT, ln z, ln m^2 and both-in-soft-drop of every real pair i != j; zeros on the diagonal and
    for padding."""
    rng = np.random.default_rng(3)
    m = 12
    raw = np.zeros((1, P, F), np.float32)
    raw[0, :m, schema.PARTICLE_PT] = rng.exponential(20.0, m) + 1.0
    raw[0, :m, 1] = rng.normal(0.0, 0.3, m)  # deta
    raw[0, :m, 2] = rng.normal(0.0, 0.3, m)  # dphi
    groomed = np.arange(m) % 3 != 0
    raw[0, :m, schema.PARTICLE_FEATURES.index("in_softdrop")] = groomed
    raw[0, m:, 1:] = 5.0  # junk on padded rows must not leak in
    inp = keras.Input((P, F))
    mask_f = keras.ops.cast(keras.ops.greater(inp[..., schema.PARTICLE_PT], 0.0), "float32")
    got = keras.Model(inp, pair_features(inp, mask_f)).predict(raw, verbose=0)[0].astype(np.float64)

    x = raw[0, :m].astype(np.float64)
    pt, eta, phi = x[:, 0], x[:, 1], x[:, 2]
    p4 = _four_vectors(pt, eta, phi)
    for i in range(m):
        for j in range(m):
            if i == j:
                np.testing.assert_array_equal(got[i, j], 0.0)
                continue
            dr = np.hypot(eta[i] - eta[j], phi[i] - phi[j])
            s = p4[i] + p4[j]
            m2 = s[0] ** 2 - s[1] ** 2 - s[2] ** 2 - s[3] ** 2
            pt_min = min(pt[i], pt[j])
            want = [np.log(dr), np.log(pt_min * dr), np.log(pt_min / (pt[i] + pt[j])), np.log(m2),
                    float(groomed[i] and groomed[j])]
            np.testing.assert_allclose(got[i, j], want, atol=2e-3, rtol=1e-3, err_msg=f"pair ({i}, {j})")
    assert not got[m:].any() and not got[:, m:].any()
