"""LSTM and bidirectional-LSTM taggers on the pT-ordered constituent list (the tutorial's best: BiLSTM).

Padding sits at the end of each list. The mask (raw pT > 0) is passed explicitly to the recurrent layer, so
padded steps neither update nor emit state; tf2onnx converts the masked TensorFlow while-loop into an ONNX
Loop that reproduces this exactly (tested with jets of different multiplicities in one batch).
"""
from __future__ import annotations

from typing import Any, ClassVar

import keras

from wtag import schema
from wtag.taggers.keras_common import (TRAINING_SPACE, KerasTagger, dense_stack, sigmoid_output,
                                      standardized_particles)


class LSTMTagger(KerasTagger):
    """Standardized particles -> masked LSTM -> dense -> sigmoid."""

    name: ClassVar[str] = "lstm"
    family: ClassVar[str] = "recurrent"
    xla_from_jet_epochs: ClassVar[int | None] = 150_000
    inputs: ClassVar[tuple[str, ...]] = (schema.INPUT_PARTICLES,)

    lstm_units: ClassVar[int] = 50
    dense_width: ClassVar[int] = 64
    dropout: ClassVar[float] = 0.1
    search_space: ClassVar[dict[str, Any]] = {**TRAINING_SPACE, "lstm_units": {"low": 25, "high": 100, "step": 25},
                                              "dense_width": [32, 64, 128], "dropout": {"low": 0.0, "high": 0.3}}

    @property
    def dense_units(self) -> tuple[int, ...]:
        return (int(self.dense_width),)
    bidirectional: ClassVar[bool] = False

    def architecture(self) -> dict[str, Any]:
        return {"architecture": "bilstm" if self.bidirectional else "lstm", "lstm_units": self.lstm_units,
                "reading_order": "both" if self.bidirectional else "softest first",
                "dense_units": ",".join(map(str, self.dense_units)), "dropout": self.dropout,
                "max_particles": schema.MAX_PARTICLES, "particle_features": ",".join(schema.PARTICLE_FEATURES)}

    def build_network(self, raw: keras.KerasTensor) -> keras.KerasTensor:
        x, mask = standardized_particles(raw, self.standardization)
        # Read softest-first, so the state the classifier sees was last updated by the hardest particles
        # (the list ends in soft pileup; forward reading let it wash the prongs out: val AUC 0.90 vs cut 0.93).
        recurrent: keras.layers.Layer = keras.layers.LSTM(self.lstm_units, name="lstm",
                                                          go_backwards=not self.bidirectional)
        if self.bidirectional:
            recurrent = keras.layers.Bidirectional(recurrent, name="bilstm")
        h = recurrent(x, mask=mask)
        return sigmoid_output(dense_stack(h, self.dense_units, self.dropout, "dense"))


class BiLSTMTagger(LSTMTagger):
    """The same with a bidirectional LSTM (forward and backward states concatenated)."""

    name: ClassVar[str] = "bilstm"
    xla_from_jet_epochs: ClassVar[int | None] = 60_000
    bidirectional: ClassVar[bool] = True
