"""What the closed-form taggers on the ``hl`` table (``cut``, ``ddt``) share: their fitted numbers travel as one
JSON file in an MLflow pyfunc model (no pickle; this package's source ships alongside), and their score is a
small float32 ONNX graph over raw ``hl``."""
from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from wtag import schema
from wtag.errors import WtagError

ONNX_OPSET = 13
# score function of a tagger: raw hl (N, len(HL_FEATURES)) and its fitted parameters -> scores (N,)
ScoreFn = Callable[[np.ndarray, Any], np.ndarray]


def log_params_model(name: str, stored: Mapping[str, Any], loader_module: str, params_file: str,
                     input_example: Mapping[str, np.ndarray]) -> Any:
    """Log ``stored`` as ``data/<params_file>`` of a pyfunc model loaded by ``loader_module._load_pyfunc``.

    ``mlflow.pyfunc.load_model(uri).predict`` takes the raw hl ndarray (N, 10) or a DataFrame whose columns are
    HL_FEATURES in that order (MLflow's tensor signature turns it into the ndarray).
    """
    import mlflow
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    import wtag

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(schema.HL_FEATURES)))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]))
    example = np.asarray(input_example[schema.INPUT_HL], dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / params_file
        path.write_text(json.dumps({**stored, "hl_features": list(schema.HL_FEATURES)}, indent=2))
        return mlflow.pyfunc.log_model(
            name=name, loader_module=loader_module, data_path=str(path), code_paths=[str(Path(wtag.__file__).parent)],
            signature=signature, input_example=example,
            pip_requirements=[f"mlflow=={mlflow.__version__}", f"numpy=={np.__version__}", f"pandas=={pd.__version__}"])


def read_logged_params(model_uri: str, params_file: str, what: str) -> dict[str, Any]:
    """The stored JSON of a model logged by :func:`log_params_model`; WtagError when it is another kind."""
    import mlflow

    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri)) / "data" / params_file
    if not path.is_file():
        raise WtagError(f"{model_uri}: not a {what} model (no data/{params_file})")
    return json.loads(path.read_text())


def hl_graph(nodes: list[Any], initializers: list[Any], graph_name: str) -> Any:
    """An opset-13 model with the contract's single input ``hl`` [N, 10] and output ``score`` [N]."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, graph_name,
        [helper.make_tensor_value_info(schema.INPUT_HL, TensorProto.FLOAT, ["N", len(schema.HL_FEATURES)])],
        [helper.make_tensor_value_info(schema.OUTPUT_SCORE, TensorProto.FLOAT, ["N"])],
        initializer=initializers)
    model = helper.make_model(graph, producer_name="wtag", opset_imports=[helper.make_opsetid("", ONNX_OPSET)])
    model.ir_version = 8
    return model


def scalar(name: str, value: float | int, integer: bool = False) -> Any:
    """A scalar ONNX initializer (float32, or int64 for Gather indices)."""
    from onnx import TensorProto, helper

    return helper.make_tensor(name, TensorProto.INT64 if integer else TensorProto.FLOAT, [], [value])


class ParamsPyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: scores raw hl arrays with the stored parameters."""

    def __init__(self, params: Any, score: ScoreFn, what: str) -> None:
        self.params, self.score, self.what = params, score, what

    def predict(self, model_input: Any, params: Mapping[str, Any] | None = None) -> np.ndarray:
        hl = np.asarray(getattr(model_input, "values", model_input), dtype=np.float32)
        if hl.ndim != 2 or hl.shape[1] != len(schema.HL_FEATURES):
            raise WtagError(f"{self.what} model: input has shape {hl.shape}, expected (N, {len(schema.HL_FEATURES)})")
        return self.score(hl, self.params).astype(np.float32)


def load_params_pyfunc(data_path: str, from_dict: Callable[[Mapping[str, Any]], Any], score: ScoreFn,
                       what: str) -> ParamsPyfunc:
    """A loader module's ``_load_pyfunc``: ``data_path`` is the logged parameters file."""
    try:
        stored = json.loads(Path(data_path).read_text())
    except (OSError, ValueError) as exc:
        raise WtagError(f"{data_path}: unreadable {what} parameters ({exc})") from None
    return ParamsPyfunc(from_dict(stored), score, what)
