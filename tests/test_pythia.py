"""The Pythia 8 + FastJet generator: parameters, chunking, reproducibility, resume, labels and physics sanity."""
from __future__ import annotations

import time
from pathlib import Path

import awkward as ak
import numpy as np
import pytest

from wtag import schema
from wtag.errors import WtagError
from wtag.jets import read_jets, read_provenance, write_jets
from wtag.sources import pythia as py


def same_jets(a: ak.Array, b: ak.Array) -> bool:
    return all(ak.all(ak.ravel(a[name]) == ak.ravel(b[name])) and len(a[name]) == len(b[name]) for name in a.fields)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"process": "zjets"}, "unknown process"),
        ({"n_jets": 0}, "n_jets"),
        ({"n_jets": -3}, "n_jets"),
        ({"pileup": -1.0}, "pileup"),
        ({"pileup": float("nan")}, "pileup"),
        ({"seed": -1}, "seed"),
        ({"workers": 0}, "workers"),
        ({"chunk_jets": 0}, "chunk_jets"),
        ({"alpha_s": 0.1}, "unknown generator setting"),
        ({"fsr_alphas": 0.5}, "fsr_alphas"),
        ({"qcd_fractions": (1.0, 2.0)}, "qcd_fractions"),
    ],
)
def test_bad_parameters_raise_wtag_error(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"process": "ttbar", "n_jets": 5, "seed": 1, "output": tmp_path, "workers": 1,
                               "progress": False}
    args.update(kwargs)
    with pytest.raises(WtagError, match=message):
        py.generate(**args)
    assert not list(tmp_path.glob("*.root"))


def test_qcd_plan_splits_jets_over_slices_with_distinct_seeds(tmp_path: Path) -> None:
    specs = py.plan_chunks("qcd", 2500, 7, tmp_path, 400, py.Tuning())
    per_slice: dict[str, int] = {}
    for spec in specs:
        per_slice[spec.sample.name] = per_slice.get(spec.sample.name, 0) + spec.n_jets
    assert sum(per_slice.values()) == 2500
    assert per_slice == {"qcd_pt120to170": 38, "qcd_pt170to300": 621, "qcd_pt300to470": 1221, "qcd_pt470to600": 620}
    assert all(spec.n_jets <= 400 for spec in specs)
    assert [spec.index for spec in specs] == list(range(len(specs)))
    assert len({spec.pythia_seed for spec in specs}) == len(specs)
    assert all(1 <= spec.pythia_seed <= 900_000_000 for spec in specs)
    assert specs[3].path == tmp_path / "qcd_seed7_chunk3.root"
    assert py.plan_chunks("qcd", 2500, 7, tmp_path, 400, py.Tuning()) == specs
    assert py.plan_chunks("qcd", 2500, 8, tmp_path, 400, py.Tuning())[0].pythia_seed != specs[0].pythia_seed


def test_merged_w_label_needs_the_w_and_both_quarks_in_the_cone() -> None:
    w = {
        "event": np.array([0, 1, 1]),
        "w_eta": np.array([0.0, 1.0, -1.0]), "w_phi": np.array([3.1, 0.0, 2.0]),
        "q1_eta": np.array([0.2, 1.2, -1.0]), "q1_phi": np.array([-3.1, 0.1, 2.0]),
        "q2_eta": np.array([-0.2, 1.0, -1.0]), "q2_phi": np.array([3.0, -0.75, 2.0]),
    }
    jet_event = np.array([0, 0, 1, 1, 2])
    jet_eta = np.array([0.0, 0.0, 1.0, -1.1, 0.0])
    jet_phi = np.array([-3.13, 0.0, 0.0, 2.1, 3.1])
    label = py.merged_w_label(jet_event, jet_eta, jet_phi, w)
    # jet 0: W across the phi seam, both quarks inside; jet 1: far away; jet 2: second quark at dR 0.75;
    # jet 3: the event's second W; jet 4: no W in its event.
    assert label.tolist() == [1, 0, 0, 1, 0]


def test_overlay_draws_poisson_events_rotated_and_reflected() -> None:
    n_pool = 50
    counts = np.full(n_pool, 4)
    rng = np.random.default_rng(0)
    pt = rng.uniform(0.5, 2.0, 4 * n_pool)
    phi = rng.uniform(-np.pi, np.pi, 4 * n_pool)
    pool = py.MinBiasPool(np.concatenate([[0], np.cumsum(counts)]), pt * np.cos(phi), pt * np.sin(phi),
                          np.full(4 * n_pool, 3.0), np.full(4 * n_pool, 5.0), np.full(4 * n_pool, 211),
                          np.ones(4 * n_pool))
    event, px, py_, pz, e, pid, charge = py.overlay(pool, 2_000, 3.0, np.random.default_rng(1))
    per_event = np.bincount(event, minlength=2_000) / 4
    assert per_event.mean() == pytest.approx(3.0, abs=0.15)
    assert per_event.var() == pytest.approx(3.0, rel=0.15)
    assert np.all(np.diff(event) >= 0)
    assert np.all(np.isin(np.round(np.hypot(px, py_), 12), np.round(pt, 12)))
    assert set(np.unique(pz).tolist()) == {-3.0, 3.0}
    assert np.all(e == 5.0) and np.all(pid == 211) and np.all(charge == 1)


