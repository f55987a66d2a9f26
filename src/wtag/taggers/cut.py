"""The physicist's baseline: a soft-drop mass window plus an upper cut on the N-subjettiness ratio tau21.

Training is a grid search on the training set for the window (and, inside each window, the tau21 cut) with
the best background rejection at 50% signal efficiency. The tagger is a handful of numbers, so it is logged as
JSON with a pyfunc loader module (no pickle), and exported as a 16-node ONNX graph.

Score: to give a ROC curve (not one point) the cut is turned into a score in [0, 1] that orders jets first by
"inside the window", then by tau21 (low tau21 = two-prong = W-like), with the working point at exactly 0.5::

    in window, tau21 <= cut :  1    - 0.5  * u / cut                  in [0.5, 1]
    in window, tau21 >  cut :  0.5  - 0.25 * (u - cut) / (1 - cut)    in [0.25, 0.5)
    outside the window      :  0.25 * (1 - u)                          in [0, 0.25]

with u = tau21 clipped to [0, 1] and the window m_lo <= msd < m_hi. So ``score >= 0.5`` is the optimized cut,
and scanning the threshold above 0.5 tightens tau21 inside the window.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
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

PARAMS_FILE = "cut_params.json"
MSD_INDEX = schema.HL_FEATURES.index("jet_msd_ak7")
TAU21_INDEX = schema.HL_FEATURES.index("jet_tau21_ak7")


@dataclasses.dataclass(frozen=True)
class CutParams:
    """The fitted cut. Edges and cut are float32-representable, so numpy and ONNX compare identically."""

    m_lo: float
    m_hi: float
    tau21_cut: float
    msd_index: int = MSD_INDEX
    tau21_index: int = TAU21_INDEX

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CutParams:
        try:
            return cls(m_lo=float(d["m_lo"]), m_hi=float(d["m_hi"]), tau21_cut=float(d["tau21_cut"]),
                       msd_index=int(d["msd_index"]), tau21_index=int(d["tau21_index"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WtagError(f"cut tagger parameters are incomplete or malformed ({exc!r})") from None

    def slopes(self) -> tuple[float, float]:
        """Slopes of the two in-window score segments (0 where a segment is empty)."""
        tight = 0.5 / self.tau21_cut if self.tau21_cut > 0 else 0.0
        loose = 0.25 / (1.0 - self.tau21_cut) if self.tau21_cut < 1 else 0.0
        return tight, loose


def cut_scores(hl: np.ndarray, params: CutParams) -> np.ndarray:
    """Scores in [0, 1] of raw high-level features (N, 10) (see the module docstring)."""
    hl = np.asarray(hl)
    msd = hl[:, params.msd_index].astype(np.float64)
    u = np.clip(hl[:, params.tau21_index].astype(np.float64), 0.0, 1.0)
    tight_slope, loose_slope = params.slopes()
    in_window = (msd >= params.m_lo) & (msd < params.m_hi)
    inside = np.where(u <= params.tau21_cut, 1.0 - tight_slope * u, 0.5 - loose_slope * (u - params.tau21_cut))
    return np.where(in_window, inside, 0.25 - 0.25 * u)


def _f32(value: float) -> float:
    """The nearest float32 at or above ``value``: a jet exactly at the cut stays inside it in float32."""
    rounded = np.float32(value)
    if rounded < value:
        rounded = np.nextafter(rounded, np.float32(np.inf))
    return float(rounded)


def optimize_cut(msd: np.ndarray, tau21: np.ndarray, label: np.ndarray, weight: np.ndarray | None = None, *,
                 signal_efficiency: float = 0.5, mass_edges: np.ndarray | None = None,
                 tau21_bins: int = 200) -> tuple[CutParams, float]:
    """Window and tau21 cut with the lowest background efficiency at ``signal_efficiency``; also that eps_B.

    Vectorised: a 2-D (msd, tau21) histogram per class, cumulated along tau21 and along msd, gives the
    signal and background passing every window (any pair of ``mass_edges``) for every tau21 bin edge at once.
    For each window the tightest tau21 bin edge that still keeps the target signal efficiency is taken; the
    best window then gets its exact tau21 cut from the per-jet values (a quantile of the W jets inside it).
    """
    msd = np.asarray(msd, dtype=np.float64)
    tau21 = np.asarray(tau21, dtype=np.float64)
    label = np.asarray(label)
    w = np.ones(len(msd)) if weight is None else np.asarray(weight, dtype=np.float64)
    edges = np.arange(0.0, 300.0 + 1e-9, 2.5) if mass_edges is None else np.asarray(mass_edges, dtype=np.float64)
    if not (len(tau21) == len(label) == len(msd) == len(w)):
        raise WtagError(f"cut tagger: msd ({len(msd)}), tau21 ({len(tau21)}), labels ({len(label)}) and "
                        f"weights ({len(w)}) have different lengths")
    sig, bkg = label == 1, label == 0
    if not sig.any() or not bkg.any():
        raise WtagError("cut tagger: the training set needs both W (label 1) and QCD (label 0) jets")
    total_s, total_b = w[sig].sum(), w[bkg].sum()
    if total_s <= 0 or total_b <= 0:
        raise WtagError("cut tagger: training weights of W or QCD jets sum to zero")
    tau_edges = np.linspace(0.0, 1.0, tau21_bins + 1)
    u = np.clip(tau21, 0.0, 1.0)

    def cumulative(sel: np.ndarray) -> np.ndarray:
        hist, _, _ = np.histogram2d(msd[sel], u[sel], bins=(edges, tau_edges), weights=w[sel])
        per_mass = np.cumsum(hist, axis=1)  # passing tau21 <= upper edge of each bin
        return np.vstack([np.zeros((1, tau21_bins)), np.cumsum(per_mass, axis=0)])  # prefix sums over msd

    cum_s, cum_b = cumulative(sig), cumulative(bkg)
    target = signal_efficiency * total_s
    best = (np.inf, 0, 0)
    for lo in range(len(edges) - 1):
        s = cum_s[lo + 1:] - cum_s[lo]  # rows: windows [edges[lo], edges[hi]) for hi > lo
        b = cum_b[lo + 1:] - cum_b[lo]
        reach = s >= target * (1 - 1e-12)
        feasible = reach[:, -1]
        if not feasible.any():
            continue
        first = reach.argmax(axis=1)
        eps_b = np.where(feasible, b[np.arange(len(b)), first] / total_b, np.inf)
        k = int(eps_b.argmin())
        if eps_b[k] < best[0]:
            best = (float(eps_b[k]), lo, lo + 1 + k)
    if not np.isfinite(best[0]):
        raise WtagError(f"cut tagger: no soft-drop mass window in [{edges[0]}, {edges[-1]}] GeV holds "
                        f"{signal_efficiency:.0%} of the training W jets")
    m_lo, m_hi = _f32(edges[best[1]]), _f32(edges[best[2]])
    in_window = (msd >= m_lo) & (msd < m_hi)
    sel = sig & in_window
    order = np.argsort(u[sel], kind="stable")
    passed = np.cumsum(w[sel][order])
    cut = _f32(u[sel][order][min(int(np.searchsorted(passed, target * (1 - 1e-12))), len(order) - 1)])
    params = CutParams(m_lo=m_lo, m_hi=m_hi, tau21_cut=cut)
    kept_b = w[bkg & in_window & (u <= cut)].sum() / total_b
    return params, float(kept_b)


class CutTagger(Tagger):
    """Soft-drop mass window + tau21 cut, optimized on the (weighted) training set.

    Uses the training weights like every other tagger, so it is tuned for the same pT-flattened population;
    the reported metrics are then measured, unweighted, on the test set. TrainConfig fields do not apply (no
    epochs, no learning rate): ``fit`` returns an empty history.
    """

    name = "cut"
    family = "cut"
    inputs = (schema.INPUT_HL,)
    flavor = "pyfunc"

    def __init__(self, config: TrainConfig, standardization: Standardization, *, signal_efficiency: float = 0.5,
                 mass_min: float = 0.0, mass_max: float = 300.0, mass_step: float = 2.5,
                 tau21_bins: int = 200) -> None:
        super().__init__(config, standardization)
        if not 0 < signal_efficiency < 1:
            raise WtagError(f"cut tagger: signal_efficiency={signal_efficiency} must be in (0, 1)")
        if not (mass_step > 0 and mass_max > mass_min) or tau21_bins < 1:
            raise WtagError(f"cut tagger: bad grid (mass {mass_min}-{mass_max} step {mass_step}, "
                            f"{tau21_bins} tau21 bins)")
        self.signal_efficiency = signal_efficiency
        self.mass_min, self.mass_max, self.mass_step = mass_min, mass_max, mass_step
        self.tau21_bins = tau21_bins
        self.params: CutParams | None = None
        self.train_background_efficiency: float | None = None

    def hyperparameters(self) -> dict[str, Any]:
        return {"signal_efficiency": self.signal_efficiency, "mass_min": self.mass_min, "mass_max": self.mass_max,
                "mass_step": self.mass_step, "tau21_bins": self.tau21_bins}

    def fit(self, train: Split, val: Split, on_epoch_end: EpochCallback | None = None) -> dict[str, list[float]]:
        """Grid-search the window and cut on ``train`` (``val`` is not needed: nothing to stop early)."""
        self.check_inputs(train.inputs(self.inputs))
        hl = train.hl
        edges = np.arange(self.mass_min, self.mass_max + 0.5 * self.mass_step, self.mass_step)
        self.params, self.train_background_efficiency = optimize_cut(
            hl[:, MSD_INDEX], hl[:, TAU21_INDEX], train.label, train.weight,
            signal_efficiency=self.signal_efficiency, mass_edges=edges, tau21_bins=self.tau21_bins)
        return {}

    def _fitted(self) -> CutParams:
        if self.params is None:
            raise WtagError("cut tagger is not fitted yet (call fit or load_logged first)")
        return self.params

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        self.check_inputs(inputs)
        return cut_scores(inputs[schema.INPUT_HL], self._fitted())

    def log_model(self, name: str, input_example: Mapping[str, np.ndarray]) -> Any:
        """pyfunc model: ``data/cut_params.json`` plus this module as loader, the wtag source as code (no pickle)."""
        self.check_inputs(input_example)
        stored = {**self._fitted().to_dict(), **self.hyperparameters()}
        return log_params_model(name, stored, __name__, PARAMS_FILE, input_example)

    @classmethod
    def load_logged(cls, model_uri: str, config: TrainConfig, standardization: Standardization) -> CutTagger:
        stored = read_logged_params(model_uri, PARAMS_FILE, "cut-tagger")
        settings = ("signal_efficiency", "mass_min", "mass_max", "mass_step", "tau21_bins")
        tagger = cls(config, standardization, **{k: stored[k] for k in settings if k in stored})
        tagger.params = CutParams.from_dict(stored)
        return tagger

    def to_onnx(self) -> Any:
        """The same piecewise score as ``cut_scores`` in float32 ONNX ops (opset 13)."""
        from onnx import helper

        p = self._fitted()
        tight_slope, loose_slope = p.slopes()


        initializers = [
            scalar("msd_index", p.msd_index, integer=True), scalar("tau21_index", p.tau21_index, integer=True),
            scalar("zero", 0.0), scalar("one", 1.0), scalar("half", 0.5), scalar("quarter", 0.25),
            scalar("m_lo", p.m_lo), scalar("m_hi", p.m_hi), scalar("cut", p.tau21_cut),
            scalar("tight_slope", tight_slope), scalar("loose_slope", loose_slope),
        ]
        nodes = [
            helper.make_node("Gather", ["hl", "msd_index"], ["msd"], axis=1),
            helper.make_node("Gather", ["hl", "tau21_index"], ["tau21"], axis=1),
            helper.make_node("Clip", ["tau21", "zero", "one"], ["u"]),
            helper.make_node("GreaterOrEqual", ["msd", "m_lo"], ["above_lo"]),
            helper.make_node("Less", ["msd", "m_hi"], ["below_hi"]),
            helper.make_node("And", ["above_lo", "below_hi"], ["in_window"]),
            helper.make_node("LessOrEqual", ["u", "cut"], ["tight"]),
            helper.make_node("Mul", ["tight_slope", "u"], ["tight_drop"]),
            helper.make_node("Sub", ["one", "tight_drop"], ["tight_score"]),
            helper.make_node("Sub", ["u", "cut"], ["excess"]),
            helper.make_node("Mul", ["loose_slope", "excess"], ["loose_drop"]),
            helper.make_node("Sub", ["half", "loose_drop"], ["loose_score"]),
            helper.make_node("Sub", ["one", "u"], ["one_minus_u"]),
            helper.make_node("Mul", ["quarter", "one_minus_u"], ["outside_score"]),
            helper.make_node("Where", ["tight", "tight_score", "loose_score"], ["inside_score"]),
            helper.make_node("Where", ["in_window", "inside_score", "outside_score"], [schema.OUTPUT_SCORE]),
        ]
        return hl_graph(nodes, initializers, "wtag_cut")


def _load_pyfunc(data_path: str) -> ParamsPyfunc:
    """MLflow's loader-module entry point: ``data_path`` is the logged ``cut_params.json``."""
    return load_params_pyfunc(data_path, CutParams.from_dict, cut_scores, "cut-tagger")
