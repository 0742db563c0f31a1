"""``capsv eval``: score a trial list with a checkpoint and print EER / minDCF."""
from __future__ import annotations

import argparse

from ..checkpoint import load_model
from ..evaluate import evaluate_list
from ..utils import atomic_write_text, resolve_device
from .common import add_eval_args, add_model_args, add_runtime_args

HELP = "evaluate a checkpoint on a trial list (EER, minDCF)"
DESCRIPTION = """\
Evaluate a model on a verification trial list, as the paper does: every file once, 10 crops
of 350 frames, CAP scored pairwise. Prints 'EER <percent>', 'MinDCF(p=0.05) <v>' and
'MinDCF(p=0.01) <v>'. Reads capsv checkpoints (no model flags needed) and the original
code's state_dicts (give --model; --encoder_type and --nOut are read from the tensors
unless given).

example:
  capsv eval --initial_model exps/cap/model/model000000050.model \\
      --test_list data/veri_test.txt --test_path data/voxceleb/voxceleb1
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--initial_model", required=True, help="checkpoint to evaluate")
    add_model_args(p, defaults=False)
    add_eval_args(p)
    p.add_argument("--save_scores", help="write 'label path1 path2 score' per trial, in list order")
    add_runtime_args(p)


def run(args: argparse.Namespace) -> int:
    if not args.test_list:
        raise SystemExit("capsv eval: error: --test_list is required")
    device = resolve_device(args.device)
    net, _ = load_model(args.initial_model, args.model, args.encoder_type, args.nOut, device=device)
    result = evaluate_list(net, args.test_list, args.test_path, args.eval_frames, args.num_eval,
                           device=device, workers=args.nDataLoaderThread,
                           progress=not args.no_progress)
    if args.save_scores:
        atomic_write_text(args.save_scores, "\n".join(result.score_lines()) + "\n")
    print("\n".join(result.metrics.lines()), flush=True)
    return 0

