"""What every Keras tagger shares: raw-input preprocessing baked into the graph, the training loop, MLflow
logging in the native ``keras`` flavor and ONNX export.

The graphs use only built-in Keras layers and ``keras.ops`` (no Lambda, no custom classes), so a logged model
loads with ``mlflow.pyfunc.load_model`` in any process that has Keras, without importing wtag. Each model
takes RAW inputs (standardization constants live in the graph) and outputs a 1-D signal probability.
"""
from __future__ import annotations

import abc
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import keras
import numpy as np
from sklearn.metrics import roc_auc_score

from wtag import schema
from wtag.dataset import Split, Standardization
from wtag.errors import WtagError
from wtag.taggers.base import (EPOCH_METRICS, FREEZE_CHOICES, LR_FLOOR, LR_SCHEDULES, EpochCallback, Tagger,
                               TrainConfig)

# ONNX opset for tf2onnx: new enough for every op our graphs use, within the range the contract allows.
ONNX_OPSET = 17
ONNX_BATCH_DIM = "N"
PREDICT_BATCH_SIZE = 1024
# How many rows of the caller's input example are stored with a logged model.
EXAMPLE_ROWS = 3
AUX_HIDDEN = 32  # units of the auxiliary head's hidden layer
# The optimisation part of every Keras tagger's search space (wtag.tuning); each family adds its sizes. Weight
# decay is Keras' decoupled one (scaled by the learning rate, as in AdamW), so useful values are 1e-3..1e-1.
TRAINING_SPACE: dict[str, Any] = {
    "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
    "batch_size": [128, 256, 512],
    "weight_decay": [0.0, 0.001, 0.01, 0.1],
    "lr_schedule": list(LR_SCHEDULES),
}


def set_threads(intra_op: int, inter_op: int) -> bool:
    """Cap TensorFlow's thread pools (e.g. to share a small machine); False if TF already started its pools.

    TensorFlow only accepts this before it runs its first op, so call it early (CLI, entry points, tests).
    """
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)
    except RuntimeError:
        return False
    return True


CLIP_SIGMA = 5.0  # standardized particle inputs are clipped to +-5 (as in weaver-core)


def standardize(mean: Sequence[float], std: Sequence[float], name: str) -> keras.layers.Layer:
    """A layer computing ``(x - mean) / std`` per feature (last axis), the constants stored in the graph.

    A ``Rescaling`` layer with per-feature scale/offset rather than ``Normalization(mean=, variance=)``: the
    latter keeps its constants as captured eager tensors, which tf2onnx turns into extra graph INPUTS.
    """
    mean64 = np.asarray(mean, dtype=np.float64)
    std64 = np.asarray(std, dtype=np.float64)
    if mean64.shape != std64.shape or mean64.ndim != 1 or not np.all(std64 > 0):
        raise WtagError(f"standardization for '{name}': need equal-length mean/std vectors with std > 0, "
                        f"got mean {mean64.shape}, std {std64.shape}")
    return keras.layers.Rescaling(scale=tuple(float(v) for v in 1.0 / std64),
                                  offset=tuple(float(v) for v in -mean64 / std64), name=name)


def standardized_hl(hl: keras.KerasTensor, standardization: Standardization, name: str = "standardize"
                    ) -> keras.KerasTensor:
    """The ten jet features standardized with the training set's constants (stored in the graph)."""
    if standardization.hl_mean is None or standardization.hl_std is None:
        raise WtagError("standardization has no hl_mean/hl_std: the dataset has no 'hl' input")
    return standardize(standardization.hl_mean, standardization.hl_std, name)(hl)


def particle_mask(particles: keras.KerasTensor) -> keras.KerasTensor:
    """Boolean (N, MAX_PARTICLES) mask of real particles, from the RAW pT column (padded rows have pt == 0)."""
    return keras.ops.greater(particles[..., schema.PARTICLE_PT], 0.0)


