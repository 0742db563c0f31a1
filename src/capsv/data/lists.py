"""Train lists (``speaker path``) and trial lists (``label path1 path2``).

Both readers accept Windows line endings, a UTF-8 byte-order mark and blank lines, and
reject anything else with the file name and line number. Fields are separated by
whitespace, or, when a line holds a tab, by tabs only: that is how a path with spaces is
written. Paths are compared after normalisation (``./a``, ``x/../a`` and ``a`` are one file).
A trial list that repeats a trial (the same two files, in either order) is refused: it would
count twice in the EER. A train list that repeats a file keeps its first line, with a warning.
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
    _refuse_binary(path)
    with open(path, encoding="utf-8-sig", newline=None) as f:
        try:
            for number, line in enumerate(f, start=1):
                text = line.strip()
                if text:
                    yield number, text
        except UnicodeDecodeError as exc:
            raise ListError(f"{path}:{_line_of_bad_byte(path)}: not UTF-8 text (byte "
                            f"0x{exc.object[exc.start]:02x}); re-save the list as UTF-8, e.g. "
                            f"iconv -f latin1 -t utf-8 {path} > fixed.txt") from None


# leading bytes of files that are not UTF-8 text lists -> what they are
NOT_A_LIST = {b"\xff\xfe": "UTF-16 text", b"\xfe\xff": "UTF-16 text", b"RIFF": "a WAV file",
              b"fLaC": "a FLAC file", b"OggS": "an Ogg file", b"PK\x03\x04": "a zip archive"}


def _refuse_binary(path: str) -> None:
    """A UTF-16 list, an audio file or other binary data given as a list: say what it is."""
    with open(path, "rb") as f:
        head = f.read(4096)
    kind = next((what for magic, what in NOT_A_LIST.items() if head.startswith(magic)), None)
    if kind is None and b"\0" in head:
        kind = "binary data (it holds NUL bytes)"
    if kind is not None:
        raise ListError(f"{path}: this is {kind}, not a UTF-8 text list; give the list file"
                        + (", re-saved as UTF-8 (iconv -f utf-16 -t utf-8)" if "UTF-16" in kind
                           else ""))


def _line_of_bad_byte(path: str) -> int:
    """Line number of the first line that is not valid UTF-8 (read again, only on error)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


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
        pair = trial_identity(fields[1], fields[2])
        if pair in seen:
            raise ListError(f"{path}:{number}: the trial {fields[1]} {fields[2]} repeats line "
                            f"{seen[pair]} (the same two files, in either order); remove the "
                            "duplicate (it would count twice)")
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
    return drop_repeated_files(items, path)


def same_file(relpath: str) -> str:
    """The spelling that two names of one file share: ``./a``, ``x/../a`` and ``a//`` -> ``a``
    (lexical: a symlink to the file still counts as another file)."""
    return os.path.normpath(relpath)


def trial_identity(path1: str, path2: str) -> tuple[str, str]:
    """Key under which two trials are the same: the same two files, in either order."""
    a, b = same_file(path1), same_file(path2)
    return (a, b) if a <= b else (b, a)


def drop_repeated_files(items: list[tuple[str, str]], path: str) -> list[tuple[str, str]]:
    """Keep the first line of each file (by :func:`same_file`), warning how many repeats were
    dropped: a repeated file would be sampled twice as often, and one group could hold it as
    support and query. A file listed under two speakers is an error. O(N), one dict."""
    first_speaker: dict[str, str] = {}
    kept, repeats = [], []
    for speaker, relpath in items:
        name = same_file(relpath)
        owner = first_speaker.get(name)
        if owner is None:
            first_speaker[name] = speaker
            kept.append((speaker, relpath))
        elif owner == speaker:
            repeats.append(relpath)
        else:
            raise ListError(f"{path}: the file {relpath} is listed for two speakers, {owner} and "
                            f"{speaker}; keep only the right line")
    if repeats:
        shown = ", ".join(repeats[:3]) + (" ..." if len(repeats) > 3 else "")
        print(f"warning: {path}: {len(repeats)} line(s) repeat a file already listed ({shown}); "
              "each file is used once", flush=True)
    return kept


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
