"""Training data: the train list, random crops read from disk, and the DataLoader.

- :class:`TrainList` parses ``<speaker> <path>`` lines, gives each speaker an index (sorted
  names, like the reference) and checks that *every* listed file exists before training
  starts. A listed ``.wav`` that is absent while the ``.m4a`` beside it exists is read from
  the ``.m4a``, so VoxCeleb2 trains from the AAC files with the official list.
- :class:`TrainCrops` returns one random crop of ``max_frames`` per index, reading only the
  samples it needs (WAV/FLAC: seek + read; m4a: decoded with PyAV). The crop's randomness is
  drawn from ``default_rng([seed, epoch, index])``: the same data whatever the number of
  worker processes, and identical after a resume.
- :func:`make_train_loader` combines them with :class:`~capsv.data.sampler.SpeakerBatchSampler`
  in a ``torch.utils.data.DataLoader`` with worker processes.
"""
from __future__ import annotations

import os
import posixpath
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ..audio import AudioError, load_random_crop
from ..errors import CapsvError
from ..protocol import HOP, crop_samples
from ..utils import file_sha256
from ..workers import start_worker
from .lists import KALDI_TRAIN_FILES, is_kaldi_data_dir, read_kaldi_data_dir, read_train_list
from .sampler import SpeakerBatchSampler, SpeakerIndex
from .speed import add_speed_speakers, speaker_speed, speed_input_length, speed_perturb


class TrainDataError(CapsvError):
    """Unusable training data, reported before any training step."""


class PathArray(Sequence):
    """An immutable sequence of paths (``str`` on indexing) kept as one byte string + offsets.

    A million-line train list as a list of ``str`` is a million Python objects; a forked
    DataLoader worker that reads them bumps their reference counts and so copies every page
    they live on (the known PyTorch "copy-on-read" pitfall). Here the paths are two objects,
    whatever their number. Encoded with ``surrogatepass``: any ``str`` comes back unchanged.
    """

    def __init__(self, blob: bytes, offsets: np.ndarray):
        self._blob, self._offsets = blob, offsets      # path i = blob[offsets[i]:offsets[i + 1]]

    @classmethod
    def from_strings(cls, paths: Iterable[str]) -> "PathArray":
        paths = list(paths)
        joined = "".join(paths)
        if joined.isascii():                        # the usual case: lengths in bytes = in chars
            blob, lengths = joined.encode("ascii"), map(len, paths)
            del joined
        else:
            encoded = [path.encode("utf-8", "surrogatepass") for path in paths]
            blob, lengths = b"".join(encoded), map(len, encoded)
        offsets = np.zeros(len(paths) + 1, np.int64)
        np.cumsum(np.fromiter(lengths, np.int64, len(paths)), out=offsets[1:])
        return cls(blob, offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]             # negative indices; IndexError past the end
        start, end = self._offsets[index], self._offsets[index + 1]
        return self._blob[start:end].decode("utf-8", "surrogatepass")

    def __repr__(self) -> str:
        return f"PathArray({len(self)} paths, {len(self._blob)} bytes)"


