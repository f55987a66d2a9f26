"""Padded constituent lists: ordering, padding, truncation, azimuth wrap, type flags."""
from __future__ import annotations

import math

import awkward as ak
import numpy as np
import pytest

from wtag import schema
from wtag.errors import WtagError
from wtag.features.constituents import jets_particle_features, particle_features

COL = {name: k for k, name in enumerate(schema.PARTICLE_FEATURES)}


def _features(pt, eta, phi, pid, charge, jet_eta, jet_phi, max_particles=schema.MAX_PARTICLES):
    return particle_features(
        ak.Array(pt), ak.Array(eta), ak.Array(phi), ak.Array(pid), ak.Array(charge),
        np.asarray(jet_eta, dtype=float), np.asarray(jet_phi, dtype=float), max_particles=max_particles,
    )


def test_hardest_first_zero_padded_float32():
    out = _features([[1.0, 5.0, 3.0], [2.0]], [[0.1, 0.2, 0.3], [0.0]], [[0.0, 0.0, 0.0], [0.0]],
                    [[211, 22, 130], [13]], [[1, 0, 0], [-1]], [0.0, 0.0], [0.0, 0.0], max_particles=4)
    assert out.shape == (2, 4, len(schema.PARTICLE_FEATURES)) and out.dtype == np.float32
    assert out[0, :, COL["pt"]].tolist() == [5.0, 3.0, 1.0, 0.0]
    assert out[0, :3, COL["deta"]].tolist() == pytest.approx([0.2, 0.3, 0.1])
    assert np.all(out[0, 3] == 0.0) and np.all(out[1, 1:] == 0.0)
    assert out[1, 0, COL["is_muon"]] == 1.0 and out[1, 0, COL["charge"]] == -1.0


def test_truncation_keeps_the_hardest():
    pt = [[float(v) for v in range(1, 11)]]
    out = _features(pt, [[0.0] * 10], [[0.0] * 10], [[211] * 10], [[1] * 10], [0.0], [0.0], max_particles=3)
    assert out[0, :, COL["pt"]].tolist() == [10.0, 9.0, 8.0]


def test_equal_pt_keeps_input_order():
    out = _features([[4.0, 4.0, 9.0]], [[0.1, 0.2, 0.0]], [[0.0, 0.0, 0.0]], [[211, 211, 211]], [[1, 1, 1]],
                    [0.0], [0.0], max_particles=3)
    assert out[0, :, COL["deta"]].tolist() == pytest.approx([0.0, 0.1, 0.2])


def test_relative_coordinates_wrap_the_azimuth():
    out = _features([[50.0, 30.0]], [[1.0, 1.3]], [[-3.1, 3.0]], [[211, 22]], [[1, 0]], [1.1], [3.1])
    dphi = out[0, :2, COL["dphi"]]
    assert dphi[0] == pytest.approx(2 * math.pi - 6.2, abs=1e-6)
    assert dphi[1] == pytest.approx(-0.1, abs=1e-6)
    assert out[0, :2, COL["deta"]].tolist() == pytest.approx([-0.1, 0.2], abs=1e-6)
    assert out[0, 0, COL["dr"]] == pytest.approx(math.hypot(0.1, 2 * math.pi - 6.2), abs=1e-6)


def test_log_pt_rel_uses_the_constituent_sum():
    out = _features([[30.0, 10.0]], [[0.0, 0.0]], [[0.0, math.pi / 2]], [[211, 211]], [[1, 1]], [0.0], [0.0])
    jet_pt = math.hypot(30.0, 10.0)
    expected = [math.log(30 / jet_pt), math.log(10 / jet_pt)]
    assert out[0, :2, COL["log_pt_rel"]].tolist() == pytest.approx(expected, rel=1e-6)


def test_type_flags_from_abs_id_with_charge_fallback():
    ids = [[211, -211, 130, 22, 11, -13, 1, 999]]
    charges = [[1, -1, 0, 0, -1, 1, 0, 1]]
    pt = [[8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]]
    out = _features(pt, [[0.0] * 8], [[0.0] * 8], ids, charges, [0.0], [0.0], max_particles=8)[0]
    flags = ["is_charged_hadron", "is_neutral_hadron", "is_photon", "is_electron", "is_muon"]
    got = [[int(out[i, COL[f]]) for f in flags] for i in range(8)]
    assert got == [
        [1, 0, 0, 0, 0],
        [1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 0, 1],
        [0, 1, 0, 0, 0],  # unknown neutral -> neutral hadron
        [1, 0, 0, 0, 0],  # unknown charged -> charged hadron
    ]
    assert out[:, COL["charge"]].tolist() == [1, -1, 0, 0, -1, 1, 0, 1]


