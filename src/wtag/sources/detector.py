"""A CMS-2011-like particle-flow response, as pure numpy functions on flat arrays of final-state particles.

Real CMS jets are clustered from particle-flow (PF) candidates, not from generator particles, and the jet images
and constituent lists the taggers see carry the detector's thresholds, resolutions and granularity. This module
turns generator-level final-state particles into PF-like candidates:

- charged particles inside the tracker (|eta| < 2.5) above the track pT threshold become tracks: charged hadrons
  (id +-211) are found with the charged-pion tracking efficiency, electrons and muons (id +-11, +-13) always;
  track pT is smeared with the tracker resolution, directions are kept;
- photons (including pi0 photons; Pythia decays the pi0) and electrons outside the tracker, inside the ECAL
  (|eta| < 3.0), become photons (id 22) with the ECAL energy resolution and the ECAL cluster threshold;
- neutral hadrons (K_L, n, ...), charged hadrons outside the tracker and charged hadrons whose track was lost
  deposit energy in HCAL towers of 0.087 x 2 pi / 72 in (eta, phi) inside |eta| < 3.0; each tower's deposit is
  smeared with the HCAL resolution, kept above the HCAL cluster threshold and becomes one neutral hadron (id 130)
  at the deposit's energy-weighted centroid (as PF cluster positions are);
- neutrinos escape; muons outside the tracker and charged particles below the track threshold (they curl up in
  the 3.8 T field before reaching the calorimeters) are lost; particles beyond |eta| = 3.0 (the forward HF
  calorimeter) are dropped: they cannot be constituents of an AK7 jet with |eta| < 2.0.

Candidates are massless (E = pt cosh(eta)), like the pt/eta/phi-only constituents of the CMS ntuples. IDs follow
those ntuples: the sign of the id is the sign of the charge (+211/+11/+13 for positive charge).
Every number is a field of :class:`DetectorModel` with its source; docs/simulation.md tabulates them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wtag.errors import WtagError

ID_CHARGED_HADRON = 211
ID_ELECTRON = 11
ID_MUON = 13
ID_PHOTON = 22
ID_NEUTRAL_HADRON = 130
NEUTRINO_IDS = (12, 14, 16)
HCAL_PHI_SEGMENTS = 72


@dataclass(frozen=True)
class DetectorModel:
    """The numbers of the CMS-2011-like response (energies and momenta in GeV).

    Sources: CMS detector paper, JINST 3 (2008) S08004 (acceptances, HCAL tower size, 3.8 T field);
    CMS tracking paper, JINST 9 (2014) P10009 (2011 track efficiency and resolution); ECAL test beam,
    JINST 2 (2007) P04004 (ECAL resolution); CMS particle-flow paper, JINST 12 (2017) P10003 (PF cluster seed
    thresholds, neutral-hadron resolution).
    """

    # Tracker acceptance (S08004: silicon tracker |eta| < 2.5).
    tracker_eta_max: float = 2.5
    # Track pT threshold: tracks below a few hundred MeV loop in the 3.8 T field and the 2011 iterative tracking
    # loses them (P10009). Against Pythia's soft spectrum, the 2011A PF charged hadrons in ../shared/data are
    # nearly absent below 0.2 GeV and about half-efficient between 0.2 and 0.3 GeV: a sharp cut at 0.25 GeV.
    track_pt_min: float = 0.25
    # Charged-pion tracking efficiency (P10009: ~0.85-0.95 for pions, lower than for muons because of nuclear
    # interactions in the tracker material); electrons and muons are always found.
    track_efficiency: float = 0.90
    # Track pT resolution sigma/pT = a (+) b pT (P10009: ~0.7% at a few GeV, ~1.5-2% at 100 GeV in the barrel).
    track_resolution_constant: float = 0.007
    track_resolution_slope: float = 1.5e-4
    # Calorimeter acceptance (S08004: ECAL and HCAL barrel + endcap |eta| < 3.0).
    calo_eta_max: float = 3.0
    # ECAL barrel/endcap boundary (S08004) and resolution sigma/E = S/sqrt(E) (+) N/E (+) C
    # (P04004 test beam: S = 2.8%, N = 0.12 GeV, C = 0.30%; used for barrel and endcap alike).
    ecal_barrel_eta_max: float = 1.479
    ecal_stochastic: float = 0.028
    ecal_noise: float = 0.12
    ecal_constant: float = 0.003
    # PF ECAL cluster seed thresholds (P10003, table 1: E > 0.23 GeV barrel, E > 0.6 GeV endcap).
    ecal_threshold_barrel: float = 0.23
    ecal_threshold_endcap: float = 0.6
    # HCAL tower size (S08004: 0.087 x 0.087, 72 towers in phi) and PF neutral-hadron resolution
    # sigma/E = S/sqrt(E) (+) C (S08004 / P10003: ~100%/sqrt(E) (+) 5%).
    hcal_tower_eta: float = 0.087
    hcal_stochastic: float = 1.0
    hcal_constant: float = 0.05
    # HCAL barrel/endcap boundary in eta (S08004: HB |eta| < 1.3) and PF HCAL cluster seed thresholds
    # (P10003, table 1: E > 0.8 GeV barrel, E > 1.1 GeV endcap; the 2011A neutral hadrons start at E = 0.80 GeV).
    hcal_barrel_eta_max: float = 1.305
    hcal_threshold_barrel: float = 0.8
    hcal_threshold_endcap: float = 1.1

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not np.isfinite(value) or value < 0:
                raise WtagError(f"detector model: {name} must be a finite number >= 0, got {value}")
        if self.track_efficiency > 1:
            raise WtagError(f"detector model: track_efficiency must be <= 1, got {self.track_efficiency}")
        if self.hcal_tower_eta <= 0:
            raise WtagError(f"detector model: hcal_tower_eta must be > 0, got {self.hcal_tower_eta}")


def track_resolution(pt: np.ndarray, model: DetectorModel) -> np.ndarray:
    """Absolute track pT resolution sigma(pT) in GeV."""
    pt = np.asarray(pt, dtype=np.float64)
    return pt * np.hypot(model.track_resolution_constant, model.track_resolution_slope * pt)


def ecal_resolution(energy: np.ndarray, model: DetectorModel) -> np.ndarray:
    """Absolute ECAL energy resolution sigma(E) in GeV: S sqrt(E) (+) N (+) C E."""
    energy = np.asarray(energy, dtype=np.float64)
    return np.sqrt(model.ecal_stochastic**2 * energy + model.ecal_noise**2 + (model.ecal_constant * energy) ** 2)


def hcal_resolution(energy: np.ndarray, model: DetectorModel) -> np.ndarray:
    """Absolute HCAL (PF neutral hadron) energy resolution sigma(E) in GeV: S sqrt(E) (+) C E."""
    energy = np.asarray(energy, dtype=np.float64)
    return np.sqrt(model.hcal_stochastic**2 * energy + (model.hcal_constant * energy) ** 2)


def smear(values: np.ndarray, sigma: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian smearing, values + sigma * N(0, 1); thresholds applied afterwards remove what goes negative."""
    values = np.asarray(values, dtype=np.float64)
    return values + np.asarray(sigma, dtype=np.float64) * rng.standard_normal(values.shape)


