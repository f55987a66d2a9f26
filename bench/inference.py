"""Exported taggers on each ONNX Runtime device: score agreement and ``session.run`` throughput, as Markdown.

    python bench/inference.py MODEL.onnx [MODEL.onnx ...] (--dataset PREPARED_DIR | --inputs ARRAYS.npz)
        [--devices cpu cuda] [--sizes 1 100 1000 10000 100000] [--duration 1.0] [--output bench-inference.md]

Scores come from the held-out test jets of a prepared dataset (or an ``.npz`` whose arrays are named like the
model inputs; an array ``native_<tagger>`` there holds the scores of the original, unexported tagger). The
first table compares every device with the CPU and with the native tagger; the second times single-threaded
``session.run`` calls on batches of each size (test jets repeated to fill the larger batches), device-resident
transfers included, since that is what a server pays.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from wtag import schema
from wtag.errors import exit_status
from wtag.inference import DEVICES, create_session

SIZES = (1, 100, 1_000, 10_000, 100_000)


def load_inputs(dataset: Path | None, arrays: Path | None) -> dict[str, np.ndarray]:
    """Model inputs (and any native scores) of the test jets."""
    if dataset is not None:
        from wtag.dataset import load_prepared

        test = load_prepared(dataset).test.inputs([schema.INPUT_HL, schema.INPUT_IMAGES, schema.INPUT_PARTICLES])
        return {k: np.asarray(v, np.float32) for k, v in test.items()}
    assert arrays is not None
    with np.load(arrays) as z:
        return {k: z[k] for k in z.files}


def tagger_name(path: Path) -> str:
    meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return meta.get(schema.Meta.TAGGER, path.stem)


def feeds(session: ort.InferenceSession, inputs: Mapping[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """The first ``n`` test jets for each model input, repeating the set when ``n`` exceeds it."""
    out = {}
    for i in session.get_inputs():
        x = inputs[i.name]
        reps = -(-n // len(x))
        out[i.name] = np.ascontiguousarray(np.concatenate([x] * reps)[:n] if reps > 1 else x[:n], np.float32)
    return out


def time_batches(session: ort.InferenceSession, feed: dict[str, np.ndarray], duration: float) -> tuple[int, float,
                                                                                                       float]:
    """Calls, jets/s and median ms per call over about ``duration`` seconds after two warm-up calls."""
    for _ in range(2):
        session.run([schema.OUTPUT_SCORE], feed)
    n = len(next(iter(feed.values())))
    lat = []
    start = time.perf_counter()
    while not lat or time.perf_counter() - start < duration:
        t = time.perf_counter()
        session.run([schema.OUTPUT_SCORE], feed)
        lat.append(time.perf_counter() - t)
    return len(lat), n * len(lat) / sum(lat), float(np.median(lat) * 1e3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="exported model.onnx files")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", type=Path, help="prepared dataset folder (its test split is scored)")
    source.add_argument("--inputs", type=Path, help=".npz of test inputs named like the model inputs")
    parser.add_argument("--devices", nargs="+", choices=[d for d in DEVICES if d != "auto"], default=["cpu"])
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="jets per session.run")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per timed cell")
    parser.add_argument("--output", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    for path in args.models:
        if not path.is_file():
            parser.error(f"{path}: no such model file")
    inputs = load_inputs(args.dataset, args.inputs)
    parity = ["| tagger | device | provider | jets | max abs diff vs CPU | max abs diff vs native |",
              "|---|---|---|---:|---:|---:|"]
    speed = ["| tagger | device | jets/call | calls | jets/s | median ms/call |", "|---|---|---:|---:|---:|---:|"]
    for path in args.models:
        name = tagger_name(path)
        sessions = {d: create_session(path, d, intra_op_threads=1 if d == "cpu" else None) for d in args.devices}
        n_test = min(len(inputs[i.name]) for i in sessions[args.devices[0]].get_inputs())
        scores = {d: s.run([schema.OUTPUT_SCORE], feeds(s, inputs, n_test))[0].reshape(-1) for d, s in sessions.items()}
        reference = scores.get("cpu")
        native = inputs.get(f"native_{name}")
        for device, score in scores.items():
            vs_cpu = f"{np.max(np.abs(score - reference)):.2e}" if reference is not None else "-"
            vs_native = f"{np.max(np.abs(score - native[:n_test])):.2e}" if native is not None else "-"
            parity.append(f"| {name} | {device} | {sessions[device].get_providers()[0]} | {n_test} | {vs_cpu} | "
                          f"{vs_native} |")
        for device, session in sessions.items():
            for n in args.sizes:
                calls, rate, median = time_batches(session, feeds(session, inputs, n), args.duration)
                speed.append(f"| {name} | {device} | {n:,} | {calls} | {rate:,.0f} | {median:.3f} |")
                print(speed[-1], file=sys.stderr, flush=True)
    text = "\n".join([f"ONNX Runtime {ort.__version__}; {os.cpu_count()} CPUs; CPU sessions use 1 intra-op thread; "
                      f"{args.duration:g} s per timed cell.", "", *parity, "", *speed]) + "\n"
    print(text)
    if args.output:
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "bench/inference.py"))