def test_tiny_run_writes_readable_chunks_reproducibly_and_resumes(tmp_path: Path) -> None:
    first = py.generate("ttbar", 6, seed=11, output=tmp_path / "a", workers=1, pileup=0.0, chunk_jets=3,
                        progress=False)
    assert [p.name for p in first] == ["ttbar_seed11_chunk0.root", "ttbar_seed11_chunk1.root"]
    jets = read_jets(first)
    assert len(jets) == 6
    assert set(jets.fields) == set(schema.JET_BRANCHES + schema.EVENT_BRANCHES + schema.CAND_BRANCHES)
    assert np.all(jets["jet_isW_ak7"] == 1)
    assert np.all((jets["jet_pt_ak7"] > 200) & (jets["jet_pt_ak7"] < 500) & (np.abs(jets["jet_eta_ak7"]) < 2))
    assert np.all(jets["sample_id"] == 1) and np.all(jets["run"] == 11)
    assert jets["lumi"].tolist() == [0, 0, 0, 1, 1, 1]
    assert np.all(jets["weight"] > 0)
    assert np.all(jets["jet_ncand_ak7"] == ak.num(jets["ak7pfcand_pt"]))
    # Constituents are massless and hardest first; the jet is their four-vector sum.
    pt = jets["ak7pfcand_pt"]
    assert ak.all(pt[:, :-1] >= pt[:, 1:])
    px = ak.sum(pt * np.cos(jets["ak7pfcand_phi"]), axis=1)
    py_ = ak.sum(pt * np.sin(jets["ak7pfcand_phi"]), axis=1)
    np.testing.assert_allclose(np.hypot(px, py_), jets["jet_pt_ak7"], rtol=1e-9)
    assert set(np.unique(np.abs(ak.flatten(jets["ak7pfcand_id"])))) <= {11, 13, 22, 130, 211}

    again = py.generate("ttbar", 6, seed=11, output=tmp_path / "b", workers=1, pileup=0.0, chunk_jets=3,
                        progress=False)
    assert same_jets(read_jets(again), jets)

    before = {p: p.stat().st_mtime_ns for p in first}
    first[1].unlink()
    resumed = py.generate("ttbar", 6, seed=11, output=tmp_path / "a", workers=1, pileup=0.0, chunk_jets=3,
                          progress=False)
    assert resumed == first
    assert first[0].stat().st_mtime_ns == before[first[0]]
    assert same_jets(read_jets(first[1]), jets[3:])

    other = py.generate("ttbar", 3, seed=12, output=tmp_path / "c", workers=1, pileup=0.0, chunk_jets=3,
                        progress=False)
    assert not same_jets(read_jets(other), jets[:3])


def test_chunk_with_the_wrong_content_is_redone(tmp_path: Path) -> None:
    paths = py.generate("qcd", 2, seed=5, output=tmp_path, workers=1, pileup=0.0, chunk_jets=5, progress=False,
                        qcd_fractions=(0.0, 0.0, 0.0, 1.0))
    assert len(read_jets(paths)) == 2
    assert np.all(read_jets(paths)["jet_isW_ak7"] == 0) and np.all(read_jets(paths)["sample_id"] == 14)
    paths[0].write_bytes(b"truncated")
    redone = py.generate("qcd", 2, seed=5, output=tmp_path, workers=1, pileup=0.0, chunk_jets=5, progress=False,
                         qcd_fractions=(0.0, 0.0, 0.0, 1.0))
    assert len(read_jets(redone)) == 2


@pytest.mark.slow
def test_worker_count_does_not_change_the_output(tmp_path: Path) -> None:
    kwargs = {"n_jets": 4, "seed": 3, "pileup": 1.0, "chunk_jets": 2, "progress": False, "pileup_pool": 30}
    one = py.generate("wjets", output=tmp_path / "one", workers=1, **kwargs)
    two = py.generate("wjets", output=tmp_path / "two", workers=2, **kwargs)
    assert same_jets(read_jets(one), read_jets(two))
    assert len(read_jets(two)) == 4


