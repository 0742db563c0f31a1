"""Verification metrics: EER and minDCF, computed exactly as the reference evaluation does.

EER: on the ROC points of ``sklearn.metrics.roc_curve`` (default ``drop_intermediate=True``),
the point where FNR and FPR are closest, reported as the larger of the two, in percent.
minDCF: stable ascending sort of the scores, every sorted position a threshold,
``c_det = C_miss * FNR * p + C_fa * FPR * (1 - p)``, normalised by ``min(C_miss p, C_fa (1-p))``.
Both are re-implemented in numpy here (no scikit-learn at run time); the tests compare them
with scikit-learn and with a direct loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CapsvError


class MetricError(CapsvError):
    pass


def _check(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel()
    if scores.shape != labels.shape:
        raise MetricError(f"{len(scores)} scores but {len(labels)} labels")
    if not np.isin(labels, (0, 1)).all():
        raise MetricError("labels must be 0 (non-target) or 1 (target)")
    if not np.isfinite(scores).all():
        raise MetricError(f"{int((~np.isfinite(scores)).sum())} scores are NaN or infinite")
    n_target = int(labels.sum())
    if n_target == 0 or n_target == len(labels):
        kind = "non-target" if n_target == 0 else "target"
        raise MetricError(f"all {len(labels)} trials are {kind}: EER and minDCF need both "
                          "target (1) and non-target (0) trials")
    return scores, labels.astype(np.int64)


def roc_points(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with scikit-learn's roc_curve semantics (drop_intermediate=True)."""
    scores, labels = _check(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # The last index of each run of equal scores is one threshold.
    ends = np.r_[np.nonzero(np.diff(sorted_scores))[0], len(sorted_scores) - 1]
    tps = np.cumsum(sorted_labels)[ends].astype(np.float64)
    fps = (ends + 1 - tps).astype(np.float64)
    thresholds = sorted_scores[ends]
    if len(fps) > 2:  # drop points that lie on a straight line between their neighbours
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    fps, tps = np.r_[0.0, fps], np.r_[0.0, tps]
    thresholds = np.r_[np.inf, thresholds]
    return fps / fps[-1], tps / tps[-1], thresholds


def compute_eer(scores, labels) -> tuple[float, float]:
    """(EER in percent, threshold)."""
    fpr, tpr, thresholds = roc_points(scores, labels)
    fnr = 1.0 - tpr
    index = int(np.nanargmin(np.abs(fnr - fpr)))
    return 100.0 * max(fpr[index], fnr[index]), float(thresholds[index])


def compute_min_dcf(scores, labels, p_target: float = 0.05, c_miss: float = 1.0,
                    c_fa: float = 1.0) -> tuple[float, float]:
    """(normalised minDCF, threshold) with the reference's sorted-position thresholds."""
    scores, labels = _check(scores, labels)
    order = np.argsort(scores, kind="stable")
    sorted_labels = labels[order]
    fnr = np.cumsum(sorted_labels) / sorted_labels.sum()
    fpr = 1.0 - np.cumsum(1 - sorted_labels) / (len(labels) - sorted_labels.sum())
    c_det = c_miss * fnr * p_target + c_fa * fpr * (1 - p_target)
    index = int(np.argmin(c_det))
    c_def = min(c_miss * p_target, c_fa * (1 - p_target))
    return float(c_det[index] / c_def), float(scores[order][index])


@dataclass
class Metrics:
    eer: float
    eer_threshold: float
    min_dcf_005: float
    min_dcf_001: float
    n_trials: int
    n_target: int

    def lines(self) -> list[str]:
        return [f"EER {self.eer:.4f}", f"MinDCF(p=0.05) {self.min_dcf_005:.5f}",
                f"MinDCF(p=0.01) {self.min_dcf_001:.5f}"]

    def as_dict(self) -> dict:
        return {"EER": float(self.eer), "EER_threshold": float(self.eer_threshold),
                "minDCF_p0.05": float(self.min_dcf_005), "minDCF_p0.01": float(self.min_dcf_001),
                "n_trials": int(self.n_trials), "n_target": int(self.n_target)}


def compute_metrics(scores, labels) -> Metrics:
    eer, threshold = compute_eer(scores, labels)
    labels = np.asarray(labels)
    return Metrics(eer, threshold, compute_min_dcf(scores, labels, 0.05)[0],
                   compute_min_dcf(scores, labels, 0.01)[0], int(labels.size), int(labels.sum()))
