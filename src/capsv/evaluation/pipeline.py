"""Trial-list evaluation (spec §5), fast.

1. Validate everything first (list syntax, every missing file, every unreadable header,
   wrong sample rates) so bad input fails before any network work.
2. Run every distinct file through the backbone once: ``num_eval`` crops of ``eval_frames``.
   TAP/SAP keep the mean of the crops' unit-norm embeddings (one vector a file); CAP keeps
   the frames and their meta-projections, by default in a memory-mapped disk store
   (:mod:`capsv.evaluation.feature_store`), so RAM does not grow with the number of files.
3. Score trials in chunks. TAP/SAP: the mean of the crops' cosine matrix equals the dot
   product of the mean unit embeddings. CAP with fixed-size crops: the low-cost exact form,
   with a chunk's trials grouped by file so each file's work is a few large matmuls
   (:mod:`capsv.evaluation.cap_scoring`); never one Python iteration per trial.

Full-length scoring (``eval_frames == 0``): each file runs through the front end and backbone
alone, at its own length (zero padding would shift the front end's instance norm and the
convolutions' edges). CAP trials of different lengths are then scored together: their frame
features are zero-padded and masked (:meth:`capsv.models.pooling.CAP.forward_grouped`), which gives
the scores of one-at-a-time scoring.

Score normalisation (``score_norm="asnorm"``): adaptive s-norm against a cohort of files, see
:mod:`capsv.evaluation.scorenorm`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import allocator, faults
from ..data.lists import Trial, read_audio_list, read_trials, trial_files
from ..models import SpeakerNet
from ..protocol import EVAL_FRAMES, NUM_EVAL
from .extract import FileFeatures, extract_features
from .inputs import EvalInputError, validate_files, validate_inputs
from .metrics import Metrics, compute_metrics
from .scorenorm import cohort_stats, normalise_pairs
from .scoring import cohort_scores, score_pairs


@dataclass
class EvalResult:
    """Scores in trial-list order; with score normalisation ``scores`` are the normalised
    ones and ``raw_scores`` / ``raw_metrics`` keep the originals."""
    trials: list[Trial]
    scores: np.ndarray
    metrics: Metrics
    raw_scores: np.ndarray | None = None
    raw_metrics: Metrics | None = None
    skipped_files: list[str] = field(default_factory=list)   # --on_bad_audio skip
    skipped_trials: int = 0

    def score_lines(self) -> list[str]:
        return [f"{t.label} {t.path1} {t.path2} {s:.8g}" for t, s in zip(self.trials, self.scores)]


@dataclass
class ScoreNorm:
    """Adaptive s-norm settings: ``cohort_list`` lists audio files (one path per line, or
    a train list's ``speaker path``), relative to ``cohort_path``; ``top_n`` closest used."""
    cohort_list: str
    cohort_path: str = ""
    top_n: int = 300


def evaluate_list(net: SpeakerNet, test_list: str, test_path: str, eval_frames: int = EVAL_FRAMES,
                  num_eval: int = NUM_EVAL, device: torch.device | str = "cpu", workers: int = 0,
                  progress: bool = True, score_norm: ScoreNorm | None = None,
                  on_bad_audio: str = "error", eval_cache: str | None = None,
                  extract=None) -> EvalResult:
    """Score every trial of ``test_list`` (spec §5).

    ``eval_cache``: where the features wait to be scored. ``None`` (default): a temporary disk
    store that vanishes with the process, so memory does not grow with the file count; a
    folder: kept there and reused by a rerun with the same model, protocol and files
    (:mod:`capsv.evaluation.feature_store`); ``":memory:"``: in RAM (or on the GPU), as before.

    ``extract``: how the files' features are computed, with :func:`extract_features`'s
    signature (default: that function, in this process). Under torchrun it is
    :func:`capsv.evaluation.sharded.sharded_extractor`: the same checks, skipping and scoring,
    with the extraction split over the ranks.
    """
    extract = extract_features if extract is None else extract
    # Freed blocks go back to the kernel (a fixed glibc mmap threshold): with the adaptive
    # one, retained heap grew with the number of files (capsv.allocator).
    allocator.return_freed_memory()
    trials = read_trials(test_list)
    all_files = trial_files(trials)
    files = validate_inputs(trials, test_path, test_list, on_bad_audio, eval_frames)
    skipped = sorted(set(all_files) - set(files))
    n_listed = len(trials)
    if skipped:
        usable = set(files)
        trials = [t for t in trials if t.path1 in usable and t.path2 in usable]
        print(f"warning: {len(skipped)} bad file(s) skipped, with {n_listed - len(trials)} of "
              f"{n_listed} trials", flush=True)
        if not trials:
            raise EvalInputError(f"{test_list}: no trial is left after skipping bad files")
    n_target = sum(t.label for t in trials)
    if n_target in (0, len(trials)):
        raise EvalInputError(f"{test_list}: all {len(trials)} trials are "
                             f"{'non-target' if n_target == 0 else 'target'}; EER and minDCF "
                             "need both labels 1 and 0")
    files = trial_files(trials)
    paths = [os.path.normpath(os.path.join(test_path, f)) for f in files]
    cohort = []
    if score_norm is not None:
        cohort = validate_cohort(score_norm)
        known = set(paths)
        paths += [p for p in cohort if p not in known]
    index = {p: i for i, p in enumerate(paths)}
    rel_index = {f: i for i, f in enumerate(files)}
    pairs = np.array([(rel_index[t.path1], rel_index[t.path2]) for t in trials], dtype=np.int64)
    net = net.to(device)
    feats = extract(net, paths, eval_frames, num_eval, device=device, workers=workers,
                    progress=progress, keep_crops=False, cache=eval_cache,
                    skip_bad=on_bad_audio == "skip")
    try:
        if feats.unreadable:                    # failed while decoding, after a good header
            trials, pairs, dropped = _drop_unreadable(feats.unreadable, files, trials, pairs,
                                                      test_list)
            skipped = sorted(set(skipped) | dropped)
        faults.kill_if("kill_during_eval")      # test hook (capsv.faults): features read, not scored
        return _score_list(net, feats, trials, files, pairs, index, cohort, score_norm,
                           skipped, n_listed, progress)
    finally:
        feats.close()


def _score_list(net: SpeakerNet, feats: FileFeatures, trials: list[Trial], files: list[str],
                pairs: np.ndarray, index: dict[str, int], cohort: list[str],
                score_norm: ScoreNorm | None, skipped: list[str], n_listed: int,
                progress: bool) -> EvalResult:
    """The trials' scores and metrics, AS-normalised against the cohort when asked."""
    scores = score_pairs(net, feats, pairs, progress=progress)
    labels = [t.label for t in trials]
    if score_norm is None:
        return EvalResult(trials, scores, compute_metrics(scores, labels), skipped_files=skipped,
                          skipped_trials=n_listed - len(trials))
    cohort_ids = np.array([index[p] for p in cohort])
    file_ids = np.array([i for i in range(len(files)) if i not in feats.unreadable], np.int64)
    mean, std = np.full(len(files), np.nan), np.full(len(files), np.nan)
    mean[file_ids], std[file_ids] = _cohort_side_stats(net, feats, file_ids, cohort_ids,
                                                       score_norm.top_n, progress)
    normed = normalise_pairs(scores, pairs, mean, std)
    return EvalResult(trials, normed, compute_metrics(normed, labels),
                      raw_scores=scores, raw_metrics=compute_metrics(scores, labels),
                      skipped_files=skipped, skipped_trials=n_listed - len(trials))


def _cohort_side_stats(net: SpeakerNet, feats: FileFeatures, file_ids: np.ndarray,
                       cohort_ids: np.ndarray, top_n: int, progress: bool,
                       entries: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """AS-norm mean and std (len(file_ids),) of each trial file's top cohort scores.

    One row of cohort scores per trial file (CAP's score is symmetric, spec §3), the file
    itself left out when it is also in the cohort; computed for blocks of files of at most
    ``entries`` scores, so the (files, cohort) table is never held whole."""
    block = max(1, entries // len(cohort_ids))
    means, stds = [], []
    for start in range(0, len(file_ids), block):
        ids = file_ids[start:start + block]
        table = cohort_scores(net, feats, ids, cohort_ids, progress=progress)
        table[ids[:, None] == cohort_ids[None, :]] = -np.inf
        mean, std = cohort_stats(table, top_n)
        means.append(mean)
        stds.append(std)
    return np.concatenate(means), np.concatenate(stds)


def _drop_unreadable(unreadable: dict[int, str], files: list[str], trials: list[Trial],
                     pairs: np.ndarray, test_list: str) -> tuple[list[Trial], np.ndarray, set[str]]:
    """--on_bad_audio skip for files that failed while decoding: warn per file, leave out
    their trials (``pairs`` (n, 2) file indices of ``trials``). A cohort file cannot be left
    out (every trial's normalisation uses it): an error."""
    cohort = [why for index, why in unreadable.items() if index >= len(files)]
    if cohort:
        raise EvalInputError(f"unusable cohort file: {cohort[0]}")
    for why in unreadable.values():
        print(f"warning: skipping (--on_bad_audio skip): {why}", flush=True)
    keep = ~np.isin(pairs, list(unreadable)).any(axis=1)
    kept = [t for t, k in zip(trials, keep) if k]
    print(f"warning: {len(unreadable)} file(s) failed while decoding; {len(trials) - len(kept)} "
          f"more of their trials left out", flush=True)
    labels = {t.label for t in kept}
    if labels != {0, 1}:
        raise EvalInputError(f"{test_list}: the trials left after skipping bad files do not have "
                             "both labels 1 and 0; EER and minDCF need both")
    return kept, pairs[keep], {files[i] for i in unreadable}


def validate_cohort(norm: ScoreNorm) -> list[str]:
    """Full paths of the cohort files, checked like the trial files."""
    rel = read_audio_list(norm.cohort_list)
    if len(rel) < 2:
        raise EvalInputError(f"{norm.cohort_list}: a cohort needs at least 2 files, found {len(rel)}")
    validate_files(rel, norm.cohort_path, f"cohort list {norm.cohort_list}")
    full = list(dict.fromkeys(os.path.normpath(os.path.join(norm.cohort_path, r)) for r in rel))
    return full
