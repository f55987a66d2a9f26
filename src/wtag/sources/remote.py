"""Turn input names (local paths, ``https://`` or ``root://`` URLs) into local files the importers can open.

The importers read ``.npy`` and ``.h5`` files, which no remote protocol lets us stream column by column, so a
remote input is downloaded once into a cache folder and read from there. A download is written to a temporary
name and renamed when complete, so an interrupted or failed transfer never leaves a file that looks usable.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

import requests

from wtag.errors import WtagError
from wtag.fileio import atomic_path

HTTP_SCHEMES = ("http", "https")
XROOTD_SCHEMES = ("root", "xroot")
CHUNK_BYTES = 1 << 20


def is_url(name: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` names; everything else is a local path (even if it contains a colon)."""
    return isinstance(name, str) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", name) is not None


def cache_name(url: str) -> str:
    """The cached file's name: a hash of the full URL (so different URLs never collide) plus its basename.

    Keeping the basename keeps the extension and makes the cache folder readable.
    """
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    base = unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "download"
    return f"{digest}-{base}"


def resolve_inputs(inputs: Sequence[str | os.PathLike[str]], cache_dir: str | os.PathLike[str],
                   timeout: float = 60.0) -> list[Path]:
    """Return one local file per input, in order: local paths as given, URLs downloaded into ``cache_dir``.

    A URL already in the cache is reused without contacting the server: the cache is keyed by URL, so a
    remote file that changes under the same URL needs a fresh ``cache_dir``. For HTTP(S), ``timeout``
    (seconds) bounds connecting and each wait for data, not the whole transfer; XRootD uses its own default.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    if not inputs:
        raise WtagError("no input files given")
    return [_resolve_one(item, Path(cache_dir), timeout) for item in inputs]


def _resolve_one(item: str | os.PathLike[str], cache_dir: Path, timeout: float) -> Path:
    if not is_url(item):
        return _local(Path(item))
    url = str(item)
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        return _local(Path(unquote(urlsplit(url).path)))
    if scheme in HTTP_SCHEMES:
        return _cached(url, cache_dir, lambda dest: _download_http(url, dest, timeout))
    if scheme in XROOTD_SCHEMES:
        _require_xrootd(url)
        return _cached(url, cache_dir, lambda dest: _download_xrootd(url, dest))
    known = ", ".join(f"{s}://" for s in HTTP_SCHEMES + XROOTD_SCHEMES)
    raise WtagError(f"{url}: unsupported URL scheme '{scheme}://' (use a local path, {known})")


def _local(path: Path) -> Path:
    if path.is_dir():
        raise WtagError(f"{path}: is a directory, not a file")
    if not path.is_file():
        raise WtagError(f"{path}: no such file")
    return path


def _cached(url: str, cache_dir: Path, fetch: Callable[[Path], None]) -> Path:
    final = cache_dir / cache_name(url)
    if final.is_file():
        return final
    with atomic_path(final) as tmp:
        fetch(tmp)
    return final


def _download_http(url: str, dest: Path, timeout: float) -> None:
    try:
        with requests.get(url, stream=True, timeout=timeout) as response:
            if response.status_code != 200:
                raise WtagError(f"{url}: download failed: HTTP {response.status_code} {response.reason}")
            # Content-Length counts encoded bytes; compare only when the body is not transfer-compressed.
            encoded = response.headers.get("Content-Encoding", "identity") != "identity"
            expected = None if encoded else response.headers.get("Content-Length")
            written = 0
            with open(dest, "wb") as out:
                for chunk in response.iter_content(CHUNK_BYTES):
                    out.write(chunk)
                    written += len(chunk)
    except requests.exceptions.ConnectionError as exc:
        raise WtagError(f"{url}: cannot connect ({_reason(exc)})") from None
    except requests.exceptions.Timeout:
        raise WtagError(f"{url}: no answer within {timeout:g} s") from None
    except requests.exceptions.RequestException as exc:
        raise WtagError(f"{url}: download failed ({_reason(exc)})") from None
    except OSError as exc:
        raise WtagError(f"{url}: cannot write the download to {dest.parent} ({exc.strerror or exc})") from None
    if expected is not None and expected.isdigit() and written != int(expected):
        raise WtagError(f"{url}: download incomplete ({written} of {expected} bytes)")


def _require_xrootd(url: str) -> None:
    """XRootD goes through fsspec's backend (the one uproot uses), an optional extra not installed by default."""
    if importlib.util.find_spec("fsspec_xrootd") is None:
        raise WtagError(f"{url}: reading root:// (XRootD) URLs needs the fsspec-xrootd package "
                        "(pip install fsspec-xrootd); or download the file and give its local path")


def _download_xrootd(url: str, dest: Path) -> None:
    import fsspec

    try:
        with fsspec.open(url, "rb") as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK_BYTES)
    except (OSError, RuntimeError, ValueError) as exc:
        raise WtagError(f"{url}: XRootD transfer failed ({exc})") from None


def _reason(exc: BaseException) -> str:
    """The innermost, most specific cause, on one line (requests wraps urllib3 wraps socket errors)."""
    inner: BaseException = exc
    while True:
        nxt = inner.__cause__ or inner.__context__
        if nxt is None or nxt is inner:
            break
        inner = nxt
    for candidate in (inner, exc):
        text = str(candidate).strip()
        if text:
            text = re.sub(r"^<[^>]*>:\s*", "", text)
            return " ".join(text.split())
    return type(exc).__name__
