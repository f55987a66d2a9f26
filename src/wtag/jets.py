"""The canonical jet collection: an awkward record array named like the ROOT ``jets`` tree, and its ROOT I/O.

Every source converts to this form and every feature builder reads from it, so the generator, the importers,
``prepare`` and the server's raw-jet route all see the same thing.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

from wtag import schema
from wtag.errors import WtagError
from wtag.fileio import atomic_path

ALL_SCALARS = schema.JET_BRANCHES + schema.EVENT_BRANCHES
# A JSON string (TObjString) beside the tree: what made the file, for reuse checks (generator chunks).
PROVENANCE_KEY = "wtag_provenance"


def _scalar_dtype(name: str) -> type:
    return np.int32 if name in schema.INT_BRANCHES else np.float64


def _cand_dtype(name: str) -> type:
    return np.int32 if name in schema.INT_CAND_BRANCHES else np.float64


def _flat(name: str, values: object) -> np.ndarray:
    """A per-jet column as a 1-D numpy array (any array-like: list, numpy, flat awkward)."""
    array = values if isinstance(values, np.ndarray) else ak.Array(values)
    if array.ndim != 1:
        raise WtagError(f"jet column {name} must hold one number per jet, got {array.ndim} dimensions")
    return array if isinstance(array, np.ndarray) else ak.to_numpy(array)


def _jagged(name: str, values: object) -> ak.Array:
    """A constituent column as ``var * dtype``; an empty column has no inferable type, so it gets one here."""
    array = ak.Array(values)
    dtype = np.dtype(_cand_dtype(name))
    if len(array) == 0:
        return ak.enforce_type(array, f"var * {dtype.name}")
    if array.ndim != 2:
        raise WtagError(f"jet column {name} must hold a list of numbers per jet, got type {array.type}")
    return ak.values_astype(array, dtype)


def make_jets(columns: Mapping[str, object]) -> ak.Array:
    """Build a canonical jet array from columns, casting to the schema's dtypes.

    Scalar branches missing from ``columns`` are filled with NaN (float) or -1 (int), so every source yields
    the same fields; the constituent branches are required.
    """
    missing = [b for b in schema.CAND_BRANCHES if b not in columns]
    if missing:
        raise WtagError(f"jet columns lack constituent branches: {', '.join(missing)}")
    n = len(columns[schema.CAND_BRANCHES[0]])
    out: dict[str, object] = {}
    for name in ALL_SCALARS:
        dtype = _scalar_dtype(name)
        if name in columns:
            values = _flat(name, columns[name])
            if len(values) != n:
                raise WtagError(f"jet column {name} has {len(values)} entries, expected {n}")
            out[name] = values.astype(dtype, copy=False)
        else:
            out[name] = np.full(n, -1 if dtype is np.int32 else np.nan, dtype=dtype)
    for name in schema.CAND_BRANCHES:
        values = _jagged(name, columns[name])
        if len(values) != n:
            raise WtagError(f"jet column {name} has {len(values)} entries, expected {n}")
        out[name] = values
    counts = [ak.num(out[name]) for name in schema.CAND_BRANCHES]
    if any(not ak.all(c == counts[0]) for c in counts[1:]):
        raise WtagError("constituent branches have different numbers of entries per jet")
    return ak.Array(out)


def write_jets(path: str | os.PathLike[str], jets: ak.Array, provenance: str | None = None) -> None:
    """Write jets as the TTree ``jets`` (not RNTuple: ``mktree`` + ``extend``), atomically; ``provenance``
    (a JSON string) is stored beside the tree as :data:`PROVENANCE_KEY`."""
    branch_types: dict[str, object] = {name: _scalar_dtype(name) for name in ALL_SCALARS}
    for name in schema.CAND_BRANCHES:
        branch_types[name] = ak.types.from_datashape(f"var * {np.dtype(_cand_dtype(name)).name}", highlevel=False)
    data: dict[str, object] = {name: ak.to_numpy(jets[name]) for name in ALL_SCALARS}
    for name in schema.CAND_BRANCHES:
        data[name] = ak.values_astype(jets[name], _cand_dtype(name))
    with atomic_path(path) as tmp:
        with uproot.recreate(tmp) as f:
            tree = f.mktree(schema.TREE_NAME, branch_types, counter_name=lambda _: "ncand")
            if len(jets):
                tree.extend(data)
            if provenance is not None:
                f[PROVENANCE_KEY] = provenance


def read_provenance(path: str | os.PathLike[str]) -> str | None:
    """The provenance string :func:`write_jets` stored in a file, or None (absent, unreadable, not ROOT)."""
    try:
        with uproot.open(path) as f:
            if PROVENANCE_KEY not in f.keys(cycle=False):
                return None
            return str(f[PROVENANCE_KEY])
    except Exception:  # any unreadable file simply has no provenance
        return None


def read_jets(paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> ak.Array:
    """Read and concatenate ``jets`` trees; a missing tree or branch is a WtagError naming the file."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    parts = [_read_tree(Path(p)) for p in paths]
    if not parts:
        raise WtagError("no input files given")
    return make_jets({name: ak.concatenate([p[name] for p in parts]) for name in parts[0].fields})


def _read_tree(path: Path) -> ak.Array:
    """One file's ``jets`` tree; any failure, however uproot reports it, is a one-line WtagError."""
    if not path.is_file():
        raise WtagError(f"{path}: no such file")
    try:
        f = uproot.open(path)
    except Exception as exc:  # uproot raises many types for corrupt files
        raise WtagError(f"{path}: not a readable ROOT file ({_describe(exc)})") from None
    with f:
        try:
            names = f.keys(cycle=False)
            tree = f[schema.TREE_NAME] if schema.TREE_NAME in names else None
        except Exception as exc:
            raise WtagError(f"{path}: cannot read the file's directory ({_describe(exc)})") from None
        if tree is None:
            found = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else "nothing"
            raise WtagError(f"{path}: no TTree named '{schema.TREE_NAME}' (found: {found})")
        if not isinstance(tree, uproot.TTree):
            kind = getattr(tree, "classname", type(tree).__name__)
            raise WtagError(f"{path}: '{schema.TREE_NAME}' is a {kind}, not a TTree")
        wanted = list(ALL_SCALARS + schema.CAND_BRANCHES)
        missing = [b for b in wanted if b not in tree.keys()]
        if missing:
            raise WtagError(f"{path}: tree '{schema.TREE_NAME}' lacks branches {', '.join(missing)}")
        try:
            return tree.arrays(wanted)
        except Exception as exc:
            raise WtagError(f"{path}: cannot read tree '{schema.TREE_NAME}' ({_describe(exc)})") from None


def _describe(exc: BaseException) -> str:
    """An exception on one line (uproot's messages span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def select(jets: ak.Array, pt_min: float = schema.JET_PT_MIN, pt_max: float = schema.JET_PT_MAX,
           eta_max: float = schema.JET_ETA_MAX) -> ak.Array:
    """The tutorial's jet selection: pt_min < pT < pt_max, |eta| < eta_max."""
    pt = jets["jet_pt_ak7"]
    mask = (pt > pt_min) & (pt < pt_max) & (abs(jets["jet_eta_ak7"]) < eta_max)
    return jets[mask]
