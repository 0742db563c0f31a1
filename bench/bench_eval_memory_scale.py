"""Evaluation memory against the number of files (issue 14: VoxCeleb1-E/H has 145,160 files).

Each measurement runs ``evaluate_list`` in a fresh process on N synthetic files (8 trials a
file, twice VoxCeleb1-E's 580k trials over 145k files, so that already at 100 files the CAP
scorer's buffer is at its fixed 64 MB cap and the growth measured is per-file, not the
buffer filling up) with a randomly initialised
ResNetSE34L, at the paper protocol (10 crops of 350 frames) or on whole utterances, and
samples the process's *anonymous* resident memory (RssAnon + RssShmem of /proc/self/status,
every 5 ms, in a thread): pages of a memory-mapped feature store are page cache, which the
kernel reclaims, and do not count. The growth from the smallest to the largest N, per file,
is what the evaluation keeps per file; times 145,160 it projects VoxCeleb1-E.

    python bench/bench_eval_memory_scale.py                       # CAP, CAP whole, TAP; 100 and 400 files
    python bench/bench_eval_memory_scale.py --modes cap --caches :memory: default

``--caches``: ``default`` (a temporary disk store, what ``capsv eval`` does) and/or
``:memory:`` (features in RAM, the behaviour before the disk store). One extraction thread.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

VOXCELEB1_E_FILES = 145_160
MODES = {  # name: (encoder, eval_frames, seconds of audio per file (low, high))
    "cap": ("CAP", 350, (3.6, 4.0)),
    "cap_whole": ("CAP", 0, (2.0, 4.0)),
    "tap": ("TAP", 350, (3.6, 4.0)),
}


def anon_kb() -> int:
    """RssAnon + RssShmem of this process, kB."""
    total = 0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssShmem:")):
                total += int(line.split()[1])
    return total


class PeakSampler(threading.Thread):
    """The largest :func:`anon_kb` seen while running, sampled every ``period`` seconds."""

    def __init__(self, period: float = 0.005):
        super().__init__(daemon=True)
        self.period, self.peak, self.running = period, anon_kb(), True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, anon_kb())
            time.sleep(self.period)

    def stop(self) -> int:
        self.running = False
        self.join()
        return max(self.peak, anon_kb())


def write_corpus(root: str, n_files: int, seconds: tuple[float, float], trials_per_file: int = 8):
    """``n_files`` noise-like int16 files under ``root`` and a trial list over them."""
    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(n_files)
    names = []
    for i in range(n_files):
        name = f"spk{i % 50:02d}/{i:06d}.wav"
        os.makedirs(os.path.join(root, os.path.dirname(name)), exist_ok=True)
        n = int(16000 * rng.uniform(*seconds))
        sf.write(os.path.join(root, name), (rng.standard_normal(n) * 3000).astype(np.int16), 16000)
        names.append(name)
    pairs = set()
    while len(pairs) < min(n_files * trials_per_file, n_files * (n_files - 1) // 2):
        i, j = rng.integers(0, n_files, 2)
        if i != j and (j, i) not in pairs:
            pairs.add((int(i), int(j)))
    with open(os.path.join(root, "trials.txt"), "w") as f:
        for k, (i, j) in enumerate(sorted(pairs)):
            f.write(f"{k % 2} {names[i]} {names[j]}\n")
    return [os.path.join(root, n) for n in names]


def store_bytes_per_file(net, paths, eval_frames: int) -> float:
    """Disk use of the feature store per file, from a store of the first 8 files."""
    from capsv.evaluation.extract import extract_features
    feats = extract_features(net, paths[:8], eval_frames, 10, progress=False, cache=None,
                             keep_crops=False)
    try:
        return sum(m.nbytes for m in feats.store.maps.values()) / min(8, len(paths))
    finally:
        feats.close()


def child(mode: str, n_files: int, cache: str) -> None:
    import torch

    from capsv.evaluation.pipeline import evaluate_list
    from capsv.models import SpeakerNet

    torch.set_num_threads(1)
    encoder, eval_frames, seconds = MODES[mode]
    torch.manual_seed(0)
    net = SpeakerNet("ResNetSE34L", encoder).eval()
    with tempfile.TemporaryDirectory(dir=os.environ.get("CAPSV_BENCH_DIR")) as root:
        paths = write_corpus(root, n_files, seconds)
        disk = store_bytes_per_file(net, paths, eval_frames) if cache == "default" else 0.0
        before = anon_kb()
        sampler = PeakSampler()
        sampler.start()
        start = time.perf_counter()
        result = evaluate_list(net, os.path.join(root, "trials.txt"), root, eval_frames, 10,
                               progress=False, eval_cache=None if cache == "default" else cache)
        seconds_taken = time.perf_counter() - start
        peak = sampler.stop()
    print("ROW " + json.dumps({"bench": "eval_memory_scale", "mode": mode, "cache": cache,
                               "files": n_files, "trials": len(result.trials),
                               "anon_before_kb": before, "anon_peak_kb": peak,
                               "seconds": round(seconds_taken, 1),
                               "store_bytes_per_file": round(disk)}), flush=True)


# glibc keeps freed blocks below a threshold that it raises itself (up to 32 MB), so how much
# of the backbone's transient memory stays resident varies from run to run by tens of MB
# (measured: 180-340 MB at the same point of one TAP extraction). A fixed threshold returns
# them at once, and the peak then measures live memory (flat within 0.1 MB over 120 files).
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def measure(mode: str, n_files: int, cache: str, timeout: float = 3600,
            fixed_malloc: bool = False) -> dict:
    """One measurement in a fresh process; its result row."""
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(n_files), cache],
                         capture_output=True, text=True, timeout=timeout, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1",
                              **(FIXED_MALLOC if fixed_malloc else {})})
    line = [l for l in out.stdout.splitlines() if l.startswith("ROW ")][-1]
    return json.loads(line[4:])


def growth(small: dict, large: dict) -> dict:
    """kB of anonymous memory per added file, and its VoxCeleb1-E projection."""
    per_file = (large["anon_peak_kb"] - small["anon_peak_kb"]) / (large["files"] - small["files"])
    projected_gb = (large["anon_peak_kb"] + per_file * (VOXCELEB1_E_FILES - large["files"])) / 2**20
    return {"kb_per_file": round(per_file, 2), "voxceleb1_e_projected_gib": round(projected_gb, 2),
            "seconds_per_1000_files": round(1000 * large["seconds"] / large["files"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", nargs=3, metavar=("MODE", "FILES", "CACHE"), help=argparse.SUPPRESS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--sizes", type=int, nargs=2, default=[100, 400])
    parser.add_argument("--caches", nargs="+", default=["default"], choices=["default", ":memory:"])
    parser.add_argument("--fixed_malloc", action="store_true",
                        help="run the measurements with MALLOC_MMAP_THRESHOLD_=131072 (see FIXED_MALLOC)")
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    for mode in args.modes:
        for cache in args.caches:
            small, large = (measure(mode, n, cache, fixed_malloc=args.fixed_malloc)
                            for n in args.sizes)
            print("ROW " + json.dumps({"bench": "eval_memory_scale", "mode": mode, "cache": cache,
                                       "fixed_malloc": args.fixed_malloc,
                                       "sizes": args.sizes, **growth(small, large),
                                       "store_bytes_per_file": large["store_bytes_per_file"],
                                       "peaks_kb": [small["anon_peak_kb"], large["anon_peak_kb"]]}),
                  flush=True)


if __name__ == "__main__":
    main()
