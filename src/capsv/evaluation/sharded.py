"""Evaluation under torchrun: the files' feature extraction split over the ranks.

:func:`capsv.evaluation.pipeline.evaluate_list` is the one pipeline (input checks,
``--on_bad_audio``, scoring, metrics); :func:`sharded_extractor` only replaces its extraction
step. Rank ``r`` of ``w`` extracts files ``r, r + w, r + 2w, ...``; every rank receives
every file's features (one ``all_gather_object``) and then scores the same pairs, so each
rank ends with the same result. Needs an initialised default process group; imports nothing
from :mod:`capsv.train` (``dist`` is anything with ``rank`` and ``world_size``).
"""
from __future__ import annotations

import torch
import torch.distributed as torch_dist

from .feature_store import IN_MEMORY
from .extract import FileFeatures, extract_features


def sharded_extractor(dist):
    """An ``extract`` for :func:`~capsv.evaluation.pipeline.evaluate_list` that splits the
    files over the ranks of ``dist`` and gathers their features on every rank."""
    def extract(net, paths: list, eval_frames: int, num_eval: int, device="cpu", workers: int = 0,
                progress: bool = False, keep_crops: bool = False, cache=None,
                skip_bad: bool = False) -> FileFeatures:
        share = list(range(dist.rank, len(paths), dist.world_size))
        # In memory: a rank's share goes to the others at once, so a disk store buys nothing.
        mine = extract_features(net, [paths[i] for i in share], eval_frames, num_eval,
                                device=device, workers=workers, progress=False,
                                keep_crops=False, cache=IN_MEMORY, skip_bad=skip_bad)
        part = {"rows": {share[local]: _to_cpu(row) for local, row in mine.rows().items()},
                "unreadable": {share[local]: why for local, why in mine.unreadable.items()}}
        gathered = [None] * dist.world_size
        torch_dist.all_gather_object(gathered, part)
        feats = FileFeatures()
        for other in gathered:
            for index, row in sorted(other["rows"].items()):
                feats.keep(index, {k: v.to(device) for k, v in row.items()}, len(paths),
                           fixed_size=eval_frames > 0)
            feats.unreadable.update(other["unreadable"])
        return feats
    return extract


def _to_cpu(row: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: tensor.cpu() for name, tensor in row.items()}


__all__ = ["sharded_extractor"]
