"""Helpers for tests that start real processes and check that none outlives its run."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")


def capsv_env(**extra) -> dict:
    """The environment of a capsv subprocess: this checkout's package, one thread, no fault
    armed unless ``extra`` arms one."""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1", CAPSV_FAULT="")
    env.update(extra)
    return env


def default_stop_signals() -> None:
    """In the child: SIGINT/SIGTERM as in a foreground command. A test run started in the
    background by a non-interactive shell inherits SIGINT ignored, and so would the command."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in f)
    except FileNotFoundError:
        return False


def group(pgid: int) -> list[int]:
    """Live processes of process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, IndexError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and alive(int(entry)):
                found.append(int(entry))
    return found


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def wait_for_pauses(proc: subprocess.Popen, point: str, count: int, limit_s: float = 90) -> list[int]:
    """Pids of the processes that announced ``capsv-fault: paused at POINT (pid N)`` on the
    command's stderr (capsv.faults), once ``count`` of them have."""
    pids, text = [], ""
    selector = selectors.DefaultSelector()
    selector.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + limit_s
    while len(pids) < count and time.monotonic() < deadline and proc.poll() is None:
        if selector.select(timeout=1):
            line = proc.stderr.readline()
            text += line
            if f"paused at {point}" in line:
                pids.append(int(line.rsplit("pid ", 1)[1].rstrip(")\n")))
    selector.close()
    assert len(pids) == count, f"{count} processes never paused at {point}:\n{text[-2000:]}"
    return pids


def orphans_after_killing(proc: subprocess.Popen, children: list[int], signum: int,
                          grace_s: float = 10) -> list[int]:
    """Send ``signum`` to the command alone (not its group); the ``children`` still alive
    ``grace_s`` seconds after it died. The whole group is SIGKILLed afterwards either way."""
    try:
        os.kill(proc.pid, signum)
        proc.wait(timeout=30)
        deadline = time.monotonic() + grace_s
        while any(map(alive, children)) and time.monotonic() < deadline:
            time.sleep(0.1)
        return [pid for pid in children if alive(pid)]
    finally:
        kill_group(proc)
