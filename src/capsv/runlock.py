"""One training run per ``--save_path``: a lock file naming its owner.

``save_path/run.lock`` holds the owner's pid, host and process start time (JSON). It is
created atomically (a complete temp file hard-linked to the name, which fails if it exists)
and removed when the run ends, by an error or a signal included. A lock whose owner is gone
(a run killed by SIGKILL or a crash of the machine: same host, and the pid is dead or now
belongs to a process started at another time) is stale: it is taken over with a message.
A live owner, or one on another host (whose pids cannot be checked from here), is refused.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
from contextlib import contextmanager

from .errors import CapsvError

LOCK_NAME = "run.lock"


class RunLockError(CapsvError):
    """Another run owns this --save_path."""


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True               # someone else's process
    return True


def _owner_is_gone(owner: dict) -> bool:
    """True when the lock's owner ran on this host and no longer runs."""
    if owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return True
    started = owner.get("started")
    return started is not None and _start_time(pid) not in (None, started)   # pid reused


def _write_lock(path: str, me: dict) -> bool:
    """Create ``path`` holding ``me``, atomically; False if it exists."""
    fd, tmp = tempfile.mkstemp(prefix=".run.lock.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


def _read_owner(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            owner = json.load(f)
        return owner if isinstance(owner, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}                  # garbled: treated as the lock of an unknown owner


@contextmanager
def run_lock(save_path: str, enabled: bool = True, log=print):
    """Hold ``save_path/run.lock`` for the duration of the block (no-op if not ``enabled``)."""
    if not enabled:
        yield None
        return
    os.makedirs(save_path, exist_ok=True)
    path = os.path.join(save_path, LOCK_NAME)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": _start_time(os.getpid())}
    for _ in range(3):
        try:
            if _write_lock(path, me):
                break
        except OSError as exc:
            raise RunLockError(f"cannot create the lock file {path} ({exc}); check that "
                               "--save_path is a writable folder") from None
        owner = _read_owner(path)
        if owner is None:
            continue               # released meanwhile: try again
        who = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}"
        if not _owner_is_gone(owner):
            raise RunLockError(
                f"{save_path} is in use by another capsv train ({who}, lock file {path}); "
                "wait for it to finish or use another --save_path. If that run is gone "
                "(e.g. its machine crashed), delete the lock file")
        log(f"warning: taking over the stale lock {path} of a run that is gone ({who})")
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    else:
        raise RunLockError(f"could not create the lock file {path}; check the folder's permissions")
    try:
        yield path
    finally:
        if _read_owner(path) == me:
            os.unlink(path)
