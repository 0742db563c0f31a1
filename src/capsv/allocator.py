"""glibc malloc tuning for training: keep freed memory instead of returning it to the kernel.

A training step frees and re-allocates the same tens of megabytes of activations every step.
glibc serves blocks above its mmap threshold (128 KB, adapting upwards) with fresh ``mmap``
and hands them back with ``munmap`` on free, and trims the heap top beyond 128 KB: the next
step then page-faults all of it in again. On VMs where a fresh page is expensive (Firecracker
microVMs: bench/RESULTS.md measured a 21 % slower step) that is pure overhead. Raising both
thresholds makes freed blocks stay in the process for reuse, at the cost of a higher resident
memory (the peak of one step stays allocated).

This is what ``MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=17179869184`` does at
start-up; ``mallopt`` does it from inside the process, capped at INT_MAX (2 GiB) because its
argument is a C int. Blocks allocated before the call are unaffected; later ones follow it.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1     # <malloc.h>
M_MMAP_THRESHOLD = -3
INT_MAX = 2**31 - 1
ENV_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
OPT_OUT = "CAPSV_MALLOC"          # CAPSV_MALLOC=default leaves glibc's behaviour alone


def _not_tunable() -> str | None:
    """Why glibc's malloc must be left alone here (None: it may be tuned)."""
    if os.environ.get(OPT_OUT, "").lower() == "default":
        return f"glibc malloc defaults ({OPT_OUT}=default)"
    if any(name in os.environ for name in ENV_VARS):
        return "glibc malloc settings from the environment"
    if platform.libc_ver()[0] != "glibc":
        return "malloc defaults (not glibc)"
    return None


def _mallopt(settings: list[tuple[int, int]]) -> bool:
    try:
        libc = ctypes.CDLL(None)
        return all(libc.mallopt(option, ctypes.c_int(value)) == 1 for option, value in settings)
    except (OSError, AttributeError):
        return False


def keep_freed_memory() -> str:
    """Tell glibc to keep freed memory; returns what was done, for the run log.

    Not applied (and says why) on other C libraries, when the user set glibc's own
    environment variables (theirs win), or with ``CAPSV_MALLOC=default``.
    """
    why_not = _not_tunable()
    if why_not:
        return why_not
    ok = _mallopt([(M_MMAP_THRESHOLD, INT_MAX), (M_TRIM_THRESHOLD, INT_MAX)])
    return "glibc malloc keeps freed memory (mallopt)" if ok else "malloc defaults (mallopt refused)"


def return_freed_memory() -> str:
    """The opposite, for evaluation: a fixed mmap threshold (glibc's 128 KB default), so blocks
    above it always come from ``mmap`` and go back to the kernel when freed.

    glibc raises its mmap threshold each time a large mmap'd block is freed; from then on
    blocks of up to 32 MB come from the heap, and freed heap memory in the middle of it stays
    resident. Over thousands of files of evaluation that retention wandered by tens of MB
    (bench/bench_eval_memory_scale.py), which is most of what grew with the file count once
    the features moved to disk. Same opt-outs as :func:`keep_freed_memory`.
    """
    why_not = _not_tunable()
    if why_not:
        return why_not
    ok = _mallopt([(M_MMAP_THRESHOLD, 128 * 1024)])
    return "glibc malloc returns freed blocks (fixed mmap threshold)" if ok else "malloc defaults"
