"""The tutorial's jet-image HDF5 importer: the real CMS file, small synthetic files, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from wtag.errors import WtagError
from wtag.sources.cms_images import FORMAT_TAG, OUTPUT_NAME, import_cms_images, read_cms_images

REAL_FILE = "cms2011_tt_qcd_jet_images.h5"


def _tutorial_file(path: Path, n_tt: int = 3, n_qcd: int = 2, seed: int = 0,
                   **overrides: np.ndarray | None) -> Path:
    """A file laid out like the tutorial's jet_images.h5, with random sparse pT images."""
    rng = np.random.default_rng(seed)
    data = {}
    for name, n in (("TT", n_tt), ("QCD", n_qcd)):
        images = rng.exponential(5.0, size=(n, 30, 30, 1)) * (rng.random((n, 30, 30, 1)) < 0.05)
        data[name] = images
    data.update(overrides)
    with h5py.File(path, "w") as f:
        for name, values in data.items():
            if values is not None:
                f.create_dataset(name, data=values)
    return path


def _output_is_empty(output_dir: Path) -> bool:
    return not output_dir.exists() or not any(output_dir.rglob("*.h5"))


@pytest.mark.slow
def test_real_file(shared_data: Path) -> None:
    images, label = read_cms_images(shared_data / REAL_FILE)
    assert images.shape == (5126, 30, 30, 1)
    assert images.dtype == np.float64 and label.dtype == np.int32
    assert int((label == 1).sum()) == 1821 and int((label == 0).sum()) == 3305
    assert np.all(label[:1821] == 1), "TT (W jets) come first"
    total = images.sum(axis=(1, 2, 3))
    # Mean total image pT per class on the real file (pixel = summed pT in GeV): 298.6 TT, 334.3 QCD.
    assert total[label == 1].mean() == pytest.approx(298.617, abs=0.01)
    assert total[label == 0].mean() == pytest.approx(334.312, abs=0.01)
    assert np.all(total > 0)


@pytest.mark.slow
def test_import_real_file_round_trip(shared_data: Path, tmp_path: Path) -> None:
    out = import_cms_images([shared_data / REAL_FILE], tmp_path / "out")
    assert out == tmp_path / "out" / OUTPUT_NAME
    assert sorted(p.name for p in out.parent.iterdir()) == [OUTPUT_NAME]
    images, label = read_cms_images(out)
    original, original_label = read_cms_images(shared_data / REAL_FILE)
    np.testing.assert_array_equal(images, original)
    np.testing.assert_array_equal(label, original_label)
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == FORMAT_TAG
        assert json.loads(f.attrs["sources"]) == [str(shared_data / REAL_FILE)]
        assert f["images"].dtype == np.float64 and f["label"].dtype == np.int32


def test_synthetic_file_labels_and_values(tmp_path: Path) -> None:
    path = _tutorial_file(tmp_path / "jet_images.h5", n_tt=3, n_qcd=2)
    images, label = read_cms_images(path)
    np.testing.assert_array_equal(label, [1, 1, 1, 0, 0])
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(images[:3], f["TT"][...])
        np.testing.assert_array_equal(images[3:], f["QCD"][...])


