"""The c2numpy ntuple importer: grouping rows into jets, the real 2011A files, and bad input."""
from __future__ import annotations

import time
from pathlib import Path

import awkward as ak
import numpy as np
import pandas as pd
import pytest
from synthetic import labelled_jets

from wtag import schema
from wtag.errors import WtagError
from wtag.jets import read_jets, select

from wtag.sources.cms_ntuple import OUTPUT_NAME, import_cms_ntuple, read_cms_ntuple, write_cms_ntuple

REAL_FILES = [f"cms2011a_jet_pfcands_params{i}.npy" for i in range(3)]
BASE_DTYPE = [("run", "<i4"), ("lumi", "<i4"), ("event", "<i4"), ("njet_ak7", "<i4"), ("jet_pt_ak7", "<f8"),
              ("jet_eta_ak7", "<f8"), ("jet_phi_ak7", "<f8"), ("jet_E_ak7", "<f8"), ("jet_area_ak7", "<f8"),
              ("jet_jes_ak7", "<f8"), ("ak7pfcand_pt", "<f8"), ("ak7pfcand_eta", "<f8"),
              ("ak7pfcand_phi", "<f8"), ("ak7pfcand_id", "<i4"), ("ak7pfcand_charge", "<i4"),
              ("ak7pfcand_ijet", "<i4")]
MC_DTYPE = BASE_DTYPE + [("mcweight", "<f8"), ("jet_msd_ak7", "<f8"), ("jet_isW_ak7", "<i4"),
                         ("jet_ncand_ak7", "<i4")]


def _jet(event: int, ijet: int, pt: float, cands: list[tuple[float, float, float, int, int]],
         **extra: float) -> dict[str, object]:
    return {"run": 1, "lumi": 7, "event": event, "ijet": ijet, "pt": pt, "eta": 0.5, "phi": 1.0,
            "E": pt * 1.2, "cands": cands, **extra}


def _rows(jets: list[dict[str, object]], dtype: list[tuple[str, str]] = BASE_DTYPE,
          order: list[int] | None = None) -> np.ndarray:
    """c2numpy-style rows: one per candidate, jet columns repeated; ``order`` permutes the rows."""
    rows = []
    for jet in jets:
        for pt, eta, phi, pid, charge in jet["cands"]:  # type: ignore[union-attr]
            row = {"run": jet["run"], "lumi": jet["lumi"], "event": jet["event"], "njet_ak7": 2,
                   "jet_pt_ak7": jet["pt"], "jet_eta_ak7": jet["eta"], "jet_phi_ak7": jet["phi"],
                   "jet_E_ak7": jet["E"], "jet_area_ak7": 1.5, "jet_jes_ak7": 1.0, "ak7pfcand_pt": pt,
                   "ak7pfcand_eta": eta, "ak7pfcand_phi": phi, "ak7pfcand_id": pid, "ak7pfcand_charge": charge,
                   "ak7pfcand_ijet": jet["ijet"], "mcweight": jet.get("mcweight", 1.0),
                   "jet_msd_ak7": jet.get("msd", 0.0), "jet_isW_ak7": jet.get("isW", 0),
                   "jet_ncand_ak7": len(jet["cands"])}  # type: ignore[arg-type]
            rows.append(tuple(row[name] for name, _ in dtype))
    array = np.array(rows, dtype=dtype)
    return array if order is None else array[order]


A = _jet(100, 0, 250.0, [(150.0, 0.45, 1.02, 211, 1), (90.0, 0.60, 0.95, 22, 0), (10.0, 0.5, 1.3, 130, 0)])
B = _jet(100, 1, 40.0, [(30.0, -1.0, -2.0, -211, -1), (10.0, -1.1, -2.1, 22, 0)])
C = _jet(55, 0, 300.0, [(200.0, 1.0, 0.0, 11, -1), (100.0, 1.2, 0.1, -13, 1)])


