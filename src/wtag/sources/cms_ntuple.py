"""Import the CMS HATS tutorial's c2numpy ntuples (``.npy``, one row per PF candidate) as canonical jets.

Each row repeats its event's and its AK7 jet's columns; ``ak7pfcand_ijet`` is the jet's index within the
event. c2numpy starts a new file every N rows, so one jet's candidates can straddle two files: rows are
grouped into jets by (run, lumi, event, ijet) across *all* inputs together, which is why
:func:`import_cms_ntuple` writes one output file for all inputs rather than one per input.

Given jet columns are kept (``jet_pt_ak7`` and ``jet_E_ak7`` are the JES-corrected values CMS wrote); jet
quantities the file lacks (mass, soft-drop mass, N-subjettiness, constituent count) are computed from the
PF candidates by :func:`wtag.features.complete_jets`, the generator's code. Columns without a canonical
branch (``njet_ak7``, ``jet_area_ak7``, ``jet_jes_ak7``, ``met``, ...) are dropped. ``mcweight`` becomes
``weight`` (1 when absent: a collision event counts once); a missing ``jet_isW_ak7`` means unknown (-1).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import awkward as ak
import numpy as np

from wtag import schema
from wtag.errors import WtagError
from wtag.fileio import atomic_path
from wtag.features import complete_jets
from wtag.jets import make_jets, select, write_jets

OUTPUT_NAME = "cms_ntuple.root"
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"

KEY_COLUMNS = ("run", "lumi", "event", "ak7pfcand_ijet")
REQUIRED_JET_COLUMNS = ("jet_pt_ak7", "jet_eta_ak7", "jet_phi_ak7", "jet_E_ak7")
REQUIRED_COLUMNS = KEY_COLUMNS + REQUIRED_JET_COLUMNS + schema.CAND_BRANCHES
# ntuple column -> canonical branch, for per-jet columns kept when present.
OPTIONAL_JET_COLUMNS = {name: name for name in schema.JET_BRANCHES
                        if name not in REQUIRED_JET_COLUMNS and name != "weight"}
OPTIONAL_JET_COLUMNS["mcweight"] = "weight"
INT_COLUMNS = frozenset(KEY_COLUMNS) | schema.INT_CAND_BRANCHES | {"jet_ncand_ak7", "jet_isW_ak7"}
# Defaults for optional columns a file lacks: unknown label, unit weight, NaN = "compute from candidates".
MISSING_VALUE = {"jet_isW_ak7": schema.LABEL_UNKNOWN, "mcweight": 1.0, "jet_ncand_ak7": -1}
INT32 = np.iinfo(np.int32)


def read_cms_ntuple(paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> ak.Array:
    """Read c2numpy ``.npy`` files into one canonical jet array, jets in order of their first row.

    Candidates keep their file order within a jet. Never unpickles: object arrays are refused.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = _distinct([Path(p) for p in paths])
    tables = [_load_columns(path) for path in paths]
    # mcweight always: a data file without it still gets weight 1, not "unknown".
    optional = sorted({name for table in tables for name in table if name in OPTIONAL_JET_COLUMNS} | {"mcweight"})
    names = list(REQUIRED_COLUMNS) + optional
    columns = {name: np.concatenate([table.get(name, _missing(name, _rows(table))) for table in tables])
               for name in names}
    file_of_row = np.concatenate([np.full(_rows(t), i, dtype=np.int32) for i, t in enumerate(tables)])
    return _group_jets(columns, file_of_row, paths)


def _distinct(paths: list[Path]) -> list[Path]:
    if not paths:
        raise WtagError("no input files given")
    seen: set[Path] = set()
    for path in paths:
        resolved = path.resolve()
        if resolved in seen:
            raise WtagError(f"{path}: given twice (its PF candidates would be counted twice)")
        seen.add(resolved)
    return paths


