"""Speed perturbation (``--speed_perturb``, as Kaldi and WeSpeaker do it): every utterance is
also heard at 0.9x and 1.1x speed, and each speed counts as new speakers, so the number of
speakers triples. The train list is tripled once (:func:`add_speed_speakers`); each crop of
a renamed speaker is read longer and played faster or slower (:func:`speed_perturb`).

This module does not import torch, so it is cheap in DataLoader workers.
"""
from __future__ import annotations

import functools
import re
from fractions import Fraction

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

SPEEDS = (0.9, 1.1)          # WeSpeaker's and Kaldi's
SPEED_SUFFIX = re.compile(r"_sp(\d+(?:\.\d+)?)$")


def add_speed_speakers(items: list[tuple[str, str]],
                       speeds: tuple[float, ...] = (0.9, 1.1)) -> list[tuple[str, str]]:
    """Triple a train list for speed perturbation: speed-changed audio counts as new speakers.

    Returns ``items`` unchanged, followed by one copy per speed whose speaker is renamed
    ``<speaker>_sp<speed>`` (``id00012_sp0.9``, ``id00012_sp1.1``), paths unchanged. The
    loader recovers the speed of an item with :func:`speaker_speed` and applies it with
    :func:`speed_perturb`. The number of classes grows to ``(1 + len(speeds)) *`` speakers.
    """
    out = list(items)
    for speed in speeds:
        if speed <= 0 or speed == 1:
            raise ValueError(f"speeds must be positive and not 1, got {speed}")
        out += [(f"{speaker}_sp{speed:g}", path) for speaker, path in items]
    return out


def speaker_speed(speaker: str) -> float:
    """The speed encoded in a speaker label by :func:`add_speed_speakers` (1.0 if none)."""
    match = SPEED_SUFFIX.search(speaker)
    return float(match.group(1)) if match else 1.0


def speed_input_length(out_length: int, speed: float) -> int:
    """Input samples to read so that ``speed_perturb`` yields at least ``out_length`` samples."""
    return int(np.ceil((out_length - 1) * speed)) + 1


def speed_perturb(audio: np.ndarray, speed: float, taps: int = 32) -> np.ndarray:
    """Play ``audio`` ``speed`` times faster (tempo and pitch, like ``sox speed``).

    ``audio`` (n,) -> (floor((n - 1) / speed) + 1,) float32: output sample m is the input
    band-limited-interpolated at position ``m * speed`` with a Kaiser-windowed sinc (``taps``
    input samples each side), low-passed at 0.95 * min(1, 1/speed) of the input Nyquist so that
    nothing aliases (stop band about -65 dB). ``speed`` is used as a fraction p/q (q <= 1000).

    To make a training crop of L samples, read ``speed_input_length(L, speed)`` input samples,
    perturb, and keep the first L. About 10 ms for a 3.5 s crop.
    """
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    if speed == 1:
        return audio.astype(np.float32, copy=True)
    step, phases, kernels = _speed_kernels(float(speed), taps)
    n_out = (len(audio) - 1) * phases // step + 1
    padded = np.pad(audio.astype(np.float32), (taps - 1, taps))
    windows = sliding_window_view(padded, 2 * taps)    # windows[b]: the inputs around position b
    out = np.empty(n_out, np.float32)
    # outputs m0, m0 + q, m0 + 2q, ... share one fractional phase and advance p inputs each
    for m0 in range(min(phases, n_out)):
        base, phase = divmod(m0 * step, phases)
        count = len(range(m0, n_out, phases))
        out[m0::phases] = windows[base: base + count * step: step] @ kernels[phase]
    return out


@functools.lru_cache(maxsize=8)
def _speed_kernels(speed: float, taps: int, beta: float = 6.0) -> tuple[int, int, np.ndarray]:
    """(p, q, kernels (q, 2*taps)) for speed = p/q: one interpolation kernel per phase r/q."""
    ratio = Fraction(speed).limit_denominator(1000)
    cutoff = 0.95 * min(1.0, 1.0 / speed)
    distance = np.arange(-taps + 1, taps + 1)[None, :] - (np.arange(ratio.denominator) / ratio.denominator)[:, None]
    window = np.i0(beta * np.sqrt(np.clip(1 - (distance / taps) ** 2, 0, 1))) / np.i0(beta)
    kernels = cutoff * np.sinc(cutoff * distance) * window
    kernels /= kernels.sum(axis=1, keepdims=True)                         # unit gain at DC
    kernels = kernels.astype(np.float32)
    kernels.setflags(write=False)
    return ratio.numerator, ratio.denominator, kernels
