"""The embedded default data: CMS-2011-like W and QCD AK7 jets from Pythia 8 + FastJet.

Real 2011 CMS simulation is hundreds of GB and needs CMSSW; this generator makes statistically similar jets on a
laptop so every stage (prepare, train, serve) runs end to end without downloads. Pipeline per batch of events:
Pythia 8 at 7 TeV (MPI, ISR/FSR, hadronisation on; ``nextBatch`` hands whole events over as awkward arrays, so
there is no per-particle Python loop) -> Poisson(``pileup``) minimum-bias events from a pool overlaid, no
pileup subtraction (the tutorial's PF candidates include pileup) -> the PF-like response of
:mod:`wtag.sources.detector` -> anti-kT R = 0.7 with FastJet -> 200 < pT < 500 GeV, |eta| < 2 -> merged-W label
from the event record -> substructure from the constituents with :mod:`wtag.features.substructure`.

Samples (``sample_id`` in the jets; see :data:`SAMPLES`): ``ttbar`` (the tutorial's signal, W from top decays)
and ``wjets`` (W + jet), both with W -> qq only: 1.5 times more merged-W jets per event than inclusive W decays,
and the other top's decay hardly touches a W jet (``pythia_settings=("24:onMode = on",)`` restores them);
``qcd`` is ``HardQCD:all`` in the pT-hat slices of the 2011 QCD samples. Signal processes keep only merged-W
jets (label 1); qcd keeps every selected jet (label 0).

``weight`` (pb): the cross section of the jet's sample after selection, estimated in the jet's chunk,
sigma_gen * (jets kept) / (events generated up to the last kept jet), with Pythia's sigma_gen (which includes the
forced W -> qq branching fractions). A jet's share of the *physical* mixture of its process is therefore
``weight / n_jets(sample_id)``, and those shares sum to the process's selected-jet cross section. The default
``qcd`` mixture is not physical: like the tutorial's QCD sample, it takes the slices in the proportions that one
file per slice gave (:data:`QCD_TUTORIAL_FRACTIONS`), which the real 2011 images were made from; use the weights
to get the physical pT spectrum.

Reproducibility: every chunk has its own Pythia and numpy seeds derived from (seed, process, chunk index), and
the minimum-bias pool from (seed) alone, so the same seed gives the same files whatever the number of workers
and however often the run was interrupted and resumed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import awkward as ak
import fastjet
import numpy as np
import pythia8mc
import uproot
from tqdm import tqdm

from wtag import schema
from wtag.codeversion import code_version
from wtag.errors import WtagError
from wtag.execution import ExecutionConfig, available_cores, dask_client, run_tasks, scheduler_address, worker_state
from wtag.features.substructure import substructure
from wtag.fileio import atomic_path
from wtag.jets import make_jets, read_provenance, write_jets
from wtag.sources import detector as det

PROCESSES = schema.PROCESSES
ECM_GEV = 7000.0
# Tuned on the real 2011 CMS jet images (docs/simulation.md): mean number of inelastic pp interactions
# overlaid on each hard event; 2011 runs averaged ~6 (early) to ~15 (late) pileup interactions.
DEFAULT_PILEUP = 9.0
DEFAULT_CHUNK_JETS = 1000
# AK7 jets above this pT are clustered and ranked, as in the CMS ntuples (``ijet`` indexes them).
NTUPLE_JET_PT_MIN = 30.0
PYTHIA_SEED_MAX = 900_000_000
SEED_MAX = 2**31 - 1
MB_TO_PB = 1e9
QUARKS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Sample:
    """One generated sample: a Pythia process with its pT-hat range."""

    sample_id: int
    name: str
    process: str
    settings: tuple[str, ...]
    pthat_min: float
    pthat_max: float
    signal: bool


SAMPLES = (
    Sample(1, "ttbar", "ttbar", ("Top:gg2ttbar = on", "Top:qqbar2ttbar = on", "24:onMode = off",
                                 "24:onIfAny = 1 2 3 4 5"), 150.0, -1.0, True),
    Sample(2, "wjets", "wjets", ("WeakBosonAndParton:qqbar2Wg = on", "WeakBosonAndParton:qg2Wq = on",
                                 "24:onMode = off", "24:onIfAny = 1 2 3 4 5"), 150.0, -1.0, True),
    Sample(11, "qcd_pt120to170", "qcd", ("HardQCD:all = on",), 120.0, 170.0, False),
    Sample(12, "qcd_pt170to300", "qcd", ("HardQCD:all = on",), 170.0, 300.0, False),
    Sample(13, "qcd_pt300to470", "qcd", ("HardQCD:all = on",), 300.0, 470.0, False),
    Sample(14, "qcd_pt470to600", "qcd", ("HardQCD:all = on",), 470.0, 600.0, False),
)
# Share of selected jets per QCD slice in the tutorial's QCD sample (one 2011 file per slice, every 20th jet:
# 24, 392, 770 and 391 jets from the 120-170, 170-300, 300-470 and 470-600 GeV slices).
QCD_TUTORIAL_FRACTIONS = (24 / 1577, 392 / 1577, 770 / 1577, 391 / 1577)
# Rough selected jets per event, only to size the first batch of a chunk.
_FIRST_BATCH_YIELD = {"ttbar": 0.1, "wjets": 0.3, "qcd": 0.5}
_MAX_BATCH_EVENTS = 1000


@dataclass(frozen=True)
class Tuning:
    """Generator settings beyond the CLI's; ``generate(**tuning)`` sets them by name.

    ``fsr_alphas`` is ``TimeShower:alphaSvalue`` for the hard and the pileup events: Pythia's Monash value 0.1365
    with this detector model and MU = 9 reproduces the real 2011 images best (docs/simulation.md, tuning; 0.118 needs
    MU = 12 and is still further off). ``ttbar_pthat_min`` / ``wjets_pthat_min`` bias the phase space towards
    boosted W: a W jet above 200 GeV needs a top or W of about that pT; for ttbar, pT-hat > 150 GeV doubles the
    merged-W jets per event and loses 4.5% of them (jets near 200 GeV), measured against pT-hat > 100 GeV.
    ``pileup_pool`` minimum-bias events are generated once per run (a file beside the chunks) and drawn from with a random azimuthal
    rotation and z reflection. ``pythia_settings`` are extra ``readString`` lines for the hard process.
    """

    fsr_alphas: float = 0.1365
    ttbar_pthat_min: float = 150.0
    wjets_pthat_min: float = 150.0
    qcd_fractions: tuple[float, ...] = QCD_TUTORIAL_FRACTIONS
    pileup_pool: int = 1000
    pythia_settings: tuple[str, ...] = ()
    detector_model: det.DetectorModel = field(default_factory=det.DetectorModel)

    def __post_init__(self) -> None:
        if not 0.06 <= self.fsr_alphas <= 0.25:
            raise WtagError(f"fsr_alphas must be in [0.06, 0.25] (Pythia's range), got {self.fsr_alphas}")
        for name in ("ttbar_pthat_min", "wjets_pthat_min"):
            if not 0 <= getattr(self, name) < 1000:
                raise WtagError(f"{name} must be in [0, 1000) GeV, got {getattr(self, name)}")
        n_slices = sum(1 for s in SAMPLES if s.process == "qcd")
        fractions = np.asarray(self.qcd_fractions, dtype=np.float64)
        if fractions.shape != (n_slices,) or np.any(fractions < 0) or not fractions.sum() > 0:
            raise WtagError(f"qcd_fractions must be {n_slices} non-negative numbers with a positive sum, "
                            f"got {self.qcd_fractions}")
        if self.pileup_pool < 1:
            raise WtagError(f"pileup_pool must be >= 1, got {self.pileup_pool}")
        if not isinstance(self.detector_model, det.DetectorModel):
            raise WtagError("detector_model must be a wtag.sources.detector.DetectorModel")


@dataclass(frozen=True)
class RunConfig:
    """Everything a worker needs besides its chunks (picklable, for spawned workers)."""

    seed: int
    pileup: float
    detector: bool
    tuning: Tuning


@dataclass(frozen=True)
class ChunkSpec:
    """One chunk file: which sample, how many jets, which seeds."""

    process: str
    index: int
    sample: Sample
    n_jets: int
    pythia_seed: int
    numpy_seed: int
    path: Path


@dataclass
class ChunkStats:
    """Where a chunk's time went (seconds), for the benchmark."""

    events: int = 0
    jets: int = 0
    pythia: float = 0.0
    pileup: float = 0.0
    detector: float = 0.0
    clustering: float = 0.0
    labels: float = 0.0
    substructure: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class MinBiasPool:
    """Final-state particles of pre-generated minimum-bias events, flat, with per-event offsets."""

    offsets: np.ndarray
    px: np.ndarray
    py: np.ndarray
    pz: np.ndarray
    e: np.ndarray
    pid: np.ndarray
    charge: np.ndarray

    @property
    def size(self) -> int:
        return len(self.offsets) - 1


