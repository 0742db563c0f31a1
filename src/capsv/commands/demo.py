"""``capsv demo``: the paper's result shape in minutes, with no download."""
from __future__ import annotations

import argparse
import time

from ..errors import CapsvError

HELP = "train CAP and TAP on a built-in corpus and compare them with a baseline (no download)"
DESCRIPTION = """\
Generate a procedural multi-speaker corpus (if not already there), train the paper's Thin
ResNet-34 (ResNetSE34) with CAP and with TAP on its training speakers, and verify held-out
speakers with both models and two hand-made baselines (mean MFCC cosine; MFCC mean+std
cosine). Prints a side-by-side table (EER, minDCF, training time, crops/s) and writes a
report folder: DET curves, score histograms, a learning curve (EER against training
seconds), score files, metrics JSON.
About 7 minutes on 2 CPU cores (at most 10 on a slower CPU); --quick takes about 2 minutes.
Each model trains for a fixed number of optimiser steps (the same result on any machine),
TAP and CAP side by side on one core each. In 7 minutes the networks beat the baselines'
EER but not their minDCF. --long trains on five times the speakers (the same test speakers
and trials) for eight times the steps: about 42 minutes on 2 cores and 0.6 GB of disk, and
then CAP beats the baselines on minDCF too.
The networks train and score on --device: CUDA when available (both models share the GPU,
in float32: TF32 off), else the CPU cores (one core per model). The plan is the same on
either; a GPU changes the time, and the results only by float rounding.
The corpus goes to DATA_DIR/PLAN-vN-XXXXXXXX (PLAN: full, quick or long; N: the
generator's version; then a digest of its settings).

example:
  capsv demo                  # what `make demo` runs
  capsv demo --quick --report_dir /tmp/demo_report
  capsv demo --long --report_dir demo_report_long
  capsv demo --device cpu     # the CPU even where there is a GPU
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data_dir", default="data/demo",
                   help="where the corpus and the training runs go (default: %(default)s)")
    p.add_argument("--report_dir", default="demo_report", help="report folder (default: %(default)s)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small corpus and budget (about 2 minutes)")
    size.add_argument("--long", action="store_true",
                      help="500 training speakers, 2,400 steps a model (about 42 minutes on 2 cores)")
    p.add_argument("--device", default="auto",
                   help="where the networks train and score: auto (CUDA when available, else "
                        "the CPU), cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--no_progress", action="store_true", help="hide progress bars")
    p.add_argument("--config", help="YAML file of flag values; flags typed on the command line win")


def run(args: argparse.Namespace) -> int:
    from ..demo import format_table, run_demo

    if args.quick and args.long:        # both can come from --config
        raise CapsvError("--quick and --long are two different demos; give one of them")
    start = time.time()
    plan = "quick" if args.quick else "long" if args.long else "full"
    try:
        systems = run_demo(args.data_dir, args.report_dir, plan=plan, progress=not args.no_progress,
                           device=args.device)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"interrupted; the same command again reuses the corpus in "
                                f"{args.data_dir} (finishing it if it was half made) and trains "
                                "both models afresh") from None
    print()
    print(format_table(systems))
    print(f"\nTotal {time.time() - start:.0f} s. Report: {args.report_dir}/ (det_compare.png, "
          "table.txt, per-system folders)")
    return 0
