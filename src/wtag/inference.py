"""Scoring with an exported ONNX tagger: provider choice, model loading, input validation and chunked runs.

The server and batch scoring both go through :class:`OnnxTagger`, and raw jets are turned into model inputs
by ``wtag.features.model_inputs``, the function ``prepare`` used for training, so served scores cannot drift
from the training inputs.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import io
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import awkward as ak
import numpy as np
import onnx
import onnx.external_data_helper
import onnxruntime as ort

from wtag import schema
from wtag.errors import WtagError
from wtag.features import model_inputs

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
DEFAULT_MAX_BATCH = 16384
# ONNX Runtime logs at ERROR when the CUDA provider library cannot load; 3 keeps session logs to errors only.
_ORT_LOG_ERROR = 3
# CUDA provider options. HEURISTIC: the exhaustive default benchmarks every conv algorithm again for each new
# batch size, and a dynamic batcher makes new sizes all the time (measured on an H200: 60 ms per served CNN
# request at concurrency 4). use_tf32 off: TF32 matmuls moved CNN/LSTM scores by up to 1e-3 from the CPU's.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC", "use_tf32": "0"}
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>[^/]+))/?$")


def cuda_device_count() -> int:
    """Number of CUDA devices the driver reports (0 without a driver), asked without starting ONNX Runtime.

    ``ort.get_available_providers()`` lists CUDA wherever onnxruntime-gpu is installed, so it cannot tell
    whether a GPU is there; the driver API can, and asking it avoids ORT's error spew on CPU machines. (It
    initialises the driver, as the CUDA provider would anyway: fork worker processes before, not after.)
    """
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return int(count.value)


def select_providers(device: str = "auto") -> list[str]:
    """Execution providers to request for ``device``: CUDA first (then CPU) when a GPU may be used."""
    if device not in DEVICES:
        raise WtagError(f"device '{device}' is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        return [CPU_PROVIDER]
    if CUDA_PROVIDER not in ort.get_available_providers():
        if device == "cuda":
            raise WtagError("device 'cuda' requested but this onnxruntime build has no CUDA execution provider "
                            "(install onnxruntime-gpu)")
        return [CPU_PROVIDER]
    if cuda_device_count() == 0:
        if device == "cuda":
            raise WtagError("device 'cuda' requested but no CUDA GPU is visible to the driver")
        return [CPU_PROVIDER]
    preload_cuda_libraries()
    return [CUDA_PROVIDER, CPU_PROVIDER]


@functools.cache
def preload_cuda_libraries() -> str:
    """Load the CUDA and cuDNN libraries pip installed beside onnxruntime-gpu (its ``[cuda,cudnn]`` extras or
    a CUDA build of PyTorch), which the dynamic loader does not search; without them the CUDA provider
    fails to start. Libraries on the system path are used as they are. Returns what ORT printed, also logged.
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return ""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        try:
            preload()
        except (OSError, RuntimeError) as exc:
            print(f"preload_dlls failed: {exc}")
    text = printed.getvalue().strip()
    if text:
        log.info("onnxruntime.preload_dlls: %s", text)
    return text


