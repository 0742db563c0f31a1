"""Python API: compare two recordings, embed your own audio.

>>> from capsv import SpeakerVerifier
>>> sv = SpeakerVerifier.from_checkpoint("exps/cap/model/model000000050.model")
>>> sv.score("alice_1.wav", "alice_2.wav")            # same protocol as `capsv eval`
0.9731...
>>> sv.verify("alice_1.wav", "bob.wav")               # threshold stored by the trainer
Verification(score=0.8412..., threshold=0.9503..., same_speaker=False)

Scores follow the paper's evaluation protocol (spec §5) exactly, through the same code as
``capsv eval``: each input gives ``num_eval`` crops of ``eval_frames`` frames (the paper's 10 x 3.5 s);
TAP/SAP score the mean of the 10 x 10 crop cosine matrix, CAP scores the pair with the
first input as support and the second as query. ``eval_frames=0`` scores whole utterances.

Inputs: a path to an audio file in any common format, rate and channel count (WAV, FLAC,
OGG/Opus, MP3, m4a/AAC; decoded, downmixed and resampled to 16 kHz mono, with one warning per
file that is not 16 kHz), or a mono waveform as a numpy array or torch tensor of shape
(samples,) with its rate: ``sample_rate=`` (per call, or for the verifier), or a
``(waveform, rate)`` tuple such as ``torchaudio.load`` returns (channels first: (C, samples)
is averaged). A waveform whose rate is not given is refused: a 44.1 kHz array scored as
16 kHz would give a wrong score without any error. An input shorter than one crop warns, as
``capsv eval`` does. The network expects the **int16 scale** (-32768..32767), like the
paper's code:

- integer arrays (e.g. int16 PCM) are used as they are;
- float arrays on the int16 scale are used as they are;
- float arrays that look like [-1, 1] audio (peak at most 1.0) are multiplied by 32768 with a
  warning. Say what you pass with ``input_scale="int16"`` or ``"unit"`` to skip the guess
  (and the warning).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from .audio import INT16_SCALE, SAMPLE_RATE, audio_info, resample, reset_rate_warnings
from .models.checkpoint import is_capsv, load_model
from .errors import CapsvError
from .evaluation.extract import FileFeatures, extract_features
from .evaluation.inputs import short_files_message
from .evaluation.policy import EVAL_SHORT, choose_eval_frames
from .evaluation.scoring import score_pairs
from .models import SpeakerNet
from .utils import resolve_device
from .protocol import EVAL_FRAMES, NUM_EVAL, protocol_of

INPUT_SCALES = ("auto", "int16", "unit")


class InputError(CapsvError):
    """An input the API cannot score; the message says which and why."""


@dataclass(frozen=True)
class Verification:
    """The outcome of :meth:`SpeakerVerifier.verify`: ``same_speaker`` is ``score >= threshold``."""
    score: float
    threshold: float
    same_speaker: bool

    def __bool__(self) -> bool:
        return self.same_speaker


class SpeakerVerifier:
    """A trained model plus the evaluation protocol, ready to score and embed audio.

    Build it with :meth:`from_checkpoint`; or wrap a :class:`~capsv.models.SpeakerNet` you
    hold: ``SpeakerVerifier(net, threshold=0.9)``.

    Attributes: ``net`` (eval mode), ``pairwise`` (True for CAP), ``threshold`` (float or
    None), ``eval_frames``, ``num_eval``, ``device``, ``sample_rate`` (the rate of waveform
    inputs given without one; None: each call must say), ``eval_short``: ``"auto"`` scores
    whole utterances in a call whose inputs are mostly shorter than one crop (zero-padding
    would ruin their embeddings; a warning says so), ``"pad"`` always uses the crops.
    """

    def __init__(self, net: SpeakerNet, *, eval_frames: int = EVAL_FRAMES, num_eval: int = NUM_EVAL,
                 threshold: float | None = None, device: str | torch.device = "auto",
                 input_scale: str = "auto", sample_rate: int | None = None,
                 eval_short: str = "auto"):
        if input_scale not in INPUT_SCALES:
            raise ValueError(f"input_scale must be one of {INPUT_SCALES}, got {input_scale!r}")
        if eval_frames < 0:
            raise ValueError(f"eval_frames must be 0 (whole utterance) or more, got {eval_frames}")
        if eval_frames > 0 and num_eval < 1:
            raise ValueError(f"num_eval must be at least 1, got {num_eval}")
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.net = net.to(self.device).eval()
        self.eval_frames, self.num_eval = int(eval_frames), int(num_eval)
        self.threshold = None if threshold is None else float(threshold)
        self.input_scale = input_scale
        self.sample_rate = None if sample_rate is None else _checked_rate(sample_rate)
        if eval_short not in EVAL_SHORT:
            raise ValueError(f"eval_short must be one of {tuple(EVAL_SHORT)}, got {eval_short!r}")
        self.eval_short = eval_short

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", model: str | None = None,
                        encoder_type: str | None = None, nOut: int | None = None,
                        eval_frames: int | None = None, num_eval: int | None = None,
                        input_scale: str = "auto",
                        sample_rate: int | None = None) -> "SpeakerVerifier":
        """Load a capsv checkpoint (config and threshold inside) or a reference state_dict.

        A reference state_dict does not record its backbone: pass ``model="ResNetSE34L"``
        (or ``"ResNetSE34"``); ``encoder_type`` and ``nOut`` are read from its tensors.
        The threshold is ``meta["eer_threshold"]`` of a capsv checkpoint (the EER point of the
        trainer's last evaluation), else None. ``eval_frames`` / ``num_eval`` default to the
        protocol stored beside that threshold (``meta["eval_protocol"]``); a checkpoint without
        one gets the paper's protocol (capsv.protocol.PAPER), with a logged note. ``device="auto"``: CUDA when available, as
        ``capsv eval`` and ``capsv verify``.

        >>> sv = SpeakerVerifier.from_checkpoint("ResNetSE34L_CAP.model", model="ResNetSE34L")
        """
        device = resolve_device(device)
        net, ckpt = load_model(os.fspath(path), model, encoder_type, nOut, device=device)
        meta = (ckpt.get("meta") or {}) if is_capsv(ckpt) else {}
        threshold = meta.get("eer_threshold")
        stored = protocol_of(meta, os.fspath(path))
        eval_frames = stored.eval_frames if eval_frames is None else eval_frames
        num_eval = stored.num_eval if num_eval is None else num_eval
        return cls(net, eval_frames=eval_frames, num_eval=num_eval, threshold=threshold,
                   device=device, input_scale=input_scale, sample_rate=sample_rate)

    @property
    def pairwise(self) -> bool:
        return self.net.pairwise

    @property
    def config(self) -> dict:
        return dict(self.net.config)

    # -- scoring -------------------------------------------------------------------------

    def score(self, a, b, sample_rate: int | None = None) -> float:
        """Score of one pair (higher = more likely the same speaker).

        >>> sv.score("a.wav", "b.wav")
        >>> sv.score(wave_a, wave_b, sample_rate=44100)   # 1-D numpy arrays / tensors
        """
        return float(self.score_pairs([(a, b)], sample_rate=sample_rate)[0])

    def score_pairs(self, pairs: Iterable[tuple], progress: bool = False,
                    sample_rate: int | None = None) -> np.ndarray:
        """Scores of many (a, b) pairs, float64 (N,). Each distinct input is processed once.

        >>> sv.score_pairs([("a.wav", "b.wav"), ("a.wav", "c.wav")])
        array([0.97..., 0.81...])
        """
        pairs = list(pairs)
        for number, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
                raise InputError(f"pair {number}: expected (a, b), got {type(pair).__name__}")
        sources, index, frames = self._collect([x for pair in pairs for x in pair], sample_rate)
        feats = self._features(sources, progress, frames=frames)
        rows = np.array([(index[2 * k], index[2 * k + 1]) for k in range(len(pairs))],
                        dtype=np.int64).reshape(-1, 2)
        return score_pairs(self.net, feats, rows, progress=progress)

    def verify(self, a, b, threshold: float | None = None,
               sample_rate: int | None = None) -> Verification:
        """Score a pair and decide: same speaker when ``score >= threshold``.

        ``threshold`` defaults to the one stored in the checkpoint. It only makes sense for
        the protocol it was measured with, which :meth:`from_checkpoint` takes from the checkpoint
        (no score norm).

        >>> result = sv.verify("a.wav", "b.wav")
        >>> result.same_speaker, result.score
        """
        threshold = self.threshold if threshold is None else float(threshold)
        if threshold is None:
            raise CapsvError("no decision threshold: the checkpoint stores none (meta "
                             "'eer_threshold'); pass one (threshold=..., or --threshold)")
        value = self.score(a, b, sample_rate=sample_rate)
        return Verification(value, threshold, bool(value >= threshold))

    # -- embeddings ----------------------------------------------------------------------

    def embed(self, x, crops: bool = False, sample_rate: int | None = None,
              normalize: bool = True) -> np.ndarray:
        """TAP/SAP: the input's embedding; CAP: its frame features.

        - TAP/SAP, default: the mean of the crops' unit-length embeddings, scaled to unit
          length, float32 (E,): the cosine of two embeddings is their dot product, as in
          WeSpeaker, SpeechBrain or NeMo. :meth:`score` is the mean of the crops' cosines
          (the paper's protocol), which is the dot product of the *unscaled* means:
          ``normalize=False`` returns those. ``crops=True`` gives the unit-length crop
          embeddings (num_eval, E).
        - CAP has no single-input embedding: its pooling depends on the other side of the
          pair. Returns the backbone's frame features (num_eval, D, T), float32, which the
          CAP head pairs up (``self.net.pooling(support, query)``; :mod:`capsv.export`
          deploys the same split as two graphs).
        """
        return self.embed_many([x], crops=crops, sample_rate=sample_rate, normalize=normalize)[0]

    def embed_many(self, xs: Sequence, crops: bool = False, progress: bool = False,
                   sample_rate: int | None = None, normalize: bool = True) -> list[np.ndarray]:
        """:meth:`embed` for a list of inputs, batched."""
        sources, index, frames = self._collect(list(xs), sample_rate)
        feats = self._features(sources, progress, keep_crops=crops, frames=frames)
        return [self._embedding_of(feats, i, crops, normalize) for i in index]

    def _embedding_of(self, feats: FileFeatures, i: int, crops: bool,
                      normalize: bool = True) -> np.ndarray:
        if self.pairwise:
            return feats.frames[i].float().cpu().numpy()
        if crops:
            return feats.emb[i].float().cpu().numpy()
        emb = feats.mean_embedding(i)
        if normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.float().cpu().numpy()

    # -- inputs --------------------------------------------------------------------------

    def _features(self, sources: list, progress: bool, keep_crops: bool = False,
                  frames: int | None = None) -> FileFeatures:
        frames = self.eval_frames if frames is None else frames
        return extract_features(self.net, sources, frames, self.num_eval,
                                device=self.device, workers=0, progress=progress,
                                keep_crops=keep_crops)

    def _collect(self, inputs: list, sample_rate: int | None = None) -> tuple[list, list[int], int]:
        """Distinct sources (paths, or 16 kHz int16-scale float32 waveforms), each input's
        index and the eval_frames for this call: 0 (whole utterances) when most inputs are
        shorter than one crop and ``eval_short="auto"`` (capsv.evaluation.policy), with a warning;
        otherwise ``self.eval_frames``, warning when some inputs are short (as ``capsv eval``)."""
        default_rate = self.sample_rate if sample_rate is None else _checked_rate(sample_rate)
        reset_rate_warnings()             # each call says once per file what it resampled
        sources, seen, index, lengths = [], {}, [], {}
        for number, item in enumerate(inputs):
            key = os.path.normpath(os.fspath(item)) if _is_path(item) else ("array", id(item))
            if key not in seen:
                if _is_path(item):
                    # missing, unreadable or empty files fail here; other rates warn here
                    lengths[key] = audio_info(key).frames_16k
                    sources.append(key)
                else:
                    wave = _waveform_at_16k(item, default_rate, self.input_scale, f"input {number}")
                    lengths[key] = len(wave)
                    sources.append(wave)
                seen[key] = len(sources) - 1
            index.append(seen[key])
        frames, note = choose_eval_frames(lengths.values(), self.eval_frames, self.eval_short,
                                          "inputs")
        message = note or short_files_message(lengths, self.eval_frames, "inputs")
        if message:
            warnings.warn(message, UserWarning, stacklevel=4)
        return sources, index, frames


def _is_path(item) -> bool:
    return isinstance(item, (str, os.PathLike))


def _checked_rate(rate) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise InputError(f"sample_rate must be a positive integer (Hz), got {rate!r}")
    return int(rate)


def _waveform_at_16k(item, default_rate: int | None, input_scale: str, name: str) -> np.ndarray:
    """A waveform input -> mono float32 at 16 kHz on the int16 scale.

    ``item`` is an array/tensor (its rate is ``default_rate``) or a ``(waveform, rate)``
    tuple; (channels, samples) waveforms of such a tuple are averaged, as torchaudio gives them.
    """
    if isinstance(item, tuple) and len(item) == 2 and not isinstance(item[1], (np.ndarray, torch.Tensor)):
        wave, rate = item
        rate = _checked_rate(rate)
        if isinstance(wave, torch.Tensor):
            wave = wave.detach().cpu().numpy()
        if isinstance(wave, np.ndarray) and wave.ndim == 2 and wave.shape[0] <= 8 < wave.shape[1]:
            wave = wave.astype(np.float32).mean(axis=0)       # torchaudio: (channels, samples)
    else:
        wave, rate = item, default_rate
    samples = to_int16_scale(wave, input_scale, name)
    if rate is None:
        raise InputError(f"{name}: a waveform without its sample rate; pass sample_rate=16000 "
                         "(or the rate it has: it is resampled to 16 kHz), or a (waveform, "
                         "rate) tuple")
    return resample(samples, rate) if rate != SAMPLE_RATE else samples


def to_int16_scale(x, input_scale: str = "auto", name: str = "input") -> np.ndarray:
    """A waveform (numpy array or tensor, (samples,)) -> float32 on the int16 scale.

    See the module docstring for the rules; ``input_scale`` is "auto", "int16" or "unit".
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise InputError(f"{name}: expected a path, a numpy array or a torch tensor, "
                         f"got {type(x).__name__}")
    if x.ndim != 1:
        raise InputError(f"{name}: expected a mono waveform of shape (samples,), got shape "
                         f"{x.shape}; average the channels first")
    if x.size == 0:
        raise InputError(f"{name}: the waveform is empty")
    if x.dtype.kind in "iu":
        if x.dtype != np.int16 and (x.min() < -32768 or x.max() > 32767):
            raise InputError(f"{name}: {x.dtype} samples outside the int16 range; pass int16 "
                             "PCM or float samples")
        return x.astype(np.float32)
    if x.dtype.kind != "f":
        raise InputError(f"{name}: unsupported sample type {x.dtype}")
    if not np.isfinite(x).all():
        raise InputError(f"{name}: the waveform holds NaN or infinite samples")
    wave = x.astype(np.float32)
    if input_scale == "unit":
        return wave * np.float32(INT16_SCALE)
    if input_scale == "auto" and 0 < np.abs(wave).max() <= 1.0:
        warnings.warn(f"{name}: float samples within [-1, 1]; multiplied by 32768 because the "
                      "model expects the int16 scale (pass input_scale='unit' or 'int16' to "
                      "say which you give)", stacklevel=5)
        return wave * np.float32(INT16_SCALE)
    return wave