def test_groups_interleaved_rows_in_first_appearance_order(tmp_path: Path) -> None:
    # Row order: C0, A0, B0, A1, C1, B1, A2 -- jets interleaved, events not sorted.
    rows = _rows([A, B, C], order=[5, 0, 3, 1, 6, 4, 2])
    path = tmp_path / "rows.npy"
    np.save(path, rows)
    jets = read_cms_ntuple([path])
    assert ak.to_list(jets["event"]) == [55, 100, 100]
    assert ak.to_list(jets["ijet"]) == [0, 0, 1]
    assert ak.to_list(jets["jet_pt_ak7"]) == [300.0, 250.0, 40.0]
    assert ak.to_list(jets["ak7pfcand_pt"]) == [[200.0, 100.0], [150.0, 90.0, 10.0], [30.0, 10.0]]
    assert ak.to_list(jets["ak7pfcand_id"]) == [[11, -13], [211, 22, 130], [-211, 22]]
    assert ak.to_list(jets["ak7pfcand_charge"]) == [[-1, 1], [1, 0, 0], [-1, 0]]
    assert ak.to_list(jets["jet_isW_ak7"]) == [schema.LABEL_UNKNOWN] * 3
    assert ak.to_list(jets["weight"]) == [1.0, 1.0, 1.0]
    assert ak.to_list(jets["jet_E_ak7"]) == [360.0, 300.0, 48.0]
    assert ak.to_list(jets["run"]) == [1, 1, 1] and ak.to_list(jets["lumi"]) == [7, 7, 7]
    assert ak.to_list(jets["jet_ncand_ak7"]) == [2, 3, 2]
    assert ak.array_equal(read_cms_ntuple(str(path)), jets, equal_nan=True), "a single path works too"


def test_computes_missing_substructure_from_candidates(tmp_path: Path) -> None:
    np.save(tmp_path / "c.npy", _rows([C]))
    (jet,) = read_cms_ntuple([tmp_path / "c.npy"])
    # Two massless candidates: m^2 = 2 pt1 pt2 (cosh(deta) - cos(dphi)).
    expected = np.sqrt(2 * 200.0 * 100.0 * (np.cosh(0.2) - np.cos(0.1)))
    assert jet["jet_mass_ak7"] == pytest.approx(expected, rel=1e-9)
    for name in ("jet_msd_ak7", "jet_tau1_ak7", "jet_tau2_ak7", "jet_tau21_ak7"):
        assert np.isfinite(jet[name]), name
    assert jet["jet_msd_ak7"] <= jet["jet_mass_ak7"] + 1e-9
    assert jet["jet_pt_ak7"] == 300.0, "the given (JES-corrected) pT is kept, not recomputed"


def test_mc_columns_are_kept(tmp_path: Path) -> None:
    signal = _jet(1, 0, 320.0, A["cands"], msd=81.5, isW=1, mcweight=0.25)  # type: ignore[arg-type]
    qcd = _jet(2, 0, 260.0, C["cands"], msd=12.0, isW=0, mcweight=2.0)  # type: ignore[arg-type]
    np.save(tmp_path / "mc.npy", _rows([signal, qcd], MC_DTYPE))
    jets = read_cms_ntuple(tmp_path / "mc.npy")
    assert ak.to_list(jets["jet_msd_ak7"]) == [81.5, 12.0]
    assert ak.to_list(jets["jet_isW_ak7"]) == [1, 0]
    assert ak.to_list(jets["weight"]) == [0.25, 2.0]
    assert ak.to_list(jets["jet_ncand_ak7"]) == [3, 2]
    assert np.all(np.isfinite(ak.to_numpy(jets["jet_tau21_ak7"])))


