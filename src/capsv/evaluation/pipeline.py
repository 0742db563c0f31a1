"""Trial-list evaluation (spec §5), fast.

1. Validate everything first (list syntax, every missing file, every unreadable header,
   wrong sample rates) so bad input fails before any network work.
2. Run every distinct file through the backbone once: ``num_eval`` crops of ``eval_frames``.
   TAP/SAP keep the mean of the crops' unit-norm embeddings (one vector a file); CAP keeps
   the frames and their meta-projections, by default in a memory-mapped disk store
   (:mod:`capsv.feature_store`), so RAM does not grow with the number of files.
3. Score trials in chunks. TAP/SAP: the mean of the crops' cosine matrix equals the dot
   product of the mean unit embeddings. CAP with fixed-size crops: the low-cost exact form,
   with a chunk's trials grouped by file so each file's work is a few large matmuls
   (:mod:`capsv.cap_scoring`); never one Python iteration per trial.

Full-length scoring (``eval_frames == 0``): each file runs through the front end and backbone
alone, at its own length (zero padding would shift the front end's instance norm and the
convolutions' edges). CAP trials of different lengths are then scored together: their frame
features are zero-padded and masked (:meth:`capsv.pooling.CAP.forward_grouped`), which gives
the scores of one-at-a-time scoring.

Score normalisation (``score_norm="asnorm"``): adaptive s-norm against a cohort of files, see
:mod:`capsv.scorenorm`.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .. import allocator, faults
from . import feature_store
from .cap_scoring import GroupedCapScorer
from ..audio import (SAMPLE_RATE, AudioError, audio_info, crop_samples, eval_crops, frames_that_fit,
                    load_audio, load_eval_crops)
from ..errors import CapsvError
from .feature_store import IN_MEMORY, FeatureStore, StoreWriter
from ..data.dataset import ignore_stop_signals
from ..data.lists import Trial, missing_files, read_audio_list, read_trials, trial_files
from .metrics import Metrics, compute_metrics
from ..models import SpeakerNet
from ..models.pooling import pad_frames
from .scorenorm import adaptive_snorm, cohort_stats
from ..workers import stop_workers, worker_error
from ..protocol import EVAL_FRAMES, NUM_EVAL


class EvalInputError(CapsvError):
    """Bad evaluation input, reported before any heavy computation."""


def validate_inputs(trials: list[Trial], test_path: str, list_name: str = "trial list",
                    on_bad_audio: str = "error", eval_frames: int | None = None,
                    lengths: dict[str, int] | None = None) -> list[str]:
    """Distinct relative paths of the trials, after checking that each one is usable audio.
    With ``on_bad_audio="skip"`` unusable (not missing) files are warned about and left out.
    With ``eval_frames``, warns when many files are shorter than one evaluation crop.
    ``lengths`` (when given) receives each usable file's length in samples at 16 kHz."""
    files = trial_files(trials)
    lengths = {} if lengths is None else lengths
    bad = validate_files(files, test_path, list_name, on_bad_audio, lengths)
    if eval_frames is not None:
        warn_if_crops_are_mostly_padding(lengths, eval_frames, list_name)
    return [f for f in files if f not in bad]


def warn_if_crops_are_mostly_padding(lengths: dict[str, int], eval_frames: int, list_name: str,
                                     share: float = 0.1) -> bool:
    """Warn when at least ``share`` of the files are shorter than an evaluation crop.

    Short files are zero-padded on both sides, as the paper's code does (spec section 5); the
    log of the padding's near-zero energy then dominates the instance normalisation, and a
    trained model's EER on such crops can fall to chance (measured: 48.6 % with 3.5 s crops
    of 1.5-2.5 s files against 31.9 % with 1.5 s crops, same model and trials)."""
    message = short_files_message(lengths, eval_frames, f"files in {list_name}", share)
    if message is None:
        return False
    print(f"warning: {message}", flush=True)
    return True


