"""Audio I/O and the paper's crop rules.

Every waveform that leaves this module is float32 **on the int16 scale**
(-32768..32767), because the front end's ``+1e-6`` floor assumes it (spec §1).

Crop rules (spec §5): a crop of ``F`` frames is ``F*160 + 240`` samples; a file
no longer than that is zero-padded by ``floor((crop - n + 1) / 2)`` on *both*
sides; evaluation takes ``num_eval`` crops whose starts are
``linspace(0, padded - crop, num_eval)`` truncated to integers.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from .errors import CapsvError

SAMPLE_RATE = 16000
HOP = 160
INT16_SCALE = 32768.0


class AudioError(CapsvError):
    """An audio file that cannot be used; the message names the file and what to do."""


def crop_samples(frames: int) -> int:
    """Samples in a crop of ``frames`` frames (350 -> 56,240)."""
    return frames * HOP + 240


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


def audio_info(path: str, expected_rate: int | None = SAMPLE_RATE) -> AudioInfo:
    """Read only the header; raise :class:`AudioError` for missing, corrupt or wrong-rate files."""
    if not os.path.isfile(path):
        raise AudioError(f"{path}: file not found")
    try:
        info = sf.info(path)
    except Exception as exc:  # soundfile raises several types for bad headers
        raise AudioError(f"{path}: cannot read audio ({exc}); is it a valid WAV/FLAC file?") from exc
    if expected_rate is not None and info.samplerate != expected_rate:
        raise AudioError(
            f"{path}: sample rate is {info.samplerate} Hz, expected {expected_rate} Hz; "
            f"resample it first (e.g. `sox in.wav -r {expected_rate} out.wav`)"
        )
    if info.frames <= 0:
        raise AudioError(f"{path}: the file holds no audio samples")
    return AudioInfo(path, int(info.frames), int(info.samplerate), int(info.channels))


def _to_mono(data: np.ndarray, path: str) -> np.ndarray:
    if data.ndim == 2:
        if data.shape[1] > 1:
            warnings.warn(f"{path}: {data.shape[1]} channels, downmixed to mono by averaging",
                          stacklevel=3)
        data = data.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(data, dtype=np.float32)


def load_audio(path: str, start: int = 0, frames: int = -1,
               expected_rate: int | None = SAMPLE_RATE) -> np.ndarray:
    """Read ``frames`` samples from ``start`` (seeking, not reading the whole file).

    Returns a mono float32 array on the int16 scale. Multi-channel audio is averaged
    (with a warning); files of another rate raise :class:`AudioError`.
    """
    try:
        with sf.SoundFile(path) as f:
            if expected_rate is not None and f.samplerate != expected_rate:
                raise AudioError(
                    f"{path}: sample rate is {f.samplerate} Hz, expected {expected_rate} Hz; "
                    "resample it first")
            if start:
                f.seek(start)
            data = f.read(frames, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as exc:
        raise AudioError(f"{path}: cannot read audio ({exc})") from exc
    # soundfile scales int16 by 1/32768 exactly, so this restores the original integers.
    return _to_mono(data, path) * np.float32(INT16_SCALE)


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
    return eval_crops(load_audio(path), eval_frames, num_eval)


def load_random_crop(path: str, max_frames: int, rng: np.random.Generator,
                     n_samples: int | None = None) -> np.ndarray:
    """One training crop with a random start, reading only the samples it needs."""
    crop_len = crop_samples(max_frames)
    if n_samples is None:
        n_samples = audio_info(path).frames
    if n_samples <= crop_len:
        return pad_for_crop(load_audio(path), crop_len)[:crop_len]
    start = int(rng.random() * (n_samples - crop_len))
    return load_audio(path, start=start, frames=crop_len)
