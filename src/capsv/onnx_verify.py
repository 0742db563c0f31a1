"""Score two recordings with the graphs of ``capsv export --format onnx``, without capsv.

Needs only numpy and onnxruntime (and Python's standard library): ``capsv export`` copies this
file into the export folder, beside ``export.json`` and the graphs, so a deployment can start
from it. It reproduces ``capsv verify`` (same crops, same score) for 16 kHz 16-bit PCM WAV:

    python verify_onnx.py alice_1.wav alice_2.wav [--dir EXPORT_DIR]

prints ``score <value>`` and, when export.json holds a threshold, the decision. The recipe,
from export.json's "recipe": 16 kHz mono samples as float32 on the int16 scale; each file
gives ``num_crops`` crops of ``crop_samples`` samples (a shorter file is zero-padded by
floor((crop - n + 1) / 2) on both sides; crop starts are int(linspace(0, padded - crop, k)));
TAP/SAP: the crops' embeddings scaled to unit length and averaged, score = dot product of the
two averages (the mean of the crops' cosines); CAP: the frames graph per file, then the pair
head with file 1 as support and file 2 as query, whose ``score`` output is the score.
Audio at other rates or in other formats: convert it to 16 kHz 16-bit WAV first (or use capsv,
which resamples).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import wave

import numpy as np
import onnxruntime as ort


def read_wav_16k(path: str) -> np.ndarray:
    """A 16 kHz 16-bit PCM WAV -> mono float32 (n,) on the int16 scale (channels averaged)."""
    with wave.open(path, "rb") as f:
        if f.getframerate() != 16000 or f.getsampwidth() != 2:
            raise SystemExit(f"{path}: {f.getframerate()} Hz, {8 * f.getsampwidth()}-bit; this "
                             "example reads 16 kHz 16-bit PCM WAV: convert it first")
        channels = f.getnchannels()
        data = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2").astype(np.float32)
    return data.reshape(-1, channels).mean(axis=1, dtype=np.float32)


def crops_of(audio: np.ndarray, crop: int, count: int) -> np.ndarray:
    """(count, crop) evaluation crops; crop 0 means the whole file as one crop."""
    if crop <= 0:
        return audio[None, :]
    if len(audio) <= crop:
        pad = (crop - len(audio) + 1) // 2
        audio = np.pad(audio, (pad, pad))
    starts = np.linspace(0, len(audio) - crop, num=count).astype(np.int64)
    return np.stack([audio[s:s + crop] for s in starts])


class ExportedModel:
    """The graphs of an export folder and the recipe of its export.json."""

    def __init__(self, folder: str):
        with open(os.path.join(folder, "export.json"), encoding="utf-8") as f:
            self.manifest = json.load(f)
        self.recipe = self.manifest["recipe"]
        self.sessions = {name: ort.InferenceSession(os.path.join(folder, entry["file"]),
                                                    providers=["CPUExecutionProvider"])
                         for name, entry in self.manifest["graphs"].items()}

    def crops(self, path: str) -> np.ndarray:
        return crops_of(read_wav_16k(path), self.recipe["crop_samples"], self.recipe["num_crops"])

    def score(self, path1: str, path2: str) -> float:
        crops1, crops2 = self.crops(path1), self.crops(path2)
        if "embedding" in self.sessions:                         # TAP / SAP
            return float(self.file_vector(crops1) @ self.file_vector(crops2))
        frames1 = self.sessions["frames"].run(None, {"waveform": crops1})[0]
        frames2 = self.sessions["frames"].run(None, {"waveform": crops2})[0]
        _, _, score = self.sessions["cap_head"].run(None, {"support": frames1, "query": frames2})
        return float(score)

    def file_vector(self, crops: np.ndarray) -> np.ndarray:
        """The mean of the crops' unit-length embeddings (E,): dot products are scores."""
        emb = self.sessions["embedding"].run(None, {"waveform": crops})[0].astype(np.float64)
        emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb.mean(axis=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("audio1")
    parser.add_argument("audio2")
    parser.add_argument("--dir", default=os.path.dirname(os.path.abspath(__file__)),
                        help="the export folder (default: this script's folder)")
    args = parser.parse_args(argv)
    model = ExportedModel(args.dir)
    score = model.score(args.audio1, args.audio2)
    print(f"score {score:.8f}")
    threshold = model.manifest.get("eer_threshold")
    if threshold is not None:
        same = score >= threshold
        print(f"decision {'same-speaker' if same else 'different-speaker'} "
              f"(score {'>=' if same else '<'} threshold {threshold:.6g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
