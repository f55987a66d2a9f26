"""The canonical jet record and its ROOT form: round trips, selection, and every way a file can be bad."""
from __future__ import annotations

from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import uproot

from wtag import schema
from wtag.errors import WtagError
from wtag.jets import make_jets, read_jets, select, write_jets


def _columns(n: int = 50, seed: int = 7) -> dict[str, object]:
    """Random but physical-looking jets with every scalar branch given and 0-40 constituents each."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 41, n)
    counts[0] = 0  # a jet without constituents must survive the trip too
    total = int(counts.sum())
    cols: dict[str, object] = {name: rng.normal(size=n) for name in schema.JET_BRANCHES}
    cols["jet_pt_ak7"] = rng.uniform(150.0, 550.0, n)
    cols["jet_eta_ak7"] = rng.uniform(-2.5, 2.5, n)
    for name in schema.INT_BRANCHES:
        cols[name] = rng.integers(-1, 2_000_000_000, n)
    cols["jet_isW_ak7"] = rng.integers(-1, 2, n)
    cols["ak7pfcand_pt"] = ak.unflatten(rng.exponential(5.0, total), counts)
    cols["ak7pfcand_eta"] = ak.unflatten(rng.normal(0.0, 0.3, total), counts)
    cols["ak7pfcand_phi"] = ak.unflatten(rng.uniform(-np.pi, np.pi, total), counts)
    cols["ak7pfcand_id"] = ak.unflatten(rng.choice([211, -211, 130, 22, 11, -13], total), counts)
    cols["ak7pfcand_charge"] = ak.unflatten(rng.integers(-1, 2, total), counts)
    return cols


def _expected_type(n: int) -> str:
    fields = [f"{name}: {'int32' if name in schema.INT_BRANCHES else 'float64'}"
              for name in schema.JET_BRANCHES + schema.EVENT_BRANCHES]
    fields += [f"{name}: var * {'int32' if name in schema.INT_CAND_BRANCHES else 'float64'}"
               for name in schema.CAND_BRANCHES]
    return f"{n} * {{{', '.join(fields)}}}"


def test_make_jets_types_and_defaults() -> None:
    jets = make_jets({name: [[1, 2], [3]] for name in schema.CAND_BRANCHES} | {"jet_pt_ak7": [250, 300]})
    assert str(jets.type) == _expected_type(2)
    assert jets.fields == list(schema.JET_BRANCHES + schema.EVENT_BRANCHES + schema.CAND_BRANCHES)
    np.testing.assert_array_equal(jets["jet_pt_ak7"], [250.0, 300.0])
    assert np.all(np.isnan(ak.to_numpy(jets["jet_msd_ak7"])))
    np.testing.assert_array_equal(jets["jet_isW_ak7"], [-1, -1])
    assert ak.to_list(jets["ak7pfcand_pt"]) == [[1.0, 2.0], [3.0]]


def test_make_jets_rejects_inconsistent_columns() -> None:
    cands = {name: [[1, 2], [3]] for name in schema.CAND_BRANCHES}
    with pytest.raises(WtagError, match="lack constituent branches: ak7pfcand_charge"):
        make_jets({k: v for k, v in cands.items() if k != "ak7pfcand_charge"})
    with pytest.raises(WtagError, match="jet_pt_ak7 has 3 entries, expected 2"):
        make_jets(cands | {"jet_pt_ak7": [1.0, 2.0, 3.0]})
    with pytest.raises(WtagError, match="different numbers of entries per jet"):
        make_jets(cands | {"ak7pfcand_eta": [[1], [2, 3]]})
    with pytest.raises(WtagError, match="ak7pfcand_phi must hold a list of numbers per jet"):
        make_jets(cands | {"ak7pfcand_phi": [1.0, 2.0]})
    with pytest.raises(WtagError, match="jet_eta_ak7 must hold one number per jet"):
        make_jets(cands | {"jet_eta_ak7": [[1.0], [2.0]]})


def test_root_round_trip(tmp_path: Path) -> None:
    jets = make_jets(_columns())
    path = tmp_path / "jets.root"
    write_jets(path, jets)
    back = read_jets(path)
    assert str(back.type) == _expected_type(50)
    assert ak.array_equal(back, jets, equal_nan=True, dtype_exact=True)
    assert ak.to_list(ak.num(back["ak7pfcand_pt"]))[:1] == [0]
    with uproot.open(path) as f:
        tree = f[schema.TREE_NAME]
        assert isinstance(tree, uproot.TTree)
        assert tree.classname == "TTree"
        assert tree.num_entries == 50
        assert tree["ak7pfcand_pt"].typename == "double[]"
        assert tree["ak7pfcand_id"].typename == "int32_t[]"
        assert tree["jet_isW_ak7"].typename == "int32_t"


def test_read_concatenates_files_in_order(tmp_path: Path) -> None:
    a, b = make_jets(_columns(20, seed=1)), make_jets(_columns(30, seed=2))
    write_jets(tmp_path / "a.root", a)
    write_jets(tmp_path / "b.root", b)
    back = read_jets([tmp_path / "a.root", str(tmp_path / "b.root")])
    assert ak.array_equal(back, ak.concatenate([a, b]), equal_nan=True, dtype_exact=True)


def test_empty_round_trip(tmp_path: Path) -> None:
    empty = make_jets({name: [] for name in schema.CAND_BRANCHES})
    assert str(empty.type) == _expected_type(0)
    write_jets(tmp_path / "empty.root", empty)
    back = read_jets(tmp_path / "empty.root")
    assert len(back) == 0
    assert str(back.type) == _expected_type(0)
    merged = read_jets([tmp_path / "empty.root", tmp_path / "empty.root"])
    assert len(merged) == 0


def test_select_cuts() -> None:
    pt = [150.0, 200.0, 200.1, 350.0, 499.9, 500.0, 350.0, 350.0]
    eta = [0.0, 0.0, 0.0, 1.99, -1.99, 0.0, 2.0, -2.1]
    cands = {name: [[1]] * len(pt) for name in schema.CAND_BRANCHES}
    jets = make_jets(cands | {"jet_pt_ak7": pt, "jet_eta_ak7": eta, "ijet": list(range(len(pt)))})
    assert ak.to_list(select(jets)["ijet"]) == [2, 3, 4]
    assert ak.to_list(select(jets, pt_min=100.0, pt_max=600.0, eta_max=2.05)["ijet"]) == [0, 1, 2, 3, 4, 5, 6]
    assert len(select(jets, pt_min=600.0)) == 0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WtagError, match=r"nope\.root: no such file$"):
        read_jets(tmp_path / "nope.root")
    with pytest.raises(WtagError, match="no input files given"):
        read_jets([])


def test_not_root(tmp_path: Path) -> None:
    path = tmp_path / "jets.root"
    path.write_text("run,lumi,event\n1,2,3\n")
    with pytest.raises(WtagError, match=r"jets\.root: not a readable ROOT file") as info:
        read_jets(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("fraction", [0.0001, 0.002, 0.3, 0.999])
def test_truncated(tmp_path: Path, fraction: float) -> None:
    full = tmp_path / "full.root"
    write_jets(full, make_jets(_columns(3000)))
    data = full.read_bytes()
    cut = tmp_path / "cut.root"
    cut.write_bytes(data[: max(1, int(len(data) * fraction))])
    with pytest.raises(WtagError, match=r"^\S*cut\.root: (not a readable ROOT file|cannot read)") as info:
        read_jets(cut)
    assert "\n" not in str(info.value)


def test_missing_tree_and_wrong_kind(tmp_path: Path) -> None:
    other = tmp_path / "other.root"
    with uproot.recreate(other) as f:
        f.mktree("events", {"x": np.float64}).extend({"x": np.arange(3.0)})
    with pytest.raises(WtagError, match=r"other\.root: no TTree named 'jets' \(found: events\)"):
        read_jets(other)
    rntuple = tmp_path / "rntuple.root"
    with uproot.recreate(rntuple) as f:
        f[schema.TREE_NAME] = {"jet_pt_ak7": np.arange(3.0)}
    with pytest.raises(WtagError, match=r"rntuple\.root: 'jets' is a ROOT::RNTuple, not a TTree"):
        read_jets(rntuple)
    hist = tmp_path / "hist.root"
    with uproot.recreate(hist) as f:
        f[schema.TREE_NAME] = np.histogram(np.arange(10.0))
    with pytest.raises(WtagError, match=r"hist\.root: 'jets' is a TH1D, not a TTree"):
        read_jets(hist)


def test_missing_branch(tmp_path: Path) -> None:
    jets = make_jets(_columns(5))
    path = tmp_path / "partial.root"
    keep = [name for name in jets.fields if name not in ("jet_msd_ak7", "ak7pfcand_charge")]
    types = {name: (ak.types.from_datashape(str(jets[name].type.content), highlevel=False)
                    if name.startswith("ak7pfcand_") else jets[name].type.content.primitive) for name in keep}
    with uproot.recreate(path) as f:
        f.mktree(schema.TREE_NAME, types).extend({name: jets[name] for name in keep})
    with pytest.raises(WtagError, match=r"partial\.root: tree 'jets' lacks branches jet_msd_ak7, ak7pfcand_charge$"):
        read_jets(path)


def test_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "jets.root"
    good = make_jets(_columns(10))
    write_jets(path, good)
    before = path.read_bytes()
    # Constituent branches share one counter; disagreeing lengths fail inside uproot, mid-write.
    broken = ak.Array({name: good[name] for name in good.fields} | {"ak7pfcand_eta": [[1.0]] * 10})
    with pytest.raises(ValueError, match="ncand"):
        write_jets(path, broken)
    assert path.read_bytes() == before, "a failed write must not touch the existing file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jets.root"], "no temporary file left behind"
    fresh = tmp_path / "new" / "jets.root"
    with pytest.raises(ValueError, match="ncand"):
        write_jets(fresh, broken)
    assert list(fresh.parent.iterdir()) == []
