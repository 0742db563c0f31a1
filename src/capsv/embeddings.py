"""Stored embeddings: compute them for many files, write/read them, score trials from them.

File-level embedding (TAP/SAP) = the mean of the file's unit-length crop embeddings, so the
dot product of two stored embeddings is exactly the ``capsv eval`` score (the mean of the
10 x 10 crop cosine matrix). CAP is pairwise: it stores frame features instead.

Formats, chosen by the output's extension:

- ``.npz``: ``keys`` (N,) str, ``meta`` (JSON str) and either ``embeddings`` (N, E) float32
  (TAP/SAP) or ``frames`` (N, crops, D, T_max) float32 + ``lengths`` (N,) (CAP; frames past
  a file's length are zero).
- ``.ark`` (Kaldi, with ``.scp`` beside it): one float32 vector per key, TAP/SAP only;
  writing needs the optional ``kaldiio`` package. Read back through the ``.scp`` or the
  ``.ark`` by :mod:`capsv.kaldi_io`, which refuses pickled entries and piped commands.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from . import __version__, kaldi_io
from .errors import CapsvError
from .evaluate import extract_features
from .models import SpeakerNet
from .utils import atomic_path

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


class EmbeddingError(CapsvError):
    pass


@dataclass
class EmbeddingSet:
    """``keys`` (N,) and ``embeddings`` (N, E) for TAP/SAP, or ``frames`` + ``lengths`` for CAP."""
    keys: list[str]
    embeddings: np.ndarray | None = None
    frames: np.ndarray | None = None
    lengths: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

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


def embed_files(net: SpeakerNet, root: str, keys: list[str], eval_frames: int = 350,
                num_eval: int = 10, device="cpu", workers: int = 0,
                progress: bool = True) -> EmbeddingSet:
    """Embeddings (TAP/SAP) or frame features (CAP) of ``root/key`` for every key."""
    paths = [os.path.join(root, k) for k in keys]
    feats = extract_features(net, paths, eval_frames, num_eval, device=device, workers=workers,
                             progress=progress, keep_crops=False)
    meta = {"capsv_version": __version__, "model_config": dict(net.config),
            "eval_frames": eval_frames, "num_eval": num_eval,
            "content": "frames" if net.pairwise else "embeddings"}
    if not net.pairwise:
        emb = feats.mean_embeddings(np.arange(len(keys)))
        return EmbeddingSet(list(keys), embeddings=emb.float().cpu().numpy(), meta=meta)
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
        return [path, scp]
    if not path.endswith(".npz"):
        raise EmbeddingError(f"{path}: unknown output format; use .npz or .ark (Kaldi)")
    arrays = {"keys": np.array(data.keys, dtype=str), "meta": np.array(json.dumps(data.meta))}
    if data.embeddings is not None:
        arrays["embeddings"] = data.embeddings
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
                return EmbeddingSet(keys, embeddings=z["embeddings"], meta=meta)
            return EmbeddingSet(keys, frames=z["frames"], lengths=z["lengths"], meta=meta)
    except (OSError, ValueError, KeyError) as exc:
        raise EmbeddingError(f"{path}: not an embedding file written by `capsv embed` ({exc})") from None


def lookup(data: EmbeddingSet, keys: list[str], source: str, what: str = "trial list") -> np.ndarray:
    """Row indices of ``keys`` in ``data``; every missing key is reported at once."""
    index = data.index()
    missing = [k for k in keys if os.path.normpath(k) not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise EmbeddingError(f"{source}: {len(missing)} file(s) of the {what} have no stored "
                             f"embedding: {shown}; embed them with the same relative paths")
    return np.array([index[os.path.normpath(k)] for k in keys], dtype=np.int64)