def standardized_particles(particles: keras.KerasTensor, standardization: Standardization
                           ) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Standardized particle features clipped to +-CLIP_SIGMA, padded rows forced back to zero, and the mask.

    The mask must come from the raw input (raw pT): after standardization a padded row is no longer all zeros.
    The clip (as weaver-core does) keeps a rare flag or a far tail from saturating the first layer.
    """
    if standardization.particle_mean is None or standardization.particle_std is None:
        raise WtagError("standardization has no particle_mean/particle_std: the dataset has no 'particles' input")
    mask = particle_mask(particles)
    scaled = standardize(standardization.particle_mean, standardization.particle_std, "standardize")(particles)
    scaled = keras.ops.clip(scaled, -CLIP_SIGMA, CLIP_SIGMA)
    zeroed = scaled * keras.ops.expand_dims(keras.ops.cast(mask, scaled.dtype), -1)
    return zeroed, mask


def distance_correlation_squared(x: Any, y: Any, weight: Any) -> Any:
    """Weighted squared distance correlation of two 1-D tensors, in keras.ops (differentiable; any backend).

    The same V-statistic as ``wtag.metrics.distance_correlation`` (which returns its square root), with the
    weights normalised to sum to one; jets of weight 0 do not count. Builds n x n matrices: meant for one
    training batch. 0 when every weight is 0 or a variable is constant in the batch.
    """
    ops = keras.ops
    x = ops.reshape(ops.cast(x, "float32"), (-1,))
    y = ops.reshape(ops.cast(y, "float32"), (-1,))
    w = ops.reshape(ops.cast(weight, "float32"), (-1,))
    p = w / ops.maximum(ops.sum(w), 1e-12)

    def centred(v: Any) -> Any:
        a = ops.abs(ops.expand_dims(v, 1) - ops.expand_dims(v, 0))
        row = ops.matmul(a, p)
        return a - ops.expand_dims(row, 1) - ops.expand_dims(row, 0) + ops.sum(p * row)

    big_a, big_b = centred(x), centred(y)
    pp = ops.expand_dims(p, 1) * ops.expand_dims(p, 0)
    ab = ops.sum(pp * big_a * big_b)
    aa = ops.sum(pp * big_a * big_a)
    bb = ops.sum(pp * big_b * big_b)
    return ab / ops.sqrt(aa * bb + 1e-12)


# Auxiliary regression targets (TrainConfig.aux_weight): jet-feature columns, the count as log N. They are
# standardized with the training split's mean and std, so each weighs alike in the mean squared error.
AUX_TARGETS = ("jet_msd_ak7", "jet_tau21_ak7", "jet_ncand_ak7")


def aux_targets(split: Split) -> np.ndarray:
    """(N, 3) raw auxiliary targets of a split: soft-drop mass, tau21 and log of the constituent count."""
    if split.hl is None:
        raise WtagError("aux_weight > 0 needs the jet features (hl) of the prepared dataset as targets")
    columns = split.hl[:, [schema.HL_FEATURES.index(c) for c in AUX_TARGETS]].astype(np.float64)
    columns[:, 2] = np.log(np.maximum(columns[:, 2], 1.0))
    return columns


class TaggerLoss(keras.losses.Loss):
    """Weighted binary cross-entropy, plus ``disco_lambda`` times the squared distance correlation between the
    score and the soft-drop mass of the batch's QCD jets (DisCo, Kasieczka & Shih 2020, their eq. 5), plus
    ``aux_weight`` times the weighted mean squared error of the auxiliary regression.

    What the loss needs beyond the label must reach it but not the model, so the targets are packed: ``y_true``
    is (N, 3 + k) = (label, msd, training weight, k standardized auxiliary targets), built by ``pack_targets``;
    ``y_pred`` is (N, 1 + k), the probability first. The cross-entropy term equals Keras' ``BinaryCrossentropy``
    with ``sample_weight`` (sum of w * BCE over the batch size), so both strengths at 0 give the ordinary loss;
    the penalty weights the QCD jets with their training weights. The scoring model and its ONNX export never
    see the mass or the auxiliary head: raw inputs -> score.
    """

    def __init__(self, disco_lambda: float, aux_weight: float = 0.0, name: str = "tagger_loss",
                 **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.disco_lambda = float(disco_lambda)
        self.aux_weight = float(aux_weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        ops = keras.ops
        label, msd, weight = y_true[:, 0], y_true[:, 1], y_true[:, 2]
        prob = y_pred[:, 0]
        n = ops.cast(ops.shape(prob)[0], prob.dtype)
        loss = ops.sum(weight * ops.binary_crossentropy(label, prob)) / n
        if self.disco_lambda > 0:
            loss = loss + self.disco_lambda * distance_correlation_squared(prob, msd, weight * (1.0 - label))
        if self.aux_weight > 0:
            error = ops.mean(ops.square(y_pred[:, 1:] - y_true[:, 3:]), axis=1)
            loss = loss + self.aux_weight * ops.sum(weight * error) / n
        return loss

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "disco_lambda": self.disco_lambda, "aux_weight": self.aux_weight}


def pack_targets(label: np.ndarray, msd: np.ndarray, weight: np.ndarray, aux: np.ndarray | None = None) -> np.ndarray:
    """(N, 3 + k) float32 targets (label, msd, weight, k auxiliary targets) for ``TaggerLoss``."""
    columns = [np.asarray(label, np.float32), np.asarray(msd, np.float32), np.asarray(weight, np.float32)]
    if aux is not None:
        columns += list(np.asarray(aux, np.float32).T)
    return np.stack(columns, axis=1)


class _ValidationAUC(keras.callbacks.Callback):
    """Adds ``val_auc`` (weighted ROC AUC on the validation set) to the epoch logs and forwards the
    epoch's ``loss``/``val_loss``/``val_auc`` to the caller's callback (e.g. MLflow metric logging)."""

    def __init__(self, x: dict[str, np.ndarray], y: np.ndarray, w: np.ndarray,
                 on_epoch_end: EpochCallback | None) -> None:
        super().__init__()
        self._x, self._y, self._w = x, y, w
        self._forward = on_epoch_end

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        predicted = self.model.predict(self._x, batch_size=PREDICT_BATCH_SIZE, verbose=0)
        scores = predicted.reshape(len(self._y), -1)[:, 0]  # the probability; auxiliary outputs follow it
        logs["val_auc"] = float(roc_auc_score(self._y, scores, sample_weight=self._w))
        if self._forward is not None:
            self._forward(epoch, {k: float(logs[k]) for k in ("loss", "val_loss", "val_auc")})


class KerasTagger(Tagger):
    """Base for the Keras taggers: a subclass names its inputs and builds the network from the raw inputs.

    ``build_network`` maps the raw ``keras.Input`` (a dict of them, by input name, for a tagger of several inputs)
    to a (N, 1) sigmoid output; training uses that shape (so Keras weights the loss per jet), while the logged
    and exported model squeezes it to (N,).
    """

    flavor: ClassVar[str] = "keras"
    supports_disco: ClassVar[bool] = True
    # Train through XLA (TensorFlow's compiler) from this many jet-epochs (training jets x epochs) on; None:
    # never. Set where XLA measured faster per jet on CPU (bench/train_speed.py; it slows the convolutional
    # taggers down), at the work that repays its compile time (docs/particle-cloud.md): below it, e.g. a
    # one-epoch fit of a few hundred jets, compiling costs more than it saves. Only training is compiled.
    xla_from_jet_epochs: ClassVar[int | None] = None

    def __init__(self, config: TrainConfig, standardization: Standardization) -> None:
        super().__init__(config, standardization)
        self._model: keras.Model | None = None
        self._initial_weights_uri: str | None = None
        self.trained_with_xla: bool | None = None

    @abc.abstractmethod
    def build_network(self, raw: Any) -> keras.KerasTensor:
        """The (N, 1) sigmoid output computed from the raw input tensor, or from ``{input name: tensor}`` when the
        tagger has several inputs (standardization included)."""

    @abc.abstractmethod
    def architecture(self) -> dict[str, Any]:
        """The architecture's defining numbers (layer sizes, dropout, ...) for logging as parameters."""

    @property
    def model(self) -> keras.Model:
        """The scoring model (raw input -> (N,) score); a WtagError before ``fit`` or ``load_logged``."""
        if self._model is None:
            raise WtagError(f"tagger '{self.name}' has no model yet: fit it or load a logged one")
        return self._model

    @classmethod
    def supports_aux(cls) -> bool:
        return schema.INPUT_HL not in cls.inputs

    def hyperparameters(self) -> dict[str, Any]:
        """The architecture and the optimisation choices; the TrainConfig numbers are logged by the caller
        (``TrainConfig.params``)."""
        loss = "binary_crossentropy" + ("+disco" if self.config.disco_lambda > 0 else "") + (
            "+aux" if self.config.aux_weight > 0 else "")
        xla = "off" if self.xla_from_jet_epochs is None else f"from {self.xla_from_jet_epochs} jet-epochs"
        return {**self.architecture(), "optimizer": "adam", "loss": loss, "early_stopping": self.config.epoch_metric,
                "xla": xla}

    def uses_xla(self, n_train: int) -> bool:
        """Whether a fit on ``n_train`` jets for the configured epochs compiles through XLA."""
        threshold = self.xla_from_jet_epochs
        return threshold is not None and n_train * self.config.epochs >= threshold

    def fit_metrics(self) -> dict[str, float]:
        return {} if self.trained_with_xla is None else {"trained_with_xla": float(self.trained_with_xla)}

    def _build(self) -> tuple[keras.Model, keras.Model]:
        """The training model ((N, 1) output) and the scoring model ((N,) output) sharing its layers.

        Both take a dict ``{input name: array}``, the form MLflow's pyfunc passes for a named signature.
        """
        raw = {name: keras.Input(shape=schema.expected_shape(name), dtype="float32", name=name) for name in self.inputs}
        prob = self.build_network(raw[self.inputs[0]] if len(self.inputs) == 1 else raw)
        train_model = keras.Model(raw, prob, name=f"{self.name}_train")
        if self.config.aux_weight > 0:  # a small head on the last hidden layer, the input of the output layer
            hidden = train_model.get_layer("output").input
            aux = keras.layers.Dense(AUX_HIDDEN, activation="relu", name="aux_hidden")(hidden)
            aux = keras.layers.Dense(len(AUX_TARGETS), name="aux_output")(aux)
            train_model = keras.Model(raw, keras.layers.Concatenate(name="with_aux")([prob, aux]),
                                      name=f"{self.name}_train")
        score = keras.ops.squeeze(prob, axis=-1)
        return train_model, keras.Model(raw, score, name=self.name)

    def start_from(self, model_uri: str) -> None:
        """Make the next ``fit`` start from the weights of a model logged by this tagger class (fine-tuning).

        Every weight is copied (BatchNorm statistics included); the standardization constants are this
        tagger's, i.e. the new training set's, as they are part of the graph, not of its weights.
        """
        self._initial_weights_uri = model_uri

    def _load_initial_weights(self, model: keras.Model) -> None:
        uri = self._initial_weights_uri
        parent = type(self).load_logged(uri, self.config, self.standardization).model
        want = [tuple(w.shape) for w in model.weights]
        have = [tuple(w.shape) for w in parent.weights]
        if want != have:
            raise WtagError(f"init_from {uri}: its weights ({len(have)} arrays) do not fit the architecture of "
                            f"tagger '{self.name}' ({len(want)} arrays); it was logged by another version")
        model.set_weights(parent.get_weights())

    def _freeze_convolutions(self, model: keras.Model) -> None:
        frozen = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv1D | keras.layers.Conv2D)]
        if not frozen:
            raise WtagError(f"freeze=conv: tagger '{self.name}' has no convolutional layers to freeze")
        for layer in frozen:
            layer.trainable = False

    def fit(self, train: Split, val: Split, on_epoch_end: EpochCallback | None = None) -> dict[str, list[float]]:
        _check_config(self.config)
        if self.config.aux_weight > 0 and not self.supports_aux():
            raise WtagError(f"aux_weight: tagger '{self.name}' reads the jet features the auxiliary targets "
                            f"({', '.join(AUX_TARGETS)}) are made of; the regression is for particle-level taggers")
        x, y, w = self._arrays(train, "training")
        xv, yv, wv = self._arrays(val, "validation")
        keras.utils.set_random_seed(self.config.seed)
        train_model, score_model = self._build()
        if self._initial_weights_uri is not None:
            self._load_initial_weights(score_model)
        if self.config.freeze == "conv":
            if self._initial_weights_uri is None:
                raise WtagError("freeze=conv keeps pretrained layers fixed: it needs init_from (a model to start "
                                "from); from random weights it would freeze noise")
            self._freeze_convolutions(score_model)
        packed = self.config.disco_lambda > 0 or self.config.aux_weight > 0
        loss = (TaggerLoss(self.config.disco_lambda, self.config.aux_weight) if packed
                else keras.losses.BinaryCrossentropy())
        steps = self.config.epochs * math.ceil(len(y) / self.config.batch_size)
        optimizer = keras.optimizers.Adam(learning_rate=learning_rate(self.config, steps),
                                          weight_decay=self.config.weight_decay or None)
        self.trained_with_xla = self.uses_xla(len(y))
        train_model.compile(optimizer=optimizer, loss=loss, jit_compile=self.trained_with_xla)
        callbacks = [
            _ValidationAUC(xv, yv, wv, on_epoch_end),
            keras.callbacks.EarlyStopping(monitor=self.config.epoch_metric, patience=self.config.patience,
                                          mode="max" if self.config.epoch_metric == "val_auc" else "min",
                                          restore_best_weights=True),
        ]
        if packed:  # the mass and auxiliary targets travel with the label; the weights too, as the penalty needs them
            aux, aux_val = None, None
            if self.config.aux_weight > 0:
                aux = aux_targets(train)
                mean, std = aux.mean(axis=0), np.maximum(aux.std(axis=0), 1e-6)
                aux, aux_val = (aux - mean) / std, (aux_targets(val) - mean) / std
            fit_data = {"y": pack_targets(y, train.msd, w, aux),
                        "validation_data": (xv, pack_targets(yv, val.msd, wv, aux_val))}
        else:
            fit_data = {"y": y.reshape(-1, 1), "sample_weight": w, "validation_data": (xv, yv.reshape(-1, 1), wv)}
        result = train_model.fit(x, **fit_data, epochs=self.config.epochs, batch_size=self.config.batch_size,
                                 shuffle=True, callbacks=callbacks, verbose=2 if self.config.verbose else 0)
        self._model = score_model
        return {key: [float(v) for v in result.history[key]] for key in ("loss", "val_loss", "val_auc")}

    def _arrays(self, split: Split, what: str) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        x = {name: np.asarray(array, dtype=np.float32) for name, array in split.inputs(list(self.inputs)).items()}
        self.check_inputs(x)
        y = np.asarray(split.label)
        if not np.isin(y, (0, 1)).all():
            raise WtagError(f"{what} split: tagger '{self.name}' needs labels 0 or 1, got {sorted(set(np.unique(y)))}")
        if len(np.unique(y)) < 2:
            raise WtagError(f"{what} split: tagger '{self.name}' needs both signal and background jets "
                            f"({len(y)} jets, all label {int(y[0]) if len(y) else 'none'})")
        return x, y.astype(np.float32), np.asarray(split.weight, dtype=np.float32)

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        self.check_inputs(inputs)
        x = {name: np.asarray(inputs[name], dtype=np.float32) for name in self.inputs}
        if len(x[self.inputs[0]]) == 0:
            return np.zeros(0, dtype=np.float32)
        scores = self.model.predict(x, batch_size=PREDICT_BATCH_SIZE, verbose=0)
        return np.asarray(scores, dtype=np.float32)

    def log_model(self, name: str, input_example: Mapping[str, np.ndarray]) -> Any:
        """Log in MLflow's ``keras`` flavor; the signature names the input so pyfunc takes ``{input: array}``
        exactly like the exported ONNX model does."""
        import mlflow
        import tensorflow as tf
        from mlflow.models import infer_signature

        self.check_inputs(input_example)
        example = {name: np.asarray(input_example[name][:EXAMPLE_ROWS], dtype=np.float32) for name in self.inputs}
        signature = infer_signature(example, self.predict(example))
        return mlflow.models.Model.log(artifact_path=None, name=name, flavor=_KerasFlavor, flavor_name="mlflow.keras",
                                       model=self.model, signature=signature, input_example=example,
                                       pip_requirements=[f"keras=={keras.__version__}",
                                                         f"tensorflow=={tf.__version__}"])

    @classmethod
    def load_logged(cls, model_uri: str, config: TrainConfig, standardization: Standardization) -> KerasTagger:
        import mlflow

        model = mlflow.keras.load_model(model_uri)
        names = sorted(t.name for t in model.inputs)
        if names != sorted(cls.inputs):
            raise WtagError(f"{model_uri}: model inputs {names} do not fit tagger '{cls.name}' "
                            f"(expects {', '.join(repr(n) for n in cls.inputs)})")
        tagger = cls(config, standardization)
        tagger._model = model
        return tagger

    def to_onnx(self) -> Any:
        """Convert with tf2onnx from a tf.function returning ``{"score": ...}``, which names the output.

        ``model.export(format="onnx")`` would also work, but it names the output ``output_0`` and its numpy-2
        patch of tf2onnx emits a FutureWarning; calling tf2onnx directly avoids both.
        """
        import onnx
        import tensorflow as tf
        import tf2onnx

        model = self.model
        names = self.inputs
        specs = [tf.TensorSpec((None, *schema.expected_shape(name)), tf.float32, name=name) for name in names]

        @tf.function(input_signature=specs)
        def serve(*x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {schema.OUTPUT_SCORE: model(dict(zip(names, x)), training=False)}

        proto, _ = tf2onnx.convert.from_function(serve, input_signature=specs, opset=ONNX_OPSET)
        for value in (*proto.graph.input, *proto.graph.output):
            value.type.tensor_type.shape.dim[0].dim_param = ONNX_BATCH_DIM
        onnx.checker.check_model(proto)
        return proto


class _KerasFlavor:
    """``mlflow.keras`` as a flavor for ``Model.log``, but creating the model directory first: in MLflow 3.17
    ``mlflow.keras.save_model`` writes the input example before it creates the directory, so
    ``mlflow.keras.log_model(..., input_example=...)`` fails (mlflow/mlflow#16183)."""

    @staticmethod
    def save_model(path: str, **kwargs: Any) -> None:
        import mlflow

        os.makedirs(path, exist_ok=True)
        mlflow.keras.save_model(path=path, **kwargs)


def learning_rate(config: TrainConfig, steps: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The optimizer's learning rate for ``config.lr_schedule`` over ``steps`` optimizer steps in all."""
    if config.lr_schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps=steps, alpha=LR_FLOOR)
    return config.learning_rate


def _check_config(config: TrainConfig) -> None:
    problems = [f"{key}={value}" for key, value, ok in (
        ("epochs", config.epochs, config.epochs >= 1),
        ("batch_size", config.batch_size, config.batch_size >= 1),
        ("learning_rate", config.learning_rate, config.learning_rate > 0),
        ("patience", config.patience, config.patience >= 0),
        ("disco_lambda", config.disco_lambda, config.disco_lambda >= 0),
        ("weight_decay", config.weight_decay, config.weight_decay >= 0),
        ("aux_weight", config.aux_weight, config.aux_weight >= 0),
        ("lr_schedule", config.lr_schedule, config.lr_schedule in LR_SCHEDULES),
        ("epoch_metric", config.epoch_metric, config.epoch_metric in EPOCH_METRICS),
        ("freeze", config.freeze, config.freeze in FREEZE_CHOICES),
    ) if not ok]
    if problems:
        raise WtagError(f"training parameters out of range: {', '.join(problems)} (need epochs >= 1, "
                        "batch_size >= 1, learning_rate > 0, patience >= 0, disco_lambda >= 0, weight_decay >= 0, "
                        "aux_weight >= 0, "
                        f"lr_schedule one of {', '.join(LR_SCHEDULES)}, epoch_metric one of "
                        f"{', '.join(EPOCH_METRICS)}, freeze one of {', '.join(map(repr, FREEZE_CHOICES))})")


def dense_stack(x: keras.KerasTensor, units: Sequence[int], dropout: float, prefix: str,
                activation: str = "relu") -> keras.KerasTensor:
    """Dense layers of the given widths, each followed by dropout when ``dropout`` > 0."""
    for i, width in enumerate(units):
        x = keras.layers.Dense(width, activation=activation, name=f"{prefix}{i}")(x)
        if dropout > 0:
            x = keras.layers.Dropout(dropout, name=f"{prefix}{i}_dropout")(x)
    return x


def broadcast_add(x1: keras.KerasTensor, x2: keras.KerasTensor) -> keras.KerasTensor:
    """``x1 + x2`` with NumPy broadcasting of BOTH operands.

    Keras 3.15's TensorFlow ``add`` (also behind ``+``) becomes ``tf.nn.bias_add`` whenever ``x2`` squeezes to a
    vector whose length equals ``x1``'s second or last dimension; that ignores any broadcasting of ``x1``
    ((1, P, 1) + (1, 1, P) gives (1, P, 1)) and can add along the wrong axis ((N, P, k) + (N, 1, 1) with N == P
    adds along P). It depends on the runtime batch size, so it slips past symbolic shape checks. A subtraction
    has no such shortcut.
    """
    return keras.ops.subtract(x1, keras.ops.negative(x2))


def sigmoid_output(x: keras.KerasTensor) -> keras.KerasTensor:
    return keras.layers.Dense(1, activation="sigmoid", name="output")(x)

