"""Checkpoint files of a run: their names under ``save_path/model``, finding the newest one
that loads, and cleaning up what a kill left behind."""
from __future__ import annotations

import os
import re

from ..errors import CapsvError
from ..models.checkpoint import read_checkpoint

CHECKPOINT_RE = re.compile(r"^model(\d{9})\.model$")
INTERRUPTED_RE = re.compile(r"^interrupted(\d{9})\.model$")


def checkpoint_path(save_path: str, epoch: int) -> str:
    return os.path.join(save_path, "model", "model%09d.model" % epoch)


def curve_path(save_path: str, steps: int) -> str:
    """The model kept at a mid-run evaluation point (``--keep_curve_models``)."""
    return os.path.join(save_path, "model", f"curve{steps:09d}.model")


def interrupted_path(save_path: str, epoch: int) -> str:
    """Where a run stopped by a signal during ``epoch`` saves its mid-epoch state."""
    return os.path.join(save_path, "model", "interrupted%09d.model" % epoch)


def list_checkpoints(save_path: str) -> list[tuple[int, str]]:
    """(epoch, path) of every ``model%09d.model`` in ``save_path/model``, newest first."""
    folder = os.path.join(save_path, "model")
    if not os.path.isdir(folder):
        return []
    found = [(int(m.group(1)), os.path.join(folder, name))
             for name in os.listdir(folder) if (m := CHECKPOINT_RE.match(name))]
    return sorted(found, reverse=True)


def latest_checkpoint(save_path: str, log=print) -> tuple[int, str, dict] | None:
    """The newest checkpoint that loads, as (epoch, path, contents); broken ones are skipped."""
    for epoch, path in list_checkpoints(save_path):
        try:
            return epoch, path, read_checkpoint(path)
        except CapsvError as exc:
            log(f"warning: skipping unreadable checkpoint: {exc}")
    return None


def remove_stale_temp_files(folder: str) -> None:
    """Temp files of atomic writes interrupted by a kill (``.<name>.<random>.tmp``)."""
    if not os.path.isdir(folder):
        return
    for name in os.listdir(folder):
        if name.startswith(".") and name.endswith(".tmp"):
            os.unlink(os.path.join(folder, name))


def remove_interrupted(save_path: str, up_to_epoch: int) -> None:
    folder = os.path.join(save_path, "model")
    for name in os.listdir(folder):
        m = INTERRUPTED_RE.match(name)
        if m and int(m.group(1)) <= up_to_epoch:
            os.unlink(os.path.join(folder, name))