def jet_keys(path: str | os.PathLike[str]) -> np.ndarray | None:
    """The distinct (run, lumi, event, ijet) of a file's rows in order of first appearance, shape (n, 4);
    None when the file cannot be read that far (reading it properly then says why)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
        if array.dtype.names is None or array.ndim != 1:
            return None
        keys = np.stack([np.asarray(array[name], dtype=np.int64) for name in KEY_COLUMNS], axis=1)
    except Exception:  # any unreadable file: the importer's own checks word the error
        return None
    _, first = np.unique(keys, axis=0, return_index=True)
    return keys[np.sort(first)]


def file_groups(paths: Sequence[str | os.PathLike[str]]) -> list[list[int]]:
    """Contiguous runs of input indices to read together: c2numpy can split one jet's rows over two files,
    so files that share a jet (and every file between them) form one group; the others stand alone.

    Reading each group with :func:`read_cms_ntuple` and concatenating the groups in order gives exactly the
    jets of reading all files at once (jets never cross a group boundary).
    """
    keys = [jet_keys(p) for p in paths]
    reach = list(range(len(paths)))  # the last file each file shares a jet with
    rows = [(k, i) for i, k in enumerate(keys) if k is not None and len(k)]
    if rows:
        stacked = np.concatenate([k for k, _ in rows])
        owner = np.concatenate([np.full(len(k), i) for k, i in rows])
        order = np.lexsort(stacked.T[::-1])
        stacked, owner = stacked[order], owner[order]
        same = np.all(stacked[1:] == stacked[:-1], axis=1) & (owner[1:] != owner[:-1])
        for a, b in zip(owner[:-1][same], owner[1:][same]):
            lo, hi = int(min(a, b)), int(max(a, b))
            reach[lo] = max(reach[lo], hi)
    groups: list[list[int]] = []
    start, end = 0, -1
    for i in range(len(paths)):
        end = max(end, reach[i])
        if i == end:
            groups.append(list(range(start, i + 1)))
            start = i + 1
    return groups


def jets_per_file(paths: Sequence[str | os.PathLike[str]]) -> list[int]:
    """How many of the jets :func:`read_cms_ntuple` returns for ``paths`` start in each file (jets come in
    order of their first row, so they split file by file in these counts)."""
    seen: set[tuple[int, ...]] = set()
    counts = []
    for path in paths:
        keys = jet_keys(path)
        if keys is None:
            raise WtagError(f"{path}: cannot read its (run, lumi, event, ijet) columns")
        new = [tuple(k) for k in keys.tolist() if tuple(k) not in seen]
        seen.update(new)
        counts.append(len(new))
    return counts


def import_cms_ntuple(inputs: Sequence[str | os.PathLike[str]], output_dir: str | os.PathLike[str],
                      cache_dir: str | os.PathLike[str] | None = None, select_jets: bool = False,
                      scheduler: str = "", workers: int = 1) -> Path:
    """Read the ntuples (local paths or URLs) and write ``output_dir/cms_ntuple.root`` (TTree ``jets``).

    All jets are written unless ``select_jets`` applies the tutorial selection (200 < pT < 500 GeV,
    |eta| < 2). Downloads go to ``cache_dir`` (default ``output_dir/downloads``). The file appears only
    when complete; nothing is written when an input is bad or the selection is empty.

    With a ``scheduler`` address (or ``workers`` > 1: a local cluster) each :func:`file_groups` group is read,
    checked and completed (substructure) by its own Dask task; the jets are the same as read in one go.
    """
    from wtag.execution import ExecutionConfig, dask_client, run_tasks, scheduler_address
    from wtag.sources.remote import resolve_inputs

    output_dir = Path(output_dir)
    files = _distinct(resolve_inputs(inputs, Path(cache_dir) if cache_dir is not None
                                     else output_dir / "downloads"))
    groups = file_groups(files)
    if len(groups) > 1 and (scheduler_address(scheduler) or workers != 1):
        with dask_client(ExecutionConfig(scheduler, workers), max_workers=len(groups)) as client:
            parts = run_tasks(client, read_cms_ntuple, [([files[i] for i in g],) for g in groups],
                              key_prefix="import-ntuple")
        jets = ak.concatenate(parts) if len(parts) > 1 else parts[0]
    else:
        jets = read_cms_ntuple(files)
    if select_jets:
        n_read = len(jets)
        jets = select(jets)
        if len(jets) == 0:
            raise WtagError(f"{files[0]}{' ...' if len(files) > 1 else ''}: none of the {n_read} jets pass "
                            f"{schema.JET_PT_MIN:g} < pT < {schema.JET_PT_MAX:g} GeV, |eta| < {schema.JET_ETA_MAX:g}")
    out = output_dir / OUTPUT_NAME
    write_jets(out, jets)
    return out


def _rows(table: dict[str, np.ndarray]) -> int:
    return len(table[KEY_COLUMNS[0]])


def _missing(name: str, n: int) -> np.ndarray:
    if name in INT_COLUMNS:
        return np.full(n, MISSING_VALUE.get(name, -1), dtype=np.int64)
    return np.full(n, MISSING_VALUE.get(name, np.nan), dtype=np.float64)


def _load_columns(path: Path) -> dict[str, np.ndarray]:
    """The columns this importer uses, validated: int64 for ids and codes, float64 for physics."""
    if not path.is_file():
        raise WtagError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(len(NPY_MAGIC))
        if magic.startswith(ZIP_MAGIC):
            raise WtagError(f"{path}: is an .npz archive; give the c2numpy .npy files themselves")
        if magic != NPY_MAGIC:
            raise WtagError(f"{path}: not a NumPy .npy file")
        f.seek(0)
        try:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            _, _, dtype = read_header(f)
        except (ValueError, OSError, EOFError) as exc:
            raise WtagError(f"{path}: not a readable .npy file ({_one_line(exc)})") from None
    if dtype.hasobject:
        raise WtagError(f"{path}: holds Python objects (pickled data), which are never loaded; "
                        "expected a c2numpy structured array of numbers")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise WtagError(f"{path}: not a readable .npy file ({_one_line(exc)})") from None
    if array.dtype.names is None:
        raise WtagError(f"{path}: a plain {array.dtype} array of shape {array.shape}, expected a c2numpy "
                        "structured array with named columns")
    if array.ndim != 1:
        raise WtagError(f"{path}: structured array of shape {array.shape}, expected one dimension (rows)")
    missing = [name for name in REQUIRED_COLUMNS if name not in array.dtype.names]
    if missing:
        raise WtagError(f"{path}: lacks column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    if len(array) == 0:
        raise WtagError(f"{path}: no PF-candidate rows")
    wanted = [name for name in REQUIRED_COLUMNS + tuple(OPTIONAL_JET_COLUMNS) if name in array.dtype.names]
    return {name: _checked_column(path, name, array[name]) for name in wanted}


def _checked_column(path: Path, name: str, values: np.ndarray) -> np.ndarray:
    kind = values.dtype.kind
    if values.ndim != 1 or kind not in "biuf":
        raise WtagError(f"{path}: column {name} has type {values.dtype}{values.shape[1:] or ''}, "
                        "expected a numeric scalar")
    if name in INT_COLUMNS:
        if kind == "f":
            raise WtagError(f"{path}: column {name} has type {values.dtype}, expected an integer type")
        out = np.asarray(values, dtype=np.int64)
        bad = (out < INT32.min) | (out > INT32.max)
        if name == "ak7pfcand_ijet":
            bad |= out < 0
        elif name == "jet_isW_ak7":
            bad |= (out < schema.LABEL_UNKNOWN) | (out > 1)
        _refuse(path, name, bad, out, "out of range")
        return out
    out = np.asarray(values, dtype=np.float64)
    _refuse(path, name, ~np.isfinite(out), out, "not finite")
    if name == "ak7pfcand_pt":
        _refuse(path, name, out <= 0, out, "not positive")
    return out


def _refuse(path: Path, name: str, bad: np.ndarray, values: np.ndarray, problem: str) -> None:
    if np.any(bad):
        first = int(np.argmax(bad))
        raise WtagError(f"{path}: column {name} has {int(bad.sum())} {problem} value(s) "
                        f"(first: row {first}, value {values[first]})")


def _group_jets(columns: dict[str, np.ndarray], file_of_row: np.ndarray, paths: list[Path]) -> ak.Array:
    """Group candidate rows into jets, vectorised; jets ordered by first row, candidates by row order."""
    keys = [columns[name] for name in KEY_COLUMNS]
    order = np.lexsort(keys[::-1])  # stable: within a key, rows stay in input order
    sorted_keys = np.stack([k[order] for k in keys])
    new_jet = np.concatenate([[True], np.any(sorted_keys[:, 1:] != sorted_keys[:, :-1], axis=0)])
    starts = np.flatnonzero(new_jet)
    group_sorted = np.cumsum(new_jet) - 1
    group = np.empty_like(group_sorted)
    group[order] = group_sorted
    first_row = order[starts]  # earliest row of each key (stable sort)
    jet_order = np.argsort(first_row, kind="stable")
    rank = np.empty_like(jet_order)
    rank[jet_order] = np.arange(len(jet_order))
    row_order = np.argsort(rank[group], kind="stable")
    counts = np.bincount(rank[group], minlength=len(jet_order))
    first = first_row[jet_order]

    jet_names = [name for name in columns if name not in schema.CAND_BRANCHES]
    per_jet = [name for name in jet_names if name not in KEY_COLUMNS]
    _check_constant(columns, per_jet, rank[group], first, file_of_row, paths)
    _check_duplicates(columns, rank[group], file_of_row, paths)

    out: dict[str, object] = {}
    for name in jet_names:
        out[OPTIONAL_JET_COLUMNS.get(name, "ijet" if name == "ak7pfcand_ijet" else name)] = columns[name][first]
    if "jet_ncand_ak7" in out:
        out["jet_ncand_ak7"] = np.where(out["jet_ncand_ak7"] >= 0, out["jet_ncand_ak7"], counts)
    else:
        out["jet_ncand_ak7"] = counts
    for name in schema.CAND_BRANCHES:
        out[name] = ak.unflatten(columns[name][row_order], counts)
    return complete_jets(make_jets(out))


def _check_constant(columns: dict[str, np.ndarray], names: list[str], jet_of_row: np.ndarray,
                    first: np.ndarray, file_of_row: np.ndarray, paths: list[Path]) -> None:
    """Per-jet columns must repeat exactly on every row of the jet; anything else is a corrupt or mixed file."""
    for name in names:
        values = columns[name]
        expected = values[first][jet_of_row]
        differ = ~((values == expected) | (np.isnan(values) & np.isnan(expected)) if values.dtype.kind == "f"
                   else values == expected)
        if np.any(differ):
            row = int(np.argmax(differ))
            key = tuple(int(columns[k][row]) for k in KEY_COLUMNS)
            raise WtagError(f"{paths[file_of_row[row]]}: column {name} differs between PF-candidate rows of the "
                            f"jet (run, lumi, event, ijet) = {key}")


def _check_duplicates(columns: dict[str, np.ndarray], jet_of_row: np.ndarray, file_of_row: np.ndarray,
                      paths: list[Path]) -> None:
    """Two identical candidates in one jet mean overlapping inputs (the same rows in two files)."""
    fields = [jet_of_row] + [columns[name] for name in schema.CAND_BRANCHES]
    order = np.lexsort(fields[::-1])
    stacked = [f[order] for f in fields]
    same = np.ones(len(order) - 1, dtype=bool)
    for f in stacked:
        same &= f[1:] == f[:-1]
    if np.any(same):
        i = int(np.argmax(same))
        files = " and ".join(str(paths[k]) for k in sorted({int(file_of_row[order[i]]),
                                                            int(file_of_row[order[i + 1]])}))
        raise WtagError(f"{files}: {int(same.sum())} PF-candidate row(s) appear twice in the same jet "
                        "(overlapping inputs?)")


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def write_cms_ntuple(jets: ak.Array, path: str | os.PathLike[str]) -> None:
    """Write canonical jets in the tutorial's MC ntuple layout: one row per PF candidate, jet columns repeated.

    The inverse of ``read_cms_ntuple`` for the columns the tutorial's MC ntuples carry (including
    ``jet_msd_ak7``, ``jet_tau21_ak7``, ``jet_isW_ak7``, ``jet_ncand_ak7``): lets simulated jets travel
    through the CMS importer, and gives the server's file route a tutorial-format file to score.
    """
    counts = ak.to_numpy(ak.num(jets["ak7pfcand_pt"]))
    jet_columns = ("jet_pt_ak7", "jet_eta_ak7", "jet_phi_ak7", "jet_E_ak7", "jet_msd_ak7", "jet_tau21_ak7")
    int_jet_columns = ("jet_ncand_ak7", "jet_isW_ak7")
    fields = ([("run", "<i4"), ("lumi", "<i4"), ("event", "<i4")] + [(c, "<f8") for c in jet_columns]
              + [(c, "<i4") for c in int_jet_columns] + [("mcweight", "<f8")]
              + [(c, "<i4" if c in schema.INT_CAND_BRANCHES else "<f8") for c in schema.CAND_BRANCHES]
              + [("ak7pfcand_ijet", "<i4")])
    rows = np.zeros(int(counts.sum()), dtype=fields)
    for name in ("run", "lumi", "event") + jet_columns + int_jet_columns:
        rows[name] = np.repeat(ak.to_numpy(jets[name]), counts)
    rows["mcweight"] = np.repeat(ak.to_numpy(jets["weight"]), counts)
    rows["ak7pfcand_ijet"] = np.repeat(ak.to_numpy(jets["ijet"]), counts)
    for name in schema.CAND_BRANCHES:
        rows[name] = ak.to_numpy(ak.flatten(jets[name]))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, rows, allow_pickle=False)
