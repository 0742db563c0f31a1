"""A tiny generated multi-speaker corpus for training tests (real 16 kHz int16 WAV files).

What makes a "speaker": the front end normalises every mel bin over time, so a static
spectrum carries nothing once it reaches the network. Each speaker therefore owns two
frequency bands (random centres on the mel scale, +-3 % per utterance) in which energy comes
and goes in bursts; the rest of the spectrum holds only steady background noise. Which rows
of the log-mel image move over time identifies the speaker; burst timing, loudness and noise
are random per utterance, so a model must learn the bands, not the file. Held-out speakers
get new random bands, so a model that only memorised the training speakers scores at chance.
"""
from __future__ import annotations

import os

import numpy as np
import soundfile as sf

SR = 16000
BANDS = 2


def _mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel) / 2595.0) - 1.0)


def new_speaker(rng: np.random.Generator) -> np.ndarray:
    """Band centres (Hz), uniform over 150-7000 Hz on the mel scale."""
    return np.sort(_hz(rng.uniform(_mel(150.0), _mel(7000.0), size=BANDS)))


def _bursts(rng: np.random.Generator, n: int) -> np.ndarray:
    """A random on/off envelope: bursts of 60-250 ms separated by 40-200 ms, smoothed edges."""
    env = np.zeros(n)
    pos = int(rng.uniform(0, 0.1) * SR)
    while pos < n:
        length = int(rng.uniform(0.06, 0.25) * SR)
        env[pos:pos + length] = np.hanning(length)[: max(0, min(length, n - pos))] ** 0.5
        pos += length + int(rng.uniform(0.04, 0.2) * SR)
    return env


def utterance(rng: np.random.Generator, centres: np.ndarray, seconds: float) -> np.ndarray:
    n = int(seconds * SR)
    freqs = np.fft.rfftfreq(n, 1.0 / SR)
    audio = np.zeros(n)
    for centre in centres * rng.uniform(0.97, 1.03, size=len(centres)):
        width = 0.06 * centre + 40.0
        shape = np.exp(-0.5 * ((freqs - centre) / width) ** 2)
        spectrum = shape * (rng.normal(size=len(freqs)) + 1j * rng.normal(size=len(freqs)))
        band = np.fft.irfft(spectrum, n)
        audio += band / (band.std() + 1e-12) * _bursts(rng, n) * rng.uniform(0.5, 1.0)
    audio = audio / (np.abs(audio).max() + 1e-9) * rng.uniform(0.3, 0.8)
    audio += rng.normal(0, 10 ** (-rng.uniform(40, 50) / 20), size=n)
    return np.clip(audio * 32767, -32768, 32767).astype(np.int16)


def make_corpus(root: str, n_speakers: int, n_utts: int, seconds=(0.8, 1.6), seed: int = 0,
                prefix: str = "spk") -> list[tuple[str, str]]:
    """Write ``root/<prefix>NN/uttMM.wav``; return (speaker, relative path) pairs."""
    rng = np.random.default_rng(seed)
    items = []
    for s in range(n_speakers):
        centres = new_speaker(rng)
        name = f"{prefix}{s:02d}"
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for u in range(n_utts):
            rel = f"{name}/utt{u:02d}.wav"
            sf.write(os.path.join(root, rel), utterance(rng, centres, rng.uniform(*seconds)), SR,
                     subtype="PCM_16")
            items.append((name, rel))
    return items


def write_train_list(path: str, items) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(f"{speaker} {rel}\n" for speaker, rel in items)


def write_trials(path: str, items) -> int:
    """Every pair of files once: ``label path1 path2``. Returns the number of trials."""
    lines = []
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            lines.append(f"{int(items[i][0] == items[j][0])} {items[i][1]} {items[j][1]}\n")
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return len(lines)