@pytest.mark.slow
def test_physics_sanity_merged_w_versus_qcd(tmp_path: Path) -> None:
    common = {"seed": 2024, "output": tmp_path, "workers": 1, "progress": False, "pileup_pool": 200}
    signal = read_jets(py.generate("ttbar", 250, **common))
    qcd = read_jets(py.generate("qcd", 250, **common))
    msd_signal = float(np.median(signal["jet_msd_ak7"]))
    msd_qcd = float(np.median(qcd["jet_msd_ak7"]))
    tau21_gap = float(np.mean(qcd["jet_tau21_ak7"]) - np.mean(signal["jet_tau21_ak7"]))
    assert 65.0 < msd_signal < 95.0
    assert msd_qcd < 40.0
    assert tau21_gap > 0.15
    assert np.all(signal["jet_isW_ak7"] == 1) and np.all(qcd["jet_isW_ak7"] == 0)
    # Pileup (MU = 9) adds soft constituents: real 2011 AK7 jets at these pT carry 40-80 PF candidates.
    assert 35 < float(np.mean(qcd["jet_ncand_ak7"])) < 120


# Tiny runs on Dask: 4 chunks of 2 jets from the hardest QCD slice (fast to select), small pileup pool.
DASK_RUN = {"n_jets": 8, "seed": 21, "pileup": 1.0, "chunk_jets": 2, "progress": False, "pileup_pool": 30,
            "qcd_fractions": (0.0, 0.0, 0.0, 1.0)}


def chunk_contents(paths: list[Path]) -> list[tuple[ak.Array, str | None]]:
    return [(read_jets(p), read_provenance(p)) for p in paths]


def assert_same_chunks(a: list[Path], b: list[Path]) -> None:
    assert [p.name for p in a] == [p.name for p in b]
    for (jets_a, prov_a), (jets_b, prov_b) in zip(chunk_contents(a), chunk_contents(b)):
        assert same_jets(jets_a, jets_b) and prov_a == prov_b and prov_a is not None


