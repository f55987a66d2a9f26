"""ParticleNet (Qu & Gouskos, Phys. Rev. D 101 (2020) 056019, arXiv:1902.08570): the jet as a point cloud.

EdgeConv blocks: for every particle i, its k nearest neighbours j (in (deta, dphi) for the first block, in the
previous block's learned features for the next ones) give edge features ``(x_i, x_j - x_i)``; a shared MLP
(Dense + BatchNorm + ReLU, three times) maps each edge, the mean over the k edges plus a linear shortcut of
``x_i`` is the particle's new feature vector. The blocks' outputs are fused (concatenated, Dense 128), averaged
over the real particles, and a Dense 128 + dropout 0.1 head gives the score. The default is ParticleNet-Lite:
two blocks, k = 7, channels (32, 32, 32) and (64, 64, 64).

Masking (padded particles are the rows with raw pT == 0): padded particles are moved out of every neighbour list
by a large distance penalty, and whatever the top-k still returns for jets with fewer than k + 1 real particles
(padded rows, or the particle itself) is dropped from the mean; block outputs are zeroed on padded rows and the
pooling averages over real particles only. So padding changes nothing, and neither does the particles' order.

Built from ``keras.ops`` only (``top_k``, ``take``, ``cumsum``, ``matmul``), so the graph serializes without
custom objects; additions that broadcast both operands go through ``broadcast_add`` (a Keras 3.15 pitfall).
The neighbour gather is a flat ``take`` on ``(N * P, C)`` rows: the batch offset ``b * P`` comes from a
cumulative sum over the batch axis, which keeps the batch dimension dynamic without reading a shape.
"""
from __future__ import annotations

from typing import Any, ClassVar

import keras

from wtag import schema
from wtag.taggers.keras_common import (TRAINING_SPACE, KerasTagger, broadcast_add, sigmoid_output,
                                      standardized_particles)

# Added to the pairwise distance of a padded neighbour or of the particle itself; real squared distances
# (in (deta, dphi) or in learned features) are many orders of magnitude smaller.
NEIGHBOUR_PENALTY = 1e9
DETA = schema.PARTICLE_FEATURES.index("deta")
DPHI = schema.PARTICLE_FEATURES.index("dphi")


def _pairwise_sq_distance(points: keras.KerasTensor) -> keras.KerasTensor:
    """(N, P, P) squared Euclidean distances between the rows of (N, P, D) points."""
    inner = keras.ops.matmul(points, keras.ops.transpose(points, (0, 2, 1)))
    norm = keras.ops.sum(points * points, axis=-1, keepdims=True)
    return broadcast_add(norm - 2.0 * inner, keras.ops.transpose(norm, (0, 2, 1)))


def knn(points: keras.KerasTensor, mask_f: keras.KerasTensor, k: int
        ) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """Indices (N, P, k) of each particle's k nearest real neighbours (itself excluded) and their validity
    (N, P, k) as 0/1 floats: 0 where a jet has fewer than k + 1 real particles and the slot got padding/self."""
    dist = _pairwise_sq_distance(points)
    not_real = 1.0 - keras.ops.expand_dims(mask_f, 1)  # (N, 1, P): column j is padding
    # The identity, built from the input: a constant (keras.ops.eye) would be captured as an eager tensor,
    # which tf2onnx turns into an extra graph input.
    position = keras.ops.cumsum(keras.ops.ones_like(mask_f), axis=1)  # (N, P): 1..P
    self_pair = keras.ops.cast(keras.ops.equal(keras.ops.expand_dims(position, 2), keras.ops.expand_dims(position, 1)),
                               dist.dtype)
    dist = dist + NEIGHBOUR_PENALTY * broadcast_add(not_real, self_pair)
    neg_dist, index = keras.ops.top_k(-dist, k=k, sorted=True)
    valid = keras.ops.cast(keras.ops.greater(neg_dist, -0.5 * NEIGHBOUR_PENALTY), mask_f.dtype)
    return index, valid


def gather_neighbours(features: keras.KerasTensor, index: keras.KerasTensor) -> keras.KerasTensor:
    """(N, P, k, C) features of each particle's neighbours, from (N, P, C) features and (N, P, k) indices."""
    n_particles = schema.MAX_PARTICLES
    channels = features.shape[-1]
    # Batch row b as an integer: cumulative sum of ones over the batch axis, minus one; (N, 1, 1).
    ones = keras.ops.ones_like(keras.ops.cast(index[:, :1, :1], "int32"))
    batch = keras.ops.cumsum(ones, axis=0) - 1
    flat_index = broadcast_add(keras.ops.cast(index, "int32"), batch * n_particles)
    flat = keras.ops.reshape(features, (-1, channels))
    return keras.ops.take(flat, flat_index, axis=0)


