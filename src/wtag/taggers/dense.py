"""Dense network on the high-level jet features (the tutorial's DNN, on all ten HL_FEATURES).

The tutorial used pT, tau21, soft-drop mass and ncand; we feed every column of ``hl``. pT stays in: the
pT-flattening training weights make it carry no class information on its own, but it conditions the others.
"""
from __future__ import annotations

from typing import Any, ClassVar

import keras

from wtag import schema
from wtag.taggers.keras_common import TRAINING_SPACE, KerasTagger, dense_stack, sigmoid_output, standardized_hl


class DenseTagger(KerasTagger):
    """Three ReLU layers with dropout on the standardized HL features."""

    name: ClassVar[str] = "dnn"
    family: ClassVar[str] = "dense"
    inputs: ClassVar[tuple[str, ...]] = (schema.INPUT_HL,)

    layers: ClassVar[int] = 3
    width: ClassVar[int] = 64
    dropout: ClassVar[float] = 0.1
    search_space: ClassVar[dict[str, Any]] = {**TRAINING_SPACE, "layers": [2, 3, 4], "width": [32, 64, 128, 256],
                                              "dropout": {"low": 0.0, "high": 0.3}}

    @property
    def units(self) -> tuple[int, ...]:
        return (int(self.width),) * int(self.layers)

    def architecture(self) -> dict[str, Any]:
        return {"architecture": "dense", "units": ",".join(map(str, self.units)), "dropout": self.dropout,
                "features": ",".join(schema.HL_FEATURES)}

    def build_network(self, raw: keras.KerasTensor) -> keras.KerasTensor:
        x = standardized_hl(raw, self.standardization)
        return sigmoid_output(dense_stack(x, self.units, self.dropout, "dense"))
