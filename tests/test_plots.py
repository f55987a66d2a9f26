"""Every plot writes a valid, non-trivial PNG, leaves no figure open, rejects mismatched inputs, and draws what the
metrics compute (the ROC points, the normalised score and mass histograms)."""
from __future__ import annotations

import struct
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from wtag import plots
from wtag.errors import WtagError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N = 600


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk; fails unless the file really is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


def _check_png(path: Path, returned: Path, min_size: tuple[int, int] = (400, 400)) -> None:
    assert returned == path
    width, height = _png_size(path)
    assert width >= min_size[0] and height >= min_size[1]
    assert path.stat().st_size > 10_000
    assert not list(path.parent.glob(".*.tmp")), "temporary file left behind"
    assert plt.get_fignums() == []


@pytest.fixture
def tagged() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random(N) < 0.4).astype(np.int64)
    score = 1.0 / (1.0 + np.exp(-(rng.normal(size=N) + 1.5 * (2 * y - 1))))
    msd = np.where(y == 1, rng.normal(80, 10, N), rng.exponential(50, N))
    return y, score, msd


def test_plot_roc(tmp_path: Path, tagged: tuple[np.ndarray, ...]) -> None:
    y, score, _ = tagged
    rng = np.random.default_rng(1)
    path = tmp_path / "roc.png"
    _check_png(path, plots.plot_roc({"bdt": (y, score), "cut": (y, rng.random(N) + 0.3 * y)}, path))
    # Without its baseline among the curves, and with another label text.
    path2 = tmp_path / "sub" / "roc.png"
    _check_png(path2, plots.plot_roc({"bdt": (y, score)}, path2, baseline="cut", cms_text="Open Data"))


def test_plot_scores_and_mass(tmp_path: Path, tagged: tuple[np.ndarray, ...]) -> None:
    y, score, msd = tagged
    _check_png(tmp_path / "s.png", plots.plot_scores(y, score, tmp_path / "s.png", "bdt"))
    _check_png(tmp_path / "m.png", plots.plot_mass_sculpting(msd, y, score, tmp_path / "m.png", "bdt"))
    # A perfect tagger keeps no QCD jet after the cut: still a plot (JSD shown as nan).
    _check_png(tmp_path / "p.png", plots.plot_mass_sculpting(msd, y, y.astype(float), tmp_path / "p.png", "ideal"))


def test_plot_training_curves(tmp_path: Path) -> None:
    history = {"loss": [0.6, 0.5, 0.45], "val_loss": [0.62, 0.55, 0.52], "val_auc": [0.80, 0.85, 0.86]}
    path = tmp_path / "curves.png"
    _check_png(path, plots.plot_training_curves(history, path, "dnn"))
    _check_png(path, plots.plot_training_curves({"loss": [0.7, 0.6]}, path, "bdt"))
    with pytest.raises(WtagError, match="no 'loss'"):
        plots.plot_training_curves({"val_auc": [0.9]}, tmp_path / "x.png", "dnn")


def test_plot_learning_curves(tmp_path: Path) -> None:
    path = tmp_path / "learning.png"
    curves = {"bdt": ([6000, 12000, 25000, 50000], [80.0, 95.0, 105.0, 114.0], [3.0, 2.5, 2.0, 2.5]),
              "pfn": ([6000, 12000, 25000, 50000], [40.0, 60.0, 85.0, 118.0], [5.0, 6.0, 8.0, 9.0])}
    _check_png(path, plots.plot_learning_curves(curves, path))
    with pytest.raises(WtagError, match="no taggers"):
        plots.plot_learning_curves({}, tmp_path / "x.png")


def test_plot_levels(tmp_path: Path) -> None:
    path = tmp_path / "levels.png"
    levels = {"detector, pileup 9": {"cut": (50.1, 2.5), "dnn": (130.8, 9.3)},
              "particle level": {"cut": (70.0, 3.0), "dnn": (250.0, 20.0), "pfn": (300.0, 25.0)}}
    _check_png(path, plots.plot_levels(levels, path))
    with pytest.raises(WtagError, match="no taggers"):
        plots.plot_levels({"empty": {}}, tmp_path / "x.png")


def test_plot_feature_importance(tmp_path: Path) -> None:
    path = tmp_path / "imp.png"
    _check_png(path, plots.plot_feature_importance(["msd", "tau21", "pt"], [0.5, 0.4, 0.1], path))
    with pytest.raises(WtagError, match="3 names"):
        plots.plot_feature_importance(["msd", "tau21", "pt"], [0.5, 0.5], path)


