"""Tests of the shared Keras machinery, and the contract every Keras tagger in the registry passes (one fixture
parametrized over the registry; the per-family modules test what is particular to each family)."""
from __future__ import annotations

import keras
import numpy as np
import pytest
from keras_helpers import (
    KERAS_TAGGERS,
    MLFLOW_WARNINGS,
    check_history,
    check_mlflow_roundtrip,
    check_onnx_parity,
    check_rejects_misshaped,
    check_scores,
    check_weights_change_loss,
    fit_spec,
    fitted,
    synthetic_split,
    tiny_config,
)
from sklearn.metrics import roc_auc_score

from wtag import schema
from wtag.dataset import Split, Standardization
from wtag.errors import WtagError
from wtag.taggers import build_tagger, tagger_class
from wtag.taggers.base import LR_FLOOR
from wtag.taggers.keras_common import (
    ONNX_BATCH_DIM,
    broadcast_add,
    learning_rate,
    set_threads,
    standardize,
    standardized_particles,
)

# ----------------------------------------------------------------------------------------------------------------
# Tests of keras_common itself
# ----------------------------------------------------------------------------------------------------------------

def test_standardize_layer_computes_z_scores() -> None:
    mean, std = [1.0, -2.0, 300.0], [0.5, 4.0, 100.0]
    x = np.array([[1.0, -2.0, 300.0], [2.0, 2.0, 100.0]], dtype=np.float32)
    out = keras.ops.convert_to_numpy(standardize(mean, std, "s")(x))
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.0], [2.0, 1.0, -2.0]], atol=1e-6)


def test_standardize_rejects_zero_std() -> None:
    with pytest.raises(WtagError, match="std > 0"):
        standardize([0.0, 1.0], [1.0, 0.0], "s")


def test_particle_mask_comes_from_raw_pt() -> None:
    """A row with pt == 0 is padding even if other features are non-zero; padded rows come out as zeros; standardized
    values are clipped to +-5."""
    n_feat = len(schema.PARTICLE_FEATURES)
    s = Standardization(particle_mean=tuple([5.0] * n_feat), particle_std=tuple([2.0] * n_feat))
    raw = keras.Input((schema.MAX_PARTICLES, n_feat))
    out, mask = standardized_particles(raw, s)
    model = keras.Model(raw, [out, mask])
    x = np.zeros((1, schema.MAX_PARTICLES, n_feat), dtype=np.float32)
    x[0, 0] = 9.0
    x[0, 0, 1] = 100.0  # 47.5 sigma: clipped to +5
    x[0, 0, 2] = -20.0  # -12.5 sigma: clipped to -5
    x[0, 1, 1:] = 3.0  # pt == 0: padding, whatever else is there
    values, flags = model.predict(x, verbose=0)
    assert flags[0, :3].tolist() == [True, False, False]
    np.testing.assert_allclose(values[0, 0, [0, 3]], 2.0)
    np.testing.assert_allclose(values[0, 0, 1:3], [5.0, -5.0])
    assert not values[0, 1:].any()


def test_history_and_epoch_callback_agree() -> None:
    train, val = synthetic_split(128, seed=1), synthetic_split(64, seed=2)
    tagger = build_tagger("dnn", tiny_config(epochs=3), Standardization.fit(train))
    seen: list[tuple[int, dict[str, float]]] = []
    history = tagger.fit(train, val, on_epoch_end=lambda epoch, logs: seen.append((epoch, dict(logs))))
    check_history(history, 3)
    assert [epoch for epoch, _ in seen] == [0, 1, 2]
    for epoch, logs in seen:
        assert set(logs) == {"loss", "val_loss", "val_auc"}
        assert all(isinstance(v, float) for v in logs.values())
        assert logs == {key: history[key][epoch] for key in logs}


