"""Faults: a run killed at five different points, interrupted, out of disk, or fed a NaN loss.

Each kill is real: a forked child runs :func:`capsv.train.train` with ``CAPSV_FAULT`` set
(see :mod:`capsv.faults`) and dies by SIGKILL at that exact point. The restart must find
only loadable checkpoints (``weights_only=True``), continue at the right epoch with the
optimiser state, log every epoch exactly once, and end with the same weights as an
uninterrupted run.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from capsv import faults
from capsv.models.checkpoint import read_checkpoint
from capsv.train import TrainError, list_checkpoints, train

from speech_like import make_corpus, write_train_list, write_trials

REPO = Path(__file__).resolve().parents[2]
MAX_EPOCH = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliab")
    write_train_list(str(root / "train.txt"), make_corpus(str(root / "train"), 8, 2,
                                                          seconds=(0.3, 0.5), seed=11))
    write_trials(str(root / "trials.txt"), make_corpus(str(root / "test"), 2, 2,
                                                       seconds=(0.3, 0.5), seed=12, prefix="t"))
    return root


def config(data: Path, save_path: Path, **over) -> dict:
    """Tiny CAP run: 8 speakers x 2 utterances, batches of 3 -> 2 steps per epoch;
    evaluation at epochs 2 and 3."""
    cfg = dict(model="ResNetSE34L", encoder_type="CAP", nOut=32, trainfunc="proto",
               nSpeakers=2, batch_size=3, max_frames=20, eval_frames=20, num_eval=2,
               optimizer="adam", lr=0.002, max_epoch=MAX_EPOCH, test_interval=2, seed=5,
               nDataLoaderThread=0, device="cpu", no_progress=True,
               train_list=str(data / "train.txt"), train_path=str(data / "train"),
               test_list=str(data / "trials.txt"), test_path=str(data / "test"),
               save_path=str(save_path))
    cfg.update(over)
    return cfg


def fork_child(target, log: Path, fault: str = "", setup=None) -> int:
    """Fork a real process that runs ``target()`` (its return value is the exit code) with
    CAPSV_FAULT=fault, stdout to ``log`` and stderr to ``log.err``; return its pid.
    Forking skips a fresh interpreter's seconds of imports."""
    pid = os.fork()
    if pid == 0:                                     # child: never returns into pytest
        code = 1
        try:
            for fd, name in ((1, log), (2, Path(str(log) + ".err"))):
                os.dup2(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            # pytest's capture replaced the sys streams; write to the real descriptors
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            torch.set_num_threads(1)
            os.environ["CAPSV_FAULT"] = fault
            if setup is not None:
                setup()
            code = int(target() or 0)
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def run_in_child(cfg: dict, fault: str, log: Path) -> int:
    """``train(cfg)`` in a forked child with CAPSV_FAULT=fault; the child's wait status."""
    return os.waitpid(fork_child(lambda: train(cfg) and 0, log, fault), 0)[1]


def cli_argv(cfg: dict) -> list[str]:
    """``capsv train`` flags for a config dict."""
    argv = ["train"]
    for key, value in cfg.items():
        if isinstance(value, bool):
            argv += [f"--{key}"] if value else []
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv


def assert_all_checkpoints_load(save_path: Path) -> list[int]:
    epochs = []
    for epoch, path in list_checkpoints(str(save_path)):
        ckpt = read_checkpoint(path)                # weights_only=True; raises if damaged
        assert ckpt["meta"]["epoch"] == epoch
        epochs.append(epoch)
    return sorted(epochs)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    torch.set_num_threads(1)
    save = tmp_path_factory.mktemp("ref")
    summary = train(config(data, save))
    ckpt = read_checkpoint(summary.checkpoint)
    return summary, ckpt


# (fault, epochs whose checkpoints survive the kill, first epoch of the restart)
KILL_POINTS = [
    ("kill_after_step:3", [1], 2),          # mid-epoch 2 (2 steps per epoch)
    ("kill_during_eval:1", [1], 2),         # evaluating epoch 2
    ("kill_during_save:2", [1], 2),         # epoch 2's temp file written, not renamed
    ("kill_after_save:2", [1, 2], 3),       # epoch 2 in place, epoch 1 not yet removed
    ("kill_at_epoch_start:3", [2], 3),      # epoch 2 done, epoch 1 (not evaluated) removed
]


@pytest.mark.parametrize("fault,surviving,restart_epoch", KILL_POINTS,
                         ids=[k[0].split(":")[0] for k in KILL_POINTS])
def test_sigkill_then_restart_continues_exactly(data, tmp_path, uninterrupted, fault, surviving,
                                                restart_epoch):
    save = tmp_path / "run"
    status = run_in_child(config(data, save), fault, tmp_path / "child.log")
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, \
        (tmp_path / "child.log").read_text()
    assert assert_all_checkpoints_load(save) == surviving

    faults.arm("")
    summary = train(config(data, save))
    assert summary.first_epoch == restart_epoch
    assert summary.final_epoch == MAX_EPOCH
    assert not [n for n in os.listdir(save / "model") if n.endswith(".tmp")]
    rows = [json.loads(line) for line in (save / "result" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]          # every epoch logged exactly once

    ref_summary, ref = uninterrupted
    got = read_checkpoint(summary.checkpoint)
    for name, tensor in ref["model"].items():
        torch.testing.assert_close(got["model"][name], tensor, rtol=0, atol=1e-6, msg=name)
    # Adam continued rather than restarted: its step counter covers all 3 epochs.
    ref_steps = [s["step"] for s in ref["optimizer"]["state"].values()]
    assert [s["step"] for s in got["optimizer"]["state"].values()] == ref_steps
    assert float(ref_steps[0]) == 2 * MAX_EPOCH
    assert got["meta"]["eer"] == pytest.approx(ref["meta"]["eer"])


# ------------------------------------------------------------------ SIGINT / SIGTERM
def start_cli(cfg: dict, fault: str = "") -> subprocess.Popen:
    """A real ``python -m capsv.cli train ...`` in its own process group, so that a signal
    to the group reaches its DataLoader worker too, as a terminal's Ctrl-C does."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", CAPSV_FAULT=fault)
    return subprocess.Popen([sys.executable, "-m", "capsv.cli", *cli_argv(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_until_paused(proc: subprocess.Popen) -> None:
    """Read the child's stderr up to the line of the ``pause_after_step`` hook."""
    seen = []
    for line in proc.stderr:
        if line.startswith("capsv-fault: paused"):
            return
        seen.append(line)
    proc.wait()
    raise AssertionError("the run never paused:\n" + "".join(seen) + proc.stdout.read())


def metric_rows(save_path) -> list[dict]:
    return [json.loads(line) for line in
            (Path(save_path) / "result" / "metrics.jsonl").read_text().splitlines()]


# (signal, hook, epoch and step where it lands, epoch checkpoints on disk then)
SIGNAL_POINTS = [
    (signal.SIGINT, "pause_after_step:3", 2, 1, [1]),     # mid-epoch 2 (2 steps per epoch)
    (signal.SIGTERM, "pause_after_step:2", 1, 2, []),     # epoch 1 trained, not yet saved
]


@pytest.mark.parametrize("sig,fault,epoch,step,surviving", SIGNAL_POINTS,
                         ids=[p[0].name for p in SIGNAL_POINTS])
def test_signal_saves_where_it_stopped_and_the_rerun_ends_bit_identical(
        data, tmp_path, uninterrupted, sig, fault, epoch, step, surviving):
    """SIGINT/SIGTERM to a real `capsv train` (and its DataLoader worker) at an exact step:
    the step finishes, ``interrupted%09d.model`` is written with the position in the epoch,
    one stderr line names it, exit 128+signal. The same command then continues mid-epoch and
    ends with exactly the weights, optimiser, scheduler and losses of a run never stopped."""
    cfg = config(data, tmp_path / "run", nDataLoaderThread=1)
    proc = start_cli(cfg, fault)
    wait_until_paused(proc)
    os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    path = tmp_path / "run" / "model" / ("interrupted%09d.model" % epoch)
    assert proc.returncode == 128 + sig, out + err
    assert f"capsv train: interrupted by {sig.name} at epoch {epoch}, step {step} of 2: saved " \
           f"{path}; run the same command again to continue from there" in err.splitlines(), err
    assert "Traceback" not in err and "Error" not in err, err
    saved = read_checkpoint(str(path))                     # weights_only=True
    assert saved["position"]["ranks"][0]["position"] == step
    assert {"optimizer", "scheduler", "loss", "rng"} <= set(saved)
    assert assert_all_checkpoints_load(tmp_path / "run") == surviving

    rerun = start_cli(cfg)                                 # the very same command
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, out + err
    assert f"resumed from {path} (epoch {epoch}, after step {step} of 2" in out
    assert not path.exists()                               # superseded by the epoch checkpoint
    ref_summary, ref = uninterrupted
    got = read_checkpoint(str(tmp_path / "run" / "model" / "model000000003.model"))
    for key in ("model", "loss"):
        for name, tensor in ref[key].items():
            assert torch.equal(got[key][name], tensor), (key, name)
    for index, state in ref["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(got["optimizer"]["state"][index][key], value), (index, key)
    assert got["scheduler"] == ref["scheduler"]
    ref_rows, rows = metric_rows(ref_summary.save_path), metric_rows(tmp_path / "run")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("loss", "acc", "lr", "steps", "EER"):
        assert [r.get(key) for r in rows] == [r.get(key) for r in ref_rows], key


def test_from_python_a_signal_raises_train_interrupted_with_the_checkpoint(data, tmp_path,
                                                                          capsys):
    """``train()`` itself (no CLI) raises TrainInterrupted, a KeyboardInterrupt, carrying the
    checkpoint path and the exit code; a forked process stands in for a user's script."""
    cfg = config(data, tmp_path / "run", test_list=None)
    result = tmp_path / "result.json"

    def script() -> int:
        try:
            train(cfg)
        except KeyboardInterrupt as exc:
            result.write_text(json.dumps({"type": type(exc).__name__, "path": exc.checkpoint,
                                          "code": exc.exit_code, "message": str(exc)}))
        return 0

    log = tmp_path / "child.log"
    pid = fork_child(script, log, fault="pause_after_step:1")
    err = Path(str(log) + ".err")
    deadline = time.time() + 60
    while "capsv-fault: paused" not in (err.read_text() if err.exists() else ""):
        assert time.time() < deadline, log.read_text()
        time.sleep(0.02)
    os.kill(pid, signal.SIGTERM)
    assert os.waitpid(pid, 0)[1] == 0, err.read_text()
    got = json.loads(result.read_text())
    path = str(tmp_path / "run" / "model" / "interrupted000000001.model")
    assert got["type"] == "TrainInterrupted" and got["path"] == path and got["code"] == 143
    assert got["message"].startswith("interrupted by SIGTERM at epoch 1, step 1 of 2")
    assert read_checkpoint(path)["position"]["ranks"][0]["position"] == 1
    # A position within the epoch means nothing under another batch plan: the epoch restarts.
    faults.arm("")
    summary = train(dict(cfg, seed=6, max_epoch=1))
    assert summary.resumed_from is None and summary.first_epoch == 1
    assert "seed 5 -> 6), so epoch 1 restarts from its beginning" in capsys.readouterr().out


def test_a_second_signal_during_the_save_stops_at_once_and_corrupts_nothing(data, tmp_path):
    """SIGINT mid-epoch 2, then a second SIGINT while the interrupted checkpoint's temp file
    is being written: the write is abandoned (temp file removed), exit 130, the message
    names epoch 1's checkpoint, which is intact, and the rerun continues from it."""
    cfg = config(data, tmp_path / "run", test_list=None)
    proc = start_cli(cfg, "pause_after_step:3,pause_during_save:2")   # save 1: epoch 1's
    wait_until_paused(proc)
    os.killpg(proc.pid, signal.SIGINT)
    wait_until_paused(proc)
    folder = tmp_path / "run" / "model"
    assert [n for n in os.listdir(folder) if n.startswith(".interrupted")]   # mid-write
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert (f"capsv train: interrupted by SIGINT during epoch 2, stopped at once: the work since "
            f"{folder / 'model000000001.model'} is lost") in err, err
    assert "Traceback" not in err, err
    assert sorted(os.listdir(folder)) == ["model000000001.model"]      # no temp file left
    assert assert_all_checkpoints_load(tmp_path / "run") == [1]
    faults.arm("")
    summary = train(cfg)
    assert summary.first_epoch == 2 and summary.final_epoch == MAX_EPOCH


def test_a_signal_after_the_last_save_is_not_swallowed(data, tmp_path):
    """SIGTERM after the last epoch is saved (during its evaluation or save, as a signal to a
    loop of short runs often lands): the run is complete, but it still exits 143 with the
    message, so a caller looping over `capsv train` stops instead of starting the next run."""
    cfg = config(data, tmp_path / "run", test_list=None)
    proc = start_cli(cfg, "pause_after_run")
    wait_until_paused(proc)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    folder = tmp_path / "run" / "model"
    assert (f"interrupted by SIGTERM before epoch {MAX_EPOCH + 1}: "
            f"{folder / f'model{MAX_EPOCH:09d}.model'} holds all finished epochs") in err, err
    assert assert_all_checkpoints_load(tmp_path / "run")[-1] == MAX_EPOCH


# ------------------------------------------------------------------ disk full
def _limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)     # a write past the limit fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_failed_checkpoint_write_keeps_the_previous_one(data, tmp_path):
    """Epoch 1 is saved normally; epoch 2's write hits a 64 KiB file-size limit (as a full
    disk would): a clear error, exit 2, epoch 1's checkpoint intact, no temp file left."""
    from capsv.cli import main as cli_main

    save = tmp_path / "run"
    faults.arm("")
    train(config(data, save, max_epoch=1, test_list=None))
    before = (save / "model" / "model000000001.model").read_bytes()
    log = tmp_path / "child.log"
    argv = cli_argv(config(data, save, max_epoch=2, test_list=None))
    status = os.waitpid(fork_child(lambda: cli_main(argv), log, setup=_limit_file_size), 0)[1]
    err = Path(str(log) + ".err").read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 2, err
    assert "cannot write checkpoint" in err and "model000000002.model" in err
    assert "model000000001.model is intact" in err
    assert "Traceback" not in err
    assert (save / "model" / "model000000001.model").read_bytes() == before
    assert sorted(os.listdir(save / "model")) == ["model000000001.model"]
    assert_all_checkpoints_load(save)


# ------------------------------------------------------------------ NaN / inf loss
def test_nan_loss_stops_training_without_a_checkpoint(data, tmp_path, capsys):
    save = tmp_path / "run"
    faults.arm("")
    train(config(data, save, max_epoch=1, test_list=None))
    faults_env = os.environ.get("CAPSV_FAULT")
    os.environ["CAPSV_FAULT"] = "nan_loss:2"        # the 2nd step of this process: epoch 2
    try:
        with pytest.raises(TrainError, match=r"epoch 2 step 2: the loss is nan .*--max_bad_steps 0"):
            train(config(data, save, max_epoch=2, test_list=None))
    finally:
        os.environ.pop("CAPSV_FAULT")
        if faults_env is not None:
            os.environ["CAPSV_FAULT"] = faults_env
        faults.arm("")
    assert assert_all_checkpoints_load(save) == [1]


def test_nan_loss_steps_are_skipped_up_to_max_bad_steps(data, tmp_path, capsys):
    save = tmp_path / "run"
    os.environ["CAPSV_FAULT"] = "nan_loss:1"
    try:
        summary = train(config(data, save, max_epoch=1, test_list=None, max_bad_steps=1))
    finally:
        os.environ.pop("CAPSV_FAULT")
        faults.arm("")
    assert "warning: epoch 1 step 1: the loss is nan; step skipped" in capsys.readouterr().out
    ckpt = read_checkpoint(summary.checkpoint)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values() if t.is_floating_point())
    # one of the two steps was skipped: Adam stepped once
    assert [float(s["step"]) for s in ckpt["optimizer"]["state"].values()][0] == 1.0
    row = json.loads((save / "result" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["skipped_steps"] == 1


def test_non_finite_weights_are_never_saved(data, tmp_path, monkeypatch):
    """Even if NaN got into the weights some other way, the epoch's checkpoint is refused."""
    import capsv.train.loop as train_module     # the loop calls train_one_epoch from here

    original = train_module.train_one_epoch

    def poisoned(net, *args, **kwargs):
        stats = original(net, *args, **kwargs)
        with torch.no_grad():
            next(net.parameters()).fill_(float("inf"))
        return stats

    monkeypatch.setattr(train_module, "train_one_epoch", poisoned)
    save = tmp_path / "run"
    faults.arm("")
    with pytest.raises(TrainError, match="non-finite weights"):
        train(config(data, save, max_epoch=1, test_list=None))
    assert list_checkpoints(str(save)) == []


# ------------------------------------------------------------------ determinism
def test_same_seed_gives_the_same_first_epoch_losses(data, tmp_path):
    """Two separate processes, same seed, CPU: identical per-epoch losses (bitwise)."""
    code = ("import json, sys, torch; torch.set_num_threads(1); from capsv.train import train; "
            "train(json.loads(sys.argv[1]))")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    env.pop("CAPSV_FAULT", None)
    procs = [subprocess.Popen([sys.executable, "-c", code,
                               json.dumps(config(data, tmp_path / name, max_epoch=2, test_list=None))],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for name in ("a", "b")]                # both at once: 2 cores
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
        proc.stderr.close()
    losses = [[json.loads(r)["loss"] for r in
               (tmp_path / name / "result" / "metrics.jsonl").read_text().splitlines()]
              for name in ("a", "b")]
    assert len(losses[0]) == 2
    assert losses[0] == losses[1]
    cfg = config(data, tmp_path / "c", max_epoch=1, test_list=None, seed=6)
    faults.arm("")
    other = train(cfg)
    assert other.loss != losses[0][0]          # the seed matters: the check can fail
