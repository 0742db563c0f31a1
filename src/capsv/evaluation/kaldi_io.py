"""Reading Kaldi ``.ark``/``.scp`` files of vectors and matrices without running anything.

kaldiio, the usual reader, unpickles an ark entry of its ``PKL`` type (``pickle.load``: any
code) and runs an scp value ending in ``|`` as a shell command; a downloaded embeddings file
could do either. This reader knows only plain numbers:

- binary entries ``<key> \\0B<type> ...`` of type ``FV``/``DV`` (float32/float64 vector:
  ``\\4 <int32 n>`` then n values) and ``FM``/``DM`` (matrix: ``\\4 <int32 rows> \\4 <int32
  cols>`` then rows x cols values, row-major), little-endian, as Kaldi and kaldiio write them;
- text entries ``<key> [ v1 v2 ... ]`` (a vector) or ``<key> [`` + one row per line + ``]``
  (a matrix);
- scp lines ``<key> <ark path>:<byte offset>``; a relative ark path is looked up from the
  current folder, then beside the scp.

Everything else is refused with the file and entry (ark) or line (scp): pickled and other
kaldiio-only entries, compressed matrices, pipes (``cmd |``), standard input (``-``) and
range specifiers. Nothing is ever executed or unpickled.
"""
from __future__ import annotations

import os
import re
import struct

import numpy as np

from ..errors import CapsvError


class KaldiError(CapsvError):
    """A Kaldi file capsv will not read; the message names the file and entry or line."""


# binary type token -> (dtype, number of dimensions)
BINARY_TYPES = {b"FV": ("<f4", 1), b"DV": ("<f8", 1), b"FM": ("<f4", 2), b"DM": ("<f8", 2)}

# first bytes of entries that kaldiio can read but capsv refuses, with the reason
REFUSED_ENTRIES = {
    b"PKL": "a pickled Python object (loading it could run any code)",
    b"NPY": "a kaldiio numpy entry (not a Kaldi vector or matrix)",
    b"RIFF": "a WAV file (audio, not an embedding)",
    b"fLaC": "a FLAC file (audio, not an embedding)",
    b"AUDIO": "a kaldiio audio entry (not an embedding)",
    b"\0BCM": "a compressed matrix (write it uncompressed: copy-matrix --compress=false)",
    b"\0B\4": "an int32 vector (not an embedding)",
}

_MAX_KEY = 4096                      # a key longer than this means the offset or file is wrong
_NUMBER = re.compile(rb"[-+0-9.eEinfINFaA]+")


def read_ark(path: str) -> list[tuple[str, np.ndarray]]:
    """Every (key, array) of an ark file, in file order; arrays are (n,) or (rows, cols)."""
    items = []
    with _open(path, path) as f:
        size = os.fstat(f.fileno()).st_size
        while True:
            start = f.tell()
            key = _read_key(f, path, start)
            if key is None:
                return items
            where = f"{path}: entry {len(items) + 1} (key {key!r}, byte {start})"
            items.append((key, _read_value(f, size, where)))


def read_scp(path: str) -> list[tuple[str, np.ndarray]]:
    """Every (key, array) an scp file points to, in scp order."""
    items, handles = [], {}
    try:
        with _open(path, path) as scp:
            for number, raw in enumerate(scp, start=1):
                line = _decode(raw, f"{path}:{number}").strip()
                if not line:
                    continue
                where = f"{path}:{number}"
                key, ark, offset = _parse_scp_line(line, where)
                ark = _locate(ark, path, where)
                if ark not in handles:
                    handles[ark] = _open(ark, where)
                f = handles[ark]
                size = os.fstat(f.fileno()).st_size
                if offset >= size:
                    raise KaldiError(f"{where}: offset {offset} is past the end of {ark} "
                                     f"({size} bytes); the scp does not belong to this ark")
                f.seek(offset)
                items.append((key, _read_value(f, size, f"{where} ({ark} byte {offset})")))
    finally:
        for f in handles.values():
            f.close()
    return items


# ----------------------------------------------------------------- scp lines
def _parse_scp_line(line: str, where: str) -> tuple[str, str, int]:
    """``key path:offset`` -> (key, path, offset); commands, stdin and ranges are refused."""
    parts = line.split(maxsplit=1)
    if len(parts) != 2:
        raise KaldiError(f"{where}: expected '<key> <file.ark>:<offset>', found {line[:120]!r}")
    key, value = parts[0], parts[1].strip()
    if value.endswith("|") or value.startswith("|"):
        raise KaldiError(f"{where}: {value[:120]!r} is a shell command (a pipe); capsv never runs "
                         "commands from a file: point the scp at an ark file")
    if value == "-" or value.startswith("-:"):
        raise KaldiError(f"{where}: '-' (standard input) is not a file; point the scp at an ark "
                         "file")
    if value.endswith("]"):
        raise KaldiError(f"{where}: range specifiers ({value[value.rfind('['):]}) are not "
                         "supported; write the rows you need into an ark")
    ark, sep, offset = value.rpartition(":")
    if not sep or not offset.isdigit():
        raise KaldiError(f"{where}: expected '<file.ark>:<byte offset>', found {value[:120]!r}")
    return key, ark, int(offset)


