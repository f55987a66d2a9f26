"""``python -m serving --model PATH_OR_URI``: the server without the ``wtag`` CLI (tests, containers)."""
from __future__ import annotations

import argparse
import sys

from serving.app import run
from serving.settings import ServerSettings
from wtag.errors import exit_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--model", required=True, help="ONNX file, MLflow model dir or URI (models:/wtag@champion)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument("--max-queue-delay-ms", type=float)
    parser.add_argument("--max-body-bytes", type=int)
    parser.add_argument("--request-timeout-s", type=float)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--intra-op-threads", type=int)
    args = parser.parse_args(argv)

    def serve() -> int:
        settings = ServerSettings.from_env(
            max_batch_size=args.max_batch_size, max_queue_delay_ms=args.max_queue_delay_ms,
            max_body_bytes=args.max_body_bytes, request_timeout_s=args.request_timeout_s, device=args.device,
            intra_op_threads=args.intra_op_threads)
        run(args.model, host=args.host, port=args.port, settings=settings)
        return 0

    return exit_status(serve, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
