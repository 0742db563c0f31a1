"""Per-file evaluation features (spec §5): every distinct file runs through the backbone once,
as ``num_eval`` crops of ``eval_frames`` frames (or whole); TAP/SAP keep the mean of the crops'
unit-norm embeddings, CAP the frames and their meta-projections, in memory or in a disk store
(:mod:`capsv.evaluation.feature_store`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import faults
from ..audio import AudioError, eval_crops, load_audio, load_eval_crops
from ..data.dataset import ignore_stop_signals
from ..models import SpeakerNet
from ..protocol import EVAL_FRAMES, MIN_WHOLE_SAMPLES, NUM_EVAL
from ..workers import stop_workers, worker_error
from . import feature_store
from .feature_store import IN_MEMORY, FeatureStore, StoreWriter
from .inputs import EvalInputError


class EvalCrops(Dataset):
    """The evaluation crops of each source: a file path, or a 1-D float32 waveform already
    on the int16 scale (the Python API passes arrays)."""

    def __init__(self, paths: list, eval_frames: int, num_eval: int, skip_bad: bool = False):
        self.paths, self.eval_frames, self.num_eval = paths, eval_frames, num_eval
        self.skip_bad = skip_bad     # an unreadable file gives (index, AudioError), not a raise

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        if not self.skip_bad:
            return self._crops(index)
        try:
            return self._crops(index)
        except AudioError as exc:     # found while decoding: travels back to the main process
            return index, AudioError(str(exc))

    def _crops(self, index: int):
        source = self.paths[index]
        if isinstance(source, str) and self.eval_frames > 0:   # reads only the crops
            return index, torch.from_numpy(load_eval_crops(source, self.eval_frames, self.num_eval))
        wave = load_audio(source) if isinstance(source, str) else source
        if self.eval_frames <= 0 and len(wave) < MIN_FULL_LENGTH_SAMPLES:
            name = source if isinstance(source, str) else f"input {index}"
            raise AudioError(f"{name}: {len(wave)} samples is too short for whole-utterance "
                             f"scoring (at least {MIN_FULL_LENGTH_SAMPLES}); use --eval_frames {EVAL_FRAMES}")
        return index, torch.from_numpy(eval_crops(wave, self.eval_frames, self.num_eval))


MIN_FULL_LENGTH_SAMPLES = MIN_WHOLE_SAMPLES      # the shortest file scored whole (capsv.protocol)


def _batches_of_files(dataset: EvalCrops, files_per_batch: int, workers: int):
    loader = DataLoader(dataset, batch_size=files_per_batch, num_workers=workers,
                        collate_fn=list, persistent_workers=False,
                        worker_init_fn=ignore_stop_signals)   # the parent handles Ctrl-C
    batches = iter(loader)
    try:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as exc:   # a worker's error: its own one line, as with 0 workers
                raise worker_error(exc) from None
            yield batch
    finally:
        stop_workers(batches)          # now, not at exit (where they would hang the exit)


@dataclass
class FileFeatures:
    """Per-file evaluation features, keyed by file index.

    TAP/SAP: ``mean_emb`` (E,) the mean of the file's unit-norm crop embeddings (all scoring
    needs: the mean of a 10 x 10 crop cosine matrix is the dot product of the two means), with
    every file's row in ``mean_store`` (N, E); ``emb`` (num_eval, E) the unit-norm crop
    embeddings themselves, kept only when asked (``keep_crops``).
    CAP: ``frames`` (num_eval, D, T) and ``proj`` (num_eval, T, D) unit-norm projections.

    With fixed-size crops the CAP features live in two contiguous stores, (N, num_eval, D, T)
    and (N, num_eval, T, D), and the dict entries are views of them: scoring then gathers a
    chunk of trials with one ``index_select`` into reused buffers instead of stacking copies.
    Disk-backed features (``store``, :mod:`capsv.evaluation.feature_store`) have the same fields, as
    read-only maps of the store's files and mappings that build each view on access.
    """
    emb: dict[int, torch.Tensor] = field(default_factory=dict)
    frames: dict[int, torch.Tensor] = field(default_factory=dict)
    proj: dict[int, torch.Tensor] = field(default_factory=dict)
    frames_store: torch.Tensor | None = None
    proj_store: torch.Tensor | None = None
    mean_emb: dict[int, torch.Tensor] = field(default_factory=dict)
    mean_store: torch.Tensor | None = None
    store: FeatureStore | None = None
    unreadable: dict[int, str] = field(default_factory=dict)   # skip_bad: index -> why

    def keep_cap(self, index: int, frames: torch.Tensor, proj: torch.Tensor, capacity: int) -> None:
        if self.frames_store is None:
            self.frames_store = frames.new_empty((capacity, *frames.shape))
            self.proj_store = proj.new_empty((capacity, *proj.shape))
        self.frames_store[index] = frames
        self.proj_store[index] = proj
        self.frames[index], self.proj[index] = self.frames_store[index], self.proj_store[index]

    def keep_mean(self, index: int, mean: torch.Tensor, capacity: int) -> None:
        """Keep file ``index``'s mean unit crop embedding (E,) in the (capacity, E) store."""
        if self.mean_store is None:
            self.mean_store = mean.new_empty((capacity, *mean.shape))
        self.mean_store[index] = mean
        self.mean_emb[index] = self.mean_store[index]

    def rows(self) -> dict[int, dict[str, torch.Tensor]]:
        """Each kept file's features as the head's ``keep`` gave them, less the crops:
        ``{"frames", "proj"}`` (CAP) or ``{"emb"}`` (TAP/SAP, the (E,) mean unit crop
        embedding): what scoring needs."""
        if self.frames:
            return {i: {"frames": self.frames[i], "proj": self.proj[i]} for i in self.frames}
        indices = self.mean_emb.keys() or self.emb.keys()
        return {i: {"emb": self.mean_embedding(i)} for i in indices}

    def keep(self, index: int, row: dict[str, torch.Tensor], capacity: int,
             fixed_size: bool, keep_crops: bool = False) -> None:
        """Keep one file's features as a head's ``keep`` (or :meth:`rows`) gives them; the
        crop embeddings too with ``keep_crops``."""
        if "emb" in row:                   # one vector a file
            self.keep_mean(index, row["emb"], capacity)
            if keep_crops and "crops" in row:
                self.emb[index] = row["crops"]
        elif fixed_size:
            self.keep_cap(index, row["frames"], row["proj"], capacity)
        else:
            self.frames[index], self.proj[index] = row["frames"], row["proj"]

    def mean_embedding(self, index: int) -> torch.Tensor:
        """(E,) mean unit crop embedding of file ``index`` (from ``emb`` when built by hand)."""
        return self.mean_emb[index] if index in self.mean_emb else self.emb[index].mean(dim=0)

    def mean_embeddings(self, indices: np.ndarray) -> torch.Tensor:
        """(len(indices), E) mean embeddings, gathered in one step from ``mean_store``."""
        if self.mean_store is None:
            return torch.stack([self.mean_embedding(int(i)) for i in indices])
        where = torch.from_numpy(np.ascontiguousarray(indices, dtype=np.int64))
        return self.mean_store.index_select(0, where.to(self.mean_store.device))

    @classmethod
    def from_store(cls, store: FeatureStore, fixed_size: bool) -> "FileFeatures":
        """Features read from ``store``; CAP stores are stacked only for fixed-size crops."""
        feats = cls(store=store)
        if "emb" in store.names():
            feats.mean_emb, feats.mean_store = store.rows("emb"), store.stacked("emb")
            return feats
        feats.frames, feats.proj = store.rows("frames"), store.rows("proj")
        if fixed_size:
            feats.frames_store, feats.proj_store = store.stacked("frames"), store.stacked("proj")
        return feats

    def close(self) -> None:
        """Release a disk store (its maps, files and folder lock); a no-op in memory."""
        if self.store is not None:
            self.store.close()


