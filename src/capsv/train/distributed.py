"""Multi-process training under ``torchrun`` (DistributedDataParallel), and its evaluation.

    torchrun --nproc_per_node 2 -m capsv.cli train --config ... # or: torchrun ... $(which capsv) train ...

:func:`setup` reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (set by torchrun); without them (or
with ``WORLD_SIZE=1``) everything here is a no-op and training is the single-process loop.

What one process of N does (see ``capsv train --help``):
- the sampler deals it every N-th batch of the epoch's global plan (disjoint shares; every rank
  runs the same number of steps), so a step consumes N batches of ``--batch_size`` speakers and
  an *epoch* is still one pass over the same plan: the LR schedule does not depend on N;
- the loss of its own batch is backpropagated and DDP averages the gradients of every
  parameter, backbone, pooling and loss (the global classifier included), because the module
  DDP wraps, :class:`TrainStep`, owns both the network and the objective;
- BatchNorm statistics are per rank (as with ``--per_group_bn``, each forward sees its own
  crops); running statistics are broadcast from rank 0 before each forward;
- the plateau scheduler steps on the epoch loss averaged over all ranks (:func:`mean`);
- only rank 0 writes checkpoints and logs and shows progress bars; every rank loads the same
  checkpoint when a run resumes;
- evaluation: the one pipeline of ``capsv eval`` (:func:`capsv.evaluation.evaluate_list`, with
  its input checks and ``--on_bad_audio``); each rank extracts the features of every N-th test
  file and every rank gets all of them (:mod:`capsv.evaluation.sharded`); extraction is per
  file, so the scores equal a single process's, and every rank records rank 0's metrics.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..errors import CapsvError
from .losses import LossOutput
from ..utils import resolve_device
from .forward import forward_batch


class DistributedError(CapsvError):
    """A torchrun environment that cannot be used."""


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env(env=os.environ) -> Dist:
    """The process's place in a torchrun job; ``Dist()`` when not launched by torchrun."""
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise DistributedError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {exc}") from None
    if not 0 <= rank < max(world, 1):
        raise DistributedError(f"RANK {rank} is outside WORLD_SIZE {world}")
    return Dist(rank, max(world, 1), local)


def setup(device_name: str | None) -> tuple[Dist, torch.device]:
    """Join the process group (gloo on CPU, nccl on CUDA) and pick this rank's device."""
    dist = from_env()
    device = resolve_device(device_name)
    if not dist.enabled:
        return dist, device
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist, device


def teardown(dist: Dist) -> None:
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def barrier(dist: Dist) -> None:
    if dist.enabled:
        torch_dist.barrier()


def mean(value: float, dist: Dist, device: torch.device) -> float:
    """``value`` averaged over all ranks (every rank gets the same number)."""
    if not dist.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch_dist.all_reduce(t)
    return float(t.item()) / dist.world_size


def total(value: int, dist: Dist, device: torch.device) -> int:
    if not dist.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    torch_dist.all_reduce(t)
    return int(t.item())


def max_int(value: int, dist: Dist, device: torch.device) -> int:
    """The largest ``value`` of all ranks (e.g. a stop flag: one rank's signal stops all)."""
    if not dist.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return int(t.item())


def gather(obj, dist: Dist) -> list:
    """``obj`` of every rank, in rank order, on every rank (picklable objects, CPU tensors)."""
    if not dist.enabled:
        return [obj]
    out = [None] * dist.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def reduce_epoch(stats, dist: Dist, device: torch.device):
    """Epoch statistics of all ranks: loss/accuracy/parts averaged, crops summed (in place)."""
    if not dist.enabled:
        return stats
    stats.loss = mean(stats.loss, dist, device)
    stats.acc = mean(stats.acc, dist, device)
    stats.parts = {k: mean(v, dist, device) for k, v in sorted(stats.parts.items())}
    stats.crops = total(stats.crops, dist, device)
    return stats


# --------------------------------------------------------------------------- the step module
class TrainStep(nn.Module):
    """Network + objective in one module: ``(waves, labels) -> (loss, top1, logits, parts,
    global_logits)``. Wrapping this (not the network alone) in DDP makes DDP average the
    gradients of the loss's parameters too (the global classifier's ``global_w``)."""

    def __init__(self, net: nn.Module, objective: nn.Module, batch_size: int,
                 per_group_bn: bool = False):
        super().__init__()
        self.net, self.objective = net, objective
        self.batch_size, self.per_group_bn = batch_size, per_group_bn

    def forward(self, waves: torch.Tensor, labels: torch.Tensor):
        out = forward_batch(self.net, self.objective, waves, labels, self.batch_size,
                            self.per_group_bn)
        # A plain tuple: DDP walks the output for tensors, and it does not know dataclasses.
        return out.loss, out.top1, out.logits, out.parts, out.global_logits


def as_loss_output(result) -> LossOutput:
    loss, top1, logits, parts, global_logits = result
    return LossOutput(loss, top1, logits, parts, global_logits)


def wrap(net: nn.Module, objective: nn.Module, batch_size: int, per_group_bn: bool,
         dist: Dist, device: torch.device) -> nn.Module:
    """The module a training step calls; DDP-wrapped when running under torchrun."""
    step = TrainStep(net, objective, batch_size, per_group_bn)
    if not dist.enabled:
        return step
    ids = [device.index] if device.type == "cuda" else None
    # Every parameter of every backbone/pooling/loss gets a gradient each step, so DDP need
    # not traverse the graph for unused ones (CAPSV_DDP_FIND_UNUSED=1 turns that on).
    find_unused = os.environ.get("CAPSV_DDP_FIND_UNUSED", "0") == "1"
    return DistributedDataParallel(step, device_ids=ids, find_unused_parameters=find_unused)


def share_main_buffers(module: nn.Module, dist: Dist) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them
    before each forward, but the last forward of an epoch leaves each rank with statistics
    updated by its own batch; evaluation must use the ones rank 0 checkpoints."""
    if dist.enabled:
        for buffer in module.buffers():
            torch_dist.broadcast(buffer, src=0)


def from_main(obj, dist: Dist):
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if not dist.enabled:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]
