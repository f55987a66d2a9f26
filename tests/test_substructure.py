"""Substructure against independent plain-Python references (kT axes, C/A soft drop) and fastjet's own contribs."""
from __future__ import annotations

import itertools
import math

import awkward as ak
import fastjet
import numpy as np
import pytest

from wtag.errors import WtagError
from wtag.features.substructure import delta_phi, jets_substructure, safe_ratio, softdrop_prongs, substructure


def _p4(pt: float, eta: float, phi: float) -> np.ndarray:
    return np.array([pt * math.cos(phi), pt * math.sin(phi), pt * math.sinh(eta), pt * math.cosh(eta)])


def _rap(p: np.ndarray) -> float:
    return 0.5 * math.log((p[3] + p[2]) / (p[3] - p[2]))


def _phi(p: np.ndarray) -> float:
    return math.atan2(p[1], p[0])


def _dr2(a: np.ndarray, b: np.ndarray) -> float:
    dphi = abs(_phi(a) - _phi(b))
    dphi = min(dphi, 2 * math.pi - dphi)
    return (_rap(a) - _rap(b)) ** 2 + dphi**2


def _pt(p: np.ndarray) -> float:
    return math.hypot(p[0], p[1])


def _mass(p: np.ndarray) -> float:
    return math.sqrt(max(p[3] ** 2 - p[0] ** 2 - p[1] ** 2 - p[2] ** 2, 0.0))


