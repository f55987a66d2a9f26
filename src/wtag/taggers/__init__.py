"""Tagger families and their registry: names users pass as ``-P model=NAME``.

Modules are imported lazily so that, e.g., the cut tagger does not pay TensorFlow's import time.
"""
from __future__ import annotations

import importlib

from wtag import schema
from wtag.dataset import Standardization
from wtag.errors import WtagError
from wtag.taggers.base import Tagger, TrainConfig

# name -> "module:Class"
REGISTRY: dict[str, str] = {
    "cut": "wtag.taggers.cut:CutTagger",
    "bdt": "wtag.taggers.bdt:BDTTagger",
    "dnn": "wtag.taggers.dense:DenseTagger",
    "cnn_tutorial": "wtag.taggers.cnn:TutorialCNNTagger",
    "cnn": "wtag.taggers.cnn:CNNTagger",
    "lstm": "wtag.taggers.recurrent:LSTMTagger",
    "bilstm": "wtag.taggers.recurrent:BiLSTMTagger",
    "pfn": "wtag.taggers.particle:PFNTagger",
}
TAGGER_NAMES = tuple(REGISTRY)


def tagger_class(name: str) -> type[Tagger]:
    if name not in REGISTRY:
        raise WtagError(f"unknown tagger '{name}' (known: {', '.join(TAGGER_NAMES)})")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_tagger(name: str, config: TrainConfig, standardization: Standardization) -> Tagger:
    return tagger_class(name)(config, standardization)


def expected_shape(input_name: str) -> tuple[int, ...]:
    """Per-jet shape of a model input."""
    shapes = {
        schema.INPUT_HL: (len(schema.HL_FEATURES),),
        schema.INPUT_IMAGES: (schema.IMAGE_PIXELS, schema.IMAGE_PIXELS, 1),
        schema.INPUT_PARTICLES: (schema.MAX_PARTICLES, len(schema.PARTICLE_FEATURES)),
    }
    if input_name not in shapes:
        raise WtagError(f"unknown model input '{input_name}' (known: {', '.join(shapes)})")
    return shapes[input_name]


__all__ = ["REGISTRY", "TAGGER_NAMES", "Tagger", "TrainConfig", "build_tagger", "expected_shape", "tagger_class"]
