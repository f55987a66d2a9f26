"""Metrics against independent references: sklearn, scipy, hand-computed cases, perfect and random taggers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import roc_auc_score

from wtag import metrics
from wtag.errors import WtagError

# Hand-made case: 4 W jets, 4 QCD jets, all scores distinct.
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
S = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])


def _gaussian_tagger(n: int, separation: float, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    score = 1.0 / (1.0 + np.exp(-(rng.normal(size=n) + separation * (2 * y - 1))))
    return y, score


def test_roc_curve_hand_computed() -> None:
    eps_s, eps_b, thresholds = metrics.roc_curve(Y, S)
    # Thresholds walk down the sorted scores; each step tags one more jet.
    np.testing.assert_allclose(eps_s, [0, 0.25, 0.5, 0.5, 0.75, 0.75, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(eps_b, [0, 0, 0, 0.25, 0.25, 0.5, 0.5, 0.75, 1.0])
    assert np.isinf(thresholds[0]) and thresholds[-1] == pytest.approx(0.1)
    assert np.all(np.diff(thresholds) < 0)


def test_auc_matches_sklearn_and_hand_count() -> None:
    # Pairs (W above QCD): 0.9, 0.8 beat all 4; 0.6 beats 3; 0.3 beats 2 -> 13 of 16.
    assert metrics.roc_auc(Y, S) == pytest.approx(13 / 16)
    y, score = _gaussian_tagger(5000, 1.0)
    w = np.random.default_rng(2).uniform(0.1, 3.0, len(y))
    assert metrics.roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    assert metrics.roc_auc(y, score, w) == pytest.approx(roc_auc_score(y, score, sample_weight=w), abs=1e-12)
    assert metrics.roc_auc(y, score, w) != pytest.approx(metrics.roc_auc(y, score), abs=1e-6)


def test_rejection_hand_computed() -> None:
    # eps_S = 0.5 is reached with no QCD jet (0.9, 0.8 above 0.7): floored at half a jet -> 2 * 4 = 8.
    assert metrics.background_efficiency(Y, S, 0.5) == 0.0
    assert metrics.background_rejection(Y, S, 0.5) == pytest.approx(8.0)
    # eps_S = 0.75 first reached at eps_B = 0.25 (0.6 tagged after the QCD 0.7).
    assert metrics.background_rejection(Y, S, 0.75) == pytest.approx(4.0)
    # eps_S = 0.625: the lowest eps_B at eps_S = 0.5 is 0 (below the vertical step), so the interpolation runs
    # from (0.5, 0) to (0.75, 0.25).
    assert metrics.background_efficiency(Y, S, 0.625) == pytest.approx(0.125)
    assert metrics.background_rejection(Y, S, 1.0) == pytest.approx(2.0)


def test_perfect_and_random_taggers() -> None:
    rng = np.random.default_rng(3)
    y = np.repeat([1, 0], [400, 600])
    perfect = np.where(y == 1, rng.uniform(0.6, 1.0, len(y)), rng.uniform(0.0, 0.4, len(y)))
    assert metrics.roc_auc(y, perfect) == 1.0
    assert metrics.background_rejection(y, perfect, 0.5) == pytest.approx(2 * 600)
    assert metrics.accuracy(y, perfect) == 1.0
    random = rng.random(len(y))
    assert metrics.roc_auc(y, random) == pytest.approx(0.5, abs=0.05)
    # A random tagger keeps as much QCD as W: rejection 1/eps_S.
    assert metrics.background_rejection(y, random, 0.5) == pytest.approx(2.0, rel=0.15)
    assert metrics.background_rejection(y, random, 0.3) == pytest.approx(1 / 0.3, rel=0.2)


def test_rejection_matches_counting_on_large_sample() -> None:
    y, score = _gaussian_tagger(20000, 1.0, seed=4)
    t = np.quantile(score[y == 1], 0.5)
    eps_b = np.mean(score[y == 0] >= t)
    assert metrics.background_rejection(y, score, 0.5) == pytest.approx(1 / eps_b, rel=0.01)
    assert metrics.background_rejection(y, score, 0.3) > metrics.background_rejection(y, score, 0.5)


def test_threshold_at_efficiency() -> None:
    assert metrics.threshold_at_efficiency(Y, S, 0.5) == 0.8
    assert metrics.threshold_at_efficiency(Y, S, 0.6) == 0.6
    assert metrics.threshold_at_efficiency(Y, S, 1.0) == 0.3
    y, score = _gaussian_tagger(10001, 0.5, seed=5)
    for eff in (0.3, 0.5, 0.9):
        t = metrics.threshold_at_efficiency(y, score, eff)
        kept = np.mean(score[y == 1] >= t)
        assert eff <= kept <= eff + 1.0 / (y == 1).sum() + 1e-12
    # Weighted: the first W jet carries all the weight.
    w = np.array([10.0, 1e-9, 1e-9, 1e-9, 1, 1, 1, 1])
    assert metrics.threshold_at_efficiency(Y, S, 0.9, w) == 0.9
    with pytest.raises(WtagError, match="signal efficiency"):
        metrics.threshold_at_efficiency(Y, S, 0.0)


def test_jensen_shannon_matches_scipy() -> None:
    rng = np.random.default_rng(6)
    for _ in range(5):
        p, q = rng.random(12), rng.random(12)
        q[3] = 0.0
        assert metrics.jensen_shannon(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-12)
    assert metrics.jensen_shannon([1, 2, 3], [2, 4, 6]) == pytest.approx(0.0, abs=1e-15)
    assert metrics.jensen_shannon([1, 0], [0, 1]) == pytest.approx(1.0)


def test_mass_sculpting() -> None:
    rng = np.random.default_rng(7)
    n = 20000
    y = (rng.random(n) < 0.5).astype(np.int64)
    msd = np.where(y == 1, rng.normal(80, 10, n), rng.exponential(60, n))
    # A mass-independent tagger leaves the QCD shape alone.
    flat = rng.random(n) + 0.3 * y
    assert metrics.mass_sculpting(msd, y, flat) < 0.01
    # A mass-window tagger carves a peak out of QCD.
    window = np.exp(-0.5 * ((msd - 80) / 10) ** 2)
    sculpting = metrics.mass_sculpting(msd, y, window)
    assert sculpting > 0.3
    # Same as computing it by hand with scipy.
    t = metrics.threshold_at_efficiency(y, window, 0.5)
    bins = metrics.DEFAULT_MASS_BINS
    qcd = msd[y == 0].clip(0, 300)
    before, _ = np.histogram(qcd, bins)
    after, _ = np.histogram(qcd[window[y == 0] >= t], bins)
    assert sculpting == pytest.approx(jensenshannon(before, after, base=2) ** 2, abs=1e-12)
    # A perfect tagger keeps no QCD jet: no shape after the cut.
    assert np.isnan(metrics.mass_sculpting(msd, y, y.astype(float)))


def test_accuracy() -> None:
    # Tagged at >= 0.5: W 0.9, 0.8, 0.6 right, 0.3 wrong; QCD 0.7 wrong, the other three right.
    assert metrics.accuracy(Y, S) == pytest.approx(6 / 8)
    assert metrics.accuracy(Y, S, threshold=0.85) == pytest.approx(5 / 8)
    assert metrics.accuracy(np.array([1, 0]), np.array([0.5, 0.49])) == 1.0


def test_summary_has_exact_names() -> None:
    y, score = _gaussian_tagger(3000, 1.5, seed=8)
    msd = np.random.default_rng(9).uniform(0, 200, len(y))
    out = metrics.summary(y, score, msd)
    assert set(out) == {"test_auc", "test_r50", "test_r30", "test_accuracy", "test_mass_sculpting", "test_inv_jsd",
                        "test_mass_dcorr"}
    assert out["test_auc"] == pytest.approx(roc_auc_score(y, score))
    assert out["test_r30"] > out["test_r50"] > 1.0
    assert all(isinstance(v, float) and np.isfinite(v) for v in out.values())
    assert set(metrics.summary(y, score, msd, prefix="val_")) == {
        "val_auc", "val_r50", "val_r30", "val_accuracy", "val_mass_sculpting", "val_inv_jsd", "val_mass_dcorr"}


@pytest.mark.parametrize(("y", "score", "message"), [
    (np.array([1, 0, 1]), np.array([0.1, 0.2]), "different lengths"),
    (np.array([1, 1]), np.array([0.1, 0.2]), "both classes"),
    (np.array([1, 2]), np.array([0.1, 0.2]), "labels must be 0"),
    (np.array([1, 0]), np.array([0.1, np.nan]), "non-finite"),
    (np.array([[1, 0]]), np.array([[0.1, 0.2]]), "1-D"),
])
def test_bad_inputs(y: np.ndarray, score: np.ndarray, message: str) -> None:
    with pytest.raises(WtagError, match=message):
        metrics.roc_auc(y, score)
    with pytest.raises(WtagError, match=message):
        metrics.summary(y, score, np.zeros(len(y)))


def test_bad_weights_and_masses() -> None:
    with pytest.raises(WtagError, match="weights"):
        metrics.roc_curve(Y, S, np.ones(3))
    with pytest.raises(WtagError, match="non-negative"):
        metrics.roc_curve(Y, S, -np.ones(8))
    with pytest.raises(WtagError, match="soft-drop masses"):
        metrics.mass_sculpting(np.ones(3), Y, S)


# ---------------------------------------------------------------------------------------------------------
# Distance correlation


def direct_distance_correlation(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> float:
    """The textbook O(n^2) V-statistic with full n x n matrices (weights normalised to sum to one)."""
    p = np.ones(len(x)) if w is None else np.asarray(w, dtype=np.float64)
    p = p / p.sum()
    a = np.abs(x[:, None] - x[None, :])
    b = np.abs(y[:, None] - y[None, :])

    def centred(m: np.ndarray) -> np.ndarray:
        row = m @ p
        return m - row[:, None] - row[None, :] + p @ row

    big_a, big_b = centred(a), centred(b)
    ab, aa, bb = p @ (big_a * big_b) @ p, p @ (big_a * big_a) @ p, p @ (big_b * big_b) @ p
    return float(np.sqrt(ab / np.sqrt(aa * bb)))


def test_distance_correlation_matches_the_direct_computation() -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=357)
    y = np.sin(2 * x) + rng.normal(scale=0.5, size=357)
    w = rng.uniform(0.0, 2.0, size=357)
    for weight in (None, w):
        want = direct_distance_correlation(x, y, weight)
        assert metrics.distance_correlation(x, y, weight) == pytest.approx(want, rel=1e-10)
    # every block layout of the merge levels: sizes around powers of two, and the smallest samples
    for n in (2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 64, 65, 1000):
        a, b, v = rng.normal(size=n), rng.exponential(size=n), rng.uniform(0.1, 1.0, size=n)
        assert metrics.distance_correlation(a, b + a, v) == pytest.approx(direct_distance_correlation(a, b + a, v),
                                                                          rel=1e-9), n
    # ties, as in saturated scores and rounded masses: many equal values in both variables
    score = np.clip(rng.normal(0.5, 0.4, size=800), 0.0, 1.0)
    mass = np.round(rng.exponential(40.0, size=800) + 30 * score)
    assert (score == 1.0).sum() > 50 and len(np.unique(mass)) < 300
    assert metrics.distance_correlation(score, mass, w[:1] + score) == pytest.approx(
        direct_distance_correlation(score, mass, w[:1] + score), rel=1e-9)
    # zero-weight jets do not count at all
    w0 = w.copy()
    w0[:100] = 0.0
    assert metrics.distance_correlation(x, y, w0) == pytest.approx(
        direct_distance_correlation(x[100:], y[100:], w0[100:]), rel=1e-10)
    # invariant under shifts and positive rescaling of either variable; symmetric
    assert metrics.distance_correlation(3 * x + 7, 0.1 * y - 2) == pytest.approx(metrics.distance_correlation(x, y))
    assert metrics.distance_correlation(y, x) == pytest.approx(metrics.distance_correlation(x, y))


def test_distance_correlation_known_cases() -> None:
    rng = np.random.default_rng(6)
    msd = rng.exponential(60.0, size=3000)
    independent = rng.uniform(size=3000)
    assert metrics.distance_correlation(independent, msd) < 0.06
    assert metrics.distance_correlation(2.0 * msd + 1.0, msd) == pytest.approx(1.0, abs=1e-9)
    # a deterministic but non-monotone function of the mass: zero linear correlation, large distance correlation
    peak = np.exp(-0.5 * ((msd - 60.0) / 15.0) ** 2)
    assert metrics.distance_correlation(peak, msd) > 0.3
    assert metrics.distance_correlation(np.ones(10), np.arange(10.0)) == 0.0
    with pytest.raises(WtagError, match="different lengths"):
        metrics.distance_correlation(np.ones(3), np.ones(4))
    with pytest.raises(WtagError, match="weights must be finite"):
        metrics.distance_correlation(np.ones(3), np.ones(3), np.zeros(3))


def test_mass_decorrelation_uses_qcd_jets_only() -> None:
    rng = np.random.default_rng(7)
    n = 2000
    y = (np.arange(n) % 2).astype(np.int64)
    msd = rng.uniform(20, 200, n)
    score = np.where(y == 1, msd / 200.0, rng.uniform(size=n))  # W scores follow the mass, QCD scores do not
    assert metrics.mass_decorrelation(msd, y, score) < 0.08
    score_qcd = np.where(y == 0, msd / 200.0, rng.uniform(size=n))
    assert metrics.mass_decorrelation(msd, y, score_qcd) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------
# Bootstrap uncertainties


def test_bootstrap_of_a_perfect_tagger_has_no_spread() -> None:
    n = 1000
    y = (np.arange(n) % 2).astype(np.int64)
    score = y + np.random.default_rng(1).uniform(0, 0.5, n)
    msd = np.random.default_rng(2).uniform(0, 300, n)
    out = metrics.summary(y, score, msd, n_bootstrap=200, seed=3)
    assert out["test_auc"] == 1.0 and out["test_auc_err"] == 0.0
    # no QCD jet passes: every resample has the capped rejection 2 N_B, so no spread (the value is a lower bound)
    assert out["test_r50"] == 2 * (n // 2) and out["test_r50_err"] == 0.0
    assert out["test_r30_err"] == 0.0
    assert np.isnan(out["test_mass_sculpting"]) and np.isnan(out["test_mass_sculpting_err"])


def test_bootstrap_of_a_random_tagger_matches_the_binomial_expectation() -> None:
    rng = np.random.default_rng(11)
    n_s = n_b = 2000
    y = np.r_[np.ones(n_s), np.zeros(n_b)].astype(np.int64)
    score = rng.uniform(size=n_s + n_b)
    msd = rng.exponential(60.0, size=n_s + n_b)
    out = metrics.summary(y, score, msd, n_bootstrap=400, seed=4)
    # eps_B at eps_S = 0.5 is binomial in the QCD jets, and the threshold (a signal quantile) moves with the W
    # jets; a random ROC has slope 1, so var(eps_B) = 0.25/N_B + 0.25/N_S and r50 = 1/eps_B = 2 varies by 4x that.
    sigma_eps_b = np.sqrt(0.25 / n_b + 0.25 / n_s)
    assert out["test_r50"] == pytest.approx(2.0, rel=0.1)
    assert out["test_r50_err"] == pytest.approx(4.0 * sigma_eps_b, rel=0.15)
    # eps_S = 0.3: eps_B = 0.3, var = 0.21/N_B + 0.21/N_S, r30 = 1/eps_B
    assert out["test_r30_err"] == pytest.approx(np.sqrt(0.21 / n_b + 0.21 / n_s) / 0.3 ** 2, rel=0.15)
    # AUC = 0.5 of an uninformative score: var = (N_S + N_B + 1) / (12 N_S N_B) (Mann-Whitney)
    assert out["test_auc_err"] == pytest.approx(np.sqrt((n_s + n_b + 1) / (12 * n_s * n_b)), rel=0.15)
    assert 0 < out["test_mass_sculpting_err"] < out["test_mass_sculpting"]
    assert out["test_inv_jsd"] == pytest.approx(1.0 / out["test_mass_sculpting"])
    assert out["test_inv_jsd_err"] > 0


def test_bootstrap_is_seeded_and_paired() -> None:
    y, score = _gaussian_tagger(3000, 1.0)
    msd = np.random.default_rng(3).exponential(60.0, len(y))
    first = metrics.uncertainties(y, score, msd, 50, seed=9)
    assert metrics.uncertainties(y, score, msd, 50, seed=9) == first
    assert metrics.uncertainties(y, score, msd, 50, seed=10) != first
    assert set(first) == {f"test_{m}_err" for m in metrics.BOOTSTRAP_METRICS}
    # the resampled metrics of a tagger equal its own point metrics computed on the same resample
    samples = metrics.bootstrap(y, msd, {"a": score, "b": 1.0 - score}, 20, seed=9)
    np.testing.assert_allclose(samples["a"]["auc"] + samples["b"]["auc"], 1.0)  # paired: the same jets


def test_summary_without_bootstrap_and_point_metrics_agree() -> None:
    y, score = _gaussian_tagger(3000, 1.2)
    msd = np.random.default_rng(4).exponential(60.0, len(y))
    out = metrics.summary(y, score, msd)
    assert not any(k.endswith("_err") for k in out)
    point = metrics._point_metrics(y, score, msd, None, int((y == 0).sum()))
    for key in ("auc", "r50", "r30", "mass_sculpting", "inv_jsd"):
        assert point[key] == pytest.approx(out[f"test_{key}"], rel=1e-12), key
    assert 0 < out["test_mass_dcorr"] < 1


def test_rejection_band_brackets_the_measurement() -> None:
    y, score = _gaussian_tagger(4000, 0.5)
    grid = np.array([0.3, 0.5, 0.7])
    lo, hi = metrics.rejection_band(y, score, grid, 200, seed=1)
    for eff, low, high in zip(grid, lo, hi, strict=True):
        value = metrics.background_rejection(y, score, eff)
        assert low < value < high
        assert (high - low) / value < 0.5


def test_sculpting_floor_is_what_a_mass_blind_cut_shows() -> None:
    rng = np.random.default_rng(12)
    n = 4000
    y = (np.arange(n) % 2).astype(np.int64)
    msd = rng.exponential(50.0, n)
    # mass-blind: QCD scores independent of the mass; the measured JSD is pure statistics, near the floor
    blind = np.where(y == 1, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 1.0, n) ** 3)
    floor = metrics.sculpting_floor(msd, y, blind, 100, seed=1)
    assert 0 < floor < 0.1
    assert metrics.mass_sculpting(msd, y, blind) == pytest.approx(floor, abs=4 * floor)
    # a mass cut with a similar number of QCD jets passing sculpts far above the floor
    massive = np.where(y == 1, rng.uniform(0.5, 1.0, n), np.where(np.abs(msd - 80) < 10, 0.9, 0.1))
    assert metrics.mass_sculpting(msd, y, massive) > 5 * metrics.sculpting_floor(msd, y, massive, 100, seed=1)
    # fewer jets passing: a higher floor
    tight = np.where(y == 1, rng.uniform(0.5, 1.0, n), rng.uniform(0.0, 1.0, n) ** 10)
    assert metrics.sculpting_floor(msd, y, tight, 100, seed=1) > floor
    out = metrics.summary(y, blind, msd, n_bootstrap=20, seed=1)
    assert out["test_mass_sculpting_floor"] == pytest.approx(metrics.sculpting_floor(msd, y, blind, 20, seed=1))