@torch.inference_mode()
def extract_features(net: SpeakerNet, paths: list, eval_frames: int = EVAL_FRAMES, num_eval: int = NUM_EVAL,
                     device: torch.device | str = "cpu", workers: int = 0,
                     files_per_batch: int = 4, progress: bool = True, *,
                     keep_crops: bool = True, cache: str | None = IN_MEMORY,
                     skip_bad: bool = False) -> FileFeatures:
    """Features of every source (path or int16-scale waveform), keyed by position in ``paths``.

    ``cache``: ``IN_MEMORY`` (":memory:") keeps tensors on ``device``; ``None`` writes them to
    a temporary disk store that vanishes with the process; a folder keeps them there for
    reruns (:mod:`capsv.evaluation.feature_store`; sources must then be paths). ``keep_crops``: TAP/SAP
    also keep the crop embeddings (``emb``), not only their mean (in memory only).
    ``skip_bad``: a file that fails while decoding is left out and named in ``.unreadable``
    instead of raising :class:`~capsv.audio.AudioError` (in a disk store its rows are zeros,
    and a cache folder holding such a file is not marked reusable).
    """
    net.eval()
    if eval_frames <= 0:
        files_per_batch = 1  # whole utterances differ in length
    names = list(net.pooling.kept)
    sink = None
    if cache != IN_MEMORY:
        key = None
        if cache is not None:
            if not all(isinstance(p, str) for p in paths):
                raise ValueError("a feature cache folder needs file paths, not waveforms")
            key = feature_store.cache_key(net, paths, eval_frames, num_eval)
        sink = feature_store.begin(len(paths), names, cache, key)
        if isinstance(sink, FeatureStore):
            return FileFeatures.from_store(sink, fixed_size=eval_frames > 0)
    feats = FileFeatures()
    dataset = EvalCrops(paths, eval_frames, num_eval, skip_bad)
    bar = tqdm(total=len(paths), desc="files", unit="file", disable=not progress, leave=False)
    try:
        for batch in _batches_of_files(dataset, files_per_batch, workers):
            bar.update(len(batch))
            for index, crops in batch:
                if isinstance(crops, AudioError):
                    feats.unreadable[index] = str(crops)
            batch = [(i, c) for i, c in batch if not isinstance(c, AudioError)]
            if not batch:
                continue
            indices = [i for i, _ in batch]
            counts = [c.shape[0] for _, c in batch]
            frames = net.frames(torch.cat([c for _, c in batch]).to(device))
            for index, part in zip(indices, frames.split(counts)):
                _keep_file(net, feats, sink, index, part, len(paths), eval_frames > 0, keep_crops)
            faults.kill_if("kill_during_extract")   # test hook: a store half written
        if sink is not None and feats.unreadable:
            if len(feats.unreadable) == len(paths):
                raise EvalInputError(f"none of the {len(paths)} files could be read: "
                                     f"{next(iter(feats.unreadable.values()))}")
            sink.fill_gaps(len(paths))
    except BaseException:
        if sink is not None:
            sink.abandon()
        raise
    finally:
        bar.close()
    if sink is None:
        return feats
    unreadable = feats.unreadable
    feats = FileFeatures.from_store(sink.finish(reusable=not unreadable), fixed_size=eval_frames > 0)
    feats.unreadable = unreadable
    return feats


def _keep_file(net: SpeakerNet, feats: FileFeatures, sink: StoreWriter | None, index: int,
               part: torch.Tensor, n_files: int, fixed_size: bool, keep_crops: bool) -> None:
    """Keep one file's features (``part``: its backbone frames (crops, D, T)) in ``feats``
    (memory) or append them to the disk store ``sink``."""
    row = net.pooling.keep(part)              # the head says what a file keeps
    if sink is None:
        feats.keep(index, row, n_files, fixed_size, keep_crops)
        return
    for name in net.pooling.kept:
        sink.append(name, index, row[name].cpu().numpy(), fill_gaps=True)