def test_import_concatenates_inputs_in_order(tmp_path: Path) -> None:
    a = _tutorial_file(tmp_path / "a.h5", n_tt=2, n_qcd=1, seed=1)
    b = _tutorial_file(tmp_path / "b.h5", n_tt=1, n_qcd=3, seed=2)
    out = import_cms_images([a, str(b)], tmp_path / "out")
    images, label = read_cms_images(out)
    np.testing.assert_array_equal(label, [1, 1, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(images[:3], read_cms_images(a)[0])
    np.testing.assert_array_equal(images[3:], read_cms_images(b)[0])


def test_single_class_and_channelless_images(tmp_path: Path) -> None:
    qcd = np.arange(2 * 30 * 30, dtype=np.float32).reshape(2, 30, 30)
    path = _tutorial_file(tmp_path / "qcd_only.h5", TT=None, QCD=qcd)
    with h5py.File(path, "r") as f:
        assert list(f.keys()) == ["QCD"]
    images, label = read_cms_images(path)
    assert images.shape == (2, 30, 30, 1) and images.dtype == np.float64
    np.testing.assert_array_equal(label, [0, 0])
    np.testing.assert_array_equal(images[..., 0], qcd)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("TT,QCD\n1,2\n"), r"not an HDF5 file"),
        (lambda p: _tutorial_file(p, TT=None, QCD=None, other=np.zeros(3)), r"no dataset TT or QCD .*found other"),
        (lambda p: _tutorial_file(p, TT=np.zeros((4, 28, 28, 1))), r"dataset 'TT' has shape \(4, 28, 28, 1\)"),
        (lambda p: _tutorial_file(p, QCD=np.array([b"abc"] * 3)), r"dataset 'QCD' has shape \(3,\)"),
        (lambda p: _tutorial_file(p, QCD=np.full((2, 30, 30, 1), b"x")), r"'QCD' has type \|S1, expected numbers"),
        (lambda p: _tutorial_file(p, TT=np.full((2, 30, 30, 1), np.nan)), r"'TT' has 2 image\(s\) with negative"),
        (lambda p: _tutorial_file(p, QCD=-np.ones((1, 30, 30, 1))), r"'QCD' has 1 image\(s\) with negative"),
        (lambda p: _tutorial_file(p, n_tt=0, n_qcd=0), r"contains no images"),
    ],
    ids=["text", "no-datasets", "wrong-shape", "strings", "bytes-images", "nan", "negative", "empty"],
)
def test_bad_input(tmp_path: Path, make: object, message: str) -> None:
    path = tmp_path / "bad.h5"
    make(path)  # type: ignore[operator]
    with pytest.raises(WtagError, match=message) as info:
        read_cms_images(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    good = _tutorial_file(tmp_path / "good.h5")
    with pytest.raises(WtagError, match=message):
        import_cms_images([good, path], tmp_path / "out")
    assert _output_is_empty(tmp_path / "out")


def test_group_instead_of_dataset(tmp_path: Path) -> None:
    path = tmp_path / "group.h5"
    with h5py.File(path, "w") as f:
        f.create_group("TT")
    with pytest.raises(WtagError, match=r"'TT' is a group"):
        read_cms_images(path)


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.98])
def test_truncated_file(tmp_path: Path, fraction: float) -> None:
    full = _tutorial_file(tmp_path / "full.h5", n_tt=40, n_qcd=40)
    data = full.read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(WtagError, match=r"cut\.h5: not a(?: readable)? HDF5 file"):
        read_cms_images(cut)
    with pytest.raises(WtagError):
        import_cms_images([cut], tmp_path / "out")
    assert _output_is_empty(tmp_path / "out")


@pytest.mark.slow
def test_truncated_real_file(shared_data: Path, tmp_path: Path) -> None:
    data = (shared_data / REAL_FILE).read_bytes()
    cut = tmp_path / "jet_images.h5"
    cut.write_bytes(data[: len(data) * 9 // 10])
    with pytest.raises(WtagError, match=r"jet_images\.h5: not a readable HDF5 file \(.*truncated"):
        import_cms_images([cut], tmp_path / "out")
    assert _output_is_empty(tmp_path / "out")


def test_canonical_file_label_checks(tmp_path: Path) -> None:
    path = tmp_path / "canon.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((3, 30, 30, 1)))
        f.create_dataset("label", data=np.array([0, 1, 2], dtype=np.int32))
    with pytest.raises(WtagError, match=r"'label' has values other than 0 and 1"):
        read_cms_images(path)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=np.zeros((3, 30, 30, 1)))
        f.create_dataset("label", data=np.zeros(2, dtype=np.int32))
    with pytest.raises(WtagError, match=r"'label' must be 3 integers"):
        read_cms_images(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WtagError, match=r"absent\.h5: no such file$"):
        read_cms_images(tmp_path / "absent.h5")
    with pytest.raises(WtagError, match=r"absent\.h5: no such file$"):
        import_cms_images([tmp_path / "absent.h5"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