def _seed_state(seed: int, *key: int) -> int:
    return int(np.random.SeedSequence([seed, *key]).generate_state(1, np.uint32)[0])


def pythia_seed(seed: int, *key: int) -> int:
    """A Pythia seed in 1..900000000 derived from the run seed and a key (process, chunk, stream)."""
    return _seed_state(seed, *key) % PYTHIA_SEED_MAX + 1


def sample_settings(sample: Sample, tuning: Tuning) -> list[str]:
    """The Pythia ``readString`` lines of a sample's hard process under ``tuning`` (seed and beams aside)."""
    pthat_min = {"ttbar": tuning.ttbar_pthat_min, "wjets": tuning.wjets_pthat_min}.get(sample.process,
                                                                                        sample.pthat_min)
    lines = list(sample.settings) + [f"PhaseSpace:pTHatMin = {pthat_min:g}"]
    if sample.pthat_max > 0:
        lines.append(f"PhaseSpace:pTHatMax = {sample.pthat_max:g}")
    return lines + list(tuning.pythia_settings)


def make_pythia(settings: Sequence[str], seed: int, fsr_alphas: float) -> pythia8mc.Pythia:
    """An initialised, silent Pythia at 7 TeV with the given process settings and seed."""
    pythia = pythia8mc.Pythia("", False)
    lines = [f"Beams:eCM = {ECM_GEV:g}", "Print:quiet = on", "Next:numberCount = 0", "Random:setSeed = on",
             f"Random:seed = {seed}", f"TimeShower:alphaSvalue = {fsr_alphas:g}", *settings]
    for line in lines:
        if not pythia.readString(line):
            raise WtagError(f"Pythia setting not understood: {line!r}")
    if not pythia.init():
        raise WtagError(f"Pythia failed to initialise with settings {list(settings)}")
    return pythia


