"""Import the CMS HATS tutorial's jet images (``jet_images.h5``: datasets ``TT`` = W jets, ``QCD``).

These images come without constituents, so they cannot become canonical jets: they are kept as images
(float64, (N, 30, 30, 1), pixel = summed pT in GeV) with labels (int32, 1 = W, 0 = QCD), and written to a
small HDF5 file of our own (datasets ``images`` and ``label``) that :func:`read_cms_images` reads back too.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from wtag import schema
from wtag.errors import WtagError
from wtag.fileio import atomic_path

OUTPUT_NAME = "cms_images.h5"
FORMAT_TAG = "wtag-cms-images"
# Tutorial dataset name -> label. TT first, as the tutorial concatenated them.
TUTORIAL_DATASETS = {"TT": 1, "QCD": 0}
IMAGE_SHAPE = (schema.IMAGE_PIXELS, schema.IMAGE_PIXELS, 1)


def read_cms_images(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 30, 30, 1) float64 and labels (N,) int32 from a tutorial file or one we wrote.

    A tutorial file may hold only one of ``TT`` / ``QCD``; it must hold at least one image.
    """
    path = Path(path)
    if not path.is_file():
        raise WtagError(f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise WtagError(f"{path}: not an HDF5 file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise WtagError(f"{path}: not a readable HDF5 file ({_one_line(exc)})") from None
    with f:
        names = sorted(f.keys())
        if "images" in f and "label" in f:
            images = _images(path, f, "images")
            label = _labels(path, f, len(images))
        elif any(name in f for name in TUTORIAL_DATASETS):
            parts = [(_images(path, f, name), value) for name, value in TUTORIAL_DATASETS.items() if name in f]
            images = np.concatenate([p for p, _ in parts])
            label = np.concatenate([np.full(len(p), value, dtype=np.int32) for p, value in parts])
        else:
            raise WtagError(f"{path}: no dataset TT or QCD (tutorial jet images) nor images + label; "
                            f"found {', '.join(names) or 'nothing'}")
    if len(images) == 0:
        raise WtagError(f"{path}: contains no images")
    return images, label


def import_cms_images(inputs: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str],
                      cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Read the image files (local paths or URLs) and write ``output_dir/cms_images.h5``, atomically.

    Downloads go to ``cache_dir`` (default ``output_dir/downloads``). Nothing is written if any input is bad.
    """
    from wtag.sources.remote import resolve_inputs

    output_dir = Path(output_dir)
    files = resolve_inputs(inputs, Path(cache_dir) if cache_dir is not None else output_dir / "downloads")
    parts = [read_cms_images(p) for p in files]
    images = np.concatenate([p[0] for p in parts])
    label = np.concatenate([p[1] for p in parts])
    out = output_dir / OUTPUT_NAME
    write_cms_images(out, images, label, sources=[str(p) for p in files])
    return out


def write_cms_images(path: str | os.PathLike[str], images: np.ndarray, label: np.ndarray,
                     sources: Sequence[str] = ()) -> None:
    """Write ``images`` (float64) and ``label`` (int32) datasets, gzip-compressed, to a temp file then rename."""
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT_TAG
            f.attrs["sources"] = json.dumps(list(sources))
            f.attrs["pixel_value"] = "summed constituent pT [GeV]"
            f.attrs["half_width"] = schema.IMAGE_HALF_WIDTH
            chunks = (min(max(len(images), 1), 256),) + IMAGE_SHAPE
            f.create_dataset("images", data=np.asarray(images, dtype=np.float64), chunks=chunks,
                             compression="gzip", compression_opts=4, shuffle=True)
            f.create_dataset("label", data=np.asarray(label, dtype=np.int32))


def _images(path: Path, f: h5py.File, name: str) -> np.ndarray:
    node = f[name]
    if not isinstance(node, h5py.Dataset):
        raise WtagError(f"{path}: '{name}' is a group, expected a dataset of images")
    shape = node.shape
    if len(shape) == 3 and shape[1:] == IMAGE_SHAPE[:2]:
        shape = shape + (1,)
    if shape is None or len(shape) != 4 or shape[1:] != IMAGE_SHAPE:
        raise WtagError(f"{path}: dataset '{name}' has shape {node.shape}, expected (N, "
                        f"{', '.join(map(str, IMAGE_SHAPE))})")
    if node.dtype.kind not in "iuf":
        raise WtagError(f"{path}: dataset '{name}' has type {node.dtype}, expected numbers")
    try:
        values = node[...]
    except (OSError, RuntimeError, ValueError) as exc:
        raise WtagError(f"{path}: cannot read dataset '{name}' ({_one_line(exc)})") from None
    values = values.astype(np.float64, copy=False).reshape((len(values),) + IMAGE_SHAPE)
    bad = ~np.isfinite(values) | (values < 0)
    if np.any(bad):
        raise WtagError(f"{path}: dataset '{name}' has {int(np.any(bad, axis=(1, 2, 3)).sum())} image(s) with "
                        "negative or non-finite pixels")
    return values


def _labels(path: Path, f: h5py.File, n: int) -> np.ndarray:
    node = f["label"]
    if not isinstance(node, h5py.Dataset) or node.shape != (n,) or node.dtype.kind not in "biu":
        raise WtagError(f"{path}: dataset 'label' must be {n} integers (one per image), found "
                        f"{getattr(node, 'shape', 'a group')} {getattr(node, 'dtype', '')}".rstrip())
    try:
        label = node[...].astype(np.int32)
    except (OSError, RuntimeError, ValueError) as exc:
        raise WtagError(f"{path}: cannot read dataset 'label' ({_one_line(exc)})") from None
    if np.any((label != 0) & (label != 1)):
        raise WtagError(f"{path}: dataset 'label' has values other than 0 and 1")
    return label


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
