"""Tagger figures of merit: ROC, AUC, background rejection at fixed signal efficiency, mass sculpting.

The test-set metrics (``summary``) are unweighted: the held-out test set is a representative sample of the
selected jets, so every jet counts once and the numbers mean what a physicist expects (the fraction of W jets
kept, the fraction of QCD jets rejected). Training weights flatten pT for learning only. The functions still
accept per-jet weights where a caller needs them.

Statistical uncertainties (``_err``) come from a seeded, stratified bootstrap over the test jets (see
``bootstrap``): half the central 68% interval (a robust standard deviation, see ``spread``) of each metric over
resamples of the W and the QCD test jets.

Conventions: a jet is tagged when ``score >= threshold``; ``eps_s`` / ``eps_b`` are the signal / background
efficiencies; the background rejection is ``1 / eps_b``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

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
                   bins: np.ndarray | None = None, weight: np.ndarray | None = None) -> float:
    """How much the cut keeping ``signal_efficiency`` of W jets reshapes the QCD soft-drop mass spectrum.

    The Jensen-Shannon divergence (base 2: 0 = same shape, 1 = disjoint) between the normalised QCD msd
    histograms before and after the cut. A tagger that learns the mass itself carves a W-like peak out of QCD,
    which fakes a signal in a bump hunt; a low value means the background shape survives the cut. Jets outside
    the binning go into the first / last bin. NaN when no QCD jet passes the cut (no shape to compare).
    """
    y, score, weight = _checked(y, score, weight)
    msd = np.asarray(msd, dtype=np.float64)
    if msd.shape != y.shape:
        raise WtagError(f"soft-drop masses ({msd.shape}) and labels ({y.shape}) have different shapes")
    bins = DEFAULT_MASS_BINS if bins is None else np.asarray(bins, dtype=np.float64)
    threshold = threshold_at_efficiency(y, score, signal_efficiency, weight)
    qcd = msd[y == 0].clip(bins[0], bins[-1])
    qcd_weight = None if weight is None else weight[y == 0]
    passed = score[y == 0] >= threshold
    if qcd_weight is not None:
        passed &= qcd_weight > 0
    if not passed.any():
        return float("nan")
    before, _ = np.histogram(qcd, bins=bins, weights=qcd_weight)
    after, _ = np.histogram(qcd[passed], bins=bins, weights=None if qcd_weight is None else qcd_weight[passed])
    return jensen_shannon(before, after)


def sculpting_floor(msd: np.ndarray, y: np.ndarray, score: np.ndarray, n_samples: int, seed: int,
                    signal_efficiency: float = 0.5, bins: np.ndarray | None = None) -> float:
    """The mass sculpting a perfectly mass-blind tagger would show with the same number of QCD jets passing.

    JSD is biased upwards by the statistics of the passing QCD jets: k jets drawn at random (no mass dependence
    at all) from the N_B QCD test jets still give a JSD > 0 that grows as k shrinks. This draws ``n_samples``
    such random subsets of size k (k = the QCD jets passing the tagger's cut) and returns their mean JSD: a
    ``test_mass_sculpting`` near this value is as decorrelated as the test set can tell. NaN when none pass.
    """
    y, score, _ = _checked(y, score)
    bins = DEFAULT_MASS_BINS if bins is None else np.asarray(bins, dtype=np.float64)
    threshold = threshold_at_efficiency(y, score, signal_efficiency)
    qcd = np.asarray(msd, dtype=np.float64)[y == 0].clip(bins[0], bins[-1])
    k = int((score[y == 0] >= threshold).sum())
    if k == 0:
        return math.nan
    rng = np.random.default_rng(seed)
    before, _ = np.histogram(qcd, bins=bins)
    return float(np.mean([jensen_shannon(before, np.histogram(rng.choice(qcd, k, replace=False), bins=bins)[0])
                          for _ in range(n_samples)]))


def accuracy(y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> float:
    """Fraction of jets classified correctly when ``score >= threshold`` means W."""
    y, score, _ = _checked(y, score)
    return float(np.mean((score >= threshold).astype(np.int64) == y))


def inverse(value: float) -> float:
    """1/value, +inf for 0 and NaN for NaN (1/JSD: larger means less sculpting)."""
    if math.isnan(value):
        return math.nan
    return math.inf if value == 0 else 1.0 / value


def _row_sums(x: np.ndarray, p: np.ndarray) -> np.ndarray:
    """a_i. = sum_j p_j |x_i - x_j| for every i, from one sort and cumulative sums (ties contribute zero)."""
    order = np.argsort(x, kind="stable")
    xs, ps = x[order], p[order]
    cw, cx = np.cumsum(ps), np.cumsum(ps * xs)
    out = np.empty_like(x)
    out[order] = xs * (cw - ps) - (cx - ps * xs) + (cx[-1] - cx) - xs * (cw[-1] - cw)
    return out


def _cross_sum(x: np.ndarray, y: np.ndarray, p: np.ndarray) -> float:
    """sum_ij p_i p_j |x_i - x_j| |y_i - y_j| without the n x n matrix.

    With the jets sorted by x, a pair (j before i) contributes (x_i - x_j)(y_i - y_j) s_ij, s_ij = +1 when
    y_j < y_i and -1 otherwise, which expands into products of x_i, y_i with weighted sums of 1, y_j, x_j and
    x_j y_j over the earlier jets on either side of y_i. Merge-sort style: at each level every pair of adjacent
    blocks counts the left block's jets for the right block's, through sorted keys and cumulative sums, so the
    whole is O(n log^2 n) in vectorized numpy. Ties in x or y have a zero factor, so their order is irrelevant.
    """
    n = len(x)
    order = np.argsort(x, kind="stable")
    xs, ys, ps = x[order], y[order], p[order]
    yrank = np.empty(n, dtype=np.int64)
    yrank[np.argsort(ys, kind="stable")] = np.arange(n)
    terms = (ps, ps * ys, ps * xs, ps * xs * ys)
    pos = np.arange(n)
    total, width = 0.0, 1
    while width < n:
        block = pos // (2 * width)
        right = (pos // width) % 2 == 1
        left = ~right
        key = block[left] * n + yrank[left]
        ordered = np.argsort(key, kind="stable")
        key = key[ordered]
        cums = [np.concatenate(([0.0], np.cumsum(t[left][ordered]))) for t in terms]
        base = block[right] * n
        below, start, stop = (np.searchsorted(key, k) for k in (base + yrank[right], base, base + n))
        xi, yi = xs[right], ys[right]

        def side(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
            w, wy, wx, wxy = (c[hi] - c[lo] for c in cums)
            return xi * yi * w - xi * wy - yi * wx + wxy

        total += float(ps[right] @ (side(start, below) - side(below, stop)))
        width *= 2
    return 2.0 * total


def _dcov_squared(x: np.ndarray, y: np.ndarray, p: np.ndarray) -> float:
    """sum_ij p_i p_j A_ij B_ij = sum p p a b - 2 sum_i p_i a_i. b_i. + a.. b.. (the double centering expanded)."""
    a_row, b_row = _row_sums(x, p), _row_sums(y, p)
    return _cross_sum(x, y, p) - 2.0 * float(p @ (a_row * b_row)) + float(p @ a_row) * float(p @ b_row)


def distance_correlation(x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Distance correlation (Szekely, Rizzo & Bakirov 2007) of two 1-D samples, optionally weighted, in [0, 1].

    0 for independent variables (in the large-sample limit), 1 for a linear relation, and above 0 for ANY
    dependence (not only linear): the decorrelation literature's measure of how much a score knows about the
    mass. With weights normalised to ``p_i = w_i / sum(w)``::

        a_ij = |x_i - x_j|,   a_i. = sum_j p_j a_ij,   a.. = sum_i p_i a_i.,   A_ij = a_ij - a_i. - a_.j + a..
        dCov^2(x, y) = sum_ij p_i p_j A_ij B_ij,   dCor^2 = dCov^2(x, y) / sqrt(dCov^2(x, x) dCov^2(y, y))

    (the V-statistic, as DisCo's loss uses it); returns dCor = sqrt(dCor^2). Exact, in O(n log^2 n) time and
    O(n) memory (``_cross_sum``): 42,000 QCD test jets take a fraction of a second instead of the minutes of
    the n x n sums.
    """
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    n = len(x)
    if len(y) != n:
        raise WtagError(f"distance correlation: samples have different lengths ({n} and {len(y)})")
    p = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64).reshape(-1)
    if len(p) != n or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise WtagError("distance correlation: weights must be finite, non-negative, not all zero and one per value")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise WtagError("distance correlation: samples contain non-finite values")
    keep = p > 0
    x, y, p = x[keep], y[keep], p[keep] / p[keep].sum()
    s_aa, s_bb = _dcov_squared(x, x, p), _dcov_squared(y, y, p)
    if s_aa <= 0 or s_bb <= 0:
        return 0.0  # a constant sample: nothing to correlate
    return math.sqrt(min(max(_dcov_squared(x, y, p) / math.sqrt(s_aa * s_bb), 0.0), 1.0))