def _charges(pythia: pythia8mc.Pythia, pid: np.ndarray) -> np.ndarray:
    """Electric charge of each particle id, looked up once per distinct id."""
    unique, inverse = np.unique(pid, return_inverse=True)
    table = np.array([pythia.particleData.chargeType(int(i)) / 3.0 for i in unique], dtype=np.float64)
    return table[inverse]


def _final_state(pythia: pythia8mc.Pythia, events: ak.Array) -> tuple[np.ndarray, ...]:
    """Flat (event, px, py, pz, e, pid, charge) of the final-state particles of a batch."""
    prt = events.prt
    final = prt[prt.status > 0]
    counts = ak.to_numpy(ak.num(final)).astype(np.int64)
    event = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    momentum = final.p
    px, py, pz, e = (np.asarray(ak.to_numpy(ak.flatten(momentum[f])), dtype=np.float64)
                     for f in ("px", "py", "pz", "e"))
    pid = np.asarray(ak.to_numpy(ak.flatten(final.id)), dtype=np.int64)
    return event, px, py, pz, e, pid, _charges(pythia, pid)


def make_pool(seed: int, size: int, fsr_alphas: float) -> MinBiasPool:
    """Generate ``size`` inelastic (``SoftQCD:inelastic``) events at 7 TeV: the pileup pool."""
    pythia = make_pythia(["SoftQCD:inelastic = on"], pythia_seed(seed, 0, 0, 7), fsr_alphas)
    events = pythia.nextBatch(size)
    event, px, py, pz, e, pid, charge = _final_state(pythia, events)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(event, minlength=len(events)))]).astype(np.int64)
    return MinBiasPool(offsets, px, py, pz, e, pid, charge)


