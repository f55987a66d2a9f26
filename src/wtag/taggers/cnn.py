"""Convolutional taggers on 30 x 30 jet images: the tutorial's small CNN and a stronger modern one.

Pixels are pT in GeV. Both models divide by ``image_scale`` (the training set's mean total image pT) inside
the graph; the modern CNN adds a log-compressed view, since pixel pT spans three orders of magnitude.
"""
from __future__ import annotations

from typing import Any, ClassVar

import keras

from wtag import schema
from wtag.dataset import Standardization
from wtag.errors import WtagError
from wtag.taggers.keras_common import TRAINING_SPACE, KerasTagger, sigmoid_output


def _image_scale(standardization: Standardization) -> float:
    scale = standardization.image_scale
    if scale is None or not scale > 0:
        raise WtagError(f"standardization has image_scale={scale}: the dataset has no usable 'images' input")
    return float(scale)


class TutorialCNNTagger(KerasTagger):
    """The CMS HATS jet-image CNN, layer for layer: Conv 8@11x11, pool 2, Conv 8@3x3, pool 3, Conv 8@3x3,
    pool 3, dropout 0.2, dense 20, dropout 0.1, sigmoid.

    tanh throughout (convolutions and the dense layer) and 'same' padding, as in the tutorial notebook; the
    only addition is the baked-in division by ``image_scale`` so the model takes raw pixel pT.
    """

    name: ClassVar[str] = "cnn_tutorial"
    family: ClassVar[str] = "cnn"
    inputs: ClassVar[tuple[str, ...]] = (schema.INPUT_IMAGES,)
    # The layout is the tutorial's by definition; only its training is tuned.
    search_space: ClassVar[dict[str, Any]] = dict(TRAINING_SPACE)

    def architecture(self) -> dict[str, Any]:
        return {"architecture": "cnn_tutorial", "filters": "8,8,8", "kernels": "11,3,3", "pools": "2,3,3",
                "dense": 20, "dropout": "0.2,0.1", "activation": "tanh", "pixel_transform": "x/image_scale"}

    def build_network(self, raw: keras.KerasTensor) -> keras.KerasTensor:
        L = keras.layers
        x = L.Rescaling(1.0 / _image_scale(self.standardization), name="scale")(raw)
        x = L.Conv2D(8, (11, 11), padding="same", activation="tanh", name="conv0")(x)
        x = L.MaxPooling2D((2, 2), name="pool0")(x)
        x = L.Conv2D(8, (3, 3), padding="same", activation="tanh", name="conv1")(x)
        x = L.MaxPooling2D((3, 3), name="pool1")(x)
        x = L.Conv2D(8, (3, 3), padding="same", activation="tanh", name="conv2")(x)
        x = L.MaxPooling2D((3, 3), name="pool2")(x)
        x = L.Flatten(name="flatten")(x)
        x = L.Dropout(0.2, name="dropout0")(x)
        x = L.Dense(20, activation="tanh", name="dense0")(x)
        x = L.Dropout(0.1, name="dropout1")(x)
        return sigmoid_output(x)


class CNNTagger(KerasTagger):
    """A small modern CNN fed two views of each image: linear pixel pT (the hard prongs, which carry the
    mass) and log-compressed pixel pT (the soft radiation pattern, which differs between colour-singlet W
    and QCD jets). Three ReLU conv blocks, a dense layer with dropout; no batch norm, whose running
    statistics settle too slowly on the few steps per epoch of these samples.

    On the tutorial's real CMS images (60/20/20 split) this beats the tutorial CNN's test AUC.
    """

    name: ClassVar[str] = "cnn"
    family: ClassVar[str] = "cnn"
    inputs: ClassVar[tuple[str, ...]] = (schema.INPUT_IMAGES,)

    base_filters: ClassVar[int] = 16  # doubled in each of the three blocks
    dense_units: ClassVar[int] = 64
    dropout: ClassVar[float] = 0.2
    search_space: ClassVar[dict[str, Any]] = {**TRAINING_SPACE, "base_filters": [8, 16, 32],
                                              "dense_units": [32, 64, 128], "dropout": {"low": 0.0, "high": 0.5}}

    @property
    def filters(self) -> tuple[int, ...]:
        f = int(self.base_filters)
        return (f, 2 * f, 4 * f)
    # Linear view: pixel pT in units of LINEAR_UNIT x image_scale, so hard prongs are O(1).
    linear_unit: ClassVar[float] = 0.1
    # Log view: log1p(pixel pT / (LOG_UNIT x image_scale)); with image_scale ~ 300 GeV the unit is ~0.3 GeV,
    # the softest pixels, so soft and hard pixels both map to O(1) values.
    log_unit: ClassVar[float] = 1e-3

    def architecture(self) -> dict[str, Any]:
        return {"architecture": "cnn", "filters": ",".join(map(str, self.filters)), "kernel": 3, "pool": 2,
                "dense": self.dense_units, "dropout": self.dropout,
                "pixel_transform": f"[x/(image_scale*{self.linear_unit:g}), "
                                   f"log1p(x/(image_scale*{self.log_unit:g}))]"}

    def build_network(self, raw: keras.KerasTensor) -> keras.KerasTensor:
        L = keras.layers
        scale = _image_scale(self.standardization)
        linear = L.Rescaling(1.0 / (scale * self.linear_unit), name="linear_view")(raw)
        # log(1 + x) rather than ops.log1p: tf2onnx has no converter for TF's Log1p.
        log = keras.ops.log(L.Rescaling(1.0 / (scale * self.log_unit), name="log_view")(raw) + 1.0)
        x = keras.ops.concatenate([linear, log], axis=-1)
        for i, width in enumerate(self.filters):
            x = L.Conv2D(width, (3, 3), padding="same", activation="relu", name=f"conv{i}")(x)
            x = L.MaxPooling2D((2, 2), name=f"pool{i}")(x)
        x = L.Flatten(name="flatten")(x)
        x = L.Dense(self.dense_units, activation="relu", name="dense0")(x)
        x = L.Dropout(self.dropout, name="dropout0")(x)
        return sigmoid_output(x)
