"""Whole utterances or fixed crops: what evaluation does with files shorter than one crop.

The paper scores ``num_eval`` crops of ``eval_frames`` frames per file and zero-pads a file
shorter than one crop. The padding's near-zero log energy then dominates the instance
normalisation, and such files score near chance (on the real-voice development corpus: 49 %
EER on trials holding one, 33 % on the others, with the same model). ``--eval_short``:

- ``auto`` (training's periodic evaluation, the demo, the Python API): when most files are
  shorter than one crop, score whole utterances instead (``eval_frames`` 0), with a note;
- ``pad``: always the paper's crops (``capsv eval``'s default, for parity with its numbers).
"""
from __future__ import annotations

from ..protocol import MIN_WHOLE_SAMPLES, SAMPLE_RATE, crop_samples

EVAL_SHORT = {"auto": "whole utterances when most files are shorter than one crop",
              "pad": "always the paper's crops; short files are zero-padded"}


def share_shorter(lengths, eval_frames: int) -> float:
    """Share of ``lengths`` (samples at 16 kHz) shorter than one ``eval_frames`` crop."""
    lengths = list(lengths)
    if not lengths or eval_frames <= 0:
        return 0.0
    crop = crop_samples(eval_frames)
    return sum(n < crop for n in lengths) / len(lengths)


def choose_eval_frames(lengths, eval_frames: int, policy: str = "auto",
                       what: str = "test files") -> tuple[int, str | None]:
    """(the eval_frames to use, a note when it is not ``eval_frames``); ``what`` names the
    files in the note."""
    if policy not in EVAL_SHORT:
        raise ValueError(f"unknown eval_short policy {policy!r}; choose one of {', '.join(EVAL_SHORT)}")
    lengths = list(lengths)
    share = share_shorter(lengths, eval_frames)
    if policy == "pad" or share <= 0.5:
        return eval_frames, None
    if min(lengths) < MIN_WHOLE_SAMPLES:    # too short to score whole: padding is the only way
        return eval_frames, None
    seconds = crop_samples(eval_frames) / SAMPLE_RATE
    return 0, (f"{share:.0%} of the {what} are shorter than one --eval_frames {eval_frames} "
               f"crop ({seconds:.2f} s): scoring whole utterances instead (zero-padding them "
               "would ruin their embeddings; --eval_short pad keeps the paper's crops)")


__all__ = ["EVAL_SHORT", "share_shorter", "choose_eval_frames"]