@pytest.fixture(scope="module")
def reference_chunks(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The DASK_RUN chunks made in this process by one worker."""
    return py.generate("qcd", output=tmp_path_factory.mktemp("reference"), workers=1, **DASK_RUN)


def test_stale_chunks_are_regenerated_and_matching_ones_kept(tmp_path: Path) -> None:
    base = {"n_jets": 2, "seed": 5, "chunk_jets": 2, "progress": False, "workers": 1, "pileup_pool": 20,
            "qcd_fractions": (0.0, 0.0, 0.0, 1.0)}
    (path,) = py.generate("qcd", output=tmp_path, pileup=0.0, **base)
    first = read_jets(path)
    mtime = path.stat().st_mtime_ns
    assert py.generate("qcd", output=tmp_path, pileup=0.0, **base) == [path]
    assert path.stat().st_mtime_ns == mtime  # full match: kept
    # Other pileup: same name, same jet count and sample, but not the same chunk.
    py.generate("qcd", output=tmp_path, pileup=1.0, **base)
    with_pileup = read_jets(path)
    assert not same_jets(with_pileup, first)
    assert '"pileup": 1.0' in str(read_provenance(path))
    assert len(list((tmp_path / "pileup").glob("minbias_seed5_*.npz"))) == 1
    # Other tuning.
    py.generate("qcd", output=tmp_path, pileup=1.0, fsr_alphas=0.12, **base)
    assert not same_jets(read_jets(path), with_pileup)
    # Other detector setting (particle level).
    py.generate("qcd", output=tmp_path, pileup=1.0, detector=False, fsr_alphas=0.12, **base)
    assert '"detector": false' in str(read_provenance(path))
    # A chunk recorded by other generator code is redone, not reused.
    py.generate("qcd", output=tmp_path, pileup=0.0, **base)
    assert same_jets(read_jets(path), first)
    provenance = str(read_provenance(path))
    other = provenance.replace(py.generator_version(), "0123456789abcdef")
    write_jets(path, read_jets(path), provenance=other)
    py.generate("qcd", output=tmp_path, pileup=0.0, **base)
    assert read_provenance(path) == provenance


def test_generator_version_covers_what_the_generator_reads() -> None:
    """Every wtag module the generator's modules import is hashed or holds no physics, and every schema constant
    they read is among the hashed GENERATOR_SCHEMA values: so no edit that changes a chunk keeps its version, and
    an edit elsewhere in wtag.schema (model inputs, tag keys) regenerates nothing."""
    import ast
    import importlib.util

    no_physics = {"wtag.errors", "wtag.fileio", "wtag.execution", "wtag.codeversion", "wtag.schema"}
    read: set[str] = set()
    for module in py.GENERATOR_MODULES:
        tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wtag"):
                for alias in node.names:  # ``from wtag.sources import detector`` imports wtag.sources.detector
                    name = f"{node.module}.{alias.name}"
                    if importlib.util.find_spec(node.module).submodule_search_locations is None or \
                            importlib.util.find_spec(name) is None:
                        name = node.module
                    assert name in py.GENERATOR_MODULES or name in no_physics, (
                        f"{module} imports {name}, which generator_version() does not hash")
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "schema"):
                read.add(node.attr)
    assert read and read <= set(py.GENERATOR_SCHEMA), sorted(read - set(py.GENERATOR_SCHEMA))
    assert len(py.generator_version()) == 16


@pytest.mark.slow
def test_chunk_files_record_their_provenance_and_pool_is_content_addressed(tmp_path: Path) -> None:
    config = py.RunConfig(3, 2.0, True, py.Tuning(pileup_pool=10, qcd_fractions=(0.0, 0.0, 0.0, 1.0)))
    (spec,) = py.plan_chunks("qcd", 1, 3, tmp_path, 5, config.tuning)
    provenance = py.chunk_provenance(spec, config, py.generator_version())
    assert not py.chunk_complete(spec, provenance)
    pool_file = py.pool_path(tmp_path, config)
    assert pool_file is not None and pool_file.parent == tmp_path / "pileup"
    assert py.pool_path(tmp_path, py.RunConfig(3, 0.0, True, config.tuning)) is None
    assert py.pool_path(tmp_path, py.RunConfig(4, 2.0, True, config.tuning)) != pool_file
    assert py.pool_path(tmp_path, py.RunConfig(3, 2.0, True, py.Tuning(pileup_pool=11))) != pool_file
    py.ensure_pool(pool_file, config)
    stored = py.load_pool(pool_file)
    assert stored.size == 10 and stored.offsets[-1] == len(stored.px) > 0
    mtime = pool_file.stat().st_mtime_ns
    py.ensure_pool(pool_file, config)
    assert pool_file.stat().st_mtime_ns == mtime
    py.run_chunk(spec, config, str(pool_file))
    assert py.chunk_complete(spec, provenance)


@pytest.mark.slow
def test_scheduler_local_cluster_and_one_worker_give_the_same_chunks(reference_chunks: list[Path], tmp_path: Path,
                                                                    dask_scheduler: str) -> None:
    remote = py.generate("qcd", output=tmp_path / "remote", scheduler=dask_scheduler, **DASK_RUN)
    assert_same_chunks(remote, reference_chunks)
    local = py.generate("qcd", output=tmp_path / "local", workers=2, **DASK_RUN)
    assert_same_chunks(local, reference_chunks)
    assert len(list((tmp_path / "remote" / "pileup").glob("*.npz"))) == 1
    assert not [p for p in (tmp_path / "remote").rglob(".*")]  # no temporary leftovers


@pytest.mark.slow
def test_a_worker_killed_mid_run_changes_nothing(reference_chunks: list[Path], tmp_path: Path,
                                                 dask_scheduler: str, run_killing_a_worker) -> None:
    paths, _ = run_killing_a_worker(lambda: py.generate("qcd", output=tmp_path, scheduler=dask_scheduler, **DASK_RUN),
                                    "chunk-qcd")
    assert_same_chunks(paths, reference_chunks)


@pytest.mark.slow
def test_an_interrupted_client_leaves_only_complete_chunks_and_the_rerun_finishes(
        reference_chunks: list[Path], tmp_path: Path, dask_scheduler: str) -> None:
    import os
    import subprocess
    import sys

    from distributed import Client

    script = (f"from wtag.sources import pythia\n"
              f"pythia.generate('qcd', output={str(tmp_path)!r}, scheduler={dask_scheduler!r}, **{DASK_RUN!r})\n")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo / "src"), os.environ.get("PYTHONPATH", "")])}
    client = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("qcd_*.root")) and time.monotonic() < deadline and client.poll() is None:
        time.sleep(0.05)
    client.kill()
    client.wait()
    finished = sorted(tmp_path.glob("qcd_*.root"))
    assert finished and len(finished) < 4, "the client was not interrupted mid-run"
    with Client(dask_scheduler, timeout=10) as watcher:  # tasks already running finish on the workers
        while any(watcher.processing().values()) and time.monotonic() < deadline:
            time.sleep(0.1)
    by_name = {p.name: p for p in reference_chunks}
    for path in tmp_path.glob("qcd_*.root"):
        assert read_provenance(path) == read_provenance(by_name[path.name])
    kept = {p: p.stat().st_mtime_ns for p in tmp_path.glob("qcd_*.root")}
    rerun = py.generate("qcd", output=tmp_path, scheduler=dask_scheduler, **DASK_RUN)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # only the missing chunks were made
    assert_same_chunks(rerun, reference_chunks)