def short_files_message(lengths: dict, eval_frames: int, what: str,
                        share: float = 0.1) -> str | None:
    """The short-files warning (see :func:`warn_if_crops_are_mostly_padding`) for ``lengths``
    (name -> samples at 16 kHz), or None when fewer than ``share`` of them are short.
    ``what`` names them: "files in trials.txt", "inputs". capsv verify, embed and the Python
    API give the same warning."""
    if not lengths or eval_frames <= 0:
        return None
    crop = crop_samples(eval_frames)
    short = [n for n in lengths.values() if n < crop]
    if len(short) < share * len(lengths):
        return None
    # The longest crop that fits at least 90 % of the files whole.
    tenth = int(np.percentile(np.array(list(lengths.values())), 10, method="lower"))
    suggestion = max(frames_that_fit(tenth), 1)
    return (f"{len(short)} of {len(lengths)} {what} are shorter than one "
            f"--eval_frames {eval_frames} crop ({crop / SAMPLE_RATE:.2f} s; the shortest is "
            f"{min(short) / SAMPLE_RATE:.2f} s). They are zero-padded, as the paper's code does, "
            f"which can ruin their embeddings; --eval_frames 0 scores whole utterances, and "
            f"--eval_frames {suggestion} fits 90 % of them whole.")


def validate_files(files: list[str], test_path: str, list_name: str,
                   on_bad_audio: str = "error", lengths: dict[str, int] | None = None) -> dict[str, str]:
    """Every missing file, unreadable header, truncation or wrong rate, reported at once.
    Returns {file: problem} of the unusable files when ``on_bad_audio="skip"``; fills
    ``lengths`` (when given) with each usable file's length in samples."""
    missing = missing_files(test_path, files)
    if missing:
        shown = "\n  ".join(missing[:50]) + (f"\n  ... {len(missing) - 50} more" if len(missing) > 50 else "")
        raise EvalInputError(f"{len(missing)} of {len(files)} files in {list_name} are missing "
                             f"under --test_path {test_path}:\n  {shown}")
    problems = {}
    for rel in files:
        try:
            info = audio_info(os.path.join(test_path, rel))
            if lengths is not None:
                lengths[rel] = info.frames_16k
        except AudioError as exc:
            problems[rel] = str(exc)
    if problems and on_bad_audio == "skip":
        for problem in problems.values():
            print(f"warning: skipping (--on_bad_audio skip): {problem}", flush=True)
        return problems
    if problems:
        problems = list(problems.values())
        raise EvalInputError(f"{len(problems)} unusable audio file(s):\n  " + "\n  ".join(problems[:50])
                             + "\n(--on_bad_audio skip leaves such files out)")
    return {}


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


