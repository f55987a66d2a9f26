"""Synthetic prepared datasets with the contract's shapes, MLflow run helpers, and a small complete tagger
(with deliberately broken variants) that lets export and evaluation tests run without Keras."""
from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import awkward as ak
import numpy as np

from wtag import schema
from wtag.dataset import PreparedDataset, Split, Standardization, load_prepared, save_prepared
from wtag.schema import EntryPoint, Tag
from wtag.taggers import Tagger, TrainConfig

SPLIT_SIZES = {"train": 300, "val": 100, "test": 400}


# ---------------------------------------------------------------------------------------------------------
# Synthetic data with the contract's shapes: W jets have msd ~ 80 GeV, low tau21, two-prong wide constituents.


def synthetic_split(rng: np.random.Generator, n: int) -> Split:
    label = (np.arange(n) % 2).astype(np.int32)
    sig = label == 1
    msd = np.where(sig, rng.normal(80.0, 8.0, n), 20.0 + rng.exponential(40.0, n))
    tau21 = np.clip(np.where(sig, rng.normal(0.35, 0.1, n), rng.normal(0.65, 0.12, n)), 0.02, 1.0)
    tau1 = rng.uniform(0.1, 0.4, n)
    tau32 = rng.uniform(0.4, 0.9, n)
    ncand = np.clip(np.where(sig, rng.poisson(40, n), rng.poisson(25, n)), 2, 120)
    pt = rng.uniform(200.0, 500.0, n)
    hl = np.stack([msd, 1.1 * msd + rng.normal(0, 3, n), tau1, tau21 * tau1, tau32 * tau21 * tau1, tau21, tau32,
                   ncand, pt, rng.uniform(-2, 2, n)], axis=1)
    images = np.zeros((n, schema.IMAGE_PIXELS, schema.IMAGE_PIXELS, 1), np.float32)
    particles = np.zeros((n, schema.MAX_PARTICLES, len(schema.PARTICLE_FEATURES)), np.float32)
    for i in range(n):
        k = int(min(ncand[i], schema.MAX_PARTICLES))
        ppt = np.sort(rng.exponential(pt[i] / k, k))[::-1] + 0.1
        spread = 0.25 if sig[i] else 0.08
        deta, dphi = rng.normal(0, spread, k), rng.normal(0, spread, k)
        particles[i, :k, 0], particles[i, :k, 1], particles[i, :k, 2] = ppt, deta, dphi
        particles[i, :k, 3] = np.log(ppt / pt[i])
        particles[i, :k, 4] = np.hypot(deta, dphi)
        particles[i, :k, 5] = rng.integers(-1, 2, k)
        particles[i, np.arange(k), 6 + rng.integers(0, 5, k)] = 1.0
        to_pixel = schema.IMAGE_PIXELS / (2 * schema.IMAGE_HALF_WIDTH)
        ix = np.clip(((deta + schema.IMAGE_HALF_WIDTH) * to_pixel).astype(int), 0, schema.IMAGE_PIXELS - 1)
        iy = np.clip(((dphi + schema.IMAGE_HALF_WIDTH) * to_pixel).astype(int), 0, schema.IMAGE_PIXELS - 1)
        np.add.at(images[i, :, :, 0], (ix, iy), ppt)
    return Split(label=label, weight=np.ones(n, np.float32), msd=msd.astype(np.float32), pt=pt.astype(np.float32),
                 hl=hl.astype(np.float32), images=images, particles=particles)


def synthetic_dataset(root: Path, seed: int = 7) -> PreparedDataset:
    rng = np.random.default_rng(seed)
    splits = {name: synthetic_split(rng, n) for name, n in SPLIT_SIZES.items()}
    manifest = {"source": "pythia", "params": {"synthetic": seed}, "inputs": list(splits["train"].available())}
    save_prepared(root, manifest, splits, Standardization.fit(splits["train"]))
    return load_prepared(root)


def log_prepare_run(ds: PreparedDataset) -> str:
    """A prepare run as the prepare step logs it: dataset_digest and dataset_path parameters."""
    import mlflow

    from wtag.tracking import tracked_run

    with tracked_run(EntryPoint.PREPARE, "prepare-synthetic", "synthetic test dataset", {"source": ds.source},
                     tags={Tag.DATASET_DIGEST: ds.digest}) as run:
        mlflow.log_params({"dataset_digest": ds.digest, "dataset_path": str(ds.root)})
        return str(run.info.run_id)


def new_experiment(prefix: str) -> str:
    import mlflow

    return str(mlflow.set_experiment(f"{prefix}-{uuid.uuid4().hex[:8]}").experiment_id)


# ---------------------------------------------------------------------------------------------------------
# A small complete tagger (logistic regression on standardized hl), and broken variants of it.