def test_val_auc_is_the_weighted_validation_auc() -> None:
    """With one epoch nothing is restored, so the logged val_auc must match a recomputation."""
    train, val = synthetic_split(128, seed=1), synthetic_split(64, seed=2)
    tagger = build_tagger("dnn", tiny_config(epochs=1), Standardization.fit(train))
    history = tagger.fit(train, val)
    expected = roc_auc_score(val.label, tagger.predict(val.inputs()), sample_weight=val.weight)
    assert history["val_auc"][0] == pytest.approx(expected, abs=1e-6)


def test_early_stopping_stops_and_restores_the_best_epoch() -> None:
    """Validation labels are the inverse of training labels, so every epoch of learning makes val_loss
    worse: with patience 1 training must stop after the second epoch and keep the first epoch's weights."""
    train = synthetic_split(256, seed=1, separation=3.0)
    val = synthetic_split(128, seed=2, separation=3.0)
    val.label = 1 - val.label
    tagger = build_tagger("dnn", tiny_config(epochs=20, patience=1, learning_rate=1e-2),
                          Standardization.fit(train))
    history = tagger.fit(train, val)
    assert len(history["loss"]) == 2
    assert history["val_loss"][1] > history["val_loss"][0]
    scores = tagger.predict(val.inputs()).astype(np.float64)
    eps = 1e-7
    bce = -(val.label * np.log(scores + eps) + (1 - val.label) * np.log(1 - scores + eps))
    restored_loss = float(np.sum(val.weight * bce) / len(bce))
    assert restored_loss == pytest.approx(history["val_loss"][0], rel=1e-3)


def test_same_seed_same_history() -> None:
    histories = [fitted("dnn", epochs=2)[2] for _ in range(2)]
    assert histories[0] == histories[1]


def test_fit_rejects_one_class_validation_and_bad_labels() -> None:
    train, val = synthetic_split(64, seed=1), synthetic_split(32, seed=2)
    tagger = build_tagger("dnn", tiny_config(), Standardization.fit(train))
    one_class = val.subset(np.flatnonzero(val.label == 0))
    with pytest.raises(WtagError, match="validation split.*both signal and background"):
        tagger.fit(train, one_class)
    train.label = train.label.copy()
    train.label[0] = -1
    with pytest.raises(WtagError, match="training split.*labels 0 or 1"):
        tagger.fit(train, val)


def test_cosine_schedule_anneals_from_the_rate_to_its_floor() -> None:
    schedule = learning_rate(tiny_config(learning_rate=2e-3, lr_schedule="cosine"), steps=100)
    assert float(schedule(0)) == pytest.approx(2e-3)
    assert float(schedule(50)) == pytest.approx(2e-3 * (LR_FLOOR + (1 - LR_FLOOR) / 2), rel=1e-5)
    assert float(schedule(100)) == pytest.approx(2e-3 * LR_FLOOR)
    assert learning_rate(tiny_config(learning_rate=2e-3), steps=100) == 2e-3


def test_fit_follows_the_schedule() -> None:
    """Same seed, same data: only the learning rate of the later steps differs, so the first epoch's updates
    mostly agree and the histories still differ."""
    constant, cosine = (fitted("dnn", epochs=3, lr_schedule=s)[2] for s in ("constant", "cosine"))
    assert constant["loss"] != cosine["loss"]
    assert all(np.isfinite(cosine["loss"]))


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": 0}, {"learning_rate": -1.0}, {"patience": -1},
                                 {"lr_schedule": "linear"}])
def test_fit_rejects_bad_training_parameters(bad: dict) -> None:
    train, val = synthetic_split(16, seed=1), synthetic_split(8, seed=2)
    tagger = build_tagger("dnn", tiny_config(**bad), Standardization.fit(train))
    (key,) = bad
    with pytest.raises(WtagError, match=f"{key}="):
        tagger.fit(train, val)


def test_fit_needs_the_input_and_its_standardization() -> None:
    train, val = synthetic_split(64, seed=1), synthetic_split(32, seed=2)
    no_hl = Split(label=train.label, weight=train.weight, msd=train.msd, pt=train.pt, images=train.images)
    with pytest.raises(WtagError, match="no 'hl' input"):
        build_tagger("dnn", tiny_config(), Standardization.fit(train)).fit(no_hl, val)
    with pytest.raises(WtagError, match="hl_mean"):
        build_tagger("dnn", tiny_config(), Standardization(image_scale=1.0)).fit(train, val)


