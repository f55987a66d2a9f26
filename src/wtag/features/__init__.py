"""Model inputs from canonical jets, written once for the generator, the importers, ``prepare`` and the server.

Every consumer builds its arrays through :func:`model_inputs` (after :func:`complete_jets`), so training and
serving cannot compute features differently.
"""
from __future__ import annotations

from collections.abc import Sequence

import awkward as ak
import numpy as np

from wtag import schema
from wtag.errors import WtagError
from wtag.features.constituents import jets_particle_features
from wtag.features.images import jets_images
from wtag.features.substructure import SUBSTRUCTURE_FIELDS, jets_substructure

__all__ = ["complete_jets", "hl_features", "model_inputs"]

MODEL_INPUTS = (schema.INPUT_HL, schema.INPUT_IMAGES, schema.INPUT_PARTICLES)


def _require_constituents(jets: ak.Array) -> None:
    missing = [name for name in schema.CAND_BRANCHES if name not in ak.fields(jets)]
    if missing:
        raise WtagError(f"jets lack constituent fields: {', '.join(missing)}")


def _missing_mask(jets: ak.Array, name: str) -> np.ndarray:
    """Which jets lack ``name``: the field is absent, NaN (float) or negative (the int fill value -1)."""
    if name not in ak.fields(jets):
        return np.ones(len(jets), dtype=bool)
    values = np.asarray(ak.to_numpy(jets[name]))
    if name in schema.INT_BRANCHES:
        return values < 0
    return np.isnan(values.astype(np.float64))


def complete_jets(jets: ak.Array) -> ak.Array:
    """Fill missing jet four-vector and substructure fields from the constituents, keeping every given value.

    CMS ntuples carry JES-corrected pt/eta/phi/E and (for simulation) msd and tau21: those stay; only absent or
    NaN entries (and ``jet_ncand_ak7`` < 0) are computed with :func:`wtag.features.substructure.substructure`, and
    only for the jets that need them.
    """
    _require_constituents(jets)
    missing = {name: _missing_mask(jets, name) for name in SUBSTRUCTURE_FIELDS}
    needs = np.logical_or.reduce(list(missing.values())) if len(jets) else np.zeros(0, dtype=bool)
    if not needs.any():
        return jets
    computed = jets_substructure(jets[needs])
    columns = {name: jets[name] for name in ak.fields(jets)}
    for name in SUBSTRUCTURE_FIELDS:
        if not missing[name].any():
            continue
        dtype = np.int32 if name in schema.INT_BRANCHES else np.float64
        if name in columns:
            values = np.asarray(ak.to_numpy(columns[name])).astype(dtype)
        else:
            values = np.zeros(len(jets), dtype=dtype)
        fill = missing[name][needs]
        values[np.flatnonzero(needs)[fill]] = computed[name][fill]
        columns[name] = values
    return ak.zip(columns, depth_limit=1)


def hl_features(jets: ak.Array) -> np.ndarray:
    """(N, len(HL_FEATURES)) float32 table in ``schema.HL_FEATURES`` order; missing values are a WtagError."""
    columns = []
    for name in schema.HL_FEATURES:
        if name not in ak.fields(jets):
            raise WtagError(f"jets lack the high-level feature {name} (run complete_jets first)")
        values = np.asarray(ak.to_numpy(jets[name]), dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            raise WtagError(
                f"{name} is missing or not finite for {int(bad.sum())} of {len(values)} jets (run complete_jets first)"
            )
        columns.append(values)
    if len(jets) == 0:
        return np.zeros((0, len(schema.HL_FEATURES)), dtype=np.float32)
    return np.stack(columns, axis=1).astype(np.float32)


def model_inputs(
    jets: ak.Array, names: Sequence[str], max_particles: int = schema.MAX_PARTICLES
) -> dict[str, np.ndarray]:
    """float32 model inputs keyed by the requested names among "hl", "images", "particles".

    Missing substructure is filled in first (:func:`complete_jets`), so raw constituents are enough.
    """
    if isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in MODEL_INPUTS]
    if unknown:
        raise WtagError(f"unknown model input(s) {', '.join(map(repr, unknown))}; known: {', '.join(MODEL_INPUTS)}")
    _require_constituents(jets)
    if schema.INPUT_HL in names or schema.INPUT_PARTICLES in names:
        jets = complete_jets(jets)
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name == schema.INPUT_HL:
            out[name] = hl_features(jets)
        elif name == schema.INPUT_IMAGES:
            out[name] = jets_images(jets).astype(np.float32)
        else:
            out[name] = jets_particle_features(jets, max_particles=max_particles)
    return out
