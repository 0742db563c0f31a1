"""Score normalisation against a cohort: adaptive s-norm (AS-norm).

For a trial (enrolment e, test t) with raw score s, let S_e be the scores of e against every
cohort file and S_t those of t. AS-norm keeps the ``top_n`` largest of each (the cohort files
most like that side) and standardises with their mean and standard deviation:

    s_norm = ((s - mean(top_n(S_e))) / std(top_n(S_e)) + (s - mean(top_n(S_t))) / std(top_n(S_t))) / 2

(Matejka et al., Interspeech 2017; "AS-norm1"). std is the population one (ddof 0). Cohort
entries set to -inf (e.g. the file itself) are never selected.
"""
from __future__ import annotations

import numpy as np

from ..errors import CapsvError

STD_FLOOR = 1e-8  # a cohort whose top scores are all equal must not divide by zero


class ScoreNormError(CapsvError):
    pass


def cohort_stats(cohort_scores: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) scores of N files against C cohort files -> mean and std (N,) of each row's top_n.

    ``top_n`` larger than the usable cohort uses the whole cohort.
    """
    table = np.asarray(cohort_scores, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] == 0:
        raise ScoreNormError(f"cohort scores must be a non-empty (files, cohort) table, got {table.shape}")
    if top_n < 1:
        raise ScoreNormError(f"top_n must be at least 1, got {top_n}")
    usable = int(np.isfinite(table).sum(axis=1).min())
    if usable == 0:
        raise ScoreNormError("a file has no usable cohort score (the cohort holds only the file itself)")
    k = min(top_n, usable)
    top = -np.sort(-table, axis=1)[:, :k]            # each row's k largest, descending
    return top.mean(axis=1), np.maximum(top.std(axis=1), STD_FLOOR)


def adaptive_snorm(scores, enroll_mean, enroll_std, test_mean, test_std) -> np.ndarray:
    """The AS-norm formula above, element-wise over trials."""
    scores = np.asarray(scores, dtype=np.float64)
    return 0.5 * ((scores - enroll_mean) / enroll_std + (scores - test_mean) / test_std)


def normalise_pairs(scores, pairs: np.ndarray, file_mean: np.ndarray,
                    file_std: np.ndarray) -> np.ndarray:
    """AS-norm of trial ``scores`` (T,) from per-file cohort statistics: ``pairs`` (T, 2) are
    the trials' (enrolment, test) file indices into ``file_mean`` / ``file_std`` (N,) (from
    :func:`cohort_stats`). ``capsv eval`` and ``capsv score`` both normalise through here."""
    pairs = np.asarray(pairs)
    return adaptive_snorm(scores, file_mean[pairs[:, 0]], file_std[pairs[:, 0]],
                          file_mean[pairs[:, 1]], file_std[pairs[:, 1]])


def asnorm_scores(scores, enroll_cohort: np.ndarray, test_cohort: np.ndarray, top_n: int) -> np.ndarray:
    """Normalise trial scores given each trial's (T, C) enrolment-side and test-side cohort scores."""
    e_mean, e_std = cohort_stats(enroll_cohort, top_n)
    t_mean, t_std = cohort_stats(test_cohort, top_n)
    return adaptive_snorm(scores, e_mean, e_std, t_mean, t_std)
