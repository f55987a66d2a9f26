"""The DDT tagger: the fit recovers a known slope, the transform removes the QCD mass dependence that a tau21 cut
has, and numpy, pyfunc and ONNX agree."""
from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from wtag import metrics, schema
from wtag.dataset import Split, Standardization
from wtag.errors import WtagError
from wtag.taggers import TrainConfig, build_tagger
from wtag.taggers.ddt import MSD_INDEX, PT_INDEX, TAU21_INDEX, DDTTagger, ddt_scores, fit_profile, rho_prime

pytestmark = pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")

TRUE_SLOPE = -0.09


def ddt_split(n: int, seed: int) -> Split:
    """QCD: rho' uniform in [-2, 5]; mean tau21 0.80 + M clip(rho', 0, 3.5) (M = -0.09): flat outside the linear
    range, as the real profile is below rho' = 0.
    W: msd ~ N(80, 8), tau21 ~ N(0.30, 0.1). pT uniform in 200-500 GeV, other columns noise."""
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.4).astype(np.int64)
    pt = rng.uniform(200.0, 500.0, n)
    rho = rng.uniform(-2.0, 5.0, n)
    msd = np.where(label == 1, rng.normal(80.0, 8.0, n), np.sqrt(np.exp(rho) * pt))
    mean_qcd = 0.80 + TRUE_SLOPE * np.clip(rho, 0.0, 3.5)
    tau21 = np.clip(np.where(label == 1, rng.normal(0.30, 0.10, n), mean_qcd + rng.normal(0, 0.15, n)), 0.0, 1.5)
    hl = rng.normal(1.0, 0.3, size=(n, len(schema.HL_FEATURES)))
    hl[:, MSD_INDEX], hl[:, PT_INDEX], hl[:, TAU21_INDEX] = msd, pt, tau21
    return Split(label=label, weight=rng.uniform(0.5, 1.5, n).astype(np.float32), msd=msd, pt=pt,
                 hl=hl.astype(np.float32))


@pytest.fixture(scope="module")
def data() -> dict[str, Split]:
    return {"train": ddt_split(20_000, 1), "test": ddt_split(20_000, 3)}


@pytest.fixture(scope="module")
def fitted(data: dict[str, Split]) -> DDTTagger:
    tagger = build_tagger("ddt", TrainConfig(), Standardization.fit(data["train"]))
    assert isinstance(tagger, DDTTagger)
    assert tagger.fit(data["train"], data["train"]) == {}
    return tagger


def test_rho_prime() -> None:
    assert rho_prime(np.array([80.0]), np.array([320.0]))[0] == pytest.approx(np.log(6400.0 / 320.0))
    assert rho_prime(np.array([0.0]), np.array([400.0]))[0] == pytest.approx(-np.log(400.0))  # floored at 1 GeV


def test_fit_recovers_the_slope(fitted: DDTTagger) -> None:
    fit = fitted.fit_result
    assert fit is not None and (fit.rho_min, fit.rho_max) == (0.0, 3.5)
    assert fit.slope == pytest.approx(TRUE_SLOPE, abs=max(3 * fit.slope_err, 0.004))
    assert fit.slope_err < 0.003
    assert fit.intercept == pytest.approx(0.80, abs=0.01)
    assert (fitted.params.rho_min, fitted.params.rho_max) == (0.0, 3.5)
    assert 0.3 < fit.chi2_ndf < 3.0
    assert fitted.fit_metrics()["ddt_slope"] == fit.slope


def test_fit_profile_of_an_exact_line() -> None:
    rng = np.random.default_rng(4)
    rho = rng.uniform(-1.0, 4.0, 5000)
    tau = 0.7 - 0.05 * rho + rng.normal(0, 1e-3, 5000)
    fit = fit_profile(rho, tau, np.ones(5000), 0.0, 3.5, 0.25)
    assert fit.slope == pytest.approx(-0.05, abs=2e-4) and fit.intercept == pytest.approx(0.7, abs=5e-4)
    # the profile covers the whole populated range for the plot, the fit only [0, 3.5]
    assert fit.centres.min() < -0.5 and fit.centres.max() > 3.5


def test_fit_range_matters(data: dict[str, Split]) -> None:
    tagger = DDTTagger(TrainConfig(), Standardization.fit(data["train"]), rho_min=-2.0, rho_max=5.0)
    tagger.fit(data["train"], data["train"])
    assert tagger.fit_result is not None
    assert abs(tagger.fit_result.slope - TRUE_SLOPE) > 0.01  # the plateau pulls it
    assert tagger.fit_result.chi2_ndf > 5


def test_ddt_removes_the_sculpting_of_a_tau21_cut(fitted: DDTTagger, data: dict[str, Split]) -> None:
    test = data["test"]
    ddt = fitted.predict(test.inputs(("hl",)))
    plain = 1.0 - test.hl[:, TAU21_INDEX].astype(np.float64)
    sculpt_plain = metrics.mass_sculpting(test.msd, test.label, plain)
    sculpt_ddt = metrics.mass_sculpting(test.msd, test.label, ddt)
    assert sculpt_plain > 0.1
    assert sculpt_ddt < 0.2 * sculpt_plain, (sculpt_plain, sculpt_ddt)
    assert metrics.mass_decorrelation(test.msd, test.label, ddt) < 0.1