@dataclass
class TrainList:
    """The parsed train list: absolute paths, speaker index per utterance, speaker names.

    ``paths`` is a :class:`PathArray` (a sequence of ``str``) and ``labels`` an (N,) int64
    array: a 1 M-line list stays a handful of Python objects (see :class:`PathArray`)."""

    list_path: str
    paths: PathArray
    labels: np.ndarray
    speakers: list[str]
    substituted_m4a: int = 0

    @property
    def n_speakers(self) -> int:
        return len(self.speakers)

    def sha256(self) -> str:
        if is_kaldi_data_dir(self.list_path):
            return "".join(file_sha256(os.path.join(self.list_path, f)) for f in KALDI_TRAIN_FILES)
        return file_sha256(self.list_path)

    @property
    def speeds(self) -> np.ndarray:
        """(n_speakers,) the playback speed of each speaker's crops (1.0 but for the speakers
        :func:`~capsv.data.speed.add_speed_speakers` made)."""
        return np.array([speaker_speed(name) for name in self.speakers], dtype=np.float64)

    @classmethod
    def read(cls, list_path: str, train_path: str, check_files: bool = True,
             speeds: tuple[float, ...] = ()) -> "TrainList":
        """``speeds`` (``--speed_perturb``: 0.9 and 1.1): each utterance also serves at these
        speeds, as new speakers (the speaker count triples)."""
        # a Kaldi data directory (wav.scp + utt2spk) serves as a train list too
        items = read_kaldi_data_dir(list_path) if is_kaldi_data_dir(list_path) else read_train_list(list_path)
        if speeds:
            items = add_speed_speakers(items, speeds)
        names, relpaths = [speaker for speaker, _ in items], [rel for _, rel in items]
        del items                                   # 1 M tuples: gone before the paths are built
        speakers = sorted(set(names))
        index = {name: i for i, name in enumerate(speakers)}
        labels = np.fromiter(map(index.__getitem__, names), np.int64, len(names))
        del names
        paths = _join_all(train_path, relpaths)
        del relpaths
        substituted = 0
        if check_files:
            paths, substituted = _resolve_files(list_path, train_path, paths)
        return cls(list_path, PathArray.from_strings(paths), labels, speakers, substituted)


def _join_all(root: str, relpaths: list[str]) -> list[str]:
    """``[os.path.join(root, rel) ...]``; on POSIX by string concatenation (same result,
    an eighth of the time for a million paths)."""
    if os.path is not posixpath:
        return [os.path.join(root, rel) for rel in relpaths]
    prefix = root if not root or root.endswith("/") else root + "/"
    return [rel if rel.startswith("/") else prefix + rel for rel in relpaths]


def _resolve_files(list_path: str, train_path: str, paths: list[str]) -> tuple[list[str], int]:
    """Every path that exists (or its ``.m4a`` twin); one error listing all that do not.

    Existence comes from one directory listing per folder (:class:`_FolderListings`); a
    file the listings do not show is looked up again with ``os.path.isfile`` before it is
    called missing, so a folder that cannot be listed only costs time."""
    resolved, missing, substituted = [], [], 0
    listed = _FolderListings()
    for path in paths:
        found = _existing_version(path, listed.is_file) or _existing_version(path, os.path.isfile)
        if found is None:
            missing.append(path)
        else:
            resolved.append(found)
            substituted += found != path
    if missing:
        shown = "\n  ".join(missing[:50])
        more = f"\n  ... {len(missing) - 50} more" if len(missing) > 50 else ""
        raise TrainDataError(
            f"{len(missing)} of {len(paths)} files in {list_path} are missing under --train_path "
            f"{train_path!r}:\n  {shown}{more}\nCheck --train_path (paths in the list are relative "
            "to it) or regenerate the list.")
    return resolved, substituted


def _existing_version(path: str, is_file) -> str | None:
    """``path`` if it is a file, else its ``.m4a`` twin for a ``.wav`` (VoxCeleb2's AAC
    files under the official list's names), else None."""
    if is_file(path):
        return path
    twin = os.path.splitext(path)[0] + ".m4a"
    if path.lower().endswith(".wav") and is_file(twin):
        return twin
    return None


