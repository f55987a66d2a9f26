"""Wire formats: request bodies to model inputs and scores back to bodies, for every protocol the server speaks.

Pure functions of bytes and arrays, so each format is testable without HTTP. Nothing here unpickles or
otherwise executes request content: JSON goes through orjson, ``.npy`` through its header plus
``np.frombuffer``, ``.npz`` through numpy with ``allow_pickle=False``.
"""
from __future__ import annotations

import ast
import io
import math
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import awkward as ak
import numpy as np
import orjson

from wtag import schema

MODEL_NAME = "wtag"
HEADER_LENGTH = "inference-header-content-length"
NPY_MEDIA_TYPE = "application/x-npy"
NPZ_MEDIA_TYPE = "application/x-npz"
_NPY_MAGIC = b"\x93NUMPY"
# The header numpy itself writes; anything else goes through ast.literal_eval (literals only, never code).
_NPY_HEADER = re.compile(r"^\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': (True|False), "
                         r"'shape': \(((?:\s*\d+\s*,?)*)\), \}\s*$")

# KServe v2 datatypes the server accepts (all are cast to float32); BOOL and BYTES are not numbers to score.
V2_DTYPES: dict[str, np.dtype] = {
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"), "BF16": np.dtype("<u2"),
    "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
}


class RequestError(Exception):
    """A bad request: ``status`` (400 malformed, 413 too large, 415 media type, 422 invalid content)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def loads(body: bytes, what: str = "request body") -> Any:
    if not body:
        raise RequestError(400, f"{what} is empty; expected JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestError(400, f"{what} is not valid JSON ({exc})") from None


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(422, f"{what} must be a JSON object, got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number"}.get(type(value), type(value).__name__)


def numbers(value: Any, what: str, dtype: np.dtype | type = np.float64) -> np.ndarray:
    """Nested JSON lists of numbers as an array of ``dtype``; strings, booleans and nulls are refused rather
    than converted, and integer dtypes take integers only (finiteness is the tagger's check)."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError):
        arr = None
    target = np.dtype(dtype)
    allowed = "iu" if target.kind in "iu" else "iuf"
    if arr is not None and arr.dtype.kind == "O" and any(x is None for x in arr.flat):
        raise RequestError(422, f"{what} has null (missing) values")
    if arr is None or arr.dtype.kind not in allowed:
        kind = "integers" if target.kind in "iu" else "numbers"
        raise RequestError(422, f"{what} must all be {kind}, in equal-length lists")
    try:
        return arr.astype(target, copy=False)
    except OverflowError:
        raise RequestError(422, f"{what} has values out of range for {target}") from None


# ---------------------------------------------------------------------------------------------------------
# MLflow scoring protocol (POST /invocations)

MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "inputs", "instances")


