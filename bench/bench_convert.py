"""Throughput of `capsv prepare --convert` (m4a -> 16 kHz WAV with PyAV), 1 vs 2 workers.

Generates N short AAC .m4a files in a temporary folder (a VoxCeleb2-like speaker/video/clip
tree), converts them with 1 and with 2 worker processes (pool start-up included), and prints
one row per worker count. Usage: python bench/bench_convert.py [--files 500] [--seconds 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from capsv.audio import write_m4a
from capsv.prep.convert import convert_tree, find_files


def make_corpus(root: str, files: int, seconds: float) -> None:
    rng = np.random.default_rng(0)
    n = int(seconds * 16000)
    for i in range(files):
        folder = os.path.join(root, f"id{i // 50:05d}", f"video{i // 10 % 5}")
        os.makedirs(folder, exist_ok=True)
        t = np.arange(n) / 16000
        audio = np.sin(2 * np.pi * (150 + i % 300) * t) * 5000 + rng.normal(0, 500, n)
        write_m4a(os.path.join(folder, f"{i % 10:05d}.m4a"), audio.astype(np.int16))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=2.0, help="length of each file")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="capsv-bench-convert-")
    try:
        make_corpus(root, args.files, args.seconds)
        print(f"# {args.files} m4a files of {args.seconds:g} s, {os.cpu_count()} CPUs")
        print(f"{'workers':>7} {'files':>6} {'seconds':>8} {'files/s':>8} {'audio x realtime':>17}")
        for workers in args.workers:
            for wav in find_files(root, ".wav"):
                os.unlink(wav)
            start = time.perf_counter()
            report = convert_tree([root], workers, progress=False)
            elapsed = time.perf_counter() - start
            assert report.converted == args.files and not report.failures, report
            rate = args.files / elapsed
            print(f"{workers:>7} {args.files:>6} {elapsed:>8.2f} {rate:>8.1f} {rate * args.seconds:>17.0f}")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
