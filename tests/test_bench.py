from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from onnx_models import N_HL, hl_model
from wtag import schema

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "inference.py"), *args], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_inference_bench_reports_agreement_and_throughput(tmp_path: Path) -> None:
    model = tmp_path / "hl.onnx"
    onnx.save(hl_model(), str(model))
    x = np.random.default_rng(4).normal(size=(50, N_HL)).astype(np.float32)
    native = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run([schema.OUTPUT_SCORE], {schema.INPUT_HL: x})[0]
    np.savez(tmp_path / "inputs.npz", hl=x, native_dnn=native.reshape(-1) + 1e-3)
    out = tmp_path / "table.md"
    done = _bench(str(model), "--inputs", str(tmp_path / "inputs.npz"), "--sizes", "1", "120", "--duration", "0.05",
                  "--output", str(out))
    assert done.returncode == 0, done.stderr
    rows = [line for line in out.read_text().splitlines() if line.startswith("| dnn |")]
    assert rows[0] == "| dnn | cpu | CPUExecutionProvider | 50 | 0.00e+00 | 1.00e-03 |"
    assert [r.split(" | ")[2] for r in rows[1:]] == ["1", "120"]  # 120 jets: the 50 test jets repeated


def test_inference_bench_rejects_a_missing_model(tmp_path: Path) -> None:
    done = _bench(str(tmp_path / "nope.onnx"), "--inputs", str(tmp_path / "x.npz"))
    assert done.returncode == 2 and "nope.onnx: no such model file" in done.stderr


def test_serve_bench_measures_http_and_grpc_and_checks_goals(tmp_path: Path) -> None:
    out = tmp_path / "serve.md"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "serve.py"), "--skip-mlflow", "--skip-mlserver",
                           "--sizes", "1", "50", "--concurrency", "1", "--duration", "0.3", "--protocols", "npy",
                           "grpc", "--output", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])})
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| wtag serve |")]
    assert [(r[1], r[2]) for r in rows] == [("npy", "1"), ("npy", "50"), ("grpc", "1"), ("grpc", "50")]
    assert all(int(r[4].replace(",", "")) > 0 for r in rows)
    assert "| single-jet p99 at concurrency 1 (grpc) |" in out.read_text()


def test_load_bench_runs_both_scenarios(tmp_path: Path) -> None:
    out = tmp_path / "load.md"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--clients", "2", "--big-clients", "1",
                           "--duration", "3", "--routes", "npy", "grpc", "jets", "--output", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src")])})
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "| alone |" in text and "while 1 clients post 100,000-jet requests" in text
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines()
            if line.startswith(("| npy ", "| grpc ", "| jets ", "| all "))}
    assert set(rows) == {"npy", "grpc", "jets", "all"}
    assert rows["all"][-1].rstrip(" |") == "0"  # no errors
    assert "Server resident memory (all processes): start" in text


