"""Worker processes never hang a run nor outlive it; runs never collide or hang on odd files.

Every case runs the real ``capsv`` command in its own process group with a timeout, and
kills the group afterwards, so a regression fails by timeout instead of hanging the suite.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from capsv.models.checkpoint import save_checkpoint
from capsv.models import SpeakerNet

from processes import (alive, capsv_env, default_stop_signals, group, kill_group,
                       orphans_after_killing, wait_for_pauses)
from speech_like import make_corpus, write_train_list

SR = 16000
TIMEOUT_S = 120          # a hang fails by this; a fixed run takes seconds


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 speakers x 2 clean utterances, a NaN float WAV, a FLAC whose body fails to decode,
    a TAP checkpoint, trial lists and train lists using each bad file."""
    root = tmp_path_factory.mktemp("workers")
    items = make_corpus(str(root / "audio"), 4, 2, seconds=(0.3, 0.5), seed=3)
    sf.write(root / "audio" / "nan.wav", np.full(SR, np.nan, np.float32), SR, subtype="FLOAT")
    speech = (np.random.default_rng(0).standard_normal(SR) * 3000).astype(np.int16)
    sf.write(root / "audio" / "body.flac", speech, SR, format="FLAC")
    good = (root / "audio" / "body.flac").read_bytes()
    (root / "audio" / "body.flac").write_bytes(good[:2000] + os.urandom(len(good) - 2000))
    torch.manual_seed(0)
    save_checkpoint(str(root / "tap.model"), SpeakerNet("ResNetSE34L", "TAP", 32))
    a, b = items[0][1], items[2][1]
    for bad in ("nan.wav", "body.flac"):
        (root / f"trials_{bad}.txt").write_text(
            f"1 {a} {items[1][1]}\n0 {a} {b}\n1 {b} {items[3][1]}\n0 {a} {bad}\n")
        (root / f"files_{bad}.txt").write_text(f"{a}\n{bad}\n{b}\n")
        write_train_list(str(root / f"train_{bad}.txt"), items[:3] + [(items[3][0], bad)] + items[4:])
    write_train_list(str(root / "train.txt"), items)
    return root


def _command(root: Path, name: str, bad: str, workers: int, save: Path) -> list[str]:
    common = ["--nDataLoaderThread", str(workers), "--device", "cpu", "--no_progress"]
    if name == "eval":
        return ["eval", "--initial_model", str(root / "tap.model"), "--model", "ResNetSE34L",
                "--test_list", str(root / f"trials_{bad}.txt"), "--test_path", str(root / "audio"),
                "--eval_frames", "20", "--num_eval", "2", *common]
    if name == "embed":
        return ["embed", "--initial_model", str(root / "tap.model"), "--model", "ResNetSE34L",
                "--test_list", str(root / f"files_{bad}.txt"), "--test_path", str(root / "audio"),
                "--eval_frames", "20", "--num_eval", "2", "--out", str(save / "e.npz"), *common]
    return ["train", "--model", "ResNetSE34L", "--encoder_type", "TAP", "--nOut", "32",
            "--trainfunc", "softmaxproto", "--nSpeakers", "2", "--batch_size", "2",
            "--max_frames", "20", "--max_epoch", "2", "--optimizer", "adam",
            "--train_list", str(root / f"train_{bad}.txt"), "--train_path", str(root / "audio"),
            "--save_path", str(save), *common]


def _start(args: list[str], **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "capsv.cli", *args], env=capsv_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_stop_signals)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str, float]:
    """Wait (at most TIMEOUT_S) for the command; (rc, stdout, stderr, seconds)."""
    start = time.monotonic()
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"the command hung: no exit within {TIMEOUT_S} s")
    return proc.returncode, out, err, time.monotonic() - start


# ----------------------------------------------------------------- a worker's error
@pytest.mark.parametrize("name,bad", [("eval", "nan.wav"), ("embed", "body.flac"),
                                      ("train", "body.flac")])
