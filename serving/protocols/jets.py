"""Raw jets and files: ``POST /v1/score-jets`` takes jets as lists of PF candidates, ``POST /v1/score-file`` a
ROOT ``jets`` tree or a CMS tutorial ``.npy``; the model inputs are computed server-side with the training
feature code (``wtag.features``), so served scores cannot drift from training. Errors are ``{"error": ...}``."""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from serving.routing import BINARY, MODEL_QUERY, Routes, body_doc
from serving.service import Service
from serving.wire import JSON, RequestError, dumps, json_object, json_type, loads, numbers
from wtag import schema
from wtag.errors import WtagError
from wtag.features import complete_jets, model_inputs
from wtag.jets import make_jets, read_jets, select

ROOT_MAGIC = b"root"
NPY_MAGIC = b"\x93NUMPY"
FILE_FORMATS = ("auto", "root", "npy")
# Per-jet values /v1/score-file returns beside the scores.
FILE_FIELDS = ("run", "lumi", "event", "ijet", "jet_pt_ak7", "jet_eta_ak7", "jet_msd_ak7")

_CAND_FIELDS = {"pt": "ak7pfcand_pt", "eta": "ak7pfcand_eta", "phi": "ak7pfcand_phi", "id": "ak7pfcand_id",
                "charge": "ak7pfcand_charge"}
# Jet-level values a client may pass along (e.g. JES-corrected kinematics, event ids); the rest is computed.
_JET_FIELDS = {"jet_pt": "jet_pt_ak7", "jet_eta": "jet_eta_ak7", "jet_phi": "jet_phi_ak7", "jet_E": "jet_E_ak7",
               "run": "run", "lumi": "lumi", "event": "event", "ijet": "ijet"}


@dataclasses.dataclass(frozen=True)
class Caps:
    """The per-request limits raw jets and files are held to (from ServerSettings)."""

    max_jets: int
    max_candidates: int
    max_root_bytes: int

    def check_jets(self, n: int) -> None:
        if n > self.max_jets:
            raise RequestError(413, f"the request holds {n} jets, more than the limit of {self.max_jets} jets per "
                                    "request (max_jets_per_request)", reason="jets_per_request")

    def check_candidates(self, n: int, where: str) -> None:
        if n > self.max_candidates:
            raise RequestError(422, f"{where} has {n} candidates, more than the limit of {self.max_candidates} "
                                    "candidates per jet (max_candidates_per_jet)", reason="candidates_per_jet")


def jets_decode(body: bytes, caps: Caps | None = None) -> dict[str, Any]:
    """Columns for ``wtag.jets.make_jets`` from ``{"jets": [{"pt": [...], "eta": [...], "phi": [...], ...}, ...]}``.

    Each jet lists its PF candidates (``pt`` > 0 GeV, ``eta``, ``phi``; optional integer ``id`` (PDG code)
    and ``charge``, 0 when absent) and may carry ``jet_pt``/``jet_eta``/``jet_phi``/``jet_E`` and
    ``run``/``lumi``/``event``/``ijet``; everything else is computed from the candidates server-side.
    """
    payload = json_object(loads(body), "request")
    unknown = [k for k in payload if k != "jets"]
    if unknown or "jets" not in payload:
        raise RequestError(422, "request must be {\"jets\": [{\"pt\": [...], \"eta\": [...], \"phi\": [...]}, ...]}"
                                + (f"; unknown field(s) {', '.join(repr(k) for k in unknown)}" if unknown else ""))
    jets = payload["jets"]
    if not isinstance(jets, list):
        raise RequestError(422, f"'jets' must be an array, got {json_type(jets)}")
    if not jets:
        raise RequestError(422, "'jets' is empty (empty batch)")
    if caps is not None:
        caps.check_jets(len(jets))
    counts = np.empty(len(jets), dtype=np.int64)
    flat: dict[str, list[Any]] = {key: [] for key in _CAND_FIELDS}
    scalars: dict[str, list[Any]] = {}
    for i, jet in enumerate(jets):
        if not isinstance(jet, dict):
            raise RequestError(422, f"jets[{i}] must be an object, got {json_type(jet)}")
        extra = [k for k in jet if k not in _CAND_FIELDS and k not in _JET_FIELDS]
        if extra:
            raise RequestError(422, f"jets[{i}] has unknown field(s) {', '.join(repr(k) for k in extra)}; allowed: "
                                    f"{', '.join(list(_CAND_FIELDS) + list(_JET_FIELDS))}")
        n = None
        for key in _CAND_FIELDS:
            if key not in jet:
                if key in ("id", "charge"):
                    continue
                raise RequestError(422, f"jets[{i}] lacks '{key}' (a list per candidate)")
            values = jet[key]
            if not isinstance(values, list):
                raise RequestError(422, f"jets[{i}].{key} must be a list (one value per candidate), got "
                                        f"{json_type(values)}" + ("; leave it out instead" if key in ("id", "charge")
                                                                  else ""))
            if n is None:
                n = len(values)
            elif len(values) != n:
                raise RequestError(422, f"jets[{i}].{key} has {len(values)} entries but pt has {n}")
        assert n is not None
        if n == 0:
            raise RequestError(422, f"jets[{i}] has no candidates")
        if caps is not None:
            caps.check_candidates(n, f"jets[{i}]")
        counts[i] = n
        for key in _CAND_FIELDS:
            flat[key].extend(jet[key] if key in jet else [0] * n)
        for key in _JET_FIELDS:
            if key in jet:
                if not isinstance(jet[key], int | float) or isinstance(jet[key], bool):
                    raise RequestError(422, f"jets[{i}].{key} must be a number, got {json_type(jet[key])}")
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


