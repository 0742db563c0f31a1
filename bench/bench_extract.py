"""Embedding / frame-feature extraction for both backbones: files/s and real-time factor.

Each file is 8 s of 16 kHz audio, evaluated as in the paper: 10 crops of 350 frames.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import soundfile as sf
import torch

from common import Timer, row

from capsv.evaluation.extract import extract_features
from capsv.models import SpeakerNet


def make_files(folder: str, n: int, seconds: float = 8.0) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = os.path.join(folder, f"{i:04d}.wav")
        sf.write(path, (rng.standard_normal(int(16000 * seconds)) * 3000).astype(np.int16), 16000)
        paths.append(path)
    return paths


def main(n_files: int = 24) -> None:
    with tempfile.TemporaryDirectory() as folder:
        paths = make_files(folder, n_files)
        for model in ("ResNetSE34L", "ResNetSE34"):
            for encoder in ("TAP", "CAP"):
                net = SpeakerNet(model, encoder).eval()
                extract_features(net, paths[:2], progress=False)            # warm-up
                with Timer() as t:
                    extract_features(net, paths, progress=False)
                audio_seconds = 8.0 * n_files
                row("extract", model=model, encoder=encoder, files=n_files,
                    files_per_s=round(n_files / t.seconds, 2),
                    realtime_factor=round(audio_seconds / t.seconds, 1),
                    crops_per_s=round(10 * n_files / t.seconds, 1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=24)
    main(parser.parse_args().files)