def mass_decorrelation(msd: np.ndarray, y: np.ndarray, score: np.ndarray) -> float:
    """Distance correlation between the score and the soft-drop mass of the QCD jets (0: the score knows nothing
    of the QCD mass)."""
    y, score, _ = _checked(y, score)
    msd = np.asarray(msd, dtype=np.float64)
    if msd.shape != y.shape:
        raise WtagError(f"soft-drop masses ({msd.shape}) and labels ({y.shape}) have different shapes")
    return distance_correlation(score[y == 0], msd[y == 0])


# ---------------------------------------------------------------------------------------------------------
# Statistical uncertainties: a seeded, stratified bootstrap over the test jets

BOOTSTRAP_METRICS = ("auc", "r50", "r30", "mass_sculpting", "inv_jsd")
"""The test metrics that get an ``_err`` from the bootstrap (``{prefix}{name}_err``)."""


def _point_metrics(y: np.ndarray, score: np.ndarray, msd: np.ndarray, weight: np.ndarray | None,
                   n_bkg: int) -> dict[str, float]:
    """AUC, r50, r30, sculpting and 1/JSD of one (possibly resampled) test set from one ROC computation."""
    eps_b, eps_s, _ = skm.roc_curve(y, score, sample_weight=weight, drop_intermediate=False)
    out = {"auc": float(skm.auc(eps_b, eps_s))}
    unique_s, first = np.unique(eps_s, return_index=True)
    for key, eff in SUMMARY_EFFICIENCIES.items():
        out[key] = 1.0 / max(float(np.interp(eff, unique_s, eps_b[first])), 0.5 / n_bkg)
    out["mass_sculpting"] = mass_sculpting(msd, y, score, weight=weight)
    out["inv_jsd"] = inverse(out["mass_sculpting"])
    return out


