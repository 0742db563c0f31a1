"""How long a run may train: a clock that counts training time only, and the run's progress.

A run ends at whichever limit comes first: ``--max_epoch``, ``--max_steps`` (optimiser steps:
the same on every machine) or ``--max_seconds`` of training. Seconds are counted on the
``--budget_clock``:

- ``wall``: elapsed time of the training steps (data loading included);
- ``cpu``: processor time of the training process, all its threads summed
  (``time.process_time``). It hardly depends on what else runs on the machine, which makes
  "CPU-minutes" comparable between runs; loader worker processes are not counted, so it
  suits ``--nDataLoaderThread 0``.

Evaluation and checkpoint writing are never counted (the loop pauses the clock around them).
The seconds and steps spent are stored in the checkpoint's meta, so a resumed run continues
the same budget instead of starting it again.
"""
from __future__ import annotations

import time

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


class TrainBudget:
    """Training seconds and steps spent against their limits (0 = no limit)."""

    def __init__(self, max_seconds: float = 0.0, max_steps: int = 0, clock: str = "wall",
                 spent_seconds: float = 0.0, spent_steps: int = 0):
        if clock not in CLOCKS:
            raise ValueError(f"unknown budget clock {clock!r}; choose one of {', '.join(CLOCKS)}")
        self.max_seconds, self.max_steps, self.clock = float(max_seconds), int(max_steps), clock
        self.seconds, self.steps = float(spent_seconds), int(spent_steps)
        self._now = CLOCKS[clock]
        self._since: float | None = None

    @classmethod
    def from_meta(cls, max_seconds: float, max_steps: int, clock: str, meta: dict) -> "TrainBudget":
        """Continue the budget of a resumed run; a run written with another clock restarts it."""
        spent = meta.get("budget", {})
        same = spent.get("clock") == clock
        return cls(max_seconds, max_steps, clock, spent.get("seconds", 0.0) if same else 0.0,
                   spent.get("steps", 0))

    def as_meta(self) -> dict:
        return {"clock": self.clock, "seconds": self.seconds, "steps": self.steps}

    # -- the clock runs only between start() and pause() ----------------------------------
    def start(self) -> None:
        if self._since is None:
            self._since = self._now()

    def pause(self) -> None:
        if self._since is not None:
            self.seconds += self._now() - self._since
            self._since = None

    def step_done(self) -> None:
        """Count one optimiser step and bring the seconds up to date."""
        self.steps += 1
        if self._since is not None:
            now = self._now()
            self.seconds += now - self._since
            self._since = now

    @property
    def limited(self) -> bool:
        return self.max_seconds > 0 or self.max_steps > 0

    @property
    def exhausted(self) -> bool:
        return ((self.max_seconds > 0 and self.seconds >= self.max_seconds)
                or (self.max_steps > 0 and self.steps >= self.max_steps))

    def fraction(self, epoch_fraction: float | None = None) -> float:
        """How far the run is, 0..1: the largest share used of any limit (``epoch_fraction``:
        epochs done / --max_epoch). Schedules that anneal over the run follow it."""
        shares = [epoch_fraction or 0.0]
        if self.max_seconds > 0:
            shares.append(self.seconds / self.max_seconds)
        if self.max_steps > 0:
            shares.append(self.steps / self.max_steps)
        return min(1.0, max(shares))

    def describe(self) -> str:
        limits = []
        if self.max_seconds > 0:
            limits.append(f"{self.max_seconds:g} s of training ({self.clock} clock)")
        if self.max_steps > 0:
            limits.append(f"{self.max_steps} optimiser steps")
        spent = f"; {self.seconds:.0f} s and {self.steps} steps already spent" if self.steps else ""
        return "budget: " + " or ".join(limits) + ", whichever comes first" + spent


class EvalTimer:
    """When to evaluate mid-run: every ``every_seconds`` of budget time or ``every_steps`` steps."""

    def __init__(self, every_seconds: float = 0.0, every_steps: int = 0,
                 budget: TrainBudget | None = None):
        self.every_seconds, self.every_steps = float(every_seconds), int(every_steps)
        self.budget = budget
        self.last_seconds = budget.seconds if budget else 0.0
        self.last_steps = budget.steps if budget else 0

    @property
    def enabled(self) -> bool:
        return self.every_seconds > 0 or self.every_steps > 0

    def due(self) -> bool:
        b = self.budget
        return b is not None and (
            (self.every_seconds > 0 and b.seconds - self.last_seconds >= self.every_seconds)
            or (self.every_steps > 0 and b.steps - self.last_steps >= self.every_steps))

    def mark(self) -> None:
        self.last_seconds, self.last_steps = self.budget.seconds, self.budget.steps


__all__ = ["CLOCKS", "TrainBudget", "EvalTimer"]
