"""Particle Flow Network (Deep Sets) on the constituent list: a per-particle MLP, a masked sum over
particles, and an MLP on the sum. Permutation invariant, and cheap to train and to export to ONNX. ``pfn_hl``
adds the ten jet features beside the sum (a hybrid).
"""
from __future__ import annotations

from typing import Any, ClassVar

import keras

from wtag import schema
from wtag.taggers.keras_common import (TRAINING_SPACE, KerasTagger, dense_stack, sigmoid_output, standardized_hl,
                                      standardized_particles)


class PFNTagger(KerasTagger):
    """Phi (Dense 64-64-64 on every particle) -> sum over real particles -> F (Dense 64-64) -> sigmoid."""

    name: ClassVar[str] = "pfn"
    family: ClassVar[str] = "particle"
    inputs: ClassVar[tuple[str, ...]] = (schema.INPUT_PARTICLES,)

    phi_width: ClassVar[int] = 64
    f_width: ClassVar[int] = 64
    dropout: ClassVar[float] = 0.1
    search_space: ClassVar[dict[str, Any]] = {**TRAINING_SPACE, "phi_width": [32, 64, 128], "f_width": [32, 64, 128],
                                              "dropout": {"low": 0.0, "high": 0.3}}

    @property
    def phi_units(self) -> tuple[int, ...]:
        return (int(self.phi_width),) * 3

    @property
    def f_units(self) -> tuple[int, ...]:
        return (int(self.f_width),) * 2

    def architecture(self) -> dict[str, Any]:
        return {"architecture": "pfn", "phi_units": ",".join(map(str, self.phi_units)),
                "f_units": ",".join(map(str, self.f_units)), "dropout": self.dropout,
                "max_particles": schema.MAX_PARTICLES, "particle_features": ",".join(schema.PARTICLE_FEATURES)}

    def particle_sum(self, particles: keras.KerasTensor) -> keras.KerasTensor:
        """Phi of every real particle, summed over the jet: the (N, phi_width) latent."""
        x, mask = standardized_particles(particles, self.standardization)
        phi = dense_stack(x, self.phi_units, 0.0, "phi")
        # Padded rows have zero input but not zero phi (biases), so the mask, not the padding, decides.
        weights = keras.ops.expand_dims(keras.ops.cast(mask, phi.dtype), -1)
        return keras.ops.sum(phi * weights, axis=1)

    def build_network(self, raw: keras.KerasTensor) -> keras.KerasTensor:
        return sigmoid_output(dense_stack(self.particle_sum(raw), self.f_units, self.dropout, "f"))


class PFNHLTagger(PFNTagger):
    """A hybrid: the PFN's particle sum concatenated with the ten standardized jet features, then F -> sigmoid.

    The jet features carry what a capped, pooled particle list cannot (the groomed mass as computed, the full
    count); training both together lets F weigh them per jet. Reported as a hybrid, never as a particle-only
    tagger.
    """

    name: ClassVar[str] = "pfn_hl"
    family: ClassVar[str] = "hybrid"
    inputs: ClassVar[tuple[str, ...]] = (schema.INPUT_PARTICLES, schema.INPUT_HL)

    def architecture(self) -> dict[str, Any]:
        return {**super().architecture(), "architecture": "pfn_hl", "hl_features": ",".join(schema.HL_FEATURES)}

    def build_network(self, raw: dict[str, keras.KerasTensor]) -> keras.KerasTensor:
        latent = self.particle_sum(raw[schema.INPUT_PARTICLES])
        hl = standardized_hl(raw[schema.INPUT_HL], self.standardization, "standardize_hl")
        joined = keras.layers.Concatenate(name="particles_and_hl")([latent, hl])
        return sigmoid_output(dense_stack(joined, self.f_units, self.dropout, "f"))
