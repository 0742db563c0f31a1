"""Recording channels for the synthetic corpus: one per session ("video").

A session fixes the room (a reverberation impulse response), the microphone and transmission
(band limits and a coloured EQ), the background (noise colour, hum, music, babble-like
murmur) and the level; each utterance varies SNR and gain a little around the session's.
Everything is applied in one FFT pass per signal.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...protocol import SAMPLE_RATE

SR = SAMPLE_RATE
INT16_MAX = 32767


@dataclass
class Channel:
    """A session's recording conditions."""

    highpass_hz: float
    lowpass_hz: float
    tilt_db: float                   # microphone / codec tilt, dB per octave around 1 kHz
    ripple: np.ndarray = field(repr=False)       # (3, 2): amplitude dB, phase of log-f ripples
    rir: np.ndarray = field(repr=False)         # room impulse response, direct path first
    snr_db: float = 20.0
    noise_slope: float = 1.0         # noise power ~ f^-slope (0 white, 1 pink, 2 brown)
    hum_hz: float = 0.0              # mains hum fundamental, 0 = none
    hum_db: float = -40.0
    music: bool = False
    babble: bool = False
    level_dbfs: float = -26.0


def _room(rng: np.random.Generator) -> np.ndarray:
    """Exponentially decaying noise tail plus early reflections; RT60 0.1-0.8 s, or dry."""
    if rng.random() < 0.2:
        return np.ones(1)
    rt60 = rng.uniform(0.1, 0.8)
    n = int(rt60 * SR * 0.8)
    t = np.arange(n) / SR
    tail = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    tail = np.convolve(tail, np.ones(3) / 3, mode="same")           # a little air absorption
    tail[:int(0.003 * SR)] = 0.0                                      # gap before the tail
    for _ in range(int(rng.integers(2, 7))):                          # early reflections
        tail[int(rng.uniform(0.002, 0.04) * SR)] += rng.uniform(-0.6, 0.6)
    drr_db = rng.uniform(-3.0, 12.0)                                  # direct-to-reverberant
    tail *= 10.0 ** (-drr_db / 20.0) / (np.sqrt(np.sum(tail ** 2)) + 1e-12)
    tail[0] = 1.0
    return tail


def draw_channel(rng: np.random.Generator) -> Channel:
    telephone = rng.random() < 0.15
    return Channel(
        highpass_hz=float(rng.uniform(250, 400) if telephone else np.exp(rng.uniform(np.log(40), np.log(300)))),
        lowpass_hz=float(rng.uniform(3200, 3800) if telephone else rng.uniform(4500, 8000)),
        # Microphones, laptops, phones and codecs differ by 10-20 dB across the band: a tilt
        # of 4.5 dB/octave (1 sd) and peaks/dips of up to 9 dB each. A channel this strong is
        # what makes a long-term-spectrum comparison fail on real recordings.
        tilt_db=float(rng.normal(0.0, 4.5)),
        ripple=np.column_stack([rng.uniform(0.0, 9.0, 3), rng.uniform(0, 2 * np.pi, 3)]),
        rir=_room(rng),
        snr_db=float(rng.uniform(8.0, 30.0)),
        noise_slope=float(rng.uniform(0.0, 2.0)),
        hum_hz=float(rng.choice([50.0, 60.0])) if rng.random() < 0.2 else 0.0,
        hum_db=float(rng.uniform(-45.0, -25.0)),
        music=bool(rng.random() < 0.2),
        babble=bool(rng.random() < 0.2),
        level_dbfs=float(rng.uniform(-36.0, -18.0)),
    )


def eq_gain(channel: Channel, freqs: np.ndarray) -> np.ndarray:
    """Linear magnitude response of the microphone and transmission at ``freqs`` (Hz)."""
    grid = np.linspace(0.0, SR / 2, 1025)            # evaluated coarsely, then interpolated
    f = np.maximum(grid, 1.0)
    highpass = 1.0 / np.sqrt(1.0 + (channel.highpass_hz / f) ** 4)
    lowpass = 1.0 / np.sqrt(1.0 + (f / channel.lowpass_hz) ** 8)
    octaves = np.log2(f / 1000.0)
    db = channel.tilt_db * octaves
    for k, (amp, phase) in enumerate(channel.ripple):
        db = db + amp * np.sin((k + 1) * 1.3 * octaves + phase)
    return np.interp(freqs, grid, highpass * lowpass * 10.0 ** (db / 20.0))


