"""A hand-made, training-free baseline: mean cepstrum (or mean log-mel) + cosine scoring.

This is the classic long-term-spectrum speaker comparison that learned embeddings replaced,
and the yardstick the demo puts beside a trained model. Per file:

1. capsv's own log-mel front end (spec §1) **without** its instance normalisation, on the
   whole utterance;
2. keep the speech frames: the louder half of the frames by log-mel energy (pauses carry the
   room and the noise, not the voice);
3. ``mfcc``: an orthonormal DCT-II over the 64 log-mel bins, coefficients 1..19 (c0 is the
   loudness, which says nothing about who speaks); ``logmel``: the 64 log-mel bins;
4. average over the kept frames -> one vector per file.

Trials are scored by the cosine of the two vectors after subtracting the mean vector of all
files in the trial list (an unsupervised centring, no labels used; without it every cosine is
close to 1 and the scores mostly measure overall spectral tilt).

Why no cepstral mean normalisation: CMN subtracts each file's mean cepstrum, so the mean
cepstrum would be identically zero. The mean cepstrum *is* the long-term spectral envelope:
it holds the speaker's vocal tract and voice source (what this baseline can use) and, mixed
into it, the channel's EQ (what it cannot remove). That confusion is exactly the weakness of
this family of methods, and what a trained network, fed instance-normalised features and
trained across sessions, learns to get around.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .audio import load_audio
from .data.lists import read_trials
from .errors import CapsvError
from .features import LogMelFrontEnd
from .metrics import Metrics, compute_metrics

FEATURES = ("mfcc", "logmel")
N_CEPS = 20


def dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Orthonormal DCT-II, (n_out, n_in): row k is the k-th cosine basis over the bins."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64).unsqueeze(1)
    basis = torch.cos(math.pi / n_in * (n + 0.5) * k) * math.sqrt(2.0 / n_in)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


class BaselineEmbedder:
    """Waveform (int16 scale) -> one long-term-spectrum vector, see the module docstring."""

    def __init__(self, feature: str = "mfcc", n_ceps: int = N_CEPS):
        if feature not in FEATURES:
            raise CapsvError(f"unknown baseline feature {feature!r}; choose one of {FEATURES}")
        self.feature = feature
        self.frontend = LogMelFrontEnd()
        self.dct = dct_matrix(64, n_ceps)[1:]                        # drop c0 (loudness)

    @torch.no_grad()
    def __call__(self, wave: np.ndarray) -> np.ndarray:
        logmel = self.frontend.log_mel(torch.from_numpy(np.asarray(wave, dtype=np.float32)))[0]
        energy = logmel.mean(dim=0)                                  # (frames,)
        speech = logmel[:, energy >= energy.median()]                # the louder half
        feats = self.dct @ speech if self.feature == "mfcc" else speech
        return feats.mean(dim=1).double().numpy()


@dataclass
class BaselineResult:
    scores: np.ndarray
    labels: np.ndarray
    metrics: Metrics


def file_vectors(paths: list[str], feature: str = "mfcc") -> np.ndarray:
    """(n_files, dim) baseline vectors of the given audio files."""
    embed = BaselineEmbedder(feature)
    return np.stack([embed(load_audio(p)) for p in paths])


def cosine_scores(vectors: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine of centred vectors for each (index1, index2) row of ``pairs``."""
    centred = torch.from_numpy(vectors - vectors.mean(axis=0))
    unit = F.normalize(centred, dim=1)
    return (unit[pairs[:, 0]] * unit[pairs[:, 1]]).sum(dim=1).numpy()


def baseline_scores(test_list: str, test_path: str, feature: str = "mfcc") -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels (both (n_trials,), list order) of the baseline on a trial list."""
    from .evaluate import validate_inputs  # the evaluator's checks: missing / unusable files

    trials = read_trials(test_list)
    files = validate_inputs(trials, test_path, test_list)
    index = {f: i for i, f in enumerate(files)}
    vectors = file_vectors([os.path.join(test_path, f) for f in files], feature)
    pairs = np.array([(index[t.path1], index[t.path2]) for t in trials], dtype=np.int64)
    labels = np.array([t.label for t in trials], dtype=np.int64)
    return cosine_scores(vectors, pairs), labels


def evaluate_baseline(test_list: str, test_path: str, feature: str = "mfcc") -> BaselineResult:
    scores, labels = baseline_scores(test_list, test_path, feature)
    return BaselineResult(scores, labels, compute_metrics(scores, labels))
