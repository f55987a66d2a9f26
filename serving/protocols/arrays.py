"""Bulk arrays: ``POST /v1/score-npy`` takes a ``.npy`` (single-input models) or ``.npz`` (one array per input)
and answers the float32 scores as ``.npy``. The ``.npy`` header is parsed, the data viewed with
``np.frombuffer``; nothing is ever unpickled. Errors are ``{"error": message}``."""
from __future__ import annotations

import ast
import io
import math
import re
import zipfile

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from serving.routing import BINARY, MODEL_QUERY, Routes, body_doc
from serving.service import Service
from serving.wire import RequestError

NPY_MEDIA_TYPE = "application/x-npy"
NPZ_MEDIA_TYPE = "application/x-npz"
# Accepted for a .npy body as well (what generic clients send for bytes).
OCTET_STREAM = "application/octet-stream"
NPY_MAGIC = b"\x93NUMPY"
# The header numpy itself writes; anything else goes through ast.literal_eval (literals only, never code).
_NPY_HEADER = re.compile(r"^\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (True|False), "
                         r"'shape': \(((?:\s*\d+\s*,?)*)\), \}\s*$")


def npy_decode(body: bytes | memoryview, what: str = "request body") -> np.ndarray:
    """A ``.npy`` payload as an array viewing the body (no copy); object dtypes are refused, never unpickled."""
    view = memoryview(body)
    if bytes(view[:6]) != NPY_MAGIC:
        raise RequestError(400, f"{what} is not a .npy array (missing the \\x93NUMPY magic)")
    if len(view) < 10:
        raise RequestError(400, f"{what} is a truncated .npy header")
    major = view[6]
    if major == 1:
        header_len, start = int.from_bytes(view[8:10], "little"), 10
    elif major in (2, 3):
        header_len, start = int.from_bytes(view[8:12], "little"), 12
    else:
        raise RequestError(400, f"{what} has unsupported .npy format version {major}")
    text = bytes(view[start:start + header_len]).decode("latin1")
    try:
        fast = _NPY_HEADER.match(text)
        if fast:
            descr, fortran = fast.group(1), fast.group(2) == "True"
            shape = tuple(int(d) for d in fast.group(3).replace(",", " ").split())
        else:
            header = ast.literal_eval(text)
            descr, fortran, shape = header["descr"], header["fortran_order"], tuple(header["shape"])
        dtype = np.dtype(descr)
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError):
        raise RequestError(400, f"{what} has an unreadable .npy header") from None
    if dtype.hasobject or dtype.kind not in "iuf" or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise RequestError(422, f"{what} holds dtype {dtype} with shape {shape}; expected numbers")
    offset = start + header_len
    count = math.prod(shape)
    if len(view) - offset != count * dtype.itemsize:
        raise RequestError(400, f"{what} has {len(view) - offset} data bytes, shape {shape} of {dtype} needs "
                                f"{count * dtype.itemsize}")
    arr = np.frombuffer(view, dtype=dtype, count=count, offset=offset)
    return arr.reshape(shape, order="F" if fortran else "C")


def npz_decode(body: bytes, max_bytes: int) -> dict[str, np.ndarray]:
    """Arrays of a ``.npz`` payload keyed by name; members are size-checked before they are inflated."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise RequestError(400, "request body is not a .npz archive") from None
    if sum(m.file_size for m in members) > max_bytes:
        raise RequestError(413, f"the .npz arrays unpack to more than {max_bytes} bytes")
    out = {}
    with archive:
        for member in members:
            name = member.filename.removesuffix(".npy")
            try:
                data = archive.read(member)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
                raise RequestError(400, f".npz member '{member.filename}' is unreadable ({exc})") from None
            out[name] = npy_decode(data, f".npz member '{member.filename}'")
    return out


def npy_encode(scores: np.ndarray) -> bytes:
    """Scores as a version-1.0 ``.npy`` of little-endian float32 (the header numpy writes, built directly)."""
    data = np.ascontiguousarray(scores, dtype="<f4").reshape(-1)
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': ({len(data)},), }}"
    padding = -(len(NPY_MAGIC) + 4 + len(header) + 1) % 64
    header_bytes = (header + " " * padding + "\n").encode("latin1")
    return NPY_MAGIC + b"\x01\x00" + len(header_bytes).to_bytes(2, "little") + header_bytes + data.tobytes()



def decode(body: bytes, content_type: str, input_names: tuple[str, ...], max_bytes: int) -> dict[str, np.ndarray]:
    """Model inputs from a /v1/score-npy body of media type ``content_type``."""
    media = content_type.split(";")[0].strip().lower() or NPY_MEDIA_TYPE
    if media == NPZ_MEDIA_TYPE:
        return npz_decode(body, max_bytes)
    if media in (NPY_MEDIA_TYPE, OCTET_STREAM):
        if len(input_names) != 1:
            raise RequestError(422, f"this model takes {', '.join(input_names)}; send an .npz "
                                    f"({NPZ_MEDIA_TYPE}) with one array per input")
        return {input_names[0]: npy_decode(body)}
    raise RequestError(415, f"content type '{media}' is not supported; send {NPY_MEDIA_TYPE} or {NPZ_MEDIA_TYPE}")


def routes(service: Service) -> Routes:
    out = Routes()

    async def score_npy(request: Request) -> Response:
        model = service.model_of(request)
        with service.admitted(model):
            body = await service.read_body(request)
            content_type = request.headers.get("content-type", "")
            args = (content_type, model.tagger.inputs, service.settings.max_body_bytes)
            # .npy is viewed in place (nothing to gain elsewhere); .npz members are inflated off the loop
            npz = content_type.split(";")[0].strip().lower() == NPZ_MEDIA_TYPE
            inputs = await service.decode(decode, body, *args) if npz else decode(body, *args)
            scored = await service.score(model, inputs)
        return Response(npy_encode(scored.scores), media_type=NPY_MEDIA_TYPE, headers=scored.headers())

    npy = {"schema": {**BINARY["schema"], "description": ".npy (format 1.0-3.0) of numbers, shape (N, ...) as "
                                                         "the model input, any byte order, C or Fortran order"}}
    npz = {"schema": {**BINARY["schema"], "description": ".npz (zip, stored or deflated) holding one .npy per "
                                                         "model input, named as the input"}}
    out.post(["/v1/score-npy"], service.guard(score_npy), "bulk", "Bulk scoring of .npy / .npz arrays",
             body_doc({NPY_MEDIA_TYPE: npy, OCTET_STREAM: npy, NPZ_MEDIA_TYPE: npz},
                      "`.npy` of the single model input (N, ...), or `.npz` with one array per input name. "
                      "No Content-Type means .npy."),
             {"description": "float32 scores (N,) as .npy", "content": {NPY_MEDIA_TYPE: BINARY}},
             query=[MODEL_QUERY])
    return out