def test_plot_feature_distributions(tmp_path: Path, tagged: tuple[np.ndarray, ...]) -> None:
    y, score, msd = tagged
    rng = np.random.default_rng(2)
    table = {"jet pT [GeV]": rng.uniform(200, 500, N), "soft-drop mass [GeV]": msd,
             "jet_tau21_ak7": rng.random(N), "jet_ncand_ak7": rng.integers(5, 60, N).astype(float),
             "constant": np.full(N, 3.0)}
    path = tmp_path / "features.png"
    _check_png(path, plots.plot_feature_distributions(table, y, path), min_size=(1000, 800))
    _check_png(path, plots.plot_feature_distributions(table, y, path, weight=rng.uniform(0.5, 2.0, N)))
    with pytest.raises(WtagError, match="column 'short'"):
        plots.plot_feature_distributions({"msd": msd, "short": msd[:10]}, y, path)
    with pytest.raises(WtagError, match="weights"):
        plots.plot_feature_distributions(table, y, path, weight=np.ones(5))


def test_plot_average_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    images = rng.exponential(1.0, (80, 30, 30, 1)) * (rng.random((80, 30, 30, 1)) < 0.1)
    label = np.repeat([1, 0], 40)
    path = tmp_path / "images.png"
    _check_png(path, plots.plot_average_images(images, label, path), min_size=(1000, 500))
    with pytest.raises(WtagError, match="images have shape"):
        plots.plot_average_images(np.ones((4, 30)), label[:4], path)


@pytest.mark.parametrize("call", [
    lambda p, y, s, m: plots.plot_roc({"bdt": (y, s[:-1])}, p),
    lambda p, y, s, m: plots.plot_scores(y[:-1], s, p, "bdt"),
    lambda p, y, s, m: plots.plot_mass_sculpting(m[:-1], y, s, p, "bdt"),
    lambda p, y, s, m: plots.plot_average_images(np.ones((3, 30, 30, 1)), y, p),
    lambda p, y, s, m: plots.plot_feature_distributions({"msd": m}, y[:-1], p),
])
def test_mismatched_lengths(tmp_path: Path, tagged: tuple[np.ndarray, ...], call: object) -> None:
    y, score, msd = tagged
    path = tmp_path / "bad.png"
    with pytest.raises(WtagError):
        call(path, y, score, msd)
    assert not path.exists()
    assert plt.get_fignums() == []


def _axes():
    from matplotlib.figure import Figure

    return Figure().subplots()


def _steps(ax) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """label -> (values, edges) of every step histogram mplhep drew on ``ax``."""
    from matplotlib.patches import StepPatch

    return {p.get_label(): (np.asarray(p.get_data().values), np.asarray(p.get_data().edges))
            for p in ax.patches if isinstance(p, StepPatch)}


def test_roc_draws_the_rejection_curve_of_each_tagger(tagged: tuple[np.ndarray, ...]) -> None:
    from wtag import metrics

    y, score, _ = tagged
    cut = np.where(y == 1, 0.7, 0.3) + np.random.default_rng(4).normal(0, 0.3, N)
    ax = _axes()
    plots.draw_roc(ax, {"bdt": (y, score), "cut": (y, cut)}, baseline="cut")
    lines = {line.get_label().split(" (")[0]: line for line in ax.get_lines()}
    assert set(lines) == {"bdt", "cut"}
    eps_s, eps_b, _ = metrics.roc_curve(y, score)
    keep = (eps_b > 0) & (eps_s > 0)
    np.testing.assert_allclose(lines["bdt"].get_xdata(), eps_s[keep])
    np.testing.assert_allclose(lines["bdt"].get_ydata(), 1.0 / eps_b[keep])
    assert f"AUC = {metrics.roc_auc(y, score):.3f}" in lines["bdt"].get_label()
    assert lines["cut"].get_linestyle() == "--" and lines["cut"].get_color() == "black"
    assert ax.get_yscale() == "log"
    # a better tagger has the higher rejection at 50% signal efficiency, as the metric says
    at_half = {k: np.interp(0.5, line.get_xdata(), line.get_ydata()) for k, line in lines.items()}
    rejection = {k: metrics.background_rejection(y, s, 0.5) for k, s in (("bdt", score), ("cut", cut))}
    assert (at_half["bdt"] > at_half["cut"]) == (rejection["bdt"] > rejection["cut"])


