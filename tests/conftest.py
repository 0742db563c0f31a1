from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path("shared") / "fixtures" / "cap-reference"
# The repo is cloned beside shared/; a git worktree may sit one or two folders deeper.
_FOUND = next((p / FIXTURE for p in REPO.parents if (p / FIXTURE).is_dir()), REPO.parent / FIXTURE)
REFERENCE = Path(os.environ.get("CAPSV_REFERENCE", _FOUND))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The original code's outputs (../shared/fixtures/cap-reference beside the repo)."""
    if not REFERENCE.is_dir():
        pytest.fail(f"reference fixtures not found at {REFERENCE}; the repo must sit beside shared/ (or set CAPSV_REFERENCE)")
    return REFERENCE


@pytest.fixture(scope="module")
def one_thread():
    """Small batches run far faster on one thread when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _restore_stop_signals():
    """An in-process ``capsv.cli.main`` that was interrupted leaves SIGINT/SIGTERM ignored (it
    is on its way out); a later test's subprocess would inherit that and ignore Ctrl-C."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        if handler is not None:
            signal.signal(sig, handler)
