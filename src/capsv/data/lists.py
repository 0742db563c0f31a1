"""Train lists (``speaker path``) and trial lists (``label path1 path2``).

Both readers accept Windows line endings, a UTF-8 byte-order mark and blank lines, and
reject anything else with the file name and line number. Fields are separated by
whitespace, or, when a line holds a tab, by tabs only: that is how a path with spaces is
written. A trial list that repeats a trial is refused (it would count twice in the EER).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import CapsvError


class ListError(CapsvError):
    """A malformed list; the message names the file and line."""


TAB_HINT = "; a path with spaces needs the fields separated with tabs"


def _fields(text: str) -> list[str]:
    """Tab-separated if the line holds a tab (paths may contain spaces), else whitespace."""
    if "\t" in text:
        return [field.strip() for field in text.split("\t") if field.strip()]
    return text.split()


def _lines(path: str):
    """(line number, stripped text) for each non-blank line."""
    if not os.path.isfile(path):
        raise ListError(f"{path}: list file not found")
    with open(path, encoding="utf-8-sig", newline=None) as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if text:
                yield number, text


@dataclass(frozen=True)
class Trial:
    label: int
    path1: str
    path2: str


def read_trials(path: str) -> list[Trial]:
    """Parse a trial list; each line must be ``<0|1> <path1> <path2>``."""
    trials, seen = [], {}
    for number, text in _lines(path):
        fields = _fields(text)
        if len(fields) != 3:
            raise ListError(f"{path}:{number}: expected 3 fields '<label> <path1> <path2>', "
                            f"found {len(fields)}: {text[:120]!r}{TAB_HINT}")
        if fields[0] not in ("0", "1"):
            raise ListError(f"{path}:{number}: label must be 0 or 1, found {fields[0]!r}")
        pair = (fields[1], fields[2])
        if pair in seen:
            raise ListError(f"{path}:{number}: the trial {fields[1]} {fields[2]} repeats line "
                            f"{seen[pair]}; remove the duplicate (it would count twice)")
        seen[pair] = number
        trials.append(Trial(int(fields[0]), fields[1], fields[2]))
    if not trials:
        raise ListError(f"{path}: the trial list is empty")
    return trials


def read_train_list(path: str) -> list[tuple[str, str]]:
    """Parse a train list into (speaker, relative path) pairs, in file order."""
    items = []
    for number, text in _lines(path):
        fields = _fields(text)
        if len(fields) != 2:
            raise ListError(f"{path}:{number}: expected 2 fields '<speaker> <path>', "
                            f"found {len(fields)}: {text[:120]!r}{TAB_HINT}")
        items.append((fields[0], fields[1]))
    if not items:
        raise ListError(f"{path}: the train list is empty")
    return items


def trial_files(trials: list[Trial]) -> list[str]:
    """The distinct files of a trial list, sorted (the reference's order)."""
    return sorted({t.path1 for t in trials} | {t.path2 for t in trials})


def missing_files(root: str, relpaths: list[str]) -> list[str]:
    return [p for p in relpaths if not os.path.isfile(os.path.join(root, p))]


def read_audio_list(path: str) -> list[str]:
    """Audio paths from a list file, in order, without repeats.

    Accepts one path per line, a train list (``speaker path``) or a trial list
    (``label path1 path2``, both paths taken).
    """
    paths: dict[str, None] = {}
    for number, text in _lines(path):
        fields = _fields(text)
        if len(fields) == 1:
            paths[fields[0]] = None
        elif len(fields) == 2:
            paths[fields[1]] = None
        elif len(fields) == 3 and fields[0] in ("0", "1"):
            paths[fields[1]] = paths[fields[2]] = None
        else:
            raise ListError(f"{path}:{number}: expected '<path>', '<speaker> <path>' or "
                            f"'<label> <path1> <path2>', found: {text[:120]!r}")
    if not paths:
        raise ListError(f"{path}: the list is empty")
    return list(paths)


KALDI_TRAIN_FILES = ("wav.scp", "utt2spk")


def is_kaldi_data_dir(path: str) -> bool:
    """A Kaldi data directory: a folder holding ``wav.scp`` and ``utt2spk``."""
    return os.path.isdir(path) and all(os.path.isfile(os.path.join(path, f)) for f in KALDI_TRAIN_FILES)


def read_kaldi_data_dir(folder: str) -> list[tuple[str, str]]:
    """(speaker, audio path) per utterance of a Kaldi data directory, in ``wav.scp`` order:
    ``wav.scp`` gives ``<utt-id> <path>``, ``utt2spk`` gives ``<utt-id> <speaker>``. What
    :func:`read_train_list` gives for a train list; commands in ``wav.scp`` are refused."""
    speakers, utt2spk = {}, os.path.join(folder, "utt2spk")
    for number, text in _lines(utt2spk):
        fields = text.split()
        if len(fields) != 2:
            raise ListError(f"{utt2spk}:{number}: expected '<utt-id> <speaker>', found {text[:120]!r}")
        speakers[fields[0]] = fields[1]
    items = read_wav_scp(os.path.join(folder, "wav.scp"))
    missing = [utt for utt, _ in items if utt not in speakers]
    if missing:
        raise ListError(f"{utt2spk}: no speaker for {len(missing)} utterance(s) of wav.scp, "
                        f"e.g. {missing[0]}")
    return [(speakers[utt], path) for utt, path in items]


def read_wav_scp(path: str, root: str = "") -> list[tuple[str, str]]:
    """(utterance id, audio path) of each line ``<utt-id> <path>`` of a Kaldi ``wav.scp``.

    Relative paths are taken under ``root``. Piped commands (``... |``) and ark offsets
    are refused: capsv never runs commands from a file."""
    items, seen = [], {}
    for number, text in _lines(path):
        fields = text.split(maxsplit=1)
        if len(fields) != 2:
            raise ListError(f"{path}:{number}: expected '<utt-id> <path>', found {text[:120]!r}")
        utt, audio = fields[0], fields[1].strip()
        if audio.endswith("|") or audio.startswith("ark:") or audio == "-":
            raise ListError(f"{path}:{number}: {utt} is a command or an archive offset "
                            f"({audio[:60]!r}); capsv reads audio files only and never runs "
                            "commands: write that audio to a file and list the file")
        if utt in seen:
            raise ListError(f"{path}:{number}: utterance id {utt} repeats line {seen[utt]}")
        seen[utt] = number
        items.append((utt, os.path.join(root, audio)))
    if not items:
        raise ListError(f"{path}: the wav.scp is empty")
    return items
