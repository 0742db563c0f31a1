"""``capsv score``: score a trial list from stored embeddings (TAP/SAP)."""
from __future__ import annotations

import argparse
import os

import numpy as np

from ..data.lists import read_trials
from ..evaluation.embeddings import EmbeddingError, attach_norms, lookup, read_embeddings
from ..evaluation.metrics import compute_metrics
from ..evaluation.scorenorm import cohort_stats, normalise_pairs
from ..utils import atomic_write_text

HELP = "score a trial list from embeddings stored by 'capsv embed' (TAP/SAP)"
DESCRIPTION = """\
Score every trial of a list from the two files' stored embeddings: the stored vectors are
unit length (their dot product is the cosine) and the lengths of the unscaled means are
stored beside them (.npz 'norms', or x.norms beside x.ark), so the score is
dot * norm1 * norm2, which equals 'capsv eval' for the same model and protocol (the mean of
the crops' cosines). Prints EER and minDCF when the list has
both target and non-target trials. CAP needs the pair head: use 'capsv eval'.

Optional AS-norm (adaptive s-norm) against cohort embeddings from another 'capsv embed' run:
  --score_norm asnorm --cohort_embeddings cohort.npz --top_n 300

example:
  capsv embed --initial_model tap.model --test_list veri_test.txt --test_path vox1/ --out emb.npz
  capsv score --embeddings emb.npz --test_list veri_test.txt --save_scores scores.txt
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embeddings", required=True, help=".npz, .scp or .ark written by 'capsv embed'")
    p.add_argument("--test_list", required=True, help="trial list, lines '<0|1> <path1> <path2>'")
    p.add_argument("--save_scores", help="write 'label path1 path2 score' per trial, in list order")
    g = p.add_argument_group("score normalisation")
    g.add_argument("--score_norm", choices=["none", "asnorm"], default="none",
                   help="adaptive s-norm against --cohort_embeddings (default: %(default)s)")
    g.add_argument("--cohort_embeddings", help="embeddings of the cohort files (all are used)")
    g.add_argument("--top_n", type=int, default=300,
                   help="closest cohort scores used per side (default: %(default)s)")
    p.add_argument("--report", metavar="DIR", help="also write DET / histogram plots and metrics.json")
    p.add_argument("--config", help="YAML file of flag values; flags typed on the command line win")


def run(args: argparse.Namespace) -> int:
    data = attach_norms(read_embeddings(args.embeddings), args.embeddings)
    if data.embeddings is None:
        raise EmbeddingError(f"{args.embeddings}: holds CAP frame features; CAP scores are "
                             "pairwise: use 'capsv eval' (or 'capsv verify')")
    trials = read_trials(args.test_list)
    rows1 = lookup(data, [t.path1 for t in trials], args.embeddings)
    rows2 = lookup(data, [t.path2 for t in trials], args.embeddings)
    emb = data.scoring_vectors()
    scores = (emb[rows1] * emb[rows2]).sum(axis=1)
    if args.score_norm == "asnorm":
        scores = _asnorm(args, data, emb, scores, rows1, rows2)
    labels = np.array([t.label for t in trials])
    if args.save_scores:
        atomic_write_text(args.save_scores, "".join(
            f"{t.label} {t.path1} {t.path2} {s:.8g}\n" for t, s in zip(trials, scores)))
    if 0 < labels.sum() < len(labels):
        metrics = compute_metrics(scores, labels)
        print("\n".join(metrics.lines()), flush=True)
        if args.report:
            from ..evaluation.report import write_report
            write_report(args.report, scores, labels, trials=trials, name=args.embeddings)
    else:
        print(f"scored {len(trials)} trials (metrics need both target and non-target trials)")
    return 0


def _asnorm(args, data, emb, scores, rows1, rows2) -> np.ndarray:
    if not args.cohort_embeddings:
        raise EmbeddingError("--score_norm asnorm needs --cohort_embeddings FILE")
    cohort = attach_norms(read_embeddings(args.cohort_embeddings), args.cohort_embeddings)
    if cohort.embeddings is None or cohort.embeddings.shape[1] != emb.shape[1]:
        raise EmbeddingError(f"{args.cohort_embeddings}: cohort embeddings do not match "
                             f"{args.embeddings} (CAP frames or another embedding size)")
    used, inverse = np.unique(np.r_[rows1, rows2], return_inverse=True)
    table = emb[used] @ cohort.scoring_vectors().T                # (used files, cohort)
    cohort_rows = cohort.index()
    for row, key in enumerate(np.array(data.keys)[used]):
        if os.path.normpath(key) in cohort_rows:                  # a file is not its own cohort
            table[row, cohort_rows[os.path.normpath(key)]] = -np.inf
    mean, std = cohort_stats(table, args.top_n)
    sides = np.stack([inverse[:len(rows1)], inverse[len(rows1):]], axis=1)   # (trials, 2)
    return normalise_pairs(scores, sides, mean, std)
