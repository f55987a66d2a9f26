"""Scale-out benchmark: generation and batch scoring on Dask with 1 and 2 workers, and a 100-worker projection.

``python bench/scale.py [--chunk-jets 1000] [--score-files 8] [--score-jets 20000] [--model M.onnx]`` prints a Markdown table:

- ``generate``: jets/s of the chunk tasks (two full chunks per worker) on a local cluster of 1 and 2
  single-threaded worker processes (QCD 300-470 GeV slice, the tuned pileup; the pileup pool is built once beforehand, as a run does, and timed on its own), and
  the parallel efficiency ``rate(2) / (2 * rate(1))``.
- ``scheduler overhead``: wall time per task of 200 empty tasks on the same cluster, against the time of one
  chunk task at ``--chunk-jets``.
- ``score``: jets/s of ``wtag.scoring.score_files`` over ``--score-files`` copies of a ROOT jets file (the real
  2011A jets repeated to ``--score-jets``, or generated jets when ../shared/data is absent) on a local cluster
  of 1 and 2 workers (after a warm-up run), against a bare single-process loop of ``read_jets`` +
  ``model_inputs`` + ``session.run`` over the same files.
- a projection for 100 workers from these rates (10^7 generated jets; 1,000 files of 10^5 jets scored).

The default model is a small two-input graph (hl and particles, linear + sigmoid), so the score rate is that of
reading and feature building, the part every tagger shares; pass ``--model`` for an exported tagger.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from wtag.errors import WtagError, exit_status

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _linear_tagger(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from wtag import schema

    n_hl, n_part = len(schema.HL_FEATURES), len(schema.PARTICLE_FEATURES)
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["hl", "w"], ["a"]),
             helper.make_node("ReduceSum", ["particles", "axis1"], ["s"], keepdims=0),
             helper.make_node("MatMul", ["s", "v"], ["c"]), helper.make_node("Add", ["a", "c"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["p"]), helper.make_node("Reshape", ["p", "flat"], ["score"])]
    graph = helper.make_graph(
        nodes, "linear_tagger",
        [helper.make_tensor_value_info("hl", TensorProto.FLOAT, ["N", n_hl]),
         helper.make_tensor_value_info("particles", TensorProto.FLOAT, ["N", schema.MAX_PARTICLES, n_part])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        [numpy_helper.from_array(rng.normal(0, 0.02, (n_hl, 1)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.normal(0, 0.02, (n_part, 1)).astype(np.float32), "v"),
         numpy_helper.from_array(np.array([1], np.int64), "axis1"),
         numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    model.metadata_props.append(onnx.StringStringEntryProto(key="wtag.inputs", value=json.dumps(["hl", "particles"])))
    onnx.save(model, str(path))


def bench_generate(tmp: Path, chunk_jets: int, workers: int) -> dict[str, float]:
    """Chunk tasks only (the pool is prebuilt): jets/s and the mean time of one task."""
    from wtag.execution import ExecutionConfig, dask_client, run_tasks
    from wtag.sources import pythia as py

    # One pT-hat slice (300-470 GeV), so that every task is a full chunk and the two runs are comparable.
    config = py.RunConfig(3, py.DEFAULT_PILEUP, True, py.Tuning(qcd_fractions=(0.0, 0.0, 1.0, 0.0)))
    out = tmp / f"gen{workers}"
    specs = py.plan_chunks("qcd", chunk_jets * 2 * workers, 3, out, chunk_jets, config.tuning)
    pool_file = py.pool_path(tmp, config)
    start = time.perf_counter()
    py.ensure_pool(pool_file, config)
    pool_s = time.perf_counter() - start
    with dask_client(ExecutionConfig(workers=workers), quiet=True) as client:
        client.run(py.load_pool, str(pool_file))  # every worker reads the pool before the clock starts
        start = time.perf_counter()
        timed = run_tasks(client, _timed, [(py.run_chunk, s, config, str(pool_file)) for s in specs],
                          key_prefix="bench")
        wall = time.perf_counter() - start
        overhead = _overhead(client)
    jets = sum(s.n_jets for s in specs)
    task_s = sum(t[1] for t in timed)
    return {"rate": jets / wall, "task_s": task_s / len(specs), "pool_s": pool_s, "busy": task_s / (workers * wall),
            "cpu_rate": jets / sum(t[2] for t in timed), "overhead_ms": overhead * 1e3,
            "bytes_per_jet": sum(s.path.stat().st_size for s in specs) / jets}


def _timed(fn: object, *args: object) -> tuple[object, float, float]:
    """``fn(*args)`` with its wall and CPU seconds (CPU time does not grow when other processes take the cores)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)  # type: ignore[operator]
    return result, time.perf_counter() - start, time.process_time() - cpu


