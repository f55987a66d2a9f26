"""The ``prepare`` step: generate or import jets, compute model inputs, split, weight, standardize, log.

Prepared datasets live under ``<data_dir>/prepared/<key>`` where the key hashes the parameters, the content
digests of the inputs and the version of the data code, so only the same parameters on the same input content
with the same code reuse the finished directory.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import awkward as ak
import numpy as np

from wtag import schema
from wtag.codeversion import code_version, file_digest
from wtag.dataset import (
    SPLITS,
    PreparedDataset,
    Split,
    Standardization,
    flat_pt_weights,
    load_prepared,
    save_prepared,
    stratified_split,
)
from wtag.errors import WtagError

SOURCES = ("pythia", "cms-ntuple", "cms-images")
SIGNAL_PROCESSES = schema.SIGNAL_PROCESSES
DEFAULT_DATA_DIR = Path("data")
DEFAULT_SAMPLE = "default"


@dataclasses.dataclass(frozen=True)
class SampleShape:
    """A simulated sample's shape: W jets to generate (None: ``n_jets``), QCD jets per W jet, and each class's
    test and validation share (indexed by label: 0 = QCD, 1 = W).

    Rejection at 50% efficiency and the mass-sculpting JSD are counted in the QCD jets that pass the cut, and
    QCD simulates twice as fast as W jets, so the extra QCD goes into the test split; train and validation
    stay balanced.
    """

    n_signal: int | None
    qcd_per_signal: int
    test_fraction: tuple[float, float]
    val_fraction: tuple[float, float]


# default, n_jets = 6000: train 3,600 + 3,600, val 1,200 + 1,200, test 1,200 W + 7,200 QCD.
# benchmark: train 26,250 W + 24,500 QCD = 50,750; test 5,250 W + 42,000 QCD (r50 near 100 then rests on about
# 420 passing QCD jets, +-5%).
SAMPLES: dict[str, SampleShape] = {
    DEFAULT_SAMPLE: SampleShape(n_signal=None, qcd_per_signal=2, test_fraction=(0.6, 0.2), val_fraction=(0.1, 0.2)),
    "benchmark": SampleShape(n_signal=35_000, qcd_per_signal=2, test_fraction=(0.6, 0.15),
                             val_fraction=(0.05, 0.10)),
    # large: the benchmark's shape at three times its size (train 152,250, test 15,750 W + 126,000 QCD), for the
    # particle-level taggers the learning curves show still climbing; its r50 errors are about 1/sqrt(3) of the
    # benchmark's.
    "large": SampleShape(n_signal=105_000, qcd_per_signal=2, test_fraction=(0.6, 0.15), val_fraction=(0.05, 0.10)),
}


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Everything that defines a prepared dataset (the MLproject ``prepare`` parameters).

    ``sample`` names the simulated sample's :class:`SampleShape`: ``default`` simulates ``n_jets`` W jets and
    twice as many QCD jets (sized so that ``make demo`` fits 25 minutes on 2 cores); ``benchmark`` fixes its own
    sizes. ``val_fraction`` / ``test_fraction`` split imported files (the shape splits simulated ones), and
    ``max_jets`` caps the jets taken from them (0: all). ``pileup`` None means the generator's tuned default.
    These defaults are the only ones: the CLI reads them.
    """

    source: str = "pythia"
    sample: str = DEFAULT_SAMPLE
    n_jets: int = 6000
    max_jets: int = 0
    seed: int = 1
    inputs: tuple[str, ...] = ()
    signal: str = "ttbar"
    pileup: float | None = None
    detector: bool = True
    val_fraction: float = 0.2
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise WtagError(f"unknown source '{self.source}' (known: {', '.join(SOURCES)})")
        if self.signal not in SIGNAL_PROCESSES:
            raise WtagError(f"unknown signal process '{self.signal}' (known: {', '.join(SIGNAL_PROCESSES)})")
        if self.n_jets <= 0:
            raise WtagError(f"n_jets={self.n_jets} must be positive (W jets to simulate)")
        if self.max_jets < 0:
            raise WtagError(f"max_jets={self.max_jets} must be >= 0 (0 = all imported jets)")
        if self.source == "pythia" and self.max_jets:
            raise WtagError(f"max_jets={self.max_jets} caps imported files; the simulation takes n_jets or a sample")
        if self.source != "pythia" and not self.inputs:
            raise WtagError(f"source '{self.source}' needs input files (-P input=PATH[,PATH...])")
        if self.pileup is not None and self.pileup < 0:
            raise WtagError(f"pileup={self.pileup} must be >= 0")
        if self.sample not in SAMPLES:
            raise WtagError(f"unknown sample '{self.sample}' (known: {', '.join(SAMPLES)})")
        if self.source != "pythia" and not self.detector:
            raise WtagError(f"detector=false switches off the simulated detector; source '{self.source}' is "
                            "already measured")
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        if self.source != "pythia":
            if self.sample != defaults["sample"]:
                raise WtagError(f"sample={self.sample} is a simulated sample: it needs source=pythia")
            return
        fixed = ("val_fraction", "test_fraction") + (("n_jets",) if self.shape.n_signal is not None else ())
        changed = [k for k in fixed if getattr(self, k) != defaults[k]]
        if changed:
            raise WtagError(f"sample={self.sample} sets {', '.join(changed)} itself; leave "
                            f"{'it' if len(changed) == 1 else 'them'} at the default")

    @property
    def shape(self) -> SampleShape:
        return SAMPLES[self.sample]

    def jets_to_generate(self) -> dict[str, int]:
        """Jets to simulate per process (signal first)."""
        n_signal = self.shape.n_signal or self.n_jets
        return {self.signal: n_signal, "qcd": self.shape.qcd_per_signal * n_signal}

    def split_fractions(self) -> tuple[float | tuple[float, float], float | tuple[float, float]]:
        """(val, test) fractions for :func:`wtag.dataset.stratified_split`: one number, or one per label."""
        if self.source != "pythia":
            return self.val_fraction, self.test_fraction
        return self.shape.val_fraction, self.shape.test_fraction

    def sample_size(self) -> str:
        """How many jets, in the words of the source: the preset, per class simulated, or the import cap."""
        if self.source == "pythia":
            return self.sample if self.shape.n_signal is not None else f"n_jets={self.n_jets}"
        return f"max_jets={self.max_jets or 'all'}"

    def params(self) -> dict[str, object]:
        """Parameters as logged to MLflow; also what the reuse key hashes."""
        val, test = self.split_fractions()
        if self.source == "pythia":
            n = self.jets_to_generate()
            sample: dict[str, object] = {"sample": self.sample, "n_jets": n[self.signal], "n_jets_qcd": n["qcd"]}
        else:
            sample = {"max_jets": self.max_jets}
        return {"source": self.source, **sample, "seed": self.seed,
                "input": ",".join(self.inputs), "signal": self.signal,
                "pileup": "default" if self.pileup is None else self.pileup, "detector": self.detector,
                "val_fraction": _fraction_text(val), "test_fraction": _fraction_text(test)}

    def key(self, input_digests: Sequence[str] = (), code: str | None = None) -> str:
        """The prepared dataset's folder name: a digest of the parameters (without the input names), the
        inputs' content digests (in order) and the version of the code that computes prepared data. An
        edited input, or changed feature code, makes a new key; a renamed or moved input does not."""
        if len(input_digests) != len(self.inputs):
            raise WtagError(f"key needs one content digest per input ({len(self.inputs)}), got {len(input_digests)}")
        params = {k: v for k, v in self.params().items() if k != "input"}
        blob = json.dumps({**params, "input_sha256": list(input_digests), "code": code or prepare_code_version()},
                          sort_keys=True)
        return f"{self.source}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _fraction_text(fraction: float | tuple[float, float]) -> float | str:
    """A split fraction as logged: the number, or ``qcd:F,w:F`` when the classes differ."""
    if isinstance(fraction, tuple):
        return f"qcd:{fraction[0]:g},w:{fraction[1]:g}"
    return fraction