def test_a_worker_error_ends_the_command_at_once_with_one_line(corpus, tmp_path, name, bad):
    """The bad file is read in one of 2 DataLoader workers: the command exits with status 2
    and the worker's one-line error (as with 0 workers), in seconds, and leaves no process."""
    proc = _start(_command(corpus, name, bad, 2, tmp_path / "run"))
    rc, out, err, seconds = _finish(proc)
    leftover = group(proc.pid)
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert rc == 2, (rc, err[-2000:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"capsv {name}: error: "), err[-2000:]
    assert bad in lines[0] and "Traceback" not in err
    assert not leftover, f"processes left behind: {leftover}"
    assert seconds < 60


# ----------------------------------------------------------------- workers die with the run
@pytest.mark.parametrize("name", ["train", "eval"])
def test_workers_die_with_a_sigkilled_main_process(corpus, tmp_path, name):
    """The main process dies by SIGKILL while its 2 workers are busy (hook pause_in_worker:
    a minute-long read): the workers must be gone within seconds, not live on as orphans."""
    bad = "nan.wav" if name == "eval" else "body.flac"
    proc = _start(_command(corpus, name, bad, 2, tmp_path / "run"), CAPSV_FAULT="pause_in_worker")
    try:
        workers = wait_for_pauses(proc, "pause_in_worker", 2)
    except BaseException:
        kill_group(proc)
        raise
    orphans = orphans_after_killing(proc, workers, signal.SIGKILL)
    assert not orphans, f"workers {orphans} outlived their main process"


@pytest.mark.parametrize("name", ["train", "eval"])
def test_a_worker_killed_by_the_system_ends_the_run_with_one_line(corpus, tmp_path, name):
    """A worker dies by SIGKILL (as the OOM killer does) while busy: the command says so in
    one line and exits with status 2, leaving no process behind."""
    bad = "nan.wav" if name == "eval" else "body.flac"
    proc = _start(_command(corpus, name, bad, 2, tmp_path / "run"), CAPSV_FAULT="pause_in_worker")
    try:
        workers = wait_for_pauses(proc, "pause_in_worker", 2)
        os.kill(workers[0], signal.SIGKILL)
        rc, _, err, _ = _finish(proc)
        leftover = [pid for pid in workers if alive(pid)]
    finally:
        kill_group(proc)
    lines = [line for line in err.splitlines() if line.strip() and "capsv-fault" not in line]
    assert rc == 2 and len(lines) == 1, (rc, err[-2000:])
    assert f"a data-loading worker process (pid {workers[0]}) died" in lines[0]
    assert not leftover


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_group_during_eval_with_busy_workers_exits_and_leaves_nothing(
        corpus, tmp_path, signum, code):
    """Ctrl-C (SIGINT) or a scheduler's SIGTERM to the whole process group while the 2
    workers are busy: the command stops with the shell's status for the signal and no worker
    survives it (they ignore both signals, so only capsv.workers can end them)."""
    proc = _start(_command(corpus, "eval", "nan.wav", 2, tmp_path / "run"),
                  CAPSV_FAULT="pause_in_worker")
    try:
        workers = wait_for_pauses(proc, "pause_in_worker", 2)
        os.killpg(proc.pid, signum)
        rc, _, err, seconds = _finish(proc)
        time.sleep(0.5)
        leftover = [pid for pid in workers if alive(pid)]
    finally:
        kill_group(proc)
    assert rc in (code, -signum), (rc, err[-2000:])
    assert not leftover and seconds < 60
    assert "Traceback" not in err


# ----------------------------------------------------------------- special files, dead pools
def _run(args: list[str]) -> tuple[int, str]:
    proc = _start(args)
    rc, out, err, _ = _finish(proc)
    return rc, out + err


@pytest.mark.parametrize("where", ["initial_model", "audio_readers", "convert_tree"])
def test_a_fifo_is_refused_not_waited_on(corpus, tmp_path, where):
    """A FIFO where a file is read (a checkpoint, an audio file, an .m4a in the tree
    --convert scans) is an error naming it; before, the open blocked forever."""
    if where == "initial_model":
        fifo = tmp_path / "model.fifo"
        os.mkfifo(fifo)
        args = ["eval", "--initial_model", str(fifo), "--model", "ResNetSE34L",
                "--test_list", str(corpus / "trials_nan.wav.txt"), "--test_path",
                str(corpus / "audio"), "--no_progress"]
    elif where == "audio_readers":       # every reader, as the API and the workers call them
        fifo = tmp_path / "pipe.wav"
        os.mkfifo(fifo)
        code = ("import numpy as np\nfrom capsv import audio\nfor read in ("
                "lambda p: audio.load_audio(p), lambda p: audio.load_eval_crops(p, 20, 2), "
                "lambda p: audio.load_random_crop(p, 20, np.random.default_rng(0)), "
                "lambda p: audio.audio_info(p)):\n"
                "    try:\n        read(%r)\n    except audio.AudioError as exc:\n"
                "        print(exc)\n" % str(fifo))
        proc = subprocess.Popen([sys.executable, "-c", code], env=capsv_env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        rc, out, err, _ = _finish(proc)
        assert rc == 0 and out.count(f"{fifo}: is a FIFO") == 4, (out, err[-2000:])
        return
    else:
        clip = tmp_path / "data" / "voxceleb" / "voxceleb2" / "id1" / "v1"
        clip.mkdir(parents=True)
        fifo = clip / "00001.m4a"
        os.mkfifo(fifo)
        args = ["prepare", "--save_path", str(tmp_path / "data"), "--convert", "--workers", "2",
                "--no_progress"]
    rc, text = _run(args)
    # prepare reports a file it could not convert and goes on with the rest (status 1)
    assert rc == (1 if where == "convert_tree" else 2), text[-2000:]
    assert str(fifo) in text and "FIFO" in text, text[-2000:]
    assert "Traceback" not in text


def test_a_conversion_worker_that_dies_fails_the_run_instead_of_hanging(tmp_path):
    """A worker of the --convert pool dies abruptly (here os._exit, as the OOM killer would
    kill it): the pool fails with a one-line error instead of waiting for its result forever."""
    script = ("import os, sys\n"
              "from capsv.prep.convert import parallel_map\n"
              "from capsv.errors import CapsvError\n"
              "try:\n"
              "    list(parallel_map(os._exit, [3] * 8, 2, 'convert m4a', progress=False))\n"
              "except CapsvError as exc:\n"
              "    print(exc)\n"
              "    sys.exit(2)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=capsv_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            cwd=tmp_path)
    rc, out, err, _ = _finish(proc)
    assert rc == 2 and "a worker process died" in out, (rc, out, err[-2000:])