def _locate(ark: str, scp: str, where: str) -> str:
    """The ark as written, else (when relative) beside the scp."""
    if os.path.isfile(ark):
        return ark
    beside = os.path.join(os.path.dirname(os.path.abspath(scp)), ark)
    if not os.path.isabs(ark) and os.path.isfile(beside):
        return beside
    raise KaldiError(f"{where}: ark file {ark} not found")


# ----------------------------------------------------------------- ark entries
def _open(path: str, where: str):
    try:
        return open(path, "rb")
    except OSError as exc:
        raise KaldiError(f"{where}: cannot open {path} ({exc.strerror})") from None


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KaldiError(f"{where}: not UTF-8 text; is this an scp file?") from None


def _read_key(f, path: str, start: int) -> str | None:
    """The key before the next space, skipping newlines between text entries; None at EOF."""
    key = bytearray()
    while True:
        c = f.read(1)
        if not c:
            if key.strip():
                raise KaldiError(f"{path}: byte {start}: the file ends inside the key "
                                 f"{bytes(key[:60])!r}; it is truncated")
            return None
        if c == b" ":
            if key.strip():
                return _decode(bytes(key.strip()), f"{path}: byte {start}")
            key.clear()
        elif c in b"\r\n\t" and not key.strip():
            continue
        else:
            key += c
            if len(key) > _MAX_KEY:
                raise KaldiError(f"{path}: byte {start}: no key (no space in {_MAX_KEY} bytes); "
                                 "not a Kaldi ark")


def _read_value(f, size: int, where: str) -> np.ndarray:
    """The vector or matrix that starts at the current position (after ``<key> ``)."""
    head = f.read(5)
    f.seek(-len(head), os.SEEK_CUR)
    for magic, reason in REFUSED_ENTRIES.items():
        if head.startswith(magic):
            raise KaldiError(f"{where}: refused: the entry is {reason}; capsv reads only "
                             "float/double vectors and matrices")
    if head.startswith(b"\0B"):
        return _read_binary(f, size, where)
    return _read_text(f, where)


def _read_binary(f, size: int, where: str) -> np.ndarray:
    f.read(2)                                           # "\0B"
    token = f.read(3)
    kind = BINARY_TYPES.get(token[:2]) if token[2:3] == b" " else None
    if kind is None:
        raise KaldiError(f"{where}: refused: binary type {token!r} is not one of "
                         f"{', '.join(t.decode() for t in BINARY_TYPES)} (float/double vector "
                         "or matrix)")
    dtype, ndim = kind
    shape = tuple(_read_int32(f, where) for _ in range(ndim))
    count = int(np.prod(shape))
    nbytes = count * np.dtype(dtype).itemsize
    if nbytes > size - f.tell():
        raise KaldiError(f"{where}: the entry declares {shape} values but the file ends "
                         "before them; it is truncated")
    data = np.frombuffer(f.read(nbytes), dtype=dtype)
    return data.reshape(shape).astype(np.float32 if dtype == "<f4" else np.float64)


def _read_int32(f, where: str) -> int:
    raw = f.read(5)
    if len(raw) < 5 or raw[0] != 4:
        raise KaldiError(f"{where}: damaged binary header (expected a 4-byte size); not a Kaldi "
                         "vector or matrix")
    value = struct.unpack("<i", raw[1:])[0]
    if value < 0:
        raise KaldiError(f"{where}: damaged binary header (negative size {value})")
    return value


def _read_text(f, where: str) -> np.ndarray:
    """``[ v ... ]`` on one line (vector) or ``[`` + rows + ``]`` (matrix)."""
    opening = f.readline()
    body = opening.strip()
    if not body.startswith(b"["):
        raise KaldiError(f"{where}: refused: the entry is neither a Kaldi binary vector/matrix "
                         f"nor text '[ ... ]' (starts with {body[:20]!r})")
    body = body[1:].strip()
    if body.endswith(b"]"):                              # a vector: one line
        return _numbers(body[:-1], where).astype(np.float32)
    if body:
        raise KaldiError(f"{where}: a text vector must end with ']' on the same line")
    rows = []
    while True:
        line = f.readline()
        if not line:
            raise KaldiError(f"{where}: the text matrix has no closing ']'; it is truncated")
        text = line.strip()
        done = text.endswith(b"]")
        values = _numbers(text[:-1] if done else text, where)
        if values.size:
            rows.append(values)
        if done:
            break
    if len({len(r) for r in rows}) > 1:
        raise KaldiError(f"{where}: the text matrix's rows have different lengths")
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 0), np.float32)


def _numbers(text: bytes, where: str) -> np.ndarray:
    fields = text.split()
    if any(not _NUMBER.fullmatch(x) for x in fields):
        bad = next(x for x in fields if not _NUMBER.fullmatch(x))
        raise KaldiError(f"{where}: {bad[:30]!r} is not a number")
    try:
        return np.array([float(x) for x in fields], dtype=np.float64)
    except ValueError as exc:
        raise KaldiError(f"{where}: {exc}") from None