# The backbone divides time by up to 8 and the STFT's reflect padding needs n_fft/2 samples.
MIN_FULL_LENGTH_SAMPLES = crop_samples(8)


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
    Disk-backed features (``store``, :mod:`capsv.feature_store`) have the same fields, as
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
        """Each kept file's features as ``{"frames", "proj"}`` (CAP) or ``{"mean"}`` (TAP/SAP,
        the (E,) mean unit crop embedding): what scoring needs, in the form :meth:`keep` takes."""
        if self.frames:
            return {i: {"frames": self.frames[i], "proj": self.proj[i]} for i in self.frames}
        indices = self.mean_emb.keys() or self.emb.keys()
        return {i: {"mean": self.mean_embedding(i)} for i in indices}

    def keep(self, index: int, row: dict[str, torch.Tensor], capacity: int,
             fixed_size: bool) -> None:
        """Keep one file's features given as :meth:`rows` gives them."""
        if "mean" in row:
            self.keep_mean(index, row["mean"], capacity)
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
    reruns (:mod:`capsv.feature_store`; sources must then be paths). ``keep_crops``: TAP/SAP
    also keep the crop embeddings (``emb``), not only their mean (in memory only).
    ``skip_bad``: a file that fails while decoding is left out and named in ``.unreadable``
    instead of raising :class:`~capsv.audio.AudioError` (in a disk store its rows are zeros,
    and a cache folder holding such a file is not marked reusable).
    """
    net.eval()
    if eval_frames <= 0:
        files_per_batch = 1  # whole utterances differ in length
    names = ["frames", "proj"] if net.pairwise else ["emb"]
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
    if net.pairwise:
        proj = net.pooling.project(part)
        if sink is not None:
            sink.append("frames", index, part.cpu().numpy(), fill_gaps=True)
            sink.append("proj", index, proj.cpu().numpy(), fill_gaps=True)
        elif fixed_size:
            feats.keep_cap(index, part, proj, n_files)
        else:
            feats.frames[index], feats.proj[index] = part, proj
        return
    crops = F.normalize(net.pooling(part), dim=-1)
    if sink is not None:
        sink.append("emb", index, crops.mean(dim=0).cpu().numpy(), fill_gaps=True)
        return
    feats.keep_mean(index, crops.mean(dim=0), n_files)
    if keep_crops:
        feats.emb[index] = crops


@torch.inference_mode()
def score_pairs(net: SpeakerNet, feats: FileFeatures, pairs: np.ndarray,
                chunk: int = 128, progress: bool = True) -> np.ndarray:
    """Scores of (index1, index2) file pairs, file 1 as CAP support, file 2 as query.

    ``chunk`` sizes the per-call batches of the padded (full-length) and train-mode CAP
    paths; eval-mode fixed-size CAP uses :class:`capsv.cap_scoring.GroupedCapScorer`,
    whose chunks are sized by its buffer instead."""
    scores = np.empty(len(pairs), dtype=np.float64)
    bar = tqdm(total=len(pairs), desc="trials", unit="trial", disable=not progress, leave=False)
    if not net.pairwise:
        # The mean of the crops' cosine matrix is the dot product of the mean unit embeddings.
        # 1024 trials a step: a few MB of gathered vectors, whatever the list's length.
        for start in range(0, len(pairs), 1024):
            part = pairs[start:start + 1024]
            a, b = feats.mean_embeddings(part[:, 0]), feats.mean_embeddings(part[:, 1])
            scores[start:start + len(part)] = (a * b).sum(dim=1).double().cpu().numpy()
            bar.update(len(part))
        bar.close()
        return scores
    # Trials whose sides have the same frame counts can share one batched call (fixed-size
    # stores hold one shape only).
    buckets = defaultdict(list)
    if feats.frames_store is None:
        for row, (i, j) in enumerate(pairs):
            buckets[(feats.frames[i].shape, feats.frames[j].shape)].append(row)
    if len(buckets) > 1:  # whole utterances: pad and mask instead of one call per length pair
        _score_cap_padded(net, feats, pairs, scores, chunk, bar)
        bar.close()
        return scores
    if feats.frames_store is not None and not net.pooling.training and not net.pooling.literal:
        # Eval-mode CAP on fixed-size crops: trials grouped by file into large matmuls.
        scorer = GroupedCapScorer(net.pooling, *_stores_where_scored(net, feats))
        scores[:] = scorer.score(pairs, on_chunk=bar.update)
        bar.close()
        return scores
    if feats.frames_store is not None:
        # Small chunks stay in cache on a CPU (16 measured best of 16/64/256); a GPU wants many.
        per_call = chunk if _device_of(net).type == "cuda" else min(chunk, 16)
        _score_cap_stored(net, feats, pairs, scores, per_call, bar)
        bar.close()
        return scores
    for rows in buckets.values():
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            sup = [pairs[r, 0] for r in part]
            qry = [pairs[r, 1] for r in part]
            cos = net.pooling.score_grouped(
                torch.stack([feats.frames[i] for i in sup]), torch.stack([feats.frames[i] for i in qry]),
                hs=torch.stack([feats.proj[i] for i in sup]), hq=torch.stack([feats.proj[i] for i in qry]))
            scores[part] = cos.flatten(1).mean(dim=1).double().cpu().numpy()
            bar.update(len(part))
    bar.close()
    return scores


def _score_cap_stored(net: SpeakerNet, feats: FileFeatures, pairs: np.ndarray,
                      scores: np.ndarray, chunk: int, bar) -> None:
    """Fixed-size CAP trials, ``chunk`` at a time, gathered into buffers allocated once
    (fresh multi-megabyte allocations per chunk cost more than the arithmetic on CPU)."""
    frames_store, proj_store = feats.frames_store, feats.proj_store
    device = frames_store.device              # a disk store's maps are on the CPU
    buffers = [frames_store.new_empty((chunk, *frames_store.shape[1:])) for _ in range(2)]
    buffers += [proj_store.new_empty((chunk, *proj_store.shape[1:])) for _ in range(2)]
    index = torch.from_numpy(np.ascontiguousarray(pairs)).to(device)
    for start in range(0, len(pairs), chunk):
        n = min(chunk, len(pairs) - start)
        sup, qry = index[start:start + n, 0], index[start:start + n, 1]
        support, query, hs, hq = (b[:n] for b in buffers)
        torch.index_select(frames_store, 0, sup, out=support)
        torch.index_select(frames_store, 0, qry, out=query)
        torch.index_select(proj_store, 0, sup, out=hs)
        torch.index_select(proj_store, 0, qry, out=hq)
        support, query, hs, hq = (t.to(_device_of(net)) for t in (support, query, hs, hq))
        cos = net.pooling.score_grouped(support, query, hs=hs, hq=hq)
        scores[start:start + n] = cos.flatten(1).mean(dim=1).double().cpu().numpy()
        bar.update(n)


def _score_cap_padded(net: SpeakerNet, feats: FileFeatures, pairs: np.ndarray,
                      scores: np.ndarray, chunk: int, bar) -> None:
    """CAP scores of trials with different frame counts, in padded + masked batches.

    Trials are sorted by length so a batch pads little; a batch holds at most as many frame
    vectors as ``chunk`` trials of 10 crops x 88 frames would (the fixed-crop memory) on a GPU,
    and 1/8 of that on a CPU, where cache-sized batches measured 2x faster than one trial at a
    time and big ones slower.
    """
    length = {i: f.shape[0] * f.shape[2] for i, f in feats.frames.items()}
    order = sorted(range(len(pairs)), key=lambda r: (length[pairs[r, 0]], length[pairs[r, 1]]))
    device = _device_of(net)
    on_gpu = device.type == "cuda"
    budget = (chunk if on_gpu else max(1, chunk // 8)) * 2 * 10 * 88
    start = 0
    while start < len(order):
        stop, longest_s, longest_q = start, 0, 0
        while stop < len(order):
            i, j = pairs[order[stop]]
            longest_s, longest_q = max(longest_s, length[i]), max(longest_q, length[j])
            if stop > start and (stop - start + 1) * (longest_s + longest_q) > budget:
                break
            stop += 1
        part = order[start:stop]
        sup, qry = pairs[part, 0], pairs[part, 1]
        # Read from a disk store only now, a batch at a time (a no-op move in memory).
        support, mask_s = pad_frames([feats.frames[i].to(device) for i in sup])
        query, mask_q = pad_frames([feats.frames[i].to(device) for i in qry])
        hs, _ = pad_frames([feats.proj[i].to(device).transpose(1, 2) for i in sup])
        hq, _ = pad_frames([feats.proj[i].to(device).transpose(1, 2) for i in qry])
        cos = net.pooling.score_grouped(support, query, hs=hs.transpose(2, 3), hq=hq.transpose(2, 3),
                                        support_mask=mask_s, query_mask=mask_q)   # (G, Nq, Ns)
        scores[part] = cos.flatten(1).mean(dim=1).double().cpu().numpy()
        bar.update(len(part))
        start = stop


def _stores_where_scored(net, feats: FileFeatures) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed-size CAP stores, moved whole to the head's GPU when a disk store's maps take
    at most half its free memory (VoxCeleb1-O: 4 GB); else the scorer moves file by file."""
    frames, proj = feats.frames_store, feats.proj_store
    device = _device_of(net)
    if device.type == "cuda" and frames.device != device:
        need = (frames.numel() + proj.numel()) * frames.element_size()
        if need <= torch.cuda.mem_get_info(device)[0] // 2:
            frames, proj = frames.to(device), proj.to(device)
    return frames, proj


