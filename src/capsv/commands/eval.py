"""``capsv eval``: score a trial list with a checkpoint and print EER / minDCF."""
from __future__ import annotations

import argparse

from ..models.checkpoint import load_model
from ..evaluation.inputs import EvalInputError
from ..evaluation.pipeline import ScoreNorm, evaluate_list
from ..utils import atomic_write_text, resolve_device
from .common import add_eval_args, add_model_args, add_runtime_args

HELP = "evaluate a checkpoint on a trial list (EER, minDCF)"
DESCRIPTION = """\
Evaluate a model on a verification trial list, as the paper does: every file once, 10 crops
of 350 frames, CAP scored pairwise. Prints 'EER <percent>', 'MinDCF(p=0.05) <v>' and
'MinDCF(p=0.01) <v>'. Reads capsv checkpoints (no model flags needed) and the original
code's state_dicts (give --model; --encoder_type and --nOut are read from the tensors
unless given).

--eval_frames 0 scores whole utterances (no crops; CAP trials of different lengths are
batched with padding masks, with the scores of one-at-a-time scoring).

--score_norm asnorm applies adaptive s-norm: each side's score against every file of
--cohort_list (computed like a trial score; pairwise for CAP), the --top_n largest give a mean
and standard deviation, s' = ((s - m_1)/sd_1 + (s - m_2)/sd_2) / 2. The raw metrics are
printed too.

Memory: the features wait for scoring in memory-mapped files (a temporary store by default,
or --eval_cache DIR), so RAM does not grow with the number of files; the disk holds ~0.9 MB
per file for CAP at the paper protocol (131 GB for VoxCeleb1-E/H), 2 kB for TAP/SAP. If
$TMPDIR is a RAM disk (tmpfs), point --eval_cache or TMPDIR at a real disk.

--report DIR writes det.png (DET curve, EER and minDCF points marked), score_hist.png,
metrics.json and scores.txt.

examples:
  capsv eval --initial_model exps/cap/model/model000000050.model \\
      --test_list data/veri_test.txt --test_path data/voxceleb/voxceleb1
  capsv eval --initial_model cap.model --test_list veri_test.txt --test_path vox1/ \\
      --score_norm asnorm --cohort_list cohort.txt --cohort_path vox2/ --report reports/cap
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--initial_model", required=True, help="checkpoint to evaluate")
    add_model_args(p, defaults=False)
    add_eval_args(p)
    p.add_argument("--eval_cache", metavar="DIR",
                   help="keep the evaluation features in DIR and reuse them when rerun with the "
                        "same model, protocol and files (CAP at the paper protocol: ~0.9 MB a "
                        "file). Default: a temporary store in $TMPDIR that vanishes with the run; "
                        "':memory:' keeps them in RAM")
    p.add_argument("--save_scores", help="write 'label path1 path2 score' per trial, in list order")
    p.add_argument("--report", metavar="DIR",
                   help="write DET / score-histogram plots, metrics.json and scores.txt here")
    g = p.add_argument_group("score normalisation")
    g.add_argument("--score_norm", choices=["none", "asnorm"], default="none",
                   help="adaptive s-norm against --cohort_list (default: %(default)s)")
    g.add_argument("--cohort_list", help="cohort audio files: one path per line, or a train list "
                   "('speaker path')")
    g.add_argument("--cohort_path", help="root of the cohort paths (default: --test_path)")
    g.add_argument("--top_n", type=int, default=300,
                   help="closest cohort scores used per side (default: %(default)s)")
    add_runtime_args(p)


def run(args: argparse.Namespace) -> int:
    if not args.test_list:
        raise SystemExit("capsv eval: error: --test_list is required")
    norm = None
    if args.score_norm == "asnorm":
        if not args.cohort_list:
            raise EvalInputError("--score_norm asnorm needs --cohort_list FILE")
        if args.top_n < 1:
            raise EvalInputError(f"--top_n must be at least 1, got {args.top_n}")
        norm = ScoreNorm(args.cohort_list, args.cohort_path if args.cohort_path is not None
                         else args.test_path, args.top_n)
    device = resolve_device(args.device)
    net, _ = load_model(args.initial_model, args.model, args.encoder_type, args.nOut, device=device)
    result = evaluate_list(net, args.test_list, args.test_path, args.eval_frames, args.num_eval,
                           device=device, workers=args.nDataLoaderThread,
                           progress=not args.no_progress, score_norm=norm,
                           on_bad_audio=args.on_bad_audio, eval_cache=args.eval_cache)
    if args.save_scores:
        atomic_write_text(args.save_scores, "\n".join(result.score_lines()) + "\n")
    if args.report:
        from ..evaluation.report import write_report
        extra = {"eval_frames": args.eval_frames, "num_eval": args.num_eval,
                 "score_norm": args.score_norm}
        if result.raw_metrics is not None:
            extra["raw"] = result.raw_metrics.as_dict()
        name = f"{net.config['model']} {net.config['encoder_type']}"
        write_report(args.report, result.scores, [t.label for t in result.trials],
                     trials=result.trials, name=name, extra=extra)
    if result.raw_metrics is not None:
        print("raw scores: " + ", ".join(result.raw_metrics.lines()), flush=True)
    print("\n".join(result.metrics.lines()), flush=True)
    if result.skipped_files:
        print(f"skipped {len(result.skipped_files)} bad audio file(s) and "
              f"{result.skipped_trials} trial(s) (--on_bad_audio skip)", flush=True)
    return 0
