"""Learning-rate schedules by name (``--lr_schedule``).

- ``plateau``: the paper's (ReduceLROnPlateau on the epoch loss: 10x lower after
  ``--patience`` epochs without improvement). Steps once per epoch.
- ``cosine``: linear warm-up over the first ``--warmup`` share of the run, then a half cosine
  from ``--lr`` down to ``--lr * --final_lr``. It follows the run's progress (the largest share
  used of --max_epoch, --max_steps and --max_seconds, see :mod:`capsv.train.budget`) and is set
  after every optimiser step, so it fits any budget, including one in seconds.
"""
from __future__ import annotations

import math

import torch

from ..registry import Registry

SCHEDULES = Registry("LR schedule")


class _Schedule:
    """Interface: ``epoch_end(loss)`` once per epoch, ``progress(fraction)`` after each step."""

    def epoch_end(self, loss: float) -> None:
        pass

    def progress(self, fraction: float) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@SCHEDULES.register("plateau")
class PlateauSchedule(_Schedule):
    def __init__(self, optimizer, patience: int, **_):
        self.inner = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, patience=patience,
                                                                threshold=1e-4)

    def epoch_end(self, loss: float) -> None:
        self.inner.step(loss)

    def step(self, loss: float) -> None:        # the torch scheduler's own name
        self.epoch_end(loss)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


@SCHEDULES.register("cosine")
class CosineSchedule(_Schedule):
    def __init__(self, optimizer, base_lr: float, warmup: float = 0.05, final_lr: float = 0.01, **_):
        self.optimizer, self.base_lr = optimizer, float(base_lr)
        self.warmup, self.final = float(warmup), float(final_lr)
        self.progress(0.0)

    def lr_at(self, fraction: float) -> float:
        fraction = min(max(fraction, 0.0), 1.0)
        if self.warmup > 0 and fraction < self.warmup:
            return self.base_lr * max(fraction / self.warmup, 0.01)
        rest = (fraction - self.warmup) / max(1.0 - self.warmup, 1e-9)
        low = self.base_lr * self.final
        return low + (self.base_lr - low) * 0.5 * (1.0 + math.cos(math.pi * rest))

    def progress(self, fraction: float) -> None:
        lr = self.lr_at(fraction)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, loss: float) -> None:
        self.epoch_end(loss)


def make_schedule(name: str, optimizer, *, base_lr: float, patience: int, warmup: float,
                  final_lr: float) -> _Schedule:
    return SCHEDULES.build(name, optimizer=optimizer, base_lr=base_lr, patience=patience,
                           warmup=warmup, final_lr=final_lr)


__all__ = ["SCHEDULES", "make_schedule", "PlateauSchedule", "CosineSchedule"]
