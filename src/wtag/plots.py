"""Plots logged as MLflow artifacts, in the CMS style of mplhep.

Figures are bare ``matplotlib.figure.Figure`` objects, drawn inside a temporary style context and saved with
the Agg renderer: nothing is registered with pyplot, no backend is switched globally, no figure is left open.
Each function writes one PNG atomically and returns its path.
"""
from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.style
import mplhep as hep
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from wtag import metrics, schema
from wtag.errors import WtagError
from wtag.fileio import atomic_path

CLASS_NAMES = {1: "W jets", 0: "QCD jets", schema.LABEL_UNKNOWN: "unlabelled jets"}
CLASS_COLORS = {1: "tab:red", 0: "tab:blue", schema.LABEL_UNKNOWN: "tab:gray"}
ENERGY_LABEL = "7 TeV"
DPI = 100


@contextlib.contextmanager
def _figure(nrows: int = 1, ncols: int = 1,
            size: tuple[float, float] = (10.0, 10.0)) -> Iterator[tuple[Figure, np.ndarray]]:
    """A CMS-styled figure with a grid of axes (always a 2-D array)."""
    with matplotlib.style.context(hep.style.CMS):
        fig = Figure(figsize=size, layout="constrained")
        axes = np.atleast_2d(np.asarray(fig.subplots(nrows, ncols, squeeze=False)))
        yield fig, axes


def _label(ax: Axes, cms_text: str) -> None:
    """The CMS label. ``scilocator_adjust=False``: mplhep 1.3's offset-text adjustment calls ``plt.gca()``
    (ignoring ``ax``), which would open a stray pyplot figure."""
    hep.cms.label(text=cms_text, data=True, rlabel=ENERGY_LABEL, ax=ax, loc=0, scilocator_adjust=False)


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def _labels(label: np.ndarray, n: int, what: str) -> np.ndarray:
    label = np.asarray(label)
    if label.ndim != 1 or len(label) != n:
        raise WtagError(f"{what}: labels have shape {label.shape}, expected ({n},)")
    return label.astype(np.int64)


BAND_EFFICIENCIES = np.linspace(0.05, 0.95, 46)
"""Signal efficiencies at which the bootstrap band of a ROC plot is evaluated."""


def draw_roc(ax: Axes, curves: Mapping[str, tuple[np.ndarray, np.ndarray]], baseline: str | None = "cut",
             n_bootstrap: int = 0, seed: int = 0) -> None:
    """Background rejection 1/eps_B (log) against signal efficiency eps_S, one line per tagger, AUC in legend.

    The HEP convention: it shows the rejection at the working points that matter, which a linear ROC hides.
    ``baseline`` (when among ``curves``) is drawn dashed and black, the reference every tagger must beat.
    With ``n_bootstrap`` > 0 each curve gets a shaded band: the central 68% of 1/eps_B over that many
    stratified bootstrap resamples of the test jets (``metrics.rejection_band``), its statistical uncertainty.
    """
    if not curves:
        raise WtagError("plot_roc: no curves to draw")
    for name, (y, score) in curves.items():
        eps_s, eps_b, _ = metrics.roc_curve(y, score)
        auc = metrics.roc_auc(y, score)
        keep = (eps_b > 0) & (eps_s > 0)
        style = {"ls": "--", "color": "black"} if name == baseline else {}
        (line,) = ax.plot(eps_s[keep], 1.0 / eps_b[keep], label=f"{name} (AUC = {auc:.3f})", **style)
        if n_bootstrap > 0:
            lo, hi = metrics.rejection_band(y, score, BAND_EFFICIENCIES, n_bootstrap, seed)
            ax.fill_between(BAND_EFFICIENCIES, lo, hi, color=line.get_color(), alpha=0.25, lw=0)
    ax.set_yscale("log")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(r"Signal efficiency $\epsilon_S$ (W jets)")
    ax.set_ylabel(r"Background rejection $1/\epsilon_B$ (QCD jets)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper right")


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike[str],
             baseline: str | None = "cut", *, cms_text: str = "Simulation", n_bootstrap: int = 0,
             seed: int = 0) -> Path:
    """:func:`draw_roc` as a CMS-labelled PNG."""
    with _figure() as (fig, axes):
        draw_roc(axes[0, 0], curves, baseline, n_bootstrap, seed)
        _label(axes[0, 0], cms_text)
        return _save(fig, path)


SCORE_BINS = np.linspace(0.0, 1.0, 41)


