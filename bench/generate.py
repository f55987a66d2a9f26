"""Benchmark and tune the embedded Pythia 8 + FastJet generator.

``python bench/generate.py speed``: jets/s per core and per machine for each process, and where the time goes
(share inside Pythia: hard events, initialisation and the pileup pool; the rest is the pileup overlay, the
detector response, clustering, labels and substructure). Markdown on stdout.

``python bench/generate.py compare --real ../shared/data/cms2011_tt_qcd_jet_images.h5``: the tuning table. Each
Pythia setting (FSR alpha_s) generates its hard events once; every (pileup, detector) variant processes the same
events, so the comparison is not blurred by independent statistical fluctuations. Per class it prints the mean
image statistics of the real 2011 CMS images (TT = merged W, QCD) and of each setting, and the mean absolute
relative deviation over the eight numbers.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import awkward as ak
import h5py
import numpy as np

from wtag.features.images import image_statistics, jet_images
from wtag.sources import pythia as py

STATISTICS = ("total_pt", "n_nonzero", "central_fraction", "image_mass")


def speed(n_jets: int, workers: int, pileup: float, machine: bool) -> None:
    """One in-process run per process for the per-core rate and profile, then all cores for the machine rate."""
    rows = []
    pool_start = time.perf_counter()
    tuning = py.Tuning()
    pool = py.make_pool(1, tuning.pileup_pool, tuning.fsr_alphas) if pileup > 0 else None
    pool_seconds = time.perf_counter() - pool_start
    config = py.RunConfig(1, pileup, True, tuning)
    for process in py.PROCESSES:
        specs = py.plan_chunks(process, n_jets, 1, Path(tempfile.gettempdir()), n_jets, tuning)
        total = py.ChunkStats()
        cpu = time.process_time()
        for spec in specs:
            _, stats = py.generate_chunk(spec, config, pool)
            for name in vars(total):
                setattr(total, name, getattr(total, name) + getattr(stats, name))
        cpu = time.process_time() - cpu
        # The pool is made once per worker; charge each process with it as one chunk of a worker would be.
        wall = total.total + pool_seconds
        in_pythia = (total.pythia + pool_seconds) / wall
        machine_rate = float("nan")
        if machine:
            with tempfile.TemporaryDirectory() as tmp:
                start = time.perf_counter()
                py.generate(process, n_jets * workers, seed=2, output=tmp, workers=workers, pileup=pileup,
                            chunk_jets=n_jets, progress=False)
                machine_rate = n_jets * workers / (time.perf_counter() - start)
        rows.append((process, total, wall, cpu, in_pythia, machine_rate))
    print(f"Pileup MU = {pileup:g}; pool of {tuning.pileup_pool} minimum-bias events made in {pool_seconds:.1f} s "
          f"(counted in Pythia's share); {n_jets} jets per process; per machine = {workers} workers.\n")
    print("| process | events/jet | jets/s per core (wall) | jets/s per core (CPU) | jets/s per machine "
          "| in Pythia | pileup overlay | detector | clustering | labels | substructure |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for process, total, wall, cpu, in_pythia, machine_rate in rows:
        share = {name: getattr(total, name) / wall for name in ("pileup", "detector", "clustering", "labels",
                                                                 "substructure")}
        print(f"| {process} | {total.events / total.jets:.2f} | {total.jets / wall:.1f} | {total.jets / cpu:.1f} "
              f"| {machine_rate:.1f} | {in_pythia:.0%} | {share['pileup']:.1%} | {share['detector']:.1%} "
              f"| {share['clustering']:.1%} | {share['labels']:.1%} | {share['substructure']:.1%} |")


@dataclass(frozen=True)
class Variant:
    """One row of the tuning table."""

    fsr_alphas: float
    pileup: float
    detector: bool

    @property
    def label(self) -> str:
        return f"alpha_s(FSR) {self.fsr_alphas:g}, MU {self.pileup:g}, {'detector' if self.detector else 'no detector'}"


def _variant_jets(process: str, n_jets: int, fsr_alphas: float, variants: list[Variant], seed: int,
                  pool: py.MinBiasPool | None) -> list[ak.Array]:
    """Images' constituents for each variant on the same hard events (qcd: slices in the default proportions)."""
    tuning = py.Tuning(fsr_alphas=fsr_alphas)
    samples = [s for s in py.SAMPLES if s.process == process]
    targets = py.split_jets(n_jets, tuning.qcd_fractions) if process == "qcd" else [n_jets]
    per_variant: list[list[ak.Array]] = [[] for _ in variants]
    for k, (sample, target) in enumerate(zip(samples, targets)):
        if target == 0:
            continue
        pythia = py.make_pythia(py.sample_settings(sample, tuning), py.pythia_seed(seed, 99, k), fsr_alphas)
        rngs = [np.random.default_rng([seed, k, i]) for i in range(len(variants))]
        got: list[list[dict[str, object]]] = [[] for _ in variants]
        counts = [0] * len(variants)
        yield_guess = 0.2
        events_done = 0
        while min(counts) < target:
            batch = int(np.clip(1.1 * (target - min(counts)) / yield_guess, 10, 1000))
            events = pythia.nextBatch(batch)
            events_done += len(events)
            for i, variant in enumerate(variants):
                config = py.RunConfig(seed, variant.pileup, variant.detector, tuning)
                columns = py.process_batch(pythia, events, sample, config, pool, rngs[i], py.ChunkStats())
                got[i].append(columns)
                counts[i] += len(columns["event"])
            yield_guess = max(min(counts) / events_done, 1e-3)
        for i in range(len(variants)):
            per_variant[i].append(ak.Array({name: ak.concatenate([c[name] for c in got[i]])[:target]
                                            for name in ("ak7pfcand_pt", "ak7pfcand_eta", "ak7pfcand_phi")}))
    return [ak.concatenate(parts) for parts in per_variant]


