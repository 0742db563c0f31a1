"""Audio basics shared by every reader: the error type, file facts (:class:`AudioInfo`), the
sample-rate policy (resample with a warning, or refuse with ``--strict_audio``), mono
downmix, and the paper's crop rules (spec §5) on samples in memory."""
from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..errors import CapsvError
from ..protocol import HOP, INT16_SCALE, SAMPLE_RATE, crop_samples, frames_that_fit  # noqa: F401
from ..special_files import not_regular

# Audio read beyond each end of a training crop at another rate, so the resampler's
# filter (32 taps at the lower rate) has real signal at the crop's edges.
_RESAMPLE_MARGIN_S = 0.004


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