def draw_scores(ax: Axes, y: np.ndarray, score: np.ndarray, name: str) -> None:
    """Normalised score distributions of W and QCD jets: how cleanly the tagger separates them."""
    score = np.asarray(score, dtype=np.float64)
    y = _labels(y, len(score), "plot_scores")
    for cls in (1, 0):
        sel = y == cls
        if sel.any():
            hist, _ = np.histogram(np.clip(score[sel], 0.0, 1.0), bins=SCORE_BINS)
            hep.histplot(hist, SCORE_BINS, density=True, ax=ax, color=CLASS_COLORS[cls],
                         label=f"{CLASS_NAMES[cls]} ({int(sel.sum())})")
    ax.set_yscale("log")
    ax.set_xlabel(f"{name} score")
    ax.set_ylabel("Normalised jets / bin")
    ax.legend(loc="upper center")


def plot_scores(y: np.ndarray, score: np.ndarray, path: str | os.PathLike[str], name: str, *,
                cms_text: str = "Simulation") -> Path:
    """:func:`draw_scores` as a CMS-labelled PNG."""
    with _figure() as (fig, axes):
        draw_scores(axes[0, 0], y, score, name)
        _label(axes[0, 0], cms_text)
        return _save(fig, path)


def plot_training_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike[str], name: str, *,
                         cms_text: str = "Simulation") -> Path:
    """Training and validation loss per epoch (boosting round for trees), validation AUC on a twin axis."""
    losses = {k: np.asarray(history[k], dtype=np.float64) for k in ("loss", "val_loss") if k in history}
    if not losses or not any(len(v) for v in losses.values()):
        raise WtagError(f"plot_training_curves: history of '{name}' has no 'loss' or 'val_loss' entries")
    with _figure() as (fig, axes):
        ax = axes[0, 0]
        for key, values in losses.items():
            ax.plot(np.arange(1, len(values) + 1), values, label=key, ls="-" if key == "loss" else "--")
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Loss")
        handles, labels = ax.get_legend_handles_labels()
        if history.get("val_auc") is not None and len(history["val_auc"]):
            auc = np.asarray(history["val_auc"], dtype=np.float64)
            twin = ax.twinx()
            twin.plot(np.arange(1, len(auc) + 1), auc, color="tab:green", ls=":", label="val_auc")
            twin.set_ylabel("Validation AUC")
            more_h, more_l = twin.get_legend_handles_labels()
            handles, labels = handles + more_h, labels + more_l
        ax.legend(handles, labels, loc="center right", title=name)
        _label(ax, cms_text)
        return _save(fig, path)


def draw_mass_sculpting(ax: Axes, msd: np.ndarray, y: np.ndarray, score: np.ndarray, name: str,
                        signal_efficiency: float = 0.5) -> None:
    """QCD soft-drop mass before and after the cut keeping ``signal_efficiency`` of W jets, with the W shape.

    All normalised to unit area: a QCD curve that grows a peak at the W mass after the cut is sculpted.
    """
    score = np.asarray(score, dtype=np.float64)
    y = _labels(y, len(score), "plot_mass_sculpting")
    msd = np.asarray(msd, dtype=np.float64)
    if msd.shape != y.shape:
        raise WtagError(f"plot_mass_sculpting: soft-drop masses have shape {msd.shape}, expected {y.shape}")
    bins = metrics.DEFAULT_MASS_BINS
    threshold = metrics.threshold_at_efficiency(y, score, signal_efficiency)
    jsd = metrics.mass_sculpting(msd, y, score, signal_efficiency, bins)
    clipped = msd.clip(bins[0], bins[-1])
    passed = score >= threshold
    pct = f"{100 * signal_efficiency:.0f}%"
    for sel, label, color, ls in (
        (y == 0, "QCD, all", CLASS_COLORS[0], "-"),
        ((y == 0) & passed, f"QCD, after cut ({pct} W eff.)", CLASS_COLORS[0], "--"),
        (y == 1, "W, all", CLASS_COLORS[1], "-"),
        ((y == 1) & passed, "W, after cut", CLASS_COLORS[1], "--"),
    ):
        if sel.any():
            hist, _ = np.histogram(clipped[sel], bins=bins)
            hep.histplot(hist, bins, density=True, ax=ax, color=color, ls=ls, label=label)
    ax.set_xlabel("Soft-drop mass [GeV]")
    ax.set_ylabel("Normalised jets / bin")
    ax.legend(loc="upper right", title=f"{name}: JSD = {jsd:.3f}")


