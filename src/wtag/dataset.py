"""ML-ready datasets: the train/validation/test split, training weights, standardization, manifest and digest.

A prepared dataset is a directory: ``manifest.json`` (parameters, counts, digest), ``standardization.json``
and ``train.npz`` / ``val.npz`` / ``test.npz``. The digest is a hash of the array contents, so two runs that
produce the same data share it and a finished ``prepare`` can be reused.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from wtag import schema
from wtag.errors import WtagError
from wtag.fileio import atomic_path, write_json

SPLITS = ("train", "val", "test")
MODEL_INPUTS = (schema.INPUT_HL, schema.INPUT_IMAGES, schema.INPUT_PARTICLES)


@dataclasses.dataclass
class Split:
    """One split's arrays. Model inputs are raw (un-standardized) float32; absent inputs are None.

    ``hl``: (N, len(HL_FEATURES)); ``images``: (N, 30, 30, 1) pixel pT in GeV; ``particles``:
    (N, MAX_PARTICLES, len(PARTICLE_FEATURES)), zero-padded (mask: pt > 0). ``weight`` flattens pT per class
    for training; ``msd`` is the soft-drop mass (the image mass for the images-only source), used to show
    mass sculpting.
    """

    label: np.ndarray
    weight: np.ndarray
    msd: np.ndarray
    pt: np.ndarray
    hl: np.ndarray | None = None
    images: np.ndarray | None = None
    particles: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.label)

    def inputs(self, names: tuple[str, ...] | list[str] | None = None) -> dict[str, np.ndarray]:
        """The model inputs by name (all present ones by default); a missing requested input is a WtagError."""
        names = tuple(names) if names is not None else tuple(n for n in MODEL_INPUTS if getattr(self, n) is not None)
        out = {}
        for name in names:
            value = getattr(self, name, None) if name in MODEL_INPUTS else None
            if value is None:
                raise WtagError(f"dataset has no '{name}' input (this source provides: {', '.join(self.available())})")
            out[name] = value
        return out

    def available(self) -> tuple[str, ...]:
        return tuple(n for n in MODEL_INPUTS if getattr(self, n) is not None)

    def subset(self, index: np.ndarray) -> Split:
        return Split(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                        for f in dataclasses.fields(self)})

    def save(self, path: Path) -> None:
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> Split:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise WtagError(f"{path}: not a readable prepared split ({exc})") from None
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING and f.name not in arrays]
        if missing:
            raise WtagError(f"{path}: prepared split lacks arrays {', '.join(missing)}")
        return cls(**arrays)

    def digest_update(self, h: hashlib._Hash) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                h.update(f.name.encode())
                h.update(str(value.dtype).encode() + str(value.shape).encode())
                h.update(np.ascontiguousarray(value).tobytes())


@dataclasses.dataclass(frozen=True)
class Standardization:
    """Per-feature mean and std from the training set, baked into each model so it takes raw inputs.

    ``hl_*`` are per column of ``hl``; ``particle_*`` per particle feature over real (pt > 0) particles;
    ``image_scale`` is the mean total image pT, a single divisor for the pixel values.
    """

    hl_mean: tuple[float, ...] | None = None
    hl_std: tuple[float, ...] | None = None
    particle_mean: tuple[float, ...] | None = None
    particle_std: tuple[float, ...] | None = None
    image_scale: float | None = None

    @classmethod
    def fit(cls, split: Split) -> Standardization:
        kwargs: dict[str, object] = {}
        if split.hl is not None:
            hl = split.hl.astype(np.float64)
            kwargs["hl_mean"] = tuple(float(v) for v in hl.mean(axis=0))
            kwargs["hl_std"] = tuple(float(v) for v in np.where(hl.std(axis=0) > 0, hl.std(axis=0), 1.0))
        if split.particles is not None:
            real = split.particles[split.particles[..., schema.PARTICLE_PT] > 0].astype(np.float64)
            std = real.std(axis=0)
            kwargs["particle_mean"] = tuple(float(v) for v in real.mean(axis=0))
            kwargs["particle_std"] = tuple(float(v) for v in np.where(std > 0, std, 1.0))
        if split.images is not None:
            kwargs["image_scale"] = float(split.images.reshape(len(split.images), -1).sum(axis=1).mean())
        return cls(**kwargs)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Standardization:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


@dataclasses.dataclass
class PreparedDataset:
    """A prepared dataset directory loaded into memory."""

    root: Path
    manifest: dict
    standardization: Standardization
    train: Split
    val: Split
    test: Split

    @property
    def digest(self) -> str:
        return str(self.manifest["digest"])

    @property
    def source(self) -> str:
        return str(self.manifest["source"])

    def split(self, name: str) -> Split:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


def compute_digest(splits: Mapping[str, Split]) -> str:
    h = hashlib.sha256()
    for name in SPLITS:
        h.update(name.encode())
        splits[name].digest_update(h)
    return h.hexdigest()


def save_prepared(root: Path, manifest: Mapping[str, object], splits: Mapping[str, Split],
                  standardization: Standardization) -> str:
    """Write a prepared dataset atomically (the whole directory appears at once); return its digest."""
    digest = compute_digest(splits)
    with atomic_path(root) as tmp:
        tmp.mkdir(parents=True)
        for name in SPLITS:
            splits[name].save(tmp / f"{name}.npz")
        write_json(tmp / "standardization.json", standardization.to_dict())
        write_json(tmp / "manifest.json", {**manifest, "digest": digest,
                                           "counts": {n: _counts(splits[n]) for n in SPLITS}})
    return digest


def _counts(split: Split) -> dict[str, int]:
    return {"jets": len(split), "signal": int((split.label == 1).sum()), "background": int((split.label == 0).sum())}


def load_prepared(root: str | Path) -> PreparedDataset:
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise WtagError(f"{root}: not a prepared dataset (no manifest.json)")
    try:
        manifest = json.loads(manifest_path.read_text())
        standardization = Standardization.from_dict(json.loads((root / "standardization.json").read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise WtagError(f"{root}: unreadable prepared dataset metadata ({exc})") from None
    splits = {name: Split.load(root / f"{name}.npz") for name in SPLITS}
    return PreparedDataset(root=root, manifest=manifest, standardization=standardization, **splits)


def stratified_split(label: np.ndarray, seed: int, val_fraction: float | Sequence[float] = 0.2,
                     test_fraction: float | Sequence[float] = 0.2) -> dict[str, np.ndarray]:
    """Index arrays for train/val/test, split within each class (seeded, reproducible).

    A fraction is one number for every class (the class balance is the same in each split) or one per label
    (0 = QCD, 1 = W): rejection is counted in QCD jets, so a benchmark test split takes a larger share of QCD.
    """
    classes = np.unique(label)
    val = _per_class(val_fraction, classes)
    test = _per_class(test_fraction, classes)
    for cls in classes:
        v, t = val[cls], test[cls]
        if not (0 < v < 1 and 0 < t < 1 and v + t < 1):
            raise WtagError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in (0, 1) "
                            "and sum to less than 1")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLITS}
    for cls in classes:
        idx = rng.permutation(np.flatnonzero(label == cls))
        n_test = int(round(test[cls] * len(idx)))
        n_val = int(round(val[cls] * len(idx)))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test:n_test + n_val])
        parts["train"].append(idx[n_test + n_val:])
    return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}


def _per_class(fraction: float | Sequence[float], classes: np.ndarray) -> dict[int, float]:
    if isinstance(fraction, (int, float, np.floating)):
        return {int(c): float(fraction) for c in classes}
    fractions = [float(f) for f in fraction]
    if any(int(c) < 0 or int(c) >= len(fractions) for c in classes):
        raise WtagError(f"per-class fractions {fractions} do not cover labels {sorted(int(c) for c in classes)}")
    return {int(c): fractions[int(c)] for c in classes}


def flat_pt_weights(pt: np.ndarray, label: np.ndarray, base_weight: np.ndarray | None = None,
                    bins: np.ndarray | None = None) -> np.ndarray:
    """Per-jet weights that make each class's weighted pT spectrum flat, with equal total weight per class.

    Taggers trained with them cannot separate the classes by pT alone. ``base_weight`` (e.g. a cross-section
    weight) multiplies in first. Weights are normalized to mean 1 over all jets.
    """
    bins = np.linspace(200.0, 500.0, 31) if bins is None else bins
    base = np.ones(len(pt)) if base_weight is None else np.asarray(base_weight, dtype=np.float64)
    w = np.zeros(len(pt))
    classes = np.unique(label)
    for cls in classes:
        sel = label == cls
        hist, _ = np.histogram(pt[sel], bins=bins, weights=base[sel])
        which = np.clip(np.digitize(pt[sel], bins) - 1, 0, len(hist) - 1)
        density = hist[which]
        w_cls = np.where(density > 0, base[sel] / np.where(density > 0, density, 1.0), 0.0)
        total = w_cls.sum()
        w[sel] = w_cls / total if total > 0 else 0.0
    return (w * len(pt) / w.sum()).astype(np.float32) if w.sum() > 0 else np.ones(len(pt), dtype=np.float32)
