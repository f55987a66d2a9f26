"""Where the taggers' ceiling is: learning curves and what the jet-level features carry. Markdown tables on stdout.

    python bench/ceiling.py curves   [--models bdt,dnn,pfn] [--fractions 0.125 0.25 0.5 1] [--seeds 42 43 44]
    python bench/ceiling.py ablation [--models bdt,dnn] [--seeds 42 43 44]
    python bench/ceiling.py ensemble --runs RUN,RUN,RUN [--runs RUN,...]
    python bench/ceiling.py reference --experiments DETECTOR_LEVEL ... GENERATOR_LEVEL [--models cut,bdt,...]

``curves`` and ``ablation`` read a prepared dataset (``--dataset``, default the benchmark sample under data/prepared) and train the
real tagger classes with their default hyperparameters and training weights; only the test set scores. ``curves``
trains on nested, class-stratified subsets of the training split (the same jets at every seed; the validation
and test splits stay whole) and says which taggers still climb between the last two sizes. ``ablation`` blanks
jet-level columns of ``hl`` (a constant column carries no information: trees never split on it and a standardized
constant is zero), so the taggers keep their input contract. ``ensemble`` reads the logged test scores of tagger
runs (e.g. one tagger at several seeds) and scores their mean, with bootstrap errors paired over the same
resamples, so the gain over the members is measured, not guessed. ``reference`` compares the plain tagger runs
(seeds, default training) of experiments trained on different simulation levels (e.g. the benchmark with the
detector and pileup, and the same at ``--detector false --pileup 0``), per tagger and as seed ensembles, against
the last experiment's best: where each family sits between the cut and the generator-level ceiling. With
``MLFLOW_TRACKING_URI`` set, one run in the ``wtag-bench-ceiling`` experiment gets the parameters, the table and
the figure.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wtag import metrics, schema
from wtag.dataset import PreparedDataset, Split, Standardization, load_prepared
from wtag.errors import WtagError, exit_status
from wtag.taggers import TrainConfig, build_tagger
from wtag.weighting import weighted

EXPERIMENT = "wtag-bench-ceiling"
# Jet-level columns blanked per ablation row, cumulatively: what the issue asks about (eta separates ttbar from
# dijet production, pT conditions, the particle count is what mean/attention pooling cannot see past 64).
ABLATIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("all ten", ()),
    ("without eta", ("jet_eta_ak7",)),
    ("without eta, pT", ("jet_eta_ak7", "jet_pt_ak7")),
    ("without eta, pT, ncand", ("jet_eta_ak7", "jet_pt_ak7", "jet_ncand_ak7")),
)


@dataclasses.dataclass(frozen=True)
class Point:
    """One training: which tagger, on what, and the test metrics with their bootstrap errors."""

    model: str
    setting: str
    n_train: int
    seed: int
    result: dict[str, float]
    seconds: float


def nested_subsets(label: np.ndarray, fractions: Sequence[float], seed: int) -> dict[float, np.ndarray]:
    """Indices of class-stratified training subsets, each containing the smaller ones (one shuffle per class)."""
    rng = np.random.default_rng(seed)
    order = {cls: rng.permutation(np.flatnonzero(label == cls)) for cls in np.unique(label)}
    out = {}
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise WtagError(f"fraction {fraction} is not in (0, 1]")
        out[fraction] = np.sort(np.concatenate([idx[:max(1, round(fraction * len(idx)))] for idx in order.values()]))
    return out


def blank_columns(split: Split, columns: Sequence[str]) -> Split:
    """``split`` with the named ``hl`` columns set to zero (the model inputs keep their shape)."""
    if not columns:
        return split
    if split.hl is None:
        raise WtagError("the dataset has no 'hl' input to ablate")
    hl = split.hl.copy()
    hl[:, [schema.HL_FEATURES.index(c) for c in columns]] = 0.0
    return dataclasses.replace(split, hl=hl)


def train_and_test(model: str, train: Split, val: Split, test: Split, seed: int, n_bootstrap: int) -> tuple[dict, float]:
    """Fit one tagger (standardization refitted on ``train``) and score the test split."""
    config = TrainConfig(seed=seed, n_bootstrap=n_bootstrap)
    tagger = build_tagger(model, config, Standardization.fit(train))
    start = time.perf_counter()
    tagger.fit(weighted(train, config.weighting), weighted(val, config.weighting))
    seconds = time.perf_counter() - start
    scores = np.asarray(tagger.predict(test.inputs(tagger.inputs)), dtype=np.float64)
    return metrics.summary(test.label, scores, test.msd, n_bootstrap=n_bootstrap, seed=seed), seconds


def load_points(path: Path | None, stamp: dict[str, object]) -> dict[tuple[str, str, int], Point]:
    """Points already measured under the same stamp (dataset, mode, bootstrap): a killed grid resumes. A torn
    last line (the process died while writing it) is skipped."""
    if path is None or not path.is_file():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("stamp") == stamp:
            point = Point(**row["point"])
            done[(point.model, point.setting, point.seed)] = point
    return done


def run_grid(ds: PreparedDataset, models: Sequence[str], settings: Sequence[tuple[str, Callable[[], tuple]]],
             seeds: Sequence[int], n_bootstrap: int, points_file: Path | None = None,
             stamp: dict[str, object] | None = None) -> list[Point]:
    """Train every (model, setting, seed); each point is appended to ``points_file`` as soon as it is measured."""
    stamp = stamp or {}
    done = load_points(points_file, stamp)
    points = []
    total = len(models) * len(settings) * len(seeds)
    for model in models:
        for setting, splits in settings:
            todo = [seed for seed in seeds if (model, setting, seed) not in done]
            train, val, test = splits() if todo else (None, None, None)
            for seed in seeds:
                if (model, setting, seed) in done:
                    points.append(done[(model, setting, seed)])
                    print(f"[{len(points)}/{total}] {model:>5} {setting:>24} seed {seed}: measured before "
                          f"({points_file})", file=sys.stderr, flush=True)
                    continue
                result, seconds = train_and_test(model, train, val, test, seed, n_bootstrap)
                points.append(Point(model, setting, len(train), seed, result, seconds))
                if points_file is not None:
                    points_file.parent.mkdir(parents=True, exist_ok=True)
                    with points_file.open("a") as f:
                        f.write(json.dumps({"stamp": stamp, "point": dataclasses.asdict(points[-1])}) + "\n")
                print(f"[{len(points)}/{total}] {model:>5} {setting:>24} seed {seed}: r50 {result['test_r50']:.1f} "
                      f"+- {result['test_r50_err']:.1f}, auc {result['test_auc']:.4f} ({seconds:.0f} s)",
                      file=sys.stderr, flush=True)
    return points


def aggregate(points: Sequence[Point], key: str = "test_r50") -> dict[tuple[str, str], dict[str, float]]:
    """Per (model, setting): mean, seed std and the error of the mean."""
    out: dict[tuple[str, str], dict[str, float]] = {}
    for model, setting in dict.fromkeys((p.model, p.setting) for p in points):
        group = [p for p in points if (p.model, p.setting) == (model, setting)]
        values = np.array([p.result[key] for p in group])
        boot = np.array([p.result[f"{key}_err"] for p in group])
        seed_std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        # Error of the mean over seeds: the seed spread when measured, else the bootstrap error of one run.
        mean_err = (seed_std if len(values) > 1 else float(boot.mean())) / np.sqrt(len(values))
        out[(model, setting)] = {"mean": float(values.mean()), "seed_std": seed_std, "mean_err": float(mean_err),
                                 "n_train": float(group[0].n_train),
                                 "seconds": float(np.mean([p.seconds for p in group]))}
    return out


def table(points: Sequence[Point], title: str) -> str:
    r50, auc = aggregate(points), aggregate(points, "test_auc")
    lines = [title, "", "| tagger | training | training jets | test_r50 per seed | r50 mean +- seed std "
             "(+- error of mean) | test_auc mean +- seed std | train time [s] |", "|---|---|---:|---|---:|---:|---:|"]
    for (model, setting), r in r50.items():
        per_seed = ", ".join(f"{p.result['test_r50']:.1f} +- {p.result['test_r50_err']:.1f}" for p in points
                             if (p.model, p.setting) == (model, setting))
        a = auc[(model, setting)]
        lines.append(f"| {model} | {setting} | {int(r['n_train']):,} | {per_seed} | {r['mean']:.1f} +- "
                     f"{r['seed_std']:.1f} (+- {r['mean_err']:.1f}) | {a['mean']:.4f} +- {a['seed_std']:.4f} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def curve_verdicts(points: Sequence[Point], fractions: Sequence[float]) -> str:
    """Per tagger: the gain from the second-largest to the largest training set, in units of its error."""
    r50 = aggregate(points)
    last, before = (f"{f:g}" for f in sorted(fractions)[-1:-3:-1])
    lines = ["| tagger | r50 gain, last doubling | significance | still climbing (> 2 sigma) |", "|---|---:|---:|---|"]
    for model in dict.fromkeys(p.model for p in points):
        if (model, last) not in r50 or (model, before) not in r50:
            continue
        hi, lo = r50[(model, last)], r50[(model, before)]
        gain, err = hi["mean"] - lo["mean"], float(np.hypot(hi["mean_err"], lo["mean_err"]))
        sig = gain / err if err > 0 else float("inf")
        lines.append(f"| {model} | {gain:+.1f} +- {err:.1f} | {sig:+.1f} sigma | {'yes' if sig > 2 else 'no'} |")
    return "\n".join(lines)


def plot_curves(points: Sequence[Point], path: Path) -> Path:
    """The learning curves: per tagger, mean r50 over seeds with the error of that mean."""
    from wtag.plots import plot_learning_curves

    r50 = aggregate(points)
    curves = {}
    for model in dict.fromkeys(p.model for p in points):
        rows = sorted((r["n_train"], r["mean"], r["mean_err"]) for (m, _), r in r50.items() if m == model)
        curves[model] = tuple(list(c) for c in zip(*rows))
    return plot_learning_curves(curves, path)


def log_to_mlflow(mode: str, args: argparse.Namespace, data: dict[str, str], text: str, figure: Path | None) -> None:
    """One run in EXPERIMENT with the mode's parameters, ``data`` (what was read), the table and the figure."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    import mlflow

    from wtag.tracking import configure

    configure(os.environ["MLFLOW_TRACKING_URI"], EXPERIMENT)
    with mlflow.start_run(run_name=f"ceiling-{mode}"):
        mlflow.log_params({"mode": mode, "models": ",".join(args.models), "seeds": ",".join(map(str, args.seeds)),
                           "fractions": ",".join(map(str, args.fractions)), "n_bootstrap": args.n_bootstrap, **data})
        mlflow.log_text(text, f"ceiling_{mode}.md")
        if figure is not None:
            mlflow.log_artifact(str(figure), "plots")


