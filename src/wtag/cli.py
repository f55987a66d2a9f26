"""The ``wtag`` command. Each MLproject entry point is ``wtag <command>`` with the same parameters.

This is the edge where the environment is read (``MLFLOW_TRACKING_URI``, ``MLFLOW_RUN_ID``, the serving
token); everything below takes typed arguments.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from wtag.errors import exit_status

DEFAULT_TRACKING_URI = "http://127.0.0.1:5000"
DEFAULT_DATA_DIR = Path("data")
# Jets per class in the default simulated sample: sized so `train -P model=all` fits 30 minutes on 2 cores.
DEFAULT_N_JETS = 6000


def _tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


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
    if text == "auto":
        return None
    try:
        return _int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of jets or 'auto'") from None


def _add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default="pythia", choices=["pythia", "cms-ntuple", "cms-images"],
                   help="pythia: embedded Pythia 8 + FastJet simulation; cms-ntuple / cms-images: real files")
    p.add_argument("--n-jets", type=_n_jets, default=None,
                   help="jets per class to generate (pythia), or a cap on the total (imports, 0 = all); "
                        f"'auto': {DEFAULT_N_JETS} per class for pythia, all for imports")
    p.add_argument("--seed", type=_int, default=1, help="seed of generation and of the train/val/test split")
    p.add_argument("--input", default="", help="comma-separated input files or URLs (cms-ntuple, cms-images)")
    p.add_argument("--signal", default="ttbar", choices=["ttbar", "wjets"], help="simulated W-jet process")
    p.add_argument("--pileup", default="default", help="mean pileup interactions (default: the tuned value)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="where generated/prepared data live")
    p.add_argument("--workers", type=_int, default=0, help="generator processes (0: all cores)")
    p.add_argument("--experiment", default="wtag", help="MLflow experiment name")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="all", help="'all' or comma-separated tagger names")
    p.add_argument("--epochs", type=_positive_int, default=30)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--patience", type=_positive_int, default=5)
    p.add_argument("--train-seed", type=_int, default=42, help="seed of weight initialisation and shuffling")
    p.add_argument("--init-from", default="", help="start from this model's weights: a tagger run id, or a "
                   "runs:/ or models:/ URI of a model of the same (Keras) tagger")


def _prepare_config(args: argparse.Namespace):
    from wtag.prepare import PrepareConfig

    n_jets = args.n_jets if args.n_jets is not None else (DEFAULT_N_JETS if args.source == "pythia" else 0)
    pileup = None if str(args.pileup) in ("", "default") else float(args.pileup)
    inputs = tuple(s.strip() for s in args.input.split(",") if s.strip())
    return PrepareConfig(source=args.source, n_jets=n_jets, seed=args.seed, inputs=inputs, signal=args.signal,
                         pileup=pileup)


def _train_config(args: argparse.Namespace):
    from wtag.taggers import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.learning_rate,
                       patience=args.patience, seed=args.train_seed, init_from=args.init_from.strip())


def cmd_generate(args: argparse.Namespace) -> int:
    from wtag.sources import pythia

    kwargs = {} if args.pileup is None else {"pileup": args.pileup}
    files = pythia.generate(process=args.process, n_jets=args.n_jets, seed=args.seed, output=args.output,
                            workers=args.workers or os.cpu_count() or 1, detector=not args.no_detector, **kwargs)
    print(f"wrote {len(files)} chunk files to {args.output}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from wtag.sources.remote import resolve_inputs

    paths = resolve_inputs(args.inputs, args.output / "downloads")
    if args.format == "cms-ntuple":
        from wtag.sources.cms_ntuple import import_cms_ntuple

        out = import_cms_ntuple(paths, args.output)
    else:
        from wtag.sources.cms_images import import_cms_images

        out = import_cms_images(paths, args.output)
    print(f"wrote {out}")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from wtag.pipeline import prepare_step
    from wtag.tracking import configure

    config = _prepare_config(args)
    experiment_id = configure(_tracking_uri(), args.experiment)
    run_id, ds = prepare_step(config, args.data_dir, experiment_id, workers=args.workers or None,
                              run_id=_adopt_mlflow_run(experiment_id))
    print(f"prepared dataset {ds.digest} at {ds.root} (run {run_id})")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from wtag.pipeline import train_step
    from wtag.tracking import configure

    config = _prepare_config(args)
    train_config = _train_config(args)
    experiment_id = configure(_tracking_uri(), args.experiment)
    run_id = train_step(config, args.data_dir, experiment_id, args.model, train_config,
                        workers=args.workers or None, run_id=_adopt_mlflow_run(experiment_id))
    print(f"training run {run_id}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from wtag.evaluation import evaluate_step
    from wtag.tracking import configure

    experiment_id = configure(_tracking_uri(), args.experiment)
    eval_run, champion = evaluate_step(experiment_id, args.dataset_digest or None, args.metric,
                                       run_id=_adopt_mlflow_run(experiment_id))
    print(f"evaluation run {eval_run}; champion run {champion}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from wtag.onnx_export import export_step
    from wtag.tracking import configure

    experiment_id = configure(_tracking_uri(), args.experiment)
    export_run, version = export_step(experiment_id, args.run_id or None, alias=args.alias,
                                      export_run_id=_adopt_mlflow_run(experiment_id))
    print(f"export run {export_run}; registered model version {version}")
    return 0


def cmd_main(args: argparse.Namespace) -> int:
    from wtag.pipeline import main_pipeline
    from wtag.tracking import configure

    experiment_id = configure(_tracking_uri(), args.experiment)
    steps = main_pipeline(_prepare_config(args), args.data_dir, experiment_id, args.model, _train_config(args),
                          args.metric, workers=args.workers or None, run_id=_adopt_mlflow_run(experiment_id))
    print(" ".join(f"{k}={v}" for k, v in steps.items()))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.app import run
    from serving.settings import ServerSettings

    if args.model.startswith(("models:/", "runs:/")):
        import mlflow

        mlflow.set_tracking_uri(_tracking_uri())
    settings = ServerSettings.from_env(max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
                                       max_body_bytes=int(args.max_body_mb * 1024 * 1024), device=args.device)
    run(args.model, host=args.host, port=args.port, settings=settings)
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
    p.add_argument("--process", required=True, choices=["ttbar", "wjets", "qcd"])
    p.add_argument("--n-jets", type=_positive_int, required=True)
    p.add_argument("--seed", type=_int, default=1)
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--workers", type=_int, default=0, help="processes (0: all cores)")
    p.add_argument("--pileup", type=float, default=None, help="mean pileup interactions (default: tuned value)")
    p.add_argument("--no-detector", action="store_true", help="particle level: no detector response, no pileup")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("import", help="convert real CMS files to the canonical form")
    p.add_argument("--format", required=True, choices=["cms-ntuple", "cms-images"])
    p.add_argument("inputs", nargs="+", help="local paths, https:// or root:// URLs")
    p.add_argument("--output", type=Path, required=True)
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("prepare", help="generate or import, split, weight, standardize, log to MLflow")
    _add_prepare_args(p)
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="prepare (reusing) and train taggers, tracked in MLflow")
    _add_prepare_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="compare tagger runs on one dataset and pick the champion")
    p.add_argument("--experiment", default="wtag")
    p.add_argument("--metric", default="test_r50")
    p.add_argument("--dataset-digest", default="", help="default: the newest tagger run's dataset")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="export a tagger run to ONNX, check parity, register, move the alias")
    p.add_argument("--experiment", default="wtag")
    p.add_argument("--run-id", default="", help="tagger run to export (default: the newest evaluation's champion)")
    p.add_argument("--alias", default="champion")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("main", help="prepare -> train -> evaluate -> export, reusing finished steps")
    _add_prepare_args(p)
    _add_train_args(p)
    p.add_argument("--metric", default="test_r50")
    p.set_defaults(func=cmd_main)

    p = sub.add_parser("serve", help="serve a model over REST with ONNX Runtime")
    p.add_argument("--model", default="models:/wtag@champion", help="registry URI, runs:/ URI or .onnx path")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_int, default=8080)
    p.add_argument("--max-batch-size", type=_positive_int, default=16384)
    p.add_argument("--max-queue-delay-ms", type=float, default=2.0)
    p.add_argument("--max-body-mb", type=float, default=256.0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("tracking-server", help="start/stop the local MLflow tracking server")
    p.add_argument("action", choices=["start", "stop", "status"])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=_int, default=5000)
    p.add_argument("--dir", type=Path, default=DEFAULT_DATA_DIR / "mlflow", help="store, artifacts, pid file")
    p.set_defaults(func=cmd_tracking_server)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return exit_status(lambda: args.func(args), f"wtag {args.command}")


if __name__ == "__main__":
    sys.exit(main())
