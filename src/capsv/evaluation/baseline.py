"""A hand-made, training-free baseline: cepstral statistics + cosine scoring.

This is the classic long-term-spectrum speaker comparison that learned embeddings replaced,
and the yardstick the demo puts beside a trained model. Per file:

1. capsv's own log-mel front end (spec §1) **without** its instance normalisation, on the
   whole utterance;
2. keep the speech frames: the louder half of the frames by log-mel energy (pauses carry the
   room and the noise, not the voice);
3. ``mfcc``: an orthonormal DCT-II over the 64 log-mel bins, coefficients 1..29 (c0 is the
   loudness, which says nothing about who speaks); ``logmel``: the 64 log-mel bins;
4. ``stats="mean"`` (the default): their mean over the kept frames -> one vector per file
   (29 values for ``mfcc``); ``stats="mean+std"`` appends the standard deviations.

Trials are scored by the cosine of the two vectors after standardising every dimension over
all files of the trial list (mean 0, variance 1; unsupervised, no labels used). Without the
centring every cosine is close to 1; without the scaling the few large low-order
coefficients drown the rest.

Choices, and why:
- No cepstral mean normalisation: CMN subtracts each file's mean cepstrum, which would make
  the mean part identically zero. The mean cepstrum *is* the long-term spectral envelope: it
  holds the speaker's vocal tract and voice source and, mixed into it, the channel's EQ and
  noise. That confusion is the weakness of this family of methods, and what a trained
  network, fed instance-normalised features and trained across sessions, learns to get around.
- 29 coefficients rather than the usual 13 keep some of the harmonic fine structure (pitch).
- ``mean+std`` is the stronger variant the demo shows beside the mean: the standard
  deviations describe how far the spectrum moves (formant excursions, voicing contrast) and
  are far less sensitive to a fixed EQ than the mean, so they survive the channel that
  confuses the mean.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..audio import load_audio
from ..data.lists import read_trials
from ..errors import CapsvError
from ..models.features import LogMelFrontEnd
from .metrics import Metrics, compute_metrics

FEATURES = ("mfcc", "logmel")
STATS = ("mean", "mean+std")
N_CEPS = 30                 # c0..c29 computed, c0 dropped


def dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Orthonormal DCT-II, (n_out, n_in): row k is the k-th cosine basis over the bins."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64).unsqueeze(1)
    basis = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


class BaselineEmbedder:
    """Waveform (int16 scale) -> mean and std of spectral features, see the module docstring."""

    def __init__(self, feature: str = "mfcc", stats: str = "mean", n_ceps: int = N_CEPS,
                 speech_fraction: float = 0.5):
        if feature not in FEATURES:
            raise CapsvError(f"unknown baseline feature {feature!r}; choose one of {FEATURES}")
        if stats not in STATS:
            raise CapsvError(f"unknown baseline statistics {stats!r}; choose one of {STATS}")
        self.feature, self.stats = feature, stats
        self.speech_fraction = speech_fraction
        self.frontend = LogMelFrontEnd()
        self.dct = dct_matrix(64, n_ceps)[1:]                        # drop c0 (loudness)

    @torch.no_grad()
    def __call__(self, wave: np.ndarray) -> np.ndarray:
        logmel = self.frontend.log_mel(torch.from_numpy(np.asarray(wave, dtype=np.float32)))[0]
        energy = logmel.mean(dim=0)                                  # (frames,)
        threshold = torch.quantile(energy, 1.0 - self.speech_fraction)
        speech = logmel[:, energy >= threshold]                      # (64, kept frames)
        feats = self.dct @ speech if self.feature == "mfcc" else speech
        parts = [feats.mean(dim=1)] + ([feats.std(dim=1)] if self.stats == "mean+std" else [])
        return torch.cat(parts).double().numpy()


@dataclass
class BaselineResult:
    scores: np.ndarray
    labels: np.ndarray
    metrics: Metrics


def file_vectors(paths: list[str], feature: str = "mfcc", stats: str = "mean") -> np.ndarray:
    """(n_files, dim) baseline vectors of the given audio files (whole files)."""
    embed = BaselineEmbedder(feature, stats)
    return np.stack([embed(load_audio(p)) for p in paths])


def cosine_scores(vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine of standardised vectors for each (index1, index2) row of ``pairs``.

    vectors: (n_files, dim); every dimension is scaled to mean 0, variance 1 over the files.
    """
    standard = (vectors - vectors.mean(axis=0)) / (vectors.std(axis=0) + 1e-8)
    unit = F.normalize(torch.from_numpy(standard), dim=1)
    return (unit[pairs[:, 0]] * unit[pairs[:, 1]]).sum(dim=1).numpy()


def _trial_vectors(test_list: str, test_path: str, feature: str):
    """(mean+std vectors of the list's files, (n_trials, 2) file-index pairs, labels)."""
    from .inputs import validate_inputs  # the evaluator's checks: missing / unusable files

    trials = read_trials(test_list)
    files = validate_inputs(trials, test_path, test_list)
    index = {f: i for i, f in enumerate(files)}
    vectors = file_vectors([os.path.join(test_path, f) for f in files], feature, "mean+std")
    pairs = np.array([(index[t.path1], index[t.path2]) for t in trials], dtype=np.int64)
    labels = np.array([t.label for t in trials], dtype=np.int64)
    return vectors, pairs, labels


def _select(vectors: np.ndarray, stats: str) -> np.ndarray:
    """The ``stats`` part of mean+std vectors: the means are their first half."""
    if stats not in STATS:
        raise CapsvError(f"unknown baseline statistics {stats!r}; choose one of {STATS}")
    return vectors if stats == "mean+std" else vectors[:, :vectors.shape[1] // 2]


def baseline_scores(test_list: str, test_path: str, feature: str = "mfcc",
                    stats: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels (both (n_trials,), list order) of the baseline on a trial list."""
    vectors, pairs, labels = _trial_vectors(test_list, test_path, feature)
    return cosine_scores(_select(vectors, stats), pairs), labels


def evaluate_baselines(test_list: str, test_path: str, feature: str = "mfcc",
                       stats: tuple[str, ...] = STATS) -> dict[str, BaselineResult]:
    """Every variant in ``stats`` from one pass over the audio (the expensive part)."""
    vectors, pairs, labels = _trial_vectors(test_list, test_path, feature)
    results = {}
    for name in stats:
        scores = cosine_scores(_select(vectors, name), pairs)
        results[name] = BaselineResult(scores, labels, compute_metrics(scores, labels))
    return results


def evaluate_baseline(test_list: str, test_path: str, feature: str = "mfcc",
                      stats: str = "mean") -> BaselineResult:
    return evaluate_baselines(test_list, test_path, feature, (stats,))[stats]
