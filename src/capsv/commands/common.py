"""Flag groups shared by several subcommands, with the seed README's names."""
from __future__ import annotations

import argparse

from ..protocol import EVAL_FRAMES, NUM_EVAL

from ..models import BACKBONES
from ..models.pooling import POOLINGS


def add_model_args(p: argparse.ArgumentParser, defaults: bool = True) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default="ResNetSE34L" if defaults else None, choices=BACKBONES.names(),
                   help="backbone: ResNetSE34L (Fast ResNet-34) or ResNetSE34 (Thin ResNet-34)%s"
                   % (" (default: %(default)s)" if defaults else "; read from a capsv checkpoint"))
    g.add_argument("--encoder_type", default="TAP" if defaults else None, choices=POOLINGS.names(),
                   help="pooling: TAP, SAP or CAP (pairwise)%s"
                   % (" (default: %(default)s)" if defaults else "; read from a capsv checkpoint"))
    g.add_argument("--nOut", type=int, default=512 if defaults else None,
                   help="embedding size%s" % (" (default: %(default)s)" if defaults else
                                              "; read from the checkpoint"))


def add_eval_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation")
    g.add_argument("--test_list", help="trial list, lines '<0|1> <path1> <path2>'")
    g.add_argument("--test_path", default="", help="root folder the trial paths are relative to")
    g.add_argument("--eval_frames", type=int, default=EVAL_FRAMES,
                   help="frames per evaluation crop (350 = 3.5 s); 0 = whole utterance (default: %(default)s)")
    g.add_argument("--num_eval", type=int, default=NUM_EVAL,
                   help="evaluation crops per file (default: %(default)s)")
    g.add_argument("--on_bad_audio", choices=("error", "skip"), default="error",
                   help="an unreadable, empty, truncated or wrong-rate audio file: 'error' stops "
                        "and names every such file; 'skip' leaves it out (evaluation: with its "
                        "trials; training: another utterance of the same speaker is read) and "
                        "reports how many at the end (default: %(default)s)")
    g.add_argument("--strict_audio", action="store_true",
                   help="refuse audio that is not 16 kHz (today's files at 44.1/48/8 kHz ...) "
                        "instead of resampling it on reading, with a warning per file")


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: %(default)s)")
    g.add_argument("--nDataLoaderThread", type=int, default=2,
                   help="audio-loading worker processes (default: %(default)s)")
    g.add_argument("--no_progress", action="store_true", help="hide progress bars")
    g.add_argument("--config", help="YAML file of flag values; flags typed on the command line "
                   "win; a training config works (its training-only keys are ignored)")
