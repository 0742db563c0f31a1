"""Fault injection for tests: make a run die (or go wrong) at an exact, named point.

Set ``CAPSV_FAULT`` before starting a run; unset (the normal case) every hook is a single
``is None`` check. A value is ``NAME`` or ``NAME:N`` (comma-separate several); ``N`` means
"the N-th time this process reaches that point" (default 1):

- ``kill_after_step:N``     SIGKILL right after the N-th optimiser step (mid-epoch).
- ``kill_at_epoch_start:N`` SIGKILL when the N-th epoch of this process begins.
- ``kill_during_save:N``    SIGKILL while the N-th checkpoint's temp file is written, before
  its rename (``capsv.utils.atomic_torch_save``).
- ``kill_after_save:N``     SIGKILL right after the N-th checkpoint is renamed into place,
  before the previous one is removed.
- ``kill_during_eval:N``    SIGKILL in the middle of the N-th evaluation (features read,
  trials not yet scored).
- ``kill_during_extract:N`` SIGKILL after the N-th batch of evaluation files is extracted
  (a feature store half written, ``capsv.evaluation.feature_store``).
- ``nan_loss:N``            make the loss of the N-th step NaN (not a kill).
- ``pause_after_step:N``    after the N-th optimiser step, print ``capsv-fault: paused``
  to stderr and wait (at most a minute) until the run has received SIGINT/SIGTERM: a test
  then sends the signal at an exact step instead of guessing with sleeps.
- ``pause_after_run``        the same once the last epoch is trained, evaluated and saved,
  just before ``train`` returns.
- ``pause_in_worker``        a DataLoader worker, as it starts, announces itself the same way
  and stays busy for a minute (like a worker stuck in a slow read).
- ``pause_during_save:N``   the same while the N-th checkpoint's temp file is written, before
  its rename; the wait ends when a signal handler raises (a second Ctrl-C) or after a minute.

``CAPSV_FAULT_RANK=R`` arms the faults only in the torchrun process of rank ``R``.

This is a test hook, not a feature: it exists so that tests/test_reliability.py can prove
that no checkpoint on disk is ever unloadable and that a restart continues exactly.
"""
from __future__ import annotations

import os
import signal
import time

_armed: dict[str, int] | None = None
_seen: dict[str, int] = {}


def arm(value: str | None = None) -> None:
    """Read ``CAPSV_FAULT`` (or ``value``) and reset the counters; called when a run starts."""
    global _armed
    value = os.environ.get("CAPSV_FAULT", "") if value is None else value
    only_rank = os.environ.get("CAPSV_FAULT_RANK")
    if only_rank is not None and only_rank != os.environ.get("RANK", "0"):
        value = ""                    # under torchrun: this fault is another rank's
    faults: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, _, count = item.partition(":")
        faults[name] = int(count) if count else 1
    _armed = faults or None
    _seen.clear()


def armed(name: str) -> bool:
    """Count one more pass through point ``name``; True on the pass the fault asks for."""
    if _armed is None or name not in _armed:
        return False
    _seen[name] = _seen.get(name, 0) + 1
    return _seen[name] == _armed[name]


def kill_if(name: str) -> None:
    """Die by SIGKILL (no cleanup, no ``finally``) when fault ``name`` fires here."""
    if armed(name):
        os.kill(os.getpid(), signal.SIGKILL)


def pause_if(name: str, until, limit_s: float = 60.0) -> None:
    """When fault ``name`` fires here, announce it on stderr and wait until ``until()`` is
    true. Short sleeps, not ``signal.pause()``: a signal arriving just before the wait
    would otherwise be missed and the wait would never end."""
    if not armed(name):
        return
    os.write(2, f"capsv-fault: paused at {name} (pid {os.getpid()})\n".encode())
    deadline = time.monotonic() + limit_s
    while not until() and time.monotonic() < deadline:
        time.sleep(0.01)


arm()