def test_score_is_a_monotone_map_without_mass_window(fitted: DDTTagger) -> None:
    p = fitted.params
    assert p is not None
    hl = np.ones((5, len(schema.HL_FEATURES)), dtype=np.float32)
    hl[:, PT_INDEX] = 300.0
    hl[:, MSD_INDEX] = [0.0, 10.0, 80.0, 200.0, 280.0]
    hl[:, TAU21_INDEX] = 0.2
    scores = ddt_scores(hl, p)
    assert np.all((scores > 0) & (scores < 1))
    # at fixed tau21, heavier jets have larger rho' and (M < 0) larger tau21': lower score (constant outside the
    # fit range, where rho' is clipped); no window anywhere
    assert np.all(np.diff(scores) <= 0) and scores[0] > scores[-1]
    assert scores[0] == scores[1]  # rho' = ln(0 -> 1 GeV floor ...) and ln(100/300) are both below rho_min
    assert scores[-1] > 0.5  # a very heavy, two-prong jet still passes: no mass window
    tau = np.linspace(0, 1, 50, dtype=np.float32)
    hl = np.repeat(hl[2:3], 50, axis=0)
    hl[:, TAU21_INDEX] = tau
    assert np.all(np.diff(ddt_scores(hl, p)) < 0)


def test_onnx_parity(fitted: DDTTagger, data: dict[str, Split]) -> None:
    hl = data["test"].hl[:3000].copy()
    hl[:5, MSD_INDEX] = 0.0  # groomed-away jets hit the floor
    session = ort.InferenceSession(fitted.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    (onnx_scores,) = session.run(None, {"hl": hl})
    assert onnx_scores.shape == (len(hl),) and onnx_scores.dtype == np.float32
    assert np.max(np.abs(onnx_scores - fitted.predict({"hl": hl}))) <= 1e-5
    assert [n.op_type for n in fitted.to_onnx().graph.node].count("Sigmoid") == 1


def test_mlflow_roundtrip(fitted: DDTTagger, data: dict[str, Split], tracking_uri: str, tmp_path: Path) -> None:
    import mlflow

    experiment = mlflow.create_experiment(f"test-ddt-{uuid.uuid4().hex[:12]}")
    inputs = {"hl": data["test"].hl[:20]}
    with mlflow.start_run(experiment_id=experiment):
        info = fitted.log_model("model", inputs)
    expected = fitted.predict(inputs)
    pyfunc = mlflow.pyfunc.load_model(info.model_uri)
    np.testing.assert_allclose(np.asarray(pyfunc.predict(inputs["hl"])), expected, atol=1e-6)
    loaded = DDTTagger.load_logged(info.model_uri, TrainConfig(), fitted.standardization)
    assert loaded.params == fitted.params
    fitted.diagnostic_plots(tmp_path, data["train"])
    assert (tmp_path / "ddt_fit.png").read_bytes()[:4] == b"\x89PNG"


def test_too_few_qcd_jets_fail_clearly(data: dict[str, Split]) -> None:
    small = data["train"].subset(np.arange(60))
    tagger = DDTTagger(TrainConfig(), Standardization.fit(small))
    with pytest.raises(WtagError, match="not fitted"):
        tagger.predict({"hl": small.hl})
    tagger.fit(small, small)  # too few jets for a profile: the line through the jets themselves
    assert tagger.fit_result is not None and np.isnan(tagger.fit_result.chi2_ndf)
    assert tagger.fit_result.slope == pytest.approx(TRUE_SLOPE, abs=0.1)
    tiny = small.subset(np.flatnonzero(small.label == 1)[:3])
    tiny.label[:] = 0
    tiny.hl[:, MSD_INDEX] = 1.0  # rho' far below the fit range
    with pytest.raises(WtagError, match="fewer than 3 QCD training jets"):
        tagger.fit(tiny, tiny)
    with pytest.raises(WtagError, match="no QCD jets"):
        tagger.fit(small.subset(np.flatnonzero(small.label == 1)), small)


@pytest.mark.slow
def test_export_step_checks_contract_and_parity(tracking_server: str, tmp_path: Path) -> None:
    """The real export path: train the ddt through train(), export it (contract check, parity on the test set)."""
    import mlflow
    from synthetic import log_prepare_run, new_experiment, synthetic_dataset

    from wtag.onnx_export import export_step
    from wtag.training import train

    mlflow.set_tracking_uri(tracking_server)
    experiment_id = new_experiment("ddt-export")
    ds = synthetic_dataset(tmp_path / "ds", seed=9)
    log_prepare_run(ds)
    train(ds, "ddt", TrainConfig(n_bootstrap=20))
    (run,) = mlflow.search_runs([experiment_id], "tags.`wtag.tagger` = 'ddt'", output_format="list")
    export_run_id, version = export_step(experiment_id, run.info.run_id, register=False)
    exported = mlflow.get_run(export_run_id)
    assert exported.info.status == "FINISHED" and version == ""
    assert exported.data.metrics["onnx_max_abs_diff"] <= 1e-5 and exported.data.metrics["onnx_frac_diff"] == 0