def test_jet_split_across_files_is_merged(tmp_path: Path) -> None:
    rows = _rows([B, A, C])  # B0 B1 A0 A1 A2 C0 C1
    np.save(tmp_path / "part0.npy", rows[:3])
    np.save(tmp_path / "part1.npy", rows[3:])
    jets = read_cms_ntuple([tmp_path / "part0.npy", tmp_path / "part1.npy"])
    assert ak.to_list(jets["ak7pfcand_pt"]) == [[30.0, 10.0], [150.0, 90.0, 10.0], [200.0, 100.0]]
    # The same files in the other order: same jets, the split jet's candidates follow the file order.
    swapped = read_cms_ntuple([tmp_path / "part1.npy", tmp_path / "part0.npy"])
    assert ak.to_list(swapped["ak7pfcand_pt"]) == [[90.0, 10.0, 150.0], [200.0, 100.0], [30.0, 10.0]]


def test_files_with_different_optional_columns(tmp_path: Path) -> None:
    np.save(tmp_path / "data.npy", _rows([C]))
    np.save(tmp_path / "mc.npy", _rows([_jet(9, 0, 210.0, B["cands"], isW=1, msd=70.0)], MC_DTYPE))
    jets = read_cms_ntuple([tmp_path / "data.npy", tmp_path / "mc.npy"])
    assert ak.to_list(jets["jet_isW_ak7"]) == [schema.LABEL_UNKNOWN, 1]
    assert jets["jet_msd_ak7"][1] == 70.0
    assert np.isfinite(jets["jet_msd_ak7"][0]), "missing msd is computed from the candidates"


@pytest.mark.slow
def test_real_2011a_files(shared_data: Path) -> None:
    paths = [shared_data / name for name in REAL_FILES]
    per_file = [len(read_cms_ntuple([p])) for p in paths]
    assert per_file == [322, 335, 118]
    start = time.perf_counter()
    jets = read_cms_ntuple(paths)
    elapsed = time.perf_counter() - start
    # c2numpy cut two jets across file boundaries: 775 pieces are 773 jets.
    assert len(jets) == 773
    raw = np.concatenate([np.load(p, allow_pickle=False) for p in paths])
    assert len(raw) == 23746
    assert int(ak.sum(jets["jet_ncand_ak7"])) == len(raw) == int(ak.sum(ak.num(jets["ak7pfcand_pt"])))
    assert set(ak.to_numpy(jets["run"]).tolist()) == {160578}
    assert np.all(ak.to_numpy(jets["jet_isW_ak7"]) == schema.LABEL_UNKNOWN)
    for name in schema.JET_BRANCHES:
        assert np.all(np.isfinite(ak.to_numpy(jets[name]))), name

    # Independent reference: pandas groupby of the raw rows.
    frame = pd.DataFrame({name: raw[name] for name in ("run", "lumi", "event", "ak7pfcand_ijet", "jet_pt_ak7",
                                                         "jet_jes_ak7", "ak7pfcand_pt", "ak7pfcand_phi")})
    frame["px"] = frame["ak7pfcand_pt"] * np.cos(frame["ak7pfcand_phi"])
    frame["py"] = frame["ak7pfcand_pt"] * np.sin(frame["ak7pfcand_phi"])
    ref = frame.groupby(["run", "lumi", "event", "ak7pfcand_ijet"], sort=False).agg(
        n=("px", "size"), px=("px", "sum"), py=("py", "sum"), pt=("jet_pt_ak7", "first"),
        jes=("jet_jes_ak7", "first"))
    assert len(ref) == 773
    np.testing.assert_array_equal(ak.to_numpy(jets["event"]), ref.index.get_level_values("event"))
    np.testing.assert_array_equal(ak.to_numpy(jets["ijet"]), ref.index.get_level_values("ak7pfcand_ijet"))
    np.testing.assert_array_equal(ak.to_numpy(jets["jet_ncand_ak7"]), ref["n"])
    np.testing.assert_array_equal(ak.to_numpy(jets["jet_pt_ak7"]), ref["pt"])
    # The candidates are the whole jet: their summed pT equals the uncorrected jet pT (jet_pt_ak7 / jes).
    pt_from_cands = np.hypot(ref["px"], ref["py"]).to_numpy()
    ratio = pt_from_cands / (ref["pt"] / ref["jes"]).to_numpy()
    assert np.all(np.abs(ratio - 1) < 1e-6), np.percentile(ratio, [0, 50, 100])
    px = ak.sum(jets["ak7pfcand_pt"] * np.cos(jets["ak7pfcand_phi"]), axis=1)
    py = ak.sum(jets["ak7pfcand_pt"] * np.sin(jets["ak7pfcand_phi"]), axis=1)
    np.testing.assert_allclose(ak.to_numpy(np.hypot(px, py)), pt_from_cands, rtol=1e-12)
    # Corrected over raw: the JES factor, 0.78-1.17 in these files.
    jes = ak.to_numpy(jets["jet_pt_ak7"]) / pt_from_cands
    assert 0.75 < jes.min() and jes.max() < 1.2
    assert len(select(jets)) == 9
    assert elapsed < 60.0


