"""The ``serve`` command: ``wtag serve`` (added to wtag's CLI through the ``wtag.commands`` entry point, so the
library never imports the server) and ``python -m serving``."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from serving.settings import ServerSettings
from wtag.errors import exit_status
from wtag.schema import CHAMPION_ALIAS, REGISTERED_MODEL
from wtag.tracking import tracking_uri_from_env

DEFAULT_MODEL = f"models:/{REGISTERED_MODEL}@{CHAMPION_ALIAS}"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def _serve(args: argparse.Namespace) -> int:
    from serving.app import run

    if args.model.startswith(("models:/", "runs:/")):
        import mlflow

        mlflow.set_tracking_uri(tracking_uri_from_env())
    body = None if args.max_body_mb is None else int(args.max_body_mb * 1024 * 1024)
    # Options left unset fall through to WTAG_SERVE_* variables, then to ServerSettings' defaults.
    settings = ServerSettings.from_env(max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
                                       max_body_bytes=body, device=args.device)
    run(args.model, host=args.host, port=args.port, settings=settings)
    return 0


def add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``serve`` to a subcommand table. Unset settings come from the environment, then ServerSettings."""
    d = ServerSettings
    p = sub.add_parser("serve", help="serve a model over REST with ONNX Runtime")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry URI, runs:/ URI or .onnx path")
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--max-batch-size", type=int, help=f"default {d.max_batch_size}")
    p.add_argument("--max-queue-delay-ms", type=float, help=f"default {d.max_queue_delay_ms}")
    p.add_argument("--max-body-mb", type=float, help=f"default {d.max_body_bytes / (1024 * 1024):g}")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help=f"default {d.device}")
    p.set_defaults(func=_serve)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wtag")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return exit_status(lambda: args.func(args), "wtag serve")
