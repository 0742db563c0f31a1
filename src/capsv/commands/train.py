"""``capsv train``: the paper's training recipe, with the original script's flags."""
from __future__ import annotations

import argparse
from dataclasses import fields

from ..train.distributed import from_env
from ..train.losses import LOSSES
from ..train import TrainConfig, train
from .common import add_eval_args, add_model_args, add_runtime_args

HELP = "train a speaker model (NP loss + global classifier; TAP, SAP or CAP)"
DESCRIPTION = """\
Train a speaker verification model the way the CAP paper does: batches of --batch_size
speakers with --nSpeakers utterances each (one support, the rest queries), prototypical (NP)
loss plus an optional global classifier, SGD with ReduceLROnPlateau, evaluation every
--test_interval epochs. Every flag of the original trainSpeakerNet.py works, and
`python trainSpeakerNet.py <flags>` runs this command.

Runs resume by themselves: started again with the same --save_path, training continues from
the newest checkpoint in save_path/model. Outputs: save_path/model/model%09d.model
(checkpoints), save_path/result/scores.txt (log) and save_path/result/metrics.jsonl.
Ctrl-C or SIGTERM: the step in progress finishes, save_path/model/interrupted%09d.model is
written and named, exit status 130/143; the same command continues mid-epoch from it. A
second Ctrl-C stops at once.

Several processes or machines (DistributedDataParallel; gloo on CPU, nccl on GPU):
  torchrun --nproc_per_node 4 $(which capsv) train --config ... [same flags]
  (--nnodes/--node_rank/--master_addr for several machines). Each process takes every N-th
  batch of the epoch's plan, so one step consumes N batches of --batch_size speakers and an
  epoch is still one pass over the same data: with N processes an epoch has N times fewer
  steps, each on N times more speakers (gradients averaged), and the LR schedule, which steps
  on the epoch loss averaged over all processes, does not depend on N. BatchNorm statistics
  are per process. Rank 0 alone writes checkpoints and logs; evaluation extracts features on
  all processes and scores on rank 0. A killed job resumes the same way as a single process.

example (the paper's CAP model):
  capsv train --config configs/ResNetSE34L_CAP.yaml --save_path exps/cap \\
      --train_list data/train_list.txt --train_path data/voxceleb2 \\
      --test_list data/veri_test.txt --test_path data/voxceleb1
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    g = p.add_argument_group("objective")
    g.add_argument("--trainfunc", choices=LOSSES.names(),
                   help="loss: proto (the paper's NP loss; CAP trains only with it), softmax, "
                        "amsoftmax, aamsoftmax, angleproto, softmaxproto (default: %(default)s)")
    g.add_argument("--nSpeakers", "--nSpeaker", dest="nSpeakers", type=int,
                   help="utterances per speaker in a batch: 1 support + nSpeakers-1 queries "
                        "(default: %(default)s)")
    g.add_argument("--global_clf", action="store_true",
                   help="add the global classifier over all training speakers (the paper does)")
    g.add_argument("--global_clf_weight", type=float,
                   help="weight of the global classifier's term in the loss (default: %(default)s)")
    g.add_argument("--margin", type=float, help="margin of amsoftmax/aamsoftmax (default: %(default)s)")
    g.add_argument("--scale", type=float, help="scale of amsoftmax/aamsoftmax (default: %(default)s)")

    g = p.add_argument_group("training data")
    g.add_argument("--train_list", help="lines '<speaker> <path>', or a Kaldi data directory "
                   "holding wav.scp and utt2spk (default: %(default)s)")
    g.add_argument("--train_path", help="root the train list's paths are relative to; a listed "
                                        ".wav missing beside an .m4a is read from the .m4a "
                                        "(default: %(default)s)")
    g.add_argument("--max_frames", type=int, help="frames per training crop (default: %(default)s)")
    g.add_argument("--batch_size", type=int,
                   help="speakers per batch; the batch holds batch_size x nSpeakers crops "
                        "(default: %(default)s)")
    g.add_argument("--max_seg_per_spk", type=int,
                   help="utterances per speaker per epoch at most (default: %(default)s)")
    g.add_argument("--seed", type=int, help="fixes initial weights, batches and crops (default: %(default)s)")
    g.add_argument("--augment", action="store_true",
                   help="add MUSAN noise and RIR reverberation (needs --musan_path and --rir_path)")
    g.add_argument("--speed_perturb", action="store_true",
                   help="also train on every utterance at 0.9x and 1.1x speed, each speed as new "
                        "speakers (the speaker count triples; Kaldi/WeSpeaker recipe)")
    g.add_argument("--musan_path", help="MUSAN folder, for --augment")
    g.add_argument("--rir_path", help="RIR folder (simulated_rirs), for --augment")

    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("sgd", "adam"),
                   help="sgd (momentum 0.9, Nesterov) or adam (default: %(default)s)")
    g.add_argument("--lr", type=float, help="initial learning rate (default: %(default)s)")
    g.add_argument("--weight_decay", type=float,
                   help="default: 1e-4 for sgd, 0 for adam (as the original)")
    g.add_argument("--patience", type=int,
                   help="epochs without loss improvement before the LR drops 10x; "
                        "default: 6 for sgd, 3 for adam (as the original)")
    g.add_argument("--lr_decay", type=float,
                   help="accepted for compatibility; unused, as in the original script")
    g.add_argument("--lr_schedule", choices=("plateau", "cosine"),
                   help="plateau: the paper's (LR 10x lower after --patience epochs without "
                        "improvement); cosine: warm-up, then a half cosine to --final_lr x --lr "
                        "over the whole run, whichever of --max_epoch/--max_steps/--max_seconds "
                        "ends it (default: %(default)s)")
    g.add_argument("--warmup", type=float,
                   help="cosine: share of the run with a linearly rising LR (default: %(default)s)")
    g.add_argument("--final_lr", type=float,
                   help="cosine: the last LR as a share of --lr (default: %(default)s)")
    g.add_argument("--max_epoch", type=int, help="stop after this epoch (default: %(default)s)")
    g.add_argument("--max_steps", type=int,
                   help="stop after this many optimiser steps in all, mid-epoch if need be, with "
                        "a checkpoint and a final evaluation; the same result on any machine. "
                        "0: no limit (default: %(default)s)")
    g.add_argument("--max_seconds", type=float,
                   help="stop after this many seconds of training (evaluation and checkpoints "
                        "not counted), mid-epoch if need be, with a checkpoint and a final "
                        "evaluation. A resumed run continues the same budget; raise it to train "
                        "on. 0: no limit (default: %(default)s)")
    g.add_argument("--budget_clock", choices=("wall", "cpu"),
                   help="what --max_seconds counts: wall (elapsed time) or cpu (processor time "
                        "of the training process, all threads; hardly affected by other load; "
                        "use with --nDataLoaderThread 0) (default: %(default)s)")
    g.add_argument("--test_interval", type=int,
                   help="evaluate every this many epochs, and at --max_epoch (default: %(default)s)")
    g.add_argument("--eval_every_seconds", type=float,
                   help="also evaluate mid-run after every this many seconds of training "
                        "(--budget_clock), to follow EER against training time in "
                        "save_path/result/curve.jsonl. 0: off (default: %(default)s)")
    g.add_argument("--eval_every_steps", type=int,
                   help="also evaluate mid-run every this many optimiser steps (curve.jsonl). "
                        "0: off (default: %(default)s)")
    g.add_argument("--keep_curve_models", action="store_true",
                   help="at each --eval_every_seconds/--eval_every_steps point also save "
                        "save_path/model/curve%%09d.model (the number: optimiser steps), to "
                        "evaluate the learning curve's models afterwards")
    g.add_argument("--max_bad_steps", type=int,
                   help="steps with a NaN/inf loss to skip (with a warning) per epoch before "
                        "stopping; such steps never touch the weights (default: %(default)s)")
    g.add_argument("--per_group_bn", action="store_true",
                   help="run the backbone on the supports and on each query group separately, "
                        "as the original does (per-group BatchNorm statistics; exact parity, "
                        "slower). Default: one forward over all crops")

    g = p.add_argument_group("speed")
    g.add_argument("--mixedprec", action="store_true",
                   help="mixed precision: float16 + gradient scaling on CUDA, bfloat16 on CPU "
                        "(faster only on CPUs with bf16 units); the log-mel stays float32")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the backbone (slow first steps; see bench/RESULTS.md)")
    g.add_argument("--channels_last", action="store_true",
                   help="channels-last (NHWC) convolutions: 1.14-1.29x the training steps per "
                        "second on a CPU core (oneDNN, AVX2 or AVX-512); the same model up to "
                        "float rounding (bench/RESULTS.md, \"channels_last\")")

    g = p.add_argument_group("files")
    g.add_argument("--save_path", help="run folder: model/ and result/ (default: %(default)s)")
    g.add_argument("--initial_model",
                   help="start from these weights (capsv or original format) unless save_path "
                        "already holds a checkpoint")
    g.add_argument("--tensorboard", action="store_true",
                   help="also log to save_path/tensorboard (needs the tensorboard package)")
    add_eval_args(p)
    p.add_argument("--eval_short", choices=("auto", "pad"),
                   help="test files shorter than one --eval_frames crop: auto scores whole "
                        "utterances when most files are that short (with a note); pad always "
                        "uses the paper's zero-padded crops (default: %(default)s)")
    add_runtime_args(p)
    # One source of defaults: TrainConfig (also used by the Python API). Set on the actions,
    # not with set_defaults(), so capsv.config can still tell typed flags from defaults.
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for action in p._actions:
        if action.dest in defaults:
            action.default = defaults[action.dest]


def run(args: argparse.Namespace) -> int:
    summary = train(args)
    if not from_env().is_main:          # under torchrun, rank 0 alone reports
        return 0
    if summary.metrics:
        print(f"EER {summary.metrics['EER']:.4f}  MinDCF(p=0.05) "
              f"{summary.metrics['minDCF_p0.05']:.5f}  (epoch {summary.metrics.get('epoch', summary.final_epoch)})")
    print(f"done: epoch {summary.final_epoch}, {summary.samples_per_s:.1f} crops/s, "
          f"checkpoint {summary.checkpoint}", flush=True)
    return 0
