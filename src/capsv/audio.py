"""Audio I/O and the paper's crop rules.

Every waveform that leaves this module is float32 **on the int16 scale**
(-32768..32767), because the front end's ``+1e-6`` floor assumes it (spec §1).

Crop rules (spec §5): a crop of ``F`` frames is ``F*160 + 240`` samples; a file
no longer than that is zero-padded by ``floor((crop - n + 1) / 2)`` on *both*
sides; evaluation takes ``num_eval`` crops whose starts are
``linspace(0, padded - crop, num_eval)`` truncated to integers.

Any sample rate, channel count and common format is accepted: audio is decoded (soundfile for
WAV/FLAC/OGG, PyAV for m4a/AAC, MP3, Opus and the like), downmixed to mono and resampled to
16 kHz by :func:`resample` (libswresample through PyAV), the one resampler of the package.
``audio_info`` warns once per file that is not 16 kHz; ``--strict_audio``
(:func:`set_strict_rate`) refuses such files instead. 16 kHz WAV/FLAC never meet the
resampler.
"""
from __future__ import annotations

import math
import os
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from .errors import CapsvError
from .special_files import not_regular

from .protocol import HOP, INT16_SCALE, SAMPLE_RATE, crop_samples, frames_that_fit  # noqa: F401


class AudioError(CapsvError):
    """An audio file that cannot be used; the message names the file and what to do."""


def pad_each_side(n_samples: int, crop_len: int) -> int:
    """Zeros added on each side of a file of ``n_samples`` (0 if it is longer than a crop)."""
    if n_samples > crop_len:
        return 0
    return math.floor((crop_len - n_samples + 1) / 2)


def eval_crop_starts(padded_len: int, crop_len: int, num_eval: int) -> np.ndarray:
    """Start offsets of the evaluation crops, truncated like the reference does."""
    return np.linspace(0, padded_len - crop_len, num=num_eval).astype(np.int64)


@dataclass(frozen=True)
class AudioInfo:
    path: str
    frames: int
    samplerate: int
    channels: int

    @property
    def frames_16k(self) -> int:
        """The length in samples once resampled to 16 kHz (what the crop rules see)."""
        return int(round(self.frames * SAMPLE_RATE / self.samplerate))


def audio_info(path: str, expected_rate: int | None = None, warn: bool = True) -> AudioInfo:
    """Read only the header; raise :class:`AudioError` for missing or corrupt files.

    ``expected_rate``: refuse files of another rate; None (default) accepts any rate, unless
    ``--strict_audio`` is on, and warns once per file that will be resampled. For files
    decoded by PyAV (m4a, MP3, Opus ...) the sample count comes from the container's duration
    and may differ from the decoded length by a frame of priming samples. ``warn=False``:
    no resampling warning (a check before the step that warns).
    """
    info = _read_info(path, expected_rate)
    if warn and info.samplerate != SAMPLE_RATE:
        note_resampled(path, info.samplerate)
    return info


