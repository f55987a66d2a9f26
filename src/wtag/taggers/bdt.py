"""Boosted decision trees (XGBoost) on the ten high-level jet features.

Trees need no standardization, so the model takes the raw ``hl`` columns as they are. Training uses the
pT-flattening weights for both the fit and the validation metrics, stops early on the validation log-loss,
and keeps only the trees up to the best round: the logged model, ``predict`` and the ONNX graph all hold
exactly those trees.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from wtag import schema
from wtag.dataset import Split, Standardization
from wtag.errors import WtagError
from wtag.taggers.base import EpochCallback, Tagger, TrainConfig

ONNX_OPSET = 15


class BDTTagger(Tagger):
    """XGBoost classifier (``hist`` trees). TrainConfig's ``seed`` and ``verbose`` apply; boosting rounds,
    shrinkage and early-stopping patience are this tagger's own hyper-parameters (epochs and learning rates of
    the neural networks do not translate to trees)."""

    name = "bdt"
    family = "tree"
    inputs = (schema.INPUT_HL,)
    flavor = "xgboost"
    # Boosting rounds stay large: early stopping on the validation log-loss picks the number that counts.
    search_space = {"max_depth": {"low": 3, "high": 10}, "eta": {"low": 0.02, "high": 0.3, "log": True},
                    "subsample": {"low": 0.5, "high": 1.0}, "colsample_bytree": {"low": 0.5, "high": 1.0},
                    "min_child_weight": {"low": 0.5, "high": 20.0, "log": True},
                    "reg_lambda": {"low": 0.1, "high": 10.0, "log": True}}
    param_attributes = {"eta": "learning_rate"}

    def __init__(self, config: TrainConfig, standardization: Standardization, *, n_estimators: int = 500,
                 max_depth: int = 6, learning_rate: float = 0.1, subsample: float = 0.8,
                 colsample_bytree: float = 0.8, min_child_weight: float = 1.0, reg_lambda: float = 1.0,
                 max_bin: int = 256, early_stopping_rounds: int = 20, n_jobs: int | None = None) -> None:
        super().__init__(config, standardization)
        if n_estimators < 1 or max_depth < 1 or early_stopping_rounds < 1:
            raise WtagError(f"bdt: n_estimators={n_estimators}, max_depth={max_depth} and "
                            f"early_stopping_rounds={early_stopping_rounds} must be positive")
        if not (0 < learning_rate <= 1 and 0 < subsample <= 1 and 0 < colsample_bytree <= 1):
            raise WtagError(f"bdt: learning_rate={learning_rate}, subsample={subsample} and "
                            f"colsample_bytree={colsample_bytree} must be in (0, 1]")
        if n_jobs is not None and n_jobs < 1:
            raise WtagError(f"bdt: n_jobs={n_jobs} must be a positive number of threads (or None for all cores)")
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.max_bin = max_bin
        self.early_stopping_rounds = early_stopping_rounds
        self.n_jobs = n_jobs if n_jobs is not None else (os.cpu_count() or 1)
        self.booster: Any = None
        self.best_iteration: int | None = None

    def hyperparameters(self) -> dict[str, Any]:
        """XGBoost's names; the shrinkage is logged as ``eta`` (XGBoost's own name for ``learning_rate``) so it
        cannot be mistaken for, or overwritten by, TrainConfig's ``learning_rate`` of the neural networks."""
        return {"n_estimators": self.n_estimators, "max_depth": self.max_depth, "eta": self.learning_rate,
                "subsample": self.subsample, "colsample_bytree": self.colsample_bytree,
                "min_child_weight": self.min_child_weight, "reg_lambda": self.reg_lambda, "max_bin": self.max_bin,
                "early_stopping_rounds": self.early_stopping_rounds, "tree_method": "hist",
                "objective": "binary:logistic", "n_jobs": self.n_jobs}

    def fit(self, train: Split, val: Split, on_epoch_end: EpochCallback | None = None) -> dict[str, list[float]]:
        """Boost until the weighted validation log-loss has not improved for ``early_stopping_rounds`` rounds.

        The history has one entry per boosting round (all rounds run, including the patience ones); the
        callback sees them after training, round by round.
        """
        import xgboost as xgb

        x_train = self._hl(train.inputs(self.inputs))
        x_val = self._hl(val.inputs(self.inputs))
        # XGBoost stops early on the LAST metric of the LAST eval set: logloss on validation.
        clf = xgb.XGBClassifier(
            n_estimators=self.n_estimators, max_depth=self.max_depth, learning_rate=self.learning_rate,
            subsample=self.subsample, colsample_bytree=self.colsample_bytree,
            min_child_weight=self.min_child_weight, reg_lambda=self.reg_lambda, max_bin=self.max_bin,
            tree_method="hist", objective="binary:logistic", eval_metric=["auc", "logloss"],
            early_stopping_rounds=self.early_stopping_rounds, random_state=self.config.seed, n_jobs=self.n_jobs,
            verbosity=0)
        clf.fit(x_train, train.label, sample_weight=train.weight,
                eval_set=[(x_train, train.label), (x_val, val.label)],
                sample_weight_eval_set=[train.weight, val.weight], verbose=self.config.verbose)
        self.best_iteration = int(clf.best_iteration)
        self.booster = clf.get_booster()[: self.best_iteration + 1]
        results = clf.evals_result()
        history = {"loss": [float(v) for v in results["validation_0"]["logloss"]],
                   "val_loss": [float(v) for v in results["validation_1"]["logloss"]],
                   "val_auc": [float(v) for v in results["validation_1"]["auc"]]}
        if on_epoch_end is not None:
            for epoch in range(len(history["loss"])):
                on_epoch_end(epoch, {key: values[epoch] for key, values in history.items()})
        return history

    def _hl(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        self.check_inputs(inputs)
        return np.ascontiguousarray(inputs[schema.INPUT_HL], dtype=np.float32)

    def _fitted(self) -> Any:
        if self.booster is None:
            raise WtagError("bdt tagger is not fitted yet (call fit or load_logged first)")
        return self.booster

    def predict(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        hl = self._hl(inputs)
        return np.asarray(self._fitted().inplace_predict(hl), dtype=np.float64).reshape(len(hl))

    def feature_importance(self) -> dict[str, float]:
        """Mean gain per split of each HL feature, normalised to sum to 1 (unused features: 0)."""
        gain = self._fitted().get_score(importance_type="gain")
        values = np.array([gain.get(f"f{i}", 0.0) for i in range(len(schema.HL_FEATURES))], dtype=np.float64)
        total = values.sum()
        return {name: float(v / total if total > 0 else 0.0) for name, v in zip(schema.HL_FEATURES, values)}

    def log_model(self, name: str, input_example: Mapping[str, np.ndarray]) -> Any:
        """The pruned Booster in MLflow's xgboost flavor; its pyfunc returns P(W) per jet.

        ``mlflow.pyfunc.load_model(uri).predict`` takes the raw hl ndarray (N, 10) or a DataFrame whose
        columns are HL_FEATURES in that order (MLflow's tensor signature turns it into the ndarray).
        """
        import mlflow
        from mlflow.models import ModelSignature
        from mlflow.types import Schema, TensorSpec

        example = self._hl(input_example)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(schema.HL_FEATURES)))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1,))]))
        return mlflow.xgboost.log_model(
            self._fitted(), name=name, signature=signature, input_example=example,
            pip_requirements=mlflow.xgboost.get_default_pip_requirements(),
            metadata={"hl_features": list(schema.HL_FEATURES), "best_iteration": self.best_iteration})

    @classmethod
    def load_logged(cls, model_uri: str, config: TrainConfig, standardization: Standardization) -> BDTTagger:
        import mlflow
        import xgboost as xgb

        model = mlflow.xgboost.load_model(model_uri)
        booster = model if isinstance(model, xgb.Booster) else model.get_booster()
        if booster.num_features() != len(schema.HL_FEATURES):
            raise WtagError(f"{model_uri}: model takes {booster.num_features()} features, "
                            f"expected {len(schema.HL_FEATURES)} (HL_FEATURES)")
        tagger = cls(config, standardization)
        tagger.booster = booster
        tagger.best_iteration = booster.num_boosted_rounds() - 1
        return tagger

    def to_onnx(self) -> Any:
        """onnxmltools' tree ensemble with its (label, probabilities) outputs replaced by one output "score".

        onnxmltools >= 1.13 reads XGBoost 3's bracketed ``base_score`` ("[4.2E-1]") itself, so the pruned
        Booster converts as it is.
        """
        import onnx
        from onnx import TensorProto, helper
        from onnxmltools import convert_xgboost
        from onnxmltools.convert.common.data_types import FloatTensorType

        n_features = len(schema.HL_FEATURES)
        model = convert_xgboost(self._fitted(), name="wtag_bdt",
                                initial_types=[(schema.INPUT_HL, FloatTensorType([None, n_features]))],
                                target_opset=ONNX_OPSET)
        graph = model.graph
        probabilities = next((o.name for o in graph.output if o.name == "probabilities"), None)
        if probabilities is None:
            raise WtagError(f"bdt: unexpected ONNX converter outputs {[o.name for o in graph.output]}")
        graph.initializer.append(helper.make_tensor("signal_column", TensorProto.INT64, [], [1]))
        graph.node.append(helper.make_node("Gather", [probabilities, "signal_column"], [schema.OUTPUT_SCORE],
                                           axis=1, name="take_signal_probability"))
        del graph.output[:]
        graph.output.append(helper.make_tensor_value_info(schema.OUTPUT_SCORE, TensorProto.FLOAT, ["N"]))
        batch = graph.input[0].type.tensor_type.shape.dim[0]
        batch.Clear()
        batch.dim_param = "N"
        opsets = {op.domain: op for op in model.opset_import}
        if "" not in opsets:
            model.opset_import.append(helper.make_opsetid("", ONNX_OPSET))
        elif opsets[""].version > ONNX_OPSET:
            raise WtagError(f"bdt: converter produced opset {opsets[''].version} > {ONNX_OPSET}")
        onnx.checker.check_model(model)
        return model
