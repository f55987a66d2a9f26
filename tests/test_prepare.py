from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from wtag.errors import WtagError
from wtag.pipeline import prepare_step
from wtag.prepare import PrepareConfig, prepare
from wtag.tracking import configure


@pytest.mark.parametrize("kwargs,needle", [
    ({"source": "nope"}, "unknown source 'nope'"),
    ({"source": "pythia", "n_jets": 0}, "must be positive"),
    ({"source": "cms-images"}, "needs input files"),
    ({"signal": "zjets"}, "unknown signal process"),
    ({"pileup": -1.0}, "pileup=-1.0"),
    ({"source": "pythia", "max_jets": 5}, "max_jets=5 caps imported files"),
    ({"source": "cms-images", "inputs": ("x.h5",), "max_jets": -1}, "max_jets=-1 must be >= 0"),
    ({"sample": "huge"}, "unknown sample 'huge' .known: default, benchmark, large"),
    ({"sample": "benchmark", "n_jets": 10}, "sample=benchmark sets n_jets itself"),
    ({"test_fraction": 0.3}, "sample=default sets test_fraction itself"),
    ({"source": "cms-images", "inputs": ("x.h5",), "sample": "benchmark"}, "needs source=pythia"),
    ({"source": "cms-ntuple", "inputs": ("x.npy",), "detector": False}, "source 'cms-ntuple' is already measured"),
])
def test_bad_parameters_are_named(kwargs, needle):
    with pytest.raises(WtagError, match=needle):
        PrepareConfig(**kwargs)


def test_key_depends_on_every_parameter():
    base = PrepareConfig()
    others = [PrepareConfig(seed=2), PrepareConfig(n_jets=7), PrepareConfig(pileup=3.0), PrepareConfig(signal="wjets"),
              PrepareConfig(sample="benchmark"), PrepareConfig(detector=False)]
    assert len({base.key(), *(o.key() for o in others)}) == 1 + len(others)
    assert base.key() == PrepareConfig().key()
    imported = PrepareConfig(source="cms-ntuple", inputs=("a.npy",))
    assert imported.key(["0"]) != PrepareConfig(source="cms-ntuple", inputs=("a.npy",), val_fraction=0.1).key(["0"])


def _split_counts(config: PrepareConfig) -> dict[str, tuple[int, int]]:
    """(QCD, W) jets per split when every generated jet passes the selection."""
    from wtag.dataset import stratified_split

    n = config.jets_to_generate()
    label = np.r_[np.zeros(n["qcd"], np.int32), np.ones(n[config.signal], np.int32)]
    index = stratified_split(label, config.seed, *config.split_fractions())
    assert len(np.unique(np.concatenate(list(index.values())))) == len(label)
    return {name: (int((label[i] == 0).sum()), int((label[i] == 1).sum())) for name, i in index.items()}


def test_sample_shapes_put_the_extra_qcd_into_the_test_split():
    """The benchmark preset holds the sizes the physics needs; the default keeps train/val balanced."""
    bench = PrepareConfig(sample="benchmark")
    assert bench.jets_to_generate() == {"ttbar": 35_000, "qcd": 70_000}
    assert _split_counts(bench) == {"test": (42_000, 5_250), "val": (3_500, 3_500), "train": (24_500, 26_250)}
    assert bench.sample_size() == "benchmark" and bench.params()["test_fraction"] == "qcd:0.6,w:0.15"
    large = PrepareConfig(sample="large")
    assert large.jets_to_generate() == {"ttbar": 105_000, "qcd": 210_000}
    assert _split_counts(large) == {"test": (126_000, 15_750), "val": (10_500, 10_500), "train": (73_500, 78_750)}
    default = PrepareConfig(n_jets=100, signal="wjets")
    assert default.jets_to_generate() == {"wjets": 100, "qcd": 200}
    assert _split_counts(default) == {"test": (120, 20), "val": (20, 20), "train": (60, 60)}


def test_cms_images_prepare_is_stratified_deterministic_and_reused(shared_data, tmp_path):
    config = PrepareConfig(source="cms-images", inputs=(str(shared_data / "cms2011_tt_qcd_jet_images.h5"),), seed=5)
    ds = prepare(config, tmp_path / "a", progress=False)
    counts = ds.manifest["counts"]
    assert sum(c["jets"] for c in counts.values()) == 5126
    assert sum(c["signal"] for c in counts.values()) == 1821
    for name in ("train", "val", "test"):
        frac = counts[name]["signal"] / counts[name]["jets"]
        assert abs(frac - 1821 / 5126) < 0.01
    assert ds.train.images.shape[1:] == (30, 30, 1) and ds.train.images.dtype == np.float32
    assert ds.train.hl is None and ds.train.particles is None
    assert ds.standardization.image_scale == pytest.approx(ds.train.images.sum(axis=(1, 2, 3)).mean(), rel=1e-5)
    # msd of the images-only source is the image mass: W jets peak near the W mass, QCD lower
    assert 70 < np.median(ds.train.msd[ds.train.label == 1]) < 100
    assert np.median(ds.train.msd[ds.train.label == 0]) < np.median(ds.train.msd[ds.train.label == 1])
    manifest = ds.root / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    again = prepare(config, tmp_path / "a", progress=False)
    assert again.digest == ds.digest and manifest.stat().st_mtime_ns == mtime
    assert prepare(config, tmp_path / "b", progress=False).digest == ds.digest


