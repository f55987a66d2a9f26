"""Particle Transformer (Qu, Li & Qian, ICML 2022, arXiv:2202.03772), at a size that trains on 2 cores.

- Particle embedding: a per-particle MLP of the standardized features.
- Interaction features of every particle pair (i, j), computed in the graph from the raw pT, deta, dphi of
  massless particles (E = |p|): ln Delta R, ln kT = ln(min(pT_i, pT_j) Delta R), ln z = ln(min pT / (pT_i + pT_j))
  and ln m^2 with m^2 = 2 pT_i pT_j (cosh deta_ij - cos dphi_ij), written as 4 pT_i pT_j (sinh^2(deta_ij / 2) +
  sin^2(dphi_ij / 2)) so that nearly collinear pairs do not lose every digit to cancellation; and whether both
  particles survive the soft drop that defines the groomed mass (the pairs that make msd). A pointwise MLP
  (BatchNorm, Dense 32 GELU x 2, Dense heads) embeds them into one additive bias per attention head, shared by
  all particle blocks.
- Particle attention blocks (pre-LayerNorm): multi-head self-attention whose logits get the pair bias, then
  a GELU feed-forward layer, each with a residual connection.
- Class attention blocks: a learned class token attends to itself and the particles; its final state gives
  the score.

Masking: padded particles (raw pT == 0) get logit -1e9 as keys, so their softmax weight is exactly zero; their
pair features are zero; they never reach the class token. The diagonal (self pairs) also gets zero interaction
features. Attention and the pooling by a class token make the score independent of the particles' order.

Only built-in Keras layers and ``keras.ops``: the class token is an ``Embedding`` of a constant index, the
attention is written out with ``Dense`` + ``matmul`` + ``softmax`` because ``MultiHeadAttention`` takes no
additive bias on its logits.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import keras

from wtag import schema
from wtag.taggers.keras_common import (TRAINING_SPACE, KerasTagger, broadcast_add, sigmoid_output,
                                      standardized_particles)

PT = schema.PARTICLE_PT
DETA = schema.PARTICLE_FEATURES.index("deta")
DPHI = schema.PARTICLE_FEATURES.index("dphi")
IN_SOFTDROP = schema.PARTICLE_FEATURES.index("in_softdrop")
MASKED_LOGIT = -1e9
LOG_FLOOR = 1e-8  # argument floor of the pair features' logarithms
PAIR_FEATURES = ("ln_delta_r", "ln_kt", "ln_z", "ln_m2", "both_in_softdrop")


def pair_features(raw: keras.KerasTensor, mask_f: keras.KerasTensor) -> keras.KerasTensor:
    """(N, P, P, len(PAIR_FEATURES)) interaction features of the real particle pairs i != j; zero for all other pairs.

    dphi is relative to the jet axis and wrapped to (-pi, pi], so within an R = 0.7 jet the difference of two
    values needs no second wrap.
    """
    pt = raw[..., PT] * mask_f
    eta = raw[..., DETA] * mask_f
    phi = raw[..., DPHI] * mask_f
    groomed = raw[..., IN_SOFTDROP] * mask_f

    def rows(v: keras.KerasTensor) -> keras.KerasTensor:
        return keras.ops.expand_dims(v, 2)  # (N, P, 1): particle i

    def cols(v: keras.KerasTensor) -> keras.KerasTensor:
        return keras.ops.expand_dims(v, 1)  # (N, 1, P): particle j

    deta = rows(eta) - cols(eta)
    dphi = rows(phi) - cols(phi)
    pt_min = keras.ops.minimum(rows(pt), cols(pt))
    pt_sum = broadcast_add(rows(pt), cols(pt))
    half_sinh = keras.ops.sinh(0.5 * deta)
    half_sin = keras.ops.sin(0.5 * dphi)
    dr2 = deta * deta + dphi * dphi
    ln_dr = 0.5 * keras.ops.log(keras.ops.maximum(dr2, LOG_FLOOR * LOG_FLOOR))
    ln_kt = keras.ops.log(keras.ops.maximum(pt_min, LOG_FLOOR)) + ln_dr
    ln_z = keras.ops.log(keras.ops.maximum(pt_min / keras.ops.maximum(pt_sum, LOG_FLOOR), LOG_FLOOR))
    m2 = 4.0 * rows(pt) * cols(pt) * (half_sinh * half_sinh + half_sin * half_sin)
    ln_m2 = keras.ops.log(keras.ops.maximum(m2, LOG_FLOOR))
    # Real pairs off the diagonal; the identity is built from the input (a keras.ops.eye constant would be
    # captured as an eager tensor, which tf2onnx turns into an extra graph input).
    position = keras.ops.cumsum(keras.ops.ones_like(mask_f), axis=1)
    off_diagonal = keras.ops.cast(keras.ops.not_equal(rows(position), cols(position)), mask_f.dtype)
    pair_mask = rows(mask_f) * cols(mask_f) * off_diagonal
    both_groomed = rows(groomed) * cols(groomed)
    return (keras.ops.stack([ln_dr, ln_kt, ln_z, ln_m2, both_groomed], axis=-1)
            * keras.ops.expand_dims(pair_mask, -1))


def attention(query: keras.KerasTensor, keys: keras.KerasTensor, key_mask_f: keras.KerasTensor,
              bias: keras.KerasTensor | None, heads: int, dim: int, prefix: str) -> keras.KerasTensor:
    """Multi-head attention of (N, Lq, E) queries over (N, Lk, E) keys/values; masked keys get zero weight;
    ``bias`` (N, heads, Lq, Lk) is added to the logits."""
    head_dim = dim // heads

    def split(x: keras.KerasTensor, name: str) -> keras.KerasTensor:
        x = keras.layers.Dense(dim, name=f"{prefix}_{name}")(x)
        x = keras.ops.reshape(x, (-1, x.shape[1], heads, head_dim))
        return keras.ops.transpose(x, (0, 2, 1, 3))  # (N, heads, L, head_dim)

    q, k, v = split(query, "query"), split(keys, "key"), split(keys, "value")
    logits = keras.ops.matmul(q, keras.ops.transpose(k, (0, 1, 3, 2))) * (1.0 / math.sqrt(head_dim))
    if bias is not None:
        logits = logits + bias
    key_padding = 1.0 - keras.ops.expand_dims(keras.ops.expand_dims(key_mask_f, 1), 1)  # (N, 1, 1, Lk)
    weights = keras.ops.softmax(broadcast_add(logits, MASKED_LOGIT * key_padding), axis=-1)
    out = keras.ops.transpose(keras.ops.matmul(weights, v), (0, 2, 1, 3))
    out = keras.ops.reshape(out, (-1, query.shape[1], dim))
    return keras.layers.Dense(dim, name=f"{prefix}_out")(out)


def gelu(x: keras.KerasTensor) -> keras.KerasTensor:
    """GELU in its tanh form: the exact form's TensorFlow kernel uses Erfc, which tf2onnx cannot convert."""
    return keras.ops.gelu(x, approximate=True)


