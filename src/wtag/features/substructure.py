"""Jet four-vector, soft-drop mass and N-subjettiness from a jet's constituents, via FastJet.

Constituents are massless (the CMS ntuples carry only pt, eta, phi, id, charge): E = pt cosh(eta). Conventions:

- four-vector quantities (``jet_pt/eta/phi/E/mass_ak7``): E-scheme sum of the constituents;
- ``jet_msd_ak7``: soft drop in grooming mode, beta = 0, z_cut = 0.1 (R0 = 0.7, irrelevant at beta = 0), on the
  Cambridge/Aachen reclustering of all the jet's constituents into one tree; when no declustering passes, the
  groomed jet is the hardest single constituent and msd = 0;
- ``jet_tau{1,2,3}_ak7``: N-subjettiness with fjcontrib's ``NormalizedMeasure(beta=1, R0=0.7)`` and ``KT_Axes``
  (exclusive-kT axes with E-scheme recombination, no minimisation):
  tau_N = sum_i pt_i min_k dR(i, axis_k) / (R0 sum_i pt_i), dR in rapidity-azimuth. CMS used the same measure;
  ``KT_Axes`` rather than ``OnePass_KT_Axes`` keeps tau_N a closed-form function of the constituents (testable
  against a plain-numpy reference, and 2-3x faster than fastjet's ``njettiness``); the ratios tau21 and tau32
  do not depend on the normalisation. Without the minimisation tau21 can exceed 1 (3.4% of the real 2011A jets,
  at most 1.18); with ``OnePass_KT_Axes`` it would be about 0.05 lower on average;
- jets with fewer than two constituents have msd = mass and every tau and ratio = 0.
"""
from __future__ import annotations

import warnings

import awkward as ak
import fastjet
import numpy as np

from wtag import schema
from wtag.errors import WtagError

SOFTDROP_BETA = 0.0
SOFTDROP_ZCUT = 0.1
NSUB_BETA = 1.0
NSUB_R0 = schema.JET_R
# C/A radius for reclustering one jet's constituents: large enough that every pair merges into one tree
# whatever the input (an AK7 jet spans at most dR = 1.4).
RECLUSTER_R = 1000.0
# fjcontrib's KT_Axes: exclusive kT jets with R = JetDefinition::max_allowable_R, E-scheme recombination.
KT_AXES_R = 1000.0

# Every per-jet branch computable from the constituents: all of schema.JET_BRANCHES but the label and weight.
SUBSTRUCTURE_FIELDS = tuple(b for b in schema.JET_BRANCHES if b not in ("jet_isW_ak7", "weight"))


def delta_phi(phi: np.ndarray) -> np.ndarray:
    """Wrap azimuthal differences into (-pi, pi], exactly for inputs already in (-3 pi, 3 pi]."""
    phi = np.asarray(phi, dtype=np.float64)
    phi = np.where(np.abs(phi) > 3 * np.pi, np.mod(phi + np.pi, 2 * np.pi) - np.pi, phi)
    phi = np.where(phi > np.pi, phi - 2 * np.pi, phi)
    return np.where(phi <= -np.pi, phi + 2 * np.pi, phi)


def safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, and 0 where den == 0 (a ratio of taus is 0 when the jet has too few constituents)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def flat_constituents(pt: ak.Array, eta: ak.Array, phi: ak.Array) -> tuple[np.ndarray, ...]:
    """Flatten jagged constituent arrays to float64 numpy plus per-jet counts; mismatched shapes are a WtagError."""
    pt, eta, phi = ak.Array(pt), ak.Array(eta), ak.Array(phi)
    if not (len(pt) == len(eta) == len(phi)):
        raise WtagError(
            f"constituent arrays have different numbers of jets: pt {len(pt)}, eta {len(eta)}, phi {len(phi)}"
        )
    if pt.ndim != 2 or eta.ndim != 2 or phi.ndim != 2:
        raise WtagError("constituent arrays must hold one list of constituents per jet")
    counts = ak.to_numpy(ak.num(pt, axis=1)).astype(np.int64)
    if any(not np.array_equal(counts, ak.to_numpy(ak.num(a, axis=1))) for a in (eta, phi)):
        raise WtagError("constituent pt, eta and phi have different numbers of entries per jet")
    flat = [np.asarray(ak.to_numpy(ak.flatten(a, axis=1)), dtype=np.float64) for a in (pt, eta, phi)]
    return flat[0], flat[1], flat[2], counts


def _four_vector(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, ...]:
    return pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), pt * np.cosh(eta)


