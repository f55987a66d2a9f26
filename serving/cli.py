"""The ``serve`` command: ``add_serve_parser`` adds it to a command-line (``wtag serve``, found through the
``wtag.commands`` entry point), ``main`` runs it alone (``python -m serving``). Defaults come from
``serving.settings``; a flag left out falls back to its ``WTAG_SERVE_*`` variable, then to that default."""
from __future__ import annotations

import argparse
import os
import dataclasses
from collections.abc import Sequence

from serving.settings import (ENV_FIELDS, DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_PORT, MAX_DEFAULT_WORKERS,
                              TOKEN_ENV, ServerSettings, default_workers)
from wtag import schema
from wtag.errors import WtagError, exit_status
from wtag.inference import DEVICES
from wtag.tracking import DEFAULT_TRACKING_URI

DEFAULT_MODEL = f"models:/{schema.REGISTERED_MODEL}@{schema.CHAMPION_ALIAS}"
DECORRELATED_MODEL = f"models:/{schema.REGISTERED_MODEL}@{schema.DECORRELATED_ALIAS}"
# Flags that map one to one onto ServerSettings fields: (flag, field, type).
_SETTING_FLAGS = (("--max-batch-size", "max_batch_size", int), ("--max-queue-delay-ms", "max_queue_delay_ms", float),
                  ("--max-body-bytes", "max_body_bytes", int), ("--request-timeout-s", "request_timeout_s", float),
                  ("--intra-op-threads", "intra_op_threads", int),
                  ("--max-inflight-requests", "max_inflight_requests", int),
                  ("--max-queued-jets", "max_queued_jets", int),
                  ("--max-jets-per-request", "max_jets_per_request", int),
                  ("--max-candidates-per-jet", "max_candidates_per_jet", int),
                  ("--max-root-bytes", "max_root_bytes", int),
                  ("--decode-processes", "decode_processes", int),
                  ("--offload-bytes", "offload_bytes", int),
                  ("--max-run-bytes", "max_run_bytes", int),
                  ("--follow-interval-s", "follow_interval_s", float))


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(ServerSettings)}
    parser.add_argument("--model", action="append",
                        help="ONNX file, MLflow model dir or URI, optionally NAME=MODEL; repeat it or give a comma "
                             "list to serve several (the first is the default model). Default: "
                             f"{DEFAULT_MODEL}, and {DECORRELATED_MODEL} when that alias exists")
    parser.add_argument("--follow-alias", action="store_true", default=None,
                        help="load a registry alias's new version when it moves (checked every "
                             "--follow-interval-s), swapping it in without a restart")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    parser.add_argument("--grpc-port", type=int,
                        help=f"KServe v2 gRPC port (default: the HTTP port + 1, {DEFAULT_GRPC_PORT} with the default "
                             "HTTP port; 0: no gRPC)")
    parser.add_argument("--workers", type=int, help="server processes sharing the ports (default: one per usable "
                                                    f"core, at most {MAX_DEFAULT_WORKERS}; here {default_workers()})")
    for flag, field, kind in _SETTING_FLAGS:
        default = defaults[field] if defaults[field] is not None else "from the usable cores"
        parser.add_argument(flag, type=kind, help=f"default {default} (env {ENV_FIELDS[field]})")
    parser.add_argument("--device", choices=DEVICES, help=f"default {defaults['device']} (env {ENV_FIELDS['device']})")
    parser.epilog = f"Set {TOKEN_ENV} to require 'Authorization: Bearer <token>' (an empty value is refused)."


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to a CLI's subparsers; it sets ``func`` to :func:`serve`."""
    parser = subparsers.add_parser("serve", help="serve a model over REST with ONNX Runtime",
                                   description=__doc__.splitlines()[0])
    add_serve_arguments(parser)
    parser.set_defaults(func=serve)
    return parser


def settings_from(args: argparse.Namespace) -> ServerSettings:
    """The server settings: flags first, then WTAG_SERVE_* variables, then the defaults."""
    overrides = {field: getattr(args, field) for _, field, _ in _SETTING_FLAGS}
    return ServerSettings.from_env(device=args.device, follow_alias=args.follow_alias, **overrides)


def grpc_port_of(args: argparse.Namespace) -> int:
    """The gRPC port: ``--grpc-port``, else the HTTP port + 1 (so ``--port 8081`` alone cannot collide); checked."""
    grpc_port = args.port + 1 if args.grpc_port is None else args.grpc_port
    for flag, value in (("port", args.port), ("grpc-port", grpc_port)):
        if not 0 <= value <= 65535:
            raise WtagError(f"--{flag} {value} is not in 0..65535")
    if grpc_port and grpc_port == args.port:
        raise WtagError(f"--grpc-port {grpc_port} is the HTTP port too")
    return grpc_port


def serve(args: argparse.Namespace) -> int:
    """Serve ``args.model`` until interrupted; WtagError for bad settings, a bad model or a busy port."""
    from serving.app import run  # the web stack loads only when serving, not when a CLI lists its commands
    from serving.models import name_models

    grpc_port = grpc_port_of(args)
    workers = default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise WtagError(f"--workers must be >= 1, got {workers}")
    settings = settings_from(args)
    refs = [ref.strip() for given in args.model or () for ref in given.split(",") if ref.strip()]
    if any(ref.split("=", 1)[-1].startswith(("models:/", "runs:/")) for ref in refs or [DEFAULT_MODEL]) \
            and not os.environ.get("MLFLOW_TRACKING_URI"):
        # the project's tracking server, for this process and the workers it starts
        os.environ["MLFLOW_TRACKING_URI"] = DEFAULT_TRACKING_URI
    models = name_models(refs or default_models())
    run(models, host=args.host, port=args.port, settings=settings, grpc_port=grpc_port, workers=workers)
    return 0


def default_models() -> list[str]:
    """The champion, and the decorrelated candidate when ``main`` has given that alias a version."""
    from wtag.inference import registry_version

    try:
        registry_version(DECORRELATED_MODEL)
    except Exception:  # noqa: BLE001  (no such alias, or no registry: serve the champion alone)
        return [DEFAULT_MODEL]
    return [DEFAULT_MODEL, DECORRELATED_MODEL]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__.splitlines()[0])
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    return exit_status(lambda: serve(args), parser.prog)