def test_empty_jets_are_all_padding():
    out = _features([[], [3.0]], [[], [0.0]], [[], [0.0]], [[], [22]], [[], [0]], [0.0, 0.0], [0.0, 0.0])
    assert np.all(out[0] == 0.0) and out[1, 0, COL["pt"]] == 3.0


def test_jets_particle_features_uses_the_stored_jet_axis():
    jets = ak.Array({
        "ak7pfcand_pt": [[20.0, 10.0]], "ak7pfcand_eta": [[0.5, 0.6]], "ak7pfcand_phi": [[1.0, 1.2]],
        "ak7pfcand_id": [[211, 22]], "ak7pfcand_charge": [[1, 0]],
        "jet_eta_ak7": [0.4], "jet_phi_ak7": [1.1],
    })
    out = jets_particle_features(jets, max_particles=2)
    assert out[0, :, COL["deta"]].tolist() == pytest.approx([0.1, 0.2], abs=1e-6)
    assert out[0, :, COL["dphi"]].tolist() == pytest.approx([-0.1, 0.1], abs=1e-6)


def test_bad_inputs_are_user_errors():
    with pytest.raises(WtagError, match="max_particles"):
        _features([[1.0]], [[0.0]], [[0.0]], [[211]], [[1]], [0.0], [0.0], max_particles=0)
    with pytest.raises(WtagError, match="id"):
        _features([[1.0, 2.0]], [[0.0, 0.0]], [[0.0, 0.0]], [[211]], [[1, 1]], [0.0], [0.0])
    with pytest.raises(WtagError, match="jet_eta"):
        _features([[1.0]], [[0.0]], [[0.0]], [[211]], [[1]], [0.0, 1.0], [0.0])


def test_grooming_columns_of_a_two_prong_jet():
    """Two hard prongs (a 100 GeV particle; 80 + 50 GeV at dR 0.3 from it) and a soft wide particle that the
    soft drop of jet_msd_ak7 removes: in_softdrop, the signed prong index and the distances to both axes."""
    pt = [[100.0, 80.0, 2.0, 1.0, 50.0]]
    eta = [[0.0, 0.3, 0.65, 0.05, 0.31]]
    phi = [[0.0, 0.0, -0.3, 0.02, 0.01]]
    out = _features(pt, eta, phi, [[211, 211, 22, 22, 130]], [[1, -1, 0, 0, 0]], [0.2], [0.0])[0]
    # rows hardest first: 100, 80, 50, 2, 1 GeV
    assert out[:5, COL["in_softdrop"]].tolist() == [1.0, 1.0, 1.0, 0.0, 1.0]
    # the 80 + 50 GeV prong (130 GeV) is the harder one; the 100 GeV particle and the 1 GeV one beside it the softer
    assert out[:5, COL["prong"]].tolist() == [-1.0, 1.0, 1.0, 0.0, -1.0]
    hard_eta = (80 * 0.3 + 50 * 0.31) / 130  # close to the pT-weighted centre for nearly collinear particles
    assert out[1, COL["dr_prong1"]] == pytest.approx(abs(0.3 - hard_eta), abs=2e-3)
    assert out[0, COL["dr_prong2"]] == pytest.approx(0.0, abs=2e-3)
    assert out[0, COL["dr_prong1"]] == pytest.approx(math.hypot(hard_eta, 0.004), abs=3e-3)
    assert out[3, COL["dr_prong2"]] == pytest.approx(math.hypot(0.65, 0.3), abs=2e-3)
    assert out[:5, COL["log_pt"]].tolist() == pytest.approx(np.log([100, 80, 50, 2, 1]).tolist(), rel=1e-6)
    assert out[3, COL["log_e"]] == pytest.approx(math.log(2 * math.cosh(0.65)), rel=1e-6)
    assert out[:5, COL["jet_eta"]].tolist() == pytest.approx([0.2] * 5)


def test_log_n_counts_constituents_beyond_the_padded_list():
    rng = np.random.default_rng(2)
    n = 100
    out = _features([rng.uniform(1, 50, n).tolist(), [30.0, 20.0]], [rng.normal(0, 0.2, n).tolist(), [0.0, 0.1]],
                    [rng.normal(0, 0.2, n).tolist(), [0.0, 0.1]], [[211] * n, [22, 22]], [[1] * n, [0, 0]],
                    [0.0, 0.0], [0.0, 0.0])
    assert out.shape[1] == schema.MAX_PARTICLES < n
    assert np.allclose(out[0, :, COL["log_n"]], math.log(n))
    assert out[1, :2, COL["log_n"]].tolist() == pytest.approx([math.log(2)] * 2)
    assert not out[1, 2:].any()  # padding stays all zero
