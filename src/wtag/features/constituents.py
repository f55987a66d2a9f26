"""Padded, pT-ordered constituent lists: the input of the recurrent and particle-based taggers.

Columns follow ``schema.PARTICLE_FEATURES``. ``log_pt_rel`` is log(pT / jet pT) with the jet pT taken as the pT of
the constituents' four-vector sum, not the stored (JES-corrected, for CMS) ``jet_pt_ak7``, so simulated and
real jets give the same value for the same constituents; ``deta``/``dphi`` are relative to the given jet axis.
The grooming columns come from the soft drop that defines ``jet_msd_ak7``
(:func:`wtag.features.substructure.softdrop_prongs`), so a particle model sees which particles make the groomed
mass; ``log_n`` counts every constituent, also those beyond the padded list's ``max_particles``.
"""
from __future__ import annotations

import awkward as ak
import numpy as np

from wtag import schema
from wtag.errors import WtagError
from wtag.features.substructure import delta_phi, flat_constituents, softdrop_prongs

# |PDG id| -> feature column set to 1; other ids fall back on the charge (charged or neutral hadron).
FLAG_BY_ID = {
    211: "is_charged_hadron",
    130: "is_neutral_hadron",
    22: "is_photon",
    11: "is_electron",
    13: "is_muon",
}


def _log_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """log(num / den) where both are positive, else 0 (a zero-pT entry is padding, not a particle)."""
    ok = (num > 0) & (den > 0)
    out = np.zeros(len(num))
    np.log(np.divide(num, den, out=np.ones(len(num)), where=ok), out=out, where=ok)
    return out


def particle_features(
    pt: ak.Array,
    eta: ak.Array,
    phi: ak.Array,
    pid: ak.Array,
    charge: ak.Array,
    jet_eta: np.ndarray,
    jet_phi: np.ndarray,
    max_particles: int = schema.MAX_PARTICLES,
) -> np.ndarray:
    """(N, max_particles, len(PARTICLE_FEATURES)) float32, hardest first, zero-padded and truncated.

    Padding rows are all zero; real constituents have pt > 0, so ``pt > 0`` is the mask.
    """
    if max_particles < 1:
        raise WtagError(f"max_particles must be at least 1, got {max_particles}")
    pt_f, eta_f, phi_f, counts = flat_constituents(pt, eta, phi)
    pid, charge = ak.Array(pid), ak.Array(charge)
    for name, values in (("id", pid), ("charge", charge)):
        if len(values) != len(counts) or not np.array_equal(ak.to_numpy(ak.num(values, axis=1)), counts):
            raise WtagError(f"constituent {name} does not have the same entries per jet as pt")
    jet_eta = np.asarray(jet_eta, dtype=np.float64).reshape(-1)
    jet_phi = np.asarray(jet_phi, dtype=np.float64).reshape(-1)
    if len(jet_eta) != len(counts) or len(jet_phi) != len(counts):
        raise WtagError(f"jet_eta/jet_phi have {len(jet_eta)}/{len(jet_phi)} entries for {len(counts)} jets")
    pid_f = np.abs(ak.to_numpy(ak.flatten(pid, axis=1)).astype(np.int64))
    charge_f = ak.to_numpy(ak.flatten(charge, axis=1)).astype(np.float64)

    n_jets = len(counts)
    jet = np.repeat(np.arange(n_jets), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    # Hardest first within each jet; stable, so equal pT keep their input order.
    order = np.lexsort((-pt_f, jet))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - starts[jet[order]]
    keep = rank < max_particles

    prong, axes = softdrop_prongs(pt, eta, phi)
    jet_pt = np.hypot(
        np.bincount(jet, weights=pt_f * np.cos(phi_f), minlength=n_jets),
        np.bincount(jet, weights=pt_f * np.sin(phi_f), minlength=n_jets),
    )
    deta = eta_f - jet_eta[jet]
    dphi = delta_phi(phi_f - jet_phi[jet])
    columns = {
        "pt": pt_f,
        "deta": deta,
        "dphi": dphi,
        "log_pt_rel": _log_ratio(pt_f, jet_pt[jet]),
        "dr": np.hypot(deta, dphi),
        "charge": charge_f,
        "log_pt": _log_ratio(pt_f, np.ones(len(pt_f))),
        "log_e": _log_ratio(pt_f * np.cosh(eta_f), np.ones(len(pt_f))),
        "in_softdrop": (prong > 0).astype(np.float64),
        "prong": np.select([prong == 1, prong == 2], [1.0, -1.0], 0.0),
        "dr_prong1": np.hypot(eta_f - axes[jet, 0, 0], delta_phi(phi_f - axes[jet, 0, 1])),
        "dr_prong2": np.hypot(eta_f - axes[jet, 1, 0], delta_phi(phi_f - axes[jet, 1, 1])),
        "log_n": np.log(counts[jet].astype(np.float64)),
        "jet_eta": jet_eta[jet],
    }
    known = np.zeros(len(pt_f), dtype=bool)
    for code, name in FLAG_BY_ID.items():
        columns[name] = (pid_f == code).astype(np.float64)
        known |= pid_f == code
    columns["is_charged_hadron"] = np.where(~known & (charge_f != 0), 1.0, columns["is_charged_hadron"])
    columns["is_neutral_hadron"] = np.where(~known & (charge_f == 0), 1.0, columns["is_neutral_hadron"])

    out = np.zeros((n_jets, max_particles, len(schema.PARTICLE_FEATURES)), dtype=np.float32)
    for k, name in enumerate(schema.PARTICLE_FEATURES):
        out[jet[keep], rank[keep], k] = columns[name][keep]
    return out


def jets_particle_features(jets: ak.Array, max_particles: int = schema.MAX_PARTICLES) -> np.ndarray:
    """:func:`particle_features` of a canonical jet array, relative to its ``jet_eta_ak7``/``jet_phi_ak7`` axis."""
    return particle_features(
        jets["ak7pfcand_pt"],
        jets["ak7pfcand_eta"],
        jets["ak7pfcand_phi"],
        jets["ak7pfcand_id"],
        jets["ak7pfcand_charge"],
        ak.to_numpy(jets["jet_eta_ak7"]),
        ak.to_numpy(jets["jet_phi_ak7"]),
        max_particles=max_particles,
    )
