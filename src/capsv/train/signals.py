"""Stopping a run: SIGINT/SIGTERM are recorded and acted on after the step in progress
(:class:`StopSignals`); what the caller sees is :class:`TrainInterrupted`, naming the
checkpoint the same command continues from."""
from __future__ import annotations

import os
import signal

from . import distributed


class TrainInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT (Ctrl-C) or SIGTERM. ``checkpoint``: the file the same
    command continues from (None if there is none yet); ``signum``: the signal. A
    KeyboardInterrupt, so code that handles Ctrl-C keeps working; ``str()`` is the message."""

    def __init__(self, message: str, checkpoint: str | None, signum: int):
        super().__init__(message)
        self.checkpoint, self.signum = checkpoint, int(signum)

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by a signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + self.signum

    def __str__(self) -> str:
        return str(self.args[0])


class StopNow(KeyboardInterrupt):
    """A second stop signal: leave at once, whatever is in progress."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    """SIGINT and SIGTERM while training (a context manager). The first signal is only
    recorded, so the loop can finish the optimiser step in progress and save exactly where it
    is (a handler that raised could leave the weights half-updated). A second one raises
    :class:`StopNow` at once; the checkpoints on disk are intact then too (atomic writes)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        try:
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:          # not the main thread: signals stay the caller's business
            pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise StopNow(signum)
        self.signum = signum
        # os.write, not print: print may be in progress in the frame this handler interrupted.
        os.write(1, f"{signal.Signals(signum).name} received: stopping after the current "
                    "training step (or after the evaluation and checkpoint in progress) with a "
                    "checkpoint; send it again to stop at once\n".encode())

    def poll(self, dist, device) -> int:
        """The signal this process (under DDP: any rank) received, else 0. Under DDP every rank
        must call it at the same points, so that all of them stop after the same step."""
        return distributed.max_int(self.signum or 0, dist, device)


class TrainStopped(Exception):
    """Raised by :func:`train_one_epoch` after the step during which a stop signal came."""

    def __init__(self, progress: "EpochProgress", total: int, signum: int):
        super().__init__(f"stopped at step {progress.position} of {total}")
        self.progress, self.total, self.signum = progress, total, signum


def stopped_at_once(signum: int, epoch: int, ckpt: str | None, log) -> TrainInterrupted:
    return interrupted(signum, f"during epoch {epoch}, stopped at once: the work since "
                        f"{ckpt or 'the start'} is lost; run the same command again to continue"
                        f"{' from ' + ckpt if ckpt else ''}", ckpt, log)


def stopped_between_epochs(signum: int, epoch: int, ckpt: str | None, log) -> TrainInterrupted:
    return interrupted(signum, f"before epoch {epoch}: {ckpt or 'no checkpoint yet'} holds all "
                        "finished epochs; run the same command again to continue", ckpt, log)


def interrupted(signum: int, what: str, ckpt: str | None, log) -> TrainInterrupted:
    """Log ``interrupted by SIG...`` + ``what`` and return the exception that carries it."""
    message = f"interrupted by {signal.Signals(signum).name} {what}"
    log.info(message)
    return TrainInterrupted(message, ckpt, signum)
