"""Training crops/s from m4a files: whole-file decode (before issue 14) against seek + partial
decode (now), in one process, alternated so both see the same machine load.

    PYTHONPATH=src python bench/bench_m4a_crops.py [--seconds 4]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from capsv.audio import crop_samples, load_m4a, load_random_crop, random_crop, write_m4a

MAX_FRAMES = 200                                 # 2 s crops


def _speechlike(seconds: float, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    noise = 0.05 * np.random.default_rng(0).standard_normal(len(t))
    return np.clip(0.25 * np.sin(2 * np.pi * 440 * t) * np.sin(2 * np.pi * 0.7 * t) + noise, -1, 1)


def _whole_decode_crop(path: str, rng: np.random.Generator) -> np.ndarray:
    return random_crop(load_m4a(path), MAX_FRAMES, rng)


def _seek_crop(path: str, rng: np.random.Generator) -> np.ndarray:
    return load_random_crop(path, MAX_FRAMES, rng)


def _rate(read, path: str, seconds: float) -> float:
    rng, done, began = np.random.default_rng(0), 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        assert read(path, rng).shape == (crop_samples(MAX_FRAMES),)
        done += 1
    return done / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for length in (8, 60):
            path = os.path.join(tmp, f"{length}s.m4a")
            write_m4a(path, _speechlike(length))
            whole, seek = [], []
            for _ in range(args.rounds):
                whole.append(_rate(_whole_decode_crop, path, args.seconds))
                seek.append(_rate(_seek_crop, path, args.seconds))
            print(f"{length:3d} s m4a, 2 s crops: whole decode {np.mean(whole):7.1f} crops/s, "
                  f"seek {np.mean(seek):7.1f} crops/s (x{np.mean(seek) / np.mean(whole):.1f}), "
                  "one process")


if __name__ == "__main__":
    main()