def test_predict_and_export_need_a_model() -> None:
    tagger = build_tagger("dnn", tiny_config(), Standardization.fit(synthetic_split(8, seed=1)))
    with pytest.raises(WtagError, match="no model yet"):
        tagger.predict({"hl": np.zeros((2, len(schema.HL_FEATURES)), np.float32)})
    with pytest.raises(WtagError, match="no model yet"):
        tagger.to_onnx()


def test_predict_on_no_jets_is_empty() -> None:
    tagger, _, _ = fitted("dnn", epochs=1)
    scores = tagger.predict({"hl": np.zeros((0, len(schema.HL_FEATURES)), np.float32)})
    assert scores.shape == (0,)


def test_onnx_graph_contract() -> None:
    """Raw input named as the tagger's input, batch axis 'N', one 1-D float32 output 'score'."""
    import onnx

    tagger, _, _ = fitted("dnn", epochs=1)
    proto = tagger.to_onnx()
    (graph_input,) = proto.graph.input
    (graph_output,) = proto.graph.output
    assert graph_input.name == "hl"
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [ONNX_BATCH_DIM, 10]
    assert graph_output.name == "score"
    assert graph_output.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim] == [ONNX_BATCH_DIM]
    assert 13 <= max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) <= 17


@MLFLOW_WARNINGS
def test_load_logged_refuses_another_taggers_model(mlflow_experiment: str) -> None:
    import mlflow

    tagger, val, _ = fitted("dnn", epochs=1)
    with mlflow.start_run(experiment_id=mlflow_experiment):
        info = tagger.log_model("model", val.inputs(["hl"]))
    with pytest.raises(WtagError, match="do not fit tagger 'pfn'"):
        tagger_class("pfn").load_logged(info.model_uri, tiny_config(), tagger.standardization)


def test_set_threads_reports_when_too_late() -> None:
    keras.ops.convert_to_numpy(keras.ops.add(1.0, 1.0))
    assert set_threads(2, 2) is False


def test_the_registry_holds_the_keras_families() -> None:
    assert {"dnn", "cnn_tutorial", "cnn", "lstm", "bilstm", "pfn", "particlenet", "part"} <= set(KERAS_TAGGERS)


def _modules(config: object) -> set[str]:
    """Every 'module' named anywhere in a serialized Keras config."""
    if isinstance(config, dict):
        found = {config["module"]} if isinstance(config.get("module"), str) else set()
        return found.union(*(_modules(v) for v in config.values()))
    if isinstance(config, (list, tuple)):
        return set().union(*(_modules(v) for v in config))
    return set()


@pytest.mark.parametrize("name", KERAS_TAGGERS)
def test_graph_uses_only_builtin_keras_objects(name: str) -> None:
    """No custom layers or Lambdas: the logged model loads wherever Keras is installed, without wtag."""
    tagger = build_tagger(name, tiny_config(), Standardization.fit(synthetic_split(16, seed=1)))
    modules = _modules(tagger._build()[1].get_config())
    assert modules, "no modules found: the config format changed"
    assert all(m == "keras" or m.startswith("keras.") for m in modules), modules


@pytest.mark.parametrize("name", KERAS_TAGGERS)
def test_hyperparameters_are_loggable(name: str) -> None:
    params = build_tagger(name, tiny_config(), Standardization()).hyperparameters()
    assert params["architecture"] in (name, "dense")
    assert all(isinstance(v, (str, int, float)) for v in params.values()), params


# ----------------------------------------------------------------------------------------------------------------
# The contract every Keras tagger in the registry passes
# ----------------------------------------------------------------------------------------------------------------