def _means(pt: ak.Array, eta: ak.Array, phi: ak.Array) -> dict[str, float]:
    stats = image_statistics(jet_images(pt, eta, phi))
    return {name: float(np.mean(stats[name])) for name in STATISTICS}


def compare(real: Path, n_jets: int, seed: int, pool_size: int, alphas: list[float], pileups: list[float]) -> None:
    """The tuning table: real 2011 image statistics per class against each generator setting."""
    with h5py.File(real, "r") as f:
        reference = {}
        for key, cls in (("TT", "W"), ("QCD", "QCD")):
            stats = image_statistics(np.asarray(f[key][...], dtype=np.float64))
            reference[cls] = {name: float(np.mean(stats[name])) for name in STATISTICS}
    variants = [Variant(a, mu, True) for a in alphas for mu in pileups]
    # Particle level (no detector) at the default pileup where it is in the list, to show what the detector does.
    particle_mu = py.DEFAULT_PILEUP if py.DEFAULT_PILEUP in pileups else max(pileups)
    variants += [Variant(a, particle_mu, False) for a in alphas]
    results: dict[Variant, dict[str, dict[str, float]]] = {v: {} for v in variants}
    for a in alphas:
        subset = [v for v in variants if v.fsr_alphas == a]
        pool = py.make_pool(seed, pool_size, a) if any(v.pileup > 0 for v in subset) else None
        for process, cls in (("ttbar", "W"), ("qcd", "QCD")):
            start = time.perf_counter()
            jets = _variant_jets(process, n_jets, a, subset, seed, pool)
            for variant, sample in zip(subset, jets):
                results[variant][cls] = _means(sample["ak7pfcand_pt"], sample["ak7pfcand_eta"], sample["ak7pfcand_phi"])
            print(f"alpha_s {a:g} {process}: {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    header = " | ".join(f"{cls} {name}" for cls in ("W", "QCD") for name in ("total pT", "non-zero px", "central 3x3",
                                                                            "mass"))
    print(f"{n_jets} jets per class and setting; real: {real.name}.\n")
    print(f"| setting | {header} | mean abs. rel. deviation |")
    print("|---" * 10 + "|")

    def cells(values: dict[str, dict[str, float]]) -> str:
        return " | ".join(f"{values[cls][name]:.3f}" if name == "central_fraction" else f"{values[cls][name]:.1f}"
                          for cls in ("W", "QCD") for name in STATISTICS)

    print(f"| real CMS 2011 | {cells(reference)} | - |")
    for variant in sorted(variants, key=lambda v: (v.fsr_alphas, v.detector, v.pileup)):
        values = results[variant]
        deviation = np.mean([abs(values[c][n] / reference[c][n] - 1) for c in ("W", "QCD") for n in STATISTICS])
        print(f"| {variant.label} | {cells(values)} | {deviation:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("speed", help="jets/s per core and per machine, share of time in Pythia")
    s.add_argument("--jets", type=int, default=300, help="jets per process for the per-core run")
    s.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    s.add_argument("--pileup", type=float, default=py.DEFAULT_PILEUP)
    s.add_argument("--no-machine", action="store_true", help="skip the all-cores run")
    c = sub.add_parser("compare", help="image statistics of generator settings against the real CMS images")
    c.add_argument("--real", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data"
                   / "cms2011_tt_qcd_jet_images.h5")
    c.add_argument("--jets", type=int, default=2000, help="jets per class and setting")
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--pool", type=int, default=500, help="minimum-bias pool size")
    c.add_argument("--alphas", type=float, nargs="+", default=[0.118, 0.1365])
    c.add_argument("--pileup", type=float, nargs="+", default=[0.0, 5.0, 9.0, 13.0])
    args = parser.parse_args()
    if args.mode == "speed":
        speed(args.jets, args.workers, args.pileup, not args.no_machine)
    else:
        compare(args.real, args.jets, args.seed, args.pool, args.alphas, args.pileup)


if __name__ == "__main__":
    main()