@pytest.mark.slow
def test_import_real_files(shared_data: Path, tmp_path: Path) -> None:
    paths = [str(shared_data / name) for name in REAL_FILES]
    out = import_cms_ntuple(paths, tmp_path / "out")
    assert out == tmp_path / "out" / OUTPUT_NAME
    assert sorted(p.name for p in out.parent.iterdir()) == [OUTPUT_NAME]
    back = read_jets(out)
    assert ak.array_equal(back, read_cms_ntuple(paths), equal_nan=True, dtype_exact=True)
    selected = import_cms_ntuple(paths, tmp_path / "sel", select_jets=True)
    assert len(read_jets(selected)) == 9


@pytest.mark.slow
def test_truncated_real_file(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / REAL_FILES[2]).read_bytes()
    cut = tmp_path / "params2.npy"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WtagError, match=r"params2\.npy: not a readable \.npy file \(.*\)$") as info:
        import_cms_ntuple([str(shared_data / REAL_FILES[0]), str(cut)], tmp_path / "out")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def _save(path: Path, array: np.ndarray) -> Path:
    np.save(path, array)
    return path


def _with(rows: np.ndarray, name: str, values: np.ndarray) -> np.ndarray:
    """``rows`` with one column replaced (its dtype may change)."""
    dtype = [(n, values.dtype.str if n == name else rows.dtype[n].str) for n in rows.dtype.names]
    out = np.empty(len(rows), dtype=dtype)
    for n in rows.dtype.names:
        out[n] = values if n == name else rows[n]
    return out


def _without(rows: np.ndarray, *names: str) -> np.ndarray:
    keep = [n for n in rows.dtype.names if n not in names]
    out = np.empty(len(rows), dtype=[(n, rows.dtype[n].str) for n in keep])
    for n in keep:
        out[n] = rows[n]
    return out


