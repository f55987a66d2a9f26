"""The ``wtag`` command. Each MLproject entry point is ``wtag <command>`` with the same parameters.

This is the edge where the environment is read (``MLFLOW_TRACKING_URI``, ``MLFLOW_RUN_ID``, the serving
token); everything below takes typed arguments.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from wtag import schema
from wtag.errors import exit_status
from wtag.evaluation import CHAMPION_METRICS, DEFAULT_MAX_SCULPTING, DEFAULT_METRIC
from wtag.inference import DEVICES
from wtag.prepare import DEFAULT_DATA_DIR, SAMPLES, SOURCES, PrepareConfig
from wtag.scoring import ScoreConfig
from wtag.taggers.base import EPOCH_METRICS, FREEZE_CHOICES, LR_SCHEDULES, TrainConfig
from wtag.tracking import DEFAULT_EXPERIMENT, tracking_uri_from_env
from wtag.tracking_server import DEFAULT_DIR, DEFAULT_HOST, DEFAULT_PORT
from wtag.training import ALL_TAGGERS
from wtag.tuning import OBJECTIVES, PRUNERS, SAMPLERS, TuneConfig

# Entry-point group through which other installed packages add subcommands (``serving`` adds ``serve``), so
# that wtag never imports them.
COMMAND_PLUGINS = "wtag.commands"
# "default" as a parameter value: the library's own default (one place declares each).
DEFAULT_WORD = "default"


def _adopt_mlflow_run(experiment_id: str) -> str | None:
    """The run ``mlflow run`` created for this entry point, if it lives in our experiment.

    ``mlflow run`` passes it as MLFLOW_RUN_ID; MLflow would otherwise attach the *first* run this process
    starts to it (e.g. a reused step's). When it belongs to another experiment (``mlflow run`` without
    ``--experiment-name``), our runs go to our experiment and that one stays empty.
    """
    run_id = os.environ.pop("MLFLOW_RUN_ID", None)
    if not run_id:
        return None
    import mlflow

    if mlflow.get_run(run_id).info.experiment_id != experiment_id:
        print(f"note: mlflow run created run {run_id} in another experiment; logging to this one instead "
              "(pass --experiment-name or set MLFLOW_EXPERIMENT_NAME)", file=sys.stderr)
        return None
    return run_id


def _int(text: str) -> int:
    """An integer, also written as MLproject float parameters arrive (``30.0``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
    return int(value)


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _n_jets(text: str) -> int | None:
    """W jets to simulate; ``auto`` (MLproject's default) means PrepareConfig's default."""
    if text == "auto":
        return None
    try:
        return _int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of jets or 'auto'") from None


def _pileup(text: str) -> float | None:
    """Mean pileup interactions; ``default`` means the generator's tuned value."""
    if text in ("", DEFAULT_WORD):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or '{DEFAULT_WORD}'") from None


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not a finite number >= 0")
    return value


def _bool(text: str) -> bool:
    """An MLproject switch: true/false (also 1/0, yes/no)."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return value


def _add_experiment_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment name")


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    d = PrepareConfig
    p.add_argument("--source", default=d.source, choices=SOURCES,
                   help="pythia: embedded Pythia 8 + FastJet simulation; cms-ntuple / cms-images: real files")
    p.add_argument("--sample", default=d.sample, choices=tuple(SAMPLES),
                   help="simulated sample: 'default' (n_jets W + 2 n_jets QCD, the extra QCD in the test split) or "
                        "'benchmark' (35k W + 70k QCD; test 5,250 W + 42,000 QCD, train 50,750) or 'large' (the "
                        "benchmark's shape, three times the jets)")
    p.add_argument("--n-jets", type=_n_jets, default="auto",
                   help=f"W jets to simulate (pythia, sample=default; QCD: twice as many); 'auto': {d.n_jets}")
    p.add_argument("--max-jets", type=_int, default=d.max_jets,
                   help="cap on the total number of jets taken from imported files (0: all)")
    p.add_argument("--seed", type=_int, default=d.seed, help="seed of generation and of the train/val/test split")
    p.add_argument("--input", default="", help="comma-separated input files or URLs (cms-ntuple, cms-images)")
    p.add_argument("--signal", default=d.signal, choices=schema.SIGNAL_PROCESSES, help="simulated W-jet process")
    p.add_argument("--pileup", type=_pileup, default=DEFAULT_WORD,
                   help="mean pileup interactions ('default': the tuned value)")
    p.add_argument("--detector", type=_bool, default=d.detector,
                   help="simulate the detector response (false: particle-level jets, the generator-level reference)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where generated/prepared data live")
    p.add_argument("--workers", type=_int, default=0, help="generator processes (0: all cores)")
    _add_scheduler_arg(p)
    _add_experiment_arg(p)


def _add_scheduler_arg(p: argparse.ArgumentParser) -> None:
    from wtag.execution import ExecutionConfig

    p.add_argument("--scheduler", default=ExecutionConfig.scheduler,
                   help="Dask scheduler address (tcp://HOST:8786) of an existing cluster; default: "
                        "DASK_SCHEDULER_ADDRESS if set, else a local cluster started for the command")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    d = TrainConfig
    p.add_argument("--model", default=ALL_TAGGERS, help=f"'{ALL_TAGGERS}' or comma-separated tagger names")
    p.add_argument("--epochs", type=_positive_int, default=d.epochs)
    p.add_argument("--batch-size", type=_positive_int, default=d.batch_size)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=LR_SCHEDULES,
                   help="'cosine' anneals the learning rate to 1%% of its start over the epochs")
    p.add_argument("--patience", type=_positive_int, default=d.patience)
    p.add_argument("--train-seed", type=_int, default=d.seed, help="seed of weight initialisation and shuffling")
    p.add_argument("--disco-lambda", default=f"{d.disco_lambda:g}",
                   help="DisCo mass-decorrelation strength for the Keras taggers (0 = off); a comma-separated "
                        "list (e.g. 0,1,3,10) trains one run per value")
    p.add_argument("--init-from", default=d.init_from,
                   help="start from this model's weights: a tagger run id, or a runs:/ or models:/ URI of a model "
                        "of the same (Keras) tagger")
    p.add_argument("--freeze", default=d.freeze, choices=FREEZE_CHOICES,
                   help="with --init-from: 'conv' keeps the convolutional layers fixed and trains the rest")
    p.add_argument("--params-from", default=d.params_from,
                   help="a tune run id: train its tagger with the study's best parameters")
    _add_training_choice_args(p)
    _add_bootstrap_arg(p)


def _add_training_choice_args(p: argparse.ArgumentParser) -> None:
    """The training choices shared by train, tune and main: jet weights, the epoch-selection metric, weight decay
    and the auxiliary regression."""
    from wtag.weighting import WEIGHTINGS

    p.add_argument("--weighting", default=TrainConfig.weighting, choices=WEIGHTINGS,
                   help="training-jet weights: 'flat' pT spectrum per class, or 'w_spectrum' (W unweighted, QCD "
                        "reweighted to the W pT spectrum)")
    p.add_argument("--epoch-metric", default=TrainConfig.epoch_metric, choices=EPOCH_METRICS,
                   help="validation metric that stops training and picks the kept epoch (Keras taggers)")
    p.add_argument("--weight-decay", type=_non_negative_float, default=TrainConfig.weight_decay,
                   help="decoupled weight decay of the Keras optimizer (AdamW style; 0 = off)")
    p.add_argument("--aux-weight", type=_non_negative_float, default=TrainConfig.aux_weight,
                   help="weight of the auxiliary regression of msd, tau21 and log N in the loss of the Keras "
                        "taggers without jet-feature input (0 = off; the served model has no extra output)")


def _add_tune_args(p: argparse.ArgumentParser) -> None:
    d, t = TuneConfig, TrainConfig
    p.add_argument("--model", default=d.model, help="the tagger to tune")
    p.add_argument("--n-trials", type=_positive_int, default=d.n_trials,
                   help="finished (complete or pruned) trials the study reaches; a rerun resumes it")
    p.add_argument("--space", default=d.space,
                   help="override of the tagger's search space: JSON/YAML or a .json/.yaml file, e.g. "
                        "'{learning_rate: {low: 1.0e-4, high: 1.0e-3, log: true}, batch_size: 256, dropout: null}'")
    p.add_argument("--objective", default=d.objective, choices=OBJECTIVES,
                   help="validation metric to maximize (val_pauc: ROC area up to 10%% QCD efficiency)")
    p.add_argument("--sampler", default=d.sampler, choices=SAMPLERS)
    p.add_argument("--sampler-seed", type=_int, default=d.sampler_seed)
    p.add_argument("--pruner", default=d.pruner, choices=PRUNERS,
                   help="stop hopeless trials from their per-epoch validation AUC")
    p.add_argument("--storage", default=d.storage,
                   help="Optuna RDB URL for the study; default: a journal file under DATA_DIR/tune")
    p.add_argument("--parallel", type=_int, default=d.parallel, help="trials at once (0: one per Dask worker)")
    p.add_argument("--epochs", type=_positive_int, default=t.epochs)
    p.add_argument("--patience", type=_positive_int, default=t.patience)
    p.add_argument("--train-seed", type=_int, default=t.seed, help="seed of weight initialisation and shuffling")
    _add_training_choice_args(p)
    _add_bootstrap_arg(p)


def _add_bootstrap_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n-bootstrap", type=_positive_int, default=TrainConfig.n_bootstrap,
                   help="bootstrap resamples for the errors of the test metrics")


def _add_evaluate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-sculpting", type=float, default=DEFAULT_MAX_SCULPTING,
                   help="largest test_mass_sculpting of the 'decorrelated' candidate")


def _add_metric_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", default=DEFAULT_METRIC, choices=CHAMPION_METRICS,
                   help="test metric that picks the champion")


def _prepare_config(args: argparse.Namespace) -> PrepareConfig:
    inputs = tuple(s.strip() for s in args.input.split(",") if s.strip())
    sample = {} if args.n_jets is None else {"n_jets": args.n_jets}
    return PrepareConfig(source=args.source, sample=args.sample, max_jets=args.max_jets, seed=args.seed, inputs=inputs,
                         signal=args.signal, pileup=args.pileup, detector=args.detector, **sample)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    from wtag.training import parse_disco_lambdas

    optional = {"n_bootstrap": args.n_bootstrap, "disco_lambda": parse_disco_lambdas(args.disco_lambda)[0]}
    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                       lr_schedule=args.lr_schedule, patience=args.patience, seed=args.train_seed,
                       init_from=args.init_from.strip(), freeze=args.freeze, params_from=args.params_from.strip(),
                       weighting=args.weighting, epoch_metric=args.epoch_metric, weight_decay=args.weight_decay,
                       aux_weight=args.aux_weight,
                       **{k: v for k, v in optional.items() if v is not None})


def _tune_config(args: argparse.Namespace) -> TuneConfig:
    """The search settings, checked (tagger, space) before any data are made or a server is asked."""
    from wtag.tuning import search_space

    config = TuneConfig(model=args.model.strip(), n_trials=args.n_trials, space=args.space, objective=args.objective,
                        sampler=args.sampler, sampler_seed=args.sampler_seed, pruner=args.pruner,
                        storage=args.storage.strip(), parallel=args.parallel)
    search_space(config.model, config.space)
    return config


def _disco_lambdas(args: argparse.Namespace) -> list[float] | None:
    """The DisCo scan of ``--disco-lambda``; None for a single value, which _train_config carries."""
    from wtag.training import parse_disco_lambdas

    values = parse_disco_lambdas(args.disco_lambda)
    return values if len(values) > 1 else None


def cmd_generate(args: argparse.Namespace) -> int:
    from wtag.sources import pythia

    kwargs = {} if args.pileup is None else {"pileup": args.pileup}
    if args.chunk_jets is not None:
        kwargs["chunk_jets"] = args.chunk_jets
    files = pythia.generate(process=args.process, n_jets=args.n_jets, seed=args.seed, output=args.output,
                            workers=args.workers or None, detector=not args.no_detector,
                            scheduler=args.scheduler, **kwargs)
    print(f"wrote {len(files)} chunk files to {args.output}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from wtag.sources.remote import resolve_inputs

    paths = resolve_inputs(args.inputs, args.output / "downloads")
    if args.format == "cms-ntuple":
        from wtag.sources.cms_ntuple import import_cms_ntuple

        out = import_cms_ntuple(paths, args.output, scheduler=args.scheduler, workers=args.workers)
    else:
        from wtag.sources.cms_images import import_cms_images

        out = import_cms_images(paths, args.output)
    print(f"wrote {out}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from wtag.pipeline import prepare_step
    from wtag.tracking import configure

    config = _prepare_config(args)
    experiment_id = configure(tracking_uri_from_env(), args.experiment)
    run_id, ds = prepare_step(config, args.data_dir, experiment_id, workers=args.workers or None,
                              run_id=_adopt_mlflow_run(experiment_id), scheduler=args.scheduler)
    print(f"prepared dataset {ds.digest} at {ds.root} (run {run_id})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from wtag.pipeline import train_step
    from wtag.tracking import configure

    config = _prepare_config(args)
    train_config = _train_config(args)
    experiment_id = configure(tracking_uri_from_env(), args.experiment)
    run_id = train_step(config, args.data_dir, experiment_id, args.model, train_config,
                        workers=args.workers or None, run_id=_adopt_mlflow_run(experiment_id),
                        scheduler=args.scheduler, disco_lambdas=_disco_lambdas(args))
    print(f"training run {run_id}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from wtag.pipeline import tune_step
    from wtag.tracking import configure

    tune_config = _tune_config(args)
    train_config = TrainConfig(epochs=args.epochs, patience=args.patience, seed=args.train_seed,
                               n_bootstrap=args.n_bootstrap, weighting=args.weighting,
                               epoch_metric=args.epoch_metric)
    experiment_id = configure(tracking_uri_from_env(), args.experiment)
    run_id = tune_step(_prepare_config(args), args.data_dir, experiment_id, tune_config, train_config,
                       workers=args.workers or None, run_id=_adopt_mlflow_run(experiment_id), scheduler=args.scheduler)
    print(f"tune run {run_id}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from wtag.evaluation import evaluate_step
    from wtag.tracking import configure

    experiment_id = configure(tracking_uri_from_env(), args.experiment)
    eval_run, champion = evaluate_step(experiment_id, args.dataset_digest or None, args.metric,
                                       run_id=_adopt_mlflow_run(experiment_id), max_sculpting=args.max_sculpting,
                                       n_bootstrap=args.n_bootstrap)
    print(f"evaluation run {eval_run}; champion run {champion}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from wtag.onnx_export import export_step
    from wtag.tracking import configure

    experiment_id = configure(tracking_uri_from_env(), args.experiment)
    export_run, version = export_step(experiment_id, args.run_id or None, alias=args.alias,
                                      export_run_id=_adopt_mlflow_run(experiment_id))
    print(f"export run {export_run}; registered model version {version}")
    return 0


def cmd_main(args: argparse.Namespace) -> int:
    from wtag.pipeline import main_pipeline
    from wtag.tracking import configure

    experiment_id = configure(tracking_uri_from_env(), args.experiment)
    steps = main_pipeline(_prepare_config(args), args.data_dir, experiment_id, args.model, _train_config(args),
                          args.metric, workers=args.workers or None, run_id=_adopt_mlflow_run(experiment_id),
                          scheduler=args.scheduler, max_sculpting=args.max_sculpting,
                          disco_lambdas=_disco_lambdas(args), tune_trials=args.tune_trials)
    print(" ".join(f"{k}={v}" for k, v in steps.items()))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from wtag.execution import ExecutionConfig
    from wtag.scoring import score_step
    from wtag.tracking import configure

    inputs = tuple(s.strip() for item in args.inputs for s in item.split(",") if s.strip())
    config = ScoreConfig(model=args.model, inputs=inputs, output=str(args.output), select=args.select,
                         device=args.device)
    experiment_id = configure(tracking_uri_from_env(), args.experiment)
    run_id, summary = score_step(config, experiment_id, ExecutionConfig(args.scheduler, args.workers),
                                 run_id=_adopt_mlflow_run(experiment_id))
    print(f"score run {run_id}: {summary.jets} jets scored into {args.output}")
    return 0


def cmd_tracking_server(args: argparse.Namespace) -> int:
    from wtag.tracking_server import ServerPaths, is_healthy, start_server, stop_server

    paths = ServerPaths(args.dir)
    uri = f"http://{args.host}:{args.port}"
    if args.action == "start":
        uri = start_server(paths, host=args.host, port=args.port)
        print(f"MLflow tracking server at {uri} (store {paths.db}, artifacts {paths.artifacts}, log {paths.log})")
    elif args.action == "stop":
        print("stopped" if stop_server(paths) else "no server was running")
    else:
        healthy = is_healthy(uri)
        print(f"{uri}: {'healthy' if healthy else 'not answering'}")
        return 0 if healthy else 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wtag", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="generate W or QCD jets with Pythia 8 + FastJet")
    p.add_argument("--process", required=True, choices=schema.PROCESSES)
    p.add_argument("--n-jets", type=_positive_int, required=True)
    p.add_argument("--seed", type=_int, default=PrepareConfig.seed)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--workers", type=_int, default=0, help="processes (0: all cores)")
    p.add_argument("--pileup", type=_pileup, default=DEFAULT_WORD,
                   help="mean pileup interactions ('default': the tuned value)")
    p.add_argument("--no-detector", action="store_true",
                   help="particle level: no detector response (pileup is still overlaid unless --pileup 0)")
    p.add_argument("--chunk-jets", type=_positive_int, default=None,
                   help="jets per chunk file, one Dask task (default: the generator's, 1000)")
    _add_scheduler_arg(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("import", help="convert real CMS files to the canonical form")
    p.add_argument("--format", required=True, choices=[s for s in SOURCES if s != "pythia"])
    p.add_argument("inputs", nargs="+", help="local paths, https:// or root:// URLs")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--workers", type=_int, default=1, help="local Dask workers for cms-ntuple file groups")
    _add_scheduler_arg(p)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("score", help="score many files with an ONNX tagger on Dask, one scores file per input")
    p.add_argument("--model", default=ScoreConfig.model, help="registry URI, runs:/ URI or .onnx path")
    p.add_argument("inputs", nargs="+", help="ROOT files with a 'jets' tree or c2numpy .npy files: paths, "
                                             "globs, https:// or root:// URLs (commas also separate)")
    p.add_argument("--output", type=Path, default=Path(ScoreConfig.output),
                   help="folder for <input>.scores.root files")
    p.add_argument("--device", default=ScoreConfig.device, choices=DEVICES,
                   help="auto: CUDA where the worker has a GPU")
    p.add_argument("--select", action="store_true", help="score only jets passing 200 < pT < 500 GeV, |eta| < 2")
    p.add_argument("--workers", type=_int, default=0, help="local cluster worker processes (0: all cores)")
    _add_experiment_arg(p)
    _add_scheduler_arg(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("prepare", help="generate or import, split, weight, standardize, log to MLflow")
    _add_prepare_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="prepare (reusing) and train taggers, tracked in MLflow")
    _add_prepare_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="prepare (reusing) and search a tagger's hyperparameters: Optuna trials on Dask")
    _add_prepare_args(p)
    _add_tune_args(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("evaluate", help="compare tagger runs on one dataset and pick the champion")
    _add_experiment_arg(p)
    _add_metric_arg(p)
    p.add_argument("--dataset-digest", default="", help="default: the newest tagger run's dataset")
    _add_evaluate_args(p)
    _add_bootstrap_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="export a tagger run to ONNX, check parity, register, move the alias")
    _add_experiment_arg(p)
    p.add_argument("--run-id", default="", help="tagger run to export (default: the newest evaluation's champion)")
    p.add_argument("--alias", default=schema.CHAMPION_ALIAS,
                   help="registry alias to move; 'decorrelated' without --run-id exports the newest evaluation's "
                        "decorrelated choice")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("main", help="prepare -> train -> evaluate -> export, reusing finished steps")
    _add_prepare_args(p)
    _add_train_args(p)
    _add_metric_arg(p)
    _add_evaluate_args(p)
    p.add_argument("--tune-trials", type=_int, default=0,
                   help="tune the one tagger of --model with this many trials first, and train it with the best "
                        "parameters (0: no tuning)")
    p.set_defaults(func=cmd_main)

    p = sub.add_parser("tracking-server", help="start/stop the local MLflow tracking server")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=_int, default=DEFAULT_PORT)
    p.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="store, artifacts, pid file")
    p.set_defaults(func=cmd_tracking_server)

    for plugin in importlib.metadata.entry_points(group=COMMAND_PLUGINS):
        plugin.load()(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.func(args), f"wtag {args.command}")


if __name__ == "__main__":
    sys.exit(main())
