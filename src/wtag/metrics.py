"""Tagger figures of merit: ROC, AUC, background rejection at fixed signal efficiency, mass sculpting.

The test-set metrics (``summary``) are unweighted: the held-out test set is a representative sample of the
selected jets, so every jet counts once and the numbers mean what a physicist expects (the fraction of W jets
kept, the fraction of QCD jets rejected). Training weights flatten pT for learning only. The functions still
accept per-jet weights where a caller needs them.

Conventions: a jet is tagged when ``score >= threshold``; ``eps_s`` / ``eps_b`` are the signal / background
efficiencies; the background rejection is ``1 / eps_b``.
"""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from wtag.errors import WtagError

DEFAULT_MASS_BINS = np.linspace(0.0, 300.0, 31)
"""Soft-drop mass binning (GeV) for the sculpting measure: 10 GeV bins, the W peak spans a few of them."""

SUMMARY_EFFICIENCIES = {"r50": 0.5, "r30": 0.3}


def _checked(y: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels as 0/1 ints and finite float64 scores of the same length, with both classes present."""
    y = np.asarray(y)
    score = np.asarray(score, dtype=np.float64)
    if y.ndim != 1 or score.ndim != 1:
        raise WtagError(f"labels and scores must be 1-D, got shapes {y.shape} and {score.shape}")
    if len(y) != len(score):
        raise WtagError(f"labels ({len(y)}) and scores ({len(score)}) have different lengths")
    if not np.isin(y, (0, 1)).all():
        raise WtagError(f"labels must be 0 (QCD) or 1 (W), got values {sorted(set(np.unique(y).tolist()) - {0, 1})}")
    if not np.isfinite(score).all():
        raise WtagError(f"scores contain {int((~np.isfinite(score)).sum())} non-finite values")
    y = y.astype(np.int64)
    if not (y == 1).any() or not (y == 0).any():
        raise WtagError(f"labels need both classes (W and QCD) for a ROC curve, got {len(y)} jets of one class")
    if weight is not None:
        weight = np.asarray(weight, dtype=np.float64)
        if weight.shape != y.shape:
            raise WtagError(f"weights have shape {weight.shape}, labels {y.shape}")
        if not np.isfinite(weight).all() or (weight < 0).any():
            raise WtagError("weights must be finite and non-negative")
        if weight[y == 1].sum() <= 0 or weight[y == 0].sum() <= 0:
            raise WtagError("weights of each class must not sum to zero")
    return y, score, weight


def roc_curve(y: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signal and background efficiencies for every distinct threshold, from (0, 0) up to (1, 1).

    ``thresholds`` decrease; the first one is ``inf`` (nothing tagged). All points are kept (no thinning), so
    interpolation between them is exact for a step-free ROC.
    """
    y, score, weight = _checked(y, score, weight)
    eps_b, eps_s, thresholds = skm.roc_curve(y, score, sample_weight=weight, drop_intermediate=False)
    return eps_s, eps_b, thresholds


def roc_auc(y: np.ndarray, score: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Area under the ROC curve: the probability that a W jet scores above a QCD jet (ties count half)."""
    y, score, weight = _checked(y, score, weight)
    return float(skm.roc_auc_score(y, score, sample_weight=weight))


def background_efficiency(y: np.ndarray, score: np.ndarray, signal_efficiency: float,
                          weight: np.ndarray | None = None) -> float:
    """eps_B at eps_S, linearly interpolated between ROC points (as the HATS tutorial does with np.interp).

    Where the ROC curve rises vertically (background passes while signal does not), the lowest eps_B reached at
    that eps_S is used: the best the tagger can do there.
    """
    if not 0.0 < signal_efficiency <= 1.0:
        raise WtagError(f"signal efficiency {signal_efficiency} must be in (0, 1]")
    eps_s, eps_b, _ = roc_curve(y, score, weight)
    unique_s, first = np.unique(eps_s, return_index=True)
    return float(np.interp(signal_efficiency, unique_s, eps_b[first]))


def background_rejection(y: np.ndarray, score: np.ndarray, signal_efficiency: float,
                         weight: np.ndarray | None = None) -> float:
    """1/eps_B at eps_S = ``signal_efficiency``, finite even when no background jet passes.

    A test set of N_B background jets cannot measure eps_B below about one jet in N_B; when the interpolated
    eps_B is smaller than half a jet (0.5 / N_B), it is floored there, so the rejection is capped at 2 N_B
    instead of being infinite (MLflow and comparisons need a finite number). A capped value means "at least
    this large": enlarge the test set to measure it.
    """
    eps_b = background_efficiency(y, score, signal_efficiency, weight)
    n_bkg = int((np.asarray(y) == 0).sum())
    return 1.0 / max(eps_b, 0.5 / n_bkg)


def threshold_at_efficiency(y: np.ndarray, score: np.ndarray, efficiency: float,
                            weight: np.ndarray | None = None) -> float:
    """The highest threshold whose cut ``score >= threshold`` keeps at least ``efficiency`` of the signal.

    An actual signal score, so the cut is reproducible; ties at the threshold can make the kept fraction
    exceed ``efficiency`` (never fall short of it).
    """
    if not 0.0 < efficiency <= 1.0:
        raise WtagError(f"signal efficiency {efficiency} must be in (0, 1]")
    y, score, weight = _checked(y, score, weight)
    sig = y == 1
    sig_score = score[sig]
    sig_weight = np.ones(len(sig_score)) if weight is None else weight[sig]
    order = np.argsort(-sig_score, kind="stable")
    kept = np.cumsum(sig_weight[order]) / sig_weight.sum()
    index = int(np.searchsorted(kept, efficiency * (1.0 - 1e-12), side="left"))
    return float(sig_score[order][min(index, len(order) - 1)])


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (log base 2, so in [0, 1]) between two histograms, normalised here."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.sum() <= 0 or q.sum() <= 0:
        raise WtagError(f"histograms must have the same shape and positive content, got {p.shape} and {q.shape}")
    p = p / p.sum()
    q = q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return min(max(0.5 * kl(p) + 0.5 * kl(q), 0.0), 1.0)


def mass_sculpting(msd: np.ndarray, y: np.ndarray, score: np.ndarray, signal_efficiency: float = 0.5,
                   bins: np.ndarray | None = None) -> float:
    """How much the cut keeping ``signal_efficiency`` of W jets reshapes the QCD soft-drop mass spectrum.

    The Jensen-Shannon divergence (base 2: 0 = same shape, 1 = disjoint) between the normalised QCD msd
    histograms before and after the cut. A tagger that learns the mass itself carves a W-like peak out of QCD,
    which fakes a signal in a bump hunt; a low value means the background shape survives the cut. Jets outside
    the binning go into the first / last bin. NaN when no QCD jet passes the cut (no shape to compare).
    """
    y, score, _ = _checked(y, score)
    msd = np.asarray(msd, dtype=np.float64)
    if msd.shape != y.shape:
        raise WtagError(f"soft-drop masses ({msd.shape}) and labels ({y.shape}) have different shapes")
    bins = DEFAULT_MASS_BINS if bins is None else np.asarray(bins, dtype=np.float64)
    threshold = threshold_at_efficiency(y, score, signal_efficiency)
    qcd = msd[y == 0].clip(bins[0], bins[-1])
    passed = score[y == 0] >= threshold
    if not passed.any():
        return float("nan")
    before, _ = np.histogram(qcd, bins=bins)
    after, _ = np.histogram(qcd[passed], bins=bins)
    return jensen_shannon(before, after)


def accuracy(y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of jets classified correctly when ``score >= threshold`` means W."""
    y, score, _ = _checked(y, score)
    return float(np.mean((score >= threshold).astype(np.int64) == y))


def summary(y: np.ndarray, score: np.ndarray, msd: np.ndarray, prefix: str = "test_") -> dict[str, float]:
    """The metrics every tagger run logs, unweighted, keyed ``{prefix}auc``, ``r50``, ``r30``, ``accuracy``,
    ``mass_sculpting``."""
    out = {f"{prefix}auc": roc_auc(y, score)}
    for key, eff in SUMMARY_EFFICIENCIES.items():
        out[f"{prefix}{key}"] = background_rejection(y, score, eff)
    out[f"{prefix}accuracy"] = accuracy(y, score)
    out[f"{prefix}mass_sculpting"] = mass_sculpting(msd, y, score)
    return out