def default_dataset(data_dir: Path) -> Path:
    """The prepared benchmark sample (the largest prepared pythia dataset when several exist)."""
    candidates = [p for p in (data_dir / "prepared").glob("pythia-*") if (p / "manifest.json").is_file()]
    if not candidates:
        raise WtagError(f"no prepared dataset under {data_dir / 'prepared'}; run `wtag prepare --sample benchmark`")
    return max(candidates, key=lambda p: (p / "train.npz").stat().st_size)


def ensemble_table(groups: Sequence[Sequence[str]], n_bootstrap: int, seed: int) -> str:
    """Per group of tagger runs: each member's and the mean score's test r50, the paired gain of the mean over the
    average member, over the best member, and over the first group's mean (one bootstrap, the same resamples for
    every score). One group becomes one served graph through the export step: ``wtag export --run-id A,B,C``."""
    from wtag.runs import read_test_arrays

    with tempfile.TemporaryDirectory(prefix="wtag-ensemble-") as tmp:
        arrays = {run: read_test_arrays(run, Path(tmp) / run) for run in dict.fromkeys(r for g in groups for r in g)}
    label, _, msd = next(iter(arrays.values()))
    if any(not np.array_equal(a[0], label) for a in arrays.values()):
        raise WtagError(f"runs {', '.join(arrays)} were not all tested on the same jets")
    scores = {run: a[1].astype(np.float64) for run, a in arrays.items()}
    means = [f"mean{i}" for i in range(len(groups))]
    for name, group in zip(means, groups, strict=True):
        scores[name] = np.mean([scores[run] for run in group], axis=0)
    boot = {name: b["r50"] for name, b in metrics.bootstrap(label, msd, scores, n_bootstrap, seed).items()}
    point = {name: metrics.background_rejection(label, s, 0.5) for name, s in scores.items()}

    def gain(name: str, other: str | list[str]) -> str:
        others = [other] if isinstance(other, str) else other
        value = point[name] - np.mean([point[o] for o in others])
        err = metrics.spread(boot[name] - np.mean([boot[o] for o in others], axis=0))
        return f"{value:+.1f} +- {err:.1f} ({value / err:+.1f} sigma)"

    def ratio(name: str, other: str) -> str:
        err = metrics.spread(boot[name] / boot[other])
        return f"{point[name] / point[other]:.2f} +- {err:.2f}"

    lines = ["| runs | members' test_r50 (+- bootstrap) | ensemble test_r50 | ensemble - mean member | "
             "ensemble - best member | ensemble - first row's ensemble; ratio | ensemble test_auc |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for i, (name, group) in enumerate(zip(means, groups, strict=True)):
        best = max(group, key=lambda run: point[run])
        lines.append(f"| {', '.join(run[:8] for run in group)} | "
                     + ", ".join(f"{point[run]:.1f} +- {metrics.spread(boot[run]):.1f}" for run in group)
                     + f" | {point[name]:.1f} +- {metrics.spread(boot[name]):.1f} | {gain(name, list(group))} | "
                     f"{gain(name, best)} | {f'{gain(name, means[0])}; {ratio(name, means[0])}' if i else ''} | "
                     f"{metrics.roc_auc(label, scores[name]):.4f} |")
    return "\n".join(lines)


# The training parameters a plain run (for the reference comparison) has at TrainConfig's defaults; absent means
# a run from before the parameter existed, or one that logs it only when set.
PLAIN_TRAINING = ("disco_lambda", "aux_weight", "weighting", "epoch_metric", "init_from", "freeze", "tagger_params")


def _is_plain(run: Any) -> bool:
    from wtag.tracking import same_param

    defaults = {k: str(getattr(TrainConfig, k)) for k in PLAIN_TRAINING}
    return all(same_param(run.data.params.get(k, default), default) for k, default in defaults.items())


def level_runs(experiment: str, models: Sequence[str]) -> tuple[str, str, dict[str, list[Any]]]:
    """(level name, dataset digest, tagger -> newest plain FINISHED run per train seed) of one experiment: the
    dataset of its newest plain tagger run, named by the prepare run that logged it (detector, pileup)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise WtagError(f"no experiment '{experiment}' on the tracking server")
    runs = [r for r in client.search_runs([found.experiment_id], "tags.`wtag.entry_point` = 'train_tagger' and "
                                          "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"],
                                          max_results=5000) if _is_plain(r)]
    if not runs:
        raise WtagError(f"experiment '{experiment}' has no finished plain tagger runs")
    digest = runs[0].data.params["dataset_digest"]
    by_tagger: dict[str, dict[str, Any]] = {}
    for run in runs:
        tagger = run.data.tags.get(schema.Tag.TAGGER, "")
        if run.data.params.get("dataset_digest") == digest and tagger in models:
            by_tagger.setdefault(tagger, {}).setdefault(run.data.params.get("train_seed", ""), run)
    prepares = client.search_runs([found.experiment_id], f"tags.`wtag.entry_point` = 'prepare' and "
                                  f"params.dataset_digest = '{digest}'", max_results=1)
    params = prepares[0].data.params if prepares else {}
    detector = params.get("detector", "True").lower() in ("true", "1")
    pileup = params.get("pileup", "default")
    name = (("detector" if detector else "particle level") + ", pileup "
            + ("9 (tuned)" if pileup == "default" else f"{float(pileup):g}"))
    return name, digest, {t: list(by_tagger[t].values()) for t in models if t in by_tagger}


def reference_table(experiments: Sequence[str], models: Sequence[str], n_bootstrap: int, seed: int
                    ) -> tuple[str, dict[str, dict[str, tuple[float, float]]], dict[str, str]]:
    """Per experiment (a simulation level) and tagger: the seeds' test r50, their mean and spread, and the seed
    ensemble's r50 with its bootstrap error; the last column compares each level's ensemble with the same
    tagger's at the last experiment (the reference) and with the reference's best tagger (its ceiling)."""
    from wtag.runs import read_test_arrays

    levels: dict[str, dict[str, tuple[float, float]]] = {}
    rows: list[tuple[str, str, list[float], list[float], float, float, float]] = []
    data = {}
    for experiment in experiments:
        level, digest, by_tagger = level_runs(experiment, models)
        level = level if level not in levels else f"{level} ({experiment})"
        data[f"dataset_digest.{experiment}"] = digest
        scores, label, msd = {}, None, None
        with tempfile.TemporaryDirectory(prefix="wtag-reference-") as tmp:
            for tagger, runs in by_tagger.items():
                for run in runs:
                    label, score, msd = read_test_arrays(run.info.run_id, Path(tmp) / run.info.run_id)
                    scores[(tagger, run.info.run_id)] = score.astype(np.float64)
        means = {tagger: np.mean([scores[(tagger, r.info.run_id)] for r in runs], axis=0)
                 for tagger, runs in by_tagger.items()}
        named = {f"{t}|{r}": s for (t, r), s in scores.items()} | {f"{t}|mean": s for t, s in means.items()}
        boot = {k: v["r50"] for k, v in metrics.bootstrap(label, msd, named, n_bootstrap, seed).items()}
        levels[level] = {}
        for tagger, runs in by_tagger.items():
            per_seed = [metrics.background_rejection(label, scores[(tagger, r.info.run_id)], 0.5) for r in runs]
            errors = [metrics.spread(boot[f"{tagger}|{r.info.run_id}"]) for r in runs]
            ensemble = metrics.background_rejection(label, means[tagger], 0.5)
            err = metrics.spread(boot[f"{tagger}|mean"])
            levels[level][tagger] = (ensemble, err)
            rows.append((level, tagger, per_seed, errors, ensemble, err, metrics.roc_auc(label, means[tagger])))
    reference = list(levels)[-1]
    ceiling_tagger = max(levels[reference], key=lambda t: levels[reference][t][0])
    ceiling = levels[reference][ceiling_tagger]

    def ratio(a: tuple[float, float], b: tuple[float, float]) -> str:
        value = a[0] / b[0]
        return f"{value:.2f} +- {value * float(np.hypot(a[1] / a[0], b[1] / b[0])):.2f}"

    lines = [f"Reference level: {reference} (ceiling: its best seed ensemble, {ceiling_tagger} "
             f"{ceiling[0]:.1f} +- {ceiling[1]:.1f})", "",
             "| level | tagger | test_r50 per seed (+- bootstrap) | mean +- seed std | seed ensemble r50 | "
             "ensemble AUC | / same tagger at the reference | / reference ceiling |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    order = {level: i for i, level in enumerate(levels)}
    for level, tagger, per_seed, errors, ensemble, err, auc in sorted(rows, key=lambda r: (models.index(r[1]),
                                                                                         order[r[0]])):
        spread_ = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
        same = levels[reference].get(tagger)
        lines.append(f"| {level} | {tagger} | " + ", ".join(f"{v:.1f} +- {e:.1f}" for v, e in zip(per_seed, errors))
                     + f" | {np.mean(per_seed):.1f} +- {spread_:.1f} | {ensemble:.1f} +- {err:.1f} | {auc:.4f} | "
                     f"{ratio((ensemble, err), same) if same and level != reference else ''} | "
                     f"{ratio((ensemble, err), ceiling)} |")
    return "\n".join(lines), levels, data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/ceiling.py", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("curves", "ablation", "ensemble", "reference"))
    parser.add_argument("--dataset", type=Path, help="prepared dataset directory (default: the benchmark sample)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--models", type=lambda s: s.split(","), default=None,
                        help="comma-separated taggers (default: bdt,dnn,pfn for curves; bdt,dnn for ablation)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.125, 0.25, 0.5, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--subset-seed", type=int, default=0, help="seed of the nested training subsets")
    parser.add_argument("--n-bootstrap", type=int, default=200)
    parser.add_argument("--runs", action="append", type=lambda s: s.split(","), default=[],
                        help="ensemble: comma-separated tagger run ids scored as one mean (repeat for more groups)")
    parser.add_argument("--experiments", nargs="+", default=[],
                        help="reference: experiments holding tagger runs of one simulation level each, the "
                             "generator-level reference last")
    parser.add_argument("--points", type=Path, default=None,
                        help="curves/ablation: JSON-lines file of measured points, appended as they finish and "
                             "read back on a rerun (default: data_dir/bench/ceiling-MODE-DATASET.jsonl)")
    args = parser.parse_args(argv)
    args.models = args.models or {"curves": ["bdt", "dnn", "pfn"], "reference": ["cut", "bdt", "dnn", "pfn", "pfn_hl"]
                                  }.get(args.mode, ["bdt", "dnn"])

    def run() -> int:
        if args.mode == "ensemble":
            if not args.runs or not os.environ.get("MLFLOW_TRACKING_URI"):
                raise WtagError("ensemble needs --runs and MLFLOW_TRACKING_URI (the server holding the runs)")
            print(ensemble_table(args.runs, args.n_bootstrap, seed=0))
            return 0
        if args.mode == "reference":
            if len(args.experiments) < 2 or not os.environ.get("MLFLOW_TRACKING_URI"):
                raise WtagError("reference needs --experiments A B (two or more; the reference last) and "
                                "MLFLOW_TRACKING_URI (the server holding their runs)")
            text, levels, data = reference_table(args.experiments, args.models, args.n_bootstrap, seed=0)
            from wtag.plots import plot_levels

            figure = plot_levels(levels, Path(tempfile.mkdtemp(prefix="wtag-ceiling-")) / "levels.png")
            print(text)
            log_to_mlflow(args.mode, args, {**data, "experiments": ",".join(args.experiments)}, text, figure)
            return 0
        ds = load_prepared(args.dataset or default_dataset(args.data_dir))
        header = (f"dataset {ds.root.name} ({ds.digest[:8]}): train {len(ds.train):,}, val {len(ds.val):,}, "
                  f"test {len(ds.test):,} ({int(ds.test.label.sum()):,} W); seeds {args.seeds}; {os.cpu_count()} "
                  f"cores, load average {os.getloadavg()[0]:.1f} at the start")
        figure = None
        points_file = args.points or args.data_dir / "bench" / f"ceiling-{args.mode}-{ds.digest[:16]}.jsonl"
        stamp = {"mode": args.mode, "dataset": ds.digest, "n_bootstrap": args.n_bootstrap,
                 "subset_seed": args.subset_seed}
        if args.mode == "curves":
            subsets = nested_subsets(ds.train.label, args.fractions, args.subset_seed)
            settings = [(f"{f:g}", lambda idx=idx: (ds.train.subset(idx), ds.val, ds.test))
                        for f, idx in subsets.items()]
            points = run_grid(ds, args.models, settings, args.seeds, args.n_bootstrap, points_file, stamp)
            text = "\n\n".join([table(points, header), curve_verdicts(points, args.fractions)])
            figure = plot_curves(points, Path(tempfile.mkdtemp(prefix="wtag-ceiling-")) / "learning_curves.png")
        else:
            settings = [(name, lambda cols=cols: tuple(blank_columns(s, cols) for s in (ds.train, ds.val, ds.test)))
                        for name, cols in ABLATIONS]
            points = run_grid(ds, args.models, settings, args.seeds, args.n_bootstrap, points_file, stamp)
            text = table(points, header)
        print(text + f"\n\nload average {os.getloadavg()[0]:.1f} at the end")
        log_to_mlflow(args.mode, args, {"dataset_digest": ds.digest, "dataset": str(ds.root)}, text, figure)
        return 0

    return exit_status(run, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
