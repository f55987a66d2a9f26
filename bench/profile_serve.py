"""Where a served request spends its time: sample the wtag server with py-spy while clients send one kind of
request, and print the server's CPU samples by stage as a Markdown table.

    pip install py-spy            # a profiler binary, not a project dependency
    python bench/profile_serve.py [--protocol v2-json] [--jets 1000] [--concurrency 4] [--duration 20]

The model is bench/serve.py's tutorial-shaped DNN unless ``--model`` names another. Every process of the server
(its worker and decode processes) is sampled (``py-spy record --subprocesses --format raw``); a sample is charged
to the innermost stage its stack passes through. py-spy leaves out samples it sees as idle, but a thread
blocked in a pipe read or a ``select`` of the process pool's helper threads still shows; those are their own
stage, so the other shares are the server's busy CPU.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve import PROTOCOLS, free_port, http_cell, process, requests_for, tutorial_dnn  # noqa: E402

from wtag import schema  # noqa: E402
from wtag.errors import WtagError, exit_status  # noqa: E402

# (stage, pattern on one frame "function (file:line)"), innermost match wins; order breaks ties in one frame.
STAGES: tuple[tuple[str, re.Pattern[str]], ...] = tuple((name, re.compile(pattern)) for name, pattern in (
    ("blocked waiting (select, pipe reads, conditions) in helper threads and processes",
     r"^(_PollLikeSelector\.select|Connection\._recv|Condition\.wait|Queue\.get|_worker \(concurrent/futures/thread)"),
    ("ONNX Runtime run", r"onnxruntime"),
    ("JSON decode", r"^loads \(.*serving/wire\.py|orjson|json/decoder\.py"),
    ("JSON lists to numpy", r"^numbers \(.*serving/wire\.py"),
    ("answer encode", r"^dumps \(.*serving/wire\.py|json/encoder\.py|encode_scores|tobytes|tolist"),
    ("request checks (v2 decode)", r"serving/protocols/kserve_v2\.py"),
    ("batching (queue, concatenate, split)", r"serving/batcher\.py"),
    ("hand-off to decode processes (pickle, pipe writes)", r"concurrent/futures|multiprocessing/|pickle"),
    ("service (admission, metrics, errors)", r"serving/(service|telemetry|errors|auth|models)\.py"),
    ("HTTP and ASGI (uvicorn, starlette, fastapi)", r"uvicorn|starlette|fastapi|h11|httptools"),
    ("event loop (uvloop socket I/O in native code)", r"asyncio/"),
))


def stage_of(stack: Sequence[str]) -> str:
    """The stage of one sampled stack (outermost frame first): the innermost frame that matches one."""
    for frame in reversed(stack):
        for name, pattern in STAGES:
            if pattern.search(frame):
                return name
    return "other"


def parse_raw(text: str) -> collections.Counter[str]:
    """py-spy's raw (collapsed) output: ``frame;frame;... count`` per line -> samples per stage."""
    counts: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        counts[stage_of(frames)] += int(count)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/profile_serve.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="ONNX file (default: the tutorial-shaped DNN)")
    parser.add_argument("--protocol", choices=[p for p in PROTOCOLS if p != "grpc"], default="v2-json",
                        help="request kind (the HTTP ones of bench/serve.py)")
    parser.add_argument("--jets", type=int, default=1000, help="jets per request")
    parser.add_argument("--concurrency", type=int, default=4, help="client processes")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (and of sampling)")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw (collapsed) stacks here")
    args = parser.parse_args(argv)
    return exit_status(lambda: profile(args), parser.prog)


def profile(args: argparse.Namespace) -> int:
    spy = shutil.which("py-spy")
    if spy is None:
        raise WtagError("py-spy is not installed: pip install py-spy")
    with tempfile.TemporaryDirectory(prefix="wtag-profile-") as tmp:
        root = Path(tmp)
        model = args.model
        if model is None:
            model = root / "dnn.onnx"
            onnx.save(tutorial_dnn(), str(model))
        rng = np.random.default_rng(1)
        request = requests_for(args.protocol, {schema.INPUT_HL: rng.normal(
            size=(args.jets, len(schema.HL_FEATURES))).astype(np.float32)})
        port = free_port()
        cmd = [sys.executable, "-m", "serving", "--model", str(model), "--port", str(port)]
        env = {k: v for k, v in os.environ.items() if k != "WTAG_SERVE_TOKEN"}
        with process(cmd, f"http://127.0.0.1:{port}/v2/health/ready", root / "server.log", env=env) as pid:
            raw = root / "profile.txt"
            spy_proc = subprocess.Popen([spy, "record", "--pid", str(pid), "--subprocesses", "--format", "raw",
                                         "--rate", str(args.rate), "--duration", str(int(args.duration) + 2),
                                         "--output", str(raw), "--nonblocking"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            cell = http_cell("wtag serve", args.protocol, port, request, args.jets, args.concurrency, args.duration)
            _, err = spy_proc.communicate(timeout=args.duration + 120)
            if spy_proc.returncode != 0 or not raw.is_file():
                raise WtagError(f"py-spy failed (exit {spy_proc.returncode}): {err.strip()[-500:]}")
            counts = parse_raw(raw.read_text())
            if args.raw:
                shutil.copyfile(raw, args.raw)
    total = sum(counts.values())
    if not total:
        raise WtagError("py-spy recorded no busy samples")
    per_request = 1e3 * cell.seconds * args.concurrency / max(cell.requests, 1)
    print(f"wtag serve, {args.protocol}, {args.jets} jets per request, {args.concurrency} clients, "
          f"{cell.requests} requests in {cell.seconds:.1f} s ({cell.requests * args.jets / cell.seconds:,.0f} jets/s, "
          f"p50 {1e3 * np.median(cell.latencies):.2f} ms); load average {os.getloadavg()[0]:.1f}")
    print(f"{total} busy samples at {args.rate}/s ({total / args.rate:.1f} CPU-s, "
          f"{1e3 * total / args.rate / max(cell.requests, 1):.2f} CPU-ms per request; "
          f"client-side wall per request {per_request:.2f} ms)\n")
    print("| stage | samples | share | CPU-ms per request |")
    print("|---|---:|---:|---:|")
    for name, n in counts.most_common():
        print(f"| {name} | {n} | {100 * n / total:.1f}% | {1e3 * n / args.rate / max(cell.requests, 1):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
