"""The ``score`` step: batch inference of many files on Dask, one ``scores`` ROOT file per input, one MLflow run.

Inputs are ROOT files with the ``jets`` tree (generated or imported) and the tutorial's c2numpy ``.npy`` files,
local or as URLs (``wtag.sources.remote.resolve_inputs`` downloads them into ``<output>/downloads``). One Dask
task per ROOT file, and per group of ``.npy`` files that share a jet (``cms_ntuple.file_groups``: c2numpy can
split a jet over two files; such a jet belongs to the file where its rows start). Each worker builds the ONNX
Runtime session once (``wtag.inference``, the server's provider rules: CUDA where the worker has a GPU) and
computes model inputs with ``wtag.features.model_inputs``, the function ``prepare`` trained on.

Output per input: ``<output>/<input stem>.scores.root`` with a ``scores`` tree aligned entry by entry with
the input's jets (``run lumi event ijet jet_pt_ak7 jet_eta_ak7 jet_msd_ak7 score``; with ``select`` only the
jets passing the tutorial selection), written atomically with its provenance (model sha256 and version, input
sha256, selection, code version). A rerun skips inputs whose outputs carry the same provenance. A bad input
does not stop the others: the run ends FAILED and names each failed file on its own line.
"""
from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import uproot

from wtag import schema
from wtag.codeversion import code_version, file_digest
from wtag.errors import WtagError
from wtag.execution import ExecutionConfig, dask_client, run_tasks, scheduler_address, worker_state
from wtag.fileio import atomic_path, write_json
from wtag.schema import Artifact, EntryPoint, Tag

SCORING_MODULES = ("wtag.scoring", "wtag.features", "wtag.jets", "wtag.schema", "wtag.sources.cms_ntuple",
                   "wtag.inference")
SCORING_PACKAGES = ("onnxruntime-gpu", "numpy", "awkward", "uproot")
PROVENANCE_KEY = "wtag_provenance"
HIST_BINS = 50
NPY_MAGIC = b"\x93NUMPY"
ROOT_MAGIC = b"root"
KIND_ROOT, KIND_NPY, KIND_UNKNOWN = "root", "npy", "unknown"


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """The ``score`` parameters (MLproject entry point ``score``)."""

    model: str = f"models:/{schema.REGISTERED_MODEL}@{schema.CHAMPION_ALIAS}"
    inputs: tuple[str, ...] = ()
    output: str = "scores"
    device: str = "auto"
    select: bool = False

    def __post_init__(self) -> None:
        from wtag.inference import DEVICES

        if not self.inputs:
            raise WtagError("score needs input files (ROOT files with a 'jets' tree or c2numpy .npy files)")
        if self.device not in DEVICES:
            raise WtagError(f"device '{self.device}' is not one of {', '.join(DEVICES)}")
        if not self.output:
            raise WtagError("score needs an output folder")

    def params(self) -> dict[str, object]:
        return {"model": self.model, "input": ",".join(self.inputs), "n_inputs": len(self.inputs),
                "output": self.output, "device": self.device, "select": self.select}


@dataclasses.dataclass(frozen=True)
class ScoreTask:
    """Input files read together (one ROOT file, or a group of .npy files) and one output per input."""

    kind: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """What a task needs to know about the model besides its bytes."""

    sha256: str
    version: str | None
    uri: str


@dataclasses.dataclass
class ScoreSummary:
    """What a batch scoring did: per-task results, failures (one line each), totals."""

    results: list[dict[str, Any]]
    failures: list[str]
    jets: int
    seconds: float
    workers: int
    histogram: np.ndarray
    model: ModelRef

    @property
    def jets_per_s(self) -> float:
        return self.jets / self.seconds if self.seconds > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class _Resolved:
    """An input name and the local file it resolved to (or the reason it did not)."""

    name: str
    path: Path | None
    error: str | None = None


def scoring_version() -> str:
    return code_version(SCORING_MODULES, SCORING_PACKAGES)