def _overhead(client: object, n: int = 200) -> float:
    """Wall seconds per task of ``n`` trivial tasks (submission, scheduling, transfer of a small result)."""
    from wtag.execution import run_tasks

    run_tasks(client, abs, [(i,) for i in range(20)], key_prefix="warm")
    start = time.perf_counter()
    run_tasks(client, abs, [(-i,) for i in range(n)], key_prefix="noop")
    return (time.perf_counter() - start) / n


def score_inputs(tmp: Path, n_files: int, jets_per_file: int) -> list[Path]:
    """``n_files`` copies of one ROOT jets file of ``jets_per_file`` jets: the real 2011A jets repeated (or
    generated jets when ../shared/data is absent)."""
    import awkward as ak

    from wtag.jets import write_jets

    src = tmp / "jets.root"
    if SHARED_DATA.is_dir():
        from wtag.sources.cms_ntuple import read_cms_ntuple

        jets = read_cms_ntuple(sorted(SHARED_DATA.glob("cms2011a_jet_pfcands_params*.npy")))
    else:
        from wtag.jets import read_jets
        from wtag.sources import pythia as py

        jets = read_jets(py.generate("qcd", 500, seed=5, output=tmp / "gen-score", progress=False))
    repeats = -(-jets_per_file // len(jets))
    write_jets(src, ak.concatenate([jets] * repeats)[:jets_per_file])
    paths = []
    for i in range(n_files):
        paths.append(tmp / "inputs" / f"jets{i}.root")
        paths[-1].parent.mkdir(exist_ok=True)
        shutil.copy(src, paths[-1])
    return paths


def bench_score(model: Path, inputs: list[Path], tmp: Path, workers: int) -> dict[str, float]:
    """``score_files`` on a local cluster of ``workers`` (Dask path for 1 worker too), after a warm-up run that
    imports the feature code and builds each worker's session, as the first of many files would."""
    import logging

    from distributed import LocalCluster

    from wtag.execution import ExecutionConfig
    from wtag.scoring import ScoreConfig, score_files

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        execution = ExecutionConfig(cluster.scheduler_address)
        warm = ScoreConfig(model=str(model), inputs=tuple(map(str, inputs[:workers])),
                           output=str(tmp / f"warm{workers}"), device="cpu")
        score_files(warm, execution, progress=False)
        config = ScoreConfig(model=str(model), inputs=tuple(map(str, inputs)), output=str(tmp / f"scores{workers}"),
                             device="cpu")
        summary = score_files(config, execution, progress=False)
    if summary.failures:
        raise WtagError("; ".join(summary.failures))
    busy = sum(r["seconds"] for r in summary.results) / (workers * summary.seconds)
    cpu_rate = summary.jets / sum(r["cpu_seconds"] for r in summary.results)
    return {"rate": summary.jets_per_s, "busy": busy, "cpu_rate": cpu_rate}


def bare_loop(model: Path, inputs: list[Path]) -> float:
    """jets/s of read_jets + model_inputs + session.run in one process, one thread."""
    import onnxruntime as ort

    from wtag.features import model_inputs
    from wtag.jets import read_jets

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    jets_total = 0
    start, cpu = time.perf_counter(), time.process_time()
    for path in inputs:
        jets = read_jets(path)
        session.run(["score"], model_inputs(jets, names))
        jets_total += len(jets)
    return jets_total / (time.perf_counter() - start), jets_total / (time.process_time() - cpu)


def _rows(what: str, detail: str, m: dict[int, dict[str, float]], fmt: str) -> list[str]:
    """Wall rate, rate per CPU-second inside tasks, and busy share, with the efficiencies they imply.

    On a machine shared with other work the wall rate of 2 workers measures the cores they got, not Dask:
    ``busy(2) * cpu_rate(2) / cpu_rate(1)`` is the efficiency with the cores to themselves."""
    wall_eff = m[2]["rate"] / (2 * m[1]["rate"])
    cpu_eff = m[2]["busy"] * m[2]["cpu_rate"] / m[1]["cpu_rate"]
    return [f"| {what}, jets/s ({detail}) | {fmt.format(m[1]['rate'])} | {fmt.format(m[2]['rate'])} | "
            f"{wall_eff:.0%} (wall) |",
            f"| {what}, jets per CPU-second in tasks | {fmt.format(m[1]['cpu_rate'])} | "
            f"{fmt.format(m[2]['cpu_rate'])} | |",
            f"| {what}, share of wall time workers spent in tasks | {m[1]['busy']:.0%} | {m[2]['busy']:.0%} | "
            f"{cpu_eff:.0%} (busy x CPU rate) |"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-jets", type=int, default=1000, help="jets per generator chunk (default: the default)")
    parser.add_argument("--score-files", type=int, default=8, help="input files to score")
    parser.add_argument("--score-jets", type=int, default=20000, help="jets per scored file")
    parser.add_argument("--model", type=Path, default=None, help="ONNX tagger (default: a linear two-input graph)")
    parser.add_argument("--skip-generate", action="store_true")
    args = parser.parse_args()
    rows: list[str] = ["| measurement | 1 worker | 2 workers | efficiency |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="wtag-scale-") as name:
        tmp = Path(name)
        gen: dict[int, dict[str, float]] = {}
        if not args.skip_generate:
            gen = {w: bench_generate(tmp, args.chunk_jets, w) for w in (1, 2)}
            rows += _rows("generate qcd", f"chunks of {args.chunk_jets} jets", gen, "{:.1f}")
            rows.append(f"| generate: one chunk task, s | {gen[1]['task_s']:.1f} | {gen[2]['task_s']:.1f} | |")
            rows.append(f"| scheduler overhead per task, ms (200 empty tasks) | {gen[1]['overhead_ms']:.2f} | "
                        f"{gen[2]['overhead_ms']:.2f} | {gen[2]['overhead_ms'] / 1e3 / gen[1]['task_s']:.4%} of a "
                        "chunk task |")
            rows.append(f"| pileup pool, built once per run, s | {gen[1]['pool_s']:.1f} | | |")
        model = args.model or tmp / "linear.onnx"
        if args.model is None:
            _linear_tagger(model)
        inputs = score_inputs(tmp, args.score_files, args.score_jets)
        bare, bare_cpu = bare_loop(model, inputs)
        score = {w: bench_score(model, inputs, tmp, w) for w in (1, 2)}
        rows += _rows("score", f"{args.score_files} files of {args.score_jets} jets", score, "{:.0f}")
        rows.append(f"| score per worker vs bare single-process loop ({bare:.0f} jets/s, {bare_cpu:.0f} per "
                    f"CPU-s): wall, CPU | {score[1]['rate'] / bare:.0%}, {score[1]['cpu_rate'] / bare_cpu:.0%} | "
                    f"{score[2]['rate'] / 2 / bare:.0%}, {score[2]['cpu_rate'] / bare_cpu:.0%} | |")
    print("\n".join(rows))
    print()
    # Per-worker rates for the projection: CPU rate x busy share (what a worker with its own core does).
    per_worker_score = score[2]["cpu_rate"] * score[2]["busy"]
    lines = ["Projection for 100 workers, one core each (per-worker rate = jets per CPU-second x busy share, "
             "2-worker run):"]
    if gen:
        per_worker_gen = gen[2]["cpu_rate"] * gen[2]["busy"]
        gen_hours = 1e7 / (100 * per_worker_gen) / 3600
        tasks_per_s = 100 / gen[2]["task_s"]
        lines.append(f"- generate 10^7 jets: {gen_hours:.1f} h ({per_worker_gen:.1f} jets/s per worker); "
                     f"{1e7 / args.chunk_jets:.0f} tasks, {tasks_per_s:.1f} task completions/s at the scheduler "
                     f"(it handles thousands/s), {100 * per_worker_gen * gen[2]['bytes_per_jet'] / 1e6:.2f} MB/s "
                     f"of chunk writes ({gen[2]['bytes_per_jet'] / 1e3:.1f} kB/jet), plus one pool per seed.")
    score_hours = 1e8 / (100 * per_worker_score) / 3600
    lines.append(f"- score 1,000 files x 10^5 jets: {score_hours:.2f} h ({per_worker_score:.0f} jets/s per worker); "
                 f"one task per file is {1e5 / per_worker_score:.0f} s, so 1,000 tasks keep 100 workers busy; the "
                 "shared filesystem must deliver every worker's input reads at once.")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "bench/scale.py"))