def _rms_of_spectrum(spec: np.ndarray, size: int) -> float:
    """Time-domain RMS of ``irfft(spec, size)`` (Parseval), without transforming back."""
    power = 2.0 * np.sum(spec.real ** 2 + spec.imag ** 2) - abs(spec[0]) ** 2 - abs(spec[-1]) ** 2
    return float(np.sqrt(power) / size)


def fft_size(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n (numpy's FFT is fast for these)."""
    best = 1 << int(np.ceil(np.log2(n)))
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def _coloured_noise_spectrum(size: int, slope: float, rng: np.random.Generator) -> np.ndarray:
    """Spectrum of ``size`` samples of Gaussian noise with power ~ f^-slope, unit RMS."""
    m = size // 2 + 1
    spec = rng.standard_normal((m, 2)).view(np.complex128)[:, 0]
    log_f = np.log(np.maximum(np.arange(m) * (SR / size), 20.0))
    spec *= np.exp(log_f * (-slope / 2.0))
    return spec / _rms_of_spectrum(spec, size)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / (np.sqrt(np.mean(x ** 2)) + 1e-12)


def _music(n: int, rng: np.random.Generator) -> np.ndarray:
    """Sustained notes with four harmonics each, changing every 0.25-0.8 s."""
    out = np.zeros(n)
    start = 0
    while start < n:
        stop = min(start + int(rng.uniform(0.25, 0.8) * SR), n)
        t = np.arange(start, stop) / SR
        for note in rng.integers(-24, 13, size=3):
            f0 = 440.0 * 2.0 ** (note / 12.0)
            z = np.exp(1j * (2 * np.pi * f0 * t + rng.uniform(0, 6.3)))
            harmonic = z.copy()
            for h in range(1, 5):                   # z^h: the h-th harmonic, no more exp calls
                if f0 * h < SR / 2:
                    out[start:stop] += harmonic.imag / h ** 1.5
                harmonic *= z
        start = stop
    return out


def _babble(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A murmur of distant talkers: speech-shaped noise with syllable-rate modulation."""
    out = np.zeros(n)
    t = np.arange(n) / SR
    for _ in range(3):
        envelope = 0.6 + 0.4 * np.sin(2 * np.pi * rng.uniform(3.0, 6.0) * t + rng.uniform(0, 6.3))
        out += np.fft.irfft(_coloured_noise_spectrum(size, 1.2, rng), size)[:n] * envelope
    return out


def background_spectrum(channel: Channel, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Spectrum (``size``-point rfft) of the session's background for one utterance, unit RMS."""
    spec = _coloured_noise_spectrum(size, channel.noise_slope, rng)
    extra = np.zeros(n)
    if channel.music:
        extra += _unit(_music(n, rng)) * rng.uniform(0.5, 2.0)
    if channel.babble:
        extra += _unit(_babble(n, size, rng)) * rng.uniform(0.5, 2.0)
    if channel.music or channel.babble:
        spec = spec + np.fft.rfft(extra, size)
        spec /= _rms_of_spectrum(spec, size)
    return spec


def apply_channel(dry: np.ndarray, channel: Channel, rng: np.random.Generator) -> np.ndarray:
    """Room, background, microphone EQ and level for one utterance -> int16 samples.

    ``dry`` has a speech-active RMS of 1. Everything is mixed in one FFT buffer. The result
    is scaled to the session level (+-2 dB) and, if that would clip, lowered until its peak
    is 0.9 of full scale.
    """
    n = len(dry)
    size = fft_size(n + len(channel.rir))
    spec = np.fft.rfft(dry, size)
    if len(channel.rir) > 1:
        spec *= np.fft.rfft(channel.rir, size)
    snr = channel.snr_db + rng.normal(0.0, 2.0)
    spec += background_spectrum(channel, n, size, rng) * 10.0 ** (-snr / 20.0)
    spec *= eq_gain(channel, np.fft.rfftfreq(size, 1.0 / SR))
    out = np.fft.irfft(spec, size)[:n]
    if channel.hum_hz:                # 50 and 60 Hz both repeat exactly every second
        t = np.arange(SR) / SR
        hum = sum(np.sin(2 * np.pi * channel.hum_hz * h * t) / h for h in (1, 2, 3))
        out += np.resize(hum, n) * 10.0 ** (channel.hum_db / 20.0)
    out -= out.mean()
    level = 10.0 ** ((channel.level_dbfs + rng.normal(0.0, 2.0)) / 20.0) * INT16_MAX
    out *= level / (np.sqrt(np.mean(out ** 2)) + 1e-12)
    peak = np.max(np.abs(out))
    if peak > 0.9 * INT16_MAX:
        out *= 0.9 * INT16_MAX / peak
    return np.rint(out).astype(np.int16)