class _FolderListings:
    """``os.path.isfile`` for the files of a train list by listing each folder once
    (``os.scandir``: one ``getdents`` for a folder's files, no ``stat`` per regular file)
    instead of one ``stat`` per file: 0.5x the time with ``.wav`` files, 0.6x with their
    ``.m4a`` twins (8 files a folder, as in VoxCeleb2, on local ext4; bench_train_input.py).

    ``is_file(path)`` is True when the listing shows ``path`` as a regular file; a symbolic
    link (or an entry of unknown type) is looked up with ``os.path.isfile``, as before. A
    tree of symbolic links gains nothing from listings (each link still needs its ``stat``),
    so once links outnumber regular files, every path goes straight to ``os.path.isfile``.
    False also means "not listed" (a folder that cannot be listed, for one): callers confirm
    a False with ``os.path.isfile``. One difference with ``os.path.isfile`` alone: on a
    case-insensitive file system, a ``.wav`` listed with other capitals than on disk is read
    from its ``.m4a`` twin when there is one."""

    LINKS_BEFORE_GIVING_UP = 1000

    def __init__(self):
        self._listings: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self._regular = self._links = 0     # entries seen of each kind, to stop when not paying

    def is_file(self, path: str) -> bool:
        # The folder/name split below is POSIX's; and a tree of links is stat'ed in any case.
        if os.path is not posixpath or (self._links > self.LINKS_BEFORE_GIVING_UP
                                        and self._links > self._regular):
            return os.path.isfile(path)
        folder, slash, name = path.rpartition("/")
        folder = folder + slash or "."
        listing = self._listings.get(folder)
        if listing is None:
            listing = self._listings[folder] = self._list(folder)
        regular, to_stat = listing
        return name in regular or (name in to_stat and os.path.isfile(path))

    def _list(self, folder: str) -> tuple[frozenset[str], frozenset[str]]:
        """(names of the regular files, names of the links and entries of unknown type);
        folders and other entries are in neither."""
        regular, to_stat = [], []
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    kind = _entry_kind(entry)
                    if kind != "other":
                        (regular if kind == "regular" else to_stat).append(entry.name)
        except OSError:                     # missing, unreadable: os.path.isfile decides
            pass
        self._regular += len(regular)
        self._links += len(to_stat)
        return frozenset(regular), frozenset(to_stat)


def _entry_kind(entry: os.DirEntry) -> str:
    """The entry's kind, "regular", "link" or "other", from the listing's file type alone (no
    ``stat`` unless the file system leaves the type out); "link" when that fails: a ``stat``
    then decides."""
    try:
        if entry.is_symlink():
            return "link"
        return "regular" if entry.is_file(follow_symlinks=False) else "other"
    except OSError:
        return "link"