def test_profile_bench_charges_each_stack_to_its_innermost_stage() -> None:
    """bench/profile_serve.py's reading of py-spy's collapsed stacks (py-spy itself is not a dependency)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import profile_serve
    finally:
        sys.path.remove(str(ROOT / "bench"))
    raw = "\n".join([
        "process 1:\"python -m serving\";Runner.run (asyncio/runners.py:118);answer (serving/service.py:170);"
        "loads (/r/serving/wire.py:33) 7",
        "process 1;thread 2;_worker (concurrent/futures/thread.py:81);_PollLikeSelector.select (selectors.py:415) 5",
        "process 1;_worker (concurrent/futures/thread.py:81);Connection._send (multiprocessing/connection.py:384) 3",
        "process 1;run (onnxruntime/capi/onnxruntime_inference_collection.py:220);_timed_run "
        "(serving/batcher.py:227) 2",
        "process 1;Runner.run (asyncio/runners.py:118) 4",
        "garbage line",
    ])
    counts = profile_serve.parse_raw(raw)
    assert counts["JSON decode"] == 7
    assert counts["blocked waiting (select, pipe reads, conditions) in helper threads and processes"] == 5
    assert counts["hand-off to decode processes (pickle, pipe writes)"] == 3
    assert counts["batching (queue, concatenate, split)"] == 2  # the innermost matching frame wins
    assert counts["event loop (uvloop socket I/O in native code)"] == 4
    assert sum(counts.values()) == 21


def _eta_only_dataset(root: Path) -> Path:
    """A prepared dataset whose classes differ only in jet eta (every other hl column is noise)."""
    from wtag.dataset import Split, Standardization, save_prepared

    rng = np.random.default_rng(11)
    eta = schema.HL_FEATURES.index("jet_eta_ak7")

    def split(n: int) -> Split:
        label = (np.arange(n) % 3 == 0).astype(np.int64)
        hl = rng.normal(size=(n, len(schema.HL_FEATURES))).astype(np.float32)
        hl[:, eta] += 2.5 * label
        return Split(label=label, weight=np.ones(n, np.float32), msd=rng.uniform(0, 200, n).astype(np.float32),
                     pt=rng.uniform(200, 500, n).astype(np.float32), hl=hl)

    splits = {"train": split(1200), "val": split(600), "test": split(1500)}
    save_prepared(root, {"source": "pythia"}, splits, Standardization.fit(splits["train"]))
    return root


def _ceiling(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "ceiling.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env=env)


def _r50_means(text: str) -> dict[tuple[str, str], float]:
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| bdt |")]
    rows = [r for r in rows if len(r) == 7]  # the results table, not the verdicts
    return {(r[0].lstrip("| "), r[1]): float(r[4].split(" +- ")[0]) for r in rows}


def test_ceiling_ablation_blanks_exactly_the_named_jet_features(tmp_path: Path) -> None:
    data = _eta_only_dataset(tmp_path / "prepared")
    done = _ceiling("ablation", "--dataset", str(data), "--models", "bdt", "--seeds", "1", "2", "--n-bootstrap", "20")
    assert done.returncode == 0, done.stderr[-3000:]
    r50 = _r50_means(done.stdout)
    assert list(r50) == [("bdt", "all ten"), ("bdt", "without eta"), ("bdt", "without eta, pT"),
                         ("bdt", "without eta, pT, ncand")]
    assert r50[("bdt", "all ten")] > 10  # eta alone separates the classes
    assert all(r < 4 for key, r in r50.items() if key[1] != "all ten")  # random guessing: 1/eps_B = 2


def test_ceiling_curves_train_on_nested_subsets_and_judge_the_last_doubling(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import ceiling
    finally:
        sys.path.remove(str(ROOT / "bench"))
    label = np.r_[np.ones(40, int), np.zeros(160, int)]
    subsets = ceiling.nested_subsets(label, [0.25, 0.5, 1.0], seed=3)
    assert [len(s) for s in subsets.values()] == [50, 100, 200]
    assert [int(label[s].sum()) for s in subsets.values()] == [10, 20, 40]  # class balance kept
    assert set(subsets[0.25]) <= set(subsets[0.5]) <= set(subsets[1.0])
    data = _eta_only_dataset(tmp_path / "prepared")
    done = _ceiling("curves", "--dataset", str(data), "--models", "bdt", "--fractions", "0.5", "1", "--seeds", "1",
                    "2", "--n-bootstrap", "20")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [key[1] for key in _r50_means(done.stdout)] == ["0.5", "1"]
    assert "| bdt | " in done.stdout.split("still climbing")[1]
    bad = _ceiling("curves", "--dataset", str(data), "--fractions", "0", "--models", "bdt")
    assert bad.returncode == 2 and "fraction 0.0 is not in (0, 1]" in bad.stderr


def test_ceiling_ensemble_scores_the_mean_of_logged_test_scores(tracking_uri: str, tmp_path: Path) -> None:
    """Three noisy 'seeds' logged as tagger runs on the real tracking server: their mean scores better than the
    average member, the gains are paired, and runs tested on other jets are refused."""
    import mlflow

    mlflow.set_experiment("wtag-test-ceiling")
    rng = np.random.default_rng(5)
    label = (np.arange(6000) % 5 == 0).astype(np.int64)
    msd = rng.uniform(0, 200, len(label))

    def logged(score: np.ndarray, labels: np.ndarray = label) -> str:
        with mlflow.start_run() as run:
            np.savez(tmp_path / schema.Artifact.TEST_SCORES, score=score.astype(np.float32), label=labels, msd=msd)
            mlflow.log_artifact(str(tmp_path / schema.Artifact.TEST_SCORES))
        return run.info.run_id

    truth = 1.5 * label + rng.normal(size=len(label))
    runs = [logged(truth + 1.5 * rng.normal(size=len(label))) for _ in range(3)]
    done = _ceiling("ensemble", "--runs", runs[0], "--runs", ",".join(runs), "--n-bootstrap", "50",
                    env_extra={"MLFLOW_TRACKING_URI": tracking_uri})
    assert done.returncode == 0, done.stderr[-3000:]
    first, ensemble = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith(f"| {runs[0][:8]}")]
    members = [float(v.split(" +- ")[0]) for v in ensemble[1].split(", ")]
    assert float(ensemble[2].split(" +- ")[0]) > max(members)  # independent noise averages out
    assert float(ensemble[3].split(" +- ")[0]) > 0 and "sigma" in ensemble[3]
    assert first[5] == "" and "; " in ensemble[5]  # the second row is compared with the first (a single run)
    other = logged(truth, labels=1 - label)
    bad = _ceiling("ensemble", "--runs", f"{runs[0]},{other}", env_extra={"MLFLOW_TRACKING_URI": tracking_uri})
    assert bad.returncode == 2 and "were not all tested on the same jets" in bad.stderr


def test_ceiling_reference_compares_simulation_levels(tracking_uri: str, tmp_path: Path) -> None:
    """Two experiments of logged plain tagger runs (a detector-level and a particle-level dataset, two seeds
    each, plus a run with an auxiliary loss that must be left out): per-level seed ensembles, their ratio to the
    same tagger at the reference level and to the reference's best, one figure logged."""
    import uuid

    import mlflow

    rng = np.random.default_rng(8)
    label = (np.arange(4000) % 4 == 0).astype(np.int64)
    msd = rng.uniform(0, 200, len(label))
    names = [f"wtag-test-level-{uuid.uuid4().hex[:6]}" for _ in range(2)]

    def level(name: str, detector: str, pileup: str, noise: float, digest: str) -> None:
        experiment_id = mlflow.create_experiment(name)
        with mlflow.start_run(experiment_id=experiment_id):
            mlflow.set_tag("wtag.entry_point", "prepare")
            mlflow.log_params({"dataset_digest": digest, "detector": detector, "pileup": pileup})
        truth = 1.5 * label + rng.normal(size=len(label))
        for tagger, seed, extra in (("cut", 42, {}), ("dnn", 42, {}), ("dnn", 43, {}),
                                    ("dnn", 44, {"aux_weight": "0.5"})):
            with mlflow.start_run(experiment_id=experiment_id):
                mlflow.set_tags({"wtag.entry_point": "train_tagger", "wtag.tagger": tagger})
                mlflow.log_params({"dataset_digest": digest, "train_seed": seed, **extra})
                score = truth + (3.0 if tagger == "cut" else noise) * rng.normal(size=len(label))
                np.savez(tmp_path / schema.Artifact.TEST_SCORES, score=score.astype(np.float32), label=label, msd=msd)
                mlflow.log_artifact(str(tmp_path / schema.Artifact.TEST_SCORES))

    level(names[0], "True", "default", 1.5, "d" * 64)
    level(names[1], "false", "0", 0.5, "e" * 64)
    done = _ceiling("reference", "--experiments", *names, "--models", "cut,dnn", "--n-bootstrap", "40",
                    env_extra={"MLFLOW_TRACKING_URI": tracking_uri})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Reference level: particle level, pileup 0 (ceiling: its best seed ensemble, dnn" in done.stdout
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[3:] for line in done.stdout.splitlines()
            if line.startswith("| detector") or line.startswith("| particle")}
    assert set(rows) == {("detector, pileup 9 (tuned)", "cut"), ("detector, pileup 9 (tuned)", "dnn"),
                         ("particle level, pileup 0", "cut"), ("particle level, pileup 0", "dnn")}
    detector_dnn, particle_dnn = rows[("detector, pileup 9 (tuned)", "dnn")], rows[("particle level, pileup 0", "dnn")]
    assert len(detector_dnn[0].split(", ")) == 2  # seeds 42 and 43; the aux run is not plain
    ratio = float(detector_dnn[4].split(" +- ")[0])
    assert 0 < ratio < 1  # the noisier level rejects less
    assert particle_dnn[4].strip() == "" and particle_dnn[5].strip().startswith("1.00 +- ")
    runs = mlflow.search_runs(experiment_names=["wtag-bench-ceiling"], filter_string="params.mode = 'reference'",
                              output_format="list")
    assert any(names[1] in r.data.params["experiments"] for r in runs)
    bad = _ceiling("reference", "--experiments", names[0], env_extra={"MLFLOW_TRACKING_URI": tracking_uri})
    assert bad.returncode == 2 and "reference needs --experiments A B" in bad.stderr