def test_score_histograms_are_the_normalised_class_distributions(tagged: tuple[np.ndarray, ...]) -> None:
    y, score, _ = tagged
    ax = _axes()
    plots.draw_scores(ax, y, score, "bdt")
    steps = _steps(ax)
    for cls, name in ((1, "W jets"), (0, "QCD jets")):
        label = f"{name} ({int((y == cls).sum())})"
        values, edges = steps[label]
        expected, _ = np.histogram(score[y == cls], bins=plots.SCORE_BINS, density=True)
        np.testing.assert_allclose(edges, plots.SCORE_BINS)
        np.testing.assert_allclose(values, expected)
        assert np.sum(values * np.diff(edges)) == pytest.approx(1.0)


def test_mass_sculpting_shows_the_qcd_jets_that_pass_the_cut(tagged: tuple[np.ndarray, ...]) -> None:
    from wtag import metrics

    y, _, msd = tagged
    # a weak tagger, so that some QCD jets pass the cut, more of them near the W mass
    score = np.random.default_rng(5).random(N) * 0.8 + 0.2 * (np.abs(msd - 80.0) < 15.0)
    ax = _axes()
    plots.draw_mass_sculpting(ax, msd, y, score, "bdt")
    steps = _steps(ax)
    assert set(steps) == {"QCD, all", "QCD, after cut (50% W eff.)", "W, all", "W, after cut"}
    bins = metrics.DEFAULT_MASS_BINS
    passed = score >= metrics.threshold_at_efficiency(y, score, 0.5)
    assert passed[y == 1].mean() == pytest.approx(0.5, abs=0.01)
    qcd_after = msd[(y == 0) & passed].clip(bins[0], bins[-1])
    expected, _ = np.histogram(qcd_after, bins=bins, density=True)
    np.testing.assert_allclose(steps["QCD, after cut (50% W eff.)"][0], expected)
    jsd = metrics.mass_sculpting(msd, y, score, 0.5, bins)
    assert ax.get_legend().get_title().get_text() == f"bdt: JSD = {jsd:.3f}"
    assert jsd > 0.01  # the cut keeps more QCD jets near 80 GeV: the shape changed


def test_pareto_front() -> None:
    # (r50, 1/JSD), both larger-is-better
    points = [(10.0, 1.0), (5.0, 20.0), (4.0, 10.0), (12.0, 0.5), (3.0, float("inf")), (float("nan"), 99.0)]
    assert plots.pareto_front(points) == [4, 1, 0, 3]  # (4, 10) is dominated by (5, 20); NaN r50 never counts
    assert plots.pareto_front([(1.0, 1.0), (1.0, 1.0)]) == [0, 1]  # equal points do not dominate each other
    assert plots.pareto_front([]) == []


def test_decorrelation_front_and_mass_plots(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    y = (np.arange(N) % 2).astype(np.int64)
    msd = rng.exponential(50.0, N)
    scores = {"a": rng.uniform(size=N) + y, "b": rng.uniform(size=N) + 0.3 * y}
    path = tmp_path / "front.png"
    _check_png(path, plots.plot_decorrelation_front(["a", "b", "c"], [30.0, 8.0, 2.0], [3.0, 1.0, 0.1],
                                                    [1.5, 14.0, float("inf")], [0.1, 3.0, 0.0], path,
                                                    max_sculpting=0.05))
    path = tmp_path / "mass.png"
    _check_png(path, plots.plot_mass_after_cut(msd, y, scores, path))
    assert not plt.get_fignums()
    with pytest.raises(WtagError, match="no candidates"):
        plots.plot_decorrelation_front([], [], [], [], [], tmp_path / "x.png")
    with pytest.raises(WtagError, match="no taggers"):
        plots.plot_mass_after_cut(msd, y, {}, tmp_path / "y.png")


def test_roc_band(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    y = (np.arange(N) % 2).astype(np.int64)
    score = rng.normal(size=N) + y
    path = tmp_path / "roc_band.png"
    _check_png(path, plots.plot_roc({"a": (y, score)}, path, baseline=None, n_bootstrap=30, seed=1))
    plain = tmp_path / "roc_plain.png"
    plots.plot_roc({"a": (y, score)}, plain, baseline=None)
    assert path.read_bytes() != plain.read_bytes()  # the band is drawn
