"""Tagger families and their registry: names users pass as ``-P model=NAME``.

Modules are imported lazily so that, e.g., the cut tagger does not pay TensorFlow's import time.
"""
from __future__ import annotations

import importlib

from wtag.dataset import Standardization
from wtag.errors import WtagError
from wtag.taggers.base import Tagger, TrainConfig

# name -> "module:Class"
REGISTRY: dict[str, str] = {
    "cut": "wtag.taggers.cut:CutTagger",
    "ddt": "wtag.taggers.ddt:DDTTagger",
    "bdt": "wtag.taggers.bdt:BDTTagger",
    "dnn": "wtag.taggers.dense:DenseTagger",
    "cnn_tutorial": "wtag.taggers.cnn:TutorialCNNTagger",
    "cnn": "wtag.taggers.cnn:CNNTagger",
    "lstm": "wtag.taggers.recurrent:LSTMTagger",
    "bilstm": "wtag.taggers.recurrent:BiLSTMTagger",
    "pfn": "wtag.taggers.particle:PFNTagger",
    "pfn_hl": "wtag.taggers.particle:PFNHLTagger",
    "particlenet": "wtag.taggers.particlenet:ParticleNetTagger",
    "part": "wtag.taggers.part:ParticleTransformerTagger",
}
TAGGER_NAMES = tuple(REGISTRY)


def tagger_class(name: str) -> type[Tagger]:
    if name not in REGISTRY:
        raise WtagError(f"unknown tagger '{name}' (known: {', '.join(TAGGER_NAMES)})")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_tagger(name: str, config: TrainConfig, standardization: Standardization) -> Tagger:
    """A new tagger with ``config.tagger_params`` (tuned hyperparameters) applied."""
    tagger = tagger_class(name)(config, standardization)
    tagger.configure(config.tagger_params_dict())
    return tagger


__all__ = ["REGISTRY", "TAGGER_NAMES", "Tagger", "TrainConfig", "build_tagger", "tagger_class"]