def jet_inputs(body: bytes, caps: Caps, input_names: tuple[str, ...], max_particles: int
               ) -> dict[str, np.ndarray]:
    """Model inputs of a /v1/score-jets body, computed with the training feature code (runs in a decode
    process: everything it takes and returns is plain data)."""
    jets = complete_jets(make_jets(jets_decode(body, caps)))
    return model_inputs(jets, input_names, max_particles=max_particles)


def file_inputs(body: bytes, kind: str, tutorial_selection: bool, caps: Caps, input_names: tuple[str, ...],
                max_particles: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The FILE_FIELDS and the model inputs of every jet of an uploaded file (``kind`` root or npy)."""
    suffix = ".root" if kind == "root" else ".npy"
    with tempfile.TemporaryDirectory(prefix="wtag-upload-") as tmp:
        path = Path(tmp) / f"upload{suffix}"
        path.write_bytes(body)
        try:
            if kind == "root":
                check_root_size(path, caps.max_root_bytes)
                jets = complete_jets(read_jets(path))
            else:
                from wtag.sources.cms_ntuple import read_cms_ntuple

                jets = read_cms_ntuple([path])
        except WtagError as exc:  # the temporary name means nothing to the client
            raise WtagError(str(exc).replace(str(path), f"uploaded {kind} file")) from None
    if tutorial_selection:
        jets = select(jets)
    if len(jets) == 0:
        raise WtagError("the file holds no jets" + (" passing the selection" if tutorial_selection else ""))
    caps.check_jets(len(jets))
    counts = ak.to_numpy(ak.num(jets["ak7pfcand_pt"]))
    if counts.max() > caps.max_candidates:
        caps.check_candidates(int(counts.max()), f"jet {int(np.argmax(counts))} of the file")
    fields = {field: ak.to_numpy(jets[field]) for field in FILE_FIELDS}
    return fields, model_inputs(jets, input_names, max_particles=max_particles)


def check_root_size(path: Path, limit: int) -> None:
    """413 when the ``jets`` tree's baskets would decompress to more than ``limit`` bytes (as their headers
    declare; a file uproot cannot open is left to ``read_jets`` to word)."""
    import uproot

    try:
        with uproot.open(path) as f:
            tree = f[schema.TREE_NAME]
            size = sum(branch.uncompressed_bytes for branch in tree.itervalues(recursive=True))
    except Exception:  # noqa: BLE001  (any failure to read it is reported by read_jets)
        return
    if size > limit:
        raise RequestError(413, f"the uploaded ROOT file's '{schema.TREE_NAME}' tree decompresses to {size} bytes, "
                                f"more than the limit of {limit} bytes (max_root_bytes)", reason="root_size")


def file_kind(body: bytes, requested: str) -> str:
    if requested != "auto":
        return requested
    if body.startswith(ROOT_MAGIC):
        return "root"
    if body.startswith(NPY_MAGIC):
        return "npy"
    raise RequestError(400, "request body is neither a ROOT file nor a .npy file")


def file_query(request: Request) -> tuple[str, bool]:
    """The ``format`` and ``select`` query parameters of /v1/score-file, checked."""
    params = request.query_params
    unknown = sorted(set(params) - {"format", "select", "model"})
    if unknown:
        raise RequestError(422, f"unknown query parameter(s) {', '.join(unknown)}; allowed: format, select, model")
    kind = params.get("format", "auto")
    if kind not in FILE_FORMATS:
        raise RequestError(422, f"query parameter format={kind!r} is not one of {', '.join(FILE_FORMATS)}")
    chosen = params.get("select", "false").lower()
    if chosen not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise RequestError(422, f"query parameter select={chosen!r} is not a boolean (true or false)")
    return kind, chosen in ("true", "1", "yes", "on")


_CANDIDATES = {"type": "array", "minItems": 1, "items": {"type": "number"},
               "description": "one value per candidate; pt, eta, phi (and id, charge) of equal length"}
JET_SCHEMA = {"type": "object", "required": ["pt", "eta", "phi"], "additionalProperties": False, "properties": {
    "pt": {**_CANDIDATES, "items": {"type": "number", "exclusiveMinimum": 0}, "description": "GeV, > 0"},
    "eta": _CANDIDATES, "phi": _CANDIDATES,
    "id": {**_CANDIDATES, "items": {"type": "integer"}, "description": "PDG code per candidate (default 0)"},
    "charge": {**_CANDIDATES, "items": {"type": "integer"}, "description": "per candidate (default 0)"},
    **{k: {"type": "number"} for k in ("jet_pt", "jet_eta", "jet_phi", "jet_E")},
    **{k: {"type": "integer"} for k in ("run", "lumi", "event", "ijet")}}}
JETS_REQUEST = {"type": "object", "required": ["jets"], "additionalProperties": False, "properties": {
    "jets": {"type": "array", "minItems": 1, "items": JET_SCHEMA}}}
SCORES = {"type": "object", "required": ["n_jets", "scores"], "properties": {
    "n_jets": {"type": "integer"}, "scores": {"type": "array", "items": {"type": "number"}}}}


def routes(service: Service) -> Routes:
    out = Routes()
    settings = service.settings
    caps = Caps(settings.max_jets_per_request, settings.max_candidates_per_jet, settings.max_root_bytes)

    async def score_jets(request: Request) -> Response:
        model = service.model_of(request)
        with service.admitted(model):
            body = await service.read_body(request)
            tagger = model.tagger
            tagger.check_feature_code()
            inputs = await service.offload(jet_inputs, body, caps, tagger.inputs, tagger.max_particles)
            scored = await service.score(model, inputs)
        return Response(dumps({"n_jets": len(scored.scores), "scores": scored.scores}), media_type=JSON,
                        headers=scored.headers())

    async def score_file(request: Request) -> Response:
        requested, tutorial_selection = file_query(request)
        model = service.model_of(request)
        with service.admitted(model):
            body = await service.read_body(request)
            kind = file_kind(body, requested)
            tagger = model.tagger
            tagger.check_feature_code()
            fields, inputs = await service.offload(file_inputs, body, kind, tutorial_selection, caps, tagger.inputs,
                                                   tagger.max_particles)
            scored = await service.score(model, inputs)
        return Response(dumps({"n_jets": len(scored.scores), "scores": scored.scores, **fields}), media_type=JSON,
                        headers=scored.headers())

    out.post(["/v1/score-jets"], service.guard(score_jets), "jets", "Score jets given as lists of PF candidates",
             body_doc({JSON: {"schema": JETS_REQUEST}},
                      "Each jet: its PF candidates' pt (GeV, > 0), eta, phi (equal lengths, at least one) and "
                      "optionally id (PDG code) and charge; optional jet_pt/jet_eta/jet_phi/jet_E and "
                      "run/lumi/event/ijet, given for every jet or for none. The model inputs are computed "
                      "server-side with the training feature code."),
             {"description": "one score per jet, in request order", "content": {JSON: {"schema": SCORES}}},
             query=[MODEL_QUERY])
    file_answer = {**SCORES, "properties": {**SCORES["properties"], **{
        f: {"type": "array", "items": {"type": "number"}} for f in FILE_FIELDS}}}
    out.post(["/v1/score-file"], service.guard(score_file), "jets", "Score every jet of a ROOT `jets` tree or a CMS .npy",
             body_doc({"application/octet-stream": BINARY},
                      "The file itself as the body: a ROOT file with the `jets` TTree, or a tutorial-format "
                      "(c2numpy) `.npy` of PF candidates."),
             {"description": "scores and the jets' event ids and kinematics", "content": {JSON: {"schema": file_answer}}},
             query=[{"name": "format", "in": "query", "required": False, "description": "file type; auto detects it "
                     "from the first bytes", "schema": {"type": "string", "enum": list(FILE_FORMATS), "default": "auto"}},
                    {"name": "select", "in": "query", "required": False, "description": "keep only 200 < pT < 500 "
                     "GeV, |eta| < 2", "schema": {"type": "boolean", "default": False}}, MODEL_QUERY])
    return out
