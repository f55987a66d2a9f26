"""How training jets are weighted (``TrainConfig.weighting``), and what a weighting leaves of a sample.

``flat``: the prepared weights, which flatten each class's pT spectrum; ``w_spectrum``: W jets unweighted, QCD
reweighted to the W pT spectrum. Kept apart from ``wtag.dataset``, whose code is part of the prepared data's key.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from wtag.dataset import Split
from wtag.errors import WtagError

WEIGHTINGS = ("flat", "w_spectrum")
PT_BINS = np.linspace(200.0, 500.0, 31)  # as the prepared flat weights bin pT


def w_spectrum_weights(pt: np.ndarray, label: np.ndarray, bins: np.ndarray | None = None) -> np.ndarray:
    """Per-jet weights: 1 for W jets, and for QCD jets the ratio of the W to the QCD pT histogram (each
    normalized to its class count) in the jet's bin, so the weighted QCD spectrum is the W one and both classes
    carry the same total weight. Trains where the test is (mostly 200-300 GeV W jets) rather than on a flat mix,
    without throwing away W statistics. QCD jets in bins without W jets get weight 0."""
    bins = PT_BINS if bins is None else bins
    pt = np.asarray(pt, dtype=np.float64)
    signal, background = label == 1, label == 0
    if not signal.any() or not background.any():
        raise WtagError("w_spectrum weighting needs both W and QCD jets")
    h_w, _ = np.histogram(np.clip(pt[signal], bins[0], bins[-1]), bins=bins)
    h_q, _ = np.histogram(np.clip(pt[background], bins[0], bins[-1]), bins=bins)
    which = np.clip(np.digitize(pt[background], bins) - 1, 0, len(bins) - 2)
    ratio = h_w[which] / h_q[which]  # h_q >= 1 in a bin holding this QCD jet; the class totals scale out below
    w = np.ones(len(pt))
    w[background] = ratio * signal.sum() / max(ratio.sum(), 1e-300)
    return (w * len(pt) / w.sum()).astype(np.float32)


def effective_size(weight: np.ndarray) -> float:
    """Kish's effective number of jets of a weighted sample, (sum w)^2 / sum w^2: what the weights leave of
    its statistical power."""
    w = np.asarray(weight, dtype=np.float64)
    return float(w.sum() ** 2 / (w ** 2).sum()) if (w ** 2).sum() > 0 else 0.0


def weighted(split: Split, weighting: str) -> Split:
    """``split`` with its training weights chosen by ``weighting`` (one of WEIGHTINGS)."""
    if weighting not in WEIGHTINGS:
        raise WtagError(f"weighting '{weighting}' is not one of {', '.join(WEIGHTINGS)}")
    if weighting == "flat":
        return split
    return dataclasses.replace(split, weight=w_spectrum_weights(split.pt, split.label))
