"""Shared helpers for the benchmark scripts: machine description and result rows."""
from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

# CAPSV_BENCH_THREADS=1: one intra-op thread, for numbers on a machine shared with other work
# (2-thread timings on a busy 2-core box measure the neighbours more than the code).
if os.environ.get("CAPSV_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["CAPSV_BENCH_THREADS"]))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def row(bench: str, **values) -> None:
    """Print one result row as JSON (bench/run_all.py collects them into RESULTS.md), with the
    1-minute load average: on a shared machine it says how much the number can be trusted."""
    print("ROW " + json.dumps({"bench": bench, **values, "load1": round(os.getloadavg()[0], 2)}),
          flush=True)


def median(values) -> float:
    values = sorted(values)
    return values[len(values) // 2]


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
