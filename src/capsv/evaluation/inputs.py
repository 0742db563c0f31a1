"""Evaluation input checks, run before any network work so bad input fails first: the list's
files exist and are usable audio (``--on_bad_audio skip`` leaves the unusable ones out), and a
warning when most files are shorter than one crop."""
from __future__ import annotations

import os

import numpy as np

from ..audio import SAMPLE_RATE, AudioError, audio_info, crop_samples, frames_that_fit
from ..data.lists import Trial, missing_files, trial_files
from ..errors import CapsvError


class EvalInputError(CapsvError):
    """Bad evaluation input, reported before any heavy computation."""


def validate_inputs(trials: list[Trial], test_path: str, list_name: str = "trial list",
                    on_bad_audio: str = "error", eval_frames: int | None = None,
                    lengths: dict[str, int] | None = None) -> list[str]:
    """Distinct relative paths of the trials, after checking that each one is usable audio.
    With ``on_bad_audio="skip"`` unusable (not missing) files are warned about and left out.
    With ``eval_frames``, warns when many files are shorter than one evaluation crop.
    ``lengths`` (when given) receives each usable file's length in samples at 16 kHz."""
    files = trial_files(trials)
    lengths = {} if lengths is None else lengths
    bad = validate_files(files, test_path, list_name, on_bad_audio, lengths)
    if eval_frames is not None:
        warn_if_crops_are_mostly_padding(lengths, eval_frames, list_name)
    return [f for f in files if f not in bad]


def warn_if_crops_are_mostly_padding(lengths: dict[str, int], eval_frames: int, list_name: str,
                                     share: float = 0.1) -> bool:
    """Warn when at least ``share`` of the files are shorter than an evaluation crop.

    Short files are zero-padded on both sides, as the paper's code does (spec section 5); the
    log of the padding's near-zero energy then dominates the instance normalisation, and a
    trained model's EER on such crops can fall to chance (measured: 48.6 % with 3.5 s crops
    of 1.5-2.5 s files against 31.9 % with 1.5 s crops, same model and trials)."""
    message = short_files_message(lengths, eval_frames, f"files in {list_name}", share)
    if message is None:
        return False
    print(f"warning: {message}", flush=True)
    return True


def short_files_message(lengths: dict, eval_frames: int, what: str,
                        share: float = 0.1) -> str | None:
    """The short-files warning (see :func:`warn_if_crops_are_mostly_padding`) for ``lengths``
    (name -> samples at 16 kHz), or None when fewer than ``share`` of them are short.
    ``what`` names them: "files in trials.txt", "inputs". capsv verify, embed and the Python
    API give the same warning."""
    if not lengths or eval_frames <= 0:
        return None
    crop = crop_samples(eval_frames)
    short = [n for n in lengths.values() if n < crop]
    if len(short) < share * len(lengths):
        return None
    # The longest crop that fits at least 90 % of the files whole.
    tenth = int(np.percentile(np.array(list(lengths.values())), 10, method="lower"))
    suggestion = max(frames_that_fit(tenth), 1)
    return (f"{len(short)} of {len(lengths)} {what} are shorter than one "
            f"--eval_frames {eval_frames} crop ({crop / SAMPLE_RATE:.2f} s; the shortest is "
            f"{min(short) / SAMPLE_RATE:.2f} s). They are zero-padded, as the paper's code does, "
            f"which can ruin their embeddings; --eval_frames 0 scores whole utterances, and "
            f"--eval_frames {suggestion} fits 90 % of them whole.")


def validate_files(files: list[str], test_path: str, list_name: str,
                   on_bad_audio: str = "error", lengths: dict[str, int] | None = None) -> dict[str, str]:
    """Every missing file, unreadable header, truncation or wrong rate, reported at once.
    Returns {file: problem} of the unusable files when ``on_bad_audio="skip"``; fills
    ``lengths`` (when given) with each usable file's length in samples."""
    missing = missing_files(test_path, files)
    if missing:
        shown = "\n  ".join(missing[:50]) + (f"\n  ... {len(missing) - 50} more" if len(missing) > 50 else "")
        raise EvalInputError(f"{len(missing)} of {len(files)} files in {list_name} are missing "
                             f"under --test_path {test_path}:\n  {shown}")
    problems = {}
    for rel in files:
        try:
            info = audio_info(os.path.join(test_path, rel))
            if lengths is not None:
                lengths[rel] = info.frames_16k
        except AudioError as exc:
            problems[rel] = str(exc)
    if problems and on_bad_audio == "skip":
        for problem in problems.values():
            print(f"warning: skipping (--on_bad_audio skip): {problem}", flush=True)
        return problems
    if problems:
        problems = list(problems.values())
        raise EvalInputError(f"{len(problems)} unusable audio file(s):\n  " + "\n  ".join(problems[:50])
                             + "\n(--on_bad_audio skip leaves such files out)")
    return {}
