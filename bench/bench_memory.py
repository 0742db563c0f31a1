"""Peak memory of scoring a VoxCeleb1-E-sized list (580,000 trials over 5,000 short files).

Measured in fresh processes for 58,000 and 580,000 trials: if scoring is chunked, peak RSS
must not grow with the trial count (only the per-trial score array, 8 bytes a trial, may).
Features are random CAP frame features (10 crops x 13 frames, i.e. ~0.5 s crops) so the
measure isolates the scoring engine; file reading and the backbone are benchmarked elsewhere.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

import numpy as np
import torch

from common import Timer, peak_rss_mb, row

from capsv.evaluation.extract import FileFeatures

from capsv.evaluation.scoring import score_pairs
from capsv.models.pooling import CAP


class _Net:
    pairwise = True

    def __init__(self, cap):
        self.pooling = cap


def measure(n_trials: int, n_files: int = 5000, frames: int = 13) -> None:
    torch.manual_seed(0)
    cap = CAP(128, 512).eval()
    feats = FileFeatures()
    with torch.inference_mode():
        for i in range(n_files):
            x = torch.randn(10, 128, frames).relu()
            feats.keep_cap(i, x, cap.project(x), n_files)
    pairs = np.random.default_rng(0).integers(0, n_files, (n_trials, 2))
    before = peak_rss_mb()
    with Timer() as t:
        scores = score_pairs(_Net(cap), feats, pairs, progress=False)
    assert np.isfinite(scores).all()
    row("memory", trials=n_trials, files=n_files, frames_per_crop=frames,
        rss_before_scoring_mb=round(before, 1), peak_rss_mb=round(peak_rss_mb(), 1),
        scoring_growth_mb=round(peak_rss_mb() - before, 1),
        score_array_mb=round(scores.nbytes / 2**20, 1), trials_per_s=round(n_trials / t.seconds))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, help="(internal) one measurement")
    parser.add_argument("--sizes", type=int, nargs="+", default=[58_000, 580_000],
                        help="trial counts to measure, each in a fresh process (default: %(default)s)")
    args = parser.parse_args()
    if args.trials:
        measure(args.trials)
        sys.exit(0)
    for n in args.sizes:
        subprocess.run([sys.executable, __file__, "--trials", str(n)], check=True)
