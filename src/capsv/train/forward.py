"""The loss of one training batch: backbone, pooling, objective (spec §4). Used by the step
in one process and, wrapped for DDP, by :class:`capsv.train.distributed.TrainStep`."""
from __future__ import annotations

import torch

from ..models import SpeakerNet
from .losses import Embeddings, LossOutput, Objective


def forward_batch(net: SpeakerNet, objective: Objective, waves: torch.Tensor,
                  labels: torch.Tensor, batch_size: int, per_group_bn: bool = False) -> LossOutput:
    """Loss of one batch. ``waves`` (M*B, samples) and ``labels`` (M*B,) are utterance-major.

    ``per_group_bn=False``: one backbone call over all M*B crops (BatchNorm statistics over
    the whole batch; fastest). ``True``: one call for the supports and one per query group,
    as the reference does, so each group has its own BatchNorm statistics (exact parity).
    """
    if per_group_bn:
        frames = torch.cat([net.frames(group) for group in waves.split(batch_size)])
    else:
        frames = net.frames(waves)
    if net.pairwise:
        e_s, e_q = net.pooling(frames[:batch_size], frames[batch_size:])
        emb = Embeddings(batch_size, e_s=e_s, e_q=e_q)
    else:
        emb = Embeddings(batch_size, emb=net.pooling(frames))
    return objective(emb, labels[:batch_size])
