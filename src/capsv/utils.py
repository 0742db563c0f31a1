"""Small shared helpers: device choice, atomic file writes, hashing."""
from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported lazily: the numpy-only tools (capsv synth) start fast
    import torch


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; otherwise the named device."""
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} was asked for, but CUDA is not available here; "
                           "use --device cpu")
    return device


@contextmanager
def atomic_path(path: str):
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)


def atomic_torch_save(obj, path: str) -> None:
    import torch

    from . import faults

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        faults.kill_if("kill_during_save")     # test hooks: the temp file exists, not yet renamed
        faults.pause_if("pause_during_save", until=lambda: False)


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
