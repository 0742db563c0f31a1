"""``capsv verify``: are two recordings the same speaker?"""
from __future__ import annotations

import argparse

from ..api import SpeakerVerifier
from ..audio import audio_info
from .common import add_model_args

HELP = "score two audio files and decide whether they are the same speaker"
DESCRIPTION = """\
Score one pair of recordings with the evaluation protocol the checkpoint's threshold was
measured with (stored by the trainer; the paper's 10 crops of 350 frames for checkpoints
without one, or as --eval_frames / --num_eval say; CAP pairs the first file as support with the second as query) and decide with a
threshold: --threshold, else the one stored in a capsv checkpoint (the EER point of the
trainer's last evaluation). Prints:

  score 0.97310412
  decision same-speaker (score >= threshold 0.95034)

'decision' is 'same-speaker' or 'different-speaker'; without any threshold (neither
--threshold nor one stored in the checkpoint) it is 'decision none (...)'.

Audio: WAV, FLAC, OGG/Opus, MP3, m4a/AAC ..., any sample rate and channel count (decoded,
averaged to mono and resampled to 16 kHz, with a warning naming the rate; --strict_audio
refuses files that are not 16 kHz instead). A file shorter than one crop is zero-padded, as
the paper's code does, with a warning (--eval_frames 0 scores whole utterances).

example:
  capsv verify alice_1.wav alice_2.wav --initial_model exps/cap/model/model000000050.model
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio1", help="first recording (enrolment side; CAP support)")
    p.add_argument("audio2", help="second recording (test side; CAP query)")
    p.add_argument("--initial_model", required=True, help="checkpoint (capsv or the original code's)")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the checkpoint's)")
    add_model_args(p, defaults=False)
    g = p.add_argument_group("protocol")
    g.add_argument("--eval_frames", type=int, default=None,
                   help="frames per crop; 0 = whole utterance (default: the protocol stored in "
                   "the checkpoint with its threshold, else 350)")
    g.add_argument("--num_eval", type=int, default=None,
                   help="crops per file (default: the checkpoint's protocol, else 10)")
    g.add_argument("--strict_audio", action="store_true",
                   help="refuse audio that is not 16 kHz instead of resampling it")
    p.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N (default: %(default)s)")
    p.add_argument("--config", help="YAML file of flag values; flags typed on the command line "
                   "win; a training config works (its training-only keys are ignored)")


def run(args: argparse.Namespace) -> int:
    for path in (args.audio1, args.audio2):
        audio_info(path, warn=False)   # bad audio fails before the model loads
    verifier = SpeakerVerifier.from_checkpoint(
        args.initial_model, device=args.device, model=args.model, encoder_type=args.encoder_type,
        nOut=args.nOut, eval_frames=args.eval_frames, num_eval=args.num_eval)
    score = verifier.score(args.audio1, args.audio2)
    print(f"score {score:.8f}")
    threshold = args.threshold if args.threshold is not None else verifier.threshold
    if threshold is None:
        print("decision none (no threshold: the checkpoint stores none; pass --threshold)")
        return 0
    same = score >= threshold
    relation = ">=" if same else "<"
    print(f"decision {'same-speaker' if same else 'different-speaker'} "
          f"(score {relation} threshold {threshold:.6g})")
    return 0