def overlay(pool: MinBiasPool, n_events: int, mu: float, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Poisson(mu) pool events per hard event, each rotated in phi and reflected in z at random.

    Returns flat (event, px, py, pz, e, pid, charge) with ``event`` the hard event each particle joins.
    """
    n_pileup = rng.poisson(mu, n_events)
    chosen = rng.integers(0, pool.size, int(n_pileup.sum()))
    angle = rng.uniform(-np.pi, np.pi, len(chosen))
    flip = np.where(rng.random(len(chosen)) < 0.5, -1.0, 1.0)
    lengths = pool.offsets[chosen + 1] - pool.offsets[chosen]
    total = int(lengths.sum())
    starts = np.repeat(pool.offsets[chosen] - (np.cumsum(lengths) - lengths), lengths)
    index = starts + np.arange(total)
    which = np.repeat(np.arange(len(chosen)), lengths)
    cos, sin = np.cos(angle)[which], np.sin(angle)[which]
    px, py = pool.px[index], pool.py[index]
    event = np.repeat(np.repeat(np.arange(n_events, dtype=np.int64), n_pileup), lengths)
    return (event, px * cos - py * sin, px * sin + py * cos, pool.pz[index] * flip[which], pool.e[index],
            pool.pid[index], pool.charge[index])


def _hadronic_w(events: ak.Array) -> dict[str, np.ndarray]:
    """Last-copy W bosons decaying to two quarks: event index and (eta, phi) of the W and of both quarks."""
    prt = events.prt
    counts = ak.to_numpy(ak.num(prt)).astype(np.int64)
    start = np.repeat(np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
    pid = np.asarray(ak.to_numpy(ak.flatten(prt.id)), dtype=np.int64)
    d1 = np.asarray(ak.to_numpy(ak.flatten(prt.daughter1)), dtype=np.int64) + start
    d2 = np.asarray(ak.to_numpy(ak.flatten(prt.daughter2)), dtype=np.int64) + start
    quark = np.isin(np.abs(pid), QUARKS)
    is_w = (np.abs(pid) == 24) & (d1 > start) & (d2 > d1) & quark[d1] & quark[d2] & (d2 - d1 == 1)
    momentum = prt.p
    px, py, pz = (np.asarray(ak.to_numpy(ak.flatten(momentum[f])), dtype=np.float64) for f in ("px", "py", "pz"))
    event = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    out = {"event": event[is_w]}
    for name, index in (("w", np.flatnonzero(is_w)), ("q1", d1[is_w]), ("q2", d2[is_w])):
        pt = np.hypot(px[index], py[index])
        out[f"{name}_eta"] = np.arcsinh(pz[index] / pt)
        out[f"{name}_phi"] = np.arctan2(py[index], px[index])
    return out


def _delta_r(eta1: np.ndarray, phi1: np.ndarray, eta2: np.ndarray, phi2: np.ndarray) -> np.ndarray:
    return np.hypot(eta1 - eta2, det.wrap_phi(phi1 - phi2))


def merged_w_label(jet_event: np.ndarray, jet_eta: np.ndarray, jet_phi: np.ndarray,
                   w: dict[str, np.ndarray]) -> np.ndarray:
    """1 where a hadronic W and both its quarks lie within dR < 0.7 of the jet axis (the tutorial's isW)."""
    label = np.zeros(len(jet_event), dtype=np.int32)
    if len(w["event"]) == 0 or len(jet_event) == 0:
        return label
    # Pair every jet with every W of its event (a handful per event).
    order = np.argsort(w["event"], kind="stable")
    w_event = w["event"][order]
    first = np.searchsorted(w_event, jet_event, side="left")
    last = np.searchsorted(w_event, jet_event, side="right")
    n_pairs = last - first
    jet_index = np.repeat(np.arange(len(jet_event)), n_pairs)
    w_index = order[np.repeat(first - (np.cumsum(n_pairs) - n_pairs), n_pairs) + np.arange(int(n_pairs.sum()))]
    matched = np.ones(len(jet_index), dtype=bool)
    for name in ("w", "q1", "q2"):
        matched &= _delta_r(jet_eta[jet_index], jet_phi[jet_index], w[f"{name}_eta"][w_index],
                            w[f"{name}_phi"][w_index]) < schema.JET_R
    label[jet_index[matched]] = 1
    return label


def _cluster(cands: dict[str, np.ndarray], n_events: int) -> dict[str, np.ndarray]:
    """Anti-kT R = 0.7 on each event's candidates; jets above 30 GeV, pT-ordered within each event.

    Returns per jet: event, ijet, pt, eta, phi, and the flat candidate indices of its constituents with counts.
    """
    counts = np.bincount(cands["event"], minlength=n_events)
    px = cands["pt"] * np.cos(cands["phi"])
    py = cands["pt"] * np.sin(cands["phi"])
    pz = cands["pt"] * np.sinh(cands["eta"])
    e = cands["pt"] * np.cosh(cands["eta"])
    vectors = ak.unflatten(ak.zip({"px": px, "py": py, "pz": pz, "E": e}, with_name="Momentum4D"), counts)
    sequence = fastjet.ClusterSequence(vectors, fastjet.JetDefinition(fastjet.antikt_algorithm, schema.JET_R))
    jets = sequence.inclusive_jets(NTUPLE_JET_PT_MIN)
    index = sequence.constituent_index(NTUPLE_JET_PT_MIN)
    jpt = np.hypot(jets.px, jets.py)
    order = ak.argsort(jpt, axis=1, ascending=False)
    jets, index, jpt = jets[order], index[order], jpt[order]
    n_jets = ak.to_numpy(ak.num(jpt)).astype(np.int64)
    event = np.repeat(np.arange(n_events, dtype=np.int64), n_jets)
    ijet = np.asarray(ak.to_numpy(ak.flatten(ak.local_index(jpt, axis=1))), dtype=np.int32)
    flat_pt = np.asarray(ak.to_numpy(ak.flatten(jpt)), dtype=np.float64)
    jpx, jpy, jpz = (np.asarray(ak.to_numpy(ak.flatten(jets[f])), dtype=np.float64) for f in ("px", "py", "pz"))
    flat_index = ak.flatten(index, axis=1)
    n_const = ak.to_numpy(ak.num(flat_index)).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    const = np.asarray(ak.to_numpy(ak.flatten(flat_index)), dtype=np.int64) + np.repeat(offsets[event], n_const)
    return {
        "event": event,
        "ijet": ijet,
        "pt": flat_pt,
        "eta": np.arcsinh(jpz / np.where(flat_pt > 0, flat_pt, 1.0)),
        "phi": np.arctan2(jpy, jpx),
        "n_const": n_const,
        "const": const,
    }


def process_batch(pythia: pythia8mc.Pythia, events: ak.Array, sample: Sample, config: RunConfig,
                  pool: MinBiasPool | None, rng: np.random.Generator, stats: ChunkStats) -> dict[str, object]:
    """Selected (and for signal, merged-W) jets of one batch of hard events, as columns (``event`` counts from 0
    within the batch); the time spent per step is added to ``stats``. Public so the benchmark and the tuning
    comparison can run several settings on the same hard events."""
    n_events = len(events)
    t0 = time.perf_counter()
    particles = _final_state(pythia, events)
    if pool is not None and config.pileup > 0:
        pileup = overlay(pool, n_events, config.pileup, rng)
        particles = tuple(np.concatenate([a, b]) for a, b in zip(particles, pileup))
    order = np.argsort(particles[0], kind="stable")
    event, px, py, pz, e, pid, charge = (a[order] for a in particles)
    t1 = time.perf_counter()
    if config.detector:
        cands = det.respond(event, px, py, pz, e, pid, charge, rng, config.tuning.detector_model)
    else:
        cands = det.truth(event, px, py, pz, pid, charge)
    t2 = time.perf_counter()
    jets = _cluster(cands, n_events)
    selected = ((jets["pt"] > schema.JET_PT_MIN) & (jets["pt"] < schema.JET_PT_MAX)
                & (np.abs(jets["eta"]) < schema.JET_ETA_MAX))
    t3 = time.perf_counter()
    if sample.signal:
        label = merged_w_label(jets["event"][selected], jets["eta"][selected], jets["phi"][selected],
                               _hadronic_w(events))
        keep = np.flatnonzero(selected)[label == 1]
    else:
        keep = np.flatnonzero(selected)
    t4 = time.perf_counter()
    jet_offsets = np.concatenate([[0], np.cumsum(jets["n_const"])])
    n_const = jets["n_const"][keep]
    const = jets["const"][np.repeat(jet_offsets[keep] - (np.cumsum(n_const) - n_const), n_const)
                          + np.arange(int(n_const.sum()))]
    # Constituents hardest first within each jet.
    jet_of = np.repeat(np.arange(len(keep)), n_const)
    const = const[np.lexsort((-cands["pt"][const], jet_of))]
    columns: dict[str, object] = {
        f"ak7pfcand_{name}": ak.unflatten(cands[name][const], n_const) for name in ("pt", "eta", "phi", "id", "charge")
    }
    columns.update(substructure(columns["ak7pfcand_pt"], columns["ak7pfcand_eta"], columns["ak7pfcand_phi"]))
    columns["jet_isW_ak7"] = np.full(len(keep), 1 if sample.signal else 0, dtype=np.int32)
    columns["event"] = jets["event"][keep]
    columns["ijet"] = jets["ijet"][keep]
    t5 = time.perf_counter()
    stats.pileup += t1 - t0
    stats.detector += t2 - t1
    stats.clustering += t3 - t2
    stats.labels += t4 - t3
    stats.substructure += t5 - t4
    return columns


def generate_chunk(spec: ChunkSpec, config: RunConfig, pool: MinBiasPool | None,
                   progress: Callable[[int], None] = lambda n: None) -> tuple[ak.Array, ChunkStats]:
    """Generate one chunk's jets (canonical jet array) and where the time went; writes nothing."""
    stats = ChunkStats()
    start = time.perf_counter()
    pythia = make_pythia(sample_settings(spec.sample, config.tuning), spec.pythia_seed, config.tuning.fsr_alphas)
    stats.pythia += time.perf_counter() - start
    rng = np.random.default_rng(spec.numpy_seed)
    parts: list[dict[str, object]] = []
    n_have = 0
    jets_per_event = _FIRST_BATCH_YIELD[spec.process]
    max_events = 10_000 + 1_000 * spec.n_jets
    while n_have < spec.n_jets:
        if stats.events >= max_events:
            raise WtagError(f"{spec.sample.name}: only {n_have} of {spec.n_jets} jets after {stats.events} events; "
                            "the settings select (almost) no jets")
        batch = int(np.clip(math.ceil(1.1 * (spec.n_jets - n_have) / max(jets_per_event, 1e-3)), 10,
                            _MAX_BATCH_EVENTS))
        t0 = time.perf_counter()
        events = pythia.nextBatch(batch)
        stats.pythia += time.perf_counter() - t0
        columns = process_batch(pythia, events, spec.sample, config, pool, rng, stats)
        columns["event"] = columns["event"] + stats.events
        stats.events += len(events)
        n_new = len(columns["event"])
        parts.append(columns)
        progress(min(n_new, spec.n_jets - n_have))
        n_have += n_new
        jets_per_event = max(n_have / stats.events, 1e-3)
    sigma_pb = pythia.infoPython().sigmaGen() * MB_TO_PB
    merged = {name: (ak.concatenate([p[name] for p in parts]) if name.startswith("ak7pfcand_")
                     else np.concatenate([p[name] for p in parts]))[: spec.n_jets] for name in parts[0]}
    events_used = int(merged["event"][-1]) + 1
    merged["weight"] = np.full(spec.n_jets, sigma_pb * spec.n_jets / events_used)
    merged["sample_id"] = np.full(spec.n_jets, spec.sample.sample_id, dtype=np.int32)
    merged["run"] = np.full(spec.n_jets, config.seed, dtype=np.int32)
    merged["lumi"] = np.full(spec.n_jets, spec.index, dtype=np.int32)
    stats.jets = spec.n_jets
    stats.total = time.perf_counter() - start
    return make_jets(merged), stats


def split_jets(total: int, fractions: Sequence[float]) -> list[int]:
    """Integers proportional to ``fractions`` summing to ``total`` (largest remainders)."""
    share = np.asarray(fractions, dtype=np.float64) / float(np.sum(fractions)) * total
    counts = np.floor(share).astype(int)
    for i in np.argsort(-(share - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def plan_chunks(process: str, n_jets: int, seed: int, output: Path, chunk_jets: int, tuning: Tuning) -> list[ChunkSpec]:
    """The chunk files of a run: samples, sizes, seeds and paths, a pure function of the arguments."""
    samples = [s for s in SAMPLES if s.process == process]
    counts = split_jets(n_jets, tuning.qcd_fractions) if process == "qcd" else [n_jets]
    code = PROCESSES.index(process)
    specs: list[ChunkSpec] = []
    for sample, count in zip(samples, counts):
        while count > 0:
            size = min(chunk_jets, count)
            index = len(specs)
            specs.append(ChunkSpec(process, index, sample, size, pythia_seed(seed, code, index, 1),
                                   _seed_state(seed, code, index, 2),
                                   output / f"{process}_seed{seed}_chunk{index}.root"))
            count -= size
    return specs


# The modules the generator runs, and the schema constants it reads: the rest of ``wtag.schema`` and of
# ``wtag.features`` (model inputs, tag keys, per-particle features) does not change a chunk, so editing it
# must not regenerate the samples.
GENERATOR_MODULES = ("wtag.sources.pythia", "wtag.sources.detector", "wtag.features.substructure", "wtag.jets")
GENERATOR_SCHEMA = ("TREE_NAME", "JET_R", "JET_ETA_MAX", "JET_PT_MIN", "JET_PT_MAX", "JET_BRANCHES", "EVENT_BRANCHES",
                    "INT_BRANCHES", "CAND_BRANCHES", "INT_CAND_BRANCHES", "PROCESSES")
GENERATOR_PACKAGES = ("pythia8mc", "fastjet", "numpy", "awkward", "vector")


@functools.cache
def generator_version() -> str:
    """Digest of the generator's code and physics packages; recorded in every chunk and pileup pool."""
    return code_version(GENERATOR_MODULES, GENERATOR_PACKAGES,
                        values={name: getattr(schema, name) for name in GENERATOR_SCHEMA})


def chunk_provenance(spec: ChunkSpec, config: RunConfig, version: str) -> str:
    """What decides a chunk's content, as the JSON string stored in the chunk file: a chunk is reused only
    when this matches exactly (seeds, sample, size, pileup, detector, tuning and generator code version)."""
    return json.dumps({
        "process": spec.process, "chunk": spec.index, "sample_id": spec.sample.sample_id, "n_jets": spec.n_jets,
        "pythia_seed": spec.pythia_seed, "numpy_seed": spec.numpy_seed, "seed": config.seed,
        "pileup": config.pileup, "detector": config.detector, "tuning": dataclasses.asdict(config.tuning),
        "generator": version,
    }, sort_keys=True)


def chunk_complete(spec: ChunkSpec, provenance: str) -> bool:
    """True when the chunk file exists, holds ``spec.n_jets`` jets and was made with exactly ``provenance``
    (:func:`chunk_provenance`); anything else (older code, other pileup or tuning, a truncated or foreign
    file) is regenerated."""
    if not spec.path.is_file() or read_provenance(spec.path) != provenance:
        return False
    try:
        with uproot.open(spec.path) as f:
            return f[schema.TREE_NAME].num_entries == spec.n_jets
    except Exception:  # an unreadable leftover is simply regenerated
        return False


def pool_path(output: Path, config: RunConfig) -> Path | None:
    """Where the run's pileup pool lives (None without pileup): beside the chunks, named by the digest of
    everything it derives from (seed, size, FSR alpha_s, generator version), so any change makes a new one."""
    if config.pileup <= 0:
        return None
    key = json.dumps({"seed": config.seed, "size": config.tuning.pileup_pool,
                      "fsr_alphas": config.tuning.fsr_alphas, "generator": generator_version()}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return output / "pileup" / f"minbias_seed{config.seed}_{digest}.npz"


def ensure_pool(path: Path, config: RunConfig) -> str:
    """Build the pileup pool into ``path`` (atomically) unless a readable one is there; return the path.

    One task per run: every chunk task then reads the file instead of spending ~13 s of Pythia on it.
    """
    if path.is_file():
        with contextlib.suppress(Exception):  # a damaged pool is rebuilt
            load_pool(path)
            return str(path)
    pool = make_pool(config.seed, config.tuning.pileup_pool, config.tuning.fsr_alphas)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{f.name: getattr(pool, f.name) for f in fields(MinBiasPool)})
    return str(path)


def load_pool(path: str | os.PathLike[str]) -> MinBiasPool:
    """A pool file written by :func:`ensure_pool`, read once per worker process (content-addressed name)."""
    state = worker_state()
    key = f"pileup-pool:{os.fspath(path)}"
    if key not in state:
        with np.load(path, allow_pickle=False) as data:
            state[key] = MinBiasPool(**{f.name: data[f.name] for f in fields(MinBiasPool)})
    return state[key]


def run_chunk(spec: ChunkSpec, config: RunConfig, pool_file: str | None, _after: object = None) -> ChunkStats:
    """One task: generate a chunk and write its file atomically with its provenance. ``_after`` only orders
    the task after the pool's (a Dask future's result, unused)."""
    pool = load_pool(pool_file) if pool_file else None
    jets, stats = generate_chunk(spec, config, pool)
    write_jets(spec.path, jets, provenance=chunk_provenance(spec, config, generator_version()))
    return stats


def generate(process: str, n_jets: int, seed: int, output: str | os.PathLike[str], workers: int | None = None,
             pileup: float = DEFAULT_PILEUP, detector: bool = True, chunk_jets: int = DEFAULT_CHUNK_JETS,
             progress: bool = True, scheduler: str = "", **tuning: object) -> list[Path]:
    """Generate ``n_jets`` selected jets of ``process`` into ``output/<process>_seed<S>_chunk<k>.root`` files.

    One Dask task per chunk (:mod:`wtag.execution`): on the cluster at ``scheduler`` (or Dask's configured
    address), else on a local cluster of ``workers`` processes (default all usable cores; one worker and no
    scheduler runs in this process). The pileup pool is built once, by one task, into ``output/pileup/``.
    Chunks whose file records the same provenance are kept, so an interrupted run resumes; the client then
    checks every chunk. ``tuning`` sets :class:`Tuning` fields by name. Returns the chunk paths in chunk order.
    Local workers are spawned, so a script that calls this with several workers needs the
    ``if __name__ == "__main__":`` guard.
    """
    if process not in PROCESSES:
        raise WtagError(f"unknown process {process!r}; choose one of {', '.join(PROCESSES)}")
    if isinstance(n_jets, bool) or not isinstance(n_jets, (int, np.integer)) or n_jets <= 0:
        raise WtagError(f"n_jets must be a positive integer, got {n_jets!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise WtagError(f"seed must be an integer in [0, {SEED_MAX}], got {seed!r}")
    if not (isinstance(pileup, (int, float, np.number)) and math.isfinite(pileup) and pileup >= 0):
        raise WtagError(f"pileup must be a finite number >= 0, got {pileup!r}")
    if isinstance(chunk_jets, bool) or not isinstance(chunk_jets, (int, np.integer)) or chunk_jets <= 0:
        raise WtagError(f"chunk_jets must be a positive integer, got {chunk_jets!r}")
    workers = available_cores() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers <= 0:
        raise WtagError(f"workers must be a positive integer, got {workers!r}")
    known = {f.name for f in fields(Tuning)}
    unknown = sorted(set(tuning) - known)
    if unknown:
        raise WtagError(f"unknown generator setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    config = RunConfig(int(seed), float(pileup), bool(detector), Tuning(**tuning))
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    specs = plan_chunks(process, int(n_jets), int(seed), output, int(chunk_jets), config.tuning)
    version = generator_version()
    expected = {spec.index: chunk_provenance(spec, config, version) for spec in specs}
    todo = [spec for spec in specs if not chunk_complete(spec, expected[spec.index])]
    done_jets = sum(spec.n_jets for spec in specs) - sum(spec.n_jets for spec in todo)
    pool_file = pool_path(output, config)
    with tqdm(total=int(n_jets), initial=done_jets, unit="jet", desc=f"generate {process}",
              disable=not progress) as bar:
        if todo and not scheduler_address(scheduler) and (workers == 1 or len(todo) == 1):
            pool = ensure_pool(pool_file, config) if pool_file else None
            for spec in todo:
                run_chunk(spec, config, pool)
                bar.update(spec.n_jets)
        elif todo:
            with dask_client(ExecutionConfig(scheduler, int(workers)), max_workers=len(todo),
                             quiet=not progress) as client:
                pool = (client.submit(ensure_pool, pool_file, config, key=f"pileup-pool-{pool_file.stem}",
                                      pure=False) if pool_file else None)
                run_tasks(client, run_chunk,
                          [(spec, config, str(pool_file) if pool_file else None, pool) for spec in todo],
                          on_result=lambda i, _: bar.update(todo[i].n_jets), key_prefix=f"chunk-{process}")
    bad = [spec.path.name for spec in todo if not chunk_complete(spec, expected[spec.index])]
    if bad:
        raise WtagError(f"{len(bad)} chunk file(s) missing or not as planned after the run ({', '.join(bad[:5])}); "
                        "workers must write to a filesystem this machine sees, with the same wtag code")
    return [spec.path for spec in specs]
