"""Designed decorrelated tau21 (DDT; Dolen, Harris, Marzani, Rappoccio & Tran, JHEP 05 (2016) 156).

On QCD jets the mean of tau21 falls roughly linearly with the scaling variable

    rho' = ln(m_SD^2 / (pT * mu)),   mu = 1 GeV,

so a cut on tau21 prefers heavy QCD jets and carves a peak into the QCD mass spectrum. DDT removes the trend:

    tau21' = tau21 - M * rho'

with the slope M of the QCD tau21 profile, fitted on the QCD jets of the training set (training weights) over
the rho' range where that profile is linear. The default range, rho' in [0, 3.5], was read off the profile of
the default simulated sample (AK7, 200 < pT < 500 GeV): below rho' ~ 0 (m_SD below ~ 15 GeV at 300 GeV, where
soft drop has groomed the jet to one prong) the profile flattens near tau21 ~ 0.85; above 3.5 (m_SD above
~ 100 GeV at 300 GeV) few QCD jets remain. The fit is a weighted least-squares line through the profile's bin
means (bins of ``bin_width`` in rho', each mean weighted by the inverse of its variance; with fewer than three
populated bins, as in tiny test samples, the line is fitted to the jets themselves); the slope, intercept
and chi^2 / ndf are logged as metrics and the profile with the line as ``plots/ddt_fit.png``.

Outside the fit range the line is not extrapolated: rho' is clipped to [rho_min, rho_max] before the shift,

    tau21' = tau21 - M * clip(rho', rho_min, rho_max),

because the profile is flat below the range (extrapolating would hand light, groomed QCD jets an ever larger
bonus and sculpt a low-mass excess) and unmeasured above it. Inside the range this is the textbook DDT.

The tagger is a threshold on tau21' without a mass window. Its score is a strictly monotone map of -tau21' into
(0, 1) (so the ROC is that of the cut on tau21'):

    score = sigmoid((c - tau21') / s),   c, s = weighted median and standard deviation of tau21' on QCD jets,

so a typical QCD jet scores about 0.5. m_SD is floored at ``MSD_FLOOR_GEV`` (and pT at 1 GeV) before the
logarithm: groomed-away jets with m_SD = 0 get a finite rho'. Logged as JSON with a pyfunc loader, exported as a
small ONNX graph, like the cut tagger.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wtag import schema
from wtag.dataset import Split, Standardization
from wtag.errors import WtagError
from wtag.taggers.base import EpochCallback, Tagger, TrainConfig
from wtag.taggers.hl_params import (
    ParamsPyfunc,
    hl_graph,
    load_params_pyfunc,
    log_params_model,
    read_logged_params,
    scalar,
)

PARAMS_FILE = "ddt_params.json"
MSD_INDEX = schema.HL_FEATURES.index("jet_msd_ak7")
PT_INDEX = schema.HL_FEATURES.index("jet_pt_ak7")
TAU21_INDEX = schema.HL_FEATURES.index("jet_tau21_ak7")
MSD_FLOOR_GEV = 1.0
PT_FLOOR_GEV = 1.0
DEFAULT_RHO_MIN = 0.0
DEFAULT_RHO_MAX = 3.5
DEFAULT_BIN_WIDTH = 0.25
MIN_JETS_PER_BIN = 5  # effective number of QCD jets for a profile bin to enter the fit


def rho_prime(msd: np.ndarray, pt: np.ndarray) -> np.ndarray:
    """ln(m_SD^2 / (pT * 1 GeV)), m_SD and pT in GeV, floored at MSD_FLOOR_GEV and PT_FLOOR_GEV."""
    msd = np.maximum(np.asarray(msd, dtype=np.float64), MSD_FLOOR_GEV)
    pt = np.maximum(np.asarray(pt, dtype=np.float64), PT_FLOOR_GEV)
    return 2.0 * np.log(msd) - np.log(pt)


@dataclasses.dataclass(frozen=True)
class DDTParams:
    """The fitted transformation and score map (float32-representable, so numpy and ONNX agree)."""

    slope: float  # M
    centre: float  # c
    scale: float  # s
    rho_min: float = DEFAULT_RHO_MIN  # rho' is clipped to [rho_min, rho_max] before the shift
    rho_max: float = DEFAULT_RHO_MAX
    msd_index: int = MSD_INDEX
    pt_index: int = PT_INDEX
    tau21_index: int = TAU21_INDEX

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DDTParams:
        try:
            return cls(slope=float(d["slope"]), centre=float(d["centre"]), scale=float(d["scale"]),
                       rho_min=float(d["rho_min"]), rho_max=float(d["rho_max"]),
                       msd_index=int(d["msd_index"]), pt_index=int(d["pt_index"]),
                       tau21_index=int(d["tau21_index"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WtagError(f"ddt tagger parameters are incomplete or malformed ({exc!r})") from None


def tau21_ddt(tau21: np.ndarray, rho: np.ndarray, slope: float, rho_min: float, rho_max: float) -> np.ndarray:
    """tau21' = tau21 - M clip(rho', rho_min, rho_max)."""
    return np.asarray(tau21, dtype=np.float64) - slope * np.clip(rho, rho_min, rho_max)


def ddt_scores(hl: np.ndarray, params: DDTParams) -> np.ndarray:
    """sigmoid((c - tau21') / s), in (0, 1), strictly decreasing in tau21'."""
    hl = np.asarray(hl)
    rho = rho_prime(hl[:, params.msd_index], hl[:, params.pt_index])
    tau = tau21_ddt(hl[:, params.tau21_index], rho, params.slope, params.rho_min, params.rho_max)
    return 1.0 / (1.0 + np.exp(-(params.centre - tau) / params.scale))


@dataclasses.dataclass(frozen=True)
class ProfileFit:
    """The QCD tau21 profile in rho' and the straight line through it over [rho_min, rho_max]."""

    centres: np.ndarray  # bin centres (rho')
    means: np.ndarray  # weighted mean tau21 per bin (NaN when empty)
    errors: np.ndarray  # its standard error
    slope: float
    intercept: float
    slope_err: float
    chi2_ndf: float
    rho_min: float
    rho_max: float


def fit_profile(rho: np.ndarray, tau21: np.ndarray, weight: np.ndarray, rho_min: float, rho_max: float,
                bin_width: float) -> ProfileFit:
    """Weighted-mean tau21 per rho' bin (over the whole populated range, for the plot), and the inverse-variance
    weighted straight-line fit through the bins inside [rho_min, rho_max]."""
    rho, tau21, weight = (np.asarray(a, dtype=np.float64) for a in (rho, tau21, weight))
    if not rho_max - rho_min >= 2 * bin_width:
        raise WtagError(f"ddt tagger: fit range [{rho_min}, {rho_max}] needs at least two bins of {bin_width}")
    lo = math.floor(min(rho.min(), rho_min) / bin_width) * bin_width
    hi = math.ceil(max(rho.max(), rho_max) / bin_width) * bin_width
    edges = np.arange(lo, hi + 0.5 * bin_width, bin_width)
    index = np.clip(np.digitize(rho, edges) - 1, 0, len(edges) - 2)
    n_bins = len(edges) - 1
    sw = np.bincount(index, weight, n_bins)
    sw2 = np.bincount(index, weight ** 2, n_bins)
    swt = np.bincount(index, weight * tau21, n_bins)
    swtt = np.bincount(index, weight * tau21 ** 2, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = swt / sw
        var = np.maximum(swtt / sw - means ** 2, 0.0)
        n_eff = sw ** 2 / sw2
        errors = np.sqrt(var / n_eff)
    centres = 0.5 * (edges[:-1] + edges[1:])
    use = (centres >= rho_min) & (centres <= rho_max) & (n_eff >= MIN_JETS_PER_BIN) & (errors > 0)
    if use.sum() >= 3:
        x, yv, inv_var = centres[use], means[use], 1.0 / errors[use] ** 2
        chi2_ndf_of = lambda chi2: chi2 / max(int(use.sum()) - 2, 1)  # noqa: E731
    else:
        # Too few jets for a profile (tiny samples): the same straight line, fitted to the jets themselves.
        jets = (rho >= rho_min) & (rho <= rho_max) & (weight > 0)
        if jets.sum() < 3 or np.ptp(rho[jets]) <= 0:
            raise WtagError(f"ddt tagger: fewer than 3 QCD training jets with rho' in the fit range "
                            f"[{rho_min}, {rho_max}]: the training set is too small to fit the tau21 slope")
        x, yv, inv_var = rho[jets], tau21[jets], weight[jets] / max(float(np.var(tau21[jets])), 1e-6)
        chi2_ndf_of = lambda chi2: math.nan  # noqa: E731
    design = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.inv(design.T @ (design * inv_var[:, None]))
    intercept, slope = cov @ design.T @ (inv_var * yv)
    chi2 = float(np.sum(inv_var * (yv - intercept - slope * x) ** 2))
    return ProfileFit(centres=centres, means=means, errors=errors, slope=float(slope), intercept=float(intercept),
                      slope_err=float(math.sqrt(cov[1, 1])), chi2_ndf=chi2_ndf_of(chi2),
                      rho_min=rho_min, rho_max=rho_max)


def _weighted_quantile(values: np.ndarray, weight: np.ndarray, q: float) -> float:
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weight[order])
    return float(values[order][min(int(np.searchsorted(cum, q * cum[-1])), len(values) - 1)])


class DDTTagger(Tagger):
    """tau21 DDT: tau21 - M rho', M from the QCD profile of the training set; no mass window."""

    name = "ddt"
    family = "cut"
    inputs = (schema.INPUT_HL,)
    flavor = "pyfunc"

    def __init__(self, config: TrainConfig, standardization: Standardization, *, rho_min: float = DEFAULT_RHO_MIN,
                 rho_max: float = DEFAULT_RHO_MAX, bin_width: float = DEFAULT_BIN_WIDTH) -> None:
        super().__init__(config, standardization)
        if not (bin_width > 0 and rho_max > rho_min):
            raise WtagError(f"ddt tagger: bad fit range [{rho_min}, {rho_max}] or bin width {bin_width}")
        self.rho_min, self.rho_max, self.bin_width = float(rho_min), float(rho_max), float(bin_width)
        self.params: DDTParams | None = None
        self.fit_result: ProfileFit | None = None

    def hyperparameters(self) -> dict[str, Any]:
        return {"ddt_rho_min": self.rho_min, "ddt_rho_max": self.rho_max, "ddt_bin_width": self.bin_width,
                "ddt_msd_floor_gev": MSD_FLOOR_GEV, "ddt_mu_gev": 1.0}

    def fit(self, train: Split, val: Split, on_epoch_end: EpochCallback | None = None) -> dict[str, list[float]]:
        """Fit M on the QCD training jets (training weights); nothing to stop early, so ``val`` is unused."""
        self.check_inputs(train.inputs(self.inputs))
        qcd = np.asarray(train.label) == 0
        if not qcd.any():
            raise WtagError("ddt tagger: the training set has no QCD jets (label 0) to fit the tau21 profile on")
        hl = np.asarray(train.hl)[qcd]
        weight = np.asarray(train.weight, dtype=np.float64)[qcd]
        rho = rho_prime(hl[:, MSD_INDEX], hl[:, PT_INDEX])
        tau21 = hl[:, TAU21_INDEX].astype(np.float64)
        fit = fit_profile(rho, tau21, weight, self.rho_min, self.rho_max, self.bin_width)
        slope = float(np.float32(fit.slope))
        rho_min, rho_max = float(np.float32(self.rho_min)), float(np.float32(self.rho_max))
        transformed = tau21_ddt(tau21, rho, slope, rho_min, rho_max)
        centre = _weighted_quantile(transformed, weight, 0.5)
        mean = np.average(transformed, weights=weight)
        scale = math.sqrt(np.average((transformed - mean) ** 2, weights=weight)) or 1.0
        self.params = DDTParams(slope=slope, centre=float(np.float32(centre)), scale=float(np.float32(scale)),
                                rho_min=rho_min, rho_max=rho_max)
        self.fit_result = fit
        return {}

    def _fitted(self) -> DDTParams:
        if self.params is None:
            raise WtagError("ddt tagger is not fitted yet (call fit or load_logged first)")
        return self.params

    def fit_metrics(self) -> dict[str, float]:
        if self.fit_result is None:
            return {}
        f = self.fit_result
        return {"ddt_slope": f.slope, "ddt_slope_err": f.slope_err, "ddt_intercept": f.intercept,
                "ddt_fit_chi2_ndf": f.chi2_ndf}

    def diagnostic_plots(self, directory: Path, train: Split) -> None:
        from wtag import plots

        if self.fit_result is not None:
            plots.plot_ddt_fit(self.fit_result, Path(directory) / "ddt_fit.png")

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        self.check_inputs(inputs)
        return ddt_scores(inputs[schema.INPUT_HL], self._fitted())

    def log_model(self, name: str, input_example: Mapping[str, np.ndarray]) -> Any:
        """pyfunc model: ``data/ddt_params.json`` plus this module as loader, the wtag source as code (no pickle)."""
        self.check_inputs(input_example)
        return log_params_model(name, {**self._fitted().to_dict(), "rho_min": self.rho_min, "rho_max": self.rho_max,
                                       "bin_width": self.bin_width}, __name__, PARAMS_FILE, input_example)

    @classmethod
    def load_logged(cls, model_uri: str, config: TrainConfig, standardization: Standardization) -> DDTTagger:
        stored = read_logged_params(model_uri, PARAMS_FILE, "ddt-tagger")
        settings = ("rho_min", "rho_max", "bin_width")
        tagger = cls(config, standardization, **{k: stored[k] for k in settings if k in stored})
        tagger.params = DDTParams.from_dict(stored)
        return tagger

    def to_onnx(self) -> Any:
        """``ddt_scores`` in float32 ONNX ops (opset 13): Gather, Max, Log, Mul, Sub, Clip, Div, Sigmoid."""
        from onnx import helper

        p = self._fitted()


        initializers = [
            scalar("msd_index", p.msd_index, integer=True), scalar("pt_index", p.pt_index, integer=True),
            scalar("tau21_index", p.tau21_index, integer=True), scalar("msd_floor", MSD_FLOOR_GEV),
            scalar("pt_floor", PT_FLOOR_GEV), scalar("two", 2.0), scalar("slope", p.slope),
            scalar("centre", p.centre), scalar("scale", p.scale), scalar("rho_min", p.rho_min),
            scalar("rho_max", p.rho_max),
        ]
        nodes = [
            helper.make_node("Gather", ["hl", "msd_index"], ["msd"], axis=1),
            helper.make_node("Gather", ["hl", "pt_index"], ["pt"], axis=1),
            helper.make_node("Gather", ["hl", "tau21_index"], ["tau21"], axis=1),
            helper.make_node("Max", ["msd", "msd_floor"], ["msd_floored"]),
            helper.make_node("Max", ["pt", "pt_floor"], ["pt_floored"]),
            helper.make_node("Log", ["msd_floored"], ["log_msd"]),
            helper.make_node("Log", ["pt_floored"], ["log_pt"]),
            helper.make_node("Mul", ["two", "log_msd"], ["log_msd2"]),
            helper.make_node("Sub", ["log_msd2", "log_pt"], ["rho"]),
            helper.make_node("Clip", ["rho", "rho_min", "rho_max"], ["rho_clipped"]),
            helper.make_node("Mul", ["slope", "rho_clipped"], ["shift"]),
            helper.make_node("Sub", ["tau21", "shift"], ["tau21_ddt"]),
            helper.make_node("Sub", ["centre", "tau21_ddt"], ["below"]),
            helper.make_node("Div", ["below", "scale"], ["logit"]),
            helper.make_node("Sigmoid", ["logit"], [schema.OUTPUT_SCORE]),
        ]
        return hl_graph(nodes, initializers, "wtag_ddt")


def _load_pyfunc(data_path: str) -> ParamsPyfunc:
    """MLflow's loader-module entry point: ``data_path`` is the logged ``ddt_params.json``."""
    return load_params_pyfunc(data_path, DDTParams.from_dict, ddt_scores, "ddt-tagger")