def wrap_phi(phi: np.ndarray) -> np.ndarray:
    """Azimuth wrapped into [-pi, pi)."""
    return np.mod(np.asarray(phi, dtype=np.float64) + np.pi, 2 * np.pi) - np.pi


def merge_towers(event: np.ndarray, eta: np.ndarray, phi: np.ndarray, energy: np.ndarray,
                 model: DetectorModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sum energy deposits into HCAL towers per event; returns (event, eta, phi, energy) per non-empty tower.

    The tower direction is the energy-weighted centroid of its deposits (computed from offsets to the tower
    centre, so it is exact across the phi = +-pi seam); the energy is the exact sum, ordered by (event, tower).
    """
    event = np.asarray(event, dtype=np.int64)
    eta = np.asarray(eta, dtype=np.float64)
    phi = wrap_phi(phi)
    energy = np.asarray(energy, dtype=np.float64)
    if len(event) == 0:
        return event, eta, phi, energy
    dphi_tower = 2 * np.pi / HCAL_PHI_SEGMENTS
    ieta = np.floor(eta / model.hcal_tower_eta).astype(np.int64)
    iphi = np.floor((phi + np.pi) / dphi_tower).astype(np.int64) % HCAL_PHI_SEGMENTS
    n_eta = int(ieta.max() - ieta.min()) + 1
    key = (event * n_eta + (ieta - ieta.min())) * HCAL_PHI_SEGMENTS + iphi
    keys, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse, weights=energy, minlength=len(keys))
    tower_ieta = (keys // HCAL_PHI_SEGMENTS) % n_eta + ieta.min()
    tower_iphi = keys % HCAL_PHI_SEGMENTS
    eta_centre = (tower_ieta + 0.5) * model.hcal_tower_eta
    phi_centre = (tower_iphi + 0.5) * dphi_tower - np.pi
    safe_total = np.where(total > 0, total, 1.0)
    weight = np.where(total[inverse] > 0, energy / safe_total[inverse], 0.0)
    deta = np.bincount(inverse, weights=weight * (eta - eta_centre[inverse]), minlength=len(keys))
    dphi = np.bincount(inverse, weights=weight * wrap_phi(phi - phi_centre[inverse]), minlength=len(keys))
    tower_eta = eta_centre + deta
    tower_phi = wrap_phi(phi_centre + dphi)
    return keys // (n_eta * HCAL_PHI_SEGMENTS), tower_eta, tower_phi, total


def _is_baryon(pid: np.ndarray) -> np.ndarray:
    apid = np.abs(pid)
    return (apid >= 1000) & (apid < 10000) & ((apid // 1000) % 10 > 0)


def respond(event: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray, pid: np.ndarray,
            charge: np.ndarray, rng: np.random.Generator, model: DetectorModel) -> dict[str, np.ndarray]:
    """PF-like candidates from final-state particles (flat arrays; ``event`` numbers the event of each particle).

    Returns flat arrays ``event`` (int64, sorted), ``pt``, ``eta``, ``phi`` (float64), ``id`` and ``charge``
    (int32), one entry per candidate.
    """
    event = np.asarray(event, dtype=np.int64)
    px, py, pz, e = (np.asarray(a, dtype=np.float64) for a in (px, py, pz, e))
    pid = np.asarray(pid, dtype=np.int64)
    charge = np.asarray(charge, dtype=np.float64)
    pt = np.hypot(px, py)
    visible = (pt > 0) & ~np.isin(np.abs(pid), NEUTRINO_IDS)
    event, px, py, pz, e, pid, charge, pt = (a[visible] for a in (event, px, py, pz, e, pid, charge, pt))
    eta = np.arcsinh(pz / pt)
    phi = np.arctan2(py, px)
    abs_eta = np.abs(eta)
    apid = np.abs(pid)
    charged = charge != 0
    lepton = (apid == ID_ELECTRON) | (apid == ID_MUON)
    in_tracker = abs_eta < model.tracker_eta_max
    in_calo = abs_eta < model.calo_eta_max

    found = rng.random(len(pt)) < model.track_efficiency
    track = charged & in_tracker & (pt > model.track_pt_min) & (lepton | found)
    lost_track = charged & in_tracker & (pt > model.track_pt_min) & ~lepton & ~found
    to_ecal = in_calo & ((pid == ID_PHOTON) | ((apid == ID_ELECTRON) & ~in_tracker))
    to_hcal = in_calo & ~lepton & (pid != ID_PHOTON) & ((~charged) | ~in_tracker | lost_track)

    sign = np.where(charge[track] > 0, 1, -1)
    track_id = sign * np.where(lepton[track], apid[track], ID_CHARGED_HADRON)
    track_pt = smear(pt[track], track_resolution(pt[track], model), rng)
    track_ok = track_pt > 0

    ecal_e = smear(e[to_ecal], ecal_resolution(e[to_ecal], model), rng)
    ecal_eta = eta[to_ecal]
    ecal_threshold = np.where(np.abs(ecal_eta) < model.ecal_barrel_eta_max,
                              model.ecal_threshold_barrel, model.ecal_threshold_endcap)
    ecal_ok = ecal_e > ecal_threshold

    # Calorimeters see a baryon's kinetic energy and an antibaryon's kinetic energy plus its annihilation.
    mass = np.sqrt(np.maximum(e * e - pt * pt - pz * pz, 0.0))
    deposit = e - np.where(_is_baryon(pid), np.sign(pid) * mass, 0.0)
    t_event, t_eta, t_phi, t_e = merge_towers(event[to_hcal], eta[to_hcal], phi[to_hcal], deposit[to_hcal], model)
    t_e = smear(t_e, hcal_resolution(t_e, model), rng)
    hcal_threshold = np.where(np.abs(t_eta) < model.hcal_barrel_eta_max,
                              model.hcal_threshold_barrel, model.hcal_threshold_endcap)
    hcal_ok = t_e > hcal_threshold

    out_event = np.concatenate([event[track][track_ok], event[to_ecal][ecal_ok], t_event[hcal_ok]])
    out_pt = np.concatenate([track_pt[track_ok], ecal_e[ecal_ok] / np.cosh(ecal_eta[ecal_ok]),
                             t_e[hcal_ok] / np.cosh(t_eta[hcal_ok])])
    out_eta = np.concatenate([eta[track][track_ok], ecal_eta[ecal_ok], t_eta[hcal_ok]])
    out_phi = np.concatenate([phi[track][track_ok], phi[to_ecal][ecal_ok], t_phi[hcal_ok]])
    out_id = np.concatenate([track_id[track_ok], np.full(int(ecal_ok.sum()), ID_PHOTON),
                             np.full(int(hcal_ok.sum()), ID_NEUTRAL_HADRON)])
    out_charge = np.concatenate([sign[track_ok], np.zeros(int(ecal_ok.sum()) + int(hcal_ok.sum()), dtype=np.int64)])
    order = np.argsort(out_event, kind="stable")
    return {
        "event": out_event[order],
        "pt": out_pt[order],
        "eta": out_eta[order],
        "phi": out_phi[order],
        "id": out_id[order].astype(np.int32),
        "charge": out_charge[order].astype(np.int32),
    }


def truth(event: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray, pid: np.ndarray,
          charge: np.ndarray) -> dict[str, np.ndarray]:
    """Particle-level candidates (no detector: every visible particle, massless, ids in the ntuple convention).

    Used for ``detector=False`` so the same clustering and substructure run on generator particles.
    """
    event = np.asarray(event, dtype=np.int64)
    px, py, pz = (np.asarray(a, dtype=np.float64) for a in (px, py, pz))
    pid = np.asarray(pid, dtype=np.int64)
    charge = np.asarray(charge, dtype=np.float64)
    pt = np.hypot(px, py)
    visible = (pt > 0) & ~np.isin(np.abs(pid), NEUTRINO_IDS)
    apid = np.abs(pid[visible])
    q = charge[visible]
    lepton = (apid == ID_ELECTRON) | (apid == ID_MUON)
    sign = np.where(q > 0, 1, -1)
    ids = np.where(q != 0, sign * np.where(lepton, apid, ID_CHARGED_HADRON),
                   np.where(pid[visible] == ID_PHOTON, ID_PHOTON, ID_NEUTRAL_HADRON))
    return {
        "event": event[visible],
        "pt": pt[visible],
        "eta": np.arcsinh(pz[visible] / pt[visible]),
        "phi": np.arctan2(py[visible], px[visible]),
        "id": ids.astype(np.int32),
        "charge": np.where(q != 0, sign, 0).astype(np.int32),
    }
