"""Small shared helpers: device choice, atomic file writes, hashing."""
from __future__ import annotations

import errno
import hashlib
import os
import secrets
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .errors import CapsvError, os_error_message

if TYPE_CHECKING:  # torch is imported lazily: the numpy-only tools (capsv synth) start fast
    import torch


class DeviceError(CapsvError):
    """A --device that does not exist on this machine."""


# device types capsv runs on -> whether this machine has one
DEVICE_TYPES = {
    "cpu": lambda torch: True,
    "cuda": lambda torch: torch.cuda.is_available(),
    "mps": lambda torch: torch.backends.mps.is_available(),
}


def resolve_device(name: str | None = None) -> torch.device:
    """``None``/"auto" -> CUDA when available, else CPU; otherwise the named device, which
    must exist here (:class:`DeviceError` otherwise)."""
    import torch

    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choices = "auto, cpu, cuda or cuda:N"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"--device {name} is not a device name; use {choices}") from None
    if device.type not in DEVICE_TYPES:
        raise DeviceError(f"--device {name}: capsv runs on {', '.join(DEVICE_TYPES)}; use {choices}")
    if not DEVICE_TYPES[device.type](torch):
        raise DeviceError(f"--device {name} was asked for, but {device.type.upper()} is not "
                          "available here; use --device cpu (or auto)")
    if device.type == "cuda" and device.index is not None and \
            device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def new_temp_beside(path: str) -> str:
    """Create an empty hidden ``.<name>.<random>.tmp`` beside ``path`` and return its name.

    Created with mode 0666 minus the umask, like any new file: ``mkstemp``'s 0600 would
    survive the rename and hide checkpoints, scores and data from collaborators."""
    directory = os.path.dirname(os.path.abspath(path))
    for _ in range(100):
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", tmp)


@contextmanager
def atomic_path(path: str, fsync: bool = True, temp: str | None = None):
    """Yield a temporary path beside ``path``; rename it over ``path`` only on success (the
    one atomic writer of the package: every file capsv writes goes through it).
    An OSError without a file name (a write that hit a full disk) is given ``path``'s.

    ``fsync=False``: skip flushing to disk before the rename (bulk outputs that a rerun
    rebuilds, e.g. a million converted clips); ``temp``: a fixed temporary name instead of a
    fresh hidden one (a name a later stage or the user recognises)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = temp if temp is not None else new_temp_beside(path)
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


class OutputError(CapsvError):
    """An output folder capsv cannot write to."""


def ensure_writable_dir(path: str, flag: str) -> None:
    """Create folder ``path`` if needed and prove it takes a file (one byte, fsynced), so
    that a file in its place, a read-only or full disk is one clear error at start-up."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"{flag} {path} is a file, not a folder; give a folder (it is "
                          "created if missing)")
    try:
        os.makedirs(path, exist_ok=True)
        probe = new_temp_beside(os.path.join(path, ".capsv-write-test"))
        try:
            with open(probe, "wb") as f:
                f.write(b"\0")
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write in {flag} {os_error_message(exc, path)}") from None


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