def _segment_sum(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    jet = np.repeat(np.arange(len(counts)), counts)
    return np.bincount(jet, weights=values, minlength=len(counts))


def _groomed_trees(px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray, offsets: np.ndarray,
                   jets: np.ndarray):
    """For each listed jet (two or more constituents): (position in ``jets``, groomed node, its two prongs), the
    prongs None when no declustering passes soft drop (the groomed jet is then its hardest single constituent).

    fastjet's awkward ``exclusive_jets_softdrop_grooming`` costs about 2 ms per jet, so this builds each jet's C/A
    tree with FastJet's classic (SWIG) interface and walks it in Python. The constituents are made with SWIG's
    low-level ``new_PseudoJet``: 15x cheaper than the proxy class, and 3x cheaper to hand to ``ClusterSequence``.
    A yielded node lives only until the next one: its ClusterSequence is replaced then.
    """
    definition = fastjet.JetDefinition(fastjet.cambridge_algorithm, RECLUSTER_R)
    new_pseudojet = fastjet._swig._fastjet_swig.new_PseudoJet
    momenta = list(zip(px.tolist(), py.tolist(), pz.tolist(), e.tolist()))
    parent1, parent2 = fastjet.PseudoJet(), fastjet.PseudoJet()
    for k, jet in enumerate(jets.tolist()):
        particles = [new_pseudojet(*p) for p in momenta[offsets[jet] : offsets[jet + 1]]]
        sequence = fastjet.ClusterSequence(particles, definition)  # must outlive the walk over its tree
        node = sequence.exclusive_jets(1)[0]
        prongs = None
        while node.has_parents(parent1, parent2):
            pt1, pt2 = parent1.pt(), parent2.pt()
            if min(pt1, pt2) / (pt1 + pt2) > SOFTDROP_ZCUT:
                prongs = (parent1, parent2) if pt1 >= pt2 else (parent2, parent1)
                break
            node = fastjet.PseudoJet(parent1 if pt1 >= pt2 else parent2)
        yield k, node, prongs


def _softdrop_mass(
    px: np.ndarray, py: np.ndarray, pz: np.ndarray, e: np.ndarray, offsets: np.ndarray, jets: np.ndarray
) -> np.ndarray:
    """Soft-drop mass of each listed jet (two or more constituents); 0 when no declustering passes."""
    out = np.zeros(len(jets))
    for k, node, prongs in _groomed_trees(px, py, pz, e, offsets, jets):
        if prongs is not None:
            out[k] = np.sqrt(max(node.m2(), 0.0))
    return out


def softdrop_prongs(pt: ak.Array, eta: ak.Array, phi: ak.Array) -> tuple[np.ndarray, np.ndarray]:
    """Which soft-drop prong each constituent belongs to, and the prong axes, with the grooming of ``jet_msd_ak7``.

    Returns ``prong`` (flat, one entry per constituent in input order): 1 in the harder prong of the groomed jet,
    2 in the softer, 0 removed by grooming; and ``axes`` (N, 2, 2): (eta, phi) of the harder and softer prong.
    A jet whose grooming keeps a single constituent has that constituent as prong 1 and both axes on it; a jet
    without constituents has axes 0.
    """
    pt_f, eta_f, phi_f, counts = flat_constituents(pt, eta, phi)
    px, py, pz, e = _four_vector(pt_f, eta_f, phi_f)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    prong = np.zeros(len(pt_f), dtype=np.int8)
    axes = np.zeros((len(counts), 2, 2))
    single = np.flatnonzero(counts == 1)
    prong[offsets[single]] = 1
    axes[single] = np.stack([eta_f[offsets[single]], phi_f[offsets[single]]], axis=-1)[:, None, :]
    many = np.flatnonzero(counts >= 2)
    for k, node, prongs in _groomed_trees(px, py, pz, e, offsets, many):
        first = offsets[many[k]]
        for index, subjet in enumerate(prongs if prongs is not None else (node,)):
            # An input particle's history index is its position in the list given to ClusterSequence.
            prong[[first + c.cluster_hist_index() for c in subjet.constituents()]] = index + 1
            axes[many[k], index:] = subjet.eta(), subjet.phi_std()
    return prong, axes


def _exclusive_jets_up_to(cluster: fastjet.ClusterSequence, n: int) -> ak.Array:
    """``cluster.exclusive_jets_up_to(n)`` without fastjet's side effects.

    fastjet compares the JetDefinition object with algorithm enums, so it warns "interpret with care" even for kT,
    and it replaces ``warnings.formatwarning`` for the whole process while doing so; both are undone here.
    """
    formatwarning = warnings.formatwarning
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="dcut and exclusive jets", category=UserWarning)
            return cluster.exclusive_jets_up_to(n)
    finally:
        warnings.formatwarning = formatwarning