def mlflow_decode(body: bytes, content_type: str, input_names: Sequence[str],
                  hl_features: Sequence[str]) -> tuple[dict[str, Any], str]:
    """Model inputs from an MLflow scoring request, and the response style ("records" or "tensor").

    Like ``mlflow models serve`` on an ONNX model: a dataframe feeds the single input with its values (for the
    hl model, columns are matched to the hl feature names; unnamed columns are taken in order) and is answered
    with one record per row; tensor formats (``inputs``, ``instances``) are answered with ``{"score": [...]}``.
    """
    media = content_type.split(";")[0].strip().lower()
    if media == "text/csv":
        return {_single(input_names, "CSV"): _csv_frame(body, input_names, hl_features)}, "records"
    if media not in ("application/json", ""):
        raise RequestError(415, f"content type '{media}' is not supported; send application/json or text/csv")
    payload = _object(loads(body), "MLflow request")
    present = [key for key in MLFLOW_FORMATS if key in payload]
    unknown = [key for key in payload if key not in MLFLOW_FORMATS and key != "params"]
    if unknown:
        raise RequestError(422, f"unknown field(s) {', '.join(repr(k) for k in unknown)}; expected one of "
                                f"{', '.join(MLFLOW_FORMATS)}")
    if len(present) != 1:
        raise RequestError(422, f"MLflow request needs exactly one of {', '.join(MLFLOW_FORMATS)}, "
                                f"got {', '.join(present) or 'none'}")
    if payload.get("params"):
        raise RequestError(422, "this model takes no params")
    key = present[0]
    value = payload[key]
    if key == "dataframe_split":
        split = _object(value, "dataframe_split")
        if "data" not in split:
            raise RequestError(422, "dataframe_split needs 'data' (and 'columns')")
        extra = [k for k in split if k not in ("columns", "data", "index")]
        if extra:
            raise RequestError(422, f"dataframe_split has unknown field(s) {', '.join(repr(k) for k in extra)}")
        columns = split.get("columns")
        data = split["data"]
        if not isinstance(data, list) or any(not isinstance(row, list) for row in data):
            raise RequestError(422, "dataframe_split.data must be a list of rows (lists)")
        frame = _frame(data, columns, input_names, hl_features)
        return {_single(input_names, "dataframe"): frame}, "records"
    if key == "dataframe_records":
        if not isinstance(value, list) or any(not isinstance(r, dict) for r in value):
            raise RequestError(422, "dataframe_records must be a list of objects (one per row)")
        columns = list(value[0]) if value else []
        if any(set(r) != set(columns) for r in value):
            raise RequestError(422, "dataframe_records rows have different fields")
        data = [[r[c] for c in columns] for r in value]
        frame = _frame(data, columns, input_names, hl_features)
        return {_single(input_names, "dataframe"): frame}, "records"
    if key == "inputs":
        if isinstance(value, dict):
            return {str(k): numbers(v, f"inputs['{k}']") for k, v in value.items()}, "tensor"
        return {_single(input_names, "'inputs' as an array"): numbers(value, "inputs")}, "tensor"
    if not isinstance(value, list):
        raise RequestError(422, f"instances must be an array, got {_json_type(value)}")
    if value and all(isinstance(v, dict) for v in value):
        names = list(value[0])
        if any(set(v) != set(names) for v in value):
            raise RequestError(422, "instances have different fields")
        return {str(n): numbers([v[n] for v in value], f"instances[*]['{n}']") for n in names}, "tensor"
    return {_single(input_names, "'instances' as an array"): numbers(value, "instances")}, "tensor"


def _single(input_names: Sequence[str], what: str) -> str:
    if len(input_names) != 1:
        raise RequestError(422, f"a {what} feeds one input, but this model takes {', '.join(input_names)}; "
                                "send {\"inputs\": {name: tensor, ...}}")
    return input_names[0]


def _frame(data: list[list[Any]], columns: Any, input_names: Sequence[str],
           hl_features: Sequence[str]) -> np.ndarray:
    """A dataframe's values in model order: hl columns are matched by name, unnamed columns by position."""
    if not data:
        raise RequestError(422, "dataframe has no rows (empty batch)")
    width = len(data[0])
    if any(len(row) != width for row in data):
        raise RequestError(422, "dataframe rows have different lengths")
    values = numbers(data, "dataframe data")
    if columns is None:
        return values
    if not isinstance(columns, list) or len(columns) != width:
        raise RequestError(422, f"dataframe has {width} values per row but columns lists "
                                f"{len(columns) if isinstance(columns, list) else 'no'} names")
    names = [str(c) for c in columns]
    if names == [str(i) for i in range(width)]:
        return values
    if input_names != [schema.INPUT_HL] and list(input_names) != [schema.INPUT_HL]:
        raise RequestError(422, f"named dataframe columns only apply to the '{schema.INPUT_HL}' input; this model "
                                f"takes {', '.join(input_names)}")
    missing = [c for c in hl_features if c not in names]
    unknown = [c for c in names if c not in hl_features]
    if missing or unknown:
        detail = "; ".join(([f"missing {', '.join(missing)}"] if missing else []) +
                           ([f"unknown {', '.join(unknown)}"] if unknown else []))
        raise RequestError(422, f"dataframe columns must be the hl features {', '.join(hl_features)}: {detail}")
    return values[:, [names.index(c) for c in hl_features]]


