"""High-level table, completing jets from constituents, and model inputs (one code path for train and serve)."""
from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from wtag import schema
from wtag.errors import WtagError
from wtag.features import complete_jets, hl_features, model_inputs
from wtag.features.substructure import substructure
from wtag.jets import make_jets, read_jets, write_jets

def _raw_jets(n: int = 6, seed: int = 4) -> ak.Array:
    """Canonical jets with constituents only: every jet scalar is NaN / -1, as an importer would start."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(2, 30, n)
    total = counts.sum()
    columns = {
        "ak7pfcand_pt": ak.unflatten(rng.exponential(10.0, total) + 0.5, counts),
        "ak7pfcand_eta": ak.unflatten(rng.normal(0.2, 0.2, total), counts),
        "ak7pfcand_phi": ak.unflatten(rng.normal(-1.0, 0.2, total), counts),
        "ak7pfcand_id": ak.unflatten(rng.choice([211, -211, 130, 22], total), counts),
        "ak7pfcand_charge": ak.unflatten(rng.choice([1, -1, 0], total), counts),
    }
    return make_jets(columns)


def test_complete_jets_fills_every_missing_field_from_constituents():
    jets = _raw_jets()
    done = complete_jets(jets)
    expected = substructure(jets["ak7pfcand_pt"], jets["ak7pfcand_eta"], jets["ak7pfcand_phi"])
    for name, values in expected.items():
        assert np.allclose(ak.to_numpy(done[name]), values, rtol=1e-12, atol=0), name
    assert ak.to_numpy(done["jet_ncand_ak7"]).dtype == np.int32
    assert sorted(ak.fields(done)) == sorted(ak.fields(jets))
    assert done["ak7pfcand_pt"].to_list() == jets["ak7pfcand_pt"].to_list()


def test_complete_jets_keeps_given_values():
    jets = _raw_jets()
    given_pt = np.full(len(jets), 321.0)
    given_msd = np.array([80.0, np.nan, 70.0, np.nan, np.nan, 10.0])
    jets = ak.with_field(jets, given_pt, "jet_pt_ak7")
    jets = ak.with_field(jets, given_msd, "jet_msd_ak7")
    done = complete_jets(jets)
    computed = substructure(jets["ak7pfcand_pt"], jets["ak7pfcand_eta"], jets["ak7pfcand_phi"])
    assert ak.to_numpy(done["jet_pt_ak7"]).tolist() == given_pt.tolist()
    msd = ak.to_numpy(done["jet_msd_ak7"])
    assert msd[[0, 2, 5]].tolist() == [80.0, 70.0, 10.0]
    assert np.allclose(msd[[1, 3, 4]], computed["jet_msd_ak7"][[1, 3, 4]])
    assert np.allclose(ak.to_numpy(done["jet_tau21_ak7"]), computed["jet_tau21_ak7"])


def test_complete_jets_adds_absent_fields_and_returns_complete_jets_unchanged():
    bare = ak.Array({name: _raw_jets()[name] for name in schema.CAND_BRANCHES})
    done = complete_jets(bare)
    assert set(ak.fields(done)) >= set(schema.HL_FEATURES)
    assert complete_jets(done) is done
    with pytest.raises(WtagError, match="constituent fields"):
        complete_jets(ak.Array({"jet_pt_ak7": [1.0]}))


def test_hl_features_columns_in_schema_order():
    done = complete_jets(_raw_jets())
    table = hl_features(done)
    assert table.shape == (6, len(schema.HL_FEATURES)) and table.dtype == np.float32
    for k, name in enumerate(schema.HL_FEATURES):
        assert np.allclose(table[:, k], ak.to_numpy(done[name]).astype(np.float32)), name


def test_hl_features_refuses_missing_values():
    with pytest.raises(WtagError, match="jet_msd_ak7"):
        hl_features(_raw_jets())
    done = complete_jets(_raw_jets())
    with pytest.raises(WtagError, match="jet_eta_ak7"):
        hl_features(ak.without_field(done, "jet_eta_ak7"))


def test_model_inputs_shapes_and_dtypes_from_raw_constituents():
    out = model_inputs(_raw_jets(), [schema.INPUT_HL, schema.INPUT_IMAGES, schema.INPUT_PARTICLES], max_particles=16)
    assert out[schema.INPUT_HL].shape == (6, len(schema.HL_FEATURES))
    assert out[schema.INPUT_IMAGES].shape == (6, schema.IMAGE_PIXELS, schema.IMAGE_PIXELS, 1)
    assert out[schema.INPUT_PARTICLES].shape == (6, 16, len(schema.PARTICLE_FEATURES))
    assert all(v.dtype == np.float32 for v in out.values())
    assert np.isfinite(out[schema.INPUT_HL]).all()
    assert list(model_inputs(_raw_jets(), ["images"])) == ["images"]


def test_model_inputs_rejects_unknown_names():
    with pytest.raises(WtagError, match="unknown model input.*'pixels'"):
        model_inputs(_raw_jets(), ["hl", "pixels"])


def test_same_inputs_after_a_root_round_trip(tmp_path):
    # Train (prepare reads the ROOT file) and serve (raw jets in memory) must see identical arrays.
    jets = complete_jets(_raw_jets(n=20, seed=9))
    path = tmp_path / "jets.root"
    write_jets(path, jets)
    names = [schema.INPUT_HL, schema.INPUT_IMAGES, schema.INPUT_PARTICLES]
    served = model_inputs(jets, names)
    trained = model_inputs(read_jets(path), names)
    for name in names:
        assert np.array_equal(served[name], trained[name]), name


def test_complete_jets_on_real_cms_2011a_jets(shared_data: Path):
    files = sorted(shared_data.glob("cms2011a_jet_pfcands_params*.npy"))
    if not files:
        pytest.skip(f"no CMS 2011A .npy files in {shared_data}")
    rows = np.concatenate([np.load(f) for f in files])
    key = rows["event"].astype(np.int64) * 1000 + rows["ak7pfcand_ijet"]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(key) != 0) + 1])
    counts = np.diff(np.concatenate([starts, [len(rows)]]))
    scalars = ("run", "lumi", "event", "jet_pt_ak7", "jet_eta_ak7", "jet_phi_ak7", "jet_E_ak7")
    columns = {name: rows[name][starts] for name in scalars}
    columns.update({name: ak.unflatten(rows[name], counts) for name in schema.CAND_BRANCHES})
    jets = complete_jets(make_jets(columns))
    pt_jes = ak.to_numpy(jets["jet_pt_ak7"])
    assert np.array_equal(pt_jes, rows["jet_pt_ak7"][starts])  # the JES-corrected pT is kept
    raw_pt = substructure(jets["ak7pfcand_pt"], jets["ak7pfcand_eta"], jets["ak7pfcand_phi"])["jet_pt_ak7"]
    assert 0.95 < np.median(pt_jes / raw_pt) < 1.15  # JES factors of 2011 AK7 PF jets
    msd, mass = ak.to_numpy(jets["jet_msd_ak7"]), ak.to_numpy(jets["jet_mass_ak7"])
    assert np.all(msd <= mass + 1e-9)
    tau21 = ak.to_numpy(jets["jet_tau21_ak7"])
    assert np.all(tau21 >= 0) and np.median(tau21) < 0.9
    # Unminimised exclusive-kT axes can give tau2 > tau1, but rarely and not by much.
    assert np.mean(tau21 > 1.0) < 0.06 and tau21.max() < 1.3
    assert np.array_equal(ak.to_numpy(jets["jet_ncand_ak7"]), counts)