def create_session(model: str | os.PathLike[str] | bytes, device: str = "auto",
                   intra_op_threads: int | None = None) -> ort.InferenceSession:
    """An inference session on the best provider for ``device``, checked with ``session.get_providers()``.

    An explicit ``cuda`` that does not come up is an error; ``auto`` falls back to the CPU and logs why.
    """
    options = ort.SessionOptions()
    options.log_severity_level = _ORT_LOG_ERROR
    if intra_op_threads is not None:
        if intra_op_threads < 1:
            raise WtagError(f"intra_op_threads must be >= 1, got {intra_op_threads}")
        options.intra_op_num_threads = intra_op_threads
    providers = select_providers(device)
    source = bytes(model) if isinstance(model, (bytes, bytearray, memoryview)) else str(model)
    requested = [(p, CUDA_OPTIONS) if p == CUDA_PROVIDER else p for p in providers]
    try:
        session = ort.InferenceSession(source, options, providers=requested)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
        what = "model bytes" if isinstance(source, bytes) else source
        raise WtagError(f"{what}: not a loadable ONNX model ({type(exc).__name__}: {exc})") from None
    active = session.get_providers()
    if CUDA_PROVIDER in providers and CUDA_PROVIDER not in active:
        if device == "cuda":
            raise WtagError("device 'cuda' requested but the CUDA execution provider did not start "
                            "(check the CUDA and cuDNN libraries onnxruntime-gpu needs)")
        log.info("CUDA execution provider did not start; scoring on the CPU")
    return session


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a served model came from: what the user asked for, the file loaded, and its registry version."""

    uri: str
    path: str | None = None
    registered_name: str | None = None
    version: str | None = None
    sha256: str | None = None
    # the MLflow model's own input example (input name -> array), when it was logged with one
    example: Mapping[str, np.ndarray] | None = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def public_uri(self) -> str:
        """What to show clients: the MLflow URI as given, or only the file name of a local model (a server's
        filesystem layout is nobody's business)."""
        if self.path is None:
            return self.uri
        return Path(self.uri.rstrip("/")).name or Path(self.path).name


def _onnx_file_in(directory: Path) -> Path:
    """The ONNX file of an MLflow model directory (``MLmodel`` names it) or the only ``.onnx`` file there."""
    if (directory / "MLmodel").is_file():
        from mlflow.models import Model

        data = Model.load(str(directory)).flavors.get("onnx", {}).get("data")
        if data and (directory / data).is_file():
            return directory / data
    candidates = sorted(directory.glob("*.onnx"))
    if len(candidates) != 1:
        raise WtagError(f"{directory}: expected an MLflow ONNX model or one .onnx file, found "
                        f"{len(candidates)} .onnx files")
    return candidates[0]


def _read_model(path: Path) -> tuple[bytes, str]:
    """Self-contained model bytes (tensors stored beside the file pulled in) and the sha256 of the file itself.

    Sessions are built from bytes so nothing depends on the (possibly temporary) folder the model came from.
    """
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception:  # not ONNX at all: let create_session word the error
        return data, digest
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        try:
            onnx.external_data_helper.load_external_data_for_model(proto, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise WtagError(f"{path}: cannot load the tensors it stores in separate files ({exc})") from None
        data = proto.SerializeToString()
    return data, digest


def _input_example(directory: Path) -> dict[str, np.ndarray] | None:
    """The input example an MLflow model directory holds (``log_model(input_example=...)``), as float32 arrays
    keyed by input name; None when there is none or it cannot be read."""
    if not (directory / "MLmodel").is_file():
        return None
    from mlflow.models import Model

    try:
        example = Model.load(str(directory)).load_input_example(str(directory))
    except Exception:  # noqa: BLE001  (an unreadable example only means there is none to check with)
        return None
    if not isinstance(example, Mapping):
        return None
    try:
        return {str(k): np.asarray(v, dtype=np.float32) for k, v in example.items()}
    except (TypeError, ValueError):
        return None


def registry_version(uri: str) -> tuple[str | None, str | None]:
    """(registered model name, version) for a ``models:/`` URI, asking the registry to resolve aliases."""
    match = _REGISTRY_URI.match(uri)
    if not match:
        return None, None
    from mlflow import MlflowClient

    name, alias, version = match.group("name"), match.group("alias"), match.group("version")
    client = MlflowClient()
    if alias is not None:
        return name, str(client.get_model_version_by_alias(name, alias).version)
    if version is not None and version.isdigit():
        return name, version
    return name, None


def load_model_bytes(model: str | os.PathLike[str]) -> tuple[bytes, ModelSource]:
    """The ONNX bytes behind a model reference: an ``.onnx`` file, an MLflow model directory, or an MLflow URI.

    MLflow URIs (``models:/wtag@champion``, ``runs:/<id>/model``, ...) are downloaded into a temporary folder
    that is removed once the bytes are read; the tracking server is MLflow's configured one. The source's
    ``sha256`` is that of the ONNX file as stored.
    """
    text = os.fspath(model)
    local = Path(text)
    if local.is_file() or local.is_dir():
        path = local if local.is_file() else _onnx_file_in(local)
        data, digest = _read_model(path)
        return data, ModelSource(uri=text, path=str(path.resolve()), sha256=digest,
                                 example=None if local.is_file() else _input_example(local))
    if "://" not in text and not text.startswith(("models:/", "runs:/")):
        raise WtagError(f"model '{text}': no such file, directory or MLflow model URI")
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        name, version = registry_version(text)
        with tempfile.TemporaryDirectory(prefix="wtag-model-") as tmp:
            downloaded = Path(mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=tmp))
            path = downloaded if downloaded.is_file() else _onnx_file_in(downloaded)
            data, digest = _read_model(path)
            example = None if downloaded.is_file() else _input_example(downloaded)
    except MlflowException as exc:
        raise WtagError(f"model '{text}': cannot fetch it from MLflow ({exc.message.splitlines()[0]})") from None
    except OSError as exc:
        raise WtagError(f"model '{text}': cannot fetch it from MLflow ({type(exc).__name__}: {exc})") from None
    return data, ModelSource(uri=text, registered_name=name, version=version, sha256=digest, example=example)


def _dim(value: object) -> int | None:
    return value if isinstance(value, int) and value > 0 else None


def bytes_per_jet(model: onnx.ModelProto) -> int:
    """Memory one jet costs a run, from the graph: the bytes of every tensor with a batch axis first and fixed
    other dimensions (ONNX shape inference), as if none were freed during the run. ONNX Runtime reuses
    buffers, so this bounds the real figure from above; pair features (N, P, P, C) dominate where present."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001  (a graph shape inference cannot follow is costed by its inputs alone)
        inferred = model
    graph = inferred.graph
    total = 0
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        dims = tensor.shape.dim
        if not dims or dims[0].HasField("dim_value") or any(not d.HasField("dim_value") for d in dims[1:]):
            continue
        itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).itemsize \
            if tensor.elem_type else 4
        total += itemsize * int(np.prod([d.dim_value for d in dims[1:]], dtype=np.int64))
    return max(total, 4)


# Row counts a padded batch is rounded up to: powers of two from 64, then multiples of 4096.
MIN_BUCKET = 64
LARGE_BUCKET = 4096


def bucket_rows(n: int, max_batch: int) -> int:
    """Rows to pad a batch of ``n`` to, so a server sees a handful of batch shapes instead of every size.

    On CUDA each change of input shape re-plans the cuDNN convolutions (about 4 ms per call for the CNN on an
    H200, against 0.2 ms for a repeated shape); padding small batches to 64 rows is nearly free on a GPU.
    """
    if n >= max_batch:
        return n
    bucket = MIN_BUCKET
    while bucket < n and bucket < LARGE_BUCKET:
        bucket *= 2
    if bucket < n:
        bucket = -(-n // LARGE_BUCKET) * LARGE_BUCKET
    return min(bucket, max_batch)


class OnnxTagger:
    """An exported tagger ready to score: the session, its metadata, and strict checks on what it is fed.

    ``pad_batches`` (default: on when the session runs on CUDA) rounds each run up to :func:`bucket_rows`
    rows with zero rows whose scores are dropped; every tagger scores rows independently.
    """

    def __init__(self, model: str | os.PathLike[str] | bytes, device: str = "auto",
                 max_batch: int = DEFAULT_MAX_BATCH, intra_op_threads: int | None = None,
                 pad_batches: bool | None = None) -> None:
        if max_batch < 1:
            raise WtagError(f"max_batch must be >= 1, got {max_batch}")
        if isinstance(model, (bytes, bytearray)):
            data, self.source = bytes(model), ModelSource(uri="<bytes>")
        else:
            data, self.source = load_model_bytes(model)
        self.sha256 = self.source.sha256 or hashlib.sha256(data).hexdigest()
        self.max_batch = max_batch
        self.session = create_session(data, device=device, intra_op_threads=intra_op_threads)
        self.providers = tuple(self.session.get_providers())
        self.provider = self.providers[0]
        self.pad_batches = self.provider == CUDA_PROVIDER if pad_batches is None else pad_batches
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.inputs = tuple(i.name for i in self.session.get_inputs())
        self.input_shapes = {i.name: tuple(_dim(d) for d in i.shape) for i in self.session.get_inputs()}
        self._check_graph()
        self.tagger = self.metadata.get(schema.Meta.TAGGER)
        self.hl_features = tuple(self._metadata_json(schema.Meta.HL_FEATURES, list(schema.HL_FEATURES)))
        self.particle_features = tuple(self._metadata_json(schema.Meta.PARTICLE_FEATURES,
                                                           list(schema.PARTICLE_FEATURES)))
        self.max_particles = int(self._metadata_json(schema.Meta.MAX_PARTICLES, schema.MAX_PARTICLES))
        declared = self.metadata.get(schema.Meta.BYTES_PER_JET, "")
        self.bytes_per_jet = int(declared) if declared.isdigit() and int(declared) > 0 else \
            bytes_per_jet(onnx.load_model_from_string(data))
        if schema.INPUT_PARTICLES in self.input_shapes:
            graph_particles = self.input_shapes[schema.INPUT_PARTICLES][1]
            if graph_particles is not None:
                self.max_particles = graph_particles

    def _metadata_json(self, key: str, default: object) -> object:
        if key not in self.metadata:
            return default
        try:
            return json.loads(self.metadata[key])
        except json.JSONDecodeError:
            raise WtagError(f"model {self.source.uri}: metadata '{key}' is not JSON: "
                            f"{self.metadata[key][:80]!r}") from None

    def _check_graph(self) -> None:
        """The model contract: float32 inputs with a batch axis first, and a float32 output named 'score'."""
        where = f"model {self.source.uri}"
        for i in self.session.get_inputs():
            if i.type != "tensor(float)":
                raise WtagError(f"{where}: input '{i.name}' has type {i.type}, expected tensor(float)")
            if not i.shape:
                raise WtagError(f"{where}: input '{i.name}' is a scalar, expected a batch axis")
        outputs = {o.name: o for o in self.session.get_outputs()}
        if schema.OUTPUT_SCORE not in outputs:
            raise WtagError(f"{where}: no output named '{schema.OUTPUT_SCORE}' (outputs: {', '.join(outputs)})")
        if outputs[schema.OUTPUT_SCORE].type != "tensor(float)":
            raise WtagError(f"{where}: output '{schema.OUTPUT_SCORE}' has type "
                            f"{outputs[schema.OUTPUT_SCORE].type}, expected tensor(float)")
        declared = self.metadata.get(schema.Meta.INPUTS)
        if declared is not None:
            try:
                names = json.loads(declared)
            except json.JSONDecodeError:
                names = declared
            if sorted(names) != sorted(self.inputs):
                raise WtagError(f"{where}: metadata {schema.Meta.INPUTS} {declared} does not match the graph inputs "
                                f"{list(self.inputs)}")

    @property
    def version(self) -> str:
        """The registry version when loaded from the registry, else "1" (the KServe protocol needs one)."""
        return self.source.version or "1"

    def describe(self) -> dict[str, object]:
        """What is being served, for the metadata endpoint: URI, registry version and sha256, no local paths."""
        return {
            "uri": self.source.public_uri,
            "registered_model": self.source.registered_name,
            "version": self.source.version,
            "sha256": self.sha256,
            "provider": self.provider,
            "providers": list(self.providers),
            "tagger": self.tagger,
            "inputs": {name: [d if d is not None else -1 for d in shape]
                       for name, shape in self.input_shapes.items()},
            "output": schema.OUTPUT_SCORE,
            "hl_features": list(self.hl_features),
            "particle_features": list(self.particle_features),
            "max_particles": self.max_particles,
            "bytes_per_jet": self.bytes_per_jet,
            "metadata": self.metadata,
        }

    def validate(self, inputs: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Float32 C-contiguous arrays for exactly the model's inputs, or a WtagError naming what is wrong.

        Checks names, shapes against the graph, numeric dtypes, one shared non-zero batch size, finite values.
        """
        if not isinstance(inputs, Mapping):
            raise WtagError(f"inputs must map input names to arrays, got {type(inputs).__name__}")
        missing = [n for n in self.inputs if n not in inputs]
        extra = [str(n) for n in inputs if n not in self.inputs]
        if missing or extra:
            parts = ([f"missing {', '.join(repr(n) for n in missing)}"] if missing else []) + \
                    ([f"unexpected {', '.join(repr(n) for n in extra)}"] if extra else [])
            raise WtagError(f"model inputs are {', '.join(repr(n) for n in self.inputs)}: {'; '.join(parts)}")
        out: dict[str, np.ndarray] = {}
        batch: int | None = None
        for name in self.inputs:
            arr = _as_float32(name, inputs[name])
            want = self.input_shapes[name]
            shape_text = "(" + ", ".join("N" if i == 0 else ("?" if d is None else str(d))
                                         for i, d in enumerate(want)) + ")"
            if arr.ndim != len(want) or any(d is not None and d != a for d, a in zip(want[1:], arr.shape[1:])):
                raise WtagError(f"input '{name}' has shape {tuple(arr.shape)}, expected {shape_text}")
            if arr.shape[0] == 0:
                raise WtagError(f"input '{name}' is an empty batch (0 rows)")
            if batch is not None and arr.shape[0] != batch:
                raise WtagError(f"input '{name}' has {arr.shape[0]} rows but '{self.inputs[0]}' has {batch}")
            batch = arr.shape[0]
            finite = np.isfinite(arr)
            if not finite.all():
                row = int(np.argmin(finite.reshape(len(arr), -1).all(axis=1)))
                raise WtagError(f"input '{name}' has a NaN or infinite value (row {row})")
            out[name] = arr
        return out

    def run(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores (N,) float32 for inputs already checked by :meth:`validate`, in chunks of ``max_batch`` rows."""
        n = len(next(iter(inputs.values())))
        if n <= self.max_batch:
            return self._run_once(inputs)
        parts = [self._run_once({k: v[start:start + self.max_batch] for k, v in inputs.items()})
                 for start in range(0, n, self.max_batch)]
        return np.concatenate(parts)

    def _run_once(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(inputs.values())))
        rows = bucket_rows(n, self.max_batch) if self.pad_batches else n
        if rows > n:
            inputs = {k: np.concatenate([v, np.zeros((rows - n, *v.shape[1:]), v.dtype)]) for k, v in inputs.items()}
        (score,) = self.session.run([schema.OUTPUT_SCORE], dict(inputs))
        return np.asarray(score, dtype=np.float32).reshape(-1)[:n]

    def score(self, inputs: Mapping[str, object]) -> np.ndarray:
        """Validate raw model inputs and score them."""
        return self.run(self.validate(inputs))

    def jet_inputs(self, jets: ak.Array) -> dict[str, np.ndarray]:
        """Validated model inputs computed from canonical jets with the training feature code."""
        if len(jets) == 0:
            raise WtagError("no jets to score (empty batch)")
        self.check_feature_code()
        return self.validate(model_inputs(jets, self.inputs, max_particles=self.max_particles))

    def check_feature_code(self) -> None:
        """WtagError unless this code computes the features the model was trained on, in the same order."""
        if schema.INPUT_HL in self.inputs and self.hl_features != schema.HL_FEATURES:
            raise WtagError(f"model {self.source.uri} was trained on hl features {list(self.hl_features)}, "
                            f"but this code computes {list(schema.HL_FEATURES)}")
        if schema.INPUT_PARTICLES in self.inputs and self.particle_features != schema.PARTICLE_FEATURES:
            raise WtagError(f"model {self.source.uri} was trained on particle features "
                            f"{list(self.particle_features)}, but this code computes {list(schema.PARTICLE_FEATURES)}")

    def score_jets(self, jets: ak.Array) -> np.ndarray:
        """Scores for canonical jets (substructure fields filled in, e.g. by ``wtag.features.complete_jets``)."""
        return self.run(self.jet_inputs(jets))


def _as_float32(name: str, value: object) -> np.ndarray:
    """A float32 C-contiguous array from numbers, or a WtagError naming the input (no object arrays)."""
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise WtagError(f"input '{name}' is not a rectangular numeric array ({exc})") from None
    if arr.dtype.kind not in "iuf":
        raise WtagError(f"input '{name}' has dtype {arr.dtype}, expected numbers castable to float32")
    with np.errstate(over="ignore"):
        return np.ascontiguousarray(arr, dtype=np.float32)
