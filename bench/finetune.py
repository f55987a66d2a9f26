"""Compare tagger runs scored on the same held-out test jets, with bootstrap errors (the fine-tuning study).

``python bench/finetune.py RUN_ID [RUN_ID ...]`` (``MLFLOW_TRACKING_URI`` set): for each tagger run, test AUC
with the standard deviation over seeded bootstrap resamples of the test jets, r50 (1 / background efficiency
at 50% signal efficiency) with the central 68% bootstrap interval (its distribution is skewed when only a few
background jets pass), and the paired differences to the first run (same resamples, so the test set's own
fluctuation cancels). All runs must hold the same test jets (same labels in the same order). Markdown on stdout.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from wtag.errors import WtagError, exit_status
from wtag.metrics import background_rejection, roc_auc
from wtag.runs import read_test_scores, tagger_run
from wtag.schema import Tag


def bootstrap(label: np.ndarray, scores: list[np.ndarray], resamples: int, seed: int) -> np.ndarray:
    """(resamples, runs, 2) AUC and r50 on the same seeded resamples of the test jets, class sizes kept."""
    rng = np.random.default_rng(seed)
    sig, bkg = np.flatnonzero(label == 1), np.flatnonzero(label == 0)
    out = np.empty((resamples, len(scores), 2))
    for b in range(resamples):
        idx = np.concatenate([rng.choice(sig, len(sig)), rng.choice(bkg, len(bkg))])
        for r, score in enumerate(scores):
            out[b, r] = roc_auc(label[idx], score[idx]), background_rejection(label[idx], score[idx], 0.5)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_ids", nargs="+")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    runs = [tagger_run(r) for r in args.run_ids]
    with tempfile.TemporaryDirectory() as tmp:
        loaded = [read_test_scores(r.info.run_id, Path(tmp) / r.info.run_id) for r in runs]
    label = np.asarray(loaded[0][0])
    if any(not np.array_equal(np.asarray(lab), label) for lab, _ in loaded):
        raise WtagError("the runs were not scored on the same test jets (labels differ)")
    scores = [np.asarray(s, dtype=np.float64) for _, s in loaded]
    boot = bootstrap(label, scores, args.resamples, args.seed)
    print(f"{len(label)} test jets ({int(label.sum())} W), {args.resamples} bootstrap resamples\n")
    print("| run | tagger | init_from | source | test_auc | r50 [68% interval] | AUC - first run | r50 - first run |")
    print("|---|---|---|---|---|---|---|---|")
    for i, run in enumerate(runs):
        auc, r50 = roc_auc(label, scores[i]), background_rejection(label, scores[i], 0.5)
        d_auc = boot[:, i, 0] - boot[:, 0, 0]
        d_r50 = boot[:, i, 1] - boot[:, 0, 1]
        tags = run.data.tags
        lo, hi = np.percentile(boot[:, i, 1], [16, 84])
        d_lo, d_hi = np.percentile(d_r50, [16, 84])
        print(f"| {run.info.run_id[:8]} | {tags.get(Tag.TAGGER)} | {tags.get(Tag.INIT_FROM, '')[:8] or '-'} "
              f"| {tags.get(Tag.SOURCE)} | {auc:.4f} +- {boot[:, i, 0].std():.4f} | {r50:.1f} [{lo:.1f}, {hi:.1f}] "
              f"| {auc - roc_auc(label, scores[0]):+.4f} +- {d_auc.std():.4f} "
              f"| {r50 - background_rejection(label, scores[0], 0.5):+.1f} [{d_lo:+.1f}, {d_hi:+.1f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(exit_status(main, "bench/finetune.py"))
