"""Content digests of the code that made a file, so reuse checks compare code, not paths or dates.

A generated chunk, a prepared dataset or a scores file records the digest of the modules that computed it (and
the versions of the packages doing the physics); a file made by other code is never reused. Works outside git.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

from wtag.errors import WtagError


def _sources(name: str) -> list[Path]:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise WtagError(f"module {name} not found (cannot compute the code version)")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package: every module in it
        return sorted(origin.parent.rglob("*.py"))
    return [origin]


def _canonical(value: object) -> object:
    """JSON-able and independent of set iteration order (which changes with the process's hash seed)."""
    if isinstance(value, (set, frozenset)):
        return sorted(_canonical(v) for v in value)
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    return value


def code_version(modules: Sequence[str], packages: Sequence[str] = (), values: Mapping[str, object] | None = None
                 ) -> str:
    """A 16-hex digest of the source of ``modules`` (packages: all their ``.py`` files), the installed
    versions of the distributions ``packages`` and the constants ``values`` (names to values: the part of a
    shared module the code depends on, so that edits elsewhere in that module do not count)."""
    digest = hashlib.sha256()
    if values:
        digest.update(json.dumps(_canonical(values), sort_keys=True).encode())
    for name in sorted(set(modules)):
        for path in _sources(name):
            digest.update(f"{name}:{path.name}\0".encode())
            digest.update(path.read_bytes())
    for package in sorted(set(packages)):
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{package}=={version}\0".encode())
    return digest.hexdigest()[:16]


def file_digest(path: str | Path, chunk_bytes: int = 1 << 22) -> str:
    """sha256 of a file's content (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()
