"""The CMS-like response: documented resolutions, thresholds, acceptance, tower merging, ids."""
from __future__ import annotations

import numpy as np
import pytest

from wtag.errors import WtagError
from wtag.sources import detector as det

MODEL = det.DetectorModel()


def particles(pid: int, charge: int, energy: float, n: int, eta: float = 0.3, mass: float = 0.0,
              spread: bool = True) -> dict[str, np.ndarray]:
    """``n`` identical particles, one per event, at the given eta and (if ``spread``) different phi."""
    p = np.sqrt(energy**2 - mass**2)
    pt = p / np.cosh(eta)
    phi = np.linspace(-3.0, 3.0, n) if spread else np.zeros(n)
    return {
        "event": np.arange(n),
        "px": pt * np.cos(phi),
        "py": pt * np.sin(phi),
        "pz": np.full(n, pt * np.sinh(eta)),
        "e": np.full(n, energy),
        "pid": np.full(n, pid),
        "charge": np.full(n, charge),
    }


def respond(parts: dict[str, np.ndarray], model: det.DetectorModel = MODEL, seed: int = 1) -> dict[str, np.ndarray]:
    return det.respond(parts["event"], parts["px"], parts["py"], parts["pz"], parts["e"], parts["pid"],
                       parts["charge"], np.random.default_rng(seed), model)


def test_track_resolution_has_documented_width() -> None:
    model = det.DetectorModel(track_efficiency=1.0)
    pt_true = 80.0
    out = respond(particles(211, 1, pt_true * np.cosh(0.3), 40_000, mass=0.0), model)
    assert len(out["pt"]) == 40_000
    expected = pt_true * np.hypot(0.007, 1.5e-4 * pt_true)  # 1.39% at 80 GeV
    assert np.std(out["pt"]) == pytest.approx(expected, rel=0.03)
    assert np.mean(out["pt"]) == pytest.approx(pt_true, abs=3 * expected / np.sqrt(40_000))
    assert det.track_resolution(np.array([pt_true]), model)[0] == pytest.approx(expected)


def test_ecal_resolution_has_documented_width() -> None:
    energy = 20.0
    out = respond(particles(22, 0, energy, 40_000))
    measured = out["pt"] * np.cosh(out["eta"])
    expected = np.sqrt(0.028**2 * energy + 0.12**2 + (0.003 * energy) ** 2)  # 0.14 GeV
    assert np.std(measured) == pytest.approx(expected, rel=0.03)
    assert np.mean(measured) == pytest.approx(energy, abs=4 * expected / np.sqrt(40_000))
    assert set(out["id"].tolist()) == {22} and set(out["charge"].tolist()) == {0}


def test_hcal_resolution_has_documented_width() -> None:
    energy = 50.0
    out = respond(particles(130, 0, energy, 40_000, mass=0.4976))
    measured = out["pt"] * np.cosh(out["eta"])
    expected = np.sqrt(1.0**2 * energy + (0.05 * energy) ** 2)  # 7.5 GeV
    assert len(measured) == 40_000
    assert np.std(measured) == pytest.approx(expected, rel=0.03)
    assert np.mean(measured) == pytest.approx(energy, abs=4 * expected / np.sqrt(40_000))
    assert set(out["id"].tolist()) == {130}


def test_neutron_deposits_its_kinetic_energy_and_antineutron_its_annihilation_too() -> None:
    model = det.DetectorModel(hcal_stochastic=0.0, hcal_constant=0.0)
    m_n = 0.9396
    neutron = respond(particles(2112, 0, 10.0, 5, mass=m_n), model)
    antineutron = respond(particles(-2112, 0, 10.0, 5, mass=m_n), model)
    np.testing.assert_allclose(neutron["pt"] * np.cosh(neutron["eta"]), 10.0 - m_n, rtol=1e-12)
    np.testing.assert_allclose(antineutron["pt"] * np.cosh(antineutron["eta"]), 10.0 + m_n, rtol=1e-12)


def test_tracking_efficiency_and_lost_tracks_become_neutral_hadrons() -> None:
    n = 20_000
    out = respond(particles(-211, -1, 30.0, n, mass=0.1396))
    tracks = out["id"] == -211
    assert np.all(out["charge"][tracks] == -1)
    fraction = tracks.sum() / n
    assert fraction == pytest.approx(0.90, abs=4 * np.sqrt(0.9 * 0.1 / n))
    # A 30 GeV pion whose track is lost still reaches the HCAL: PF sees it as a neutral hadron.
    assert (out["id"] == 130).sum() == pytest.approx(n - tracks.sum(), abs=5)


def test_leptons_keep_their_identity_with_the_charge_sign_convention() -> None:
    mu_minus = respond(particles(13, -1, 20.0, 100, mass=0.1057))
    e_plus = respond(particles(-11, 1, 20.0, 100))
    assert set(mu_minus["id"].tolist()) == {-13} and set(mu_minus["charge"].tolist()) == {-1}
    assert set(e_plus["id"].tolist()) == {11} and set(e_plus["charge"].tolist()) == {1}
    assert len(mu_minus["id"]) == 100 and len(e_plus["id"]) == 100