def _device_of(net) -> torch.device:
    """Where the pooling head computes (disk-backed features are moved there as read)."""
    return next(net.pooling.parameters()).device


@dataclass
class EvalResult:
    """Scores in trial-list order; with score normalisation ``scores`` are the normalised
    ones and ``raw_scores`` / ``raw_metrics`` keep the originals."""
    trials: list[Trial]
    scores: np.ndarray
    metrics: Metrics
    raw_scores: np.ndarray | None = None
    raw_metrics: Metrics | None = None
    skipped_files: list[str] = field(default_factory=list)   # --on_bad_audio skip
    skipped_trials: int = 0

    def score_lines(self) -> list[str]:
        return [f"{t.label} {t.path1} {t.path2} {s:.8g}" for t, s in zip(self.trials, self.scores)]


@dataclass
class ScoreNorm:
    """Adaptive s-norm settings: ``cohort_list`` lists audio files (one path per line, or
    a train list's ``speaker path``), relative to ``cohort_path``; ``top_n`` closest used."""
    cohort_list: str
    cohort_path: str = ""
    top_n: int = 300


def evaluate_list(net: SpeakerNet, test_list: str, test_path: str, eval_frames: int = EVAL_FRAMES,
                  num_eval: int = NUM_EVAL, device: torch.device | str = "cpu", workers: int = 0,
                  progress: bool = True, score_norm: ScoreNorm | None = None,
                  on_bad_audio: str = "error", eval_cache: str | None = None,
                  extract=None) -> EvalResult:
    """Score every trial of ``test_list`` (spec §5).

    ``eval_cache``: where the features wait to be scored. ``None`` (default): a temporary disk
    store that vanishes with the process, so memory does not grow with the file count; a
    folder: kept there and reused by a rerun with the same model, protocol and files
    (:mod:`capsv.feature_store`); ``":memory:"``: in RAM (or on the GPU), as before.

    ``extract``: how the files' features are computed, with :func:`extract_features`'s
    signature (default: that function, in this process). Under torchrun it is
    :func:`capsv.evaluation.sharded.sharded_extractor`: the same checks, skipping and scoring,
    with the extraction split over the ranks.
    """
    extract = extract_features if extract is None else extract
    # Freed blocks go back to the kernel (a fixed glibc mmap threshold): with the adaptive
    # one, retained heap grew with the number of files (capsv.allocator).
    allocator.return_freed_memory()
    trials = read_trials(test_list)
    all_files = trial_files(trials)
    files = validate_inputs(trials, test_path, test_list, on_bad_audio, eval_frames)
    skipped = sorted(set(all_files) - set(files))
    n_listed = len(trials)
    if skipped:
        usable = set(files)
        trials = [t for t in trials if t.path1 in usable and t.path2 in usable]
        print(f"warning: {len(skipped)} bad file(s) skipped, with {n_listed - len(trials)} of "
              f"{n_listed} trials", flush=True)
        if not trials:
            raise EvalInputError(f"{test_list}: no trial is left after skipping bad files")
    n_target = sum(t.label for t in trials)
    if n_target in (0, len(trials)):
        raise EvalInputError(f"{test_list}: all {len(trials)} trials are "
                             f"{'non-target' if n_target == 0 else 'target'}; EER and minDCF "
                             "need both labels 1 and 0")
    files = trial_files(trials)
    paths = [os.path.normpath(os.path.join(test_path, f)) for f in files]
    cohort = []
    if score_norm is not None:
        cohort = validate_cohort(score_norm)
        known = set(paths)
        paths += [p for p in cohort if p not in known]
    index = {p: i for i, p in enumerate(paths)}
    rel_index = {f: i for i, f in enumerate(files)}
    pairs = np.array([(rel_index[t.path1], rel_index[t.path2]) for t in trials], dtype=np.int64)
    net = net.to(device)
    feats = extract(net, paths, eval_frames, num_eval, device=device, workers=workers,
                    progress=progress, keep_crops=False, cache=eval_cache,
                    skip_bad=on_bad_audio == "skip")
    try:
        if feats.unreadable:                    # failed while decoding, after a good header
            trials, pairs, dropped = _drop_unreadable(feats.unreadable, files, trials, pairs,
                                                      test_list)
            skipped = sorted(set(skipped) | dropped)
        faults.kill_if("kill_during_eval")      # test hook (capsv.faults): features read, not scored
        return _score_list(net, feats, trials, files, pairs, index, cohort, score_norm,
                           skipped, n_listed, progress)
    finally:
        feats.close()