# The code a prepared dataset depends on: sources (generation, import), features, splitting and weighting.
PREPARE_MODULES = ("wtag.prepare", "wtag.dataset", "wtag.features", "wtag.jets", "wtag.schema", "wtag.sources")
PREPARE_PACKAGES = ("numpy", "awkward", "uproot", "h5py", "pythia8mc", "fastjet", "vector")


def prepare_code_version() -> str:
    return code_version(PREPARE_MODULES, PREPARE_PACKAGES)


def resolve_config_inputs(config: PrepareConfig, data_dir: Path) -> list[Path]:
    """Local files for the config's inputs (URLs downloaded into ``data_dir/downloads``)."""
    if not config.inputs:
        return []
    from wtag.sources.remote import resolve_inputs

    return resolve_inputs(list(config.inputs), data_dir / "downloads")


def prepared_key(config: PrepareConfig, data_dir: Path) -> str:
    """:meth:`PrepareConfig.key` with the content digests of the (resolved) inputs."""
    return config.key([file_digest(p) for p in resolve_config_inputs(config, data_dir)])


def _generate(config: PrepareConfig, data_dir: Path, workers: int, progress: bool,
              scheduler: str = "") -> tuple[ak.Array, dict]:
    from wtag.sources import pythia

    parts = []
    info: dict[str, object] = {}
    for process, n_jets in config.jets_to_generate().items():
        kwargs = {} if config.pileup is None else {"pileup": config.pileup}
        mu = "default" if config.pileup is None else f"{config.pileup:g}"
        level = "" if config.detector else "_particle"
        out = data_dir / "generated" / f"{process}_n{n_jets}_seed{config.seed}_mu{mu}{level}"
        files = pythia.generate(process=process, n_jets=n_jets, seed=config.seed, output=out,
                                workers=workers, progress=progress, scheduler=scheduler,
                                detector=config.detector, **kwargs)
        from wtag.jets import read_jets

        jets = read_jets(files)
        parts.append(jets)
        info[process] = {"files": [str(f) for f in files], "jets": len(jets)}
    return ak.concatenate(parts), info


