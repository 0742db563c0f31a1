"""Online data augmentation: MUSAN noise / babble / music, room impulse responses, speed
perturbation (the training data loader)::

    aug = Augmenter("data/musan_split", "data/RIRS_NOISES/simulated_rirs")
    crop = aug(crop, rng)          # float32, int16 scale, same length

The data it reads is prepared by :mod:`capsv.prep.musan` (``capsv prepare --augment``).
This module does not import torch, so it is cheap in DataLoader workers.
"""
from __future__ import annotations

import functools
import os
import re
from fractions import Fraction

import numpy as np
import soundfile as sf
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import CapsvError
from ..prep.convert import find_files
from ..protocol import SAMPLE_RATE
from ..special_files import not_regular

INT16_SCALE = 32768.0


class AugmentError(CapsvError):
    pass


# -- online augmentation ---------------------------------------------------------------------

class Augmenter:
    """Corrupt one training crop with one randomly chosen kind of augmentation.

    The kinds, each picked with equal probability (the voxceleb_trainer / Kaldi recipe):

    * ``reverb``: convolve with a simulated RIR scaled to unit energy, keep the first
      ``len(audio)`` samples;
    * ``noise``: one MUSAN noise at 0-15 dB SNR;
    * ``speech``: babble, 3-7 MUSAN speech files, each at 13-20 dB SNR;
    * ``music``: one MUSAN music file at 5-15 dB SNR.

    ``musan_path`` holds ``noise/``, ``speech/`` and ``music/`` (cut in pieces or not: crops
    are read by seeking); ``rir_path`` holds RIR WAVs (searched recursively). All files must be
    16 kHz. Only file lists are kept, so instances pickle small and are safe to share with
    DataLoader worker processes; the caller owns the random generator.
    """

    KINDS = ("reverb", "noise", "speech", "music")
    SNR_DB = {"noise": (0.0, 15.0), "speech": (13.0, 20.0), "music": (5.0, 15.0)}
    COUNT = {"noise": (1, 1), "speech": (3, 7), "music": (1, 1)}

    def __init__(self, musan_path: str, rir_path: str):
        self.musan_path = musan_path
        self.rir_path = rir_path
        self.noise_files = {}
        for kind in self.SNR_DB:
            files = find_files(os.path.join(musan_path, kind), ".wav")
            if not files:
                raise AugmentError(f"{os.path.join(musan_path, kind)}: no .wav files; run "
                                   "`capsv prepare --augment` or check --musan_path")
            self.noise_files[kind] = files
        self.rir_files = find_files(rir_path, ".wav")
        if not self.rir_files:
            raise AugmentError(f"{rir_path}: no .wav files; run `capsv prepare --augment` or check "
                               "--rir_path (e.g. data/RIRS_NOISES/simulated_rirs)")

    def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``audio``: (n,) float32 on the int16 scale -> augmented (n,) float32."""
        return self.apply(self.KINDS[int(rng.integers(len(self.KINDS)))], audio, rng)

    def apply(self, kind: str, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if audio.ndim != 1:
            raise ValueError(f"expected a 1-D waveform, got shape {audio.shape}")
        if kind == "reverb":
            return self.reverberate(audio, rng)
        return (audio + sum(self.noises(kind, audio, rng))).astype(np.float32)

    def reverberate(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        path = self.rir_files[int(rng.integers(len(self.rir_files)))]
        rir = read_whole(path)
        return convolve_rir(audio, rir)

    def noises(self, kind: str, audio: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """The scaled noise signals that ``kind`` adds to ``audio`` (one per file), each (n,)."""
        files = self.noise_files[kind]
        low, high = self.COUNT[kind]
        count = int(rng.integers(low, high + 1))
        picks = rng.choice(len(files), size=count, replace=count > len(files))
        clean_db = _power_db(audio)
        out = []
        for index in picks:
            noise = read_crop(files[int(index)], len(audio), rng)
            snr = rng.uniform(*self.SNR_DB[kind])
            gain = np.sqrt(10.0 ** ((clean_db - _power_db(noise) - snr) / 10.0))
            out.append((noise * gain).astype(np.float32))
        return out


def _power_db(x: np.ndarray) -> float:
    # the 1e-4 floor keeps digital silence finite (same constant as the Kaldi-style recipe)
    return 10.0 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-4)


def convolve_rir(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """``audio`` (n,) convolved with ``rir`` (m,) normalised to unit energy; first n samples."""
    rir = rir.astype(np.float64)
    energy = np.sqrt(np.sum(rir ** 2))
    if energy == 0:
        return audio.astype(np.float32, copy=True)
    rir /= energy
    n, size = len(audio), len(audio) + len(rir) - 1
    fft_size = 1 << (size - 1).bit_length()
    spectrum = np.fft.rfft(audio.astype(np.float64), fft_size) * np.fft.rfft(rir, fft_size)
    return np.fft.irfft(spectrum, fft_size)[:n].astype(np.float32)


def _open_16k(path: str) -> sf.SoundFile:
    special = not_regular(path)
    if special:                   # opening a FIFO would block a training worker forever
        raise AugmentError(f"{path}: is {special}, not an audio file")
    f = sf.SoundFile(path)
    if f.samplerate != SAMPLE_RATE:
        f.close()
        raise AugmentError(f"{path}: {f.samplerate} Hz, augmentation files must be {SAMPLE_RATE} Hz")
    return f


def _mono(data: np.ndarray) -> np.ndarray:
    return (data[:, 0] if data.ndim == 2 else data) * np.float32(INT16_SCALE)


def read_whole(path: str) -> np.ndarray:
    """A whole 16 kHz file (first channel), float32 on the int16 scale."""
    with _open_16k(path) as f:
        return _mono(f.read(dtype="float32"))


def read_crop(path: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """``length`` samples from a random offset, read by seeking; short files repeat (wrap)."""
    with _open_16k(path) as f:
        if f.frames <= length:
            data = _mono(f.read(dtype="float32"))
            if data.size == 0:
                raise AugmentError(f"{path}: the file holds no audio")
            return np.pad(data, (0, length - data.size), mode="wrap")
        f.seek(int(rng.integers(0, f.frames - length + 1)))
        return _mono(f.read(length, dtype="float32"))


# -- speed perturbation ----------------------------------------------------------------------

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
