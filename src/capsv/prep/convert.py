"""VoxCeleb2 ``.m4a`` (AAC) -> 16 kHz mono 16-bit WAV with PyAV: no ffmpeg binary, parallel,
a bad file is reported and skipped, and a killed run never leaves half a WAV behind.

This module imports no torch, so worker processes start quickly.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
import os
import sys
import wave
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
from tqdm import tqdm

from ..utils import atomic_path, atomic_write_text
from ..errors import CapsvError

from ..protocol import SAMPLE_RATE
from ..special_files import not_regular


T = TypeVar("T")
R = TypeVar("R")


def parallel_map(func: Callable[[T], R], items: list[T], workers: int, desc: str,
                 progress: bool = True, unit: str = "file") -> Iterator[R]:
    """Yield ``func(item)`` for every item, in completion order, with a progress bar.

    ``workers > 1`` runs ``func`` (a module-level function) in that many processes, started
    with "forkserver" so they do not inherit the parent's threads (download threads, tqdm).
    """
    with tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                yield func(item)
                bar.update()
            return
        context = _worker_context()
        chunksize = max(1, min(32, len(items) // (workers * 8)))
        chunks = [items[i:i + chunksize] for i in range(0, len(items), chunksize)]
        # An executor, not a Pool: when a worker dies (OOM-killed) a Pool waits forever for
        # its result, an executor fails every pending future with BrokenProcessPool.
        with ProcessPoolExecutor(min(workers, len(items)), mp_context=context) as pool:
            pending = []
            try:
                # Inside the try: a worker that dies early breaks the pool during submit() too.
                for chunk in chunks:
                    pending.append(pool.submit(_map_chunk, func, chunk))
                for done in as_completed(pending):
                    for result in done.result():
                        yield result
                        bar.update()
            except BrokenProcessPool:
                raise WorkerDied(f"{desc}: a worker process died (killed by the system, "
                                 "probably for lack of memory); what finished is kept: rerun "
                                 "with fewer --workers to do the rest") from None
            finally:
                for future in pending:
                    future.cancel()


class WorkerDied(CapsvError):
    """A process of :func:`parallel_map` died before returning its results."""


def _map_chunk(func: Callable[[T], R], chunk: list[T]) -> list[R]:
    return [func(item) for item in chunk]


def _worker_context():
    """"forkserver" where available (a fork of a clean server process), else "spawn".

    The server preloads this module rather than the caller's ``__main__``, so workers start fast.
    (As with any spawn/forkserver pool, a script that runs this must guard its entry point with
    ``if __name__ == "__main__":``.)
    """
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return context
    return multiprocessing.get_context("spawn")


def decode_to_16k_mono(path: str) -> np.ndarray:
    """Decode any audio file PyAV can read to 16 kHz mono int16 samples, shape (n,).

    VoxCeleb2's AAC decodes to 16 kHz mono float; those samples are converted here the way
    libswresample does (round to nearest, clip), which is twice as fast as running its
    resampler frame by frame. Anything else goes through libswresample.
    """
    import av  # imported here: only conversion needs it

    with av.open(path) as container:
        if not container.streams.audio:
            raise ValueError("the file has no audio stream")
        stream = container.streams.audio[0]
        frames = list(container.decode(stream))
    if not frames:
        raise ValueError("no audio samples could be decoded")
    first = frames[0]
    if (all(f.format.name in ("flt", "fltp") and f.sample_rate == SAMPLE_RATE
            and len(f.layout.channels) == 1 for f in frames)):
        floats = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
        samples = np.clip(np.rint(floats * 32768.0), -32768, 32767).astype(np.int16)
    else:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        chunks = [out.to_ndarray().reshape(-1) for f in frames for out in resampler.resample(f)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        samples = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    if samples.size == 0:
        raise ValueError(f"no audio samples could be decoded ({first.format.name})")
    return samples.astype(np.int16, copy=False)


def decode_with_swresample(path: str) -> np.ndarray:
    """The same decode through libswresample only (the reference the fast path must match)."""
    import av

    with av.open(path) as container:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        chunks = [out.to_ndarray().reshape(-1) for f in container.decode(audio=0)
                  for out in resampler.resample(f)]
        chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
    return np.concatenate(chunks).astype(np.int16, copy=False)


def write_wav_atomic(path: str, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write mono 16-bit PCM WAV (samples (n,) int16) via a hidden temporary file, then rename."""
    # No fsync: a conversion writes up to a million clips, and a rerun redoes a lost one.
    with atomic_path(path, fsync=False) as tmp:      # the umask's mode, not mkstemp's 0600
        # the standard library's writer: ~8x faster than libsndfile for short clips
        with wave.open(tmp, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(np.asarray(samples, dtype="<i2").tobytes())


def wav_path_for(m4a_path: str) -> str:
    return os.path.splitext(m4a_path)[0] + ".wav"


def convert_one(m4a_path: str) -> tuple[str, str | None]:
    """Convert one file beside itself; return (path, None) or (path, reason it failed)."""
    special = not_regular(m4a_path)
    if special:                   # a FIFO would block the decoder forever
        return m4a_path, f"not a regular file: it is {special}"
    try:
        write_wav_atomic(wav_path_for(m4a_path), decode_to_16k_mono(m4a_path))
        return m4a_path, None
    except Exception as exc:  # any decoder error: report it, keep going with the others
        text = str(exc).replace("\n", " ").strip() or type(exc).__name__
        return m4a_path, f"{type(exc).__name__}: {text}"


def find_files(root: str, extension: str) -> list[str]:
    """Every file under ``root`` ending in ``extension``, sorted; hidden folders are skipped."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(folder, f) for f in files
                  if f.lower().endswith(extension) and not f.startswith(".")]
    return sorted(found)


@dataclass
class ConvertReport:
    converted: int = 0
    skipped: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def convert_tree(roots: Iterable[str], workers: int, progress: bool = True,
                 failures_path: str | None = None) -> ConvertReport:
    """Convert every ``.m4a`` under ``roots`` that has no ``.wav`` yet.

    Failures are listed in ``failures_path`` (``<m4a path>\\t<reason>`` per line), rewritten on
    every run, and removed when a run has none.
    """
    sources = [p for root in roots if os.path.isdir(root) for p in find_files(root, ".m4a")]
    todo = [p for p in sources if not os.path.isfile(wav_path_for(p))]
    report = ConvertReport(skipped=len(sources) - len(todo))
    for path, error in parallel_map(convert_one, todo, workers, desc="convert m4a", progress=progress):
        if error is None:
            report.converted += 1
        else:
            report.failures.append((path, error))
            tqdm.write(f"convert: {path}: {error}", file=sys.stderr)
    report.failures.sort()
    if failures_path:
        if report.failures:
            atomic_write_text(failures_path, "".join(f"{p}\t{e}\n" for p, e in report.failures))
        elif os.path.exists(failures_path):
            os.unlink(failures_path)
    return report
