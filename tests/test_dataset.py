from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from wtag import schema
from wtag.dataset import (
    Split,
    Standardization,
    compute_digest,
    flat_pt_weights,
    load_prepared,
    save_prepared,
    stratified_split,
)
from wtag.errors import WtagError


def _split(n: int, seed: int = 0, particles: bool = True) -> Split:
    rng = np.random.default_rng(seed)
    label = (np.arange(n) % 3 == 0).astype(np.int32)
    parts = np.zeros((n, schema.MAX_PARTICLES, len(schema.PARTICLE_FEATURES)), np.float32)
    parts[:, :5] = rng.uniform(1, 10, size=(n, 5, len(schema.PARTICLE_FEATURES)))
    return Split(label=label, weight=np.ones(n, np.float32), msd=rng.uniform(0, 200, n).astype(np.float32),
                 pt=rng.uniform(200, 500, n).astype(np.float32),
                 hl=rng.normal(size=(n, len(schema.HL_FEATURES))).astype(np.float32),
                 particles=parts if particles else None)


def test_stratified_split_keeps_class_balance_and_is_seeded():
    label = np.array([1] * 300 + [0] * 700)
    a = stratified_split(label, seed=3)
    b = stratified_split(label, seed=3)
    c = stratified_split(label, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    every = np.concatenate([a["train"], a["val"], a["test"]])
    assert np.array_equal(np.sort(every), np.arange(1000))
    assert (label[a["test"]] == 1).sum() == 60 and len(a["test"]) == 200
    assert (label[a["val"]] == 1).sum() == 60 and len(a["train"]) == 600


@pytest.mark.parametrize("val,test", [(0.0, 0.2), (0.5, 0.5), (-0.1, 0.2)])
def test_stratified_split_rejects_bad_fractions(val, test):
    with pytest.raises(WtagError, match="val_fraction"):
        stratified_split(np.array([0, 1] * 10), seed=1, val_fraction=val, test_fraction=test)


def test_flat_pt_weights_flatten_each_class_with_equal_totals():
    rng = np.random.default_rng(1)
    pt = np.concatenate([200 + rng.exponential(60, 20000), rng.uniform(200, 500, 5000)])
    pt = np.clip(pt, 200, 499.9)
    label = np.array([0] * 20000 + [1] * 5000)
    w = flat_pt_weights(pt, label)
    assert w.dtype == np.float32
    assert np.isclose(w.mean(), 1.0, rtol=1e-5)
    assert np.isclose(w[label == 0].sum(), w[label == 1].sum(), rtol=1e-4)
    bins = np.linspace(200, 500, 31)
    for cls in (0, 1):
        hist, _ = np.histogram(pt[label == cls], bins=bins, weights=w[label == cls].astype(np.float64))
        assert hist.std() / hist.mean() < 1e-5


def test_flat_pt_weights_multiply_in_base_weights():
    pt = np.array([250.0, 250.0, 260.0, 260.0])
    label = np.array([0, 0, 1, 1])
    w = flat_pt_weights(pt, label, base_weight=np.array([1.0, 3.0, 1.0, 1.0]))
    assert np.isclose(w[1] / w[0], 3.0)


def test_standardization_uses_only_real_particles():
    split = _split(50)
    st = Standardization.fit(split)
    real = split.particles[:, :5].reshape(-1, len(schema.PARTICLE_FEATURES))
    assert np.allclose(st.particle_mean, real.mean(axis=0), rtol=1e-5)
    assert np.allclose(st.hl_mean, split.hl.mean(axis=0), atol=1e-6)
    assert st.image_scale is None
    assert Standardization.from_dict(json.loads(json.dumps(st.to_dict()))) == st


def test_save_and_load_prepared_round_trip(tmp_path):
    splits = {"train": _split(30, 0), "val": _split(10, 1), "test": _split(10, 2, particles=True)}
    st = Standardization.fit(splits["train"])
    digest = save_prepared(tmp_path / "ds", {"source": "test"}, splits, st)
    ds = load_prepared(tmp_path / "ds")
    assert ds.digest == digest == compute_digest(splits)
    assert ds.manifest["counts"]["train"] == {"jets": 30, "signal": 10, "background": 20}
    assert np.array_equal(ds.test.hl, splits["test"].hl)
    assert ds.train.images is None and ds.standardization == st
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_digest_changes_with_content():
    a = {"train": _split(20, 0), "val": _split(5, 1), "test": _split(5, 2)}
    b = {**a, "test": _split(5, 3)}
    assert compute_digest(a) != compute_digest(b)
    assert len(compute_digest(a)) == len(hashlib.sha256().hexdigest())


def test_split_inputs_names_missing_input():
    split = _split(4, particles=False)
    assert set(split.inputs()) == {"hl"}
    with pytest.raises(WtagError, match="no 'images' input"):
        split.inputs(["images"])


def test_load_prepared_errors_name_the_problem(tmp_path):
    with pytest.raises(WtagError, match="no manifest.json"):
        load_prepared(tmp_path)
    splits = {"train": _split(10), "val": _split(5), "test": _split(5)}
    save_prepared(tmp_path / "ds", {"source": "x"}, splits, Standardization.fit(splits["train"]))
    (tmp_path / "ds" / "val.npz").write_bytes(b"garbage")
    with pytest.raises(WtagError, match="val.npz"):
        load_prepared(tmp_path / "ds")
