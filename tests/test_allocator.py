"""capsv.allocator: mallopt applied once in a fresh process, or left alone when asked to."""
import os
import platform
import subprocess
import sys

import pytest

SCRIPT = "from capsv.allocator import keep_freed_memory; print(keep_freed_memory())"


def _run(**env):
    full = {k: v for k, v in os.environ.items() if k not in ("CAPSV_MALLOC", "MALLOC_TRIM_THRESHOLD_",
                                                          "MALLOC_MMAP_THRESHOLD_")}
    out = subprocess.run([sys.executable, "-c", SCRIPT], env={**full, **env}, capture_output=True,
                         text=True, check=True)
    return out.stdout.strip()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_mallopt_is_applied_on_glibc():
    assert _run() == "glibc malloc keeps freed memory (mallopt)"


def test_opt_out_and_user_environment_win():
    assert _run(CAPSV_MALLOC="default").endswith("(CAPSV_MALLOC=default)")
    assert _run(MALLOC_TRIM_THRESHOLD_="1000") == "glibc malloc settings from the environment"
