"""The small interface every tagger family implements, so train, evaluate and export treat them alike."""
from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wtag.dataset import Split, Standardization
from wtag.errors import WtagError
from wtag.schema import DECORRELATION_NONE, expected_shape

EpochCallback = Callable[[int, Mapping[str, float]], None]

LR_SCHEDULES = ("constant", "cosine")
# What picks the kept epoch and stops training (Keras taggers): the weighted validation loss, or the validation ROC
# AUC, which ranks jets as the test metrics do rather than calibrating them.
EPOCH_METRICS = ("val_loss", "val_auc")
# What a fine-tuning (``init_from``) keeps fixed: nothing, or every convolutional layer (the learned image
# features), so that a small real sample trains only the dense head.
FREEZE_CHOICES = ("", "conv")
LR_FLOOR = 0.01  # the cosine schedule ends at this fraction of the initial learning rate


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings shared by all taggers (each tagger ignores what does not apply to it)."""

    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-3
    # One of LR_SCHEDULES. "cosine" decays from learning_rate to LR_FLOOR x learning_rate over the epochs, as the
    # ParticleNet and ParT recipes anneal (docs/benchmark.md: what it did for them on the benchmark sample).
    lr_schedule: str = "constant"
    patience: int = 5
    seed: int = 42
    verbose: bool = False
    # DisCo mass decorrelation (Kasieczka & Shih 2020): strength of the squared distance correlation between the
    # score and the soft-drop mass of the QCD jets of each batch, added to the loss; 0 = off. Keras taggers only.
    disco_lambda: float = 0.0
    # Resamples of the test jets for the statistical uncertainty of every test metric (wtag.metrics.bootstrap).
    n_bootstrap: int = 200
    # Start from the weights of this model instead of random ones: a tagger run id, or a runs:/ or models:/ URI
    # of a model of the same tagger (Keras taggers only); "" trains from scratch.
    init_from: str = ""
    # One of FREEZE_CHOICES: "conv" trains only the layers after the convolutions of the ``init_from`` model.
    freeze: str = ""
    # Decoupled weight decay of the Keras optimizer (0 = off); a tuned parameter.
    weight_decay: float = 0.0
    # Weight of the auxiliary regression (msd, tau21, log N from the network's last hidden layer) in the training
    # loss; 0 = off. Keras taggers without the jet-feature input only; the scoring model never has the extra head.
    aux_weight: float = 0.0
    # The tagger's own tuned hyperparameters (names from its ``search_space``) as a JSON object; "" = its defaults.
    tagger_params: str = ""
    # The ``tune`` run whose best parameters this training uses (lineage); "" = none.
    params_from: str = ""
    # Training-jet weights, one of wtag.weighting.WEIGHTINGS: "flat" pT per class, or "w_spectrum" (QCD to W's pT).
    weighting: str = "flat"
    # One of EPOCH_METRICS: early stopping and the restored best epoch follow it.
    epoch_metric: str = "val_loss"

    def params(self) -> dict[str, object]:
        """As logged to MLflow, named like the MLproject parameters (``seed`` is ``train_seed`` there).

        ``init_from``, ``freeze``, ``tagger_params`` and ``params_from`` only when set: ``mlflow run`` logs an empty
        MLproject parameter as the two characters ``''``, which would never match a run started in-process, so
        finished runs would not be reused; ``weighting``, ``epoch_metric`` and ``aux_weight`` only when not their
        defaults, so runs from before they existed are reused.
        """
        return {"epochs": self.epochs, "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "lr_schedule": self.lr_schedule, "patience": self.patience, "train_seed": self.seed,
                "disco_lambda": self.disco_lambda, "weight_decay": self.weight_decay,
                "n_bootstrap": self.n_bootstrap,
                **{k: v for k, v in (("init_from", self.init_from), ("freeze", self.freeze),
                                     ("tagger_params", self.tagger_params), ("params_from", self.params_from)) if v},
                **{k: getattr(self, k) for k in ("weighting", "epoch_metric", "aux_weight")
                   if getattr(self, k) != getattr(TrainConfig, k)}}

    def tagger_params_dict(self) -> dict[str, Any]:
        """``tagger_params`` decoded (empty when unset)."""
        return json.loads(self.tagger_params) if self.tagger_params else {}

    def with_params(self, params: Mapping[str, Any]) -> TrainConfig:
        """This config with tuned parameters applied: TrainConfig fields (``learning_rate``, ``batch_size``,
        ``weight_decay``, ``lr_schedule``, ...) replace their values, the rest become ``tagger_params``."""
        fields = {f.name for f in dataclasses.fields(self)} - {"tagger_params", "params_from", "init_from", "freeze"}
        own = {k: v for k, v in params.items() if k in fields}
        rest = {k: v for k, v in params.items() if k not in fields}
        return dataclasses.replace(self, **own, tagger_params=json.dumps(rest, sort_keys=True) if rest else "")

    @property
    def decorrelation(self) -> str:
        """The decorrelation setting as recorded in ``Tag.DECORRELATION``: ``none`` or ``disco<lambda>``."""
        return f"disco{self.disco_lambda:g}" if self.disco_lambda > 0 else DECORRELATION_NONE


class Tagger(abc.ABC):
    """A W tagger: fit on a prepared Split, score raw inputs in [0, 1], log itself to MLflow, export to ONNX.

    ``inputs`` names the model inputs it consumes (schema.INPUT_HL / INPUT_IMAGES / INPUT_PARTICLES); the
    ONNX graph has exactly those inputs (raw, un-standardized, dynamic batch axis) and one output "score".
    """

    name: ClassVar[str]
    family: ClassVar[str]
    inputs: ClassVar[tuple[str, ...]]
    flavor: ClassVar[str]  # MLflow flavor used by log_model: "keras", "xgboost" or "pyfunc"
    supports_disco: ClassVar[bool] = False  # trains with TrainConfig.disco_lambda > 0 (the Keras taggers)

    @classmethod
    def supports_aux(cls) -> bool:
        """Trains with TrainConfig.aux_weight > 0: Keras taggers that do not read the jet features, which are
        what the auxiliary targets are made of."""
        return False
    # What ``tune`` searches, declared once per family (wtag.tuning: the format). A value per name: a list of
    # choices, or {low, high[, log][, step]} (integers when low and high are). Names are TrainConfig fields or
    # this tagger's own hyperparameters (set by ``configure``). Empty: nothing to tune (closed-form taggers).
    search_space: ClassVar[Mapping[str, Any]] = {}
    # Tuned name -> attribute, where they differ (the BDT's ``eta`` is its ``learning_rate``).
    param_attributes: ClassVar[Mapping[str, str]] = {}

    def __init__(self, config: TrainConfig, standardization: Standardization) -> None:
        self.config = config
        self.standardization = standardization

    def configure(self, params: Mapping[str, Any]) -> None:
        """Set this instance's own tuned hyperparameters (``TrainConfig.tagger_params``) over the class defaults."""
        own = set(self.search_space) - {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(params) - own)
        if unknown:
            raise WtagError(f"tagger '{self.name}' has no tunable hyperparameter {', '.join(unknown)} "
                            f"(its own: {', '.join(sorted(own)) or 'none'})")
        for key, value in params.items():
            setattr(self, self.param_attributes.get(key, key), value)

    @abc.abstractmethod
    def fit(self, train: Split, val: Split, on_epoch_end: EpochCallback | None = None) -> dict[str, list[float]]:
        """Train; return the per-epoch history (``loss``, ``val_loss``, ``val_auc`` where they apply)."""

    @abc.abstractmethod
    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Signal scores in [0, 1], shape (N,), for raw model inputs keyed by input name."""

    @abc.abstractmethod
    def hyperparameters(self) -> dict[str, Any]:
        """Everything that defines the model, for logging as MLflow parameters."""

    @abc.abstractmethod
    def log_model(self, name: str, input_example: Mapping[str, np.ndarray]) -> Any:
        """Log the model in its native MLflow flavor with signature and input example; return the ModelInfo."""

    @classmethod
    @abc.abstractmethod
    def load_logged(cls, model_uri: str, config: TrainConfig, standardization: Standardization) -> Tagger:
        """Rebuild the tagger from a model logged by ``log_model`` (for evaluation and ONNX export)."""

    @abc.abstractmethod
    def to_onnx(self) -> Any:
        """The model as an ``onnx.ModelProto`` with raw inputs named as ``inputs`` and one output "score"."""

    def fit_metrics(self) -> dict[str, float]:
        """Numbers the fit determined that are worth logging as metrics (e.g. the DDT slope); none by default."""
        return {}

    def diagnostic_plots(self, directory: Path, train: Split) -> None:
        """Write tagger-specific figures (e.g. a fit) into ``directory``; none by default."""

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Fail with a message naming the input when a required array is missing or mis-shaped."""
        for name in self.inputs:
            if name not in inputs:
                raise WtagError(f"tagger '{self.name}' needs input '{name}', got {', '.join(inputs) or 'none'}")
            arr = np.asarray(inputs[name])
            want = expected_shape(name)
            if arr.ndim != len(want) + 1 or tuple(arr.shape[1:]) != want:
                raise WtagError(f"tagger '{self.name}': input '{name}' has shape {arr.shape}, expected (N, "
                                + ", ".join(str(d) for d in want) + ")")
        if len({len(inputs[name]) for name in self.inputs}) > 1:
            raise WtagError(f"tagger '{self.name}': inputs have different numbers of jets ("
                            + ", ".join(f"{name} {len(inputs[name])}" for name in self.inputs) + ")")
