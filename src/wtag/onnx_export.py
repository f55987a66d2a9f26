"""The ``export`` step: a tagger run -> one self-contained ONNX graph, checked against the native model,
logged with ``mlflow.onnx``, registered as ``wtag`` and pointed to by the ``champion`` alias.

Standardization is baked into the graph (the taggers build it in as their first layers), so the graph takes
raw inputs and every ONNX Runtime client scores exactly like training; ``preprocess.json`` beside
``model.onnx`` documents those numbers for humans, as weaver-core ships it, but is never needed to score.
The alias moves only after conversion, contract check, parity and logging all succeeded, so a failed export
leaves production where it was.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wtag import schema
from wtag.errors import WtagError
from wtag.registry import existing_version, move_alias, register_export
from wtag.runs import (
    champion_of_newest_evaluation,
    decorrelated_of_newest_evaluation,
    find_dataset,
    load_tagger,
    tagger_run,
    train_config,
)
from wtag.schema import CHAMPION_ALIAS, DECORRELATED_ALIAS, REGISTERED_MODEL, Artifact, EntryPoint, Meta, Tag

# Parity thresholds on the whole test set, ONNX Runtime (CPU) vs the native model.
NN_MAX_ABS_DIFF = 1e-4  # neural networks: every jet
CUT_MAX_ABS_DIFF = 1e-5  # the cut tagger: the same arithmetic, float32 rounding only
DIFF_THRESHOLD = 1e-4  # a jet "differs" above this
TREE_MAX_FRAC_DIFF = 0.01  # trees: float32 threshold comparisons may flip a split for a few jets
PYFUNC_MAX_ABS_DIFF = 1e-3  # logged-model smoke check; pyfunc may run on CUDA (TF32) where a GPU is present
PYFUNC_CHECK_JETS = 256
PARITY_CHUNK = 8192
ONNX_PROVIDERS = ["CUDAExecutionProvider", "CPUExecutionProvider"]
PREPROCESS_FORMAT = "wtag-preprocess/1"


def create_session(model: bytes | str | os.PathLike[str], device: str = "auto") -> Any:
    """ONNX Runtime session with explicit providers (CUDA only when ``session.get_providers()`` confirms it).

    Delegates to :func:`wtag.inference.create_session`, the one place that decides providers.
    """
    from wtag.inference import create_session as _create_session

    return _create_session(model, device=device)


# ---------------------------------------------------------------------------------------------------------
# Conversion and the model contract


def _dims(value_info: Any) -> list[int | str | None] | None:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def _is_dynamic(dim: int | str | None) -> bool:
    return not isinstance(dim, int) or dim <= 0


def check_contract(model: Any, inputs: tuple[str, ...], what: str) -> None:
    """Fail unless the graph has exactly ``inputs`` (float32, dynamic batch, the schema's per-jet shapes) and
    one output ``score`` (float32, 1-D, dynamic batch)."""
    import onnx

    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    names = [i.name for i in graph_inputs]
    if sorted(names) != sorted(inputs):
        raise WtagError(f"{what}: ONNX inputs are {names}, the contract needs {list(inputs)}")
    for value in graph_inputs:
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            raise WtagError(f"{what}: ONNX input '{value.name}' is not float32")
        dims = _dims(value)
        want = schema.expected_shape(value.name)
        if dims is None or len(dims) != len(want) + 1 or tuple(dims[1:]) != want or not _is_dynamic(dims[0]):
            raise WtagError(f"{what}: ONNX input '{value.name}' has shape {dims}, the contract needs "
                            f"[N, {', '.join(str(d) for d in want)}] with a dynamic batch axis N")
    outputs = list(model.graph.output)
    if [o.name for o in outputs] != [schema.OUTPUT_SCORE]:
        raise WtagError(f"{what}: ONNX outputs are {[o.name for o in outputs]}, the contract needs exactly "
                        f"['{schema.OUTPUT_SCORE}']")
    out = outputs[0]
    dims = _dims(out)
    if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise WtagError(f"{what}: ONNX output '{out.name}' is not float32")
    if dims is None or len(dims) != 1 or not _is_dynamic(dims[0]):
        raise WtagError(f"{what}: ONNX output '{out.name}' has shape {dims}, the contract needs [N]")


def _name_batch_axis(model: Any) -> None:
    """Call the dynamic batch axis ``N`` on every graph input and the output, as the contract writes it."""
    for value in [*model.graph.input, *model.graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape") and tensor.shape.dim and not tensor.shape.dim[0].HasField("dim_value"):
            tensor.shape.dim[0].dim_param = "N"


def metadata(tagger: Any, run_id: str, dataset_digest: str) -> dict[str, str]:
    """The ``metadata_props`` every exported graph carries (docs/contracts.md), so a server needs nothing else."""
    return {
        Meta.TAGGER: tagger.name,
        Meta.FAMILY: tagger.family,
        Meta.INPUTS: json.dumps(list(tagger.inputs)),
        Meta.HL_FEATURES: json.dumps(list(schema.HL_FEATURES)),
        Meta.PARTICLE_FEATURES: json.dumps(list(schema.PARTICLE_FEATURES)),
        Meta.MAX_PARTICLES: str(schema.MAX_PARTICLES),
        Meta.PREPROCESSING: "baked",
        Meta.DATASET_DIGEST: dataset_digest,
        Meta.RUN_ID: run_id,
    }


def to_onnx_with_metadata(tagger: Any, run_id: str, dataset_digest: str) -> Any:
    """The tagger's ONNX graph, contract-checked, with the wtag metadata; any conversion failure is a WtagError."""
    import onnx

    what = f"tagger '{tagger.name}' (run {run_id})"
    try:
        model = tagger.to_onnx()
    except WtagError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise WtagError(f"{what}: ONNX conversion failed: {type(exc).__name__}: {first}") from exc
    if not isinstance(model, onnx.ModelProto):
        raise WtagError(f"{what}: to_onnx() returned {type(model).__name__}, not an onnx.ModelProto")
    check_contract(model, tuple(tagger.inputs), what)
    _name_batch_axis(model)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                        **metadata(tagger, run_id, dataset_digest)})
    return _checked(model, what)


