"""Training speed of the Keras taggers with and without XLA, on real prepared jets; a markdown table.

``python bench/train_speed.py --dataset data/prepared/<key> [--taggers pfn,particlenet] [--jets 4096]``
times the first (tracing, compiling) and a second epoch of each tagger's training model on the first
``--jets`` training jets, batch size 256, with ``jit_compile`` off and on. The break-even is the extra
first-epoch time XLA costs over the per-jet time it saves: ``KerasTagger.xla_from_jet_epochs`` is set per
tagger from this table (XLA only where it trains faster on CPU, and only from the jet-epochs that repay it).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import keras
import numpy as np

from wtag.dataset import load_prepared
from wtag.errors import WtagError, exit_status
from wtag.taggers import TAGGER_NAMES, build_tagger, tagger_class
from wtag.taggers.base import TrainConfig


def epoch_seconds(name: str, x: dict[str, np.ndarray], y: np.ndarray, standardization,
                  jit: bool) -> tuple[float, float]:
    """(first epoch, second epoch) in seconds."""
    tagger = build_tagger(name, TrainConfig(epochs=1, batch_size=256), standardization)
    model, _ = tagger._build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", jit_compile=jit)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        model.fit(x, y, batch_size=256, epochs=1, verbose=0)
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main(argv: list[str] | None = None) -> int:
    keras_taggers = [n for n in TAGGER_NAMES if tagger_class(n).flavor == "keras"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="a prepared dataset folder")
    parser.add_argument("--taggers", default=",".join(keras_taggers))
    parser.add_argument("--jets", type=int, default=4096)
    args = parser.parse_args(argv)
    try:
        ds = load_prepared(args.dataset)
        names = [n.strip() for n in args.taggers.split(",") if n.strip()]
        unknown = sorted(set(names) - set(keras_taggers))
        if unknown:
            raise WtagError(f"not Keras taggers: {', '.join(unknown)} (known: {', '.join(keras_taggers)})")
        n = min(args.jets, len(ds.train.label))
        y = ds.train.label[:n].astype(np.float32).reshape(-1, 1)
        print(f"{n} training jets of {args.dataset}, batch 256; XLA's compile cost is its extra first-epoch time\n")
        print("| tagger | XLA off [jets/s] | XLA on [jets/s] | speed-up | XLA compile cost [s] | break-even "
              "[jet-epochs] | xla_from_jet_epochs |")
        print("|---|---|---|---|---|---|---|")
        for name in names:
            key = tagger_class(name).inputs[0]
            x = {key: np.asarray(ds.train.inputs([key])[key][:n], dtype=np.float32)}
            (first_off, off), (first_on, on) = (epoch_seconds(name, x, y, ds.standardization, jit)
                                                for jit in (False, True))
            compile_cost = (first_on - on) - (first_off - off)
            saved_per_jet = (off - on) / n
            even = f"{compile_cost / saved_per_jet:,.0f}" if saved_per_jet > 0 else "never"
            print(f"| {name} | {n / off:,.0f} | {n / on:,.0f} | {off / on:.2f} | {compile_cost:.1f} | {even} | "
                  f"{tagger_class(name).xla_from_jet_epochs} |", flush=True)
    except WtagError as exc:
        print(f"train_speed: {exc}", file=sys.stderr)
        return exit_status(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
