"""Scores of kept file pairs (spec §3, §5): TAP/SAP as the dot product of mean unit
embeddings; CAP through the grouped low-cost form (:mod:`capsv.evaluation.cap_scoring`), or in
padded and masked batches for whole utterances of different lengths."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch
from tqdm import tqdm

from ..models import SpeakerNet
from ..models.pooling import pad_frames
from .cap_scoring import GroupedCapScorer
from .extract import FileFeatures


@torch.inference_mode()
def score_pairs(net: SpeakerNet, feats: FileFeatures, pairs: np.ndarray,
                chunk: int = 128, progress: bool = True) -> np.ndarray:
    """Scores of (index1, index2) file pairs, file 1 as CAP support, file 2 as query.

    ``chunk`` sizes the per-call batches of the padded (full-length) and train-mode CAP
    paths; eval-mode fixed-size CAP uses :class:`capsv.evaluation.cap_scoring.GroupedCapScorer`,
    whose chunks are sized by its buffer instead."""
    scores = np.empty(len(pairs), dtype=np.float64)
    bar = tqdm(total=len(pairs), desc="trials", unit="trial", disable=not progress, leave=False)
    try:
        PAIR_SCORERS[net.pooling.kept](net, feats, pairs, scores, chunk, bar)
    finally:
        bar.close()
    return scores


def _score_vectors(net: SpeakerNet, feats: FileFeatures, pairs: np.ndarray, scores: np.ndarray,
                   chunk: int, bar) -> None:
    """Heads that keep one vector a file (TAP/SAP): 1024 trials a step, a few MB of gathered
    vectors whatever the list's length, scored by the head."""
    for start in range(0, len(pairs), 1024):
        part = pairs[start:start + 1024]
        a, b = feats.mean_embeddings(part[:, 0]), feats.mean_embeddings(part[:, 1])
        kept = net.pooling.score_kept({"emb": a}, {"emb": b})
        scores[start:start + len(part)] = kept.double().cpu().numpy()
        bar.update(len(part))


def _score_frames(net: SpeakerNet, feats: FileFeatures, pairs: np.ndarray, scores: np.ndarray,
                  chunk: int, bar) -> None:
    """CAP, which keeps frames: the engine that fits how they are stored."""
    # Trials whose sides have the same frame counts can share one batched call (fixed-size
    # stores hold one shape only).
    buckets = defaultdict(list)
    if feats.frames_store is None:
        for row, (i, j) in enumerate(pairs):
            buckets[(feats.frames[i].shape, feats.frames[j].shape)].append(row)
    if len(buckets) > 1:  # whole utterances: pad and mask instead of one call per length pair
        _score_cap_padded(net, feats, pairs, scores, chunk, bar)
        return
    if feats.frames_store is not None and not net.pooling.training and not net.pooling.literal:
        # Eval-mode CAP on fixed-size crops: trials grouped by file into large matmuls.
        scorer = GroupedCapScorer(net.pooling, *_stores_where_scored(net, feats))
        scores[:] = scorer.score(pairs, on_chunk=bar.update)
        return
    if feats.frames_store is not None:
        # Small chunks stay in cache on a CPU (16 measured best of 16/64/256); a GPU wants many.
        per_call = chunk if _device_of(net).type == "cuda" else min(chunk, 16)
        _score_cap_stored(net, feats, pairs, scores, per_call, bar)
        return
    for rows in buckets.values():
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            sup = [pairs[r, 0] for r in part]
            qry = [pairs[r, 1] for r in part]
            kept = net.pooling.score_kept(
                {"frames": torch.stack([feats.frames[i] for i in sup]),
                 "proj": torch.stack([feats.proj[i] for i in sup])},
                {"frames": torch.stack([feats.frames[i] for i in qry]),
                 "proj": torch.stack([feats.proj[i] for i in qry])})
            scores[part] = kept.double().cpu().numpy()
            bar.update(len(part))


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
        kept = net.pooling.score_kept({"frames": support, "proj": hs}, {"frames": query, "proj": hq})
        scores[start:start + n] = kept.double().cpu().numpy()
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
        kept = net.pooling.score_kept({"frames": support, "proj": hs.transpose(2, 3)},
                                      {"frames": query, "proj": hq.transpose(2, 3)},
                                      mask_s, mask_q)
        scores[part] = kept.double().cpu().numpy()
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


@torch.inference_mode()
def cohort_scores(net: SpeakerNet, feats: FileFeatures, file_ids: np.ndarray,
                  cohort_ids: np.ndarray, progress: bool = True) -> np.ndarray:
    """(len(file_ids), len(cohort_ids)) scores, each computed like a trial's score.

    Heads that keep one vector a file (TAP/SAP): one matrix product of those vectors. Others
    (CAP): every (file, cohort) pair goes through :func:`score_pairs`, the file as support.
    """
    shortcut = COHORT_SHORTCUTS.get(net.pooling.kept)
    if shortcut is not None:
        return shortcut(feats, file_ids, cohort_ids)
    pairs = np.stack(np.meshgrid(file_ids, cohort_ids, indexing="ij"), axis=-1).reshape(-1, 2)
    return score_pairs(net, feats, pairs, progress=progress).reshape(len(file_ids), len(cohort_ids))


def _cohort_of_vectors(feats: FileFeatures, file_ids: np.ndarray,
                       cohort_ids: np.ndarray) -> np.ndarray:
    """One vector a file: every (file, cohort) score in one matrix product."""
    files, cohort = feats.mean_embeddings(file_ids), feats.mean_embeddings(cohort_ids)
    return (files @ cohort.T).double().cpu().numpy()


# How kept files are scored, by what the head keeps of a file (its ``kept``): pairs, and the
# (files, cohort) tables of AS-norm when there is a faster way than pair by pair.
PAIR_SCORERS = {("emb",): _score_vectors, ("frames", "proj"): _score_frames}
COHORT_SHORTCUTS = {("emb",): _cohort_of_vectors}