def _csv_frame(body: bytes, input_names: Sequence[str], hl_features: Sequence[str]) -> np.ndarray:
    import pandas as pd

    if not body.strip():
        raise RequestError(400, "CSV body is empty")
    try:
        frame = pd.read_csv(io.BytesIO(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, f"request body is not readable CSV ({str(exc).splitlines()[0]})") from None
    non_numeric = [str(c) for c, kind in frame.dtypes.items() if kind.kind not in "iuf"]
    if non_numeric:
        raise RequestError(422, f"CSV column(s) {', '.join(non_numeric)} are not numeric")
    return _frame(frame.to_numpy(dtype=np.float64).tolist(), [str(c) for c in frame.columns], input_names,
                  hl_features)


def mlflow_encode(scores: np.ndarray, style: str) -> bytes:
    """``mlflow models serve``'s answer for an ONNX model: records for dataframes, a dict for tensors."""
    if style == "records":
        return dumps({"predictions": [{schema.OUTPUT_SCORE: s} for s in scores.tolist()]})
    return dumps({"predictions": {schema.OUTPUT_SCORE: scores}})


# ---------------------------------------------------------------------------------------------------------
# KServe v2 / Triton inference protocol

def v2_decode(body: bytes, header_length: str | None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Input tensors of a v2 request (JSON ``data`` or the binary extension) and what the answer must carry.

    Returns ``(inputs, reply)`` with reply keys ``id`` (echoed when given) and ``binary`` (send the scores as
    raw bytes after the JSON header: asked for per output or with the ``binary_data_output`` parameter).
    """
    if header_length is not None:
        try:
            json_size = int(header_length)
        except ValueError:
            raise RequestError(400, f"Inference-Header-Content-Length '{header_length}' is not an integer") from None
        if not 0 < json_size <= len(body):
            raise RequestError(400, f"Inference-Header-Content-Length {json_size} is outside the body "
                                    f"({len(body)} bytes)")
        header, binary = loads(body[:json_size], "inference header"), memoryview(body)[json_size:]
    else:
        header, binary = loads(body), memoryview(b"")
    request = _object(header, "inference request")
    raw_inputs = request.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise RequestError(422, "inference request needs a non-empty 'inputs' array")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for position, tensor in enumerate(raw_inputs):
        tensor = _object(tensor, f"inputs[{position}]")
        name = tensor.get("name")
        if not isinstance(name, str):
            raise RequestError(422, f"inputs[{position}] needs a string 'name'")
        if name in inputs:
            raise RequestError(422, f"input '{name}' is given twice")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or any(not isinstance(d, int) or isinstance(d, bool) or d < 0
                                              for d in shape):
            raise RequestError(422, f"input '{name}' needs 'shape' as a list of non-negative integers")
        datatype = tensor.get("datatype")
        if datatype not in V2_DTYPES:
            raise RequestError(422, f"input '{name}' has datatype {datatype!r}; expected one of "
                                    f"{', '.join(V2_DTYPES)}")
        dtype = V2_DTYPES[datatype]
        count = math.prod(shape)
        params = tensor.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(422, f"input '{name}' parameters must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in tensor:
                raise RequestError(422, f"input '{name}' has both 'data' and binary_data_size")
            if not isinstance(size, int) or size != count * dtype.itemsize:
                raise RequestError(422, f"input '{name}': binary_data_size {size!r} does not match shape {shape} "
                                        f"of {datatype} ({count * dtype.itemsize} bytes)")
            if offset + size > len(binary):
                raise RequestError(400, f"input '{name}': body holds {len(binary) - offset} binary bytes, "
                                        f"expected {size}")
            arr = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
            offset += size
        else:
            if "data" not in tensor:
                raise RequestError(422, f"input '{name}' has neither 'data' nor binary_data_size")
            if datatype == "BF16":
                raise RequestError(422, f"input '{name}': BF16 data must be sent in binary form")
            arr = numbers(tensor["data"], f"input '{name}' data ({datatype})", dtype)
            if arr.size != count:
                raise RequestError(422, f"input '{name}': data has {arr.size} values, shape {shape} needs {count}")
        if datatype == "BF16":
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        inputs[name] = arr.reshape(shape)
    if offset != len(binary):
        raise RequestError(400, f"body has {len(binary) - offset} binary bytes that no input claims")
    binary_out = bool(_object(request.get("parameters") or {}, "parameters").get("binary_data_output", False))
    outputs = request.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise RequestError(422, "'outputs' must be an array")
        for out in outputs:
            out = _object(out, "outputs[*]")
            if out.get("name") != schema.OUTPUT_SCORE:
                raise RequestError(422, f"unknown output {out.get('name')!r}; this model has "
                                        f"'{schema.OUTPUT_SCORE}'")
            binary_out = bool(_object(out.get("parameters") or {}, "output parameters").get("binary_data",
                                                                                            binary_out))
    reply: dict[str, Any] = {"binary": binary_out}
    if "id" in request:
        reply["id"] = request["id"]
    return inputs, reply


def v2_encode(scores: np.ndarray, reply: Mapping[str, Any], version: str) -> tuple[bytes, dict[str, str]]:
    """The v2 response body and extra headers (the JSON header length when scores go as binary)."""
    output: dict[str, Any] = {"name": schema.OUTPUT_SCORE, "datatype": "FP32", "shape": [len(scores)]}
    result: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": version}
    if "id" in reply:
        result["id"] = reply["id"]
    result["outputs"] = [output]
    if not reply.get("binary"):
        output["data"] = scores
        return dumps(result), {}
    data = np.ascontiguousarray(scores, dtype="<f4").tobytes()
    output["parameters"] = {"binary_data_size": len(data)}
    header = dumps(result)
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def v2_model_metadata(input_shapes: Mapping[str, Sequence[int | None]], version: str) -> dict[str, Any]:
    return {
        "name": MODEL_NAME,
        "versions": [version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": name, "datatype": "FP32", "shape": [-1 if d is None else d for d in shape]}
                   for name, shape in input_shapes.items()],
        "outputs": [{"name": schema.OUTPUT_SCORE, "datatype": "FP32", "shape": [-1]}],
    }


# ---------------------------------------------------------------------------------------------------------
# Bulk binary route (.npy / .npz bodies)

def npy_decode(body: bytes | memoryview, what: str = "request body") -> np.ndarray:
    """A ``.npy`` payload as an array viewing the body (no copy); object dtypes are refused, never unpickled."""
    view = memoryview(body)
    if bytes(view[:6]) != _NPY_MAGIC:
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
    padding = -(len(_NPY_MAGIC) + 4 + len(header) + 1) % 64
    header_bytes = (header + " " * padding + "\n").encode("latin1")
    return _NPY_MAGIC + b"\x01\x00" + len(header_bytes).to_bytes(2, "little") + header_bytes + data.tobytes()


# ---------------------------------------------------------------------------------------------------------
# Raw jets (POST /v1/score-jets)

_CAND_FIELDS = {"pt": "ak7pfcand_pt", "eta": "ak7pfcand_eta", "phi": "ak7pfcand_phi", "id": "ak7pfcand_id",
                "charge": "ak7pfcand_charge"}
# Jet-level values a client may pass along (e.g. JES-corrected kinematics, event ids); the rest is computed.
_JET_FIELDS = {"jet_pt": "jet_pt_ak7", "jet_eta": "jet_eta_ak7", "jet_phi": "jet_phi_ak7", "jet_E": "jet_E_ak7",
               "run": "run", "lumi": "lumi", "event": "event", "ijet": "ijet"}


def jets_decode(body: bytes) -> dict[str, Any]:
    """Columns for ``wtag.jets.make_jets`` from ``{"jets": [{"pt": [...], "eta": [...], "phi": [...], ...}, ...]}``.

    Each jet lists its PF candidates (``pt`` > 0 GeV, ``eta``, ``phi``; optional integer ``id`` (PDG code)
    and ``charge``, 0 when absent) and may carry ``jet_pt``/``jet_eta``/``jet_phi``/``jet_E`` and
    ``run``/``lumi``/``event``/``ijet``; everything else is computed from the candidates server-side.
    """
    payload = _object(loads(body), "request")
    unknown = [k for k in payload if k != "jets"]
    if unknown or "jets" not in payload:
        raise RequestError(422, "request must be {\"jets\": [{\"pt\": [...], \"eta\": [...], \"phi\": [...]}, ...]}"
                                + (f"; unknown field(s) {', '.join(repr(k) for k in unknown)}" if unknown else ""))
    jets = payload["jets"]
    if not isinstance(jets, list):
        raise RequestError(422, f"'jets' must be an array, got {_json_type(jets)}")
    if not jets:
        raise RequestError(422, "'jets' is empty (empty batch)")
    counts = np.empty(len(jets), dtype=np.int64)
    flat: dict[str, list[Any]] = {key: [] for key in _CAND_FIELDS}
    scalars: dict[str, list[Any]] = {}
    for i, jet in enumerate(jets):
        if not isinstance(jet, dict):
            raise RequestError(422, f"jets[{i}] must be an object, got {_json_type(jet)}")
        extra = [k for k in jet if k not in _CAND_FIELDS and k not in _JET_FIELDS]
        if extra:
            raise RequestError(422, f"jets[{i}] has unknown field(s) {', '.join(repr(k) for k in extra)}; allowed: "
                                    f"{', '.join(list(_CAND_FIELDS) + list(_JET_FIELDS))}")
        n = None
        for key in _CAND_FIELDS:
            values = jet.get(key)
            if values is None:
                if key in ("id", "charge"):
                    continue
                raise RequestError(422, f"jets[{i}] lacks '{key}' (a list per candidate)")
            if not isinstance(values, list):
                raise RequestError(422, f"jets[{i}].{key} must be a list, got {_json_type(values)}")
            if n is None:
                n = len(values)
            elif len(values) != n:
                raise RequestError(422, f"jets[{i}].{key} has {len(values)} entries but pt has {n}")
        assert n is not None
        if n == 0:
            raise RequestError(422, f"jets[{i}] has no candidates")
        counts[i] = n
        for key in _CAND_FIELDS:
            flat[key].extend(jet[key] if key in jet else [0] * n)
        for key in _JET_FIELDS:
            if key in jet:
                scalars.setdefault(key, [None] * len(jets))[i] = jet[key]
    columns: dict[str, Any] = {}
    for key, branch in _CAND_FIELDS.items():
        integer = key in ("id", "charge")
        values = numbers(flat[key], f"candidate '{key}' values", np.int64 if integer else np.float64)
        if integer and np.any(np.abs(values) > np.iinfo(np.int32).max):
            raise RequestError(422, f"candidate '{key}' values must fit in 32 bits")
        if not integer:
            bad = ~np.isfinite(values)
            if key == "pt":
                bad |= values <= 0
            if bad.any():
                jet = int(np.searchsorted(np.cumsum(counts), int(np.argmax(bad)), side="right"))
                rule = "finite and > 0" if key == "pt" else "finite"
                raise RequestError(422, f"jets[{jet}].{key} has a value that is not {rule}")
        columns[branch] = ak.unflatten(values.astype(np.int32) if integer else values, counts)
    for key, values in scalars.items():
        missing = [i for i, v in enumerate(values) if v is None]
        if missing:
            raise RequestError(422, f"'{key}' is given for some jets but not jets[{missing[0]}]; give it for all "
                                    "or none")
        integer = key in ("run", "lumi", "event", "ijet")
        arr = numbers(values, f"'{key}' values", np.int64 if integer else np.float64)
        if not integer and not np.isfinite(arr).all():
            raise RequestError(422, f"'{key}' has a value that is not finite")
        if integer and np.any(np.abs(arr) > np.iinfo(np.int32).max):
            raise RequestError(422, f"'{key}' values must fit in 32 bits")
        columns[_JET_FIELDS[key]] = arr
    return columns