def plot_mass_sculpting(msd: np.ndarray, y: np.ndarray, score: np.ndarray, path: str | os.PathLike[str],
                        name: str, signal_efficiency: float = 0.5, *, cms_text: str = "Simulation") -> Path:
    """:func:`draw_mass_sculpting` as a CMS-labelled PNG."""
    with _figure() as (fig, axes):
        draw_mass_sculpting(axes[0, 0], msd, y, score, name, signal_efficiency)
        _label(axes[0, 0], cms_text)
        return _save(fig, path)


def plot_feature_importance(names: Sequence[str], importances: Sequence[float],
                            path: str | os.PathLike[str]) -> Path:
    """Horizontal bars, most important feature on top."""
    values = np.asarray(importances, dtype=np.float64)
    if values.ndim != 1 or len(values) != len(names) or len(names) == 0:
        raise WtagError(f"plot_feature_importance: {len(names)} names but importances of shape {values.shape}")
    order = np.argsort(values)
    with _figure(size=(10.0, max(5.0, 1.0 + 0.6 * len(names)))) as (fig, axes):
        ax = axes[0, 0]
        ax.barh(np.arange(len(names)), values[order], color="tab:blue")
        ax.set_yticks(np.arange(len(names)), [str(names[i]) for i in order])
        ax.set_xlabel("Importance (gain)")
        return _save(fig, path)


def plot_feature_distributions(table: Mapping[str, np.ndarray], label: np.ndarray,
                               path: str | os.PathLike[str], weight: np.ndarray | None = None, *,
                               cms_text: str = "Simulation") -> Path:
    """One panel per feature, normalised histograms per class; with ``weight`` shows what training sees."""
    if not table:
        raise WtagError("plot_feature_distributions: empty feature table")
    columns = {k: np.asarray(v, dtype=np.float64) for k, v in table.items()}
    n = len(next(iter(columns.values())))
    for key, values in columns.items():
        if values.shape != (n,):
            raise WtagError(f"plot_feature_distributions: column '{key}' has shape {values.shape}, expected ({n},)")
    label = _labels(label, n, "plot_feature_distributions")
    w = np.ones(n) if weight is None else np.asarray(weight, dtype=np.float64)
    if w.shape != (n,):
        raise WtagError(f"plot_feature_distributions: weights have shape {w.shape}, expected ({n},)")
    ncols = min(3, len(columns))
    nrows = math.ceil(len(columns) / ncols)
    with _figure(nrows, ncols, size=(7.0 * ncols, 6.0 * nrows)) as (fig, axes):
        for ax, (key, values) in zip(axes.flat, columns.items()):
            finite = values[np.isfinite(values)]
            lo, hi = (np.percentile(finite, [0.5, 99.5]) if len(finite) else (0.0, 1.0))
            if hi <= lo:
                lo, hi = lo - 0.5, hi + 0.5
            bins = np.linspace(lo, hi, 41)
            for cls in sorted(set(np.unique(label).tolist()), reverse=True):
                sel = (label == cls) & np.isfinite(values)
                if sel.any() and w[sel].sum() > 0:
                    hist, _ = np.histogram(values[sel].clip(lo, hi), bins=bins, weights=w[sel])
                    hep.histplot(hist, bins, density=True, ax=ax, color=CLASS_COLORS.get(cls, "tab:gray"),
                                 label=CLASS_NAMES.get(cls, f"label {cls}"))
            ax.set_xlabel(key)
            ax.set_ylabel("Normalised jets / bin" + (" (weighted)" if weight is not None else ""))
            ax.legend(loc="upper right", fontsize="small")
        for ax in list(axes.flat)[len(columns):]:
            ax.set_visible(False)
        _label(axes[0, 0], cms_text)
        return _save(fig, path)