def _kind(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError:
        return KIND_UNKNOWN
    if magic.startswith(ROOT_MAGIC):
        return KIND_ROOT
    if magic == NPY_MAGIC:
        return KIND_NPY
    return KIND_UNKNOWN


def _output_names(paths: Sequence[Path], output: Path) -> list[Path]:
    """``<stem>.scores.root`` per input; inputs with the same stem get their position appended."""
    stems = [p.name[: -len(p.suffix)] if p.suffix else p.name for p in paths]
    return [output / (f"{s}.scores.root" if stems.count(s) == 1 else f"{s}.{i}.scores.root")
            for i, s in enumerate(stems)]


def plan_tasks(paths: Sequence[Path], output: Path) -> list[ScoreTask]:
    """One task per ROOT file or unreadable input, one per group of .npy files sharing jets; input order."""
    from wtag.sources.cms_ntuple import file_groups

    outputs = _output_names(paths, output)
    kinds = [_kind(p) for p in paths]
    npy = [i for i, k in enumerate(kinds) if k == KIND_NPY]
    tasks: dict[int, ScoreTask] = {}
    for group in file_groups([paths[i] for i in npy]) if npy else []:
        members = [npy[g] for g in group]
        tasks[members[0]] = ScoreTask(KIND_NPY, tuple(str(paths[i]) for i in members),
                                      tuple(str(outputs[i]) for i in members))
    for i, kind in enumerate(kinds):
        if kind != KIND_NPY:
            tasks[i] = ScoreTask(kind, (str(paths[i]),), (str(outputs[i]),))
    return [tasks[i] for i in sorted(tasks)]


def _provenance(task: ScoreTask, digests: Sequence[str], model: ModelRef, select: bool) -> str:
    return json.dumps({"model_sha256": model.sha256, "model_version": model.version, "select": select,
                       "inputs": [[Path(p).name, d] for p, d in zip(task.inputs, digests)],
                       "code": scoring_version()}, sort_keys=True)


def _complete(path: Path, provenance: str) -> int | None:
    """Entries of a finished scores file made with ``provenance``, else None."""
    if not path.is_file():
        return None
    try:
        with uproot.open(path) as f:
            if PROVENANCE_KEY not in f.keys(cycle=False) or str(f[PROVENANCE_KEY]) != provenance:
                return None
            return int(f[schema.SCORES_TREE].num_entries)
    except Exception:  # unreadable leftovers are redone
        return None


def _read_task_jets(task: ScoreTask) -> list[ak.Array]:
    """The jets of each input of a task, in the input's order."""
    from wtag.jets import read_jets
    from wtag.sources.cms_ntuple import jets_per_file, read_cms_ntuple

    if task.kind == KIND_ROOT:
        return [read_jets(task.inputs[0])]
    if task.kind == KIND_NPY:
        jets = read_cms_ntuple(list(task.inputs))
        counts = np.cumsum([0, *jets_per_file(task.inputs)])
        return [jets[a:b] for a, b in zip(counts[:-1], counts[1:])]
    raise WtagError(f"{task.inputs[0]}: neither a ROOT file (with a '{schema.TREE_NAME}' tree) nor a NumPy .npy "
                    "file (c2numpy ntuple)")


def _tagger(model: Any, ref: ModelRef, device: str) -> Any:
    """The worker's ONNX tagger for this model, built once per worker process."""
    from wtag.inference import OnnxTagger

    state = worker_state()
    key = f"onnx:{ref.sha256}:{device}"
    if key not in state:
        # One single-threaded worker per core: ORT's own thread pool would oversubscribe the cores.
        state[key] = OnnxTagger(model, device=device, intra_op_threads=1)
    return state[key]


def write_scores(path: str | Path, jets: ak.Array, score: np.ndarray, provenance: str) -> None:
    """The ``scores`` tree (ids, pt, eta, msd, score) and its provenance, atomically."""
    types = {name: np.int32 for name in schema.SCORES_ID_BRANCHES}
    types.update({name: np.float64 for name in schema.SCORES_JET_BRANCHES})
    types["score"] = np.float32
    data = {name: ak.to_numpy(jets[name]).astype(types[name]) for name in types if name != "score"}
    data["score"] = np.asarray(score, dtype=np.float32)
    with atomic_path(path) as tmp:
        with uproot.recreate(tmp) as f:
            tree = f.mktree(schema.SCORES_TREE, types)
            if len(score):
                tree.extend(data)
            f[PROVENANCE_KEY] = provenance


def score_task(task: ScoreTask, model: Any, ref: ModelRef, device: str, select: bool) -> dict[str, Any]:
    """One task: score the task's inputs and write one scores file per input (or skip a finished task).

    A bad input (WtagError) is returned as ``{"error": message}``, not raised: an expected outcome the worker
    need not log with a traceback. Anything else raises and is reported by the client."""
    try:
        return _score_task(task, model, ref, device, select)
    except WtagError as exc:
        return {"inputs": [{"path": p} for p in task.inputs], "error": " ".join(str(exc).split())}


def _score_task(task: ScoreTask, model: Any, ref: ModelRef, device: str, select: bool) -> dict[str, Any]:
    from wtag.jets import select as select_jets

    start, cpu = time.perf_counter(), time.process_time()
    for name in task.inputs:
        if not Path(name).is_file():
            raise WtagError(f"{name}: no such file")
    digests = [file_digest(p) for p in task.inputs]
    inputs = [{"path": p, "bytes": Path(p).stat().st_size, "sha256": d} for p, d in zip(task.inputs, digests)]
    provenance = _provenance(task, digests, ref, select)
    done = [_complete(Path(out), provenance) for out in task.outputs]
    result: dict[str, Any] = {"inputs": inputs, "outputs": list(task.outputs), "skipped": False}
    if all(n is not None for n in done):
        return {**result, "skipped": True, "jets": [int(n) for n in done], "histogram": None,
                "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}
    tagger = _tagger(model, ref, device)
    histogram = np.zeros(HIST_BINS, dtype=np.int64)
    counts = []
    for jets, out in zip(_read_task_jets(task), task.outputs):
        if select:
            jets = select_jets(jets)
        score = tagger.score_jets(jets) if len(jets) else np.zeros(0, dtype=np.float32)
        write_scores(out, jets, score, provenance)
        histogram += np.histogram(np.clip(score, 0.0, 1.0), bins=HIST_BINS, range=(0.0, 1.0))[0]
        counts.append(len(score))
    return {**result, "jets": counts, "histogram": histogram, "provider": tagger.provider,
            "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}


def _resolve(inputs: Sequence[str], cache_dir: Path) -> list[_Resolved]:
    """Expand globs and download URLs; an input that cannot be resolved is a failure, not a stop."""
    import glob

    from wtag.sources.remote import is_url, resolve_inputs

    out: list[_Resolved] = []
    for name in inputs:
        names = [name]
        if not is_url(name) and glob.has_magic(name):
            names = sorted(glob.glob(name))
            if not names:
                out.append(_Resolved(name, None, f"{name}: no file matches this pattern"))
                continue
        for item in names:
            try:
                out.append(_Resolved(item, resolve_inputs([item], cache_dir)[0]))
            except WtagError as exc:
                out.append(_Resolved(item, None, str(exc)))
    seen: set[Path] = set()
    for r in out:
        if r.path is not None:
            if r.path.resolve() in seen:
                raise WtagError(f"{r.name}: given twice")
            seen.add(r.path.resolve())
    return out


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if isinstance(exc, WtagError) else f"{type(exc).__name__}: {text}"


def score_files(config: ScoreConfig, execution: ExecutionConfig | None = None,
                progress: bool = True) -> ScoreSummary:
    """Score every input into ``config.output`` on Dask; failures are collected, not raised."""
    from tqdm import tqdm

    from wtag.inference import load_model_bytes

    execution = execution or ExecutionConfig()
    output = Path(config.output)
    output.mkdir(parents=True, exist_ok=True)
    model_bytes, source = load_model_bytes(config.model)
    ref = ModelRef(sha256=str(source.sha256), version=source.version, uri=config.model)
    resolved = _resolve(config.inputs, output / "downloads")
    failures = [r.error for r in resolved if r.error]
    good = [r.path for r in resolved if r.path is not None]
    tasks = plan_tasks(good, output) if good else []
    results: list[dict[str, Any]] = []
    histogram = np.zeros(HIST_BINS, dtype=np.int64)
    workers = 1
    start = time.perf_counter()  # reset once a cluster is up: jets/s counts the scoring, not the start-up
    with tqdm(total=len(tasks), unit="task", desc="score", disable=not progress) as bar:
        def record(i: int, result: dict[str, Any]) -> None:
            if "error" in result:
                failures.append(result["error"] if tasks[i].inputs[0] in result["error"]
                                else f"{', '.join(tasks[i].inputs)}: {result['error']}")
            else:
                results.append(result)
            bar.update(1)

        def fail(i: int, exc: BaseException) -> None:
            failures.append(_one_line(exc) if isinstance(exc, WtagError) and tasks[i].inputs[0] in str(exc)
                            else f"{', '.join(tasks[i].inputs)}: {_one_line(exc)}")
            bar.update(1)

        if tasks and not scheduler_address(execution.scheduler) and (execution.workers == 1 or len(tasks) == 1):
            for i, task in enumerate(tasks):
                try:
                    record(i, score_task(task, model_bytes, ref, config.device, config.select))
                except Exception as exc:  # one bad file must not stop the others
                    fail(i, exc)
        elif tasks:
            with dask_client(execution, max_workers=len(tasks), quiet=not progress) as client:
                workers = len(client.scheduler_info(n_workers=-1)["workers"])
                model = client.scatter(model_bytes, broadcast=True, hash=False)
                start = time.perf_counter()
                run_tasks(client, score_task, [(t, model, ref, config.device, config.select) for t in tasks],
                          on_result=record, on_error=fail, key_prefix="score")
    seconds = time.perf_counter() - start
    for result in results:
        if result["histogram"] is not None:
            histogram += result["histogram"]
    jets = sum(sum(r["jets"]) for r in results if not r["skipped"])
    order = {task.inputs: i for i, task in enumerate(tasks)}
    results.sort(key=lambda r: order[tuple(d["path"] for d in r["inputs"])])
    return ScoreSummary(results, failures, jets, seconds, workers, histogram, ref)


def manifest(summary: ScoreSummary) -> dict[str, Any]:
    """Outputs with their jets, the inputs they came from, and the failures."""
    outputs = []
    for r in summary.results:
        for i, (out, n) in enumerate(zip(r["outputs"], r["jets"])):
            outputs.append({"output": out, "input": r["inputs"][i]["path"], "jets": int(n),
                            "skipped": bool(r["skipped"])})
    return {"model": dataclasses.asdict(summary.model), "outputs": outputs, "failed": summary.failures,
            "jets_scored": summary.jets}


def plot_histogram(histogram: np.ndarray, path: Path, title: str) -> None:
    """The score distribution of every jet scored (skipped files excluded)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    ax.stairs(histogram, edges, fill=True, alpha=0.6)
    ax.set_xlabel("tagger score")
    ax.set_ylabel("jets")
    ax.set_title(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)


def score_step(config: ScoreConfig, experiment_id: str, execution: ExecutionConfig | None = None,
               run_id: str | None = None, progress: bool = True) -> tuple[str, ScoreSummary]:
    """``score_files`` inside an MLflow run; a failed input makes the run FAILED and raises one WtagError
    with one line per failed input, after the others' outputs and the run's records are written."""
    import mlflow

    from wtag.tracking import tracked_run

    description = f"score {len(config.inputs)} input(s) with {config.model}"
    with tracked_run(EntryPoint.SCORE, f"score-{len(config.inputs)}", description, config.params(),
                     run_id=run_id) as run:
        summary = score_files(config, execution, progress=progress)
        inputs = [d for r in summary.results for d in r["inputs"]]
        mlflow.set_tags({Tag.MODEL_URI: config.model, Tag.ONNX_SHA256: summary.model.sha256,
                         Tag.REGISTERED_VERSION: summary.model.version or ""})
        mlflow.log_metrics({"jets_scored": summary.jets, "jets_per_s": summary.jets_per_s,
                            "workers": summary.workers, "seconds": summary.seconds,
                            "files_failed": len(summary.failures),
                            "files_skipped": sum(len(r["inputs"]) for r in summary.results if r["skipped"]),
                            "files_scored": sum(len(r["inputs"]) for r in summary.results if not r["skipped"])})
        with tempfile.TemporaryDirectory() as tmp:
            write_json(Path(tmp) / Artifact.SCORE_INPUTS, inputs)
            write_json(Path(tmp) / Artifact.MANIFEST, manifest(summary))
            plot_histogram(summary.histogram, Path(tmp) / Artifact.SCORE_PLOT,
                           f"{config.model} (sha256 {summary.model.sha256[:12]})")
            mlflow.log_artifacts(tmp)
        print(f"score: {summary.jets} jets in {summary.seconds:.1f} s ({summary.jets_per_s:.0f} jets/s) on "
              f"{summary.workers} worker(s); outputs in {config.output}", file=sys.stderr)
        if summary.failures:
            raise WtagError(f"{len(summary.failures)} input(s) failed, the others were scored:\n  "
                            + "\n  ".join(summary.failures))
        return str(run.info.run_id), summary