def test_collision_data_cannot_be_trained_on(shared_data, tmp_path):
    files = tuple(str(p) for p in sorted(shared_data.glob("cms2011a_jet_pfcands_params*.npy")))
    config = PrepareConfig(source="cms-ntuple", inputs=files)
    with pytest.raises(WtagError, match="no truth label"):
        prepare(config, tmp_path, progress=False)
    assert not (tmp_path / "prepared").exists() or not any((tmp_path / "prepared").iterdir())


def test_prepare_step_logs_dataset_manifest_and_plots_then_reuses(shared_data, tmp_path, tracking_uri):
    exp = configure(tracking_uri, "wtag-test-prepare")
    config = PrepareConfig(source="cms-images", inputs=(str(shared_data / "cms2011_tt_qcd_jet_images.h5"),),
                           max_jets=600)
    run_id, ds = prepare_step(config, tmp_path, exp, progress=False)
    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset_digest"] == ds.digest
    assert run.data.params["max_jets"] == "600"
    assert sum(int(run.data.params[f"n_{s}"]) for s in ("train", "val", "test")) == 600
    contexts = {d.tags[0].value for d in run.inputs.dataset_inputs}
    assert contexts == {"train", "val", "test"}
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "plots")}
    assert {"manifest.json", "standardization.json", "plots/average_images.png", "plots/features.png"} <= artifacts
    again, ds2 = prepare_step(config, tmp_path, exp, progress=False)
    assert again == run_id and ds2.digest == ds.digest


def test_prepared_key_follows_input_content_and_code_not_paths(tmp_path):
    from wtag.prepare import prepare_code_version, prepared_key

    a = tmp_path / "a.npy"
    a.write_bytes(b"first content")
    config = PrepareConfig(source="cms-ntuple", inputs=(str(a),), max_jets=0)
    key = prepared_key(config, tmp_path)
    assert prepared_key(config, tmp_path) == key
    b = tmp_path / "elsewhere" / "b.npy"
    b.parent.mkdir()
    b.write_bytes(b"first content")
    assert prepared_key(PrepareConfig(source="cms-ntuple", inputs=(str(b),), max_jets=0), tmp_path) == key
    a.write_bytes(b"edited content")  # same path, same size class, new content
    assert prepared_key(config, tmp_path) != key
    digests = ["0" * 64]
    assert config.key(digests) == config.key(digests, code=prepare_code_version())
    assert config.key(digests, code="other code") != config.key(digests)
    with pytest.raises(WtagError, match="one content digest per input"):
        config.key([])


def test_code_version_changes_with_the_source(tmp_path, monkeypatch):
    import importlib

    from wtag.codeversion import code_version

    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "features.py").write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    first = code_version(["fakepkg"], ["numpy"])
    assert code_version(["fakepkg"], ["numpy"]) == first
    (package / "features.py").write_text("def f():\n    return 2\n")
    assert code_version(["fakepkg"], ["numpy"]) != first
    (package / "features.py").write_text("def f():\n    return 1\n")
    (package / "new.py").write_text("")
    assert code_version(["fakepkg"], ["numpy"]) != first
    with pytest.raises(WtagError, match="not found"):
        code_version(["no_such_module_here"])


@pytest.mark.slow
def test_prepare_step_never_reuses_a_dataset_of_an_edited_input(tracking_uri, tmp_path):
    from synthetic import labelled_jets

    from wtag.sources.cms_ntuple import write_cms_ntuple

    mc = tmp_path / "mc.npy"
    write_cms_ntuple(labelled_jets(60), mc)
    exp_id = configure(tracking_uri, "wtag-test-stale-prepare")
    config = PrepareConfig(source="cms-ntuple", inputs=(str(mc),))
    first_run, first = prepare_step(config, tmp_path / "data", exp_id, progress=False)
    assert prepare_step(config, tmp_path / "data", exp_id, progress=False)[0] == first_run  # unchanged: reused
    write_cms_ntuple(labelled_jets(60)[::-1], mc)  # same path, same jets count, other content (order)
    second_run, second = prepare_step(config, tmp_path / "data", exp_id, progress=False)
    assert second_run != first_run and second.root != first.root and second.digest != first.digest
    params = MlflowClient().get_run(second_run).data.params
    assert params["prepared_key"] == second.root.name
