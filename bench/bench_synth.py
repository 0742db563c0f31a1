"""Synthetic corpus generation speed: seconds of audio written per second, 1 and 2 workers.

Generates the same corpus (default: the demo's training speakers cut to --speakers) into a
fresh temporary folder with 1 and then 2 worker processes, checks that both runs wrote the
same bytes, and prints per run:
  - audio seconds per wall-clock second (the real-time factor a user sees), and
  - audio seconds per CPU second of the parent and its workers (what one core delivers,
    which stays meaningful on a machine shared with other jobs).

    python bench/bench_synth.py [--speakers 12] [--workers 1 2]
"""
from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from capsv.prep.synth.corpus import DEMO_CORPUS, generate_corpus, preset  # noqa: E402


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def same_tree(a: str, b: str) -> bool:
    cmp = filecmp.dircmp(a, b)
    stack = [cmp]
    while stack:
        c = stack.pop()
        if c.left_only or c.right_only or c.funny_files:
            return False
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        if mismatch or errors:
            return False
        stack.extend(c.subdirs.values())
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=12, help="training speakers (default: 12)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    config = preset("demo", speakers=args.speakers, test_speakers=2, trials=20)
    print(f"corpus: {args.speakers + 2} speakers x {config.utterances} clips of "
          f"{config.min_seconds:g}-{config.max_seconds:g} s; machine: {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        outs = []
        for workers in args.workers:
            out = os.path.join(tmp, f"w{workers}")
            cpu, wall = cpu_seconds(), time.perf_counter()
            summary = generate_corpus(config, out, workers=workers, progress=False)
            cpu, wall = cpu_seconds() - cpu, time.perf_counter() - wall
            per_cpu = summary.written_seconds / cpu
            print(f"workers={workers}: {summary.written_seconds:.0f} s of audio in {wall:.1f} s wall "
                  f"-> {summary.written_seconds / wall:.0f} s/s ({summary.written_seconds / wall:.0f}x "
                  f"real time); {per_cpu:.0f} audio s per CPU s", flush=True)
            print("ROW " + json.dumps({"bench": "synth", "workers": workers,
                                       "audio_seconds": round(summary.written_seconds, 1),
                                       "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                                       "realtime_wall": round(summary.written_seconds / wall, 1),
                                       "realtime_per_cpu": round(per_cpu, 1)}), flush=True)
            outs.append(out)
        identical = all(same_tree(outs[0], o) for o in outs[1:])
        print(f"identical bytes across worker counts: {identical}")
        demo = DEMO_CORPUS.audio_seconds()
        print(f"the demo corpus holds ~{demo:.0f} s of audio")


if __name__ == "__main__":
    main()
