"""Augmentation data on disk (``capsv prepare --augment``): download MUSAN (OpenSLR 17) and the
simulated RIRs (OpenSLR 28), extract them and cut MUSAN into 5 s pieces. Idempotent: a finished
stage is skipped. :class:`capsv.data.augment.Augmenter` reads the result during training.
"""
from __future__ import annotations

import os

import soundfile as sf

from ..data.augment import AugmentError
from ..protocol import SAMPLE_RATE
from ..special_files import not_regular
from .archive import extract_archive
from .convert import find_files, parallel_map, write_wav_atomic
from .download import STATE_DIR, Downloader, RemoteFile

SEGMENT_SECONDS = 5

AUGMENT_FILES = [
    RemoteFile("rirs_noises.zip", "e6f48e257286e05de56413b4779d8ffb",
               "https://www.openslr.org/resources/28/rirs_noises.zip"),
    RemoteFile("musan.tar.gz", "0c472d4fc0c5141eca47ad1ffeb2a7df",
               "https://www.openslr.org/resources/17/musan.tar.gz"),
]


def prepare_augment(save_path: str, files: list[RemoteFile], base_url: str | None = None,
                    workers: int = 1, progress: bool = True, jobs: int = 2) -> tuple[str, str]:
    """Download, extract and cut the augmentation data; return (musan_path, rir_path).

    ``base_url`` (when given) replaces the URLs in ``files``. Every stage is skipped when done.
    """
    items = [RemoteFile(f.name, f.md5, None if base_url else f.url) for f in files]
    Downloader(save_path, base_url, jobs=jobs, progress=progress).fetch_all(items)
    for item in items:
        marker = os.path.join(save_path, STATE_DIR, "extracted", item.name)
        if not os.path.isfile(marker):
            extract_archive(os.path.join(save_path, item.name), save_path, progress=progress)
            os.makedirs(os.path.dirname(marker), exist_ok=True)
            open(marker, "w").close()
    musan, rirs = os.path.join(save_path, "musan"), os.path.join(save_path, "RIRS_NOISES", "simulated_rirs")
    for folder in (musan, rirs):
        if not os.path.isdir(folder):
            raise AugmentError(f"{folder}: not found after extraction; are the archives MUSAN "
                               "(musan/...) and RIRS_NOISES (RIRS_NOISES/...)?")
    split = os.path.join(save_path, "musan_split")
    split_musan(musan, split, workers, progress)
    return split, rirs


def split_musan(musan_dir: str, out_dir: str, workers: int = 1, progress: bool = True) -> int:
    """Cut every MUSAN WAV into 5 s pieces ``<out>/<kind>/<set>/<name>/00000.wav`` (a shorter
    file is kept whole; a trailing piece under 5 s is dropped). Returns the pieces written."""
    done = os.path.join(out_dir, ".capsv-split-done")
    if os.path.isfile(done):
        return 0
    sources = find_files(musan_dir, ".wav")
    if not sources:
        raise AugmentError(f"{musan_dir}: no .wav files to cut")
    jobs = [(src, os.path.join(out_dir, os.path.splitext(os.path.relpath(src, musan_dir))[0]))
            for src in sources]
    written, failures = 0, []
    for count, error in parallel_map(_cut_one, jobs, workers, desc="cut musan", progress=progress):
        written += count
        if error:
            failures.append(error)
    if failures:
        raise AugmentError(f"{len(failures)} MUSAN files could not be cut, e.g. {failures[0]}")
    open(done, "w").close()
    return written


def _cut_one(job: tuple[str, str]) -> tuple[int, str | None]:
    source, folder = job
    segment = SEGMENT_SECONDS * SAMPLE_RATE
    try:
        special = not_regular(source)
        if special:
            raise AugmentError(f"is {special}, not an audio file")
        info = sf.info(source)
        starts = range(0, max(info.frames - segment, 0) + 1, segment)
        targets = [os.path.join(folder, f"{i:05d}.wav") for i in range(len(starts))]
        if all(os.path.isfile(t) for t in targets):
            return 0, None
        data, rate = sf.read(source, dtype="int16", always_2d=True)
        for start, target in zip(starts, targets):
            if not os.path.isfile(target):
                write_wav_atomic(target, data[start:start + segment, 0], rate)
        return len(targets), None
    except Exception as exc:
        return 0, f"{source}: {exc}"
