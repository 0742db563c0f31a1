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
import random
import signal
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ..audio import AudioError, load_random_crop
from ..errors import CapsvError
from ..utils import file_sha256
from .lists import KALDI_TRAIN_FILES, is_kaldi_data_dir, read_kaldi_data_dir, read_train_list
from .sampler import SpeakerBatchSampler


class TrainDataError(CapsvError):
    """Unusable training data, reported before any training step."""


@dataclass
class TrainList:
    """The parsed train list: absolute paths, speaker index per utterance, speaker names."""

    list_path: str
    paths: list[str]
    labels: list[int]
    speakers: list[str]
    substituted_m4a: int = 0

    @property
    def n_speakers(self) -> int:
        return len(self.speakers)

    def sha256(self) -> str:
        if is_kaldi_data_dir(self.list_path):
            return "".join(file_sha256(os.path.join(self.list_path, f)) for f in KALDI_TRAIN_FILES)
        return file_sha256(self.list_path)

    @classmethod
    def read(cls, list_path: str, train_path: str, check_files: bool = True) -> "TrainList":
        # a Kaldi data directory (wav.scp + utt2spk) serves as a train list too
        items = read_kaldi_data_dir(list_path) if is_kaldi_data_dir(list_path) else read_train_list(list_path)
        speakers = sorted({speaker for speaker, _ in items})
        index = {name: i for i, name in enumerate(speakers)}
        paths = [os.path.join(train_path, rel) for _, rel in items]
        substituted = 0
        if check_files:
            paths, substituted = _resolve_files(list_path, train_path, paths)
        return cls(list_path, paths, [index[s] for s, _ in items], speakers, substituted)


def _resolve_files(list_path: str, train_path: str, paths: list[str]) -> tuple[list[str], int]:
    """Every path that exists (or its ``.m4a`` twin); one error listing all that do not."""
    resolved, missing, substituted = [], [], 0
    for path in paths:
        if os.path.isfile(path):
            resolved.append(path)
            continue
        twin = os.path.splitext(path)[0] + ".m4a"
        if path.lower().endswith(".wav") and os.path.isfile(twin):
            resolved.append(twin)
            substituted += 1
        else:
            missing.append(path)
    if missing:
        shown = "\n  ".join(missing[:50])
        more = f"\n  ... {len(missing) - 50} more" if len(missing) > 50 else ""
        raise TrainDataError(
            f"{len(missing)} of {len(paths)} files in {list_path} are missing under --train_path "
            f"{train_path!r}:\n  {shown}{more}\nCheck --train_path (paths in the list are relative "
            "to it) or regenerate the list.")
    return resolved, substituted


class TrainCrops(Dataset):
    """``dataset[i]`` -> (crop (crop_len,) float32 on the int16 scale, speaker index).

    ``augment``, if given, is called as ``augment(crop, rng) -> crop`` (same length) with the
    crop's own generator.

    With ``on_bad_audio="skip"`` a bad file is replaced by the next readable utterance of the
    same speaker. Which files were bad travels with the data (``_item``, :func:`collate_crops`)
    rather than living in this object: in a DataLoader worker this object is a copy that the
    training process never sees. The training loop hands each batch's list to
    :meth:`note_bad`, which warns once per file and keeps :attr:`bad_files`.
    """

    def __init__(self, paths: list[str], labels: list[int], max_frames: int, seed: int = 0,
                 augment=None, on_bad_audio: str = "error"):
        self.paths, self.labels = paths, labels
        self.max_frames, self.seed, self.augment = max_frames, int(seed), augment
        self.on_bad_audio = on_bad_audio
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
        return crop, self.labels[index], bad

    def _crop(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, list]:
        """The utterance's crop and the (path, reason) of each bad file met on the way.

        Known-bad files are tried again rather than remembered: a cache would differ between
        worker processes, and so would the random draws a failed read consumed, so the crops
        would depend on the number of workers (a bad header fails in microseconds)."""
        bad: list[tuple[str, str]] = []
        same = [i for i, label in enumerate(self.labels) if label == self.labels[index]]
        start = same.index(index)
        for other in same[start:] + same[:start]:
            try:
                return load_random_crop(self.paths[other], self.max_frames, rng), bad
            except AudioError as exc:
                if self.on_bad_audio != "skip":
                    raise
                bad.append((self.paths[other], str(exc)))
        raise TrainDataError(f"every utterance of the speaker of {self.paths[index]} is "
                             "unreadable; remove the speaker from the train list")

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
    batch in flight and the checkpoint the parent saves on its way out."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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
