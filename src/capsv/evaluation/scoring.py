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
