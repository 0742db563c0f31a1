"""``capsv embed``: embeddings (TAP/SAP) or frame features (CAP) of many files."""
from __future__ import annotations

import argparse

from ..checkpoint import load_model
from ..data.lists import read_audio_list
from ..embeddings import embed_files, find_audio, write_embeddings
from ..evaluate import EvalInputError, validate_files
from ..utils import resolve_device
from .common import add_model_args, add_runtime_args

HELP = "embed audio files into .npz (or Kaldi ark/scp) for 'capsv score'"
DESCRIPTION = """\
Compute one embedding per file with the evaluation protocol (10 crops of 350 frames, or the
whole utterance with --eval_frames 0) and store it under the file's relative path.

TAP/SAP: the mean of the crops' unit-length embeddings (E values); the dot product of two of
them is exactly the 'capsv eval' score, so 'capsv score' reproduces 'capsv eval'.
CAP is pairwise and has no per-file embedding: the frame features are stored instead
(.npz only); score CAP trials with 'capsv eval' or 'capsv verify'.

Output by extension: .npz (keys, embeddings or frames, meta), or .ark (Kaldi; a .scp is
written beside it; needs the optional package kaldiio).

examples:
  capsv embed --initial_model tap.model --test_list veri_test.txt --test_path vox1/ --out emb.npz
  capsv embed --initial_model tap.model --dir my_recordings/ --out emb.ark
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--initial_model", required=True, help="checkpoint (capsv or the original code's)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--test_list", help="list of files: one path per line, 'speaker path' "
                        "(train list) or 'label path1 path2' (trial list)")
    source.add_argument("--dir", help="embed every .wav/.flac/.ogg under this folder (recursively)")
    p.add_argument("--test_path", default="", help="root folder the --test_list paths are relative to")
    p.add_argument("--out", help="output file, .npz or .ark")
    add_model_args(p, defaults=False)
    g = p.add_argument_group("protocol")
    g.add_argument("--eval_frames", type=int, default=350,
                   help="frames per crop; 0 = whole utterance (default: %(default)s)")
    g.add_argument("--num_eval", type=int, default=10, help="crops per file (default: %(default)s)")
    add_runtime_args(p)


def run(args: argparse.Namespace) -> int:
    if not args.out:
        raise EvalInputError("--out is required (a .npz or .ark file)")
    if not (args.test_list or args.dir):
        raise EvalInputError("give the files to embed with --test_list LIST or --dir FOLDER")
    if args.out.endswith(".ark"):
        from ..embeddings import _kaldiio
        _kaldiio()   # fail before the heavy work when kaldiio is missing
    root = args.dir if args.dir else args.test_path
    keys = find_audio(root) if args.dir else read_audio_list(args.test_list)
    validate_files(keys, root, args.dir or args.test_list)
    device = resolve_device(args.device)
    net, _ = load_model(args.initial_model, args.model, args.encoder_type, args.nOut, device=device)
    data = embed_files(net, root, keys, args.eval_frames, args.num_eval, device=device,
                       workers=args.nDataLoaderThread, progress=not args.no_progress)
    data.meta["checkpoint"] = args.initial_model
    written = write_embeddings(args.out, data)
    what = "frame features" if net.pairwise else "embeddings"
    print(f"wrote {what} of {len(keys)} files to {', '.join(written)}", flush=True)
    return 0