def feed_forward(x: keras.KerasTensor, hidden: int, dim: int, dropout: float, prefix: str) -> keras.KerasTensor:
    h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{prefix}_ffn_norm")(x)
    h = gelu(keras.layers.Dense(hidden, name=f"{prefix}_ffn0")(h))
    h = keras.layers.Dense(dim, name=f"{prefix}_ffn1")(h)
    if dropout > 0:
        h = keras.layers.Dropout(dropout, name=f"{prefix}_ffn_dropout")(h)
    return x + h


class ParticleTransformerTagger(KerasTagger):
    """Embed 64 -> 2 particle-attention blocks (4 heads, pair bias) -> 1 class-attention block -> sigmoid."""

    name: ClassVar[str] = "part"
    family: ClassVar[str] = "particle"
    xla_from_jet_epochs: ClassVar[int | None] = 20_000
    inputs: ClassVar[tuple[str, ...]] = (schema.INPUT_PARTICLES,)

    embed_dim: ClassVar[int] = 64
    heads: ClassVar[int] = 4
    ffn_dim: ClassVar[int] = 128
    particle_blocks: ClassVar[int] = 2
    class_blocks: ClassVar[int] = 1
    pair_units: ClassVar[tuple[int, ...]] = (32, 32)
    dropout: ClassVar[float] = 0.1
    # Every embed_dim choice is divisible by every heads choice. Bigger blocks cost minutes per epoch on CPU.
    search_space: ClassVar[dict[str, Any]] = {
        **TRAINING_SPACE, "batch_size": [256, 512], "learning_rate": {"low": 2e-4, "high": 3e-3, "log": True},
        "embed_dim": [32, 64, 128], "heads": [2, 4, 8], "ffn_dim": [64, 128, 256], "particle_blocks": [1, 2, 3],
        "class_blocks": [1, 2], "dropout": {"low": 0.0, "high": 0.3}}

    def architecture(self) -> dict[str, Any]:
        return {"architecture": "part", "embed_dim": self.embed_dim, "heads": self.heads, "ffn_dim": self.ffn_dim,
                "particle_blocks": self.particle_blocks, "class_blocks": self.class_blocks,
                "pair_units": ",".join(map(str, self.pair_units)), "pair_features": ",".join(PAIR_FEATURES),
                "dropout": self.dropout, "max_particles": schema.MAX_PARTICLES,
                "particle_features": ",".join(schema.PARTICLE_FEATURES)}

    def build_network(self, raw: keras.KerasTensor) -> keras.KerasTensor:
        x, mask = standardized_particles(raw, self.standardization)
        mask_f = keras.ops.cast(mask, "float32")
        mask3 = keras.ops.expand_dims(mask_f, -1)
        dim = self.embed_dim

        x = gelu(keras.layers.Dense(2 * dim, name="embed0")(x))
        x = keras.layers.Dense(dim, name="embed1")(x) * mask3

        u = keras.layers.BatchNormalization(name="pair_bn")(pair_features(raw, mask_f))
        for i, width in enumerate(self.pair_units):
            u = gelu(keras.layers.Dense(width, name=f"pair{i}")(u))
        u = keras.layers.Dense(self.heads, name="pair_heads")(u)  # (N, P, P, heads)
        bias = keras.ops.transpose(u, (0, 3, 1, 2))

        for b in range(self.particle_blocks):
            prefix = f"particle_block{b}"
            h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{prefix}_norm")(x)
            x = x + attention(h, h, mask_f, bias, self.heads, dim, prefix)
            x = feed_forward(x, self.ffn_dim, dim, self.dropout, prefix) * mask3

        # The class token: a learned vector, as the embedding of index 0 (one per jet in the batch).
        token_index = keras.ops.cast(keras.ops.zeros_like(mask_f[:, :1]), "int32")
        cls = keras.layers.Embedding(1, dim, name="class_token")(token_index)  # (N, 1, dim)
        for b in range(self.class_blocks):
            prefix = f"class_block{b}"
            keys = keras.ops.concatenate([cls, x], axis=1)
            key_mask = keras.ops.concatenate([keras.ops.ones_like(mask_f[:, :1]), mask_f], axis=1)
            q = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{prefix}_query_norm")(cls)
            kv = keras.layers.LayerNormalization(epsilon=1e-5, name=f"{prefix}_norm")(keys)
            cls = cls + attention(q, kv, key_mask, None, self.heads, dim, prefix)
            cls = feed_forward(cls, self.ffn_dim, dim, self.dropout, prefix)

        out = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(keras.ops.squeeze(cls, axis=1))
        if self.dropout > 0:
            out = keras.layers.Dropout(self.dropout, name="head_dropout")(out)
        return sigmoid_output(out)
