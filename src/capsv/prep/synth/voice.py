"""A procedural voice: speaker traits, phone-like content and source-filter synthesis (numpy only).

The model is a classic cascade formant synthesiser, run in the STFT domain so that it is
vectorised and fast:

- **Source.** A Rosenberg-style glottal pulse train (open quotient and skew are speaker traits)
  whose derivative (flow derivative + lip radiation) drives the tract; per-cycle jitter and
  shimmer; aspiration noise modulated by the pulse (breathiness); a separate white-noise
  source for frication and plosive bursts.
- **Tract.** Five cascaded two-pole resonators per 8 ms frame. F1-F3 follow phone targets
  (Peterson & Barney's vowels, scaled by the speaker's vocal-tract length and shifted by the
  speaker's own per-vowel offsets, an "accent"); F4/F5 are speaker constants, as they are in
  real voices. Targets are smoothed over ~40 ms (coarticulation).
- **Prosody.** Phrase declination plus accents on stressed syllables, around the speaker's F0
  and range; speaking rate scales every duration.

Everything random comes from the ``numpy.random.Generator`` passed in, so the same generator
state gives the same samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...protocol import SAMPLE_RATE

SR = SAMPLE_RATE
N_FFT = 512
HOP = 128                     # control rate: one frame of parameters per 8 ms
N_FORMANTS = 5

# Adult male formant targets F1-F3 (Hz), after Peterson & Barney (1952).
VOWELS = np.array([
    [270, 2290, 3010],   # i
    [390, 1990, 2550],   # I
    [530, 1840, 2480],   # E
    [660, 1720, 2410],   # ae
    [730, 1090, 2440],   # a
    [570, 840, 2410],    # O
    [440, 1020, 2240],   # U
    [300, 870, 2240],    # u
    [640, 1190, 2390],   # V
    [490, 1350, 1690],   # r-coloured
    [500, 1500, 2500],   # schwa
], dtype=np.float64)

# Consonants: kind, F1-F3 locus (Hz, male), voicing, noise centre / bandwidth (Hz), noise level.
CONSONANTS = {
    "s":  ("fric", (320, 1700, 2600), 0.0, 5800, 2200, 0.55),
    "z":  ("fric", (320, 1700, 2600), 0.45, 5800, 2200, 0.35),
    "sh": ("fric", (300, 1800, 2500), 0.0, 3200, 1600, 0.55),
    "f":  ("fric", (350, 1100, 2300), 0.0, 5000, 6000, 0.12),
    "v":  ("fric", (350, 1100, 2300), 0.5, 5000, 6000, 0.08),
    "th": ("fric", (350, 1400, 2600), 0.0, 6200, 5000, 0.08),
    "h":  ("asp", None, 0.0, 0, 0, 0.5),
    "p":  ("stop", (300, 900, 2200), 0.0, 900, 1400, 0.9),
    "t":  ("stop", (300, 1700, 2600), 0.0, 4200, 2500, 0.9),
    "k":  ("stop", (300, 1900, 2300), 0.0, 2100, 1200, 0.9),
    "b":  ("stop", (300, 900, 2200), 0.12, 900, 1400, 0.5),
    "d":  ("stop", (300, 1700, 2600), 0.12, 4200, 2500, 0.5),
    "g":  ("stop", (300, 1900, 2300), 0.12, 2100, 1200, 0.5),
    "m":  ("nasal", (250, 1100, 2300), 0.35, 0, 0, 0.0),
    "n":  ("nasal", (250, 1700, 2600), 0.35, 0, 0, 0.0),
    "l":  ("approx", (360, 1300, 2700), 0.7, 0, 0, 0.0),
    "r":  ("approx", (310, 1060, 1380), 0.7, 0, 0, 0.0),
    "w":  ("approx", (290, 610, 2150), 0.7, 0, 0, 0.0),
    "j":  ("approx", (260, 2070, 3020), 0.7, 0, 0, 0.0),
}
ONSETS = list(CONSONANTS)
CODAS = ["s", "z", "t", "d", "k", "n", "m", "l", "r", "f", "sh", "p", "g"]


@dataclass
class SpeakerTraits:
    """What makes one synthetic voice that voice; drawn once per speaker."""

    female: bool
    vtl_scale: float          # formant multiplier (shorter vocal tract -> higher formants)
    f0_hz: float              # median fundamental frequency
    f0_range_st: float        # size of intonation accents, semitones
    open_quotient: float      # fraction of the glottal cycle the folds are open
    skew: float               # opening share of the open phase
    tilt_db: float            # extra source spectral tilt, dB per octave
    breathiness: float        # aspiration noise relative to voicing
    rate: float               # speaking-rate multiplier (>1 is faster)
    jitter: float             # relative per-cycle period perturbation
    shimmer: float            # relative per-cycle amplitude perturbation
    bw_scale: float           # formant bandwidth multiplier
    high_formants: tuple[float, float]     # F4, F5 in Hz
    vowel_offsets: np.ndarray = field(repr=False)   # (n_vowels, 3) log offsets of F1-F3
    sibilant_scale: float = 1.0            # speaker's /s/, /sh/ noise centre multiplier

    def vector(self) -> np.ndarray:
        """Standardised trait coordinates, used to find look-alike speakers (hard trials)."""
        return np.array([
            2.0 * self.female, np.log(self.vtl_scale) / 0.08, np.log(self.f0_hz) / 0.15,
            self.tilt_db / 3.5, (self.open_quotient - 0.6) / 0.09,
            np.log(self.breathiness) / 0.5, np.log(self.rate) / 0.12,
        ])


def draw_speaker(rng: np.random.Generator) -> SpeakerTraits:
    """Population model: two sexes with overlapping distributions of every trait."""
    female = bool(rng.random() < 0.5)

    def lognorm(median: float, sd: float) -> float:
        return float(median * np.exp(sd * rng.standard_normal()))

    vtl = lognorm(1.16 if female else 1.0, 0.08)
    return SpeakerTraits(
        female=female,
        vtl_scale=vtl,
        f0_hz=lognorm(205.0 if female else 115.0, 0.15),
        f0_range_st=float(rng.uniform(1.5, 4.5)),
        open_quotient=float(np.clip(rng.normal(0.65 if female else 0.55, 0.08), 0.35, 0.85)),
        skew=float(rng.uniform(0.55, 0.8)),
        tilt_db=float(rng.normal(0.0, 3.5)),
        breathiness=lognorm(0.10 if female else 0.06, 0.5),
        rate=lognorm(1.0, 0.12),
        jitter=float(rng.uniform(0.003, 0.02)),
        shimmer=float(rng.uniform(0.02, 0.10)),
        bw_scale=lognorm(1.0, 0.15),
        high_formants=(lognorm(3500.0 * vtl, 0.05), lognorm(4500.0 * vtl, 0.05)),
        vowel_offsets=rng.normal(0.0, 0.06, size=(len(VOWELS), 3)),
        sibilant_scale=lognorm(vtl, 0.08),
    )


@dataclass
class SpeakingState:
    """How a speaker sounds in one recording session (mood, effort, setting)."""

    f0_shift_st: float = 0.0
    tilt_shift_db: float = 0.0
    rate_scale: float = 1.0
    breath_scale: float = 1.0


def draw_speaking_state(rng: np.random.Generator) -> SpeakingState:
    return SpeakingState(
        f0_shift_st=float(rng.normal(0.0, 1.0)),
        tilt_shift_db=float(rng.normal(0.0, 1.0)),
        rate_scale=float(np.exp(rng.normal(0.0, 0.06))),
        breath_scale=float(np.exp(rng.normal(0.0, 0.25))),
    )


# ---------------------------------------------------------------------------------------------
# Content: a phone sequence rendered into per-frame parameter tracks

@dataclass
class Tracks:
    """Per-frame (8 ms) synthesis parameters; every array has ``n_frames`` rows."""

    formants: np.ndarray      # (n, 5) Hz
    bandwidths: np.ndarray    # (n, 5) Hz
    voice: np.ndarray         # (n,) voicing amplitude
    aspiration: np.ndarray    # (n,) aspiration noise through the tract
    frication: np.ndarray     # (n,) frication noise amplitude
    fric_centre: np.ndarray   # (n,) Hz
    fric_width: np.ndarray    # (n,) Hz
    f0_st: np.ndarray         # (n,) semitones relative to the utterance's base F0


def _vowel_formants(traits: SpeakerTraits, vowel: int, rng: np.random.Generator) -> np.ndarray:
    token = np.exp(traits.vowel_offsets[vowel] + rng.normal(0.0, 0.03, size=3))
    return VOWELS[vowel] * traits.vtl_scale * token


class _TrackWriter:
    """Fills frame ranges of the tracks while walking through the phone sequence."""

    def __init__(self, n_frames: int, traits: SpeakerTraits):
        self.n = n_frames
        self.pos = 0
        neutral = VOWELS[10] * traits.vtl_scale
        self.f123 = np.tile(neutral, (n_frames, 1))
        self.voice = np.zeros(n_frames)
        self.asp = np.zeros(n_frames)
        self.fric = np.zeros(n_frames)
        self.centre = np.full(n_frames, 4000.0)
        self.width = np.full(n_frames, 2000.0)
        self.stress = np.zeros(n_frames)
        self.phrase_start = [0]

    def put(self, frames: int, f123=None, voice=0.0, asp=0.0, fric=0.0, centre=None,
            width=None, stress=0.0) -> None:
        a, b = self.pos, min(self.pos + max(frames, 1), self.n)
        if f123 is not None:
            self.f123[a:b] = f123
        elif a > 0:
            self.f123[a:b] = self.f123[a - 1]
        self.voice[a:b], self.asp[a:b], self.fric[a:b] = voice, asp, fric
        if centre is not None:
            self.centre[a:b], self.width[a:b] = centre, width
        self.stress[a:b] = stress
        self.pos = b

    @property
    def full(self) -> bool:
        return self.pos >= self.n


def _ms(rng: np.random.Generator, low: float, high: float, rate: float) -> int:
    """A duration drawn in [low, high] ms, scaled by speaking rate, in frames."""
    return max(1, int(round(rng.uniform(low, high) / rate * SR / 1000 / HOP)))


def _consonant(w: _TrackWriter, name: str, traits: SpeakerTraits, rate: float,
               rng: np.random.Generator) -> None:
    kind, locus, voicing, centre, width, level = CONSONANTS[name]
    f123 = None if locus is None else np.asarray(locus) * traits.vtl_scale
    if name in ("s", "z", "sh"):
        centre = centre * traits.sibilant_scale
    if kind == "fric":
        w.put(_ms(rng, 60, 130, rate), f123, voice=voicing, fric=level, centre=centre, width=width)
    elif kind == "asp":
        w.put(_ms(rng, 40, 90, rate), None, asp=level)
    elif kind == "stop":
        w.put(_ms(rng, 35, 80, rate), f123, voice=voicing)                       # closure
        w.put(_ms(rng, 8, 20, rate), f123, fric=level, centre=centre, width=width)  # burst
        if voicing == 0.0:
            w.put(_ms(rng, 20, 55, rate), f123, asp=0.35)                        # aspiration
    else:  # nasal or approximant: voiced, vowel-like but weaker
        w.put(_ms(rng, 45, 90, rate), f123, voice=voicing)


def _fill_content(w: _TrackWriter, traits: SpeakerTraits, rate: float,
                  rng: np.random.Generator) -> None:
    """Words of 1-3 syllables (C)V(C), with pauses that start new intonation phrases."""
    w.put(_ms(rng, 60, 300, 1.0))                                  # leading silence
    while not w.full:
        for syllable in range(int(rng.integers(1, 4))):
            if rng.random() < 0.75:
                _consonant(w, ONSETS[int(rng.integers(len(ONSETS)))], traits, rate, rng)
            stressed = syllable == 0 and rng.random() < 0.7
            vowel = int(rng.integers(len(VOWELS)))
            low, high = (110, 220) if stressed else (55, 130)
            w.put(_ms(rng, low, high, rate), _vowel_formants(traits, vowel, rng),
                  voice=1.0 if stressed else 0.8, stress=float(stressed))
            if rng.random() < 0.35:
                _consonant(w, CODAS[int(rng.integers(len(CODAS)))], traits, rate, rng)
        if rng.random() < 0.3:
            w.put(_ms(rng, 120, 450, 1.0))                          # pause: new phrase
            w.phrase_start.append(w.pos)


def _smooth(x: np.ndarray, frames: int) -> np.ndarray:
    """Moving average over ``frames`` along axis 0, edges held (coarticulation, ramps)."""
    if frames <= 1:
        return x
    pad = frames // 2
    padded = np.pad(x, [(pad, frames - 1 - pad)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    csum = np.cumsum(padded, axis=0)
    csum = np.concatenate([np.zeros((1,) + x.shape[1:]), csum])
    return (csum[frames:] - csum[:-frames]) / frames


def _intonation(w: _TrackWriter, traits: SpeakerTraits, rng: np.random.Generator) -> np.ndarray:
    """Semitone contour: declination inside each phrase plus accents on stressed syllables."""
    n = w.n
    contour = np.zeros(n)
    starts = w.phrase_start + [n]
    for a, b in zip(starts[:-1], starts[1:]):
        if b > a:
            drop = rng.uniform(1.5, 4.0)
            contour[a:b] = np.linspace(drop / 2, -drop / 2, b - a)
            if rng.random() < 0.15:                                  # a rising phrase end
                tail = min(b - a, 25)
                contour[b - tail:b] += np.linspace(0, rng.uniform(2, 5), tail)
    accents = _smooth(w.stress, 12) * traits.f0_range_st * rng.uniform(0.6, 1.2)
    wander = _smooth(rng.normal(0.0, 1.0, n), 40) * 2.0              # slow random drift
    return contour + accents + wander


def utterance_tracks(traits: SpeakerTraits, state: SpeakingState, n_frames: int,
                     rng: np.random.Generator) -> Tracks:
    rate = traits.rate * state.rate_scale * float(np.exp(rng.normal(0.0, 0.04)))
    w = _TrackWriter(n_frames, traits)
    _fill_content(w, traits, rate, rng)
    f123 = _smooth(w.f123, 5)                                        # ~40 ms coarticulation
    f45 = np.broadcast_to(np.asarray(traits.high_formants), (n_frames, 2))
    formants = np.concatenate([f123, f45], axis=1)
    bandwidths = np.array([60.0, 90.0, 130.0, 200.0, 280.0]) * traits.bw_scale
    bandwidths = bandwidths * (1.0 + 0.3 * formants / 3000.0)        # wider at high frequency
    return Tracks(
        formants=formants, bandwidths=bandwidths,
        voice=_smooth(w.voice, 2), aspiration=_smooth(w.asp, 2), frication=_smooth(w.fric, 2),
        fric_centre=w.centre, fric_width=w.width, f0_st=_intonation(w, traits, rng))


# ---------------------------------------------------------------------------------------------
# Signal: glottal source, STFT-domain filtering

_RAMP = np.arange(HOP) / HOP


def _frame_to_samples(track: np.ndarray, n_samples: int) -> np.ndarray:
    """Linear interpolation of a per-frame track (frame i sits at sample i*HOP) to samples.

    Frames are evenly spaced, so this is one broadcast over (frames, HOP), not a search.
    """
    track = np.append(track, track[-1])
    steps = track[:-1, None] + (track[1:] - track[:-1])[:, None] * _RAMP
    return steps.reshape(-1)[:n_samples]


def pulse_shape(traits: SpeakerTraits, points: int = 1024) -> np.ndarray:
    """One glottal cycle of Rosenberg-style flow (0..1), sampled at ``points`` phases."""
    p = np.arange(points) / points
    opening = traits.open_quotient * traits.skew
    closing = traits.open_quotient - opening
    rising = 0.5 * (1.0 - np.cos(np.pi * np.minimum(p / opening, 1.0)))
    falling = np.cos(0.5 * np.pi * np.clip((p - opening) / closing, 0.0, 1.0))
    return np.where(p < opening, rising, falling)


def glottal_source(f0: np.ndarray, traits: SpeakerTraits, rng: np.random.Generator):
    """Glottal flow derivative and flow for a per-sample F0 (Hz), with jitter and shimmer.

    Returns (derivative, flow), both (n_samples,); the flow (0..1) modulates aspiration.
    """
    n = len(f0)
    hold = max(1, int(SR / max(float(np.median(f0)), 50.0)))         # about one period
    jitter = np.repeat(rng.standard_normal(n // hold + 1), hold)[:n]
    phase = np.cumsum(f0 * (1.0 + traits.jitter * jitter) / SR)
    cycle = phase.astype(np.int64)
    table = pulse_shape(traits)
    flow = table[((phase - cycle) * len(table)).astype(np.int64)]
    amplitude = 1.0 + traits.shimmer * rng.standard_normal(int(cycle[-1]) + 2)
    flow *= amplitude[cycle]
    derivative = np.diff(flow, prepend=0.0) * (SR / f0)              # per-cycle scale invariant
    return derivative, flow


def _stft(x: np.ndarray, window: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """(n_frames, N_FFT//2+1) spectra; frame i is centred on sample i*HOP.

    ``rows`` picks a subset of frames (the others are not transformed).
    """
    padded = np.pad(x, (N_FFT // 2, N_FFT // 2 + HOP))
    n_frames = len(x) // HOP + 1
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
    if rows is not None:
        frames = frames[rows]
    return np.fft.rfft(frames * window, axis=1)


def _istft(spec: np.ndarray, window: np.ndarray, n_samples: int) -> np.ndarray:
    """Weighted overlap-add inverse of :func:`_stft` (hop = N_FFT/4, Hann^2 sums to 1.5)."""
    frames = np.fft.irfft(spec, n=N_FFT, axis=1) * window
    n_frames = len(frames)
    out = np.zeros((n_frames + N_FFT // HOP) * HOP)
    for k in range(N_FFT // HOP):
        out[k * HOP:k * HOP + n_frames * HOP] += frames[:, k * HOP:(k + 1) * HOP].reshape(-1)
    return out[N_FFT // 2:N_FFT // 2 + n_samples] / 1.5


_OMEGA = np.linspace(0.0, np.pi, N_FFT // 2 + 1)
_TRIG = tuple(f(m * _OMEGA).astype(np.float32) for m in (1, 2) for f in (np.cos, np.sin))


def _formant_gain(formants: np.ndarray, bandwidths: np.ndarray) -> np.ndarray:
    """Magnitude of a cascade of two-pole resonators, unity at DC: (n_frames, bins) float32.

    ``formants`` and ``bandwidths`` are (n_frames, K), or (1, K) for constant ones.
    |1 - c e^-jw + r^2 e^-2jw| is expanded into real float32 arithmetic: this is the hot
    loop of synthesis, and float32 is far more precise than audio needs.
    """
    cos1, sin1, cos2, sin2 = _TRIG
    gain = np.ones((formants.shape[0], len(cos1)), dtype=np.float32)
    for k in range(formants.shape[1]):
        r2 = np.exp(-2.0 * np.pi * bandwidths[:, k:k + 1] / SR)
        c = (2.0 * np.sqrt(r2) * np.cos(2.0 * np.pi * formants[:, k:k + 1] / SR)).astype(np.float32)
        r2 = r2.astype(np.float32)
        real = 1.0 - c * cos1 + r2 * cos2
        imag = c * sin1 - r2 * sin2
        gain *= (1.0 - c + r2) / np.sqrt(real * real + imag * imag)
    return gain


def _band_gain(centre: np.ndarray, width: np.ndarray) -> np.ndarray:
    """Gaussian noise bands for frication and bursts: (n_frames, bins) float32.

    Centres and widths are per-phone constants, so only the few distinct rows are computed.
    """
    freqs = np.linspace(0.0, SR / 2, N_FFT // 2 + 1)
    pairs, rows = np.unique(np.stack([centre, width], axis=1), axis=0, return_inverse=True)
    bands = np.exp(-0.5 * ((freqs - pairs[:, :1]) / (0.5 * pairs[:, 1:])) ** 2)
    return bands.astype(np.float32)[rows.ravel()]


def render(tracks: Tracks, traits: SpeakerTraits, state: SpeakingState, base_f0: float,
           n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """The dry (channel-free) utterance, float64, speech-active RMS of 1."""
    f0 = _frame_to_samples(np.clip(base_f0 * 2.0 ** (tracks.f0_st / 12.0), 50.0, 500.0), n_samples)
    derivative, flow = glottal_source(f0, traits, rng)
    voiced = derivative / (np.sqrt(np.mean(derivative ** 2)) + 1e-9)
    voice = _frame_to_samples(tracks.voice, n_samples)
    breath = traits.breathiness * state.breath_scale
    noise = rng.standard_normal(n_samples)
    tract_in = voiced * voice + noise * (breath * voice * (0.4 + flow)
                                         + 0.5 * _frame_to_samples(tracks.aspiration, n_samples))
    fric_in = rng.standard_normal(n_samples) * _frame_to_samples(tracks.frication, n_samples)

    window = np.hanning(N_FFT + 1)[:N_FFT]
    freqs = np.linspace(0.0, SR / 2, N_FFT // 2 + 1)
    tilt = (np.maximum(freqs, 100.0) / 500.0) ** ((traits.tilt_db + state.tilt_shift_db) / 6.02)
    n_frames = len(tracks.voice)
    tract = _formant_gain(tracks.formants[:, :3], tracks.bandwidths[:, :3])
    tract *= _formant_gain(tracks.formants[:1, 3:], tracks.bandwidths[:1, 3:]) * tilt
    spec = _stft(tract_in, window)[:n_frames] * tract
    # Frication is silent in most frames: transform and filter only the frames that have it.
    # A frame sees the frication of its 3 neighbours on each side (window + interpolation).
    active = np.flatnonzero(_smooth(tracks.frication, 7) > 0)
    if len(active):
        fric = _stft(fric_in, window, active)
        spec[active] += fric * (1.2 * _band_gain(tracks.fric_centre[active], tracks.fric_width[active]))
    out = _istft(spec, window, n_samples)
    return out / _active_rms(out)


def _active_rms(x: np.ndarray) -> float:
    """RMS over the louder half of 20 ms blocks, so pauses do not dilute the level."""
    blocks = x[:len(x) // 320 * 320].reshape(-1, 320)
    energy = np.sort(np.mean(blocks ** 2, axis=1))
    return float(np.sqrt(np.mean(energy[len(energy) // 2:])) + 1e-9)


def synth_dry(traits: SpeakerTraits, state: SpeakingState, n_samples: int,
              rng: np.random.Generator) -> np.ndarray:
    """One utterance of random content by this speaker in this state: float64 (n_samples,)."""
    n_frames = n_samples // HOP + 1
    tracks = utterance_tracks(traits, state, n_frames, rng)
    base_f0 = traits.f0_hz * 2.0 ** ((state.f0_shift_st + rng.normal(0.0, 0.7)) / 12.0)
    return render(tracks, traits, state, base_f0, n_samples, rng)
