"""One run per --save_path (the run lock), and the rules for flags changed on resume."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from capsv import faults
from capsv.runlock import LOCK_NAME, RunLockError, run_lock
from capsv.train import TrainError, train

from speech_like import make_corpus, write_train_list

TIMEOUT_S = 120


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    write_train_list(str(root / "train.txt"), make_corpus(str(root / "audio"), 4, 2,
                                                          seconds=(0.3, 0.5), seed=3))
    return root


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    faults.arm("")
    yield
    torch.set_num_threads(before)


def _cfg(data: Path, save: Path, **over) -> dict:
    cfg = dict(model="ResNetSE34L", encoder_type="TAP", nOut=32, trainfunc="softmaxproto",
               nSpeakers=2, batch_size=2, max_frames=20, max_epoch=1, seed=1, optimizer="adam",
               lr=0.001, nDataLoaderThread=0, device="cpu", no_progress=True,
               train_list=str(data / "train.txt"), train_path=str(data / "audio"),
               save_path=str(save))
    cfg.update(over)
    return cfg


def _flags(cfg: dict) -> list[str]:
    out = []
    for key, value in cfg.items():
        if value is True:
            out.append(f"--{key}")
        elif value is not False:
            out += [f"--{key}", str(value)]
    return out


# ----------------------------------------------------------------- the run lock
def test_a_second_run_on_the_same_save_path_is_refused_while_the_first_runs(data, tmp_path):
    """Run A (a real process) pauses after its first step holding the lock; run B on the same
    --save_path is refused at once, naming A's pid; after A stops, the lock is gone."""
    save = tmp_path / "run"
    env = dict(os.environ, CAPSV_FAULT="pause_after_step:1", OMP_NUM_THREADS="1",
               PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src") + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    first = subprocess.Popen([sys.executable, "-m", "capsv.cli", "train",
                              *_flags(_cfg(data, save, max_epoch=3))], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        seen = ""
        while "capsv-fault: paused" not in seen and time.monotonic() < deadline:
            line = first.stderr.readline()
            if not line:
                break
            seen += line
        assert "capsv-fault: paused" in seen, seen[-2000:]
        started = time.monotonic()
        with pytest.raises(RunLockError, match=f"in use by another capsv train \\(pid "
                                               f"{first.pid} on host "):
            train(_cfg(data, save, max_epoch=3))
        assert time.monotonic() - started < 30
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=TIMEOUT_S) == 143
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
    assert not (save / LOCK_NAME).exists()


def test_a_stale_lock_is_taken_over_with_a_message(data, tmp_path, capsys):
    """A lock left by a run killed by SIGKILL (its pid is dead) is taken over; the run works
    and removes the lock at the end."""
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=30)
    save = tmp_path / "run"
    save.mkdir()
    (save / LOCK_NAME).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                              "started": "1"}))
    summary = train(_cfg(data, save))
    assert summary.final_epoch == 1
    out = capsys.readouterr().out
    assert f"taking over the stale lock {save / LOCK_NAME} of a run that is gone (pid {dead.pid}" in out
    assert not (save / LOCK_NAME).exists()


def test_a_lock_of_another_host_or_a_live_process_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    with pytest.raises(RunLockError, match="pid 1 on host elsewhere.example"):
        with run_lock(str(tmp_path)):
            pass
    (tmp_path / LOCK_NAME).unlink()
    with run_lock(str(tmp_path)):              # this very process holds it: a second is refused
        with pytest.raises(RunLockError, match=f"pid {os.getpid()} "):
            with run_lock(str(tmp_path)):
                pass
    assert not (tmp_path / LOCK_NAME).exists()


# ----------------------------------------------------------------- flags changed on resume
def test_a_changed_optimizer_is_refused_before_resuming(data, tmp_path, capsys):
    save = tmp_path / "run"
    train(_cfg(data, save))
    capsys.readouterr()
    with pytest.raises(TrainError, match="cannot continue this run with --optimizer adam -> sgd"):
        train(_cfg(data, save, max_epoch=2, optimizer="sgd"))
    assert "resumed from" not in capsys.readouterr().out


def test_a_changed_lr_is_warned_about_and_the_saved_schedule_kept(data, tmp_path, capsys):
    save = tmp_path / "run"
    train(_cfg(data, save))
    capsys.readouterr()
    summary = train(_cfg(data, save, max_epoch=2, lr=0.01, max_frames=24))
    out = capsys.readouterr().out
    assert "warning: --lr 0.01 ignored: continuing the run with its saved optimiser" in out
    assert "warning: --max_frames changed since" in out and "(20 -> 24)" in out
    assert summary.final_epoch == 2 and summary.lr == pytest.approx(0.001)
