"""Training input at VoxCeleb2 scale, without audio: list parsing, TrainList memory, sampler
build and epoch plan, and the per-item cost of TrainCrops' speaker index (issue 14).

A VoxCeleb2-dev-sized label set (1,092,009 utterances of 5,994 speakers) and a 59,940-line
one over the same speakers (10 each) are built in memory; the list parse is timed from a
temporary list file (``check_files=False``: the file checks need the files, see
``--check-files``). The audio reader is replaced by a function that returns zeros, so the
per-item time is the index and bookkeeping alone.

    python bench/bench_train_input.py [--items 2000] [--check-files 100000]

``--check-files N`` also times the file checks of N listed ``.wav`` files present as
``.wav``, as ``.m4a`` twins (VoxCeleb2's AAC) and as symlinks, against one
``os.path.isfile`` per file.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import tracemalloc

import numpy as np

from common import Timer, median, row

from capsv.data import dataset as dataset_module
from capsv.data.dataset import TrainCrops, TrainList, _resolve_files
from capsv.data.sampler import SpeakerBatchSampler

SPEAKERS, UTTERANCES, SMALL_PER_SPEAKER = 5_994, 1_092_009, 10


def voxceleb_like_counts(rng: np.random.Generator) -> np.ndarray:
    """Utterances per speaker (S,), summing to UTTERANCES, spread like VoxCeleb2's (min ~20)."""
    weights = rng.lognormal(0.0, 0.6, SPEAKERS)
    counts = 20 + np.floor(weights / weights.sum() * (UTTERANCES - 20 * SPEAKERS)).astype(int)
    counts[: UTTERANCES - counts.sum()] += 1
    return counts


def list_lines(counts: np.ndarray, per_speaker: int | None = None) -> list[str]:
    """``idNNNNN <id>/<video>/<n>.wav`` lines, 8 utterances per video, sorted like VoxCeleb's."""
    lines = []
    for speaker, count in enumerate(counts):
        name = f"id{10000 + speaker:05d}"
        for n in range(count if per_speaker is None else per_speaker):
            lines.append(f"{name} {name}/v{speaker:05d}_{n // 8:04d}/{n % 8:05d}.wav\n")
    return lines