def test_neutrinos_are_dropped() -> None:
    parts = {k: np.concatenate([particles(pid, 0, 40.0, 50)[k] for pid in (12, -14, 16)])
             for k in ("event", "px", "py", "pz", "e", "pid", "charge")}
    order = np.argsort(parts["event"], kind="stable")
    out = respond({k: v[order] for k, v in parts.items()})
    assert len(out["pt"]) == 0


def test_thresholds_and_acceptance() -> None:
    soft_track = respond(particles(211, 1, 0.2 * np.cosh(0.3), 500, mass=0.0))
    assert len(soft_track["pt"]) == 0  # below the 0.3 GeV track threshold: loops in the field, lost
    forward_muon = respond(particles(13, 1, 50.0, 100, eta=2.7, mass=0.1057))
    assert len(forward_muon["pt"]) == 0  # outside the tracker, no track
    forward_electron = respond(particles(11, -1, 50.0, 100, eta=2.7))
    assert set(forward_electron["id"].tolist()) == {22}  # outside the tracker, ECAL only
    beyond = respond(particles(22, 0, 50.0, 100, eta=3.2))
    assert len(beyond["pt"]) == 0  # beyond |eta| = 3 (HF): dropped
    photons = respond(particles(22, 0, 0.3, 20_000, eta=0.5))
    energy = photons["pt"] * np.cosh(photons["eta"])
    assert energy.min() > 0.23 and 0 < len(energy) < 20_000
    endcap = respond(particles(22, 0, 0.5, 5_000, eta=2.0))
    assert len(endcap["pt"]) == 0 or (endcap["pt"] * np.cosh(endcap["eta"])).min() > 0.6
    hadrons = respond(particles(130, 0, 1.0, 20_000, eta=0.2, mass=0.4976))
    energy = hadrons["pt"] * np.cosh(hadrons["eta"])
    assert energy.min() > 0.8 and 0 < len(energy) < 20_000


def test_tower_merging_conserves_energy_and_merges_neighbours() -> None:
    rng = np.random.default_rng(3)
    n = 5_000
    event = np.sort(rng.integers(0, 20, n))
    eta = rng.uniform(-2.9, 2.9, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    energy = rng.exponential(3.0, n)
    t_event, t_eta, t_phi, t_energy = det.merge_towers(event, eta, phi, energy, MODEL)
    np.testing.assert_allclose(np.bincount(t_event, weights=t_energy, minlength=20),
                               np.bincount(event, weights=energy, minlength=20), rtol=1e-12)
    assert len(t_energy) < n
    assert np.all(np.diff(t_event) >= 0)
    # One tower per distinct (event, eta bin, phi bin) of the deposits, its centroid inside that tower.

    def towers(ev: np.ndarray, et: np.ndarray, ph: np.ndarray) -> set[tuple[int, int, int]]:
        iphi = np.floor((ph + np.pi) / (2 * np.pi / 72)).astype(int) % 72
        return set(zip(ev.tolist(), np.floor(et / 0.087).astype(int).tolist(), iphi.tolist()))

    assert towers(t_event, t_eta, t_phi) == towers(event, eta, phi)
    assert len(towers(event, eta, phi)) == len(t_energy)


def test_tower_centroid_is_energy_weighted_and_towers_end_at_the_phi_seam() -> None:
    eta = np.array([0.01, 0.02, 0.5])
    phi = np.array([np.pi - 0.01, -np.pi + 0.01, 1.0])
    # The first two share no tower (towers end at the seam); a deposit pair inside one tower averages properly.
    t_energy = det.merge_towers(np.zeros(3, dtype=int), eta, phi, np.array([1.0, 1.0, 2.0]), MODEL)[3]
    assert len(t_energy) == 3
    seam = det.merge_towers(np.zeros(2, dtype=int), np.array([0.01, 0.03]), np.array([np.pi - 0.01, np.pi - 0.03]),
                            np.array([3.0, 1.0]), MODEL)
    assert len(seam[3]) == 1
    assert seam[1][0] == pytest.approx((3 * 0.01 + 0.03) / 4)
    assert seam[2][0] == pytest.approx(np.pi - (3 * 0.01 + 0.03) / 4)


def test_truth_keeps_every_visible_particle_massless() -> None:
    parts = particles(2212, 1, 10.0, 3, mass=0.938)
    out = det.truth(parts["event"], parts["px"], parts["py"], parts["pz"], parts["pid"], parts["charge"])
    assert out["id"].tolist() == [211, 211, 211]
    np.testing.assert_allclose(out["pt"], np.hypot(parts["px"], parts["py"]))
    nu = particles(14, 0, 10.0, 3)
    assert len(det.truth(nu["event"], nu["px"], nu["py"], nu["pz"], nu["pid"], nu["charge"])["pt"]) == 0


@pytest.mark.parametrize("kwargs", [{"track_efficiency": 1.5}, {"ecal_noise": -0.1}, {"hcal_tower_eta": 0.0},
                                    {"track_pt_min": float("nan")}])
def test_bad_detector_numbers_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(WtagError):
        det.DetectorModel(**kwargs)