def _import_ntuple(config: PrepareConfig, data_dir: Path) -> tuple[ak.Array, dict]:
    from wtag.sources.cms_ntuple import read_cms_ntuple
    from wtag.sources.remote import resolve_inputs

    paths = resolve_inputs(list(config.inputs), data_dir / "downloads")
    jets = read_cms_ntuple(paths)
    return jets, {"files": [str(p) for p in paths], "jets_read": len(jets)}


def _splits_from_jets(jets: ak.Array, config: PrepareConfig, progress: bool) -> dict[str, Split]:
    from wtag import features
    from wtag.jets import select

    jets = select(jets)
    if len(jets) == 0:
        raise WtagError("no jets pass the selection 200 < pT < 500 GeV, |eta| < 2")
    label = ak.to_numpy(jets["jet_isW_ak7"]).astype(np.int32)
    if np.any(label == schema.LABEL_UNKNOWN):
        raise WtagError(f"{int((label == schema.LABEL_UNKNOWN).sum())} of {len(label)} selected jets have no "
                        "truth label (jet_isW_ak7 = -1, e.g. collision data): such jets can be scored, not trained on")
    jets, label = _cap_per_class(jets, label, config)
    _require_both_classes(label)
    inputs = features.model_inputs(jets, (schema.INPUT_HL, schema.INPUT_IMAGES, schema.INPUT_PARTICLES))
    # Jets train unweighted within a class (apart from the pT flattening): the simulated QCD mixes pT-hat
    # slices in the tutorial's proportions, the mixture the real 2011 images were made from. The per-sample
    # cross-section ``weight`` stays in the jets tree for physical reweighting.
    pt = ak.to_numpy(jets["jet_pt_ak7"]).astype(np.float32)
    msd = ak.to_numpy(jets["jet_msd_ak7"]).astype(np.float32)
    return _split_arrays(label, pt, msd, inputs, config)


