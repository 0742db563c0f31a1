"""``capsv synth``: generate the built-in synthetic multi-speaker corpus."""
from __future__ import annotations

import argparse

from ..prep.synth.corpus import DEMO_CORPUS, PRESETS, QUICK_CORPUS, generate_corpus, preset

HELP = "generate a synthetic multi-speaker corpus (VoxCeleb layout; no download)"
DESCRIPTION = f"""\
Generate a procedural speech corpus for trying capsv without downloading VoxCeleb:
synthetic voices (each speaker with its own vocal-tract length, pitch, voice quality and
speaking rate) saying random phone sequences, recorded in sessions ("videos") that each
have their own room, microphone, noise and level.

Writes, under --out: idXXXXX/<session>/NNNNN.wav (16 kHz mono int16), train_list.txt
(training speakers), veri_test.txt (balanced trials between disjoint test speakers, mostly
across sessions, half the non-targets between look-alike speakers), speakers.tsv and
synth_manifest.json. Use --out as both --train_path and --test_path.

The same settings give the same bytes, whatever --workers. Running it again with the same
settings does nothing (an interrupted run is finished); other settings into a used folder
are refused.

presets (flags given on the command line override them):
  demo   {DEMO_CORPUS.speakers} train + {DEMO_CORPUS.test_speakers} test speakers x {DEMO_CORPUS.utterances} clips of \
{DEMO_CORPUS.min_seconds:g}-{DEMO_CORPUS.max_seconds:g} s, {DEMO_CORPUS.trials} trials (~{DEMO_CORPUS.audio_seconds() / 3600:.1f} h of audio)
  quick  {QUICK_CORPUS.speakers} train + {QUICK_CORPUS.test_speakers} test speakers x {QUICK_CORPUS.utterances} clips of \
{QUICK_CORPUS.min_seconds:g}-{QUICK_CORPUS.max_seconds:g} s, {QUICK_CORPUS.trials} trials (for CI)

example:
  capsv synth --out data/synth --seed 0
  capsv eval --initial_model model.model --test_list data/synth/veri_test.txt --test_path data/synth
"""

# flag -> (type, help); defaults come from the preset
CORPUS_FLAGS = {
    "speakers": (int, "training speakers"),
    "test_speakers": (int, "test speakers, disjoint from the training ones"),
    "utterances": (int, "clips per training speaker"),
    "test_utterances": (int, "clips per test speaker (0: as --utterances)"),
    "min_seconds": (float, "shortest clip, seconds"),
    "max_seconds": (float, "longest clip, seconds"),
    "min_sessions": (int, "fewest sessions (videos) per speaker"),
    "max_sessions": (int, "most sessions (videos) per speaker"),
    "trials": (int, "trials in veri_test.txt (half target, half non-target)"),
    "same_session_targets": (float, "share of target trials whose clips share a session"),
    "hard_nontargets": (float, "share of non-target trials between look-alike speakers"),
    "seed": (int, "random seed"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (new, empty, or a corpus made "
                   "earlier with the same settings)")
    p.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                   help="base settings (default: %(default)s)")
    g = p.add_argument_group("corpus (defaults: the preset's)")
    for name, (kind, text) in CORPUS_FLAGS.items():
        g.add_argument(f"--{name}", type=kind, default=None,
                       help=f"{text} (demo: {getattr(DEMO_CORPUS, name)}, quick: {getattr(QUICK_CORPUS, name)})")
    r = p.add_argument_group("runtime")
    r.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: the CPU cores, at most 8); the output does not "
                   "depend on it")
    r.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    r.add_argument("--config", help="YAML file of flag values; flags typed on the command line win")


def run(args: argparse.Namespace) -> int:
    config = preset(args.preset, **{name: getattr(args, name) for name in CORPUS_FLAGS})
    summary = generate_corpus(config, args.out, workers=args.workers, progress=not args.no_progress)
    if summary.status == "done":
        print(f"{args.out}: corpus already complete ({summary.n_files} clips, "
              f"{summary.audio_seconds / 60:.1f} min of audio); nothing to do")
    else:
        print(f"wrote {summary.written_files} clips ({summary.written_seconds / 60:.1f} min of audio) "
              f"in {summary.elapsed:.1f} s on {summary.workers} worker(s), "
              f"{summary.realtime_factor:.0f}x real time")
    print(f"train list: {summary.train_list}\ntrial list: {summary.test_list}\n"
          f"audio root: {args.out} (use it as --train_path and --test_path)")
    return 0