def _nsubjettiness(
    pt: np.ndarray, rap: np.ndarray, phi: np.ndarray, px: np.ndarray, py: np.ndarray, pz: np.ndarray,
    e: np.ndarray, counts: np.ndarray, n_axes: tuple[int, ...],
) -> np.ndarray:
    """tau_N per jet for each N in ``n_axes``, with exclusive-kT axes from FastJet and the measure in numpy."""
    n_jets = len(counts)
    jet = np.repeat(np.arange(n_jets), counts)
    cands = ak.unflatten(ak.zip({"px": px, "py": py, "pz": pz, "E": e}, with_name="Momentum4D"), counts)
    cluster = fastjet.ClusterSequence(cands, fastjet.JetDefinition(fastjet.kt_algorithm, KT_AXES_R))
    norm = NSUB_R0**NSUB_BETA * np.bincount(jet, weights=pt, minlength=n_jets)
    taus = np.zeros((n_jets, len(n_axes)))
    for column, n in enumerate(n_axes):
        axes = _exclusive_jets_up_to(cluster, n)
        n_found = ak.to_numpy(ak.num(axes))
        axes = ak.flatten(axes)
        ax_px, ax_py, ax_pz, ax_e = (
            np.asarray(ak.to_numpy(axes[f]), dtype=np.float64) for f in ("px", "py", "pz", "E")
        )
        ax_rap = 0.5 * np.log((ax_e + ax_pz) / (ax_e - ax_pz))
        ax_phi = np.arctan2(ax_py, ax_px)
        first = np.concatenate([[0], np.cumsum(n_found)[:-1]])
        nearest = np.full(len(pt), np.inf)
        for k in range(n):
            has_axis = (n_found > k)[jet]
            index = np.where(has_axis, first[jet] + k, 0)
            dr = np.hypot(rap - ax_rap[index], delta_phi(phi - ax_phi[index])) ** NSUB_BETA
            nearest = np.where(has_axis, np.minimum(nearest, dr), nearest)
        taus[:, column] = safe_ratio(np.bincount(jet, weights=pt * nearest, minlength=n_jets), norm)
        taus[counts <= n, column] = 0.0
    return taus


def substructure(pt: ak.Array, eta: ak.Array, phi: ak.Array) -> dict[str, np.ndarray]:
    """Per-jet four-vector, soft-drop mass, N-subjettiness and constituent count from jagged constituents.

    Returns float64 arrays keyed by the ROOT branch names (``jet_ncand_ak7`` is int32), one entry per jet, so the
    generator, the importers and the server compute the same numbers from the same constituents.
    """
    pt_f, eta_f, phi_f, counts = flat_constituents(pt, eta, phi)
    n_jets = len(counts)
    px, py, pz, e = _four_vector(pt_f, eta_f, phi_f)
    jpx, jpy, jpz, je = (_segment_sum(v, counts) for v in (px, py, pz, e))
    jpt = np.hypot(jpx, jpy)
    jeta = np.zeros(n_jets)
    np.arcsinh(jpz / np.where(jpt > 0, jpt, 1.0), out=jeta, where=jpt > 0)
    jphi = np.arctan2(jpy, jpx)
    mass = np.where(counts >= 2, np.sqrt(np.maximum(je**2 - jpx**2 - jpy**2 - jpz**2, 0.0)), 0.0)

    msd = mass.copy()
    taus = np.zeros((n_jets, 3))
    many = counts >= 2
    if np.any(many):
        offsets = np.concatenate([[0], np.cumsum(counts)])
        msd[many] = _softdrop_mass(px, py, pz, e, offsets, np.flatnonzero(many))
        keep = np.repeat(many, counts)
        taus[many] = _nsubjettiness(
            pt_f[keep], eta_f[keep], phi_f[keep], px[keep], py[keep], pz[keep], e[keep], counts[many], (1, 2, 3)
        )
    return {
        "jet_pt_ak7": jpt,
        "jet_eta_ak7": jeta,
        "jet_phi_ak7": jphi,
        "jet_E_ak7": je,
        "jet_mass_ak7": mass,
        "jet_msd_ak7": msd,
        "jet_tau1_ak7": taus[:, 0].copy(),
        "jet_tau2_ak7": taus[:, 1].copy(),
        "jet_tau3_ak7": taus[:, 2].copy(),
        "jet_tau21_ak7": safe_ratio(taus[:, 1], taus[:, 0]),
        "jet_tau32_ak7": safe_ratio(taus[:, 2], taus[:, 1]),
        "jet_ncand_ak7": counts.astype(np.int32),
    }


def jets_substructure(jets: ak.Array) -> dict[str, np.ndarray]:
    """:func:`substructure` of a canonical jet array's constituents."""
    return substructure(jets["ak7pfcand_pt"], jets["ak7pfcand_eta"], jets["ak7pfcand_phi"])
