"""DataLoader worker processes that never outlive their run, and whose errors read like the
main process's own.

Workers ignore SIGINT/SIGTERM (the training process handles them and needs the batch in
flight), so nothing that relies on SIGTERM can end them. Three things make sure they end:

- :func:`die_with_parent` (called in each worker): the kernel SIGKILLs the worker when the
  process that started it dies, even by SIGKILL (Linux ``PR_SET_PDEATHSIG``).
- :func:`stop_workers`: the main process ends an iterator's workers as soon as the loop over
  it ends by an error (SIGKILL: they only read data, and one stuck in a read would not
  answer a polite request).
- an exit hook kills any DataLoader worker still alive when the interpreter exits. Without it
  multiprocessing's own exit hook would send SIGTERM (ignored) and wait for them forever:
  that was the hang after an error in a worker.

:func:`worker_error` turns the exception a DataLoader re-raises from a worker (its message
holds the worker's whole traceback) back into the worker's own one-line exception.
"""
from __future__ import annotations

import atexit
import ctypes
import multiprocessing
import multiprocessing.util  # noqa: F401  (its exit hook must be registered before ours)
import os
import re
import signal
import sys

from . import faults
from .errors import CapsvError

_PR_SET_PDEATHSIG = 1          # <linux/prctl.h>


class WorkerError(CapsvError):
    """A data-loading worker process died (killed by the system, e.g. out of memory)."""


def start_worker() -> None:
    """First thing in every DataLoader worker (their ``worker_init_fn`` calls it): die with
    the parent, and leave Ctrl-C (SIGINT to the whole process group) and SIGTERM to the main
    process, which needs the batch in flight to save its state on the way out."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Test hook (capsv.faults): a worker busy for a minute, as one stuck in a slow read.
    faults.pause_if("pause_in_worker", lambda: False)


def die_with_parent() -> None:
    """In a child process: be SIGKILLed by the kernel when the parent dies.

    If the parent already died before the request took effect, exit now."""
    parent = multiprocessing.parent_process()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass                   # no prctl: torch's own watchdog still polls the parent
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)


def stop_workers(iterator) -> None:
    """End the worker processes of a DataLoader iterator now (no-op for 0 workers or when
    they already exited).

    Workers only read data, so nothing is lost by killing them; a polite request would wait
    5 s for each one stuck in a read (and forever at exit, where it is a no-op). Their pids
    leave the DataLoader's SIGCHLD watch first, or their death would raise "DataLoader
    worker ... exited unexpectedly" in this process."""
    processes = list(getattr(iterator, "_workers", None) or [])
    if not processes:
        return
    if getattr(iterator, "_worker_pids_set", False):
        from torch.utils.data._utils import signal_handling
        signal_handling._remove_worker_pids(id(iterator))
        iterator._worker_pids_set = False
    for process in processes:
        if process.is_alive():
            _kill(process)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()             # closes the queues and threads; the workers are gone already


def _kill(process) -> None:
    try:
        process.kill()
        process.join(timeout=5)
    except (OSError, ValueError, AssertionError):
        pass


def _is_dataloader_worker(process) -> bool:
    target = getattr(process, "_target", None)
    return getattr(target, "__module__", "").startswith("torch.utils.data")


@atexit.register
def _kill_leftover_workers() -> None:
    """At interpreter exit: SIGKILL every DataLoader worker still alive (they ignore the
    SIGTERM that multiprocessing's exit hook, which runs after this one, would send)."""
    workers = [p for p in multiprocessing.active_children() if _is_dataloader_worker(p)]
    if not workers:
        return
    try:      # the DataLoader's SIGCHLD handler would call these deaths an error, at exit
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    except ValueError:
        pass                      # not the main thread: no handler of torch's there either
    for process in workers:
        _kill(process)


_CAUGHT = re.compile(r"Caught (\w+) in DataLoader worker process \d+\.\nOriginal ")
# torch's two wordings: the SIGCHLD handler's, and the one of a get that timed out
_DIED = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\) "
                   r"(?:exited unexpectedly|is killed by signal)")


def worker_error(exc: BaseException) -> BaseException:
    """The worker's own exception for one a DataLoader re-raised with the worker's traceback
    in its message (same type, the original message); :class:`WorkerError` for a worker that
    died; else ``exc`` itself."""
    text = str(exc)
    died = _DIED.search(text)
    if died:
        return WorkerError(f"a data-loading worker process (pid {died.group(1)}) died, "
                           "probably killed by the system for lack of memory; rerun with "
                           "fewer --nDataLoaderThread (0 reads in the main process)")
    caught = _CAUGHT.match(text)
    if not caught:
        return exc
    name = caught.group(1)
    # traceback.format_exception ends with "module.Name: message" (or "Name: message").
    headers = list(re.finditer(rf"^(?:[\w.]+\.)?{re.escape(name)}(?:: |$)", text, re.MULTILINE))
    message = text[headers[-1].end():].rstrip("\n") if headers else text.splitlines()[-1]
    cls = type(exc) if type(exc).__name__ == name else RuntimeError
    try:
        return cls(message)
    except Exception:
        return RuntimeError(message)