def plot_average_images(images: np.ndarray, label: np.ndarray, path: str | os.PathLike[str], *,
                        cms_text: str = "Simulation") -> Path:
    """Mean jet image per class on a log colour scale: the W's two-prong structure against QCD's single core.

    Pixel axis 1 is drawn as delta-eta (x), axis 2 as delta-phi (y); empty mean pixels stay blank.
    """
    images = np.asarray(images, dtype=np.float64)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise WtagError(f"plot_average_images: images have shape {images.shape}, expected (N, 30, 30[, 1])")
    label = _labels(label, len(images), "plot_average_images")
    classes = sorted(set(np.unique(label).tolist()), reverse=True)
    if not classes:
        raise WtagError("plot_average_images: no images")
    w = schema.IMAGE_HALF_WIDTH
    with _figure(1, len(classes), size=(10.0 * len(classes), 9.0)) as (fig, axes):
        for ax, cls in zip(axes.flat, classes):
            mean = images[label == cls].mean(axis=0)
            positive = mean[mean > 0]
            log_scale = len(positive) > 0 and positive.max() > positive.min()
            norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if log_scale else Normalize()
            shown = np.ma.masked_less_equal(mean, 0.0) if log_scale else mean
            im = ax.imshow(shown.T, origin="lower", extent=(-w, w, -w, w), norm=norm, cmap="viridis",
                           interpolation="nearest")
            fig.colorbar(im, ax=ax, label="Mean pixel $p_T$ [GeV]")
            ax.set_xlabel(r"$\Delta\eta$")
            ax.set_ylabel(r"$\Delta\phi$")
            ax.text(0.96, 0.96, f"{CLASS_NAMES.get(cls, f'label {cls}')} ({int((label == cls).sum())} jets)",
                    transform=ax.transAxes, ha="right", va="top")
        _label(axes[0, 0], cms_text)
        return _save(fig, path)


def plot_ddt_fit(fit: Any, path: str | os.PathLike[str], *, cms_text: str = "Simulation") -> Path:
    """The QCD tau21 profile against rho' with the DDT line over its fit range (``taggers.ddt.ProfileFit``)."""
    with _figure() as (fig, axes):
        ax = axes[0, 0]
        ok = np.isfinite(fit.means)
        ax.errorbar(fit.centres[ok], fit.means[ok], yerr=fit.errors[ok], fmt="o", color=CLASS_COLORS[0],
                    label=r"QCD jets: mean $\tau_{21}$")
        x = np.array([fit.rho_min, fit.rho_max])
        ax.plot(x, fit.intercept + fit.slope * x, color="black",
                label=f"fit: M = {fit.slope:.4f} $\\pm$ {fit.slope_err:.4f}, $\\chi^2$/ndf = {fit.chi2_ndf:.2f}")
        ax.axvspan(fit.rho_min, fit.rho_max, color="tab:gray", alpha=0.15, label="fit range")
        ax.set_xlabel(r"$\rho' = \ln(m_{SD}^2 / (p_T \cdot 1\,\mathrm{GeV}))$")
        ax.set_ylabel(r"$\langle\tau_{21}\rangle$")
        ax.legend(loc="lower left")
        _label(ax, cms_text)
        return _save(fig, path)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (both larger-is-better), sorted by the
    first coordinate. Non-finite first coordinates are never on the front; +inf second coordinates count as the
    largest."""
    front = []
    for i, (x, y) in enumerate(points):
        if not (math.isfinite(x) and not math.isnan(y)):
            continue
        dominated = any(j != i and math.isfinite(xj) and not math.isnan(yj) and xj >= x and yj >= y
                        and (xj > x or yj > y) for j, (xj, yj) in enumerate(points))
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def plot_decorrelation_front(names: Sequence[str], r50: Sequence[float], r50_err: Sequence[float],
                             inv_jsd: Sequence[float], inv_jsd_err: Sequence[float], path: str | os.PathLike[str],
                             *, max_sculpting: float | None = None, cms_text: str = "Simulation") -> Path:
    """The decorrelation literature's figure: background rejection at 50% signal efficiency against 1/JSD of
    the QCD mass before and after that cut, one point per candidate with its error bars, Pareto front drawn;
    with ``max_sculpting`` a vertical line at 1/max_sculpting (candidates right of it qualify as decorrelated)."""
    import matplotlib

    colors = matplotlib.colormaps["tab20"]
    if not names:
        raise WtagError("plot_decorrelation_front: no candidates")
    inv = np.asarray(inv_jsd, dtype=np.float64)
    shown = np.where(np.isfinite(inv), inv, np.nan)
    front = pareto_front(list(zip(r50, inv, strict=True)))
    with _figure() as (fig, axes):
        ax = axes[0, 0]
        for i, name in enumerate(names):
            ax.errorbar(shown[i], r50[i], xerr=inv_jsd_err[i], yerr=r50_err[i], fmt="o" if i in front else "s",
                        ms=9, capsize=3, color=colors(i % 20), label=name + (" (front)" if i in front else ""))
        if max_sculpting is not None and max_sculpting > 0:
            ax.axvline(1.0 / max_sculpting, color="tab:gray", ls=":", lw=2,
                       label=f"JSD = {max_sculpting:g} (max_sculpting)")
        pts = [(shown[i], r50[i]) for i in front if np.isfinite(shown[i])]
        if len(pts) > 1:
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="--", color="black", lw=1.5, zorder=0,
                    label="Pareto front")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(r"1 / JSD (QCD $m_{SD}$ before vs after the cut)")
        ax.set_ylabel(r"Background rejection $1/\epsilon_B$ at $\epsilon_S = 50\%$")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper right", fontsize="x-small")
        _label(ax, cms_text)
        return _save(fig, path)


def plot_mass_after_cut(msd: np.ndarray, y: np.ndarray, scores: Mapping[str, np.ndarray],
                        path: str | os.PathLike[str], signal_efficiency: float = 0.5, *,
                        cms_text: str = "Simulation") -> Path:
    """The QCD soft-drop mass before the cut and after each tagger's cut at ``signal_efficiency`` (all unit
    area), one line per tagger, its JSD in the legend: the Pareto front's members side by side."""
    if not scores:
        raise WtagError("plot_mass_after_cut: no taggers")
    msd = np.asarray(msd, dtype=np.float64)
    y = _labels(y, len(msd), "plot_mass_after_cut")
    bins = metrics.DEFAULT_MASS_BINS
    clipped = msd.clip(bins[0], bins[-1])
    with _figure() as (fig, axes):
        ax = axes[0, 0]
        hist, _ = np.histogram(clipped[y == 0], bins=bins)
        hep.histplot(hist, bins, density=True, ax=ax, color="black", lw=2.5, label="QCD, before the cut")
        for name, score in scores.items():
            score = np.asarray(score, dtype=np.float64)
            threshold = metrics.threshold_at_efficiency(y, score, signal_efficiency)
            passed = (y == 0) & (score >= threshold)
            if not passed.any():
                continue
            jsd = metrics.mass_sculpting(msd, y, score, signal_efficiency, bins)
            hist, _ = np.histogram(clipped[passed], bins=bins)
            hep.histplot(hist, bins, density=True, ax=ax, ls="--", label=f"{name}: JSD = {jsd:.3f}")
        ax.set_xlabel("Soft-drop mass [GeV]")
        ax.set_ylabel("Normalised QCD jets / bin")
        ax.legend(loc="upper right", title=f"QCD after the cut at {100 * signal_efficiency:.0f}% W eff.",
                  fontsize="x-small")
        _label(ax, cms_text)
        return _save(fig, path)


