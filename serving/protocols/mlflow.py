"""MLflow scoring protocol, as ``mlflow models serve`` speaks it for an ONNX model: ``POST /invocations``
(dataframes as JSON or CSV, tensors as ``inputs``/``instances``), ``/ping``, ``/health`` and ``/version``.
Errors carry MLflow's ``error_code`` and ``message`` (and ``error``, as every wtag route)."""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

import wtag
from serving.routing import Routes, body_doc
from serving.service import Service
from serving.wire import JSON, RequestError, dumps, json_object, json_type, loads, numbers
from wtag import schema

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
    payload = json_object(loads(body), "MLflow request")
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
        split = json_object(value, "dataframe_split")
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
        raise RequestError(422, f"instances must be an array, got {json_type(value)}")
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



def mlflow_error(status: int, message: str, headers: Mapping[str, str]) -> Response:
    """MLflow's error body: its error code for the status, the message, and wtag's ``error`` field."""
    code = {400: "BAD_REQUEST", 413: "RESOURCE_LIMIT_EXCEEDED", 415: "BAD_REQUEST", 429: "RESOURCE_EXHAUSTED",
            503: "TEMPORARILY_UNAVAILABLE"}.get(status, "INVALID_PARAMETER_VALUE")
    return Response(dumps({"error_code": code, "message": message, "error": message}), status_code=status,
                    media_type=JSON, headers=dict(headers))


def row_schema(dims: Sequence[int | None]) -> dict[str, Any]:
    """JSON schema of one jet's values of an input: nested arrays, each fixed dimension exactly."""
    if not dims:
        return {"type": "number"}
    exact = {} if dims[0] is None else {"minItems": dims[0], "maxItems": dims[0]}
    return {"type": "array", "minItems": 1, **exact, "items": row_schema(dims[1:])}


def tensor_schema(shape: Sequence[int | None]) -> dict[str, Any]:
    """JSON schema of one input as nested arrays: at least one jet, each shaped as the input wants."""
    return {"type": "array", "minItems": 1, "items": row_schema(shape[1:])}


def invocations_schema(input_shapes: Mapping[str, Sequence[int | None]]) -> dict[str, Any]:
    """What /invocations accepts for this model, exactly as ``mlflow_decode`` and the tagger check it: tensors
    shaped as the inputs; dataframes only for a single two-dimensional input (named columns only for hl)."""
    tensors = {name: tensor_schema(shape) for name, shape in input_shapes.items()}
    by_name = {"type": "object", "required": list(tensors), "additionalProperties": False, "properties": tensors}
    rows = [{"type": "object", "required": list(tensors), "additionalProperties": False,
             "properties": {name: row_schema(shape[1:]) for name, shape in input_shapes.items()}}]
    single = list(tensors) if len(tensors) == 1 else []
    variants: list[dict[str, Any]] = [
        {"type": "object", "required": ["inputs"], "additionalProperties": False,
         "properties": {"inputs": {"oneOf": [tensors[single[0]], by_name]} if single else by_name}},
        {"type": "object", "required": ["instances"], "additionalProperties": False,
         "properties": {"instances": {"oneOf": [tensors[single[0]], {"type": "array", "minItems": 1,
                                                                       "items": rows[0]}]} if single else
                        {"type": "array", "minItems": 1, "items": rows[0]}}}]
    if single and len(input_shapes[single[0]]) == 2 and input_shapes[single[0]][1] is not None:
        width = input_shapes[single[0]][1]
        named = single[0] == schema.INPUT_HL
        columns = ({"type": "array", "items": {"type": "string", "enum": list(schema.HL_FEATURES)},
                    "minItems": width, "maxItems": width, "uniqueItems": True,
                    "description": "the hl feature names in any order (or \"0\"..\"n-1\"); absent: model order"}
                   if named else {"type": "array", "items": {"type": "string"}, "minItems": width,
                                  "maxItems": width, "description": "\"0\"..\"n-1\""})
        variants.append({"type": "object", "required": ["dataframe_split"], "additionalProperties": False,
                         "properties": {"dataframe_split": {
                             "type": "object", "required": ["data"], "additionalProperties": False, "properties": {
                                 "columns": columns, "data": tensors[single[0]], "index": {"type": "array"}}}}})
        if named:
            record = {"type": "object", "additionalProperties": False, "required": list(schema.HL_FEATURES),
                      "properties": {name: {"type": "number"} for name in schema.HL_FEATURES}}
            variants.append({"type": "object", "required": ["dataframe_records"], "additionalProperties": False,
                             "properties": {"dataframe_records": {"type": "array", "minItems": 1, "items": record}}})
    return {"oneOf": variants}


CSV_SCHEMA = {"type": "string", "description": "a header row (the hl feature names, or 0..n-1) then rows of numbers; "
                                               "only for a single two-dimensional input"}


PREDICTIONS = {"type": "object", "required": ["predictions"], "properties": {"predictions": {"oneOf": [
    {"type": "array", "items": {"type": "object", "properties": {schema.OUTPUT_SCORE: {"type": "number"}}}},
    {"type": "object", "properties": {schema.OUTPUT_SCORE: {"type": "array", "items": {"type": "number"}}}}]}}}


def routes(service: Service) -> Routes:
    tagger = service.tagger
    out = Routes(open={"/ping", "/health"})

    @out.router.get("/ping", tags=["health"], summary="Liveness (as mlflow models serve)")
    @out.router.get("/health", tags=["health"], summary="Liveness (as mlflow models serve)")
    async def ping() -> Response:
        return Response(dumps({"status": "ok"}), media_type=JSON)

    @out.router.get("/version", tags=["health"], summary="Server version (as mlflow models serve)")
    async def version() -> Response:
        return Response(wtag.__version__, media_type="text/plain")

    async def invocations(request: Request) -> Response:
        model = service.default
        with service.admitted(model):
            body = await service.read_body(request)
            inputs, style = await service.decode(mlflow_decode, body, request.headers.get("content-type", ""),
                                                 list(model.tagger.inputs), model.tagger.hl_features)
            scored = await service.score(model, inputs)
        return Response(mlflow_encode(scored.scores, style), media_type=JSON, headers=scored.headers())

    out.post(["/invocations"], service.guard(invocations, mlflow_error), "mlflow", "MLflow scoring protocol",
             body_doc({JSON: {"schema": invocations_schema(tagger.input_shapes)},
                       "text/csv": {"schema": CSV_SCHEMA}},
                      "As for `mlflow models serve`: exactly one of dataframe_split, dataframe_records, inputs, "
                      "instances (no `params`). A dataframe feeds a single-input model (hl model: columns named "
                      "as the hl features, in any order); tensors are keyed by input name for several inputs."),
             {"description": "records for dataframes, a dict of arrays for tensors",
              "content": {JSON: {"schema": PREDICTIONS}}},
             errors={"description": "client error", "content": {JSON: {"schema": {
                 "type": "object", "properties": {"error_code": {"type": "string"}, "message": {"type": "string"},
                                                  "error": {"type": "string"}}}}}})
    return out