def _checked(model: Any, what: str) -> Any:
    """``model`` if the ONNX checker accepts it; its first complaint as a WtagError otherwise."""
    import onnx

    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise WtagError(f"{what}: the ONNX graph is invalid: {str(exc).strip().splitlines()[0]}") from exc
    return model


ENSEMBLE_TAGGER = "ensemble"
# Ensemble graphs only: JSON list of {"tagger", "run_id"}, the member graphs whose scores are averaged. Kept out of
# wtag.schema on purpose: schema.py is part of the generator's provenance (wtag.sources.pythia), so any edit there
# invalidates every generated chunk.
MEMBERS_META = "wtag.members"


def ensemble_graph(members: Sequence[Any]) -> Any:
    """One ONNX graph whose ``score`` is the mean of its members' scores (a seed ensemble of one tagger, or a
    hybrid of taggers on different inputs), so a server scores it unchanged.

    Members are exported wtag graphs (contract-checked, with metadata) of one dataset; each keeps its own nodes
    and weights under the prefix ``m{i}_``, and inputs of the same name are shared. Members on different
    ``ai.onnx`` opsets are converted to the newest one first."""
    import onnx
    from onnx import compose, helper, version_converter

    if len(members) < 2:
        raise WtagError(f"an ensemble needs at least two member graphs, got {len(members)}")
    props = [{p.key: p.value for p in m.metadata_props} for m in members]
    digests = {p.get(Meta.DATASET_DIGEST, "") for p in props}
    if len(digests) > 1:
        raise WtagError(f"ensemble members were trained on different datasets ({', '.join(sorted(digests))})")
    if any(m.functions for m in members):
        raise WtagError("ensemble members with ONNX local functions are not supported")
    opset = max(_ai_onnx_opset(m) for m in members)
    inputs: dict[str, Any] = {}
    nodes, initializers, outputs = [], [], []
    imports: dict[str, int] = {}
    for i, member in enumerate(members):
        if _ai_onnx_opset(member) != opset:
            try:
                member = version_converter.convert_version(member, opset)
            except Exception as exc:
                raise WtagError(f"ensemble member {i} ({props[i].get(Meta.TAGGER, '?')}): cannot convert from "
                                f"opset {_ai_onnx_opset(member)} to {opset}: {exc}") from exc
        graph = compose.add_prefix_graph(member.graph, f"m{i}_", rename_inputs=False)
        weights = {t.name for t in graph.initializer}
        for value in graph.input:
            if value.name in weights:  # an initializer listed as an input (IR < 4 style) stays a weight
                continue
            known = inputs.setdefault(value.name, value)
            if known.type != value.type:
                raise WtagError(f"ensemble members disagree on input '{value.name}': {known.type} vs {value.type}")
        output = f"m{i}_{schema.OUTPUT_SCORE}"
        if output not in {o.name for o in graph.output}:
            raise WtagError(f"ensemble member {i} has no '{schema.OUTPUT_SCORE}' output")
        nodes.extend(graph.node)
        initializers.extend(graph.initializer)
        outputs.append(output)
        for entry in member.opset_import:
            imports[entry.domain] = max(imports.get(entry.domain, 0), entry.version)
    nodes.append(helper.make_node("Mean", outputs, [schema.OUTPUT_SCORE], name="ensemble_mean"))
    graph = helper.make_graph(nodes, ENSEMBLE_TAGGER, list(inputs.values()),
                              [helper.make_tensor_value_info(schema.OUTPUT_SCORE, onnx.TensorProto.FLOAT, ["N"])],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(imports.items())],
                              producer_name="wtag")
    model.ir_version = max(m.ir_version for m in members)
    names = list(inputs)
    run_ids = [p.get(Meta.RUN_ID, "") for p in props]
    meta = {**props[0], Meta.TAGGER: ENSEMBLE_TAGGER, Meta.INPUTS: json.dumps(names),
            Meta.FAMILY: ENSEMBLE_TAGGER if len({p.get(Meta.TAGGER) for p in props}) == 1 else "hybrid",
            Meta.RUN_ID: ",".join(run_ids),
            MEMBERS_META: json.dumps([{"tagger": p.get(Meta.TAGGER, ""), "run_id": p.get(Meta.RUN_ID, "")}
                                      for p in props])}
    costs = [p.get(Meta.BYTES_PER_JET) for p in props]
    meta.pop(Meta.BYTES_PER_JET, None)
    if all(costs):
        meta[Meta.BYTES_PER_JET] = str(sum(int(float(c)) for c in costs))
    onnx.helper.set_model_props(model, meta)
    check_contract(model, tuple(names), "ensemble")
    return _checked(model, "ensemble")