def edge_conv(points: keras.KerasTensor, features: keras.KerasTensor, mask_f: keras.KerasTensor, k: int,
              channels: tuple[int, ...], prefix: str) -> keras.KerasTensor:
    """One EdgeConv block; returns (N, P, channels[-1]) features, zero on padded rows."""
    index, valid = knn(points, mask_f, k)
    neighbours = gather_neighbours(features, index)  # (N, P, k, C)
    centre = keras.ops.repeat(keras.ops.expand_dims(features, 2), k, axis=2)  # (N, P, k, C)
    x = keras.ops.concatenate([centre, neighbours - centre], axis=-1)
    for i, width in enumerate(channels):
        x = keras.layers.Dense(width, use_bias=False, name=f"{prefix}_edge{i}")(x)
        x = keras.layers.BatchNormalization(name=f"{prefix}_edge{i}_bn")(x)
        x = keras.layers.Activation("relu", name=f"{prefix}_edge{i}_relu")(x)
    valid4 = keras.ops.expand_dims(valid, -1)
    count = keras.ops.maximum(keras.ops.sum(valid4, axis=2), 1.0)
    aggregated = keras.ops.sum(x * valid4, axis=2) / count  # mean over the real neighbours
    shortcut = keras.layers.Dense(channels[-1], use_bias=False, name=f"{prefix}_shortcut")(features)
    shortcut = keras.layers.BatchNormalization(name=f"{prefix}_shortcut_bn")(shortcut)
    out = keras.layers.Activation("relu", name=f"{prefix}_relu")(aggregated + shortcut)
    return out * keras.ops.expand_dims(mask_f, -1)


class ParticleNetTagger(KerasTagger):
    """ParticleNet-Lite: EdgeConv (k=7; 32,32,32) -> EdgeConv (k=7; 64,64,64) -> fusion Dense 128 ->
    mean over real particles -> Dense 128 + dropout 0.1 -> sigmoid."""

    name: ClassVar[str] = "particlenet"
    family: ClassVar[str] = "particle"
    xla_from_jet_epochs: ClassVar[int | None] = 25_000
    inputs: ClassVar[tuple[str, ...]] = (schema.INPUT_PARTICLES,)

    k: ClassVar[int] = 7
    channels: ClassVar[int] = 32  # of the first block; the second has twice as many
    fusion_units: ClassVar[int] = 128
    head_units: ClassVar[int] = 128
    dropout: ClassVar[float] = 0.1
    search_space: ClassVar[dict[str, Any]] = {**TRAINING_SPACE, "k": [5, 7, 11, 16], "channels": [16, 32, 64],
                                              "head_units": [64, 128, 256], "dropout": {"low": 0.0, "high": 0.3}}

    @property
    def block_channels(self) -> tuple[tuple[int, ...], ...]:
        c = int(self.channels)
        return ((c, c, c), (2 * c, 2 * c, 2 * c))

    def architecture(self) -> dict[str, Any]:
        return {"architecture": "particlenet", "k": self.k,
                "edge_conv_channels": ";".join(",".join(map(str, c)) for c in self.block_channels),
                "fusion_units": self.fusion_units, "head_units": self.head_units, "dropout": self.dropout,
                "knn_space": "deta,dphi then learned features",
                "max_particles": schema.MAX_PARTICLES, "particle_features": ",".join(schema.PARTICLE_FEATURES)}

    def build_network(self, raw: keras.KerasTensor) -> keras.KerasTensor:
        x, mask = standardized_particles(raw, self.standardization)
        mask_f = keras.ops.cast(mask, "float32")
        mask3 = keras.ops.expand_dims(mask_f, -1)
        # Neighbours of the first block in the raw (deta, dphi) plane, so the distance is Delta R.
        points = keras.ops.stack([raw[..., DETA], raw[..., DPHI]], axis=-1) * mask3
        outputs = []
        features = x
        for b, channels in enumerate(self.block_channels):
            features = edge_conv(points, features, mask_f, self.k, channels, prefix=f"edgeconv{b}")
            outputs.append(features)
            points = features
        fused = keras.ops.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0]
        fused = keras.layers.Dense(self.fusion_units, use_bias=False, name="fusion")(fused)
        fused = keras.layers.BatchNormalization(name="fusion_bn")(fused)
        fused = keras.layers.Activation("relu", name="fusion_relu")(fused) * mask3
        pooled = keras.ops.sum(fused, axis=1) / keras.ops.maximum(keras.ops.sum(mask3, axis=1), 1.0)
        head = keras.layers.Dense(self.head_units, activation="relu", name="head")(pooled)
        if self.dropout > 0:
            head = keras.layers.Dropout(self.dropout, name="head_dropout")(head)
        return sigmoid_output(head)

