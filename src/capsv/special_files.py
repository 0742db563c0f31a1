"""Refuse FIFOs, sockets and devices where capsv opens a file for reading.

Opening a FIFO blocks until a writer appears (forever, in practice), and a character device
may never end. Every reader calls :func:`not_regular` on the path first; it only stats (a
stat never blocks), following symlinks like ``open`` does.
"""
from __future__ import annotations

import os
import stat

_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISDIR, "a folder"))


def not_regular(path: str) -> str | None:
    """Why ``path`` cannot be read as a file (e.g. "a FIFO (named pipe)"); None when it is a
    regular file or does not exist (the caller's own open reports that)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")