def _score_list(net: SpeakerNet, feats: FileFeatures, trials: list[Trial], files: list[str],
                pairs: np.ndarray, index: dict[str, int], cohort: list[str],
                score_norm: ScoreNorm | None, skipped: list[str], n_listed: int,
                progress: bool) -> EvalResult:
    """The trials' scores and metrics, AS-normalised against the cohort when asked."""
    scores = score_pairs(net, feats, pairs, progress=progress)
    labels = [t.label for t in trials]
    if score_norm is None:
        return EvalResult(trials, scores, compute_metrics(scores, labels), skipped_files=skipped,
                          skipped_trials=n_listed - len(trials))
    cohort_ids = np.array([index[p] for p in cohort])
    file_ids = np.array([i for i in range(len(files)) if i not in feats.unreadable], np.int64)
    mean, std = np.full(len(files), np.nan), np.full(len(files), np.nan)
    mean[file_ids], std[file_ids] = _cohort_side_stats(net, feats, file_ids, cohort_ids,
                                                       score_norm.top_n, progress)
    normed = adaptive_snorm(scores, mean[pairs[:, 0]], std[pairs[:, 0]],
                            mean[pairs[:, 1]], std[pairs[:, 1]])
    return EvalResult(trials, normed, compute_metrics(normed, labels),
                      raw_scores=scores, raw_metrics=compute_metrics(scores, labels),
                      skipped_files=skipped, skipped_trials=n_listed - len(trials))