def _read_info(path: str, expected_rate: int | None) -> AudioInfo:
    """:func:`audio_info` without the warning."""
    _require_regular(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: file not found")
    if is_compressed(path):
        info = _m4a_info(path, expected_rate)
    else:
        try:
            header = sf.info(path)
        except Exception as exc:  # soundfile raises several types for bad headers
            raise AudioError(f"{path}: cannot read audio ({exc}); is it a valid audio file?") from exc
        _check_rate(path, header.samplerate, expected_rate)
        if header.frames <= 0:
            raise AudioError(f"{path}: the file holds no audio samples")
        check_wav_complete(path)
        info = AudioInfo(path, int(header.frames), int(header.samplerate), int(header.channels))
    return info


# ------------------------------------------------------------------------ other sample rates
STRICT_RATE_ENV = "CAPSV_STRICT_AUDIO"
_MAX_RATE_WARNINGS = 20          # per command or API call; then one summary line
_RATE_WARNED: set[str] = set()


class ResampledAudioWarning(UserWarning):
    """Audio at another rate than 16 kHz, resampled on reading (once per file)."""


def set_strict_rate(strict: bool) -> None:
    """``--strict_audio``: refuse audio that is not 16 kHz instead of resampling it.

    Kept in the environment so that DataLoader workers inherit it whatever their start method."""
    if strict:
        os.environ[STRICT_RATE_ENV] = "1"
    else:
        os.environ.pop(STRICT_RATE_ENV, None)


@contextmanager
def strict_audio(strict: bool):
    """:func:`set_strict_rate` for the duration of a ``with`` block (a command, a training
    run), then the previous setting again."""
    before = os.environ.get(STRICT_RATE_ENV)
    set_strict_rate(strict)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(STRICT_RATE_ENV, None)
        else:
            os.environ[STRICT_RATE_ENV] = before


def strict_rate() -> bool:
    return os.environ.get(STRICT_RATE_ENV, "") not in ("", "0")


def reset_rate_warnings() -> None:
    """Start a new command or API call: each file is warned about once per command."""
    _RATE_WARNED.clear()


def note_resampled(path: str, rate: int) -> None:
    """Warn, once per file (until :func:`reset_rate_warnings`), that ``path`` is resampled
    from ``rate`` to 16 kHz; after 20 files, one line says that more follow."""
    if path in _RATE_WARNED or len(_RATE_WARNED) > _MAX_RATE_WARNINGS:
        return
    _RATE_WARNED.add(path)
    if len(_RATE_WARNED) > _MAX_RATE_WARNINGS:
        message = (f"more files are not 16 kHz (first: {path}, {rate} Hz); they are resampled "
                   "too, without further warnings")
    else:
        message = (f"{path}: sample rate {rate} Hz, resampled to {SAMPLE_RATE} Hz on reading "
                   "(converting the files once is faster; --strict_audio refuses them instead)")
    warnings.warn(message, ResampledAudioWarning, stacklevel=3)


def _required_rate(expected_rate: int | None) -> int | None:
    """The one rate a reader accepts: ``expected_rate``, else 16 kHz under --strict_audio,
    else None (any rate, resampled)."""
    if expected_rate is not None:
        return expected_rate
    return SAMPLE_RATE if strict_rate() else None


def resample(audio: np.ndarray, rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 samples (n,) at ``rate`` -> float32 (about n * target / rate,) at ``target``.

    libswresample (through PyAV, the package's decoder) with its default windowed-sinc
    filter; the scale is kept (no clipping, so int16-scale floats pass through unchanged in
    level). The identity when the rates are equal.
    """
    if rate == target:
        return audio
    import av  # imported lazily: only audio at another rate needs it

    resampler = av.AudioResampler(format="flt", layout="mono", rate=target)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio, np.float32)[None, :],
                                       format="flt", layout="mono")
    frame.sample_rate = int(rate)
    chunks = [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
    chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)


def _require_regular(path: str) -> None:
    """A FIFO or device would block the open (forever): refuse it by its type."""
    special = not_regular(path)
    if special:
        raise AudioError(f"{path}: is {special}, not an audio file")


def _check_rate(path: str, rate: int, expected_rate: int | None) -> None:
    required = _required_rate(expected_rate)
    if required is not None and rate != required:
        why = " (--strict_audio)" if expected_rate is None else ""
        raise AudioError(
            f"{path}: sample rate is {rate} Hz, expected {required} Hz{why}; "
            f"resample it first (e.g. `sox in.wav -r {required} out.wav`)")


def _to_mono(data: np.ndarray, path: str) -> np.ndarray:
    if data.ndim == 2:
        if data.shape[1] > 1:
            warnings.warn(f"{path}: {data.shape[1]} channels, downmixed to mono by averaging",
                          stacklevel=3)
        data = data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(data, dtype=np.float32)


def check_wav_complete(path: str) -> None:
    """Raise :class:`AudioError` if a RIFF/WAVE file's ``data`` chunk is cut short.

    libsndfile silently reads what is there, so a truncated download would pass as a
    shorter, valid file. Streamed WAVs (size 0 or 0xFFFFFFFF) and non-WAV files are skipped.
    """
    _require_regular(path)            # every soundfile open comes through here first
    if not path.lower().endswith(".wav"):
        return
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            found = _find_data_chunk(f, size)
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc})") from None
    if found is None:
        return
    offset, length = found
    available = size - (offset + 8)
    if length not in (0, 0xFFFFFFFF) and available < length:
        raise AudioError(f"{path}: truncated WAV: the header declares {length} bytes of "
                         f"audio but the file holds {available}; re-download or "
                         "re-extract it")


def _find_data_chunk(f, size: int) -> tuple[int, int] | None:
    """(offset, declared length) of a RIFF/WAVE file's ``data`` chunk, wherever it is (a
    big LIST or JUNK chunk may push it far in); None for other files. One 8-byte read per
    chunk header, seeking over the bodies."""
    f.seek(0)
    head = f.read(12)
    if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    offset = 12
    while offset + 8 <= size:
        f.seek(offset)
        header = f.read(8)
        if len(header) < 8:
            return None
        chunk, length = header[:4], struct.unpack("<I", header[4:])[0]
        if chunk == b"data":
            return offset, length
        offset += 8 + length + (length & 1)
    return None


@contextmanager
def _open_soundfile(path: str, expected_rate: int | None):
    """``sf.SoundFile`` with the rate checked and every failure turned into :class:`AudioError`."""
    check_wav_complete(path)
    try:
        with sf.SoundFile(path) as f:
            _check_rate(path, f.samplerate, expected_rate)
            yield f
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: cannot read audio ({exc})") from exc


def _read_int16_scale(f: sf.SoundFile, path: str, frames: int) -> np.ndarray:
    # soundfile scales integer PCM (16/24/32-bit) and float WAVs to [-1, 1), so x32768 gives
    # the int16 scale; for int16 files it restores the original integers exactly.
    data = f.read(frames, dtype="float32", always_2d=True)
    if f.subtype in ("FLOAT", "DOUBLE") and not np.isfinite(data).all():
        raise AudioError(f"{path}: the file holds NaN or infinite samples; it is damaged")
    return _to_mono(data, path) * np.float32(INT16_SCALE)


def load_audio(path: str, start: int = 0, frames: int = -1,
               expected_rate: int | None = None) -> np.ndarray:
    """Read ``frames`` samples from ``start`` (seeking, not reading the whole file).

    Returns a mono float32 array at 16 kHz on the int16 scale. Multi-channel audio is
    averaged (with a warning); audio at another rate is decoded whole and resampled (then
    ``start`` and ``frames`` count 16 kHz samples), or refused when ``expected_rate`` is given
    or --strict_audio is on. Files decoded by PyAV (m4a, MP3, Opus ...) are decoded whole
    and then sliced.
    """
    if is_compressed(path):
        audio = load_m4a(path, expected_rate)
        return audio[start:] if frames < 0 else audio[start:start + frames]
    with _open_soundfile(path, expected_rate) as f:
        if f.samplerate != SAMPLE_RATE:
            audio = resample(_read_int16_scale(f, path, -1), f.samplerate)
            audio = audio[start:] if frames < 0 else audio[start:start + frames]
        else:
            if start:
                f.seek(start)
            audio = _read_int16_scale(f, path, frames)
    if len(audio) == 0 and frames != 0:
        raise AudioError(f"{path}: the file holds no audio samples"
                         + (f" from sample {start}" if start else ""))
    return audio


def pad_for_crop(audio: np.ndarray, crop_len: int) -> np.ndarray:
    """Symmetric zero padding of short audio per the reference rule."""
    pad = pad_each_side(len(audio), crop_len)
    if pad == 0:
        return audio
    return np.pad(audio, (pad, pad))


def eval_crops(audio: np.ndarray, eval_frames: int, num_eval: int) -> np.ndarray:
    """The ``num_eval`` evaluation crops of one file, shape (num_eval, crop_len).

    ``eval_frames == 0`` means the whole utterance as a single crop.
    """
    if eval_frames <= 0:
        return audio[None, :].copy()
    crop_len = crop_samples(eval_frames)
    padded = pad_for_crop(audio, crop_len)
    starts = eval_crop_starts(len(padded), crop_len, num_eval)
    return np.stack([padded[s:s + crop_len] for s in starts])


def load_eval_crops(path: str, eval_frames: int, num_eval: int) -> np.ndarray:
    """``eval_crops(load_audio(path), ...)``, but a 16 kHz WAV/FLAC longer than one crop is
    read crop by crop (seek + read), so a 10-minute file costs ``num_eval`` crops of memory.
    Audio at another rate is decoded whole and resampled first."""
    if eval_frames <= 0 or is_compressed(path):
        return eval_crops(load_audio(path), eval_frames, num_eval)
    crop_len = crop_samples(eval_frames)
    with _open_pcm16(path) as wav:
        if wav is not None:
            if wav.frames <= crop_len:
                return eval_crops(wav.read(0, wav.frames), eval_frames, num_eval)
            crops = np.empty((num_eval, crop_len), dtype=np.float32)
            for i, start in enumerate(eval_crop_starts(wav.frames, crop_len, num_eval)):
                crop = wav.read(int(start), crop_len)
                if len(crop) < crop_len:
                    raise _truncated(path, wav.frames)
                crops[i] = crop
            return crops
    with _open_soundfile(path, None) as f:
        if f.samplerate != SAMPLE_RATE:
            return eval_crops(resample(_read_int16_scale(f, path, -1), f.samplerate),
                              eval_frames, num_eval)
        total = f.frames
        if total <= crop_len:                  # short: padded, as eval_crops does
            audio = _read_int16_scale(f, path, -1)
            if len(audio) == 0:
                raise AudioError(f"{path}: the file holds no audio samples")
            return eval_crops(audio, eval_frames, num_eval)
        crops = np.empty((num_eval, crop_len), dtype=np.float32)
        for i, start in enumerate(eval_crop_starts(total, crop_len, num_eval)):
            f.seek(int(start))
            crop = _read_int16_scale(f, path, crop_len)
            if len(crop) < crop_len:
                raise AudioError(f"{path}: the header promises {total} samples but reading "
                                 "stopped early; the file is truncated, re-extract it")
            crops[i] = crop
    return crops


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


def _truncated(path: str, total: int) -> AudioError:
    return AudioError(f"{path}: the header promises {total} samples but reading stopped "
                      f"early; the file is truncated, re-extract or re-convert it")


def random_crop(audio: np.ndarray, max_frames: int, rng: np.random.Generator) -> np.ndarray:
    """One training crop of decoded audio: pad short audio per spec §5, else a random start."""
    crop_len = crop_samples(max_frames)
    start_fraction = rng.random()   # drawn for every file, so short files use the stream alike
    if len(audio) <= crop_len:
        return pad_for_crop(audio, crop_len)[:crop_len]
    start = int(start_fraction * (len(audio) - crop_len))
    return audio[start:start + crop_len]


def load_random_crop(path: str, max_frames: int, rng: np.random.Generator,
                     n_samples: int | None = None) -> np.ndarray:
    """One training crop with a random start, reading only the samples it needs.

    16 kHz WAV/FLAC: one open, the header gives the length, then seek + read of ``crop_len``
    samples. Another rate: the crop's span at the source rate (plus a filter margin) is read
    and resampled. m4a, MP3, Opus ...: the container's length gives the start, then a seek to
    just before it and a decode of only the frames the crop covers (:func:`_seek_crop_av`).
    ``n_samples`` overrides the header's length (rarely useful; not for PyAV files).
    """
    if is_compressed(path):
        return _seek_crop_av(path, crop_samples(max_frames), rng.random())
    crop_len = crop_samples(max_frames)
    start_fraction = rng.random()
    with _open_pcm16(path) as wav:
        if wav is not None:
            total = wav.frames if n_samples is None else n_samples
            if total <= crop_len:
                return pad_for_crop(wav.read(0, total), crop_len)[:crop_len]
            crop = wav.read(int(start_fraction * (total - crop_len)), crop_len)
            if len(crop) < crop_len:
                raise _truncated(path, total)
            return crop
    with _open_soundfile(path, None) as f:
        if f.samplerate != SAMPLE_RATE:
            return _random_crop_resampled(f, path, crop_len, start_fraction)
        total = f.frames if n_samples is None else n_samples
        if total <= 0:
            raise AudioError(f"{path}: the file holds no audio samples")
        if total <= crop_len:
            return pad_for_crop(_read_int16_scale(f, path, -1), crop_len)[:crop_len]
        f.seek(int(start_fraction * (total - crop_len)))
        crop = _read_int16_scale(f, path, crop_len)
    if len(crop) < crop_len:
        raise _truncated(path, total)
    return crop


# Audio read beyond each end of a training crop at another rate, so the resampler's
# filter (32 taps at the lower rate) has real signal at the crop's edges.
_RESAMPLE_MARGIN_S = 0.004


def _random_crop_resampled(f: sf.SoundFile, path: str, crop_len: int,
                           start_fraction: float) -> np.ndarray:
    """A training crop of a file at another rate: the crop's span at the source rate, with a
    small margin each side, read and resampled; the same start rule as 16 kHz files."""
    rate = f.samplerate
    total = int(round(f.frames * SAMPLE_RATE / rate))            # length at 16 kHz
    if f.frames <= 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    if total <= crop_len:
        audio = resample(_read_int16_scale(f, path, -1), rate)
        return pad_for_crop(audio, crop_len)[:crop_len]
    start = int(start_fraction * (total - crop_len))
    # Start the span on a sample where both sampling grids meet (every rate/gcd source
    # samples), so the crop equals the same crop of the whole file resampled.
    grid = math.gcd(rate, SAMPLE_RATE)
    step_src, step_16k = rate // grid, SAMPLE_RATE // grid
    margin = int(math.ceil(_RESAMPLE_MARGIN_S * SAMPLE_RATE))
    block = max(start - margin, 0) // step_16k
    f.seek(block * step_src)
    skip = start - block * step_16k
    span = _read_int16_scale(f, path, int(math.ceil((skip + crop_len + margin) * rate / SAMPLE_RATE)))
    crop = resample(span, rate)[skip:skip + crop_len]
    if len(crop) < crop_len:                    # the file's last samples: pad the few missing
        crop = np.pad(crop, (0, crop_len - len(crop)))
    return crop


def training_decode_note(paths: list[str], max_frames: int, sample: int = 64) -> str | None:
    """A note for the training log when training files need decoding or resampling on the
    fly (another rate than 16 kHz, or m4a/MP3/Opus ...), with the measured cost per crop.

    Looks at the headers of up to ``sample`` files spread over the list (not all: a
    million headers take minutes); None when all of them are 16 kHz WAV/FLAC, or under
    --strict_audio (where such files are refused on reading)."""
    if strict_rate() or not paths:
        return None
    chosen = paths[::max(1, len(paths) // sample)][:sample]
    slow, plain, rates = [], [], set()
    for path in chosen:
        try:
            rate = _read_info(path, None).samplerate
        except AudioError:
            continue                   # a bad file is reported when it is read
        if rate != SAMPLE_RATE or is_compressed(path):
            slow.append(path)
            rates.add(rate)
        else:
            plain.append(path)
    if not slow:
        return None
    cost = _crop_read_ms(slow[0], max_frames)
    versus = f", against {_crop_read_ms(plain[0], max_frames):.2f} ms for a 16 kHz WAV" if plain else ""
    kinds = ", ".join(f"{r} Hz" for r in sorted(rates))
    return (f"{len(slow)} of {len(chosen)} sampled training files are not 16 kHz WAV/FLAC "
            f"({kinds}; e.g. {slow[0]}): each crop is decoded and resampled to 16 kHz on the "
            f"fly, {cost:.1f} ms per crop measured here{versus}. Converting them once to 16 kHz "
            "WAV is faster (m4a: capsv prepare --convert; others: e.g. "
            "`sox in.flac -r 16000 out.wav`).")


def _crop_read_ms(path: str, max_frames: int, repeats: int = 3) -> float:
    """Median wall time of reading one random training crop of ``path``, in ms."""
    import time

    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in range(repeats):
            began = time.perf_counter()
            try:
                load_random_crop(path, max_frames, np.random.default_rng(seed))
            except AudioError:
                return float("nan")
            times.append(time.perf_counter() - began)
    return 1000 * sorted(times)[len(times) // 2]


# ----------------------------------------------------------- m4a/AAC, MP3, Opus ... (PyAV)
# Formats decoded with PyAV (libavcodec) rather than soundfile. MP3 goes here although
# libsndfile reads it, because its libmpg123 prints 'error:' lines for ordinary files.
COMPRESSED_EXTENSIONS = (".m4a", ".aac", ".mp4", ".mp3", ".opus", ".webm", ".mka", ".wma")
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".au", ".caf", ".w64")
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS + COMPRESSED_EXTENSIONS


def is_compressed(path: str) -> bool:
    """True for the formats decoded with PyAV (m4a/AAC, MP3, Opus ...), not soundfile."""
    return path.lower().endswith(COMPRESSED_EXTENSIONS)


def _open_av(path: str):
    import av  # imported lazily: only AAC input needs it

    _require_regular(path)
    if not os.path.isfile(path):
        raise AudioError(f"{path}: file not found")
    try:
        container = av.open(path)
    except Exception as exc:
        raise AudioError(f"{path}: cannot open as {_format_name(path)} ({exc})") from exc
    if not container.streams.audio:
        container.close()
        raise AudioError(f"{path}: the container holds no audio stream")
    return container


def _format_name(path: str) -> str:
    return os.path.splitext(path)[1].lstrip(".").upper() or "audio"


def _m4a_info(path: str, expected_rate: int | None) -> AudioInfo:
    with _open_av(path) as container:
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        _check_rate(path, rate, expected_rate)
        if stream.duration is not None:
            frames = int(stream.duration * stream.time_base * rate)
        else:
            frames = int((container.duration or 0) * rate / 1_000_000)
        channels = int(stream.codec_context.channels)
    if frames <= 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    return AudioInfo(path, frames, rate, channels)


def _frame_to_mono(frame, path: str) -> np.ndarray:
    """One decoded PyAV frame -> mono float32 on the int16 scale."""
    data = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:          # packed: (1, samples * channels), interleaved
        data = data.reshape(-1, channels).T
    if data.dtype.kind == "f":
        scale = INT16_SCALE
    elif data.dtype == np.int16:
        scale = 1.0
    elif data.dtype == np.int32:
        scale = 1.0 / 65536.0
    else:
        raise AudioError(f"{path}: unsupported decoded sample format {frame.format.name}")
    return data.astype(np.float32).mean(axis=0) * np.float32(scale)


# Frames PyAV has decoded in this process (whole files and crops): lets a test check that a
# crop decodes only part of a long file, structurally rather than by timing.
_decoded_frames = 0


def decoded_frame_count() -> int:
    """How many audio frames PyAV has decoded in this process so far."""
    return _decoded_frames


def _decode_frames(container, stream, path: str):
    """Yield the stream's decoded frames, turning decoder failures into AudioError."""
    global _decoded_frames
    try:
        for frame in container.decode(stream):
            _decoded_frames += 1
            yield frame
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: {_format_name(path)} decoding failed ({exc}); the file "
                         "is damaged, download or extract it again") from exc


def _checked_samples(audio: np.ndarray, path: str) -> np.ndarray:
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: the file decodes to NaN or infinite samples; it is damaged")
    return audio


def _crop_at(audio: np.ndarray, crop_len: int, start_fraction: float) -> np.ndarray:
    """The crop of decoded 16 kHz audio for a drawn ``start_fraction`` (the rule of
    :func:`random_crop`): short audio padded per spec §5."""
    if len(audio) <= crop_len:
        return pad_for_crop(audio, crop_len)[:crop_len]
    start = int(start_fraction * (len(audio) - crop_len))
    return audio[start:start + crop_len]


# Audio decoded before a seeking crop's first sample and thrown away: a frame decoded right
# after a seek lacks its predecessor's overlap (AAC's MDCT, MP3's bit reservoir, Opus's
# 80 ms pre-roll), so the crop starts only after the decoder has settled.
_SEEK_PREROLL_S = 0.2
# Samples a span may fall short of the container's length at the file's end (a last partial
# frame) before it counts as a truncated file.
_END_SLACK = 2048


def _seek_crop_av(path: str, crop_len: int, start_fraction: float) -> np.ndarray:
    """One training crop (crop_len,) float32 at 16 kHz of a PyAV-decoded file, decoding only
    the frames around it.

    The start is drawn against the container's length (stream duration x time_base),
    ``int(start_fraction * (length_16k - crop_len))``, as for WAV; the crop is then the same
    audio as that span of :func:`load_m4a`'s whole decode (frame pts, less the stream's
    start_time, place samples on the whole decode's timeline, priming included). Another
    rate: the span is aligned to both sampling grids, read with a margin and resampled as in
    :func:`_random_crop_resampled`. Files shorter than a crop, or without a usable duration
    or pts, are decoded whole as before.
    Bands an AAC encoder coded as noise substitution (PNS) are refilled from the decoder's
    random generator, so there the crop is other noise of the same level than the whole
    decode's; crops therefore differ from releases that decoded whole files, but stay fixed
    for a given seed, epoch and index.
    """
    with _open_av(path) as container:
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        _check_rate(path, rate, None)
        total_src = _container_samples(container, stream, rate)
        total = int(round(total_src * SAMPLE_RATE / rate)) if total_src else 0
        if total <= crop_len or rate <= 0:
            return _crop_at(load_m4a(path), crop_len, start_fraction)
        start = int(start_fraction * (total - crop_len))
        if rate == SAMPLE_RATE:
            src_start, skip, src_len = start, 0, crop_len
        else:
            grid = math.gcd(rate, SAMPLE_RATE)
            step_src, step_16k = rate // grid, SAMPLE_RATE // grid
            margin = int(math.ceil(_RESAMPLE_MARGIN_S * SAMPLE_RATE))
            block = max(start - margin, 0) // step_16k
            src_start, skip = block * step_src, start - block * step_16k
            src_len = int(math.ceil((skip + crop_len + margin) * rate / SAMPLE_RATE))
        span = _decode_span(container, stream, path, src_start, src_len, total_src)
    if span is None:                            # no pts to place frames: decode it all
        return _crop_at(load_m4a(path), crop_len, start_fraction)
    crop = resample(_checked_samples(span, path), rate)[skip:skip + crop_len]
    if len(crop) < crop_len:                    # the file's last samples: pad the few missing
        crop = np.pad(crop, (0, crop_len - len(crop)))
    return crop


def _container_samples(container, stream, rate: int) -> int:
    """The stream's length in samples at its own rate from the container, 0 if unknown."""
    if stream.duration and stream.time_base:
        return int(stream.duration * stream.time_base * rate)
    if container.duration:
        return int(container.duration * rate / 1_000_000)
    return 0


def _decode_span(container, stream, path: str, src_start: int, src_len: int,
                 total_src: int) -> np.ndarray | None:
    """Samples [src_start, src_start + src_len) of the whole decode's timeline (source rate,
    mono), seeking to a little before them; None when frames carry no pts."""
    origin = stream.start_time or 0                    # pts of the whole decode's first sample
    tb = stream.time_base
    rate = int(stream.codec_context.sample_rate)
    first = src_start - int(_SEEK_PREROLL_S * rate)
    if first > 0:
        try:
            container.seek(origin + int(first / rate / tb), stream=stream, backward=True)
        except Exception as exc:
            raise AudioError(f"{path}: cannot seek in the {_format_name(path)} file ({exc}); "
                             "it is damaged, download or extract it again") from exc
    chunks, span_pos = [], None
    end = src_start + src_len
    for frame in _decode_frames(container, stream, path):
        if frame.pts is None:
            return None
        pos = int(round((frame.pts - origin) * tb * rate))
        if span_pos is None:
            if pos > src_start:                 # the seek overshot: decode from the start
                return _whole_span(path, src_start, src_len)
            span_pos = pos
        chunks.append(_frame_to_mono(frame, path))
        if pos + frame.samples >= end:
            break
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    span = audio[src_start - (span_pos or 0):][:src_len] if span_pos is not None else audio
    if (span_pos or 0) + len(audio) < min(end, total_src) - _END_SLACK:
        raise AudioError(f"{path}: the container promises {total_src} samples but decoding "
                         f"stopped at {(span_pos or 0) + len(audio)}; the file is truncated, "
                         "download or extract it again")
    return span


def _whole_span(path: str, src_start: int, src_len: int) -> np.ndarray:
    """The span cut from a whole decode at the source rate (fallback of :func:`_decode_span`)."""
    with _open_av(path) as container:
        stream = container.streams.audio[0]
        audio = np.concatenate([_frame_to_mono(f, path)
                                for f in _decode_frames(container, stream, path)] or
                               [np.zeros(0, np.float32)])
    return audio[src_start:src_start + src_len]


def load_m4a(path: str, expected_rate: int | None = None) -> np.ndarray:
    """Decode a whole file with PyAV (m4a/AAC, MP3, Opus ...) -> mono float32 at 16 kHz on
    the int16 scale.

    Channels are averaged, then audio at another rate is resampled by :func:`resample`
    (refused when ``expected_rate`` is given or --strict_audio is on). VoxCeleb2's 16 kHz
    AAC is never resampled. Priming samples are handled as ffmpeg does (the container's
    edit list).
    """
    with _open_av(path) as container:
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        _check_rate(path, rate, expected_rate)
        chunks = [_frame_to_mono(frame, path) for frame in _decode_frames(container, stream, path)]
        if stream.codec_context.channels > 1:
            warnings.warn(f"{path}: {stream.codec_context.channels} channels, downmixed to "
                          "mono by averaging", stacklevel=2)
    if not chunks or sum(len(c) for c in chunks) == 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    audio = np.concatenate(chunks)
    if not np.isfinite(audio).all():
        raise AudioError(f"{path}: the file decodes to NaN or infinite samples; it is damaged")
    return resample(audio, rate)


def write_m4a(path: str, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Encode mono samples as AAC in an MP4 (.m4a) container with PyAV (VoxCeleb2's format).

    ``samples``: int16 values, or floats in [-1, 1]. Used to build m4a test and benchmark data.
    """
    import av

    if samples.dtype == np.int16:
        data, fmt = samples[None, :], "s16"
    else:
        data, fmt = samples[None, :].astype(np.float32), "flt"
    with av.open(str(path), "w", format="ipod") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(data, format=fmt, layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