class TrainCrops(Dataset):
    """``dataset[i]`` -> (crop (crop_len,) float32 on the int16 scale, speaker index).

    ``augment``, if given, is called as ``augment(crop, rng) -> crop`` (same length) with the
    crop's own generator.

    With ``on_bad_audio="skip"`` a bad file is replaced by the next readable utterance of the
    same speaker. Which files were bad travels with the data (``_item``, :func:`collate_crops`)
    rather than living in this object: in a DataLoader worker this object is a copy that the
    training process never sees. The training loop hands each batch's list to
    :meth:`note_bad`, which warns once per file and keeps :attr:`bad_files`.

    ``paths`` may be a list of ``str`` or a :class:`PathArray`; either way this object holds
    numpy arrays and two byte strings, not one Python object per utterance (a forked worker
    then shares its memory instead of copying it), and finds a speaker's other utterances
    in O(1) through a :class:`~capsv.data.sampler.SpeakerIndex`.
    """

    def __init__(self, paths: Sequence[str], labels: Sequence[int], max_frames: int,
                 seed: int = 0, augment=None, on_bad_audio: str = "error",
                 speeds: Sequence[float] | None = None):
        self.paths = paths if isinstance(paths, PathArray) else PathArray.from_strings(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise TrainDataError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        self.speaker_index = SpeakerIndex.from_labels(self.labels)
        self.max_frames, self.seed, self.augment = max_frames, int(seed), augment
        self.on_bad_audio = on_bad_audio
        # --speed_perturb: the playback speed of each label's crops (TrainList.speeds)
        self.speeds = None if speeds is None else np.asarray(speeds, dtype=np.float64)
        self.epoch = 0
        self.bad_files: dict[str, str] = {}   # path -> why (filled by note_bad, in the parent)

    def set_epoch(self, epoch: int) -> None:
        """Call before creating the epoch's iterator: workers receive a copy of this state."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        crop, label, _ = self._item(index)
        return crop, label

    def __getitems__(self, indices: list[int]) -> list[tuple]:
        """What the DataLoader fetches per batch: ``(crop, label, bad files)`` per index,
        for :func:`collate_crops`."""
        return [self._item(index) for index in indices]

    def _item(self, index: int) -> tuple[torch.Tensor, int, list[tuple[str, str]]]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        crop, bad = self._crop(index, rng)
        if self.augment is not None:
            crop = self.augment(crop, rng)
        crop = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32))
        return crop, int(self.labels[index]), bad

    def _crop(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, list]:
        """The utterance's crop and the (path, reason) of each bad file met on the way.

        Known-bad files are tried again rather than remembered: a cache would differ between
        worker processes, and so would the random draws a failed read consumed, so the crops
        would depend on the number of workers (a bad header fails in microseconds)."""
        bad: list[tuple[str, str]] = []
        # The speaker's utterances in list order, from this one on, then from the first.
        same, start = self.speaker_index.same_speaker(index)
        for step in range(len(same)):
            other = int(same[(start + step) % len(same)])
            try:
                return self._read_crop(self.paths[other], int(self.labels[index]), rng), bad
            except AudioError as exc:
                if self.on_bad_audio != "skip":
                    raise
                bad.append((self.paths[other], str(exc)))
        raise TrainDataError(f"every utterance of the speaker of {self.paths[index]} is "
                             "unreadable; remove the speaker from the train list")

    def _read_crop(self, path: str, label: int, rng: np.random.Generator) -> np.ndarray:
        """A random crop of ``max_frames``; for a speed-perturbed speaker, a longer (0.9x) or
        shorter (1.1x) stretch played at its speed, cut to the crop's length."""
        speed = 1.0 if self.speeds is None else float(self.speeds[label])
        if speed == 1.0:
            return load_random_crop(path, self.max_frames, rng)
        crop_len = crop_samples(self.max_frames)
        wanted = speed_input_length(crop_len, speed)
        frames = -(-(wanted - crop_samples(0)) // HOP)          # ceil: the crop holds it whole
        return speed_perturb(load_random_crop(path, frames, rng), speed)[:crop_len]

    def note_bad(self, bad: list[tuple[str, str]]) -> None:
        """Record the bad files a batch met; warn once per file (in the training process)."""
        for path, why in bad:
            if path not in self.bad_files:
                self.bad_files[path] = why
                print(f"warning: skipping bad training file (--on_bad_audio skip): {why}",
                      flush=True)


def collate_crops(items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """``(waves (N, crop_len), labels (N,), bad files of the batch)``; each bad file once."""
    waves = torch.stack([item[0] for item in items])
    labels = torch.tensor([item[1] for item in items], dtype=torch.int64)
    bad = list(dict.fromkeys(pair for item in items for pair in item[2]))
    return waves, labels, bad


def build_augmenter(musan_path: str, rir_path: str):
    """``capsv.data.augment.Augmenter(musan_path, rir_path)``, or a clear error if unavailable."""
    try:
        from .augment import Augmenter
    except ImportError as exc:
        raise TrainDataError(
            "--augment needs the module capsv.data.augment (MUSAN noise + RIR reverberation), "
            f"which is not available in this installation ({exc}); drop --augment") from None
    if not musan_path or not rir_path:
        raise TrainDataError("--augment needs both --musan_path and --rir_path")
    return Augmenter(musan_path, rir_path)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: Ctrl-C (SIGINT to the whole process group) and SIGTERM
    are for the training process to handle; a worker that died of them would break the
    batch in flight and the checkpoint the parent saves on its way out. Ignoring SIGTERM means
    a worker must die with its parent instead: see :func:`capsv.workers.start_worker`."""
    start_worker()


def _seed_worker(worker_id: int) -> None:
    """Global RNGs of a worker from (seed, epoch, worker): distinct per worker, and the same
    after a resume (for code that draws from them instead of the crop's own generator)."""
    ignore_stop_signals()
    dataset = get_worker_info().dataset
    state = np.random.SeedSequence([dataset.seed, dataset.epoch, worker_id]).generate_state(2)
    np.random.seed(int(state[0]))
    random.seed(int(state[1]))
    torch.manual_seed(int(state[1]))


def make_train_loader(dataset: TrainCrops, sampler: SpeakerBatchSampler, workers: int,
                      pin_memory: bool = False) -> DataLoader:
    """Batches of ``(waves (M*B, crop_len), labels (M*B,), bad files)`` in the sampler's
    layout (see :func:`collate_crops`).

    Workers are started anew each epoch (after ``set_epoch``), so they see the epoch."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, worker_init_fn=_seed_worker,
                      collate_fn=collate_crops,
                      prefetch_factor=4 if workers > 0 else None, persistent_workers=False)
