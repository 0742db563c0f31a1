"""Stored embeddings: compute them for many files, write/read them, score trials from them.

File-level embedding (TAP/SAP): the mean of the file's unit-length crop embeddings, stored
scaled to **unit length** (so its dot product with another is their cosine, the convention of
WeSpeaker, SpeechBrain and NeMo), together with the mean's length (``norms``). The
``capsv eval`` score, the mean of the 10 x 10 crop cosine matrix, is the dot product of the
unscaled means: ``score = (e1 . e2) * norm1 * norm2``, which is what ``capsv score`` computes
(files without norms, written by older versions, hold the unscaled means: plain dot product).
CAP is pairwise: it stores frame features instead.

Formats, chosen by the output's extension:

- ``.npz``: ``keys`` (N,) str, ``meta`` (JSON str) and either ``embeddings`` (N, E) float32
  + ``norms`` (N,) float32 (TAP/SAP) or ``frames`` (N, crops, D, T_max) float32 +
  ``lengths`` (N,) (CAP; frames past a file's length are zero).
- ``.ark`` (Kaldi, with ``.scp`` beside it): one float32 vector per key, TAP/SAP only, and
  ``<name>.norms`` (``<key> <norm>`` lines); writing needs the optional ``kaldiio`` package.
  Read back through the ``.scp`` or the ``.ark`` by :mod:`capsv.evaluation.kaldi_io`, which refuses
  pickled entries and piped commands.

Keys: the file's path relative to the folder or list root, or the utterance id of a Kaldi
``wav.scp`` (``<utt-id> <path>`` lines, :func:`read_wav_scp`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import __version__
from . import kaldi_io
from ..audio import AUDIO_EXTENSIONS
from ..data.lists import read_wav_scp  # noqa: F401  (part of this module's interface)
from ..errors import CapsvError
from .extract import extract_features
from ..models import SpeakerNet
from ..utils import atomic_path
from ..protocol import EVAL_FRAMES



class EmbeddingError(CapsvError):
    pass


@dataclass
class EmbeddingSet:
    """``keys`` (N,) and ``embeddings`` (N, E) for TAP/SAP (unit length, with the
    lengths of the unscaled means in ``norms`` (N,); None for files of older versions), or
    ``frames`` + ``lengths`` for CAP."""
    keys: list[str]
    embeddings: np.ndarray | None = None
    frames: np.ndarray | None = None
    lengths: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    norms: np.ndarray | None = None

    def scoring_vectors(self) -> np.ndarray:
        """float64 (N, E) vectors whose dot products are the ``capsv eval`` scores."""
        emb = self.embeddings.astype(np.float64)
        return emb if self.norms is None else emb * self.norms.astype(np.float64)[:, None]

    def index(self) -> dict[str, int]:
        return {os.path.normpath(k): i for i, k in enumerate(self.keys)}


def find_audio(root: str) -> list[str]:
    """Audio files under ``root`` (recursively), as sorted paths relative to it."""
    if not os.path.isdir(root):
        raise EmbeddingError(f"{root}: directory not found")
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            if name.lower().endswith(AUDIO_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(folder, name), root))
    if not found:
        raise EmbeddingError(f"{root}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    return sorted(found)


def embed_files(net: SpeakerNet, root: str, keys: list[str], eval_frames: int = EVAL_FRAMES,
                num_eval: int = 10, device="cpu", workers: int = 0,
                progress: bool = True, paths: list[str] | None = None) -> EmbeddingSet:
    """Embeddings (TAP/SAP) or frame features (CAP) of ``root/key`` for every key (or of
    ``paths[i]`` stored under ``keys[i]``, e.g. a wav.scp's utterance ids)."""
    if paths is None:
        paths = [os.path.join(root, k) for k in keys]
    feats = extract_features(net, paths, eval_frames, num_eval, device=device, workers=workers,
                             progress=progress, keep_crops=False)
    meta = {"capsv_version": __version__, "model_config": dict(net.config),
            "eval_frames": eval_frames, "num_eval": num_eval,
            "content": "frames" if net.pairwise else "embeddings"}
    if not net.pairwise:
        means = feats.mean_embeddings(np.arange(len(keys))).float()
        norms = means.norm(dim=1)
        unit = means / norms.clamp_min(1e-12)[:, None]
        meta["normalisation"] = ("embeddings: unit length; norms: the length of the mean of the "
                                 "unit crop embeddings; capsv eval score = dot * norm1 * norm2")
        return EmbeddingSet(list(keys), embeddings=unit.cpu().numpy(), meta=meta,
                            norms=norms.cpu().numpy())
    lengths = np.array([feats.frames[i].shape[-1] for i in range(len(keys))], dtype=np.int64)
    first = feats.frames[0]
    frames = np.zeros((len(keys), first.shape[0], first.shape[1], lengths.max()), np.float32)
    for i in range(len(keys)):
        frames[i, :, :, :lengths[i]] = feats.frames[i].float().cpu().numpy()
    return EmbeddingSet(list(keys), frames=frames, lengths=lengths, meta=meta)


def _kaldiio():
    try:
        import kaldiio
    except ImportError:
        raise EmbeddingError("Kaldi ark/scp needs the optional package kaldiio "
                             "(pip install kaldiio); or write .npz") from None
    return kaldiio


def write_embeddings(path: str, data: EmbeddingSet) -> list[str]:
    """Write atomically; returns the files written."""
    if path.endswith(".ark"):
        if data.embeddings is None:
            raise EmbeddingError(f"{path}: CAP frame features are 3-D per file and do not fit "
                                 "a Kaldi ark of vectors; write .npz")
        kaldiio = _kaldiio()
        scp = path[:-4] + ".scp"
        with atomic_path(path) as tmp_ark, atomic_path(scp) as tmp_scp:
            with kaldiio.WriteHelper(f"ark,scp:{tmp_ark},{tmp_scp}") as writer:
                for key, vector in zip(data.keys, data.embeddings):
                    writer(_kaldi_key(key), vector)
            # the scp names the temporary ark: point it at the final name
            text = open(tmp_scp, encoding="utf-8").read().replace(tmp_ark, os.path.abspath(path))
            with open(tmp_scp, "w", encoding="utf-8") as f:
                f.write(text)
        if data.norms is None:
            return [path, scp]
        norms_path = norms_file_for(path)
        with atomic_path(norms_path) as tmp:
            with open(tmp, "w", encoding="utf-8") as f:
                f.writelines(f"{_kaldi_key(k)} {float(n):.9g}\n" for k, n in zip(data.keys, data.norms))
        return [path, scp, norms_path]
    if not path.endswith(".npz"):
        raise EmbeddingError(f"{path}: unknown output format; use .npz or .ark (Kaldi)")
    arrays = {"keys": np.array(data.keys, dtype=str), "meta": np.array(json.dumps(data.meta))}
    if data.embeddings is not None:
        arrays["embeddings"] = data.embeddings
        if data.norms is not None:
            arrays["norms"] = np.asarray(data.norms, np.float32)
    else:
        arrays["frames"], arrays["lengths"] = data.frames, data.lengths
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:       # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)
    return [path]


def _kaldi_key(key: str) -> str:
    if any(c.isspace() for c in key):
        raise EmbeddingError(f"key {key!r} holds whitespace, which Kaldi keys cannot; write .npz")
    return key


def read_embeddings(path: str) -> EmbeddingSet:
    """Read a .npz written by :func:`write_embeddings`, or a Kaldi .scp/.ark of vectors."""
    if not os.path.isfile(path):
        raise EmbeddingError(f"{path}: embedding file not found")
    if path.endswith((".scp", ".ark")):
        # capsv's own parser: kaldiio would unpickle PKL entries and run '|' commands
        items = kaldi_io.read_scp(path) if path.endswith(".scp") else kaldi_io.read_ark(path)
        if not items:
            raise EmbeddingError(f"{path}: no entries")
        vectors = [np.asarray(v, np.float32).ravel() for _, v in items]
        sizes = {len(v) for v in vectors}
        if len(sizes) > 1:
            raise EmbeddingError(f"{path}: the entries hold vectors of different sizes "
                                 f"({', '.join(map(str, sorted(sizes)[:5]))}); one embedding "
                                 "size per file is expected")
        return EmbeddingSet([k for k, _ in items], embeddings=np.stack(vectors))
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = [str(k) for k in z["keys"]]
            meta = json.loads(str(z["meta"])) if "meta" in z else {}
            if "embeddings" in z:
                return EmbeddingSet(keys, embeddings=z["embeddings"], meta=meta,
                                    norms=z["norms"] if "norms" in z else None)
            return EmbeddingSet(keys, frames=z["frames"], lengths=z["lengths"], meta=meta)
    except (OSError, ValueError, KeyError) as exc:
        raise EmbeddingError(f"{path}: not an embedding file written by `capsv embed` ({exc})") from None


def norms_file_for(path: str) -> str:
    """``x.ark`` / ``x.scp`` -> ``x.norms``: the lengths of the unscaled mean embeddings."""
    return os.path.splitext(path)[0] + ".norms"


def attach_norms(data: EmbeddingSet, path: str) -> EmbeddingSet:
    """Fill ``data.norms`` of a Kaldi ark/scp from the ``.norms`` file beside it, if any."""
    norms_path = norms_file_for(path)
    if data.norms is not None or not path.endswith((".ark", ".scp")) or not os.path.isfile(norms_path):
        return data
    table = {}
    with open(norms_path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                table[fields[0]] = float(fields[1])
            except (IndexError, ValueError):
                raise EmbeddingError(f"{norms_path}:{number}: expected '<key> <norm>'") from None
    missing = [k for k in data.keys if k not in table]
    if missing:
        raise EmbeddingError(f"{norms_path}: no norm for {len(missing)} key(s), e.g. "
                             f"{missing[0]}; re-run capsv embed")
    data.norms = np.array([table[k] for k in data.keys], np.float32)
    return data


def lookup(data: EmbeddingSet, keys: list[str], source: str, what: str = "trial list") -> np.ndarray:
    """Row indices of ``keys`` in ``data``; every missing key is reported at once."""
    index = data.index()
    missing = [k for k in keys if os.path.normpath(k) not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise EmbeddingError(f"{source}: {len(missing)} file(s) of the {what} have no stored "
                             f"embedding: {shown}; embed them with the same relative paths")
    return np.array([index[os.path.normpath(k)] for k in keys], dtype=np.int64)
