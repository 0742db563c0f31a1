"""Plain 16-bit PCM WAV crops in one ``os.pread`` (the training hot path)."""
from __future__ import annotations

import os
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..protocol import SAMPLE_RATE
from .core import AudioError, _require_regular


# ------------------------------------------------------------------ plain PCM16 WAV crops
# Training reads one random crop per file per step, so per-file overhead dominates: a
# libsndfile open parses the header and allocates, every time. For the common case, a plain
# 16-bit PCM WAV at 16 kHz, the header's layout is parsed once per (path, size, mtime) and a
# crop is one os.pread. Anything else (other formats, rates, streamed or truncated files)
# goes through soundfile, whose checks and error messages stay the only ones.
_HEADER_BYTES = 65536                  # a data chunk further in than this -> soundfile
_LAYOUT_CACHE_SIZE = 2**18             # entries of ~100 bytes; files seen again are re-parsed


@dataclass(frozen=True)
class _Pcm16Layout:
    data_offset: int
    frames: int
    channels: int


_LAYOUTS: dict[tuple, _Pcm16Layout | None] = {}


def _parse_pcm16_layout(head: bytes, size: int) -> _Pcm16Layout | None:
    """Layout of a RIFF/WAVE header if it is plain PCM16, mono or stereo, 16 kHz, complete;
    else None (the caller then uses soundfile, which reports what is wrong)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    fmt, offset = None, 12
    while offset + 8 <= len(head):
        chunk, length = head[offset:offset + 4], struct.unpack_from("<I", head, offset + 4)[0]
        body = offset + 8
        if chunk == b"fmt " and length >= 16 and body + 16 <= len(head):
            fmt = struct.unpack_from("<HHIIHH", head, body)
            if fmt[0] == 0xFFFE:                  # WAVE_FORMAT_EXTENSIBLE: the sub-format decides
                if length < 40 or body + 26 > len(head):
                    return None
                fmt = (struct.unpack_from("<H", head, body + 24)[0],) + fmt[1:]
        elif chunk == b"data":
            if fmt is None or length in (0, 0xFFFFFFFF) or size - body < length:
                return None
            tag, channels, rate, _, block_align, bits = fmt
            if tag != 1 or bits != 16 or channels not in (1, 2) or block_align != 2 * channels \
                    or rate != SAMPLE_RATE or length < block_align:
                return None
            return _Pcm16Layout(body, length // block_align, channels)
        offset = body + length + (length & 1)
    return None


class _Pcm16Wav:
    """An open plain PCM16 WAV: ``frames`` from the cached header, crops by one os.pread."""

    def __init__(self, path: str, fd: int, layout: _Pcm16Layout):
        self.path, self.fd, self.layout, self.frames = path, fd, layout, layout.frames

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples [start, start + count) as mono float32 on the int16 scale (fewer at the end)."""
        width = 2 * self.layout.channels
        count = max(0, min(count, self.frames - start))
        try:
            raw = os.pread(self.fd, count * width, self.layout.data_offset + start * width)
        except OSError as exc:        # an I/O error while reading: as soundfile's are
            raise AudioError(f"{self.path}: cannot read audio ({exc})") from None
        data = np.frombuffer(raw[:len(raw) - len(raw) % width], dtype="<i2")
        if self.layout.channels == 1:
            return data.astype(np.float32)
        warnings.warn(f"{self.path}: 2 channels, downmixed to mono by averaging", stacklevel=3)
        return data.reshape(-1, 2).mean(axis=1, dtype=np.float32)


@contextmanager
def _open_pcm16(path: str):
    """Yields a :class:`_Pcm16Wav`, or None when the file needs soundfile's reader."""
    if not path.lower().endswith(".wav"):
        yield None
        return
    _require_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        yield None                              # soundfile raises the proper AudioError
        return
    try:
        st = os.fstat(fd)
        key = (path, st.st_size, st.st_mtime_ns)
        if key not in _LAYOUTS:
            if len(_LAYOUTS) >= _LAYOUT_CACHE_SIZE:
                _LAYOUTS.clear()
            _LAYOUTS[key] = _parse_pcm16_layout(os.pread(fd, _HEADER_BYTES, 0), st.st_size)
        layout = _LAYOUTS[key]
        yield None if layout is None else _Pcm16Wav(path, fd, layout)
    finally:
        os.close(fd)
