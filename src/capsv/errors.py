"""One base class for errors caused by the user's input; the CLI prints them without a traceback."""
from __future__ import annotations

import errno


class CapsvError(ValueError):
    """Bad input or state that the user can fix; the message says what and where."""


# errno -> what the user can do about it (the CLI's last resort for an OSError nobody caught)
OS_ERROR_ADVICE = {
    errno.ENOSPC: "the disk is full: free space there or choose another folder",
    errno.EDQUOT: "the disk quota is used up: free space or choose another folder",
    errno.EFBIG: "the file is larger than the file system or the process's file-size limit allows",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: choose a path you may write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a path you may write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder: fix the path",
    errno.EEXIST: "a file is in the way where a folder is needed: move it or fix the path",
    errno.EISDIR: "it is a folder where a file was expected: name a file",
    errno.ELOOP: "a symbolic link loop: fix or remove the link",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENAMETOOLONG: "the name is too long for the file system",
    errno.EIO: "an input/output error: the disk or network file system failed",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n)",
}


def os_error_message(exc: OSError, path: str | None = None) -> str:
    """One line for an OSError: the path, the system's words and what to do."""
    where = path or exc.filename
    if where is not None and exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    what = exc.strerror or str(exc) or type(exc).__name__
    advice = OS_ERROR_ADVICE.get(exc.errno)
    text = f"{where}: {what}" if where is not None else what
    return f"{text} ({advice})" if advice else text