def python_objects(root) -> int:
    """Python objects reachable from ``root`` (what a forked worker's reference counting
    touches); numpy buffers are one object each whatever their size."""
    seen, stack = set(), [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return len(seen)


def parse(lines: list[str], tmp: str, name: str) -> tuple[TrainList, float, float, float]:
    """(the list, seconds of TrainList.read, MB it holds, MB at its peak while reading)."""
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.writelines(lines)
    with Timer() as t:
        train_list = TrainList.read(path, "/data/voxceleb2", check_files=False)
    del train_list
    gc.collect()
    tracemalloc.start()
    train_list = TrainList.read(path, "/data/voxceleb2", check_files=False)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return train_list, t.seconds, held / 2**20, peak / 2**20


def sampler_times(labels, batch_size: int, n_speakers: int,
                  max_seg: int) -> tuple[float, float, int]:
    with Timer() as t:
        sampler = SpeakerBatchSampler(labels, batch_size, n_speakers, max_seg, seed=1)
    plans = []
    for epoch in (1, 2, 3):
        with Timer() as p:
            batches = sampler.plan(epoch).batches
        plans.append(p.seconds)
    return t.seconds, median(plans), len(batches)


def per_item_seconds(train_list: TrainList, items: int) -> float:
    crops = TrainCrops(train_list.paths, train_list.labels, max_frames=20, seed=0)
    indices = np.random.default_rng(0).integers(0, len(train_list.labels), items).tolist()
    with Timer() as t:
        for index in indices:
            crops[index]
    return t.seconds / items


def isfile_per_file(paths: list[str]) -> tuple[list[str], int]:
    """The file check before issue 14: one ``os.path.isfile`` per file (and per twin)."""
    resolved, substituted = [], 0
    for path in paths:
        twin = os.path.splitext(path)[0] + ".m4a"
        if os.path.isfile(path):
            resolved.append(path)
        elif path.lower().endswith(".wav") and os.path.isfile(twin):
            resolved.append(twin)
            substituted += 1
    return resolved, substituted


def check_files_seconds(files: int, tmp: str, kind: str) -> tuple[float, float]:
    """(folder listings, one isfile per file) seconds for ``files`` listed ``.wav`` files,
    8 per folder, on disk as empty ``.wav`` files, as ``.m4a`` twins, or as symlinks."""
    root = os.path.join(tmp, kind)
    target = os.path.join(tmp, "target.wav")
    open(target, "w").close()
    paths = []
    for n in range(files):
        folder = os.path.join(root, f"id{n // 800:05d}", f"v{n // 8:07d}")
        if n % 8 == 0:
            os.makedirs(folder)
        path = os.path.join(folder, f"{n % 8:05d}.wav")
        if kind == "symlink":
            os.symlink(target, path)
        else:
            open(path[:-4] + (".m4a" if kind == "m4a" else ".wav"), "w").close()
        paths.append(path)
    listing, per_file = [], []
    for _ in range(3):                     # alternating, medians: the page cache is warm for both
        with Timer() as t:
            new = _resolve_files("list.txt", root, paths)
        listing.append(t.seconds)
        with Timer() as t:
            old = isfile_per_file(paths)
        per_file.append(t.seconds)
        assert new == old
    return median(listing), median(per_file)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=2000, help="items timed per list size")
    parser.add_argument("--check-files", type=int, default=0,
                        help="also time the file checks over this many real empty files")
    args = parser.parse_args()
    counts = voxceleb_like_counts(np.random.default_rng(0))
    dataset_module.load_random_crop = lambda path, max_frames, rng, *rest: np.zeros(8, np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        for name, lines in (("small", list_lines(counts, SMALL_PER_SPEAKER)),
                            ("large", list_lines(counts))):
            train_list, parse_s, held_mb, peak_mb = parse(lines, tmp, f"{name}.txt")
            objects = python_objects(train_list)
            print(f"{name}: {len(lines):,} lines; parse {parse_s:.2f} s; TrainList holds "
                  f"{held_mb:.1f} MB in {objects:,} Python objects (peak while reading "
                  f"{peak_mb:.0f} MB)", flush=True)
            row("train_input_list", list=name, lines=len(lines), parse_s=round(parse_s, 3),
                held_mb=round(held_mb, 1), peak_mb=round(peak_mb), python_objects=objects)
            for batch_size, n_speakers, max_seg in ((200, 2, 100), (200, 3, 3)):
                init_s, plan_s, batches = sampler_times(train_list.labels, batch_size, n_speakers,
                                                        max_seg)
                print(f"  sampler B={batch_size} M={n_speakers} max_seg={max_seg}: init "
                      f"{init_s:.3f} s, plan {plan_s:.3f} s/epoch, {batches} batches", flush=True)
                row("train_input_sampler", list=name, batch_size=batch_size, nSpeakers=n_speakers,
                    max_seg_per_spk=max_seg, init_s=round(init_s, 3), plan_s=round(plan_s, 3),
                    batches=batches)
            item_s = per_item_seconds(train_list, args.items)
            print(f"  TrainCrops per item (audio read stubbed): {item_s * 1e6:.1f} us", flush=True)
            row("train_input_item", list=name, item_us=round(item_s * 1e6, 1))
            del train_list
            gc.collect()
        for kind in ("wav", "m4a", "symlink") if args.check_files else ():
            listing, per_file = check_files_seconds(args.check_files, tmp, kind)
            print(f"file checks, {args.check_files:,} {kind} files: folder listings "
                  f"{listing:.2f} s, one isfile per file {per_file:.2f} s", flush=True)
            row("train_input_check_files", files=args.check_files, kind=kind,
                listing_s=round(listing, 3), isfile_s=round(per_file, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
