"""OnnxTagger: provider choice, loading from files / MLflow model dirs / the registry, validation, scoring."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto

from onnx_models import N_HL, N_PART, hl_model, hl_particles_model, random_jets
from wtag import schema
from wtag.errors import WtagError
from wtag.features import complete_jets, model_inputs
from wtag.inference import (
    CPU_PROVIDER,
    CUDA_PROVIDER,
    OnnxTagger,
    bucket_rows,
    create_session,
    cuda_device_count,
    load_model_bytes,
    select_providers,
)

# mlflow warns about its own type hints when mlflow.pyfunc is first imported (third-party, unavoidable).
MLFLOW_IMPORT_WARNING = pytest.mark.filterwarnings("ignore:.*Any type hint is inferred as AnyType:UserWarning")


@pytest.fixture
def hl_path(tmp_path: Path) -> Path:
    path = tmp_path / "hl.onnx"
    onnx.save(hl_model(), str(path))
    return path


def direct_scores(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=[CPU_PROVIDER])
    return session.run([schema.OUTPUT_SCORE], {k: np.asarray(v, dtype=np.float32) for k, v in inputs.items()})[0]


def test_select_providers() -> None:
    assert select_providers("cpu") == [CPU_PROVIDER]
    with pytest.raises(WtagError, match="device 'tpu' is not one of auto, cpu, cuda"):
        select_providers("tpu")
    if cuda_device_count() == 0:
        assert select_providers("auto") == [CPU_PROVIDER]
        with pytest.raises(WtagError, match="device 'cuda' requested"):
            select_providers("cuda")
    elif CUDA_PROVIDER in ort.get_available_providers():
        assert select_providers("auto") == [CUDA_PROVIDER, CPU_PROVIDER]


def test_create_session_reports_active_provider(hl_path: Path) -> None:
    session = create_session(hl_path, device="cpu")
    assert session.get_providers() == [CPU_PROVIDER]
    auto = create_session(hl_path.read_bytes(), device="auto")
    assert auto.get_providers()[-1] == CPU_PROVIDER
    with pytest.raises(WtagError, match="not a loadable ONNX model"):
        create_session(b"definitely not onnx")
    with pytest.raises(WtagError, match="intra_op_threads must be >= 1"):
        create_session(hl_path, intra_op_threads=0)


def test_tagger_from_file_reads_metadata_and_scores(hl_path: Path) -> None:
    tagger = OnnxTagger(hl_path)
    assert tagger.sha256 == hashlib.sha256(hl_path.read_bytes()).hexdigest()
    assert tagger.inputs == ("hl",)
    assert tagger.input_shapes == {"hl": (None, N_HL)}
    assert tagger.tagger == "dnn"
    assert tagger.hl_features == schema.HL_FEATURES
    assert tagger.provider == CPU_PROVIDER
    assert tagger.source.path == str(hl_path.resolve())
    assert tagger.version == "1"
    x = np.random.default_rng(5).normal(size=(37, N_HL))
    scores = tagger.score({"hl": x})
    assert scores.dtype == np.float32 and scores.shape == (37,)
    np.testing.assert_array_equal(scores, direct_scores(hl_path, {"hl": x}))
    assert np.ptp(scores) > 0.01
    described = tagger.describe()
    assert described["sha256"] == tagger.sha256 and described["inputs"] == {"hl": [-1, N_HL]}


def test_chunks_never_exceed_max_batch(hl_path: Path) -> None:
    runs: list[int] = []

    class Counting(OnnxTagger):
        def _run_once(self, inputs):  # type: ignore[no-untyped-def]
            runs.append(len(inputs["hl"]))
            return super()._run_once(inputs)

    x = np.random.default_rng(6).normal(size=(50, N_HL)).astype(np.float32)
    chunked = Counting(hl_path, max_batch=7).score({"hl": x})
    assert runs == [7] * 7 + [1]
    np.testing.assert_array_equal(chunked, direct_scores(hl_path, {"hl": x}))
    with pytest.raises(WtagError, match="max_batch must be >= 1"):
        OnnxTagger(hl_path, max_batch=0)


def test_bucket_rows_bounds_the_shapes_a_session_sees() -> None:
    assert [bucket_rows(n, 16384) for n in (1, 63, 64, 65, 1000, 4096, 4097, 10_000, 16_000)] == \
        [64, 64, 64, 128, 1024, 4096, 8192, 12288, 16384]
    assert bucket_rows(5, 7) == 7 and bucket_rows(7, 7) == 7 and bucket_rows(50, 7) == 50
    assert len({bucket_rows(n, 16384) for n in range(1, 16385)}) == 10


def test_padded_batches_score_like_unpadded(hl_path: Path) -> None:
    runs: list[int] = []

    class Recording(OnnxTagger):
        def _run_once(self, inputs):  # type: ignore[no-untyped-def]
            result = super()._run_once(inputs)
            runs.append(len(result))
            return result

    x = np.random.default_rng(11).normal(size=(300, N_HL)).astype(np.float32)
    tagger = Recording(hl_path, device="cpu", max_batch=200, pad_batches=True)
    assert tagger.pad_batches and not OnnxTagger(hl_path, device="cpu").pad_batches
    np.testing.assert_allclose(tagger.score({"hl": x}), direct_scores(hl_path, {"hl": x}), atol=1e-7)
    np.testing.assert_allclose(tagger.score({"hl": x[:3]}), direct_scores(hl_path, {"hl": x[:3]}), atol=1e-7)
    assert runs == [200, 100, 3]  # scores of the zero rows added up to 200, 128 and 64 rows are dropped


@pytest.mark.slow
@MLFLOW_IMPORT_WARNING
def test_tagger_from_bytes_and_mlflow_model_dir(hl_path: Path, tmp_path: Path) -> None:
    import mlflow.onnx

    model_dir = tmp_path / "mlflow_model"
    mlflow.onnx.save_model(onnx.load(str(hl_path)), str(model_dir))
    from_dir = OnnxTagger(model_dir)
    assert from_dir.sha256 == hashlib.sha256((model_dir / "model.onnx").read_bytes()).hexdigest()
    from_bytes = OnnxTagger(hl_path.read_bytes())
    x = np.random.default_rng(7).normal(size=(4, N_HL))
    np.testing.assert_array_equal(from_dir.score({"hl": x}), from_bytes.score({"hl": x}))
    assert from_bytes.source.uri == "<bytes>"


def test_tensors_stored_beside_the_model_are_loaded(tmp_path: Path) -> None:
    folder = tmp_path / "external"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save_model(hl_model(), str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    assert (folder / "weights.bin").stat().st_size > 0
    tagger = OnnxTagger(path)
    assert tagger.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    x = np.random.default_rng(4).normal(size=(3, N_HL))
    np.testing.assert_array_equal(tagger.score({"hl": x}), OnnxTagger(hl_model().SerializeToString()).score({"hl": x}))
    (folder / "weights.bin").unlink()
    with pytest.raises(WtagError, match="cannot load the tensors it stores in separate files"):
        OnnxTagger(path)


def _corrupt_file(folder: Path) -> Path:
    path = folder / "bad.onnx"
    path.write_bytes(b"\x08garbage")
    return path


@pytest.mark.parametrize("setup, message", [
    (lambda d: d / "missing.onnx", "no such file, directory or MLflow model URI"),
    (_corrupt_file, "not a loadable ONNX model"),
    (lambda d: d, "found 2 .onnx files"),
])
def test_unloadable_models_are_wtag_errors(hl_path: Path, tmp_path: Path, setup: Callable[[Path], Path],
                                           message: str) -> None:
    (tmp_path / "second.onnx").write_bytes(hl_path.read_bytes())
    with pytest.raises(WtagError, match=message):
        OnnxTagger(setup(tmp_path))


def test_models_breaking_the_contract_are_refused(tmp_path: Path) -> None:
    double = tmp_path / "double.onnx"
    onnx.save(hl_model(input_type=TensorProto.DOUBLE), str(double))
    with pytest.raises(WtagError, match="input 'hl' has type tensor\\(double\\), expected tensor\\(float\\)"):
        OnnxTagger(double)
    wrong_output = tmp_path / "prob.onnx"
    onnx.save(hl_model(output="probability"), str(wrong_output))
    with pytest.raises(WtagError, match="no output named 'score' \\(outputs: probability\\)"):
        OnnxTagger(wrong_output)
    lying = hl_model()
    for prop in lying.metadata_props:
        if prop.key == schema.Meta.INPUTS:
            prop.value = json.dumps(["images"])
    with pytest.raises(WtagError, match="metadata wtag.inputs .* does not match the graph inputs"):
        OnnxTagger(lying.SerializeToString())


@pytest.fixture
def two_input_tagger() -> OnnxTagger:
    return OnnxTagger(hl_particles_model().SerializeToString())


def _two_inputs(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(8)
    return {"hl": rng.normal(size=(n, N_HL)), "particles": rng.normal(size=(n, schema.MAX_PARTICLES, N_PART))}


@pytest.mark.parametrize("change, message", [
    (lambda x: {"hl": x["hl"]}, "missing 'particles'"),
    (lambda x: {**x, "images": x["hl"]}, "unexpected 'images'"),
    (lambda x: {**x, "hl": x["hl"][:, :9]}, r"input 'hl' has shape \(3, 9\), expected \(N, 10\)"),
    (lambda x: {**x, "hl": x["hl"][0]}, r"input 'hl' has shape \(10,\), expected \(N, 10\)"),
    (lambda x: {**x, "particles": x["particles"][:, :10]}, rf"expected \(N, 64, {N_PART}\)"),
    (lambda x: {**x, "hl": x["hl"].astype(str)}, "input 'hl' has dtype <U"),
    (lambda x: {**x, "hl": x["hl"] > 0}, "input 'hl' has dtype bool"),
    (lambda x: {**x, "hl": [[1.0] * 10, [1.0] * 9, [1.0] * 10]}, "input 'hl' is not a rectangular numeric array"),
    (lambda x: {**x, "hl": x["hl"][:0], "particles": x["particles"][:0]}, "input 'hl' is an empty batch"),
    (lambda x: {**x, "hl": x["hl"][:2]}, "input 'particles' has 3 rows but 'hl' has 2"),
    (lambda x: {**x, "hl": np.where(np.arange(10) == 4, np.nan, x["hl"])},
     r"'hl' has a NaN or infinite value \(row 0\)"),
    (lambda x: {**x, "particles": np.where(np.arange(3)[:, None, None] == 2, np.inf, x["particles"])},
     r"'particles' has a NaN or infinite value \(row 2\)"),
    (lambda x: {**x, "hl": x["hl"] * 1e300}, "'hl' has a NaN or infinite value"),
    (lambda x: [x["hl"]], "inputs must map input names to arrays, got list"),
])
def test_validate_names_the_problem(two_input_tagger: OnnxTagger, change: Callable[[dict], object],
                                    message: str) -> None:
    with pytest.raises(WtagError, match=message):
        two_input_tagger.validate(change(_two_inputs(3)))


def test_validate_casts_to_contiguous_float32(two_input_tagger: OnnxTagger) -> None:
    inputs = _two_inputs(5)
    inputs["hl"] = np.asfortranarray(inputs["hl"]).astype(np.int64)
    out = two_input_tagger.validate(inputs)
    assert out["hl"].dtype == np.float32 and out["hl"].flags.c_contiguous
    assert out["particles"].dtype == np.float32
    np.testing.assert_array_equal(out["hl"], inputs["hl"].astype(np.float32))


def test_score_jets_uses_the_training_feature_code(two_input_tagger: OnnxTagger) -> None:
    jets = random_jets(25)
    expected = model_inputs(complete_jets(jets), ["hl", "particles"], max_particles=schema.MAX_PARTICLES)
    session = two_input_tagger.session
    offline = session.run([schema.OUTPUT_SCORE], expected)[0]
    scores = two_input_tagger.score_jets(jets)
    np.testing.assert_array_equal(scores, offline)
    assert np.ptp(scores) > 0
    with pytest.raises(WtagError, match="no jets to score"):
        two_input_tagger.score_jets(jets[:0])
    older = hl_particles_model()
    for prop in older.metadata_props:
        if prop.key == schema.Meta.HL_FEATURES:
            prop.value = json.dumps(list(reversed(schema.HL_FEATURES)))
    with pytest.raises(WtagError, match="was trained on hl features"):
        OnnxTagger(older.SerializeToString()).score_jets(jets)


@pytest.mark.slow
@MLFLOW_IMPORT_WARNING
def test_tagger_from_registry_alias(tracking_uri: str, hl_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_experiment("inference-test")
    with mlflow.start_run():
        info = mlflow.onnx.log_model(onnx.load(str(hl_path)), name="model", registered_model_name="wtag-test")
    client = MlflowClient()
    version = info.registered_model_version
    client.set_registered_model_alias("wtag-test", "champion", version)
    tagger = OnnxTagger("models:/wtag-test@champion")
    assert tagger.source.registered_name == "wtag-test"
    assert tagger.source.version == str(version) == tagger.version
    assert tagger.sha256 == hashlib.sha256(hl_path.read_bytes()).hexdigest()
    x = np.random.default_rng(9).normal(size=(6, N_HL))
    np.testing.assert_array_equal(tagger.score({"hl": x}), direct_scores(hl_path, {"hl": x}))
    with pytest.raises(WtagError, match="models:/wtag-test@nobody': cannot fetch it from MLflow"):
        load_model_bytes("models:/wtag-test@nobody")


@pytest.mark.gpu
def test_cuda_session_matches_cpu(hl_path: Path) -> None:
    if cuda_device_count() == 0:
        pytest.skip("no CUDA GPU visible")
    session = create_session(hl_path, device="auto")
    if CUDA_PROVIDER not in session.get_providers():
        pytest.skip("CUDA execution provider did not start on this machine")
    gpu = OnnxTagger(hl_path, device="cuda")
    assert gpu.provider == CUDA_PROVIDER and gpu.pad_batches
    x = np.random.default_rng(10).normal(size=(1000, N_HL))
    cpu = OnnxTagger(hl_path, device="cpu")
    np.testing.assert_allclose(gpu.score({"hl": x}), cpu.score({"hl": x}), atol=1e-6)
    np.testing.assert_allclose(gpu.score({"hl": x[:5]}), cpu.score({"hl": x[:5]}), atol=1e-6)