class LinearTagger(Tagger):
    """Fisher-like linear discriminant through a sigmoid; weights live in ``model/weights.json``."""

    name: ClassVar[str] = "linear"
    family: ClassVar[str] = "dense"
    inputs: ClassVar[tuple[str, ...]] = (schema.INPUT_HL,)
    flavor: ClassVar[str] = "pyfunc"
    onnx_bias_shift: ClassVar[float] = 0.0

    def __init__(self, config: TrainConfig, standardization: Standardization) -> None:
        super().__init__(config, standardization)
        self.w = np.zeros(len(schema.HL_FEATURES))
        self.b = 0.0

    def _z(self, hl: np.ndarray) -> np.ndarray:
        mean = np.asarray(self.standardization.hl_mean, np.float32)
        std = np.asarray(self.standardization.hl_std, np.float32)
        return ((np.asarray(hl, np.float32) - mean) / std) @ self.w.astype(np.float32) + np.float32(self.b)

    def fit(self, train: Split, val: Split, on_epoch_end: Any = None) -> dict[str, list[float]]:
        mean, std = np.asarray(self.standardization.hl_mean), np.asarray(self.standardization.hl_std)
        x = (train.hl - mean) / std
        self.w = (x[train.label == 1].mean(axis=0) - x[train.label == 0].mean(axis=0)) / x.var(axis=0)
        self.b = -float(np.median(self._z(train.hl)))
        return {}

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        self.check_inputs(inputs)
        return (1.0 / (1.0 + np.exp(-self._z(inputs[schema.INPUT_HL])))).astype(np.float32)

    def hyperparameters(self) -> dict[str, Any]:
        return {"model": "linear"}

    def log_model(self, name: str, input_example: Mapping[str, np.ndarray]) -> Any:
        import mlflow

        mlflow.log_dict({"w": self.w.tolist(), "b": self.b}, f"{name}/weights.json")

    @classmethod
    def load_logged(cls, model_uri: str, config: TrainConfig, standardization: Standardization) -> Tagger:
        import mlflow

        local = Path(model_uri)
        directory = local if local.is_dir() else Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
        weights = json.loads((directory / "weights.json").read_text())
        tagger = cls(config, standardization)
        tagger.w, tagger.b = np.asarray(weights["w"]), float(weights["b"])
        return tagger

    def to_onnx(self) -> Any:
        from onnx import TensorProto, helper, numpy_helper

        s = self.standardization
        consts = {"mean": np.asarray(s.hl_mean, np.float32)[None, :], "std": np.asarray(s.hl_std, np.float32)[None, :],
                  "w": self.w.astype(np.float32)[:, None], "b": np.asarray([self.b + self.onnx_bias_shift], np.float32),
                  "axes": np.asarray([1], np.int64)}
        nodes = [helper.make_node("Sub", ["hl", "mean"], ["centred"]),
                 helper.make_node("Div", ["centred", "std"], ["x"]),
                 helper.make_node("MatMul", ["x", "w"], ["xw"]),
                 helper.make_node("Add", ["xw", "b"], ["z"]),
                 helper.make_node("Sigmoid", ["z"], ["p"]),
                 helper.make_node("Squeeze", ["p", "axes"], [self.output_name()])]
        graph = helper.make_graph(
            nodes, "linear", [helper.make_tensor_value_info("hl", TensorProto.FLOAT, ["batch", 10])],
            [helper.make_tensor_value_info(self.output_name(), TensorProto.FLOAT, ["batch"])],
            [numpy_helper.from_array(v, k) for k, v in consts.items()])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        return model

    def output_name(self) -> str:
        return schema.OUTPUT_SCORE


class UnsupportedLayerTagger(LinearTagger):
    """Stands for a model with a layer the converter cannot handle."""

    def to_onnx(self) -> Any:
        raise NotImplementedError("no ONNX conversion for layer 'FancyAttention'")


class DriftingTagger(LinearTagger):
    """Its ONNX graph computes a slightly different score: parity must catch it."""

    onnx_bias_shift: ClassVar[float] = 0.05


class LabelOutputTagger(LinearTagger):
    """Its ONNX graph names the output like a classifier converter would: the contract check must catch it."""

    def output_name(self) -> str:
        return "probabilities"


def labelled_jets(n: int, seed: int = 3) -> ak.Array:
    """Jets with two hard prongs (label 1) or one (label 0), pT 200-500 GeV, as simulated MC would give."""
    from wtag.features import complete_jets
    from wtag.jets import make_jets

    rng = np.random.default_rng(seed)
    cols: dict[str, list] = {b: [] for b in schema.CAND_BRANCHES}
    label = (np.arange(n) % 2).astype(np.int32)
    for i in range(n):
        m = rng.integers(15, 40)
        eta0, phi0 = rng.uniform(-1.5, 1.5), rng.uniform(-np.pi, np.pi)
        prong = np.where(rng.random(m) < 0.5, 0.25, 0.0) if label[i] else np.zeros(m)
        cols["ak7pfcand_pt"].append(rng.exponential(12, m) + 0.5)
        cols["ak7pfcand_eta"].append(eta0 + prong + rng.normal(0, 0.05, m))
        cols["ak7pfcand_phi"].append(np.angle(np.exp(1j * (phi0 + rng.normal(0, 0.05, m)))))
        cols["ak7pfcand_id"].append(rng.choice([211, -211, 22, 130], m))
        cols["ak7pfcand_charge"].append(np.zeros(m, np.int32))
    jets = make_jets({**cols, "jet_isW_ak7": label, "run": np.full(n, 1), "lumi": np.full(n, 1),
                      "event": np.arange(n), "ijet": np.zeros(n), "weight": np.ones(n)})
    jets = complete_jets(jets)
    scale = rng.uniform(200, 500, n) / ak.to_numpy(jets["jet_pt_ak7"])  # move every jet into the selection
    cols["ak7pfcand_pt"] = [np.asarray(p) * s for p, s in zip(cols["ak7pfcand_pt"], scale)]
    jets = make_jets({**cols, "jet_isW_ak7": label, "run": np.full(n, 1), "lumi": np.full(n, 1),
                      "event": np.arange(n), "ijet": np.zeros(n), "weight": np.ones(n)})
    return complete_jets(jets)