def bootstrap(y: np.ndarray, msd: np.ndarray, scores: Mapping[str, np.ndarray], n_bootstrap: int,
              seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Each tagger's metrics (BOOTSTRAP_METRICS) on ``n_bootstrap`` resamples of the test jets: name -> metric ->
    array (n_bootstrap,).

    Method: a resample draws N_S W jets from the N_S W jets and N_B QCD jets from the N_B QCD jets, with
    replacement (stratified, so every resample has the test set's class counts, as a fixed test sample does;
    the spread is then the binomial one of the efficiencies). It is represented by integer multiplicities used
    as weights, which is exactly equivalent to copying the jets. All taggers see the SAME resamples (scores of
    one test set, same jet order), so differences between taggers can be bootstrapped pairwise. A resample in
    which no QCD jet passes the cut gets the same capped rejection 2 N_B as ``background_rejection`` (never
    infinite), so a capped test_r50 has an error that describes the cap, and the value is a lower bound. A
    resample where no QCD jet passes has no mass shape (sculpting NaN), and one whose shape is untouched has
    1/JSD = +inf: such values are left out of the spread (``spread`` ignores non-finite values).
    """
    y = np.asarray(y).astype(np.int64)
    msd = np.asarray(msd, dtype=np.float64)
    if n_bootstrap < 1:
        raise WtagError(f"n_bootstrap={n_bootstrap}: need at least one resample")
    for name, score in scores.items():
        _checked(y, score)
        if len(score) != len(y) or len(msd) != len(y):
            raise WtagError(f"bootstrap: scores of '{name}', labels and masses differ in length")
    rng = np.random.default_rng(seed)
    sig, bkg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    out = {name: {m: np.empty(n_bootstrap) for m in BOOTSTRAP_METRICS} for name in scores}
    for i in range(n_bootstrap):
        counts = _stratified_counts(rng, len(y), sig, bkg)
        for name, score in scores.items():
            for m, value in _point_metrics(y, np.asarray(score, dtype=np.float64), msd, counts, len(bkg)).items():
                out[name][m][i] = value
    return out


def _stratified_counts(rng: np.random.Generator, n: int, sig: np.ndarray, bkg: np.ndarray) -> np.ndarray:
    """Multiplicities of one stratified resample: as many W and QCD jets as the sample has, with replacement."""
    counts = np.zeros(n)
    counts[sig] = rng.multinomial(len(sig), np.full(len(sig), 1.0 / len(sig)))
    counts[bkg] = rng.multinomial(len(bkg), np.full(len(bkg), 1.0 / len(bkg)))
    return counts


def partial_auc(y: np.ndarray, score: np.ndarray, max_eps_b: float = 0.1, weight: np.ndarray | None = None) -> float:
    """ROC area over background efficiencies up to ``max_eps_b`` (the high-rejection end a tagger is used at),
    McClish-standardized as scikit-learn's ``max_fpr``: 0.5 for a random score, 1 for a perfect one."""
    y, score, weight = _checked(y, score, weight)
    return float(skm.roc_auc_score(y, score, sample_weight=weight, max_fpr=max_eps_b))


def bootstrap_error(statistic: Callable[[np.ndarray, np.ndarray, np.ndarray], float], y: np.ndarray,
                    score: np.ndarray, n_bootstrap: int, seed: int) -> float:
    """``spread`` of ``statistic(y, score, multiplicities)`` over the stratified resamples ``bootstrap`` uses."""
    y, score, _ = _checked(y, score)
    rng = np.random.default_rng(seed)
    sig, bkg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    return spread(np.array([statistic(y, score, _stratified_counts(rng, len(y), sig, bkg))
                            for _ in range(n_bootstrap)]))


def spread(values: np.ndarray) -> float:
    """Half the width of the central 68% interval (16th to 84th percentile) of the finite resampled values; NaN
    with fewer than two of them.

    For a normal distribution this is the standard deviation; unlike the standard deviation it is not inflated
    by the long upper tail of a rejection 1/eps_B when few QCD jets pass (a resample with 2 instead of 6 passing
    jets triples r50), so it stays the "+-1 sigma" a reader expects.
    """
    values = np.asarray(values, dtype=np.float64)
    finite = values[np.isfinite(values)]
    if len(finite) < 2:
        return math.nan
    low, high = np.quantile(finite, (0.15865525393145707, 0.8413447460685429))
    return float(0.5 * (high - low))


def spread_of_difference(a: np.ndarray, b: np.ndarray) -> float:
    """``spread`` of a - b over the resamples where both are finite: the error of a paired difference (two
    taggers scored on the same resamples fluctuate together, so it is smaller than the errors in quadrature)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    return spread(a[ok] - b[ok])


def uncertainties(y: np.ndarray, score: np.ndarray, msd: np.ndarray, n_bootstrap: int, seed: int,
                  prefix: str = "test_") -> dict[str, float]:
    """``{prefix}{metric}_err`` for every BOOTSTRAP_METRICS entry: the bootstrap spread (``spread``)."""
    samples = bootstrap(y, msd, {"tagger": score}, n_bootstrap, seed)["tagger"]
    return {f"{prefix}{m}_err": spread(samples[m]) for m in BOOTSTRAP_METRICS}


def rejection_band(y: np.ndarray, score: np.ndarray, signal_efficiencies: np.ndarray, n_bootstrap: int, seed: int,
                   quantiles: tuple[float, float] = (0.16, 0.84)) -> tuple[np.ndarray, np.ndarray]:
    """Central 68% band of 1/eps_B at each signal efficiency over the same stratified bootstrap resamples."""
    y, score, _ = _checked(y, score)
    rng = np.random.default_rng(seed)
    sig, bkg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    grid = np.asarray(signal_efficiencies, dtype=np.float64)
    rejections = np.empty((n_bootstrap, len(grid)))
    for i in range(n_bootstrap):
        counts = _stratified_counts(rng, len(y), sig, bkg)
        eps_b, eps_s, _ = skm.roc_curve(y, score, sample_weight=counts, drop_intermediate=False)
        unique_s, first = np.unique(eps_s, return_index=True)
        rejections[i] = 1.0 / np.maximum(np.interp(grid, unique_s, eps_b[first]), 0.5 / len(bkg))
    return np.quantile(rejections, quantiles[0], axis=0), np.quantile(rejections, quantiles[1], axis=0)


def summary(y: np.ndarray, score: np.ndarray, msd: np.ndarray, prefix: str = "test_", *, n_bootstrap: int = 0,
            seed: int = 0) -> dict[str, float]:
    """The metrics every tagger run logs, unweighted, keyed ``{prefix}auc``, ``r50``, ``r30``, ``accuracy``,
    ``mass_sculpting``, ``inv_jsd`` (1/sculpting) and ``mass_dcorr`` (distance correlation of score and msd on
    QCD); with ``n_bootstrap`` > 0 also ``{prefix}{metric}_err`` for BOOTSTRAP_METRICS (see ``bootstrap``) and
    ``{prefix}mass_sculpting_floor`` (``sculpting_floor``: the JSD a mass-blind cut would show on this test set)."""
    out = {f"{prefix}auc": roc_auc(y, score)}
    for key, eff in SUMMARY_EFFICIENCIES.items():
        out[f"{prefix}{key}"] = background_rejection(y, score, eff)
    out[f"{prefix}accuracy"] = accuracy(y, score)
    out[f"{prefix}mass_sculpting"] = mass_sculpting(msd, y, score)
    out[f"{prefix}inv_jsd"] = inverse(out[f"{prefix}mass_sculpting"])
    out[f"{prefix}mass_dcorr"] = mass_decorrelation(msd, y, score)
    if n_bootstrap > 0:
        out.update(uncertainties(y, score, msd, n_bootstrap, seed, prefix))
        out[f"{prefix}mass_sculpting_floor"] = sculpting_floor(msd, y, score, n_bootstrap, seed)
    return out
