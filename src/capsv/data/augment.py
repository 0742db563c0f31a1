"""Online data augmentation: MUSAN noise / babble / music, room impulse responses (the
training data loader; speed perturbation is :mod:`capsv.data.speed`)::

    aug = Augmenter("data/musan_split", "data/RIRS_NOISES/simulated_rirs")
    crop = aug(crop, rng)          # float32, int16 scale, same length

The data it reads is prepared by :mod:`capsv.prep.musan` (``capsv prepare --augment``).
This module does not import torch, so it is cheap in DataLoader workers.
"""
from __future__ import annotations

import os

import numpy as np
import soundfile as sf

from ..errors import CapsvError
from ..prep.convert import find_files
from ..protocol import INT16_SCALE, SAMPLE_RATE
from ..special_files import not_regular



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