def _splits_from_images(config: PrepareConfig, data_dir: Path) -> dict[str, Split]:
    from wtag.features.images import image_statistics
    from wtag.sources.cms_images import read_cms_images
    from wtag.sources.remote import resolve_inputs

    paths = resolve_inputs(list(config.inputs), data_dir / "downloads")
    images_parts, label_parts = zip(*(read_cms_images(p) for p in paths))
    images = np.concatenate(images_parts)
    label = np.concatenate(label_parts).astype(np.int32)
    _require_both_classes(label)
    if config.max_jets:
        keep = _cap_index(label, config.max_jets, config.seed)
        images, label = images[keep], label[keep]
    stats = image_statistics(images)
    pt = stats["total_pt"].astype(np.float32)
    msd = stats["image_mass"].astype(np.float32)
    inputs = {schema.INPUT_IMAGES: images.astype(np.float32)}
    return _split_arrays(label, pt, msd, inputs, config)


def _require_both_classes(label: np.ndarray) -> None:
    n_sig, n_bkg = int((label == 1).sum()), int((label == 0).sum())
    if n_sig < 5 or n_bkg < 5:
        raise WtagError(f"need at least 5 signal and 5 background jets to split, got {n_sig} and {n_bkg}")


def _cap_index(label: np.ndarray, n_total: int, seed: int) -> np.ndarray:
    """A class-balanced-in-proportion random subset of at most ``n_total`` jets (sorted indices)."""
    if n_total >= len(label):
        return np.arange(len(label))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(len(label), size=n_total, replace=False))


def _cap_per_class(jets: ak.Array, label: np.ndarray, config: PrepareConfig) -> tuple[ak.Array, np.ndarray]:
    if config.source == "pythia" or not config.max_jets:
        return jets, label
    keep = _cap_index(label, config.max_jets, config.seed)
    return jets[keep], label[keep]


def _split_arrays(label: np.ndarray, pt: np.ndarray, msd: np.ndarray, inputs: dict[str, np.ndarray],
                  config: PrepareConfig) -> dict[str, Split]:
    val_fraction, test_fraction = config.split_fractions()
    index = stratified_split(label, config.seed, val_fraction, test_fraction)
    splits = {}
    for name in SPLITS:
        i = index[name]
        weight = flat_pt_weights(pt[i].astype(np.float64), label[i])
        splits[name] = Split(label=label[i], weight=weight, msd=msd[i], pt=pt[i],
                             **{k: v[i] for k, v in inputs.items()})
    return splits


def prepare(config: PrepareConfig, data_dir: Path, workers: int | None = None,
            progress: bool = True, scheduler: str = "") -> PreparedDataset:
    """Build (or reuse) the prepared dataset for ``config`` under ``data_dir`` (see :meth:`PrepareConfig.key`).

    Generation runs on Dask: the cluster at ``scheduler``, else a local one of ``workers`` processes."""
    root = data_dir / "prepared" / prepared_key(config, data_dir)
    if (root / "manifest.json").is_file():
        return load_prepared(root)
    workers = workers or os.cpu_count() or 1
    provenance: dict[str, object]
    if config.source == "pythia":
        jets, provenance = _generate(config, data_dir, workers, progress, scheduler)
        splits = _splits_from_jets(jets, config, progress)
    elif config.source == "cms-ntuple":
        jets, provenance = _import_ntuple(config, data_dir)
        splits = _splits_from_jets(jets, config, progress)
    else:
        splits = _splits_from_images(config, data_dir)
        provenance = {"files": list(config.inputs)}
    standardization = Standardization.fit(splits["train"])
    manifest = {
        "source": config.source,
        "params": config.params(),
        "provenance": provenance,
        "inputs": list(splits["train"].available()),
        "hl_features": list(schema.HL_FEATURES),
        "particle_features": list(schema.PARTICLE_FEATURES),
        "max_particles": schema.MAX_PARTICLES,
    }
    save_prepared(root, manifest, splits, standardization)
    return load_prepared(root)