def _cohort_side_stats(net: SpeakerNet, feats: FileFeatures, file_ids: np.ndarray,
                       cohort_ids: np.ndarray, top_n: int, progress: bool,
                       entries: int = 1 << 24) -> tuple[np.ndarray, np.ndarray]:
    """AS-norm mean and std (len(file_ids),) of each trial file's top cohort scores.

    One row of cohort scores per trial file (CAP's score is symmetric, spec §3), the file
    itself left out when it is also in the cohort; computed for blocks of files of at most
    ``entries`` scores, so the (files, cohort) table is never held whole."""
    block = max(1, entries // len(cohort_ids))
    means, stds = [], []
    for start in range(0, len(file_ids), block):
        ids = file_ids[start:start + block]
        table = cohort_scores(net, feats, ids, cohort_ids, progress=progress)
        table[ids[:, None] == cohort_ids[None, :]] = -np.inf
        mean, std = cohort_stats(table, top_n)
        means.append(mean)
        stds.append(std)
    return np.concatenate(means), np.concatenate(stds)

def _drop_unreadable(unreadable: dict[int, str], files: list[str], trials: list[Trial],
                     pairs: np.ndarray, test_list: str) -> tuple[list[Trial], np.ndarray, set[str]]:
    """--on_bad_audio skip for files that failed while decoding: warn per file, leave out
    their trials (``pairs`` (n, 2) file indices of ``trials``). A cohort file cannot be left
    out (every trial's normalisation uses it): an error."""
    cohort = [why for index, why in unreadable.items() if index >= len(files)]
    if cohort:
        raise EvalInputError(f"unusable cohort file: {cohort[0]}")
    for why in unreadable.values():
        print(f"warning: skipping (--on_bad_audio skip): {why}", flush=True)
    keep = ~np.isin(pairs, list(unreadable)).any(axis=1)
    kept = [t for t, k in zip(trials, keep) if k]
    print(f"warning: {len(unreadable)} file(s) failed while decoding; {len(trials) - len(kept)} "
          f"more of their trials left out", flush=True)
    labels = {t.label for t in kept}
    if labels != {0, 1}:
        raise EvalInputError(f"{test_list}: the trials left after skipping bad files do not have "
                             "both labels 1 and 0; EER and minDCF need both")
    return kept, pairs[keep], {files[i] for i in unreadable}


def validate_cohort(norm: ScoreNorm) -> list[str]:
    """Full paths of the cohort files, checked like the trial files."""
    rel = read_audio_list(norm.cohort_list)
    if len(rel) < 2:
        raise EvalInputError(f"{norm.cohort_list}: a cohort needs at least 2 files, found {len(rel)}")
    validate_files(rel, norm.cohort_path, f"cohort list {norm.cohort_list}")
    full = list(dict.fromkeys(os.path.normpath(os.path.join(norm.cohort_path, r)) for r in rel))
    return full


@torch.inference_mode()
def cohort_scores(net: SpeakerNet, feats: FileFeatures, file_ids: np.ndarray,
                  cohort_ids: np.ndarray, progress: bool = True) -> np.ndarray:
    """(len(file_ids), len(cohort_ids)) scores, each computed like a trial's score.

    TAP/SAP: one matrix product of mean unit embeddings. CAP: every (file, cohort) pair goes
    through the batched pairwise engine, the file as support.
    """
    if not net.pairwise:
        files, cohort = feats.mean_embeddings(file_ids), feats.mean_embeddings(cohort_ids)
        return (files @ cohort.T).double().cpu().numpy()
    pairs = np.stack(np.meshgrid(file_ids, cohort_ids, indexing="ij"), axis=-1).reshape(-1, 2)
    return score_pairs(net, feats, pairs, progress=progress).reshape(len(file_ids), len(cohort_ids))