@pytest.fixture(params=KERAS_TAGGERS)
def trained(request: pytest.FixtureRequest, keras_trained) -> tuple:
    return keras_trained(request.param)


@pytest.mark.slow
def test_trains_and_scores(trained: tuple) -> None:
    tagger, val, history = trained
    check_history(history, fit_spec(tagger.name).epochs)
    check_scores(tagger, val)


# KerasTagger.fit is one method for every Keras tagger: the weights reach the loss the same way whatever the graph
# (always an (N, 1) output), and the one fork is whether training runs through XLA. One tagger per path proves it
# for all of them; two fits of ParT alone took 106 s of XLA compilation.
TRAINING_PATHS = tuple({tagger_class(n).xla_from_jet_epochs is not None: n
                        for n in reversed(KERAS_TAGGERS)}.values())


def test_the_training_paths_are_plain_and_xla() -> None:
    assert sorted(tagger_class(n).xla_from_jet_epochs is not None for n in TRAINING_PATHS) == [False, True]


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINING_PATHS)
def test_weights_change_the_loss(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    xla = tagger_class(name).xla_from_jet_epochs is not None
    if xla:  # these few jets are below the break-even: take the XLA path anyway
        monkeypatch.setattr(tagger_class(name), "xla_from_jet_epochs", 1)
    for tagger in check_weights_change_loss(name):
        assert tagger.trained_with_xla is xla
        assert tagger.fit_metrics() == {"trained_with_xla": float(xla)}


@pytest.mark.slow
@pytest.mark.parametrize("epoch_metric", ["val_loss", "val_auc"])
def test_the_kept_epoch_is_the_best_by_the_epoch_metric(epoch_metric: str) -> None:
    tagger, val, history = fitted("dnn", n_train=400, n_val=300, epochs=5, patience=5, learning_rate=0.05,
                                  epoch_metric=epoch_metric)
    best = int(np.argmin(history["val_loss"]) if epoch_metric == "val_loss" else np.argmax(history["val_auc"]))
    scores = tagger.predict(val.inputs(tagger.inputs))
    assert roc_auc_score(val.label, scores, sample_weight=val.weight) == pytest.approx(history["val_auc"][best],
                                                                                         abs=1e-6)
    assert tagger.hyperparameters()["early_stopping"] == epoch_metric


def test_an_unknown_epoch_metric_is_refused_before_training() -> None:
    train = synthetic_split(32, seed=1)
    tagger = build_tagger("dnn", tiny_config(epoch_metric="val_acc"), Standardization.fit(train))
    with pytest.raises(WtagError, match=r"epoch_metric=val_acc .* epoch_metric one of val_loss, val_auc"):
        tagger.fit(train, synthetic_split(16, seed=2))


@pytest.mark.parametrize("name", [n for n in KERAS_TAGGERS if tagger_class(n).xla_from_jet_epochs is not None])
def test_xla_only_from_the_work_that_repays_its_compilation(name: str) -> None:
    threshold = tagger_class(name).xla_from_jet_epochs
    tagger = build_tagger(name, tiny_config(epochs=10), Standardization())
    assert not tagger.uses_xla(threshold // 10 - 1)
    assert tagger.uses_xla(threshold // 10 + 1)
    assert tagger.hyperparameters()["xla"] == f"from {threshold} jet-epochs"


def test_convolutional_taggers_never_use_xla() -> None:
    for name in ("cnn", "cnn_tutorial"):
        tagger = build_tagger(name, tiny_config(epochs=1000), Standardization())
        assert not tagger.uses_xla(10**9) and tagger.hyperparameters()["xla"] == "off"


@pytest.mark.slow
def test_rejects_misshaped_input(trained: tuple) -> None:
    check_rejects_misshaped(trained[0])


@pytest.mark.slow
@MLFLOW_WARNINGS
def test_mlflow_log_pyfunc_and_load_logged(trained: tuple, mlflow_experiment: str) -> None:
    tagger, val, _ = trained
    check_mlflow_roundtrip(tagger, val, mlflow_experiment)


@pytest.mark.slow
def test_onnx_parity(trained: tuple) -> None:
    tagger, val, _ = trained
    assert check_onnx_parity(tagger, val) <= 1e-4


# ----------------------------------------------------------------------------------------------------------------
# What every particle-set tagger (family "particle") promises: the jet is a set of real particles
# ----------------------------------------------------------------------------------------------------------------

PARTICLE_SET_TAGGERS = tuple(name for name in KERAS_TAGGERS if tagger_class(name).family == "particle")


@pytest.fixture(params=PARTICLE_SET_TAGGERS)
def trained_set(request: pytest.FixtureRequest, keras_trained) -> tuple:
    return keras_trained(request.param)


# Every tagger that reads particle lists (the sets and the recurrent sequences) finds padding by raw pT == 0.
PARTICLE_LIST_TAGGERS = tuple(name for name in KERAS_TAGGERS if tagger_class(name).inputs == (schema.INPUT_PARTICLES,))


@pytest.fixture(params=PARTICLE_LIST_TAGGERS)
def trained_list(request: pytest.FixtureRequest, keras_trained) -> tuple:
    return keras_trained(request.param)


def test_the_particle_families_have_their_members() -> None:
    assert set(PARTICLE_SET_TAGGERS) >= {"pfn", "particlenet", "part"}
    assert set(PARTICLE_LIST_TAGGERS) >= set(PARTICLE_SET_TAGGERS) | {"lstm", "bilstm"}


@pytest.mark.slow
def test_permutation_invariant(trained_set: tuple) -> None:
    """Shuffling the real particles (and moving padding anywhere) leaves the score unchanged."""
    tagger, val, _ = trained_set
    particles = val.particles[:64]
    shuffled = particles[:, np.random.default_rng(0).permutation(schema.MAX_PARTICLES)]
    np.testing.assert_allclose(tagger.predict({"particles": shuffled}), tagger.predict({"particles": particles}),
                               atol=1e-5)


@pytest.mark.slow
def test_padded_rows_are_ignored(trained_list: tuple) -> None:
    """Padding is whatever has raw pT 0: random junk in its other features changes no score."""
    tagger, val, _ = trained_list
    particles = val.particles[:64].copy()
    real = particles[..., schema.PARTICLE_PT] > 0
    assert (~real).any()
    junk = particles.copy()
    junk[~real] = np.random.default_rng(1).normal(size=(int((~real).sum()), len(schema.PARTICLE_FEATURES)))
    junk[~real, schema.PARTICLE_PT] = 0.0
    np.testing.assert_allclose(tagger.predict({"particles": junk}), tagger.predict({"particles": particles}),
                               atol=1e-6)


@pytest.mark.slow
def test_jets_with_one_or_no_particles_score_finitely(trained_set: tuple) -> None:
    """Fewer particles than neighbours / heads need; even an all-padding row must not produce NaN."""
    tagger, val, _ = trained_set
    particles = np.zeros((3, schema.MAX_PARTICLES, len(schema.PARTICLE_FEATURES)), np.float32)
    particles[0, :1] = val.particles[0, :1]
    particles[1, :2] = val.particles[1, :2]
    scores = tagger.predict({"particles": particles})
    assert np.all(np.isfinite(scores)) and np.all((scores >= 0) & (scores <= 1))


@pytest.mark.parametrize(("a", "b"), [((1, 4, 1), (1, 1, 4)), ((4, 4, 7), (4, 1, 1)), ((7, 4, 7), (7, 1, 1)),
                                      ((3, 2, 1, 5), (3, 1, 1, 5))])
def test_broadcast_add_broadcasts_both_operands(a: tuple, b: tuple) -> None:
    """Where Keras' ``+`` takes its bias-add shortcut (the first three: wrong shape or axis) and where it does not,
    broadcast_add is NumPy's ``+``."""
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=a).astype(np.float32), rng.normal(size=b).astype(np.float32)
    in1, in2 = keras.Input(a[1:]), keras.Input(b[1:])
    model = keras.Model([in1, in2], broadcast_add(in1, in2))
    np.testing.assert_allclose(model.predict([x1, x2], batch_size=len(x1), verbose=0), x1 + x2, atol=1e-6)


def test_aux_loss_adds_the_weighted_mean_squared_error() -> None:
    """TaggerLoss with aux_weight: cross-entropy on column 0 plus w-weighted MSE of the auxiliary columns."""
    from wtag.taggers.keras_common import TaggerLoss, pack_targets

    rng = np.random.default_rng(3)
    label = (rng.random(64) < 0.5).astype(np.float32)
    prob = rng.uniform(0.05, 0.95, size=(64, 1)).astype(np.float32)
    aux_true, aux_pred = rng.normal(size=(64, 3)), rng.normal(size=(64, 3)).astype(np.float32)
    w = rng.uniform(0.5, 2.0, 64).astype(np.float32)
    packed = pack_targets(label, rng.uniform(20, 200, 64), w, aux_true)
    assert packed.shape == (64, 6)
    plain = float(keras.losses.BinaryCrossentropy()(label.reshape(-1, 1), prob, sample_weight=w))
    mse = float(np.sum(w * np.mean((aux_pred - aux_true) ** 2, axis=1)) / 64)
    got = float(TaggerLoss(0.0, aux_weight=0.5)(packed, np.concatenate([prob, aux_pred], axis=1)))
    assert got == pytest.approx(plain + 0.5 * mse, rel=1e-5)


def test_aux_head_trains_but_never_reaches_the_scoring_model() -> None:
    """pfn with aux_weight: the training model also regresses (msd, tau21, log N) from the last hidden layer; the
    scoring model, its scores and its ONNX graph are the plain tagger's (one output, parity)."""
    train, val = synthetic_split(160, seed=1), synthetic_split(300, seed=2)
    tagger = build_tagger("pfn", tiny_config(aux_weight=1.0), Standardization.fit(train))
    train_model, score_model = tagger._build()
    assert tuple(train_model.output.shape) == (None, 4)
    assert "aux_output" in {layer.name for layer in train_model.layers}
    assert not {"aux_hidden", "aux_output"} & {layer.name for layer in score_model.layers}
    history = tagger.fit(train, val)
    plain = build_tagger("pfn", tiny_config(), Standardization.fit(train)).fit(train, val)
    assert history["loss"][0] > plain["loss"][0]  # the regression's error is part of the loss
    assert np.isfinite(history["val_auc"]).all() and tagger.hyperparameters()["loss"] == "binary_crossentropy+aux"
    assert check_onnx_parity(tagger, val) <= 1e-4
    assert [o.name for o in tagger.to_onnx().graph.output] == [schema.OUTPUT_SCORE]
    assert len(tagger.model.outputs) == 1


def test_aux_weight_is_refused_where_the_targets_are_inputs(capsys: pytest.CaptureFixture[str]) -> None:
    from wtag.taggers.base import TrainConfig
    from wtag.training import training_plan

    train = synthetic_split(32, seed=1)
    with pytest.raises(WtagError, match="aux_weight: tagger 'dnn' reads the jet features"):
        build_tagger("dnn", tiny_config(aux_weight=1.0), Standardization.fit(train)).fit(train, train)
    with pytest.raises(WtagError, match=r"aux_weight=-1"):
        build_tagger("pfn", tiny_config(aux_weight=-1.0), Standardization.fit(train)).fit(train, train)
    plan = dict(training_plan(["bdt", "dnn", "pfn"], TrainConfig(aux_weight=0.3)))
    assert (plan["bdt"].aux_weight, plan["dnn"].aux_weight, plan["pfn"].aux_weight) == (0.0, 0.0, 0.3)
    assert "dnn: no auxiliary regression" in capsys.readouterr().err
    assert TrainConfig(aux_weight=0.3).params()["aux_weight"] == 0.3 and "aux_weight" not in TrainConfig().params()