GOOD = _rows([A, B, C])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("run,lumi,event\n"), r"not a NumPy \.npy file"),
        (lambda p: np.savez(p.with_suffix(""), GOOD) or p.with_suffix(".npz").rename(p), r"is an \.npz archive"),
        (lambda p: _save(p, np.arange(12.0).reshape(3, 4)), r"a plain float64 array of shape \(3, 4\)"),
        (lambda p: np.save(p, np.array([{"run": 1}], dtype=object), allow_pickle=True),
         r"holds Python objects \(pickled data\), which are never loaded"),
        (lambda p: _save(p, GOOD.reshape(1, -1)), r"shape \(1, 7\), expected one dimension"),
        (lambda p: _save(p, _without(GOOD, "ak7pfcand_ijet", "jet_E_ak7")),
         r"lacks columns ak7pfcand_ijet, jet_E_ak7$"),
        (lambda p: _save(p, _with(GOOD, "ak7pfcand_ijet", GOOD["ak7pfcand_ijet"].astype(np.float64))),
         r"column ak7pfcand_ijet has type float64, expected an integer type"),
        (lambda p: _save(p, _with(GOOD, "jet_pt_ak7", GOOD["jet_pt_ak7"].astype("S8"))),
         r"column jet_pt_ak7 has type \|S8, expected a numeric scalar"),
        (lambda p: _save(p, _with(GOOD, "ak7pfcand_pt", np.where(np.arange(7) == 4, np.nan, GOOD["ak7pfcand_pt"]))),
         r"column ak7pfcand_pt has 1 not finite value\(s\) \(first: row 4, value nan\)"),
        (lambda p: _save(p, _with(GOOD, "ak7pfcand_pt", -GOOD["ak7pfcand_pt"])),
         r"column ak7pfcand_pt has 7 not positive value\(s\)"),
        (lambda p: _save(p, _with(GOOD, "ak7pfcand_ijet", GOOD["ak7pfcand_ijet"] - 5)),
         r"column ak7pfcand_ijet has 7 out of range value\(s\)"),
        (lambda p: _save(p, _with(GOOD, "event", GOOD["event"].astype(np.int64) + 2**31)),
         r"column event has 7 out of range value\(s\)"),
        (lambda p: _save(p, _with(GOOD, "jet_eta_ak7", np.arange(7.0))),
         r"column jet_eta_ak7 differs between PF-candidate rows of the jet "
         r"\(run, lumi, event, ijet\) = \(1, 7, 100, 0\)"),
        (lambda p: _save(p, GOOD[[0, 1, 2, 0, 3]]), r"1 PF-candidate row\(s\) appear twice in the same jet"),
        (lambda p: _save(p, GOOD[:0]), r"bad\.npy: no PF-candidate rows"),
    ],
    ids=["text", "npz", "plain-array", "pickled", "2d", "missing-columns", "float-ijet", "string-column", "nan",
         "negative-pt", "negative-ijet", "event-overflow", "inconsistent-jet", "duplicate-row", "empty"],
)
def test_bad_input(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "bad.npy"
    make(path)  # type: ignore[operator]
    with pytest.raises(WtagError, match=message) as info:
        read_cms_ntuple([path])
    text = str(info.value)
    assert "bad.npy" in text and "\n" not in text
    good = _save(tmp_path / "good.npy", _rows([_jet(999, 0, 300.0, C["cands"])]))  # type: ignore[arg-type]
    with pytest.raises(WtagError, match=message):
        import_cms_ntuple([good, path], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_copies(tmp_path: Path) -> None:
    full = _save(tmp_path / "full.npy", GOOD)
    data = full.read_bytes()
    for size in (3, 40, len(data) - 9):
        cut = tmp_path / f"cut{size}.npy"
        cut.write_bytes(data[:size])
        with pytest.raises(WtagError, match=rf"cut{size}\.npy: not a (NumPy|readable) \.npy file"):
            read_cms_ntuple([cut])


def test_same_file_twice_and_overlapping_copies(tmp_path: Path) -> None:
    path = _save(tmp_path / "a.npy", GOOD)
    with pytest.raises(WtagError, match=r"a\.npy: given twice"):
        read_cms_ntuple([path, tmp_path / "." / "a.npy"])
    copy = _save(tmp_path / "copy.npy", GOOD[2:5])
    with pytest.raises(WtagError, match=r"a\.npy and \S*copy\.npy: 3 PF-candidate row\(s\) appear twice"):
        read_cms_ntuple([path, copy])


def test_missing_input_and_empty_selection(tmp_path: Path) -> None:
    with pytest.raises(WtagError, match=r"absent\.npy: no such file$"):
        import_cms_ntuple([str(tmp_path / "absent.npy")], tmp_path / "out")
    with pytest.raises(WtagError, match="no input files given"):
        read_cms_ntuple([])
    low = _save(tmp_path / "low.npy", _rows([B]))
    with pytest.raises(WtagError, match=r"low\.npy: none of the 1 jets pass 200 < pT < 500 GeV, \|eta\| < 2$"):
        import_cms_ntuple([low], tmp_path / "out", select_jets=True)
    assert not (tmp_path / "out").exists()
    out = import_cms_ntuple([low], tmp_path / "out")
    assert len(read_jets(out)) == 1


def test_write_then_read_gives_the_same_jets_and_model_inputs(tmp_path):
    from wtag import features

    jets = labelled_jets(40)
    write_cms_ntuple(jets, tmp_path / "mc.npy")
    back = read_cms_ntuple([tmp_path / "mc.npy"])
    assert len(back) == 40
    for name in ("jet_pt_ak7", "jet_msd_ak7", "jet_tau21_ak7", "jet_isW_ak7", "jet_ncand_ak7", "event"):
        np.testing.assert_array_equal(ak.to_numpy(back[name]), ak.to_numpy(jets[name]))
    names = ("hl", "images", "particles")
    a = features.model_inputs(jets, names)
    b = features.model_inputs(back, names)
    for name in names:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6)


def test_mc_ntuple_prepares_for_training(tmp_path):
    from wtag.prepare import PrepareConfig, prepare

    write_cms_ntuple(labelled_jets(60), tmp_path / "mc.npy")
    ds = prepare(PrepareConfig(source="cms-ntuple", inputs=(str(tmp_path / "mc.npy"),)), tmp_path / "data",
                 progress=False)
    assert sum(c["jets"] for c in ds.manifest["counts"].values()) == 60
    assert set(ds.train.available()) == {"hl", "images", "particles"}
    assert ds.manifest["counts"]["test"]["signal"] == 6


def test_file_groups_join_files_that_share_a_jet(shared_data: Path) -> None:
    from wtag.sources.cms_ntuple import file_groups, jets_per_file

    paths = [shared_data / name for name in REAL_FILES]
    assert file_groups(paths) == [[0, 1, 2]]  # one jet straddles 0/1, another 1/2
    assert file_groups([paths[0], paths[2]]) == [[0], [1]]
    assert file_groups([paths[2], paths[0], paths[1]]) == [[0, 1, 2]]  # shared jets join whatever the order
    assert jets_per_file(paths) == [322, 334, 117] and sum(jets_per_file(paths)) == len(read_cms_ntuple(paths))


@pytest.mark.slow
def test_import_on_a_scheduler_gives_the_file_of_one_process(shared_data: Path, tmp_path: Path,
                                                             dask_scheduler: str) -> None:
    import subprocess
    import sys

    from conftest import REPO

    # params0 and params2 share no jet: two groups, two tasks; with params1 between them, one group.
    for names in ([REAL_FILES[0], REAL_FILES[2]], REAL_FILES):
        paths = [str(shared_data / name) for name in names]
        one = read_jets(import_cms_ntuple(paths, tmp_path / f"one{len(names)}"))
        remote = read_jets(import_cms_ntuple(paths, tmp_path / f"remote{len(names)}", scheduler=dask_scheduler))
        assert len(remote) == len(one) == len(read_cms_ntuple(paths))
        for name in one.fields:
            assert ak.all(ak.ravel(one[name]) == ak.ravel(remote[name])), name
    proc = subprocess.run([sys.executable, "-m", "wtag.cli", "import", "--format", "cms-ntuple",
                           str(shared_data / REAL_FILES[0]), str(shared_data / REAL_FILES[2]),
                           "--output", str(tmp_path / "cli"), "--scheduler", dask_scheduler],
                          env={"PYTHONPATH": f"{REPO / 'src'}", "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"dask: scheduler {dask_scheduler}, 2 worker(s), dashboard" in proc.stderr
    cli = read_jets(tmp_path / "cli" / OUTPUT_NAME)
    assert ak.all(cli["event"] == read_jets(tmp_path / "one2" / OUTPUT_NAME)["event"])