def _ref_kt_axes(particles: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Exclusive kT jets (E-scheme, no beam distance: R -> infinity), merged pair by pair in plain Python."""
    jets = [p.copy() for p in particles]
    while len(jets) > n:
        i, j = min(
            itertools.combinations(range(len(jets)), 2),
            key=lambda ij: min(_pt(jets[ij[0]]) ** 2, _pt(jets[ij[1]]) ** 2) * _dr2(jets[ij[0]], jets[ij[1]]),
        )
        merged = jets[i] + jets[j]
        jets = [p for k, p in enumerate(jets) if k not in (i, j)] + [merged]
    return jets


def _ref_tau(particles: list[np.ndarray], n: int, r0: float = 0.7) -> float:
    if len(particles) <= n:
        return 0.0
    axes = _ref_kt_axes(particles, n)
    num = sum(_pt(p) * min(math.sqrt(_dr2(p, a)) for a in axes) for p in particles)
    return num / (r0 * sum(_pt(p) for p in particles))


def _ref_softdrop(particles: list[np.ndarray], zcut: float = 0.1) -> float:
    """C/A tree by brute force, then decluster along the harder branch until min(pt)/sum(pt) > zcut."""
    nodes: list[tuple[np.ndarray, tuple[int, int] | None]] = [(p.copy(), None) for p in particles]
    alive = list(range(len(nodes)))
    while len(alive) > 1:
        i, j = min(itertools.combinations(alive, 2), key=lambda ij: _dr2(nodes[ij[0]][0], nodes[ij[1]][0]))
        nodes.append((nodes[i][0] + nodes[j][0], (i, j)))
        alive = [k for k in alive if k not in (i, j)] + [len(nodes) - 1]
    node = alive[0]
    while nodes[node][1] is not None:
        a, b = nodes[node][1]
        pa, pb = _pt(nodes[a][0]), _pt(nodes[b][0])
        if min(pa, pb) / (pa + pb) > zcut:
            return _mass(nodes[node][0])
        node = a if pa >= pb else b
    return 0.0


def _random_jets(rng: np.random.Generator, n_jets: int, max_n: int = 30, phi0: float = 0.4):
    """Two-prong-ish jets with a soft spray, so soft drop stops at different depths."""
    pts, etas, phis = [], [], []
    for _ in range(n_jets):
        n = int(rng.integers(3, max_n + 1))
        prong = rng.integers(0, 2, n)
        centre_eta = np.where(prong == 0, 0.0, rng.uniform(-0.4, 0.4))
        centre_phi = np.where(prong == 0, 0.0, rng.uniform(-0.4, 0.4))
        pts.append(rng.exponential(15.0, n) * rng.choice([0.2, 1.0], n) + 0.5)
        etas.append(0.3 + centre_eta + rng.normal(0, 0.08, n))
        phis.append(delta_phi(phi0 + centre_phi + rng.normal(0, 0.08, n)))
    return ak.Array(pts), ak.Array(etas), ak.Array(phis)


def _particles(pt, eta, phi, i: int) -> list[np.ndarray]:
    return [_p4(a, b, c) for a, b, c in zip(pt[i].to_list(), eta[i].to_list(), phi[i].to_list())]


def test_tau_n_matches_plain_python_exclusive_kt_reference():
    rng = np.random.default_rng(11)
    pt, eta, phi = _random_jets(rng, 8)
    out = substructure(pt, eta, phi)
    for i in range(len(pt)):
        particles = _particles(pt, eta, phi, i)
        for n in (1, 2, 3):
            ref = _ref_tau(particles, n)
            assert out[f"jet_tau{n}_ak7"][i] == pytest.approx(ref, rel=1e-6, abs=1e-12)
        assert out["jet_tau21_ak7"][i] == pytest.approx(_ref_tau(particles, 2) / _ref_tau(particles, 1), rel=1e-6)


def test_tau1_axis_is_the_jet_four_vector():
    # For N = 1 the exclusive-kT axis is the E-scheme sum of everything: a fully independent check.
    pt, eta, phi = ak.Array([[100.0, 40.0, 10.0]]), ak.Array([[0.0, 0.3, -0.2]]), ak.Array([[0.0, 0.1, 0.25]])
    particles = _particles(pt, eta, phi, 0)
    axis = sum(particles)
    expected = sum(_pt(p) * math.sqrt(_dr2(p, axis)) for p in particles) / (0.7 * 150.0)
    assert substructure(pt, eta, phi)["jet_tau1_ak7"][0] == pytest.approx(expected, rel=1e-9)


def test_softdrop_matches_plain_python_ca_reference():
    rng = np.random.default_rng(7)
    pt, eta, phi = _random_jets(rng, 10)
    out = substructure(pt, eta, phi)
    refs = [_ref_softdrop(_particles(pt, eta, phi, i)) for i in range(len(pt))]
    assert np.allclose(out["jet_msd_ak7"], refs, rtol=1e-6, atol=1e-9)
    # The sample exercises both outcomes: groomed to a single constituent and a kept two-prong.
    assert any(r == 0.0 for r in refs) or any(r < m - 1e-6 for r, m in zip(refs, out["jet_mass_ak7"]))
    assert any(r > 1.0 for r in refs)


def test_matches_fastjet_contrib_softdrop_and_njettiness():
    rng = np.random.default_rng(3)
    pt, eta, phi = _random_jets(rng, 40, max_n=60, phi0=3.05)  # straddles phi = pi
    out = substructure(pt, eta, phi)
    p4 = ak.zip(
        {"px": pt * np.cos(phi), "py": pt * np.sin(phi), "pz": pt * np.sinh(eta), "E": pt * np.cosh(eta)},
        with_name="Momentum4D",
    )
    cluster = fastjet.ClusterSequence(p4, fastjet.JetDefinition(fastjet.cambridge_algorithm, 1000.0))
    taus = ak.to_numpy(cluster.njettiness(axes_definition="KT_Axes", njets=[1, 2, 3], beta=1.0, R0=0.7))
    msd = ak.to_numpy(cluster.exclusive_jets_softdrop_grooming(njets=1, beta=0.0, symmetry_cut=0.1, R0=0.7).msoftdrop)
    for n in (1, 2, 3):
        assert np.allclose(out[f"jet_tau{n}_ak7"], taus[:, n - 1], rtol=1e-9, atol=1e-12)
    # fastjet reports a groomed single massless constituent with a rounding-level mass; we report 0.
    assert np.allclose(out["jet_msd_ak7"], msd, rtol=1e-9, atol=1e-5)


def test_four_vector_of_two_massless_constituents():
    pt, eta, phi = ak.Array([[120.0, 80.0]]), ak.Array([[0.5, 0.2]]), ak.Array([[3.1, -3.0]])
    out = substructure(pt, eta, phi)
    dphi = 2 * math.pi - 6.1
    mass = math.sqrt(2 * 120.0 * 80.0 * (math.cosh(0.3) - math.cos(dphi)))
    px = 120 * math.cos(3.1) + 80 * math.cos(-3.0)
    py = 120 * math.sin(3.1) + 80 * math.sin(-3.0)
    assert out["jet_mass_ak7"][0] == pytest.approx(mass, rel=1e-9)
    assert out["jet_pt_ak7"][0] == pytest.approx(math.hypot(px, py), rel=1e-12)
    assert out["jet_phi_ak7"][0] == pytest.approx(math.atan2(py, px), rel=1e-12)
    assert out["jet_E_ak7"][0] == pytest.approx(120 * math.cosh(0.5) + 80 * math.cosh(0.2), rel=1e-12)
    # z = 0.4 > 0.1: soft drop keeps both; two constituents: tau2 = tau3 = 0 and the ratios are 0.
    assert out["jet_msd_ak7"][0] == pytest.approx(mass, rel=1e-9)
    assert out["jet_tau1_ak7"][0] > 0
    assert out["jet_tau2_ak7"][0] == 0.0 and out["jet_tau21_ak7"][0] == 0.0 and out["jet_tau32_ak7"][0] == 0.0


def test_softdrop_removes_a_soft_wide_constituent():
    # z = 5 / 105 < 0.1: the soft one is dropped, leaving one massless constituent.
    out = substructure(ak.Array([[100.0, 5.0]]), ak.Array([[0.0, 0.4]]), ak.Array([[0.0, 0.3]]))
    assert out["jet_mass_ak7"][0] > 5.0
    assert out["jet_msd_ak7"][0] == 0.0


def test_softdrop_prongs_make_the_groomed_mass():
    """The two prongs' constituents are exactly the groomed jet: their invariant mass is jet_msd_ak7, and the
    harder prong has the larger pT; what grooming removes is in neither."""
    rng = np.random.default_rng(9)
    pt, eta, phi = _random_jets(rng, 30, max_n=60, phi0=3.05)
    msd = substructure(pt, eta, phi)["jet_msd_ak7"]
    prong, axes = softdrop_prongs(pt, eta, phi)
    offsets = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(pt)))])
    flat = [ak.to_numpy(ak.flatten(a)) for a in (pt, eta, phi)]
    assert np.any(prong == 0) and np.any(prong == 2)
    for i in range(len(pt)):
        p, e, f = (a[offsets[i]:offsets[i + 1]] for a in flat)
        k = prong[offsets[i]:offsets[i + 1]]
        four = np.stack([p * np.cosh(e), p * np.cos(f), p * np.sin(f), p * np.sinh(e)], axis=-1)
        kept = four[k > 0].sum(axis=0)
        mass = math.sqrt(max(kept[0] ** 2 - kept[1] ** 2 - kept[2] ** 2 - kept[3] ** 2, 0.0))
        assert mass == pytest.approx(msd[i], rel=1e-7, abs=1e-4), i
        if msd[i] > 0:
            pts = [np.hypot(*four[k == n, 1:3].sum(axis=0)) for n in (1, 2)]
            assert pts[0] >= pts[1] > 0
            axis_phi = math.atan2(four[k == 1, 2].sum(), four[k == 1, 1].sum())
            assert axes[i, 0, 1] == pytest.approx(axis_phi, abs=1e-9)


def test_softdrop_prongs_of_small_jets():
    prong, axes = softdrop_prongs(ak.Array([[], [50.0], [100.0, 5.0]]), ak.Array([[], [1.0], [0.0, 0.4]]),
                                  ak.Array([[], [2.0], [0.0, 0.3]]))
    assert prong.tolist() == [1, 1, 0]  # one constituent: prong 1; z = 0.048 < 0.1: the soft one is groomed away
    assert axes[0].tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert axes[1].tolist() == [[1.0, 2.0], [1.0, 2.0]]
    np.testing.assert_allclose(axes[2], [[0.0, 0.0], [0.0, 0.0]], atol=1e-12)


def test_jets_with_fewer_than_two_constituents():
    out = substructure(ak.Array([[], [50.0], [30.0, 20.0, 10.0]]), ak.Array([[], [1.0], [0.0, 0.1, -0.1]]),
                       ak.Array([[], [2.0], [0.0, 0.1, 0.2]]))
    assert out["jet_ncand_ak7"].tolist() == [0, 1, 3]
    assert out["jet_ncand_ak7"].dtype == np.int32
    for name in ("jet_pt_ak7", "jet_E_ak7", "jet_mass_ak7", "jet_msd_ak7", "jet_tau1_ak7", "jet_tau21_ak7"):
        assert out[name][0] == 0.0, name
        assert out[name].dtype == np.float64
    assert out["jet_pt_ak7"][1] == pytest.approx(50.0)
    assert out["jet_eta_ak7"][1] == pytest.approx(1.0)
    assert out["jet_mass_ak7"][1] == 0.0 and out["jet_msd_ak7"][1] == 0.0 and out["jet_tau1_ak7"][1] == 0.0
    assert out["jet_tau3_ak7"][2] == 0.0 and out["jet_tau2_ak7"][2] > 0.0 and out["jet_tau32_ak7"][2] == 0.0


def test_azimuthal_rotation_leaves_substructure_unchanged():
    rng = np.random.default_rng(5)
    pt, eta, phi = _random_jets(rng, 12, phi0=0.0)
    a = substructure(pt, eta, phi)
    turned = ak.unflatten(delta_phi(ak.to_numpy(ak.flatten(phi)) + math.pi - 0.05), ak.num(phi))
    b = substructure(pt, eta, turned)
    for name in ("jet_mass_ak7", "jet_msd_ak7", "jet_tau1_ak7", "jet_tau2_ak7", "jet_tau3_ak7", "jet_pt_ak7"):
        assert np.allclose(a[name], b[name], rtol=1e-9, atol=1e-9), name


def test_jets_substructure_reads_canonical_fields():
    jets = ak.Array({"ak7pfcand_pt": [[60.0, 40.0]], "ak7pfcand_eta": [[0.0, 0.2]], "ak7pfcand_phi": [[0.0, 0.1]]})
    assert jets_substructure(jets)["jet_mass_ak7"][0] == pytest.approx(
        substructure(ak.Array([[60.0, 40.0]]), ak.Array([[0.0, 0.2]]), ak.Array([[0.0, 0.1]]))["jet_mass_ak7"][0]
    )


def test_mismatched_constituent_arrays_are_user_errors():
    with pytest.raises(WtagError, match="different numbers of jets"):
        substructure(ak.Array([[1.0]]), ak.Array([[0.0], [0.0]]), ak.Array([[0.0]]))
    with pytest.raises(WtagError, match="entries per jet"):
        substructure(ak.Array([[1.0, 2.0]]), ak.Array([[0.0]]), ak.Array([[0.0, 0.1]]))


def test_delta_phi_and_safe_ratio():
    wrapped = delta_phi(np.array([0.0, math.pi, -math.pi, 3 * math.pi / 2, -3 * math.pi / 2, 7.0, 0.3]))
    assert np.allclose(wrapped, [0.0, math.pi, math.pi, -math.pi / 2, math.pi / 2, 7.0 - 2 * math.pi, 0.3])
    assert delta_phi(np.array([0.3]))[0] == 0.3  # exact inside the range
    assert safe_ratio(np.array([1.0, 2.0]), np.array([0.0, 4.0])).tolist() == [0.0, 0.5]
