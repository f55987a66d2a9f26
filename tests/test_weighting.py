"""Training weightings: the W-spectrum reweighting of QCD and the effective sample size."""
from __future__ import annotations

import numpy as np
import pytest

from wtag.dataset import Split
from wtag.errors import WtagError
from wtag.weighting import PT_BINS, WEIGHTINGS, effective_size, w_spectrum_weights, weighted


def _jets(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """W jets falling steeply from 200 GeV (as in ttbar), QCD flat-ish: very different pT spectra."""
    rng = np.random.default_rng(seed)
    pt_w = 200.0 + rng.exponential(60.0, 4000)
    pt_q = rng.uniform(200.0, 500.0, 9000)
    pt = np.concatenate([pt_w[pt_w < 500.0], pt_q])
    label = np.concatenate([np.ones((pt_w < 500.0).sum(), int), np.zeros(len(pt_q), int)])
    return pt, label


def test_w_spectrum_makes_the_weighted_qcd_pt_spectrum_equal_to_the_w_one() -> None:
    pt, label = _jets()
    w = w_spectrum_weights(pt, label).astype(np.float64)  # float32 sums in np.histogram drift by ~1e-4
    assert np.all(w[label == 1] == w[label == 1][0])  # W jets unweighted
    h_w, _ = np.histogram(pt[label == 1], bins=PT_BINS, weights=w[label == 1])
    h_q, _ = np.histogram(pt[label == 0], bins=PT_BINS, weights=w[label == 0])
    np.testing.assert_allclose(h_q, h_w, rtol=1e-5, atol=1e-6 * h_w.sum())
    assert w[label == 0].sum() == pytest.approx(w[label == 1].sum(), rel=1e-5)
    assert w.mean() == pytest.approx(1.0, rel=1e-5)


def test_qcd_in_a_bin_without_w_jets_gets_no_weight() -> None:
    pt = np.array([210.0, 220.0, 215.0, 480.0, 490.0])
    label = np.array([1, 1, 0, 0, 0])
    w = w_spectrum_weights(pt, label)
    assert w[3] == 0.0 and w[4] == 0.0 and w[2] > 0


def test_effective_size() -> None:
    assert effective_size(np.ones(50)) == pytest.approx(50.0)
    assert effective_size(np.array([0.0, 0.0, 3.0])) == pytest.approx(1.0)
    assert effective_size(np.array([1.0, 3.0])) == pytest.approx(16.0 / 10.0)
    assert effective_size(np.zeros(3)) == 0.0


def test_weighted_split_and_bad_names() -> None:
    pt, label = _jets(2)
    split = Split(label=label, weight=np.full(len(pt), 0.5, np.float32), msd=np.zeros(len(pt)), pt=pt)
    assert weighted(split, "flat") is split
    reweighted = weighted(split, "w_spectrum")
    np.testing.assert_array_equal(reweighted.weight, w_spectrum_weights(pt, label))
    np.testing.assert_array_equal(split.weight, 0.5)  # the prepared split is not changed
    assert WEIGHTINGS == ("flat", "w_spectrum")
    with pytest.raises(WtagError, match="weighting 'bogus' is not one of flat, w_spectrum"):
        weighted(split, "bogus")
    with pytest.raises(WtagError, match="needs both W and QCD jets"):
        w_spectrum_weights(pt[label == 1], label[label == 1])
