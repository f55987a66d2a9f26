"""Batch scoring (`wtag score`): real 2011A files and generated ROOT files, scheduler-independence, skips,
stale reuse, bad inputs among good ones and the MLflow record."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import awkward as ak
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import uproot
from onnx import TensorProto, helper, numpy_helper

from wtag import schema
from wtag.execution import ExecutionConfig
from wtag.features import model_inputs
from wtag.jets import read_jets
from wtag.schema import Artifact, EntryPoint, Tag
from wtag.scoring import ScoreConfig, plan_tasks, score_files
from wtag.sources.cms_ntuple import read_cms_ntuple

from conftest import REPO, mlflow_run

REAL_FILES = ("cms2011a_jet_pfcands_params0.npy", "cms2011a_jet_pfcands_params1.npy",
              "cms2011a_jet_pfcands_params2.npy")
N_HL = len(schema.HL_FEATURES)
N_PART = len(schema.PARTICLE_FEATURES)
SCORE_BRANCHES = schema.SCORES_ID_BRANCHES + schema.SCORES_JET_BRANCHES + ("score",)


def tagger_model(seed: int = 0) -> onnx.ModelProto:
    """A real two-input tagger graph: sigmoid(hl . w + sum over particles of particles . v + b)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.02, (N_HL, 1)).astype(np.float32)
    v = rng.normal(0, 0.02, (N_PART, 1)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["hl", "w"], ["a"]),
             helper.make_node("ReduceSum", ["particles", "axis1"], ["s"], keepdims=0),
             helper.make_node("MatMul", ["s", "v"], ["c"]), helper.make_node("Add", ["a", "c"], ["z"]),
             helper.make_node("Add", ["z", "b"], ["z1"]), helper.make_node("Sigmoid", ["z1"], ["p"]),
             helper.make_node("Reshape", ["p", "flat"], ["score"])]
    graph = helper.make_graph(
        nodes, "tagger",
        [helper.make_tensor_value_info("hl", TensorProto.FLOAT, ["N", N_HL]),
         helper.make_tensor_value_info("particles", TensorProto.FLOAT, ["N", schema.MAX_PARTICLES, N_PART])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(v, "v"),
         numpy_helper.from_array(np.array([-0.5], np.float32), "b"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1"),
         numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    for key, value in {"wtag.tagger": "test", "wtag.inputs": json.dumps(["hl", "particles"])}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    return model


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tagger.onnx"
    onnx.save(tagger_model(), str(path))
    return path


def reference_scores(model: Path, jets: ak.Array) -> np.ndarray:
    """ONNX Runtime itself on the training feature code's inputs for the same jets."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    inputs = model_inputs(jets, ("hl", "particles"))
    return session.run(["score"], inputs)[0]


def read_scores(path: Path) -> dict[str, np.ndarray]:
    with uproot.open(path) as f:
        return f[schema.SCORES_TREE].arrays(list(SCORE_BRANCHES), library="np")


def assert_same_scores(a: Path, b: Path) -> None:
    x, y = read_scores(a), read_scores(b)
    for name in SCORE_BRANCHES:
        np.testing.assert_array_equal(x[name], y[name], err_msg=f"{a.name}: {name}")


def score_in_process(model: Path, inputs: list[Path], output: Path, **kwargs: object):
    config = ScoreConfig(model=str(model), inputs=tuple(str(p) for p in inputs), output=str(output), **kwargs)
    return score_files(config, ExecutionConfig(workers=1), progress=False)


def test_real_2011a_files_are_scored_aligned_with_their_jets(model_path: Path, shared_data: Path,
                                                             tmp_path: Path) -> None:
    files = [shared_data / name for name in REAL_FILES]
    summary = score_in_process(model_path, files, tmp_path)
    assert summary.failures == [] and summary.jets == 773
    assert [r["jets"] for r in summary.results] == [[322, 334, 117]]  # one group: jets straddle the files
    jets = read_cms_ntuple(files)
    outputs = [tmp_path / f"{Path(name).stem}.scores.root" for name in REAL_FILES]
    scores = [read_scores(p) for p in outputs]
    joined = {name: np.concatenate([s[name] for s in scores]) for name in SCORE_BRANCHES}
    for name in schema.SCORES_ID_BRANCHES + schema.SCORES_JET_BRANCHES:
        np.testing.assert_array_equal(joined[name], ak.to_numpy(jets[name]), err_msg=name)
    np.testing.assert_allclose(joined["score"], reference_scores(model_path, jets), rtol=1e-6, atol=1e-7)
    # Each file's jets are those whose rows start in it: the first file's scores equal scoring its own jets.
    alone = read_cms_ntuple(files[:1])
    np.testing.assert_array_equal(scores[0]["event"], ak.to_numpy(alone["event"])[:322])
    # A rerun with the same model and inputs rewrites nothing.
    mtimes = [p.stat().st_mtime_ns for p in outputs]
    again = score_in_process(model_path, files, tmp_path)
    assert again.jets == 0 and all(r["skipped"] for r in again.results)
    assert [p.stat().st_mtime_ns for p in outputs] == mtimes


def test_select_keeps_only_selected_jets(model_path: Path, shared_data: Path, tmp_path: Path) -> None:
    files = [shared_data / name for name in REAL_FILES]
    summary = score_in_process(model_path, files, tmp_path, select=True)
    pt = np.concatenate([read_scores(tmp_path / f"{Path(n).stem}.scores.root")["jet_pt_ak7"] for n in REAL_FILES])
    assert summary.jets == len(pt) > 0 and np.all((pt > 200) & (pt < 500))


def test_stale_outputs_are_redone_when_the_input_or_the_model_changes(model_path: Path, shared_data: Path,
                                                                      tmp_path: Path) -> None:
    data = tmp_path / "in.npy"
    shutil.copy(shared_data / REAL_FILES[2], data)
    out = tmp_path / "out" / "in.scores.root"
    # Alone, the last file holds 118 jets: the one whose rows start in the file before is whole here.
    assert score_in_process(model_path, [data], tmp_path / "out").jets == 118
    first = read_scores(out)
    # Same path, other content (an edited file): scored again, not reused.
    shutil.copy(shared_data / REAL_FILES[0], data)
    summary = score_in_process(model_path, [data], tmp_path / "out")
    assert summary.jets == 322 and not summary.results[0]["skipped"]
    assert len(read_scores(out)["score"]) == 322
    # Same input, other model: scored again.
    other = tmp_path / "other.onnx"
    onnx.save(tagger_model(seed=7), str(other))
    summary = score_in_process(other, [data], tmp_path / "out")
    assert summary.jets == 322 and not np.array_equal(read_scores(out)["score"][:118], first["score"])
    # A truncated output is redone.
    out.write_bytes(out.read_bytes()[:200])
    assert score_in_process(other, [data], tmp_path / "out").jets == 322


def test_plan_groups_npy_files_sharing_jets_and_keeps_root_files_alone(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "gen.root"
    root.write_bytes(b"root" + bytes(100))
    files = [shared_data / REAL_FILES[0], root, shared_data / REAL_FILES[1], shared_data / REAL_FILES[2]]
    tasks = plan_tasks(files, tmp_path / "out")
    assert [(t.kind, [Path(p).name for p in t.inputs]) for t in tasks] == [
        ("npy", [REAL_FILES[0], REAL_FILES[1], REAL_FILES[2]]), ("root", ["gen.root"])]
    assert [Path(p).name for p in tasks[0].outputs] == [f"{Path(n).stem}.scores.root" for n in REAL_FILES]


def bad_inputs(folder: Path, shared_data: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    truncated = folder / "truncated.npy"
    truncated.write_bytes((shared_data / REAL_FILES[2]).read_bytes()[:5000])
    plain = folder / "plain.npy"
    np.save(plain, np.zeros((3, 4)))
    text = folder / "notes.root"
    text.write_text("not a ROOT file\n")
    return {"missing": folder / "absent.npy", "truncated": truncated, "plain": plain, "text": text}


@pytest.mark.slow
def test_scheduler_and_local_cluster_score_like_one_process(model_path: Path, shared_data: Path, tmp_path: Path,
                                                           dask_scheduler: str) -> None:
    from wtag.sources import pythia

    generated = pythia.generate("qcd", 3, seed=9, output=tmp_path / "gen", workers=1, pileup=0.0, chunk_jets=2,
                                progress=False, qcd_fractions=(0.0, 0.0, 0.0, 1.0))
    bad = bad_inputs(tmp_path / "bad", shared_data)
    inputs = [shared_data / name for name in REAL_FILES] + generated + [bad["truncated"]]
    config = {"model": str(model_path), "inputs": tuple(str(p) for p in inputs)}
    one = score_files(ScoreConfig(output=str(tmp_path / "one"), **config), ExecutionConfig(workers=1), False)
    remote = score_files(ScoreConfig(output=str(tmp_path / "remote"), **config), ExecutionConfig(dask_scheduler),
                         False)
    local = score_files(ScoreConfig(output=str(tmp_path / "local"), **config), ExecutionConfig(workers=2), False)
    assert remote.workers == 2 and local.workers == 2
    for summary in (one, remote, local):
        assert summary.jets == 773 + 3
        assert len(summary.failures) == 1 and "truncated.npy" in summary.failures[0]
    names = sorted(p.name for p in (tmp_path / "one").glob("*.scores.root"))
    assert len(names) == 5
    for name in names:
        assert_same_scores(tmp_path / "one" / name, tmp_path / "remote" / name)
        assert_same_scores(tmp_path / "one" / name, tmp_path / "local" / name)
    # Generated ROOT files: aligned with their jets tree, scores as ONNX Runtime gives them.
    for path in generated:
        jets = read_jets(path)
        scores = read_scores(tmp_path / "remote" / f"{path.stem}.scores.root")
        np.testing.assert_array_equal(scores["lumi"], ak.to_numpy(jets["lumi"]))
        np.testing.assert_array_equal(scores["event"], ak.to_numpy(jets["event"]))
        np.testing.assert_allclose(scores["score"], reference_scores(model_path, jets), rtol=1e-6, atol=1e-7)


def _wtag(args: list[str], uri: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "wtag.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_bad_files_among_good_fail_the_run_one_line_each_after_the_good_ones(
        model_path: Path, shared_data: Path, tmp_path: Path, tracking_uri: str, dask_scheduler: str) -> None:
    from mlflow.tracking import MlflowClient

    bad = bad_inputs(tmp_path / "in", shared_data)
    good = shared_data / REAL_FILES[2]
    out = tmp_path / "out"
    args = ["score", "--model", str(model_path), str(good), *(str(p) for p in bad.values()), "--output", str(out),
            "--scheduler", dask_scheduler, "--experiment", "wtag-test-score"]
    proc = _wtag(args, tracking_uri)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"dask: scheduler {dask_scheduler}, 2 worker(s)" in proc.stderr
    lines = [line.strip() for line in proc.stderr.splitlines()]
    start = next(i for i, line in enumerate(lines) if "4 input(s) failed, the others were scored" in line)
    failed = lines[start + 1: start + 5]
    for name in ("absent.npy", "truncated.npy", "plain.npy", "notes.root"):
        assert sum(name in line for line in failed) == 1, (name, failed)
    assert "absent.npy: no such file" in " ".join(failed)
    assert len(read_scores(out / f"{good.stem}.scores.root")["score"]) == 118
    assert sorted(p.name for p in out.glob("*.root")) == [f"{good.stem}.scores.root"]

    client = MlflowClient()
    experiment = client.get_experiment_by_name("wtag-test-score")
    (run,) = client.search_runs([experiment.experiment_id], f"tags.`{Tag.ENTRY_POINT}` = '{EntryPoint.SCORE}'")
    assert run.info.status == "FAILED"
    assert run.data.tags[Tag.ONNX_SHA256] == __import__("hashlib").sha256(model_path.read_bytes()).hexdigest()
    assert run.data.tags[Tag.MODEL_URI] == str(model_path)
    assert run.data.metrics["jets_scored"] == 118 and run.data.metrics["files_failed"] == 4
    assert run.data.metrics["workers"] == 2 and run.data.metrics["jets_per_s"] > 0
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {Artifact.SCORE_INPUTS, Artifact.MANIFEST, Artifact.SCORE_PLOT} <= artifacts
    local = Path(client.download_artifacts(run.info.run_id, Artifact.SCORE_INPUTS, str(tmp_path)))
    (entry,) = json.loads(local.read_text())
    assert entry["path"] == str(good) and entry["bytes"] == good.stat().st_size and len(entry["sha256"]) == 64


@pytest.mark.slow
def test_mlproject_score_entry_point_finishes_and_skips_on_rerun(model_path: Path, shared_data: Path,
                                                                 tmp_path: Path, tracking_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    params = {"model": str(model_path), "input": str(shared_data / REAL_FILES[2]), "output": str(tmp_path),
              "workers": "1", "experiment": "wtag-test-score-mlproject"}
    proc = mlflow_run("score", params, tracking_uri, "wtag-test-score-mlproject")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = _wtag(["score", "--model", str(model_path), str(shared_data / REAL_FILES[2]), "--output",
                   str(tmp_path), "--workers", "1", "--experiment", "wtag-test-score-mlproject"], tracking_uri)
    assert again.returncode == 0, again.stderr[-3000:]
    client = MlflowClient()
    experiment = client.get_experiment_by_name("wtag-test-score-mlproject")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    assert [r.data.metrics["jets_scored"] for r in runs] == [118, 0]
    assert runs[1].data.metrics["files_skipped"] == 1


@pytest.mark.slow
def test_scores_equal_the_servers_score_jets_route_for_the_same_jets(model_path: Path, shared_data: Path,
                                                                     tmp_path: Path) -> None:
    import importlib.util

    import httpx
    from onnx_models import serve

    from serving.settings import TOKEN_ENV

    # the demo client's request builder: the /v1/score-jets form users send
    spec = importlib.util.spec_from_file_location("score_demo", REPO / "examples" / "score_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    files = [shared_data / name for name in REAL_FILES]
    score_in_process(model_path, files, tmp_path / "out")
    scored = np.concatenate([read_scores(tmp_path / "out" / f"{Path(n).stem}.scores.root")["score"]
                             for n in REAL_FILES])
    jets = read_cms_ntuple(files)
    with serve(model_path, tmp_path / "server.log", env={TOKEN_ENV: None}) as server:
        response = httpx.post(f"{server.url}/v1/score-jets", json={"jets": demo.jet_requests(jets)}, timeout=120)
    assert response.status_code == 200, response.text[:500]
    served = np.asarray(response.json()["scores"], dtype=np.float32)
    assert len(served) == len(scored) == 773
    np.testing.assert_allclose(scored, served, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_a_worker_killed_mid_score_changes_nothing(model_path: Path, shared_data: Path, tmp_path: Path,
                                                   dask_scheduler: str, run_killing_a_worker) -> None:
    from wtag.jets import write_jets

    jets = read_cms_ntuple([shared_data / name for name in REAL_FILES])
    inputs = []
    for i in range(6):  # files of 15,000 jets: tasks long enough to be caught running
        inputs.append(tmp_path / "in" / f"jets{i}.root")
        write_jets(inputs[-1], ak.concatenate([jets] * 20)[i: i + 15000])
    config = {"model": str(model_path), "inputs": tuple(map(str, inputs))}
    reference = score_files(ScoreConfig(output=str(tmp_path / "one"), **config), ExecutionConfig(workers=1), False)
    summary, _ = run_killing_a_worker(lambda: score_files(ScoreConfig(output=str(tmp_path / "remote"), **config),
                                                         ExecutionConfig(dask_scheduler), False), "score-")
    assert summary.failures == [] and summary.jets == reference.jets == 6 * 15000  # type: ignore[attr-defined]
    for path in inputs:
        assert_same_scores(tmp_path / "one" / f"{path.stem}.scores.root",
                           tmp_path / "remote" / f"{path.stem}.scores.root")
    assert not list((tmp_path / "remote").glob(".*"))  # no temporary leftovers