def plot_learning_curves(curves: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]],
                         path: str | os.PathLike[str], *, cms_text: str = "Simulation") -> Path:
    """Background rejection at 50% signal efficiency against the number of training jets, one line per tagger
    (``curves``: name -> (training jets, r50, error)): which taggers still gain from more data."""
    if not curves:
        raise WtagError("plot_learning_curves: no taggers")
    with _figure() as (fig, axes):
        ax = axes[0, 0]
        for name, (n, r50, err) in curves.items():
            ax.errorbar(n, r50, yerr=err, marker="o", ms=8, capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("Training jets")
        ax.set_ylabel(r"Background rejection $1/\epsilon_B$ at $\epsilon_S = 50\%$")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
        _label(ax, cms_text)
        return _save(fig, path)


def plot_levels(levels: Mapping[str, Mapping[str, tuple[float, float]]], path: str | os.PathLike[str], *,
                cms_text: str = "Simulation") -> Path:
    """Background rejection at 50% signal efficiency per tagger at several simulation levels (``levels``: level
    name -> tagger -> (r50, error)), side by side on a log scale: where each family sits between the cut and
    the generator-level reference."""
    if not levels or not any(levels.values()):
        raise WtagError("plot_levels: no taggers")
    taggers = list(dict.fromkeys(t for rows in levels.values() for t in rows))
    width = 0.8 / len(levels)
    with _figure() as (fig, axes):
        ax = axes[0, 0]
        for i, (level, rows) in enumerate(levels.items()):
            x = [taggers.index(t) + (i - (len(levels) - 1) / 2) * width for t in rows]
            values = [rows[t][0] for t in rows]
            errors = [rows[t][1] for t in rows]
            ax.errorbar(x, values, yerr=errors, marker="o", ms=9, capsize=4, ls="none", label=level)
        ax.set_yscale("log")
        ax.set_xticks(range(len(taggers)), taggers)
        ax.set_xlim(-0.6, len(taggers) - 0.4)
        ax.set_xlabel("Tagger")
        ax.set_ylabel(r"Background rejection $1/\epsilon_B$ at $\epsilon_S = 50\%$")
        ax.grid(True, which="major", axis="y", alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
        _label(ax, cms_text)
        return _save(fig, path)