def _ai_onnx_opset(model: Any) -> int:
    return max((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), default=0)


class MemberMean:
    """The native side of :func:`ensemble_graph`: the member taggers, each scoring its own inputs, with the name,
    family, inputs and standardization that parity and ``preprocess.json`` read from a tagger.
    Its family takes the loosest member rule: the tree rule when a member is a tree."""

    name = ENSEMBLE_TAGGER

    def __init__(self, taggers: Sequence[Any]) -> None:
        self.members = list(taggers)
        self.inputs = tuple(dict.fromkeys(name for t in self.members for name in t.inputs))
        self.standardization = self.members[0].standardization
        families = {t.family for t in self.members}
        self.family = "tree" if "tree" in families else ("cut" if families == {"cut"} else ENSEMBLE_TAGGER)

    def member_scores(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        return [native_scores(t, {k: inputs[k] for k in t.inputs}) for t in self.members]


def ensemble_metrics(label: np.ndarray, msd: np.ndarray, score: np.ndarray, members: Mapping[str, np.ndarray],
                     n_bootstrap: int, seed: int = 0) -> dict[str, float]:
    """The ensemble's test metrics (as a tagger run logs them) and its paired r50 and AUC gain over the best
    member (by r50), so the registry says what averaging bought, with the error of that difference."""
    from wtag import metrics

    out = metrics.summary(label, score, msd, n_bootstrap=n_bootstrap, seed=seed)
    if n_bootstrap < 2:
        return out
    samples = metrics.bootstrap(label, msd, {ENSEMBLE_TAGGER: score, **members}, n_bootstrap, seed)
    point = {name: metrics.background_rejection(label, s, 0.5) for name, s in members.items()}
    best = max(point, key=lambda name: point[name])
    for key in ("r50", "auc"):
        mine = out[f"test_{key}"]
        theirs = point[best] if key == "r50" else metrics.roc_auc(label, members[best])
        out[f"test_{key}_gain_vs_best_member"] = mine - theirs
        out[f"test_{key}_gain_vs_best_member_err"] = metrics.spread_of_difference(
            samples[ENSEMBLE_TAGGER][key], samples[best][key])
    return out


# ---------------------------------------------------------------------------------------------------------
# Parity


def native_scores(tagger: Any, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """The tagger's own scores (float64), shape-checked."""
    n = len(next(iter(inputs.values())))
    native = np.asarray(tagger.predict(inputs), dtype=np.float64)
    if native.shape != (n,):
        raise WtagError(f"tagger '{tagger.name}': predict returned shape {native.shape}, expected ({n},)")
    return native


def onnx_scores(model: Any, inputs: Mapping[str, np.ndarray], what: str, chunk: int = PARITY_CHUNK) -> np.ndarray:
    """ONNX Runtime (CPU, the reference semantics) scores of raw inputs, in chunks, shape- and dtype-checked."""
    n = len(next(iter(inputs.values())))
    session = create_session(model.SerializeToString(), device="cpu")
    parts = []
    for start in range(0, n, chunk):
        feed = {k: np.ascontiguousarray(v[start:start + chunk], dtype=np.float32) for k, v in inputs.items()}
        (out,) = session.run([schema.OUTPUT_SCORE], feed)
        rows = min(chunk, n - start)
        if out.shape != (rows,) or out.dtype != np.float32:
            raise WtagError(f"tagger '{what}': ONNX output '{schema.OUTPUT_SCORE}' has shape {out.shape} "
                            f"and dtype {out.dtype}, expected ({rows},) float32")
        parts.append(out)
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def scores_both(tagger: Any, model: Any, inputs: Mapping[str, np.ndarray],
                chunk: int = PARITY_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Native and ONNX Runtime scores for the same raw inputs."""
    return native_scores(tagger, inputs), onnx_scores(model, inputs, tagger.name, chunk)


def parity_figures(native: np.ndarray, onnx_scores: np.ndarray) -> dict[str, float]:
    """``onnx_max_abs_diff`` and ``onnx_frac_diff`` (fraction of jets with |diff| > 1e-4); NaN counts as inf."""
    ok = np.isfinite(native) & np.isfinite(onnx_scores)
    diff = np.where(ok, np.abs(onnx_scores - native), np.inf)
    return {"onnx_max_abs_diff": float(diff.max()) if len(diff) else 0.0,
            "onnx_frac_diff": float((diff > DIFF_THRESHOLD).mean()) if len(diff) else 0.0,
            "onnx_parity_jets": float(len(diff))}


def check_parity(tagger: Any, figures: Mapping[str, float]) -> None:
    """Apply the family's threshold: trees by the fraction of differing jets, everything else by max |diff|."""
    max_diff, frac = figures["onnx_max_abs_diff"], figures["onnx_frac_diff"]
    n = int(figures.get("onnx_parity_jets", 0))
    where = f"tagger '{tagger.name}': ONNX vs native scores on {n} test jets"
    if tagger.family == "tree":
        if not frac < TREE_MAX_FRAC_DIFF or not math.isfinite(max_diff):
            raise WtagError(f"{where}: {frac:.2%} of jets differ by more than {DIFF_THRESHOLD:g} "
                            f"(limit {TREE_MAX_FRAC_DIFF:.0%}; max |diff| {max_diff:.3g})")
        return
    limit = CUT_MAX_ABS_DIFF if tagger.family == "cut" else NN_MAX_ABS_DIFF
    if not max_diff <= limit:
        raise WtagError(f"{where}: max |diff| {max_diff:.3g} exceeds {limit:g} ({frac:.2%} of jets above "
                        f"{DIFF_THRESHOLD:g})")


def parity(tagger: Any, model_proto: Any, inputs: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Parity figures over all of ``inputs`` (the whole test set); WtagError when the family's limit is broken."""
    figures = parity_figures(*scores_both(tagger, model_proto, inputs))
    check_parity(tagger, figures)
    return figures


# ---------------------------------------------------------------------------------------------------------
# Preprocessing documentation


def preprocessing(tagger: Any, run_id: str, dataset_digest: str) -> dict[str, Any]:
    """What ``preprocess.json`` says: input layout, the standardization baked into the graph, the output."""
    std = tagger.standardization
    inputs: dict[str, Any] = {}
    for name in tagger.inputs:
        entry: dict[str, Any] = {"shape": [-1, *schema.expected_shape(name)], "dtype": "float32", "raw": True}
        if name == schema.INPUT_HL:
            entry.update(features=list(schema.HL_FEATURES),
                         standardization={"mean": std.hl_mean, "std": std.hl_std,
                                          "applied": "(x - mean) / std per column, inside the graph"})
        elif name == schema.INPUT_PARTICLES:
            entry.update(features=list(schema.PARTICLE_FEATURES), max_particles=schema.MAX_PARTICLES,
                         ordering="pT descending, zero rows padded at the end; mask = raw pt > 0",
                         standardization={"mean": std.particle_mean, "std": std.particle_std,
                                          "applied": "(x - mean) / std per feature on real particles, "
                                                     "padded rows stay masked, inside the graph"})
        elif name == schema.INPUT_IMAGES:
            entry.update(pixels=schema.IMAGE_PIXELS, half_width=schema.IMAGE_HALF_WIDTH,
                         pixel="summed constituent pT [GeV] in (deta, dphi) bins around the jet axis",
                         standardization={"image_scale": std.image_scale,
                                          "applied": "pixels divided by image_scale (mean total image pT), "
                                                     "inside the graph"})
        inputs[name] = entry
    return {
        "format": PREPROCESS_FORMAT,
        "tagger": tagger.name,
        "family": tagger.family,
        "run_id": run_id,
        "dataset_digest": dataset_digest,
        "preprocessing": "baked",
        "why": ("The graph takes raw features and standardizes them itself, so every ONNX Runtime client "
                "(REST server, Triton, mlflow pyfunc) scores exactly as in training; this file documents the "
                "numbers and is never needed to score."),
        "inputs": inputs,
        "output": {"name": schema.OUTPUT_SCORE, "shape": [-1], "dtype": "float32",
                   "meaning": "probability that the jet is a merged W (signal)"},
    }


# ---------------------------------------------------------------------------------------------------------
# The step


def _convert(sources: Sequence[Any], ds: Any, digest: str) -> tuple[Any, Any, dict[str, np.ndarray]]:
    """(native tagger, ONNX graph, per-member native test scores): one tagger run, or several as their mean."""
    taggers = [load_tagger(source, ds) for source in sources]
    graphs = [to_onnx_with_metadata(t, src.info.run_id, digest) for t, src in zip(taggers, sources)]
    if len(taggers) == 1:
        return taggers[0], graphs[0], {}
    tagger = MemberMean(taggers)
    model = ensemble_graph(graphs)
    inputs = ds.test.inputs(tagger.inputs)
    scores = tagger.member_scores(inputs)
    return tagger, model, {f"{t.name}-{src.info.run_id[:8]}": v for t, src, v in zip(taggers, sources, scores)}


def _export_run(sources: Sequence[Any], params: Mapping[str, str], model_name: str, register: bool,
                alias: str, export_run_id: str | None, n_bootstrap: int) -> tuple[str, str]:
    """Convert, check, log (and register) inside a new ``export`` run; the alias moves last."""
    import mlflow
    from mlflow.models import infer_signature
    from mlflow.tracking import MlflowClient

    from wtag.tracking import tracked_run

    run_id, tagger_name, digest = params["source_run_id"], params["tagger"], params["dataset_digest"]
    family = sources[0].data.tags.get(Tag.FAMILY, "") if len(sources) == 1 else ""  # an ensemble: set below
    tags = {Tag.SOURCE_RUN_ID: run_id, Tag.TAGGER: tagger_name, Tag.DATASET_DIGEST: digest, Tag.FAMILY: family}
    description = f"export {tagger_name} (run {run_id}) to ONNX, check parity, register as {model_name}"
    label = run_id if len(sources) == 1 else f"{len(sources)}-" + "-".join(s.info.run_id[:4] for s in sources)
    with tracked_run(EntryPoint.EXPORT, f"export-{tagger_name}-{label[:8]}", description, params, tags=tags,
                     nested=mlflow.active_run() is not None and export_run_id is None,
                     run_id=export_run_id) as run:
        ds = find_dataset(sources[0].info.experiment_id, digest)
        tagger, model, members = _convert(sources, ds, digest)
        inputs = ds.test.inputs(tagger.inputs)
        native = np.mean(list(members.values()), axis=0) if members else native_scores(tagger, inputs)
        scores = onnx_scores(model, inputs, tagger_name)
        figures = parity_figures(native, scores)
        blob = model.SerializeToString()
        mlflow.log_metrics({**figures, "onnx_model_bytes": float(len(blob))})
        check_parity(tagger, figures)
        info = preprocessing(tagger, run_id, digest)
        if members:
            meta = {p.key: p.value for p in model.metadata_props}
            mlflow.set_tag(Tag.FAMILY, meta[Meta.FAMILY])
            info["members"] = json.loads(meta[MEMBERS_META])
            mlflow.log_metrics(ensemble_metrics(ds.test.label, ds.test.msd, scores, members, n_bootstrap))
        example = {k: np.ascontiguousarray(v[:5], dtype=np.float32) for k, v in inputs.items()}
        signature = infer_signature(example, {schema.OUTPUT_SCORE: scores[:5].astype(np.float32)})
        logged = mlflow.onnx.log_model(model, name=Artifact.MODEL, signature=signature, input_example=example,
                                       metadata={"wtag": info}, save_as_external_data=False,
                                       onnx_execution_providers=ONNX_PROVIDERS)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Artifact.PREPROCESS
            path.write_text(json.dumps(info, indent=2) + "\n")
            MlflowClient().log_model_artifact(logged.model_id, str(path))
            mlflow.log_artifact(str(path))
        check = {k: np.ascontiguousarray(v[:PYFUNC_CHECK_JETS], dtype=np.float32) for k, v in inputs.items()}
        served = np.asarray(mlflow.pyfunc.load_model(logged.model_uri).predict(check)[schema.OUTPUT_SCORE],
                            dtype=np.float64)
        pyfunc_diff = float(np.max(np.abs(served - scores[:len(served)]))) if len(served) else 0.0
        mlflow.log_metric("pyfunc_max_abs_diff", pyfunc_diff)
        if not pyfunc_diff <= PYFUNC_MAX_ABS_DIFF:
            raise WtagError(f"tagger '{tagger_name}': the logged model scores differ from ONNX Runtime by "
                            f"{pyfunc_diff:.3g} through mlflow.pyfunc")
        mlflow.set_tag(Tag.MODEL_URI, str(logged.model_uri))
        version = ""
        if register:
            version = register_export(MlflowClient().get_run(run.info.run_id), model_name, DIFF_THRESHOLD)
            mlflow.set_tag(Tag.REGISTERED_VERSION, version)
            move_alias(model_name, alias, version)
        print(f"export: {tagger_name} -> ONNX ({len(blob)} bytes), max |diff| {figures['onnx_max_abs_diff']:.3g}, "
              f"{figures['onnx_frac_diff']:.2%} of {len(native)} jets above {DIFF_THRESHOLD:g}"
              + (f"; registered {model_name} version {version}" if version else ""), file=sys.stderr)
        return str(run.info.run_id), version


def member_runs(run_ids: str) -> list[Any]:
    """The tagger runs of ``run_id``: one id, or a comma-separated list exported as one mean (an ensemble),
    every member FINISHED, distinct and trained on the same dataset."""
    ids = [r.strip() for r in run_ids.split(",") if r.strip()]
    if not ids:
        raise WtagError("run_id: no run id given")
    repeated = sorted({r for r in ids if ids.count(r) > 1})
    if repeated:
        raise WtagError(f"run_id: {', '.join(repeated)} listed twice (an ensemble averages distinct runs)")
    runs = [tagger_run(r) for r in ids]
    digests = {r.info.run_id: r.data.params.get("dataset_digest", "") for r in runs}
    if len(set(digests.values())) > 1:
        raise WtagError("run_id: an ensemble's members must share one dataset; got "
                        + ", ".join(f"{r[:8]} on {d[:12]}" for r, d in digests.items()))
    return runs


def _note_reuse(export_run_id: str, previous_run: str, version: str) -> None:
    """Say on the run ``mlflow run`` created why it stays empty: the export already exists."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_tag(export_run_id, Tag.REUSED_RUN, previous_run)
    client.set_tag(export_run_id, "mlflow.note.content",
                   f"Nothing to do: this tagger run was exported by run {previous_run} as version {version}; "
                   "the alias now points there.")


def export_step(experiment_id: str, run_id: str | None = None, register: bool = True,
                alias: str = CHAMPION_ALIAS, export_run_id: str | None = None,
                model_name: str = REGISTERED_MODEL) -> tuple[str, str]:
    """Export a tagger run (default: the newest evaluation's champion, or with ``alias`` = ``decorrelated`` its
    decorrelated choice); return (export run id, model version). A comma-separated ``run_id`` exports the
    runs as one graph scoring their mean (``ensemble_graph``), with its own test metrics and its gain over
    the best member.

    Exporting a run that already has a registered version only re-points the alias; a FINISHED export run
    with the same parameters and code commit is reused (registered if it was not). The version is "" when
    ``register`` is False.
    """
    from wtag.tracking import find_finished_run

    if not run_id:  # alias "decorrelated": the evaluation's best candidate with small mass sculpting
        run_id = (decorrelated_of_newest_evaluation(experiment_id) if alias == DECORRELATED_ALIAS
                  else champion_of_newest_evaluation(experiment_id))
    sources = member_runs(run_id)
    run_id = ",".join(r.info.run_id for r in sources)
    tagger_name = sources[0].data.tags[Tag.TAGGER] if len(sources) == 1 else ENSEMBLE_TAGGER
    params = {"source_run_id": run_id, "tagger": tagger_name,
              "dataset_digest": sources[0].data.params.get("dataset_digest", "")}
    if register:
        version = existing_version(model_name, run_id)
        if version is not None:
            move_alias(model_name, alias, str(version.version))
            previous_run = version.tags.get(Tag.EXPORT_RUN_ID) or version.run_id
            if export_run_id is not None:
                _note_reuse(export_run_id, previous_run, str(version.version))
            print(f"export: run {run_id} is already {model_name} version {version.version} "
                  f"(export run {previous_run})", file=sys.stderr)
            return str(previous_run), str(version.version)
    if export_run_id is None:
        previous = find_finished_run(experiment_id, EntryPoint.EXPORT, params)
        if previous is not None and previous.data.tags.get(Tag.MODEL_URI):
            version_number = ""
            if register:
                version_number = register_export(previous, model_name, DIFF_THRESHOLD)
                move_alias(model_name, alias, version_number)
            print(f"export: reusing run {previous.info.run_id}", file=sys.stderr)
            return str(previous.info.run_id), version_number
    n_bootstrap = train_config(sources[0].data.params).n_bootstrap
    return _export_run(sources, params, model_name, register, alias, export_run_id, n_bootstrap)
