"""``capsv embed``: embeddings (TAP/SAP) or frame features (CAP) of many files."""
from __future__ import annotations

import argparse

import os

from ..audio import AUDIO_EXTENSIONS
from ..models.checkpoint import load_model
from ..data.lists import read_audio_list
from ..evaluation.embeddings import embed_files, find_audio, read_wav_scp, write_embeddings
from ..evaluation.inputs import EvalInputError, validate_files, warn_if_crops_are_mostly_padding
from ..protocol import EVAL_FRAMES
from ..utils import resolve_device
from .common import add_model_args, add_runtime_args

HELP = "embed audio files into .npz (or Kaldi ark/scp) for 'capsv score'"
DESCRIPTION = """\
Compute one embedding per file with the evaluation protocol (10 crops of 350 frames, or the
whole utterance with --eval_frames 0) and store it under the file's relative path, or under
its utterance id for a Kaldi wav.scp (--wav_scp).

TAP/SAP: the mean of the crops' unit-length embeddings, scaled to unit length (E values), so
the dot product of two is their cosine, as in WeSpeaker, SpeechBrain or NeMo. The mean's
length is stored too (.npz 'norms', or x.norms beside x.ark): the 'capsv eval' score, the
mean of the crops' cosines, is dot * norm1 * norm2, which 'capsv score' computes.
CAP is pairwise and has no per-file embedding: the frame features are stored instead
(.npz only); score CAP trials with 'capsv eval' or 'capsv verify'.

Audio: WAV, FLAC, OGG/Opus, MP3, m4a/AAC ..., any rate and channel count (resampled to 16 kHz
mono with one warning per file; --strict_audio refuses other rates). Files shorter than one
crop are zero-padded with a warning, as in 'capsv eval'.

Output by extension: .npz (keys, embeddings + norms or frames, meta), or .ark (Kaldi; .scp
and .norms are written beside it; needs the optional package kaldiio).

examples:
  capsv embed --initial_model tap.model --test_list veri_test.txt --test_path vox1/ --out emb.npz
  capsv embed --initial_model tap.model --dir my_recordings/ --out emb.ark
  capsv embed --initial_model tap.model --wav_scp data/test/wav.scp --out xvector.ark
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--initial_model", required=True, help="checkpoint (capsv or the original code's)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--test_list", help="list of files: one path per line, 'speaker path' "
                        "(train list) or 'label path1 path2' (trial list)")
    source.add_argument("--dir", help="embed every audio file under this folder (recursively): "
                        + " ".join(AUDIO_EXTENSIONS))
    source.add_argument("--wav_scp", help="Kaldi wav.scp: '<utt-id> <path>' lines; the "
                        "utterance ids become the keys")
    p.add_argument("--test_path", default="",
                   help="root folder the --test_list / --wav_scp paths are relative to")
    p.add_argument("--out", required=True, help="output file, .npz or .ark")
    add_model_args(p, defaults=False)
    g = p.add_argument_group("protocol")
    g.add_argument("--eval_frames", type=int, default=EVAL_FRAMES,
                   help="frames per crop; 0 = whole utterance (default: %(default)s)")
    g.add_argument("--num_eval", type=int, default=10, help="crops per file (default: %(default)s)")
    g.add_argument("--strict_audio", action="store_true",
                   help="refuse audio that is not 16 kHz instead of resampling it")
    add_runtime_args(p)


def run(args: argparse.Namespace) -> int:
    if not args.out:
        raise EvalInputError("--out is required (a .npz or .ark file)")
    if not (args.test_list or args.dir or args.wav_scp):
        raise EvalInputError("give the files to embed with --test_list LIST, --dir FOLDER or "
                             "--wav_scp FILE")
    if args.out.endswith(".ark"):
        from ..evaluation.embeddings import _kaldiio
        _kaldiio()   # fail before the heavy work when kaldiio is missing
    keys, files, root, source = _inputs(args)
    lengths: dict[str, int] = {}
    validate_files(files, root, source, lengths=lengths)
    warn_if_crops_are_mostly_padding(lengths, args.eval_frames, source)
    device = resolve_device(args.device)
    net, _ = load_model(args.initial_model, args.model, args.encoder_type, args.nOut, device=device)
    data = embed_files(net, root, keys, args.eval_frames, args.num_eval, device=device,
                       workers=args.nDataLoaderThread, progress=not args.no_progress,
                       paths=[os.path.join(root, f) for f in files])
    data.meta["checkpoint"] = args.initial_model
    written = write_embeddings(args.out, data)
    what = "frame features" if net.pairwise else "embeddings"
    print(f"wrote {what} of {len(keys)} files to {', '.join(written)}", flush=True)
    return 0


def _inputs(args: argparse.Namespace) -> tuple[list[str], list[str], str, str]:
    """(keys, audio files relative to the root, the root, the source's name) from --dir,
    --test_list or --wav_scp."""
    if args.wav_scp:
        items = read_wav_scp(args.wav_scp)
        return [u for u, _ in items], [p for _, p in items], args.test_path, args.wav_scp
    root = args.dir if args.dir else args.test_path
    keys = find_audio(root) if args.dir else read_audio_list(args.test_list)
    return keys, keys, root, args.dir or args.test_list
